//! `detente charter` and `detente counterpart`: what a channel has agreed on, and the
//! counterpart positions this party offers for it.

use std::path::Path;

use detente_node::config::{CounterpartConfig, NodeDir};
use serde_json::{json, Value};

use crate::client::Client;
use crate::{Failure, Outcome};

/// `detente charter --peer PEER [--json]`.
pub async fn show(dir: &Path, peer: &str, json: bool) -> Outcome {
    let client = Client::for_dir(dir)?;
    let body = client.get(&format!("/api/v1/peers/{peer}/charter")).await?;
    if json {
        println!("{body}");
        return Ok(());
    }
    let state = body["state"].as_str().unwrap_or("none");
    for line in refused_lines(peer, &body) {
        println!("{line}");
    }
    let Some(charter) = body["charter"].as_object() else {
        println!("channel with {peer}: no charter agreed yet ({state})");
        println!("  the nodes agree one on first contact; is the link up? (detente status)");
        return Ok(());
    };
    println!(
        "channel with {peer}: charter v{} {} ({}), digest {}",
        body["version"],
        state.to_uppercase(),
        if state == "agreed" {
            "signed by both"
        } else {
            "a newer one waits for a signature"
        },
        charter["digest"].as_str().unwrap_or_default()
    );
    println!("  members:");
    for m in charter["members"].as_array().into_iter().flatten() {
        println!(
            "    {:<14} {}  {}  lang {}  tz {}",
            m["name"].as_str().unwrap_or_default(),
            m["fingerprint"].as_str().unwrap_or_default(),
            m["party"].as_str().unwrap_or_default(),
            m["lang"].as_str().unwrap_or_default(),
            m["tz"].as_str().unwrap_or_default()
        );
    }
    let d = &charter["deadlines"];
    println!(
        "  deadlines: FLASH delivered {} acknowledged {}; IMMEDIATE {}; PRIORITY {}; ROUTINE {}",
        d["flash_delivered"].as_str().unwrap_or_default(),
        d["flash_acknowledged"].as_str().unwrap_or_default(),
        d["immediate_acknowledged"].as_str().unwrap_or_default(),
        d["priority_acknowledged"].as_str().unwrap_or_default(),
        d["routine_acknowledged"].as_str().unwrap_or_default()
    );
    println!(
        "  link test every {}",
        charter["link_test_interval"].as_str().unwrap_or_default()
    );
    let formats: Vec<String> = charter["formats"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| format!("{}@{}", f["id"].as_str().unwrap_or_default(), f["version"]))
        .collect();
    println!(
        "  formats: {}",
        if formats.is_empty() {
            "none in common".to_string()
        } else {
            formats.join(", ")
        }
    );
    for c in charter["counterparts"].as_array().into_iter().flatten() {
        println!(
            "  counterparts: {} <-> {}",
            c[0].as_str().unwrap_or_default(),
            c[1].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

/// One calm line per charter term the peer asked below this node's floors (the `refused`
/// list of a peer's charter state): "charter with beijing not agreed: they ask FLASH
/// acknowledged within 1 s; our floor is 1 min".
pub fn refused_lines(peer: &str, state: &Value) -> Vec<String> {
    let agreed = state["charter"].is_object();
    state["refused"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let term = r["term"].as_str().unwrap_or_default();
            let offered = spoken_duration(r["offered_ms"].as_u64().unwrap_or(0));
            let floor = spoken_duration(r["floor_ms"].as_u64().unwrap_or(0));
            let ask = match term_label(term) {
                Some(label) if term == "link.test_interval" => format!("{label} {offered}"),
                Some(label) => format!("{label} within {offered}"),
                None => format!("{term} of {offered}"),
            };
            if agreed {
                format!(
                    "charter with {peer}: new terms not agreed: they ask {ask}; our floor is \
                     {floor}; version {} stays in force",
                    state["version"]
                )
            } else {
                format!("charter with {peer} not agreed: they ask {ask}; our floor is {floor}")
            }
        })
        .collect()
}

fn term_label(term: &str) -> Option<&'static str> {
    Some(match term {
        "deadlines.flash_delivered" => "FLASH delivered",
        "deadlines.flash_acknowledged" => "FLASH acknowledged",
        "deadlines.immediate_acknowledged" => "IMMEDIATE acknowledged",
        "deadlines.priority_acknowledged" => "PRIORITY acknowledged",
        "deadlines.routine_acknowledged" => "ROUTINE acknowledged",
        "link.test_interval" => "a link test every",
        _ => return None,
    })
}

/// A duration as said aloud: `1 s`, `5 min`, `1 h`, `2 d` (`1500 ms` when not whole).
pub fn spoken_duration(ms: u64) -> String {
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("min", 60_000),
        ("s", 1000),
    ] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{} {unit}", ms / size);
        }
    }
    format!("{ms} ms")
}

/// `detente counterpart add --ours POSITION --theirs POSITION`.
pub fn add(dir: &Path, ours: &str, theirs: &str) -> Outcome {
    let node = NodeDir::new(dir);
    let mut config = node.load()?;
    let pair = CounterpartConfig {
        ours: ours.trim().to_string(),
        theirs: theirs.trim().to_string(),
    };
    if config.counterparts.contains(&pair) {
        println!("already listed: {} <-> {}", pair.ours, pair.theirs);
        return Ok(());
    }
    config.counterparts.push(pair.clone());
    config.validate().map_err(|e| Failure::new(e.to_string()))?;
    node.save(&config)?;
    println!("{} <-> {}", pair.ours, pair.theirs);
    println!("the charter lists it from the next session with each peer (restart the node)");
    Ok(())
}

/// `detente counterpart list [--json]`.
pub fn list(dir: &Path, json: bool) -> Outcome {
    let config = NodeDir::new(dir).load()?;
    if json {
        let list: Vec<Value> = config
            .counterparts
            .iter()
            .map(|c| json!({"ours": c.ours, "theirs": c.theirs}))
            .collect();
        println!("{}", Value::Array(list));
    } else {
        for c in &config.counterparts {
            println!("{} <-> {}", c.ours, c.theirs);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_term_is_one_calm_line() {
        let state = json!({
            "state": "none", "version": 0, "charter": null,
            "refused": [
                {"term": "deadlines.flash_acknowledged", "offered_ms": 1000, "floor_ms": 60000},
                {"term": "link.test_interval", "offered_ms": 1500, "floor_ms": 3_600_000},
            ],
        });
        assert_eq!(
            refused_lines("beijing", &state),
            vec![
                "charter with beijing not agreed: they ask FLASH acknowledged within 1 s; our \
                 floor is 1 min",
                "charter with beijing not agreed: they ask a link test every 1500 ms; our floor \
                 is 1 h",
            ]
        );
        assert!(refused_lines("beijing", &json!({"refused": []})).is_empty());
    }
}
