//! `detente bench`: end-to-end figures between two real node processes over TLS on
//! loopback, each with its own SQLite file, or with `--store postgres` each with its own
//! database on a PostgreSQL server (made for the run and dropped after it). Bounded in count
//! and time.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::client::Client;
use crate::harness::{send_bulk, wait_link_up, wait_outbox_empty, ProcNode};
use crate::progress::Progress;
use crate::{Failure, Outcome};

pub struct Options {
    pub json: bool,
    pub messages: u64,
    pub backlog: u64,
    pub samples: u64,
    pub dir: Option<PathBuf>,
    /// Also measure the machine's baselines ([`crate::bench_compare`]) in the same run.
    pub compare: bool,
    /// `Some`: both nodes on PostgreSQL, through this administrative URL (`None` inside:
    /// none was given).
    pub postgres: Option<Option<String>>,
}

/// The two nodes' PostgreSQL databases for one run; dropped by [`Databases::drop_all`].
struct Databases {
    admin: String,
    names: Vec<String>,
}

impl Databases {
    /// Make a database for each node and point the node at it.
    async fn create(admin: String, nodes: [&ProcNode; 2]) -> Result<Databases, Failure> {
        let mut made = Databases {
            admin,
            names: Vec::new(),
        };
        for node in nodes {
            let name = format!("detente_bench_{}_{}", std::process::id(), node.name);
            let url = detente_store::postgres::create_database(&made.admin, &name)
                .await
                .map_err(|e| Failure::new(format!("--database-url: {e}")))?;
            made.names.push(name);
            node.set("database_url", &url)?;
        }
        Ok(made)
    }

    async fn drop_all(self) {
        for name in &self.names {
            if let Err(e) = detente_store::postgres::drop_database(&self.admin, name).await {
                eprintln!("cannot drop benchmark database {name}: {e}");
            }
        }
    }
}

/// Upper bounds that keep a mistyped flag from running for hours.
const MESSAGES_MAX: u64 = 2_000_000;
const SAMPLES_MAX: u64 = 100_000;
const FLASHES: usize = 10;
const MESSAGE_BYTES: usize = 1024;
const STEP_TIMEOUT: Duration = Duration::from_secs(600);

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

pub async fn run(o: Options) -> Outcome {
    if o.messages == 0
        || o.messages > MESSAGES_MAX
        || o.backlog > MESSAGES_MAX
        || o.samples == 0
        || o.samples > SAMPLES_MAX
    {
        return Err(Failure::usage(format!(
            "--messages and --backlog must be at most {MESSAGES_MAX}, --samples between 1 and {SAMPLES_MAX}"
        )));
    }
    let (base, temp) = crate::harness::scratch_dir(o.dir.clone(), "detente-bench-")?;
    let baselines = if o.compare {
        if !o.json {
            eprintln!("measuring this machine's baselines (disk, SQLite, signatures)…");
        }
        Some(crate::bench_compare::measure(&base).await?)
    } else {
        None
    };
    let mut a = ProcNode::init(&base, "alpha", "Bench Party Alpha", "en", "UTC")?;
    let mut b = ProcNode::init(&base, "bravo", "Bench Party Bravo", "en", "UTC")?;
    let databases = match o.postgres.clone() {
        None => None,
        Some(None) => {
            return Err(Failure::usage(
                "--store postgres needs --database-url (or DETENTE_BENCH_DATABASE_URL)",
            ))
        }
        Some(Some(admin)) => Some(Databases::create(admin, [&a, &b]).await?),
    };
    let result = measure(&o, &mut a, &mut b, baselines.as_ref()).await;
    a.stop();
    b.stop();
    if let Some(d) = databases {
        d.drop_all().await;
    }
    drop(temp);
    result
}

