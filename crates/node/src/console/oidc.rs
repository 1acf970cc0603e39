//! Operator sign-in through the organization's OpenID Connect provider: the authorization
//! code flow with PKCE (RFC 7636, S256), a nonce and a state, verified by the `openidconnect`
//! crate (signature against the provider's published keys, issuer, audience, expiry, nonce).
//! The operator's role comes from a configured claim (`oidc.role_claim`, mapped through
//! `oidc.role_map`); local accounts stay for air-gapped sites (`config::OidcSection`).
//!
//! - `GET /login/oidc` starts a sign-in: it remembers (state, nonce, PKCE verifier) in a
//!   bounded in-memory table, binds them to this browser with a cookie, and sends the browser
//!   to the provider.
//! - `GET /login/oidc/callback` takes the provider's answer: the state must be one this node
//!   issued to this browser, the `iss` the provider names must be its own (RFC 9207; required
//!   when its metadata promises it), the code is exchanged with the PKCE verifier, the ID
//!   token must verify with the nonce; a login or role claim the ID token lacks is read from
//!   the userinfo endpoint (same subject). Then the operator's account is created or its role
//!   updated, and a session starts like a local login's. Every refusal and every sign-in is
//!   audited; the refusal page is in the language the browser asks for.
//! - Logging out of such a session ends it here and, when the provider advertises an
//!   `end_session_endpoint`, sends the browser there (RP-Initiated Logout 1.0, with the ID
//!   token as `id_token_hint`), so that the next operator at the desk is not signed in
//!   silently through the provider's own session. The hints are kept in bounded memory: after
//!   a restart, logging out ends the local session only.
//! - `oidc.ca_file` adds an organization's own certificate authorities for the provider.
//!
//! An operator signed in this way has no password here: the account's password field holds
//! [`OIDC_PASSWORD_MARK`], which no password verifies against, and a local account's name
//! is never taken over by a sign-in through the provider.

use std::collections::HashMap;
use std::io::Read;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthenticationFlow, CoreClaimName, CoreClaimType, CoreClient,
    CoreClientAuthMethod, CoreGrantType, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm, CoreResponseMode, CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndSessionUrl, IssuerUrl, LogoutRequest,
    Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, PostLogoutRedirectUrl,
    RedirectUrl, Scope, TokenResponse,
};
use serde::{Deserialize, Serialize};

use super::auth::{self, Role};
use maud::{html, Markup};

use super::html::page_in;
use super::{audit, cookie, set_cookie, Source, SESSION_COOKIE};
use crate::config::{OidcSection, OIDC_CALLBACK_PATH};
use crate::i18n::{request_lang, Texts};
use crate::{now_ms, Shared};

/// The cookie that binds a sign-in in progress to the browser that started it.
pub const OIDC_COOKIE: &str = "detente_oidc";
/// What the password field of an account signed in through the provider holds: not a PHC
/// string, so no password ever verifies against it.
pub const OIDC_PASSWORD_MARK: &str = "!oidc";
/// Sign-ins started and not finished, at most; one more pushes out the oldest.
pub const PENDING_MAX: usize = 256;
/// How long a started sign-in may take at the provider.
pub const PENDING_MS: u64 = 10 * 60 * 1000;
/// Largest answer accepted from the provider (discovery document, keys, token response).
pub const PROVIDER_RESPONSE_BYTES_MAX: usize = 256 * 1024;
/// How long one request to the provider may take.
pub const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);
/// Values of the role claim looked at, at most.
pub const ROLE_VALUES_MAX: usize = 256;
/// Longest text of the provider's own error kept for the page and the audit log.
const PROVIDER_ERROR_CHARS_MAX: usize = 200;
/// Largest `oidc.ca_file` read (a bundle of an organization's authorities, in PEM).
pub const CA_FILE_BYTES_MAX: usize = 1024 * 1024;
/// Signed-in sessions whose provider logout is remembered, at most; one more pushes out the
/// oldest (whose logout then ends the local session only).
pub const LOGOUT_HINTS_MAX: usize = 512;
/// Longest provider logout URL remembered (it carries the ID token); a longer one is kept
/// without the `id_token_hint`, which RP-Initiated Logout allows.
pub const LOGOUT_URL_BYTES_MAX: usize = 8 * 1024;
const _: () = assert!(LOGOUT_HINTS_MAX * LOGOUT_URL_BYTES_MAX <= 4 * 1024 * 1024);

/// One sign-in in progress.
#[derive(Debug, Clone)]
struct Pending {
    /// SHA-256 of the binding cookie's value.
    binding: [u8; 32],
    nonce: String,
    verifier: String,
    started_ms: u64,
}

/// Where a session signed in through the provider goes on logout.
#[derive(Debug, Clone)]
struct LogoutHint {
    url: String,
    created_ms: u64,
}

/// Sign-ins in progress, by state, and the provider logouts of sessions signed in through
/// it, by the session token's hash; both in bounded memory.
#[derive(Debug, Default)]
pub struct OidcState {
    pending: Mutex<HashMap<String, Pending>>,
    logouts: Mutex<HashMap<[u8; 32], LogoutHint>>,
}

