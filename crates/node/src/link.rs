//! Peer links: dialing, accepting, and running a session over TLS.
//!
//! One task per peer owns the [`LinkSupervisor`] (heartbeats, state, backoff, failover) and
//! at most one session. Both nodes dial; when two sessions meet, the one dialed by the party
//! with the smaller key wins, so both sides converge on the same connection.
//!
//! A session runs three tasks:
//! - the **reader** reads frames; envelopes are gathered into batches (everything that
//!   arrived in one read) and handed to the receive pipeline;
//! - the **receive pipeline** verifies a batch (batch signature verification, each envelope
//!   getting exactly its single-verification result), gives it to the writer, and only after
//!   the writer's commit sends back `Ack` — the signed DELIVERED receipt was staged in that
//!   same commit and goes out through the scheduler;
//! - the **session loop** owns the write half: heartbeats, acks, and the precedence
//!   scheduler that feeds envelopes from the outbox, at most [`WINDOW_MAX`] in flight.

use std::sync::Arc;
use std::time::{Duration, Instant};

use detente_proto::claim::{Answer, Claim, ClaimCheck};
use detente_proto::frame::LINK_VERSION;
use detente_proto::{
    ChannelId, Frame, LinkSupervisor, Outgoing, Precedence, RefuseCode, Scheduler,
    VerifiedEnvelope, FETCHES_QUEUED_MAX,
};
use detente_store::Store;
use rand::Rng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsStream;

use crate::peers::PeerEntry;
use crate::Shared;

/// Envelopes sent and not yet processed by the peer, at most. Bounds what a FLASH can find
/// ahead of it in the peer's receive path.
pub const WINDOW_MAX: u64 = 2048;
/// Extra envelopes in flight allowed for FLASH and IMMEDIATE traffic, so that a full window
/// of ROUTINE never holds a FLASH back at the sender.
pub const URGENT_WINDOW_EXTRA: u64 = 256;
/// Envelopes handed to the receive pipeline in one batch, at most.
pub const RECEIVE_BATCH_MAX: usize = 512;
/// Batches queued for verification and commit per session, at most.
pub const RECEIVE_QUEUE_MAX: usize = 64;
/// Batches of FLASH and IMMEDIATE envelopes queued per session, at most. They are verified
/// and stored before any queued batch of lower precedence.
pub const URGENT_QUEUE_MAX: usize = 16;
/// Bytes written in one go, at most.
const WRITE_CHUNK_BYTES: usize = 256 * 1024;
/// How long a TCP connect plus TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS session with a peer, and whether this node dialed it.
pub struct Connection {
    pub stream: TlsStream<TcpStream>,
    pub dialed_by_us: bool,
    pub address: String,
}

/// Why a session ended.
enum End {
    Closed(String),
    Replaced(Box<Connection>),
    Shutdown,
}

/// Run the link of one peer until shutdown.
pub async fn run_peer(
    shared: Arc<Shared>,
    entry: Arc<PeerEntry>,
    mut incoming: mpsc::Receiver<Connection>,
    mut shutdown: watch::Receiver<bool>,
) {
    let config = shared.link_config;
    let mut supervisor = LinkSupervisor::new(config, entry.addrs.len(), Instant::now());
    let mut pending: Option<Connection> = None;
    loop {
        let connection = match pending.take() {
            Some(c) => c,
            None => {
                let wait_until = supervisor.next_attempt().unwrap_or_else(Instant::now);
                let index = supervisor.address_index();
                let wait_and_dial = async {
                    tokio::time::sleep_until(wait_until.into()).await;
                    dial(&shared, &entry, index).await
                };
                // A connection the peer opens is taken at once, also while our own dial
                // waits for its answer: a frozen process (SIGSTOP) whose kernel still
                // accepts TCP would otherwise hold the link down for the whole handshake
                // timeout while the peer's new active has already dialed us (issue 13).
                tokio::select! {
                    dialed = wait_and_dial => match dialed {
                        Ok(c) => c,
                        Err(reason) => {
                            set_error(&entry, &reason);
                            tracing::debug!(peer = %entry.name, %reason, "dial failed");
                            supervisor.on_dial_failed(Instant::now(), rand::thread_rng().gen());
                            publish(&entry, &supervisor, None);
                            continue;
                        }
                    },
                    Some(c) = incoming.recv() => c,
                    _ = shutdown.changed() => return,
                }
            }
        };
        let address = connection.address.clone();
        let end = session(
            &shared,
            &entry,
            &mut supervisor,
            connection,
            &mut incoming,
            &mut shutdown,
        )
        .await;
        if supervisor.is_connected() {
            supervisor.on_disconnected(Instant::now(), rand::thread_rng().gen());
        } else if matches!(end, End::Replaced(_)) {
            // A crossing connection won before any Hello: no failure, no backoff.
        } else {
            // Ended before the peer's Hello: in TLS 1.3 a peer that refuses our key lets
            // the handshake "succeed" and closes at once. That is a failed dial, with its
            // growing backoff, not a session (which would redial at once, several times a
            // second: issue 12, item 7).
            supervisor.on_dial_failed(Instant::now(), rand::thread_rng().gen());
        }
        publish(&entry, &supervisor, None);
        match end {
            End::Shutdown => return,
            End::Replaced(next) => pending = Some(*next),
            End::Closed(reason) => {
                tracing::info!(peer = %entry.name, %address, %reason, "session ended");
                set_error(&entry, &reason);
            }
        }
    }
}

