//! The client's view of the synced data, and the ordering rules of protocol v1.

use super::ClientError;
use crate::model::{Digest, SyncStatus};
use crate::proto::{
    GoodbyeReason, ServerHello, ServerMessage, UpdatesIter, WireUpdate, PROTOCOL_VERSION,
};
use std::collections::hash_map::{Entry as MapEntry, HashMap};
use std::time::Duration;

/// One key's value as the client holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientEntry {
    pub value: Vec<u8>,
    pub revision: String,
}

/// How much a [`SyncState`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tracking {
    /// The whole map and its digest; the snapshot's key count and digest are verified.
    #[default]
    Full,
    /// No map: only the sequence rule, the message order and counters. The snapshot's digest
    /// is not checked; its key count is checked against the number of entries received.
    SeqOnly,
    /// No map, and no allocation per entry: the session decodes `SnapshotChunk` and `Updates`
    /// frames zero-copy, the snapshot's key count and digest are computed over the borrowed
    /// entries and verified, and each `Updates` frame's content is hashed
    /// ([`ClientSession::pop_frame_record`](super::ClientSession::pop_frame_record)) so that
    /// the stream can be compared with a full-map client's. [`SyncState::digest`] stays the
    /// snapshot's digest.
    DigestOnly,
}

/// What a decoded server message meant, as handed to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    ServerHello(ServerHello),
    /// The snapshot ended and verified: the map holds `key_count` keys with `digest`.
    SnapshotComplete {
        seq: u64,
        key_count: u64,
        digest: Digest,
        status: SyncStatus,
    },
    /// An `Updates` frame was applied. `lag` is the receive time minus `received_at` (zero if
    /// the clocks disagree the other way).
    Updates {
        first_seq: u64,
        last_seq: u64,
        count: usize,
        received_at: u64,
        lag: Duration,
    },
    Status(SyncStatus),
    Ping {
        id: u64,
    },
    Goodbye {
        reason: GoodbyeReason,
        message: String,
    },
    /// The key updates a snapshot chunk or an `Updates` frame carried, queued just before the
    /// frame's own event; only with [`ClientOptions::report_keys`](super::ClientOptions).
    /// `seq` is the snapshot's sequence number, or the `Updates` frame's `last_seq`.
    Keys {
        seq: u64,
        snapshot: bool,
        updates: Vec<WireUpdate>,
    },
}

/// The local copy of one syncer type's view, and where it stands in the stream.
///
/// After a `Goodbye` every further message is a [`ClientError::Protocol`] error: the server
/// must close the connection after it.
#[derive(Debug, Clone)]
pub struct SyncState {
    tracking: Tracking,
    map: HashMap<String, ClientEntry>,
    digest: Digest,
    seq: u64,
    status: Option<SyncStatus>,
    snapshot_complete: bool,
    /// Sequence number of the snapshot being received (from its first chunk or its end).
    snapshot_seq: Option<u64>,
    /// Entries with a value received in snapshot chunks.
    snapshot_entries: u64,
    server_hello: Option<ServerHello>,
    goodbye: Option<(GoodbyeReason, String)>,
    update_frames: u64,
    updates_received: u64,
}

impl Default for SyncState {
    fn default() -> Self {
        SyncState::new(Tracking::Full)
    }
}

fn kind(msg: &ServerMessage) -> &'static str {
    match msg {
        ServerMessage::ServerHello(_) => "ServerHello",
        ServerMessage::SyncStatus(_) => "SyncStatus",
        ServerMessage::SnapshotChunk { .. } => "SnapshotChunk",
        ServerMessage::SnapshotEnd { .. } => "SnapshotEnd",
        ServerMessage::Updates { .. } => "Updates",
        ServerMessage::Ping { .. } => "Ping",
        ServerMessage::Goodbye { .. } => "Goodbye",
        ServerMessage::Compressed { .. } => "Compressed",
    }
}

impl SyncState {
    pub fn new(tracking: Tracking) -> Self {
        SyncState {
            tracking,
            map: HashMap::new(),
            digest: Digest::default(),
            seq: 0,
            status: None,
            snapshot_complete: false,
            snapshot_seq: None,
            snapshot_entries: 0,
            server_hello: None,
            goodbye: None,
            update_frames: 0,
            updates_received: 0,
        }
    }

