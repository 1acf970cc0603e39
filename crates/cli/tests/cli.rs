//! The command-line contract (docs/cli.md): outputs, JSON shapes, errors with hints, exit codes
//! 0 / 1 / 2, and a short session with a running node.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn detente(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_detente"))
        .args(args)
        .output()
        .expect("run detente")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn init(dir: &Path, name: &str, lang: &str, tz: &str) -> Output {
    detente(&[
        "init",
        "--dir",
        dir.to_str().unwrap(),
        "--name",
        name,
        "--party",
        "Test Party",
        "--lang",
        lang,
        "--tz",
        tz,
        "--peer-listen",
        "127.0.0.1:0",
        "--console-listen",
        "127.0.0.1:0",
    ])
}

#[test]
fn init_id_and_refusing_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("w");
    let out = init(&dir, "washington", "en", "America/New_York");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("fingerprint: "));
    let id = detente(&["id", "--dir", dir.to_str().unwrap(), "--json"]);
    assert_eq!(id.status.code(), Some(0));
    let v: Value = serde_json::from_str(&stdout(&id)).expect("one JSON document");
    for key in [
        "name",
        "party",
        "public_key",
        "fingerprint",
        "peer_listen",
        "console_listen",
        "lang",
        "tz",
    ] {
        assert!(v.get(key).is_some(), "id --json has {key}");
    }
    assert!(v["public_key"].as_str().unwrap().starts_with("ed25519:"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("party.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the key file is owner-only");
    let again = init(&dir, "washington", "en", "America/New_York");
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).starts_with("error: "));
}

/// `detente ARGS` with the node directory coming from the environment only: `DETENTE_DIR`
/// when given, else `XDG_DATA_HOME`; `HOME` points into the test's directory too, so nothing
/// of the user's own is touched.
fn detente_env(args: &[&str], detente_dir: Option<&Path>, data_home: &Path) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_detente"));
    command
        .args(args)
        .env_remove("DETENTE_DIR")
        .env("XDG_DATA_HOME", data_home)
        .env("HOME", data_home);
    if let Some(dir) = detente_dir {
        command.env("DETENTE_DIR", dir);
    }
    command.output().expect("run detente")
}

#[test]
fn the_directory_defaults_to_detente_dir_then_the_user_data_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let chosen = tmp.path().join("chosen");
    // No command: where the node would be, that there is none, and what to type next.
    let out = detente_env(&[], Some(&chosen), &data);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains(chosen.to_str().unwrap()), "{text}");
    assert!(
        text.contains("$DETENTE_DIR") && text.contains("none here yet"),
        "{text}"
    );
    assert!(text.contains("detente init"), "{text}");
    // init and id without --dir use DETENTE_DIR ...
    let created = detente_env(
        &[
            "init",
            "--name",
            "w",
            "--party",
            "P",
            "--console-listen",
            "127.0.0.1:0",
        ],
        Some(&chosen),
        &data,
    );
    assert_eq!(created.status.code(), Some(0), "{}", stderr(&created));
    assert!(chosen.join("node.toml").exists());
    let id = detente_env(&["id", "--json"], Some(&chosen), &data);
    let v: Value = serde_json::from_str(&stdout(&id)).expect("one JSON document");
    assert_eq!(v["name"], "w");
    let out = detente_env(&[], Some(&chosen), &data);
    let text = stdout(&out);
    assert!(
        text.contains("running:        no") && text.contains("detente serve"),
        "{text}"
    );
    // ... and without it, $XDG_DATA_HOME/detente; --dir wins over both.
    let created = detente_env(
        &[
            "init",
            "--name",
            "x",
            "--party",
            "P",
            "--console-listen",
            "127.0.0.1:0",
        ],
        None,
        &data,
    );
    assert_eq!(created.status.code(), Some(0), "{}", stderr(&created));
    assert!(data.join("detente/node.toml").exists());
    let elsewhere = tmp.path().join("elsewhere");
    init(&elsewhere, "z", "en", "UTC");
    let id = detente_env(
        &["id", "--json", "--dir", elsewhere.to_str().unwrap()],
        Some(&chosen),
        &data,
    );
    let v: Value = serde_json::from_str(&stdout(&id)).expect("one JSON document");
    assert_eq!(v["name"], "z");
}