fn set_error(entry: &PeerEntry, reason: &str) {
    if let Ok(mut status) = entry.status.write() {
        status.last_error = Some(reason.to_string());
    }
}

fn publish(entry: &PeerEntry, supervisor: &LinkSupervisor, address: Option<&str>) {
    if let Ok(mut status) = entry.status.write() {
        let now = Instant::now();
        status.state = supervisor.state(now);
        status.connected = supervisor.is_connected();
        status.rtt_ms = supervisor.rtt().map(|d| d.as_secs_f64() * 1000.0);
        status.last_heard = supervisor.last_heard();
        status.set_view(&entry.name, supervisor);
        if let Some(a) = address {
            status.address = Some(a.to_string());
        }
    }
}

async fn dial(shared: &Shared, entry: &PeerEntry, index: usize) -> Result<Connection, String> {
    let address = entry.addrs.get(index).cloned().ok_or("no address")?;
    let config = crate::tls::client_config(&shared.secret, entry.key).map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let attempt = async {
        let tcp = TcpStream::connect(&address)
            .await
            .map_err(|e| format!("connect {address}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let tls = connector
            .connect(crate::tls::server_name(), tcp)
            .await
            .map_err(|e| match crate::tls::rejection(&e) {
                Some(reason) => {
                    tracing::warn!(peer = %entry.name, %address, %reason, "refused the peer's key");
                    reason.to_string()
                }
                None => format!("TLS handshake with {address}: {e}"),
            })?;
        Ok::<_, String>(tls)
    };
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt)
        .await
        .map_err(|_| format!("{address}: no answer within {HANDSHAKE_TIMEOUT:?}"))??;
    Ok(Connection {
        stream: TlsStream::Client(tls),
        dialed_by_us: true,
        address,
    })
}

/// Whether `new` should replace the current session: keep the one dialed by the smaller key.
fn should_replace(
    shared: &Shared,
    entry: &PeerEntry,
    current_dialed_by_us: bool,
    new: &Connection,
) -> bool {
    let we_are_smaller = shared.secret.public() < entry.key;
    let winner_dialed_by_us = we_are_smaller;
    if new.dialed_by_us == current_dialed_by_us {
        // The same side dialed again: the old connection is stale from its view.
        return true;
    }
    new.dialed_by_us == winner_dialed_by_us
}

/// The peer's first frame (its `Hello`), read while watching for a connection the peer
/// opened meanwhile. When both nodes dial at once, each waits for a `Hello` on the connection
/// it dialed, while the peer waits on the other one (issue 12, item 4). So a crossing
/// connection is judged at once by the rule every session follows ([`should_replace`]): the
/// winner replaces the connection waited on, the loser is closed, and both sides meet on
/// the same connection within a round trip instead of after [`HANDSHAKE_TIMEOUT`].
async fn await_hello<R: AsyncRead + Unpin>(
    shared: &Shared,
    entry: &PeerEntry,
    dialed_by_us: bool,
    buffer: &mut FrameBuffer,
    reader: &mut R,
    incoming: &mut mpsc::Receiver<Connection>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Frame, End> {
    let hello = tokio::time::timeout(HANDSHAKE_TIMEOUT, buffer.next(reader));
    tokio::pin!(hello);
    loop {
        tokio::select! {
            read = &mut hello => {
                return match read {
                    Ok(Ok(frame)) => Ok(frame),
                    Ok(Err(e)) => Err(End::Closed(e)),
                    Err(_) => Err(End::Closed("no Hello within the handshake timeout".into())),
                };
            }
            Some(next) = incoming.recv() => {
                if should_replace(shared, entry, dialed_by_us, &next) {
                    tracing::debug!(peer = %entry.name, "a crossing connection wins; Hello there");
                    return Err(End::Replaced(Box::new(next)));
                }
                // Dropped here, so closed: the peer turns to the connection we wait on.
                tracing::debug!(peer = %entry.name, "closed a crossing connection that loses");
            }
            _ = shutdown.changed() => return Err(End::Shutdown),
        }
    }
}

/// Messages from the reader and the receive pipeline to the session loop.
enum Control {
    Send(Frame),
    Heard,
    Pong {
        nonce: u64,
        wall_ms: u64,
    },
    PeerAck {
        hwm: u64,
        received: u64,
    },
    Refused {
        seq: u64,
        code: RefuseCode,
        reason: String,
    },
    Closed(String),
    /// The peer's charter terms.
    Terms(Vec<u8>),
    /// An answer to our `Fetch` (a claim check): an envelope, or the end with its sender.
    Fetched(Vec<u8>),
    FetchEnd([u8; 32]),
}

async fn session(
    shared: &Arc<Shared>,
    entry: &Arc<PeerEntry>,
    supervisor: &mut LinkSupervisor,
    connection: Connection,
    incoming: &mut mpsc::Receiver<Connection>,
    shutdown: &mut watch::Receiver<bool>,
) -> End {
    let dialed_by_us = connection.dialed_by_us;
    let address = connection.address.clone();
    let write_timeout = shared.link_config.write_timeout();
    let (mut reader, mut writer) = tokio::io::split(connection.stream);

    // Hello both ways: each tells the other how much of its stream it holds.
    let channel = ChannelId::for_pair(&shared.secret.public(), &entry.key);
    let our_hwm = match inbound_hwm(shared, channel, entry).await {
        Ok(h) => h,
        Err(e) => return End::Closed(e),
    };
    let mut out = Vec::new();
    Frame::Hello {
        version: LINK_VERSION,
        hwm: our_hwm,
        wall_ms: crate::now_ms(),
    }
    .encode(&mut out);
    if let Err(e) = write_bounded(&mut writer, &out, write_timeout).await {
        return End::Closed(e.to_string());
    }
    let mut buffer = FrameBuffer::default();
    let hello = match await_hello(
        shared,
        entry,
        dialed_by_us,
        &mut buffer,
        &mut reader,
        incoming,
        shutdown,
    )
    .await
    {
        Ok(h) => h,
        Err(end) => return end,
    };
    let (peer_hwm, peer_wall_ms) = match hello {
        Frame::Hello {
            version,
            hwm,
            wall_ms,
        } if version == LINK_VERSION => (hwm, wall_ms),
        Frame::Hello { version, .. } => {
            let reason = format!("peer speaks link version {version}, we speak {LINK_VERSION}");
            // Say why before closing, so that the other side's operators read it too.
            out.clear();
            Frame::Refuse {
                seq: 0,
                code: RefuseCode::Protocol,
                reason: reason.clone(),
            }
            .encode(&mut out);
            let _ = write_bounded(&mut writer, &out, write_timeout).await;
            return End::Closed(reason);
        }
        other => return End::Closed(format!("expected Hello, got {other:?}")),
    };
    tracing::info!(peer = %entry.name, %address, dialed_by_us, our_hwm, peer_hwm, "session up");
    // A peer holding more of our stream than we wrote is an alarm, never a prune (the
    // writer refuses such a prune too; checked here so that nothing is sent meanwhile).
    // Once per run, the peer is asked to back the claim with our envelope `written + 1`
    // (detente_proto::claim); its answer is judged in the session loop.
    let me = shared.secret.public();
    let mut claim: Option<ClaimCheck> = None;
    match stream_cursor(shared, channel, &me).await {
        Ok((written, last_id)) if peer_hwm > written => {
            crate::writer::stream_ahead(
                &shared.table,
                &shared.events,
                &entry.name,
                peer_hwm,
                written,
            );
            if !entry
                .claim_checked
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                let asked = Claim {
                    hwm: peer_hwm,
                    written,
                    prev: Some(last_id),
                };
                out.clear();
                asked.fetch(&me).encode(&mut out);
                if let Err(e) = write_bounded(&mut writer, &out, write_timeout).await {
                    return End::Closed(e.to_string());
                }
                claim = Some(ClaimCheck::new(asked));
            }
        }
        Ok(_) => shared.engine.writer().prune(&entry.name, peer_hwm).await,
        Err(e) => return End::Closed(e),
    }
    // Our charter terms; the peer answers with its own, and each side signs the charter
    // both make (crate::charter).
    out.clear();
    Frame::Terms(shared.local_terms().encode()).encode(&mut out);
    if let Err(e) = write_bounded(&mut writer, &out, write_timeout).await {
        return End::Closed(e.to_string());
    }
    supervisor.on_connected(Instant::now());
    supervisor.on_hello_clock(peer_wall_ms, crate::now_ms());
    if let Ok(mut status) = entry.status.write() {
        status.sessions += 1;
        status.last_error = None;
    }
    publish(entry, supervisor, Some(&address));

    let (control_tx, mut control) = mpsc::channel::<Control>(1024);
    let (batch_tx, batch_rx) = mpsc::channel::<Vec<Vec<u8>>>(RECEIVE_QUEUE_MAX);
    let (urgent_tx, urgent_rx) = mpsc::channel::<Vec<Vec<u8>>>(URGENT_QUEUE_MAX);
    let (checkpoint_tx, checkpoint_rx) = mpsc::channel::<Vec<u8>>(CHECKPOINT_QUEUE_MAX);
    let (fetch_tx, fetch_rx) = mpsc::channel(FETCHES_QUEUED_MAX);
    let lanes = Lanes {
        normal: batch_tx,
        urgent: urgent_tx,
        checkpoints: checkpoint_tx,
        fetches: fetch_tx,
    };
    let fetch_task = tokio::spawn(fetch_answers(
        shared.clone(),
        entry.clone(),
        channel,
        fetch_rx,
        control_tx.clone(),
    ));
    let checkpoint_task = tokio::spawn(checkpoint_exchange(
        shared.clone(),
        entry.clone(),
        checkpoint_rx,
        control_tx.clone(),
    ));
    // A checkpoint of ours the peer may not have co-signed yet goes again on every session.
    // The newest only: a session start must not load the channel's checkpoint list.
    let newest = detente_store::CheckpointPage::newest(1);
    if let Ok(rows) = shared.store.checkpoint_page(channel.0, newest).await {
        if let Some(last) = rows.first().filter(|r| !r.cosigned) {
            entry.send_checkpoint(last.signed.clone());
        }
    }
    let reader_task = tokio::spawn(read_frames(buffer, reader, control_tx.clone(), lanes));
    let pipeline_task = tokio::spawn(receive_pipeline(
        shared.clone(),
        entry.clone(),
        batch_rx,
        urgent_rx,
        control_tx,
    ));

    let mut scheduler = Scheduler::new(peer_hwm);
    let mut terms_seen = false;
    let mut sent: u64 = 0;
    let mut peer_received: u64 = 0;
    let mut in_flight: std::collections::VecDeque<Outgoing> = std::collections::VecDeque::new();
    let end = loop {
        // Send what the window allows (nothing once sending to this peer was stopped).
        let pumped = if entry.sending_stopped() {
            Ok(())
        } else {
            pump(
                shared,
                entry,
                &mut scheduler,
                &mut writer,
                &mut sent,
                peer_received,
                &mut in_flight,
            )
            .await
        };
        if let Err(e) = pumped {
            break End::Closed(e);
        }
        let timeout = supervisor
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            message = control.recv() => {
                let Some(message) = message else { break End::Closed("reader ended".into()) };
                let now = Instant::now();
                match message {
                    Control::Send(frame) => {
                        out.clear();
                        frame.encode(&mut out);
                        if let Err(e) = write_bounded(&mut writer, &out, write_timeout).await {
                            break End::Closed(e.to_string());
                        }
                    }
                    Control::Heard => supervisor.on_heard(now),
                    Control::Pong { nonce, wall_ms } => {
                        supervisor.on_pong(now, nonce, wall_ms, crate::now_ms())
                    }
                    Control::PeerAck { hwm, received } => {
                        supervisor.on_heard(now);
                        peer_received = peer_received.max(received);
                        while in_flight.len() as u64 > sent.saturating_sub(peer_received) {
                            in_flight.pop_front();
                        }
                        shared.engine.writer().prune(&entry.name, hwm).await;
                    }
                    Control::Refused { seq, code, reason } => {
                        tracing::warn!(peer = %entry.name, seq, ?code, %reason, "peer refused our envelope");
                        if code == RefuseCode::HeldFull {
                            if let Some(o) = in_flight.iter().find(|o| o.seq == seq).cloned() {
                                scheduler.on_held_full(o);
                            }
                        }
                    }
                    Control::Closed(reason) => break End::Closed(reason),
                    Control::Fetched(bytes) => {
                        let answer = Answer::Fetched(&bytes);
                        if let Err(why) = judge_claim(shared, entry, &mut claim, channel, answer) {
                            break refuse_and_close(&mut writer, &mut out, write_timeout, why).await;
                        }
                    }
                    Control::FetchEnd(sender) => {
                        let answer = Answer::End { sender };
                        if let Err(why) = judge_claim(shared, entry, &mut claim, channel, answer) {
                            break refuse_and_close(&mut writer, &mut out, write_timeout, why).await;
                        }
                    }
                    Control::Terms(bytes) => {
                        supervisor.on_heard(now);
                        // Once per session: more would only queue negotiations.
                        if !terms_seen {
                            terms_seen = true;
                            tokio::spawn(crate::charter::on_terms(
                                shared.clone(),
                                entry.name.clone(),
                                bytes,
                            ));
                        }
                    }
                }
                publish(entry, supervisor, None);
            }
            _ = entry.wake.notified() => {
                for precedence in entry.take_written() {
                    scheduler.on_written(precedence);
                }
                if let Some(signed) = entry.take_checkpoint() {
                    out.clear();
                    Frame::Checkpoint(signed).encode(&mut out);
                    if let Err(e) = write_bounded(&mut writer, &out, write_timeout).await {
                        break End::Closed(e.to_string());
                    }
                }
            }
            _ = tokio::time::sleep_until(timeout.into()) => {
                let now = Instant::now();
                if supervisor.should_close(now) {
                    break End::Closed("nothing heard for three heartbeats".into());
                }
                if let Some(nonce) = supervisor.poll_ping(now) {
                    out.clear();
                    Frame::Ping {
                        nonce,
                        wall_ms: crate::now_ms(),
                    }
                    .encode(&mut out);
                    if let Err(e) = write_bounded(&mut writer, &out, write_timeout).await {
                        break End::Closed(e.to_string());
                    }
                }
                publish(entry, supervisor, None);
            }
            Some(next) = incoming.recv() => {
                if should_replace(shared, entry, dialed_by_us, &next) {
                    break End::Replaced(Box::new(next));
                }
                tracing::debug!(peer = %entry.name, "kept the current session over a duplicate");
            }
            _ = shutdown.changed() => break End::Shutdown,
        }
    };
    reader_task.abort();
    pipeline_task.abort();
    checkpoint_task.abort();
    fetch_task.abort();
    let _ = tokio::time::timeout(write_timeout, writer.shutdown()).await;
    end
}

