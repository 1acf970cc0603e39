//! Node events for live listings and waiting clients (`send --wait`, `inbox --follow`).
//!
//! A broadcast channel with a bounded backlog: a slow listener loses old events (it is told
//! it lagged and re-reads the store), and never slows the writer.

use detente_proto::{MessageId, Precedence, ReceiptLevel};
use detente_store::Direction;
use tokio::sync::broadcast;

/// Events kept for slow listeners.
pub const EVENTS_BACKLOG_MAX: usize = 4096;

#[derive(Debug, Clone)]
pub enum Event {
    /// A message became durable (written here or received).
    Stored {
        peer: String,
        id: MessageId,
        seq: u64,
        direction: Direction,
        precedence: Precedence,
        kind: u8,
    },
    /// The peer confirmed our envelopes `from..=to` durable (a signed DELIVERED receipt).
    Delivered { peer: String, from: u64, to: u64 },
    /// A READ / ACKNOWLEDGED / DECLINED receipt for one of our messages.
    Receipt { of: MessageId, level: ReceiptLevel },
    /// Equivocation evidence was stored; the channel with `peer` is flagged.
    Alarm { peer: String, detail: String },
}

#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<Event>,
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

impl Events {
    pub fn new() -> Self {
        Self {
            tx: broadcast::channel(EVENTS_BACKLOG_MAX).0,
        }
    }

    pub fn publish(&self, event: Event) {
        // No listener is fine.
        let _ = self.tx.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
