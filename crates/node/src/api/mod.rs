//! The local HTTP JSON API under `/api/v1`, on the console address.
//!
//! The command line and any integration use it. Every route but `/healthz` needs either the
//! bearer token kept in the node directory (`api.token`, owner-readable only; full rights)
//! or a console session cookie (the operator's role decides, and a request that changes
//! anything must carry the session's CSRF token in `X-CSRF-Token`); with neither the answer
//! is 401. The JSON shapes here are the API's own types, separate from rows and envelopes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Extension, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use detente_proto::{MessageId, Precedence, ReceiptLevel};
use detente_store::{Direction, InboxQuery, Placement, Store};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::operators::{self, Operator, Role};
/// The API answers the service's errors (its `IntoResponse` is here: the JSON shape).
use crate::service::Error as ApiError;
use crate::service::{
    answer, build_request, export_body, internal, message_json, message_json_in, peer_entry,
    SendBody,
};
pub mod openapi;

use crate::events::Event;
use crate::{now_ms, time_text, Shared};

/// Messages in one batch send, at most (the engines' limit).
pub const SEND_BATCH_MAX: usize = detente_core::SEND_BATCH_MESSAGES_MAX;
/// Longest wait a client may ask for.
pub const WAIT_MS_MAX: u64 = 600_000;
/// Rows in one listing, at most.
pub const LIST_LIMIT_MAX: u32 = 10_000;

type ApiResult = Result<Response, ApiError>;

/// Who is calling the API: the command line (the token: every right) or a console operator.
#[derive(Debug, Clone)]
pub enum Caller {
    Token,
    Operator(Operator),
}

impl Caller {
    fn role(&self) -> Option<Role> {
        match self {
            Caller::Token => None,
            Caller::Operator(op) => Some(op.role),
        }
    }

    fn login(&self) -> &str {
        match self {
            Caller::Token => "api-token",
            Caller::Operator(op) => &op.login,
        }
    }

    fn may_send(&self, precedence: Precedence) -> Result<(), ApiError> {
        match self.role() {
            Some(role) if !role.can_send(precedence) => Err(ApiError::forbidden(
                &format!("send {precedence} messages"),
                role,
            )),
            _ => Ok(()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.error, "hint": self.hint});
        if !self.problems.is_empty() {
            body["problems"] = json!(self.problems);
        }
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// What a route needs of a console operator's role (the API token has every right). Every
/// `/api/v1` route is declared in [`ROUTES`]; [`authorize`] refuses a route that is not, so
/// a route added without a declared role fails every test that calls it, and
/// `docs/api-roles.md` is generated from the same table (`route_table_markdown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Any role may read it.
    Read,
    /// Sending (the precedence is checked in the handler: `Role::can_send`).
    Compose,
    /// A receipt (READ: `can_mark_read`; ACKNOWLEDGED/DECLINED: `can_answer`, in the handler).
    Receipt,
    /// Export the record: a bundle or a proof against an existing checkpoint.
    Export,
    /// Sign a checkpoint on the party's behalf.
    Checkpoint,
    /// A proof that may sign a checkpoint first: both rights.
    ExportSigning,
    /// Change the glossary.
    Glossary,
    /// Change peers.
    Admin,
}

impl Access {
    pub fn allows(self, role: Role) -> bool {
        match self {
            Access::Read => true,
            Access::Compose => role.can_compose(),
            Access::Receipt => role.can_mark_read() || role.can_answer(),
            Access::Export => role.can_export(),
            Access::Checkpoint => role.can_checkpoint(),
            Access::ExportSigning => role.can_export() && role.can_checkpoint(),
            Access::Glossary => role.can_edit_glossary(),
            Access::Admin => role.can_admin(),
        }
    }

    pub fn what(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Compose => "send messages",
            Access::Receipt => "answer messages",
            Access::Export => "export the record",
            Access::Checkpoint => "sign checkpoints",
            Access::ExportSigning => "sign a checkpoint for a proof",
            Access::Glossary => "change the glossary",
            Access::Admin => "change peers",
        }
    }
}

/// Every `/api/v1` route: method, path (as routed), and what it needs.
pub const ROUTES: &[(&str, &str, Access)] = &[
    ("GET", "/id", Access::Read),
    ("GET", "/status", Access::Read),
    ("GET", "/messages", Access::Read),
    ("POST", "/messages", Access::Compose),
    ("POST", "/messages/batch", Access::Compose),
    ("GET", "/messages/{id}", Access::Read),
    ("GET", "/messages/{id}/wait", Access::Read),
    ("POST", "/messages/{id}/receipts", Access::Receipt),
    ("POST", "/peers/{name}/reload", Access::Admin),
    ("GET", "/metrics", Access::Read),
    ("GET", "/glossary", Access::Read),
    ("POST", "/glossary", Access::Glossary),
    ("POST", "/peers/{name}/checkpoint", Access::Checkpoint),
    ("GET", "/peers/{name}/export", Access::Export),
    ("GET", "/messages/{id}/proof", Access::Export),
    ("POST", "/messages/{id}/proof", Access::ExportSigning),
    ("GET", "/alarms", Access::Read),
    ("GET", "/peers/{name}/charter", Access::Read),
    ("GET", "/openapi.json", Access::Read),
];

/// The declared access of a routed request, if any.
pub fn declared_access(method: &str, path: &str) -> Option<Access> {
    let path = path.strip_prefix("/api/v1").unwrap_or(path);
    ROUTES
        .iter()
        .find(|(m, p, _)| *m == method && *p == path)
        .map(|(_, _, a)| *a)
}

/// The route × role table, in Markdown (docs/api-roles.md is this text).
pub fn route_table_markdown() -> String {
    use crate::operators::ROLES;
    let mut out = String::from(
        "# API routes and roles\n\nGenerated from `crates/node/src/api/mod.rs` (`ROUTES`); \
         a test fails when this file and the table differ. The API token (the command \
         line) may use every route. `yes` means a console session of that role may.\n\n",
    );
    out.push_str("| method | route |");
    for role in ROLES {
        out.push_str(&format!(" {} |", role.name()));
    }
    out.push_str("\n| --- | --- |");
    for _ in ROLES {
        out.push_str(" --- |");
    }
    out.push('\n');
    for (method, path, access) in ROUTES {
        out.push_str(&format!("| {method} | `/api/v1{path}` |"));
        for role in ROLES {
            out.push_str(if access.allows(role) {
                " yes |"
            } else {
                " no |"
            });
        }
        out.push('\n');
    }
    out
}