impl OidcState {
    fn insert(&self, state: String, pending: Pending, now: u64) {
        let Ok(mut map) = self.pending.lock() else {
            return;
        };
        map.retain(|_, p| now.saturating_sub(p.started_ms) < PENDING_MS);
        while map.len() >= PENDING_MAX {
            let oldest = map
                .iter()
                .min_by_key(|(_, p)| p.started_ms)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => map.remove(&k),
                None => break,
            };
        }
        map.insert(state, pending);
    }

    /// The sign-in this state names, once: a state is never accepted twice.
    fn take(&self, state: &str, now: u64) -> Option<Pending> {
        let mut map = self.pending.lock().ok()?;
        map.remove(state)
            .filter(|p| now.saturating_sub(p.started_ms) < PENDING_MS)
    }

    fn remember_logout(&self, session: [u8; 32], url: String, now: u64) {
        let Ok(mut map) = self.logouts.lock() else {
            return;
        };
        map.retain(|_, h| now.saturating_sub(h.created_ms) < auth::SESSION_MS as u64);
        while map.len() >= LOGOUT_HINTS_MAX {
            let oldest = map
                .iter()
                .min_by_key(|(_, h)| h.created_ms)
                .map(|(k, _)| *k);
            match oldest {
                Some(k) => map.remove(&k),
                None => break,
            };
        }
        map.insert(
            session,
            LogoutHint {
                url,
                created_ms: now,
            },
        );
    }

    /// The provider logout of the session whose token hashes to `session`, once.
    pub fn take_logout(&self, session: [u8; 32]) -> Option<String> {
        self.logouts.lock().ok()?.remove(&session).map(|h| h.url)
    }

    pub fn len(&self) -> usize {
        self.pending.lock().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a sign-in through the provider was refused (shown to the operator and audited).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error("sign-in through an OpenID provider is not configured on this node")]
    Off,
    #[error("OpenID Connect is misconfigured on this node: {0}")]
    Misconfigured(String),
    #[error("the identity provider cannot be reached or answered wrongly: {0}")]
    Provider(String),
    #[error("the identity provider refused: {0}")]
    ProviderRefused(String),
    #[error("this sign-in was not started here, was already used, or expired (state)")]
    UnknownState,
    #[error("this sign-in was started in another browser")]
    OtherBrowser,
    #[error("the identity provider's token was refused: {0}")]
    BadToken(String),
    #[error("the identity provider gives no usable login name in claim {0:?}")]
    NoLogin(String),
    #[error("claim {claim:?} maps to no console role")]
    NoRole { claim: String },
    #[error("claim {claim:?} maps to several console roles ({roles}); ask for one")]
    SeveralRoles { claim: String, roles: String },
    #[error("a local account is named {0:?}; it cannot be signed in through the provider")]
    LocalAccount(String),
    #[error("the account {0:?} is disabled on this node; ask an administrator")]
    Disabled(String),
    #[error("too many sign-in attempts from this address; wait a few minutes")]
    Throttled,
    #[error("the store is unavailable")]
    Store,
    #[error("the answer names issuer {0:?}, not this node's identity provider (RFC 9207)")]
    WrongIssuer(String),
    #[error("the identity provider promises to name itself in its answer and did not (RFC 9207)")]
    NoIssuer,
    #[error("the identity provider's userinfo answer was refused: {0}")]
    Userinfo(String),
}

impl Refusal {
    /// The refusal in `lang`, for the page (the audit log keeps the English `Display`).
    pub fn text(&self, texts: &Texts, lang: &str) -> String {
        let one = |k: &'static str, v: &String| vec![(k, v.clone())];
        let (key, args) = match self {
            Refusal::Off => ("oidc-refusal-off", vec![]),
            Refusal::Misconfigured(d) => ("oidc-refusal-misconfigured", one("detail", d)),
            Refusal::Provider(d) => ("oidc-refusal-provider", one("detail", d)),
            Refusal::ProviderRefused(d) => ("oidc-refusal-provider-refused", one("detail", d)),
            Refusal::UnknownState => ("oidc-refusal-unknown-state", vec![]),
            Refusal::OtherBrowser => ("oidc-refusal-other-browser", vec![]),
            Refusal::BadToken(d) => ("oidc-refusal-bad-token", one("detail", d)),
            Refusal::NoLogin(c) => ("oidc-refusal-no-login", one("claim", c)),
            Refusal::NoRole { claim } => ("oidc-refusal-no-role", one("claim", claim)),
            Refusal::SeveralRoles { claim, roles } => (
                "oidc-refusal-several-roles",
                vec![("claim", claim.clone()), ("roles", roles.clone())],
            ),
            Refusal::LocalAccount(l) => ("oidc-refusal-local-account", one("login", l)),
            Refusal::Disabled(l) => ("oidc-refusal-disabled", one("login", l)),
            Refusal::Throttled => ("oidc-refusal-throttled", vec![]),
            Refusal::Store => ("oidc-refusal-store", vec![]),
            Refusal::WrongIssuer(i) => ("oidc-refusal-wrong-issuer", one("issuer", i)),
            Refusal::NoIssuer => ("oidc-refusal-no-issuer", vec![]),
            Refusal::Userinfo(d) => ("oidc-refusal-userinfo", one("detail", d)),
        };
        texts.text_with(lang, key, &args)
    }
}

/// The settings of `oidc.*`, checked for use.
struct Settings {
    section: OidcSection,
    roles: Vec<(String, Role)>,
}

