//! Incremental gob decoders for both directions of a Typha connection.
//!
//! Bytes go in as they arrive; whole messages come out. Nothing assumes the peer's encoder
//! made the same choices as ours: type ids are learnt from the definitions on the stream
//! (inline before first use, all up front, or inside an interface value), struct fields are
//! matched by name in any order, unknown fields are skipped by their wire type, missing fields
//! stay zero. Every length read from the peer is checked against the bytes of the current
//! message, whose size is capped before it is buffered, so memory stays bounded by the cap.

use super::error::TyphaCodecError;
use super::messages::*;
use super::snappy::FrameReader;
use super::typedef::{read_wire_type, WireType};
use super::wire::{
    Reader, FIRST_USER_ID, T_BOOL, T_BYTES, T_COMPLEX, T_FLOAT, T_INT, T_INTERFACE, T_STRING,
    T_UINT,
};
use bytes::{Buf, Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::Arc;

/// Typha's cap on one inbound client message (`maxInboundMessageBytes`).
pub const DEFAULT_MAX_CLIENT_MESSAGE: usize = 1 << 20;

/// Default cap on one server message for our own clients. Typha sets none; its largest messages
/// are binary-snapshot `MsgKVs` of 1000 updates.
pub const DEFAULT_MAX_SERVER_MESSAGE: usize = 64 << 20;

/// Most type definitions one stream may carry. Typha's streams need fewer than a dozen.
const MAX_TYPES: usize = 1024;

/// Deepest nesting of types followed when skipping an unknown field.
const MAX_DEPTH: usize = 32;

/// Longest interface name Go accepts.
const MAX_INTERFACE_NAME: usize = 1024;

type Result<T> = std::result::Result<T, TyphaCodecError>;

/// The type definitions received on one gob stream.
#[derive(Default)]
struct Types {
    map: HashMap<i64, Arc<WireType>>,
    /// Ids in definition order, so a value attempt that needs more input can be undone.
    journal: Vec<i64>,
}

/// Where a message field goes, by its Go type: `Ctx::read_message`'s field table.
enum Field<T> {
    Str(fn(&mut T) -> &mut String),
    Bool(fn(&mut T) -> &mut bool),
    U64(fn(&mut T) -> &mut u64),
    Strings(fn(&mut T) -> &mut Vec<String>),
    Time(fn(&mut T) -> &mut GoTime),
}

impl Types {
    fn define(&mut self, id: i64, wt: WireType) -> Result<()> {
        if id < FIRST_USER_ID || self.map.contains_key(&id) {
            return Err(TyphaCodecError::BadTypeDefinition(id));
        }
        if self.map.len() >= MAX_TYPES {
            return Err(TyphaCodecError::TooManyTypes(MAX_TYPES));
        }
        self.map.insert(id, Arc::new(wt));
        self.journal.push(id);
        Ok(())
    }

    fn checkpoint(&self) -> usize {
        self.journal.len()
    }

    fn rollback(&mut self, checkpoint: usize) {
        for id in self.journal.drain(checkpoint..) {
            self.map.remove(&id);
        }
    }

    fn get(&self, id: i64) -> Result<Arc<WireType>> {
        self.map
            .get(&id)
            .cloned()
            .ok_or(TyphaCodecError::UndefinedType(id))
    }
}

/// The message types registered under Typha's names.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    ClientHello,
    ServerHello,
    DecoderRestart,
    Ack,
    SyncStatus,
    Ping,
    Pong,
    Kvs,
}

impl Kind {
    fn from_name(name: &[u8]) -> Option<Kind> {
        let suffix = name.strip_prefix(REGISTERED_NAME_PREFIX.as_bytes())?;
        Some(match suffix {
            b"MsgClientHello" => Kind::ClientHello,
            b"MsgServerHello" => Kind::ServerHello,
            b"MsgDecoderRestart" => Kind::DecoderRestart,
            b"MsgACK" => Kind::Ack,
            b"MsgSyncStatus" => Kind::SyncStatus,
            b"MsgPing" => Kind::Ping,
            b"MsgPong" => Kind::Pong,
            b"MsgKVs" => Kind::Kvs,
            _ => return None,
        })
    }