/// The API's routes: `/api/v1/…` and `/metrics`, each behind the token or a session.
pub fn routes(shared: Arc<Shared>) -> Router<Arc<Shared>> {
    let api = Router::new()
        .route("/id", get(id))
        .route("/status", get(status))
        .route("/messages", get(list).post(send))
        .route("/messages/batch", post(send_batch))
        .route("/messages/{id}", get(one))
        .route("/messages/{id}/wait", get(wait))
        .route("/messages/{id}/receipts", post(receipt))
        .route("/peers/{name}/reload", post(reload_peer))
        .route("/metrics", get(crate::metrics::exposition))
        .route("/glossary", get(glossary_list).post(glossary_add))
        .route("/peers/{name}/checkpoint", post(checkpoint_now))
        .route("/peers/{name}/export", get(export))
        .route("/messages/{id}/proof", get(proof).post(proof_signing))
        .route("/alarms", get(alarms))
        .route("/peers/{name}/charter", get(peer_charter))
        .route("/openapi.json", get(openapi::serve_document))
        .route_layer(middleware::from_fn(authorize))
        .layer(middleware::from_fn_with_state(shared.clone(), authenticate))
        .layer(middleware::from_fn(typed_rejections));
    Router::new()
        .route(
            "/metrics",
            get(crate::metrics::exposition)
                .layer(middleware::from_fn_with_state(shared, authenticate)),
        )
        .nest("/api/v1", api)
}

/// Longest plain-text refusal from axum's extractors or router that [`typed_rejections`]
/// reads to put into a JSON error (theirs are one line; more is cut).
const REJECTION_BYTES_MAX: usize = 4096;

/// Give axum's own refusals (a body that is not JSON or lacks a field, a query that does not
/// parse, an unknown route or method) the API's error shape, `{"error", "hint"}`, as the
/// OpenAPI document promises for every 4xx: a client can then handle every refusal alike.
async fn typed_rejections(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !status.is_client_error() || is_json {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let body = axum::body::to_bytes(response.into_body(), REJECTION_BYTES_MAX)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().to_string();
    let error = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("refused")
            .to_lowercase()
    } else {
        text
    };
    let mut typed = ApiError::new(status, error)
        .hint("see the routes and their bodies in /api/v1/openapi.json")
        .into_response();
    if let Some(allow) = allow {
        typed.headers_mut().insert(header::ALLOW, allow);
    }
    typed
}

/// Refuse what the caller's role may not do, by the route's declared [`Access`]; a route
/// with none declared is refused to everyone (a bug, caught by the route tests).
async fn authorize(
    Extension(caller): Extension<Caller>,
    matched: axum::extract::MatchedPath,
    request: Request,
    next: Next,
) -> Response {
    // HEAD is a GET without its body (axum answers it from the GET handler).
    let method = match request.method().as_str() {
        "HEAD" => "GET",
        other => other,
    };
    let Some(access) = declared_access(method, matched.as_str()) else {
        if let Some(refused) = method_not_allowed(matched.as_str()) {
            return refused;
        }
        tracing::error!(
            route = matched.as_str(),
            "an API route has no declared access"
        );
        return ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "this route has no declared role (a bug)",
        )
        .into_response();
    };
    if let Some(role) = caller.role().filter(|r| !access.allows(*r)) {
        return ApiError::forbidden(access.what(), role).into_response();
    }
    next.run(request).await
}

/// A route called with a method it does not have: 405 and the methods it has. (The role
/// check runs on the matched path before axum's own 405, so it must answer this itself.)
fn method_not_allowed(matched: &str) -> Option<Response> {
    let path = matched.strip_prefix("/api/v1").unwrap_or(matched);
    let methods: Vec<&str> = ROUTES
        .iter()
        .filter(|(_, p, _)| *p == path)
        .map(|(m, _, _)| *m)
        .collect();
    if methods.is_empty() {
        return None;
    }
    let allow = methods.join(", ");
    let mut response = ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        .hint(format!("this route takes {allow}"))
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&allow) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    Some(response)
}

