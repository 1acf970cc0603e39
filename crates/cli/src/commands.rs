//! The operator commands: setting up a node, running it, and talking to it through its API.

use std::path::Path;
use std::time::Duration;

use detente_node::config::{InitOptions, NodeDir, PeerConfig, CONFIG_KEYS};
use detente_proto::PartyKey;
use rand::RngCore;
use serde_json::{json, Value};

use crate::client::Client;
use crate::{Failure, Outcome};

/// What `detente init` was given.
pub struct InitArgs {
    pub name: String,
    pub party: String,
    pub lang: String,
    pub tz: String,
    pub peer_listen: String,
    pub console_listen: String,
    /// `postgres://…` or `sqlite:PATH`; none for the SQLite file in the node directory.
    pub database_url: Option<String>,
}

pub fn init(dir: &Path, args: InitArgs) -> Outcome {
    // Refuse a malformed URL before anything is written.
    if let Some(url) = &args.database_url {
        detente_store::StoreUrl::parse(url, Path::new("")).map_err(|e| {
            Failure::new(format!("--database-url: {e}")).hint(
                "for example --database-url postgres://detente:PASSWORD@127.0.0.1:5432/detente",
            )
        })?;
    }
    let mut seed = [0u8; 32];
    let mut token = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    rand::rngs::OsRng.fill_bytes(&mut token);
    let node = NodeDir::new(dir);
    let options = InitOptions {
        name: args.name,
        party: args.party,
        lang: args.lang,
        tz: args.tz,
        peer_listen: args.peer_listen,
        console_listen: args.console_listen,
    };
    let mut config = node.init(&options, seed, token)?;
    if let Some(url) = &args.database_url {
        config.set("database_url", url)?;
        node.save(&config)?;
    }
    let key = node.secret()?.public();
    println!("created node {:?} in {}", config.name, dir.display());
    println!("fingerprint: {}", key.fingerprint());
    println!("public key:  {}", key.to_text());
    if let Some(url) = &args.database_url {
        println!(
            "database:    {} (the schema is created when the node starts)",
            detente_store::postgres::redact_url(url)
        );
    }
    println!();
    println!(
        "Read the fingerprint to the other party over a separate channel, then pin each other:"
    );
    println!(
        "  detente peer add --dir {} --name PEER --key ed25519:... --addr HOST:PORT",
        dir.display()
    );
    Ok(())
}

pub fn id(dir: &Path, json: bool) -> Outcome {
    let node = NodeDir::new(dir);
    let config = node.load()?;
    let key = node.secret()?.public();
    if json {
        let v = json!({
            "name": config.name, "party": config.party, "public_key": key.to_text(),
            "fingerprint": key.fingerprint(), "peer_listen": config.peer_listen,
            "console_listen": config.console_listen, "lang": config.lang, "tz": config.tz,
        });
        println!("{v}");
    } else {
        println!("name:        {}", config.name);
        println!("party:       {}", config.party);
        println!("fingerprint: {}", key.fingerprint());
        println!("public key:  {}", key.to_text());
        println!("peer port:   {}", config.peer_listen);
        println!("console:     {}", config.console_listen);
        println!("language:    {}   time zone: {}", config.lang, config.tz);
    }
    Ok(())
}

pub async fn peer_add(dir: &Path, name: String, key: String, addrs: Vec<String>) -> Outcome {
    let node = NodeDir::new(dir);
    let parsed = PartyKey::from_text(&key).map_err(|e| {
        Failure::new(format!("--key: {e}"))
            .hint("copy the public_key that `detente id` prints on the peer's node")
    })?;
    node.add_peer(PeerConfig {
        name: name.clone(),
        key: parsed.to_text(),
        addrs,
        next_step: String::new(),
    })?;
    println!("pinned peer {name:?}: fingerprint {}", parsed.fingerprint());
    println!("check this fingerprint with the other party by telephone before relying on the link");
    // A running node picks the new peer up at once.
    if let Ok(client) = Client::for_dir(dir) {
        if client.healthy().await {
            client
                .post(&format!("/api/v1/peers/{name}/reload"), &json!({}))
                .await?;
            println!("the running node is now linking to {name}");
        }
    }
    Ok(())
}