    /// Applies one decoded message received at `now_unix_nanos`. Returns the event it produced
    /// (snapshot chunks produce none), or the protocol violation it is. After an error the state
    /// is unspecified and the connection should be dropped.
    pub fn apply(
        &mut self,
        msg: ServerMessage,
        now_unix_nanos: u64,
    ) -> Result<Option<ClientEvent>, ClientError> {
        if let Some((reason, _)) = &self.goodbye {
            return Err(ClientError::protocol(format!(
                "{} after Goodbye({})",
                kind(&msg),
                reason.as_str()
            )));
        }
        match msg {
            ServerMessage::ServerHello(h) => {
                if self.server_hello.is_some() {
                    return Err(ClientError::protocol("second ServerHello"));
                }
                if h.protocol_version.major != PROTOCOL_VERSION.major {
                    return Err(ClientError::protocol(format!(
                        "server speaks protocol {}, this client {}",
                        h.protocol_version, PROTOCOL_VERSION
                    )));
                }
                self.server_hello = Some(h.clone());
                Ok(Some(ClientEvent::ServerHello(h)))
            }
            ServerMessage::SnapshotChunk { seq, updates } => {
                self.check_chunk(seq)?;
                self.snapshot_entries +=
                    updates.iter().filter(|u| u.value.is_some()).count() as u64;
                self.apply_updates(updates);
                Ok(None)
            }
            ServerMessage::SnapshotEnd {
                seq,
                status,
                key_count,
                digest,
            } => {
                self.require_hello("SnapshotEnd")?;
                if self.snapshot_complete {
                    return Err(ClientError::protocol("second SnapshotEnd"));
                }
                if let Some(s) = self.snapshot_seq {
                    if s != seq {
                        return Err(ClientError::protocol(format!(
                            "SnapshotEnd with seq {seq} closes a snapshot at seq {s}"
                        )));
                    }
                }
                let digest = Digest::from_bytes(digest);
                match self.tracking {
                    Tracking::DigestOnly => {
                        if self.snapshot_entries != key_count {
                            return Err(ClientError::protocol(format!(
                                "snapshot key count mismatch: server says {key_count}, received {}",
                                self.snapshot_entries
                            )));
                        }
                        if self.digest != digest {
                            return Err(ClientError::protocol(format!(
                                "snapshot digest mismatch: server says {digest}, received {}",
                                self.digest
                            )));
                        }
                    }
                    Tracking::Full => {
                        if self.map.len() as u64 != key_count {
                            return Err(ClientError::protocol(format!(
                                "snapshot key count mismatch: server says {key_count}, received {}",
                                self.map.len()
                            )));
                        }
                        if self.digest != digest {
                            return Err(ClientError::protocol(format!(
                                "snapshot digest mismatch: server says {digest}, received {}",
                                self.digest
                            )));
                        }
                    }
                    Tracking::SeqOnly => {
                        if self.snapshot_entries != key_count {
                            return Err(ClientError::protocol(format!(
                                "snapshot key count mismatch: server says {key_count}, received {}",
                                self.snapshot_entries
                            )));
                        }
                    }
                }
                self.seq = seq;
                self.snapshot_seq = Some(seq);
                self.status = Some(status);
                self.snapshot_complete = true;
                tracing::debug!(seq, key_count, %digest, status = status.as_str(), "snapshot complete");
                Ok(Some(ClientEvent::SnapshotComplete {
                    seq,
                    key_count,
                    digest,
                    status,
                }))
            }
            ServerMessage::Updates {
                first_seq,
                last_seq,
                received_at,
                updates,
            } => {
                self.check_updates(first_seq, last_seq)?;
                self.seq = last_seq;
                let count = updates.len();
                self.update_frames += 1;
                self.updates_received += count as u64;
                self.apply_updates(updates);
                Ok(Some(ClientEvent::Updates {
                    first_seq,
                    last_seq,
                    count,
                    received_at,
                    lag: Duration::from_nanos(now_unix_nanos.saturating_sub(received_at)),
                }))
            }
            ServerMessage::SyncStatus(s) => {
                if !self.snapshot_complete {
                    return Err(ClientError::protocol(format!(
                        "SyncStatus({}) before SnapshotEnd",
                        s.as_str()
                    )));
                }
                self.status = Some(s);
                Ok(Some(ClientEvent::Status(s)))
            }
            ServerMessage::Ping { id, .. } => Ok(Some(ClientEvent::Ping { id })),
            ServerMessage::Goodbye { reason, message } => {
                tracing::debug!(reason = reason.as_str(), %message, "server said goodbye");
                self.goodbye = Some((reason, message.clone()));
                Ok(Some(ClientEvent::Goodbye { reason, message }))
            }
            ServerMessage::Compressed { codec, .. } => Err(ClientError::protocol(format!(
                "undecoded Compressed({codec:?}) frame: decode it with proto::decode_server_message"
            ))),
        }
    }

