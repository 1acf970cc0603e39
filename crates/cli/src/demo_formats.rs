//! Demo step: structured notifications. Washington sends a `launch` pre-notification and
//! Beijing reads it entirely in Chinese (window in UTC and Beijing time); Beijing sends a
//! `dialogue-request` and Washington reads it in English (slots in New York time).

use serde_json::{json, Value};

use crate::client::Client;
use crate::{Failure, Outcome};

fn utc(ts: jiff::Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn fields(pairs: &[(&str, String)]) -> Vec<Value> {
    pairs
        .iter()
        .map(|(k, v)| json!({"key": k, "value": v}))
        .collect()
}

/// Send a notification, wait for its DELIVERED receipt, and return how the receiver's node
/// renders it (in the receiver's language and time zone).
async fn deliver(
    from: &Client,
    to: &Client,
    to_name: &str,
    format: &str,
    fields: Vec<Value>,
) -> Result<String, Failure> {
    let sent = from
        .post(
            "/api/v1/messages",
            &json!({"to": to_name, "format": format, "fields": fields}),
        )
        .await?;
    let id = sent["id"].as_str().unwrap_or_default().to_string();
    from.get(&format!(
        "/api/v1/messages/{id}/wait?level=delivered&timeout_ms=30000"
    ))
    .await?;
    let received = to.get(&format!("/api/v1/messages/{id}")).await?;
    received["rendered"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| Failure::new(format!("{format}: the receiver shows no rendering")))
}

fn print_indented(text: &str) {
    for line in text.lines() {
        println!("     │ {line}");
    }
}

/// Run the step on two running, linked nodes with an agreed charter.
pub async fn run(w: &Client, b: &Client) -> Outcome {
    println!("   Structured notifications: typed fields, read in the reader's own language");
    let now = jiff::Timestamp::now();
    let hour = |h: i64| {
        jiff::Timestamp::from_second((now.as_second() / 3600 + h) * 3600)
            .map_err(|e| Failure::new(format!("time: {e}")))
    };
    let launch = fields(&[
        ("window_start", utc(hour(48)?)),
        ("window_end", utc(hour(52)?)),
        ("launch_area", "circle:34.7,-120.6,30".into()),
        ("impact_area", "circle:9.4,167.5,100".into()),
        ("count", "1".into()),
        ("category", "icbm".into()),
        (
            "remarks",
            "Scheduled test launch; no threat intended.".into(),
        ),
    ]);
    let shown = deliver(w, b, "beijing", "launch", launch).await?;
    if !shown.contains("弹道导弹发射通报") || !shown.contains("北京时间") {
        return Err(Failure::new(
            "the launch did not render in Chinese at beijing",
        ));
    }
    println!("   ✓ washington (en) sent a launch notification; beijing (zh-CN) reads:");
    print_indented(&shown);

    let request = fields(&[
        ("from_name", "国防部副部长 王".into()),
        ("to_name", "美国国防部常务副部长".into()),
        ("mode", "video-call".into()),
        ("slot_1", format!("{}/{}", utc(hour(26)?), utc(hour(27)?))),
        ("slot_2", format!("{}/{}", utc(hour(50)?), utc(hour(51)?))),
        ("agenda", "海上意外相遇规则；导弹发射通报程序。".into()),
    ]);
    let shown = deliver(b, w, "washington", "dialogue-request", request).await?;
    if !shown.contains("Request for dialogue") || !shown.contains("Eastern Time") {
        return Err(Failure::new(
            "the dialogue request did not render in English at washington",
        ));
    }
    println!("   ✓ beijing (zh-CN) sent a dialogue request; washington (en) reads:");
    print_indented(&shown);
    Ok(())
}