/// The contiguous high-water mark of the peer's stream as durably stored.
async fn inbound_hwm(
    shared: &Shared,
    channel: ChannelId,
    entry: &PeerEntry,
) -> Result<u64, String> {
    stream_hwm(shared, channel, &entry.key).await
}

/// The contiguous high-water mark of `sender`'s stream in `channel` as durably stored.
async fn stream_hwm(
    shared: &Shared,
    channel: ChannelId,
    sender: &detente_proto::PartyKey,
) -> Result<u64, String> {
    Ok(stream_cursor(shared, channel, sender).await?.0)
}

/// How far the store holds `sender`'s stream, and the id of its last envelope (zeros for
/// none).
async fn stream_cursor(
    shared: &Shared,
    channel: ChannelId,
    sender: &detente_proto::PartyKey,
) -> Result<(u64, detente_proto::MessageId), String> {
    let streams = shared.store.streams().await.map_err(|e| e.to_string())?;
    Ok(streams
        .iter()
        .find(|s| s.channel == channel.0 && &s.sender == sender.as_bytes())
        .map_or((0, detente_proto::MessageId::ZERO), |s| {
            (s.next_seq - 1, detente_proto::MessageId(s.last_id))
        }))
}

/// One answer frame to the `Fetch` that checks the peer's claim: the verdict is an alarm
/// and the reason sending stays stopped. `Err` when the peer broke the protocol (an answer
/// nobody asked for, more than was asked).
fn judge_claim(
    shared: &Shared,
    entry: &PeerEntry,
    claim: &mut Option<ClaimCheck>,
    channel: ChannelId,
    answer: Answer<'_>,
) -> Result<(), String> {
    let check = claim
        .as_mut()
        .ok_or_else(|| detente_proto::claim::UNASKED.to_string())?;
    let verdict = check
        .on_answer(answer, &shared.secret.public(), channel)
        .map_err(str::to_string)?;
    if let Some(verdict) = verdict {
        let detail = verdict.detail(&entry.name, &check.claim);
        *claim = None;
        entry
            .claim_checked
            .store(true, std::sync::atomic::Ordering::Relaxed);
        crate::writer::claim_verdict(&shared.events, entry, detail);
    }
    Ok(())
}