    fn check_chunk(&mut self, seq: u64) -> Result<(), ClientError> {
        self.require_hello("SnapshotChunk")?;
        if self.snapshot_complete {
            return Err(ClientError::protocol(format!(
                "SnapshotChunk (seq {seq}) after SnapshotEnd (seq {})",
                self.seq
            )));
        }
        match self.snapshot_seq {
            Some(s) if s != seq => {
                return Err(ClientError::protocol(format!(
                    "SnapshotChunk with seq {seq} in a snapshot at seq {s}"
                )))
            }
            _ => self.snapshot_seq = Some(seq),
        }
        Ok(())
    }

    fn check_updates(&self, first_seq: u64, last_seq: u64) -> Result<(), ClientError> {
        if !self.snapshot_complete {
            return Err(ClientError::protocol(format!(
                "Updates {first_seq}..={last_seq} before SnapshotEnd"
            )));
        }
        let next = self
            .seq
            .checked_add(1)
            .ok_or_else(|| ClientError::protocol(format!("Updates after seq {}", u64::MAX)))?;
        // Rule 9.6: the first frame after the snapshot may start at or before `seq + 1`, since
        // frames are shared and cover everything since that type's previous frame. Rule 9.5:
        // every later frame starts exactly at `seq + 1`, so a partial duplicate is an error too.
        let first_ok = if self.update_frames == 0 {
            first_seq <= next
        } else {
            first_seq == next
        };
        if !(first_ok && last_seq >= next && first_seq <= last_seq) {
            let what = if first_seq > last_seq {
                "inverted range"
            } else if first_seq > next {
                "gap"
            } else if last_seq < next {
                "duplicate"
            } else {
                "overlap"
            };
            return Err(ClientError::protocol(format!(
                "{what}: Updates {first_seq}..={last_seq} after seq {}",
                self.seq
            )));
        }
        Ok(())
    }

    fn check_not_after_goodbye(&self, what: &str) -> Result<(), ClientError> {
        if let Some((reason, _)) = &self.goodbye {
            return Err(ClientError::protocol(format!(
                "{what} after Goodbye({})",
                reason.as_str()
            )));
        }
        Ok(())
    }

    /// A `SnapshotChunk` decoded zero-copy ([`Tracking::DigestOnly`]): the sequence and order
    /// rules of [`apply`](Self::apply), and its entries counted and added to the digest without
    /// being kept. A deletion in a snapshot is a protocol error (a snapshot only holds values).
    /// Returns the chunk's own digest and entry count, for [`ChunkMemo`](super::ChunkMemo).
    pub fn apply_snapshot_chunk_ref(
        &mut self,
        seq: u64,
        mut updates: UpdatesIter<'_>,
    ) -> Result<(Digest, u64), ClientError> {
        self.check_not_after_goodbye("SnapshotChunk")?;
        self.check_chunk(seq)?;
        let mut part = Digest::default();
        let mut entries = 0u64;
        for u in updates.by_ref() {
            let u = u?;
            let Some(value) = u.value else {
                return Err(ClientError::protocol(format!(
                    "deletion of {:?} in a snapshot chunk",
                    u.key
                )));
            };
            part.add(u.key, value);
            entries += 1;
        }
        updates.finish()?;
        self.digest.0 = self.digest.0.wrapping_add(part.0);
        self.snapshot_entries += entries;
        Ok((part, entries))
    }