    fn go_name(self) -> &'static str {
        match self {
            Kind::ClientHello => "MsgClientHello",
            Kind::ServerHello => "MsgServerHello",
            Kind::DecoderRestart => "MsgDecoderRestart",
            Kind::Ack => "MsgACK",
            Kind::SyncStatus => "MsgSyncStatus",
            Kind::Ping => "MsgPing",
            Kind::Pong => "MsgPong",
            Kind::Kvs => "MsgKVs",
        }
    }
}

/// One value message being decoded: the message bytes (so byte slices can be shared, not
/// copied) and the stream's types.
struct Ctx<'a> {
    types: &'a mut Types,
    msg: &'a Bytes,
    /// End offsets of the gob messages `msg` is the concatenation of (see [`GobCore`]).
    boundaries: &'a [usize],
}

fn check_type(fid: i64, want: i64, field: &'static str) -> Result<()> {
    if fid == want {
        Ok(())
    } else {
        Err(TyphaCodecError::TypeMismatch { field })
    }
}

fn read_u8_field(r: &mut Reader<'_>, fid: i64, field: &'static str) -> Result<u8> {
    check_type(fid, T_UINT, field)?;
    u8::try_from(r.read_uint()?).map_err(|_| TyphaCodecError::Malformed("uint8 value out of range"))
}

impl<'a> Ctx<'a> {
    /// Walks a struct value of wire type `id`, handing each field to `f` by name; fields `f`
    /// does not take are skipped by their wire type.
    fn read_struct<'m>(
        &mut self,
        r: &mut Reader<'m>,
        id: i64,
        what: &'static str,
        depth: usize,
        mut f: impl FnMut(&mut Self, &mut Reader<'m>, &str, i64) -> Result<bool>,
    ) -> Result<()> {
        let wt = self.types.get(id)?;
        let WireType::Struct { fields } = &*wt else {
            return Err(TyphaCodecError::TypeMismatch { field: what });
        };
        let mut field: i64 = -1;
        loop {
            let delta = r.read_uint()?;
            if delta == 0 {
                return Ok(());
            }
            if delta > fields.len() as u64 {
                return Err(TyphaCodecError::Malformed("field number out of range"));
            }
            field += delta as i64;
            let (name, fid) = fields
                .get(field as usize)
                .ok_or(TyphaCodecError::Malformed("field number out of range"))?;
            if !f(self, r, name, *fid)? {
                self.skip(r, *fid, depth + 1)?;
            }
        }
    }