/// Say why the session ends (a protocol error of the peer's), then end it.
async fn refuse_and_close<W: AsyncWrite + Unpin>(
    writer: &mut W,
    out: &mut Vec<u8>,
    write_timeout: Duration,
    reason: String,
) -> End {
    tracing::warn!(%reason, "closing the session: the peer broke the protocol");
    out.clear();
    Frame::Refuse {
        seq: 0,
        code: RefuseCode::Protocol,
        reason: reason.clone(),
    }
    .encode(out);
    let _ = write_bounded(writer, out, write_timeout).await;
    End::Closed(reason)
}

/// Refill the scheduler from the outbox and write envelopes while the window allows.
async fn pump<W: AsyncWrite + Unpin>(
    shared: &Shared,
    entry: &PeerEntry,
    scheduler: &mut Scheduler,
    writer: &mut W,
    sent: &mut u64,
    peer_received: u64,
    in_flight: &mut std::collections::VecDeque<Outgoing>,
) -> Result<(), String> {
    let mut out = Vec::with_capacity(WRITE_CHUNK_BYTES);
    loop {
        while let Some(refill) = scheduler.poll_refill() {
            match shared
                .store
                .outbox_pending(
                    &entry.name,
                    refill.precedence as u8,
                    refill.after,
                    refill.limit as u32,
                )
                .await
            {
                Ok(rows) => {
                    let rows = rows
                        .into_iter()
                        .map(|(seq, bytes)| Outgoing {
                            seq,
                            precedence: refill.precedence,
                            bytes,
                        })
                        .collect();
                    scheduler.on_refill(refill, rows);
                }
                Err(e) => {
                    scheduler.on_refill_failed(refill);
                    return Err(format!("reading the outbox: {e}"));
                }
            }
        }
        let in_flight_now = sent.saturating_sub(peer_received);
        let urgent = scheduler
            .next_precedence()
            .is_some_and(|p| p <= Precedence::Immediate);
        let window = if urgent {
            WINDOW_MAX + URGENT_WINDOW_EXTRA
        } else {
            WINDOW_MAX
        };
        if in_flight_now >= window || out.len() >= WRITE_CHUNK_BYTES {
            break;
        }
        let Some(next) = scheduler.next() else { break };
        Frame::Envelope(next.bytes.clone()).encode(&mut out);
        *sent += 1;
        if next.precedence == Precedence::Flash {
            tracing::info!(peer = %entry.name, seq = next.seq, "FLASH sent ahead of the queue");
        }
        in_flight.push_back(next);
    }
    if !out.is_empty() {
        write_bounded(writer, &out, shared.link_config.write_timeout())
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Why a bounded write failed.
#[derive(Debug, thiserror::Error)]
enum WriteFailed {
    #[error("write: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "write: the peer took nothing for {0:?} (it stopped reading, or the path is black-holed)"
    )]
    Stalled(Duration),
}

