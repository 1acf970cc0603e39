//! Deadlines, escalation, link supervision and metrics, end to end with real processes.
//!
//! Deadlines are short (seconds) through `config set`; every wait polls a condition with a
//! bounded deadline. Timing rules themselves are property-tested with injected time in
//! `crates/proto/tests/deadline_props.rs`; here the check is that the running nodes follow
//! them: how late after its due time a deadline was noticed is recorded by the node
//! (`noticed_after_ms`) and must be under one second.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::time::{Duration, Instant};

use detente::client::Client;
use detente::harness::{wait_link_up, ProcNode, Proxy};
use detente::hook_sink::{HookSink, SinkMode};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// Poll `check` every 20 ms until it yields a value, or panic after `timeout`.
async fn until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn message(client: &Client, id: &str) -> Value {
    client
        .get(&format!("/api/v1/messages/{id}"))
        .await
        .unwrap_or_else(|e| panic!("message {id}: {}", e.error))
}

async fn peer_status(client: &Client, peer: &str) -> Value {
    let status = client.get("/api/v1/status").await.ok().unwrap();
    status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == peer)
        .cloned()
        .unwrap()
}

fn exe() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_detente"))
}

fn node(base: &std::path::Path, name: &str) -> ProcNode {
    let mut n = ProcNode::init(base, name, name, "en", "UTC").ok().unwrap();
    n.exe = exe();
    n
}

async fn start(n: &mut ProcNode) -> Client {
    n.start().ok().unwrap();
    n.wait_ready(WAIT).await.ok().unwrap()
}

