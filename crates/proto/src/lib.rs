//! The detente protocol core: identities, envelopes, link frames, the link supervisor,
//! stream acceptance and precedence scheduling. **No I/O**: nothing here reads a clock, a
//! socket, a file or a random generator; callers pass `now` and randomness in. That is what
//! makes every rule here testable deterministically. The one exception is batch signature
//! verification ([`VerifiedEnvelope::decode_batch`], [`bundle::verify`]), which draws its
//! random coefficients from the operating system's CSPRNG; its verdicts do not depend on
//! them, and the `_with_rng` variants take the generator for tests.

#![forbid(unsafe_code)]

pub mod bundle;
pub mod bundle_writer;
mod cbor;
pub mod charter;
pub mod checkpoint;
pub mod claim;
pub mod deadline;
pub mod envelope;
pub mod error;
pub mod frame;
pub mod identity;
pub mod link;
pub mod merkle;
pub mod sched;
pub mod sig;
pub mod stream;

pub use charter::{BelowFloor, Charter, CharterError, Deadlines, Floors, FormatRef, Member, Terms};
pub use deadline::{LineVerdict, LinkTest, Need, Side, Verdict};
pub use envelope::{
    Body, ChannelId, Envelope, EnvelopeError, FieldValue, MessageId, NotificationBody, Precedence,
    Receipt, ReceiptLevel, ReceiptTarget, TextBody, VerifiedEnvelope,
};
pub use error::KeyError;
pub use frame::{
    Frame, FrameError, RefuseCode, FETCHES_QUEUED_MAX, FETCH_ANSWER_BYTES_MAX, FETCH_ENVELOPES_MAX,
};
pub use identity::{fingerprint, PartyKey, PartySecret};
pub use link::{ClockOffset, LinkConfig, LinkState, LinkSupervisor};
pub use sched::{Outgoing, Refill, Scheduler};
pub use stream::{Disposition, Refusal, StreamCursor};