/// Write and flush `bytes` within `timeout`. Every write of a session goes through here, so
/// a peer that stops reading ends the session after at most three heartbeats, as silence
/// does, instead of holding heartbeats, replacement and failover until the kernel gives up.
async fn write_bounded<W: AsyncWrite + Unpin>(
    writer: &mut W,
    bytes: &[u8],
    timeout: Duration,
) -> Result<(), WriteFailed> {
    let write = async {
        writer.write_all(bytes).await?;
        writer.flush().await
    };
    match tokio::time::timeout(timeout, write).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(WriteFailed::Stalled(timeout)),
    }
}

/// Reads length-prefixed frames from a byte stream, keeping what a read brought in so that
/// every complete frame of one read can be handled together.
#[derive(Default)]
struct FrameBuffer {
    data: Vec<u8>,
    start: usize,
}

impl FrameBuffer {
    /// The next complete frame already buffered, if any.
    fn take(&mut self) -> Result<Option<Frame>, String> {
        let available = &self.data[self.start..];
        if available.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([available[0], available[1], available[2], available[3]]);
        let len = Frame::check_len(len).map_err(|e| format!("bad frame: {e}"))?;
        if available.len() < 4 + len {
            return Ok(None);
        }
        let frame = Frame::decode(&available[4..4 + len]).map_err(|e| format!("bad frame: {e}"))?;
        self.start += 4 + len;
        Ok(Some(frame))
    }

