//! Server-sent events for open console pages: one `change` event per node event (a message
//! stored, a delivery, a receipt), after which the page's script refetches its live regions.
//! The events carry no message content, only what changed, so a page always shows what the
//! store holds.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::Operator;
use crate::events::Event;
use crate::Shared;

/// Open event streams per node, at most (browser tabs of all operators).
pub const STREAMS_MAX: usize = 64;

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
    }
}

pub async fn events(State(shared): State<Arc<Shared>>, _op: Operator) -> Response {
    let Ok(permit) = shared.console.streams.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many open event streams\n",
        )
            .into_response();
    };
    let receiver = shared.events.subscribe();
    let shutdown = shared.shutdown.clone();
    let stream = futures_util::stream::unfold((receiver, permit), move |(mut receiver, permit)| {
        let mut shutdown = shutdown.clone();
        async move {
            let data = tokio::select! {
                r = receiver.recv() => match r {
                    Ok(event) => describe(&event),
                    Err(RecvError::Lagged(_)) => json!({"what": "lagged"}),
                    Err(RecvError::Closed) => return None,
                },
                _ = shutdown.changed() => return None,
            };
            let event = SseEvent::default().event("change").data(data.to_string());
            Some((Ok::<_, Infallible>(event), (receiver, permit)))
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
