//! Typha's own wire protocol, as Calico's Felix speaks it: Go `encoding/gob` envelopes, optionally
//! inside the snappy framing format. `docs/typha-gob-codec.md` documents every byte.
//!
//! The module is protocol-only: no sockets, no datastore types. It offers
//! - the message structs of Typha's `syncproto` package ([`messages`]);
//! - a server-side encoder with **fixed type ids** ([`server`]): one [`server_preamble`] of gob
//!   type definitions, after which every value message is independent of the connection, so a
//!   delta batch is encoded (and compressed, [`snappy`]) once and written to every client;
//! - incremental, bounded decoders for both directions ([`ClientStreamDecoder`],
//!   [`ServerStreamDecoder`]) that accept whatever type ids, field order and definition placement
//!   the peer's gob encoder chose;
//! - a Go-like stateful client encoder ([`ClientEncoder`]) and a socket-free Felix client state
//!   machine ([`FelixClientSession`]) for tests and the load generator.

mod client;
mod decode;
mod error;
pub mod legacy_keys;
pub mod messages;
pub mod server;
mod session;
pub mod snappy;
mod typedef;
mod wire;

pub use client::ClientEncoder;
pub use decode::{
    decode_all_client_messages, decode_all_server_messages, decode_all_server_messages_from,
    ClientStreamDecoder, ServerStreamDecoder, DEFAULT_MAX_CLIENT_MESSAGE,
    DEFAULT_MAX_SERVER_MESSAGE,
};
pub use error::TyphaCodecError;
pub use messages::*;
pub use server::{
    encode_decoder_restart, encode_kvs, encode_kvs_into, encode_kvs_refs, encode_ping,
    encode_server_hello, encode_sync_status, server_preamble, server_preamble_snappy,
};
pub use session::{FelixClientConfig, FelixClientEvent, FelixClientSession, FelixSessionError};
