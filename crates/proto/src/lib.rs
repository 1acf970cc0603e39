//! The detente protocol core: identities, envelopes, link frames, the link state machine and
//! precedence scheduling. **No I/O**: nothing here reads a clock, a socket, a file or a random
//! generator; callers pass `now` and randomness in. That is what makes every rule here testable
//! deterministically.

#![forbid(unsafe_code)]

pub mod error;
pub mod identity;

pub use error::KeyError;
pub use identity::{fingerprint, PartyKey, PartySecret};
