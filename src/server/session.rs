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
//!
//! # Detection
//!
//! A new connection starts [`Session::Detecting`]: the first bytes (at most
//! [`DETECT_BYTES`], decided as soon as they allow) tell a native `Hello` frame from a Go gob
//! stream ([`detect`]; the rule is in `docs/protocol-typha.md`). Anything else is closed.
//!
//! # Typha session lifecycle
//!
//! ```text
//! AwaitHello --ClientHello, restart+snappy--> AwaitRestartAck --ACK--> AwaitSnapshotAck --ACK--> Live
//!     |                                         (path A: binary snapshot between the ACKs)
//!     +------ClientHello, no restart/snappy------------------------------------------------> Live
//!                                               (path B: streamed snapshot, then the stream)
//! ```
//!
//! - `AwaitHello`: the loop's handshake timeout runs. An unknown syncer type or any other
//!   message closes the connection (Typha has no goodbye). A client without modern policy keys
//!   (Felix v3.31 and older) is served the legacy variant of its path, with v3.31 policy keys.
//!   The reply is the gob preamble and `MsgServerHello`, plus (path A)
//!   `MsgDecoderRestart{snappy}`; nothing more is written until the ACK.
//! - `AwaitRestartAck` (path A): the snapshot is written once the ACK arrives. It ends with its
//!   own restart, so `AwaitSnapshotAck` holds the stream back until the second ACK; then the live
//!   stream starts with the snappy identifier, the preamble and `MsgSyncStatus`. Each ACK wait
//!   is bounded by the pong timeout.
//! - `Live`: pings are sent (shared frames); only `MsgPong` is accepted.

use crate::model::SyncerType;
use crate::proto::encode::{typha_ping, WireVariant};
use crate::proto::typha;
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
    /// Typha's `ServerConnID` for this connection: a random value per process << 32, plus
    /// the connection id.
    pub typha_conn_id: u64,
    /// Native frames from clients are at most this long.
    pub max_frame: usize,
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
    /// The shared snapshot is held back until [`SessionEvent::Release`] opens it.
    pub hold_snapshot: bool,
    /// The ring is held back until [`SessionEvent::Release`] opens it.
    pub hold_ring: bool,
}

/// What a session lets the loop write next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// The snapshot (its decoder restart was acknowledged).
    Snapshot,
    /// The live stream: the snapshot's live prefix, then the ring.
    Live,
}

/// What a session asks of the loop after decoding client input, in order.
#[derive(Debug)]
pub enum SessionEvent {
    /// The handshake succeeded: serve the snapshot and then the stream.
    Accepted(Accepted),
    /// The client is alive; it answered ping `ping_id` when the protocol says which.
    Pong { ping_id: Option<u64> },
    /// A handshake step was acknowledged: write what it held back.
    Release(Release),
    /// The client broke the protocol (or cannot be served): close, telling it why if the
    /// protocol can.
    Refuse { reason: GoodbyeReason, text: String },
    /// The first bytes are neither protocol: close without a word.
    Unrecognised { text: String },
}

/// One connection's protocol session.
#[derive(Debug)]
pub enum Session {
    /// Nothing decided yet: the first bytes seen so far.
    Detecting(Vec<u8>),
    Native(NativeSession),
    Typha(Box<TyphaSession>),
}

/// Most bytes [`detect`] needs to decide.
pub const DETECT_BYTES: usize = 4;

/// The protocol a connection's first bytes announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Native,
    Typha,
    Neither,
}

/// Tells the protocols apart by the first bytes; `None` until enough have arrived (at most
/// [`DETECT_BYTES`]).
///
/// A Go gob stream opens with a type definition: a message length (a uvarint; the first
/// definition is short, so one byte in 1..=0x7f) then a negative type id. Go numbers user types
/// from 64, and gob writes a signed id as a uvarint of its zigzag form: -64 is the single byte
/// 0x7f; -65 and beyond take the multi-byte form, a byte-count byte (0xff: one byte follows,
/// 0xfe: two) then the big-endian value, odd for a negative id. A native stream opens with a
/// frame: a little-endian u32 length below 16 MiB (its fourth byte 0), whatever the payload,
/// so the native decoder still answers a bad frame with its `Goodbye`. A native length whose
/// second byte is 0x7f, 0xfe or 0xff would be a first frame of 32 KiB or more, which no client
/// sends as its `Hello`. Everything else is neither.
pub fn detect(first: &[u8]) -> Option<Detected> {
    let b0 = *first.first()?;
    let b1 = *first.get(1)?;
    if (1..0x80).contains(&b0) && b1 == 0x7f {
        return Some(Detected::Typha);
    }
    if (1..0x80).contains(&b0) && b1 >= 0xfe {
        let n = 256 - b1 as usize;
        let last = *first.get(1 + n)?;
        return Some(if last & 1 == 1 {
            Detected::Typha
        } else {
            Detected::Neither
        });
    }
    if first.len() < DETECT_BYTES {
        return None;
    }
    let len = u32::from_le_bytes([first[0], first[1], first[2], first[3]]);
    Some(if len > 0 && first[3] == 0 {
        Detected::Native
    } else {
        Detected::Neither
    })
}

