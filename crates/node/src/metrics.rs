//! `/metrics`: the OpenMetrics text exposition (1.0.0), encoded by prometheus-client.
//!
//! Counters come from [`crate::events::Metrics`] (every published event is counted there);
//! gauges are read when asked: link state and round trip per peer from the links, outbox
//! depth from the store, overdue and unanswered counts from the watch task. Each scrape
//! fills a fresh registry with what it read, so nothing here keeps state of its own, and
//! the series are those Prometheus has always scraped (`detente_messages_total`, …): the
//! rules and dashboard in `ops/` name them. The route needs the API token like every other
//! (Prometheus: `authorization: {credentials_file: api.token}`).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use detente_proto::LinkState;
use detente_store::Store;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::service::Error as ApiError;
use crate::{now_ms, Shared};

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A series' labels: (name, value) pairs, in the order written.
type Labels = Vec<(&'static str, String)>;

/// The families of one scrape, registered in the order they are written.
struct Out(Registry);

impl Out {
    /// A gauge family and its samples.
    fn gauge(&mut self, name: &str, help: &str, samples: Vec<(Labels, f64)>) {
        let family = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        for (labels, value) in samples {
            family.get_or_create(&labels).set(value);
        }
        self.0.register(name, help, family);
    }

    /// A counter family and its samples. `name` is the series' name, `…_total`, as rules and
    /// dashboards know it; OpenMetrics names the family without the suffix.
    fn counter(&mut self, name: &str, help: &str, samples: Vec<(Labels, u64)>) {
        let family = Family::<Labels, Counter<u64>>::default();
        for (labels, value) in samples {
            family.get_or_create(&labels).inc_by(value);
        }
        let base = name.strip_suffix("_total").unwrap_or(name);
        self.0.register(base, help, family);
    }

    fn text(&self) -> String {
        let mut text = String::with_capacity(8192);
        // Writing to a String cannot fail; an encoding error would be a bug of ours.
        encode(&mut text, &self.0).expect("the exposition encodes");
        text
    }
}

fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

pub async fn exposition(State(shared): State<Arc<Shared>>) -> Result<Response, ApiError> {
    let mut o = Out(Registry::default());
    links(&shared, &mut o);
    listener(&shared, &mut o);
    backlog(&shared, &mut o).await?;
    counters(&shared, &mut o);
    o.gauge(
        "detente_messages_stored",
        "Envelopes in the store (all peers, both directions).",
        vec![(vec![], shared.store.message_count().await? as f64)],
    );
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], o.text()).into_response())
}

/// Link state and round trip per peer.
fn links(shared: &Shared, o: &mut Out) {
    let peers = shared.table.all();
    let now = Instant::now();
    let mut states = Vec::new();
    let mut rtts = Vec::new();
    let mut clocks = Vec::new();
    for entry in &peers {
        let status = entry.status.read().ok();
        let state = status
            .as_ref()
            .map_or(LinkState::Down, |s| s.current_state(now));
        for s in [LinkState::Up, LinkState::Degraded, LinkState::Down] {
            let v = if s == state { 1.0 } else { 0.0 };
            states.push((labels([("peer", &entry.name), ("state", s.name())]), v));
        }
        let offset = status
            .as_ref()
            .and_then(|s| s.view.as_ref())
            .and_then(|v| v.clock_offset())
            .map_or(f64::NAN, |c| c.offset_ms as f64 / 1000.0);
        clocks.push((labels([("peer", &entry.name)]), offset));
        let rtt = status
            .and_then(|s| s.rtt_ms)
            .map_or(f64::NAN, |ms| ms / 1000.0);
        rtts.push((labels([("peer", &entry.name)]), rtt));
    }
    o.gauge(
        "detente_link_state",
        "Link state per peer: 1 for the current state (up, degraded, down), else 0.",
        states,
    );
    o.gauge(
        "detente_link_rtt_seconds",
        "Last heartbeat round-trip time per peer (NaN before the first).",
        rtts,
    );
    o.gauge(
        "detente_peer_clock_offset_seconds",
        "The peer's wall clock minus ours, from the last heartbeat (NaN before the peer said it).",
        clocks,
    );
}

/// What the peer listener refused.
fn listener(shared: &Shared, o: &mut Out) {
    let closed = shared
        .gate
        .closed()
        .into_iter()
        .map(|(why, n)| (labels([("reason", why.name())]), n))
        .collect();
    o.counter(
        "detente_peer_connections_refused_total",
        "Inbound peer connections closed before their TLS handshake, by reason.",
        closed,
    );
    o.counter(
        "detente_peer_keys_refused_total",
        "Inbound handshakes refused because the key presented is not pinned.",
        vec![(vec![], shared.gate.keys_refused_total())],
    );
    let attempts = shared
        .gate
        .refused_keys()
        .iter()
        .map(|k| {
            let fingerprint = detente_proto::identity::fingerprint(&k.key);
            (labels([("fingerprint", &fingerprint)]), k.count as f64)
        })
        .collect();
    o.gauge(
        "detente_peer_refused_key_attempts",
        "Attempts per refused (unpinned) key still remembered, by fingerprint.",
        attempts,
    );
}

