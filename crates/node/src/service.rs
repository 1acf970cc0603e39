//! The node's service: the queries and commands both presentations run — the HTTP API
//! ([`crate::api`], JSON for the command line and integrations) and the operator console
//! ([`crate::console`], HTML for duty officers). Neither presentation imports the other;
//! both call this, and nothing below imports it.
//!
//! [`Error`] is what a query or command refuses with: a status (the HTTP status either
//! presentation answers with), a message, a hint, and every invalid field of a refused
//! notification.

use std::sync::Arc;

use axum::http::StatusCode;
use detente_proto::{Body, MessageId, Precedence, ReceiptLevel, ReceiptTarget, TextBody};
use detente_store::{Direction, MessageRow, Placement, Store};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::events::Event;
use crate::operators::Role;
use crate::transcript::tampered_alarm;
use crate::writer::{SendRequest, WriteError};
use crate::{now_ms, time_text, Shared};

/// An error answer: a status and `{"error": ..., "hint": ...}`.
#[derive(Debug)]
pub struct Error {
    pub(crate) status: StatusCode,
    pub(crate) error: String,
    pub(crate) hint: Option<String>,
    /// Every invalid field of a refused notification (answered only when there are some).
    pub(crate) problems: Vec<crate::notify::Problem>,
}

impl Error {
    pub(crate) fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self {
            status,
            error: error.into(),
            hint: None,
            problems: Vec::new(),
        }
    }

    pub(crate) fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub(crate) fn forbidden(what: &str, role: Role) -> Self {
        Error::new(
            StatusCode::FORBIDDEN,
            format!("the {} role cannot {what}", role.name()),
        )
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.error)?;
        if let Some(hint) = &self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

