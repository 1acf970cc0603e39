//! `detente screenshots --out DIR`: start two local nodes, play a short exchange (a FLASH
//! from washington, acknowledged at beijing), and save PNGs of the console's main pages from
//! a headless Chromium. The README shows them; run this again after changing a page.

use std::path::{Path, PathBuf};
use std::time::Duration;

use detente_node::console::auth::Role;
use serde_json::json;

use crate::harness::{wait_link_up, ProcNode};
use crate::webdriver::{Driver, Session};
use crate::{Failure, Outcome};

const WAIT: Duration = Duration::from_secs(30);
const PASSWORD: &str = "screenshots only";

/// The password of every account [`two_nodes`] makes.
pub const TEST_PASSWORD: &str = PASSWORD;

/// Two nodes, linked and running, each with a supervisor `duty`, a principal `chief` and an
/// auditor `audit`. `exe` is the `detente` program (this one by default).
pub async fn two_nodes(base: &Path, exe: Option<&Path>) -> Result<(ProcNode, ProcNode), Failure> {
    two_nodes_with(base, exe, &[]).await
}

/// Send `body` (a `POST /api/v1/messages` body) from `from`, and wait until `to` holds it;
/// the message's id.
pub async fn deliver(
    from: &ProcNode,
    to: &ProcNode,
    body: &serde_json::Value,
) -> Result<String, Failure> {
    if !body["format"].is_null() {
        // A notification needs the channel's charter, agreed when the nodes first meet.
        charter_agreed(from, &to.name).await?;
    }
    let sent = from.client()?.post("/api/v1/messages", body).await?;
    let id = sent["id"].as_str().unwrap_or_default().to_string();
    let client = to.client()?;
    let deadline = std::time::Instant::now() + WAIT;
    while client.get(&format!("/api/v1/messages/{id}")).await.is_err() {
        if std::time::Instant::now() > deadline {
            return Err(Failure::new(format!(
                "message {id} never reached {}",
                to.name
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(id)
}

/// Wait until `node` and `peer` have a charter both signed (what a notification needs).
async fn charter_agreed(node: &ProcNode, peer: &str) -> Result<(), Failure> {
    let client = node.client()?;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let charter = client.get(&format!("/api/v1/peers/{peer}/charter")).await;
        // A charter both signed binds (`digest`), even while newer terms are pending.
        if charter.is_ok_and(|c| !c["digest"].is_null()) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(Failure::new(format!(
                "{} agreed no charter with {peer} within {WAIT:?}",
                node.name
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Washington's unanswered FLASH to Beijing, once Beijing holds it: something in every
/// region of both consoles (the takeover, the queue, the banner). Its message id.
pub async fn unanswered_flash(w: &ProcNode, b: &ProcNode) -> Result<String, Failure> {
    let body = serde_json::json!({"to": "beijing", "precedence": "flash", "topic": "incident",
                                  "text": "Request a call on the voice line"});
    deliver(w, b, &body).await
}

/// [`two_nodes`], with these configuration settings (`key`, `value`) on both nodes before
/// they start (e.g. a short FLASH deadline for a test of overdue alarms).
pub async fn two_nodes_with(
    base: &Path,
    exe: Option<&Path>,
    settings: &[(&str, &str)],
) -> Result<(ProcNode, ProcNode), Failure> {
    let mut w = ProcNode::init(
        base,
        "washington",
        "United States Department of Defense",
        "en",
        "America/New_York",
    )?;
    let mut b = ProcNode::init(
        base,
        "beijing",
        "Ministry of National Defense of the People's Republic of China",
        "zh-CN",
        "Asia/Shanghai",
    )?;
    if let Some(exe) = exe {
        w.exe = exe.to_path_buf();
        b.exe = exe.to_path_buf();
    }
    ProcNode::pin_pair(&w, &b)?;
    for node in [&w, &b] {
        node.set("link.heartbeat_interval", "500ms")?;
        for (key, value) in settings {
            node.set(key, value)?;
        }
        crate::users::create(&node.dir, "duty", Role::Supervisor, PASSWORD, None).await?;
        crate::users::create(&node.dir, "chief", Role::Principal, PASSWORD, None).await?;
        crate::users::create(&node.dir, "audit", Role::Auditor, PASSWORD, None).await?;
    }
    w.start()?;
    b.start()?;
    let wc = w.wait_ready(WAIT).await?;
    let bc = b.wait_ready(WAIT).await?;
    wait_link_up(&wc, "beijing", WAIT).await?;
    wait_link_up(&bc, "washington", WAIT).await?;
    Ok((w, b))
}

/// Sign in through the login form.
pub async fn login(s: &Session, node: &ProcNode, login: &str, password: &str) -> Outcome {
    s.goto(&format!("http://{}/login", node.console_addr))
        .await?;
    let l = s.wait_for("#login", WAIT).await?;
    s.type_text(&l, login).await?;
    let p = s.find("#password").await?;
    s.type_text(&p, password).await?;
    let submit = s.find("#login-submit").await?;
    s.click(&submit).await
}

async fn shoot(s: &Session, out: &Path, name: &str) -> Outcome {
    let png = s.screenshot().await?;
    let path = out.join(format!("{name}.png"));
    std::fs::write(&path, png)
        .map_err(|e| Failure::new(format!("cannot write {}: {e}", path.display())))?;
    println!("  {}", path.display());
    Ok(())
}

/// A launch notification (California into the western Pacific: two areas for the map)
/// from `from` to `to`, once `to` has stored it; its id.
pub async fn delivered_launch(from: &ProcNode, to: &ProcNode) -> Result<String, Failure> {
    let fields: Vec<serde_json::Value> = [
        ("window_start", "2030-01-01T10:00:00Z"),
        ("window_end", "2030-01-01T12:00:00Z"),
        ("launch_area", "circle:34.7,-120.6,30"),
        ("impact_area", "circle:9.4,167.5,100"),
        ("count", "1"),
        ("category", "icbm"),
    ]
    .iter()
    .map(|(k, v)| json!({"key": k, "value": v}))
    .collect();
    let body =
        json!({"to": to.name, "precedence": "priority", "format": "launch", "fields": fields});
    deliver(from, to, &body).await
}

pub async fn run(out: PathBuf) -> Outcome {
    std::fs::create_dir_all(&out)
        .map_err(|e| Failure::new(format!("cannot create {}: {e}", out.display())))?;
    let temp = tempfile::tempdir().map_err(|e| Failure::new(e.to_string()))?;
    let (w, b) = two_nodes(temp.path(), None).await?;
    let driver = Driver::start().await?;
    let sw = driver.session(&temp.path().join("profile-w")).await?;
    let sb = driver.session(&temp.path().join("profile-b")).await?;
    let result = story(&sw, &sb, &w, &b, &out).await;
    sw.close().await;
    sb.close().await;
    result
}

async fn story(sw: &Session, sb: &Session, w: &ProcNode, b: &ProcNode, out: &Path) -> Outcome {
    println!("Screenshots into {}:", out.display());
    sw.goto(&format!("http://{}/login", w.console_addr)).await?;
    shoot(sw, out, "login").await?;
    login(sw, w, "duty", PASSWORD).await?;
    sw.wait_for("#live", WAIT).await?;
    login(sb, b, "chief", PASSWORD).await?;
    sb.wait_for("#live", WAIT).await?;
    // A routine message with a courtesy translation, then a FLASH.
    let wc = w.client()?;
    wc.post(
        "/api/v1/messages",
        &json!({"to": "beijing", "precedence": "routine", "topic": "liaison",
                "text": "Good evening. This is the Washington duty officer testing the line.",
                "translations": [["zh-CN", "晚上好。这是华盛顿值班员，正在测试线路。"]]}),
    )
    .await?;
    sw.goto(&format!(
        "http://{}/console/compose?format=encounter",
        w.console_addr
    ))
    .await?;
    sw.wait_for("#f-position", WAIT).await?;
    sw.select("#precedence", "flash").await?;
    for (id, value) in [
        ("#f-time", "2026-11-29T02:40:00Z"),
        ("#f-position", "18.2,114.6"),
        ("#f-own_units", "Two F/A-18"),
        ("#f-other_units", "One J-15"),
        ("#f-closest_approach", "150"),
        (
            "#f-description",
            "Closest approach about 150 m; no weapons used. Requesting acknowledgment.",
        ),
    ] {
        let field = sw.find(id).await?;
        sw.type_text(&field, value).await?;
    }
    sw.select("#f-domain", "air").await?;
    sw.select("#f-signals", "radio-voice").await?;
    // The position typed, on the compose map the page redraws (a click there places it).
    sw.wait_for("#compose-map-live svg.map circle.point", WAIT)
        .await?;
    sw.execute(
        "document.getElementById('compose-map-live').scrollIntoView({block: 'end'}); return true;",
        vec![],
    )
    .await?;
    shoot(sw, out, "compose").await?;
    sw.click(&sw.find("#send").await?).await?;
    sw.wait_for(".msg.prec-flash", WAIT).await?;
    sb.wait_for("#alarm .alarm-flash", WAIT).await?;
    shoot(sb, out, "timeline-alarm-zh-CN").await?;
    // The routine message's courtesy translation (the FLASH is a notification: none).
    let item = ".msg.prec-routine .translation";
    sb.wait_for(item, WAIT).await?;
    let open = sb.find("#alarm .alarm-flash a").await?;
    sb.click(&open).await?;
    let note = sb.wait_for("#note", WAIT).await?;
    sb.type_text(&note, "已收到，正在核实。").await?;
    sb.click(&sb.find("#acknowledge").await?).await?;
    sb.wait_for(".r-acknowledged.done", WAIT).await?;
    sw.wait_for(".r-acknowledged.done", WAIT).await?;
    shoot(sw, out, "message-acknowledged").await?;
    sw.goto(&format!("http://{}/console", w.console_addr))
        .await?;
    sw.wait_for(".msg", WAIT).await?;
    shoot(sw, out, "timeline").await?;
    for (path, name) in [
        ("/console/link", "link-health"),
        ("/console/transcript", "transcript"),
        ("/console/counterparts", "counterparts"),
    ] {
        sw.goto(&format!("http://{}{path}", w.console_addr)).await?;
        sw.wait_for("main h1", WAIT).await?;
        shoot(sw, out, name).await?;
    }
    // A launch notification's areas on the offline map, as beijing reads it.
    let id = delivered_launch(w, b).await?;
    sb.goto(&format!("http://{}/console/messages/{id}", b.console_addr))
        .await?;
    sb.wait_for("#message-map", WAIT).await?;
    sb.execute(
        "document.getElementById('message-map').scrollIntoView({block: 'center'}); return true;",
        vec![],
    )
    .await?;
    shoot(sb, out, "message-map-zh-CN").await?;
    Ok(())
}