async fn authenticate(
    State(shared): State<Arc<Shared>>,
    mut request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let caller = match presented {
        Some(token) if constant_time_eq(token.as_bytes(), shared.token.as_bytes()) => {
            Caller::Token
        }
        Some(_) => {
            return ApiError::new(StatusCode::UNAUTHORIZED, "wrong API token")
                .hint("the command line reads the token from api.token in the node directory")
                .into_response()
        }
        None => match operators::session_operator(&shared, request.headers()).await {
            Some(op) => {
                let safe = matches!(request.method().as_str(), "GET" | "HEAD");
                let csrf = request
                    .headers()
                    .get(operators::CSRF_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if !safe && !op.csrf_ok(csrf) {
                    return ApiError::new(StatusCode::FORBIDDEN, "missing or wrong CSRF token")
                        .hint("send the page's csrf-token in the X-CSRF-Token header")
                        .into_response();
                }
                Caller::Operator(op)
            }
            None => {
                return ApiError::new(StatusCode::UNAUTHORIZED, "missing API token or session")
                    .hint("the command line reads the token from api.token in the node directory; a browser logs in at /login")
                    .into_response()
            }
        },
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// Record an action taken through the API.
async fn audit_api(shared: &Shared, caller: &Caller, action: &str, detail: &str) {
    operators::audit(
        shared,
        caller.login(),
        action,
        detail,
        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
    )
    .await;
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[utoipa::path(
    get,
    path = "/api/v1/id",
    tag = "node",
    responses(
        (status = 200, description = "Who this node is.", body = openapi::IdJson),
        (status = "default", description = "An error: {\"error\", \"hint\"}.", body = openapi::ErrorJson),
    )
)]
async fn id(State(shared): State<Arc<Shared>>) -> ApiResult {
    let c = shared.config.read().map_err(|_| internal())?.clone();
    let key = shared.secret.public();
    Ok(Json(json!({
        "name": c.name, "party": c.party, "public_key": key.to_text(),
        "fingerprint": key.fingerprint(), "peer_listen": shared.peer_addr.to_string(),
        "console_listen": shared.console_addr.to_string(), "lang": c.lang, "tz": c.tz,
    }))
    .into_response())
}

/// Wall-clock milliseconds of a monotonic instant in the past.
fn wall_ms(at: Instant) -> u64 {
    now_ms().saturating_sub(at.elapsed().as_millis() as u64)
}

#[utoipa::path(
    get,
    path = "/api/v1/status",
    tag = "node",
    responses(
        (status = 200, description = "Link health and backlog per peer, alarms and a verdict.", body = openapi::StatusJson),
        (status = "default", description = "An error: {\"error\", \"hint\"}.", body = openapi::ErrorJson),
    )
)]
async fn status(State(shared): State<Arc<Shared>>) -> ApiResult {
    let mut peers = Vec::new();
    let now = Instant::now();
    let mut worst = detente_proto::LineVerdict::AllWell;
    for entry in shared.table.all() {
        let s = entry.status.read().map_err(|_| internal())?.clone();
        let alarms = entry.alarms.read().map_err(|_| internal())?.clone();
        let counts = shared.store.outbox_counts(&entry.name).await?;
        let state = s.current_state(now);
        let clock = s.view.as_ref().and_then(|v| v.clock_offset());
        let skewed = s.view.as_ref().and_then(|v| v.clock_skewed()).is_some();
        let verdict = match detente_proto::deadline::line_verdict(
            state,
            alarms.overdue_out,
            alarms.overdue_in,
            alarms.test_missed,
        ) {
            detente_proto::LineVerdict::AllWell if skewed => detente_proto::LineVerdict::ClockSkew,
            v => v,
        };
        if verdict_rank(verdict) < verdict_rank(worst) {
            worst = verdict;
        }
        peers.push(json!({
            "name": entry.name,
            "fingerprint": entry.key.fingerprint(),
            "state": state.name(),
            "connected": s.connected,
            "rtt_ms": s.rtt_ms,
            // The peer's wall clock minus ours, from the last Pong (or the Hello), within
            // error_ms; skewed when certainly beyond the threshold.
            "clock": clock.map(|c| json!({
                "offset_ms": c.offset_ms,
                "error_ms": c.error_ms,
                "skewed": skewed,
                "text": format!("the peer's clock is {} ours", crate::peers::offset_words(c.offset_ms)),
            })),
            "outbox": counts.pending,
            "outbox_flash": counts.pending_flash,
            "last_heard": s.last_heard.map(|t| time_text(wall_ms(t) as i64)),
            "last_test": alarms.last_test_ms.map(time_text),
            "link_test_missed": alarms.test_missed,
            "link_down_alarm": alarms.link_down,
            "overdue_out": alarms.overdue_out,
            "overdue_in": alarms.overdue_in,
            "unanswered_in": alarms.unanswered_in,
            "verdict": verdict.code(),
            "verdict_text": verdict.text(),
            "address": s.address,
            "addresses": entry.addrs,
            "sessions": s.sessions,
            "last_error": s.last_error,
            "sending_stopped": s.sending_stopped,
            "charter": crate::charter::status_json(&shared.charters.get(&entry.name)),
        }));
    }
    let alarms = alarm_list(&shared).await?;
    for p in peers.iter_mut() {
        let name = p["name"].as_str().unwrap_or_default().to_string();
        let entry = shared.table.get(&name);
        let mut latest = Value::Null;
        if let Some(entry) = entry {
            let channel = detente_proto::ChannelId::for_pair(&shared.secret.public(), &entry.key);
            let newest = detente_store::CheckpointPage::newest_cosigned(1);
            let rows = shared.store.checkpoint_page(channel.0, newest).await?;
            if let Some(row) = rows.first() {
                if let Ok(s) = detente_proto::checkpoint::SignedCheckpoint::decode(&row.signed) {
                    latest = crate::transcript::checkpoint_json(&s);
                }
            }
        }
        p["checkpoint"] = latest;
        p["flagged"] = Value::Bool(alarms.iter().any(|a| a["peer"] == name.as_str()));
    }
    let c = shared.config.read().map_err(|_| internal())?.clone();
    let heartbeat = shared.link_config.heartbeat;
    Ok(Json(json!({
        "name": c.name,
        "party": c.party,
        "fingerprint": shared.secret.public().fingerprint(),
        "messages": shared.store.message_count().await?,
        "verdict": worst.code(),
        "verdict_text": worst.text(),
        "thresholds": {
            "heartbeat_ms": heartbeat.as_millis() as u64,
            "degraded_after_ms": (heartbeat * 2).as_millis() as u64,
            "down_after_ms": (heartbeat * 3).as_millis() as u64,
            "degraded_rtt_ms": shared.link_config.degraded_rtt.as_millis() as u64,
            "clock_skew_warn_ms": shared.link_config.skew_warn.as_millis() as u64,
        },
        "peers": peers,
        "alarms": alarms,
        "listener": listener_json(&shared),
        // Stored rows that failed verification when shown, exported or checked at start.
        "tampered": shared
            .tampered
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>())
            .unwrap_or_default(),
    }))
    .into_response())
}

/// What the peer listener refused: keys that are not pinned (who keeps trying) and
/// connections closed before their handshake (crate::gate).
fn listener_json(shared: &Shared) -> Value {
    let keys: Vec<Value> = shared
        .gate
        .refused_keys()
        .iter()
        .map(|k| {
            json!({
                "fingerprint": detente_proto::identity::fingerprint(&k.key),
                "key": format!("ed25519:{}", hex::encode(k.key)),
                "attempts": k.count,
                "last_address": k.last_address.to_string(),
                "last_seen": time_text(wall_ms(k.last_seen) as i64),
            })
        })
        .collect();
    let closed: serde_json::Map<String, Value> = shared
        .gate
        .closed()
        .into_iter()
        .map(|(why, n)| (why.name().to_string(), Value::from(n)))
        .collect();
    json!({
        "refused_keys": keys,
        "keys_refused_total": shared.gate.keys_refused_total(),
        "closed_before_handshake": closed,
        "log_lines": shared.gate.log_lines(),
    })
}

/// Worst first: the overall verdict is the worst of the peers'.
fn verdict_rank(v: detente_proto::LineVerdict) -> u8 {
    use detente_proto::LineVerdict as V;
    match v {
        V::LinkDown => 0,
        V::TestMissed => 1,
        V::OverdueIn => 2,
        V::Unanswered => 3,
        V::Degraded => 4,
        V::ClockSkew => 5,
        V::AllWell => 6,
    }
}

/// Every stored piece of equivocation evidence, as alarms.
async fn alarm_list(shared: &Shared) -> Result<Vec<Value>, ApiError> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(shared
        .store
        .evidence()
        .await?
        .into_iter()
        .map(|e| {
            json!({
                "id": e.id,
                "peer": e.peer,
                "kind": evidence_kind(e.kind),
                "seq": e.seq,
                "detail": e.detail,
                "detected_at": time_text(e.detected_at_ms),
                "first": b64.encode(&e.first),
                "second": b64.encode(&e.second),
            })
        })
        .collect())
}

