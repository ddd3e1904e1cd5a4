//! A protocol session with no I/O: bytes in, events and bytes out.

use super::state::{ClientEvent, SyncState, Tracking};
use super::ClientError;
use crate::model::{now_unix_nanos, Digest, SyncerType};
use crate::proto::{
    self, ClientMessage, Codec, FeedError, FrameDecoder, GoodbyeReason, Hello, ProtoError,
    ServerFrameRef, WireUpdateRef,
};
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::time::Duration;

/// How a client identifies itself and what it checks.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub hostname: String,
    pub client_info: String,
    pub syncer_type: SyncerType,
    /// Codecs offered in the `Hello`. A `ServerHello` choosing another is a protocol error.
    pub accept_compression: Vec<Codec>,
    /// Largest server payload accepted, before and after decompression (clamped to
    /// [`proto::MAX_SERVER_FRAME`] after decompression).
    pub max_frame: usize,
    /// Queue a `Pong` for every `Ping`.
    pub answer_pings: bool,
    pub tracking: Tracking,
    /// For [`BlockingClient`](super::BlockingClient): socket read and write timeout.
    pub read_timeout: Option<Duration>,
    /// For [`BlockingClient`](super::BlockingClient).
    pub connect_timeout: Duration,
    /// Also queue a [`ClientEvent::Keys`] with the updates of every snapshot chunk and
    /// `Updates` frame (a copy of each: for debugging tools, not load tests).
    pub report_keys: bool,
    /// For [`BlockingClient`](super::BlockingClient): connect with TLS, reading these files
    /// at each connect. Other event loops use [`ClientTls`](super::tls::ClientTls) directly.
    pub tls: Option<super::tls::ClientTlsOptions>,
    /// With [`Tracking::DigestOnly`]: snapshot chunks already decoded by another session
    /// sharing this memo are recognised by a hash of their bytes and not decoded again.
    pub chunk_memo: Option<std::sync::Arc<ChunkMemo>>,
}

/// Snapshot chunks decoded by [`Tracking::DigestOnly`] sessions, keyed by the XXH3-128 of the
/// frame as received (compressed or not), with what decoding it gave: its sequence number, the
/// digest of its entries and their count.
///
/// The server encodes a snapshot once and sends the same bytes to every client that joins at
/// that sequence number, so in a reconnect storm thousands of sessions receive identical
/// chunks. The first session to receive a chunk decodes and checks it as usual; the others,
/// given byte-identical input, would compute the identical result, and take it from here. The
/// per-connection checks (sequence rules, the summed digest against `SnapshotEnd`) still run
/// for every session. Bounded: it is emptied when it reaches its capacity.
#[derive(Debug)]
pub struct ChunkMemo {
    capacity: usize,
    chunks: std::sync::Mutex<std::collections::HashMap<u128, (u64, Digest, u64)>>,
}

impl ChunkMemo {
    pub fn new(capacity: usize) -> Self {
        ChunkMemo {
            capacity: capacity.max(1),
            chunks: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    fn get(&self, hash: u128) -> Option<(u64, Digest, u64)> {
        self.chunks.lock().ok()?.get(&hash).copied()
    }

    fn insert(&self, hash: u128, summary: (u64, Digest, u64)) {
        if let Ok(mut m) = self.chunks.lock() {
            if m.len() >= self.capacity {
                m.clear();
            }
            m.insert(hash, summary);
        }
    }

    /// Chunks remembered now.
    pub fn len(&self) -> usize {
        self.chunks.lock().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            hostname: "typha-rs-client".to_owned(),
            client_info: concat!("typha-rs client ", env!("CARGO_PKG_VERSION")).to_owned(),
            syncer_type: SyncerType::Felix,
            accept_compression: Codec::ALL.to_vec(),
            max_frame: proto::MAX_SERVER_FRAME,
            answer_pings: true,
            tracking: Tracking::Full,
            read_timeout: Some(Duration::from_secs(30)),
            connect_timeout: Duration::from_secs(10),
            report_keys: false,
            tls: None,
            chunk_memo: None,
        }
    }
}

impl ClientOptions {
    /// The `Hello` these options send.
    pub fn hello(&self) -> Hello {
        Hello {
            protocol_version: proto::PROTOCOL_VERSION,
            hostname: self.hostname.clone(),
            client_info: self.client_info.clone(),
            syncer_type: self.syncer_type.as_str().to_owned(),
            accepts_compression: self
                .accept_compression
                .iter()
                .map(|c| c.as_str().to_owned())
                .collect(),
        }
    }
}

/// What one `Updates` frame was, for comparing streams across clients without keeping them
/// (see [`ClientSession::record_frames`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameRecord {
    pub first_seq: u64,
    pub last_seq: u64,
    pub received_at: u64,
    /// When it was decoded (Unix nanoseconds).
    pub decoded_at: u64,
    /// xxh3-128 of the frame's payload after decompression: equal for every client that
    /// received the same frame, whatever codec it was compressed with.
    pub content_hash: u128,
    /// The map's digest after applying it ([`Tracking::Full`] only).
    pub digest_after: Option<Digest>,
    /// Values of the stamp label found in its updates (see [`ClientSession::set_stamp_label`]),
    /// when stamp scanning was on.
    pub stamps: Vec<u64>,
    /// Whether the updates were scanned for stamps.
    pub scanned: bool,
}