    /// A `SnapshotChunk` whose exact bytes an earlier session decoded ([`Tracking::DigestOnly`]
    /// with a [`ChunkMemo`](super::ChunkMemo)): the same rules as
    /// [`apply_snapshot_chunk_ref`](Self::apply_snapshot_chunk_ref), with the entries' digest
    /// and count taken from that decode.
    pub fn apply_snapshot_chunk_summary(
        &mut self,
        seq: u64,
        part: Digest,
        entries: u64,
    ) -> Result<(), ClientError> {
        self.check_not_after_goodbye("SnapshotChunk")?;
        self.check_chunk(seq)?;
        self.digest.0 = self.digest.0.wrapping_add(part.0);
        self.snapshot_entries += entries;
        Ok(())
    }

    /// An `Updates` frame decoded zero-copy ([`Tracking::DigestOnly`]): the sequence and order
    /// rules of [`apply`](Self::apply); `count` is its number of updates, already decoded by the
    /// caller.
    pub fn apply_updates_counted(
        &mut self,
        first_seq: u64,
        last_seq: u64,
        received_at: u64,
        count: usize,
        now_unix_nanos: u64,
    ) -> Result<ClientEvent, ClientError> {
        self.check_not_after_goodbye("Updates")?;
        self.check_updates(first_seq, last_seq)?;
        self.seq = last_seq;
        self.update_frames += 1;
        self.updates_received += count as u64;
        Ok(ClientEvent::Updates {
            first_seq,
            last_seq,
            count,
            received_at,
            lag: Duration::from_nanos(now_unix_nanos.saturating_sub(received_at)),
        })
    }

    fn require_hello(&self, what: &str) -> Result<(), ClientError> {
        if self.server_hello.is_none() {
            return Err(ClientError::protocol(format!("{what} before ServerHello")));
        }
        Ok(())
    }

    fn apply_updates(&mut self, updates: Vec<WireUpdate>) {
        if self.tracking != Tracking::Full {
            // DigestOnly reaches here only for an owned message handed to `apply` directly.
            return;
        }
        for u in updates {
            match u.value {
                Some(value) => match self.map.entry(u.key) {
                    MapEntry::Occupied(mut o) => {
                        self.digest.remove(o.key(), &o.get().value);
                        self.digest.add(o.key(), &value);
                        o.insert(ClientEntry {
                            value,
                            revision: u.revision,
                        });
                    }
                    MapEntry::Vacant(v) => {
                        self.digest.add(v.key(), &value);
                        v.insert(ClientEntry {
                            value,
                            revision: u.revision,
                        });
                    }
                },
                None => {
                    if let Some(old) = self.map.remove(&u.key) {
                        self.digest.remove(&u.key, &old.value);
                    }
                }
            }
        }
    }

    pub fn tracking(&self) -> Tracking {
        self.tracking
    }

