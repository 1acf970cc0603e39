//! Demo step: the transcript. Both nodes co-sign a checkpoint, washington exports the
//! channel to one file, and the file is verified offline — untouched it passes, with one
//! flipped bit it fails naming the item; an inclusion proof of one message verifies alone.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{wait_outbox_empty, ProcNode};
use crate::transcript::verify_bytes;
use crate::{Failure, Outcome};

const WAIT: Duration = Duration::from_secs(60);

/// Run the step as number `n`; `w` exports its channel with `b`.
pub async fn run(n: u32, w: &ProcNode, b: &ProcNode) -> Outcome {
    println!(
        "\n{n}. The record both sides agree on: co-signed checkpoint, export, offline verification"
    );
    let wc = w.client()?;
    let bc = b.client()?;
    wait_outbox_empty(&wc, &b.name, WAIT).await?;
    wait_outbox_empty(&bc, &w.name, WAIT).await?;

    // Sign now; the peer checks it against its own record and co-signs.
    let signed = wc
        .post(&format!("/api/v1/peers/{}/checkpoint", b.name), &json!({}))
        .await?;
    let deadline = Instant::now() + WAIT;
    let latest = loop {
        let status = wc.get("/api/v1/status").await?;
        let latest = status["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == b.name.as_str())
            .map(|p| p["checkpoint"].clone())
            .unwrap_or(Value::Null);
        if latest["time_ms"] == signed["time_ms"] && latest["cosigned"] == true {
            break latest;
        }
        if Instant::now() > deadline {
            return Err(Failure::new(
                "the peer did not co-sign the checkpoint in time",
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let sizes: Vec<String> = latest["streams"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| format!("{} envelopes", s["size"]))
        .collect();
    println!(
        "   ✓ checkpoint signed by both parties: {}",
        sizes.join(" and ")
    );

    let bytes = wc
        .get_bytes(&format!("/api/v1/peers/{}/export", b.name))
        .await?;
    let file = w.dir.join("transcript.bundle");
    std::fs::write(&file, &bytes)
        .map_err(|e| Failure::new(format!("cannot write {}: {e}", file.display())))?;
    let verified = verify_bytes(&bytes);
    println!(
        "   exported {} ({} bytes); detente verify, offline:",
        file.display(),
        bytes.len()
    );
    for line in &verified.lines {
        println!("     {line}");
    }
    if !verified.ok {
        return Err(Failure::new(
            "demo check failed: the exported transcript does not verify",
        ));
    }
    println!("   ✓ every signature, seq, prev link, receipt and checkpoint root checks out");

    // One flipped bit in the middle of the file.
    let mut tampered = bytes.clone();
    let at = tampered.len() / 2;
    tampered[at] ^= 0x10;
    let refused = verify_bytes(&tampered);
    if refused.ok {
        return Err(Failure::new(
            "demo check failed: a tampered transcript verified",
        ));
    }
    println!(
        "   ✓ one flipped bit is caught: {}",
        refused.lines.first().cloned().unwrap_or_default()
    );

    // An inclusion proof of washington's latest message stands on its own.
    let latest = wc.get("/api/v1/messages?direction=out&limit=1").await?;
    if let Some(id) = latest
        .as_array()
        .and_then(|l| l.last())
        .and_then(|m| m["id"].as_str())
    {
        let proof = wc
            .post(
                &format!("/api/v1/messages/{id}/proof"),
                &serde_json::json!({}),
            )
            .await?;
        let checked = verify_bytes(proof.to_string().as_bytes());
        if !checked.ok {
            return Err(Failure::new(
                "demo check failed: the inclusion proof does not verify",
            ));
        }
        println!(
            "   ✓ inclusion proof ({} hashes): {}",
            proof["path"].as_array().map_or(0, |p| p.len()),
            checked.lines.first().cloned().unwrap_or_default()
        );
    }
    Ok(())
}
