//! A socket-free Felix-side session: what `typha/pkg/syncclient` does with the bytes, so tests
//! and the load generator can speak Typha's protocol without Go.
//!
//! Bytes in ([`FelixClientSession::feed`]), events out ([`FelixClientSession::poll_event`]),
//! bytes to send out ([`FelixClientSession::take_outbound`]). The hello is queued at creation;
//! decoder restarts are applied and ACKed, and pings answered, inside `poll_event`.

use super::client::ClientEncoder;
use super::decode::{ServerStreamDecoder, DEFAULT_MAX_SERVER_MESSAGE};
use super::error::TyphaCodecError;
use super::messages::*;
use bytes::{Bytes, BytesMut};
use thiserror::Error;

/// What the client announces, and how much it accepts per message.
#[derive(Debug, Clone)]
pub struct FelixClientConfig {
    pub hello: ClientHello,
    /// Cap on one gob message from the server.
    pub max_message_bytes: usize,
}

impl FelixClientConfig {
    /// The hello a current Felix sends: decoder restart, snappy, modern policy keys.
    pub fn felix(hostname: &str, syncer_type: &str, client_conn_id: u64) -> Self {
        FelixClientConfig {
            hello: ClientHello {
                hostname: hostname.to_owned(),
                info: "typha-rs Felix-protocol client".to_owned(),
                version: "v3.32.1".to_owned(),
                syncer_type: syncer_type.to_owned(),
                supports_decoder_restart: true,
                supported_compression: vec![COMPRESSION_SNAPPY.to_owned()],
                supports_modern_policy_keys: true,
                client_conn_id,
            },
            max_message_bytes: DEFAULT_MAX_SERVER_MESSAGE,
        }
    }
}

/// Something the server said that the caller acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FelixClientEvent {
    /// The handshake answer (already checked).
    ServerHello(ServerHello),
    /// The decoder was restarted as asked (or kept, for an unknown algorithm) and an ACK queued.
    DecoderRestart(DecoderRestart),
    Kvs(Vec<SerializedUpdate>),
    SyncStatus(u8),
    /// A ping; the pong echoing its timestamp is queued.
    Ping(GoTime),
}

/// Why the session ended; each is a reason Felix disconnects.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FelixSessionError {
    #[error(transparent)]
    Codec(#[from] TyphaCodecError),
    #[error("expected MsgServerHello first, got {0}")]
    NoServerHello(&'static str),
    #[error("server hello echoes syncer type {got:?}, expected {want:?}")]
    SyncerTypeMismatch { want: String, got: String },
    #[error("server does not support node resource updates")]
    NoNodeResourceUpdates,
    #[error("second MsgServerHello on one connection")]
    DuplicateServerHello,
}

fn normalized_syncer_type(s: &str) -> &str {
    if s.is_empty() {
        SYNCER_FELIX
    } else {
        s
    }
}

fn message_name(m: &ServerMessage) -> &'static str {
    match m {
        ServerMessage::Hello(_) => "MsgServerHello",
        ServerMessage::DecoderRestart(_) => "MsgDecoderRestart",
        ServerMessage::SyncStatus(_) => "MsgSyncStatus",
        ServerMessage::Ping(_) => "MsgPing",
        ServerMessage::Kvs(_) => "MsgKVs",
        ServerMessage::Ack => "MsgACK",
        ServerMessage::Pong(_) => "MsgPong",
        ServerMessage::ClientHello(_) => "MsgClientHello",
    }
}

/// One Felix-protocol connection's client side, without the socket.
pub struct FelixClientSession {
    hello: ClientHello,
    encoder: ClientEncoder,
    decoder: ServerStreamDecoder,
    outbound: BytesMut,
    got_server_hello: bool,
    failed: Option<FelixSessionError>,
}