    /// Digest of the local map (always the empty digest with [`Tracking::SeqOnly`]).
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// Keys in the local map (always 0 with [`Tracking::SeqOnly`]).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&ClientEntry> {
        self.map.get(key)
    }

    /// The local map, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &ClientEntry)> + '_ {
        self.map.iter()
    }

    pub fn map(&self) -> &HashMap<String, ClientEntry> {
        &self.map
    }

    /// The last sequence number received: the snapshot's, then each `Updates`' `last_seq`.
    /// 0 before the snapshot completes.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The datastore status, from the `SnapshotEnd` and later `SyncStatus` frames.
    pub fn status(&self) -> Option<SyncStatus> {
        self.status
    }

    pub fn snapshot_complete(&self) -> bool {
        self.snapshot_complete
    }

    /// The snapshot is complete and the datastore is in sync.
    pub fn is_in_sync(&self) -> bool {
        self.snapshot_complete && self.status == Some(SyncStatus::InSync)
    }

    pub fn server_hello(&self) -> Option<&ServerHello> {
        self.server_hello.as_ref()
    }

    pub fn goodbye(&self) -> Option<(GoodbyeReason, &str)> {
        self.goodbye.as_ref().map(|(r, m)| (*r, m.as_str()))
    }

    /// Entries with a value received in the snapshot (in any tracking mode).
    pub fn snapshot_entries(&self) -> u64 {
        self.snapshot_entries
    }

    /// `Updates` frames applied.
    pub fn update_frames(&self) -> u64 {
        self.update_frames
    }

    /// Key updates received in `Updates` frames (in any tracking mode).
    pub fn updates_received(&self) -> u64 {
        self.updates_received
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UpdateType;

    fn hello() -> ServerMessage {
        ServerMessage::ServerHello(ServerHello {
            protocol_version: PROTOCOL_VERSION,
            server_id: "s".into(),
            connection_id: 1,
            syncer_type: "felix".into(),
            compression: None,
        })
    }

    fn set(k: &str, v: &str) -> WireUpdate {
        WireUpdate {
            key: k.into(),
            value: Some(v.as_bytes().to_vec()),
            revision: "1".into(),
            update_type: UpdateType::New,
        }
    }

    fn del(k: &str) -> WireUpdate {
        WireUpdate {
            key: k.into(),
            value: None,
            revision: "2".into(),
            update_type: UpdateType::Deleted,
        }
    }

    fn end(seq: u64, key_count: u64, d: Digest) -> ServerMessage {
        ServerMessage::SnapshotEnd {
            seq,
            status: SyncStatus::InSync,
            key_count,
            digest: d.to_bytes(),
        }
    }

    fn updates(first: u64, last: u64, u: Vec<WireUpdate>) -> ServerMessage {
        ServerMessage::Updates {
            first_seq: first,
            last_seq: last,
            received_at: 100,
            updates: u,
        }
    }

    fn ready(tracking: Tracking) -> SyncState {
        let mut s = SyncState::new(tracking);
        s.apply(hello(), 0).unwrap();
        let mut d = Digest::default();
        d.add("/a", b"1");
        s.apply(
            ServerMessage::SnapshotChunk {
                seq: 5,
                updates: vec![set("/a", "1")],
            },
            0,
        )
        .unwrap();
        s.apply(end(5, 1, d), 0).unwrap();
        s
    }

    #[test]
    fn digest_tracks_sets_overwrites_and_deletes() {
        let mut s = ready(Tracking::Full);
        let ev = s
            .apply(
                updates(6, 7, vec![set("/b", "2"), set("/a", "3"), del("/nope")]),
                250,
            )
            .unwrap();
        assert_eq!(
            ev,
            Some(ClientEvent::Updates {
                first_seq: 6,
                last_seq: 7,
                count: 3,
                received_at: 100,
                lag: Duration::from_nanos(150),
            })
        );
        let mut d = Digest::default();
        d.add("/a", b"3");
        d.add("/b", b"2");
        assert_eq!(s.digest(), d);
        assert_eq!(s.len(), 2);
        assert_eq!(s.get("/a").unwrap().value, b"3");
        s.apply(updates(8, 8, vec![del("/a")]), 0).unwrap();
        let mut d = Digest::default();
        d.add("/b", b"2");
        assert_eq!(s.digest(), d);
        assert_eq!(s.seq(), 8);
        assert_eq!(s.updates_received(), 4);
        assert_eq!(s.update_frames(), 2);
    }

    #[test]
    fn overlapping_range_is_accepted_gap_and_duplicate_are_not() {
        let mut s = ready(Tracking::SeqOnly);
        // first_seq before seq+1 but reaching past it: accepted.
        s.apply(updates(3, 6, vec![]), 0).unwrap();
        assert_eq!(s.seq(), 6);
        let e = s.apply(updates(8, 9, vec![]), 0).unwrap_err();
        assert!(
            matches!(&e, ClientError::Protocol(m) if m.starts_with("gap")),
            "{e}"
        );
        let mut s = ready(Tracking::SeqOnly);
        let e = s.apply(updates(5, 5, vec![]), 0).unwrap_err();
        assert!(
            matches!(&e, ClientError::Protocol(m) if m.starts_with("duplicate")),
            "{e}"
        );
        let mut s = ready(Tracking::SeqOnly);
        let e = s.apply(updates(7, 6, vec![]), 0).unwrap_err();
        assert!(matches!(&e, ClientError::Protocol(_)), "{e}");
    }

    /// Rule 9.5: after the first frame, each one starts exactly one past the previous.
    #[test]
    fn after_the_first_frame_only_the_next_seq_may_start_a_frame() {
        for tracking in [Tracking::Full, Tracking::SeqOnly] {
            let mut s = ready(tracking);
            s.apply(updates(3, 6, vec![]), 0).unwrap();
            // A partial duplicate: it reaches past seq 6 but repeats 6.
            let e = s.apply(updates(6, 8, vec![]), 0).unwrap_err();
            assert!(
                matches!(&e, ClientError::Protocol(m) if m.starts_with("overlap")),
                "{e}"
            );
            let mut s = ready(tracking);
            s.apply(updates(6, 6, vec![]), 0).unwrap();
            // The same through the zero-copy path.
            let e = s.apply_updates_counted(5, 7, 0, 0, 0).unwrap_err();
            assert!(
                matches!(&e, ClientError::Protocol(m) if m.starts_with("overlap")),
                "{e}"
            );
            let e = s.apply(updates(8, 8, vec![]), 0).unwrap_err();
            assert!(
                matches!(&e, ClientError::Protocol(m) if m.starts_with("gap")),
                "{e}"
            );
            s.apply(updates(7, 9, vec![]), 0).unwrap();
            assert_eq!(s.seq(), 9);
        }
    }

    #[test]
    fn ordering_errors() {
        let mut s = SyncState::default();
        assert!(s.apply(end(1, 0, Digest::default()), 0).is_err());
        let mut s = SyncState::default();
        s.apply(hello(), 0).unwrap();
        assert!(s.apply(hello(), 0).is_err());
        let mut s = SyncState::default();
        s.apply(hello(), 0).unwrap();
        assert!(s
            .apply(ServerMessage::SyncStatus(SyncStatus::InSync), 0)
            .is_err());
        let mut s = SyncState::default();
        s.apply(hello(), 0).unwrap();
        s.apply(
            ServerMessage::SnapshotChunk {
                seq: 3,
                updates: vec![],
            },
            0,
        )
        .unwrap();
        assert!(s.apply(end(4, 0, Digest::default()), 0).is_err());
        let mut s = ready(Tracking::Full);
        assert!(s
            .apply(
                ServerMessage::SnapshotChunk {
                    seq: 5,
                    updates: vec![]
                },
                0
            )
            .is_err());
        let mut s = ready(Tracking::Full);
        assert!(s.apply(end(5, 1, s.digest()), 0).is_err());
    }

    #[test]
    fn seq_only_keeps_no_map_but_checks_key_count() {
        let s = ready(Tracking::SeqOnly);
        assert_eq!(s.len(), 0);
        assert_eq!(s.digest(), Digest::default());
        assert_eq!(s.snapshot_entries(), 1);
        let mut s = SyncState::new(Tracking::SeqOnly);
        s.apply(hello(), 0).unwrap();
        // Digest is not checked in SeqOnly mode, the key count is.
        assert!(s.apply(end(1, 0, Digest(42)), 0).is_ok());
        let mut s = SyncState::new(Tracking::SeqOnly);
        s.apply(hello(), 0).unwrap();
        assert!(s.apply(end(1, 2, Digest::default()), 0).is_err());
    }

    #[test]
    fn anything_after_goodbye_is_an_error() {
        let mut s = ready(Tracking::Full);
        let ev = s
            .apply(
                ServerMessage::Goodbye {
                    reason: GoodbyeReason::Shutdown,
                    message: "bye".into(),
                },
                0,
            )
            .unwrap();
        assert!(matches!(ev, Some(ClientEvent::Goodbye { .. })));
        assert_eq!(s.goodbye(), Some((GoodbyeReason::Shutdown, "bye")));
        assert!(s
            .apply(ServerMessage::Ping { id: 1, sent_at: 0 }, 0)
            .is_err());
    }
}
