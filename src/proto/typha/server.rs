//! The server's gob encoder, with **fixed type ids**.
//!
//! A Go encoder defines each type on its stream just before the first value that uses it, so
//! the bytes of a message depend on what that connection was sent before. Here every stream
//! the server writes starts with the same [`server_preamble`]: one definition message per type
//! the server ever sends, in a fixed order with fixed ids. A Go decoder reads definitions in a
//! loop before each value (`decodeTypeSequence`) and keeps them for the life of the stream, so
//! after the preamble every value message below is valid on every connection, and one encoding
//! of a delta batch, a status change or a ping can be written to all of them.

use super::messages::{
    names, DecoderRestart, GoTime, SerializedUpdate, SerializedUpdateRef, ServerHello,
};
use super::typedef::{write_definition, TypeDef};
use super::wire::{
    bytes_len, int_len, put_bytes, put_int, put_uint, uint_len, StructWriter, T_BOOL, T_BYTES,
    T_INT, T_INTERFACE, T_STRING, T_UINT,
};
use bytes::{BufMut, Bytes, BytesMut};
use std::sync::OnceLock;

/// The fixed type ids of the server's streams, in preamble order.
pub mod ids {
    pub const ENVELOPE: i64 = 64;
    pub const SERVER_HELLO: i64 = 65;
    pub const DECODER_RESTART: i64 = 66;
    pub const SYNC_STATUS: i64 = 67;
    pub const PING: i64 = 68;
    pub const TIME: i64 = 69;
    pub const KVS: i64 = 70;
    pub const KV_SLICE: i64 = 71;
    pub const SERIALIZED_UPDATE: i64 = 72;
}

/// Field numbers of `SerializedUpdate` in the fixed definition (Go declaration order).
const SU_KEY: u8 = 0;
const SU_VALUE: u8 = 1;
const SU_REVISION: u8 = 2;
const SU_V3_RESOURCE_VERSION: u8 = 3;
const SU_TTL: u8 = 4;
const SU_UPDATE_TYPE: u8 = 5;

