//! The message structs of Typha's `syncproto` package (Calico v3.32), with Rust names.
//!
//! Field names on the wire are Go's (`Hostname`, `SyncerType`, ...); gob matches them by name,
//! so the declaration order here is irrelevant to decoding. Enum-typed Go fields (`SyncStatus`,
//! `UpdateType`) stay `u8` so the codec does not depend on the model.

use bytes::Bytes;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Prefix of every registered interface name. Typha keeps its pre-monorepo import path.
pub const REGISTERED_NAME_PREFIX: &str = "github.com/projectcalico/typha/pkg/syncproto.";

/// The registered names of the eight message types (`gob.RegisterName` in syncproto's init).
pub mod names {
    pub const CLIENT_HELLO: &str = "github.com/projectcalico/typha/pkg/syncproto.MsgClientHello";
    pub const SERVER_HELLO: &str = "github.com/projectcalico/typha/pkg/syncproto.MsgServerHello";
    pub const DECODER_RESTART: &str =
        "github.com/projectcalico/typha/pkg/syncproto.MsgDecoderRestart";
    pub const ACK: &str = "github.com/projectcalico/typha/pkg/syncproto.MsgACK";
    pub const SYNC_STATUS: &str = "github.com/projectcalico/typha/pkg/syncproto.MsgSyncStatus";
    pub const PING: &str = "github.com/projectcalico/typha/pkg/syncproto.MsgPing";
    pub const PONG: &str = "github.com/projectcalico/typha/pkg/syncproto.MsgPong";
    pub const KVS: &str = "github.com/projectcalico/typha/pkg/syncproto.MsgKVs";
}

/// `syncproto.SyncerType` values. An empty syncer type means [`SYNCER_FELIX`].
pub const SYNCER_FELIX: &str = "felix";
pub const SYNCER_BGP: &str = "bgp";
pub const SYNCER_TUNNEL_IP_ALLOCATION: &str = "tunnel-ip-allocation";
pub const SYNCER_NODE_STATUS: &str = "node-status";

/// `syncproto.CompressionSnappy`, the only compression algorithm Typha v3.32 knows.
pub const COMPRESSION_SNAPPY: &str = "snappy";

/// `api.SyncStatus` values.
pub const SYNC_STATUS_WAIT_FOR_DATASTORE: u8 = 0;
pub const SYNC_STATUS_RESYNC_IN_PROGRESS: u8 = 1;
pub const SYNC_STATUS_IN_SYNC: u8 = 2;

/// `api.UpdateType` values.
pub const UPDATE_TYPE_UNKNOWN: u8 = 0;
pub const UPDATE_TYPE_NEW: u8 = 1;
pub const UPDATE_TYPE_UPDATED: u8 = 2;
pub const UPDATE_TYPE_DELETED: u8 = 3;

/// `MsgClientHello`: the first message a client sends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHello {
    pub hostname: String,
    pub info: String,
    pub version: String,
    /// Empty means `felix`.
    pub syncer_type: String,
    pub supports_decoder_restart: bool,
    pub supported_compression: Vec<String>,
    pub supports_modern_policy_keys: bool,
    pub client_conn_id: u64,
}

/// `MsgServerHello`: the server's answer to a hello.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerHello {
    pub version: String,
    pub syncer_type: String,
    pub supports_node_resource_updates: bool,
    pub server_conn_id: u64,
}

/// `MsgDecoderRestart`: from the next byte on, the stream is a fresh gob stream framed with
/// `compression` (`"snappy"`, or `""` for plain gob).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecoderRestart {
    /// Free text for humans.
    pub message: String,
    pub compression: String,
}

/// `MsgPing`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ping {
    pub timestamp: GoTime,
}

/// `MsgPong`. Felix echoes the ping's timestamp and leaves `pong_timestamp` zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pong {
    pub ping_timestamp: GoTime,
    pub pong_timestamp: GoTime,
}

/// `SerializedUpdate`: one key/value update inside `MsgKVs`.
///
/// `value` is `None` for a deletion. gob omits an empty byte slice, so `Some` of an empty value
/// is sent as, and decodes to, `None`. `revision` travels as a gob interface holding a Go
/// `string`, sent even when empty; a nil interface decodes to `""`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SerializedUpdate {
    pub key: String,
    pub value: Option<Bytes>,
    pub revision: String,
    pub v3_resource_version: String,
    /// `time.Duration`: nanoseconds.
    pub ttl_nanos: i64,
    pub update_type: u8,
}

/// A borrowed [`SerializedUpdate`]: what [`super::encode_kvs_refs`] reads, so a sender can encode
/// straight from its own storage without building owned updates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SerializedUpdateRef<'a> {
    pub key: &'a str,
    pub value: Option<&'a [u8]>,
    pub revision: &'a str,
    pub v3_resource_version: &'a str,
    pub ttl_nanos: i64,
    pub update_type: u8,
}

impl<'a> From<&'a SerializedUpdate> for SerializedUpdateRef<'a> {
    fn from(u: &'a SerializedUpdate) -> Self {
        SerializedUpdateRef {
            key: &u.key,
            value: u.value.as_deref(),
            revision: &u.revision,
            v3_resource_version: &u.v3_resource_version,
            ttl_nanos: u.ttl_nanos,
            update_type: u.update_type,
        }
    }
}

/// What a client sends (the server's decoder yields these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    Hello(ClientHello),
    Ack,
    Pong(Pong),
}