/// The benchmark proper, on the two initialised nodes.
async fn measure(
    o: &Options,
    a: &mut ProcNode,
    b: &mut ProcNode,
    baselines: Option<&crate::bench_compare::Baselines>,
) -> Outcome {
    ProcNode::pin_pair(a, b)?;
    for node in [&a, &b] {
        node.set("link.backoff_initial", "50ms")?;
        node.set("link.backoff_max", "500ms")?;
    }
    a.start()?;
    b.start()?;
    let ac = a.wait_ready(Duration::from_secs(30)).await?;
    b.wait_ready(Duration::from_secs(30)).await?;
    wait_link_up(&ac, "bravo", Duration::from_secs(30)).await?;
    let say = |text: &str| {
        if !o.json {
            eprintln!("{text}");
        }
    };

    say("warming up…");
    send_bulk(&ac, "bravo", 1000, MESSAGE_BYTES, "warm-up").await?;
    wait_outbox_empty(&ac, "bravo", STEP_TIMEOUT).await?;

    say(&format!(
        "latency: {} single messages, one at a time…",
        o.samples
    ));
    let mut latencies = Vec::with_capacity(o.samples as usize);
    let mut accept = Vec::with_capacity(o.samples as usize);
    let text = "L".repeat(MESSAGE_BYTES);
    let progress = Progress::bar(o.samples, "latency");
    for _ in 0..o.samples {
        let t0 = Instant::now();
        let sent = ac
            .post("/api/v1/messages", &json!({"to": "bravo", "text": text}))
            .await?;
        accept.push(t0.elapsed().as_secs_f64() * 1000.0);
        let id = sent["id"].as_str().unwrap_or_default();
        ac.get(&format!(
            "/api/v1/messages/{id}/wait?level=delivered&timeout_ms=60000"
        ))
        .await?;
        latencies.push(t0.elapsed().as_secs_f64() * 1000.0);
        progress.inc(1);
    }
    drop(progress);
    latencies.sort_by(f64::total_cmp);
    accept.sort_by(f64::total_cmp);

    say(&format!(
        "throughput: {} messages of {MESSAGE_BYTES} bytes…",
        o.messages
    ));
    let cpu_before = a.cpu_us().unwrap_or(0) + b.cpu_us().unwrap_or(0);
    let progress = Progress::spinner(format!("throughput: {} messages", o.messages));
    let t0 = Instant::now();
    let sent = send_concurrently(&ac, o.messages).await?;
    let last = sent
        .last()
        .and_then(|s| s["id"].as_str())
        .unwrap_or_default()
        .to_string();
    ac.get(&format!(
        "/api/v1/messages/{last}/wait?level=delivered&timeout_ms={}",
        STEP_TIMEOUT.as_millis()
    ))
    .await?;
    wait_outbox_empty(&ac, "bravo", STEP_TIMEOUT).await?;
    let elapsed = t0.elapsed().as_secs_f64();
    drop(progress);
    let cpu_after = a.cpu_us().unwrap_or(0) + b.cpu_us().unwrap_or(0);
    let throughput = o.messages as f64 / elapsed;
    let cpu_per_msg = (cpu_after - cpu_before) as f64 / o.messages as f64;

    say(&format!(
        "FLASH behind a backlog of {} ROUTINE messages…",
        o.backlog
    ));
    b.stop();
    send_bulk(&ac, "bravo", o.backlog, MESSAGE_BYTES, "backlog").await?;
    let mut flashes = Vec::new();
    b.start()?;
    let first_flash_sent = Instant::now();
    let first = ac
        .post(
            "/api/v1/messages",
            &json!({"to": "bravo", "precedence": "flash", "text": "FLASH behind the backlog"}),
        )
        .await?;
    let bc = b.wait_ready(Duration::from_secs(30)).await?;
    let id = first["id"].as_str().unwrap_or_default();
    ac.get(&format!(
        "/api/v1/messages/{id}/wait?level=delivered&timeout_ms=60000"
    ))
    .await?;
    let reconnect_and_flash_ms = first_flash_sent.elapsed().as_secs_f64() * 1000.0;
    let mut backlog_seen = Vec::new();
    let mut stages = Vec::new();
    let progress = Progress::bar(FLASHES as u64, "FLASH behind the backlog");
    for i in 0..FLASHES {
        let status = ac.get("/api/v1/status").await?;
        let queued = status["peers"][0]["outbox"].as_u64().unwrap_or(0);
        let t0 = Instant::now();
        let sent = ac
            .post(
                "/api/v1/messages",
                &json!({"to": "bravo", "precedence": "flash", "text": format!("FLASH {i}")}),
            )
            .await?;
        let id = sent["id"].as_str().unwrap_or_default();
        ac.get(&format!(
            "/api/v1/messages/{id}/wait?level=delivered&timeout_ms=60000"
        ))
        .await?;
        flashes.push(t0.elapsed().as_secs_f64() * 1000.0);
        backlog_seen.push(queued);
        // Where the time went (both nodes share this machine's clock, milliseconds):
        // written at alpha → stored at bravo → DELIVERED signed at bravo → seen back at alpha.
        let seen_back_ms = now_ms();
        let at_a = ac.get(&format!("/api/v1/messages/{id}")).await?;
        let at_b = bc.get(&format!("/api/v1/messages/{id}")).await?;
        let (written, received, delivered) = (
            time_ms(&at_a["created_at"]),
            time_ms(&at_b["received_at"]),
            time_ms(&at_a["receipts"]["delivered"]),
        );
        if let (Some(w), Some(r), Some(d)) = (written, received, delivered) {
            stages.push(json!({
                "to_peer_ms": r - w,
                "receipt_signed_ms": d - r,
                "back_ms": seen_back_ms - d,
            }));
        }
        progress.inc(1);
    }
    drop(progress);
    flashes.sort_by(f64::total_cmp);
    wait_outbox_empty(&ac, "bravo", STEP_TIMEOUT).await?;
    let peak = [a.memory_mib(), b.memory_mib()]
        .into_iter()
        .flatten()
        .map(|(hwm, _)| hwm)
        .fold(0.0, f64::max);
    let result = json!({
        "store": if o.postgres.is_some() { "postgres" } else { "sqlite" },
        "messages": o.messages,
        "message_bytes": MESSAGE_BYTES,
        "throughput_msgs_per_s": throughput.round(),
        "latency_p50_ms": round2(percentile(&latencies, 50.0)),
        "latency_p99_ms": round2(percentile(&latencies, 99.0)),
        "send_accept_p50_ms": round2(percentile(&accept, 50.0)),
        "latency_samples": o.samples,
        "flash_behind_backlog_ms": round2(percentile(&flashes, 99.0)),
        "flash_behind_backlog_p50_ms": round2(percentile(&flashes, 50.0)),
        "flash_behind_backlog_max_ms": round2(flashes.last().copied().unwrap_or(f64::NAN)),
        "flash_after_reconnect_ms": round2(reconnect_and_flash_ms),
        "backlog": o.backlog,
        "backlog_when_flash_sent": backlog_seen,
        "flash_stages": stages,
        "cpu_us_per_msg": cpu_per_msg.round(),
        "peak_rss_mib": round2(peak),
    });
    let mut result = result;
    if let Some(b) = baselines {
        result["compare"] = b.to_json(throughput);
    }
    if o.json {
        println!("{result}");
    } else {
        print_table(&result);
        if let Some(b) = baselines {
            crate::bench_compare::print(b, throughput);
        }
    }
    Ok(())
}