/// Looks for `"<label>":"<decimal>"` in `value` (a JSON document) and parses the decimal.
pub fn find_stamp(pattern: &[u8], value: &[u8]) -> Option<u64> {
    let at = value.windows(pattern.len()).position(|w| w == pattern)? + pattern.len();
    let digits = &value[at..];
    let end = digits.iter().position(|b| !b.is_ascii_digit())?;
    if end == 0 || end > 20 || digits[end] != b'"' {
        return None;
    }
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// Stamp scanning settings of a session.
#[derive(Debug, Default)]
struct Stamps {
    /// `"<label>":"` as it appears in a value's JSON.
    pattern: Option<Vec<u8>>,
    /// Key substring an update's key must contain to be scanned.
    key_part: String,
    scan: bool,
}

impl Stamps {
    fn scan_into(&self, u: &WireUpdateRef<'_>, out: &mut Vec<u64>) {
        if let (Some(p), Some(v)) = (&self.pattern, u.value) {
            if u.key.contains(self.key_part.as_str()) {
                out.extend(find_stamp(p, v));
            }
        }
    }
}

/// One connection's protocol state, driven by whoever owns the socket: hand it the bytes read
/// with [`feed`](Self::feed), write what [`take_output`](Self::take_output) returns, and consume
/// [`poll_event`](Self::poll_event). The `Hello` is queued on creation.
///
/// Errors are final: after `feed` fails once, every later call fails too. After a `Goodbye`
/// any further frame is a [`ClientError::Protocol`] error (the server must close after it).
/// [`state`](Self::state) reflects every frame fed so far, possibly ahead of the events not yet
/// polled.
#[derive(Debug)]
pub struct ClientSession {
    opts: ClientOptions,
    decoder: FrameDecoder,
    state: SyncState,
    events: VecDeque<ClientEvent>,
    out: BytesMut,
    failed: Option<String>,
    frames_received: u64,
    bytes_received: u64,
    record_frames: bool,
    records: VecDeque<FrameRecord>,
    stamps: Stamps,
}

impl ClientSession {
    pub fn new(opts: ClientOptions) -> Self {
        let hello = proto::encode_frame(&ClientMessage::Hello(opts.hello()));
        let mut out = BytesMut::with_capacity(hello.len());
        out.extend_from_slice(&hello);
        ClientSession {
            decoder: FrameDecoder::new(opts.max_frame),
            state: SyncState::new(opts.tracking),
            events: VecDeque::new(),
            out,
            failed: None,
            frames_received: 0,
            bytes_received: 0,
            record_frames: false,
            records: VecDeque::new(),
            stamps: Stamps::default(),
            opts,
        }
    }

    /// Keep a [`FrameRecord`] of every `Updates` frame, to be taken with
    /// [`pop_frame_record`](Self::pop_frame_record). Set it before feeding anything.
    pub fn record_frames(&mut self, on: bool) {
        self.record_frames = on;
    }

    /// The oldest frame record not yet taken.
    pub fn pop_frame_record(&mut self) -> Option<FrameRecord> {
        self.records.pop_front()
    }

    /// Scan the values of `Updates` whose key contains `key_part` for the label `label` whose
    /// value is a decimal (a write's timestamp), into [`FrameRecord::stamps`] while
    /// [`set_scan_stamps`](Self::set_scan_stamps) is on.
    pub fn set_stamp_label(&mut self, label: &str, key_part: &str) {
        self.stamps.pattern = Some(format!("\"{label}\":\"").into_bytes());
        self.stamps.key_part = key_part.to_owned();
    }

    pub fn set_scan_stamps(&mut self, on: bool) {
        self.stamps.scan = on;
    }

    pub fn options(&self) -> &ClientOptions {
        &self.opts
    }

    /// Feeds bytes read from the connection, in any split. Events are timestamped with the
    /// current clock.
    pub fn feed(&mut self, input: &[u8]) -> Result<(), ClientError> {
        self.feed_with(input, now_unix_nanos)
    }

    /// As [`feed`](Self::feed), with a fixed receive time (Unix nanoseconds) for the lag of
    /// `Updates` events.
    pub fn feed_at(&mut self, input: &[u8], now_unix_nanos: u64) -> Result<(), ClientError> {
        self.feed_with(input, || now_unix_nanos)
    }

    fn feed_with(
        &mut self,
        input: &[u8],
        mut clock: impl FnMut() -> u64,
    ) -> Result<(), ClientError> {
        if let Some(why) = &self.failed {
            return Err(ClientError::protocol(format!(
                "session already failed: {why}"
            )));
        }
        self.bytes_received += input.len() as u64;
        let ClientSession {
            opts,
            decoder,
            state,
            events,
            out,
            frames_received,
            record_frames,
            records,
            stamps,
            ..
        } = self;
        let bulk_path = *record_frames || opts.tracking == Tracking::DigestOnly;
        let res = decoder.feed(input, |payload| -> Result<(), ClientError> {
            *frames_received += 1;
            if bulk_path {
                let memo = match (&opts.chunk_memo, opts.tracking) {
                    (Some(m), Tracking::DigestOnly) => {
                        let h = xxhash_rust::xxh3::xxh3_128(payload);
                        if let Some((seq, part, n)) = m.get(h) {
                            return state.apply_snapshot_chunk_summary(seq, part, n);
                        }
                        Some((m, h))
                    }
                    _ => None,
                };
                let inflated;
                let mut plain = payload;
                let mut decompressed = false;
                if let ServerFrameRef::Compressed {
                    codec,
                    uncompressed_len,
                    data,
                } = proto::decode_server_frame_ref(payload, opts.max_frame)?
                {
                    let max = opts.max_frame.min(proto::MAX_SERVER_FRAME);
                    inflated = proto::decompress(codec, data, uncompressed_len as usize, max)?;
                    plain = &inflated;
                    decompressed = true;
                }
                match proto::decode_server_frame_ref(plain, opts.max_frame)? {
                    ServerFrameRef::Compressed { .. } => {
                        return Err(ProtoError::NestedCompression.into())
                    }
                    ServerFrameRef::SnapshotChunk { seq, updates }
                        if opts.tracking == Tracking::DigestOnly =>
                    {
                        let (part, n) = state.apply_snapshot_chunk_ref(seq, updates)?;
                        if let Some((m, h)) = memo {
                            m.insert(h, (seq, part, n));
                        }
                        return Ok(());
                    }
                    ServerFrameRef::Updates {
                        first_seq,
                        last_seq,
                        received_at,
                        updates,
                    } => {
                        let now = clock();
                        let scan = stamps.scan && stamps.pattern.is_some();
                        let mut found = Vec::new();
                        let ev = if opts.tracking == Tracking::DigestOnly {
                            let mut count = 0usize;
                            let mut updates = updates;
                            for u in updates.by_ref() {
                                let u = u?;
                                if scan {
                                    stamps.scan_into(&u, &mut found);
                                }
                                count += 1;
                            }
                            updates.finish()?;
                            state.apply_updates_counted(
                                first_seq,
                                last_seq,
                                received_at,
                                count,
                                now,
                            )?
                        } else {
                            if scan {
                                for u in updates {
                                    stamps.scan_into(&u?, &mut found);
                                }
                            }
                            let msg = proto::decode_server_message(plain, opts.max_frame)?;
                            match state.apply(msg, now)? {
                                Some(ev) => ev,
                                None => return Ok(()),
                            }
                        };
                        if *record_frames {
                            records.push_back(FrameRecord {
                                first_seq,
                                last_seq,
                                received_at,
                                decoded_at: now,
                                content_hash: xxhash_rust::xxh3::xxh3_128(plain),
                                digest_after: (opts.tracking == Tracking::Full)
                                    .then(|| state.digest()),
                                stamps: found,
                                scanned: scan,
                            });
                        }
                        events.push_back(ev);
                        return Ok(());
                    }
                    _ => {}
                }
                if decompressed {
                    // Decode the inner message as it is rather than decompress it again.
                    let msg = proto::decode_server_message(plain, opts.max_frame)?;
                    return handle_message(opts, state, events, out, msg, clock());
                }
            }
            let msg = proto::decode_server_message(payload, opts.max_frame)?;
            tracing::trace!(len = payload.len(), ?msg, "frame");
            handle_message(opts, state, events, out, msg, clock())
        });
        match res {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = match e {
                    FeedError::Frame(p) => ClientError::Proto(p),
                    FeedError::Handler(e) => e,
                };
                tracing::debug!(error = %e, "client session failed");
                self.failed = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// The next event, oldest first.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    pub fn pending_events(&self) -> usize {
        self.events.len()
    }

    /// All bytes waiting to be written (the `Hello`, `Pong`s), or `None`.
    pub fn take_output(&mut self) -> Option<Bytes> {
        if self.out.is_empty() {
            None
        } else {
            Some(self.out.split().freeze())
        }
    }

    /// The bytes waiting to be written; after writing some, call
    /// [`advance_output`](Self::advance_output).
    pub fn pending_output(&self) -> &[u8] {
        &self.out
    }

    /// Drops the first `n` bytes of pending output (clamped to what is pending).
    pub fn advance_output(&mut self, n: usize) {
        let n = n.min(self.out.len());
        let _ = self.out.split_to(n);
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Appends arbitrary bytes to the output (for tests that send garbage).
    pub fn queue_raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Drops all pending output, e.g. the `Hello` for a test that sends its own first frame.
    pub fn discard_output(&mut self) {
        self.out.clear();
    }

    pub fn state(&self) -> &SyncState {
        &self.state
    }

    /// Bytes held of an incomplete frame.
    pub fn buffered(&self) -> usize {
        self.decoder.buffered()
    }

    pub fn goodbye(&self) -> Option<(GoodbyeReason, &str)> {
        self.state.goodbye()
    }

    /// Whether `feed` has failed (the session is then unusable).
    pub fn is_failed(&self) -> bool {
        self.failed.is_some()
    }

    pub fn frames_received(&self) -> u64 {
        self.frames_received
    }

    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }

    /// The error for a peer that closed the connection now.
    pub fn closed_error(&self) -> ClientError {
        ClientError::Closed {
            buffered: self.buffered(),
        }
    }
}

/// Applies one owned message and queues its event (and a `Pong` for a `Ping`).
fn handle_message(
    opts: &ClientOptions,
    state: &mut SyncState,
    events: &mut VecDeque<ClientEvent>,
    out: &mut BytesMut,
    msg: proto::ServerMessage,
    now: u64,
) -> Result<(), ClientError> {
    // Copied before `apply` consumes them into the map; queued only once it accepted the frame.
    let keys = match &msg {
        proto::ServerMessage::SnapshotChunk { seq, updates } if opts.report_keys => {
            Some((*seq, true, updates.clone()))
        }
        proto::ServerMessage::Updates {
            last_seq, updates, ..
        } if opts.report_keys => Some((*last_seq, false, updates.clone())),
        _ => None,
    };
    let ev = state.apply(msg, now)?;
    if let Some((seq, snapshot, updates)) = keys {
        events.push_back(ClientEvent::Keys {
            seq,
            snapshot,
            updates,
        });
    }
    let Some(ev) = ev else {
        return Ok(());
    };
    match &ev {
        ClientEvent::ServerHello(h) => {
            if let Some(c) = h.compression {
                if !opts.accept_compression.contains(&c) {
                    return Err(ClientError::protocol(format!(
                        "server chose compression {} which was not offered",
                        c.as_str()
                    )));
                }
            }
            tracing::debug!(
                server_id = %h.server_id,
                connection_id = h.connection_id,
                syncer_type = %h.syncer_type,
                compression = ?h.compression,
                "server hello"
            );
        }
        ClientEvent::Ping { id } if opts.answer_pings => {
            out.extend_from_slice(&proto::encode_frame(&ClientMessage::Pong { id: *id }));
        }
        _ => {}
    }
    events.push_back(ev);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Digest, Entry, Key, StateMap, SyncStatus, Update, UpdateType};
    use crate::proto::encode::{encode_batch_part, encode_snapshot, EncodeOptions, WireVariant};
    use crate::proto::{ProtoError, ServerHello, ServerMessage, PROTOCOL_VERSION};
    use std::sync::Arc;

    fn is_too_large(e: &ClientError) -> bool {
        matches!(e, ClientError::Proto(ProtoError::FrameTooLarge { .. }))
    }

    const RECEIVED_AT: u64 = 1_700_000_000_000_000_000;

    fn server_hello(compression: Option<Codec>) -> Bytes {
        proto::encode_frame(&ServerMessage::ServerHello(ServerHello {
            protocol_version: PROTOCOL_VERSION,
            server_id: "srv".into(),
            connection_id: 7,
            syncer_type: "felix".into(),
            compression,
        }))
    }

    fn state_map() -> StateMap {
        let mut m = StateMap::new();
        for i in 0..20 {
            let k: Key = format!("/calico/v1/host/node-{i:02}/config/IpInIpTunnelAddr").into();
            let v = format!("{{\"addr\":\"10.0.0.{i}\",\"pad\":\"{}\"}}", "x".repeat(64));
            m.insert(
                k,
                Arc::new(Entry {
                    value: v.into(),
                    revision: format!("{i}"),
                }),
            );
        }
        // Not a felix key: must not reach a felix client.
        m.insert(
            "/calico/resources/v3/projectcalico.org/caliconodestatuses/n1".into(),
            Arc::new(Entry {
                value: "status".into(),
                revision: "1".into(),
            }),
        );
        m
    }

    fn upd(k: &str, v: Option<&str>, rev: &str) -> Update {
        Update {
            key: k.into(),
            value: v.map(|v| bytes::Bytes::copy_from_slice(v.as_bytes())),
            revision: rev.into(),
            update_type: if v.is_some() {
                UpdateType::Updated
            } else {
                UpdateType::Deleted
            },
        }
    }

    fn batch1() -> Vec<Update> {
        vec![
            upd(
                "/calico/v1/host/node-00/config/IpInIpTunnelAddr",
                Some(&format!("changed-{}", "y".repeat(200))),
                "100",
            ),
            upd(
                "/calico/v1/host/node-01/config/IpInIpTunnelAddr",
                None,
                "101",
            ),
            upd("/calico/v1/host/node-99/config/unknown", None, "102"),
            upd(
                "/calico/v1/policy/NetworkPolicy/default/p",
                Some(&"z".repeat(300)),
                "103",
            ),
        ]
    }

    fn batch2() -> Vec<Update> {
        vec![upd(
            "/calico/v1/host/node-02/config/IpInIpTunnelAddr",
            Some(&"w".repeat(100)),
            "104",
        )]
    }

    /// The expected map after snapshot + batches, with its digest.
    fn expected() -> (HashMapT, Digest) {
        let mut m = HashMapT::new();
        for (k, e) in state_map().iter() {
            if SyncerType::Felix.wants(k) {
                m.insert(k.to_string(), (e.value.to_vec(), e.revision.clone()));
            }
        }
        for u in batch1().iter().chain(batch2().iter()) {
            match &u.value {
                Some(v) => {
                    m.insert(u.key.to_string(), (v.to_vec(), u.revision.clone()));
                }
                None => {
                    m.remove(&*u.key);
                }
            }
        }
        let mut d = Digest::default();
        for (k, (v, _)) in &m {
            d.add(k, v);
        }
        (m, d)
    }

    type HashMapT = std::collections::HashMap<String, (Vec<u8>, String)>;

    struct Stream {
        bytes: Vec<u8>,
        snapshot_digest: Digest,
        snapshot_keys: u64,
    }

    /// ServerHello, snapshot at seq 10, Ping 77, Updates 11..=12 + SyncStatus(InSync),
    /// Updates 13..=13, Goodbye.
    fn stream(codec: Option<Codec>) -> Stream {
        let opts = EncodeOptions {
            codec,
            compress_min_bytes: 16,
            snapshot_chunk_bytes: 300,
        };
        let mut bytes = server_hello(codec).to_vec();
        let snap = encode_snapshot(
            &state_map(),
            10,
            SyncStatus::ResyncInProgress,
            SyncerType::Felix,
            codec,
            opts.snapshot_chunk_bytes,
        );
        assert!(snap.frames.len() > 3, "want several chunks");
        if codec.is_some() {
            assert!(
                snap.wire_bytes < snap.raw_bytes,
                "snapshot was not compressed"
            );
        }
        for f in &snap.frames {
            bytes.extend_from_slice(f);
        }
        bytes.extend_from_slice(&proto::ping_frame(77, 0));
        let b1 = batch1();
        let refs: Vec<&Update> = b1.iter().collect();
        let p1 =
            encode_batch_part(11, 12, RECEIVED_AT, &refs, Some(SyncStatus::InSync), &opts).unwrap();
        let b2 = batch2();
        let refs: Vec<&Update> = b2.iter().collect();
        let p2 = encode_batch_part(13, 13, RECEIVED_AT + 1000, &refs, None, &opts).unwrap();
        if codec.is_some() {
            assert!(p1.compressed().is_some() && p2.compressed().is_some());
        }
        let variant = WireVariant::native(codec);
        bytes.extend_from_slice(p1.frames(variant).unwrap());
        bytes.extend_from_slice(p2.frames(variant).unwrap());
        bytes.extend_from_slice(&proto::goodbye_frame(GoodbyeReason::Shutdown, "bye"));
        Stream {
            bytes,
            snapshot_digest: snap.digest,
            snapshot_keys: snap.key_count,
        }
    }

    fn hello_frame(opts: &ClientOptions) -> Bytes {
        proto::encode_frame(&ClientMessage::Hello(opts.hello()))
    }

    fn events(s: &mut ClientSession) -> Vec<ClientEvent> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    fn check_full_stream(s: &mut ClientSession, st: &Stream) {
        let (want, want_digest) = expected();
        let state = s.state();
        assert_eq!(state.len(), want.len());
        for (k, (v, rev)) in &want {
            let e = state.get(k).unwrap_or_else(|| panic!("missing {k}"));
            assert_eq!(&e.value, v, "{k}");
            assert_eq!(&e.revision, rev, "{k}");
        }
        assert_eq!(state.iter().count(), want.len());
        assert_eq!(state.digest(), want_digest);
        assert_eq!(state.seq(), 13);
        assert_eq!(state.status(), Some(SyncStatus::InSync));
        assert!(state.is_in_sync());
        assert_eq!(state.goodbye(), Some((GoodbyeReason::Shutdown, "bye")));

        let ev = events(s);
        assert_eq!(ev.len(), 7, "{ev:#?}");
        assert!(matches!(&ev[0], ClientEvent::ServerHello(h) if h.connection_id == 7));
        assert_eq!(
            ev[1],
            ClientEvent::SnapshotComplete {
                seq: 10,
                key_count: st.snapshot_keys,
                digest: st.snapshot_digest,
                status: SyncStatus::ResyncInProgress,
            }
        );
        assert_eq!(st.snapshot_keys, 20);
        assert_eq!(ev[2], ClientEvent::Ping { id: 77 });
        assert_eq!(
            ev[3],
            ClientEvent::Updates {
                first_seq: 11,
                last_seq: 12,
                count: 4,
                received_at: RECEIVED_AT,
                lag: Duration::from_millis(5),
            }
        );
        assert_eq!(ev[4], ClientEvent::Status(SyncStatus::InSync));
        assert!(matches!(
            ev[5],
            ClientEvent::Updates { first_seq: 13, last_seq: 13, count: 1, lag, .. }
                if lag == Duration::from_millis(5) - Duration::from_nanos(1000)
        ));
        assert_eq!(
            ev[6],
            ClientEvent::Goodbye {
                reason: GoodbyeReason::Shutdown,
                message: "bye".into()
            }
        );
    }

    fn now() -> u64 {
        RECEIVED_AT + 5_000_000
    }

    #[test]
    fn whole_stream_in_one_chunk() {
        let opts = ClientOptions::default();
        let mut s = ClientSession::new(opts.clone());
        let st = stream(None);
        s.feed_at(&st.bytes, now()).unwrap();
        check_full_stream(&mut s, &st);
        let mut want_out = hello_frame(&opts).to_vec();
        want_out.extend_from_slice(&proto::encode_frame(&ClientMessage::Pong { id: 77 }));
        assert_eq!(s.take_output().unwrap(), want_out);
        assert!(s.take_output().is_none());
        assert_eq!(s.buffered(), 0);
    }

    #[test]
    fn whole_stream_byte_by_byte() {
        let opts = ClientOptions {
            hostname: "node-1".into(),
            syncer_type: SyncerType::Felix,
            accept_compression: vec![Codec::Lz4],
            ..Default::default()
        };
        let mut s = ClientSession::new(opts.clone());
        // The Hello is out before anything is read.
        assert_eq!(s.take_output().unwrap(), hello_frame(&opts));
        let hello = proto::decode_client_message(&hello_frame(&opts)[4..]).unwrap();
        assert!(matches!(hello, ClientMessage::Hello(h)
            if h.hostname == "node-1" && h.accepts_compression == ["lz4"]
                && h.syncer_type == "felix" && h.protocol_version == PROTOCOL_VERSION));
        let st = stream(None);
        let mut pong_at = None;
        for (i, b) in st.bytes.iter().enumerate() {
            s.feed_at(std::slice::from_ref(b), now()).unwrap();
            if pong_at.is_none() && s.has_output() {
                pong_at = Some(i);
            }
        }
        // The Pong is queued as soon as the Ping's last byte arrives, not before.
        let ping = proto::ping_frame(77, 0);
        let ping_end = st
            .bytes
            .windows(ping.len())
            .position(|w| w == &ping[..])
            .unwrap()
            + ping.len()
            - 1;
        assert_eq!(pong_at, Some(ping_end));
        assert_eq!(
            s.take_output().unwrap(),
            proto::encode_frame(&ClientMessage::Pong { id: 77 })
        );
        check_full_stream(&mut s, &st);
    }

    #[test]
    fn compressed_stream_decodes_to_the_same_map() {
        for codec in Codec::ALL {
            let plain = stream(None);
            let comp = stream(Some(codec));
            assert!(comp.bytes.len() < plain.bytes.len(), "{codec:?}");
            let mut a = ClientSession::new(ClientOptions::default());
            a.feed_at(&plain.bytes, now()).unwrap();
            let mut b = ClientSession::new(ClientOptions::default());
            for c in comp.bytes.chunks(7) {
                b.feed_at(c, now()).unwrap();
            }
            assert_eq!(a.state().map(), b.state().map(), "{codec:?}");
            assert_eq!(a.state().digest(), b.state().digest());
            check_full_stream(&mut b, &comp);
        }
    }

    #[test]
    fn report_keys_queues_each_frames_updates_before_its_event() {
        let st = stream(Some(Codec::Zstd));
        let mut s = ClientSession::new(ClientOptions {
            report_keys: true,
            ..Default::default()
        });
        s.feed_at(&st.bytes, now()).unwrap();
        let ev = events(&mut s);
        // Replaying the reported keys rebuilds exactly the map the session holds.
        let mut replay = HashMapT::new();
        let mut snapshot_keys = 0;
        let mut last_keys_seq = None;
        for (i, e) in ev.iter().enumerate() {
            match e {
                ClientEvent::Keys {
                    seq,
                    snapshot,
                    updates,
                } => {
                    if *snapshot {
                        assert_eq!(*seq, 10);
                        snapshot_keys += updates.len();
                    } else {
                        // The frame's own event follows its keys.
                        assert!(
                            matches!(&ev[i + 1], ClientEvent::Updates { last_seq, count, .. }
                                if last_seq == seq && *count == updates.len()),
                            "{:?}",
                            ev[i + 1]
                        );
                    }
                    last_keys_seq = Some(*seq);
                    for u in updates {
                        match &u.value {
                            Some(v) => {
                                replay.insert(u.key.clone(), (v.clone(), u.revision.clone()));
                            }
                            None => {
                                replay.remove(&u.key);
                            }
                        }
                    }
                }
                ClientEvent::SnapshotComplete { key_count, .. } => {
                    assert_eq!(snapshot_keys as u64, *key_count, "all chunks came first");
                }
                _ => {}
            }
        }
        assert_eq!(last_keys_seq, Some(13));
        let held: HashMapT = s
            .state()
            .iter()
            .map(|(k, e)| (k.clone(), (e.value.clone(), e.revision.clone())))
            .collect();
        assert_eq!(replay, held);
        assert_eq!(replay, expected().0);

        // Off by default: the same stream queues no Keys events.
        let mut quiet = ClientSession::new(ClientOptions::default());
        quiet.feed_at(&st.bytes, now()).unwrap();
        assert!(!events(&mut quiet)
            .iter()
            .any(|e| matches!(e, ClientEvent::Keys { .. })));
    }

    #[test]
    fn unoffered_compression_is_refused() {
        let mut s = ClientSession::new(ClientOptions {
            accept_compression: vec![Codec::Lz4],
            ..Default::default()
        });
        let e = s.feed(&server_hello(Some(Codec::Zstd))).unwrap_err();
        assert!(
            matches!(&e, ClientError::Protocol(m) if m.contains("zstd")),
            "{e}"
        );
    }

    #[test]
    fn no_pong_when_pings_are_not_answered() {
        let mut s = ClientSession::new(ClientOptions {
            answer_pings: false,
            ..Default::default()
        });
        s.discard_output();
        s.feed(&proto::ping_frame(3, 0)).unwrap();
        assert_eq!(s.poll_event(), Some(ClientEvent::Ping { id: 3 }));
        assert!(s.take_output().is_none());
    }

    #[test]
    fn seq_only_tracks_sequence_without_a_map() {
        let mut s = ClientSession::new(ClientOptions {
            tracking: Tracking::SeqOnly,
            ..Default::default()
        });
        let st = stream(None);
        s.feed_at(&st.bytes, now()).unwrap();
        assert_eq!(s.state().len(), 0);
        assert_eq!(s.state().seq(), 13);
        assert_eq!(s.state().updates_received(), 5);
        assert_eq!(s.state().snapshot_entries(), 20);
        assert_eq!(events(&mut s).len(), 7);
    }

    #[test]
    fn digest_only_verifies_the_snapshot_and_records_frames() {
        for codec in [None, Some(Codec::Zstd), Some(Codec::Lz4)] {
            let st = stream(codec);
            let mut full = ClientSession::new(ClientOptions::default());
            full.record_frames(true);
            full.feed_at(&st.bytes, now()).unwrap();
            let mut s = ClientSession::new(ClientOptions {
                tracking: Tracking::DigestOnly,
                ..Default::default()
            });
            s.record_frames(true);
            for c in st.bytes.chunks(11) {
                s.feed_at(c, now()).unwrap();
            }
            assert_eq!(s.state().len(), 0);
            assert_eq!(s.state().seq(), 13);
            assert_eq!(s.state().digest(), st.snapshot_digest);
            assert_eq!(s.state().updates_received(), 5);
            assert_eq!(s.state().snapshot_entries(), 20);
            // The same events as a full-map client, in the same order.
            let want = events(&mut full);
            assert_eq!(events(&mut s), want, "{codec:?}");
            // Frame records agree with the full-map client's, whatever the codec.
            let a: Vec<_> = std::iter::from_fn(|| full.pop_frame_record()).collect();
            let b: Vec<_> = std::iter::from_fn(|| s.pop_frame_record()).collect();
            assert_eq!(a.len(), 2);
            assert_eq!(a[1].digest_after, Some(expected().1));
            for (x, y) in a.iter().zip(&b) {
                assert_eq!(
                    (x.first_seq, x.last_seq, x.content_hash, x.received_at),
                    (y.first_seq, y.last_seq, y.content_hash, y.received_at)
                );
                assert_eq!(y.digest_after, None);
            }
            assert_ne!(b[0].content_hash, b[1].content_hash);
            let plain = stream(None);
            let mut p = ClientSession::new(ClientOptions::default());
            p.record_frames(true);
            p.feed_at(&plain.bytes, now()).unwrap();
            assert_eq!(
                p.pop_frame_record().unwrap().content_hash,
                b[0].content_hash
            );
        }
        // A wrong digest in the SnapshotEnd is caught without a map.
        let snap = encode_snapshot(
            &state_map(),
            10,
            SyncStatus::InSync,
            SyncerType::Felix,
            None,
            300,
        );
        let mut bad = snap.digest.to_bytes();
        bad[0] ^= 1;
        let mut s = ClientSession::new(ClientOptions {
            tracking: Tracking::DigestOnly,
            ..Default::default()
        });
        assert_protocol(
            s.feed(&tampered_end(20, bad)).unwrap_err(),
            "digest mismatch",
        );
        let mut s = ClientSession::new(ClientOptions {
            tracking: Tracking::DigestOnly,
            ..Default::default()
        });
        assert_protocol(
            s.feed(&tampered_end(21, snap.digest.to_bytes()))
                .unwrap_err(),
            "key count mismatch",
        );
        // Sequence rules hold as with a map.
        let (mut b, _) = prefix();
        b.extend_from_slice(&updates_frame(12, 12));
        let mut s = ClientSession::new(ClientOptions {
            tracking: Tracking::DigestOnly,
            ..Default::default()
        });
        assert_protocol(s.feed(&b).unwrap_err(), "gap");
    }

    #[test]
    fn a_chunk_memo_spares_identical_chunks_but_not_the_checks() {
        for codec in [None, Some(Codec::Zstd)] {
            let memo = Arc::new(ChunkMemo::new(1024));
            let opts = ClientOptions {
                tracking: Tracking::DigestOnly,
                chunk_memo: Some(memo.clone()),
                ..Default::default()
            };
            let st = stream(codec);
            let mut first = ClientSession::new(opts.clone());
            first.feed_at(&st.bytes, now()).unwrap();
            let chunks = memo.len();
            assert!(chunks > 1, "{codec:?}: the snapshot has several chunks");
            // The same bytes again: every chunk comes from the memo, the result is the same.
            let mut second = ClientSession::new(opts.clone());
            second.feed_at(&st.bytes, now()).unwrap();
            assert_eq!(memo.len(), chunks);
            for s in [&first, &second] {
                assert_eq!(s.state().digest(), st.snapshot_digest);
                assert!(s.state().snapshot_complete());
            }
        }
        // The memo holds chunks, not verdicts: a remembered chunk followed by a SnapshotEnd
        // that declares another digest still fails.
        let memo = Arc::new(ChunkMemo::new(1024));
        let opts = ClientOptions {
            tracking: Tracking::DigestOnly,
            chunk_memo: Some(memo.clone()),
            ..Default::default()
        };
        let (good, _) = prefix();
        ClientSession::new(opts.clone()).feed(&good).unwrap();
        assert!(!memo.is_empty());
        let snap = encode_snapshot(
            &state_map(),
            10,
            SyncStatus::InSync,
            SyncerType::Felix,
            None,
            300,
        );
        let mut bad = snap.digest.to_bytes();
        bad[3] ^= 0x40;
        assert_protocol(
            ClientSession::new(opts.clone())
                .feed(&tampered_end(20, bad))
                .unwrap_err(),
            "digest mismatch",
        );
        // Bounded: at capacity it starts again.
        let small = Arc::new(ChunkMemo::new(2));
        let mut s = ClientSession::new(ClientOptions {
            chunk_memo: Some(small.clone()),
            ..opts
        });
        s.feed(&good).unwrap();
        assert!(small.len() <= 2);
    }

    #[test]
    fn stamps_are_found_while_scanning() {
        let label = "typha-loadtest/stamp";
        assert_eq!(
            find_stamp(
                b"\"typha-loadtest/stamp\":\"",
                br#"{"labels":{"a":"b","typha-loadtest/stamp":"1700000000123456789"}}"#
            ),
            Some(1_700_000_000_123_456_789)
        );
        assert_eq!(find_stamp(b"\"x\":\"", br#"{"x":"12a"}"#), None);
        assert_eq!(find_stamp(b"\"x\":\"", br#"{"x":""}"#), None);
        assert_eq!(find_stamp(b"\"x\":\"", br#"{"x":"12"#), None);
        let key = "/calico/v1/host/n1/workload/k8s/ns%2fp/endpoint/eth0";
        let v = format!(r#"{{"labels":{{"{label}":"42"}}}}"#);
        let ups = [
            upd(key, Some(&v), "5"),
            upd("/calico/v1/other", Some(&v), "6"),
        ];
        let refs: Vec<&Update> = ups.iter().collect();
        let frame = encode_batch_part(11, 11, RECEIVED_AT, &refs, None, &EncodeOptions::default())
            .unwrap()
            .plain()
            .clone();
        for tracking in [Tracking::Full, Tracking::DigestOnly] {
            for scan in [false, true] {
                let (mut b, _) = prefix();
                b.extend_from_slice(&frame);
                let mut s = ClientSession::new(ClientOptions {
                    tracking,
                    ..Default::default()
                });
                s.record_frames(true);
                s.set_stamp_label(label, "/workload/");
                s.set_scan_stamps(scan);
                s.feed(&b).unwrap();
                let r = s.pop_frame_record().unwrap();
                assert_eq!(r.scanned, scan);
                assert_eq!(r.stamps, if scan { vec![42] } else { vec![] });
            }
        }
    }

    /// Hello + snapshot (seq 10) of the plain stream, and the snapshot's frames.
    fn prefix() -> (Vec<u8>, Vec<Bytes>) {
        let snap = encode_snapshot(
            &state_map(),
            10,
            SyncStatus::InSync,
            SyncerType::Felix,
            None,
            300,
        );
        let mut b = server_hello(None).to_vec();
        for f in &snap.frames {
            b.extend_from_slice(f);
        }
        (b, snap.frames)
    }

    fn updates_frame(first: u64, last: u64) -> Bytes {
        let u = batch2();
        let refs: Vec<&Update> = u.iter().collect();
        let opts = EncodeOptions {
            codec: None,
            ..Default::default()
        };
        encode_batch_part(first, last, RECEIVED_AT, &refs, None, &opts)
            .unwrap()
            .plain()
            .clone()
    }

    fn feed_err(bytes: &[u8]) -> ClientError {
        let mut s = ClientSession::new(ClientOptions::default());
        let e = s.feed(bytes).unwrap_err();
        // Errors are final.
        assert!(s.is_failed());
        assert!(s.feed(&proto::ping_frame(1, 0)).is_err());
        e
    }

    fn assert_protocol(e: ClientError, needle: &str) {
        assert!(
            matches!(&e, ClientError::Protocol(m) if m.contains(needle)),
            "want Protocol(..{needle}..), got {e:?}"
        );
    }

    #[test]
    fn in_order_updates_are_accepted() {
        let (mut b, _) = prefix();
        b.extend_from_slice(&updates_frame(11, 11));
        b.extend_from_slice(&updates_frame(12, 15));
        let mut s = ClientSession::new(ClientOptions::default());
        s.feed(&b).unwrap();
        assert_eq!(s.state().seq(), 15);
    }

    #[test]
    fn gap_is_an_error() {
        let (mut b, _) = prefix();
        b.extend_from_slice(&updates_frame(12, 12));
        assert_protocol(feed_err(&b), "gap");
    }

    #[test]
    fn duplicate_is_an_error() {
        let (mut b, _) = prefix();
        b.extend_from_slice(&updates_frame(11, 11));
        b.extend_from_slice(&updates_frame(11, 11));
        assert_protocol(feed_err(&b), "duplicate");
        let (mut b, _) = prefix();
        b.extend_from_slice(&updates_frame(10, 10));
        assert_protocol(feed_err(&b), "duplicate");
    }

    #[test]
    fn updates_before_snapshot_end_is_an_error() {
        let (_, frames) = prefix();
        let mut b = server_hello(None).to_vec();
        b.extend_from_slice(&frames[0]);
        b.extend_from_slice(&updates_frame(11, 11));
        assert_protocol(feed_err(&b), "before SnapshotEnd");
        let mut b = server_hello(None).to_vec();
        b.extend_from_slice(&proto::sync_status_frame(SyncStatus::InSync));
        assert_protocol(feed_err(&b), "before SnapshotEnd");
    }

    #[test]
    fn snapshot_before_server_hello_or_second_hello_is_an_error() {
        let (_, frames) = prefix();
        assert_protocol(feed_err(&frames[0]), "before ServerHello");
        let mut b = server_hello(None).to_vec();
        b.extend_from_slice(&server_hello(None));
        assert_protocol(feed_err(&b), "second ServerHello");
    }

    #[test]
    fn chunk_of_another_snapshot_is_an_error() {
        let mut b = server_hello(None).to_vec();
        let other = encode_snapshot(
            &state_map(),
            11,
            SyncStatus::InSync,
            SyncerType::Felix,
            None,
            300,
        );
        let (_, frames) = prefix();
        b.extend_from_slice(&frames[0]);
        b.extend_from_slice(&other.frames[1]);
        assert_protocol(feed_err(&b), "seq 11");
    }

    fn tampered_end(key_count: u64, digest: [u8; 16]) -> Vec<u8> {
        let (_, frames) = prefix();
        let mut b = server_hello(None).to_vec();
        for f in &frames[..frames.len() - 1] {
            b.extend_from_slice(f);
        }
        b.extend_from_slice(&proto::encode_frame(&ServerMessage::SnapshotEnd {
            seq: 10,
            status: SyncStatus::InSync,
            key_count,
            digest,
        }));
        b
    }

    #[test]
    fn digest_mismatch_is_an_error() {
        let snap = encode_snapshot(
            &state_map(),
            10,
            SyncStatus::InSync,
            SyncerType::Felix,
            None,
            300,
        );
        // The untampered end passes.
        let mut s = ClientSession::new(ClientOptions::default());
        s.feed(&tampered_end(20, snap.digest.to_bytes())).unwrap();
        let mut bad = snap.digest.to_bytes();
        bad[3] ^= 1;
        assert_protocol(feed_err(&tampered_end(20, bad)), "digest mismatch");
        assert_protocol(
            feed_err(&tampered_end(19, snap.digest.to_bytes())),
            "key count mismatch",
        );
        // SeqOnly skips the digest.
        let mut s = ClientSession::new(ClientOptions {
            tracking: Tracking::SeqOnly,
            ..Default::default()
        });
        s.feed(&tampered_end(20, bad)).unwrap();
        assert!(s.state().snapshot_complete());
    }

    #[test]
    fn oversized_frame_is_an_error() {
        // A header alone is refused as soon as it arrives.
        let mut s = ClientSession::new(ClientOptions {
            max_frame: 100,
            ..Default::default()
        });
        let e = s.feed(&101u32.to_le_bytes()).unwrap_err();
        assert!(
            matches!(
                e,
                ClientError::Proto(ProtoError::FrameTooLarge { len: 101, max: 100 })
            ),
            "{e:?}"
        );
        assert!(is_too_large(&e));
        // A real snapshot chunk above the limit.
        let (b, _) = prefix();
        let mut s = ClientSession::new(ClientOptions {
            max_frame: 200,
            ..Default::default()
        });
        let e = s.feed(&b).unwrap_err();
        assert!(is_too_large(&e), "{e:?}");
        // A compressed frame whose content expands beyond the limit.
        let big = proto::encode_frame(&ServerMessage::Goodbye {
            reason: GoodbyeReason::Shutdown,
            message: "a".repeat(10_000),
        });
        let z = proto::compress_frame(&big, Codec::Zstd).unwrap();
        assert!(z.len() < 1000);
        let mut s = ClientSession::new(ClientOptions {
            max_frame: 1000,
            ..Default::default()
        });
        let e = s.feed(&z).unwrap_err();
        assert!(is_too_large(&e), "{e:?}");
    }

    #[test]
    fn garbage_is_a_decode_error() {
        let mut f = vec![3, 0, 0, 0];
        f.extend_from_slice(&[0xff, 0xff, 0xff]);
        assert!(matches!(feed_err(&f), ClientError::Proto(_)));
    }

    #[test]
    fn frames_after_goodbye_are_an_error() {
        let mut b = proto::goodbye_frame(GoodbyeReason::TooSlow, "slow").to_vec();
        b.extend_from_slice(&proto::ping_frame(1, 0));
        let mut s = ClientSession::new(ClientOptions::default());
        assert_protocol(s.feed(&b).unwrap_err(), "after Goodbye");
        // The Goodbye itself was still delivered.
        assert_eq!(
            s.poll_event(),
            Some(ClientEvent::Goodbye {
                reason: GoodbyeReason::TooSlow,
                message: "slow".into()
            })
        );
        assert_eq!(s.goodbye(), Some((GoodbyeReason::TooSlow, "slow")));
    }

    #[test]
    fn partial_frame_is_reported_as_buffered() {
        let f = server_hello(None);
        let mut s = ClientSession::new(ClientOptions::default());
        s.feed(&f[..f.len() - 2]).unwrap();
        assert_eq!(s.buffered(), f.len() - 2);
        assert!(
            matches!(s.closed_error(), ClientError::Closed { buffered } if buffered == f.len() - 2)
        );
        assert!(s.poll_event().is_none());
        s.feed(&f[f.len() - 2..]).unwrap();
        assert_eq!(s.buffered(), 0);
        assert!(matches!(s.poll_event(), Some(ClientEvent::ServerHello(_))));
    }

    #[test]
    fn advance_output_consumes_partially() {
        let opts = ClientOptions::default();
        let mut s = ClientSession::new(opts.clone());
        let h = hello_frame(&opts);
        assert_eq!(s.pending_output(), &h[..]);
        s.advance_output(3);
        assert_eq!(s.pending_output(), &h[3..]);
        s.advance_output(usize::MAX);
        assert!(!s.has_output());
        s.queue_raw(b"junk");
        assert_eq!(s.take_output().unwrap(), &b"junk"[..]);
    }
}