#[utoipa::path(
    get,
    path = "/api/v1/alarms",
    tag = "node",
    responses(
        (status = 200, description = "Every stored piece of equivocation evidence.", body = openapi::AlarmsJson),
        (status = "default", description = "An error: {\"error\", \"hint\"}.", body = openapi::ErrorJson),
    )
)]
async fn alarms(State(shared): State<Arc<Shared>>) -> ApiResult {
    Ok(Json(json!({ "alarms": alarm_list(&shared).await? })).into_response())
}

/// Sign a checkpoint of the channel now and send it to the peer for co-signing.
#[utoipa::path(
    post,
    path = "/api/v1/peers/{name}/checkpoint",
    tag = "evidence",
    params(("name" = String, Path, description = "The peer's name, as pinned.")),
    responses(
        (status = 200, description = "The checkpoint signed (and sent for co-signing).", body = openapi::CheckpointJson),
        (status = "default", description = "An error: {\"error\", \"hint\"}.", body = openapi::ErrorJson),
    )
)]
async fn checkpoint_now(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult {
    let entry = peer_entry(&shared, &name)?;
    let signed = shared.engine.checkpoint(&name, &entry.key).await?;
    let detail = format!("channel with {name}");
    audit_api(&shared, &caller, "checkpoint", &detail).await;
    Ok(Json(crate::transcript::checkpoint_json(&signed)).into_response())
}

/// The channel with a peer as one bundle (application/cbor), streamed.
#[utoipa::path(
    get,
    path = "/api/v1/peers/{name}/export",
    tag = "evidence",
    params(("name" = String, Path, description = "The peer's name, as pinned.")),
    responses(
        (status = 200, description = "The channel as one export bundle (canonical CBOR; `detente verify` checks it).", content_type = "application/cbor", body = String),
        (status = "default", description = "An error: {\"error\", \"hint\"}.", body = openapi::ErrorJson),
    )
)]
async fn export(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult {
    let (body, plan) = export_body(&shared, &name).await?;
    let detail = format!("channel with {name}, {} messages", plan.messages());
    audit_api(&shared, &caller, "export", &detail).await;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/cbor"),
        )],
        body,
    )
        .into_response())
}

/// A self-contained inclusion proof of one message against the latest checkpoint that
/// covers it (preferring one signed by every member). A GET changes nothing: with no
/// covering checkpoint it answers 409; `POST` (what `detente proof` sends) signs one first.
#[utoipa::path(
    get,
    path = "/api/v1/messages/{id}/proof",
    tag = "evidence",
    params(("id" = String, Path, description = "The message id: 64 hex digits.", pattern = "^[0-9a-fA-F]{64}$")),
    responses(
        (status = 200, description = "An inclusion proof against the latest checkpoint covering the message; 409 when none does.", body = openapi::ProofJson),
        (status = "default", description = "An error: {\"error\", \"hint\"}.", body = openapi::ErrorJson),
    )
)]
async fn proof(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult {
    make_proof(&shared, &caller, &id, false).await
}

/// `POST /messages/{id}/proof`: as the GET, signing a checkpoint when none covers it.
#[utoipa::path(
    post,
    path = "/api/v1/messages/{id}/proof",
    tag = "evidence",
    params(("id" = String, Path, description = "The message id: 64 hex digits.", pattern = "^[0-9a-fA-F]{64}$")),
    responses(
        (status = 200, description = "An inclusion proof, signing a checkpoint first when none covers the message.", body = openapi::ProofJson),
        (status = "default", description = "An error: {\"error\", \"hint\"}.", body = openapi::ErrorJson),
    )
)]
async fn proof_signing(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult {
    make_proof(&shared, &caller, &id, true).await
}

/// Checkpoints a proof looks among, newest first, at most.
const PROOF_CHECKPOINTS_READ: u32 = 64;

async fn make_proof(shared: &Shared, caller: &Caller, id: &str, may_sign: bool) -> ApiResult {
    use detente_proto::checkpoint::SignedCheckpoint;
    let id = parse_id(id)?;
    let row = shared
        .store
        .message(id.0)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such message"))?;
    if row.placement != Placement::Appended {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the message is held ahead of a gap and not in its stream's tree yet",
        )
        .hint("wait until the missing messages before it arrive"));
    }
    let sender = detente_proto::PartyKey::from_bytes(row.sender).map_err(|_| internal())?;
    let covering = |rows: &[detente_store::CheckpointRow]| {
        let decoded: Vec<SignedCheckpoint> = rows
            .iter()
            .filter_map(|r| SignedCheckpoint::decode(&r.signed).ok())
            .filter(|s| {
                s.checkpoint()
                    .head(&sender)
                    .is_some_and(|h| h.size >= row.seq)
            })
            .collect();
        decoded
            .iter()
            .find(|s| s.cosigned())
            .or(decoded.first())
            .cloned()
    };
    // Only the newest checkpoints are read (and decoded), never the channel's whole list:
    // the sizes this node signs only grow (the witness rule), so when none of the newest
    // covers the message an older one would not either, and a POST signs a new one.
    let rows = shared
        .store
        .checkpoint_page(
            row.channel,
            detente_store::CheckpointPage::newest(PROOF_CHECKPOINTS_READ),
        )
        .await?;
    let signed = match covering(&rows) {
        Some(s) => s,
        None if may_sign => {
            let entry = peer_entry(shared, &row.peer)?;
            shared.engine.checkpoint(&row.peer, &entry.key).await?
        }
        None => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "no checkpoint covers this message yet",
            )
            .hint("POST to this address (detente proof does) to sign one first"))
        }
    };
    let size = signed
        .checkpoint()
        .head(&sender)
        .map(|h| h.size)
        .ok_or_else(internal)?;
    if size < row.seq {
        // A checkpoint names our stream only as far as the peer confirmed holding it.
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no checkpoint can cover this message yet: the peer has not confirmed holding it",
        )
        .hint("try again once the message is delivered"));
    }
    let path = crate::transcript::inclusion_proof(
        &shared.store,
        row.channel,
        row.sender,
        row.seq - 1,
        size,
    )
    .await
    .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    let proof = detente_proto::bundle::InclusionProof {
        envelope: row.bytes,
        checkpoint: signed.encode(),
        index: row.seq - 1,
        size,
        path,
    };
    let detail = format!("message {}", id.to_hex());
    audit_api(shared, caller, "proof", &detail).await;
    Ok(Json(crate::transcript::proof_json(&proof)).into_response())
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct SentJson {
    id: String,
    seq: u64,
    precedence: &'static str,
    state: &'static str,
}

