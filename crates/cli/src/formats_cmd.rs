//! `detente formats list|show` (the built-in catalogue; no node needed) and
//! `detente glossary add|list` (a channel's agreed bilingual terms, kept by the node).

use std::path::Path;

use serde_json::{json, Value};

use crate::client::Client;
use crate::{Failure, Outcome};

/// `formats list`: id, version, title, default precedence and topic of every format.
pub fn list(lang: &str, json: bool) -> Outcome {
    let formats: Vec<Value> = detente_formats::builtin()
        .formats()
        .iter()
        .map(|def| {
            let d = detente_formats::describe(def, lang);
            json!({
                "id": d.id, "version": d.version, "title": d.title,
                "precedence": d.precedence, "topic": d.topic, "digest": d.digest,
                "fields": d.fields.len(),
            })
        })
        .collect();
    if json {
        println!("{}", Value::Array(formats));
        return Ok(());
    }
    for f in &formats {
        println!(
            "{:<18} v{}  {:<10} {:<10} {}",
            f["id"].as_str().unwrap_or_default(),
            f["version"],
            f["precedence"].as_str().unwrap_or_default(),
            f["topic"].as_str().unwrap_or_default(),
            f["title"].as_str().unwrap_or_default(),
        );
    }
    println!("\nShow a format's fields with: detente formats show ID [--lang zh-CN]");
    Ok(())
}

/// `formats show ID`: every field with its type, constraints, help and enum values, and the
/// rules across fields; enough to write `detente send --format ID --field ...`.
pub fn show(id: &str, version: Option<u32>, lang: &str, json: bool) -> Outcome {
    let catalogue = detente_formats::builtin();
    let def = match version {
        Some(v) => catalogue.get(id, v),
        None => catalogue.latest(id),
    }
    .ok_or_else(|| {
        Failure::new(format!("format {id:?} is not held by this build"))
            .hint("list the formats with: detente formats list")
    })?;
    let d = detente_formats::describe(def, lang);
    if json {
        println!("{}", serde_json::to_string(&d).unwrap_or_default());
        return Ok(());
    }
    println!("{} — {} v{}", d.title, d.id, d.version);
    println!(
        "precedence {} · topic {} · digest {}",
        d.precedence, d.topic, d.digest
    );
    println!();
    let (required, optional) = if detente_formats::locale_for(lang) == "zh-CN" {
        ("必填", "选填")
    } else {
        ("required", "optional")
    };
    for f in &d.fields {
        let need = if f.required { required } else { optional };
        println!("  {:<18} {:<12} {}  {}", f.key, f.type_name, need, f.label);
        println!("  {:<18} {}", "", f.accepts);
        for (value, label) in &f.values {
            println!("  {:<18}   {value:<22} {label}", "");
        }
        println!("  {:<18} {}", "", f.help);
    }
    if !d.rules.is_empty() {
        println!();
        for rule in &d.rules {
            println!("  * {rule}");
        }
    }
    println!();
    println!(
        "send with: detente send --dir DIR --to PEER --format {} --field KEY=VALUE ... \
         (a courtesy translation of a text field: --field KEY@LANG=TEXT)",
        d.id
    );
    Ok(())
}

/// Split `KEY=VALUE` or `KEY@LANG=VALUE` (a courtesy translation of a free-text field).
pub fn parse_field(text: &str) -> Result<Value, Failure> {
    let (key, value) = text.split_once('=').ok_or_else(|| {
        Failure::usage(format!("--field {text:?}: write it as KEY=VALUE"))
            .hint("see the keys with: detente formats show ID")
    })?;
    Ok(match key.split_once('@') {
        Some((key, lang)) => json!({"key": key, "value": value, "translation": lang}),
        None => json!({"key": key, "value": value}),
    })
}

/// `glossary add --peer P --term LANG=TERM --term LANG=TERM`.
pub async fn glossary_add(dir: &Path, peer: &str, terms: &[String]) -> Outcome {
    let pairs: Vec<(&str, &str)> = terms.iter().filter_map(|t| t.split_once('=')).collect();
    if pairs.len() != 2 || terms.len() != 2 {
        return Err(Failure::usage(
            "give exactly two --term LANG=TERM, one per language",
        )
        .hint("e.g. detente glossary add --dir DIR --peer beijing --term en=hotline --term zh-CN=热线"));
    }
    let client = Client::for_dir(dir)?;
    let body = json!({
        "peer": peer,
        "lang_a": pairs[0].0, "term_a": pairs[0].1,
        "lang_b": pairs[1].0, "term_b": pairs[1].1,
    });
    client.post("/api/v1/glossary", &body).await?;
    println!("added: {} = {}", terms[0], terms[1]);
    Ok(())
}

/// `glossary list --peer P`.
pub async fn glossary_list(dir: &Path, peer: &str, json: bool) -> Outcome {
    let client = Client::for_dir(dir)?;
    let list = client.get(&format!("/api/v1/glossary?peer={peer}")).await?;
    if json {
        println!("{list}");
        return Ok(());
    }
    for t in list.as_array().into_iter().flatten() {
        println!(
            "{}={}  ⇄  {}={}",
            t["lang_a"].as_str().unwrap_or_default(),
            t["term_a"].as_str().unwrap_or_default(),
            t["lang_b"].as_str().unwrap_or_default(),
            t["term_b"].as_str().unwrap_or_default(),
        );
    }
    Ok(())
}
