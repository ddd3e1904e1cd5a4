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

use bytes::{Buf, Bytes, BytesMut};
use clap::ValueEnum;
use std::collections::{HashMap, VecDeque};
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
}

impl FelixSession {
    /// A session whose hello (a current Felix's: decoder restart, snappy, modern policy keys)
    /// is already queued.
    pub fn new(hostname: &str, syncer_type: &str, conn_id: u64, full_map: bool) -> Self {
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
        }
    }

    fn feed(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.bytes += bytes.len() as u64;
        self.inner.feed(bytes);
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
                FelixClientEvent::ServerHello(_) | FelixClientEvent::DecoderRestart(_) => {
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
        let mut s = Session::Felix(Box::new(FelixSession::new("n1", "felix", 7, true)));
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
        let mut s = Session::Felix(Box::new(FelixSession::new("n2", "felix", 8, false)));
        s.feed(&stream()).unwrap();
        assert!(matches!(
            s.poll_event(),
            Some(SessionEvent::SnapshotComplete {
                key_count: 2,
                digest: None,
                ..
            })
        ));
        let mut bad = Session::Felix(Box::new(FelixSession::new("n3", "felix", 9, true)));
        let mut st = server_preamble().to_vec();
        st.extend_from_slice(&encode_sync_status(SYNC_STATUS_IN_SYNC));
        let e = bad.feed(&st).unwrap_err();
        assert!(e.to_string().contains("MsgServerHello"), "{e}");
    }
}