    /// Reads an interface value's name and concrete type id, absorbing type definitions that
    /// precede the id (Go's `decodeTypeSequence(true)`). Go's encoder writes the definition of
    /// a concrete type first used inside an interface into the *current* message, right after
    /// the name, and ends that message there; the id and value follow in a later message. So:
    /// at a message end the sequence continues in the next message (or needs more input), and
    /// a definition followed by more bytes of the same message is followed by a byte count to
    /// skip. The value's own byte count comes next and is left to the caller. `None` for a nil
    /// interface.
    fn read_interface_header<'m>(&mut self, r: &mut Reader<'m>) -> Result<Option<(&'m [u8], i64)>> {
        let name = r.read_bytes()?;
        if name.is_empty() {
            return Ok(None);
        }
        if name.len() > MAX_INTERFACE_NAME {
            return Err(TyphaCodecError::Malformed("interface name too long"));
        }
        loop {
            if r.remaining() == 0 {
                return Err(TyphaCodecError::IncompleteValue);
            }
            let id = r.read_int()?;
            if id >= 0 {
                return Ok(Some((name, id)));
            }
            let wt = read_wire_type(r)?;
            self.types
                .define(id.checked_neg().unwrap_or(i64::MAX), wt)?;
            if !self.boundaries.contains(&r.position()) {
                r.read_uint()?;
            }
        }
    }

    /// Skips one value of wire type `id`.
    fn skip(&mut self, r: &mut Reader<'_>, id: i64, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(TyphaCodecError::Malformed("types nested too deeply"));
        }
        match id {
            T_BOOL | T_INT | T_UINT | T_FLOAT => {
                r.read_uint()?;
            }
            T_BYTES | T_STRING => {
                r.read_bytes()?;
            }
            T_COMPLEX => {
                r.read_uint()?;
                r.read_uint()?;
            }
            T_INTERFACE => {
                if self.read_interface_header(r)?.is_some() {
                    // An ignored interface value is skipped by its byte count, as Go does.
                    let n = r.read_uint()?;
                    if n > r.remaining() as u64 {
                        return Err(TyphaCodecError::Malformed("length exceeds message"));
                    }
                    r.take(n as usize)?;
                }
            }
            _ if id < FIRST_USER_ID => {
                return Err(TyphaCodecError::Malformed(
                    "field of an unsupported built-in type",
                ))
            }
            _ => {
                let wt = self.types.get(id)?;
                match &*wt {
                    WireType::Struct { .. } => {
                        self.read_struct(r, id, "skipped struct", depth, |_, _, _, _| Ok(false))?;
                    }
                    WireType::Slice { elem } | WireType::Array { elem } => {
                        let n = r.read_count()?;
                        for _ in 0..n {
                            self.skip(r, *elem, depth + 1)?;
                        }
                    }
                    WireType::Map { key, elem } => {
                        let n = r.read_count()?;
                        for _ in 0..n {
                            self.skip(r, *key, depth + 1)?;
                            self.skip(r, *elem, depth + 1)?;
                        }
                    }
                    WireType::External => {
                        r.read_bytes()?;
                    }
                }
            }
        }
        Ok(())
    }

    fn read_string(&mut self, r: &mut Reader<'_>, fid: i64, field: &'static str) -> Result<String> {
        check_type(fid, T_STRING, field)?;
        r.read_string()
    }

    fn read_bool(&mut self, r: &mut Reader<'_>, fid: i64, field: &'static str) -> Result<bool> {
        check_type(fid, T_BOOL, field)?;
        r.read_bool()
    }

    fn read_u64(&mut self, r: &mut Reader<'_>, fid: i64, field: &'static str) -> Result<u64> {
        check_type(fid, T_UINT, field)?;
        r.read_uint()
    }

    /// A `time.Time` field: the wire type must be an externally-encoded type.
    fn read_time(&mut self, r: &mut Reader<'_>, fid: i64, field: &'static str) -> Result<GoTime> {
        if fid < FIRST_USER_ID || !matches!(&*self.types.get(fid)?, WireType::External) {
            return Err(TyphaCodecError::TypeMismatch { field });
        }
        GoTime::from_binary(r.read_bytes()?).ok_or(TyphaCodecError::BadTime)
    }

    fn read_string_slice(
        &mut self,
        r: &mut Reader<'_>,
        fid: i64,
        field: &'static str,
    ) -> Result<Vec<String>> {
        let elem_is_string = fid >= FIRST_USER_ID
            && matches!(&*self.types.get(fid)?, WireType::Slice { elem } if *elem == T_STRING);
        if !elem_is_string {
            return Err(TyphaCodecError::TypeMismatch { field });
        }
        let n = r.read_count()?;
        let mut v = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            v.push(r.read_string()?);
        }
        Ok(v)
    }

    /// The `Revision` interface: Typha always sends a Go `string`; other basic types are
    /// formatted in decimal as Felix's `%v` would.
    fn read_revision(&mut self, r: &mut Reader<'_>) -> Result<String> {
        let Some((name, id)) = self.read_interface_header(r)? else {
            return Ok(String::new());
        };
        r.read_uint()?; // byte count
        let want = match name {
            b"string" => T_STRING,
            b"int" | b"int8" | b"int16" | b"int32" | b"int64" => T_INT,
            b"uint" | b"uint8" | b"uint16" | b"uint32" | b"uint64" | b"uintptr" => T_UINT,
            b"bool" => T_BOOL,
            _ => return Err(TyphaCodecError::TypeMismatch { field: "Revision" }),
        };
        check_type(id, want, "Revision")?;
        if r.read_uint()? != 0 {
            return Err(TyphaCodecError::Malformed("non-empty delta for singleton"));
        }
        Ok(match want {
            T_STRING => r.read_string()?,
            T_INT => r.read_int()?.to_string(),
            T_UINT => r.read_uint()?.to_string(),
            _ => r.read_bool()?.to_string(),
        })
    }

    /// Reads a message struct whose fields are all listed in `fields` (Go name, where it goes);
    /// fields not listed are skipped, as Go's decoder ignores fields the receiver lacks.
    fn read_message<T: Default>(
        &mut self,
        r: &mut Reader<'_>,
        id: i64,
        what: &'static str,
        fields: &[(&'static str, Field<T>)],
    ) -> Result<T> {
        let mut out = T::default();
        self.read_struct(r, id, what, 0, |c, r, name, fid| {
            let Some((field, to)) = fields.iter().find(|(n, _)| *n == name) else {
                return Ok(false);
            };
            match to {
                Field::Str(at) => *at(&mut out) = c.read_string(r, fid, field)?,
                Field::Bool(at) => *at(&mut out) = c.read_bool(r, fid, field)?,
                Field::U64(at) => *at(&mut out) = c.read_u64(r, fid, field)?,
                Field::Strings(at) => *at(&mut out) = c.read_string_slice(r, fid, field)?,
                Field::Time(at) => *at(&mut out) = c.read_time(r, fid, field)?,
            }
            Ok(true)
        })?;
        Ok(out)
    }

    fn client_hello(&mut self, r: &mut Reader<'_>, id: i64) -> Result<ClientHello> {
        use Field::*;
        self.read_message(
            r,
            id,
            "MsgClientHello",
            &[
                ("Hostname", Str(|h: &mut ClientHello| &mut h.hostname)),
                ("Info", Str(|h| &mut h.info)),
                ("Version", Str(|h| &mut h.version)),
                ("SyncerType", Str(|h| &mut h.syncer_type)),
                (
                    "SupportsDecoderRestart",
                    Bool(|h| &mut h.supports_decoder_restart),
                ),
                (
                    "SupportedCompressionAlgorithms",
                    Strings(|h| &mut h.supported_compression),
                ),
                (
                    "SupportsModernPolicyKeys",
                    Bool(|h| &mut h.supports_modern_policy_keys),
                ),
                ("ClientConnID", U64(|h| &mut h.client_conn_id)),
            ],
        )
    }

    fn server_hello(&mut self, r: &mut Reader<'_>, id: i64) -> Result<ServerHello> {
        use Field::*;
        self.read_message(
            r,
            id,
            "MsgServerHello",
            &[
                ("Version", Str(|h: &mut ServerHello| &mut h.version)),
                ("SyncerType", Str(|h| &mut h.syncer_type)),
                (
                    "SupportsNodeResourceUpdates",
                    Bool(|h| &mut h.supports_node_resource_updates),
                ),
                ("ServerConnID", U64(|h| &mut h.server_conn_id)),
            ],
        )
    }

    fn decoder_restart(&mut self, r: &mut Reader<'_>, id: i64) -> Result<DecoderRestart> {
        use Field::*;
        self.read_message(
            r,
            id,
            "MsgDecoderRestart",
            &[
                ("Message", Str(|m: &mut DecoderRestart| &mut m.message)),
                ("CompressionAlgorithm", Str(|m| &mut m.compression)),
            ],
        )
    }

    fn sync_status(&mut self, r: &mut Reader<'_>, id: i64) -> Result<u8> {
        let mut status = 0;
        self.read_struct(r, id, "MsgSyncStatus", 0, |_, r, name, fid| {
            if name != "SyncStatus" {
                return Ok(false);
            }
            status = read_u8_field(r, fid, "SyncStatus")?;
            Ok(true)
        })?;
        Ok(status)
    }

    fn ping(&mut self, r: &mut Reader<'_>, id: i64) -> Result<Ping> {
        self.read_message(
            r,
            id,
            "MsgPing",
            &[("Timestamp", Field::Time(|p: &mut Ping| &mut p.timestamp))],
        )
    }

    fn pong(&mut self, r: &mut Reader<'_>, id: i64) -> Result<Pong> {
        use Field::*;
        self.read_message(
            r,
            id,
            "MsgPong",
            &[
                ("PingTimestamp", Time(|p: &mut Pong| &mut p.ping_timestamp)),
                ("PongTimestamp", Time(|p| &mut p.pong_timestamp)),
            ],
        )
    }

    fn ack(&mut self, r: &mut Reader<'_>, id: i64) -> Result<()> {
        self.read_struct(r, id, "MsgACK", 0, |_, _, _, _| Ok(false))
    }

    fn kvs(&mut self, r: &mut Reader<'_>, id: i64) -> Result<Vec<SerializedUpdate>> {
        let mut kvs = Vec::new();
        self.read_struct(r, id, "MsgKVs", 0, |c, r, name, fid| {
            if name != "KVs" {
                return Ok(false);
            }
            let elem = match (fid >= FIRST_USER_ID)
                .then(|| c.types.get(fid))
                .transpose()?
            {
                Some(wt) => match &*wt {
                    WireType::Slice { elem } => *elem,
                    _ => return Err(TyphaCodecError::TypeMismatch { field: "KVs" }),
                },
                None => return Err(TyphaCodecError::TypeMismatch { field: "KVs" }),
            };
            let slots = c.update_slots(elem)?;
            let n = r.read_count()?;
            kvs.reserve(n.min(1024));
            for _ in 0..n {
                kvs.push(c.update(r, &slots)?);
            }
            Ok(true)
        })?;
        Ok(kvs)
    }

    /// Maps the peer's `SerializedUpdate` fields (by position) to ours, checking each type once
    /// per message rather than once per update.
    fn update_slots(&mut self, id: i64) -> Result<Vec<Slot>> {
        let wt = self.types.get(id)?;
        let WireType::Struct { fields } = &*wt else {
            return Err(TyphaCodecError::TypeMismatch { field: "KVs" });
        };
        fields
            .iter()
            .map(|(name, fid)| {
                let (slot, want, field) = match name.as_str() {
                    "Key" => (Slot::Key, T_STRING, "Key"),
                    "Value" => (Slot::Value, T_BYTES, "Value"),
                    "Revision" => (Slot::Revision, T_INTERFACE, "Revision"),
                    "V3ResourceVersion" => (Slot::V3, T_STRING, "V3ResourceVersion"),
                    "TTL" => (Slot::Ttl, T_INT, "TTL"),
                    "UpdateType" => (Slot::UpdateType, T_UINT, "UpdateType"),
                    _ => return Ok(Slot::Skip(*fid)),
                };
                check_type(*fid, want, field)?;
                Ok(slot)
            })
            .collect()
    }

    fn update(&mut self, r: &mut Reader<'_>, slots: &[Slot]) -> Result<SerializedUpdate> {
        let mut u = SerializedUpdate::default();
        let mut field: i64 = -1;
        loop {
            let delta = r.read_uint()?;
            if delta == 0 {
                return Ok(u);
            }
            if delta > slots.len() as u64 {
                return Err(TyphaCodecError::Malformed("field number out of range"));
            }
            field += delta as i64;
            let slot = slots
                .get(field as usize)
                .ok_or(TyphaCodecError::Malformed("field number out of range"))?;
            match slot {
                Slot::Key => u.key = r.read_string()?,
                Slot::Value => {
                    let b = r.read_bytes()?;
                    let end = r.position();
                    // gob leaves an empty byte slice nil.
                    u.value = (!b.is_empty()).then(|| self.msg.slice(end - b.len()..end));
                }
                Slot::Revision => u.revision = self.read_revision(r)?,
                Slot::V3 => u.v3_resource_version = r.read_string()?,
                Slot::Ttl => u.ttl_nanos = r.read_int()?,
                Slot::UpdateType => {
                    u.update_type = u8::try_from(r.read_uint()?)
                        .map_err(|_| TyphaCodecError::Malformed("uint8 value out of range"))?
                }
                Slot::Skip(fid) => self.skip(r, *fid, 1)?,
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Slot {
    Key,
    Value,
    Revision,
    V3,
    Ttl,
    UpdateType,
    Skip(i64),
}

/// Most gob messages one value may span (one per type first defined inside its interface,
/// plus one). Typha's largest first use needs four.
const MAX_VALUE_SEGMENTS: usize = 64;

/// Message splitting and type definitions: the part of a gob decoder both directions share.
///
/// A value usually is one message. The exception is Go's first use of a type inside an
/// interface (see [`Ctx::read_interface_header`]): the value then continues over the following
/// messages. Those are kept in `pending` and the value is decoded again over their
/// concatenation once another message arrives; definitions made by an attempt that ran out of
/// input are undone first, so a retry sees the same state.
struct GobCore {
    buf: BytesMut,
    types: Types,
    max: usize,
    /// Messages of a value that needed more input.
    pending: Vec<Bytes>,
    /// Bytes taken for the current value, definitions included: Typha's inbound cap covers a
    /// whole `Decode` call.
    unit_bytes: usize,
}

/// One gob message's body (count removed), if the buffer holds all of it.
fn take_message(buf: &mut BytesMut, max: usize, taken: usize) -> Result<Option<Bytes>> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let count_len = if first < 0x80 {
        1
    } else {
        1 + (256 - first as usize)
    };
    if count_len > 9 {
        return Err(TyphaCodecError::Malformed("integer longer than 8 bytes"));
    }
    if buf.len() < count_len {
        return Ok(None);
    }
    let len = Reader::new(buf).read_uint()?;
    if len.saturating_add(taken as u64) > max as u64 {
        return Err(TyphaCodecError::MessageTooLarge { len, max });
    }
    if len == 0 {
        return Err(TyphaCodecError::Malformed("empty message"));
    }
    if buf.len() < count_len + len as usize {
        return Ok(None);
    }
    buf.advance(count_len);
    Ok(Some(buf.split_to(len as usize).freeze()))
}

impl GobCore {
    fn new(max: usize) -> Self {
        GobCore {
            buf: BytesMut::new(),
            types: Types::default(),
            max,
            pending: Vec::new(),
            unit_bytes: 0,
        }
    }

    /// Forgets the stream: types, partial values, buffered bytes are the caller's business.
    fn reset_stream(&mut self) {
        self.types = Types::default();
        self.pending.clear();
        self.unit_bytes = 0;
    }

    /// Decodes the next `Envelope` value, absorbing the definition messages before it, and
    /// hands the interface's concrete value to `f`. `None` if more input is needed.
    fn next_envelope<T>(
        &mut self,
        mut f: impl FnMut(&mut Ctx<'_>, &mut Reader<'_>, Kind, i64) -> Result<T>,
    ) -> Result<Option<T>> {
        loop {
            let Some(msg) = take_message(&mut self.buf, self.max, self.unit_bytes)? else {
                return Ok(None);
            };
            self.unit_bytes += msg.len();
            if self.pending.is_empty() {
                let mut r = Reader::new(&msg);
                let id = r.read_int()?;
                if id < 0 {
                    let wt = read_wire_type(&mut r)?;
                    if r.remaining() != 0 {
                        return Err(TyphaCodecError::Malformed(
                            "extra data after a type definition",
                        ));
                    }
                    self.types
                        .define(id.checked_neg().unwrap_or(i64::MAX), wt)?;
                    continue;
                }
            }
            if self.pending.len() >= MAX_VALUE_SEGMENTS {
                return Err(TyphaCodecError::Malformed(
                    "value split over too many messages",
                ));
            }
            self.pending.push(msg);
            let (whole, boundaries) = if self.pending.len() == 1 {
                (self.pending[0].clone(), vec![self.pending[0].len()])
            } else {
                let mut whole = BytesMut::with_capacity(self.pending.iter().map(Bytes::len).sum());
                let mut boundaries = Vec::with_capacity(self.pending.len());
                for m in &self.pending {
                    whole.extend_from_slice(m);
                    boundaries.push(whole.len());
                }
                (whole.freeze(), boundaries)
            };
            let checkpoint = self.types.checkpoint();
            match Self::envelope(&mut self.types, &whole, &boundaries, &mut f) {
                Err(TyphaCodecError::IncompleteValue) => {
                    self.types.rollback(checkpoint);
                    continue;
                }
                res => {
                    self.pending.clear();
                    self.unit_bytes = 0;
                    return res.map(Some);
                }
            }
        }
    }

    fn envelope<T>(
        types: &mut Types,
        msg: &Bytes,
        boundaries: &[usize],
        f: &mut impl FnMut(&mut Ctx<'_>, &mut Reader<'_>, Kind, i64) -> Result<T>,
    ) -> Result<T> {
        let mut ctx = Ctx {
            types,
            msg,
            boundaries,
        };
        let mut r = Reader::new(msg);
        let id = r.read_int()?;
        let mut out = None;
        ctx.read_struct(&mut r, id, "Envelope", 0, |c, r, name, fid| {
            if name != "Message" {
                return Ok(false);
            }
            check_type(fid, T_INTERFACE, "Message")?;
            let Some((iname, concrete)) = c.read_interface_header(r)? else {
                return Ok(true);
            };
            let kind = Kind::from_name(iname).ok_or_else(|| {
                TyphaCodecError::UnknownInterfaceName(String::from_utf8_lossy(iname).into_owned())
            })?;
            r.read_uint()?; // the value's byte count, ignored as Go does
            out = Some(f(c, r, kind, concrete)?);
            Ok(true)
        })?;
        out.ok_or(TyphaCodecError::EmptyEnvelope)
    }
}

/// The server's decoder of the client→server stream: plain gob for the whole connection,
/// carrying `ClientHello`, `ACK` and `Pong`.
pub struct ClientStreamDecoder {
    core: GobCore,
    failed: Option<TyphaCodecError>,
}

impl Default for ClientStreamDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_CLIENT_MESSAGE)
    }
}

impl ClientStreamDecoder {
    /// A decoder refusing any gob message over `max_message_bytes`.
    pub fn new(max_message_bytes: usize) -> Self {
        ClientStreamDecoder {
            core: GobCore::new(max_message_bytes),
            failed: None,
        }
    }

    /// Appends received bytes. Call [`Self::next_message`] until it returns `None` after each
    /// feed, so at most one capped message plus one read stays buffered.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.core.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.core.buf.len() + self.core.pending.iter().map(Bytes::len).sum::<usize>()
    }

    /// The next complete message, `None` if more bytes are needed. After an error the stream is
    /// dead and every later call returns the same error.
    pub fn next_message(&mut self) -> Result<Option<ClientMessage>> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let res = self.decode_next();
        if let Err(e) = &res {
            self.failed = Some(e.clone());
        }
        res
    }

    fn decode_next(&mut self) -> Result<Option<ClientMessage>> {
        self.core.next_envelope(|c, r, kind, id| match kind {
            Kind::ClientHello => c.client_hello(r, id).map(ClientMessage::Hello),
            Kind::Ack => c.ack(r, id).map(|_| ClientMessage::Ack),
            Kind::Pong => c.pong(r, id).map(ClientMessage::Pong),
            other => Err(TyphaCodecError::UnexpectedMessage(other.go_name())),
        })
    }
}