pub fn peer_list(dir: &Path, json: bool) -> Outcome {
    let config = NodeDir::new(dir).load()?;
    if json {
        let peers: Vec<Value> = config
            .peers
            .iter()
            .map(|p| {
                let fp = PartyKey::from_text(&p.key)
                    .map(|k| k.fingerprint())
                    .unwrap_or_default();
                json!({"name": p.name, "key": p.key, "fingerprint": fp, "addrs": p.addrs})
            })
            .collect();
        println!("{}", Value::Array(peers));
    } else {
        for p in &config.peers {
            let fp = PartyKey::from_text(&p.key)
                .map(|k| k.fingerprint())
                .unwrap_or_default();
            println!("{:<16} {}  {}", p.name, fp, p.addrs.join(", "));
        }
    }
    Ok(())
}

pub fn config_get(dir: &Path, key: Option<String>, json: bool) -> Outcome {
    let config = NodeDir::new(dir).load()?;
    match key {
        Some(key) => {
            let value = config.get(&key)?;
            if json {
                println!("{}", json!({ key: value }));
            } else {
                println!("{value}");
            }
        }
        None => {
            let mut all = serde_json::Map::new();
            let peer_keys: Vec<String> = config
                .peers
                .iter()
                .map(|p| format!("peers.{}.next_step", p.name))
                .collect();
            for key in CONFIG_KEYS
                .iter()
                .copied()
                .chain(peer_keys.iter().map(String::as_str))
            {
                all.insert(key.to_string(), Value::String(config.get(key)?));
            }
            if json {
                println!("{}", Value::Object(all));
            } else {
                for (k, v) in all {
                    println!("{k} = {}", v.as_str().unwrap_or_default());
                }
            }
        }
    }
    Ok(())
}

pub fn config_set(dir: &Path, key: &str, value: &str) -> Outcome {
    let node = NodeDir::new(dir);
    let mut config = node.load()?;
    config.set(key, value)?;
    node.save(&config)?;
    println!("{key} = {}", config.get(key)?);
    if Client::for_dir(dir).is_ok()
        && NodeDir::new(dir)
            .file(detente_node::config::RUN_FILE)
            .exists()
    {
        println!("restart the node for this to take effect");
    }
    Ok(())
}

pub async fn serve(dir: &Path, new_store: bool) -> Outcome {
    let options = detente_node::StartOptions { new_store };
    let start = detente_node::Node::start_with(NodeDir::new(dir), options);
    // Opening the store applies its pending migrations, which can take a while on a large
    // store; on a terminal a spinner says so, cleared before the node says it serves.
    let opening = crate::progress::Progress::spinner(crate::progress::OPENING_STORE);
    // A standby waits inside `start` for the lease; a signal must still end it.
    let mut node = tokio::select! {
        started = start => {
            drop(opening);
            started.map_err(|e| start_failure(dir, e))?
        }
        _ = wait_for_signal() => return Ok(()),
    };
    loop {
        announce(&node);
        notify_systemd(sd_notify::NotifyState::Ready);
        let mut lost = node.lease_lost();
        tokio::select! {
            _ = wait_for_signal() => {
                eprintln!("shutting down");
                notify_systemd(sd_notify::NotifyState::Stopping);
                node.stop().await;
                return Ok(());
            }
            // Closed without a reason (SQLite has no lease): never lost.
            Ok(_) = lost.wait_for(|why| why.is_some()) => {}
        }
        // Another process of this party is active (issue 13 item 3): stop serving, and
        // stand by to take over again when it stops.
        node.stop().await;
        eprintln!("lost the lease: this process stopped serving and stands by");
        node = loop {
            let again = detente_node::Node::start_with(NodeDir::new(dir), options);
            tokio::select! {
                started = again => match started {
                    Ok(node) => break node,
                    Err(e) => {
                        eprintln!("cannot start again: {e}; retrying in {RESTART_DELAY:?}");
                        tokio::time::sleep(RESTART_DELAY).await;
                    }
                },
                _ = wait_for_signal() => return Ok(()),
            }
        };
    }
}

/// How long `serve` waits before trying again to start a node that lost its lease.
const RESTART_DELAY: Duration = Duration::from_secs(1);

fn start_failure(dir: &Path, e: detente_node::StartError) -> Failure {
    let failure = Failure::new(e.to_string());
    match e {
        detente_node::StartError::Config(detente_node::config::ConfigError::NoNode(_)) => failure
            .hint(format!(
                "create one with: detente init --dir {} --name NAME --party \"FULL NAME\"",
                dir.display()
            )),
        _ => failure,
    }
}

