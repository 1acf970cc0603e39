//! Peer-link TLS over real TCP on 127.0.0.1: pinned raw public keys, both directions.

use std::collections::BTreeSet;
use std::io;
use std::sync::{Arc, Mutex};

use detente_node::tls::{self, PinSet, TlsError};
use detente_proto::{PartyKey, PartySecret};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn party(n: u8) -> PartySecret {
    PartySecret::from_seed([n; 32])
}

fn pins(keys: &[PartyKey]) -> Arc<dyn PinSet> {
    Arc::new(keys.iter().copied().collect::<BTreeSet<_>>())
}

/// Outcome of one side of a connection attempt.
struct Side {
    /// The handshake (and, for the client, the first read) result.
    result: io::Result<()>,
    peer: Option<PartyKey>,
    version: Option<rustls::ProtocolVersion>,
    kind: Option<rustls::HandshakeKind>,
}

impl Side {
    fn failed(e: io::Error) -> Self {
        Side {
            result: Err(e),
            peer: None,
            version: None,
            kind: None,
        }
    }
}

/// Runs a server for `server` pinning `pinned` and a client for `client` expecting
/// `expected`; each side writes a greeting and reads the other's.
async fn run(
    server: &PartySecret,
    pinned: &[PartyKey],
    client: &PartySecret,
    expected: PartyKey,
) -> (Side, Side) {
    let acceptor = TlsAcceptor::from(tls::server_config(server, pins(pinned)).unwrap());
    let connector = TlsConnector::from(tls::client_config(client, expected).unwrap());
    connect(&acceptor, &connector).await
}

/// One connection between an acceptor and a connector (configs may be reused across calls).
async fn connect(acceptor: &TlsAcceptor, connector: &TlsConnector) -> (Side, Side) {
    let acceptor = acceptor.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();

    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut stream = match acceptor.accept(tcp).await {
            Ok(stream) => stream,
            Err(e) => return Side::failed(e),
        };
        let (_, conn) = stream.get_ref();
        let peer = tls::peer_key(conn);
        let version = conn.protocol_version();
        let kind = conn.handshake_kind();
        let result = async {
            stream.write_all(b"hello from server").await?;
            stream.flush().await?;
            let mut buf = [0u8; 17];
            stream.read_exact(&mut buf).await?;
            assert_eq!(&buf, b"hello from client");
            stream.shutdown().await
        }
        .await;
        Side {
            result,
            peer,
            version,
            kind,
        }
    });

    let tcp = TcpStream::connect(addr).await.unwrap();
    let client_side = match connector.connect(tls::server_name(), tcp).await {
        Err(e) => Side::failed(e),
        Ok(mut stream) => {
            let (_, conn) = stream.get_ref();
            let peer = tls::peer_key(conn);
            let version = conn.protocol_version();
            let kind = conn.handshake_kind();
            // In TLS 1.3 the client is done before the server has checked its key, so a
            // refusal by the server only shows on this first read.
            let result = async {
                stream.write_all(b"hello from client").await?;
                stream.flush().await?;
                let mut buf = [0u8; 17];
                stream.read_exact(&mut buf).await?;
                assert_eq!(&buf, b"hello from server");
                Ok(())
            }
            .await;
            Side {
                result,
                peer,
                version,
                kind,
            }
        }
    };
    let server_side = server_task.await.unwrap();
    (server_side, client_side)
}

#[tokio::test]
async fn mutually_pinned_parties_talk_and_see_each_others_key() {
    let (a, b) = (party(1), party(2));
    let (server, client) = run(&a, &[b.public()], &b, a.public()).await;
    server.result.expect("server side");
    client.result.expect("client side");
    assert_eq!(server.peer, Some(b.public()));
    assert_eq!(client.peer, Some(a.public()));
}