/// The definitions in the preamble, in order. Field order is Typha's declaration order.
fn preamble_definitions() -> [(i64, TypeDef<'static>); 9] {
    [
        (
            ids::ENVELOPE,
            TypeDef::Struct {
                name: "Envelope",
                fields: &[("Message", T_INTERFACE)],
            },
        ),
        (
            ids::SERVER_HELLO,
            TypeDef::Struct {
                name: "MsgServerHello",
                fields: &[
                    ("Version", T_STRING),
                    ("SyncerType", T_STRING),
                    ("SupportsNodeResourceUpdates", T_BOOL),
                    ("ServerConnID", T_UINT),
                ],
            },
        ),
        (
            ids::DECODER_RESTART,
            TypeDef::Struct {
                name: "MsgDecoderRestart",
                fields: &[("Message", T_STRING), ("CompressionAlgorithm", T_STRING)],
            },
        ),
        (
            ids::SYNC_STATUS,
            TypeDef::Struct {
                name: "MsgSyncStatus",
                fields: &[("SyncStatus", T_UINT)],
            },
        ),
        (
            ids::PING,
            TypeDef::Struct {
                name: "MsgPing",
                fields: &[("Timestamp", ids::TIME)],
            },
        ),
        (ids::TIME, TypeDef::GobEncoder { name: "Time" }),
        (
            ids::KVS,
            TypeDef::Struct {
                name: "MsgKVs",
                fields: &[("KVs", ids::KV_SLICE)],
            },
        ),
        (
            ids::KV_SLICE,
            TypeDef::Slice {
                name: "[]syncproto.SerializedUpdate",
                elem: ids::SERIALIZED_UPDATE,
            },
        ),
        (
            ids::SERIALIZED_UPDATE,
            TypeDef::Struct {
                name: "SerializedUpdate",
                fields: &[
                    ("Key", T_STRING),
                    ("Value", T_BYTES),
                    ("Revision", T_INTERFACE),
                    ("V3ResourceVersion", T_STRING),
                    ("TTL", T_INT),
                    ("UpdateType", T_UINT),
                ],
            },
        ),
    ]
}

/// The gob type definitions every server stream starts with (plain gob bytes, not framed).
/// Built once; the returned `Bytes` shares one buffer.
pub fn server_preamble() -> Bytes {
    static PREAMBLE: OnceLock<Bytes> = OnceLock::new();
    PREAMBLE
        .get_or_init(|| {
            let mut out = Vec::with_capacity(512);
            for (id, def) in preamble_definitions().iter() {
                write_definition(&mut out, *id, def);
            }
            Bytes::from(out)
        })
        .clone()
}

/// The snappy stream identifier followed by the preamble in snappy chunks: how every
/// snappy-framed server stream (binary snapshot, live stream after a restart) begins. Built once.
pub fn server_preamble_snappy() -> Bytes {
    static PREAMBLE: OnceLock<Bytes> = OnceLock::new();
    PREAMBLE
        .get_or_init(|| super::snappy::frame_stream(&server_preamble()).freeze())
        .clone()
}

/// Length of an `Envelope` message body around a concrete value of `value_len` bytes.
#[inline]
fn envelope_body_len(name: &str, concrete_id: i64, value_len: usize) -> usize {
    int_len(ids::ENVELOPE)
        + 1
        + bytes_len(name.len())
        + int_len(concrete_id)
        + uint_len(value_len as u64)
        + value_len
        + 1
}

/// Writes the `Envelope` message header up to (and including) the interface value's byte count;
/// the caller then writes exactly `value_len` bytes and [`put_envelope_tail`].
#[inline]
fn put_envelope_head<B: BufMut>(out: &mut B, name: &str, concrete_id: i64, value_len: usize) {
    put_uint(out, envelope_body_len(name, concrete_id, value_len) as u64);
    put_int(out, ids::ENVELOPE);
    put_uint(out, 1); // Envelope.Message, field 0
    put_bytes(out, name.as_bytes());
    put_int(out, concrete_id);
    put_uint(out, value_len as u64);
}

#[inline]
fn put_envelope_tail<B: BufMut>(out: &mut B) {
    put_uint(out, 0); // end of Envelope
}

fn envelope(name: &str, concrete_id: i64, value: &[u8]) -> Bytes {
    let body = envelope_body_len(name, concrete_id, value.len());
    let mut out = BytesMut::with_capacity(uint_len(body as u64) + body);
    put_envelope_head(&mut out, name, concrete_id, value.len());
    out.put_slice(value);
    put_envelope_tail(&mut out);
    out.freeze()
}

/// `Envelope{MsgServerHello}` using the preamble's ids.
pub fn encode_server_hello(hello: &ServerHello) -> Bytes {
    let mut v = Vec::with_capacity(64);
    let mut s = StructWriter::new(&mut v);
    s.string(0, &hello.version);
    s.string(1, &hello.syncer_type);
    s.bool(2, hello.supports_node_resource_updates);
    s.uint(3, hello.server_conn_id);
    s.finish();
    envelope(names::SERVER_HELLO, ids::SERVER_HELLO, &v)
}

/// `Envelope{MsgDecoderRestart}` using the preamble's ids.
pub fn encode_decoder_restart(restart: &DecoderRestart) -> Bytes {
    let mut v = Vec::with_capacity(64);
    let mut s = StructWriter::new(&mut v);
    s.string(0, &restart.message);
    s.string(1, &restart.compression);
    s.finish();
    envelope(names::DECODER_RESTART, ids::DECODER_RESTART, &v)
}

/// `Envelope{MsgSyncStatus}` using the preamble's ids.
pub fn encode_sync_status(status: u8) -> Bytes {
    let mut v = Vec::with_capacity(4);
    let mut s = StructWriter::new(&mut v);
    s.uint(0, status as u64);
    s.finish();
    envelope(names::SYNC_STATUS, ids::SYNC_STATUS, &v)
}

/// `Envelope{MsgPing}` using the preamble's ids.
pub fn encode_ping(timestamp: GoTime) -> Bytes {
    let mut v = Vec::with_capacity(24);
    let mut s = StructWriter::new(&mut v);
    s.time(0, &timestamp);
    s.finish();
    envelope(names::PING, ids::PING, &v)
}

/// The revision interface: name `"string"`, id of gob's string, byte count, then the string as
/// a top-level value (gob's singleton delta 0, length, bytes).
#[inline]
fn revision_len(rev: &str) -> usize {
    let inner = 1 + bytes_len(rev.len());
    bytes_len(6) + int_len(T_STRING) + uint_len(inner as u64) + inner
}

#[inline]
fn put_revision<B: BufMut>(out: &mut B, rev: &str) {
    put_bytes(out, b"string");
    put_int(out, T_STRING);
    put_uint(out, (1 + bytes_len(rev.len())) as u64);
    out.put_u8(0);
    put_bytes(out, rev.as_bytes());
}

/// Encoded length of one `SerializedUpdate` struct value.
#[inline]
fn update_len(u: &SerializedUpdateRef<'_>) -> usize {
    let mut n = 1; // terminator
    if !u.key.is_empty() {
        n += 1 + bytes_len(u.key.len());
    }
    if let Some(v) = u.value {
        if !v.is_empty() {
            n += 1 + bytes_len(v.len());
        }
    }
    n += 1 + revision_len(u.revision);
    if !u.v3_resource_version.is_empty() {
        n += 1 + bytes_len(u.v3_resource_version.len());
    }
    if u.ttl_nanos != 0 {
        n += 1 + int_len(u.ttl_nanos);
    }
    if u.update_type != 0 {
        n += 1 + uint_len(u.update_type as u64);
    }
    n
}

#[inline]
fn put_update<B: BufMut>(out: &mut B, u: &SerializedUpdateRef<'_>) {
    // Field numbers are below 6, so every delta is one byte.
    let mut last: i16 = -1;
    let mut field = |out: &mut B, n: u8| {
        out.put_u8((n as i16 - last) as u8);
        last = n as i16;
    };
    if !u.key.is_empty() {
        field(out, SU_KEY);
        put_bytes(out, u.key.as_bytes());
    }
    if let Some(v) = u.value {
        if !v.is_empty() {
            field(out, SU_VALUE);
            put_bytes(out, v);
        }
    }
    field(out, SU_REVISION);
    put_revision(out, u.revision);
    if !u.v3_resource_version.is_empty() {
        field(out, SU_V3_RESOURCE_VERSION);
        put_bytes(out, u.v3_resource_version.as_bytes());
    }
    if u.ttl_nanos != 0 {
        field(out, SU_TTL);
        put_int(out, u.ttl_nanos);
    }
    if u.update_type != 0 {
        field(out, SU_UPDATE_TYPE);
        put_uint(out, u.update_type as u64);
    }
    out.put_u8(0);
}

/// Appends one `Envelope{MsgKVs{KVs}}` message to `out` using the preamble's ids. The updates
/// are walked twice (sizes, then bytes), so the message is written with one reservation and no
/// intermediate buffer.
pub fn encode_kvs_into<'a, I>(out: &mut BytesMut, updates: I)
where
    I: IntoIterator<Item = SerializedUpdateRef<'a>>,
    I::IntoIter: Clone,
{
    let iter = updates.into_iter();
    let mut count = 0usize;
    let mut elems = 0usize;
    for u in iter.clone() {
        count += 1;
        elems += update_len(&u);
    }
    // MsgKVs{KVs}: an empty slice is a zero value and is omitted.
    let value_len = if count == 0 {
        1
    } else {
        1 + uint_len(count as u64) + elems + 1
    };
    let body = envelope_body_len(names::KVS, ids::KVS, value_len);
    out.reserve(uint_len(body as u64) + body);
    put_envelope_head(out, names::KVS, ids::KVS, value_len);
    if count > 0 {
        put_uint(out, 1); // MsgKVs.KVs, field 0
        put_uint(out, count as u64);
        for u in iter {
            put_update(out, &u);
        }
    }
    put_uint(out, 0); // end of MsgKVs
    put_envelope_tail(out);
}

/// One `Envelope{MsgKVs}` message from borrowed updates.
pub fn encode_kvs_refs<'a, I>(updates: I) -> Bytes
where
    I: IntoIterator<Item = SerializedUpdateRef<'a>>,
    I::IntoIter: Clone,
{
    let mut out = BytesMut::new();
    encode_kvs_into(&mut out, updates);
    out.freeze()
}

/// One `Envelope{MsgKVs}` message from owned updates.
pub fn encode_kvs<'a, I>(updates: I) -> Bytes
where
    I: IntoIterator<Item = &'a SerializedUpdate>,
    I::IntoIter: Clone,
{
    encode_kvs_refs(updates.into_iter().map(SerializedUpdateRef::from))
}
