//! The one seam between the client driver and a wire protocol. Each simulated client owns a
//! [`Session`]: bytes read from its socket go in ([`Session::feed`]), what the driver records
//! comes out ([`Session::poll_event`]), and bytes to write wait in [`Session::pending_output`].
//! The driver's loop, roles, kills, TLS and counters know neither protocol.
//!
//! - [`Protocol::Native`]: typha-rs' own protocol, through the library's `ClientSession`
//!   (sequence numbers, snapshot digests, frame records for cross-client comparison).
//! - [`Protocol::Typha`]: the protocol Calico's Felix speaks (gob envelopes, snappy framing,
//!   decoder restarts), through the library's `FelixClientSession`. It carries no sequence
//!   numbers and no digest, so a Felix-protocol client is in sync when `MsgSyncStatus` says
//!   InSync, and a full-map client is verified by matching the digests of its map after its
//!   last messages against the daemon's `/digest` history (see `run::verify_felix`).

use crate::felix_memo::{Follow, SnapshotFollower, SnapshotMemo, SEND_BINARY_SNAPSHOT};
use bytes::{Buf, Bytes, BytesMut};
use clap::ValueEnum;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use typha::client::{ClientError, ClientEvent, ClientSession, FrameRecord};
use typha::model::{Digest, SyncStatus};
use typha::proto::typha::{
    FelixClientConfig, FelixClientEvent, FelixClientSession, SerializedUpdate, SYNC_STATUS_IN_SYNC,
    UPDATE_TYPE_DELETED,
};

/// The wire protocol a run's clients speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// typha-rs' own length-prefixed frames.
    Native,
    /// Typha's protocol, as Calico's Felix speaks it.
    Typha,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Native => "native",
            Protocol::Typha => "typha",
        }
    }
}

/// What the driver records of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// The snapshot is complete. `seq` is its sequence number (native only), `digest` the map's
    /// digest as the session checked it (native clients, and full-map Felix clients).
    SnapshotComplete {
        seq: Option<u64>,
        key_count: u64,
        digest: Option<Digest>,
        in_sync: bool,
    },
    /// The server says the client is in sync again.
    InSync,
    /// Updates delivered in one message; `lag` when the protocol stamps them (native).
    Updates {
        count: usize,
        lag: Option<Duration>,
    },
    Ping,
}

/// One client's protocol state, without the socket.
pub enum Session {
    Native(Box<ClientSession>),
    Felix(Box<FelixSession>),
}