#[test]
fn progress_is_not_drawn_when_stderr_is_not_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("not-a-bundle");
    std::fs::write(&file, vec![0x9f; 100_000]).unwrap();
    let out = detente(&["verify", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.starts_with("error: verification failed"), "{err}");
    assert!(!err.contains('\x1b') && !err.contains('\r'), "{err:?}");
    let out = detente(&["bench", "--verify", "--messages", "200", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(!err.contains('\x1b') && !err.contains('\r'), "{err:?}");
    let _: Value = serde_json::from_str(&stdout(&out)).expect("one JSON document");
}

#[test]
fn usage_errors_exit_2_and_bad_values_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    assert_eq!(
        detente(&["send", "--dir", dir.to_str().unwrap()])
            .status
            .code(),
        Some(2),
        "missing --to"
    );
    assert_eq!(detente(&["frobnicate"]).status.code(), Some(2));
    let out = init(&dir, "n1", "en", "UTC");
    assert_eq!(out.status.code(), Some(0));
    let d = dir.to_str().unwrap();
    let before = std::fs::read(dir.join("node.toml")).unwrap();
    let bad = detente(&[
        "config",
        "set",
        "--dir",
        d,
        "link.heartbeat_interval",
        "fast",
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr(&bad).contains("3s"),
        "the error says how to write a duration: {}",
        stderr(&bad)
    );
    assert_eq!(
        std::fs::read(dir.join("node.toml")).unwrap(),
        before,
        "file unchanged"
    );
    let unknown = detente(&["config", "set", "--dir", d, "no.such.key", "1"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(stderr(&unknown).contains("hint: known keys"));
    let good = detente(&[
        "config",
        "set",
        "--dir",
        d,
        "deadlines.flash_acknowledged",
        "5m",
    ]);
    assert_eq!(good.status.code(), Some(0), "{}", stderr(&good));
    let get = detente(&["config", "get", "--dir", d, "deadlines.flash_acknowledged"]);
    assert_eq!(stdout(&get).trim(), "5m");
    let bad_key = detente(&[
        "peer",
        "add",
        "--dir",
        d,
        "--name",
        "x",
        "--key",
        "nonsense",
        "--addr",
        "127.0.0.1:1",
    ]);
    assert_eq!(bad_key.status.code(), Some(1));
    assert!(stderr(&bad_key).contains("hint:"));
}

#[test]
fn commands_that_need_the_node_say_how_to_start_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    init(&dir, "n1", "en", "UTC");
    let d = dir.to_str().unwrap();
    for args in [
        vec!["status", "--dir", d],
        vec!["inbox", "--dir", d],
        vec!["send", "--dir", d, "--to", "x", "--text", "hello"],
    ] {
        let out = detente(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains("error: the node in")
                && err.contains("hint: start it with: detente serve"),
            "{err}"
        );
    }
    let none = detente(&[
        "status",
        "--dir",
        tmp.path().join("nothing").to_str().unwrap(),
    ]);
    assert_eq!(none.status.code(), Some(1));
    assert!(stderr(&none).contains("detente init"));
}

#[test]
fn a_running_node_sends_lists_and_refuses_what_it_must() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    init(&a, "alpha", "en", "UTC");
    init(&b, "bravo", "zh-CN", "Asia/Shanghai");
    let key_b: Value = serde_json::from_str(&stdout(&detente(&[
        "id",
        "--dir",
        b.to_str().unwrap(),
        "--json",
    ])))
    .unwrap();
    // The peer is pinned at an address where nothing listens: messages wait in the outbox.
    let add = detente(&[
        "peer",
        "add",
        "--dir",
        a.to_str().unwrap(),
        "--name",
        "bravo",
        "--key",
        key_b["public_key"].as_str().unwrap(),
        "--addr",
        "127.0.0.1:9",
    ]);
    assert_eq!(add.status.code(), Some(0), "{}", stderr(&add));
    let mut node = Command::new(env!("CARGO_BIN_EXE_detente"))
        .args(["serve", "--dir", a.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let d = a.to_str().unwrap();
    // Wait for the node to write its run file and answer.
    let mut status = None;
    for _ in 0..500 {
        let out = detente(&["status", "--dir", d, "--json"]);
        if out.status.success() {
            status = Some(out);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let status: Value = serde_json::from_str(&stdout(&status.expect("node answered"))).unwrap();
    assert_eq!(status["peers"][0]["name"], "bravo");
    assert!(["down", "degraded"].contains(&status["peers"][0]["state"].as_str().unwrap()));

    let sent = detente(&[
        "send",
        "--dir",
        d,
        "--to",
        "bravo",
        "--precedence",
        "priority",
        "--text",
        "hello",
        "--json",
    ]);
    assert_eq!(sent.status.code(), Some(0), "{}", stderr(&sent));
    let sent: Value = serde_json::from_str(&stdout(&sent)).unwrap();
    assert_eq!(sent["seq"], 1);
    assert_eq!(sent["precedence"], "priority");
    assert_eq!(sent["state"], "stored");

    let long_flash = "x".repeat(600);
    let refused = detente(&[
        "send",
        "--dir",
        d,
        "--to",
        "bravo",
        "--precedence",
        "flash",
        "--text",
        &long_flash,
    ]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("FLASH"), "{}", stderr(&refused));
    let unknown = detente(&["send", "--dir", d, "--to", "nobody", "--text", "hi"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(stderr(&unknown).contains("hint: add it with: detente peer add"));
    let timeout = detente(&[
        "send",
        "--dir",
        d,
        "--to",
        "bravo",
        "--text",
        "wait",
        "--wait",
        "delivered",
        "--timeout",
        "1",
    ]);
    assert_eq!(
        timeout.status.code(),
        Some(1),
        "no receipt from a dead peer"
    );

    let inbox = detente(&["inbox", "--dir", d, "--json"]);
    let list: Value = serde_json::from_str(&stdout(&inbox)).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "the refused FLASH was not stored");
    for key in [
        "id",
        "peer",
        "sender",
        "seq",
        "direction",
        "precedence",
        "topic",
        "created_at",
        "kind",
        "text",
        "format",
        "fields",
        "rendered",
        "received_at",
        "in_reply_to",
        "receipts",
        "overdue",
    ] {
        assert!(list[0].get(key).is_some(), "inbox --json has {key}");
    }
    assert_eq!(list[0]["direction"], "out");
    assert!(list[0]["receipts"]["delivered"].is_null());
    // For people: the time in the reader's zone (--tz, else the node's), named in the
    // reader's language (--lang, else the node's), UTC beside.
    let text = stdout(&detente(&["inbox", "--dir", d, "--tz", "Asia/Shanghai"]));
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.contains(" China Standard Time (") && first.contains("Z) →"),
        "{first}"
    );
    let bad_zone = detente(&["inbox", "--dir", d, "--tz", "Mars/Olympus"]);
    assert_eq!(bad_zone.status.code(), Some(2));
    let status: Value =
        serde_json::from_str(&stdout(&detente(&["status", "--dir", d, "--json"]))).unwrap();
    assert_eq!(status["peers"][0]["outbox"], 2);

    let _ = Command::new("kill")
        .args(["-TERM", &node.id().to_string()])
        .status();
    let exit = node.wait().unwrap();
    assert!(exit.success(), "SIGTERM is a clean shutdown");
}

/// `bench --append` runs on a real SQLite file and reports both ways and their difference;
/// a count it cannot batch is a usage error.
#[test]
fn bench_append_reports_the_merkle_cost() {
    let out = detente(&["bench", "--append", "--messages", "256", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["messages"], 256);
    for key in [
        "commit_us_per_msg",
        "commit_with_merkle_us_per_msg",
        "append_cost_us_per_msg",
        "append_share_of_foundation_pct",
    ] {
        assert!(v[key].is_f64(), "{key}: {v}");
    }
    assert!(v["commit_us_per_msg"].as_f64().unwrap() > 0.0);
    assert_eq!(v["runs_with"].as_array().unwrap().len(), 7);
    let out = detente(&["bench", "--append", "--messages", "5"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// `bench --transcript N` builds both channels in real SQLite files, checks every proof it
/// times against the root, and reports each figure at both lengths with their ratio; a
/// length outside 10,000..=10,000,000 is a usage error.
#[test]
fn bench_transcript_compares_a_long_channel_with_a_short_one() {
    let out = detente(&["bench", "--transcript", "12000", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["small"]["messages"], 10_000);
    assert_eq!(v["large"]["messages"], 12_000);
    for side in ["small", "large"] {
        for key in ["append_us_per_msg", "prove_us", "export_us_per_msg"] {
            assert!(
                v[side][key].as_f64().is_some_and(|x| x > 0.0),
                "{side}.{key}: {v}"
            );
        }
    }
    for key in ["append", "prove", "export"] {
        assert!(v["ratio_large_to_small"][key].is_f64(), "{key}: {v}");
    }
    let out = detente(&["bench", "--transcript", "9999"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// `bench --peers N` starts one node with N peers (real processes, real TLS on loopback),
/// sends its messages spread over them, and reports the node's CPU per message beside the
/// one-peer figure; bad bounds are a usage error.
#[test]
fn bench_peers_measures_one_node_with_many_peers_against_one() {
    let out = detente(&["bench", "--peers", "3", "--messages", "300", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["peers"], 3);
    assert_eq!(v["messages"], 300);
    for side in ["one_peer", "many_peers"] {
        for key in ["throughput_msgs_per_s", "hub_peak_rss_mib"] {
            assert!(
                v[side][key].as_f64().is_some_and(|x| x > 0.0),
                "{side}.{key}: {v}"
            );
        }
        // CPU time comes in 10 ms ticks: a short run may see none.
        let cpu = v[side]["hub_cpu_us_per_msg"].as_f64();
        assert!(cpu.is_some_and(|x| x >= 0.0), "{side}: {v}");
    }
    assert!(
        v["hub_cpu_ratio"].is_null() || v["hub_cpu_ratio"].as_f64().is_some_and(|r| r > 0.0),
        "{v}"
    );
    for bad in [["--peers", "0"], ["--peers", "257"]] {
        let out = detente(&["bench", bad[0], bad[1]]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr(&out));
    }
    let out = detente(&["bench", "--peers", "5", "--messages", "4"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// Issue 12, item 19: `detente verify … | head -1` used to panic on the broken pipe. The
/// reader is gone before the first line here; the command ends without a panic, with the
/// verdict as its exit status.
#[test]
fn verify_into_a_closed_pipe_exits_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("not-a-bundle");
    std::fs::write(&file, b"\x84garbage").unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_detente"))
        .args(["verify", file.to_str().unwrap(), "--json"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run detente");
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "the verdict (a failed verification): {err}"
    );
}