fn announce(node: &detente_node::Node) {
    let shared = &node.shared;
    eprintln!(
        "detente node {} serving: peers on {}, console and API on http://{}",
        shared
            .config
            .read()
            .map(|c| c.name.clone())
            .unwrap_or_default(),
        shared.peer_addr,
        shared.console_addr
    );
}

/// Tell systemd (`Type=notify`, debian/detente.service) how the node is doing: READY=1 once
/// the store is open and both ports listen, STOPPING=1 at shutdown. Outside systemd
/// (`$NOTIFY_SOCKET` unset) this does nothing; a failure to tell is logged, not fatal.
fn notify_systemd(state: sd_notify::NotifyState) {
    if let Err(e) = sd_notify::notify(false, &[state]) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

pub struct SendOptions {
    pub to: String,
    pub precedence: Option<String>,
    pub topic: Option<String>,
    pub text: Option<String>,
    pub format: Option<String>,
    pub format_version: Option<u32>,
    /// `KEY=VALUE` or `KEY@LANG=TEXT`.
    pub fields: Vec<String>,
    pub lang: Option<String>,
    pub translations: Vec<String>,
    pub reply_to: Option<String>,
    /// Sent as `Idempotency-Key`: the same command run again with the same key (after a
    /// timeout, a lost connection, a node restart) sends nothing twice.
    pub idempotency_key: Option<String>,
    pub wait: Option<String>,
    pub timeout: u64,
    pub json: bool,
}

pub async fn send(dir: &Path, o: SendOptions) -> Outcome {
    if o.format.is_none() && !o.fields.is_empty() {
        return Err(Failure::usage("--field needs --format ID")
            .hint("see the formats with: detente formats list"));
    }
    let client = Client::for_dir(dir)?;
    let mut translations = Vec::new();
    for t in &o.translations {
        let (lang, text) = t
            .split_once('=')
            .ok_or_else(|| Failure::usage(format!("--translation {t:?}: write it as LANG=TEXT")))?;
        translations.push(json!([lang, text]));
    }
    let fields = o
        .fields
        .iter()
        .map(|f| crate::formats_cmd::parse_field(f))
        .collect::<Result<Vec<_>, _>>()?;
    let body = json!({
        "to": o.to, "precedence": o.precedence, "topic": o.topic, "text": o.text,
        "format": o.format, "format_version": o.format_version, "fields": fields,
        "lang": o.lang, "translations": translations, "reply_to": o.reply_to,
    });
    let key = o.idempotency_key.as_deref();
    let (mut sent, replayed) = client
        .post_idempotent("/api/v1/messages", &body, key)
        .await?;
    if replayed {
        sent["replayed"] = json!(true);
    }
    if let Some(level) = &o.wait {
        let id = sent["id"].as_str().unwrap_or_default().to_string();
        let path = format!(
            "/api/v1/messages/{id}/wait?level={level}&timeout_ms={}",
            o.timeout * 1000
        );
        match client.get(&path).await {
            Ok(message) => {
                if !message["receipts"]["declined"].is_null() {
                    sent["state"] = json!("declined");
                } else {
                    sent["state"] = json!(level);
                }
            }
            Err(e) if e.status == Some(408) => {
                return Err(Failure::new(format!(
                    "message {id} stored, but no {level} receipt within {}s",
                    o.timeout
                ))
                .hint("the message stays queued and will be delivered; check `detente status`"))
            }
            Err(e) => return Err(e.into()),
        }
    }
    if o.json {
        println!("{sent}");
    } else {
        println!("{}", sent["id"].as_str().unwrap_or_default());
    }
    Ok(())
}

/// The API path and query of `inbox`, each value percent-encoded (a peer or zone name, or a
/// language tag, may hold `&`, `+`, `#` or spaces; `Etc/GMT+5` must not arrive as a space).
fn inbox_query(
    peer: &Option<String>,
    direction: &str,
    lang: &Option<String>,
    limit: u32,
    receipts: bool,
    tz: &Option<String>,
) -> String {
    let mut url = reqwest::Url::parse("http://node/api/v1/messages").expect("a valid base");
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("direction", direction)
            .append_pair("limit", &limit.to_string())
            .append_pair("receipts", &receipts.to_string());
        if let Some(p) = peer {
            q.append_pair("peer", p);
        }
        if let Some(l) = lang {
            q.append_pair("lang", l);
        }
        // The local times inside notifications in the reader's zone too (the node renders
        // in its own otherwise).
        if let Some(name) = tz {
            q.append_pair("tz", name);
        }
    }
    format!("{}?{}", url.path(), url.query().unwrap_or_default())
}