impl FelixClientSession {
    /// A session with its hello already queued in the outbound bytes.
    pub fn new(config: FelixClientConfig) -> Self {
        let mut encoder = ClientEncoder::new();
        let mut outbound = BytesMut::with_capacity(256);
        encoder.encode_hello(&config.hello, &mut outbound);
        FelixClientSession {
            hello: config.hello,
            encoder,
            decoder: ServerStreamDecoder::new(config.max_message_bytes),
            outbound,
            got_server_hello: false,
            failed: None,
        }
    }

    pub fn hello(&self) -> &ClientHello {
        &self.hello
    }

    /// Appends bytes read from the server; call [`Self::poll_event`] until `None` afterwards.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.decoder.feed(bytes);
    }

    /// Whether bytes wait to be sent.
    pub fn has_outbound(&self) -> bool {
        !self.outbound.is_empty()
    }

    /// The bytes to send to the server (hello, ACKs, pongs), emptied.
    pub fn take_outbound(&mut self) -> Bytes {
        self.outbound.split().freeze()
    }

    /// The current server-stream compression (`"snappy"` or `""`).
    pub fn compression(&self) -> &'static str {
        self.decoder.compression()
    }

    /// Bytes fed but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.decoder.buffered()
    }

    /// Acts on a `MsgDecoderRestart` that ends bytes the caller decoded elsewhere instead of
    /// feeding them here, exactly as if they had been fed: the decoder restarts and the ACK is
    /// queued. Only sound when those bytes are byte-identical to ones another decoder took
    /// from a fresh stream of the current compression to this restart, and nothing else was
    /// fed since (a load generator sharing one decode of a binary snapshot among its clients).
    pub fn apply_decoder_restart(&mut self, restart: &DecoderRestart) {
        let _ = self.decoder.restart(&restart.compression);
        self.encoder.encode_ack(&mut self.outbound);
    }

    /// The next event, `None` when more bytes are needed. After an error the session is over
    /// and every later call returns the same error.
    pub fn poll_event(&mut self) -> Result<Option<FelixClientEvent>, FelixSessionError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let res = self.next_event();
        if let Err(e) = &res {
            self.failed = Some(e.clone());
        }
        res
    }

    fn next_event(&mut self) -> Result<Option<FelixClientEvent>, FelixSessionError> {
        loop {
            let Some(msg) = self.decoder.next_message()? else {
                return Ok(None);
            };
            if !self.got_server_hello {
                let ServerMessage::Hello(h) = msg else {
                    return Err(FelixSessionError::NoServerHello(message_name(&msg)));
                };
                let want = normalized_syncer_type(&self.hello.syncer_type);
                if normalized_syncer_type(&h.syncer_type) != want {
                    return Err(FelixSessionError::SyncerTypeMismatch {
                        want: want.to_owned(),
                        got: h.syncer_type,
                    });
                }
                if !h.supports_node_resource_updates {
                    return Err(FelixSessionError::NoNodeResourceUpdates);
                }
                self.got_server_hello = true;
                return Ok(Some(FelixClientEvent::ServerHello(h)));
            }
            return Ok(Some(match msg {
                ServerMessage::Hello(_) => return Err(FelixSessionError::DuplicateServerHello),
                ServerMessage::DecoderRestart(r) => {
                    // Felix keeps its decoder for an algorithm it does not know, and ACKs anyway.
                    let _ = self.decoder.restart(&r.compression);
                    self.encoder.encode_ack(&mut self.outbound);
                    FelixClientEvent::DecoderRestart(r)
                }
                ServerMessage::Kvs(kvs) => FelixClientEvent::Kvs(kvs),
                ServerMessage::SyncStatus(s) => FelixClientEvent::SyncStatus(s),
                ServerMessage::Ping(p) => {
                    let pong = Pong {
                        ping_timestamp: p.timestamp,
                        pong_timestamp: GoTime::ZERO,
                    };
                    self.encoder.encode_pong(&pong, &mut self.outbound);
                    FelixClientEvent::Ping(p.timestamp)
                }
                // Registered types a server has no reason to send: ignored, as Felix does.
                ServerMessage::Ack | ServerMessage::Pong(_) | ServerMessage::ClientHello(_) => {
                    continue
                }
            }));
        }
    }
}
