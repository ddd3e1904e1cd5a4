//! The messages of protocol version 1. `docs/protocol.md` gives their layout byte by byte.
//!
//! Owned types are what a receiver decodes. The sender of the hot messages (`Updates`,
//! `SnapshotChunk`) never builds them: it encodes straight from the shared model values through
//! [`UpdateSeq`], which writes exactly the layout of `Vec<WireUpdate>`. A test holds the two
//! encodings byte-identical.

use crate::model::{Entry, Key, SyncStatus, Update, UpdateType};
use bincode::enc::Encoder;
use bincode::error::EncodeError;
use bincode::Encode;
use std::sync::Arc;

/// The protocol this build speaks. A peer with another major version is refused with
/// `Goodbye(UnsupportedVersion)`; minor versions only add optional behaviour.
pub const PROTOCOL_VERSION: ProtocolVersion = ProtocolVersion { major: 1, minor: 0 };

#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct ProtocolVersion {
    pub major: u16,
    pub minor: u16,
}

impl std::fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Frame-compression codecs. On the wire in a `Hello` as their names (so an unknown name is
/// skipped, not a decode error), in a `Compressed` frame as this enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, bincode::Encode, bincode::Decode)]
pub enum Codec {
    Zstd,
    Lz4,
    Snappy,
}

impl Codec {
    pub const ALL: [Codec; 3] = [Codec::Zstd, Codec::Lz4, Codec::Snappy];

    pub fn as_str(self) -> &'static str {
        match self {
            Codec::Zstd => "zstd",
            Codec::Lz4 => "lz4",
            Codec::Snappy => "snappy",
        }
    }

    pub fn parse(s: &str) -> Option<Codec> {
        Codec::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// Why the server is closing a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, bincode::Encode, bincode::Decode)]
pub enum GoodbyeReason {
    Shutdown,
    Rebalancing,
    TooSlow,
    ProtocolError,
    ServerFull,
    UnsupportedVersion,
    Timeout,
}

impl GoodbyeReason {
    pub fn as_str(self) -> &'static str {
        match self {
            GoodbyeReason::Shutdown => "shutdown",
            GoodbyeReason::Rebalancing => "rebalancing",
            GoodbyeReason::TooSlow => "too-slow",
            GoodbyeReason::ProtocolError => "protocol-error",
            GoodbyeReason::ServerFull => "server-full",
            GoodbyeReason::UnsupportedVersion => "unsupported-version",
            GoodbyeReason::Timeout => "timeout",
        }
    }
}

/// The first message on every connection, client to server.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Hello {
    pub protocol_version: ProtocolVersion,
    pub hostname: String,
    pub client_info: String,
    /// A syncer type name; empty means `felix`.
    pub syncer_type: String,
    /// Codec names the client can decode, in any order.
    pub accepts_compression: Vec<String>,
}

/// Just the leading field of a `Hello`: decoded on its own when a whole `Hello` fails to
/// decode, so a client of another major version gets a clear refusal rather than "garbage".
#[derive(Debug, Clone, Copy, bincode::Decode)]
pub struct HelloPrefix {
    pub protocol_version: ProtocolVersion,
}

#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum ClientMessage {
    Hello(Hello),
    /// Answers the `Ping` with the same id.
    Pong {
        id: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct ServerHello {
    pub protocol_version: ProtocolVersion,
    pub server_id: String,
    pub connection_id: u64,
    pub syncer_type: String,
    /// The codec this connection's `Compressed` frames use, if any.
    pub compression: Option<Codec>,
}

/// One key/value change as it travels. `value: None` deletes `key`.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct WireUpdate {
    pub key: String,
    pub value: Option<Vec<u8>>,
    pub revision: String,
    pub update_type: UpdateType,
}

#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum ServerMessage {
    ServerHello(ServerHello),
    SyncStatus(SyncStatus),
    /// Part of the snapshot as of sequence `seq`, in key order.
    SnapshotChunk {
        seq: u64,
        updates: Vec<WireUpdate>,
    },
    /// Closes the snapshot: `key_count` entries whose digest is `digest`, and the datastore
    /// status as of `seq`. Every later `Updates` continues from `seq`.
    SnapshotEnd {
        seq: u64,
        status: SyncStatus,
        key_count: u64,
        digest: [u8; 16],
    },
    /// The changes of sequence numbers `first_seq..=last_seq` that this syncer type receives.
    /// `received_at` is when the oldest of them reached the daemon (Unix nanoseconds).
    Updates {
        first_seq: u64,
        last_seq: u64,
        received_at: u64,
        updates: Vec<WireUpdate>,
    },
    Ping {
        id: u64,
        sent_at: u64,
    },
    Goodbye {
        reason: GoodbyeReason,
        message: String,
    },
    /// Another server message, bincode-encoded then compressed with `codec`.
    Compressed {
        codec: Codec,
        uncompressed_len: u32,
        data: Vec<u8>,
    },
}

/// The variant indexes of [`ServerMessage`], for encoders that write a variant by hand.
pub(crate) mod server_tag {
    pub const SNAPSHOT_CHUNK: u32 = 2;
    pub const UPDATES: u32 = 4;
    pub const COMPRESSED: u32 = 7;
}

/// A sequence of updates encoded from shared model values with the layout of
/// `Vec<WireUpdate>`: no per-client (or even per-frame) copy of keys or values is made.
pub enum UpdateSeq<'a> {
    Batch(&'a [&'a Update]),
    Snapshot(&'a [(&'a Key, &'a Arc<Entry>)]),
}

impl UpdateSeq<'_> {
    pub fn len(&self) -> usize {
        match self {
            UpdateSeq::Batch(u) => u.len(),
            UpdateSeq::Snapshot(e) => e.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn encode_update<E: Encoder>(
    e: &mut E,
    key: &str,
    value: Option<&[u8]>,
    revision: &str,
    update_type: UpdateType,
) -> Result<(), EncodeError> {
    key.encode(e)?;
    value.encode(e)?;
    revision.encode(e)?;
    update_type.encode(e)
}

impl Encode for UpdateSeq<'_> {
    fn encode<E: Encoder>(&self, e: &mut E) -> Result<(), EncodeError> {
        (self.len() as u64).encode(e)?;
        match self {
            UpdateSeq::Batch(updates) => {
                for u in updates.iter() {
                    encode_update(e, &u.key, u.value.as_deref(), &u.revision, u.update_type)?;
                }
            }
            UpdateSeq::Snapshot(entries) => {
                for (k, v) in entries.iter() {
                    encode_update(e, k, Some(&v.value), &v.revision, UpdateType::New)?;
                }
            }
        }
        Ok(())
    }
}
