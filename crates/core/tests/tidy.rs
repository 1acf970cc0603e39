//! The core stays sans-IO: no async runtime, database driver or socket crate may ever
//! appear among its normal dependencies.

use std::process::Command;

const FORBIDDEN: [&str; 4] = ["tokio", "sqlx", "mio", "socket2"];

#[test]
fn core_depends_on_no_runtime_database_or_sockets() {
    let output = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "detente-core",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .args(["--format", "{p}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree = String::from_utf8_lossy(&output.stdout);
    assert!(tree.contains("detente-proto"), "unexpected tree:\n{tree}");
    let found: Vec<&str> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| FORBIDDEN.contains(name))
        .collect();
    assert!(
        found.is_empty(),
        "detente-core depends on {found:?}:\n{tree}"
    );
}
