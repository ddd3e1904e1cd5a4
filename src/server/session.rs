//! The protocol seam: each connection owns one [`Session`], which turns the bytes its client
//! sends into [`SessionEvent`]s and knows how its protocol greets, pings and closes. The reactor
//! loop drives sockets, timers and the shared output, and knows no protocol.
//!
//! # Native session lifecycle
//!
//! ```text
//!            Hello ok                 last snapshot byte written
//! Handshake ----------> Snapshot ------------------------------> Streaming
//!     |                    |                                        |
//!     | bad frame, version, unknown syncer, timeout, shed, ...     |
//!     +--------------------+----------------------------------------+--> Closing --> closed
//! ```
//!
//! - `Handshake`: waits for a `Hello` (after the TLS handshake, on a TLS port). The reply is a
//!   `ServerHello` naming the codec chosen from the client's list.
//! - `Snapshot` / `Streaming`: only `Pong`s are accepted, each for a ping already sent.
//! - Closing: the session's farewell is a `Goodbye` with the reason; the loop writes it after
//!   any frame already started, half-closes and waits for the peer's EOF (or a grace period).

use crate::model::SyncerType;
use crate::proto::encode::WireVariant;
use crate::proto::{
    decode_client_message, encode_frame, goodbye_frame, peek_hello_version, ClientMessage, Codec,
    FeedError, FrameDecoder, GoodbyeReason, Hello, ServerHello, ServerMessage, PROTOCOL_VERSION,
};
use bytes::Bytes;
use std::sync::OnceLock;

/// What the session needs of the server to answer a hello.
#[derive(Debug, Clone, Copy)]
pub struct SessionContext<'a> {
    pub server_id: &'a str,
    pub conn_id: u64,
    /// The codec for shared compressed frames; `None` disables compression.
    pub codec: Option<Codec>,
}

/// A client accepted by its session's handshake.
#[derive(Debug)]
pub struct Accepted {
    pub syncer: SyncerType,
    pub variant: WireVariant,
    pub hostname: Box<str>,
    pub client_info: Box<str>,
    /// Written to the client before anything shared.
    pub reply: Bytes,
}

/// What a session asks of the loop after decoding client input, in order.
#[derive(Debug)]
pub enum SessionEvent {
    /// The handshake succeeded: serve the snapshot and then the stream.
    Accepted(Accepted),
    /// The client is alive; it answered ping `ping_id` when the protocol says which.
    Pong { ping_id: Option<u64> },
    /// The client broke the protocol (or cannot be served): close, telling it why if the
    /// protocol can.
    Refuse { reason: GoodbyeReason, text: String },
}

/// One connection's protocol session.
#[derive(Debug)]
pub enum Session {
    Native(NativeSession),
}

impl Session {
    pub fn native(max_frame: usize) -> Session {
        Session::Native(NativeSession::new(max_frame))
    }

    /// Decodes `input`, appending events. Returns false once the input can no longer be
    /// decoded (a `Refuse` was pushed): the caller stops feeding it.
    pub fn feed(
        &mut self,
        input: &[u8],
        ctx: SessionContext<'_>,
        events: &mut Vec<SessionEvent>,
    ) -> bool {
        match self {
            Session::Native(s) => s.feed(input, ctx, events),
        }
    }

    /// Input bytes held back waiting for the rest of a message.
    pub fn buffered(&self) -> usize {
        match self {
            Session::Native(s) => s.decoder.buffered(),
        }
    }

    /// Whether the loop may send this client a ping now.
    pub fn can_ping(&self) -> bool {
        match self {
            Session::Native(_) => true,
        }
    }

    /// Records that ping `id` is being sent and returns its shared frame.
    pub fn ping(&mut self, pings: &SharedPings) -> Bytes {
        match self {
            Session::Native(s) => {
                s.last_ping_id = pings.id;
                pings.native.clone()
            }
        }
    }

    /// The last bytes to write before closing for `reason`, if the protocol has a way to say
    /// goodbye; `None` closes after any frame already started.
    pub fn farewell(&self, reason: GoodbyeReason, text: &str) -> Option<Bytes> {
        match self {
            Session::Native(_) => Some(match reason {
                GoodbyeReason::Shutdown => shared_goodbye_shutdown(),
                _ => goodbye_frame(reason, text),
            }),
        }
    }

    /// The `protocol` label of this session's metrics.
    pub fn protocol(&self) -> &'static str {
        match self {
            Session::Native(_) => "native",
        }
    }
}

/// The ping of one tick, in every protocol: one id, one encoding each, shared by every client
/// due a ping in that tick.
#[derive(Debug, Clone)]
pub struct SharedPings {
    pub id: u64,
    pub native: Bytes,
}

