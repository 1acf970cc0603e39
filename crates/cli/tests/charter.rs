//! Channel charters between real node processes (docs/spec.md §2): on first contact both nodes sign
//! the same charter, made from both configurations with the stricter deadline winning; a
//! changed configuration makes a new charter version that both sign; a restart without a
//! change signs nothing new.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use detente::client::Client;
use detente::harness::{wait_link_up, ProcNode};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);

/// Poll `peer`'s charter on `client` until `done` holds (bounded by TIMEOUT).
async fn wait_charter(
    client: &Client,
    peer: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let last = client
            .get(&format!("/api/v1/peers/{peer}/charter"))
            .await
            .ok()
            .unwrap_or(Value::Null);
        if done(&last) {
            return last;
        }
        assert!(Instant::now() < deadline, "{what}; last seen: {last:#}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn agreed_version(v: &Value, version: u64) -> bool {
    v["state"] == "agreed" && v["version"] == version
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_sign_the_stricter_charter_and_a_change_makes_a_new_version() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_detente"));
    let mut w = ProcNode::init(tmp.path(), "washington", "US DoD", "en", "America/New_York")
        .ok()
        .unwrap();
    let mut b = ProcNode::init(tmp.path(), "beijing", "PRC MND", "zh-CN", "Asia/Shanghai")
        .ok()
        .unwrap();
    w.exe = exe.clone();
    b.exe = exe;
    ProcNode::pin_pair(&w, &b).ok().unwrap();
    w.set("deadlines.flash_acknowledged", "5m").ok().unwrap();
    b.set("deadlines.flash_acknowledged", "7m").ok().unwrap();
    b.set("deadlines.routine_acknowledged", "2h").ok().unwrap();
    w.set("link.test_interval", "30m").ok().unwrap();
    // Beijing restarts twice in a row: with the default redial backoff (up to 30 s) the link
    // can stay down past the wait below on a loaded machine (a fresh-clone CI run of 1f9384f
    // failed so). The test is about charters, so redial quickly, as the other process tests do.
    for n in [&w, &b] {
        n.set("link.backoff_max", "400ms").ok().unwrap();
    }
    let counterpart = std::process::Command::new(&w.exe)
        .args(["counterpart", "add", "--dir"])
        .arg(&w.dir)
        .args([
            "--ours",
            "Secretary of Defense",
            "--theirs",
            "Minister of National Defense",
        ])
        .output()
        .unwrap();
    assert_eq!(counterpart.status.code(), Some(0));

    w.start().ok().unwrap();
    b.start().ok().unwrap();
    let wc = w.wait_ready(TIMEOUT).await.ok().unwrap();
    let bc = b.wait_ready(TIMEOUT).await.ok().unwrap();
    wait_link_up(&wc, "beijing", TIMEOUT).await.ok().unwrap();

    let at_w = wait_charter(&wc, "beijing", "washington never agreed a charter", |v| {
        agreed_version(v, 1)
    })
    .await;
    let at_b = wait_charter(&bc, "washington", "beijing never agreed a charter", |v| {
        agreed_version(v, 1)
    })
    .await;
    assert_eq!(
        at_w["digest"], at_b["digest"],
        "both sides signed the same charter"
    );
    let c = &at_w["charter"];
    assert_eq!(
        c["deadlines"]["flash_acknowledged"], "5m",
        "the stricter one wins"
    );
    assert_eq!(
        c["deadlines"]["routine_acknowledged"], "2h",
        "the stricter one wins"
    );
    assert_eq!(
        c["deadlines"]["flash_delivered"], "10s",
        "default of docs/spec.md §5"
    );
    assert_eq!(c["link_test_interval"], "30m");
    let members = c["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    let tz: Vec<&str> = members.iter().map(|m| m["tz"].as_str().unwrap()).collect();
    assert!(tz.contains(&"America/New_York") && tz.contains(&"Asia/Shanghai"));
    let pairs = c["counterparts"].as_array().unwrap();
    assert_eq!(pairs.len(), 1);
    let pair: Vec<&str> = pairs[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        pair.contains(&"Secretary of Defense") && pair.contains(&"Minister of National Defense")
    );
    // Status shows it too.
    let status = wc.get("/api/v1/status").await.ok().unwrap();
    assert_eq!(status["peers"][0]["charter"]["state"], "agreed");

    // A restart without a change signs nothing new.
    let first_ours = at_b["ours"]["message"].clone();
    b.stop();
    b.start().ok().unwrap();
    let bc = b.wait_ready(TIMEOUT).await.ok().unwrap();
    wait_link_up(&bc, "washington", TIMEOUT).await.ok().unwrap();
    let again = wait_charter(&bc, "washington", "beijing lost its charter", |v| {
        agreed_version(v, 1)
    })
    .await;
    assert_eq!(
        again["ours"]["message"], first_ours,
        "no new charter after a plain restart"
    );

    // A stricter deadline at beijing makes charter version 2, signed by both.
    b.stop();
    b.set("deadlines.flash_acknowledged", "3m").ok().unwrap();
    b.start().ok().unwrap();
    let bc = b.wait_ready(TIMEOUT).await.ok().unwrap();
    let v2b = wait_charter(&bc, "washington", "beijing never agreed charter v2", |v| {
        agreed_version(v, 2)
    })
    .await;
    let v2w = wait_charter(&wc, "beijing", "washington never agreed charter v2", |v| {
        agreed_version(v, 2)
    })
    .await;
    assert_eq!(v2b["digest"], v2w["digest"]);
    assert_ne!(v2b["digest"], at_w["digest"]);
    assert_eq!(v2w["charter"]["deadlines"]["flash_acknowledged"], "3m");
    w.stop();
    b.stop();
}
