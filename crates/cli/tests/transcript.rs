//! The transcript end to end, with real `detente serve` processes over TLS on loopback:
//! messages both ways with receipts, checkpoints co-signed by both nodes, `detente export`,
//! and `detente verify` over the untouched bundle (exit 0) and over every tampering the issue
//! lists (exit 1, naming the problem): a flipped bit in an envelope, a deleted message, two
//! messages swapped, a forged checkpoint signature, a checkpoint root that does not match, a
//! receipt for a message that does not exist, a truncated file, two inconsistent
//! checkpoints. Also `detente proof` → `detente verify`, and a node killed (failpoint)
//! between storing its checkpoint and sending it, which after restart sends that same
//! checkpoint, gets it co-signed, and signs only consistent ones after it.
//!
//! The automatic-checkpoint test and the failpoint test also run with alpha on PostgreSQL
//! and bravo on SQLite (`…_alpha_on_postgres`, a database of its own on the test server; see
//! `detente_store::pg_test`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use detente::client::Client;
use detente::harness::{send_bulk, wait_link_up, wait_outbox_empty, ProcNode};
use detente_node::config::NodeDir;
use detente_proto::bundle::Bundle;
use detente_proto::checkpoint::{Checkpoint, SignedCheckpoint};
use detente_proto::{
    Body, Envelope, MessageId, PartySecret, Precedence, Receipt, ReceiptLevel, ReceiptTarget,
    VerifiedEnvelope,
};
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

/// Two nodes that checkpoint only on demand.
async fn pair(base: &Path, alpha_database: Option<&str>) -> (ProcNode, ProcNode, Client, Client) {
    pair_with(base, "0", alpha_database).await
}

/// Two nodes that checkpoint automatically after `every` appended envelopes (`"0"`: only on
/// demand), never on quiet time (that would come at a machine-speed-dependent moment).
/// Alpha keeps its data at `alpha_database` when given.
async fn pair_with(
    base: &Path,
    every: &str,
    alpha_database: Option<&str>,
) -> (ProcNode, ProcNode, Client, Client) {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_detente"));
    let mut a = ProcNode::init(base, "alpha", "Party Alpha", "en", "UTC")
        .ok()
        .unwrap();
    let mut b = ProcNode::init(base, "bravo", "Party Bravo", "en", "UTC")
        .ok()
        .unwrap();
    a.exe = exe.clone();
    b.exe = exe;
    ProcNode::pin_pair(&a, &b).ok().unwrap();
    if let Some(url) = alpha_database {
        a.set("database_url", url).ok().unwrap();
    }
    for node in [&a, &b] {
        node.set("transcript.checkpoint_quiet", "off").ok().unwrap();
        node.set("transcript.checkpoint_every", every).ok().unwrap();
    }
    a.start().ok().unwrap();
    b.start().ok().unwrap();
    let ac = a.wait_ready(WAIT).await.ok().unwrap();
    let bc = b.wait_ready(WAIT).await.ok().unwrap();
    wait_link_up(&ac, "bravo", WAIT).await.ok().unwrap();
    (a, b, ac, bc)
}

