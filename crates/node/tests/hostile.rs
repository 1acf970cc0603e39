//! Hostile input on the peer link of a running node.
//!
//! Each test starts a real node in-process (its own temporary directory, its own SQLite
//! file) that pins one peer, "fake", whose only address is dead. The test then plays that
//! peer: it dials the node over TLS 1.3 with the pinned key, exchanges `Hello`, and sends
//! envelope frames that a broken or malicious peer could send — a flipped signature bit, an
//! envelope signed by a third party, a replay, an equivocation, a `seq` far ahead, a
//! non-canonical encoding, garbage, a wrong `prev`, an oversized frame. Each test checks that
//! the refusal arrives as a typed `Refuse` frame with a reason, that **nothing** was stored
//! (message count and stream state unchanged), and that valid traffic continues afterwards.
//! Also covered: a FLASH held ahead of a gap and its promotion when the gap fills, and a
//! connection attempt with an unpinned key.
//!
//! Nothing here sleeps to wait: every wait reads frames, with a timeout, until the expected
//! one arrives (answering pings on the way).

use std::time::Duration;

use detente_node::config::{InitOptions, NodeDir, PeerConfig};
use detente_node::{tls, Node};
use detente_proto::envelope::message_id;
use detente_proto::frame::LINK_VERSION;
use detente_proto::stream::SEQ_AHEAD_MAX;
use detente_proto::{
    Body, ChannelId, Envelope, Frame, MessageId, PartyKey, PartySecret, Precedence, Receipt,
    ReceiptLevel, ReceiptTarget, RefuseCode, TextBody, VerifiedEnvelope,
};
use detente_store::{Direction, Placement, Store, StreamRow};
use ed25519_dalek::Signer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// How long any single expected event may take before the test fails.
const WAIT: Duration = Duration::from_secs(10);

const TARGET_SEED: [u8; 32] = [0x11; 32];
const FAKE_SEED: [u8; 32] = [0x22; 32];
const THIRD_SEED: [u8; 32] = [0x33; 32];
const STRANGER_SEED: [u8; 32] = [0x44; 32];

/// A refusal as received: (seq, code, reason).
type Refused = (u64, RefuseCode, String);

// ---- the node under test ----------------------------------------------------------------

/// A running node that pins the fake peer, and the fake peer's secret.
struct Harness {
    _tmp: tempfile::TempDir,
    node: Node,
    target: PartyKey,
    fake: PartySecret,
    channel: ChannelId,
}

/// What "nothing was stored" compares: every message and every stream state.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    count: u64,
    streams: Vec<StreamRow>,
}

impl Harness {
    async fn start() -> Harness {
        Self::start_setting(&[]).await
    }

    /// As [`Harness::start`], with these `node.toml` keys set too.
    async fn start_setting(extra: &[(&str, &str)]) -> Harness {
        // Nothing listens there: the node's own dialer fails and backs off.
        Self::start_tuned(FAKE_SEED, "127.0.0.1:9", "1m", extra).await
    }

    /// A node that pins the fake peer of `fake_seed` at `fake_addr`, with heartbeats every
    /// `heartbeat`.
    async fn start_with(fake_seed: [u8; 32], fake_addr: &str, heartbeat: &str) -> Harness {
        Self::start_tuned(fake_seed, fake_addr, heartbeat, &[]).await
    }

    /// As [`Harness::start_with`], with more `node.toml` keys set.
    async fn start_tuned(
        fake_seed: [u8; 32],
        fake_addr: &str,
        heartbeat: &str,
        extra: &[(&str, &str)],
    ) -> Harness {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let dir = NodeDir::new(tmp.path().join("target"));
        let options = InitOptions {
            name: "target".into(),
            party: "Target".into(),
            lang: "en".into(),
            tz: "UTC".into(),
            peer_listen: "127.0.0.1:0".into(),
            console_listen: "127.0.0.1:0".into(),
        };
        dir.init(&options, TARGET_SEED, [0x55; 32])
            .expect("init the node directory");
        let fake = PartySecret::from_seed(fake_seed);
        dir.add_peer(PeerConfig {
            name: "fake".into(),
            key: fake.public().to_text(),
            addrs: vec![fake_addr.into()],
            next_step: String::new(),
        })
        .expect("pin the fake peer");
        let mut config = dir.load().expect("load node.toml");
        // The node should not be busy redialing the dead address, and a slow machine must
        // not make it drop a session for want of heartbeats.
        config.set("link.backoff_initial", "10m").unwrap();
        config.set("link.backoff_max", "1h").unwrap();
        config.set("link.heartbeat_interval", heartbeat).unwrap();
        // Checkpoints only when a test asks (a quiet-time checkpoint would arrive at a
        // machine-speed-dependent moment).
        config.set("transcript.checkpoint_quiet", "off").unwrap();
        for (key, value) in extra {
            config.set(key, value).unwrap();
        }
        dir.save(&config).expect("save node.toml");
        let node = Node::start(dir).await.expect("start the node");
        let target = PartySecret::from_seed(TARGET_SEED).public();
        assert_eq!(node.shared.secret.public(), target);
        let channel = ChannelId::for_pair(&target, &fake.public());
        Harness {
            _tmp: tmp,
            node,
            target,
            fake,
            channel,
        }
    }

    async fn stop(self) {
        self.node.stop().await;
    }

    async fn count(&self) -> u64 {
        self.node.shared.store.message_count().await.expect("count")
    }

    async fn snapshot(&self) -> Snapshot {
        let mut streams = self.node.shared.store.streams().await.expect("streams");
        streams.sort_by_key(|s| (s.channel, s.sender));
        Snapshot {
            count: self.count().await,
            streams,
        }
    }

    /// The stored state of the fake peer's stream: (next_seq, last_id), if any.
    async fn fake_stream(&self) -> Option<(u64, MessageId)> {
        let streams = self.node.shared.store.streams().await.expect("streams");
        streams
            .iter()
            .find(|s| s.channel == self.channel.0 && s.sender == *self.fake.public().as_bytes())
            .map(|s| (s.next_seq, MessageId(s.last_id)))
    }

    async fn fake_message_at(&self, seq: u64) -> Option<detente_store::MessageRow> {
        self.node
            .shared
            .store
            .message_at(self.channel.0, *self.fake.public().as_bytes(), seq)
            .await
            .expect("message_at")
    }

    async fn is_stored(&self, bytes: &[u8]) -> bool {
        self.node
            .shared
            .store
            .message(message_id(bytes).0)
            .await
            .expect("message")
            .is_some()
    }

    /// An envelope of the fake peer's stream, not yet signed.
    fn envelope(&self, seq: u64, prev: MessageId, text: &str) -> Envelope {
        Envelope {
            channel: self.channel,
            sender: self.fake.public(),
            seq,
            prev,
            created_at_ms: 1_700_000_000_000 + seq,
            precedence: Precedence::Routine,
            topic: "general".into(),
            author: "Tester".into(),
            in_reply_to: None,
            body: Body::Text(TextBody {
                language: "en".into(),
                text: text.into(),
                translations: vec![],
            }),
        }
    }

    fn sign(&self, envelope: Envelope) -> VerifiedEnvelope {
        VerifiedEnvelope::sign(envelope, &self.fake).expect("sign a valid envelope")
    }

    /// The fake peer's valid stream `1..=n`, hash-linked.
    fn chain(&self, n: u64) -> Vec<VerifiedEnvelope> {
        let mut prev = MessageId::ZERO;
        (1..=n)
            .map(|seq| {
                let v = self.sign(self.envelope(seq, prev, &format!("message {seq}")));
                prev = v.id();
                v
            })
            .collect()
    }

    /// Send a valid envelope and check that it is appended and acknowledged: no refusal,
    /// `Ack` at `hwm`, stored as appended, one DELIVERED receipt stored with it and sent.
    async fn accepts(&self, peer: &mut FakePeer, v: &VerifiedEnvelope, hwm: u64) {
        let seq = v.envelope().seq;
        let before = self.count().await;
        let (refused, ack_hwm) = peer.exchange(v.bytes()).await;
        assert!(refused.is_empty(), "seq {seq} refused: {refused:?}");
        assert_eq!(ack_hwm, hwm, "Ack hwm after seq {seq}");
        let row = self
            .fake_message_at(seq)
            .await
            .expect("the envelope is stored");
        assert_eq!(row.id, v.id().0);
        assert_eq!(row.bytes, v.bytes());
        assert_eq!(row.direction, Direction::In);
        assert_eq!(row.placement, Placement::Appended);
        // The message and the DELIVERED receipt, in one transaction.
        assert_eq!(self.count().await, before + 2);
        peer.delivered_receipt_covering(seq).await;
    }

    /// Send a hostile envelope frame and check it is refused with `code` (for `seq`) and a
    /// reason containing `reason`, that nothing was stored, and that `hwm` did not move.
    async fn refuses(
        &self,
        peer: &mut FakePeer,
        bytes: &[u8],
        seq: u64,
        code: RefuseCode,
        reason: &str,
    ) {
        let before = self.snapshot().await;
        let hwm = before_hwm(&before, self);
        let (refused, ack_hwm) = peer.exchange(bytes).await;
        assert_single_refusal(&refused, seq, code, reason);
        assert_eq!(ack_hwm, hwm, "the Ack hwm must not move on a refusal");
        assert_eq!(self.snapshot().await, before, "nothing may be stored");
        assert!(!self.is_stored(bytes).await, "the refused bytes are stored");
    }
}

/// The contiguous hwm of the fake peer's stream in a snapshot.
fn before_hwm(snapshot: &Snapshot, h: &Harness) -> u64 {
    snapshot
        .streams
        .iter()
        .find(|s| s.channel == h.channel.0 && s.sender == *h.fake.public().as_bytes())
        .map_or(0, |s| s.next_seq - 1)
}

fn assert_single_refusal(refused: &[Refused], seq: u64, code: RefuseCode, reason: &str) {
    assert_eq!(
        refused.len(),
        1,
        "exactly one refusal expected: {refused:?}"
    );
    let (got_seq, got_code, got_reason) = &refused[0];
    assert_eq!(*got_code, code, "refusal code ({got_reason})");
    assert_eq!(*got_seq, seq, "refusal seq ({got_reason})");
    assert!(!got_reason.trim().is_empty(), "a refusal carries a reason");
    assert!(
        got_reason.contains(reason),
        "reason {got_reason:?} should mention {reason:?}"
    );
}

// ---- the fake peer ----------------------------------------------------------------------

/// The far side of a link, played by the test over a real TLS connection.
struct FakePeer {
    stream: TlsStream<TcpStream>,
    buf: Vec<u8>,
    /// Envelope frames sent in this session (what the node's `Ack::received` counts).
    sent: u64,
    /// Envelopes the node sent us, verified under its key, in arrival order.
    from_node: Vec<VerifiedEnvelope>,
    /// The hwm the node announced in its `Hello`.
    node_hwm: u64,
    target: PartyKey,
    /// How far this peer's wall clock is from the real one, in ms (negative: behind).
    clock_ms: i64,
}

/// TCP connect and TLS handshake to the node's peer port as `secret`.
async fn dial(h: &Harness, secret: &PartySecret) -> std::io::Result<TlsStream<TcpStream>> {
    let config = tls::client_config(secret, h.target).expect("client TLS config");
    let tcp = TcpStream::connect(h.node.shared.peer_addr).await?;
    tcp.set_nodelay(true)?;
    TlsConnector::from(config)
        .connect(tls::server_name(), tcp)
        .await
}

impl FakePeer {
    /// Connect as the pinned fake peer and exchange `Hello` (ours says hwm 0).
    async fn connect(h: &Harness) -> FakePeer {
        Self::connect_with_hwm(h, 0).await
    }

    /// Connect and exchange `Hello`, ours claiming to hold the node's stream up to `hwm`.
    async fn connect_with_hwm(h: &Harness, hwm: u64) -> FakePeer {
        Self::connect_with(h, hwm, 0).await
    }

    /// Connect and exchange `Hello`, with this peer's wall clock `clock_ms` away from the
    /// real one in its Hello and its Pongs (negative: behind).
    async fn connect_with(h: &Harness, hwm: u64, clock_ms: i64) -> FakePeer {
        let stream = tokio::time::timeout(WAIT, dial(h, &h.fake))
            .await
            .expect("handshake within the timeout")
            .expect("the pinned peer connects");
        let mut peer = FakePeer {
            stream,
            buf: Vec::new(),
            sent: 0,
            from_node: Vec::new(),
            node_hwm: 0,
            target: h.target,
            clock_ms,
        };
        peer.send(&Frame::Hello {
            version: LINK_VERSION,
            hwm,
            wall_ms: peer.wall_ms(),
        })
        .await;
        match peer.next_frame().await {
            Ok(Frame::Hello { version, hwm, .. }) => {
                assert_eq!(version, LINK_VERSION);
                peer.node_hwm = hwm;
            }
            other => panic!("expected the node's Hello, got {other:?}"),
        }
        peer
    }

