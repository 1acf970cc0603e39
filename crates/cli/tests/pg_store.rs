//! `detente init --database-url` and what `detente serve` says when the database it names
//! cannot be used: unreachable (the URL named, its password hidden, exit 1).

use std::path::Path;
use std::process::{Command, Output};

fn detente(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_detente"))
        .args(args)
        .output()
        .expect("run detente")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn init(dir: &Path, database_url: &str) -> Output {
    detente(&[
        "init",
        "--dir",
        dir.to_str().unwrap(),
        "--name",
        "pg",
        "--party",
        "Party on PostgreSQL",
        "--peer-listen",
        "127.0.0.1:0",
        "--console-listen",
        "127.0.0.1:0",
        "--database-url",
        database_url,
    ])
}

#[test]
fn init_records_the_database_url_and_refuses_a_malformed_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    let bad = init(&dir, "mysql://root@localhost/x");
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(text(&bad).contains("--database-url"), "{}", text(&bad));
    assert!(!dir.join("node.toml").exists(), "nothing written");

    let url = "postgres://detente:hunter2@127.0.0.1:1/detente";
    let out = init(&dir, url);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("detente:***@127.0.0.1:1"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("hunter2"), "{}", text(&out));
    let got = detente(&[
        "config",
        "get",
        "--dir",
        dir.to_str().unwrap(),
        "database_url",
    ]);
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), url);
}

#[test]
fn serve_with_an_unreachable_database_names_it_and_exits_1() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    // Port 1 on loopback: the connection is refused at once.
    let out = init(&dir, "postgres://detente:hunter2@127.0.0.1:1/detente");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = detente(&["serve", "--dir", dir.to_str().unwrap()]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("postgres://detente:***@127.0.0.1:1/detente"),
        "{said}"
    );
    assert!(!said.contains("hunter2"), "{said}");
}