impl Session {
    pub fn native(max_frame: usize) -> Session {
        Session::Native(NativeSession::new(max_frame))
    }

    /// A new connection's session: its protocol is decided by its first bytes.
    pub fn detecting() -> Session {
        Session::Detecting(Vec::with_capacity(DETECT_BYTES))
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
            Session::Detecting(first) => {
                let take = (DETECT_BYTES - first.len()).min(input.len());
                first.extend_from_slice(&input[..take]);
                let rest = &input[take..];
                match detect(first) {
                    None => true,
                    Some(Detected::Neither) => {
                        events.push(SessionEvent::Unrecognised {
                            text: format!(
                                "first bytes {:02x?} are neither a typha-rs Hello nor a gob stream",
                                first
                            ),
                        });
                        false
                    }
                    Some(d) => {
                        let first = std::mem::take(first);
                        *self = match d {
                            Detected::Typha => Session::Typha(Box::new(TyphaSession::new())),
                            _ => Session::native(ctx.max_frame),
                        };
                        self.feed(&first, ctx, events) && self.feed(rest, ctx, events)
                    }
                }
            }
            Session::Native(s) => s.feed(input, ctx, events),
            Session::Typha(s) => s.feed(input, ctx, events),
        }
    }

    /// Input bytes held back waiting for the rest of a message.
    pub fn buffered(&self) -> usize {
        match self {
            Session::Detecting(first) => first.len(),
            Session::Native(s) => s.decoder.buffered(),
            Session::Typha(s) => s.decoder.buffered(),
        }
    }

    /// Whether the loop may send this client a ping now.
    pub fn can_ping(&self) -> bool {
        match self {
            Session::Detecting(_) => false,
            Session::Native(_) => true,
            Session::Typha(s) => s.state == TyphaState::Live,
        }
    }

    /// Records that ping `id` is being sent and returns its shared frame.
    pub fn ping(&mut self, pings: &SharedPings) -> Bytes {
        match self {
            Session::Native(s) => {
                s.last_ping_id = pings.id;
                pings.native.clone()
            }
            Session::Typha(s) => {
                s.last_ping = Some((pings.id, pings.typha_time));
                // A ping holds no key: legacy clients take the same bytes.
                if s.variant.is_snappy() {
                    pings.typha_snappy.clone()
                } else {
                    pings.typha_plain.clone()
                }
            }
            // Never asked: `can_ping` is false.
            Session::Detecting(_) => Bytes::new(),
        }
    }

    /// The last bytes to write before closing for `reason`, if the protocol has a way to say
    /// goodbye; `None` closes after any frame already started.
    pub fn farewell(&self, reason: GoodbyeReason, text: &str) -> Option<Bytes> {
        match self {
            // Before the client spoke, the native Goodbye: a native client learns why (server
            // full, handshake timeout), and to a Go client the bytes are an undecodable stream,
            // which it treats as the close it is.
            Session::Native(_) | Session::Detecting(_) => Some(match reason {
                GoodbyeReason::Shutdown => shared_goodbye_shutdown(),
                _ => goodbye_frame(reason, text),
            }),
            // Typha has no goodbye: its clients are closed.
            Session::Typha(_) => None,
        }
    }

    /// The `protocol` label of this session's metrics.
    pub fn protocol(&self) -> &'static str {
        match self {
            Session::Detecting(_) => "unknown",
            Session::Native(_) => "native",
            Session::Typha(_) => "typha",
        }
    }
}

/// The ping of one tick, in every protocol: one id, one encoding each, shared by every client
/// due a ping in that tick.
#[derive(Debug, Clone)]
pub struct SharedPings {
    pub id: u64,
    pub native: Bytes,
    pub typha_time: typha::GoTime,
    pub typha_snappy: Bytes,
    pub typha_plain: Bytes,
}

impl SharedPings {
    pub fn new(id: u64, unix_nanos: u64) -> SharedPings {
        let typha_time = typha::GoTime::from_unix_nanos(unix_nanos as i128);
        SharedPings {
            id,
            native: crate::proto::ping_frame(id, unix_nanos),
            typha_time,
            typha_snappy: typha_ping(typha_time, WireVariant::TyphaSnappy),
            typha_plain: typha_ping(typha_time, WireVariant::TyphaPlain),
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
        hold_snapshot: false,
        hold_ring: false,
    })
}

