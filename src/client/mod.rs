//! Client side of the protocol: the receiving end used by tests and the loadtest harness.
//!
//! Three layers, each usable on its own:
//!
//! * [`SyncState`] applies decoded [`ServerMessage`](crate::proto::ServerMessage)s to a local
//!   map, enforcing the message order and sequence rule of protocol v1 and checking the
//!   snapshot's key count and digest. [`Tracking::SeqOnly`] and [`Tracking::DigestOnly`] keep
//!   no map, for load tests with thousands of clients; `DigestOnly` decodes bulk frames
//!   zero-copy and still checks the snapshot's digest, and with
//!   [`ClientSession::record_frames`] every `Updates` frame's content is hashed so streams can
//!   be compared across clients.
//! * [`ClientSession`] is "bytes in, events out": it does no I/O, so any event loop (mio, tokio,
//!   a plain thread) can drive it. It queues the `Hello`, decodes frames, answers pings and
//!   hands out [`ClientEvent`]s.
//! * [`BlockingClient`] drives a session over a `std::net::TcpStream`, in plaintext or TLS.
//! * [`ReconnectingClient`] keeps a `BlockingClient` connected to one of several replicas
//!   ([`Discovery`]: a static list or a Kubernetes Service), moving on a Goodbye, an error or
//!   a silent peer.
//! * [`tls::ClientTls`] is the TLS configuration (CA, client certificate, expected server CN /
//!   URI SAN) for any event loop.
//!
//! The sequence rule (docs/protocol.md §9.5-9.6): after a snapshot at seq `S` and after each
//! `Updates` frame, the client's `seq` is the last sequence number it has. The first
//! `Updates{first_seq, last_seq}` after the snapshot is accepted only if
//! `first_seq <= seq + 1 <= last_seq` (a shared frame may start before the snapshot's seq);
//! every later one only if `first_seq == seq + 1 <= last_seq`. Then `seq = last_seq`. Anything
//! else (a gap, a duplicate, or an overlap with what was already applied) fails the connection
//! with [`ClientError::Protocol`].

mod blocking;
pub mod discovery;
mod error;
pub mod reconnect;
mod session;
mod state;
pub mod tls;

pub use blocking::BlockingClient;
pub use discovery::{Discovery, ServiceDiscovery};
pub use error::ClientError;
pub use reconnect::{ReconnectEvent, ReconnectOptions, ReconnectingClient};
pub use session::{find_stamp, ChunkMemo, ClientOptions, ClientSession, FrameRecord};
pub use state::{ClientEntry, ClientEvent, SyncState, Tracking};
