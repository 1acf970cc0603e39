//! TLS for peer links: TLS 1.3 with mutual authentication against **pinned** Ed25519 keys.
//!
//! There is no certificate authority in detente. Each party has one long-term Ed25519 key
//! ([`PartySecret`]); duty officers compare fingerprints out of band and pin each other's
//! keys. The TLS handshake therefore carries RFC 7250 *raw public keys* instead of X.509
//! certificates: each side sends the SubjectPublicKeyInfo of its party key and proves
//! possession of the private key in `CertificateVerify`. Authentication is exactly "the key
//! presented is the pinned one, and the handshake signature verifies under it".
//!
//! * [`server_config`] accepts any client whose key is in a [`PinSet`] (the node's peer
//!   table, consulted on every handshake so that peers added at run time are accepted).
//! * [`client_config`] accepts only the single key expected for the peer being dialled.
//! * [`peer_key`] returns the authenticated key of the other side after the handshake.
//!
//! Deliberate restrictions:
//!
//! * **TLS 1.3 only.** TLS 1.2 is not offered, and the verifiers refuse TLS 1.2 signatures.
//! * **No resumption, no tickets, no 0-RTT.** A resumed handshake does not run the
//!   verifiers, so a key removed from the pin set would keep working through a ticket.
//!   Every connection is a full handshake; early data is never enabled.
//! * **Names are not used for authentication.** A TLS client must send some server name;
//!   use [`server_name`] (`detente.peer`) for every peer. Neither side checks it.
//! * **Ring only.** Configs are built with an explicit `ring` provider, never the
//!   process-wide default provider, so nothing here depends on how other code in the
//!   process has set up rustls.
//!
//! A caveat for callers: in TLS 1.3 the client finishes its handshake *before* the server
//! has checked the client's key. A client whose key is not pinned by the server therefore
//! sees `connect` succeed and only learns of the refusal on its first read (a fatal
//! `certificate_unknown` alert). A link must not be considered up until the first bytes
//! from the other side have arrived.
//!
//! When a verifier refuses a key it returns a `rustls::Error` whose text names the
//! fingerprints (the listener logs refusals, rate-limited: [`crate::gate`]); [`rejection`] recovers the typed [`TlsError`]
//! from the I/O error that `tokio-rustls` returns on the refusing side.

use std::fmt::Debug;
use std::sync::Arc;

use detente_proto::identity::{fingerprint, key_from_spki_der, spki_der};
use detente_proto::{PartyKey, PartySecret};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{AlwaysResolvesClientRawPublicKeys, Resumption};
use rustls::crypto::{verify_tls13_signature_with_raw_key, WebPkiSupportedAlgorithms};
use rustls::pki_types::{
    CertificateDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{AlwaysResolvesServerRawPublicKeys, NoServerSessionStorage};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, CommonState, DigitallySignedStruct, DistinguishedName, OtherError,
    PeerMisbehaved, SignatureScheme,
};

/// The server name every client sends (see [`server_name`]).
const SERVER_NAME: &str = "detente.peer";

/// The set of client keys a server accepts. The node implements this over its peer table;
/// it is consulted on every handshake, so changes take effect for the next connection.
pub trait PinSet: Send + Sync + Debug {
    /// Whether a client presenting this Ed25519 public key may connect.
    fn is_pinned(&self, key: &[u8; 32]) -> bool;
}

/// A fixed pin set, convenient for tests and tools.
impl PinSet for std::collections::BTreeSet<PartyKey> {
    fn is_pinned(&self, key: &[u8; 32]) -> bool {
        // A key that is not a valid point cannot be in the set.
        PartyKey::from_bytes(*key).is_ok_and(|key| self.contains(&key))
    }
}