enum Framing {
    Plain,
    Snappy(FrameReader),
}

/// A client's decoder of the server→client stream: plain gob at first; after each
/// `MsgDecoderRestart` the caller calls [`Self::restart`] and the following bytes are a fresh
/// gob stream, plain or snappy-framed.
pub struct ServerStreamDecoder {
    core: GobCore,
    framing: Framing,
    /// Framed bytes not yet unframed (snappy only; plain bytes go straight to the gob buffer).
    raw: BytesMut,
    failed: Option<TyphaCodecError>,
}

impl Default for ServerStreamDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_SERVER_MESSAGE)
    }
}

impl ServerStreamDecoder {
    /// A decoder of a plain gob stream refusing any gob message over `max_message_bytes`.
    pub fn new(max_message_bytes: usize) -> Self {
        ServerStreamDecoder {
            core: GobCore::new(max_message_bytes),
            framing: Framing::Plain,
            raw: BytesMut::new(),
            failed: None,
        }
    }

    /// Appends received bytes; call [`Self::next_message`] until `None` afterwards.
    pub fn feed(&mut self, bytes: &[u8]) {
        match self.framing {
            Framing::Plain => self.core.buf.extend_from_slice(bytes),
            Framing::Snappy(_) => self.raw.extend_from_slice(bytes),
        }
    }