impl Settings {
    fn load(shared: &Shared) -> Result<Settings, Refusal> {
        let section = shared
            .config
            .read()
            .map(|c| c.oidc.clone())
            .map_err(|_| Refusal::Misconfigured("configuration unreadable".into()))?;
        if !section.enabled() {
            return Err(Refusal::Off);
        }
        for (key, value) in [
            ("oidc.client_id", &section.client_id),
            ("oidc.redirect_url", &section.redirect_url),
        ] {
            if value.is_empty() {
                return Err(Refusal::Misconfigured(format!("{key} is not set")));
            }
        }
        let pairs = section
            .role_pairs()
            .map_err(|e| Refusal::Misconfigured(e.to_string()))?;
        let mut roles = Vec::new();
        for (value, role) in pairs {
            let role = Role::parse(&role).ok_or_else(|| {
                Refusal::Misconfigured(format!("oidc.role_map: {role:?} is not a role"))
            })?;
            roles.push((value, role));
        }
        Ok(Settings { section, roles })
    }

    fn claim<'a>(&'a self, configured: &'a str, default: &'a str) -> &'a str {
        if configured.is_empty() {
            default
        } else {
            configured
        }
    }

    fn role_claim(&self) -> &str {
        self.claim(&self.section.role_claim, "roles")
    }

    fn login_claim(&self) -> &str {
        self.claim(&self.section.login_claim, "preferred_username")
    }
}