/// What a server stream can carry (the client's decoder yields these). Typha's server never
/// sends `Ack`, `Pong` or `ClientHello`, but they are registered names, which a Go client
/// decodes and ignores; they are kept so a client can do the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    Hello(ServerHello),
    DecoderRestart(DecoderRestart),
    SyncStatus(u8),
    Ping(Ping),
    Kvs(Vec<SerializedUpdate>),
    Ack,
    Pong(Pong),
    ClientHello(ClientHello),
}

/// Seconds from 0001-01-01T00:00:00Z (Go's internal epoch) to the Unix epoch.
pub const GO_SECONDS_TO_UNIX: i64 = 62_135_596_800;

/// A Go `time.Time` in its `MarshalBinary` form, kept field by field so a decoded time
/// re-encodes to the same bytes (Felix echoes ping timestamps).
///
/// Layout (15 bytes, or 16 for version 2): version, 8 bytes big-endian seconds since
/// 0001-01-01 UTC, 4 bytes big-endian nanoseconds, 2 bytes big-endian zone offset in minutes
/// (-1 means UTC), and for version 2 one byte of offset seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GoTime {
    pub seconds: i64,
    pub nanos: u32,
    /// Zone offset east of UTC in minutes; -1 means the UTC location.
    pub offset_minutes: i16,
    /// `Some` only in the 16-byte version-2 form (offsets with seconds).
    pub offset_seconds: Option<i8>,
}

impl Default for GoTime {
    fn default() -> Self {
        GoTime::ZERO
    }
}

impl GoTime {
    /// Go's zero `time.Time` (January 1, year 1, 00:00:00 UTC). gob omits it as a struct field.
    pub const ZERO: GoTime = GoTime {
        seconds: 0,
        nanos: 0,
        offset_minutes: -1,
        offset_seconds: None,
    };

    /// Whether Go would see this as the zero `time.Time` after `UnmarshalBinary`.
    pub fn is_zero(&self) -> bool {
        self.seconds == 0 && self.nanos == 0 && self.offset_minutes == -1
    }

    /// A UTC time from nanoseconds since the Unix epoch.
    pub fn from_unix_nanos(nanos: i128) -> GoTime {
        let secs = nanos.div_euclid(1_000_000_000);
        let sub = nanos.rem_euclid(1_000_000_000) as u32;
        let seconds = (secs + GO_SECONDS_TO_UNIX as i128).clamp(i64::MIN as i128, i64::MAX as i128);
        GoTime {
            seconds: seconds as i64,
            nanos: sub,
            offset_minutes: -1,
            offset_seconds: None,
        }
    }

    /// Nanoseconds since the Unix epoch (the zone offset does not change the instant).
    pub fn unix_nanos(&self) -> i128 {
        (self.seconds as i128 - GO_SECONDS_TO_UNIX as i128) * 1_000_000_000 + self.nanos as i128
    }

    /// A UTC time from a `SystemTime`.
    pub fn from_system_time(t: SystemTime) -> GoTime {
        let nanos = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i128,
            Err(e) => -(e.duration().as_nanos() as i128),
        };
        GoTime::from_unix_nanos(nanos)
    }

    /// The instant as a `SystemTime`.
    pub fn to_system_time(&self) -> SystemTime {
        let nanos = self.unix_nanos();
        if nanos >= 0 {
            UNIX_EPOCH + Duration::from_nanos(nanos.min(u64::MAX as i128) as u64)
        } else {
            UNIX_EPOCH - Duration::from_nanos((-nanos).min(u64::MAX as i128) as u64)
        }
    }

    /// The current time, UTC.
    pub fn now() -> GoTime {
        GoTime::from_system_time(SystemTime::now())
    }

    /// Length of [`Self::to_binary`]'s output.
    pub fn binary_len(&self) -> usize {
        if self.offset_seconds.is_some() {
            16
        } else {
            15
        }
    }

    /// Go's `Time.MarshalBinary` bytes.
    pub fn to_binary(&self) -> ([u8; 16], usize) {
        let mut b = [0u8; 16];
        b[0] = if self.offset_seconds.is_some() { 2 } else { 1 };
        b[1..9].copy_from_slice(&self.seconds.to_be_bytes());
        b[9..13].copy_from_slice(&self.nanos.to_be_bytes());
        b[13..15].copy_from_slice(&self.offset_minutes.to_be_bytes());
        if let Some(s) = self.offset_seconds {
            b[15] = s as u8;
        }
        (b, self.binary_len())
    }

    /// Parses Go's `Time.MarshalBinary` bytes (versions 1 and 2), as `UnmarshalBinary` does.
    pub fn from_binary(b: &[u8]) -> Option<GoTime> {
        let (&version, rest) = b.split_first()?;
        let want = match version {
            1 => 15,
            2 => 16,
            _ => return None,
        };
        if b.len() != want {
            return None;
        }
        let seconds = i64::from_be_bytes(rest[0..8].try_into().ok()?);
        let nanos = u32::from_be_bytes(rest[8..12].try_into().ok()?);
        let offset_minutes = i16::from_be_bytes(rest[12..14].try_into().ok()?);
        let offset_seconds = if version == 2 {
            Some(rest[14] as i8)
        } else {
            None
        };
        Some(GoTime {
            seconds,
            nanos,
            offset_minutes,
            offset_seconds,
        })
    }
}