/// One sample of the exposition: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// A strict parser of the OpenMetrics text exposition (what the node serves, through
/// prometheus-client): every line is a well-formed HELP, TYPE, UNIT or sample; TYPE comes
/// once per family, before its samples; a counter family `x` has its samples named
/// `x_total`; a family's samples are contiguous; no series twice; the document ends with
/// `# EOF` and a newline. Samples are returned by their series name (`x_total`).
fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    fn metric_name(s: &str) -> bool {
        let mut c = s.chars();
        matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
            && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
    }
    fn label_name(s: &str) -> bool {
        let mut c = s.chars();
        matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
            && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
    }
    fn value(s: &str) -> Result<f64, String> {
        match s {
            "NaN" => Ok(f64::NAN),
            "+Inf" => Ok(f64::INFINITY),
            "-Inf" => Ok(f64::NEG_INFINITY),
            _ => s.parse::<f64>().map_err(|_| format!("bad value {s:?}")),
        }
    }
    if !text.ends_with('\n') {
        return Err("does not end with a newline".into());
    }
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps: HashSet<String> = HashSet::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut series: HashSet<String> = HashSet::new();
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    if lines.last() != Some(&"# EOF") {
        return Err("does not end with # EOF".into());
    }
    for (n, line) in lines[..lines.len() - 1].iter().copied().enumerate() {
        let err = |m: String| format!("line {}: {m}: {line:?}", n + 1);
        if line.is_empty() {
            return Err(err("empty line".into()));
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let keyword = parts.next().unwrap_or("");
            let name = parts.next().ok_or_else(|| err("no metric name".into()))?;
            let tail = parts
                .next()
                .ok_or_else(|| err("nothing after the name".into()))?;
            if !metric_name(name) {
                return Err(err("bad metric name".into()));
            }
            match keyword {
                "UNIT" => {}
                "HELP" => {
                    if !helps.insert(name.to_string()) {
                        return Err(err("second HELP".into()));
                    }
                }
                "TYPE" => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&tail) {
                        return Err(err("bad type".into()));
                    }
                    if types.insert(name.to_string(), tail.to_string()).is_some() {
                        return Err(err("second TYPE".into()));
                    }
                    if finished.contains(name) || current.as_deref() == Some(name) {
                        return Err(err("TYPE after samples".into()));
                    }
                }
                _ => return Err(err("unknown comment keyword".into())),
            }
            continue;
        }
        if line.starts_with('#') {
            return Err(err("malformed comment".into()));
        }
        // name{labels} value
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => return Err(err("no value".into())),
        };
        if !metric_name(name) {
            return Err(err("bad metric name".into()));
        }
        let mut labels = BTreeMap::new();
        let rest = if let Some(mut body) = rest.strip_prefix('{') {
            loop {
                if let Some(after) = body.strip_prefix('}') {
                    break after;
                }
                let eq = body
                    .find('=')
                    .ok_or_else(|| err("label without =".into()))?;
                let key = &body[..eq];
                if !label_name(key) {
                    return Err(err(format!("bad label name {key:?}")));
                }
                let mut chars = body[eq + 1..].char_indices();
                if chars.next().map(|(_, c)| c) != Some('"') {
                    return Err(err("label value not quoted".into()));
                }
                let mut v = String::new();
                let mut end = None;
                let mut escaped = false;
                for (i, c) in chars {
                    if escaped {
                        match c {
                            '\\' => v.push('\\'),
                            '"' => v.push('"'),
                            'n' => v.push('\n'),
                            _ => return Err(err("bad escape".into())),
                        }
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        end = Some(eq + 1 + i + 1);
                        break;
                    } else {
                        v.push(c);
                    }
                }
                let end = end.ok_or_else(|| err("unterminated label value".into()))?;
                if labels.insert(key.to_string(), v).is_some() {
                    return Err(err("label twice".into()));
                }
                body = &body[end..];
                if let Some(b) = body.strip_prefix(',') {
                    body = b;
                } else if !body.starts_with('}') {
                    return Err(err("expected , or }".into()));
                }
            }
        } else {
            rest
        };
        let rest = rest
            .strip_prefix(' ')
            .ok_or_else(|| err("no space before the value".into()))?;
        let mut fields = rest.split(' ');
        let v = value(fields.next().unwrap_or(""))?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().map_err(|_| err("bad timestamp".into()))?;
        }
        if fields.next().is_some() {
            return Err(err("trailing fields".into()));
        }
        let family = match name.strip_suffix("_total") {
            Some(base) if types.get(base).is_some_and(|t| t == "counter") => base.to_string(),
            _ => name.to_string(),
        };
        if types.get(&family).is_some_and(|t| t == "counter") && family == name {
            return Err(err("a counter's sample is not named …_total".into()));
        }
        if current.as_deref() != Some(&family) {
            if let Some(prev) = current.take() {
                finished.insert(prev);
            }
            if finished.contains(&family) {
                return Err(err("family samples not contiguous".into()));
            }
            if !types.contains_key(&family) {
                return Err(err("sample without TYPE".into()));
            }
            current = Some(family.clone());
        }
        if types[&family] == "counter" && (v < 0.0 || v.is_nan()) {
            return Err(err("counter not a non-negative number".into()));
        }
        let key = format!("{name}{labels:?}");
        if !series.insert(key) {
            return Err(err("series twice".into()));
        }
        out.push((name.to_string(), labels, v));
    }
    Ok(out)
}

fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels.len() == l.len()
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
}

async fn metrics(client: &Client) -> Vec<Sample> {
    let text = client.get_text("/metrics").await.ok().unwrap();
    parse_exposition(&text).unwrap_or_else(|e| panic!("/metrics does not parse: {e}\n{text}"))
}

