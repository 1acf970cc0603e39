//! `detente bench --peers N`: one node with N pinned peers, each a real `detente serve`
//! process on loopback speaking the real protocol over real TLS. The hub sends `--messages`
//! ROUTINE messages spread evenly over its N channels; the figure is the hub's CPU per message
//! (from /proc), measured the same way on a hub with one peer in the same run, and their
//! ratio (the target: within 20 %). Bounded in count and time.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{send_bulk, wait_link_up, ProcNode};
use crate::{Failure, Outcome};

/// Peers one run may start at most (as many as a node may pin: the core's `PEERS_MAX`).
pub const PEERS_MAX: usize = 256;
/// Messages one run may send at most.
const MESSAGES_MAX: u64 = 1_000_000;
const MESSAGE_BYTES: usize = 1024;
/// How long the links of a star may take to come up, and its messages to be confirmed.
const UP_TIMEOUT: Duration = Duration::from_secs(300);
const STEP_TIMEOUT: Duration = Duration::from_secs(600);
/// The hub's CPU per message with N peers may be this much of the one-peer figure.
const RATIO_TARGET: f64 = 1.2;

pub async fn run(
    peers: usize,
    messages: u64,
    json: bool,
    dir: Option<PathBuf>,
    compare: bool,
) -> Outcome {
    if peers == 0 || peers > PEERS_MAX || messages < peers as u64 || messages > MESSAGES_MAX {
        return Err(Failure::usage(format!(
            "--peers must be between 1 and {PEERS_MAX}, and --messages between the number of \
             peers and {MESSAGES_MAX}"
        )));
    }
    let (base, temp) = crate::harness::scratch_dir(dir, "detente-bench-peers-")?;
    let say = |text: &str| {
        if !json {
            eprintln!("{text}");
        }
    };
    let baselines = if compare {
        say("measuring this machine's baselines (disk, SQLite, signatures)…");
        Some(crate::bench_compare::measure(&base).await?)
    } else {
        None
    };
    say(&format!("one node with one peer: {messages} messages…"));
    let one = star(&base.join("one"), 1, messages, &say).await?;
    say(&format!(
        "one node with {peers} peers: {messages} messages…"
    ));
    let many = star(&base.join("many"), peers, messages, &say).await?;
    drop(temp);
    // CPU time is counted in 10 ms ticks: a run too short for one has no ratio.
    let ratio = (one.cpu_us_per_msg > 0.0)
        .then(|| ((many.cpu_us_per_msg / one.cpu_us_per_msg) * 100.0).round() / 100.0);
    let mut result = json!({
        "peers": peers,
        "messages": messages,
        "message_bytes": MESSAGE_BYTES,
        "one_peer": one.to_json(),
        "many_peers": many.to_json(),
        "hub_cpu_ratio": ratio,
        "hub_cpu_ratio_target_max": RATIO_TARGET,
    });
    if let Some(b) = &baselines {
        result["compare"] = b.to_json(many.throughput);
    }
    if json {
        println!("{result}");
    } else {
        println!(
            "one node, {messages} × 1 KiB ROUTINE spread over its peers (hub's CPU from /proc)"
        );
        println!(
            "  {:<28} {:>12} {:>12}",
            "",
            "1 peer",
            format!("{peers} peers")
        );
        let row = |what: &str, a: f64, b: f64, unit: &str| {
            println!("  {what:<28} {a:>9.0} {unit:<2} {b:>9.0} {unit:<2}");
        };
        row(
            "hub CPU per message",
            one.cpu_us_per_msg,
            many.cpu_us_per_msg,
            "µs",
        );
        row("throughput", one.throughput, many.throughput, "/s");
        row(
            "hub peak memory",
            one.peak_rss_mib,
            many.peak_rss_mib,
            "MiB",
        );
        row("links up after", one.up_ms, many.up_ms, "ms");
        match ratio {
            Some(r) => println!("  hub CPU ratio {r:.2} (target ≤ {RATIO_TARGET})"),
            None => println!("  hub CPU ratio: too short a run to measure (try more --messages)"),
        }
        if let Some(b) = &baselines {
            crate::bench_compare::print(b, many.throughput);
        }
    }
    Ok(())
}