    /// This peer's wall clock: the real one, `clock_ms` away.
    fn wall_ms(&self) -> u64 {
        (detente_node::now_ms() as i64 + self.clock_ms).max(1) as u64
    }

    async fn write_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
        self.stream.flush().await.expect("flush");
    }

    async fn send(&mut self, frame: &Frame) {
        let mut out = Vec::new();
        frame.encode(&mut out);
        self.write_raw(&out).await;
    }

    /// Send bytes as one `Envelope` frame.
    async fn send_envelope(&mut self, bytes: &[u8]) {
        self.send(&Frame::Envelope(bytes.to_vec())).await;
        self.sent += 1;
    }

    /// The next frame other than `Ping` (answered with `Pong` on the way) or `Terms`. An envelope of
    /// the node is verified under its key and also kept in `from_node`. `Err` when the node
    /// closed the connection; panics if nothing arrives within [`WAIT`].
    async fn next_frame(&mut self) -> Result<Frame, String> {
        loop {
            let frame = tokio::time::timeout(WAIT, self.read_frame())
                .await
                .expect("a frame from the node within the timeout")?;
            match frame {
                Frame::Ping { nonce, .. } => {
                    // The node may be closing the session; a failed Pong shows on the next read.
                    let mut out = Vec::new();
                    Frame::Pong {
                        nonce,
                        wall_ms: self.wall_ms(),
                    }
                    .encode(&mut out);
                    let _ = self.stream.write_all(&out).await;
                    let _ = self.stream.flush().await;
                }
                // The node's charter terms; this fake peer never agrees a charter.
                Frame::Terms(_) => {}
                Frame::Envelope(bytes) => {
                    let v = VerifiedEnvelope::decode(&bytes, Some(&self.target))
                        .expect("the node's envelopes verify under its key");
                    self.from_node.push(v);
                    return Ok(Frame::Envelope(bytes));
                }
                other => return Ok(other),
            }
        }
    }

    /// The next frame that is neither a `Ping` nor an envelope of the node (those are kept
    /// in `from_node`).
    async fn next_control(&mut self) -> Result<Frame, String> {
        loop {
            match self.next_frame().await? {
                Frame::Envelope(_) => continue,
                other => return Ok(other),
            }
        }
    }

    /// Read until the node ends the session; it must have refused with a protocol error
    /// whose reason says `why`.
    async fn until_protocol_refusal(&mut self, why: &str) {
        let mut refused = None;
        while let Ok(frame) = self.next_control().await {
            if let Frame::Refuse { code, reason, .. } = frame {
                refused = Some((code, reason));
            }
        }
        let (code, reason) = refused.expect("a refusal before the session ends");
        assert_eq!(code, RefuseCode::Protocol);
        assert!(reason.contains(why), "{reason}");
    }

    /// Read one length-prefixed frame.
    async fn read_frame(&mut self) -> Result<Frame, String> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes(self.buf[..4].try_into().unwrap());
                let len = Frame::check_len(len).expect("the node writes frames within the cap");
                if self.buf.len() >= 4 + len {
                    let frame = Frame::decode(&self.buf[4..4 + len]).expect("a valid frame");
                    self.buf.drain(..4 + len);
                    return Ok(frame);
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk).await {
                Ok(0) => return Err("the node closed the connection".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }

    /// Read until the node acknowledged every envelope frame sent so far; return the
    /// refusals that came before that `Ack` and its hwm.
    async fn until_ack(&mut self) -> (Vec<Refused>, u64) {
        let mut refused = Vec::new();
        loop {
            match self.next_control().await {
                Ok(Frame::Refuse { seq, code, reason }) => refused.push((seq, code, reason)),
                Ok(Frame::Ack { hwm, received }) => {
                    assert!(received <= self.sent, "Ack counts frames never sent");
                    if received == self.sent {
                        return (refused, hwm);
                    }
                }
                other => panic!("unexpected while waiting for an Ack: {other:?}"),
            }
        }
    }

    /// Send one envelope frame and wait for its `Ack`.
    async fn exchange(&mut self, bytes: &[u8]) -> (Vec<Refused>, u64) {
        self.send_envelope(bytes).await;
        self.until_ack().await
    }

    /// Wait for the node's DELIVERED receipt that covers `seq` of our stream.
    async fn delivered_receipt_covering(&mut self, seq: u64) -> VerifiedEnvelope {
        loop {
            let found = self.from_node.iter().find(|v| {
                matches!(
                    &v.envelope().body,
                    Body::Receipt(Receipt {
                        level: ReceiptLevel::Delivered,
                        target: ReceiptTarget::Ranges(ranges),
                        ..
                    }) if ranges.iter().any(|&(from, to)| from <= seq && seq <= to)
                )
            });
            if let Some(v) = found {
                return v.clone();
            }
            match self.next_frame().await {
                Ok(Frame::Envelope(_)) => {}
                // Acks of frames we already counted may only repeat what we know.
                Ok(Frame::Ack { .. }) => {}
                other => panic!("unexpected while waiting for a receipt: {other:?}"),
            }
        }
    }
}

// ---- hand-built COSE_Sign1 --------------------------------------------------------------

/// Tag 18, array of 4, protected header `{1: -19}` as a 3-byte bstr, empty unprotected map.
const COSE_PREFIX: [u8; 7] = [0xd2, 0x84, 0x43, 0xa1, 0x01, 0x32, 0xa0];

/// A minimal CBOR byte-string head for `len` bytes.
fn bstr_head(len: usize) -> Vec<u8> {
    match len {
        0..=23 => vec![0x40 | len as u8],
        24..=0xff => vec![0x58, len as u8],
        _ => {
            let len = u16::try_from(len).expect("test payloads are small");
            let [a, b] = len.to_be_bytes();
            vec![0x59, a, b]
        }
    }
}

/// The payload of a COSE_Sign1 as the node's encoder writes it.
fn cose_payload(bytes: &[u8]) -> Vec<u8> {
    assert_eq!(bytes[..7], COSE_PREFIX, "canonical COSE_Sign1 prefix");
    let (len, head) = match bytes[7] {
        b @ 0x40..=0x57 => (usize::from(b - 0x40), 1),
        0x58 => (usize::from(bytes[8]), 2),
        0x59 => (usize::from(u16::from_be_bytes([bytes[8], bytes[9]])), 3),
        other => panic!("unexpected payload head {other:#04x}"),
    };
    bytes[7 + head..7 + head + len].to_vec()
}

/// A tagged COSE_Sign1 around `payload`, correctly signed by `secret` (RFC 9052 §4.4,
/// empty external AAD), with every head minimal.
fn cose_sign1(secret: &PartySecret, payload: &[u8]) -> Vec<u8> {
    let mut tbs = vec![0x84, 0x6a];
    tbs.extend_from_slice(b"Signature1");
    tbs.extend_from_slice(&[0x43, 0xa1, 0x01, 0x32, 0x40]);
    tbs.extend_from_slice(&bstr_head(payload.len()));
    tbs.extend_from_slice(payload);
    let signature = secret.signing_key().sign(&tbs).to_bytes();
    let mut out = COSE_PREFIX.to_vec();
    out.extend_from_slice(&bstr_head(payload.len()));
    out.extend_from_slice(payload);
    out.extend_from_slice(&[0x58, 0x40]);
    out.extend_from_slice(&signature);
    out
}

/// Offset of `seq` in the payload: array head, version, channel and sender (34 bytes each).
const SEQ_OFFSET: usize = 1 + 1 + 34 + 34;

