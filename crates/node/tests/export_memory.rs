//! An export's memory does not grow with the transcript (issue 12, item 14).
//!
//! The node runs in this test's process, alone in its own test binary so that nothing else
//! allocates meanwhile. The test stores ~58 MiB of signed envelopes, resets the process's
//! peak resident size (`/proc/self/clear_refs`), reads an export through the API a buffer at
//! a time without keeping it, and compares the peak with the resident size before: the node
//! must stream the bundle, not build it in memory (which costs at least twice its size;
//! streaming costs a few chunks, a page and the read connections' SQLite caches).
//! Then it exports again, keeping the bytes, and checks that they are a bundle that verifies;
//! and last, with one row altered deep in the stream, that the export stops there.

mod common;

use std::time::Duration;

use detente_node::Node;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any single answer may take before the test fails.
const WAIT: Duration = Duration::from_secs(120);
/// Messages stored, in batches of [`BATCH`], of [`TEXT_BYTES`] each.
const MESSAGES: usize = 48_000;
const BATCH: usize = 1_000;
const TEXT_BYTES: usize = 1_024;
/// The message altered in the database at the end, and its text.
const DEEP_SEQ: usize = 40_000;
const DEEP_TEXT: &str = "altered-deep-in-the-stream";

async fn start_node(dir: &std::path::Path) -> Node {
    common::start_target(dir, true).await
}

/// One HTTP/1.0 exchange (so the body is neither chunked nor kept alive); `sink` gets the
/// answer's bytes as they arrive. Returns the status.
async fn call(
    node: &Node,
    method: &str,
    path: &str,
    body: &str,
    mut sink: impl FnMut(&[u8]),
) -> u16 {
    let shared = &node.shared;
    let mut s = TcpStream::connect(shared.console_addr).await.expect("API");
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        shared.token,
        body.len()
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let read = async {
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            if let Some(end) = head_end(&head) {
                let _ = end;
                sink(&buf[..n]);
                continue;
            }
            head.extend_from_slice(&buf[..n]);
            if let Some(end) = head_end(&head) {
                sink(&head[end..]);
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("the API answers");
    let text = String::from_utf8_lossy(&head);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// A field of /proc/self/status in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_streams_in_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start_node(tmp.path()).await;
    let text = "x".repeat(TEXT_BYTES);
    for b in 0..MESSAGES / BATCH {
        let messages: Vec<_> = (0..BATCH)
            .map(|i| {
                // One message deep in the stream is marked, to be altered later.
                let text = if b * BATCH + i + 1 == DEEP_SEQ {
                    DEEP_TEXT.to_string()
                } else {
                    text.clone()
                };
                serde_json::json!({"to": "fake", "precedence": "routine", "text": text})
            })
            .collect();
        let body = serde_json::json!({ "messages": messages }).to_string();
        let status = call(&node, "POST", "/api/v1/messages/batch", &body, |_| {}).await;
        assert_eq!(status, 201);
    }

    // The peak resident size from here on (Linux: writing 5 resets VmHWM to VmRSS).
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak resident size");
    let before = status_kib("VmRSS:");
    let mut streamed = 0usize;
    let status = call(&node, "GET", "/api/v1/peers/fake/export", "", |b| {
        streamed += b.len()
    })
    .await;
    assert_eq!(status, 200);
    let growth = status_kib("VmHWM:").saturating_sub(before);
    let bundle_kib = (streamed / 1024) as u64;
    println!("export of {MESSAGES} messages: {bundle_kib} KiB streamed, peak resident size grew {growth} KiB");
    assert!(bundle_kib > 48 * 1024, "the bundle is {bundle_kib} KiB");
    assert!(
        growth < bundle_kib / 3,
        "an export of {bundle_kib} KiB raised the peak resident size by {growth} KiB"
    );

    let mut kept = Vec::new();
    let status = call(&node, "GET", "/api/v1/peers/fake/export", "", |b| {
        kept.extend_from_slice(b)
    })
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        kept.len(),
        streamed,
        "two exports of an unchanged channel are alike"
    );
    let report = detente_proto::bundle::verify(&kept);
    assert!(report.ok(), "{:?}", report.problems.first());
    assert_eq!(report.messages, MESSAGES as u64);

    // A row altered deep in the stream, far past the first chunk: the answer has started
    // (200), so the node ends the body there; what arrived is no bundle, and the alarm
    // names the row.
    let dir = node.shared.dir.clone();
    node.stop().await;
    let db = dir.file("detente.db");
    common::wal_into_file(&db).await;
    let mut file = std::fs::read(&db).unwrap();
    let at = file
        .windows(DEEP_TEXT.len())
        .position(|w| w == DEEP_TEXT.as_bytes())
        .expect("the marked text is in the file");
    file[at + DEEP_TEXT.len() - 1] ^= 0x01;
    std::fs::write(&db, &file).unwrap();
    let node = Node::start(dir).await.expect("restart");
    let mut cut = Vec::new();
    let status = call(&node, "GET", "/api/v1/peers/fake/export", "", |b| {
        cut.extend_from_slice(b)
    })
    .await;
    assert_eq!(status, 200);
    assert!(cut.len() < kept.len(), "the body ends early");
    assert!(!detente_proto::bundle::verify(&cut).ok());
    let mut status_json = Vec::new();
    call(&node, "GET", "/api/v1/status", "", |b| {
        status_json.extend_from_slice(b)
    })
    .await;
    let status_json = String::from_utf8_lossy(&status_json);
    assert!(
        status_json.contains(&format!("seq {DEEP_SEQ}"))
            && status_json.contains("fails verification"),
        "{status_json}"
    );
    node.stop().await;
}