impl From<WriteError> for Error {
    fn from(e: WriteError) -> Self {
        match &e {
            WriteError::UnknownPeer(name) => {
                Error::new(StatusCode::NOT_FOUND, e.to_string()).hint(format!(
                "add it with: detente peer add --dir DIR --name {name} --key KEY --addr HOST:PORT"
            ))
            }
            WriteError::Invalid(_) => Error::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
            WriteError::Store(_) | WriteError::Stopped => {
                Error::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
        }
    }
}

impl From<detente_store::StoreError> for Error {
    fn from(e: detente_store::StoreError) -> Self {
        Error::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

pub(crate) fn internal() -> Error {
    Error::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal state is unavailable",
    )
}

pub(crate) fn peer_entry(
    shared: &Shared,
    name: &str,
) -> Result<Arc<crate::peers::PeerEntry>, Error> {
    shared.table.get(name).ok_or_else(|| {
        Error::new(StatusCode::NOT_FOUND, format!("peer {name:?} is not known"))
            .hint("list the peers with: detente peer list --dir DIR")
    })
}

/// The export bundle of the channel with `name` (`detente verify` checks it) as a streamed
/// body: memory per export is bounded by a page and a few chunks, whatever the length of
/// the transcript. The first chunk is produced before answering, so that a failure in it (a
/// tampered row near the start, a failing store) is still a clear error status; a later
/// failure ends the body early (the bytes are then no bundle, and the verifier says so)
/// and raises the alarm.
pub(crate) async fn export_body(
    shared: &Arc<Shared>,
    name: &str,
) -> Result<(axum::body::Body, crate::transcript::ExportPlan), Error> {
    let entry = peer_entry(shared, name)?;
    // The charter envelopes both sides signed (kind 6), appended ones only; they are also in
    // the streams, and the verifier checks that every one is.
    let charters = shared
        .store
        .messages_of_kind(
            name,
            detente_proto::envelope::KIND_CHARTER,
            detente_proto::bundle::CHARTERS_MAX as u32,
        )
        .await?
        .into_iter()
        .filter(|m| m.placement == Placement::Appended)
        .map(|m| m.bytes)
        .collect();
    let plan = crate::transcript::plan_export(
        &shared.store,
        &shared.secret.public(),
        &entry.key,
        charters,
    )
    .await
    .map_err(|e| Error::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    let mut chunks = crate::transcript::stream_export(shared.store.clone(), plan.clone());
    let first = chunks
        .recv()
        .await
        .ok_or_else(internal)?
        .map_err(|e| export_failed(shared, name, e))?;
    let (shared, name) = (shared.clone(), name.to_string());
    let stream = futures_util::stream::unfold((Some(first), chunks), move |(first, mut chunks)| {
        let (shared, name) = (shared.clone(), name.clone());
        async move {
            let next = match first {
                Some(chunk) => Ok(chunk),
                None => chunks.recv().await?,
            };
            let item = next.map(axum::body::Bytes::from).map_err(|e| {
                let error = export_failed(&shared, &name, e);
                std::io::Error::other(error.to_string())
            });
            Some((item, (None, chunks)))
        }
    });
    Ok((axum::body::Body::from_stream(stream), plan))
}

/// An export that failed: the alarm for a tampered row, and the answer it gets.
fn export_failed(shared: &Shared, name: &str, e: crate::transcript::ExportError) -> Error {
    match e {
        crate::transcript::ExportError::Tampered(detail) => {
            tampered_alarm(shared, name, &detail);
            Error::new(StatusCode::INTERNAL_SERVER_ERROR, detail)
                .hint("restore the database from a backup and compare with the peer's export")
        }
        crate::transcript::ExportError::Store(detail) => {
            tracing::warn!(peer = name, "export stopped: {detail}");
            Error::new(StatusCode::SERVICE_UNAVAILABLE, detail)
        }
    }
}

/// A message to send, as the API accepts it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SendBody {
    /// The peer's name.
    pub to: String,
    /// `flash`, `immediate`, `priority` or `routine`; routine for text, the format's for a
    /// notification by default.
    #[serde(default)]
    #[schema(pattern = "^(flash|immediate|priority|routine)$")]
    pub precedence: Option<String>,
    #[serde(default)]
    pub topic: Option<String>,
    /// Free text; or leave it out and give `format` and `fields`.
    #[serde(default)]
    pub text: Option<String>,
    /// A structured notification: the format id (see `detente formats list`).
    #[serde(default)]
    pub format: Option<String>,
    /// The format's version; its latest by default.
    #[serde(default)]
    pub format_version: Option<u32>,
    #[serde(default)]
    pub fields: Vec<crate::notify::FieldInput>,
    /// Language of the text; the node's language by default.
    #[serde(default)]
    pub lang: Option<String>,
    /// Courtesy translations of the text: `[language, text]` pairs.
    #[serde(default)]
    #[schema(value_type = Vec<Vec<String>>)]
    pub translations: Vec<(String, String)>,
    #[serde(default)]
    pub reply_to: Option<String>,
    #[serde(default)]
    pub author: Option<String>,
}

/// The envelope body of a send: free text, or a notification validated against its format
/// (and the peer's charter) before anything is stored. Also the default precedence and
/// topic (the format's, for a notification).
/// Errors are in `reply` (the language the request asks for); a text with no language of
/// its own is in `lang` (the node's).
fn request_body(
    shared: &Shared,
    body: &SendBody,
    lang: &str,
    reply: &str,
) -> Result<(Body, Precedence, String), Error> {
    let unprocessable = |e: String| Error::new(StatusCode::UNPROCESSABLE_ENTITY, e);
    let t = |key: &str| shared.console.i18n.text(reply, key);
    match (&body.text, &body.format) {
        (Some(text), None) => Ok((
            Body::Text(TextBody {
                language: body.lang.clone().unwrap_or_else(|| lang.to_string()),
                text: text.clone(),
                translations: body.translations.clone(),
            }),
            Precedence::Routine,
            "general".to_string(),
        )),
        (None, Some(id)) => {
            let def = crate::notify::format(id, body.format_version)
                .map_err(|e| unprocessable(e.to_string()).hint(t("api-hint-formats")))?;
            let text_lang = body.lang.clone().unwrap_or_else(|| lang.to_string());
            let notification = crate::notify::build(def, &body.fields, &text_lang, now_ms())
                .map_err(|e| invalid_notification(shared, def, &e, reply))?;
            // The fields are checked first, so an operator learns of every mistake of theirs
            // even before the channel is agreed. (An unknown peer is the writer's error.)
            if shared.table.get(&body.to).is_some() {
                crate::notify::check_peer_holds(shared, &body.to, def).map_err(|e| {
                    let args = [("peer", body.to.clone())];
                    let hint = shared
                        .console
                        .i18n
                        .text_with(reply, "api-hint-charter", &args);
                    unprocessable(e).hint(hint)
                })?;
            }
            let precedence = Precedence::parse(&def.precedence).unwrap_or(Precedence::Routine);
            Ok((
                Body::Notification(notification),
                precedence,
                def.topic.clone(),
            ))
        }
        (Some(_), Some(_)) => Err(unprocessable(t("api-error-text-and-format"))),
        (None, None) => Err(unprocessable(t("api-error-nothing")).hint(t("api-hint-nothing"))),
    }
}

/// A notification refused by its format: every invalid field at once, in `lang` (the one the
/// request asks for, else the node's: the operator's, for the command line), as text and as
/// `problems`.
fn invalid_notification(
    shared: &Shared,
    def: &detente_formats::FormatDef,
    error: &crate::notify::NotifyError,
    lang: &str,
) -> Error {
    let args = [("format", def.id.clone())];
    let hint = shared
        .console
        .i18n
        .text_with(lang, "api-hint-fields", &args);
    match crate::notify::problems(def, error, lang, &shared.console.i18n) {
        Some((text, problems)) => {
            let mut e = Error::new(StatusCode::UNPROCESSABLE_ENTITY, text).hint(hint);
            e.problems = problems;
            e
        }
        None => Error::new(StatusCode::UNPROCESSABLE_ENTITY, error.to_string()).hint(hint),
    }
}

/// The message a send asks for, checked; its errors in `reply` (the language the request
/// asks for), else the node's language.
pub(crate) fn build_request(
    shared: &Shared,
    body: SendBody,
    reply: Option<&str>,
) -> Result<SendRequest, Error> {
    let (lang, author) = {
        let config = shared.config.read().map_err(|_| internal())?;
        (config.lang.clone(), config.author.clone())
    };
    let reply = reply.unwrap_or(&lang);
    let texts = &shared.console.i18n;
    let (message, default_precedence, default_topic) = request_body(shared, &body, &lang, reply)?;
    let precedence = match body.precedence.as_deref() {
        None => default_precedence,
        Some(p) => Precedence::parse(p).ok_or_else(|| {
            let args = [("precedence", format!("{p:?}"))];
            Error::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                texts.text_with(reply, "api-error-precedence", &args),
            )
            .hint(texts.text(reply, "api-hint-precedence"))
        })?,
    };
    let in_reply_to = match body.reply_to.as_deref() {
        None | Some("") => None,
        Some(text) => Some(MessageId::from_hex(text).ok_or_else(|| {
            Error::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                texts.text(reply, "api-error-reply-to"),
            )
        })?),
    };
    Ok(SendRequest {
        peer: body.to,
        precedence,
        topic: body.topic.unwrap_or(default_topic),
        author: body.author.unwrap_or(author),
        in_reply_to,
        body: message,
    })
}