#[test]
fn the_exposition_parser_is_strict() {
    let good = "# HELP a A.\n# TYPE a counter\na_total{x=\"1\"} 3\na_total{x=\"q\\\"\"} 4\n# TYPE g gauge\n# UNIT g seconds\ng NaN\n# EOF\n";
    assert_eq!(parse_exposition(good).unwrap().len(), 3);
    for bad in [
        "a 1\n# EOF\n",                                    // no TYPE
        "# TYPE a counter\na_total 1\n# EOF",              // no final newline
        "# TYPE a counter\na_total 1\n",                   // no EOF
        "# TYPE a counter\n# EOF\na_total 1\n# EOF\n",     // EOF inside
        "# TYPE a counter\na 1\n# EOF\n",                  // counter without _total
        "# TYPE a counter\na_total{x=1} 1\n# EOF\n",       // unquoted
        "# TYPE a counter\na_total 1\na_total 2\n# EOF\n", // series twice
        "# TYPE a counter\n# TYPE b gauge\na_total 1\nb 1\na_total{x=\"y\"} 1\n# EOF\n", // not contiguous
        "# TYPE a counter\na_total -1\n# EOF\n", // negative counter
        "# TYPE a counter\na_total 1 2 3\n# EOF\n", // trailing
        "# TYPE 1a counter\n# EOF\n",            // bad name
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted {bad:?}");
    }
}