/// Submit `count` messages in batches, two batches in flight, so that group commits fill.
async fn send_concurrently(client: &Client, count: u64) -> Result<Vec<Value>, Failure> {
    let half = count / 2;
    let first = {
        let c = client.clone();
        tokio::spawn(async move { send_bulk(&c, "bravo", half, MESSAGE_BYTES, "bench-a").await })
    };
    let second = send_bulk(client, "bravo", count - half, MESSAGE_BYTES, "bench-b").await?;
    let mut all = first.await.map_err(|e| Failure::new(e.to_string()))??;
    all.extend(second);
    all.sort_by_key(|v| v["seq"].as_u64().unwrap_or(0));
    Ok(all)
}

fn print_table(r: &Value) {
    let store = if r["store"] == "postgres" {
        "a PostgreSQL database"
    } else {
        "SQLite"
    };
    println!(
        "detente bench: two nodes, real TLS on loopback, {store} each, 1 KiB ROUTINE messages"
    );
    println!(
        "  throughput (send accepted → DELIVERED back) {:>10} msg/s over {} messages",
        r["throughput_msgs_per_s"], r["messages"]
    );
    println!(
        "  latency single message p50 / p99           {:>7} / {} ms",
        r["latency_p50_ms"], r["latency_p99_ms"]
    );
    println!(
        "  send accepted (durable) p50                 {:>7} ms",
        r["send_accept_p50_ms"]
    );
    println!(
        "  FLASH behind backlog p50 / p99              {:>7} / {} ms (backlog {})",
        r["flash_behind_backlog_p50_ms"], r["flash_behind_backlog_ms"], r["backlog"]
    );
    let worst = |key: &str| {
        r["flash_stages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s[key].as_i64())
            .max()
            .unwrap_or(0)
    };
    println!(
        "    slowest stages: written → stored at peer {:>4} ms, DELIVERED signed → back {} ms",
        worst("to_peer_ms"),
        worst("back_ms")
    );
    println!(
        "  FLASH sent during restart, delivered after  {:>7} ms",
        r["flash_after_reconnect_ms"]
    );
    println!(
        "  CPU per message (both nodes)                {:>7} µs",
        r["cpu_us_per_msg"]
    );
    println!(
        "  peak resident memory (largest node)         {:>7} MiB",
        r["peak_rss_mib"]
    );
}

/// Wall-clock milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// An API time (RFC 3339, UTC) in milliseconds since the Unix epoch.
fn time_ms(v: &Value) -> Option<i64> {
    v.as_str()?
        .parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}