impl Session {
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        match self {
            Session::Native(s) => s.feed(bytes),
            Session::Felix(s) => s.feed(bytes),
        }
    }

    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        match self {
            Session::Native(s) => loop {
                let ev = match s.poll_event()? {
                    ClientEvent::SnapshotComplete {
                        status,
                        seq,
                        key_count,
                        digest,
                    } => SessionEvent::SnapshotComplete {
                        seq: Some(seq),
                        key_count,
                        digest: Some(digest),
                        in_sync: status == SyncStatus::InSync,
                    },
                    ClientEvent::Status(SyncStatus::InSync) => SessionEvent::InSync,
                    ClientEvent::Updates { count, lag, .. } => SessionEvent::Updates {
                        count,
                        lag: Some(lag),
                    },
                    ClientEvent::Ping { .. } => SessionEvent::Ping,
                    _ => continue,
                };
                return Some(ev);
            },
            Session::Felix(s) => s.events.pop_front(),
        }
    }

    /// The next `Updates` frame record (native only: Felix messages carry no sequence numbers
    /// to key a comparison by).
    pub fn pop_frame_record(&mut self) -> Option<FrameRecord> {
        match self {
            Session::Native(s) => s.pop_frame_record(),
            Session::Felix(_) => None,
        }
    }

    /// Whether write stamps are scanned (native only).
    pub fn set_scan_stamps(&mut self, on: bool) {
        if let Session::Native(s) = self {
            s.set_scan_stamps(on);
        }
    }

    pub fn has_output(&self) -> bool {
        match self {
            Session::Native(s) => s.has_output(),
            Session::Felix(s) => !s.out.is_empty(),
        }
    }

    pub fn pending_output(&self) -> &[u8] {
        match self {
            Session::Native(s) => s.pending_output(),
            Session::Felix(s) => &s.out,
        }
    }

    pub fn advance_output(&mut self, n: usize) {
        match self {
            Session::Native(s) => s.advance_output(n),
            Session::Felix(s) => s.out.advance(n.min(s.out.len())),
        }
    }

    /// The reason of the server's goodbye, if it said one (native only: Typha's protocol has
    /// none, the server just closes).
    pub fn goodbye_reason(&self) -> Option<&'static str> {
        match self {
            Session::Native(s) => s.goodbye().map(|(r, _)| r.as_str()),
            Session::Felix(_) => None,
        }
    }

    /// Why the server's close ended the session, as a drop reason.
    pub fn closed_reason(&self) -> String {
        match self {
            Session::Native(s) => match s.goodbye() {
                Some((r, _)) => format!("goodbye: {}", r.as_str()),
                None if s.buffered() > 0 => "closed by server mid-frame".into(),
                None => "closed by server".into(),
            },
            Session::Felix(_) => "closed by server".into(),
        }
    }

    /// The sequence number reached (0 for Felix sessions: the protocol has none).
    pub fn seq(&self) -> u64 {
        match self {
            Session::Native(s) => s.state().seq(),
            Session::Felix(_) => 0,
        }
    }

    pub fn snapshot_complete(&self) -> bool {
        match self {
            Session::Native(s) => s.state().snapshot_complete(),
            Session::Felix(s) => s.in_sync,
        }
    }

    pub fn key_count(&self) -> u64 {
        match self {
            Session::Native(s) => s.state().len() as u64,
            Session::Felix(s) => s.keys,
        }
    }

    pub fn digest(&self) -> Digest {
        match self {
            Session::Native(s) => s.state().digest(),
            Session::Felix(s) => s.digest,
        }
    }

    pub fn bytes_received(&self) -> u64 {
        match self {
            Session::Native(s) => s.bytes_received(),
            Session::Felix(s) => s.bytes,
        }
    }

    pub fn frames_received(&self) -> u64 {
        match self {
            Session::Native(s) => s.frames_received(),
            Session::Felix(s) => s.messages,
        }
    }

    /// A full-map Felix client's `(keys, digest)` after each of its last messages, oldest
    /// first; empty otherwise.
    pub fn recent_digests(&self) -> Vec<(u64, Digest)> {
        match self {
            Session::Felix(s) => s.recent.iter().copied().collect(),
            Session::Native(_) => Vec::new(),
        }
    }
}

/// `(keys, digest)` points a full-map Felix client remembers: a delta batch may span several
/// `MsgKVs`, so the map at the end of the run may sit inside one; one of the last points sits
/// at a batch boundary, which the daemon's `/digest` history records.
pub const FELIX_RECENT_DIGESTS: usize = 64;

/// A Felix-protocol client: the library's `FelixClientSession` (handshake, decoder restarts,
/// ACKs, pongs) plus the map a Felix keeps, or only counts for a client that keeps none.
pub struct FelixSession {
    inner: FelixClientSession,
    out: BytesMut,
    /// Key → value (full-map clients only).
    map: Option<HashMap<String, Bytes>>,
    digest: Digest,
    keys: u64,
    in_sync: bool,
    events: VecDeque<SessionEvent>,
    messages: u64,
    bytes: u64,
    recent: VecDeque<(u64, Digest)>,
    /// Digest-only clients: the thread's shared decodes of binary snapshots.
    memo: Option<Arc<SnapshotMemo>>,
    /// In the binary snapshot window, following a shared decode.
    follower: Option<SnapshotFollower>,
    /// The binary snapshot came from a shared decode of byte-identical bytes.
    snapshot_shared: bool,
}