/// Errors of the TLS layer: building configurations, and the reasons a verifier refuses a
/// peer (carried inside the `rustls::Error` of the failed handshake; see [`rejection`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Our own party key could not be turned into a TLS signing key.
    ///
    /// Cause: ring rejected the PKCS#8 encoding of the key, or the public key it derived does
    /// not match [`PartySecret::public`]. Either means corrupt key material or an encoding
    /// bug, never a peer problem. Remedy: restore the key file from backup; if the key file is
    /// intact, report a bug.
    #[error("cannot use own party key for TLS: {0}")]
    OwnKey(String),

    /// rustls refused to build a configuration.
    ///
    /// Cause: the crypto provider does not support TLS 1.3 (a build with unexpected rustls
    /// features). Remedy: rebuild with the workspace's rustls features; this is a bug.
    #[error("cannot build TLS configuration: {0}")]
    Config(#[source] rustls::Error),

    /// A client presented a key that is not in the server's pin set; the connection was
    /// refused.
    ///
    /// Cause: the peer has not been added (or was removed), or a stranger connected.
    /// Remedy: if this is a legitimate new peer, compare the fingerprint with its duty
    /// officer by telephone and pin its key; otherwise nothing to do.
    #[error("peer presented key {} which is not a pinned peer", fingerprint(.presented))]
    UnpinnedPeer {
        /// The raw Ed25519 public key the client presented (not necessarily a valid point).
        presented: [u8; 32],
    },

    /// The server we dialled presented a different key from the one pinned for it; the
    /// connection was refused.
    ///
    /// Cause: the address now belongs to someone else, the peer replaced its key, or the
    /// connection is being intercepted. Remedy: do not re-pin on the strength of this
    /// connection; confirm the new fingerprint with the peer's duty officer by telephone.
    #[error(
        "peer presented key {} but {} is pinned for it",
        fingerprint(.presented),
        fingerprint(.expected)
    )]
    UnexpectedPeerKey {
        /// The key pinned for the peer we dialled.
        expected: [u8; 32],
        /// The raw Ed25519 public key the server presented.
        presented: [u8; 32],
    },

    /// The peer presented a credential that is not a single Ed25519 raw public key (for
    /// example an X.509 chain or another key type).
    ///
    /// Cause: the other side is not a detente node, or runs an incompatible version.
    /// Remedy: check the address and the peer's software version.
    #[error("peer presented a credential that is not a single Ed25519 raw public key")]
    NotEd25519Key,
}

/// The server name a client must pass to `tokio_rustls::TlsConnector::connect`.
///
/// It is the same fixed name (`detente.peer`) for every peer: names play no part in
/// authentication, which is by pinned key only.
pub fn server_name() -> ServerName<'static> {
    // A constant, not peer data; `server_name_is_the_fixed_placeholder` exercises it.
    ServerName::try_from(SERVER_NAME).expect("detente.peer is a valid DNS name")
}

/// A server configuration that presents `own` as a raw public key and requires every client
/// to present a raw Ed25519 key that `pins` accepts.
pub fn server_config(
    own: &PartySecret,
    pins: Arc<dyn PinSet>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certified = certified_key(own)?;
    let verifier = PinnedClientVerifier {
        pins,
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(AlwaysResolvesServerRawPublicKeys::new(certified)));
    // Resumption would skip the client verifier (and so the pin check): issue no tickets
    // and keep no session cache. The default ticketer already produces none.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.max_early_data_size = 0;
    config.send_half_rtt_data = false;
    Ok(Arc::new(config))
}

/// A client configuration that presents `own` as a raw public key and accepts only a server
/// presenting `expected`.
pub fn client_config(
    own: &PartySecret,
    expected: PartyKey,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certified = certified_key(own)?;
    let verifier = PinnedServerVerifier {
        expected,
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(AlwaysResolvesClientRawPublicKeys::new(certified)));
    // Every connection is a full handshake so that the verifier runs every time.
    config.resumption = Resumption::disabled();
    config.enable_early_data = false;
    Ok(Arc::new(config))
}

/// The authenticated key of the other side, once the handshake has completed.
///
/// `None` before the handshake completes (or if the peer presented no key, which the
/// configurations of this module never allow).
pub fn peer_key(conn: &CommonState) -> Option<PartyKey> {
    let spki = conn.peer_certificates()?.first()?;
    let bytes = key_from_spki_der(spki.as_ref())?;
    PartyKey::from_bytes(bytes).ok()
}

/// Why this side refused the peer's key, given the I/O error `tokio-rustls` returned from a
/// failed handshake. `None` for any other failure — including being refused by the *other*
/// side, which only shows up here as a received alert.
pub fn rejection(err: &std::io::Error) -> Option<&TlsError> {
    let rustls_err = err.get_ref()?.downcast_ref::<rustls::Error>()?;
    match rustls_err {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            inner.downcast_ref::<Refusal>().map(|refusal| &refusal.0)
        }
        _ => None,
    }
}