/// Build, store and queue one message.
pub(crate) async fn send_one(
    shared: &Shared,
    body: SendBody,
) -> Result<crate::writer::Sent, Error> {
    let request = build_request(shared, body, None)?;
    Ok(shared.engine.send(request).await?)
}

/// Send a signed READ / ACKNOWLEDGED / DECLINED receipt for a received message.
pub(crate) async fn answer(
    shared: &Shared,
    id: MessageId,
    level: ReceiptLevel,
    note: Option<String>,
) -> Result<crate::writer::Sent, Error> {
    let row = shared
        .store
        .message(id.0)
        .await?
        .ok_or_else(|| Error::new(StatusCode::NOT_FOUND, "no such message"))?;
    if row.direction != Direction::In || row.kind == 1 {
        return Err(Error::new(
            StatusCode::BAD_REQUEST,
            "only messages received from a peer can be answered with a receipt",
        ));
    }
    let author = shared.config.read().map_err(|_| internal())?.author.clone();
    let answer = crate::engine::AnswerRequest {
        peer: row.peer.clone(),
        of: id,
        level,
        note,
        precedence: Precedence::from_u8(row.precedence).unwrap_or(Precedence::Routine),
        topic: row.topic.clone(),
        author,
    };
    let sent = shared.engine.answer(answer).await?;
    // Our answer settles the message's deadline on this side.
    shared.events.publish(Event::Receipt { of: id, level });
    Ok(sent)
}