    /// Read more bytes; false at end of stream.
    async fn fill<R: AsyncRead + Unpin>(&mut self, reader: &mut R) -> Result<bool, String> {
        if self.start > 0 {
            self.data.drain(..self.start);
            self.start = 0;
        }
        let old = self.data.len();
        self.data.resize(old + 64 * 1024, 0);
        let n = reader
            .read(&mut self.data[old..])
            .await
            .map_err(|e| format!("read: {e}"))?;
        self.data.truncate(old + n);
        Ok(n > 0)
    }

    async fn next<R: AsyncRead + Unpin>(&mut self, reader: &mut R) -> Result<Frame, String> {
        loop {
            if let Some(frame) = self.take()? {
                return Ok(frame);
            }
            if !self.fill(reader).await? {
                return Err("the peer closed the connection".into());
            }
        }
    }
}

/// Where the reader hands envelopes: FLASH and IMMEDIATE on the urgent lane, the rest on
/// the normal one. The lane is chosen from the precedence the envelope claims
/// ([`detente_proto::envelope::peek_precedence`]); everything is verified afterwards either way.
struct Lanes {
    normal: mpsc::Sender<Vec<Vec<u8>>>,
    urgent: mpsc::Sender<Vec<Vec<u8>>>,
    /// Signed checkpoints, handled one at a time by [`checkpoint_exchange`].
    checkpoints: mpsc::Sender<Vec<u8>>,
    /// The peer's `Fetch`es (sender, after, limit), answered one at a time by
    /// [`fetch_answers`]; at most [`FETCHES_QUEUED_MAX`] wait.
    fetches: mpsc::Sender<([u8; 32], u64, u16)>,
}