impl From<crate::writer::Sent> for SentJson {
    /// A message the writer has made durable.
    fn from(sent: crate::writer::Sent) -> Self {
        SentJson {
            id: sent.id.to_hex(),
            seq: sent.seq,
            precedence: sent.precedence.name(),
            state: "stored",
        }
    }
}

/// A JSON body with the bytes it was read from (an idempotent request's fingerprint is
/// taken over the bytes). Refusals are axum's own, as with `Json`.
struct JsonBytes<T>(T, axum::body::Bytes);

impl<S, T> axum::extract::FromRequest<S> for JsonBytes<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        let json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .is_some_and(|m| {
                m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
            });
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Expected request with `Content-Type: application/json`",
            )
            .hint("see the routes and their bodies in /api/v1/openapi.json")
            .into_response());
        }
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let Json(value) = Json::<T>::from_bytes(&bytes).map_err(IntoResponse::into_response)?;
        Ok(JsonBytes(value, bytes))
    }
}

/// Who an idempotency key belongs to: the API token, or one console login.
fn idempotency_scope(caller: &Caller) -> String {
    match caller {
        Caller::Token => "api-token".into(),
        Caller::Operator(op) => format!("login:{}", op.login),
    }
}

/// The stored answer of an idempotent send, as its first answer was.
fn sent_json(records: &[detente_store::SentRecord]) -> Vec<SentJson> {
    records
        .iter()
        .map(|r| SentJson {
            id: MessageId(r.id).to_hex(),
            seq: r.seq,
            precedence: Precedence::from_u8(r.precedence).map_or("unknown", |p| p.name()),
            state: "stored",
        })
        .collect()
}

/// Send `requests` all or nothing; with an `Idempotency-Key`, at most once per key: the
/// first request's answer is stored with its messages and given again to every retry
/// (`replayed`). `route` and `bytes` make the request's fingerprint.
async fn send_idempotent<F>(
    shared: &Shared,
    caller: &Caller,
    key: Option<String>,
    (route, bytes): (&str, &[u8]),
    requests: F,
) -> Result<(Vec<SentJson>, bool), ApiError>
where
    F: FnOnce() -> Result<Vec<crate::writer::SendRequest>, ApiError>,
{
    let Some(key) = key else {
        let requests = requests()?;
        audit_sends(shared, caller, &requests, "").await;
        let sent = shared.engine.send_batch(requests, None).await?;
        return Ok((sent.into_iter().map(SentJson::from).collect(), false));
    };
    let scope = idempotency_scope(caller);
    let fingerprint = crate::idempotency::fingerprint(route, bytes);
    // Held until the send is decided: a second request with the key meanwhile gets 409.
    let claim = shared.idempotency.claim(&scope, &key)?;
    let now = now_ms() as i64;
    match crate::idempotency::lookup(&shared.store, &scope, &key, fingerprint, now).await? {
        crate::idempotency::Lookup::Replay(records) => {
            let detail = format!(
                "replay of Idempotency-Key {key:?} ({} messages)",
                records.len()
            );
            audit_api(shared, caller, "send", &detail).await;
            Ok((sent_json(&records), true))
        }
        crate::idempotency::Lookup::Fresh(row) => {
            let requests = requests()?;
            audit_sends(
                shared,
                caller,
                &requests,
                &format!(" (Idempotency-Key {key:?})"),
            )
            .await;
            // In a task of its own, which holds the claim until the engine has answered:
            // a client that hangs up does not end the send, and its retry must not start a
            // second one before the first is committed (it gets 409, then the replay).
            let engine = shared.engine.clone();
            let send = tokio::spawn(async move {
                let _claim = claim;
                engine.send_batch(requests, Some(row)).await
            });
            let sent = send.await.map_err(|_| internal())??;
            Ok((sent.into_iter().map(SentJson::from).collect(), false))
        }
    }
}

async fn audit_sends(
    shared: &Shared,
    caller: &Caller,
    requests: &[crate::writer::SendRequest],
    keyed: &str,
) {
    let detail = match requests {
        [] => return,
        [one] => format!("{} to {}{keyed}", one.precedence.name(), one.peer),
        many => format!("batch of {}{keyed}", many.len()),
    };
    audit_api(shared, caller, "send", &detail).await;
}