    /// Bytes received but not yet decoded (framed and unframed).
    pub fn buffered(&self) -> usize {
        self.core.buf.len()
            + self.core.pending.iter().map(Bytes::len).sum::<usize>()
            + self.raw.len()
    }

    /// Framed bytes received but not yet unframed (snappy streams only; 0 for plain ones).
    /// After a message, these are the bytes that follow the chunk it ended in.
    pub fn framed_buffered(&self) -> usize {
        self.raw.len()
    }

    /// The compression of the current stream: `"snappy"` or `""`.
    pub fn compression(&self) -> &'static str {
        match self.framing {
            Framing::Plain => "",
            Framing::Snappy(_) => COMPRESSION_SNAPPY,
        }
    }

    /// Starts a fresh gob stream with `compression` (`"snappy"` or `""`), as Felix does on
    /// `MsgDecoderRestart`: types are forgotten, bytes already received but not yet decoded
    /// are kept as the start of the new stream. An unknown algorithm is refused and leaves the
    /// decoder unchanged (Felix keeps its decoder in that case).
    pub fn restart(&mut self, compression: &str) -> Result<()> {
        let framing = match compression {
            COMPRESSION_SNAPPY => Framing::Snappy(FrameReader::new()),
            "" => Framing::Plain,
            other => return Err(TyphaCodecError::UnsupportedCompression(other.to_owned())),
        };
        // Raw bytes of the new stream: in plain mode they sit in the gob buffer; in snappy mode
        // the gob buffer holds only data of the old stream, which a restarted Go decoder drops.
        let pending = match self.framing {
            Framing::Plain => std::mem::take(&mut self.core.buf),
            Framing::Snappy(_) => {
                self.core.buf.clear();
                std::mem::take(&mut self.raw)
            }
        };
        self.core.reset_stream();
        self.framing = framing;
        match self.framing {
            Framing::Plain => self.core.buf = pending,
            Framing::Snappy(_) => self.raw = pending,
        }
        Ok(())
    }

    /// The next complete message, `None` if more bytes are needed. After an error the stream is
    /// dead and every later call returns the same error.
    pub fn next_message(&mut self) -> Result<Option<ServerMessage>> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let res = self.decode_next();
        if let Err(e) = &res {
            self.failed = Some(e.clone());
        }
        res
    }

    fn decode_next(&mut self) -> Result<Option<ServerMessage>> {
        loop {
            let decoded = self.core.next_envelope(|c, r, kind, id| {
                Ok(match kind {
                    Kind::ServerHello => ServerMessage::Hello(c.server_hello(r, id)?),
                    Kind::DecoderRestart => {
                        ServerMessage::DecoderRestart(c.decoder_restart(r, id)?)
                    }
                    Kind::SyncStatus => ServerMessage::SyncStatus(c.sync_status(r, id)?),
                    Kind::Ping => ServerMessage::Ping(c.ping(r, id)?),
                    Kind::Kvs => ServerMessage::Kvs(c.kvs(r, id)?),
                    Kind::Ack => {
                        c.ack(r, id)?;
                        ServerMessage::Ack
                    }
                    Kind::Pong => ServerMessage::Pong(c.pong(r, id)?),
                    Kind::ClientHello => ServerMessage::ClientHello(c.client_hello(r, id)?),
                })
            })?;
            if decoded.is_some() {
                return Ok(decoded);
            }
            // Unframe one more chunk, if a whole one has arrived.
            let Framing::Snappy(reader) = &mut self.framing else {
                return Ok(None);
            };
            let n = reader.read_chunk(&self.raw, &mut self.core.buf)?;
            if n == 0 {
                return Ok(None);
            }
            self.raw.advance(n);
        }
    }
}