/// The API's view of a stored message, in `lang` (the node's by default), a notification's
/// local times in the node's zone.
pub(crate) async fn message_json(
    shared: &Shared,
    row: &MessageRow,
    lang: Option<&str>,
) -> Result<Value, Error> {
    message_json_in(shared, row, lang, None).await
}

/// [`message_json`], a notification's local times in zone `tz` (checked by the caller with
/// `detente_formats::check_zone`) instead of the node's.
pub(crate) async fn message_json_in(
    shared: &Shared,
    row: &MessageRow,
    lang: Option<&str>,
    tz: Option<&str>,
) -> Result<Value, Error> {
    let (my_name, node_lang, tz) = {
        let c = shared.config.read().map_err(|_| internal())?;
        let tz = tz.map_or_else(|| c.tz.clone(), str::to_string);
        (c.name.clone(), c.lang.clone(), tz)
    };
    let lang = lang.unwrap_or(&node_lang);
    // Stored bytes were verified before they were stored, but the file can be altered since:
    // nothing is shown unverified. A row that fails is shown as such, never its text.
    let sender = detente_proto::PartyKey::from_bytes(row.sender).map_err(|_| internal())?;
    let verified = match detente_proto::VerifiedEnvelope::decode(&row.bytes, Some(&sender)) {
        Ok(v) if v.id().0 == row.id => v,
        verdict => {
            let why = verdict
                .err()
                .map_or("its id does not match its bytes".into(), |e| e.to_string());
            let detail = format!(
                "{}: message {} seq {} of peer {} ({why})",
                crate::transcript::TAMPERED,
                hex::encode(row.id),
                row.seq,
                row.peer
            );
            tampered_alarm(shared, &row.peer, &detail);
            return Ok(json!({
                "id": hex::encode(row.id),
                "seq": row.seq,
                "peer": row.peer,
                "tampered": true,
                "error": detail,
            }));
        }
    };
    let e = verified.envelope();
    let times = shared.store.receipt_times(row.id).await?;
    let delivered = match row.direction {
        Direction::In => Some(row.stored_at_ms),
        Direction::Out => times.delivered_ms,
    };
    let (mut format, mut fields) = (Value::Null, Value::Null);
    let (text, language, translations, rendered, target) = match &e.body {
        Body::Notification(n) => {
            let glossary = crate::notify::glossary(shared, &row.peer).await?;
            format = Value::String(n.format.clone());
            fields = crate::notify::fields_json(n);
            let shown = crate::notify::render(n, e.created_at_ms, lang, &tz, &glossary);
            (Value::Null, Value::Null, json!([]), shown, Value::Null)
        }
        Body::Text(t) => {
            let shown = t
                .translations
                .iter()
                .find(|(l, _)| l == lang)
                .filter(|_| t.language != lang)
                .map_or(t.text.clone(), |(_, s)| {
                    format!("{} [{}: {}]", t.text, lang, s)
                });
            (
                Value::String(t.text.clone()),
                Value::String(t.language.clone()),
                json!(t.translations),
                shown,
                Value::Null,
            )
        }
        Body::Receipt(r) => {
            let what = match &r.target {
                ReceiptTarget::Ranges(ranges) => {
                    let list: Vec<String> = ranges
                        .iter()
                        .map(|(a, b)| {
                            if a == b {
                                a.to_string()
                            } else {
                                format!("{a}-{b}")
                            }
                        })
                        .collect();
                    format!("{} seq {}", r.level.name(), list.join(","))
                }
                ReceiptTarget::Message(id) => format!("{} {}", r.level.name(), &id.to_hex()[..12]),
            };
            let what = match &r.note {
                Some(n) => format!("{what}: {n}"),
                None => what,
            };
            let target = match &r.target {
                ReceiptTarget::Message(id) => Value::String(id.to_hex()),
                ReceiptTarget::Ranges(ranges) => json!(ranges),
            };
            (Value::Null, Value::Null, json!([]), what, target)
        }
        Body::Test { .. } => (
            Value::Null,
            Value::Null,
            json!([]),
            "link test".to_string(),
            Value::Null,
        ),
        Body::Charter(c) => (
            Value::Null,
            Value::Null,
            json!([]),
            format!(
                "channel charter {} ({} members, {} formats)",
                &hex::encode(c.digest())[..12],
                c.members.len(),
                c.formats.len()
            ),
            Value::Null,
        ),
    };
    let precedence = Precedence::from_u8(row.precedence).unwrap_or(Precedence::Routine);
    // Overdue is decided by the watch task on the monotonic clock and recorded; here it is
    // only read: a deadline missed whose receipt has not come.
    let misses = shared.store.misses(row.id).await?;
    let answered = times.acknowledged_ms.or(times.declined_ms);
    let (overdue, late_ms) = crate::deadlines::lateness(&misses, times.delivered_ms, answered);
    let deadline = if detente_proto::deadline::bears_deadline(row.kind) {
        let d = crate::deadlines::deadlines_for(shared, &row.peer);
        let start = if row.direction == Direction::Out {
            row.created_at_ms
        } else {
            row.stored_at_ms
        };
        json!({
            "acknowledge_by": time_text(start + d.acknowledged(precedence).as_millis() as i64),
            "missed": misses.iter().map(|m| json!({
                "needed": detente_proto::Need::from_code(m.level).map_or("?", |n| n.name()),
                "due_at": time_text(m.due_at_ms),
                "missed_at": time_text(m.missed_at_ms),
                "noticed_after_ms": m.missed_at_ms - m.due_at_ms,
            })).collect::<Vec<_>>(),
        })
    } else {
        Value::Null
    };
    Ok(json!({
        "id": hex::encode(row.id),
        "peer": row.peer,
        "sender": if row.direction == Direction::Out { my_name } else { row.peer.clone() },
        "seq": row.seq,
        "direction": if row.direction == Direction::Out { "out" } else { "in" },
        "precedence": precedence.name(),
        "topic": row.topic,
        "author": e.author,
        "created_at": time_text(row.created_at_ms),
        "kind": e.body.kind_name(),
        "text": text,
        "language": language,
        "translations": translations,
        "format": format,
        "fields": fields,
        "rendered": rendered,
        "target": target,
        "received_at": if row.direction == Direction::In { Value::String(time_text(row.stored_at_ms)) } else { Value::Null },
        "placement": if row.placement == Placement::Held { "held" } else { "appended" },
        "in_reply_to": row.in_reply_to.map(hex::encode),
        "receipts": {
            "delivered": opt_time(delivered),
            "read": opt_time(times.read_ms),
            "acknowledged": opt_time(times.acknowledged_ms),
            "declined": opt_time(times.declined_ms),
            "note": times.note,
        },
        "overdue": overdue,
        "late": late_ms.is_some(),
        "late_ms": late_ms,
        "deadline": deadline,
    }))
}

pub(crate) fn opt_time(ms: Option<i64>) -> Value {
    ms.map_or(Value::Null, |m| Value::String(time_text(m)))
}