/// A created answer, marked as a replay when it is one.
fn created<T: Serialize>(body: T, replayed: bool) -> Response {
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    if replayed {
        response.headers_mut().insert(
            crate::idempotency::REPLAYED_HEADER,
            HeaderValue::from_static("true"),
        );
    }
    response
}

#[utoipa::path(
    post,
    path = "/api/v1/messages",
    tag = "messages",
    request_body = SendBody,
    params(
        ("Accept-Language" = Option<String>, Header, description = "The language of errors and problems (en or zh); the node's by default."),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the send safe to retry: 1 to 64 visible ASCII characters the client chooses (a UUID), as a structured-field string or bare. Stored with the messages in one transaction and remembered for 24 hours per caller (token or login; 100000 keys at most): a retry with the same key and body gets the stored answer again (Idempotent-Replayed: true) and sends nothing; if nothing was committed, it sends. Same key, other body: 422; first request still in flight: 409; malformed key: 400.", pattern = "^([!#-\\[\\]-~]{1,64}|\"[!#-\\[\\]-~]{1,64}\")$"),
    ),
    responses(
        (status = 201, description = "Stored durably and queued.", body = SentJson,
            headers(("Idempotent-Replayed" = String, description = "true when this is the stored answer of an earlier request with the same Idempotency-Key (nothing was sent again)."))),
        (status = "default", description = "An error: {\"error\", \"hint\"}.", body = openapi::ErrorJson),
    )
)]
async fn send(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    headers: axum::http::HeaderMap,
    JsonBytes(body, bytes): JsonBytes<SendBody>,
) -> ApiResult {
    let key = crate::idempotency::key(&headers)?;
    let requests = || {
        let reply = crate::i18n::request_lang(&shared, &headers);
        let request = build_request(&shared, body, Some(&reply))?;
        caller.may_send(request.precedence)?;
        Ok(vec![request])
    };
    let route = ("POST /api/v1/messages", &bytes[..]);
    let (mut sent, replayed) = send_idempotent(&shared, &caller, key, route, requests).await?;
    let one = sent.pop().ok_or_else(internal)?;
    Ok(created(one, replayed))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct GlossaryQuery {
    peer: String,
}

fn known_peer(shared: &Shared, peer: &str) -> Result<(), ApiError> {
    if shared.table.get(peer).is_none() {
        return Err(
            ApiError::new(StatusCode::NOT_FOUND, format!("peer {peer:?} is not known"))
                .hint("add it with: detente peer add --name NAME --key KEY --addr HOST:PORT"),
        );
    }
    Ok(())
}

#[utoipa::path(
    get,
    path = "/api/v1/glossary",
    tag = "peers",
    params(GlossaryQuery),
    responses(
        (status = 200, description = "The channel's glossary.", body = Vec<openapi::GlossaryTermJson>),
        (status = "default", description = "An error: {\"error\", \"hint\"}.", body = openapi::ErrorJson),
    )
)]
async fn glossary_list(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<GlossaryQuery>,
) -> ApiResult {
    known_peer(&shared, &q.peer)?;
    let rows = shared
        .store
        .glossary(&q.peer, crate::notify::GLOSSARY_TERMS_MAX)
        .await?;
    let out: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            json!({
                "peer": r.peer,
                "lang_a": r.lang_a,
                "term_a": r.term_a,
                "lang_b": r.lang_b,
                "term_b": r.term_b,
                "added_at": time_text(r.added_at_ms),
            })
        })
        .collect();
    Ok(Json(out).into_response())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct GlossaryBody {
    peer: String,
    /// A language tag such as `en`; different from `lang_b`.
    #[schema(pattern = "^[A-Za-z0-9]+(-[A-Za-z0-9]+)*$", max_length = 35)]
    lang_a: String,
    /// 1 to 200 bytes of text without control characters.
    #[schema(min_length = 1, max_length = 200)]
    term_a: String,
    /// A language tag such as `zh-CN`.
    #[schema(pattern = "^[A-Za-z0-9]+(-[A-Za-z0-9]+)*$", max_length = 35)]
    lang_b: String,
    #[schema(min_length = 1, max_length = 200)]
    term_b: String,
}

/// Add an agreed pair of terms to the channel's glossary (replacing an earlier equivalent
/// of the same term in the same languages).
#[utoipa::path(
    post,
    path = "/api/v1/glossary",
    tag = "peers",
    request_body = GlossaryBody,
    responses(
        (status = 201, description = "The pair was added.", body = openapi::OkJson),
        (status = "default", description = "An error: {\"error\", \"hint\"}.", body = openapi::ErrorJson),
    )
)]
async fn glossary_add(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Json(body): Json<GlossaryBody>,
) -> ApiResult {
    known_peer(&shared, &body.peer)?;
    let row = detente_store::GlossaryRow {
        peer: body.peer,
        lang_a: body.lang_a,
        term_a: body.term_a,
        lang_b: body.lang_b,
        term_b: body.term_b,
        added_at_ms: now_ms() as i64,
    };
    // The same rule as the core's, so both refuse the same terms with the same words.
    detente_core::check_glossary_term(&row)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    let count = shared
        .store
        .glossary(&row.peer, crate::notify::GLOSSARY_TERMS_MAX + 1)
        .await?
        .len();
    if count >= crate::notify::GLOSSARY_TERMS_MAX as usize {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "the glossary is full ({} terms)",
                crate::notify::GLOSSARY_TERMS_MAX
            ),
        ));
    }
    let detail = format!(
        "{}: {} {:?} = {} {:?}",
        row.peer, row.lang_a, row.term_a, row.lang_b, row.term_b
    );
    shared.engine.add_glossary(row).await?;
    audit_api(&shared, &caller, "glossary add", &detail).await;
    Ok((StatusCode::CREATED, Json(json!({"ok": true}))).into_response())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct BatchBody {
    messages: Vec<SendBody>,
}