/// Decodes a complete client→server byte stream (test helper, e.g. for Go-produced vectors).
/// Trailing bytes that do not form a whole message are an error.
pub fn decode_all_client_messages(bytes: &[u8]) -> Result<Vec<ClientMessage>> {
    let mut d = ClientStreamDecoder::new(DEFAULT_MAX_CLIENT_MESSAGE);
    d.feed(bytes);
    let mut out = Vec::new();
    while let Some(m) = d.next_message()? {
        out.push(m);
    }
    if d.buffered() != 0 {
        return Err(TyphaCodecError::Malformed(
            "truncated message at end of stream",
        ));
    }
    Ok(out)
}

/// Decodes a complete server→client byte stream that starts plain, following every
/// `MsgDecoderRestart` as Felix does (test helper, e.g. for Go-produced vectors). Trailing bytes
/// that do not form a whole message are an error.
pub fn decode_all_server_messages(bytes: &[u8]) -> Result<Vec<ServerMessage>> {
    decode_all_server_messages_from(bytes, "")
}

/// As [`decode_all_server_messages`], for a stream that starts with `compression` (`"snappy"`
/// for a binary snapshot on its own, `""` for plain gob).
pub fn decode_all_server_messages_from(
    bytes: &[u8],
    compression: &str,
) -> Result<Vec<ServerMessage>> {
    let mut d = ServerStreamDecoder::new(DEFAULT_MAX_SERVER_MESSAGE);
    d.restart(compression)?;
    d.feed(bytes);
    let mut out = Vec::new();
    while let Some(m) = d.next_message()? {
        if let ServerMessage::DecoderRestart(r) = &m {
            // Felix keeps its decoder for an algorithm it does not know.
            let _ = d.restart(&r.compression);
        }
        out.push(m);
    }
    if d.buffered() != 0 {
        return Err(TyphaCodecError::Malformed(
            "truncated message at end of stream",
        ));
    }
    Ok(out)
}
