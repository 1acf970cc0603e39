//! Demo step: a FLASH that nobody answers goes overdue on both sides, the escalation hooks
//! fire (a command hook writing to a file, and a webhook to a receiver inside the demo), and
//! a late acknowledgment arrives, shown with how late it was.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::client::Client;
use crate::harness::{wait_link_up, ProcNode};
use crate::hook_sink::{HookSink, SinkMode};
use crate::{Failure, Outcome};

/// The FLASH acknowledgment deadline for this step (short, so the demo stays quick).
const FLASH_ACK: &str = "3s";
/// The default it goes back to at the end of the step, so that nodes kept running by
/// `demo --keep` do not make every FLASH a newcomer sends overdue at once.
const FLASH_ACK_DEFAULT: &str = "10m";

async fn poll(
    c: &Client,
    id: &str,
    what: &str,
    ready: impl Fn(&Value) -> bool,
) -> Result<Value, Failure> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = c.get(&format!("/api/v1/messages/{id}")).await?;
        if ready(&m) {
            return Ok(m);
        }
        if Instant::now() > deadline {
            return Err(Failure::new(format!(
                "demo: {what} did not happen within 30 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Step `n`, on the demo's two running nodes (`w` sends, `b` is slow to answer).
pub async fn step(n: u32, w: &mut ProcNode, b: &mut ProcNode) -> Outcome {
    println!("\n{n}. Deadlines: a FLASH that nobody answers in time ({FLASH_ACK} for this demo; 10 min by default)");
    let sink = HookSink::start(SinkMode::Answer)
        .await
        .map_err(|e| Failure::new(format!("cannot start the demo webhook receiver: {e}")))?;
    let hook_file = w.dir.join("escalations.jsonl");
    for node in [&*w, &*b] {
        node.set("deadlines.flash_acknowledged", FLASH_ACK)?;
    }
    w.set("hooks.webhook_url", &sink.url)?;
    w.set(
        "hooks.command",
        &format!("cat >> '{}'", hook_file.display()),
    )?;
    println!("   config set deadlines.flash_acknowledged {FLASH_ACK}; hooks.webhook_url and hooks.command on {}", w.name);
    let (wc, bc) = restart_with(w, b, FLASH_ACK).await?;
    let sent = wc
        .post(
            "/api/v1/messages",
            &json!({"to": b.name, "precedence": "flash", "topic": "deadline-demo",
                    "text": "FLASH: confirm receipt of the corrected launch notice."}),
        )
        .await?;
    let id = sent["id"].as_str().unwrap_or_default().to_string();
    println!(
        "   {} sends FLASH {}…; {} does not answer",
        w.name,
        &id[..12.min(id.len())],
        b.name
    );
    let on_w = poll(&wc, &id, "overdue at the sender", |m| m["overdue"] == true).await?;
    let noticed = on_w["deadline"]["missed"][0]["noticed_after_ms"]
        .as_i64()
        .unwrap_or(-1);
    check(
        (0..1000).contains(&noticed),
        &format!(
            "{}: overdue, noticed {noticed} ms after the deadline",
            w.name
        ),
    )?;
    poll(&bc, &id, "overdue at the receiver", |m| {
        m["overdue"] == true
    })
    .await?;
    check(
        true,
        &format!("{}: the same message is overdue on its side too", b.name),
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let line = loop {
        let text = std::fs::read_to_string(&hook_file).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains(&id)) {
            break l.to_string();
        }
        if Instant::now() > deadline {
            return Err(Failure::new(
                "demo: the command hook did not run within 30 s",
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "   command hook wrote: {}",
        line.chars().take(160).collect::<String>()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink.count("deadline_missed", Some(&id)) == 0 {
        if Instant::now() > deadline {
            return Err(Failure::new("demo: the webhook was not called within 30 s"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check(
        true,
        "the escalation webhook received the deadline_missed event naming the message",
    )?;
    let status = wc.get("/api/v1/status").await?;
    println!(
        "   status: {}",
        status["verdict_text"].as_str().unwrap_or("")
    );

    bc.post(
        &format!("/api/v1/messages/{id}/receipts"),
        &json!({"level": "acknowledged", "note": "Acknowledged (late): the duty principal was away."}),
    )
    .await?;
    let acked = poll(&wc, &id, "the late acknowledgment", |m| {
        !m["receipts"]["acknowledged"].is_null()
    })
    .await?;
    let late = acked["late_ms"].as_i64().unwrap_or(0);
    check(
        acked["late"] == true && acked["overdue"] == false && late > 0,
        &format!(
            "{} receives the acknowledgment, marked late by {:.1} s",
            w.name,
            late as f64 / 1000.0
        ),
    )?;
    for node in [&*w, &*b] {
        node.set("deadlines.flash_acknowledged", FLASH_ACK_DEFAULT)?;
    }
    restart_with(w, b, FLASH_ACK_DEFAULT).await?;
    check(
        true,
        &format!("the FLASH acknowledgment deadline is back to its default, {FLASH_ACK_DEFAULT}, on both nodes"),
    )
}

/// Restart both nodes (configuration is read at start) and wait until both have signed the
/// charter carrying `flash_ack`: a message sent before that is judged by the charter in
/// force when it was written.
async fn restart_with(
    w: &mut ProcNode,
    b: &mut ProcNode,
    flash_ack: &str,
) -> Result<(Client, Client), Failure> {
    w.stop();
    b.stop();
    w.start()?;
    b.start()?;
    let wc = w.wait_ready(Duration::from_secs(30)).await?;
    let bc = b.wait_ready(Duration::from_secs(30)).await?;
    wait_link_up(&wc, &b.name, Duration::from_secs(30)).await?;
    for (c, peer) in [(&wc, &b.name), (&bc, &w.name)] {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let v = c.get(&format!("/api/v1/peers/{peer}/charter")).await?;
            if v["state"] == "agreed"
                && v["charter"]["deadlines"]["flash_acknowledged"] == flash_ack
            {
                break;
            }
            if Instant::now() > until {
                return Err(Failure::new(format!(
                    "demo: the charter with a FLASH deadline of {flash_ack} was not agreed within 30 s"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok((wc, bc))
}

fn check(condition: bool, what: &str) -> Outcome {
    if condition {
        println!("   ✓ {what}");
        Ok(())
    } else {
        println!("   ✗ {what}");
        Err(Failure::new(format!("demo check failed: {what}")))
    }
}
