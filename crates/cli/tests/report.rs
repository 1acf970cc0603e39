//! `detente report` on a real channel: washington (English, New York) and beijing (Chinese,
//! Shanghai) as real node processes exchange a launch notification, a free text with a
//! courtesy translation and an acknowledgment, co-sign a checkpoint and export. The record
//! names every message id, shows the notification in both languages and the receipt, and
//! prints to a PDF with headless Chromium. A bundle with one flipped bit is refused (no file
//! written), and with `--even-if-damaged` marked as failing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use detente::client::Client;
use detente::harness::{wait_link_up, wait_outbox_empty, ProcNode};
use detente_proto::bundle::Bundle;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

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

async fn node(base: &Path, name: &str, party: &str, lang: &str, tz: &str) -> ProcNode {
    let mut n = ProcNode::init(base, name, party, lang, tz).unwrap();
    n.exe = PathBuf::from(env!("CARGO_BIN_EXE_detente"));
    n.set("transcript.checkpoint_quiet", "off").unwrap();
    n.set("transcript.checkpoint_every", "0").unwrap();
    n
}

/// Sign a checkpoint on `from` and wait until it is co-signed there.
async fn cosign(from: &Client, peer: &str) {
    let signed = from
        .post(&format!("/api/v1/peers/{peer}/checkpoint"), &json!({}))
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let status = from.get("/api/v1/status").await.unwrap();
        let c = &status["peers"][0]["checkpoint"];
        if c["time_ms"] == signed["time_ms"] && c["cosigned"] == true {
            return;
        }
        assert!(Instant::now() < deadline, "not co-signed in time: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn utc(ts: jiff::Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_of_a_real_channel_names_everything_in_both_languages() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = node(
        tmp.path(),
        "washington",
        "United States",
        "en",
        "America/New_York",
    )
    .await;
    let mut b = node(tmp.path(), "beijing", "China", "zh-CN", "Asia/Shanghai").await;
    ProcNode::pin_pair(&w, &b).unwrap();
    w.start().unwrap();
    b.start().unwrap();
    let wc = w.wait_ready(WAIT).await.unwrap();
    let bc = b.wait_ready(WAIT).await.unwrap();
    wait_link_up(&wc, "beijing", WAIT).await.unwrap();
    detente::demo_charter::show_agreed(&wc, &bc, WAIT)
        .await
        .unwrap();

    let now = jiff::Timestamp::now();
    let start = jiff::Timestamp::from_second((now.as_second() / 3600 + 48) * 3600).unwrap();
    let end = start + jiff::SignedDuration::from_hours(3);
    let wd = w.dir.to_str().unwrap().to_string();
    let fields = [
        format!("window_start={}", utc(start)),
        format!("window_end={}", utc(end)),
        "launch_area=circle:40.5,-100.2,25".to_string(),
        "impact_area=circle:10,170,50".to_string(),
        "count=2".to_string(),
        "category=icbm".to_string(),
        "remarks=Scheduled test.".to_string(),
    ];
    let mut args = vec![
        "send", "--dir", &wd, "--to", "beijing", "--format", "launch", "--json",
    ];
    for f in &fields {
        args.extend(["--field", f]);
    }
    let sent = detente(&args);
    assert_eq!(sent.status.code(), Some(0), "{}", text(&sent));
    let launch: Value = serde_json::from_slice(&sent.stdout).unwrap();
    let launch_id = launch["id"].as_str().unwrap().to_string();

    let reply = bc
        .post(
            "/api/v1/messages",
            &json!({"to": "washington", "precedence": "immediate", "text": "收到，谢谢通报。",
                    "reply_to": launch_id}),
        )
        .await
        .unwrap();
    let reply_id = reply["id"].as_str().unwrap().to_string();
    wait_outbox_empty(&wc, "beijing", WAIT).await.unwrap();
    wait_outbox_empty(&bc, "washington", WAIT).await.unwrap();
    bc.post(
        &format!("/api/v1/messages/{launch_id}/receipts"),
        &json!({"level": "acknowledged", "note": "已知悉。"}),
    )
    .await
    .ok()
    .unwrap();
    wait_outbox_empty(&bc, "washington", WAIT).await.unwrap();
    cosign(&wc, "beijing").await;

    let bundle = tmp.path().join("channel.bundle");
    let out = detente(&[
        "export",
        "--dir",
        &wd,
        "--peer",
        "beijing",
        "--out",
        bundle.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    w.stop();
    b.stop();

    let html = tmp.path().join("record.html");
    let pdf = tmp.path().join("record.pdf");
    let mut args = vec![
        "report".to_string(),
        bundle.to_str().unwrap().to_string(),
        "--out".into(),
        html.to_str().unwrap().into(),
    ];
    let chromium = Path::new("/usr/bin/chromium").exists();
    if chromium {
        args.extend(["--pdf".into(), pdf.to_str().unwrap().into()]);
    } else {
        eprintln!("skipping the PDF half: /usr/bin/chromium is not installed");
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = detente(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let record = std::fs::read_to_string(&html).unwrap();
    progress_only_on_a_terminal(&out, &bundle, &tmp.path().join("again.html"));

    // Every envelope of a person in the bundle is named by its full id.
    let decoded = Bundle::decode(&std::fs::read(&bundle).unwrap()).unwrap();
    let mut people = 0;
    for (key, list) in &decoded.streams {
        for raw in list {
            let v = detente_proto::VerifiedEnvelope::decode(raw, Some(key)).unwrap();
            if matches!(
                v.envelope().body,
                detente_proto::Body::Text(_) | detente_proto::Body::Notification(_)
            ) {
                people += 1;
                assert!(record.contains(&v.id().to_hex()), "{} missing", v.id());
            }
        }
    }
    assert_eq!(people, 2, "the launch and the reply");
    assert!(record.contains(&launch_id) && record.contains(&reply_id));
    // The launch in English and in Chinese; the reply in its own language.
    for words in [
        "Ballistic missile launch notification",
        "弹道导弹发射通报",
        "收到，谢谢通报。",
        "ACKNOWLEDGED",
        "已知悉。",
        "Verified offline",
        "已离线验证",
        "Asia/Shanghai",
        "America/New_York",
    ] {
        assert!(record.contains(words), "{words:?} not in the record");
    }
    assert!(!record.contains("FAILED VERIFICATION"));
    if chromium {
        let printed = std::fs::read(&pdf).unwrap();
        assert!(printed.starts_with(b"%PDF"), "a PDF");
        assert!(printed.len() > 10_000, "{} bytes", printed.len());
    }

    // One flipped bit: refused, and nothing written that could pass for a record.
    let mut bytes = std::fs::read(&bundle).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    let damaged = tmp.path().join("damaged.bundle");
    std::fs::write(&damaged, &bytes).unwrap();
    let refused = tmp.path().join("refused.html");
    let out = detente(&[
        "report",
        damaged.to_str().unwrap(),
        "--out",
        refused.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("failed verification"), "{}", text(&out));
    assert!(!refused.exists(), "no record of a damaged bundle");
    let out = detente(&[
        "report",
        damaged.to_str().unwrap(),
        "--out",
        refused.to_str().unwrap(),
        "--even-if-damaged",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let marked = std::fs::read_to_string(&refused).unwrap();
    assert!(marked.contains("<title>FAILED VERIFICATION"));
    assert!(marked.contains("class=\"damaged\""));
    assert!(!marked.contains("Verified offline"));
}

/// Off a terminal (stderr piped, as here) `report` prints its closing line and nothing
/// else; on one (a pseudo-terminal made by util-linux's `script`) it draws its progress.
fn progress_only_on_a_terminal(piped: &Output, bundle: &Path, out: &Path) {
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert_eq!(
        stderr.lines().count(),
        1,
        "only the closing line: {stderr:?}"
    );
    assert!(
        !stderr.contains(['\r', '\u{1b}']),
        "no drawing off a terminal: {stderr:?}"
    );
    let command = format!(
        "{} report {} --out {}",
        env!("CARGO_BIN_EXE_detente"),
        bundle.display(),
        out.display()
    );
    let on_terminal = Command::new("script")
        .args(["--quiet", "--return", "--command", &command, "/dev/null"])
        .output()
        .expect("script (util-linux) makes a pseudo-terminal");
    let seen = text(&on_terminal);
    assert_eq!(on_terminal.status.code(), Some(0), "{seen}");
    assert!(
        seen.contains("verifying"),
        "progress on a terminal: {seen:?}"
    );
    assert!(seen.contains("record of"), "{seen:?}");
}
