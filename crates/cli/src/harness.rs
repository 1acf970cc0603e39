//! Real node processes on this machine, for the demo and the benchmark: each node is this
//! same binary running `detente serve` in its own directory, on loopback ports, so that it
//! can be killed with SIGKILL and restarted like a real one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::collections::{BTreeMap, BTreeSet};

use detente_node::config::{InitOptions, NodeDir, PeerConfig};
use detente_proto::{Body, MessageId, VerifiedEnvelope};
use detente_store::{Direction, InboxQuery, Placement, Store};
use rand::RngCore;
use serde_json::Value;

use crate::client::Client;
use crate::Failure;

/// A `kB` field of `/proc/PID/status` (`pid` a process id, or `self`), e.g. `VmHWM:`.
pub fn status_kib(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
}

/// Lines of a node's log quoted when it exits at start-up.
const LOG_TAIL_LINES: usize = 20;

/// Where [`free_port`] looks: below Linux's default ephemeral range (32768–60999), from
/// which outgoing connections (a browser's, a client's) take their source ports. A port
/// bound to 0 and let go comes from that range and may be taken by such a connection
/// before the node binds it: a node that then "exited at start-up" (seen in a console test
/// beside Chromium). Never the same port twice in one process.
const FREE_PORTS: std::ops::Range<u16> = 20_000..32_768;
const FREE_PORT_TRIES: usize = 256;

/// A free TCP port on loopback, from [`FREE_PORTS`] (a race with another program is still
/// possible, and start-up then fails with the log's reason).
pub fn free_port() -> Result<u16, Failure> {
    use rand::Rng;
    static GIVEN: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());
    let mut rng = rand::thread_rng();
    for _ in 0..FREE_PORT_TRIES {
        let port = rng.gen_range(FREE_PORTS);
        let mut given = GIVEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return Ok(port);
        }
    }
    Err(Failure::new(format!(
        "no free port in {FREE_PORTS:?} after {FREE_PORT_TRIES} tries"
    )))
}

/// Where a run keeps its nodes: `dir` if given, else a new temporary directory named from
/// `prefix` (removed when the returned guard is dropped).
pub fn scratch_dir(
    dir: Option<PathBuf>,
    prefix: &str,
) -> Result<(PathBuf, Option<tempfile::TempDir>), Failure> {
    match dir {
        Some(d) => Ok((d, None)),
        None => {
            let t = tempfile::Builder::new()
                .prefix(prefix)
                .tempdir()
                .map_err(|e| Failure::new(format!("cannot make a temporary directory: {e}")))?;
            Ok((t.path().to_path_buf(), Some(t)))
        }
    }
}

pub struct ProcNode {
    pub name: String,
    pub dir: PathBuf,
    pub peer_addr: String,
    pub console_addr: String,
    /// The `detente` program to run (this program by default).
    pub exe: PathBuf,
    child: Option<Child>,
}

impl ProcNode {
    /// Create a node directory under `base` with fresh ports on loopback.
    pub fn init(
        base: &Path,
        name: &str,
        party: &str,
        lang: &str,
        tz: &str,
    ) -> Result<Self, Failure> {
        let dir = base.join(name);
        let peer_addr = format!("127.0.0.1:{}", free_port()?);
        let console_addr = format!("127.0.0.1:{}", free_port()?);
        let mut seed = [0u8; 32];
        let mut token = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        rand::rngs::OsRng.fill_bytes(&mut token);
        let options = InitOptions {
            name: name.into(),
            party: party.into(),
            lang: lang.into(),
            tz: tz.into(),
            peer_listen: peer_addr.clone(),
            console_listen: console_addr.clone(),
        };
        NodeDir::new(&dir).init(&options, seed, token)?;
        let exe = std::env::current_exe()
            .map_err(|e| Failure::new(format!("cannot find this program: {e}")))?;
        Ok(Self {
            name: name.into(),
            dir,
            peer_addr,
            console_addr,
            exe,
            child: None,
        })
    }

    /// Pin `a` and `b` to each other at their real addresses.
    pub fn pin_pair(a: &ProcNode, b: &ProcNode) -> Result<(), Failure> {
        a.pin(b, vec![b.peer_addr.clone()])?;
        b.pin(a, vec![a.peer_addr.clone()])
    }

    /// Pin `other` as a peer of this node, reached at `addrs` (a proxy, say).
    pub fn pin(&self, other: &ProcNode, addrs: Vec<String>) -> Result<(), Failure> {
        let key = NodeDir::new(&other.dir).secret()?.public();
        NodeDir::new(&self.dir).add_peer(PeerConfig {
            name: other.name.clone(),
            key: key.to_text(),
            addrs,
            next_step: String::new(),
        })?;
        Ok(())
    }