#[allow(clippy::too_many_arguments)]
pub async fn inbox(
    dir: &Path,
    peer: Option<String>,
    direction: String,
    lang: Option<String>,
    limit: u32,
    receipts: bool,
    json: bool,
    follow: bool,
    tz: Option<String>,
) -> Outcome {
    let client = Client::for_dir(dir)?;
    let zone = reader_of(dir, tz.clone(), lang.clone())?;
    let query = inbox_query(&peer, &direction, &lang, limit, receipts, &tz);
    let messages = client.get(&query).await?;
    let list = messages.as_array().cloned().unwrap_or_default();
    if json && !follow {
        println!("{messages}");
        return Ok(());
    }
    let mut seen = std::collections::HashSet::new();
    for m in &list {
        seen.insert(m["id"].as_str().unwrap_or_default().to_string());
        print_message(m, json, &zone);
    }
    if !follow {
        return Ok(());
    }
    // Until interrupted: look for new messages twice a second.
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let messages = client.get(&query).await?;
        for m in messages.as_array().into_iter().flatten() {
            if seen.insert(m["id"].as_str().unwrap_or_default().to_string()) {
                print_message(m, json, &zone);
            }
        }
    }
}

/// Whom `inbox` prints for: the zone its times are in and the language the zone is named in.
pub struct TimeReader {
    pub zone: jiff::tz::TimeZone,
    pub lang: String,
}

/// The reader `inbox` prints for: `--tz`, else the node's configured zone (its operators');
/// `--lang`, else the node's language.
fn reader_of(dir: &Path, tz: Option<String>, lang: Option<String>) -> Result<TimeReader, Failure> {
    let (name, lang) = match (tz, lang) {
        (Some(name), Some(lang)) => (name, lang),
        (tz, lang) => {
            let config = NodeDir::new(dir).load()?;
            (tz.unwrap_or(config.tz), lang.unwrap_or(config.lang))
        }
    };
    let zone = jiff::tz::TimeZone::get(&name).map_err(|_| {
        Failure::usage(format!("unknown time zone {name:?}"))
            .hint("give an IANA name such as America/New_York, Asia/Shanghai or UTC")
    })?;
    Ok(TimeReader { zone, lang })
}

/// A time from the API (RFC 3339, UTC) as the reader reads it: date and time in their zone,
/// named in their language ("北京时间", "Eastern Time"; the abbreviation for a zone without a
/// name), and UTC beside (with the UTC date when it is another day). Text that does not
/// parse is shown as it came.
pub fn reader_time(utc_text: &str, reader: &TimeReader) -> String {
    let Ok(at) = utc_text.parse::<jiff::Timestamp>() else {
        return utc_text.to_string();
    };
    let zone = &reader.zone;
    let local = at.to_zoned(zone.clone());
    let utc = at.to_zoned(jiff::tz::TimeZone::UTC);
    if local.offset() == utc.offset() && zone.iana_name() == Some("UTC") {
        return utc.strftime("%Y-%m-%d %H:%M:%SZ").to_string();
    }
    let utc_part = if local.date() == utc.date() {
        utc.strftime("%H:%M:%SZ").to_string()
    } else {
        utc.strftime("%m-%d %H:%M:%SZ").to_string()
    };
    let name = zone
        .iana_name()
        .and_then(|iana| detente_formats::zone_name(&reader.lang, iana))
        .unwrap_or_else(|| local.strftime("%Z").to_string());
    format!(
        "{} {name} ({utc_part})",
        local.strftime("%Y-%m-%d %H:%M:%S")
    )
}

/// One line per message, for people, with its time in UTC as the API gives it.
pub fn message_line(m: &Value) -> String {
    message_line_in(m, None)
}

