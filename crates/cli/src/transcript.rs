//! Transcript commands: `checkpoint`, `proof`, `export` and the offline `verify`.

use std::path::Path;

use detente_proto::bundle;
use serde_json::{json, Value};

use crate::client::Client;
use crate::progress::Progress;
use crate::{Failure, Outcome};

/// `detente checkpoint --dir DIR --peer PEER [--json]`: sign a checkpoint now and send it to
/// the peer for co-signing.
pub async fn checkpoint(dir: &Path, peer: &str, json: bool) -> Outcome {
    let client = Client::for_dir(dir)?;
    let c = client
        .post(&format!("/api/v1/peers/{peer}/checkpoint"), &json!({}))
        .await?;
    if json {
        println!("{c}");
    } else {
        println!("checkpoint signed at {} ms:", c["time_ms"]);
        for s in c["streams"].as_array().into_iter().flatten() {
            println!(
                "  {}  size {}  root {}",
                s["fingerprint"].as_str().unwrap_or_default(),
                s["size"],
                s["root"].as_str().unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// `detente proof --dir DIR ID`: a self-contained inclusion proof (JSON) that `verify` accepts.
pub async fn proof(dir: &Path, id: &str) -> Outcome {
    let client = Client::for_dir(dir)?;
    // POST: signs a checkpoint first when none covers the message yet.
    let proof = client
        .post(
            &format!("/api/v1/messages/{}/proof", id.trim()),
            &serde_json::json!({}),
        )
        .await?;
    print_lines(std::iter::once(
        serde_json::to_string_pretty(&proof).unwrap_or_default(),
    ));
    Ok(())
}

/// Write lines to standard output, stopping quietly when the reader has gone (`verify … |
/// head -1`): `println!` would panic on the broken pipe. The verdict (exit status) is
/// decided by the caller either way.
fn print_lines(lines: impl Iterator<Item = String>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for line in lines {
        if writeln!(out, "{line}").is_err() {
            return;
        }
    }
    let _ = out.flush();
}

/// `detente export --dir DIR --peer PEER --out FILE`.
pub async fn export(dir: &Path, peer: &str, out: &Path) -> Outcome {
    let client = Client::for_dir(dir)?;
    let progress = Progress::spinner(format!("exporting the channel with {peer}"));
    // Written beside the target first: `out` only ever names a whole, verified bundle.
    let partial = out.with_extension("partial");
    let cannot_write = |e: std::io::Error| {
        Failure::new(format!("cannot write {}: {e}", out.display()))
            .hint("choose a writable path with --out")
    };
    let written = client
        .download(&format!("/api/v1/peers/{peer}/export"), &partial, |total| {
            progress.set_message(format!("received {} MiB", mib(total as usize)))
        })
        .await;
    let written = match written {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e.into());
        }
    };
    progress.set_message(format!(
        "checking the {} MiB received",
        mib(written as usize)
    ));
    let bytes = std::fs::read(&partial).map_err(cannot_write)?;
    let report = tokio::task::spawn_blocking(move || bundle::verify(&bytes))
        .await
        .map_err(|e| Failure::new(e.to_string()))?;
    drop(progress);
    if !report.ok() {
        let first = report
            .problems
            .first()
            .map_or_else(String::new, |p| format!("{}: {}", p.item, p.what));
        return Err(Failure::new(format!(
            "the bundle received does not verify ({first}); it is kept as {}",
            partial.display()
        ))
        .hint("run `detente verify` on it for every problem, and `detente status` on the node"));
    }
    std::fs::rename(&partial, out).map_err(cannot_write)?;
    eprintln!(
        "exported {} messages and {} checkpoints to {}",
        report.messages,
        report.checkpoints,
        out.display()
    );
    Ok(())
}

/// A size for people, in MiB with one decimal.
fn mib(bytes: usize) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

/// The outcome of verifying a file, bundle or proof.
pub struct Verified {
    pub ok: bool,
    pub json: Value,
    /// Lines for people; the first problem first.
    pub lines: Vec<String>,
}

/// Verify a bundle (CBOR) or a proof (JSON) from its bytes. No node, no network.
pub fn verify_bytes(bytes: &[u8]) -> Verified {
    if bytes.first() == Some(&b'{') {
        return verify_proof(bytes);
    }
    let report = bundle::verify(bytes);
    let problems: Vec<Value> = report
        .problems
        .iter()
        .map(|p| {
            json!({
                "stream": p.stream,
                "seq": p.seq,
                "item": p.item,
                "what": p.what,
                "text": p.to_string(),
            })
        })
        .collect();
    let mut lines = Vec::new();
    if report.ok() {
        lines.push(format!(
            "ok: {} messages, {} checkpoints ({} signed by every member)",
            report.messages, report.checkpoints, report.cosigned
        ));
        if let Some(latest) = &report.latest_cosigned {
            for (key, size) in latest {
                lines.push(format!("  latest co-signed checkpoint: {key} size {size}"));
            }
        }
    } else {
        for p in &report.problems {
            lines.push(p.to_string());
        }
        if report.problems_dropped > 0 {
            lines.push(format!("… and {} more problems", report.problems_dropped));
        }
    }
    Verified {
        ok: report.ok(),
        json: json!({
            "ok": report.ok(),
            "kind": "bundle",
            "messages": report.messages,
            "checkpoints": report.checkpoints,
            "cosigned_checkpoints": report.cosigned,
            "problems": problems,
            "problems_not_listed": report.problems_dropped,
        }),
        lines,
    }
}

fn verify_proof(bytes: &[u8]) -> Verified {
    let result = serde_json::from_slice::<Value>(bytes)
        .map_err(|e| format!("not a proof (JSON): {e}"))
        .and_then(|v| detente_node::transcript::proof_from_json(&v))
        .and_then(|p| p.verify());
    match result {
        Ok(proven) => {
            let e = proven.envelope.envelope();
            let line = format!(
                "ok: message {} is seq {} of stream {} in a checkpoint signed by {}{}",
                proven.envelope.id(),
                e.seq,
                e.sender.fingerprint(),
                proven
                    .checkpoint
                    .signers()
                    .map(|k| k.fingerprint())
                    .collect::<Vec<_>>()
                    .join(" and "),
                if proven.checkpoint.cosigned() {
                    " (every member)"
                } else {
                    ""
                }
            );
            Verified {
                ok: true,
                json: json!({
                    "ok": true,
                    "kind": "proof",
                    "messages": 1,
                    "checkpoints": 1,
                    "problems": [],
                }),
                lines: vec![line],
            }
        }
        Err(what) => Verified {
            ok: false,
            json: json!({
                "ok": false,
                "kind": "proof",
                "messages": 0,
                "checkpoints": 0,
                "problems": [{"stream": null, "seq": null, "item": "proof", "what": what, "text": format!("proof: {what}")}],
            }),
            lines: vec![format!("proof: {what}")],
        },
    }
}

/// `detente verify FILE [--json]`: exit 0 only when every check passes.
pub fn verify(file: &Path, as_json: bool) -> Outcome {
    let bytes = std::fs::read(file).map_err(|e| {
        Failure::new(format!("cannot read {}: {e}", file.display())).hint(
            "give the path of a bundle written by detente export or a proof from detente proof",
        )
    })?;
    let progress = Progress::spinner(format!(
        "verifying {} ({} MiB)",
        file.display(),
        mib(bytes.len())
    ));
    let verified = verify_bytes(&bytes);
    drop(progress);
    if as_json {
        print_lines(std::iter::once(verified.json.to_string()));
    } else if verified.ok {
        print_lines(verified.lines.iter().cloned());
    } else {
        for line in verified.lines.iter().skip(1) {
            eprintln!("  {line}");
        }
    }
    if verified.ok {
        Ok(())
    } else {
        let first = verified.lines.first().cloned().unwrap_or_default();
        Err(Failure::new(format!("verification failed: {first}")).hint(
            "the file does not match what its signers signed; keep it as evidence and compare with the other party's export",
        ))
    }
}