#[tokio::test]
async fn negotiated_version_is_tls13() {
    let (a, b) = (party(1), party(2));
    let (server, client) = run(&a, &[b.public()], &b, a.public()).await;
    assert_eq!(server.version, Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(client.version, Some(rustls::ProtocolVersion::TLSv1_3));
}

#[tokio::test]
async fn server_with_several_pins_accepts_any_of_them() {
    let (a, b, c) = (party(1), party(2), party(3));
    let pinned = [c.public(), b.public()];
    let (server, client) = run(&a, &pinned, &b, a.public()).await;
    server.result.expect("server side");
    client.result.expect("client side");
}

#[tokio::test]
async fn unpinned_client_is_refused() {
    let (a, b, stranger) = (party(1), party(2), party(9));
    let (server, client) = run(&a, &[b.public()], &stranger, a.public()).await;

    let server_err = server.result.expect_err("server must refuse the stranger");
    match tls::rejection(&server_err) {
        Some(TlsError::UnpinnedPeer { presented }) => {
            assert_eq!(presented, stranger.public().as_bytes());
        }
        other => panic!("unexpected rejection {other:?} from {server_err}"),
    }
    let text = server_err.to_string();
    assert!(text.contains(&stranger.public().fingerprint()), "{text}");
    assert!(text.contains("not a pinned peer"), "{text}");
    assert_eq!(server.peer, None);

    // The client learns of it as an alert on its first read. (If the server closes while
    // the client's greeting is still unread in its socket, the kernel may answer with a
    // reset that overtakes the alert; either way the client must not get through.)
    let client_err = client.result.expect_err("client must see the refusal");
    assert!(
        client_err.to_string().contains("CertificateUnknown")
            || client_err.kind() == io::ErrorKind::ConnectionReset,
        "{client_err}"
    );
}

#[tokio::test]
async fn client_refuses_a_server_presenting_another_key() {
    let (a, b, impostor) = (party(1), party(2), party(7));
    // The impostor would accept b; b expects a.
    let (server, client) = run(&impostor, &[b.public()], &b, a.public()).await;

    let client_err = client.result.expect_err("client must refuse the impostor");
    assert!(client.peer.is_none());
    match tls::rejection(&client_err) {
        Some(TlsError::UnexpectedPeerKey {
            expected,
            presented,
        }) => {
            assert_eq!(expected, a.public().as_bytes());
            assert_eq!(presented, impostor.public().as_bytes());
        }
        other => panic!("unexpected rejection {other:?} from {client_err}"),
    }
    server.result.expect_err("server handshake must fail too");
}

#[tokio::test]
async fn refusal_text_and_log_name_both_fingerprints() {
    let logs = capture::install();

    // Parties used by no other test, so that the log line can only come from this one.
    let (a, b, impostor) = (party(11), party(12), party(17));
    let (_, client) = run(&impostor, &[b.public()], &b, a.public()).await;

    let expected_text = format!(
        "peer presented key {} but {} is pinned for it",
        impostor.public().fingerprint(),
        a.public().fingerprint()
    );
    let err = client.result.expect_err("client must refuse the impostor");
    assert!(err.to_string().contains(&expected_text), "{err}");

    let logs = logs.lock().unwrap();
    assert!(
        logs.iter()
            .any(|(level, line)| *level == tracing::Level::WARN && line.contains(&expected_text)),
        "no warning containing {expected_text:?} in {logs:?}"
    );
}

#[tokio::test]
async fn reconnecting_is_always_a_full_handshake() {
    // No tickets, no session cache: the verifiers (and so the pin checks) run every time.
    let (a, b) = (party(1), party(2));
    let acceptor = TlsAcceptor::from(tls::server_config(&a, pins(&[b.public()])).unwrap());
    let connector = TlsConnector::from(tls::client_config(&b, a.public()).unwrap());
    for _ in 0..3 {
        let (server, client) = connect(&acceptor, &connector).await;
        server.result.expect("server side");
        client.result.expect("client side");
        assert_eq!(server.kind, Some(rustls::HandshakeKind::Full));
        assert_eq!(client.kind, Some(rustls::HandshakeKind::Full));
    }
}

/// A pin set that changes at run time, as the node's peer table does.
#[derive(Debug, Default)]
struct PeerTable(Mutex<BTreeSet<PartyKey>>);

impl PinSet for PeerTable {
    fn is_pinned(&self, key: &[u8; 32]) -> bool {
        let table = self.0.lock().unwrap();
        table.iter().any(|pinned| pinned.as_bytes() == key)
    }
}

#[tokio::test]
async fn pin_set_changes_apply_to_the_next_handshake() {
    let (a, b) = (party(1), party(2));
    let table = Arc::new(PeerTable::default());
    let acceptor = TlsAcceptor::from(tls::server_config(&a, table.clone()).unwrap());
    let connector = TlsConnector::from(tls::client_config(&b, a.public()).unwrap());

    let (server, _) = connect(&acceptor, &connector).await;
    assert!(server.result.is_err(), "b is not pinned yet");

    table.0.lock().unwrap().insert(b.public());
    let (server, client) = connect(&acceptor, &connector).await;
    server.result.expect("b is pinned now");
    client.result.expect("client side");

    table.0.lock().unwrap().clear();
    let (server, _) = connect(&acceptor, &connector).await;
    assert!(server.result.is_err(), "b was removed");
}

#[test]
fn server_name_is_the_fixed_placeholder() {
    assert_eq!(tls::server_name().to_str(), "detente.peer");
}

/// A minimal tracing subscriber that records (level, message) of every event.
///
/// Installed as the *global* default: a thread-local default (`set_default`) is flaky
/// when other tests hit the same callsites concurrently, because tracing caches callsite
/// interest process-wide.
mod capture {
    use std::fmt::Write;
    use std::sync::{Arc, Mutex, OnceLock};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Level, Metadata, Subscriber};

    type Logs = Arc<Mutex<Vec<(Level, String)>>>;

    /// The captured events of the whole test binary, installing the subscriber once.
    pub fn install() -> Logs {
        static LOGS: OnceLock<Logs> = OnceLock::new();
        LOGS.get_or_init(|| {
            let logs = Logs::default();
            tracing::subscriber::set_global_default(Capture(logs.clone()))
                .expect("no other global subscriber in this test binary");
            logs
        })
        .clone()
    }

    struct Capture(Logs);

    struct Message(String);

    impl Visit for Message {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                let _ = write!(self.0, "{value:?}");
            }
        }
    }

    impl Subscriber for Capture {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut message = Message(String::new());
            event.record(&mut message);
            if let Ok(mut logs) = self.0.lock() {
                logs.push((*event.metadata().level(), message.0));
            }
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }
}
