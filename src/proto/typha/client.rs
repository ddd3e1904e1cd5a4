//! A stateful gob encoder for the client's messages, laying out bytes exactly as Go's
//! `gob.Encoder` does for Felix's `Envelope` values, so tests see what a real Felix sends.
//!
//! Go defines each type just before its first use. The `Envelope` definition is a message of
//! its own. The definition of a concrete type first sent inside the interface, however, is
//! written into the envelope's own message right after the interface name, and that message
//! ends there; the definitions of the concrete type's field types follow as messages of their
//! own, then a last message carries the concrete id, the value and the envelope's end.

use super::messages::{names, ClientHello, Pong};
use super::typedef::{write_definition, write_wire_type, TypeDef};
use super::wire::{
    put_bytes, put_int, put_uint, StructWriter, FIRST_USER_ID, T_BOOL, T_INTERFACE, T_STRING,
    T_UINT,
};
use bytes::{BufMut, BytesMut};

#[derive(Clone, Copy, PartialEq, Eq)]
enum ClientType {
    Envelope,
    Hello,
    CompressionSlice,
    Ack,
    Pong,
    Time,
}

const ENVELOPE_DEF: TypeDef<'static> = TypeDef::Struct {
    name: "Envelope",
    fields: &[("Message", T_INTERFACE)],
};
const COMPRESSION_SLICE_DEF: TypeDef<'static> = TypeDef::Slice {
    name: "[]syncproto.CompressionAlgorithm",
    elem: T_STRING,
};
const TIME_DEF: TypeDef<'static> = TypeDef::GobEncoder { name: "Time" };

/// Encodes `Envelope{MsgClientHello | MsgACK | MsgPong}` values for one client→server stream.
#[derive(Default)]
pub struct ClientEncoder {
    /// Types defined so far on this stream, with their ids, in definition order.
    sent: Vec<(ClientType, i64)>,
}

fn put_message(out: &mut BytesMut, body: &[u8]) {
    put_uint(out, body.len() as u64);
    out.put_slice(body);
}

impl ClientEncoder {
    pub fn new() -> Self {
        Self::default()
    }

    fn id_of(&self, t: ClientType) -> Option<i64> {
        self.sent.iter().find(|(s, _)| *s == t).map(|(_, id)| *id)
    }

    fn alloc(&mut self, t: ClientType) -> i64 {
        let id = FIRST_USER_ID + self.sent.len() as i64;
        self.sent.push((t, id));
        id
    }

    /// The id of an inner type and whether this use defines it.
    fn inner(&mut self, t: ClientType) -> (i64, bool) {
        match self.id_of(t) {
            Some(id) => (id, false),
            None => (self.alloc(t), true),
        }
    }

    fn envelope(&mut self, out: &mut BytesMut, t: ClientType, name: &str, value: &[u8]) {
        let env_id = match self.id_of(ClientType::Envelope) {
            Some(id) => id,
            None => {
                let id = self.alloc(ClientType::Envelope);
                let mut def = Vec::new();
                write_definition(&mut def, id, &ENVELOPE_DEF);
                out.put_slice(&def);
                id
            }
        };
        let mut head = Vec::with_capacity(64 + name.len());
        put_int(&mut head, env_id);
        put_uint(&mut head, 1); // Envelope.Message, field 0
        put_bytes(&mut head, name.as_bytes());
        let concrete = match self.id_of(t) {
            Some(id) => id,
            None => {
                // First use: the definition goes into this message, which ends after it.
                let id = self.alloc(t);
                let mut inner_defs = Vec::new();
                match t {
                    ClientType::Hello => {
                        let (slice_id, new) = self.inner(ClientType::CompressionSlice);
                        put_int(&mut head, -id);
                        write_wire_type(
                            &mut head,
                            id,
                            &TypeDef::Struct {
                                name: "MsgClientHello",
                                fields: &[
                                    ("Hostname", T_STRING),
                                    ("Info", T_STRING),
                                    ("Version", T_STRING),
                                    ("SyncerType", T_STRING),
                                    ("SupportsDecoderRestart", T_BOOL),
                                    ("SupportedCompressionAlgorithms", slice_id),
                                    ("SupportsModernPolicyKeys", T_BOOL),
                                    ("ClientConnID", T_UINT),
                                ],
                            },
                        );
                        if new {
                            write_definition(&mut inner_defs, slice_id, &COMPRESSION_SLICE_DEF);
                        }
                    }
                    ClientType::Pong => {
                        let (time_id, new) = self.inner(ClientType::Time);
                        put_int(&mut head, -id);
                        write_wire_type(
                            &mut head,
                            id,
                            &TypeDef::Struct {
                                name: "MsgPong",
                                fields: &[("PingTimestamp", time_id), ("PongTimestamp", time_id)],
                            },
                        );
                        if new {
                            write_definition(&mut inner_defs, time_id, &TIME_DEF);
                        }
                    }
                    _ => {
                        put_int(&mut head, -id);
                        write_wire_type(
                            &mut head,
                            id,
                            &TypeDef::Struct {
                                name: "MsgACK",
                                fields: &[],
                            },
                        );
                    }
                }
                put_message(out, &head);
                out.put_slice(&inner_defs);
                head.clear();
                id
            }
        };
        put_int(&mut head, concrete);
        put_uint(&mut head, value.len() as u64);
        head.extend_from_slice(value);
        put_uint(&mut head, 0); // end of Envelope
        put_message(out, &head);
    }

    /// Appends `Envelope{MsgClientHello}` (with any definitions it needs first).
    pub fn encode_hello(&mut self, hello: &ClientHello, out: &mut BytesMut) {
        let mut v = Vec::with_capacity(128);
        let mut s = StructWriter::new(&mut v);
        s.string(0, &hello.hostname);
        s.string(1, &hello.info);
        s.string(2, &hello.version);
        s.string(3, &hello.syncer_type);
        s.bool(4, hello.supports_decoder_restart);
        s.string_slice(5, &hello.supported_compression);
        s.bool(6, hello.supports_modern_policy_keys);
        s.uint(7, hello.client_conn_id);
        s.finish();
        self.envelope(out, ClientType::Hello, names::CLIENT_HELLO, &v);
    }

    /// Appends `Envelope{MsgACK{}}`.
    pub fn encode_ack(&mut self, out: &mut BytesMut) {
        self.envelope(out, ClientType::Ack, names::ACK, &[0]);
    }

    /// Appends `Envelope{MsgPong}`.
    pub fn encode_pong(&mut self, pong: &Pong, out: &mut BytesMut) {
        let mut v = Vec::with_capacity(40);
        let mut s = StructWriter::new(&mut v);
        s.time(0, &pong.ping_timestamp);
        s.time(1, &pong.pong_timestamp);
        s.finish();
        self.envelope(out, ClientType::Pong, names::PONG, &v);
    }
}