/// Map the role claim's values (a string or a list of strings) to exactly one role: through
/// `map` when it has pairs, else by role name.
pub fn map_role(
    claims: &serde_json::Value,
    claim: &str,
    map: &[(String, Role)],
) -> Result<Role, Refusal> {
    let values: Vec<&str> = match claims.get(claim) {
        Some(serde_json::Value::String(s)) => vec![s.as_str()],
        Some(serde_json::Value::Array(list)) => list
            .iter()
            .take(ROLE_VALUES_MAX)
            .filter_map(|v| v.as_str())
            .collect(),
        _ => Vec::new(),
    };
    let mut roles: Vec<Role> = Vec::new();
    for value in values {
        let role = if map.is_empty() {
            Role::parse(value)
        } else {
            map.iter().find(|(v, _)| v == value).map(|(_, r)| *r)
        };
        if let Some(role) = role.filter(|r| !roles.contains(r)) {
            roles.push(role);
        }
    }
    match roles.as_slice() {
        [one] => Ok(*one),
        [] => Err(Refusal::NoRole {
            claim: claim.to_string(),
        }),
        several => Err(Refusal::SeveralRoles {
            claim: claim.to_string(),
            roles: several
                .iter()
                .map(|r| r.name())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// Errors of the HTTP client that talks to the provider.
#[derive(Debug, thiserror::Error)]
enum HttpError {
    #[error("{0}")]
    Request(#[from] reqwest::Error),
    #[error("the answer is larger than {PROVIDER_RESPONSE_BYTES_MAX} bytes")]
    TooLarge,
    #[error("{0}")]
    Http(#[from] openidconnect::http::Error),
}

/// The HTTP client that talks to the provider: no redirects (a provider's answer is never
/// followed elsewhere), a timeout, and a bound on the size of every answer.
struct Http(reqwest::Client);

fn http_client(section: &OidcSection) -> Result<Http, Refusal> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(PROVIDER_TIMEOUT);
    for root in provider_roots(&section.ca_file)? {
        builder = builder.add_root_certificate(root);
    }
    builder.build().map(Http).map_err(|e| {
        if section.ca_file.is_empty() {
            Refusal::Provider(error_chain(&e))
        } else {
            Refusal::Misconfigured(format!(
                "oidc.ca_file {}: {}",
                section.ca_file,
                error_chain(&e)
            ))
        }
    })
}

/// The certificate authorities of `oidc.ca_file` (PEM, one or more), none when it is empty.
/// A file that cannot be read, is too large or holds no certificate is a configuration
/// error that says which file and why.
pub fn provider_roots(path: &str) -> Result<Vec<reqwest::Certificate>, Refusal> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let bad = |why: String| Refusal::Misconfigured(format!("oidc.ca_file {path}: {why}"));
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(CA_FILE_BYTES_MAX as u64 + 1).read_to_end(&mut bytes))
        .map_err(|e| bad(e.to_string()))?;
    if bytes.len() > CA_FILE_BYTES_MAX {
        return Err(bad(format!("larger than {CA_FILE_BYTES_MAX} bytes")));
    }
    let roots = reqwest::Certificate::from_pem_bundle(&bytes).map_err(|e| bad(error_chain(&e)))?;
    if roots.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(roots)
}

type HttpFuture<'c> = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<openidconnect::HttpResponse, HttpError>>
            + Send
            + 'c,
    >,
>;

impl<'c> openidconnect::AsyncHttpClient<'c> for Http {
    type Error = HttpError;
    type Future = HttpFuture<'c>;

    fn call(&'c self, request: openidconnect::HttpRequest) -> Self::Future {
        Box::pin(send(&self.0, request))
    }
}

async fn send(
    client: &reqwest::Client,
    request: openidconnect::HttpRequest,
) -> Result<openidconnect::HttpResponse, HttpError> {
    let (parts, body) = request.into_parts();
    let mut response = client
        .request(parts.method, parts.uri.to_string())
        .headers(parts.headers)
        .body(body)
        .send()
        .await?;
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if bytes.len() + chunk.len() > PROVIDER_RESPONSE_BYTES_MAX {
            return Err(HttpError::TooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    let mut out = openidconnect::http::Response::builder()
        .status(response.status())
        .body(bytes)?;
    *out.headers_mut() = response.headers().clone();
    Ok(out)
}

/// What this node reads of the provider's metadata beyond the core: RP-Initiated Logout's
/// `end_session_endpoint` and RFC 9207's promise to name itself in every answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExtraMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    end_session_endpoint: Option<EndSessionUrl>,
    #[serde(default)]
    authorization_response_iss_parameter_supported: bool,
}

impl openidconnect::AdditionalProviderMetadata for ExtraMetadata {}

type Metadata = openidconnect::ProviderMetadata<
    ExtraMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

type ProviderClient = CoreClient<
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

/// The provider's metadata (discovery; the issuer must match) and this node's client there.
async fn provider_client(
    settings: &Settings,
    http: &Http,
) -> Result<(ProviderClient, Metadata), Refusal> {
    let s = &settings.section;
    let issuer = IssuerUrl::new(s.issuer.clone())
        .map_err(|e| Refusal::Misconfigured(format!("oidc.issuer: {e}")))?;
    let redirect = RedirectUrl::new(s.redirect_url.clone())
        .map_err(|e| Refusal::Misconfigured(format!("oidc.redirect_url: {e}")))?;
    let metadata = Metadata::discover_async(issuer, http)
        .await
        .map_err(|e| Refusal::Provider(error_chain(&e)))?;
    let secret = (!s.client_secret.is_empty()).then(|| ClientSecret::new(s.client_secret.clone()));
    let client = CoreClient::from_provider_metadata(
        metadata.clone(),
        ClientId::new(s.client_id.clone()),
        secret,
    )
    .set_redirect_uri(redirect);
    Ok((client, metadata))
}

/// An error and its causes on one line (the crate's errors wrap the useful part).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text.chars().take(PROVIDER_ERROR_CHARS_MAX * 2).collect()
}

/// The login page's link to `/login/oidc`, when sign-in through a provider is configured.
pub fn login_link(shared: &Shared, lang: &str) -> Markup {
    let enabled = shared.config.read().is_ok_and(|c| c.oidc.enabled());
    if !enabled {
        return html! {};
    }
    let text = shared.console.i18n.text(lang, "login-oidc");
    html! { p.login-oidc { a href="/login/oidc" #login-oidc { (text) } } }
}

/// `GET /login/oidc`: start a sign-in at the provider.
pub async fn start(
    State(shared): State<std::sync::Arc<Shared>>,
    Source(source): Source,
    headers: HeaderMap,
) -> Response {
    match begin(&shared, source).await {
        Ok(response) => response,
        Err(refusal) => {
            let lang = request_lang(&shared, &headers);
            refused(&shared, &lang, "(oidc)", source, refusal).await
        }
    }
}

async fn begin(shared: &Shared, source: IpAddr) -> Result<Response, Refusal> {
    let settings = Settings::load(shared)?;
    // Each start costs the node a request to the provider and a pending entry: counted like
    // a login attempt until its callback comes back.
    let now = now_ms();
    if let auth::Attempt::Throttled { .. } = shared.console.limiter.begin("(oidc)", source, now) {
        return Err(Refusal::Throttled);
    }
    let http = http_client(&settings.section)?;
    let (client, _) = provider_client(&settings, &http).await?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut request = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .set_pkce_challenge(challenge);
    let scopes = if settings.section.scopes.is_empty() {
        "profile"
    } else {
        settings.section.scopes.as_str()
    };
    for scope in scopes.split_whitespace().filter(|s| *s != "openid") {
        request = request.add_scope(Scope::new(scope.to_string()));
    }
    let (url, state, nonce) = request.url();
    let binding = auth::random_token();
    let pending = Pending {
        binding: auth::token_hash(&binding),
        nonce: nonce.secret().clone(),
        verifier: verifier.secret().clone(),
        started_ms: now,
    };
    shared
        .console
        .oidc
        .insert(state.secret().clone(), pending, now);
    let mut response = Redirect::to(url.as_str()).into_response();
    if let Ok(v) = binding_cookie(shared, &binding, (PENDING_MS / 1000) as i64).parse() {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(response)
}

/// The binding cookie must come back on the provider's redirect, a top-level navigation from
/// another site: `SameSite=Lax`, not the console's usual `Strict`. It is good for one
/// sign-in only and for nothing else.
fn binding_cookie(shared: &Shared, value: &str, max_age_s: i64) -> String {
    let secure = if shared.console.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    format!(
        "{OIDC_COOKIE}={value}; Path=/login/oidc; HttpOnly; SameSite=Lax; Max-Age={max_age_s}{secure}"
    )
}

/// What the provider sends the browser back with.
#[derive(Debug, Default, Deserialize)]
pub struct CallbackQuery {
    #[serde(default)]
    code: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
    /// Who answered (RFC 9207), on success and on error alike.
    #[serde(default)]
    iss: Option<String>,
}

/// `GET /login/oidc/callback`: finish a sign-in.
pub async fn callback(
    State(shared): State<std::sync::Arc<Shared>>,
    Source(source): Source,
    headers: HeaderMap,
    Query(query): Query<CallbackQuery>,
) -> Response {
    let lang = request_lang(&shared, &headers);
    match finish(&shared, &headers, query).await {
        Ok(signed_in) => {
            shared.console.limiter.succeeded("(oidc)", source);
            let detail = format!(
                "{} through OpenID Connect (issuer {}, subject {})",
                signed_in.user.role, signed_in.issuer, signed_in.subject
            );
            audit(&shared, &signed_in.user.login, "login", &detail, source).await;
            session_response(&shared, &signed_in.token)
        }
        Err((login, Refusal::UnknownState)) => {
            // Anyone can send a made-up state without starting a sign-in: counted like a
            // failed login, and past the limit neither audited nor answered at length.
            let attempt = shared.console.limiter.begin("(oidc)", source, now_ms());
            if let auth::Attempt::Throttled { .. } = attempt {
                return refused(&shared, &lang, &login, source, Refusal::Throttled).await;
            }
            refused(&shared, &lang, &login, source, Refusal::UnknownState).await
        }
        Err((login, Refusal::Off)) => refused(&shared, &lang, &login, source, Refusal::Off).await,
        Err((login, refusal)) => {
            // The sign-in this node started came back: its start is no longer pending.
            shared.console.limiter.succeeded("(oidc)", source);
            refused(&shared, &lang, &login, source, refusal).await
        }
    }
}

/// A sign-in that succeeded: the account, the new session's token, who the provider says.
struct SignedIn {
    user: detente_store::console::UserRow,
    token: String,
    issuer: String,
    subject: String,
}

/// A refusal before the operator's login name is known.
fn anonymous(r: Refusal) -> (String, Refusal) {
    ("(oidc)".to_string(), r)
}

async fn finish(
    shared: &Shared,
    headers: &HeaderMap,
    query: CallbackQuery,
) -> Result<SignedIn, (String, Refusal)> {
    let settings = Settings::load(shared).map_err(anonymous)?;
    let now = now_ms();
    // The state first: it is what ties this answer to a sign-in this node started.
    let pending = shared
        .console
        .oidc
        .take(&query.state, now)
        .ok_or(Refusal::UnknownState)
        .map_err(anonymous)?;
    let binding = cookie(headers, OIDC_COOKIE).unwrap_or("");
    if binding.is_empty() || auth::token_hash(binding) != pending.binding {
        return Err(anonymous(Refusal::OtherBrowser));
    }
    let http = http_client(&settings.section).map_err(anonymous)?;
    let (client, metadata) = provider_client(&settings, &http).await.map_err(anonymous)?;
    // RFC 9207: an answer made by another provider (a mix-up attack) is refused before its
    // code goes anywhere, and so is its error.
    check_issuer(&metadata, query.iss.as_deref()).map_err(anonymous)?;
    if !query.error.is_empty() {
        let text = format!("{} {}", query.error, query.error_description);
        let text = text.trim().chars().take(PROVIDER_ERROR_CHARS_MAX).collect();
        return Err(anonymous(Refusal::ProviderRefused(text)));
    }
    let tokens = client
        .exchange_code(AuthorizationCode::new(query.code))
        .map_err(|e| anonymous(Refusal::Provider(e.to_string())))?
        .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier))
        .request_async(&http)
        .await
        .map_err(|e| anonymous(Refusal::ProviderRefused(error_chain(&e))))?;
    let id_token = tokens
        .id_token()
        .ok_or_else(|| anonymous(Refusal::BadToken("no ID token".into())))?;
    // Signature, issuer, audience, expiry and nonce, all at once.
    let verified = id_token
        .claims(&client.id_token_verifier(), &Nonce::new(pending.nonce))
        .map_err(|e| anonymous(Refusal::BadToken(error_chain(&e))))?;
    let issuer = verified.issuer().to_string();
    let subject = verified.subject().to_string();
    let claims = token_claims(&id_token.to_string()).map_err(anonymous)?;
    let access = tokens.access_token().secret();
    let claims = with_userinfo(&settings, claims, &http, &metadata, access, &subject)
        .await
        .map_err(anonymous)?;
    let login_claim = settings.login_claim().to_string();
    let login = claims
        .get(&login_claim)
        .and_then(|v| v.as_str())
        .filter(|l| auth::valid_login(l))
        .ok_or_else(|| anonymous(Refusal::NoLogin(login_claim.clone())))?
        .to_string();
    let fail = |r: Refusal| (login.clone(), r);
    let role = map_role(&claims, settings.role_claim(), &settings.roles).map_err(fail)?;
    let user = account(shared, &login, role, now).await.map_err(fail)?;
    let token = new_session(shared, &login, now).await.map_err(fail)?;
    if let Some(url) = logout_url(&settings.section, &metadata, &id_token.to_string()) {
        let session = auth::token_hash(&token);
        shared.console.oidc.remember_logout(session, url, now);
    }
    Ok(SignedIn {
        user,
        token,
        issuer,
        subject,
    })
}

/// The claims of the ID token just verified, for the configured claim names; a login or role
/// claim it lacks is taken from the userinfo endpoint (providers that keep the ID token small
/// put groups there only).
async fn with_userinfo(
    settings: &Settings,
    mut claims: serde_json::Value,
    http: &Http,
    metadata: &Metadata,
    access_token: &str,
    subject: &str,
) -> Result<serde_json::Value, Refusal> {
    let wanted = [settings.login_claim(), settings.role_claim()];
    if wanted.iter().all(|c| claims.get(*c).is_some()) {
        return Ok(claims);
    }
    let extra = userinfo(http, metadata, access_token, subject).await?;
    if let Some(own) = claims.as_object_mut() {
        for claim in wanted {
            if let (false, Some(v)) = (own.contains_key(claim), extra.get(claim)) {
                own.insert(claim.to_string(), v.clone());
            }
        }
    }
    Ok(claims)
}

/// RFC 9207 §2.4: the `iss` of an answer must be the provider's issuer, compared as strings;
/// a provider whose metadata promises `iss` must send it.
fn check_issuer(metadata: &Metadata, iss: Option<&str>) -> Result<(), Refusal> {
    let promised = metadata
        .additional_metadata()
        .authorization_response_iss_parameter_supported;
    match iss {
        Some(iss) if iss == metadata.issuer().as_str() => Ok(()),
        Some(iss) => Err(Refusal::WrongIssuer(
            iss.chars().take(PROVIDER_ERROR_CHARS_MAX).collect(),
        )),
        None if promised => Err(Refusal::NoIssuer),
        None => Ok(()),
    }
}

/// The provider's claims about the operator from its userinfo endpoint (OpenID Connect Core
/// §5.3), as JSON: asked with the access token, answered within the size bound, and only for
/// the subject of the verified ID token (§5.3.2: anything else may be a substitution).
async fn userinfo(
    http: &Http,
    metadata: &Metadata,
    access_token: &str,
    subject: &str,
) -> Result<serde_json::Value, Refusal> {
    let endpoint = metadata
        .userinfo_endpoint()
        .ok_or_else(|| Refusal::Userinfo("the provider has no userinfo endpoint".into()))?;
    let request = openidconnect::http::Request::builder()
        .uri(endpoint.as_str())
        .header(header::AUTHORIZATION, format!("Bearer {access_token}"))
        .header(header::ACCEPT, "application/json")
        .body(Vec::new())
        .map_err(|e| Refusal::Userinfo(e.to_string()))?;
    let answer = send(&http.0, request)
        .await
        .map_err(|e| Refusal::Userinfo(error_chain(&e)))?;
    if answer.status() != StatusCode::OK {
        return Err(Refusal::Userinfo(format!("HTTP {}", answer.status())));
    }
    // A signed or encrypted userinfo answer (application/jwt) is not read: JSON only.
    let claims: serde_json::Value = serde_json::from_slice(answer.body())
        .map_err(|e| Refusal::Userinfo(format!("not a JSON object: {e}")))?;
    match claims.get("sub").and_then(|s| s.as_str()) {
        Some(sub) if sub == subject && claims.is_object() => Ok(claims),
        _ => Err(Refusal::Userinfo(
            "its subject is not the ID token's".into(),
        )),
    }
}

/// Where logging out of this session sends the browser: the provider's end-session
/// endpoint, when it has one, with the ID token as a hint (when short enough to remember),
/// this node's client id, and the console's login page to come back to (registered at the
/// provider as a post-logout redirect URI, like the callback).
fn logout_url(section: &OidcSection, metadata: &Metadata, id_token: &str) -> Option<String> {
    let endpoint = metadata
        .additional_metadata()
        .end_session_endpoint
        .clone()?;
    let back = section
        .redirect_url
        .strip_suffix(OIDC_CALLBACK_PATH)
        .map(|base| format!("{base}/login"))
        .and_then(|u| PostLogoutRedirectUrl::new(u).ok());
    let build = |hint: Option<&str>| {
        let mut url = LogoutRequest::from(endpoint.clone())
            .set_client_id(ClientId::new(section.client_id.clone()));
        if let Some(back) = &back {
            url = url.set_post_logout_redirect_uri(back.clone());
        }
        let mut url = url.http_get_url();
        if let Some(hint) = hint {
            url.query_pairs_mut().append_pair("id_token_hint", hint);
        }
        url.to_string()
    };
    let with_hint = build(Some(id_token));
    if with_hint.len() <= LOGOUT_URL_BYTES_MAX {
        Some(with_hint)
    } else {
        Some(build(None)).filter(|u| u.len() <= LOGOUT_URL_BYTES_MAX)
    }
}

/// The payload of a compact JWS whose signature was already verified.
fn token_claims(compact: &str) -> Result<serde_json::Value, Refusal> {
    use base64::Engine;
    let payload = compact
        .split('.')
        .nth(1)
        .ok_or_else(|| Refusal::BadToken("not a compact JWS".into()))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|e| Refusal::BadToken(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| Refusal::BadToken(e.to_string()))
}

/// The account of an operator signed in through the provider: created on first sign-in, its
/// role updated when the provider's changed (which ends its other sessions). A local
/// account of the same name is never taken over.
async fn account(
    shared: &Shared,
    login: &str,
    role: Role,
    now: u64,
) -> Result<detente_store::console::UserRow, Refusal> {
    let existing = shared.store.user(login).await.map_err(|_| Refusal::Store)?;
    if let Some(user) = &existing {
        // An administrator disabled it (in the browser or by `detente user`): that is the
        // reason to give, whichever way the account signed in before.
        if user.password_hash == super::users::DISABLED_PASSWORD_MARK {
            return Err(Refusal::Disabled(login.to_string()));
        }
        if user.password_hash != OIDC_PASSWORD_MARK {
            return Err(Refusal::LocalAccount(login.to_string()));
        }
        if user.role == role.name() {
            return Ok(user.clone());
        }
    }
    let row = detente_store::console::UserRow {
        login: login.to_string(),
        role: role.name().to_string(),
        password_hash: OIDC_PASSWORD_MARK.to_string(),
        lang: existing
            .as_ref()
            .map_or_else(|| super::html::node_lang(shared), |u| u.lang.clone()),
        tz: existing.as_ref().map_or_else(String::new, |u| u.tz.clone()),
        created_at_ms: existing.as_ref().map_or(now as i64, |u| u.created_at_ms),
    };
    shared
        .store
        .put_user(&row)
        .await
        .map_err(|_| Refusal::Store)?;
    Ok(row)
}

async fn new_session(shared: &Shared, login: &str, now: u64) -> Result<String, Refusal> {
    let token = auth::random_token();
    let session = detente_store::console::SessionRow {
        token_hash: auth::token_hash(&token),
        login: login.to_string(),
        csrf: auth::random_token(),
        created_at_ms: now as i64,
        expires_at_ms: now as i64 + auth::SESSION_MS,
    };
    shared
        .store
        .create_session(&session)
        .await
        .map_err(|_| Refusal::Store)?;
    Ok(token)
}

/// The session cookie, then on to the console. Not a redirect: the browser arrived here
/// from the provider's site, and a `SameSite=Strict` cookie would not go with a redirect
/// that continues that navigation; a page of our own that moves on makes it same-site.
fn session_response(shared: &Shared, token: &str) -> Response {
    let body = "<!doctype html><html><head><meta charset=\"utf-8\">\
        <meta http-equiv=\"refresh\" content=\"0;url=/console\"><title>detente</title></head>\
        <body><p><a href=\"/console\">Continue to the console</a></p></body></html>";
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response();
    let h = response.headers_mut();
    let max_age = auth::SESSION_MS / 1000;
    for value in [
        set_cookie(shared, SESSION_COOKIE, token, max_age),
        binding_cookie(shared, "", 0),
    ] {
        if let Ok(v) = value.parse() {
            h.append(header::SET_COOKIE, v);
        }
    }
    response
}

/// After the local session ended: on to the provider's end-session endpoint. A page that
/// moves on rather than a redirect, since the console's `form-action 'self'` would stop the
/// logout form's redirect to another site.
pub fn logout_page(shared: &Shared, lang: &str, url: &str) -> Response {
    let t = |k: &str| shared.console.i18n.text(lang, k);
    let title = t("oidc-logout-title");
    let main = html! {
        meta http-equiv="refresh" content={ "0;url=" (url) };
        p { a #oidc-logout href=(url) { (t("oidc-logout-continue")) } }
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page_in(shared, lang, &title, main),
    )
        .into_response()
}

/// A refused sign-in: audited, and a page in `lang` that says why and links back to the
/// login page.
async fn refused(
    shared: &Shared,
    lang: &str,
    login: &str,
    source: IpAddr,
    refusal: Refusal,
) -> Response {
    let status = match refusal {
        Refusal::Off => StatusCode::NOT_FOUND,
        Refusal::Misconfigured(_) | Refusal::Provider(_) | Refusal::Store => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        Refusal::Throttled => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::FORBIDDEN,
    };
    let texts = &shared.console.i18n;
    let t = |k: &str| texts.text(lang, k);
    // Refusals that cost nothing to send are not written one by one (the limiter counts them).
    if !matches!(refusal, Refusal::Off | Refusal::Throttled) {
        let text = refusal.to_string();
        tracing::warn!(login, %source, reason = %text, "OpenID Connect sign-in refused");
        let detail = format!("OpenID Connect: {text}");
        audit(shared, login, "login-failed", &detail, source).await;
    }
    // The layout makes the page's one h1 of its title.
    let title = t("oidc-refused-title");
    let main = html! {
        p.error role="alert" { (refusal.text(texts, lang)) }
        p { a href="/login" { (t("oidc-back")) } }
    };
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page_in(shared, lang, &title, main),
    )
        .into_response();
    if let Ok(v) = binding_cookie(shared, "", 0).parse() {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn roles_map_from_a_string_or_a_list_to_exactly_one() {
        let map = vec![
            ("duty-supervisors".to_string(), Role::Supervisor),
            ("auditors".to_string(), Role::Auditor),
        ];
        let claims = json!({"groups": ["staff", "duty-supervisors"], "one": "auditors"});
        assert_eq!(map_role(&claims, "groups", &map).unwrap(), Role::Supervisor);
        assert_eq!(map_role(&claims, "one", &map).unwrap(), Role::Auditor);
        assert!(matches!(
            map_role(&claims, "missing", &map),
            Err(Refusal::NoRole { .. })
        ));
        let both = json!({"groups": ["auditors", "duty-supervisors", "auditors"]});
        assert!(matches!(
            map_role(&both, "groups", &map),
            Err(Refusal::SeveralRoles { .. })
        ));
        // Without a map, the values are role names; unknown ones are ignored.
        let named = json!({"roles": ["watch", "wizard"]});
        assert_eq!(map_role(&named, "roles", &[]).unwrap(), Role::Watch);
        assert!(matches!(
            map_role(&json!({"roles": 7}), "roles", &[]),
            Err(Refusal::NoRole { .. })
        ));
    }

    #[test]
    fn pending_sign_ins_are_bounded_used_once_and_expire() {
        let state = OidcState::default();
        let pending = |at| Pending {
            binding: [0; 32],
            nonce: String::new(),
            verifier: String::new(),
            started_ms: at,
        };
        for i in 0..(PENDING_MAX as u64 + 50) {
            state.insert(format!("s{i}"), pending(1000 + i), 1000 + i);
        }
        assert_eq!(state.len(), PENDING_MAX);
        assert!(state.take("s0", 2000).is_none(), "the oldest went first");
        let last = format!("s{}", PENDING_MAX + 49);
        assert!(state.take(&last, 2000).is_some());
        assert!(state.take(&last, 2000).is_none(), "a state is used once");
        state.insert("late".into(), pending(0), 0);
        assert!(state.take("late", PENDING_MS).is_none(), "expired");
    }

    /// A one-shot HTTP server on loopback answering `head` and then `body_bytes` bytes.
    async fn serve_once(head: &'static str, body_bytes: usize) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await;
            let answer = format!("{head}Content-Length: {body_bytes}\r\n\r\n");
            let _ = socket.write_all(answer.as_bytes()).await;
            let _ = socket.write_all(&vec![b'x'; body_bytes]).await;
        });
        format!("http://{addr}/")
    }

    fn get(url: &str) -> openidconnect::HttpRequest {
        openidconnect::http::Request::builder()
            .uri(url)
            .body(Vec::new())
            .unwrap()
    }

    #[tokio::test]
    async fn answers_from_the_provider_are_bounded_and_redirects_not_followed() {
        let http = http_client(&OidcSection::default()).unwrap();
        let url = serve_once("HTTP/1.1 200 OK\r\n", PROVIDER_RESPONSE_BYTES_MAX + 1).await;
        assert!(matches!(
            send(&http.0, get(&url)).await,
            Err(HttpError::TooLarge)
        ));
        let url = serve_once("HTTP/1.1 200 OK\r\n", PROVIDER_RESPONSE_BYTES_MAX).await;
        assert_eq!(
            send(&http.0, get(&url)).await.unwrap().body().len(),
            PROVIDER_RESPONSE_BYTES_MAX
        );
        let url = serve_once(
            "HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/\r\n",
            0,
        )
        .await;
        let answer = send(&http.0, get(&url)).await.unwrap();
        assert_eq!(answer.status(), 302, "handed back, not followed");
    }

    #[test]
    fn a_bad_ca_file_is_a_clear_configuration_error() {
        assert!(
            provider_roots("").unwrap().is_empty(),
            "none set: the system's"
        );
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let text = |r: Result<Vec<reqwest::Certificate>, Refusal>| match r {
            Err(e @ Refusal::Misconfigured(_)) => e.to_string(),
            other => panic!("a configuration error, got {:?}", other.map(|v| v.len())),
        };
        let why = text(provider_roots(missing.to_str().unwrap()));
        assert!(
            why.contains("oidc.ca_file") && why.contains("missing.pem"),
            "{why}"
        );
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let why = text(provider_roots(junk.to_str().unwrap()));
        assert!(why.contains("no PEM certificate"), "{why}");
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'a'; CA_FILE_BYTES_MAX + 1]).unwrap();
        let why = text(provider_roots(big.to_str().unwrap()));
        assert!(why.contains("larger than"), "{why}");
    }

    fn metadata(extra: serde_json::Value) -> Metadata {
        let mut doc = json!({
            "issuer": "https://idp.example",
            "authorization_endpoint": "https://idp.example/auth",
            "jwks_uri": "https://idp.example/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        });
        for (k, v) in extra.as_object().unwrap() {
            doc[k] = v.clone();
        }
        serde_json::from_value(doc).unwrap()
    }

    #[test]
    fn the_answer_must_name_this_provider_when_it_names_one_or_promised_to() {
        let quiet = metadata(json!({}));
        assert!(check_issuer(&quiet, None).is_ok());
        assert!(check_issuer(&quiet, Some("https://idp.example")).is_ok());
        assert!(matches!(
            check_issuer(&quiet, Some("https://evil.example")),
            Err(Refusal::WrongIssuer(_))
        ));
        let promised = metadata(json!({"authorization_response_iss_parameter_supported": true}));
        assert!(matches!(
            check_issuer(&promised, None),
            Err(Refusal::NoIssuer)
        ));
        assert!(check_issuer(&promised, Some("https://idp.example")).is_ok());
        assert!(
            matches!(
                check_issuer(&promised, Some("https://idp.example/")),
                Err(Refusal::WrongIssuer(_))
            ),
            "compared as strings"
        );
    }

    #[test]
    fn logout_goes_to_the_end_session_endpoint_with_the_hint_when_it_fits() {
        let section = OidcSection {
            client_id: "node".into(),
            redirect_url: format!("https://console.example{OIDC_CALLBACK_PATH}"),
            ..OidcSection::default()
        };
        assert!(logout_url(&section, &metadata(json!({})), "t").is_none());
        let m = metadata(json!({"end_session_endpoint": "https://idp.example/end"}));
        let url = reqwest::Url::parse(&logout_url(&section, &m, "a.b.c").unwrap()).unwrap();
        let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(url.path(), "/end");
        assert_eq!(q["id_token_hint"], "a.b.c");
        assert_eq!(q["client_id"], "node");
        assert_eq!(
            q["post_logout_redirect_uri"],
            "https://console.example/login"
        );
        let long = "x".repeat(LOGOUT_URL_BYTES_MAX);
        let url = logout_url(&section, &m, &long).unwrap();
        assert!(!url.contains("id_token_hint") && url.contains("client_id=node"));
    }

    #[test]
    fn the_refusal_page_text_is_in_the_reader_language() {
        let texts = Texts::load();
        let r = Refusal::NoRole {
            claim: "groups".into(),
        };
        assert_eq!(r.text(&texts, "en"), r.to_string(), "English as audited");
        assert!(r.text(&texts, "zh-CN").contains("未对应任何控制台角色"));
    }

    #[test]
    fn the_password_mark_verifies_no_password() {
        assert!(!auth::verify_password("", OIDC_PASSWORD_MARK));
        assert!(!auth::verify_password(
            OIDC_PASSWORD_MARK,
            OIDC_PASSWORD_MARK
        ));
    }
}
