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