/// Sign a checkpoint on `from` and wait until it is co-signed there.
async fn cosign(from: &Client, peer: &str) -> Value {
    let signed = from
        .post(&format!("/api/v1/peers/{peer}/checkpoint"), &json!({}))
        .await
        .ok()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let status = from.get("/api/v1/status").await.ok().unwrap();
        let c = status["peers"][0]["checkpoint"].clone();
        if c["time_ms"] == signed["time_ms"] && c["cosigned"] == true {
            return c;
        }
        assert!(Instant::now() < deadline, "not co-signed in time: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn settle(ac: &Client, bc: &Client) {
    wait_outbox_empty(ac, "bravo", WAIT).await.ok().unwrap();
    wait_outbox_empty(bc, "alpha", WAIT).await.ok().unwrap();
}

/// `detente export` of the node in `dir`'s channel with `peer` into `file`; must succeed.
fn export(dir: &Path, peer: &str, file: &Path) {
    let out = detente(&[
        "export",
        "--dir",
        dir.to_str().unwrap(),
        "--peer",
        peer,
        "--out",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

fn write(path: &Path, bytes: &[u8]) -> String {
    std::fs::write(path, bytes).unwrap();
    path.to_str().unwrap().to_string()
}

/// `verify` must fail with exit 1, name `expect` in its error, and list problems in JSON.
fn assert_refused(dir: &Path, name: &str, bytes: &[u8], expect: &str) {
    let file = write(&dir.join(format!("{name}.bundle")), bytes);
    let out = detente(&["verify", &file]);
    assert_eq!(out.status.code(), Some(1), "{name}: {}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    // Further problems are listed first; the `error:` line names the first one.
    let first = err
        .lines()
        .find(|l| l.starts_with("error: verification failed: "))
        .unwrap_or_else(|| panic!("{name}: no error line: {err}"));
    assert!(
        first.contains(expect),
        "{name}: first problem should name {expect:?}: {err}"
    );
    let out = detente(&["verify", &file, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(v["ok"], false, "{name}");
    assert!(!v["problems"].as_array().unwrap().is_empty(), "{name}");
}

fn resign_bundle(b: &Bundle) -> Vec<u8> {
    b.encode()
}

/// Automatic checkpoints while both sides send at once. One member (the smaller key)
/// proposes, naming only as much of its own stream as the other has confirmed holding, so the
/// other can always check and co-sign: no crossing proposals refused by the witness rule, no
/// pile of checkpoints nobody co-signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_checkpoints_under_traffic_both_ways_are_all_cosigned() {
    automatic_checkpoints(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_checkpoints_alpha_on_postgres() {
    let Some(url) = detente_store::pg_test::fresh_database("checkpoints").await else {
        return;
    };
    automatic_checkpoints(Some(&url)).await;
}

async fn automatic_checkpoints(alpha_database: Option<&str>) {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, ac, bc) = pair_with(tmp.path(), "25", alpha_database).await;
    let (x, y) = tokio::join!(
        send_bulk(&ac, "bravo", 150, 200, "alpha report"),
        send_bulk(&bc, "alpha", 150, 200, "bravo report")
    );
    x.ok().unwrap();
    y.ok().unwrap();
    settle(&ac, &bc).await;
    // The last proposal and its co-signature may still be on the way: wait until both sides
    // show the same latest checkpoint, signed by both, and neither holds a newer proposal
    // still waiting for its co-signature (status shows only co-signed ones, so a proposal
    // stored by the proposer but not yet answered is seen in the export).
    let deadline = Instant::now() + WAIT;
    loop {
        let sa = ac.get("/api/v1/status").await.ok().unwrap();
        let sb = bc.get("/api/v1/status").await.ok().unwrap();
        let (ca, cb) = (&sa["peers"][0]["checkpoint"], &sb["peers"][0]["checkpoint"]);
        if ca["cosigned"] == true
            && cb["cosigned"] == true
            && ca["time_ms"] == cb["time_ms"]
            && !proposal_pending(&ac, "bravo").await
            && !proposal_pending(&bc, "alpha").await
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no common co-signed checkpoint: {sa} {sb}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (node, peer) in [(&a, "bravo"), (&b, "alpha")] {
        let file = tmp.path().join(format!("{peer}.bundle"));
        export(&node.dir, peer, &file);
        let bundle = Bundle::decode(&std::fs::read(&file).unwrap()).unwrap();
        assert!(
            bundle.checkpoints.len() >= 2,
            "{} checkpoints",
            bundle.checkpoints.len()
        );
        for (i, bytes) in bundle.checkpoints.iter().enumerate() {
            let signed = SignedCheckpoint::decode(bytes).unwrap();
            assert!(
                signed.cosigned(),
                "checkpoint {} of {} in {peer}'s export is not co-signed: {:?}",
                i + 1,
                bundle.checkpoints.len(),
                signed.checkpoint()
            );
        }
        let out = detente(&["verify", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
}

/// Whether the node behind `client` holds a checkpoint of its channel with `peer` that is
/// not co-signed yet.
async fn proposal_pending(client: &Client, peer: &str) -> bool {
    let bytes = client
        .get_bytes(&format!("/api/v1/peers/{peer}/export"))
        .await
        .ok()
        .unwrap();
    Bundle::decode(&bytes)
        .unwrap()
        .checkpoints
        .iter()
        .any(|c| !SignedCheckpoint::decode(c).unwrap().cosigned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_verify_and_every_tampering_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut a, mut b, ac, bc) = pair(tmp.path(), None).await;

    let sent = send_bulk(&ac, "bravo", 30, 200, "alpha report")
        .await
        .ok()
        .unwrap();
    send_bulk(&bc, "alpha", 20, 200, "bravo report")
        .await
        .ok()
        .unwrap();
    settle(&ac, &bc).await;
    // Bravo reads and acknowledges one of alpha's messages: receipts in the transcript.
    let first_id = sent[0]["id"].as_str().unwrap().to_string();
    bc.post(
        &format!("/api/v1/messages/{first_id}/receipts"),
        &json!({"level": "acknowledged"}),
    )
    .await
    .ok()
    .unwrap();
    settle(&ac, &bc).await;
    cosign(&ac, "bravo").await;
    send_bulk(&ac, "bravo", 5, 200, "alpha later")
        .await
        .ok()
        .unwrap();
    settle(&ac, &bc).await;
    let latest = cosign(&bc, "alpha").await;
    assert_eq!(latest["cosigned"], true);

    // status (text) shows the latest checkpoint signed by all.
    let out = detente(&["status", "--dir", a.dir.to_str().unwrap()]);
    assert!(
        text(&out).contains("latest checkpoint signed by all"),
        "{}",
        text(&out)
    );

    let file = tmp.path().join("alpha.bundle");
    export(&a.dir, "bravo", &file);
    let out = detente(&["verify", file.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["checkpoints"], 2);
    assert!(v["messages"].as_u64().unwrap() >= 56, "{v}");
    assert_eq!(v["problems"], json!([]));
    let out = detente(&["verify", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: "));

    // The other side's export verifies too and holds the same streams.
    let other = tmp.path().join("bravo.bundle");
    export(&b.dir, "alpha", &other);
    let original = std::fs::read(&file).unwrap();
    let bundle = Bundle::decode(&original).unwrap();
    let theirs = Bundle::decode(&std::fs::read(&other).unwrap()).unwrap();
    assert_eq!(bundle.streams, theirs.streams);
    assert_eq!(
        detente(&["verify", other.to_str().unwrap()]).status.code(),
        Some(0)
    );

    // A proof of one message verifies alone; a flipped bit in its path does not.
    let out = detente(&["proof", "--dir", a.dir.to_str().unwrap(), &first_id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let proof_file = write(&tmp.path().join("proof.json"), &out.stdout);
    let out = detente(&["verify", &proof_file]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mut proof: Value =
        serde_json::from_str(&std::fs::read_to_string(&proof_file).unwrap()).unwrap();
    let h = proof["path"][0].as_str().unwrap().to_string();
    let flipped = format!("{}{}", if h.starts_with('0') { "1" } else { "0" }, &h[1..]);
    proof["path"][0] = json!(flipped);
    let bad = write(
        &tmp.path().join("bad-proof.json"),
        proof.to_string().as_bytes(),
    );
    let out = detente(&["verify", &bad]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("inclusion path"), "{}", text(&out));

    let dir = tmp.path();
    let alpha_key = NodeDir::new(&a.dir).secret().unwrap();
    let bravo_key = NodeDir::new(&b.dir).secret().unwrap();
    let alpha_index = bundle
        .members
        .iter()
        .position(|k| *k == alpha_key.public())
        .unwrap();

    // 1. A flipped bit inside an envelope.
    let mut t = bundle.clone();
    t.streams[alpha_index].1[3][40] ^= 0x01;
    assert_refused(dir, "bitflip", &resign_bundle(&t), "seq 4: envelope");

    // 2. A deleted message.
    let mut t = bundle.clone();
    t.streams[alpha_index].1.remove(5);
    assert_refused(
        dir,
        "deleted",
        &resign_bundle(&t),
        "seq 6: envelope: gap or reordering",
    );

    // 3. Two messages swapped.
    let mut t = bundle.clone();
    t.streams[alpha_index].1.swap(7, 8);
    assert_refused(
        dir,
        "swapped",
        &resign_bundle(&t),
        "seq 8: envelope: gap or reordering",
    );

    // 4. A forged checkpoint signature (one bit of the last signature).
    let mut t = bundle.clone();
    let last = t.checkpoints.len() - 1;
    let n = t.checkpoints[last].len();
    t.checkpoints[last][n - 1] ^= 0x01;
    assert_refused(
        dir,
        "forged-signature",
        &resign_bundle(&t),
        "checkpoint 2: the signature of",
    );

    // 5. A checkpoint whose root does not match, validly signed by both parties.
    let signed = SignedCheckpoint::decode(&bundle.checkpoints[last]).unwrap();
    let mut c: Checkpoint = signed.checkpoint().clone();
    c.members[alpha_index].root[0] ^= 0xff;
    let mut wrong = SignedCheckpoint::sign(c.clone(), &alpha_key).unwrap();
    wrong.add_signature(&bravo_key).unwrap();
    let mut t = bundle.clone();
    t.checkpoints[last] = wrong.encode();
    assert_refused(
        dir,
        "wrong-root",
        &resign_bundle(&t),
        "does not match the stream",
    );

    // 6. A receipt, validly signed and chained, for a message that does not exist.
    let mut t = bundle.clone();
    let stream = &mut t.streams[alpha_index].1;
    let prev = VerifiedEnvelope::decode(stream.last().unwrap(), None).unwrap();
    let p = prev.envelope();
    let receipt = VerifiedEnvelope::sign(
        Envelope {
            channel: p.channel,
            sender: p.sender,
            seq: p.seq + 1,
            prev: prev.id(),
            created_at_ms: p.created_at_ms + 1,
            precedence: Precedence::Routine,
            topic: "general".into(),
            author: "Duty Officer".into(),
            in_reply_to: None,
            body: Body::Receipt(Receipt {
                level: ReceiptLevel::Acknowledged,
                target: ReceiptTarget::Message(MessageId([0x42; 32])),
                note: None,
            }),
        },
        &alpha_key,
    )
    .unwrap();
    stream.push(receipt.bytes().to_vec());
    assert_refused(
        dir,
        "phantom-receipt",
        &resign_bundle(&t),
        "which is not in the bundle",
    );

    // 7. A truncated file.
    assert_refused(
        dir,
        "truncated",
        &original[..original.len() - 100],
        "truncated",
    );

    // 8. Two inconsistent checkpoints: a third, signed by both, that rewrites history at a
    // larger size than the one before it.
    let mut fork = signed.checkpoint().clone();
    fork.time_ms += 1;
    fork.members[alpha_index].root[5] ^= 0x01;
    let mut forked = SignedCheckpoint::sign(fork, &alpha_key).unwrap();
    forked.add_signature(&bravo_key).unwrap();
    let mut t = bundle.clone();
    t.checkpoints.push(forked.encode());
    assert_refused(
        dir,
        "inconsistent",
        &resign_bundle(&t),
        "checkpoint 3: inconsistent with checkpoint 2",
    );

    // The untouched file still passes.
    assert_eq!(
        detente(&["verify", file.to_str().unwrap()]).status.code(),
        Some(0)
    );
    let _ = PartySecret::from_seed([0; 32]);
    a.stop();
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_storing_and_sending_a_checkpoint_never_signs_inconsistently() {
    killed_at_the_checkpoint_failpoint(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_the_checkpoint_failpoint_alpha_on_postgres() {
    let Some(url) = detente_store::pg_test::fresh_database("failpoint").await else {
        return;
    };
    killed_at_the_checkpoint_failpoint(Some(&url)).await;
}

async fn killed_at_the_checkpoint_failpoint(alpha_database: Option<&str>) {
    let tmp = tempfile::tempdir().unwrap();
    let (mut a, mut b, ac, bc) = pair(tmp.path(), alpha_database).await;
    send_bulk(&ac, "bravo", 10, 100, "before")
        .await
        .ok()
        .unwrap();
    send_bulk(&bc, "alpha", 4, 100, "before")
        .await
        .ok()
        .unwrap();
    settle(&ac, &bc).await;

    // Restart alpha with a failpoint: it exits right after the checkpoint is durable and
    // before the signature is queued for bravo or the API answers.
    a.stop();
    a.start_with_env(&[("DETENTE_FAILPOINT", "checkpoint-after-commit")])
        .ok()
        .unwrap();
    let ac = a.wait_ready(WAIT).await.ok().unwrap();
    let answer = ac.post("/api/v1/peers/bravo/checkpoint", &json!({})).await;
    assert!(
        answer.is_err(),
        "the node should have died before answering"
    );
    let deadline = Instant::now() + WAIT;
    while ac.healthy().await {
        assert!(
            Instant::now() < deadline,
            "the node did not exit at the failpoint"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.stop();

    // Restarted, alpha sends the stored checkpoint on the new session; bravo co-signs it.
    a.start().ok().unwrap();
    let ac = a.wait_ready(WAIT).await.ok().unwrap();
    let deadline = Instant::now() + WAIT;
    let first = loop {
        let status = ac.get("/api/v1/status").await.ok().unwrap();
        let c = status["peers"][0]["checkpoint"].clone();
        if c["cosigned"] == true {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "the stored checkpoint was not co-signed: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(first["streams"].as_array().unwrap().len(), 2);

    // Later checkpoints extend it; the exported record proves it (consistency checked).
    send_bulk(&ac, "bravo", 3, 100, "after").await.ok().unwrap();
    settle(&ac, &bc).await;
    cosign(&ac, "bravo").await;
    let file = tmp.path().join("after-crash.bundle");
    export(&a.dir, "bravo", &file);
    let out = detente(&["verify", file.to_str().unwrap(), "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["checkpoints"], 2, "{v}");
    a.stop();
    b.stop();
}