// ---- the tests ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_envelope_is_stored_acked_and_receipted() {
    let h = Harness::start().await;
    let mut peer = FakePeer::connect(&h).await;
    assert_eq!(peer.node_hwm, 0, "a new node holds nothing of our stream");
    assert_eq!(h.count().await, 0);

    let chain = h.chain(1);
    let (refused, hwm) = peer.exchange(chain[0].bytes()).await;
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(hwm, 1);
    let row = h.fake_message_at(1).await.expect("stored");
    assert_eq!(row.id, chain[0].id().0);
    assert_eq!(row.bytes, chain[0].bytes());
    assert_eq!(row.direction, Direction::In);
    assert_eq!(row.placement, Placement::Appended);
    assert_eq!(h.fake_stream().await, Some((2, chain[0].id())));

    // The node's own signed DELIVERED receipt comes back as an envelope frame.
    let receipt = peer.delivered_receipt_covering(1).await;
    let again = VerifiedEnvelope::decode(receipt.bytes(), Some(&h.target)).expect("verifies");
    let e = again.envelope();
    assert_eq!(e.sender, h.target);
    assert_eq!(e.channel, h.channel);
    assert_eq!(e.seq, 1, "the node's first envelope on this channel");
    assert_eq!(e.prev, MessageId::ZERO);
    assert_eq!(
        e.body,
        Body::Receipt(Receipt {
            level: ReceiptLevel::Delivered,
            target: ReceiptTarget::Ranges(vec![(1, 1)]),
            note: None,
        })
    );
    // It was stored with the message, in the same commit.
    assert_eq!(h.count().await, 2);
    let ours = h
        .node
        .shared
        .store
        .message(again.id().0)
        .await
        .unwrap()
        .expect("the receipt is stored");
    assert_eq!(ours.direction, Direction::Out);

    let next = h.sign(h.envelope(2, chain[0].id(), "second"));
    h.accepts(&mut peer, &next, 2).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_signature_bit_is_refused_invalid() {
    let h = Harness::start().await;
    let mut peer = FakePeer::connect(&h).await;
    let chain = h.chain(2);
    h.accepts(&mut peer, &chain[0], 1).await;

    let mut bad = chain[1].bytes().to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    h.refuses(
        &mut peer,
        &bad,
        0,
        RefuseCode::Invalid,
        "signature does not verify",
    )
    .await;

    h.accepts(&mut peer, &chain[1], 2).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_signed_by_another_party_is_refused_invalid() {
    let h = Harness::start().await;
    let mut peer = FakePeer::connect(&h).await;
    let chain = h.chain(2);
    h.accepts(&mut peer, &chain[0], 1).await;

    // A third party signs a perfectly formed envelope for this channel and seq.
    let third = PartySecret::from_seed(THIRD_SEED);
    let mut e = h.envelope(2, chain[0].id(), "not from the pinned peer");
    e.sender = third.public();
    let forged = VerifiedEnvelope::sign(e, &third).expect("valid under the third key");
    h.refuses(
        &mut peer,
        forged.bytes(),
        0,
        RefuseCode::Invalid,
        "not by the expected sender",
    )
    .await;

    h.accepts(&mut peer, &chain[1], 2).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_envelope_is_an_idempotent_no_op() {
    let h = Harness::start().await;
    let mut peer = FakePeer::connect(&h).await;
    let chain = h.chain(2);
    h.accepts(&mut peer, &chain[0], 1).await;

    let before = h.snapshot().await;
    let (refused, hwm) = peer.exchange(chain[0].bytes()).await;
    assert!(refused.is_empty(), "a replay is not refused: {refused:?}");
    assert_eq!(hwm, 1, "a replay does not move the hwm");
    // No second copy and no second receipt (receipts are stored when signed).
    assert_eq!(h.snapshot().await, before);

    h.accepts(&mut peer, &chain[1], 2).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equivocation_on_a_used_seq_is_refused_conflict() {
    let h = Harness::start().await;
    let mut peer = FakePeer::connect(&h).await;
    let chain = h.chain(2);
    h.accepts(&mut peer, &chain[0], 1).await;

    let twin = h.sign(h.envelope(1, MessageId::ZERO, "a different first message"));
    assert_ne!(twin.id(), chain[0].id());
    h.refuses(
        &mut peer,
        twin.bytes(),
        1,
        RefuseCode::Conflict,
        "different envelope",
    )
    .await;
    let row = h.fake_message_at(1).await.expect("the original stays");
    assert_eq!(row.id, chain[0].id().0);
    // It raised the equivocation alarm (and its hooks). On the core engine the alarm comes
    // once the evidence is durable, which may be after the refusal reached the peer.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let alarms = h.node.shared.events.metrics().alarms();
        if alarms
            .iter()
            .any(|(name, n)| *name == "equivocation" && *n >= 1)
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{alarms:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    h.accepts(&mut peer, &chain[1], 2).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seq_too_far_ahead_is_refused() {
    let h = Harness::start().await;
    let mut peer = FakePeer::connect(&h).await;
    let chain = h.chain(2);
    h.accepts(&mut peer, &chain[0], 1).await;

    let hwm = 1;
    let seq = hwm + 1 + SEQ_AHEAD_MAX + 1;
    let far = h.sign(h.envelope(seq, MessageId([0x5a; 32]), "from the far future"));
    h.refuses(
        &mut peer,
        far.bytes(),
        seq,
        RefuseCode::TooFarAhead,
        "ahead",
    )
    .await;

    h.accepts(&mut peer, &chain[1], 2).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_canonical_encoding_is_refused_invalid() {
    let h = Harness::start().await;
    let mut peer = FakePeer::connect(&h).await;
    let chain = h.chain(2);
    h.accepts(&mut peer, &chain[0], 1).await;

    // The hand-built encoder reproduces the node's bytes exactly when nothing is changed.
    let payload = cose_payload(chain[1].bytes());
    assert_eq!(cose_sign1(&h.fake, &payload), chain[1].bytes());
    assert_eq!(
        payload[SEQ_OFFSET], 0x02,
        "seq 2 is one byte in canonical form"
    );

    // The same envelope with `seq` as an 8-byte integer, correctly signed.
    let mut wide = payload[..SEQ_OFFSET].to_vec();
    wide.extend_from_slice(&[0x1b, 0, 0, 0, 0, 0, 0, 0, 0x02]);
    wide.extend_from_slice(&payload[SEQ_OFFSET + 1..]);
    let bad = cose_sign1(&h.fake, &wide);
    h.refuses(&mut peer, &bad, 0, RefuseCode::Invalid, "not canonical")
        .await;

    h.accepts(&mut peer, &chain[1], 2).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_an_envelope_frame_is_refused_invalid() {
    let h = Harness::start().await;
    let mut peer = FakePeer::connect(&h).await;
    let chain = h.chain(2);
    h.accepts(&mut peer, &chain[0], 1).await;

    // Deterministic pseudo-random bytes.
    let mut x: u32 = 0x1234_5678;
    let garbage: Vec<u8> = (0..300)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect();
    h.refuses(&mut peer, &garbage, 0, RefuseCode::Invalid, "envelope")
        .await;
    // A valid envelope cut short, and one with a byte appended.
    let cut = &chain[1].bytes()[..chain[1].bytes().len() - 10];
    h.refuses(&mut peer, cut, 0, RefuseCode::Invalid, "envelope")
        .await;
    let mut long = chain[1].bytes().to_vec();
    long.push(0x00);
    h.refuses(&mut peer, &long, 0, RefuseCode::Invalid, "envelope")
        .await;

    h.accepts(&mut peer, &chain[1], 2).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_prev_at_the_next_seq_is_refused_prev_mismatch() {
    let h = Harness::start().await;
    let mut peer = FakePeer::connect(&h).await;
    let chain = h.chain(2);
    h.accepts(&mut peer, &chain[0], 1).await;

    let forked = h.sign(h.envelope(2, MessageId([0x77; 32]), "on a forked history"));
    h.refuses(
        &mut peer,
        forked.bytes(),
        2,
        RefuseCode::PrevMismatch,
        "prev",
    )
    .await;

    h.accepts(&mut peer, &chain[1], 2).await;
    h.stop().await;
}

/// A held envelope whose `prev` does not match the envelope that later filled the gap
/// before it wedged the stream for ever: it stayed held, and the peer's envelope that does
/// follow was refused as a conflict at that seq every time. Now the held one is kept as
/// broken-chain evidence (with the appended one before it), taken out of the messages, the
/// channel is flagged, and the seq is open: the envelope that follows is appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_envelope_off_the_chain_is_evidence_and_the_stream_goes_on() {
    // Short answer deadlines, to see that the discarded one owes none.
    let h = Harness::start_setting(&[("deadlines.routine_acknowledged", "2s")]).await;
    let mut peer = FakePeer::connect(&h).await;
    let chain = h.chain(4);
    h.accepts(&mut peer, &chain[0], 1).await;
    // Seq 3 ahead of a gap, on a history the peer never sent.
    let forked = h.sign(h.envelope(3, MessageId([0x66; 32]), "held, on a forked history"));
    let (refused, hwm) = peer.exchange(forked.bytes()).await;
    assert!(refused.is_empty(), "held, not refused: {refused:?}");
    assert_eq!(hwm, 1);
    let held = h.fake_message_at(3).await.expect("held and stored");
    assert_eq!(held.placement, Placement::Held);
    // The gap fills with the real seq 2: the held 3 does not follow it.
    let (refused, hwm) = peer.exchange(chain[1].bytes()).await;
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(hwm, 2);
    assert!(
        h.fake_message_at(3).await.is_none(),
        "the envelope off the chain is no message any more"
    );
    let evidence = h.node.shared.store.evidence().await.unwrap();
    assert_eq!(evidence.len(), 1, "{evidence:?}");
    assert_eq!(evidence[0].kind, detente_store::EVIDENCE_BROKEN_CHAIN);
    assert_eq!(evidence[0].seq, Some(3));
    assert_eq!(evidence[0].first, chain[1].bytes(), "the appended seq 2");
    assert_eq!(evidence[0].second, forked.bytes(), "the held seq 3");
    let status = api_get(&h, "/api/v1/status").await;
    assert_eq!(status["alarms"][0]["kind"], "broken-chain", "{status}");
    assert_eq!(status["alarms"][0]["seq"], 3);
    assert_eq!(status["peers"][0]["flagged"], true);
    // The envelope that does follow takes seq 3, and the stream goes on.
    h.accepts(&mut peer, &chain[2], 3).await;
    h.accepts(&mut peer, &chain[3], 4).await;
    assert_eq!(h.fake_stream().await, Some((5, chain[3].id())));
    // Its deadline went with it: the four messages of the stream fall overdue (unanswered
    // for 2 s), the discarded one, stored before three of them, never does, and it is not
    // counted (it used to be: a miss naming a message no longer there, 5 overdue).
    let deadline = std::time::Instant::now() + WAIT;
    let peer_status = loop {
        let status = api_get(&h, "/api/v1/status").await;
        if status["peers"][0]["overdue_in"].as_u64() >= Some(4) {
            break status["peers"][0].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never overdue: {status}"
        );
        tokio::task::yield_now().await;
    };
    let misses = h.node.shared.store.misses(forked.id().0).await.unwrap();
    assert!(
        misses.is_empty(),
        "a deadline of the discarded one: {misses:?}"
    );
    assert_eq!(peer_status["overdue_in"], 4, "{peer_status}");
    assert_eq!(peer_status["unanswered_in"], 4, "{peer_status}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_closes_the_session_and_a_new_one_works() {
    let h = Harness::start().await;
    let mut peer = FakePeer::connect(&h).await;
    let chain = h.chain(2);
    h.accepts(&mut peer, &chain[0], 1).await;
    let before = h.snapshot().await;

    // A length prefix of 10 MiB, and nothing else.
    let len: u32 = 10 * 1024 * 1024;
    peer.write_raw(&len.to_be_bytes()).await;
    match peer.next_control().await {
        Ok(Frame::Refuse { seq, code, reason }) => {
            assert_eq!(code, RefuseCode::Protocol, "{reason}");
            assert_eq!(seq, 0, "the whole session is refused");
            assert!(reason.contains("exceeds"), "{reason}");
        }
        other => panic!("expected Refuse{{Protocol}}, got {other:?}"),
    }
    match peer.next_control().await {
        Err(_) => {}
        Ok(frame) => panic!("the node should close the connection, sent {frame:?}"),
    }
    assert_eq!(h.snapshot().await, before, "nothing may be stored");

    // The node still runs and takes a new session from the same peer.
    let mut peer = FakePeer::connect(&h).await;
    assert_eq!(peer.node_hwm, 1, "the node still holds seq 1");
    h.accepts(&mut peer, &chain[1], 2).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flash_ahead_of_a_gap_is_held_then_promoted() {
    let h = Harness::start().await;
    let mut peer = FakePeer::connect(&h).await;

    // The stream 1..=5, properly linked; 5 is a FLASH that overtook 3 and 4.
    let v1 = h.sign(h.envelope(1, MessageId::ZERO, "one"));
    let v2 = h.sign(h.envelope(2, v1.id(), "two"));
    let v3 = h.sign(h.envelope(3, v2.id(), "three"));
    let v4 = h.sign(h.envelope(4, v3.id(), "four"));
    let mut e5 = h.envelope(5, v4.id(), "FLASH: stand down");
    e5.precedence = Precedence::Flash;
    let v5 = h.sign(e5);
    h.accepts(&mut peer, &v1, 1).await;
    h.accepts(&mut peer, &v2, 2).await;

    let before = h.count().await;
    let (refused, hwm) = peer.exchange(v5.bytes()).await;
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(hwm, 2, "held, not appended");
    let row = h.fake_message_at(5).await.expect("held is durable");
    assert_eq!(row.id, v5.id().0);
    assert_eq!(row.placement, Placement::Held);
    assert_eq!(
        h.count().await,
        before + 2,
        "the held FLASH and its receipt"
    );
    assert_eq!(
        h.fake_stream().await,
        Some((3, v2.id())),
        "stream unchanged"
    );
    let receipt = peer.delivered_receipt_covering(5).await;
    let e = receipt.envelope();
    assert_eq!(
        e.precedence,
        Precedence::Flash,
        "a FLASH is receipted at FLASH"
    );
    match &e.body {
        Body::Receipt(r) => assert_eq!(r.target, ReceiptTarget::Ranges(vec![(5, 5)])),
        other => panic!("not a receipt: {other:?}"),
    }

    h.accepts(&mut peer, &v3, 3).await;
    let row = h.fake_message_at(5).await.expect("still there");
    assert_eq!(row.placement, Placement::Held, "4 is still missing");
    // Filling the gap appends 4 and promotes the held 5.
    h.accepts(&mut peer, &v4, 5).await;
    let row = h.fake_message_at(5).await.expect("still there");
    assert_eq!(row.placement, Placement::Appended);
    assert_eq!(h.fake_stream().await, Some((6, v5.id())));
    // The replayed FLASH is now a harmless known envelope.
    let before = h.snapshot().await;
    let (refused, hwm) = peer.exchange(v5.bytes()).await;
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(hwm, 5);
    assert_eq!(h.snapshot().await, before);

    let v6 = h.sign(h.envelope(6, v5.id(), "six"));
    h.accepts(&mut peer, &v6, 6).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpinned_key_cannot_connect() {
    let h = Harness::start().await;
    let before = h.snapshot().await;
    let stranger = PartySecret::from_seed(STRANGER_SEED);

    // In TLS 1.3 the client finishes first; the server's refusal shows on the first read.
    // Either way the stranger must never hear a Hello.
    let outcome = tokio::time::timeout(WAIT, async {
        let mut stream = dial(&h, &stranger).await?;
        // Try to talk anyway: a Hello and a validly signed envelope of its own.
        let mut out = Vec::new();
        Frame::Hello {
            version: LINK_VERSION,
            hwm: 0,
            wall_ms: detente_node::now_ms(),
        }
        .encode(&mut out);
        let e = Envelope {
            channel: ChannelId::for_pair(&h.target, &stranger.public()),
            sender: stranger.public(),
            seq: 1,
            prev: MessageId::ZERO,
            created_at_ms: 1_700_000_000_000,
            precedence: Precedence::Flash,
            topic: "general".into(),
            author: "Stranger".into(),
            in_reply_to: None,
            body: Body::Text(TextBody {
                language: "en".into(),
                text: "let me in".into(),
                translations: vec![],
            }),
        };
        let v = VerifiedEnvelope::sign(e, &stranger).expect("valid");
        Frame::Envelope(v.bytes().to_vec()).encode(&mut out);
        // The write may already fail if the refusal came first.
        let _ = stream.write_all(&out).await;
        let _ = stream.flush().await;
        let mut buf = [0u8; 1024];
        stream.read(&mut buf).await
    })
    .await
    .expect("the node answers the stranger within the timeout");
    match outcome {
        Err(_) | Ok(0) => {}
        Ok(n) => panic!("an unpinned key got {n} bytes from the node"),
    }
    assert_eq!(h.snapshot().await, before, "nothing may be stored");
    assert_eq!(h.count().await, 0);

    // The pinned peer is unaffected.
    let mut peer = FakePeer::connect(&h).await;
    let chain = h.chain(1);
    h.accepts(&mut peer, &chain[0], 1).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn right_sender_on_a_wrong_channel_is_refused_invalid() {
    let h = Harness::start().await;
    let mut peer = FakePeer::connect(&h).await;
    let chain = h.chain(2);
    h.accepts(&mut peer, &chain[0], 1).await;

    // Validly signed by the pinned peer, but for its channel with someone else.
    let third = PartySecret::from_seed(THIRD_SEED);
    let mut e = h.envelope(2, chain[0].id(), "meant for another channel");
    e.channel = ChannelId::for_pair(&h.fake.public(), &third.public());
    let misrouted = h.sign(e);
    h.refuses(
        &mut peer,
        misrouted.bytes(),
        2,
        RefuseCode::Invalid,
        "wrong channel",
    )
    .await;

    h.accepts(&mut peer, &chain[1], 2).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_envelopes_do_not_poison_a_batch() {
    let h = Harness::start().await;
    let mut peer = FakePeer::connect(&h).await;
    let chain = h.chain(3);
    h.accepts(&mut peer, &chain[0], 1).await;
    let before = h.count().await;

    // One write: a flipped signature, the valid seq 2, garbage, a wrong prev for seq 3.
    let mut flipped = chain[1].bytes().to_vec();
    flipped[40] ^= 0x10;
    let forked = h.sign(h.envelope(3, MessageId([0x66; 32]), "forked"));
    let mut out = Vec::new();
    for bytes in [
        &flipped[..],
        chain[1].bytes(),
        &[0xd2, 0x84, 0xff][..],
        forked.bytes(),
    ] {
        Frame::Envelope(bytes.to_vec()).encode(&mut out);
    }
    peer.write_raw(&out).await;
    peer.sent += 4;
    let (mut refused, hwm) = peer.until_ack().await;
    assert_eq!(hwm, 2, "the valid envelope of the batch is appended");
    refused.sort_by_key(|r| (r.0, r.1 as u8));
    let codes: Vec<(u64, RefuseCode)> = refused.iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(
        codes,
        vec![
            (0, RefuseCode::Invalid),
            (0, RefuseCode::Invalid),
            (3, RefuseCode::PrevMismatch)
        ],
        "{refused:?}"
    );
    assert!(refused.iter().all(|r| !r.2.trim().is_empty()));
    assert_eq!(h.count().await, before + 2, "seq 2 and its receipt only");
    assert_eq!(h.fake_stream().await, Some((3, chain[1].id())));
    assert!(!h.is_stored(&flipped).await);
    assert!(!h.is_stored(forked.bytes()).await);
    peer.delivered_receipt_covering(2).await;

    h.accepts(&mut peer, &chain[2], 3).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_frame_type_closes_the_session_and_a_new_one_works() {
    let h = Harness::start().await;
    let mut peer = FakePeer::connect(&h).await;
    let chain = h.chain(2);
    h.accepts(&mut peer, &chain[0], 1).await;
    let before = h.snapshot().await;

    // A one-byte frame of type 10, which does not exist.
    peer.write_raw(&[0, 0, 0, 1, 10]).await;
    match peer.next_control().await {
        Ok(Frame::Refuse { seq, code, reason }) => {
            assert_eq!(code, RefuseCode::Protocol, "{reason}");
            assert_eq!(seq, 0);
            assert!(reason.contains("unknown frame type"), "{reason}");
        }
        other => panic!("expected Refuse{{Protocol}}, got {other:?}"),
    }
    if let Ok(frame) = peer.next_control().await {
        panic!("the node should close the connection, sent {frame:?}");
    }
    assert_eq!(h.snapshot().await, before, "nothing may be stored");

    let mut peer = FakePeer::connect(&h).await;
    assert_eq!(peer.node_hwm, 1);
    h.accepts(&mut peer, &chain[1], 2).await;
    h.stop().await;
}

/// A READ / ACKNOWLEDGED / DECLINED receipt answers one of *our* messages. A peer must not be
/// able to record, in our store, that we acknowledged a message it sent us.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_cannot_acknowledge_its_own_message_on_our_behalf() {
    let h = Harness::start().await;
    let mut peer = FakePeer::connect(&h).await;
    let chain = h.chain(1);
    h.accepts(&mut peer, &chain[0], 1).await;

    // The peer "acknowledges" the message it sent us itself.
    let mut e = h.envelope(2, chain[0].id(), "unused");
    e.body = Body::Receipt(Receipt {
        level: ReceiptLevel::Acknowledged,
        target: ReceiptTarget::Message(chain[0].id()),
        note: Some("forged by the peer".into()),
    });
    let forged = h.sign(e);
    let (refused, hwm) = peer.exchange(forged.bytes()).await;
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(hwm, 2, "the signed envelope is part of the peer's stream");

    let store = &h.node.shared.store;
    let times = store.receipt_times(chain[0].id().0).await.unwrap();
    assert_eq!(
        times.acknowledged_ms, None,
        "a peer's receipt for its own message was recorded as ours: {times:?}"
    );
    h.stop().await;
}

// ---- the transcript: evidence, alarms, checkpoints ----------------------------------------

/// GET an API path of the node under test (plain HTTP/1.1 on loopback, with the token).
async fn api_get(h: &Harness, path: &str) -> serde_json::Value {
    serde_json::from_str(&api_text(h, path).await).expect("JSON")
}

/// The body of a GET on the API port (bearer token), as text.
async fn api_text(h: &Harness, path: &str) -> String {
    let shared = &h.node.shared;
    let mut s = TcpStream::connect(shared.console_addr).await.expect("API");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        shared.token
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut answer))
        .await
        .expect("API answers")
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    text.split("\r\n\r\n").nth(1).expect("a body").to_string()
}

/// A checkpoint of the channel signed by the fake peer.
fn fake_checkpoint(
    h: &Harness,
    target_size: u64,
    target_root: [u8; 32],
    fake: &[VerifiedEnvelope],
) -> detente_proto::checkpoint::SignedCheckpoint {
    use detente_proto::checkpoint::{Checkpoint, SignedCheckpoint, StreamHead};
    use detente_proto::merkle::{leaf_hash, root_of_leaves};
    let leaves: Vec<[u8; 32]> = fake.iter().map(|v| leaf_hash(v.bytes())).collect();
    let c = Checkpoint::new(
        h.channel,
        1_800_000_000_000,
        vec![
            StreamHead {
                key: h.target,
                size: target_size,
                root: target_root,
            },
            StreamHead {
                key: h.fake.public(),
                size: fake.len() as u64,
                root: root_of_leaves(&leaves),
            },
        ],
    )
    .unwrap();
    SignedCheckpoint::sign(c, &h.fake).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equivocation_is_kept_as_evidence_and_raises_the_alarm() {
    let h = Harness::start().await;
    let mut peer = FakePeer::connect(&h).await;
    let chain = h.chain(2);
    h.accepts(&mut peer, &chain[0], 1).await;
    let status = api_get(&h, "/api/v1/status").await;
    assert_eq!(status["alarms"], serde_json::json!([]));
    assert_eq!(status["peers"][0]["flagged"], false);

    let twin = h.sign(h.envelope(1, MessageId::ZERO, "what we never said"));
    h.refuses(
        &mut peer,
        twin.bytes(),
        1,
        RefuseCode::Conflict,
        "different envelope",
    )
    .await;

    // Both signed envelopes are kept, exactly as the peer signed them.
    let evidence = h.node.shared.store.evidence().await.unwrap();
    assert_eq!(evidence.len(), 1);
    assert_eq!(evidence[0].kind, detente_store::EVIDENCE_ENVELOPES);
    assert_eq!(evidence[0].seq, Some(1));
    assert_eq!(evidence[0].peer, "fake");
    assert_eq!(evidence[0].first, chain[0].bytes());
    assert_eq!(evidence[0].second, twin.bytes());
    for item in [&evidence[0].first, &evidence[0].second] {
        let v = VerifiedEnvelope::decode(item, Some(&h.fake.public())).unwrap();
        assert_eq!(v.envelope().seq, 1);
    }

    // The alarm shows in status and flags the channel; valid traffic still flows.
    let status = api_get(&h, "/api/v1/status").await;
    assert_eq!(status["alarms"][0]["kind"], "equivocation");
    assert_eq!(status["alarms"][0]["peer"], "fake");
    assert_eq!(status["alarms"][0]["seq"], 1);
    assert_eq!(status["peers"][0]["flagged"], true);
    h.accepts(&mut peer, &chain[1], 2).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_are_cosigned_witnessed_across_restart_and_contradictions_are_evidence() {
    use detente_node::transcript::{witness_check, WitnessError};
    use detente_proto::merkle::empty_root;
    let h = Harness::start().await;
    let mut peer = FakePeer::connect(&h).await;
    let chain = h.chain(3);
    h.accepts(&mut peer, &chain[0], 1).await;
    h.accepts(&mut peer, &chain[1], 2).await;

    // A checkpoint the node can vouch for comes back signed by both.
    let proposal = fake_checkpoint(&h, 0, empty_root(), &chain[..2]);
    peer.send(&Frame::Checkpoint(proposal.encode())).await;
    let cosigned = loop {
        match peer.next_control().await {
            Ok(Frame::Checkpoint(bytes)) => {
                break detente_proto::checkpoint::SignedCheckpoint::decode(&bytes).unwrap()
            }
            Ok(_) => continue,
            Err(e) => panic!("the node closed the session: {e}"),
        }
    };
    assert!(cosigned.cosigned());
    assert_eq!(cosigned.body(), proposal.body());
    let status = api_get(&h, "/api/v1/status").await;
    assert_eq!(status["peers"][0]["checkpoint"]["cosigned"], true);
    let streams = status["peers"][0]["checkpoint"]["streams"]
        .as_array()
        .unwrap()
        .clone();
    let fake_stream = streams
        .iter()
        .find(|s| s["fingerprint"] == h.fake.public().fingerprint().as_str())
        .expect("the fake peer's stream");
    assert_eq!(fake_stream["size"], 2);

    // The witness rule, from the store: never a smaller tree, never an inconsistent one.
    let smaller = fake_checkpoint(&h, 0, empty_root(), &chain[..1]);
    let forked = {
        let other = h.sign(h.envelope(2, chain[0].id(), "a rewritten second message"));
        fake_checkpoint(&h, 0, empty_root(), &[chain[0].clone(), other])
    };
    let store = h.node.shared.store.clone();
    assert!(matches!(
        witness_check(&store, smaller.checkpoint()).await,
        Err(WitnessError::Smaller { .. })
    ));
    assert!(matches!(
        witness_check(&store, forked.checkpoint()).await,
        Err(WitnessError::Inconsistent { .. })
    ));

    // ... and the same after a restart: the witness state is durable.
    let Harness {
        _tmp,
        node,
        target,
        fake,
        channel,
    } = h;
    node.stop().await;
    let node = Node::start(NodeDir::new(_tmp.path().join("target")))
        .await
        .expect("restart");
    let h = Harness {
        _tmp,
        node,
        target,
        fake,
        channel,
    };
    let store = h.node.shared.store.clone();
    assert!(matches!(
        witness_check(&store, smaller.checkpoint()).await,
        Err(WitnessError::Smaller { .. })
    ));
    assert!(matches!(
        witness_check(&store, forked.checkpoint()).await,
        Err(WitnessError::Inconsistent { .. })
    ));

    // A checkpoint signed by the peer whose root contradicts the envelopes it signed is
    // evidence: kept, alarmed, never co-signed.
    let mut peer = FakePeer::connect(&h).await;
    peer.send(&Frame::Checkpoint(forked.encode())).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let evidence = loop {
        let evidence = h.node.shared.store.evidence().await.unwrap();
        if !evidence.is_empty() {
            break evidence;
        }
        assert!(tokio::time::Instant::now() < deadline, "no evidence stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(evidence[0].kind, detente_store::EVIDENCE_CHECKPOINTS);
    assert_eq!(evidence[0].second, forked.encode());
    let first = detente_proto::checkpoint::SignedCheckpoint::decode(&evidence[0].first).unwrap();
    assert_eq!(
        first.body(),
        proposal.body(),
        "the earlier checkpoint the peer signed"
    );
    let status = api_get(&h, "/api/v1/status").await;
    assert_eq!(status["alarms"][0]["kind"], "inconsistent-checkpoints");
    assert_eq!(status["peers"][0]["flagged"], true);
    h.accepts(&mut peer, &chain[2], 3).await;
    h.stop().await;
}

/// The fake peer's charter terms.
fn fake_terms(key: PartyKey) -> detente_proto::Terms {
    detente_proto::Terms {
        member: detente_proto::Member {
            key,
            name: "fake".into(),
            party: "Fake".into(),
            addresses: vec!["127.0.0.1:9".into()],
            lang: "zh-CN".into(),
            tz: "Asia/Shanghai".into(),
        },
        formats: vec![],
        deadlines: detente_proto::Deadlines {
            flash_acknowledged: Duration::from_secs(120),
            ..detente_proto::Deadlines::default()
        },
        link_test_interval: Duration::from_secs(3600),
        counterparts: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charter_terms_from_the_peer_are_checked_and_only_a_charter_both_signed_binds() {
    let h = Harness::start().await;
    let chain = h.chain(3);

    // Garbage terms are ignored; the session carries on.
    let mut peer = FakePeer::connect(&h).await;
    peer.send(&Frame::Terms(vec![0xff, 0x00, 0x13])).await;
    h.accepts(&mut peer, &chain[0], 1).await;
    drop(peer);

    // Terms that name another party's key are refused: nothing is signed.
    let third = PartySecret::from_seed(THIRD_SEED).public();
    let mut peer = FakePeer::connect(&h).await;
    peer.send(&Frame::Terms(fake_terms(third).encode())).await;
    h.accepts(&mut peer, &chain[1], 2).await;
    assert!(
        peer.from_node
            .iter()
            .all(|v| !matches!(v.envelope().body, Body::Charter(_))),
        "the node signed a charter for terms with a wrong key"
    );
    assert!(h.node.shared.charter("fake").is_none());
    drop(peer);

    // Valid terms: the node signs the charter both terms make, IMMEDIATE, in its stream.
    let terms = fake_terms(h.fake.public());
    let expected = detente_proto::Charter::agree(&h.node.shared.local_terms(), &terms).unwrap();
    assert_eq!(
        expected.deadlines.flash_acknowledged,
        Duration::from_secs(120),
        "the stricter deadline"
    );
    let mut peer = FakePeer::connect(&h).await;
    peer.send(&Frame::Terms(terms.encode())).await;
    let signed = loop {
        let found = peer
            .from_node
            .iter()
            .find_map(|v| match &v.envelope().body {
                Body::Charter(c) => Some((c.clone(), v.envelope().precedence)),
                _ => None,
            });
        if let Some(found) = found {
            break found;
        }
        peer.next_frame()
            .await
            .expect("the node's charter envelope");
    };
    assert_eq!(signed.0, expected);
    assert_eq!(signed.1, Precedence::Immediate);
    // Signed by the node alone, it does not bind yet.
    detente_node::charter::refresh(&h.node.shared, "fake").await;
    assert!(h.node.shared.charter("fake").is_none());
    assert_eq!(
        h.node.shared.deadlines("fake").flash_acknowledged,
        Duration::from_secs(600),
        "the node's own deadlines until a charter is agreed"
    );

    // The fake peer signs a different charter: still nothing agreed.
    let mut other = expected.clone();
    other.link_test_interval = Duration::from_secs(60);
    let mut e = h.envelope(3, chain[1].id(), "");
    e.precedence = Precedence::Immediate;
    e.body = Body::Charter(other);
    let wrong = h.sign(e);
    let (refused, _) = peer.exchange(wrong.bytes()).await;
    assert!(refused.is_empty(), "{refused:?}");
    detente_node::charter::refresh(&h.node.shared, "fake").await;
    assert!(h.node.shared.charter("fake").is_none());

    // It signs the same charter: agreed, and its deadlines are in force.
    let mut e = h.envelope(4, wrong.id(), "");
    e.precedence = Precedence::Immediate;
    e.body = Body::Charter(expected.clone());
    let same = h.sign(e);
    let (refused, hwm) = peer.exchange(same.bytes()).await;
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(hwm, 4);
    detente_node::charter::refresh(&h.node.shared, "fake").await;
    let agreed = h.node.shared.charter("fake").expect("agreed");
    assert_eq!(agreed.digest(), expected.digest());
    assert_eq!(
        h.node.shared.deadlines("fake").flash_acknowledged,
        Duration::from_secs(120)
    );
    assert_eq!(h.node.shared.charters.get("fake").version, 1);
    h.stop().await;
}

/// Wait (bounded) until the node's charter state for the fake peer satisfies `done`.
async fn until_charter_state(
    h: &Harness,
    what: &str,
    done: impl Fn(&detente_node::charter::PeerCharter) -> bool,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let state = h.node.shared.charters.get("fake");
        if done(&state) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {:?}",
            state.refused
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Charter envelopes the node signed for the fake peer, as stored.
async fn charters_signed(h: &Harness) -> usize {
    let rows = h
        .node
        .shared
        .store
        .messages_of_kind("fake", detente_proto::envelope::KIND_CHARTER, 16)
        .await
        .expect("charter rows");
    rows.iter()
        .filter(|r| r.direction == Direction::Out)
        .count()
}

/// Issue 12 item 9: a peer used to set our deadlines, down to 1 s, and the node signed the
/// charter with no one asked. Terms below our floors are now refused: nothing is signed, the
/// deadlines in force stay ours, status names each refused term, and one alarm is raised
/// for the same terms however many sessions repeat them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charter_terms_below_our_floors_are_not_signed_and_status_says_why() {
    let h = Harness::start().await;
    let chain = h.chain(2);
    let own = h.node.shared.deadlines("fake");
    let mut hostile = fake_terms(h.fake.public());
    hostile.deadlines.flash_delivered = Duration::from_secs(1);
    hostile.deadlines.flash_acknowledged = Duration::from_secs(1);
    hostile.link_test_interval = Duration::from_secs(1);

    // Two sessions ask for the same terms below the floors (2 s the second time).
    for (i, ask) in [1u64, 2].into_iter().enumerate() {
        hostile.deadlines.flash_acknowledged = Duration::from_secs(ask);
        let mut peer = FakePeer::connect(&h).await;
        peer.send(&Frame::Terms(hostile.encode())).await;
        until_charter_state(&h, "the refusal is recorded", |s| {
            s.refused
                .iter()
                .any(|b| b.offered == Duration::from_secs(ask))
        })
        .await;
        // The session carries on.
        h.accepts(&mut peer, &chain[i], i as u64 + 1).await;
        assert!(
            peer.from_node
                .iter()
                .all(|v| !matches!(v.envelope().body, Body::Charter(_))),
            "the node signed a charter below its floors"
        );
        drop(peer);
    }
    assert_eq!(
        charters_signed(&h).await,
        0,
        "a charter envelope was stored"
    );
    assert!(h.node.shared.charter("fake").is_none());
    assert_eq!(
        h.node.shared.deadlines("fake"),
        own,
        "the deadlines in force"
    );

    let status = api_get(&h, "/api/v1/status").await;
    let refused = &status["peers"][0]["charter"]["refused"];
    assert_eq!(
        refused,
        &serde_json::json!([
            {"term": "deadlines.flash_delivered", "offered_ms": 1000, "floor_ms": 5000},
            {"term": "deadlines.flash_acknowledged", "offered_ms": 2000, "floor_ms": 60000},
            {"term": "link.test_interval", "offered_ms": 1000, "floor_ms": 60000},
        ]),
        "{status}"
    );
    let alarms = |h: &Harness| {
        h.node
            .shared
            .events
            .metrics()
            .alarms()
            .into_iter()
            .find(|(name, _)| *name == "charter_refused")
            .map_or(0, |(_, n)| n)
    };
    assert_eq!(alarms(&h), 1, "one alarm for the same refused terms");
    // The console's status light (on every page) says the same, in both languages.
    for (lang, words) in [
        (
            "en",
            "Charter with fake not agreed: they ask FLASH acknowledged within 2s; our floor is 1m 00s.",
        ),
        (
            "zh-CN",
            "与 fake 的章程未达成：对方要求特急消息在 2秒 内确认；我方下限为 1分 00秒。",
        ),
    ] {
        let light = detente_node::console::status::status_html(&h.node.shared, &op(lang));
        assert!(light.contains(words), "{lang}: {light}");
    }

    // Terms within the floors are agreed as before, and the refusal is cleared.
    let fair = fake_terms(h.fake.public());
    let mut peer = FakePeer::connect(&h).await;
    peer.send(&Frame::Terms(fair.encode())).await;
    while !peer
        .from_node
        .iter()
        .any(|v| matches!(v.envelope().body, Body::Charter(_)))
    {
        peer.next_frame()
            .await
            .expect("the node's charter envelope");
    }
    until_charter_state(&h, "the refusal is cleared", |s| s.refused.is_empty()).await;
    assert_eq!(alarms(&h), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_in_a_format_not_held_or_with_a_bad_field_is_refused_invalid() {
    use detente_proto::{FieldValue, NotificationBody};
    let h = Harness::start().await;
    let mut peer = FakePeer::connect(&h).await;
    let chain = h.chain(2);
    h.accepts(&mut peer, &chain[0], 1).await;

    let typed = |k: &str, v: &str| (k.to_string(), FieldValue::Typed(v.to_string()));
    let mut unknown = h.envelope(2, chain[0].id(), "");
    unknown.body = Body::Notification(NotificationBody {
        format: "warp-drive".into(),
        version: 1,
        fields: vec![typed("speed", "9")],
    });
    let unknown = h.sign(unknown);
    h.refuses(
        &mut peer,
        unknown.bytes(),
        0,
        RefuseCode::Invalid,
        "not held by this node",
    )
    .await;

    // A launch whose count is 0 (created 2023-11-14; the window a year later).
    let mut bad = h.envelope(2, chain[0].id(), "");
    bad.body = Body::Notification(NotificationBody {
        format: "launch".into(),
        version: 1,
        fields: vec![
            typed("category", "icbm"),
            typed("count", "0"),
            typed("impact_area", "circle:10,170,50"),
            typed("launch_area", "circle:40,-100,25"),
            typed("window_end", "2024-11-14T14:00:00Z"),
            typed("window_start", "2024-11-14T10:00:00Z"),
        ],
    });
    let bad = h.sign(bad);
    h.refuses(
        &mut peer,
        bad.bytes(),
        0,
        RefuseCode::Invalid,
        "field \"count\"",
    )
    .await;

    // Nothing of either was stored: the stream goes on at seq 2.
    h.accepts(&mut peer, &chain[1], 2).await;
    h.stop().await;
}

// ---- a replaced store (issue 12, item 1) ---------------------------------------------------

fn text_request(n: u64) -> detente_node::writer::SendRequest {
    detente_node::writer::SendRequest {
        peer: "fake".into(),
        precedence: if n == 2 {
            Precedence::Flash
        } else {
            Precedence::Routine
        },
        topic: "general".into(),
        author: "Tester".into(),
        in_reply_to: None,
        body: Body::Text(TextBody {
            language: "en".into(),
            text: format!("report {n}"),
            translations: vec![],
        }),
    }
}

/// The database file moved away used to start a fresh, empty store silently. With peers
/// pinned the node now refuses, naming the file and the next step; `--new-store` starts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_store_with_pinned_peers_refuses_to_start_unless_new_store() {
    let h = Harness::start().await;
    let dir = h.node.shared.dir.clone();
    let Harness { _tmp, node, .. } = h;
    node.stop().await;
    for name in ["detente.db", "detente.db-wal", "detente.db-shm"] {
        let _ = std::fs::remove_file(dir.file(name));
    }
    let refused = match Node::start(dir.clone()).await {
        Ok(node) => {
            node.stop().await;
            panic!("the node started on an empty store with a pinned peer");
        }
        Err(e) => e.to_string(),
    };
    assert!(refused.contains("detente.db"), "names the file: {refused}");
    assert!(refused.contains("fake"), "names the peers: {refused}");
    assert!(
        refused.contains("--new-store"),
        "gives the next step: {refused}"
    );
    assert!(
        !dir.file("detente.db").exists(),
        "a refused start creates nothing"
    );
    let options = detente_node::StartOptions { new_store: true };
    let node = Node::start_with(dir, options)
        .await
        .expect("--new-store starts on a fresh store");
    node.stop().await;
}

/// A peer whose Hello (or Ack) says it holds our stream beyond what our store ever wrote used
/// to make the node prune those outbox rows unsent (a FLASH among them). Now it is an alarm:
/// nothing is pruned, nothing more is sent to that peer, and status says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_hwm_beyond_our_stream_stops_sending_and_never_prunes() {
    let h = Harness::start().await;
    let shared = h.node.shared.clone();
    let mut events = shared.events.subscribe();
    for n in 1..=3 {
        shared.engine.send(text_request(n)).await.expect("send");
    }
    let pending = |shared: std::sync::Arc<detente_node::Shared>| async move {
        shared
            .store
            .outbox_counts("fake")
            .await
            .expect("outbox")
            .pending
    };
    assert_eq!(pending(shared.clone()).await, 3);
    let mut peer = FakePeer::connect_with_hwm(&h, 7).await;
    // The node asks for the envelope that would back the claim: its own seq 4.
    let ours = *h.target.as_bytes();
    match peer.next_control().await {
        Ok(Frame::Fetch {
            sender,
            after: 3,
            limit: 1,
        }) if sender == ours => {}
        other => panic!("expected a Fetch of the node's seq 4, got {other:?}"),
    }
    // This peer has nothing to show.
    peer.send(&Frame::FetchEnd {
        sender: ours,
        upto: 3,
        head: 3,
    })
    .await;
    // A round trip through the session loop: it has run its send step by then.
    peer.send(&Frame::Ping {
        nonce: 1,
        wall_ms: detente_node::now_ms(),
    })
    .await;
    match peer.next_control().await {
        Ok(Frame::Pong { nonce: 1, .. }) => {}
        other => panic!("expected Pong, got {other:?}"),
    }
    // The Ack path: a hwm beyond our stream is no prune either.
    peer.send(&Frame::Ack {
        hwm: 9,
        received: 0,
    })
    .await;
    peer.send(&Frame::Ping {
        nonce: 2,
        wall_ms: detente_node::now_ms(),
    })
    .await;
    match peer.next_control().await {
        Ok(Frame::Pong { nonce: 2, .. }) => {}
        other => panic!("expected Pong, got {other:?}"),
    }
    // The writer takes commands in order: the prune was handled before this send returns.
    shared.engine.send(text_request(4)).await.expect("send");
    assert_eq!(pending(shared.clone()).await, 4, "nothing was pruned");
    assert!(peer.from_node.is_empty(), "nothing was sent to the peer");
    let alarm = next_alarm(&mut events).await;
    assert!(alarm.contains("holds our stream up to seq 7"), "{alarm}");
    let verdict = next_alarm(&mut events).await;
    assert!(verdict.contains("its claim is false"), "{verdict}");
    assert!(verdict.contains("showed none"), "{verdict}");
    let status = api_get(&h, "/api/v1/status").await;
    let stopped = status["peers"][0]["sending_stopped"].as_str().unwrap_or("");
    assert!(
        stopped.contains("its claim is false"),
        "status says what the check found: {status}"
    );
    h.stop().await;
}

/// The next alarm the node publishes.
async fn next_alarm(
    events: &mut tokio::sync::broadcast::Receiver<detente_node::events::Event>,
) -> String {
    tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Ok(detente_node::events::Event::Alarm { detail, .. }) => return detail,
                Ok(_) => continue,
                Err(e) => panic!("events: {e}"),
            }
        }
    })
    .await
    .expect("an alarm")
}

/// A node restored from an old backup: the peer holds more of its stream, and proves it by
/// showing the node's next envelope, signed with the node's own key and chained to its last.
/// The node says its store is behind, keeps sending stopped, and stores nothing it was shown.
#[tokio::test]
async fn a_peer_that_shows_our_later_envelope_proves_our_store_is_behind() {
    let h = Harness::start().await;
    let shared = h.node.shared.clone();
    let mut events = shared.events.subscribe();
    for n in 1..=2 {
        shared.engine.send(text_request(n)).await.expect("send");
    }
    let ours = *h.target.as_bytes();
    let last = shared
        .store
        .streams()
        .await
        .expect("streams")
        .into_iter()
        .find(|s| s.channel == h.channel.0 && s.sender == ours)
        .map(|s| MessageId(s.last_id))
        .expect("the node's stream");
    // What the node signed before its store was rolled back: its seq 3.
    let node_secret = PartySecret::from_seed(TARGET_SEED);
    let mut lost = h.envelope(3, last, "sent before the backup was restored");
    lost.sender = h.target;
    let lost = VerifiedEnvelope::sign(lost, &node_secret).expect("sign");
    let before = h.snapshot().await;

    let mut peer = FakePeer::connect_with_hwm(&h, 5).await;
    match peer.next_control().await {
        Ok(Frame::Fetch {
            sender,
            after: 2,
            limit: 1,
        }) if sender == ours => {}
        other => panic!("expected a Fetch of the node's seq 3, got {other:?}"),
    }
    peer.send(&Frame::Fetched(lost.bytes().to_vec())).await;
    peer.send(&Frame::FetchEnd {
        sender: ours,
        upto: 3,
        head: 5,
    })
    .await;
    let alarm = next_alarm(&mut events).await;
    assert!(alarm.contains("holds our stream up to seq 5"), "{alarm}");
    let verdict = next_alarm(&mut events).await;
    assert!(verdict.contains("this store is behind"), "{verdict}");
    assert!(verdict.contains("seq 3"), "{verdict}");
    let status = api_get(&h, "/api/v1/status").await;
    let stopped = status["peers"][0]["sending_stopped"].as_str().unwrap_or("");
    assert!(stopped.contains("this store is behind"), "{status}");
    assert!(
        !h.is_stored(lost.bytes()).await,
        "a shown envelope is not stored"
    );
    assert_eq!(h.snapshot().await, before);
    assert!(peer.from_node.is_empty(), "nothing was sent to the peer");

    // The check is over: another answer is one nobody asked for, and ends the session.
    peer.send(&Frame::Fetched(lost.bytes().to_vec())).await;
    peer.until_protocol_refusal("never sent").await;
    h.stop().await;
}

/// Ping the node until its status shows the peer's clock measured from a Pong (not only
/// from the Hello); the peer's status entry then.
async fn clock_measured(h: &Harness, peer: &mut FakePeer) -> serde_json::Value {
    for nonce in 1..=20 {
        let status = api_get(h, "/api/v1/status").await;
        if status["peers"][0]["clock"]["error_ms"].is_u64() {
            return status;
        }
        // A round trip through the session loop; the node's own Pings are answered on the
        // way with this peer's clock.
        peer.send(&Frame::Ping {
            nonce,
            wall_ms: peer.wall_ms(),
        })
        .await;
        match peer.next_control().await {
            Ok(Frame::Pong { .. }) => {}
            other => panic!("expected Pong, got {other:?}"),
        }
    }
    panic!("the node never measured the peer's clock from a Pong");
}

/// An operator of the console on watch, reading in `lang` (for pages rendered directly).
fn op(lang: &str) -> detente_node::operators::Operator {
    detente_node::operators::Operator {
        login: "duty".into(),
        role: detente_node::operators::Role::Watch,
        lang: lang.into(),
        csrf: String::new(),
        token_hash: [0; 32],
        expires_at_ms: i64::MAX,
        compact: false,
        tz: String::new(),
    }
}

/// Issue 12, item 11: a peer whose clock is 3 h behind is shown as such (status, verdict,
/// metrics, the console's status light), measured within half a round trip; once its clock
/// is right the warning goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_clock_three_hours_behind_is_shown_and_warned() {
    let h = Harness::start().await;
    let behind: i64 = 3 * 3_600_000;
    let mut peer = FakePeer::connect_with(&h, 0, -behind).await;
    let status = clock_measured(&h, &mut peer).await;
    let p = &status["peers"][0];
    let clock = &p["clock"];
    let (offset, error) = (
        clock["offset_ms"].as_i64().unwrap(),
        clock["error_ms"].as_i64().unwrap(),
    );
    // Within half the round trip (+2 ms: the two readings of the same clock are rounded).
    assert!((offset + behind).abs() <= error + 2, "{clock}");
    assert_eq!(clock["skewed"], true, "{clock}");
    assert_eq!(
        clock["text"], "the peer's clock is 3 h 0 min behind ours",
        "{clock}"
    );
    assert_eq!(p["verdict"], "clock_skew", "{p}");
    assert_eq!(status["verdict"], "clock_skew", "{status}");
    assert_eq!(status["thresholds"]["clock_skew_warn_ms"], 2000);
    let metrics = api_text(&h, "/metrics").await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("detente_peer_clock_offset_seconds{"))
        .unwrap_or_else(|| panic!("no clock offset in /metrics:\n{metrics}"));
    let seconds: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((seconds + 10_800.0).abs() < 1.0, "{line}");
    // The console's status light, on every page, in both languages.
    for (lang, words) in [
        ("en", "their clock is 3h 00m 00s behind ours"),
        ("zh-CN", "对方时钟比我方慢 3小时 00分 00秒"),
    ] {
        let light = detente_node::console::status::status_html(&h.node.shared, &op(lang));
        assert!(light.contains(words), "{lang}: {light}");
    }
    drop(peer);

    // The same peer with its clock set right: the warning goes, the verdict is calm.
    let mut peer = FakePeer::connect_with(&h, 0, 0).await;
    let status = loop {
        let status = clock_measured(&h, &mut peer).await;
        // The first answer may still be the last session's.
        if status["peers"][0]["clock"]["offset_ms"]
            .as_i64()
            .unwrap()
            .abs()
            < 2000
        {
            break status;
        }
        peer.send(&Frame::Ping {
            nonce: 99,
            wall_ms: peer.wall_ms(),
        })
        .await;
        let _ = peer.next_control().await;
    };
    let p = &status["peers"][0];
    assert_eq!(p["clock"]["skewed"], false, "{p}");
    assert_ne!(p["verdict"], "clock_skew", "{p}");
    let light = detente_node::console::status::status_html(&h.node.shared, &op("en"));
    assert!(!light.contains("their clock"), "{light}");
    h.stop().await;
}

/// Issue 12, item 11: lateness is measured on our clock. A peer whose clock is 3 h ahead
/// delivers our FLASH after its deadline: the receipt it signs is dated 3 h after the due
/// time, and the node used to report the message 3 h late; it is late by seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_receipt_from_a_peer_hours_ahead_is_late_by_our_clock() {
    let h = Harness::start_setting(&[("deadlines.flash_delivered", "1s")]).await;
    let ahead: i64 = 3 * 3_600_000;
    let mut peer = FakePeer::connect_with(&h, 0, ahead).await;
    let sent = h
        .node
        .shared
        .engine
        .send(text_request(2))
        .await
        .expect("send");
    let seq = loop {
        if let Some(v) = peer.from_node.iter().find(|v| v.id() == sent.id) {
            break v.envelope().seq;
        }
        peer.next_frame().await.expect("the node sends its FLASH");
    };
    let path = format!("/api/v1/messages/{}", sent.id.to_hex());
    let deadline = std::time::Instant::now() + WAIT;
    while api_get(&h, &path).await["overdue"] != true {
        assert!(std::time::Instant::now() < deadline, "never overdue");
        tokio::task::yield_now().await;
    }
    let mut e = h.envelope(1, MessageId::ZERO, "unused");
    e.created_at_ms = peer.wall_ms();
    e.body = Body::Receipt(Receipt {
        level: ReceiptLevel::Delivered,
        target: ReceiptTarget::Ranges(vec![(seq, seq)]),
        note: None,
    });
    let receipt = h.sign(e);
    let (refused, _) = peer.exchange(receipt.bytes()).await;
    assert!(refused.is_empty(), "{refused:?}");
    let m = api_get(&h, &path).await;
    assert_eq!(m["overdue"], false, "{m}");
    assert_eq!(m["late"], true, "{m}");
    let late = m["late_ms"].as_i64().expect("late_ms");
    assert!(
        (0..WAIT.as_millis() as i64).contains(&late),
        "late by {late} ms: {m}"
    );
    h.stop().await;
}

/// A peer still on link version 1 (a 10-byte Hello, no wall clock) is told in words why
/// the session ends, and nothing of the session goes further.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_on_link_version_one_is_refused_with_both_versions_named() {
    let h = Harness::start().await;
    let fake = PartySecret::from_seed(FAKE_SEED);
    let mut stream = tokio::time::timeout(WAIT, dial(&h, &fake))
        .await
        .expect("handshake within the timeout")
        .expect("the pinned peer connects");
    let mut v1 = vec![0, 0, 0, 11, 0, 0, 1];
    v1.extend_from_slice(&0u64.to_be_bytes());
    stream.write_all(&v1).await.unwrap();
    stream.flush().await.unwrap();
    let mut buf = Vec::new();
    let refusal = tokio::time::timeout(WAIT, async {
        loop {
            match read_one(&mut stream, &mut buf).await {
                Ok(Frame::Refuse { code, reason, .. }) => return (code, reason),
                Ok(_) => continue,
                Err(e) => panic!("closed without a Refuse: {e}"),
            }
        }
    })
    .await
    .expect("a Refuse within the timeout");
    assert_eq!(refusal.0, RefuseCode::Protocol);
    assert!(
        refusal.1.contains("peer speaks link version 1, we speak 2"),
        "{refusal:?}"
    );
    ends_within(&mut stream, &mut buf).await;
    h.stop().await;
}

// ---- strangers at the door (issue 12, items 5 and 7) ---------------------------------------

/// TCP connect to the node's peer port from a chosen loopback source address.
async fn connect_from(h: &Harness, source: [u8; 4]) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::from((source, 0)))?;
    socket.connect(h.node.shared.peer_addr).await
}

/// TLS dial as `secret` from a chosen loopback source address.
async fn dial_from(
    h: &Harness,
    secret: &PartySecret,
    source: [u8; 4],
) -> std::io::Result<TlsStream<TcpStream>> {
    let config = tls::client_config(secret, h.target).expect("client TLS config");
    let tcp = connect_from(h, source).await?;
    TlsConnector::from(config)
        .connect(tls::server_name(), tcp)
        .await
}

/// Sources the flood comes from: 127.0.0.2 and up (the pinned peer's address is 127.0.0.1).
const FLOOD_SOURCES: u8 = 80;
/// Idle connections the flood opens from each source.
const FLOOD_PER_SOURCE: usize = 6;

/// 64 idle TCP connections used to take every handshake slot and lock the pinned peer out
/// (and each refused one wrote a WARN line). Now a flood of idle connections from 80
/// addresses, kept up while the peer dials, leaves the peer's own slots free: it connects at
/// the first attempt and its FLASH is stored and acknowledged; the flood's refusals write at
/// most a couple of log lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_does_not_lock_out_the_pinned_peer() {
    let h = Harness::start().await;
    let mut idle = Vec::new();
    for round in 0..FLOOD_PER_SOURCE {
        for i in 0..FLOOD_SOURCES {
            match connect_from(&h, [127, 0, 0, 2 + i]).await {
                Ok(s) => idle.push(s),
                Err(e) => panic!("flood connect (round {round}): {e}"),
            }
        }
    }
    // The flood holds every stranger slot now; the pinned peer dials in.
    let started = std::time::Instant::now();
    let mut peer = FakePeer::connect(&h).await;
    let mut flash = h.envelope(1, MessageId::ZERO, "FLASH during the flood");
    flash.precedence = Precedence::Flash;
    let flash = h.sign(flash);
    h.accepts(&mut peer, &flash, 1).await;
    let delivered = started.elapsed();
    let status = api_get(&h, "/api/v1/status").await;
    let listener = &status["listener"];
    let closed = &listener["closed_before_handshake"];
    let refused =
        closed["source_busy"].as_u64().unwrap_or(0) + closed["full"].as_u64().unwrap_or(0);
    assert!(refused > 0, "the flood was refused: {listener}");
    let lines = listener["log_lines"].as_u64().unwrap_or(u64::MAX);
    assert!(
        lines <= 2,
        "log lines during the flood: {lines} ({listener})"
    );
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM")).map(String::from))
        .unwrap_or_default();
    println!(
        "flood: {} idle connections from {FLOOD_SOURCES} sources, {refused} closed before a \
         handshake, {lines} log line(s); pinned peer connected and FLASH stored and acked \
         in {} ms; test process {rss}",
        idle.len(),
        delivered.as_millis()
    );
    drop(idle);
    h.stop().await;
}

/// An unpinned node used to be given a full handshake (and a WARN line) on every redial.
/// Now its key is counted and shown (status `listener.refused_keys`, `/metrics`), and its
/// source address is refused before any TLS for a backoff that doubles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpinned_redialer_is_backed_off_counted_and_shown() {
    let h = Harness::start().await;
    let stranger = PartySecret::from_seed(STRANGER_SEED);
    let source = [127, 0, 0, 3];
    // The first attempt: the handshake completes on the client, the refusal shows on read.
    let mut stream = tokio::time::timeout(WAIT, dial_from(&h, &stranger, source))
        .await
        .expect("first attempt within the timeout")
        .expect("TLS 1.3: the client finishes first");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(WAIT, stream.read(&mut buf)).await;
    assert!(matches!(read, Ok(Err(_)) | Ok(Ok(0))), "refused: {read:?}");
    // The refusal is recorded right after the alert is written; wait for it (bounded).
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let status = api_get(&h, "/api/v1/status").await;
        if status["listener"]["keys_refused_total"] == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no refusal: {status}");
        tokio::task::yield_now().await;
    }
    // Redials within the backoff get no handshake at all.
    for _ in 0..10 {
        let attempt = tokio::time::timeout(WAIT, dial_from(&h, &stranger, source))
            .await
            .expect("answered within the timeout");
        if let Ok(mut s) = attempt {
            let n = tokio::time::timeout(WAIT, s.read(&mut buf)).await;
            assert!(
                matches!(n, Ok(Err(_)) | Ok(Ok(0))),
                "a redial got bytes: {n:?}"
            );
        }
    }
    let status = api_get(&h, "/api/v1/status").await;
    let listener = &status["listener"];
    assert_eq!(listener["keys_refused_total"], 1, "{listener}");
    assert_eq!(
        listener["closed_before_handshake"]["backing_off"], 10,
        "{listener}"
    );
    let keys = listener["refused_keys"].as_array().expect("refused keys");
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["fingerprint"], stranger.public().fingerprint());
    assert_eq!(keys[0]["last_address"], "127.0.0.3");
    // The pinned peer is unaffected.
    let mut peer = FakePeer::connect(&h).await;
    let chain = h.chain(1);
    h.accepts(&mut peer, &chain[0], 1).await;
    h.stop().await;
}

// ---- both sides dialling at once (issue 12, item 4) ---------------------------------------

/// How soon the node must settle crossing connections: well inside its handshake timeout
/// (10 s), which is what the node waited for before.
const CROSSING_WAIT: Duration = Duration::from_secs(5);

/// One frame from either end of a TLS connection; `Err` at end of stream.
async fn read_one<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Result<Frame, String> {
    loop {
        if buf.len() >= 4 {
            let len = u32::from_be_bytes(buf[..4].try_into().unwrap());
            let len = Frame::check_len(len).expect("the node writes frames within the cap");
            if buf.len() >= 4 + len {
                let frame = Frame::decode(&buf[4..4 + len]).expect("a valid frame");
                buf.drain(..4 + len);
                return Ok(frame);
            }
        }
        let mut chunk = [0u8; 16 * 1024];
        match stream.read(&mut chunk).await {
            Ok(0) => return Err("closed".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

async fn write_frame<S: tokio::io::AsyncWrite + Unpin>(stream: &mut S, frame: &Frame) {
    let mut out = Vec::new();
    frame.encode(&mut out);
    stream.write_all(&out).await.expect("write");
    stream.flush().await.expect("flush");
}

/// The node closes this connection within [`CROSSING_WAIT`]; frames it sent before (the
/// core sends its `Terms` with its `Hello`) are read past.
async fn ends_within<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) {
    let ended = tokio::time::timeout(CROSSING_WAIT, async {
        while read_one(stream, buf).await.is_ok() {}
    })
    .await;
    assert!(ended.is_ok(), "the node kept the losing connection open");
}

/// Play one crossing: the node dials the fake peer while the fake peer dials the node, and
/// each side has sent its `Hello` only on the connection it dialed. The node must judge the
/// crossing connection at once by the rule both sides follow (the connection dialed by the
/// smaller key wins): say `Hello` on the winner and close the loser.
async fn crossing(fake_seed: [u8; 32]) {
    let fake = PartySecret::from_seed(fake_seed);
    let target = PartySecret::from_seed(TARGET_SEED).public();
    let fake_wins = fake.public() < target;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(
        tls::server_config(
            &fake,
            std::sync::Arc::new(std::collections::BTreeSet::from([target])),
        )
        .unwrap(),
    );
    let h = Harness::start_with(fake_seed, &listener.local_addr().unwrap().to_string(), "1m").await;
    // The node dials first (at start); it says Hello there and waits for ours.
    let (tcp, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .expect("the node dials its peer at start")
        .unwrap();
    let mut theirs = tokio::time::timeout(WAIT, acceptor.accept(tcp))
        .await
        .expect("handshake within the timeout")
        .expect("the node's dial is accepted");
    let mut theirs_buf = Vec::new();
    let hello = tokio::time::timeout(WAIT, read_one(&mut theirs, &mut theirs_buf)).await;
    assert!(matches!(hello, Ok(Ok(Frame::Hello { .. }))), "{hello:?}");
    // Meanwhile "we" dialled too, and say Hello only there.
    let mut ours = tokio::time::timeout(WAIT, dial(&h, &fake))
        .await
        .expect("handshake within the timeout")
        .expect("the pinned peer connects");
    let mut ours_buf = Vec::new();
    let hello = Frame::Hello {
        version: LINK_VERSION,
        hwm: 0,
        wall_ms: detente_node::now_ms(),
    };
    write_frame(&mut ours, &hello).await;
    let (winner_name, first, winner, buf) = if fake_wins {
        // Our connection wins: the node answers Hello on it, and closes the one it dialed.
        let first = tokio::time::timeout(CROSSING_WAIT, read_one(&mut ours, &mut ours_buf))
            .await
            .expect("the node says Hello on the winning connection at once");
        assert!(matches!(first, Ok(Frame::Hello { .. })), "{first:?}");
        ends_within(&mut theirs, &mut theirs_buf).await;
        let terms = tokio::time::timeout(WAIT, read_one(&mut ours, &mut ours_buf)).await;
        (
            "ours",
            terms.expect("Terms follow"),
            Either::Ours(ours),
            ours_buf,
        )
    } else {
        // The node's connection wins: it closes ours and keeps waiting on its own.
        ends_within(&mut ours, &mut ours_buf).await;
        write_frame(&mut theirs, &hello).await;
        let terms = tokio::time::timeout(WAIT, read_one(&mut theirs, &mut theirs_buf)).await;
        (
            "theirs",
            terms.expect("Terms follow"),
            Either::Theirs(theirs),
            theirs_buf,
        )
    };
    // The session is up on the winner: the node's Terms come after the Hello exchange.
    assert!(
        matches!(first, Ok(Frame::Terms(_))),
        "on {winner_name}: {first:?}"
    );
    // A Pong proves the node's session loop runs there (it published the link as up first).
    let mut buf = buf;
    let nonce = 0x5eed;
    let mut winner = winner;
    let pong = match &mut winner {
        Either::Ours(s) => ping_pong(s, &mut buf, nonce).await,
        Either::Theirs(s) => ping_pong(s, &mut buf, nonce).await,
    };
    assert_eq!(pong, nonce);
    let status = api_get(&h, "/api/v1/status").await;
    let peer = &status["peers"][0];
    assert_eq!(peer["connected"], true, "{peer}");
    drop(winner);
    h.stop().await;
}

/// The winning connection, whichever side dialed it.
enum Either {
    Ours(TlsStream<TcpStream>),
    Theirs(tokio_rustls::server::TlsStream<TcpStream>),
}

/// Send a Ping and read up to its Pong; the Pong's nonce.
async fn ping_pong<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    nonce: u64,
) -> u64 {
    let ping = Frame::Ping {
        nonce,
        wall_ms: detente_node::now_ms(),
    };
    write_frame(stream, &ping).await;
    loop {
        match tokio::time::timeout(WAIT, read_one(stream, buf)).await {
            Ok(Ok(Frame::Pong { nonce, .. })) => return nonce,
            Ok(Ok(_)) => continue,
            other => panic!("no Pong: {other:?}"),
        }
    }
}

/// Both nodes dialling at once stalled for the 10 s handshake timeout (3 of 6 fresh pairs):
/// each waited for a Hello on the connection it dialed. Both orders of the two keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crossing_dials_meet_on_one_connection_at_once() {
    let target = PartySecret::from_seed(TARGET_SEED).public();
    let seed = |fake_smaller: bool| {
        (0x22u8..=0xff)
            .map(|b| [b; 32])
            .find(|s| (PartySecret::from_seed(*s).public() < target) == fake_smaller)
            .expect("a seed on each side of the target's key")
    };
    crossing(seed(true)).await;
    crossing(seed(false)).await;
}

/// A frozen peer process (SIGSTOP) whose kernel still accepts TCP held the link down for
/// the whole 10 s handshake timeout: the node's own dial there hung, and the connection the
/// peer's other process opened meanwhile was not taken until it gave up (issue 13, the
/// standby's take-over). Now a dial-in is answered at once, whatever our dial waits for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_that_hangs_does_not_hold_off_the_peer_dialing_in() {
    // Accepts TCP and never says a word, as a stopped process's kernel does.
    let frozen = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let h = Harness::start_with(FAKE_SEED, &frozen.local_addr().unwrap().to_string(), "1m").await;
    let (held, _) = tokio::time::timeout(WAIT, frozen.accept())
        .await
        .expect("the node dials its peer at start")
        .unwrap();
    let fake = PartySecret::from_seed(FAKE_SEED);
    let started = std::time::Instant::now();
    let mut ours = tokio::time::timeout(WAIT, dial(&h, &fake))
        .await
        .expect("handshake within the timeout")
        .expect("the pinned peer connects");
    write_frame(
        &mut ours,
        &Frame::Hello {
            version: LINK_VERSION,
            hwm: 0,
            wall_ms: detente_node::now_ms(),
        },
    )
    .await;
    let mut buf = Vec::new();
    let hello = tokio::time::timeout(CROSSING_WAIT, read_one(&mut ours, &mut buf)).await;
    assert!(
        matches!(hello, Ok(Ok(Frame::Hello { .. }))),
        "no Hello within {CROSSING_WAIT:?} while the node's own dial hangs: {hello:?}"
    );
    let nonce = 0x0f0e;
    assert_eq!(ping_pong(&mut ours, &mut buf, nonce).await, nonce);
    let status = api_get(&h, "/api/v1/status").await;
    assert_eq!(status["peers"][0]["connected"], true, "{status}");
    eprintln!("answered {:?} after the dial-in", started.elapsed());
    drop(held);
    drop(ours);
    h.stop().await;
}

// ---- a peer that stops reading (issue 12, item 6) -----------------------------------------

/// Envelopes queued for the peer that stops reading: with 15 KiB each, 19 MiB, more than
/// the kernel's buffers and TLS's hold on loopback, so the node's writes block (640 of
/// them, 9.6 MiB, did not always).
const STALL_MESSAGES: usize = 1280;
const STALL_BATCH: usize = 160;

/// TLS dial as the fake peer with a receive buffer of a few KiB, so that a peer that
/// stops reading fills up at once.
async fn dial_small_window(h: &Harness) -> TlsStream<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(h.node.shared.peer_addr).await.unwrap();
    let config = tls::client_config(&h.fake, h.target).expect("client TLS config");
    TlsConnector::from(config)
        .connect(tls::server_name(), tcp)
        .await
        .expect("the pinned peer connects")
}

/// A peer that stopped reading stalled the session: writes had no time limit, so
/// heartbeats, a replacing connection and failover all waited for the kernel (~15 min;
/// on a zero window, forever). Now every write is bounded by three heartbeats: the
/// session ends, the peer's next connection is answered, and the queue is sent there from
/// the start, nothing lost. (On the core engine the driver's write timeout does the same.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_cannot_hold_the_session() {
    // Heartbeats every second: a write may take three seconds.
    let h = Harness::start_with(FAKE_SEED, "127.0.0.1:9", "1s").await;
    let mut stalled = tokio::time::timeout(WAIT, dial_small_window(&h))
        .await
        .expect("handshake within the timeout");
    let mut buf = Vec::new();
    write_frame(
        &mut stalled,
        &Frame::Hello {
            version: LINK_VERSION,
            hwm: 0,
            wall_ms: detente_node::now_ms(),
        },
    )
    .await;
    let hello = tokio::time::timeout(WAIT, read_one(&mut stalled, &mut buf)).await;
    assert!(matches!(hello, Ok(Ok(Frame::Hello { .. }))), "{hello:?}");
    // From here on the peer reads nothing.
    let text = "x".repeat(15 * 1024);
    for batch in 0..STALL_MESSAGES / STALL_BATCH {
        let requests = (0..STALL_BATCH)
            .map(|i| {
                let mut r = text_request((batch * STALL_BATCH + i) as u64 + 100);
                r.body = Body::Text(TextBody {
                    language: "en".into(),
                    text: text.clone(),
                    translations: vec![],
                });
                r
            })
            .collect();
        h.node
            .shared
            .engine
            .send_batch(requests, None)
            .await
            .expect("a batch is stored");
    }
    // The node's writes block; the session must end all the same (it used to hang on the
    // write for good: a zero window is probed forever).
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            let status = api_get(&h, "/api/v1/status").await;
            if status["peers"][0]["connected"] == false {
                return status["peers"][0]["last_error"].clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the session with a peer that stopped reading ends");
    if h.node.shared.engine.runs_tasks() {
        // The core writes on a task of its own, so its silence check ends the session
        // first; here the session loop itself writes, and the bounded write ends it.
        let ended = ended.as_str().unwrap_or_default().to_string();
        assert!(
            ended.contains("took nothing"),
            "ended by the bounded write: {ended}"
        );
    }
    // Nothing was lost: all of it still waits in the outbox, and the peer's next
    // connection is answered and sent the queue from seq 1.
    let pending = h
        .node
        .shared
        .store
        .outbox_counts("fake")
        .await
        .unwrap()
        .pending;
    assert_eq!(pending, STALL_MESSAGES as u64);
    let mut fresh = FakePeer::connect(&h).await;
    let first = tokio::time::timeout(WAIT, async {
        loop {
            match fresh.next_frame().await {
                Ok(Frame::Envelope(_)) => return fresh.from_node[0].envelope().seq,
                Ok(_) => continue,
                Err(e) => panic!("the fresh session ended: {e}"),
            }
        }
    })
    .await
    .expect("the queue is sent on the new session");
    assert_eq!(first, 1, "the queue starts again from the beginning");
    drop(stalled);
    h.stop().await;
}

/// Issue 12 item 1 and issue 13 item 5, the answering half: a peer whose store was restored
/// from an older backup asks (`Fetch`) for what this node holds of either stream of the
/// channel, its own among them, and gets exactly the stored, signed envelopes, in `seq`
/// order, in bounded answers that say how far the node holds the stream. A stream of any
/// other sender is refused, a flood of fetches is answered or refused busy (never
/// dropped, never a stall), and the session stays up throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_is_answered_with_what_the_node_holds_of_either_stream() {
    let h = Harness::start().await;
    let mut peer = FakePeer::connect(&h).await;
    let chain = h.chain(3);
    for (i, v) in chain.iter().enumerate() {
        h.accepts(&mut peer, v, i as u64 + 1).await;
    }
    h.node
        .shared
        .engine
        .send(text_request(1))
        .await
        .expect("send");
    let ours = *h.target.as_bytes();
    let theirs = *h.fake.public().as_bytes();
    let streams = h.node.shared.store.streams().await.expect("streams");
    let head = streams
        .iter()
        .find(|s| s.channel == h.channel.0 && s.sender == ours)
        .map(|s| s.next_seq - 1)
        .expect("the node's stream");
    assert!(head >= 4, "three DELIVERED receipts and a text: {head}");

    // Reads the answer to one Fetch: the envelopes (verified under `key`), then the end.
    async fn answer(peer: &mut FakePeer, key: &PartyKey) -> (Vec<VerifiedEnvelope>, Frame) {
        let mut got = Vec::new();
        loop {
            match peer.next_control().await.expect("the session stays up") {
                Frame::Fetched(bytes) => got.push(
                    VerifiedEnvelope::decode(&bytes, Some(key))
                        .expect("a fetched envelope verifies"),
                ),
                end @ Frame::FetchEnd { .. } => return (got, end),
                other => panic!("unexpected while reading a fetch answer: {other:?}"),
            }
        }
    }
    let fetch = |sender, after, limit| Frame::Fetch {
        sender,
        after,
        limit,
    };

    // Our stream, two at a time, then the rest with a limit above the maximum.
    peer.send(&fetch(ours, 0, 2)).await;
    let (got, end) = answer(&mut peer, &h.target).await;
    let seqs: Vec<u64> = got.iter().map(|v| v.envelope().seq).collect();
    assert_eq!(seqs, [1, 2]);
    assert_eq!(
        end,
        Frame::FetchEnd {
            sender: ours,
            upto: 2,
            head
        }
    );
    peer.send(&fetch(ours, 2, u16::MAX)).await;
    let (got, end) = answer(&mut peer, &h.target).await;
    let seqs: Vec<u64> = got.iter().map(|v| v.envelope().seq).collect();
    assert_eq!(seqs, (3..=head).collect::<Vec<_>>());
    assert_eq!(
        end,
        Frame::FetchEnd {
            sender: ours,
            upto: head,
            head
        }
    );
    for v in &got {
        let row = h
            .node
            .shared
            .store
            .message(v.id().0)
            .await
            .expect("message")
            .expect("what is fetched is what is stored");
        assert_eq!(row.bytes, v.bytes());
    }
    let sent = got
        .iter()
        .find(|v| matches!(v.envelope().body, Body::Text(_)));
    assert!(sent.is_some(), "the text sent is among them");

    // The peer's own stream, from the middle; and past its end, the end alone.
    peer.send(&fetch(theirs, 1, 10)).await;
    let (got, end) = answer(&mut peer, &h.fake.public()).await;
    let bytes: Vec<&[u8]> = got.iter().map(|v| v.bytes()).collect();
    assert_eq!(bytes, [chain[1].bytes(), chain[2].bytes()]);
    let expected = Frame::FetchEnd {
        sender: theirs,
        upto: 3,
        head: 3,
    };
    assert_eq!(end, expected);
    peer.send(&fetch(theirs, 3, 10)).await;
    let (got, end) = answer(&mut peer, &h.fake.public()).await;
    assert!(got.is_empty(), "nothing past the end");
    assert_eq!(end, expected);

    // A stranger's stream: refused, nothing read.
    peer.send(&fetch([0x77; 32], 0, 10)).await;
    match peer.next_control().await {
        Ok(Frame::Refuse { code, reason, .. }) => {
            assert_eq!(code, RefuseCode::Invalid);
            assert!(reason.contains("not a member"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Ten at once: each is answered whole, in order, or refused busy.
    const FLOOD: usize = 10;
    for _ in 0..FLOOD {
        peer.send(&fetch(theirs, 0, 3)).await;
    }
    let (mut answered, mut busy) = (0, 0);
    while answered + busy < FLOOD {
        match peer.next_control().await.expect("the session stays up") {
            Frame::Fetched(bytes) => {
                assert_eq!(bytes, chain[0].bytes(), "an answer starts at seq 1");
                for v in &chain[1..] {
                    match peer.next_control().await {
                        Ok(Frame::Fetched(bytes)) => assert_eq!(bytes, v.bytes()),
                        other => panic!("an answer interrupted by {other:?}"),
                    }
                }
                assert_eq!(peer.next_control().await, Ok(expected.clone()));
                answered += 1;
            }
            Frame::Refuse { code, .. } => {
                assert_eq!(code, RefuseCode::Busy);
                busy += 1;
            }
            other => panic!("unexpected in a flood of fetches: {other:?}"),
        }
    }
    assert!(
        answered >= detente_proto::FETCHES_QUEUED_MAX,
        "{answered} answered, {busy} busy"
    );

    // And the session still carries the peer's stream.
    let next = h.sign(h.envelope(4, chain[2].id(), "after the fetches"));
    h.accepts(&mut peer, &next, 4).await;
    h.stop().await;
}

/// An answer to a `Fetch` that was never sent is a protocol error: the session ends with
/// a refusal that says so, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_answer_nobody_asked_for_ends_the_session() {
    let h = Harness::start().await;
    let mut peer = FakePeer::connect(&h).await;
    let before = h.snapshot().await;
    let unasked = h.sign(h.envelope(1, MessageId::ZERO, "unasked"));
    peer.send(&Frame::Fetched(unasked.bytes().to_vec())).await;
    peer.until_protocol_refusal("never sent").await;
    assert!(!h.is_stored(unasked.bytes()).await);
    assert_eq!(h.snapshot().await, before);
    h.stop().await;
}