/// Outbox and inbox depth, overdue messages and missed link tests per peer.
async fn backlog(shared: &Shared, o: &mut Out) -> Result<(), ApiError> {
    let peers = shared.table.all();
    let mut outbox = Vec::new();
    for entry in &peers {
        let counts = shared.store.outbox_counts(&entry.name).await?;
        outbox.push((labels([("peer", &entry.name)]), counts.pending as f64));
    }
    o.gauge(
        "detente_outbox_depth",
        "Envelopes waiting for the peer's confirmation, per peer.",
        outbox,
    );
    let alarms: Vec<_> = peers
        .iter()
        .map(|e| {
            let a = e.alarms.read().map(|a| a.clone()).unwrap_or_default();
            (e.name.as_str(), a)
        })
        .collect();
    let per_peer = |value: &dyn Fn(&crate::deadlines::PeerAlarms) -> f64| {
        alarms
            .iter()
            .map(|(peer, a)| (labels([("peer", peer)]), value(a)))
            .collect::<Vec<_>>()
    };
    o.gauge(
        "detente_inbox_depth",
        "Messages received from the peer not yet acknowledged or declined.",
        per_peer(&|a| a.unanswered_in as f64),
    );
    let mut overdue = Vec::new();
    for (peer, a) in &alarms {
        overdue.push((
            labels([("peer", peer), ("direction", "out")]),
            a.overdue_out as f64,
        ));
        overdue.push((
            labels([("peer", peer), ("direction", "in")]),
            a.overdue_in as f64,
        ));
    }
    o.gauge(
        "detente_overdue",
        "Messages past a deadline without the receipt they need, per peer and direction.",
        overdue,
    );
    o.gauge(
        "detente_link_test_missed",
        "1 while the last link test to the peer is unconfirmed past its bound.",
        per_peer(&|a| f64::from(u8::from(a.test_missed))),
    );
    Ok(())
}

/// The node's counters since start, and the age of the latest checkpoint.
fn counters(shared: &Shared, o: &mut Out) {
    let m = shared.events.metrics().clone();
    let messages = m
        .messages()
        .into_iter()
        .map(|(direction, precedence, kind, n)| {
            let l = labels([
                ("direction", direction),
                ("precedence", precedence.name()),
                ("kind", kind),
            ]);
            (l, n)
        })
        .collect();
    o.counter(
        "detente_messages_total",
        "Envelopes stored since start, by direction, precedence and kind.",
        messages,
    );
    o.counter(
        "detente_delivered_total",
        "Our envelopes confirmed durable by the peer since start.",
        vec![(vec![], m.delivered())],
    );
    o.counter(
        "detente_receipts_total",
        "Read, acknowledged and declined receipts recorded since start.",
        vec![(vec![], m.receipts())],
    );
    let (overdue_delivered, overdue_ack) = m.overdue_total();
    o.counter(
        "detente_deadlines_missed_total",
        "Deadlines missed since start, by the receipt that was needed.",
        vec![
            (labels([("needed", "delivered")]), overdue_delivered),
            (labels([("needed", "acknowledged")]), overdue_ack),
        ],
    );
    o.counter(
        "detente_verification_failures_total",
        "Envelopes from peers refused because they did not verify.",
        vec![(vec![], m.verification_failures())],
    );
    hooks_and_alarms(&m, o);
    let (watched, watched_peak) = m.deadlines_watched();
    o.gauge(
        "detente_deadlines_watched",
        "Pending messages the deadline watch holds in memory (the nearest due; the rest \
         wait in the store), now and the most at once since start.",
        vec![
            (labels([("at", "now")]), watched as f64),
            (labels([("at", "peak")]), watched_peak as f64),
        ],
    );
    let age = m
        .checkpoint_at_ms()
        .map_or(f64::NAN, |at| (now_ms() as i64 - at).max(0) as f64 / 1000.0);
    o.gauge(
        "detente_checkpoint_age_seconds",
        "Age of the latest transcript checkpoint (NaN when there is none).",
        vec![(vec![], age)],
    );
}

fn hooks_and_alarms(m: &crate::events::Metrics, o: &mut Out) {
    let attempts = m
        .hook_attempts()
        .into_iter()
        .map(|(target, result, n)| (labels([("target", target), ("result", result)]), n))
        .collect();
    o.counter(
        "detente_hook_attempts_total",
        "Hook attempts by target and result.",
        attempts,
    );
    let failures = m
        .hook_failures()
        .into_iter()
        .map(|(target, n)| (labels([("target", target)]), n))
        .collect();
    o.counter(
        "detente_hook_failures_total",
        "Hook deliveries given up after every attempt, by target.",
        failures,
    );
    o.counter(
        "detente_hook_dropped_total",
        "Hook events dropped because the queue was full.",
        vec![(vec![], m.hook_dropped_total())],
    );
    let raised = m.alarms();
    let alarms = [
        "deadline_missed",
        "link_down",
        "link_restored",
        "link_test_missed",
        "equivocation",
        "charter_refused",
    ]
    .into_iter()
    .map(|event| {
        let n = raised
            .iter()
            .find(|(name, _)| *name == event)
            .map_or(0, |(_, n)| *n);
        (labels([("event", event)]), n)
    })
    .collect();
    o.counter(
        "detente_alarms_total",
        "Alarms raised since start, by event.",
        alarms,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_keep_their_names_and_labels_escape() {
        let mut o = Out(Registry::default());
        o.gauge(
            "detente_link_rtt_seconds",
            "Round trip.",
            vec![
                (labels([("peer", "a\"b\\c\nd")]), 0.25),
                (labels([("peer", "x")]), f64::NAN),
            ],
        );
        o.counter("detente_delivered_total", "Delivered.", vec![(vec![], 3)]);
        let text = o.text();
        assert!(
            text.contains("# TYPE detente_delivered counter\n"),
            "{text}"
        );
        assert!(text.contains("\ndetente_delivered_total 3\n"), "{text}");
        assert!(
            text.contains("detente_link_rtt_seconds{peer=\"a\\\"b\\\\c\\nd\"} 0.25\n"),
            "{text}"
        );
        assert!(
            text.contains("detente_link_rtt_seconds{peer=\"x\"} NaN\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