impl FelixSession {
    /// A session whose hello (a current Felix's: decoder restart, snappy, modern policy keys)
    /// is already queued. A client without a map given a `memo` shares the decode of a binary
    /// snapshot with the thread's other clients that receive the same bytes (see
    /// [`crate::felix_memo`]); a full-map client always decodes its own.
    pub fn new(
        hostname: &str,
        syncer_type: &str,
        conn_id: u64,
        full_map: bool,
        memo: Option<Arc<SnapshotMemo>>,
    ) -> Self {
        let mut inner =
            FelixClientSession::new(FelixClientConfig::felix(hostname, syncer_type, conn_id));
        let mut out = BytesMut::new();
        out.extend_from_slice(&inner.take_outbound());
        FelixSession {
            inner,
            out,
            map: full_map.then(HashMap::new),
            digest: Digest::default(),
            keys: 0,
            in_sync: false,
            events: VecDeque::new(),
            messages: 0,
            bytes: 0,
            recent: VecDeque::new(),
            memo: if full_map { None } else { memo },
            follower: None,
            snapshot_shared: false,
        }
    }

    /// Whether the binary snapshot was taken from a shared decode (tests).
    pub fn snapshot_shared(&self) -> bool {
        self.snapshot_shared
    }

    fn feed(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.bytes += bytes.len() as u64;
        let mut bytes = bytes;
        if let Some(f) = self.follower.as_mut() {
            match f.feed(bytes) {
                Follow::More => return Ok(()),
                Follow::Done { used, summary } => {
                    self.follower = None;
                    self.snapshot_shared = true;
                    self.messages += summary.messages;
                    self.keys += summary.keys;
                    self.inner.apply_decoder_restart(&summary.restart);
                    bytes = &bytes[used..];
                }
                Follow::Alone { replay, used } => {
                    self.follower = None;
                    self.inner.feed(&replay);
                    bytes = &bytes[used..];
                }
            }
        }
        self.inner.feed(bytes);
        self.drain()
    }

    fn drain(&mut self) -> Result<(), ClientError> {
        loop {
            let ev = self
                .inner
                .poll_event()
                .map_err(|e| ClientError::Protocol(format!("Felix protocol: {e}")))?;
            let Some(ev) = ev else { break };
            match ev {
                FelixClientEvent::Kvs(kvs) => {
                    self.messages += 1;
                    let count = kvs.len();
                    self.apply(kvs)?;
                    if self.in_sync {
                        self.events
                            .push_back(SessionEvent::Updates { count, lag: None });
                    }
                }
                FelixClientEvent::SyncStatus(s) => {
                    self.messages += 1;
                    if s == SYNC_STATUS_IN_SYNC {
                        if self.in_sync {
                            self.events.push_back(SessionEvent::InSync);
                        } else {
                            self.in_sync = true;
                            self.events.push_back(SessionEvent::SnapshotComplete {
                                seq: None,
                                key_count: self.keys,
                                digest: self.map.is_some().then_some(self.digest),
                                in_sync: true,
                            });
                        }
                    }
                }
                FelixClientEvent::Ping(_) => {
                    self.messages += 1;
                    self.events.push_back(SessionEvent::Ping);
                }
                FelixClientEvent::DecoderRestart(r) => {
                    self.messages += 1;
                    // The server writes nothing after this restart before the ACK queued just
                    // now, so an empty decoder means the next bytes are the snapshot stream.
                    if let Some(memo) = &self.memo {
                        if !self.in_sync
                            && !self.snapshot_shared
                            && r.message.contains(SEND_BINARY_SNAPSHOT)
                            && self.inner.buffered() == 0
                        {
                            self.follower = Some(SnapshotFollower::new(
                                memo.clone(),
                                self.inner.compression(),
                            ));
                        }
                    }
                }
                FelixClientEvent::ServerHello(_) => {
                    self.messages += 1;
                }
            }
        }
        if self.inner.has_outbound() {
            self.out.extend_from_slice(&self.inner.take_outbound());
        }
        Ok(())
    }

