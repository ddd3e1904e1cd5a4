//! A stateful gob encoder for the client's messages, defining each type the way Go's
//! `gob.Encoder` does: just before the first value that uses it, outer type first, each
//! definition its own message written ahead of the value message.

use super::messages::{names, ClientHello, Pong};
use super::typedef::{write_definition, TypeDef};
use super::wire::{
    bytes_len, int_len, put_bytes, put_int, put_uint, uint_len, StructWriter, FIRST_USER_ID,
    T_BOOL, T_INTERFACE, T_STRING, T_UINT,
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

/// Encodes `Envelope{MsgClientHello | MsgACK | MsgPong}` values for one client→server stream.
#[derive(Default)]
pub struct ClientEncoder {
    /// Types defined so far on this stream, with their ids (in definition order).
    sent: Vec<(ClientType, i64)>,
}

impl ClientEncoder {
    pub fn new() -> Self {
        Self::default()
    }

    fn id_of(&self, t: ClientType) -> Option<i64> {
        self.sent.iter().find(|(s, _)| *s == t).map(|(_, id)| *id)
    }

    /// The id for `t`, allocating the next free one (definitions follow first use).
    fn ensure(&mut self, t: ClientType, out: &mut BytesMut) -> i64 {
        if let Some(id) = self.id_of(t) {
            return id;
        }
        let id = FIRST_USER_ID + self.sent.len() as i64;
        self.sent.push((t, id));
        // Inner types are defined after the outer one, as Go's sendActualType does; their ids
        // are needed in the outer definition, so allocate them first.
        let mut defs = Vec::new();
        match t {
            ClientType::Envelope => write_definition(
                &mut defs,
                id,
                &TypeDef::Struct {
                    name: "Envelope",
                    fields: &[("Message", T_INTERFACE)],
                },
            ),
            ClientType::Hello => {
                let slice_id = FIRST_USER_ID + self.sent.len() as i64;
                let new_slice = self.id_of(ClientType::CompressionSlice).is_none();
                let slice_id = self.id_of(ClientType::CompressionSlice).unwrap_or(slice_id);
                write_definition(
                    &mut defs,
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
                if new_slice {
                    self.sent.push((ClientType::CompressionSlice, slice_id));
                    write_definition(
                        &mut defs,
                        slice_id,
                        &TypeDef::Slice {
                            name: "[]syncproto.CompressionAlgorithm",
                            elem: T_STRING,
                        },
                    );
                }
            }
            ClientType::CompressionSlice => write_definition(
                &mut defs,
                id,
                &TypeDef::Slice {
                    name: "[]syncproto.CompressionAlgorithm",
                    elem: T_STRING,
                },
            ),
            ClientType::Ack => write_definition(
                &mut defs,
                id,
                &TypeDef::Struct {
                    name: "MsgACK",
                    fields: &[],
                },
            ),
            ClientType::Pong => {
                let new_time = self.id_of(ClientType::Time).is_none();
                let time_id = self
                    .id_of(ClientType::Time)
                    .unwrap_or(FIRST_USER_ID + self.sent.len() as i64);
                write_definition(
                    &mut defs,
                    id,
                    &TypeDef::Struct {
                        name: "MsgPong",
                        fields: &[("PingTimestamp", time_id), ("PongTimestamp", time_id)],
                    },
                );
                if new_time {
                    self.sent.push((ClientType::Time, time_id));
                    write_definition(&mut defs, time_id, &TypeDef::GobEncoder { name: "Time" });
                }
            }
            ClientType::Time => {
                write_definition(&mut defs, id, &TypeDef::GobEncoder { name: "Time" })
            }
        }
        out.put_slice(&defs);
        id
    }

    fn envelope(&mut self, out: &mut BytesMut, t: ClientType, name: &str, value: &[u8]) {
        let env_id = self.ensure(ClientType::Envelope, out);
        let concrete = self.ensure(t, out);
        let body = int_len(env_id)
            + 1
            + bytes_len(name.len())
            + int_len(concrete)
            + uint_len(value.len() as u64)
            + value.len()
            + 1;
        put_uint(out, body as u64);
        put_int(out, env_id);
        put_uint(out, 1);
        put_bytes(out, name.as_bytes());
        put_int(out, concrete);
        put_uint(out, value.len() as u64);
        out.put_slice(value);
        put_uint(out, 0);
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