/// Typha's handshake states; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TyphaState {
    AwaitHello,
    AwaitRestartAck,
    AwaitSnapshotAck,
    Live,
}

/// What Typha's `ServerHello.Version` says: Felix only logs it.
pub const TYPHA_SERVER_VERSION: &str = concat!("typha-rs-", env!("CARGO_PKG_VERSION"));

/// The restart that turns a path-A client's stream to snappy for the binary snapshot.
pub const TYPHA_ENABLE_SNAPPY: &str = "enable compression: snappy;send binary snapshot";

/// Typha's protocol: a plain gob stream from the client; from the server, a gob stream that
/// (path A) restarts twice into snappy-framed streams. See the module docs for the states.
pub struct TyphaSession {
    decoder: typha::ClientStreamDecoder,
    state: TyphaState,
    variant: WireVariant,
    /// The newest ping sent and its timestamp, to match a pong for the latency metric.
    last_ping: Option<(u64, typha::GoTime)>,
}

impl TyphaSession {
    fn new() -> Self {
        TyphaSession {
            decoder: typha::ClientStreamDecoder::new(typha::DEFAULT_MAX_CLIENT_MESSAGE),
            state: TyphaState::AwaitHello,
            variant: WireVariant::TyphaPlain,
            last_ping: None,
        }
    }

    fn feed(
        &mut self,
        input: &[u8],
        ctx: SessionContext<'_>,
        events: &mut Vec<SessionEvent>,
    ) -> bool {
        self.decoder.feed(input);
        loop {
            let msg = match self.decoder.next_message() {
                Ok(Some(m)) => m,
                Ok(None) => return true,
                Err(e) => {
                    events.push(SessionEvent::Refuse {
                        reason: GoodbyeReason::ProtocolError,
                        text: format!("undecodable Typha message: {e}"),
                    });
                    return false;
                }
            };
            let event = match (self.state, msg) {
                (TyphaState::AwaitHello, typha::ClientMessage::Hello(h)) => self.on_hello(h, ctx),
                (TyphaState::AwaitRestartAck, typha::ClientMessage::Ack) => {
                    self.state = TyphaState::AwaitSnapshotAck;
                    SessionEvent::Release(Release::Snapshot)
                }
                (TyphaState::AwaitSnapshotAck, typha::ClientMessage::Ack) => {
                    self.state = TyphaState::Live;
                    SessionEvent::Release(Release::Live)
                }
                (TyphaState::Live, typha::ClientMessage::Pong(p)) => SessionEvent::Pong {
                    ping_id: self
                        .last_ping
                        .filter(|(_, t)| *t == p.ping_timestamp)
                        .map(|(id, _)| id),
                },
                (state, msg) => SessionEvent::Refuse {
                    reason: GoodbyeReason::ProtocolError,
                    text: format!("unexpected {} in state {state:?}", typha_message_name(&msg)),
                },
            };
            let go_on = matches!(
                event,
                SessionEvent::Accepted(_) | SessionEvent::Release(_) | SessionEvent::Pong { .. }
            );
            events.push(event);
            if !go_on {
                return false;
            }
        }
    }

    fn on_hello(&mut self, h: typha::ClientHello, ctx: SessionContext<'_>) -> SessionEvent {
        let Some(syncer) = SyncerType::parse(&h.syncer_type) else {
            return SessionEvent::Refuse {
                reason: GoodbyeReason::ProtocolError,
                text: format!("unknown syncer type {:?}", truncate(&h.syncer_type, 64)),
            };
        };
        // Typha v3.32 refuses a client without modern policy keys (Felix v3.31 and older);
        // we serve it the v3.31 key form, a variant of its own.
        let legacy_keys = !h.supports_modern_policy_keys;
        let snappy = h.supports_decoder_restart
            && h.supported_compression
                .iter()
                .any(|c| c == typha::COMPRESSION_SNAPPY);
        let mut reply = bytes::BytesMut::new();
        reply.extend_from_slice(&typha::server_preamble());
        reply.extend_from_slice(&typha::encode_server_hello(&typha::ServerHello {
            version: TYPHA_SERVER_VERSION.into(),
            syncer_type: syncer.as_str().into(),
            supports_node_resource_updates: true,
            server_conn_id: ctx.typha_conn_id,
        }));
        if snappy {
            reply.extend_from_slice(&typha::encode_decoder_restart(&typha::DecoderRestart {
                message: TYPHA_ENABLE_SNAPPY.into(),
                compression: typha::COMPRESSION_SNAPPY.into(),
            }));
            self.state = TyphaState::AwaitRestartAck;
        } else {
            self.state = TyphaState::Live;
        }
        self.variant = WireVariant::typha(snappy, legacy_keys);
        SessionEvent::Accepted(Accepted {
            syncer,
            variant: self.variant,
            hostname: truncate(&h.hostname, 253).into(),
            client_info: truncate(&format!("{} {}", h.version, h.info), 128).into(),
            reply: reply.freeze(),
            hold_snapshot: snappy,
            hold_ring: snappy,
        })
    }
}

