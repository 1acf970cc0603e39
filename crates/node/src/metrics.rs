//! `/metrics`: Prometheus text exposition format (version 0.0.4), written by hand.
//!
//! Counters come from [`crate::events::Metrics`] (every published event is counted there);
//! gauges are read when asked: link state and round trip per peer from the links, outbox
//! depth from the store, overdue and unanswered counts from the watch task. The route needs
//! the API token like every other (Prometheus: `authorization: {credentials_file: api.token}`).

use std::fmt::Write;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use detente_proto::LinkState;
use detente_store::Store;

use crate::api::ApiError;
use crate::{now_ms, Shared};

/// A metric family being written: `# HELP`, `# TYPE`, then samples.
struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {}", number(value));
    }
}

/// Label values escape backslash, double quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

pub async fn exposition(State(shared): State<Arc<Shared>>) -> Result<Response, ApiError> {
    let m = shared.events.metrics().clone();
    let mut o = Out(String::with_capacity(4096));
    let peers = shared.table.all();
    let now = Instant::now();

    o.family(
        "detente_link_state",
        "gauge",
        "Link state per peer: 1 for the current state (up, degraded, down), else 0.",
    );
    for entry in &peers {
        let state = entry
            .status
            .read()
            .map_or(LinkState::Down, |s| s.current_state(now));
        for s in [LinkState::Up, LinkState::Degraded, LinkState::Down] {
            let v = if s == state { 1.0 } else { 0.0 };
            o.sample(
                "detente_link_state",
                &[("peer", &entry.name), ("state", s.name())],
                v,
            );
        }
    }
    o.family(
        "detente_peer_connections_refused_total",
        "counter",
        "Inbound peer connections closed before their TLS handshake, by reason.",
    );
    for (why, n) in shared.gate.closed() {
        o.sample(
            "detente_peer_connections_refused_total",
            &[("reason", why.name())],
            n as f64,
        );
    }
    o.family(
        "detente_peer_keys_refused_total",
        "counter",
        "Inbound handshakes refused because the key presented is not pinned.",
    );
    o.sample(
        "detente_peer_keys_refused_total",
        &[],
        shared.gate.keys_refused_total() as f64,
    );
    o.family(
        "detente_peer_refused_key_attempts",
        "gauge",
        "Attempts per refused (unpinned) key still remembered, by fingerprint.",
    );
    for k in shared.gate.refused_keys() {
        let fingerprint = detente_proto::identity::fingerprint(&k.key);
        o.sample(
            "detente_peer_refused_key_attempts",
            &[("fingerprint", &fingerprint)],
            k.count as f64,
        );
    }
    o.family(
        "detente_link_rtt_seconds",
        "gauge",
        "Last heartbeat round-trip time per peer (NaN before the first).",
    );
    for entry in &peers {
        let rtt = entry
            .status
            .read()
            .ok()
            .and_then(|s| s.rtt_ms)
            .map_or(f64::NAN, |ms| ms / 1000.0);
        o.sample("detente_link_rtt_seconds", &[("peer", &entry.name)], rtt);
    }
    o.family(
        "detente_outbox_depth",
        "gauge",
        "Envelopes waiting for the peer's confirmation, per peer.",
    );
    for entry in &peers {
        let counts = shared.store.outbox_counts(&entry.name).await?;
        o.sample(
            "detente_outbox_depth",
            &[("peer", &entry.name)],
            counts.pending as f64,
        );
    }
    let alarms: Vec<_> = peers
        .iter()
        .map(|e| {
            (
                e.name.clone(),
                e.alarms.read().map(|a| a.clone()).unwrap_or_default(),
            )
        })
        .collect();
    o.family(
        "detente_inbox_depth",
        "gauge",
        "Messages received from the peer not yet acknowledged or declined.",
    );
    for (peer, a) in &alarms {
        o.sample(
            "detente_inbox_depth",
            &[("peer", peer)],
            a.unanswered_in as f64,
        );
    }
    o.family(
        "detente_overdue",
        "gauge",
        "Messages past a deadline without the receipt they need, per peer and direction.",
    );
    for (peer, a) in &alarms {
        o.sample(
            "detente_overdue",
            &[("peer", peer), ("direction", "out")],
            a.overdue_out as f64,
        );
        o.sample(
            "detente_overdue",
            &[("peer", peer), ("direction", "in")],
            a.overdue_in as f64,
        );
    }
    o.family(
        "detente_link_test_missed",
        "gauge",
        "1 while the last link test to the peer is unconfirmed past its bound.",
    );
    for (peer, a) in &alarms {
        o.sample(
            "detente_link_test_missed",
            &[("peer", peer)],
            f64::from(u8::from(a.test_missed)),
        );
    }
    o.family(
        "detente_messages_total",
        "counter",
        "Envelopes stored since start, by direction, precedence and kind.",
    );
    for (direction, precedence, kind, n) in m.messages() {
        o.sample(
            "detente_messages_total",
            &[
                ("direction", direction),
                ("precedence", precedence.name()),
                ("kind", kind),
            ],
            n as f64,
        );
    }
    o.family(
        "detente_delivered_total",
        "counter",
        "Our envelopes confirmed durable by the peer since start.",
    );
    o.sample("detente_delivered_total", &[], m.delivered() as f64);
    o.family(
        "detente_receipts_total",
        "counter",
        "Read, acknowledged and declined receipts recorded since start.",
    );
    o.sample("detente_receipts_total", &[], m.receipts() as f64);
    let (overdue_delivered, overdue_ack) = m.overdue_total();
    o.family(
        "detente_deadlines_missed_total",
        "counter",
        "Deadlines missed since start, by the receipt that was needed.",
    );
    o.sample(
        "detente_deadlines_missed_total",
        &[("needed", "delivered")],
        overdue_delivered as f64,
    );
    o.sample(
        "detente_deadlines_missed_total",
        &[("needed", "acknowledged")],
        overdue_ack as f64,
    );
    o.family(
        "detente_verification_failures_total",
        "counter",
        "Envelopes from peers refused because they did not verify.",
    );
    o.sample(
        "detente_verification_failures_total",
        &[],
        m.verification_failures() as f64,
    );
    o.family(
        "detente_hook_attempts_total",
        "counter",
        "Hook attempts by target and result.",
    );
    for (target, result, n) in m.hook_attempts() {
        o.sample(
            "detente_hook_attempts_total",
            &[("target", target), ("result", result)],
            n as f64,
        );
    }
    o.family(
        "detente_hook_failures_total",
        "counter",
        "Hook deliveries given up after every attempt, by target.",
    );
    for (target, n) in m.hook_failures() {
        o.sample(
            "detente_hook_failures_total",
            &[("target", target)],
            n as f64,
        );
    }
    o.family(
        "detente_hook_dropped_total",
        "counter",
        "Hook events dropped because the queue was full.",
    );
    o.sample(
        "detente_hook_dropped_total",
        &[],
        m.hook_dropped_total() as f64,
    );
    o.family(
        "detente_alarms_total",
        "counter",
        "Alarms raised since start, by event.",
    );
    for event in [
        "deadline_missed",
        "link_down",
        "link_restored",
        "link_test_missed",
        "equivocation",
    ] {
        let n = m
            .alarms()
            .into_iter()
            .find(|(name, _)| *name == event)
            .map_or(0, |(_, n)| n);
        o.sample("detente_alarms_total", &[("event", event)], n as f64);
    }
    o.family(
        "detente_checkpoint_age_seconds",
        "gauge",
        "Age of the latest transcript checkpoint (NaN when there is none).",
    );
    let age = m
        .checkpoint_at_ms()
        .map_or(f64::NAN, |at| (now_ms() as i64 - at).max(0) as f64 / 1000.0);
    o.sample("detente_checkpoint_age_seconds", &[], age);
    o.family(
        "detente_messages_stored",
        "gauge",
        "Envelopes in the store (all peers, both directions).",
    );
    o.sample(
        "detente_messages_stored",
        &[],
        shared.store.message_count().await? as f64,
    );
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        o.0,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::{escape, number};

    #[test]
    fn numbers_and_labels() {
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