/// Send many messages, **all or nothing**: every one is checked and signed before any is
/// stored, and one transaction stores them all, in order; the answer comes once it is
/// durable. A crash before that leaves none of them, after it all (a retry with the same
/// `Idempotency-Key` then gets their ids).
#[utoipa::path(
    post,
    path = "/api/v1/messages/batch",
    tag = "messages",
    request_body = BatchBody,
    params(
        ("Accept-Language" = Option<String>, Header, description = "The language of errors and problems (en or zh); the node's by default."),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the send safe to retry: 1 to 64 visible ASCII characters the client chooses (a UUID), as a structured-field string or bare. Stored with the messages in one transaction and remembered for 24 hours per caller (token or login; 100000 keys at most): a retry with the same key and body gets the stored answer again (Idempotent-Replayed: true) and sends nothing; if nothing was committed, it sends. Same key, other body: 422; first request still in flight: 409; malformed key: 400.", pattern = "^([!#-\\[\\]-~]{1,64}|\"[!#-\\[\\]-~]{1,64}\")$"),
    ),
    responses(
        (status = 201, description = "Every message stored durably, in order, in one transaction.", body = Vec<SentJson>,
            headers(("Idempotent-Replayed" = String, description = "true when this is the stored answer of an earlier request with the same Idempotency-Key (nothing was sent again)."))),
        (status = "default", description = "An error: {\"error\", \"hint\"}.", body = openapi::ErrorJson),
    )
)]
async fn send_batch(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    headers: axum::http::HeaderMap,
    JsonBytes(body, bytes): JsonBytes<BatchBody>,
) -> ApiResult {
    let key = crate::idempotency::key(&headers)?;
    if body.messages.len() > SEND_BATCH_MAX {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("at most {SEND_BATCH_MAX} messages per batch"),
        ));
    }
    // Every message is checked before anything is signed.
    let requests = || {
        let reply = crate::i18n::request_lang(&shared, &headers);
        let mut requests = Vec::with_capacity(body.messages.len());
        for message in body.messages {
            let request = build_request(&shared, message, Some(&reply))?;
            caller.may_send(request.precedence)?;
            requests.push(request);
        }
        Ok(requests)
    };
    let route = ("POST /api/v1/messages/batch", &bytes[..]);
    let (sent, replayed) = send_idempotent(&shared, &caller, key, route, requests).await?;
    Ok(created(sent, replayed))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only this peer's channel.
    peer: Option<String>,
    /// `in`, `out` or `all` (the default).
    #[param(pattern = "^(in|out|all)$")]
    direction: Option<String>,
    /// The language to render in; the node's by default.
    lang: Option<String>,
    /// The reader's time zone (an IANA name) for the local times inside notifications;
    /// the node's by default.
    tz: Option<String>,
    /// Rows at most: 1000 by default, at most 10 000.
    limit: Option<u32>,
    /// Also receipts, link tests and charters.
    #[serde(default)]
    receipts: bool,
}

#[utoipa::path(
    get,
    path = "/api/v1/messages",
    tag = "messages",
    params(ListQuery),
    responses(
        (status = 200, description = "The channels' messages, oldest first.", body = Vec<openapi::MessageJson>),
        (status = "default", description = "An error: {\"error\", \"hint\"}.", body = openapi::ErrorJson),
    )
)]
async fn list(State(shared): State<Arc<Shared>>, Query(q): Query<ListQuery>) -> ApiResult {
    check_reader_zone(&q)?;
    let direction = match q.direction.as_deref() {
        None | Some("all") => None,
        Some("in") => Some(Direction::In),
        Some("out") => Some(Direction::Out),
        Some(other) => {
            return Err(
                ApiError::new(StatusCode::BAD_REQUEST, format!("direction {other:?}"))
                    .hint("use in, out or all"),
            )
        }
    };
    if let Some(peer) = &q.peer {
        if shared.table.get(peer).is_none() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("peer {peer:?} is not known"),
            ));
        }
    }
    let rows = shared
        .store
        .inbox(InboxQuery {
            peer: q.peer.clone(),
            direction,
            include_system: q.receipts,
            limit: q.limit.unwrap_or(1000).min(LIST_LIMIT_MAX),
        })
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push(message_json_in(&shared, &row, q.lang.as_deref(), q.tz.as_deref()).await?);
    }
    Ok(Json(out).into_response())
}

/// Refuses a `tz` the zone database does not hold, before anything is read.
fn check_reader_zone(q: &ListQuery) -> Result<(), ApiError> {
    match q.tz.as_deref().map(detente_formats::check_zone) {
        Some(Err(e)) => Err(ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
            .hint("give an IANA name such as America/New_York, Asia/Shanghai or UTC")),
        _ => Ok(()),
    }
}

fn parse_id(text: &str) -> Result<MessageId, ApiError> {
    MessageId::from_hex(text)
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "not a message id (64 hex digits)"))
}