/// One line per message, for people, with its time in `zone` and UTC beside.
pub fn message_line_in(m: &Value, zone: Option<&TimeReader>) -> String {
    let arrow = if m["direction"] == "out" {
        "→"
    } else {
        "←"
    };
    let receipts = &m["receipts"];
    let mut marks = Vec::new();
    for level in ["delivered", "read", "acknowledged", "declined"] {
        if !receipts[level].is_null() {
            marks.push(level);
        }
    }
    let overdue = if m["overdue"] == true {
        "  OVERDUE".to_string()
    } else if let Some(late) = m["late_ms"].as_i64() {
        format!("  LATE {:.1}s", late as f64 / 1000.0)
    } else {
        String::new()
    };
    format!(
        "{} {} {:<9} {:>5} {:<10} {} {}: {}  [{}]{}  {}",
        match zone {
            Some(zone) => reader_time(m["created_at"].as_str().unwrap_or_default(), zone),
            None => m["created_at"].as_str().unwrap_or_default().to_string(),
        },
        arrow,
        m["precedence"].as_str().unwrap_or_default().to_uppercase(),
        m["seq"],
        m["sender"].as_str().unwrap_or_default(),
        m["topic"].as_str().unwrap_or_default(),
        m["author"].as_str().unwrap_or_default(),
        m["rendered"].as_str().unwrap_or_default(),
        marks.join(","),
        overdue,
        &m["id"].as_str().unwrap_or_default()[..12.min(m["id"].as_str().unwrap_or_default().len())],
    )
}

fn print_message(m: &Value, json: bool, zone: &TimeReader) {
    if json {
        println!("{m}");
    } else {
        println!("{}", message_line_in(m, Some(zone)));
    }
}

pub async fn ack(dir: &Path, id: &str, level: &str, note: Option<String>, json: bool) -> Outcome {
    let client = Client::for_dir(dir)?;
    let id = resolve_id(&client, id).await?;
    let receipt = client
        .post(
            &format!("/api/v1/messages/{id}/receipts"),
            &json!({"level": level, "note": note}),
        )
        .await?;
    if json {
        println!("{receipt}");
    } else {
        println!(
            "{level} receipt {} sent for {id}",
            receipt["id"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

/// A full id from a full id or a unique prefix of at least 8 hex digits.
async fn resolve_id(client: &Client, id: &str) -> Result<String, Failure> {
    let id = id.trim().to_ascii_lowercase();
    if id.len() == 64 {
        return Ok(id);
    }
    if id.len() < 8 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Failure::usage(
            "give the message id, or at least its first 8 hex digits",
        ));
    }
    let list = client
        .get("/api/v1/messages?direction=in&limit=10000")
        .await?;
    let matches: Vec<String> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["id"].as_str())
        .filter(|full| full.starts_with(&id))
        .map(str::to_string)
        .collect();
    match matches.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(
            Failure::new(format!("no received message starts with {id}"))
                .hint("list them with: detente inbox --direction in"),
        ),
        _ => Err(Failure::new(format!(
            "{id} matches {} messages; give more digits",
            matches.len()
        ))),
    }
}

