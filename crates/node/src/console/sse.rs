//! Server-sent events for open console pages: one `change` event per node event (a message
//! stored, a delivery, a receipt), after which the page's script refetches its live regions.
//! The events carry no message content, only what changed, so a page always shows what the
//! store holds.
//!
//! **Bounded**: [`STREAMS_MAX`] streams per node and [`STREAMS_PER_SESSION_MAX`] per session.
//! **A stream lives no longer than its session**: it ends at logout (at once), at the
//! session's expiry, and when a check of the store ([`SESSION_RECHECK`]) no longer finds the
//! session (a password reset ends every session of that login). **Refusals are retried**: a
//! stream over a cap is answered 200 with a `retry:` and a `busy` event, then closed, because
//! `EventSource` gives up for good on a 503 but reconnects after a closed stream.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, BoxStream, StreamExt};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;

use super::Operator;
use crate::events::Event;
use crate::{now_ms, Shared};

/// Open event streams per node, at most (browser tabs of all operators).
pub const STREAMS_MAX: usize = 64;
/// Open event streams per session, at most (one operator's tabs).
pub const STREAMS_PER_SESSION_MAX: usize = 4;
/// What the browser waits before it reconnects a closed stream.
pub const RETRY: Duration = Duration::from_secs(2);
/// What a browser refused for a cap waits before it tries again.
pub const RETRY_BUSY: Duration = Duration::from_secs(5);
/// How often a stream checks that its session still exists.
pub const SESSION_RECHECK: Duration = Duration::from_secs(10);
/// Logouts announced to open streams and not yet seen, at most (a stream that lags checks
/// its session in the store instead).
const ENDED_BACKLOG_MAX: usize = 256;

/// The open streams: counted per session, and told when a session ends.
pub struct Streams {
    open: Mutex<HashMap<[u8; 32], usize>>,
    ended: tokio::sync::broadcast::Sender<[u8; 32]>,
}

impl Default for Streams {
    fn default() -> Self {
        Self {
            open: Mutex::new(HashMap::new()),
            ended: tokio::sync::broadcast::channel(ENDED_BACKLOG_MAX).0,
        }
    }
}

impl Streams {
    /// Take a place for one more stream of `session`, if both caps allow it.
    fn admit(self: &Arc<Self>, session: [u8; 32]) -> Option<Place> {
        let mut open = self.open.lock().ok()?;
        let total: usize = open.values().sum();
        let mine = open.get(&session).copied().unwrap_or(0);
        if total >= STREAMS_MAX || mine >= STREAMS_PER_SESSION_MAX {
            return None;
        }
        *open.entry(session).or_insert(0) += 1;
        Some(Place {
            streams: self.clone(),
            session,
        })
    }

    /// End every open stream of `session` (at logout).
    pub fn end_session(&self, session: [u8; 32]) {
        let _ = self.ended.send(session);
    }

    /// Open streams in all.
    pub fn open(&self) -> usize {
        self.open.lock().map_or(0, |o| o.values().sum())
    }
}

/// One stream's place; given back when the stream ends.
struct Place {
    streams: Arc<Streams>,
    session: [u8; 32],
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Ok(mut open) = self.streams.open.lock() {
            if let Some(n) = open.get_mut(&self.session) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&self.session);
                }
            }
        }
    }
}

fn describe(event: &Event) -> serde_json::Value {
    match event {
        Event::Stored {
            peer,
            direction,
            precedence,
            kind,
            ..
        } => json!({
            "what": "stored",
            "peer": peer,
            "incoming": *direction == detente_store::Direction::In,
            "precedence": precedence.name(),
            "kind": kind,
        }),
        Event::Delivered { peer, .. } => json!({"what": "delivered", "peer": peer}),
        Event::Receipt { level, .. } => json!({"what": "receipt", "level": level.name()}),
        Event::Overdue { peer, needed, .. } => {
            json!({"what": "overdue", "peer": peer, "needed": needed})
        }
        Event::Alarm { peer, .. } => json!({"what": "alarm", "peer": peer}),
        Event::Discarded { peer, .. } => json!({"what": "discarded", "peer": peer}),
    }
}

type Item = Result<SseEvent, Infallible>;

/// A stream refused for a cap: tell the browser when to come back, then close.
fn busy() -> Response {
    let event = SseEvent::default()
        .retry(RETRY_BUSY)
        .event("busy")
        .data("too many open event streams");
    Sse::new(stream::iter([Ok::<_, Infallible>(event)])).into_response()
}

pub async fn events(State(shared): State<Arc<Shared>>, op: Operator) -> Response {
    let streams = shared.console.streams.clone();
    let Some(place) = streams.admit(op.token_hash) else {
        return busy();
    };
    let state = Live {
        shared: shared.clone(),
        op,
        events: shared.events.subscribe(),
        ended: streams.ended.subscribe(),
        shutdown: shared.shutdown.clone(),
        _place: place,
    };
    let hello = SseEvent::default()
        .retry(RETRY)
        .event("hello")
        .data("{\"what\":\"hello\"}");
    let body: BoxStream<'static, Item> = stream::iter([Ok(hello)])
        .chain(stream::unfold(state, next))
        .boxed();
    Sse::new(body)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// What one open stream holds while it lives.
struct Live {
    shared: Arc<Shared>,
    op: Operator,
    events: Receiver<Event>,
    ended: Receiver<[u8; 32]>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    _place: Place,
}

/// The next event of a stream, or its end (logout, expiry, session gone, shutdown).
async fn next(mut s: Live) -> Option<(Item, Live)> {
    loop {
        let left_ms = s.op.expires_at_ms.saturating_sub(now_ms() as i64).max(0) as u64;
        let until_check = SESSION_RECHECK.min(Duration::from_millis(left_ms));
        let data = tokio::select! {
            r = s.events.recv() => match r {
                Ok(event) => describe(&event),
                Err(RecvError::Lagged(_)) => json!({"what": "lagged"}),
                Err(RecvError::Closed) => return None,
            },
            r = s.ended.recv() => match r {
                Ok(hash) if hash == s.op.token_hash => return None,
                Ok(_) => continue,
                // Missed announcements: ask the store.
                Err(RecvError::Lagged(_)) => {
                    if !session_live(&s).await {
                        return None;
                    }
                    continue;
                }
                Err(RecvError::Closed) => return None,
            },
            _ = tokio::time::sleep(until_check) => {
                if !session_live(&s).await {
                    return None;
                }
                continue;
            }
            _ = s.shutdown.changed() => return None,
        };
        let event = SseEvent::default().event("change").data(data.to_string());
        return Some((Ok(event), s));
    }
}

/// Whether the stream's session is still live (not expired, not deleted).
async fn session_live(s: &Live) -> bool {
    let now = now_ms() as i64;
    if now >= s.op.expires_at_ms {
        return false;
    }
    // A store error is not a logout: keep the stream, check again later.
    !matches!(s.shared.store.session(s.op.token_hash, now).await, Ok(None))
}
