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
//!   issued to this browser, the code is exchanged with the PKCE verifier, the ID token must
//!   verify with the nonce; then the operator's account is created or its role updated, and a
//!   session starts like a local login's. Every refusal and every sign-in is audited.
//!
//! An operator signed in this way has no password here: the account's password field holds
//! [`OIDC_PASSWORD_MARK`], which no password verifies against, and a local account's name
//! is never taken over by a sign-in through the provider.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};
use serde::Deserialize;

use super::auth::{self, Role};
use maud::{html, Markup};

use super::html::page;
use super::{audit, cookie, set_cookie, Source, SESSION_COOKIE};
use crate::config::OidcSection;
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

/// One sign-in in progress.
#[derive(Debug, Clone)]
struct Pending {
    /// SHA-256 of the binding cookie's value.
    binding: [u8; 32],
    nonce: String,
    verifier: String,
    started_ms: u64,
}

/// Sign-ins in progress, by state, in bounded memory.
#[derive(Debug, Default)]
pub struct OidcState {
    pending: Mutex<HashMap<String, Pending>>,
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
    #[error("too many sign-in attempts from this address; wait a few minutes")]
    Throttled,
    #[error("the store is unavailable")]
    Store,
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

fn http_client() -> Result<Http, Refusal> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(PROVIDER_TIMEOUT)
        .build()
        .map(Http)
        .map_err(|e| Refusal::Provider(e.to_string()))
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

/// The provider's metadata (discovery; the issuer must match) and this node's client there.
async fn provider_client(
    settings: &Settings,
    http: &Http,
) -> Result<
    openidconnect::core::CoreClient<
        openidconnect::EndpointSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointMaybeSet,
        openidconnect::EndpointMaybeSet,
    >,
    Refusal,
> {
    let s = &settings.section;
    let issuer = IssuerUrl::new(s.issuer.clone())
        .map_err(|e| Refusal::Misconfigured(format!("oidc.issuer: {e}")))?;
    let redirect = RedirectUrl::new(s.redirect_url.clone())
        .map_err(|e| Refusal::Misconfigured(format!("oidc.redirect_url: {e}")))?;
    let metadata = CoreProviderMetadata::discover_async(issuer, http)
        .await
        .map_err(|e| Refusal::Provider(error_chain(&e)))?;
    let secret = (!s.client_secret.is_empty()).then(|| ClientSecret::new(s.client_secret.clone()));
    Ok(
        CoreClient::from_provider_metadata(metadata, ClientId::new(s.client_id.clone()), secret)
            .set_redirect_uri(redirect),
    )
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
) -> Response {
    match begin(&shared, source).await {
        Ok(response) => response,
        Err(refusal) => refused(&shared, "(oidc)", source, refusal).await,
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
    let http = http_client()?;
    let client = provider_client(&settings, &http).await?;
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
}

/// `GET /login/oidc/callback`: finish a sign-in.
pub async fn callback(
    State(shared): State<std::sync::Arc<Shared>>,
    Source(source): Source,
    headers: HeaderMap,
    Query(query): Query<CallbackQuery>,
) -> Response {
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
                return refused(&shared, &login, source, Refusal::Throttled).await;
            }
            refused(&shared, &login, source, Refusal::UnknownState).await
        }
        Err((login, Refusal::Off)) => refused(&shared, &login, source, Refusal::Off).await,
        Err((login, refusal)) => {
            // The sign-in this node started came back: its start is no longer pending.
            shared.console.limiter.succeeded("(oidc)", source);
            refused(&shared, &login, source, refusal).await
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

async fn finish(
    shared: &Shared,
    headers: &HeaderMap,
    query: CallbackQuery,
) -> Result<SignedIn, (String, Refusal)> {
    let anonymous = |r: Refusal| ("(oidc)".to_string(), r);
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
    if !query.error.is_empty() {
        let text = format!("{} {}", query.error, query.error_description);
        let text = text.trim().chars().take(PROVIDER_ERROR_CHARS_MAX).collect();
        return Err(anonymous(Refusal::ProviderRefused(text)));
    }
    let http = http_client().map_err(anonymous)?;
    let client = provider_client(&settings, &http).await.map_err(anonymous)?;
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
    // The claims of the token just verified, as JSON, for the configured claim names.
    let claims = token_claims(&id_token.to_string()).map_err(anonymous)?;
    let login_claim = settings.login_claim().to_string();
    let login = claims
        .get(&login_claim)
        .and_then(|v| v.as_str())
        .filter(|l| auth::valid_login(l))
        .ok_or_else(|| anonymous(Refusal::NoLogin(login_claim.clone())))?
        .to_string();
    let role = map_role(&claims, settings.role_claim(), &settings.roles)
        .map_err(|r| (login.clone(), r))?;
    let user = account(shared, &login, role, now)
        .await
        .map_err(|r| (login.clone(), r))?;
    let token = new_session(shared, &login, now)
        .await
        .map_err(|r| (login.clone(), r))?;
    Ok(SignedIn {
        user,
        token,
        issuer,
        subject,
    })
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

/// A refused sign-in: audited, and a page that says why and links back to the login page.
async fn refused(shared: &Shared, login: &str, source: IpAddr, refusal: Refusal) -> Response {
    let status = match refusal {
        Refusal::Off => StatusCode::NOT_FOUND,
        Refusal::Misconfigured(_) | Refusal::Provider(_) | Refusal::Store => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        Refusal::Throttled => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::FORBIDDEN,
    };
    let text = refusal.to_string();
    let lang = super::html::node_lang(shared);
    let t = |k: &str| shared.console.i18n.text(&lang, k);
    // Refusals that cost nothing to send are not written one by one (the limiter counts them).
    if !matches!(refusal, Refusal::Off | Refusal::Throttled) {
        tracing::warn!(login, %source, reason = %text, "OpenID Connect sign-in refused");
        let detail = format!("OpenID Connect: {text}");
        audit(shared, login, "login-failed", &detail, source).await;
    }
    let title = t("oidc-refused-title");
    let main = html! {
        h1 { (title) }
        p.error role="alert" { (text) }
        p { a href="/login" { (t("oidc-back")) } }
    };
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page(shared, None, &title, main),
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
        let http = http_client().unwrap();
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
    fn the_password_mark_verifies_no_password() {
        assert!(!auth::verify_password("", OIDC_PASSWORD_MARK));
        assert!(!auth::verify_password(
            OIDC_PASSWORD_MARK,
            OIDC_PASSWORD_MARK
        ));
    }
}