/// A FLASH not acknowledged in time is overdue on both sides within one second of its
/// deadline; the webhook gets exactly one event naming it; the command hook runs; a later
/// acknowledgment reaches the sender marked late; `/metrics` parses and its counters move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flash_goes_overdue_on_both_sides_and_a_late_ack_is_marked() {
    let base = tempfile::tempdir().unwrap();
    let sink = HookSink::start(SinkMode::Answer).await.unwrap();
    let mut a = node(base.path(), "alpha");
    let mut b = node(base.path(), "bravo");
    ProcNode::pin_pair(&a, &b).ok().unwrap();
    let hook_file = base.path().join("bravo-hooks.jsonl");
    for n in [&a, &b] {
        n.set("deadlines.flash_acknowledged", "2s").ok().unwrap();
        n.set("link.heartbeat_interval", "500ms").ok().unwrap();
    }
    a.set("hooks.webhook_url", &sink.url).ok().unwrap();
    b.set(
        "hooks.command",
        &format!("cat >> '{}'", hook_file.display()),
    )
    .ok()
    .unwrap();
    let ca = start(&mut a).await;
    let cb = start(&mut b).await;
    wait_link_up(&ca, "bravo", WAIT).await.ok().unwrap();

    let before = metrics(&ca).await;
    let sent_flash = |s: &[Sample]| {
        sample(
            s,
            "detente_messages_total",
            &[
                ("direction", "out"),
                ("precedence", "flash"),
                ("kind", "text"),
            ],
        )
    };
    let sent = ca
        .post(
            "/api/v1/messages",
            &json!({"to": "bravo", "precedence": "flash", "text": "Answer within two seconds."}),
        )
        .await
        .ok()
        .unwrap();
    let id = sent["id"].as_str().unwrap().to_string();

    // Overdue on the sender's side, noticed within one second of the due time.
    let on_a = until("overdue at alpha", WAIT, || async {
        let m = message(&ca, &id).await;
        (m["overdue"] == true).then_some(m)
    })
    .await;
    let missed = &on_a["deadline"]["missed"][0];
    assert_eq!(missed["needed"], "acknowledged");
    let noticed = missed["noticed_after_ms"].as_i64().unwrap();
    assert!(
        (0..1000).contains(&noticed),
        "noticed {noticed} ms after due"
    );
    // And on the receiver's side, which knows the same deadline.
    let on_b = until("overdue at bravo", WAIT, || async {
        let m = message(&cb, &id).await;
        (m["overdue"] == true).then_some(m)
    })
    .await;
    let noticed = on_b["deadline"]["missed"][0]["noticed_after_ms"]
        .as_i64()
        .unwrap();
    assert!(
        (0..1000).contains(&noticed),
        "bravo noticed {noticed} ms after due"
    );
    let inbox = cb.get("/api/v1/messages?direction=in").await.ok().unwrap();
    assert!(inbox
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == id.as_str() && m["overdue"] == true));

    // The webhook got an event naming the message; the command hook ran at bravo.
    until("the webhook event", WAIT, || async {
        (sink.count("deadline_missed", Some(&id)) >= 1).then_some(())
    })
    .await;
    until("the command hook", WAIT, || async {
        let text = std::fs::read_to_string(&hook_file).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|v| v["event"] == "deadline_missed" && v["id"] == id.as_str())
            .then_some(())
    })
    .await;
    let status = peer_status(&ca, "bravo").await;
    assert_eq!(status["overdue_out"], 1);
    assert_eq!(status["verdict"], "unanswered");
    let mid = metrics(&ca).await;
    assert_eq!(sent_flash(&mid), sent_flash(&before) + 1.0);
    let missed_ack = [("needed", "acknowledged")];
    assert!(sample(&mid, "detente_deadlines_missed_total", &missed_ack) >= 1.0);
    assert!(
        sample(
            &mid,
            "detente_alarms_total",
            &[("event", "deadline_missed")]
        ) >= 1.0
    );
    assert_eq!(
        sample(
            &mid,
            "detente_overdue",
            &[("peer", "bravo"), ("direction", "out")]
        ),
        1.0
    );
    until("the webhook attempt counted", WAIT, || async {
        let m = metrics(&ca).await;
        (sample(
            &m,
            "detente_hook_attempts_total",
            &[("target", "webhook"), ("result", "ok")],
        ) >= 1.0)
            .then_some(())
    })
    .await;

    // A restart neither forgets the alarm nor raises it again.
    a.stop();
    let ca = start(&mut a).await;
    wait_link_up(&ca, "bravo", WAIT).await.ok().unwrap();
    assert_eq!(message(&ca, &id).await["overdue"], true);
    until("the overdue count after the restart", WAIT, || async {
        (peer_status(&ca, "bravo").await["overdue_out"] == 1).then_some(())
    })
    .await;
    let restarted = metrics(&ca).await;
    let routine = ca
        .post(
            "/api/v1/messages",
            &json!({"to": "bravo", "text": "counted"}),
        )
        .await
        .ok()
        .unwrap();
    ca.get(&format!(
        "/api/v1/messages/{}/wait?level=delivered&timeout_ms=30000",
        routine["id"].as_str().unwrap()
    ))
    .await
    .ok()
    .unwrap();

    // A late acknowledgment: delivered and shown, with how late.
    cb.post(
        &format!("/api/v1/messages/{id}/receipts"),
        &json!({"level": "acknowledged", "note": "late, sorry"}),
    )
    .await
    .ok()
    .unwrap();
    let acked = until("the acknowledgment at alpha", WAIT, || async {
        let m = message(&ca, &id).await;
        (!m["receipts"]["acknowledged"].is_null()).then_some(m)
    })
    .await;
    assert_eq!(acked["overdue"], false);
    assert_eq!(acked["late"], true);
    assert!(acked["late_ms"].as_i64().unwrap() > 0, "{acked}");
    let on_b = message(&cb, &id).await;
    assert_eq!(on_b["overdue"], false);
    assert_eq!(on_b["late"], true);
    until("alpha's overdue count cleared", WAIT, || async {
        (peer_status(&ca, "bravo").await["overdue_out"] == 0).then_some(())
    })
    .await;
    // Exactly one event for this message, however long we watched.
    assert_eq!(
        sink.count("deadline_missed", Some(&id)),
        1,
        "{:?}",
        sink.received()
    );

    // Counters moved with the traffic, and the exposition is well formed.
    let after = metrics(&ca).await;
    let routine_text = [
        ("direction", "out"),
        ("precedence", "routine"),
        ("kind", "text"),
    ];
    assert_eq!(
        sample(&after, "detente_messages_total", &routine_text),
        sample(&restarted, "detente_messages_total", &routine_text) + 1.0
    );
    assert!(
        sample(&after, "detente_delivered_total", &[])
            > sample(&restarted, "detente_delivered_total", &[])
    );
    assert!(sample(&after, "detente_receipts_total", &[]) >= 1.0);
    assert_eq!(
        sample(
            &after,
            "detente_overdue",
            &[("peer", "bravo"), ("direction", "out")]
        ),
        0.0
    );
    assert_eq!(
        sample(
            &after,
            "detente_link_state",
            &[("peer", "bravo"), ("state", "up")]
        ),
        1.0
    );
    assert!(sample(&after, "detente_checkpoint_age_seconds", &[]).is_nan());
    let received = metrics(&cb).await;
    assert!(
        sample(
            &received,
            "detente_messages_total",
            &[
                ("direction", "in"),
                ("precedence", "flash"),
                ("kind", "text")
            ]
        ) >= 1.0
    );
    assert!(
        sample(
            &received,
            "detente_deadlines_missed_total",
            &[("needed", "acknowledged")]
        ) >= 1.0
    );
    assert!(
        sample(
            &received,
            "detente_hook_attempts_total",
            &[("target", "command"), ("result", "ok")]
        ) >= 1.0
    );
}