/// Our key as a rustls `CertifiedKey` whose "chain" is the single SPKI of our public key.
fn certified_key(own: &PartySecret) -> Result<Arc<CertifiedKey>, TlsError> {
    let mut pkcs8 = own.pkcs8_der();
    let loaded =
        rustls::crypto::ring::sign::any_eddsa_type(&PrivatePkcs8KeyDer::from(pkcs8.as_slice()));
    // Best effort: do not leave a copy of the seed in freed memory (ring keeps its own).
    pkcs8.fill(0);
    std::hint::black_box(&pkcs8);
    let signing_key = loaded.map_err(|e| TlsError::OwnKey(e.to_string()))?;

    let spki = spki_der(own.public().as_bytes());
    // `CertifiedKey::keys_match` parses X.509 and cannot check a raw key, so compare the
    // SPKI ring derived from the private key with the one we will present.
    match signing_key.public_key() {
        Some(derived) if derived.as_ref() == spki.as_slice() => {}
        _ => {
            return Err(TlsError::OwnKey(
                "the public key derived from the private key does not match".into(),
            ))
        }
    }
    Ok(Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(spki)],
        signing_key,
    )))
}

/// A refusal as a `rustls::Error`. `CertificateError::Other` makes rustls send a
/// `certificate_unknown` alert and lets [`rejection`] recover our typed error.
fn refuse(err: TlsError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Refusal(err)))))
}

/// Carries a [`TlsError`] inside a `rustls::Error`. rustls formats `CertificateError::Other`
/// with `{:?}`, so `Debug` here prints the human-readable message: that way the error text
/// of a failed handshake names the fingerprints instead of dumping key bytes.
struct Refusal(TlsError);

impl Debug for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Refusal {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// The Ed25519 key inside a presented raw-public-key "chain", which must be exactly one SPKI.
fn presented_key(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<[u8; 32], rustls::Error> {
    if !intermediates.is_empty() {
        tracing::warn!("peer presented more than one credential; refusing");
        return Err(refuse(TlsError::NotEd25519Key));
    }
    key_from_spki_der(end_entity.as_ref()).ok_or_else(|| {
        tracing::warn!(
            "peer presented a credential that is not an Ed25519 raw public key; refusing"
        );
        refuse(TlsError::NotEd25519Key)
    })
}

/// Checks a TLS 1.3 `CertificateVerify` signature against the presented raw key.
fn verify_signature(
    message: &[u8],
    spki: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    // We advertise Ed25519 only; the provider would also map other schemes, which could
    // never verify under an Ed25519 key, so refuse them outright with rustls' own error.
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme.into());
    }
    verify_tls13_signature_with_raw_key(
        message,
        &SubjectPublicKeyInfoDer::from(spki.as_ref()),
        dss,
        algorithms,
    )
}

/// The error for a TLS 1.2 signature; unreachable with TLS 1.3-only configs, refused anyway.
fn tls12_refused() -> rustls::Error {
    rustls::Error::General("TLS 1.2 is not allowed on detente peer links".into())
}

/// Client side: the server must present exactly the key pinned for the peer we dial.
#[derive(Debug)]
struct PinnedServerVerifier {
    expected: PartyKey,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        // Names and time play no part: the key is pinned and raw keys do not expire.
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = presented_key(end_entity, intermediates)?;
        if presented != *self.expected.as_bytes() {
            let err = TlsError::UnexpectedPeerKey {
                expected: *self.expected.as_bytes(),
                presented,
            };
            tracing::warn!("{err}; refusing");
            return Err(refuse(err));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // rustls only calls this with the `cert` that passed `verify_server_cert`.
        verify_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// Server side: the client must present a key in the pin set.
#[derive(Debug)]
struct PinnedClientVerifier {
    pins: Arc<dyn PinSet>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for PinnedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No CAs to hint at.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let presented = presented_key(end_entity, intermediates)?;
        if !self.pins.is_pinned(&presented) {
            // Logged by the listener, rate-limited (a redialing stranger must not flood
            // the log; see crate::gate).
            return Err(refuse(TlsError::UnpinnedPeer { presented }));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // rustls only calls this with the `cert` that passed `verify_client_cert`.
        verify_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}