impl SharedPings {
    pub fn new(id: u64, unix_nanos: u64) -> SharedPings {
        SharedPings {
            id,
            native: crate::proto::ping_frame(id, unix_nanos),
        }
    }
}

/// The typha-rs protocol's session: length-prefixed frames in both directions.
#[derive(Debug)]
pub struct NativeSession {
    decoder: FrameDecoder,
    /// A `Hello` was accepted.
    handshake_done: bool,
    /// The newest ping sent; a pong naming a later one is a protocol error.
    last_ping_id: u64,
}

impl NativeSession {
    fn new(max_frame: usize) -> Self {
        NativeSession {
            decoder: FrameDecoder::new(max_frame),
            handshake_done: false,
            last_ping_id: 0,
        }
    }

    fn feed(
        &mut self,
        input: &[u8],
        ctx: SessionContext<'_>,
        events: &mut Vec<SessionEvent>,
    ) -> bool {
        let last_ping_id = self.last_ping_id;
        let handshake_done = &mut self.handshake_done;
        let r = self.decoder.feed(input, |payload| {
            let event = match decode_payload(payload) {
                Ok(ClientMessage::Hello(_)) if *handshake_done => SessionEvent::Refuse {
                    reason: GoodbyeReason::ProtocolError,
                    text: "Hello after the handshake".into(),
                },
                Ok(ClientMessage::Hello(h)) => {
                    let e = on_hello(h, ctx);
                    *handshake_done = matches!(e, SessionEvent::Accepted(_));
                    e
                }
                Ok(ClientMessage::Pong { .. }) if !*handshake_done => SessionEvent::Refuse {
                    reason: GoodbyeReason::ProtocolError,
                    text: "Pong before Hello".into(),
                },
                Ok(ClientMessage::Pong { id }) if id == 0 || id > last_ping_id => {
                    SessionEvent::Refuse {
                        reason: GoodbyeReason::ProtocolError,
                        text: "Pong for a ping never sent".into(),
                    }
                }
                Ok(ClientMessage::Pong { id }) => SessionEvent::Pong { ping_id: Some(id) },
                Err((reason, text)) => SessionEvent::Refuse { reason, text },
            };
            let refused = matches!(event, SessionEvent::Refuse { .. });
            events.push(event);
            if refused {
                Err(())
            } else {
                Ok(())
            }
        });
        match r {
            Ok(()) => true,
            Err(FeedError::Handler(())) => false,
            Err(FeedError::Frame(e)) => {
                events.push(SessionEvent::Refuse {
                    reason: GoodbyeReason::ProtocolError,
                    text: e.to_string(),
                });
                false
            }
        }
    }
}

fn on_hello(h: Hello, ctx: SessionContext<'_>) -> SessionEvent {
    if h.protocol_version.major != PROTOCOL_VERSION.major {
        return SessionEvent::Refuse {
            reason: GoodbyeReason::UnsupportedVersion,
            text: format!(
                "server speaks protocol {PROTOCOL_VERSION}, client sent {}",
                h.protocol_version
            ),
        };
    }
    let Some(syncer) = SyncerType::parse(&h.syncer_type) else {
        return SessionEvent::Refuse {
            reason: GoodbyeReason::ProtocolError,
            text: format!("unknown syncer type {:?}", truncate(&h.syncer_type, 64)),
        };
    };
    let codec = ctx
        .codec
        .filter(|c| h.accepts_compression.iter().any(|n| n == c.as_str()));
    let reply = encode_frame(&ServerMessage::ServerHello(ServerHello {
        protocol_version: PROTOCOL_VERSION,
        server_id: ctx.server_id.to_owned(),
        connection_id: ctx.conn_id,
        syncer_type: syncer.as_str().to_owned(),
        compression: codec,
    }));
    SessionEvent::Accepted(Accepted {
        syncer,
        variant: WireVariant::native(codec),
        hostname: truncate(&h.hostname, 253).into(),
        client_info: truncate(&h.client_info, 128).into(),
        reply,
    })
}

fn shared_goodbye_shutdown() -> Bytes {
    static FRAME: OnceLock<Bytes> = OnceLock::new();
    FRAME
        .get_or_init(|| goodbye_frame(GoodbyeReason::Shutdown, "server shutting down"))
        .clone()
}

pub(super) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Decodes one inbound payload; a payload that does not decode but names another major
/// protocol version is reported as such.
fn decode_payload(payload: &[u8]) -> Result<ClientMessage, (GoodbyeReason, String)> {
    decode_client_message(payload).map_err(|e| match peek_hello_version(payload) {
        Some(v) if v.major != PROTOCOL_VERSION.major => (
            GoodbyeReason::UnsupportedVersion,
            format!("server speaks protocol {PROTOCOL_VERSION}, client sent {v}"),
        ),
        _ => (GoodbyeReason::ProtocolError, e.to_string()),
    })
}