/// A cut link is `down` within three heartbeats and fires the link-down hook once; a link
/// test during the outage is missed and raises its alarm; restoring the link clears both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_cut_is_down_alarmed_once_and_cleared_on_restore() {
    let base = tempfile::tempdir().unwrap();
    let sink = HookSink::start(SinkMode::Answer).await.unwrap();
    let mut a = node(base.path(), "alpha");
    let mut b = node(base.path(), "bravo");
    let to_b = Proxy::start(b.peer_addr.clone()).await.ok().unwrap();
    let to_a = Proxy::start(a.peer_addr.clone()).await.ok().unwrap();
    a.pin(&b, vec![to_b.listen.clone()]).ok().unwrap();
    b.pin(&a, vec![to_a.listen.clone()]).ok().unwrap();
    let heartbeat = Duration::from_millis(300);
    for n in [&a, &b] {
        n.set("link.heartbeat_interval", "300ms").ok().unwrap();
        n.set("link.backoff_max", "300ms").ok().unwrap();
        n.set("link.test_interval", "1s").ok().unwrap();
        n.set("deadlines.flash_delivered", "1s").ok().unwrap();
        n.set("hooks.webhook_url", &sink.url).ok().unwrap();
    }
    let ca = start(&mut a).await;
    let cb = start(&mut b).await;
    wait_link_up(&ca, "bravo", WAIT).await.ok().unwrap();
    // A link test passes while the line works.
    until("a confirmed link test", WAIT, || async {
        let p = peer_status(&ca, "bravo").await;
        (!p["last_test"].is_null()).then_some(())
    })
    .await;
    assert_eq!(peer_status(&ca, "bravo").await["verdict"], "all_well");

    // Cut. Nothing is heard any more from this moment.
    let cut_at = Instant::now();
    to_b.set_cut(true);
    to_a.set_cut(true);
    // Nothing is heard after the cut, so the link is down three heartbeats after it (50 ms
    // for frames already in flight). Any status asked after that must say `down`; this holds
    // however slowly the machine answers, since the node computes the state when asked.
    let limit = heartbeat * 3 + Duration::from_millis(50);
    loop {
        let asked = Instant::now();
        let state = peer_status(&ca, "bravo").await["state"].clone();
        if state == "down" {
            break;
        }
        assert!(
            asked.duration_since(cut_at) < limit,
            "still {state} when asked {:?} after the cut",
            asked.duration_since(cut_at)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let p = until("link-down alarm and missed test", WAIT, || async {
        let p = peer_status(&ca, "bravo").await;
        (p["link_down_alarm"] == true && p["link_test_missed"] == true).then_some(p)
    })
    .await;
    assert_eq!(p["verdict"], "link_down");
    until("the link-test-missed hook", WAIT, || async {
        (sink
            .received()
            .iter()
            .any(|v| v["event"] == "link_test_missed" && v["node"] == "alpha"))
        .then_some(())
    })
    .await;
    // Several more heartbeats and tests pass during the outage: still one link-down event.
    let tests_missed = metrics(&ca).await;
    let missed_before = sample(
        &tests_missed,
        "detente_alarms_total",
        &[("event", "link_test_missed")],
    );
    assert!(missed_before >= 1.0);
    until("bravo sees the outage too", WAIT, || async {
        (peer_status(&cb, "alpha").await["link_down_alarm"] == true).then_some(())
    })
    .await;
    let downs = |node: &str| {
        sink.received()
            .iter()
            .filter(|v| v["event"] == "link_down" && v["node"] == node)
            .count()
    };
    assert_eq!(downs("alpha"), 1, "{:?}", sink.received());

    // Restore: the alarm clears, a later test passes, all well again.
    to_b.set_cut(false);
    to_a.set_cut(false);
    wait_link_up(&ca, "bravo", WAIT).await.ok().unwrap();
    until("all well again", WAIT, || async {
        let p = peer_status(&ca, "bravo").await;
        (p["link_down_alarm"] == false
            && p["link_test_missed"] == false
            && p["verdict"] == "all_well")
            .then_some(())
    })
    .await;
    // Hooks run from their own bounded queue, after the state changed: wait for delivery.
    until("the link-restored hook", WAIT, || async {
        sink.received()
            .iter()
            .any(|v| v["event"] == "link_restored" && v["node"] == "alpha")
            .then_some(())
    })
    .await;
    assert_eq!(downs("alpha"), 1, "one link-down event per outage");
    let status = ca.get("/api/v1/status").await.ok().unwrap();
    assert_eq!(status["thresholds"]["down_after_ms"], 900);
}

/// Hooks that hang (a webhook that never answers) or fail (a command that exits 1) do not
/// delay delivery; their failures are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_and_failing_hooks_do_not_delay_delivery() {
    let base = tempfile::tempdir().unwrap();
    let sink = HookSink::start(SinkMode::Hang).await.unwrap();
    let mut a = node(base.path(), "alpha");
    let mut b = node(base.path(), "bravo");
    ProcNode::pin_pair(&a, &b).ok().unwrap();
    for n in [&a, &b] {
        n.set("deadlines.flash_acknowledged", "1s").ok().unwrap();
    }
    a.set("hooks.webhook_url", &sink.url).ok().unwrap();
    a.set("hooks.command", "cat >/dev/null; exit 1")
        .ok()
        .unwrap();
    let ca = start(&mut a).await;
    let _cb = start(&mut b).await;
    wait_link_up(&ca, "bravo", WAIT).await.ok().unwrap();
    // Make many hooks fire: ten FLASH messages nobody answers.
    let messages: Vec<Value> = (0..10)
        .map(|i| json!({"to": "bravo", "precedence": "flash", "text": format!("flash {i}")}))
        .collect();
    ca.post("/api/v1/messages/batch", &json!({"messages": messages}))
        .await
        .ok()
        .unwrap();
    until("webhooks hanging", WAIT, || async {
        (sink.count("deadline_missed", None) >= 4).then_some(())
    })
    .await;
    // With every hook slot busy on a silent server, messages still go through at once.
    for i in 0..20 {
        let sent = ca
            .post(
                "/api/v1/messages",
                &json!({"to": "bravo", "text": format!("routine {i}")}),
            )
            .await
            .ok()
            .unwrap();
        let id = sent["id"].as_str().unwrap();
        let started = Instant::now();
        ca.get(&format!(
            "/api/v1/messages/{id}/wait?level=delivered&timeout_ms=10000"
        ))
        .await
        .ok()
        .unwrap();
        // The hook attempt timeout is 5 s: a delivery that waited on a hook would show it.
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "delivery took {:?}",
            started.elapsed()
        );
    }
    until("failed command attempts counted", WAIT, || async {
        let m = metrics(&ca).await;
        (sample(
            &m,
            "detente_hook_attempts_total",
            &[("target", "command"), ("result", "failed")],
        ) >= 1.0)
            .then_some(())
    })
    .await;
}