/// Wait until every one of the hub's `n` outboxes is empty: one status read per 50 ms for
/// all of them (the hub's CPU is being measured; a read per peer would add to it).
async fn all_confirmed(hub: &crate::client::Client, n: usize) -> Result<(), Failure> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let status = hub.get("/api/v1/status").await?;
        let peers = status["peers"].as_array().map_or(&[][..], Vec::as_slice);
        if peers.len() == n && peers.iter().all(|p| p["outbox"] == 0) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Failure::new(format!(
                "the hub's outboxes did not drain within {STEP_TIMEOUT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What one star measured.
struct Figures {
    cpu_us_per_msg: f64,
    throughput: f64,
    peak_rss_mib: f64,
    up_ms: f64,
}

impl Figures {
    fn to_json(&self) -> Value {
        json!({
            "hub_cpu_us_per_msg": self.cpu_us_per_msg.round(),
            "throughput_msgs_per_s": self.throughput.round(),
            "hub_peak_rss_mib": (self.peak_rss_mib * 100.0).round() / 100.0,
            "links_up_ms": self.up_ms.round(),
        })
    }
}

/// A hub and `n` peers under `base`: started, linked, `messages` sent from the hub spread
/// evenly over the peers, every outbox confirmed; then all stopped.
async fn star(
    base: &Path,
    n: usize,
    messages: u64,
    say: &impl Fn(&str),
) -> Result<Figures, Failure> {
    let mut hub = ProcNode::init(base, "hub", "Bench Hub", "en", "UTC")?;
    let mut peers = Vec::with_capacity(n);
    for i in 0..n {
        let peer = ProcNode::init(base, &format!("p{i:03}"), "Bench Peer", "en", "UTC")?;
        ProcNode::pin_pair(&hub, &peer)?;
        peers.push(peer);
    }
    for node in std::iter::once(&hub).chain(&peers) {
        node.set("link.backoff_initial", "50ms")?;
        node.set("link.backoff_max", "500ms")?;
    }
    let started = Instant::now();
    hub.start()?;
    for peer in &mut peers {
        peer.start()?;
    }
    let hc = hub.wait_ready(Duration::from_secs(60)).await?;
    for peer in &mut peers {
        peer.wait_ready(Duration::from_secs(60)).await?;
    }
    for peer in &peers {
        wait_link_up(&hc, &peer.name, UP_TIMEOUT).await?;
    }
    let up_ms = started.elapsed().as_secs_f64() * 1000.0;
    say(&format!("  {n} links up after {up_ms:.0} ms; warming up…"));
    for peer in &peers {
        send_bulk(&hc, &peer.name, 10, MESSAGE_BYTES, "warm-up").await?;
    }
    all_confirmed(&hc, n).await?;

    let cpu_before = hub
        .cpu_us()
        .ok_or_else(|| Failure::new("cannot read the hub's CPU time from /proc"))?;
    let t0 = Instant::now();
    let share = messages / n as u64;
    for (i, peer) in peers.iter().enumerate() {
        // The remainder goes to the first peers, one each.
        let count = share + u64::from((i as u64) < messages % n as u64);
        send_bulk(&hc, &peer.name, count, MESSAGE_BYTES, "bench").await?;
    }
    all_confirmed(&hc, n).await?;
    let seconds = t0.elapsed().as_secs_f64();
    let cpu_after = hub
        .cpu_us()
        .ok_or_else(|| Failure::new("cannot read the hub's CPU time from /proc"))?;
    let peak_rss_mib = hub.memory_mib().map_or(0.0, |(peak, _)| peak);
    hub.stop();
    for peer in &mut peers {
        peer.stop();
    }
    Ok(Figures {
        cpu_us_per_msg: cpu_after.saturating_sub(cpu_before) as f64 / messages as f64,
        throughput: messages as f64 / seconds,
        peak_rss_mib,
        up_ms,
    })
}