    /// Applies one `MsgKVs` as Felix does: a nil value or a Deleted update removes the key.
    fn apply(&mut self, kvs: Vec<SerializedUpdate>) -> Result<(), ClientError> {
        let Some(map) = self.map.as_mut() else {
            // A client that keeps no map counts the snapshot's entries (one per key).
            if !self.in_sync {
                self.keys += kvs.iter().filter(|u| u.value.is_some()).count() as u64;
            }
            return Ok(());
        };
        for u in kvs {
            if u.value.is_some() && u.update_type == UPDATE_TYPE_DELETED {
                return Err(ClientError::Protocol(format!(
                    "Felix protocol: update of {:?} is a deletion with a value",
                    u.key
                )));
            }
            match u.value {
                Some(v) => {
                    self.digest.add(&u.key, &v);
                    if let Some(old) = map.insert(u.key.clone(), v) {
                        self.digest.remove(&u.key, &old);
                    }
                }
                None => {
                    if let Some(old) = map.remove(&u.key) {
                        self.digest.remove(&u.key, &old);
                    }
                }
            }
        }
        self.keys = map.len() as u64;
        if self.recent.len() == FELIX_RECENT_DIGESTS {
            self.recent.pop_front();
        }
        self.recent.push_back((self.keys, self.digest));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use typha::proto::typha::{
        decode_all_client_messages, encode_kvs, encode_ping, encode_server_hello,
        encode_sync_status, server_preamble, ClientMessage, GoTime, ServerHello,
        SYNC_STATUS_RESYNC_IN_PROGRESS, UPDATE_TYPE_NEW, UPDATE_TYPE_UPDATED,
    };

    fn kv(key: &str, value: Option<&str>, update_type: u8) -> SerializedUpdate {
        SerializedUpdate {
            key: key.into(),
            value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
            update_type,
            ..Default::default()
        }
    }

    fn stream() -> Vec<u8> {
        let mut s = server_preamble().to_vec();
        s.extend_from_slice(&encode_server_hello(&ServerHello {
            version: "test".into(),
            syncer_type: "felix".into(),
            supports_node_resource_updates: true,
            server_conn_id: 1,
        }));
        s.extend_from_slice(&encode_sync_status(SYNC_STATUS_RESYNC_IN_PROGRESS));
        s.extend_from_slice(&encode_kvs(&[
            kv("/a", Some("1"), UPDATE_TYPE_NEW),
            kv("/b", Some("2"), UPDATE_TYPE_NEW),
        ]));
        s.extend_from_slice(&encode_sync_status(SYNC_STATUS_IN_SYNC));
        s.extend_from_slice(&encode_kvs(&[
            kv("/a", Some("3"), UPDATE_TYPE_UPDATED),
            kv("/b", None, UPDATE_TYPE_DELETED),
        ]));
        s.extend_from_slice(&encode_ping(GoTime::from_unix_nanos(1_000)));
        s
    }

    #[test]
    fn a_felix_session_reaches_in_sync_keeps_its_map_and_answers() {
        let mut s = Session::Felix(Box::new(FelixSession::new("n1", "felix", 7, true, None)));
        let hello = s.pending_output().to_vec();
        match decode_all_client_messages(&hello).unwrap().as_slice() {
            [ClientMessage::Hello(h)] => {
                assert_eq!((h.hostname.as_str(), h.client_conn_id), ("n1", 7))
            }
            other => panic!("{other:?}"),
        }
        s.advance_output(hello.len());
        assert!(!s.has_output());
        // Byte by byte: the decoder is incremental.
        for b in stream() {
            s.feed(&[b]).unwrap();
        }
        let events: Vec<SessionEvent> = std::iter::from_fn(|| s.poll_event()).collect();
        let mut want = Digest::default();
        want.add("/a", b"1");
        want.add("/b", b"2");
        assert_eq!(
            events,
            [
                SessionEvent::SnapshotComplete {
                    seq: None,
                    key_count: 2,
                    digest: Some(want),
                    in_sync: true
                },
                SessionEvent::Updates {
                    count: 2,
                    lag: None
                },
                SessionEvent::Ping,
            ]
        );
        let mut end = Digest::default();
        end.add("/a", b"3");
        assert_eq!((s.key_count(), s.digest()), (1, end));
        assert_eq!(s.recent_digests().last(), Some(&(1, end)));
        assert!(s.snapshot_complete());
        // The pong went out, on the stream the hello began (its type definitions came first).
        let mut client_stream = hello.clone();
        client_stream.extend_from_slice(s.pending_output());
        let sent = decode_all_client_messages(&client_stream).unwrap();
        assert!(
            matches!(
                sent.as_slice(),
                [ClientMessage::Hello(_), ClientMessage::Pong(_)]
            ),
            "{sent:?}"
        );
    }

    #[test]
    fn a_client_without_a_map_counts_and_a_bad_stream_is_an_error() {
        let mut s = Session::Felix(Box::new(FelixSession::new("n2", "felix", 8, false, None)));
        s.feed(&stream()).unwrap();
        assert!(matches!(
            s.poll_event(),
            Some(SessionEvent::SnapshotComplete {
                key_count: 2,
                digest: None,
                ..
            })
        ));
        let mut bad = Session::Felix(Box::new(FelixSession::new("n3", "felix", 9, true, None)));
        let mut st = server_preamble().to_vec();
        st.extend_from_slice(&encode_sync_status(SYNC_STATUS_IN_SYNC));
        let e = bad.feed(&st).unwrap_err();
        assert!(e.to_string().contains("MsgServerHello"), "{e}");
    }

    /// The bytes a current Felix receives on path A, in the three parts the server writes
    /// apart: up to the first restart, the binary snapshot of `keys` keys, the live stream.
    fn path_a(keys: usize) -> [Vec<u8>; 3] {
        use typha::proto::typha::{encode_decoder_restart, snappy, DecoderRestart};
        let mut head = server_preamble().to_vec();
        head.extend_from_slice(&encode_server_hello(&ServerHello {
            version: "test".into(),
            syncer_type: "felix".into(),
            supports_node_resource_updates: true,
            server_conn_id: 1,
        }));
        head.extend_from_slice(&encode_decoder_restart(&DecoderRestart {
            message: "enable compression: snappy;send binary snapshot".into(),
            compression: "snappy".into(),
        }));
        let updates: Vec<SerializedUpdate> = (0..keys)
            .map(|i| SerializedUpdate {
                key: format!("/calico/v1/host/node-{i:05}/config/k"),
                value: Some(Bytes::from(format!(
                    "{{\"v\":{},\"pad\":\"{}\"}}",
                    i * 7919,
                    "x".repeat(i % 97)
                ))),
                update_type: UPDATE_TYPE_NEW,
                ..Default::default()
            })
            .collect();
        let mut gob = server_preamble().to_vec();
        for part in updates.chunks(1000) {
            gob.extend_from_slice(&encode_kvs(part));
        }
        gob.extend_from_slice(&encode_decoder_restart(&DecoderRestart {
            message: "End of compressed snapshot.".into(),
            compression: "snappy".into(),
        }));
        let snapshot = snappy::frame_stream(&gob).to_vec();
        let mut live_gob = server_preamble().to_vec();
        live_gob.extend_from_slice(&encode_sync_status(SYNC_STATUS_IN_SYNC));
        live_gob.extend_from_slice(&encode_kvs(&[kv("/b", Some("2"), UPDATE_TYPE_NEW)]));
        let live = snappy::frame_stream(&live_gob).to_vec();
        [head, snapshot, live]
    }

    /// Everything observable of a session: events, what it sent, its counters.
    type Observed = (Vec<SessionEvent>, Vec<u8>, u64, u64, u64);

    fn run(memo: Option<&Arc<SnapshotMemo>>, parts: &[&[u8]], piece: usize) -> (Observed, bool) {
        let mut f = FelixSession::new("n", "felix", 1, false, memo.cloned());
        let mut err = None;
        for part in parts {
            for p in part.chunks(piece) {
                if let Err(e) = f.feed(p) {
                    err.get_or_insert(e.to_string());
                }
            }
        }
        let shared = f.snapshot_shared();
        let mut s = Session::Felix(Box::new(f));
        let mut events: Vec<SessionEvent> = std::iter::from_fn(|| s.poll_event()).collect();
        if let Some(e) = err {
            events.clear();
            return ((events, e.into_bytes(), 0, 0, 0), shared);
        }
        let out = s.pending_output().to_vec();
        (
            (
                events,
                out,
                s.key_count(),
                s.frames_received(),
                s.bytes_received(),
            ),
            shared,
        )
    }

    /// The byte offset of the `n`th chunk's data after the stream identifier.
    fn chunk_data_offset(stream: &[u8], n: usize) -> usize {
        let mut at = 10;
        for _ in 0..n {
            let len = u32::from_le_bytes([stream[at + 1], stream[at + 2], stream[at + 3], 0]);
            at += 4 + len as usize;
        }
        at + 4 + 8
    }

    #[test]
    fn felix_clients_take_a_shared_snapshot_decode_only_for_identical_bytes() {
        let [head, snap, live] = path_a(3000);
        let [_, snap_more, _] = path_a(3001);
        assert!(chunk_data_offset(&snap, 3) < snap.len(), "several chunks");
        let memo = Arc::new(SnapshotMemo::new());
        let alone = |s: &[u8]| run(None, &[&head, s, &live], 1500).0;
        let shared = |s: &[u8], piece| run(Some(&memo), &[&head, s, &live], piece);

        // The first client decodes (through the recording) and behaves as one without memo.
        let (a, a_shared) = shared(&snap, 1500);
        assert!(a_shared);
        assert_eq!(a, alone(&snap));
        assert_eq!(a.2, 3000);
        assert!(matches!(
            a.0[0],
            SessionEvent::SnapshotComplete {
                key_count: 3000,
                ..
            }
        ));
        assert_eq!(memo.decoded_bytes(), snap.len() as u64);
        // The same bytes, split otherwise: nothing more is decoded, the same is observed.
        let (b, b_shared) = shared(&snap, 777);
        assert!(b_shared);
        assert_eq!(b, a);
        assert_eq!(memo.decoded_bytes(), snap.len() as u64);
        assert_eq!(memo.len(), 1);

        // A snapshot that differs in its last chunk: its bytes are decoded, so it has its key.
        let (c, _) = shared(&snap_more, 1500);
        assert_eq!(c, alone(&snap_more));
        assert_eq!(c.2, 3001);
        assert!(memo.decoded_bytes() >= (snap.len() + snap_more.len()) as u64 - 1_000);
        assert_eq!(memo.len(), 2);

        // One corrupted byte in the third chunk: not served from the memo, the client finds the
        // checksum error itself, exactly as without the memo.
        let mut bad = snap.clone();
        let at = chunk_data_offset(&bad, 2) + 100;
        bad[at] ^= 0x20;
        let (d, d_shared) = shared(&bad, 1500);
        assert!(!d_shared);
        let d_alone = alone(&bad);
        assert!(
            String::from_utf8_lossy(&d_alone.1).contains("Felix protocol"),
            "{d_alone:?}"
        );
        assert_eq!(d, d_alone);
        // The good snapshot is still served whole.
        let before = memo.decoded_bytes();
        assert_eq!(shared(&snap, 4096).0, a);
        assert_eq!(memo.decoded_bytes(), before);
    }

    #[test]
    fn clients_reading_one_snapshot_at_once_extend_one_recording() {
        let [head, snap, live] = path_a(2500);
        let memo = Arc::new(SnapshotMemo::new());
        let mut a = FelixSession::new("a", "felix", 1, false, Some(memo.clone()));
        let mut b = FelixSession::new("b", "felix", 2, false, Some(memo.clone()));
        let mut full = FelixSession::new("f", "felix", 3, true, Some(memo.clone()));
        let (first, second) = snap.split_at(snap.len() / 3);
        for s in [&mut a, &mut b, &mut full] {
            s.feed(&head).unwrap();
        }
        a.feed(first).unwrap();
        b.feed(first).unwrap();
        b.feed(second).unwrap(); // b extends the recording past a
        b.feed(&live).unwrap();
        a.feed(second).unwrap();
        a.feed(&live).unwrap();
        full.feed(&snap).unwrap();
        full.feed(&live).unwrap();
        assert_eq!(memo.len(), 1);
        assert_eq!(memo.decoded_bytes(), snap.len() as u64);
        assert!(a.snapshot_shared() && b.snapshot_shared());
        // A full-map client keeps its own decode.
        assert!(!full.snapshot_shared());
        assert_eq!((a.keys, b.keys, full.keys), (2500, 2500, 2501));
        assert!(a.in_sync && b.in_sync && full.in_sync);
    }
}