/// Checkpoint frames queued per session, at most (the reader waits beyond this).
const CHECKPOINT_QUEUE_MAX: usize = 4;

/// Handle the peer's checkpoints: verify the signatures, let the writer check and sign, and
/// send our co-signed copy back. One at a time; a refusal is logged and answered with
/// nothing (the peer's next checkpoint tries again).
async fn checkpoint_exchange(
    shared: Arc<Shared>,
    entry: Arc<PeerEntry>,
    mut frames: mpsc::Receiver<Vec<u8>>,
    control: mpsc::Sender<Control>,
) {
    while let Some(bytes) = frames.recv().await {
        let signed = match detente_proto::checkpoint::SignedCheckpoint::decode(&bytes) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(peer = %entry.name, error = %e, "refused a checkpoint");
                continue;
            }
        };
        match shared
            .engine
            .writer()
            .peer_checkpoint(&entry.name, signed)
            .await
        {
            Ok(Some(cosigned)) => {
                tracing::info!(peer = %entry.name, "co-signed the peer's checkpoint");
                if control
                    .send(Control::Send(Frame::Checkpoint(cosigned.encode())))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(peer = %entry.name, error = %e, "did not sign the peer's checkpoint")
            }
        }
    }
}

/// Answer the peer's `Fetch`es, one at a time (see [`crate::fetch`]): a stream of this
/// channel only (ours or the peer's), as far as the store holds it.
async fn fetch_answers(
    shared: Arc<Shared>,
    entry: Arc<PeerEntry>,
    channel: ChannelId,
    mut fetches: mpsc::Receiver<([u8; 32], u64, u16)>,
    control: mpsc::Sender<Control>,
) {
    let ours = *shared.secret.public().as_bytes();
    while let Some((sender, after, limit)) = fetches.recv().await {
        let frames = if sender != ours && sender != *entry.key.as_bytes() {
            tracing::warn!(peer = %entry.name, "refused a fetch of a stream not of this channel");
            vec![Frame::Refuse {
                seq: 0,
                code: RefuseCode::Invalid,
                reason: "fetch: the sender is not a member of this channel".into(),
            }]
        } else {
            let key = if sender == ours {
                shared.secret.public()
            } else {
                entry.key
            };
            match stream_hwm(&shared, channel, &key).await {
                Ok(head) => {
                    let asked =
                        crate::fetch::FetchAsked::new(channel.0, sender, after, limit, head);
                    crate::fetch::answer(&*shared.store, asked).await
                }
                Err(e) => {
                    tracing::warn!(peer = %entry.name, error = %e, "fetch: store not read");
                    vec![Frame::Refuse {
                        seq: 0,
                        code: RefuseCode::Busy,
                        reason: "fetch: the store could not be read; ask again".into(),
                    }]
                }
            }
        };
        for frame in frames {
            if control.send(Control::Send(frame)).await.is_err() {
                return;
            }
        }
    }
}