#[utoipa::path(
    get,
    path = "/api/v1/messages/{id}",
    tag = "messages",
    params(("id" = String, Path, description = "The message id: 64 hex digits.", pattern = "^[0-9a-fA-F]{64}$"), ListQuery),
    responses(
        (status = 200, description = "One message.", body = openapi::MessageJson),
        (status = "default", description = "An error: {\"error\", \"hint\"}.", body = openapi::ErrorJson),
    )
)]
async fn one(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    let id = parse_id(&id)?;
    check_reader_zone(&q)?;
    let row = shared
        .store
        .message(id.0)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such message"))?;
    let json = message_json_in(&shared, &row, q.lang.as_deref(), q.tz.as_deref()).await?;
    Ok(Json(json).into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct WaitQuery {
    /// `delivered` (the default), `read` or `acknowledged`.
    #[param(pattern = "^(delivered|read|acknowledged)$")]
    level: Option<String>,
    /// How long to wait, 30 000 ms by default, at most 600 000.
    #[param(maximum = 600_000)]
    timeout_ms: Option<u64>,
}

/// Wait until a message reached a receipt level (delivered, read, acknowledged); 408 if not
/// within the timeout. A declined receipt ends the wait too (the answer says which).
#[utoipa::path(
    get,
    path = "/api/v1/messages/{id}/wait",
    tag = "messages",
    params(("id" = String, Path, description = "The message id: 64 hex digits.", pattern = "^[0-9a-fA-F]{64}$"), WaitQuery),
    responses(
        (status = 200, description = "The message, once it reached the level (or was declined); 408 when the timeout passes first.", body = openapi::MessageJson),
        (status = "default", description = "An error: {\"error\", \"hint\"}.", body = openapi::ErrorJson),
    )
)]
async fn wait(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> ApiResult {
    let id = parse_id(&id)?;
    let level = match q.level.as_deref() {
        None => ReceiptLevel::Delivered,
        Some(l) => ReceiptLevel::parse(l).ok_or_else(|| {
            ApiError::new(StatusCode::BAD_REQUEST, format!("unknown level {l:?}"))
                .hint("use delivered, read or acknowledged")
        })?,
    };
    let deadline =
        Instant::now() + Duration::from_millis(q.timeout_ms.unwrap_or(30_000).min(WAIT_MS_MAX));
    let mut events = shared.events.subscribe();
    loop {
        let row = shared
            .store
            .message(id.0)
            .await?
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such message"))?;
        let json = message_json(&shared, &row, None).await?;
        let receipts = &json["receipts"];
        let reached = !receipts[level.name()].is_null()
            || !receipts["declined"].is_null()
            || (level == ReceiptLevel::Read && !receipts["acknowledged"].is_null());
        if reached {
            return Ok(Json(json).into_response());
        }
        // Look again only when an event concerns this message (or events were missed).
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let event = match tokio::time::timeout(remaining, events.recv()).await {
                Err(_) => {
                    return Err(ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        format!("no {} receipt yet", level.name()),
                    ))
                }
                Ok(event) => event,
            };
            let concerns = match event {
                Ok(Event::Delivered { peer, from, to }) => {
                    peer == row.peer && (from..=to).contains(&row.seq)
                }
                Ok(Event::Receipt { of, .. }) => of == id,
                Ok(_) => false,
                // Lagged: some events were lost; look at the store again.
                Err(_) => true,
            };
            if concerns {
                break;
            }
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct ReceiptBody {
    /// `read`, `acknowledged` (the default) or `declined`.
    #[schema(pattern = "^(read|acknowledged|declined)$")]
    level: Option<String>,
    /// A note signed with the receipt.
    note: Option<String>,
}

/// Send a signed READ / ACKNOWLEDGED / DECLINED receipt for a received message.
#[utoipa::path(
    post,
    path = "/api/v1/messages/{id}/receipts",
    tag = "messages",
    params(("id" = String, Path, description = "The message id: 64 hex digits.", pattern = "^[0-9a-fA-F]{64}$")),
    request_body = ReceiptBody,
    responses(
        (status = 201, description = "The signed receipt, stored and queued.", body = SentJson),
        (status = "default", description = "An error: {\"error\", \"hint\"}.", body = openapi::ErrorJson),
    )
)]
async fn receipt(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Json(body): Json<ReceiptBody>,
) -> ApiResult {
    let parsed = parse_id(&id)?;
    let level = match body.level.as_deref() {
        None => ReceiptLevel::Acknowledged,
        Some(l) => match ReceiptLevel::parse(l) {
            Some(ReceiptLevel::Delivered) | None => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("level {l:?} cannot be sent by hand"),
                )
                .hint("use read, acknowledged or declined"))
            }
            Some(level) => level,
        },
    };
    if let Some(role) = caller.role() {
        let allowed = match level {
            ReceiptLevel::Read => role.can_mark_read(),
            _ => role.can_answer(),
        };
        if !allowed {
            return Err(ApiError::forbidden(
                &format!("send {} receipts", level.name()),
                role,
            ));
        }
    }
    let detail = format!("{} {id}", level.name());
    let sent = answer(&shared, parsed, level, body.note).await?;
    audit_api(&shared, &caller, "receipt", &detail).await;
    let json = SentJson::from(sent);
    Ok((StatusCode::CREATED, Json(json)).into_response())
}

#[utoipa::path(
    post,
    path = "/api/v1/peers/{name}/reload",
    tag = "peers",
    params(("name" = String, Path, description = "The peer's name, as pinned.")),
    responses(
        (status = 200, description = "The peer's pinned configuration was read again.", body = openapi::ReloadedJson),
        (status = "default", description = "An error: {\"error\", \"hint\"}.", body = openapi::ErrorJson),
    )
)]
async fn reload_peer(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult {
    if let Some(role) = caller.role().filter(|r| !r.can_admin()) {
        return Err(ApiError::forbidden("change peers", role));
    }
    crate::add_peer(&shared, &name)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    Ok(Json(json!({"peer": name, "state": "pinned"})).into_response())
}

/// The channel charter with a peer: the agreed one, the latest each side signed, and the
/// peer's terms from the last session.
#[utoipa::path(
    get,
    path = "/api/v1/peers/{name}/charter",
    tag = "peers",
    params(("name" = String, Path, description = "The peer's name, as pinned.")),
    responses(
        (status = 200, description = "The charter agreed with the peer and the latest each side signed.", body = openapi::PeerCharterJson),
        (status = "default", description = "An error: {\"error\", \"hint\"}.", body = openapi::ErrorJson),
    )
)]
async fn peer_charter(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> ApiResult {
    if shared.table.get(&name).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("peer {name:?} is not known"),
        ));
    }
    let state = shared.charters.get(&name);
    let mut body = crate::charter::status_json(&state);
    body["peer"] = json!(name);
    body["ours"] = json!(state.ours.as_ref().map(|(c, id)| json!({
        "digest": hex::encode(c.digest()),
        "message": id.to_hex(),
    })));
    body["theirs"] = json!(state.theirs.as_ref().map(|(c, id)| json!({
        "digest": hex::encode(c.digest()),
        "message": id.to_hex(),
    })));
    Ok(Json(body).into_response())
}

/// The name the API gives an evidence kind.
fn evidence_kind(kind: u8) -> &'static str {
    match kind {
        detente_store::EVIDENCE_ENVELOPES => "equivocation",
        detente_store::EVIDENCE_BROKEN_CHAIN => "broken-chain",
        _ => "inconsistent-checkpoints",
    }
}