    pub fn set(&self, key: &str, value: &str) -> Result<(), Failure> {
        let node = NodeDir::new(&self.dir);
        let mut config = node.load()?;
        config.set(key, value)?;
        node.save(&config)?;
        Ok(())
    }

    /// Start `detente serve` for this node; its log goes to `DIR/node.log`.
    pub fn start(&mut self) -> Result<(), Failure> {
        self.start_with_env(&[])
    }

    /// [`Self::start`] with these environment variables set for this node alone (a test's
    /// `DETENTE_FAILPOINT`, say). A failpoint set in the test process is never inherited:
    /// tests run in parallel threads of one process, and a variable set for one node would
    /// reach any node another test started meanwhile.
    pub fn start_with_env(&mut self, vars: &[(&str, &str)]) -> Result<(), Failure> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("node.log"))
            .map_err(|e| Failure::new(format!("cannot open the node log: {e}")))?;
        let child = Command::new(&self.exe)
            .arg("serve")
            .arg("--dir")
            .arg(&self.dir)
            .env(
                "DETENTE_LOG",
                std::env::var("DETENTE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("DETENTE_FAILPOINT")
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| Failure::new(format!("cannot start node {}: {e}", self.name)))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn client(&self) -> Result<Client, Failure> {
        Ok(Client::for_dir(&self.dir)?)
    }

    /// Wait until the node's API answers.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<Client, Failure> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    // The log's last lines, so that a failure in a temporary directory
                    // (gone once the test ends) still says why.
                    let log =
                        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default();
                    let lines: Vec<&str> = log.lines().collect();
                    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
                    return Err(Failure::new(format!(
                        "node {} exited at start-up ({status}); the end of {}:\n{tail}",
                        self.name,
                        self.dir.join("node.log").display()
                    )));
                }
            }
            // The run file appears once the node listens.
            if self.dir.join(detente_node::config::RUN_FILE).exists() {
                let client = self.client()?;
                if client.healthy().await {
                    return Ok(client);
                }
            }
            if Instant::now() > deadline {
                return Err(Failure::new(format!(
                    "node {} did not start within {timeout:?}",
                    self.name
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: the process dies at once, mid-write if it was writing.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.dir.join(detente_node::config::RUN_FILE));
    }

    /// SIGTERM and wait for a clean shutdown.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Leave the process running after this value is dropped.
    pub fn detach(&mut self) {
        self.child = None;
    }

    /// Peak and current resident memory of the process, in MiB (Linux /proc).
    pub fn memory_mib(&self) -> Option<(f64, f64)> {
        let pid = self.pid()?.to_string();
        let mib = |field| status_kib(&pid, field).map(|kb| kb as f64 / 1024.0);
        Some((mib("VmHWM:")?, mib("VmRSS:")?))
    }

    /// CPU time used by the process so far (user + system), in microseconds.
    pub fn cpu_us(&self) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()?)).ok()?;
        // Fields after the command name, which is in parentheses and may contain spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        // Clock ticks are 100 per second on Linux.
        Some((utime + stime) * 10_000)
    }
}