impl std::fmt::Debug for TyphaSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TyphaSession")
            .field("state", &self.state)
            .field("variant", &self.variant)
            .field("buffered", &self.decoder.buffered())
            .finish()
    }
}

fn typha_message_name(m: &typha::ClientMessage) -> &'static str {
    match m {
        typha::ClientMessage::Hello(_) => "MsgClientHello",
        typha::ClientMessage::Ack => "MsgACK",
        typha::ClientMessage::Pong(_) => "MsgPong",
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ClientMessage, Hello};

    fn native_hello() -> Vec<u8> {
        encode_frame(&ClientMessage::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            hostname: "n".into(),
            client_info: "t".into(),
            syncer_type: "felix".into(),
            accepts_compression: vec![],
        }))
        .to_vec()
    }

    fn felix_hello() -> Vec<u8> {
        let mut out = bytes::BytesMut::new();
        typha::ClientEncoder::new().encode_hello(
            &typha::FelixClientConfig::felix("n", "felix", 1).hello,
            &mut out,
        );
        out.to_vec()
    }

    #[test]
    fn detection_decides_on_the_first_bytes_as_soon_as_they_allow() {
        let go = felix_hello();
        assert_eq!(detect(&go[..1]), None);
        assert_eq!(detect(&go[..2]), Some(Detected::Typha));
        assert_eq!(detect(&go), Some(Detected::Typha));
        let native = native_hello();
        assert_eq!(detect(&native[..3]), None);
        assert_eq!(detect(&native[..4]), Some(Detected::Native));
        // Higher Go type ids: one and two id bytes, odd (negative) only.
        assert_eq!(detect(&[0x20, 0xff, 0x83]), Some(Detected::Typha));
        assert_eq!(detect(&[0x20, 0xfe, 0x01, 0x01]), Some(Detected::Typha));
        assert_eq!(detect(&[0x20, 0xff, 0x82]), Some(Detected::Neither));
        for garbage in [&b"GET / HTTP/1.1"[..], b"\x16\x03\x01\x02\x00", b"\0\0\0\0"] {
            assert_eq!(detect(garbage), Some(Detected::Neither), "{garbage:?}");
        }
    }

    #[test]
    fn a_detecting_session_hands_every_byte_to_the_protocol_it_found() {
        let ctx = SessionContext {
            server_id: "s",
            conn_id: 3,
            typha_conn_id: 9 << 32 | 3,
            max_frame: 64 * 1024,
            codec: None,
        };
        for (bytes, protocol) in [(felix_hello(), "typha"), (native_hello(), "native")] {
            let mut s = Session::detecting();
            let mut events = Vec::new();
            // Byte by byte: detection must neither lose nor repeat a byte.
            for b in &bytes {
                assert!(s.feed(std::slice::from_ref(b), ctx, &mut events));
            }
            assert_eq!(s.protocol(), protocol);
            assert!(
                matches!(&events[..], [SessionEvent::Accepted(a)] if a.syncer == SyncerType::Felix),
                "{events:?}"
            );
        }
        let mut s = Session::detecting();
        let mut events = Vec::new();
        assert!(!s.feed(b"GET / HTTP/1.1\r\n", ctx, &mut events));
        assert!(matches!(&events[..], [SessionEvent::Unrecognised { .. }]));
    }

    #[test]
    fn a_hello_without_modern_policy_keys_takes_the_legacy_variant_of_its_path() {
        let ctx = SessionContext {
            server_id: "s",
            conn_id: 1,
            typha_conn_id: 1,
            max_frame: 64 * 1024,
            codec: None,
        };
        for (modern, restart, want) in [
            (true, true, WireVariant::TyphaSnappy),
            (true, false, WireVariant::TyphaPlain),
            (false, true, WireVariant::TyphaSnappyLegacy),
            (false, false, WireVariant::TyphaPlainLegacy),
        ] {
            let mut cfg = typha::FelixClientConfig::felix("n", "felix", 1);
            cfg.hello.supports_modern_policy_keys = modern;
            cfg.hello.supports_decoder_restart = restart;
            let mut hello = bytes::BytesMut::new();
            typha::ClientEncoder::new().encode_hello(&cfg.hello, &mut hello);
            let mut s = Session::detecting();
            let mut events = Vec::new();
            assert!(s.feed(&hello, ctx, &mut events));
            match &events[..] {
                [SessionEvent::Accepted(a)] => {
                    assert_eq!(a.variant, want);
                    assert_eq!(a.hold_snapshot, restart, "{want:?}");
                }
                other => panic!("modern={modern} restart={restart}: {other:?}"),
            }
        }
    }
}