pub async fn status(dir: &Path, json: bool) -> Outcome {
    let client = Client::for_dir(dir)?;
    let status = client.get("/api/v1/status").await?;
    if json {
        println!("{status}");
        return Ok(());
    }
    println!(
        "node {} ({}), fingerprint {}, {} messages stored",
        status["name"].as_str().unwrap_or_default(),
        status["party"].as_str().unwrap_or_default(),
        status["fingerprint"].as_str().unwrap_or_default(),
        status["messages"]
    );
    for p in status["peers"].as_array().into_iter().flatten() {
        let rtt = p["rtt_ms"]
            .as_f64()
            .map_or("-".to_string(), |r| format!("{r:.1} ms"));
        let charter = &p["charter"];
        let charter = match charter["state"].as_str() {
            Some("agreed") => format!("charter v{} agreed", charter["version"]),
            Some("pending") => "charter pending".to_string(),
            _ => "no charter yet".to_string(),
        };
        println!(
            "  {:<14} {:<9} rtt {:<10} outbox {:<7} (flash {})  {charter}  last heard {}{}",
            p["name"].as_str().unwrap_or_default(),
            p["state"].as_str().unwrap_or_default().to_uppercase(),
            rtt,
            p["outbox"],
            p["outbox_flash"],
            p["last_heard"].as_str().unwrap_or("never"),
            p["last_error"]
                .as_str()
                .map(|e| format!("  ({e})"))
                .unwrap_or_default(),
        );
        println!(
            "  {:<14} {}; overdue out {} in {}; last link test {}",
            "",
            p["verdict_text"].as_str().unwrap_or_default(),
            p["overdue_out"],
            p["overdue_in"],
            p["last_test"].as_str().unwrap_or("none yet"),
        );
        if p["clock"]["skewed"] == true {
            let within = p["clock"]["error_ms"]
                .as_u64()
                .map_or(String::new(), |e| format!(", within {e} ms"));
            println!(
                "  {:<14} {}{within}: times the peer signs are off by as much (warning above {} ms)",
                "",
                p["clock"]["text"].as_str().unwrap_or_default(),
                status["thresholds"]["clock_skew_warn_ms"],
            );
        }
        let name = p["name"].as_str().unwrap_or_default();
        for line in crate::charter::refused_lines(name, &p["charter"]) {
            println!("  {:<14} {line}", "");
        }
        if let Some(c) = p.get("checkpoint").filter(|c| !c.is_null()) {
            let sizes: Vec<String> = c["streams"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    format!(
                        "{} {}",
                        s["fingerprint"].as_str().unwrap_or_default(),
                        s["size"]
                    )
                })
                .collect();
            println!(
                "    latest checkpoint signed by all: {} ms, sizes {}",
                c["time_ms"],
                sizes.join(", ")
            );
        }
    }
    for a in status["alarms"].as_array().into_iter().flatten() {
        println!(
            "  ALARM {} peer {}: {}",
            a["kind"].as_str().unwrap_or_default().to_uppercase(),
            a["peer"].as_str().unwrap_or_default(),
            a["detail"].as_str().unwrap_or_default()
        );
    }
    println!(
        "verdict: {}",
        status["verdict_text"].as_str().unwrap_or_default()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{reader_time, TimeReader};
    use jiff::tz::TimeZone;

    fn reader(zone: &str, lang: &str) -> TimeReader {
        TimeReader {
            zone: TimeZone::get(zone).unwrap(),
            lang: lang.into(),
        }
    }

    #[test]
    fn inbox_times_are_in_the_readers_zone_named_in_their_language_with_utc_beside() {
        let shanghai = reader("Asia/Shanghai", "zh-CN");
        assert_eq!(
            reader_time("2026-12-01T10:12:03.456Z", &shanghai),
            "2026-12-01 18:12:03 北京时间 (10:12:03Z)"
        );
        assert_eq!(
            reader_time("2026-12-01T10:12:03.456Z", &reader("Asia/Shanghai", "en")),
            "2026-12-01 18:12:03 China Standard Time (10:12:03Z)"
        );
        assert_eq!(
            reader_time("2026-12-01T03:00:00Z", &reader("America/New_York", "en")),
            "2026-11-30 22:00:00 Eastern Time (12-01 03:00:00Z)"
        );
        assert_eq!(
            reader_time("2026-12-01T03:00:00Z", &reader("America/New_York", "zh-CN")),
            "2026-11-30 22:00:00 美国东部时间 (12-01 03:00:00Z)"
        );
        // A zone without a name in the table keeps its abbreviation.
        assert_eq!(
            reader_time("2026-12-01T03:00:00Z", &reader("Asia/Tokyo", "en")),
            "2026-12-01 12:00:00 JST (03:00:00Z)"
        );
        assert_eq!(
            reader_time("2026-12-01T03:00:00Z", &reader("UTC", "en")),
            "2026-12-01 03:00:00Z"
        );
        assert_eq!(reader_time("not a time", &shanghai), "not a time");
    }
}

#[cfg(test)]
mod inbox_tests {
    #[test]
    fn every_inbox_parameter_is_percent_encoded() {
        let q = super::inbox_query(
            &Some("beijing&lang=xx".into()),
            "in",
            &Some("zh-CN".into()),
            50,
            true,
            &Some("Etc/GMT+5".into()),
        );
        assert_eq!(
            q,
            "/api/v1/messages?direction=in&limit=50&receipts=true\
             &peer=beijing%26lang%3Dxx&lang=zh-CN&tz=Etc%2FGMT%2B5"
        );
    }
}
