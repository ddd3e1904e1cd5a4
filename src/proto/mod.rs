//! The typha-rs wire protocol (version 1): types, byte layout and framing, in one place.
//! `docs/protocol.md` documents every message byte by byte; `encode` is the one seam through
//! which batches and snapshots become shared frames.

mod borrowed;
mod codec;
pub mod encode;
mod messages;
pub mod typha;

pub use borrowed::*;
pub use codec::*;
pub use messages::*;