impl Drop for ProcNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Poll `client`'s status until `peer`'s entry satisfies `ready`, or fail after `timeout`
/// saying `what` did not happen.
async fn wait_for_peer(
    client: &Client,
    peer: &str,
    timeout: Duration,
    what: &str,
    ready: impl Fn(&Value) -> bool,
) -> Result<Value, Failure> {
    let deadline = Instant::now() + timeout;
    loop {
        let status = client.get("/api/v1/status").await?;
        if let Some(p) = status["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == peer)
        {
            if ready(p) {
                return Ok(p.clone());
            }
        }
        if Instant::now() > deadline {
            return Err(Failure::new(format!("{what} within {timeout:?}")));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait until `node` reports its link to `peer` up, with a measured round trip.
pub async fn wait_link_up(
    client: &Client,
    peer: &str,
    timeout: Duration,
) -> Result<Value, Failure> {
    let what = format!("the link to {peer} did not come up");
    wait_for_peer(client, peer, timeout, &what, |p| {
        p["state"] == "up" && p["connected"] == true && !p["rtt_ms"].is_null()
    })
    .await
}

/// Wait until `node` has no undelivered envelope for `peer` (outbox empty).
pub async fn wait_outbox_empty(
    client: &Client,
    peer: &str,
    timeout: Duration,
) -> Result<(), Failure> {
    let what = format!("the outbox for {peer} did not drain");
    wait_for_peer(client, peer, timeout, &what, |p| p["outbox"] == 0).await?;
    Ok(())
}

/// Queue `count` ROUTINE text messages of about `size` bytes, in batches.
pub async fn send_bulk(
    client: &Client,
    to: &str,
    count: u64,
    size: usize,
    label: &str,
) -> Result<Vec<Value>, Failure> {
    let mut sent = Vec::with_capacity(count as usize);
    let mut i = 0;
    while i < count {
        let n = (count - i).min(detente_node::api::SEND_BATCH_MAX as u64);
        let messages: Vec<Value> = (0..n)
            .map(|k| {
                let head = format!("{label} {} ", i + k + 1);
                let pad = "x".repeat(size.saturating_sub(head.len()));
                serde_json::json!({"to": to, "precedence": "routine", "text": format!("{head}{pad}")})
            })
            .collect();
        let answer = client
            .post(
                "/api/v1/messages/batch",
                &serde_json::json!({"messages": messages}),
            )
            .await?;
        sent.extend(answer.as_array().cloned().unwrap_or_default());
        i += n;
    }
    Ok(sent)
}

/// A TCP proxy on loopback that can cut every connection through it and refuse new ones,
/// for tests that break links (`set_cut(true)`) and restore them.
pub struct Proxy {
    /// Where it listens: pin this address instead of the node's.
    pub listen: String,
    cut: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    /// Forward connections on a free loopback port to `target`.
    pub async fn start(target: String) -> Result<Proxy, Failure> {
        let listen = format!("127.0.0.1:{}", free_port()?);
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .map_err(|e| Failure::new(format!("proxy cannot listen on {listen}: {e}")))?;
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                if *cut_rx.borrow() {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let mut cut_rx = cut_rx.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let (mut ri, mut wi) = inbound.into_split();
                    let (mut ro, mut wo) = outbound.into_split();
                    tokio::select! {
                        _ = tokio::io::copy(&mut ri, &mut wo) => {}
                        _ = tokio::io::copy(&mut ro, &mut wi) => {}
                        _ = cut_rx.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Ok(Proxy { listen, cut })
    }

    /// Cut (true) or restore (false) the path.
    pub fn set_cut(&self, cut: bool) {
        let _ = self.cut.send(cut);
    }
}

/// For the real-process delivery tests (the nodes stopped): `from`'s stream to `to`, as
/// stored on both sides, is identical, complete, linked and verified, and carries exactly
/// the texts `{from_name}-0` to `{from_name}-{per_side - 1}` that were sent, once each.
pub async fn check_stream(
    from: &ProcNode,
    to: &ProcNode,
    from_name: &str,
    to_name: &str,
    per_side: usize,
) {
    let key = NodeDir::new(&from.dir).secret().unwrap().public();
    let sent = stream_rows(from, to_name, Direction::Out).await;
    let received = stream_rows(to, from_name, Direction::In).await;
    let n = sent.len() as u64;
    assert!(n >= per_side as u64, "{from_name} wrote {n} envelopes");
    assert_eq!(
        sent.keys().copied().collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>(),
        "gap-free at the sender"
    );
    assert_eq!(
        received.keys().copied().collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>(),
        "gap-free at the receiver"
    );
    let mut prev = MessageId::ZERO;
    let mut texts = BTreeSet::new();
    for (seq, (bytes, placement)) in &received {
        assert_eq!(
            *placement,
            Placement::Appended,
            "seq {seq} is in the transcript"
        );
        assert_eq!(
            &sent[seq].0, bytes,
            "seq {seq}: both sides hold the same bytes"
        );
        let v =
            VerifiedEnvelope::decode(bytes, Some(&key)).expect("every stored signature verifies");
        assert_eq!(
            v.envelope().prev,
            prev,
            "seq {seq} links to its predecessor"
        );
        prev = v.id();
        if let Body::Text(t) = &v.envelope().body {
            assert!(texts.insert(t.text.clone()), "{} received twice", t.text);
        }
    }
    let expected: BTreeSet<String> = (0..per_side).map(|k| format!("{from_name}-{k}")).collect();
    assert_eq!(texts, expected, "exactly the messages sent, each once");
}

/// One direction of a node's channel with `peer`, by seq, read from its store.
pub async fn stream_rows(
    node: &ProcNode,
    peer: &str,
    direction: Direction,
) -> BTreeMap<u64, (Vec<u8>, Placement)> {
    let dir = NodeDir::new(&node.dir);
    let store = detente_node::open_store(&dir, &dir.load().unwrap())
        .await
        .unwrap();
    let rows = store
        .inbox(InboxQuery {
            peer: Some(peer.into()),
            direction: Some(direction),
            include_system: true,
            limit: 100_000,
        })
        .await
        .unwrap();
    store.close().await;
    let mut out = BTreeMap::new();
    for row in rows {
        assert!(
            out.insert(row.seq, (row.bytes, row.placement)).is_none(),
            "seq {} stored twice",
            row.seq
        );
    }
    out
}