async fn read_frames<R: AsyncRead + Unpin>(
    mut buffer: FrameBuffer,
    mut reader: R,
    control: mpsc::Sender<Control>,
    lanes: Lanes,
) {
    let batches = &lanes.normal;
    let mut batch: Vec<Vec<u8>> = Vec::new();
    let mut urgent: Vec<Vec<u8>> = Vec::new();
    loop {
        loop {
            match buffer.take() {
                Ok(Some(frame)) => {
                    let message = match frame {
                        Frame::Envelope(bytes) => {
                            let precedence = detente_proto::envelope::peek_precedence(&bytes);
                            if precedence.is_some_and(|p| p <= Precedence::Immediate) {
                                urgent.push(bytes);
                                continue;
                            }
                            batch.push(bytes);
                            if batch.len() >= RECEIVE_BATCH_MAX
                                && batches.send(std::mem::take(&mut batch)).await.is_err()
                            {
                                return;
                            }
                            continue;
                        }
                        Frame::Ping { nonce, .. } => Control::Send(Frame::Pong {
                            nonce,
                            wall_ms: crate::now_ms(),
                        }),
                        Frame::Pong { nonce, wall_ms } => Control::Pong { nonce, wall_ms },
                        Frame::Ack { hwm, received } => Control::PeerAck { hwm, received },
                        Frame::Refuse { seq, code, reason } => {
                            Control::Refused { seq, code, reason }
                        }
                        Frame::Hello { .. } => {
                            Control::Closed("a second Hello in one session".into())
                        }
                        Frame::Checkpoint(bytes) => {
                            if lanes.checkpoints.send(bytes).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        Frame::Terms(bytes) => Control::Terms(bytes),
                        Frame::Fetch {
                            sender,
                            after,
                            limit,
                        } => match lanes.fetches.try_send((sender, after, limit)) {
                            Ok(()) => continue,
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                Control::Send(Frame::Refuse {
                                    seq: 0,
                                    code: RefuseCode::Busy,
                                    reason: format!(
                                        "fetch: {FETCHES_QUEUED_MAX} are already waiting; \
                                         wait for each FetchEnd"
                                    ),
                                })
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => return,
                        },
                        // Judged by the session loop, which knows whether it asked.
                        Frame::Fetched(bytes) => Control::Fetched(bytes),
                        Frame::FetchEnd { sender, .. } => Control::FetchEnd(sender),
                    };
                    if control.send(message).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(reason) => {
                    tracing::warn!(%reason, "closing the session: the peer sent a bad frame");
                    let refuse = Frame::Refuse {
                        seq: 0,
                        code: RefuseCode::Protocol,
                        reason: reason.clone(),
                    };
                    let _ = control.send(Control::Send(refuse)).await;
                    let _ = control.send(Control::Closed(reason)).await;
                    return;
                }
            }
        }
        if !urgent.is_empty()
            && lanes
                .urgent
                .send(std::mem::take(&mut urgent))
                .await
                .is_err()
        {
            return;
        }
        if !batch.is_empty() && batches.send(std::mem::take(&mut batch)).await.is_err() {
            return;
        }
        match buffer.fill(&mut reader).await {
            Ok(true) => {
                let _ = control.send(Control::Heard).await;
            }
            Ok(false) => {
                let _ = control
                    .send(Control::Closed("the peer closed the connection".into()))
                    .await;
                return;
            }
            Err(reason) => {
                let _ = control.send(Control::Closed(reason)).await;
                return;
            }
        }
    }
}

/// Verify, store, and acknowledge batches of envelopes, in order.
async fn receive_pipeline(
    shared: Arc<Shared>,
    entry: Arc<PeerEntry>,
    mut batches: mpsc::Receiver<Vec<Vec<u8>>>,
    mut urgent: mpsc::Receiver<Vec<Vec<u8>>>,
    control: mpsc::Sender<Control>,
) {
    let mut received: u64 = 0;
    loop {
        let batch = tokio::select! {
            biased;
            Some(batch) = urgent.recv() => batch,
            Some(batch) = batches.recv() => batch,
            else => return,
        };
        received += batch.len() as u64;
        let key = entry.key;
        let decoded = tokio::task::spawn_blocking(move || {
            let frames: Vec<&[u8]> = batch.iter().map(|b| b.as_slice()).collect();
            VerifiedEnvelope::decode_batch(&frames, &key)
        })
        .await
        .unwrap_or_default();
        let mut valid = Vec::with_capacity(decoded.len());
        for item in decoded {
            // A notification must be one this node can read: a held format, canonical and
            // valid values. Otherwise it is refused like a bad signature, nothing stored.
            let item = item
                .map_err(|e| e.to_string())
                .and_then(|v| match &v.envelope().body {
                    detente_proto::Body::Notification(n) => {
                        match crate::notify::check(n, v.envelope().created_at_ms) {
                            Ok(_) => Ok(v),
                            Err(e) => Err(format!("seq {}: {e}", v.envelope().seq)),
                        }
                    }
                    _ => Ok(v),
                });
            match item {
                Ok(v) => valid.push(v),
                Err(e) => {
                    shared.events.metrics().verification_failed();
                    tracing::warn!(peer = %entry.name, reason = %e, "refused an envelope; nothing stored");
                    let refuse = Frame::Refuse {
                        seq: 0,
                        code: RefuseCode::Invalid,
                        reason: e,
                    };
                    if control.send(Control::Send(refuse)).await.is_err() {
                        return;
                    }
                }
            }
        }
        let outcome = match shared.engine.writer().receive(&entry.name, valid).await {
            Ok(o) => o,
            Err(e) => {
                // Nothing was stored; the session ends and the peer resends from our
                // high-water mark on the next one.
                let _ = control
                    .send(Control::Closed(format!("storing failed: {e}")))
                    .await;
                return;
            }
        };
        // An equivocation (RefuseCode::Conflict) is stored as evidence by the writer, which
        // publishes Event::Alarm; the deadline watch escalates it to the hooks.
        for (seq, code, reason) in outcome.refused {
            if control
                .send(Control::Send(Frame::Refuse { seq, code, reason }))
                .await
                .is_err()
            {
                return;
            }
        }
        if control
            .send(Control::Send(Frame::Ack {
                hwm: outcome.hwm,
                received,
            }))
            .await
            .is_err()
        {
            return;
        }
    }
}
