//! The batcher: canonical map, no-op filter, sequence numbers, and encoding once per type.
//!
//! Updates are applied to the canonical map as they arrive; one that changes nothing is dropped
//! and counted. The rest collect in a pending batch (one slot per key: a later update to a key
//! replaces the earlier one, so the pending batch is bounded by the number of keys whatever the
//! datastore does). The batch closes at a size or an age limit, or when the sync status
//! changes, and is encoded once per syncer type into an immutable [`DeltaBatch`].
//!
//! Backpressure. If the reactor's channel is full the batch stays open and keeps merging, without
//! being encoded (the channel is asked for room first, so a batch is encoded once, when it can be
//! sent). Merging is bounded by bytes: a batch takes a driver event only if the event fits under
//! [`BatchLimits::max_bytes`]; otherwise the event is *held* and the batch must close first.
//! While anything is held the datastore thread reads no further driver events
//! ([`Batcher::accepting`]), so a stalled reactor stalls the driver instead of growing memory.
//! An event is split only when it alone exceeds the limit (a list chunk of many objects, in
//! practice): then it fills successive batches at key boundaries. The limit stays below
//! [`MAX_SERVER_FRAME`], counted with [`update_entry_bound`], so no `Updates` frame a batch
//! encodes is one that clients refuse. A single key whose entry alone would exceed
//! `MAX_SERVER_FRAME` (impossible from Kubernetes, whose objects are limited to about 1.5 MiB) is
//! refused outright: logged, counted in `typha_updates_refused_oversized_total`, and the key keeps
//! its previous value; sending it would fail every client of its syncer type.

use super::{BatchMessage, DeltaBatch, LegacyKeyDemand};
use crate::metrics::{key_kind, Metrics};
use crate::model::{
    now_unix_nanos, Entry, Key, KvUpdate, StateMap, SyncStatus, SyncerType, SyncerTypeSet, Update,
    UpdateType,
};
use crate::proto::encode::{
    encode_batch_part_with_legacy, update_entry_bound, updates_frame_bound, EncodeOptions,
    EncodedPart,
};
use crate::proto::MAX_SERVER_FRAME;
use crate::status::{DigestRecord, StatusBoard, ViewDigest};
use crossbeam_channel::{Sender, TrySendError};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// When a pending batch closes.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Close once this many distinct keys are pending (Typha's SnapshotCacheMaxBatchSize),
    /// checked at driver-event boundaries, so one object's keys are never split.
    pub max_updates: usize,
    /// Close once the oldest pending update is this old.
    pub max_age: Duration,
    /// Most bytes a batch's entries may take in an `Updates` frame ([`update_entry_bound`]
    /// summed); checked before taking an event. Clamped to [`MAX_BATCH_BYTES`].
    pub max_bytes: usize,
}

/// The largest [`BatchLimits::max_bytes`]: every `Updates` frame stays within
/// [`MAX_SERVER_FRAME`].
pub const MAX_BATCH_BYTES: usize = MAX_SERVER_FRAME - updates_frame_bound(0);

/// The default [`BatchLimits::max_bytes`]: far above any one object, small enough that a
/// backlog merged under backpressure leaves as several frames a client handles comfortably.
pub const DEFAULT_BATCH_BYTES: usize = 8 << 20;

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_updates: 100,
            max_age: Duration::from_millis(10),
            max_bytes: DEFAULT_BATCH_BYTES,
        }
    }
}

/// Encoding done so far: what [`Batcher::flush`] encoded, whether or not it was sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EncodeWork {
    /// Syncer-type parts encoded.
    pub parts: u64,
    /// Bytes of frames produced (every variant of every part).
    pub bytes: u64,
}

/// Outcome of an attempt to close and send the pending batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushOutcome {
    Sent,
    NothingPending,
    /// The channel is full; the batch stays pending and keeps merging.
    ChannelFull,
    /// The reactor is gone.
    Disconnected,
    /// The encoder refused a part (a frame over `MAX_SERVER_FRAME`). The batch limits make this
    /// impossible; should it happen, the datastore thread stops rather than send a frame no
    /// client accepts or skip a sequence number.
    EncodeFailed,
}

/// Receives the closed batches. The reactor's side is a bounded channel plus a `mio::Waker`;
/// tests plug in whatever they like.
pub trait BatchSink {
    fn try_send(&mut self, msg: BatchMessage) -> Result<(), TrySendError<BatchMessage>>;

    /// Whether a send now would find room. Asked before encoding, so that a full channel costs
    /// no encoding; the batcher is the channel's only sender, so a yes stays true until it sends.
    fn has_room(&self) -> bool {
        true
    }

    /// Whether batch `seq` must also be encoded in the legacy (v3.31 policy key) Typha
    /// variants: whether the reactor has a client that needs them.
    fn encode_legacy(&self, _seq: u64) -> bool {
        false
    }
}

/// The reactor's end: a bounded crossbeam channel, woken through a `mio::Waker`.
pub struct ReactorSink {
    pub tx: Sender<BatchMessage>,
    pub waker: Arc<mio::Waker>,
    /// The reactor's count of legacy clients ([`crate::server::Server::legacy_key_demand`]).
    pub legacy: Arc<LegacyKeyDemand>,
}

impl BatchSink for ReactorSink {
    fn try_send(&mut self, msg: BatchMessage) -> Result<(), TrySendError<BatchMessage>> {
        self.tx.try_send(msg)?;
        // A failed wake means the poll instance is gone; the reactor is shutting down and the
        // next send will see the disconnect.
        let _ = self.waker.wake();
        Ok(())
    }

    fn has_room(&self) -> bool {
        !self.tx.is_full()
    }

    fn encode_legacy(&self, seq: u64) -> bool {
        self.legacy.encode_legacy(seq)
    }
}

pub struct Batcher<S: BatchSink> {
    state: StateMap,
    /// The map as of the last batch sent: what every client holds before the pending batch.
    /// A deletion's policy tier for a v3.31 client comes from here.
    sent_state: StateMap,
    seq: u64,
    status: SyncStatus,
    /// Status as of the last sent batch.
    sent_status: SyncStatus,
    pending: Vec<(Update, SyncerTypeSet)>,
    pending_index: HashMap<Key, usize>,
    /// Sum of the pending updates' [`update_entry_bound`]s.
    pending_bytes: usize,
    /// The rest of a driver event that did not fit the open batch; applied once it has closed.
    held: VecDeque<KvUpdate>,
    encode_work: EncodeWork,
    /// When the oldest pending update (or status change) arrived.
    pending_since: Option<(Instant, u64)>,
    /// Last sequence number whose part for each syncer type carried updates.
    last_part_seq: [u64; SyncerType::COUNT],
    views: [ViewDigest; SyncerType::COUNT],
    limits: BatchLimits,
    encode: EncodeOptions,
    sink: S,
    metrics: Arc<Metrics>,
    board: Arc<StatusBoard>,
}

impl<S: BatchSink> Batcher<S> {
    pub fn new(
        limits: BatchLimits,
        encode: EncodeOptions,
        sink: S,
        metrics: Arc<Metrics>,
        board: Arc<StatusBoard>,
    ) -> Self {
        let b = Batcher {
            state: StateMap::new(),
            sent_state: StateMap::new(),
            seq: 0,
            status: SyncStatus::WaitingForDatastore,
            sent_status: SyncStatus::WaitingForDatastore,
            pending: Vec::new(),
            pending_index: HashMap::new(),
            pending_bytes: 0,
            held: VecDeque::new(),
            encode_work: EncodeWork::default(),
            pending_since: None,
            last_part_seq: [0; SyncerType::COUNT],
            views: [ViewDigest {
                key_count: 0,
                digest: Default::default(),
            }; SyncerType::COUNT],
            limits: BatchLimits {
                max_bytes: limits.max_bytes.clamp(1, MAX_BATCH_BYTES),
                ..limits
            },
            encode,
            sink,
            metrics,
            board,
        };
        b.board.record_digests(DigestRecord {
            seq: 0,
            views: b.views,
        });
        b
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn state(&self) -> &StateMap {
        &self.state
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Upper bound of the open batch's entries in an `Updates` frame.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// Whether the batcher takes another driver event: false while part of one is held, until
    /// the open batch has been sent.
    pub fn accepting(&self) -> bool {
        self.held.is_empty()
    }

    /// Encoding done so far.
    pub fn encode_work(&self) -> EncodeWork {
        self.encode_work
    }

    /// Takes one driver event: all of its keys join the open batch if they fit under the byte
    /// limit; otherwise they wait (see the module docs) and the batch is due. Call only while
    /// [`accepting`](Self::accepting).
    pub fn apply_event(&mut self, updates: Vec<KvUpdate>) {
        debug_assert!(
            self.held.is_empty(),
            "an event offered while another is held"
        );
        self.held.extend(updates);
        self.admit_held();
    }

    /// Moves held updates into the open batch: all of them if they fit; else, into an empty
    /// batch, as many as fit (at least one); else none.
    fn admit_held(&mut self) {
        let total: usize = self.held.iter().map(entry_bound).sum();
        if self.pending_bytes.saturating_add(total) <= self.limits.max_bytes {
            while let Some(u) = self.held.pop_front() {
                self.apply(u);
            }
            return;
        }
        if !self.pending.is_empty() {
            return;
        }
        while let Some(u) = self.held.front() {
            let b = entry_bound(u);
            if !self.pending.is_empty() && self.pending_bytes + b > self.limits.max_bytes {
                break;
            }
            if let Some(u) = self.held.pop_front() {
                self.apply(u);
            }
        }
    }

    /// The updates of the open batch, in arrival order (each key once, with its final value).
    pub fn pending(&self) -> impl Iterator<Item = &Update> {
        self.pending.iter().map(|(u, _)| u)
    }

    fn mark_pending(&mut self) {
        if self.pending_since.is_none() {
            self.pending_since = Some((Instant::now(), now_unix_nanos()));
        }
    }

    /// Applies one update to the canonical map; a no-op is dropped and counted, and so is an
    /// update too large for any frame (see the module docs). Not bounded by
    /// [`BatchLimits::max_bytes`]: drivers go through [`apply_event`](Self::apply_event).
    pub fn apply(&mut self, u: KvUpdate) {
        self.metrics.updates_total.inc();
        let bound = entry_bound(&u);
        if updates_frame_bound(bound) > MAX_SERVER_FRAME {
            tracing::error!(key = %u.key, bytes = bound, max = MAX_SERVER_FRAME,
                "update too large for any frame; refused, the key keeps its previous value");
            self.metrics.updates_refused_oversized.inc();
            return;
        }
        let old = self.state.get(&u.key).cloned();
        let update_type = match (&u.value, &old) {
            (Some(v), Some(o)) if o.value == *v => return self.skip(&u.key),
            (None, None) => return self.skip(&u.key),
            (Some(_), Some(_)) => UpdateType::Updated,
            (Some(_), None) => UpdateType::New,
            (None, Some(_)) => UpdateType::Deleted,
        };
        let types = SyncerTypeSet::of_key(&u.key);
        for t in SyncerType::ALL {
            if !types.contains(t) {
                continue;
            }
            let view = &mut self.views[t.index()];
            if let Some(o) = &old {
                view.digest.remove(&u.key, &o.value);
                view.key_count -= 1;
            }
            if let Some(v) = &u.value {
                view.digest.add(&u.key, v);
                view.key_count += 1;
            }
        }
        match &u.value {
            Some(v) => {
                self.state.insert(
                    u.key.clone(),
                    Arc::new(Entry {
                        value: v.clone(),
                        revision: u.revision.clone(),
                    }),
                );
            }
            None => {
                self.state.remove(&u.key);
            }
        }
        let update = Update {
            key: u.key,
            value: u.value,
            revision: u.revision,
            update_type,
        };
        self.mark_pending();
        self.pending_bytes += bound;
        match self.pending_index.get(&update.key) {
            Some(&i) => {
                // The key already changed in this batch: clients only need its final value.
                let prev = &mut self.pending[i].0;
                self.pending_bytes -=
                    update_entry_bound(&prev.key, prev.value.as_deref(), &prev.revision);
                let update_type = match (prev.update_type, update.update_type) {
                    (UpdateType::New, UpdateType::Updated) => UpdateType::New,
                    (_, t) => t,
                };
                *prev = Update {
                    update_type,
                    ..update
                };
            }
            None => {
                self.pending_index
                    .insert(update.key.clone(), self.pending.len());
                self.pending.push((update, types));
            }
        }
    }

    fn skip(&mut self, key: &str) {
        self.metrics.updates_skipped.inc();
        self.metrics
            .updates_skipped_by_prefix
            .with_label_values(&[key_kind(key)])
            .inc();
    }

    pub fn set_status(&mut self, s: SyncStatus) {
        if s != self.status {
            self.status = s;
            self.board.set_sync_status(s);
            self.mark_pending();
        }
    }

    /// Whether the pending batch should close now.
    pub fn due(&self, now: Instant) -> bool {
        !self.held.is_empty()
            || self.pending.len() >= self.limits.max_updates
            || self.status != self.sent_status
            || self
                .pending_since
                .is_some_and(|(t, _)| now.duration_since(t) >= self.limits.max_age)
    }

    /// When the pending batch reaches its age limit, if anything is pending.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending_since.map(|(t, _)| t + self.limits.max_age)
    }

    /// Closes the pending batch, encodes it once per syncer type and hands it to the sink; then
    /// takes what was held into the next batch. Encodes nothing while the sink has no room.
    pub fn flush(&mut self) -> FlushOutcome {
        let status_changed = self.status != self.sent_status;
        if self.pending.is_empty() && !status_changed {
            self.pending_since = None;
            return FlushOutcome::NothingPending;
        }
        if !self.sink.has_room() {
            self.metrics.channel_full.inc();
            return FlushOutcome::ChannelFull;
        }
        let seq = self.seq + 1;
        let received_at = self.pending_since.map_or_else(now_unix_nanos, |(_, n)| n);
        let status_change = status_changed.then_some(self.status);
        let legacy_from = self.sink.encode_legacy(seq).then_some(&self.sent_state);
        let mut parts: [Option<EncodedPart>; SyncerType::COUNT] = Default::default();
        let mut for_type: Vec<&Update> = Vec::with_capacity(self.pending.len());
        for t in SyncerType::ALL {
            for_type.clear();
            for_type.extend(
                self.pending
                    .iter()
                    .filter(|(_, types)| types.contains(t))
                    .map(|(u, _)| u),
            );
            if for_type.is_empty() && status_change.is_none() {
                continue;
            }
            let part = match encode_batch_part_with_legacy(
                self.last_part_seq[t.index()] + 1,
                seq,
                received_at,
                &for_type,
                status_change,
                &self.encode,
                legacy_from,
            ) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, syncer = t.as_str(), seq,
                        "encoder refused a batch part");
                    return FlushOutcome::EncodeFailed;
                }
            };
            self.encode_work.parts += 1;
            if legacy_from.is_some() {
                self.metrics.legacy_key_parts.inc();
            }
            self.encode_work.bytes += part.encoded_bytes() as u64;
            parts[t.index()] = Some(part);
        }
        let batch = Arc::new(DeltaBatch {
            seq,
            received_at,
            status: self.status,
            update_count: self.pending.len(),
            parts,
        });
        let msg = BatchMessage {
            batch: batch.clone(),
            state: self.state.clone(),
        };
        // Recorded before the reactor can deliver the batch, so that anyone holding seq `seq`
        // (a client, a test, the load-test harness asking /digest?seq=) finds its record. A
        // send that fails leaves a record for a seq not sent yet; the retry replaces it.
        self.board.record_digests(DigestRecord {
            seq,
            views: self.views,
        });
        match self.sink.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.metrics.channel_full.inc();
                return FlushOutcome::ChannelFull;
            }
            Err(TrySendError::Disconnected(_)) => return FlushOutcome::Disconnected,
        }
        self.seq = seq;
        self.sent_status = self.status;
        self.sent_state = self.state.clone();
        // Only `Updates` frames carry sequence numbers; a status-only part must not move the
        // chain, or the next `Updates` would look like it skipped a sequence.
        for t in SyncerType::ALL {
            if batch.parts[t.index()]
                .as_ref()
                .is_some_and(|p| p.update_count > 0)
            {
                self.last_part_seq[t.index()] = seq;
            }
        }
        self.metrics
            .breadcrumb_size
            .observe(self.pending.len() as f64);
        for t in SyncerType::ALL {
            if let Some(p) = batch.parts[t.index()]
                .as_ref()
                .filter(|p| p.update_count > 0)
            {
                self.metrics.kvs_per_msg[t.index()].observe(p.update_count as f64);
            }
        }
        self.metrics.batches_sent.inc();
        self.metrics.sequence.set(seq as i64);
        for t in SyncerType::ALL {
            self.metrics
                .keys
                .with_label_values(&[t.as_str()])
                .set(self.views[t.index()].key_count as i64);
        }
        self.pending.clear();
        self.pending_index.clear();
        self.pending_bytes = 0;
        self.pending_since = None;
        self.admit_held();
        FlushOutcome::Sent
    }
}

fn entry_bound(u: &KvUpdate) -> usize {
    update_entry_bound(&u.key, u.value.as_deref(), &u.revision)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Digest;
    use crate::proto::encode::WireVariant;
    use crate::proto::{decode_server_message, FrameDecoder, ServerMessage, MAX_SERVER_FRAME};
    use std::cell::RefCell;
    use std::rc::Rc;

    /// Collects batches; can pretend to be full.
    #[derive(Default, Clone)]
    struct VecSink(Rc<RefCell<SinkState>>);

    #[derive(Default)]
    struct SinkState {
        got: Vec<BatchMessage>,
        full: bool,
    }

    impl BatchSink for VecSink {
        fn try_send(&mut self, msg: BatchMessage) -> Result<(), TrySendError<BatchMessage>> {
            let mut s = self.0.borrow_mut();
            if s.full {
                return Err(TrySendError::Full(msg));
            }
            s.got.push(msg);
            Ok(())
        }

        fn has_room(&self) -> bool {
            !self.0.borrow().full
        }
    }

    impl VecSink {
        fn got(&self) -> std::cell::Ref<'_, Vec<BatchMessage>> {
            std::cell::Ref::map(self.0.borrow(), |s| &s.got)
        }
        fn set_full(&self, full: bool) {
            self.0.borrow_mut().full = full;
        }
    }

    fn batcher(sink: &VecSink, max_updates: usize) -> (Batcher<VecSink>, Arc<Metrics>) {
        let m = Arc::new(Metrics::new());
        let b = Batcher::new(
            BatchLimits {
                max_updates,
                max_age: Duration::from_secs(3600),
                ..BatchLimits::default()
            },
            EncodeOptions::default(),
            sink.clone(),
            m.clone(),
            Arc::new(StatusBoard::new()),
        );
        (b, m)
    }

    fn decode_updates(frames: &[u8]) -> Vec<ServerMessage> {
        let mut out = Vec::new();
        let mut d = FrameDecoder::new(MAX_SERVER_FRAME);
        d.feed(frames, |p| {
            out.push(decode_server_message(p, MAX_SERVER_FRAME).map_err(|e| e.to_string())?);
            Ok::<(), String>(())
        })
        .unwrap();
        out
    }

    /// What `CheckingSink` saw: each batch's seq and the Felix digest recorded for it then.
    type Seen = Rc<RefCell<Vec<(u64, Option<Digest>)>>>;

    /// A sink that, like a client of the reactor, asks the board for the digest of every batch
    /// the moment it receives it; it fails the first time (the channel is full).
    struct CheckingSink {
        board: Arc<StatusBoard>,
        refuse_first: bool,
        seen: Seen,
    }

    impl BatchSink for CheckingSink {
        fn try_send(&mut self, msg: BatchMessage) -> Result<(), TrySendError<BatchMessage>> {
            if std::mem::take(&mut self.refuse_first) {
                return Err(TrySendError::Full(msg));
            }
            let rec = self.board.digests(Some(msg.batch.seq));
            self.seen.borrow_mut().push((
                msg.batch.seq,
                rec.map(|r| r.views[SyncerType::Felix.index()].digest),
            ));
            Ok(())
        }
    }

    #[test]
    fn a_batch_digest_is_recorded_before_the_batch_can_reach_anyone() {
        let board = Arc::new(StatusBoard::new());
        let seen = Rc::new(RefCell::new(Vec::new()));
        let mut b = Batcher::new(
            BatchLimits {
                max_updates: 100,
                max_age: Duration::from_secs(3600),
                ..BatchLimits::default()
            },
            EncodeOptions::default(),
            CheckingSink {
                board: board.clone(),
                refuse_first: true,
                seen: seen.clone(),
            },
            Arc::new(Metrics::new()),
            board.clone(),
        );
        b.apply(KvUpdate::set(WEP, b"{\"v\":1}".to_vec(), "1"));
        assert!(matches!(b.flush(), FlushOutcome::ChannelFull));
        // More arrives while the channel is full; the retry sends seq 1 with both.
        b.apply(KvUpdate::set(NODE, b"{\"n\":1}".to_vec(), "2"));
        assert!(matches!(b.flush(), FlushOutcome::Sent));
        let mut want = Digest::default();
        want.add(WEP, b"{\"v\":1}");
        want.add(NODE, b"{\"n\":1}");
        assert_eq!(*seen.borrow(), vec![(1, Some(want))]);
        // The retry replaced the record of the failed attempt rather than adding a second one.
        let rec = board.digests(Some(1)).unwrap();
        assert_eq!(rec.views[SyncerType::Felix.index()].digest, want);
        assert_eq!(board.digests(None).unwrap().seq, 1);
    }

    const WEP: &str = "/calico/v1/host/n1/workload/k8s/ns%2fp/endpoint/eth0";
    const NODE: &str = "/calico/resources/v3/projectcalico.org/nodes/n1";

    #[test]
    fn noops_are_dropped_and_counted() {
        let sink = VecSink::default();
        let (mut b, m) = batcher(&sink, 100);
        b.apply(KvUpdate::set(WEP, &b"{\"a\":1}"[..], "1"));
        b.apply(KvUpdate::set(WEP, &b"{\"a\":1}"[..], "2"));
        b.apply(KvUpdate::delete("/calico/v1/unknown", "3"));
        assert_eq!(b.pending_len(), 1);
        assert_eq!(m.updates_total.get(), 3);
        assert_eq!(m.updates_skipped.get(), 2);
        // The kept entry still has the first revision: clients were never told about "2".
        assert_eq!(b.state().get(WEP).unwrap().revision, "1");
    }

    #[test]
    fn batches_close_at_size_and_carry_per_type_chains() {
        let sink = VecSink::default();
        let (mut b, _) = batcher(&sink, 2);
        b.apply(KvUpdate::set(WEP, &b"1"[..], "1"));
        assert!(!b.due(Instant::now()));
        b.apply(KvUpdate::set(NODE, &b"n"[..], "2"));
        assert!(b.due(Instant::now()));
        assert_eq!(b.flush(), FlushOutcome::Sent);
        b.apply(KvUpdate::set(WEP, &b"2"[..], "3"));
        assert_eq!(b.flush(), FlushOutcome::Sent);
        b.apply(KvUpdate::set(NODE, &b"m"[..], "4"));
        assert_eq!(b.flush(), FlushOutcome::Sent);
        drop(b);
        let seqs: Vec<u64> = sink.got().iter().map(|m| m.batch.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        // bgp saw only the node: its parts are seq 1 and seq 3, chained 1..=1 then 2..=3.
        let bgp: Vec<(u64, u64)> = sink
            .got()
            .iter()
            .filter_map(|m| m.batch.part(SyncerType::Bgp))
            .map(|p| (p.first_seq, p.last_seq))
            .collect();
        assert_eq!(bgp, vec![(1, 1), (2, 3)]);
        let felix: Vec<(u64, u64)> = sink
            .got()
            .iter()
            .filter_map(|m| m.batch.part(SyncerType::Felix))
            .map(|p| (p.first_seq, p.last_seq))
            .collect();
        assert_eq!(felix, vec![(1, 1), (2, 2), (3, 3)]);
        match &decode_updates(sink.got()[1].batch.part(SyncerType::Felix).unwrap().plain())[..] {
            [ServerMessage::Updates { updates, .. }] => {
                assert_eq!(updates.len(), 1);
                assert_eq!(updates[0].value.as_deref(), Some(&b"2"[..]));
                assert_eq!(updates[0].update_type, UpdateType::Updated);
            }
            other => panic!("unexpected frames {other:?}"),
        }
        // The state travelling with batch 1 is the map as of seq 1, not later.
        assert_eq!(sink.got()[0].state.get(WEP).unwrap().value, &b"1"[..]);
    }

    #[test]
    fn full_channel_merges_and_keeps_the_sequence() {
        let sink = VecSink::default();
        sink.set_full(true);
        let (mut b, m) = batcher(&sink, 1);
        b.apply(KvUpdate::set(WEP, &b"1"[..], "1"));
        assert_eq!(b.flush(), FlushOutcome::ChannelFull);
        b.apply(KvUpdate::set(WEP, &b"2"[..], "2"));
        b.apply(KvUpdate::set(NODE, &b"n"[..], "3"));
        assert_eq!(b.pending_len(), 2, "same key merged, not queued twice");
        assert_eq!(m.channel_full.get(), 1);
        sink.set_full(false);
        assert_eq!(b.flush(), FlushOutcome::Sent);
        assert_eq!(b.seq(), 1);
        drop(b);
        let got = sink.got();
        let p = got[0].batch.part(SyncerType::Felix).unwrap();
        match &decode_updates(p.plain())[..] {
            [ServerMessage::Updates { updates, .. }] => {
                assert_eq!(updates.len(), 2);
                assert_eq!(updates[0].value.as_deref(), Some(&b"2"[..]));
                // New then Updated within one batch is still New to the clients.
                assert_eq!(updates[0].update_type, UpdateType::New);
            }
            other => panic!("unexpected frames {other:?}"),
        }
    }

    fn limited(sink: &VecSink, max_bytes: usize) -> (Batcher<VecSink>, Arc<Metrics>) {
        let m = Arc::new(Metrics::new());
        let b = Batcher::new(
            BatchLimits {
                max_updates: 100,
                max_age: Duration::from_secs(3600),
                max_bytes,
            },
            EncodeOptions::default(),
            sink.clone(),
            m.clone(),
            Arc::new(StatusBoard::new()),
        );
        (b, m)
    }

    /// `n` felix keys from `from` on, each with a 1 KiB value.
    fn event(from: usize, n: usize) -> Vec<KvUpdate> {
        (from..from + n)
            .map(|i| {
                KvUpdate::set(
                    format!("/calico/v1/host/n1/workload/k8s/ns%2fp{i}/endpoint/eth0"),
                    format!("{i:01024}").into_bytes(),
                    "1",
                )
            })
            .collect()
    }

    #[test]
    fn a_full_channel_costs_no_encoding() {
        let sink = VecSink::default();
        sink.set_full(true);
        let (mut b, m) = batcher(&sink, 1);
        b.apply_event(event(0, 3));
        for _ in 0..50 {
            assert_eq!(b.flush(), FlushOutcome::ChannelFull);
        }
        assert_eq!(
            b.encode_work(),
            EncodeWork::default(),
            "nothing encoded while full"
        );
        assert_eq!(m.channel_full.get(), 50);
        sink.set_full(false);
        assert_eq!(b.flush(), FlushOutcome::Sent);
        let got = sink.got();
        let parts = got[0].batch.parts.iter().flatten().count() as u64;
        assert_eq!(
            b.encode_work(),
            EncodeWork {
                parts,
                bytes: got[0].batch.encoded_bytes() as u64
            },
            "encoded once, exactly what was sent"
        );
    }

    #[test]
    fn merging_under_backpressure_stops_at_the_byte_limit() {
        let sink = VecSink::default();
        sink.set_full(true);
        let max = 64 * 1024;
        let (mut b, _) = limited(&sink, max);
        let mut offered = 0;
        while b.accepting() {
            b.apply_event(event(offered * 10, 10));
            offered += 1;
            assert!(b.pending_bytes() <= max, "{} > {max}", b.pending_bytes());
            assert_eq!(b.flush(), FlushOutcome::ChannelFull);
            assert!(offered < 100, "the batcher never stopped taking events");
        }
        // The last event waits whole: none of its keys is in the map yet.
        let taken = b.pending_len();
        assert_eq!(taken, (offered - 1) * 10);
        assert!(b.due(Instant::now()));
        let held_key = &event((offered - 1) * 10, 1)[0].key;
        assert!(b.state().get(held_key).is_none());
        sink.set_full(false);
        assert_eq!(b.flush(), FlushOutcome::Sent);
        // Once the batch has gone, the held event opens the next one.
        assert!(b.accepting());
        assert_eq!(b.pending_len(), 10);
        assert!(b.state().get(held_key).is_some());
        assert_eq!(sink.got()[0].batch.update_count, taken);
    }

    #[test]
    fn an_event_above_the_limit_fills_batches_at_key_boundaries() {
        let sink = VecSink::default();
        let max = 64 * 1024;
        let (mut b, _) = limited(&sink, max);
        b.apply_event(event(0, 200));
        assert!(!b.accepting());
        let mut rounds = 0;
        while !b.accepting() {
            assert!(b.pending_bytes() <= max);
            assert_eq!(b.flush(), FlushOutcome::Sent);
            rounds += 1;
        }
        assert_eq!(b.flush(), FlushOutcome::Sent);
        drop(b);
        let got = sink.got();
        assert_eq!(got.len(), rounds + 1);
        assert!(got.len() >= 4, "{} batches", got.len());
        let mut keys = 0;
        let mut next = 1;
        for m in got.iter() {
            let p = m.batch.part(SyncerType::Felix).unwrap();
            assert!(p.plain().len() <= updates_frame_bound(max));
            match &decode_updates(p.frames(WireVariant::NativeCompressed).unwrap())[..] {
                [ServerMessage::Updates {
                    first_seq,
                    last_seq,
                    updates,
                    ..
                }] => {
                    assert_eq!((*first_seq, *last_seq), (next, next));
                    next += 1;
                    keys += updates.len();
                }
                other => panic!("unexpected frames {other:?}"),
            }
        }
        assert_eq!(keys, 200);
    }

    #[test]
    fn an_update_too_large_for_any_frame_is_refused() {
        let sink = VecSink::default();
        let (mut b, m) = batcher(&sink, 100);
        b.apply(KvUpdate::set(WEP, &b"small"[..], "1"));
        b.apply(KvUpdate::set(WEP, vec![b'x'; MAX_SERVER_FRAME], "2"));
        assert_eq!(m.updates_refused_oversized.get(), 1);
        assert_eq!(b.state().get(WEP).unwrap().value, &b"small"[..]);
        assert_eq!(b.flush(), FlushOutcome::Sent);
        let got = sink.got();
        let p = got[0].batch.part(SyncerType::Felix).unwrap();
        match &decode_updates(p.plain())[..] {
            [ServerMessage::Updates { updates, .. }] => {
                assert_eq!(updates[0].value.as_deref(), Some(&b"small"[..]))
            }
            other => panic!("unexpected frames {other:?}"),
        }
    }

    #[test]
    fn status_change_alone_makes_a_batch_for_every_type() {
        let sink = VecSink::default();
        let (mut b, _) = batcher(&sink, 100);
        b.set_status(SyncStatus::InSync);
        assert!(b.due(Instant::now()));
        assert_eq!(b.flush(), FlushOutcome::Sent);
        assert_eq!(b.flush(), FlushOutcome::NothingPending);
        drop(b);
        for t in SyncerType::ALL {
            let got = sink.got();
            let p = got[0].batch.part(t).unwrap();
            assert_eq!(
                decode_updates(p.compressed().unwrap_or(p.plain())),
                vec![ServerMessage::SyncStatus(SyncStatus::InSync)]
            );
        }
    }

    #[test]
    fn digests_track_the_map() {
        let sink = VecSink::default();
        let board = Arc::new(StatusBoard::new());
        let mut b = Batcher::new(
            BatchLimits::default(),
            EncodeOptions::default(),
            sink.clone(),
            Arc::new(Metrics::new()),
            board.clone(),
        );
        b.apply(KvUpdate::set(WEP, &b"1"[..], "1"));
        b.apply(KvUpdate::set(NODE, &b"n"[..], "2"));
        b.apply(KvUpdate::delete(WEP, "3"));
        b.flush();
        let rec = board.digests(Some(1)).unwrap();
        let mut expect = crate::model::Digest::default();
        expect.add(NODE, b"n");
        assert_eq!(rec.views[SyncerType::Felix.index()].digest, expect);
        assert_eq!(rec.views[SyncerType::Felix.index()].key_count, 1);
        assert_eq!(rec.views[SyncerType::NodeStatus.index()].key_count, 0);
        assert!(board.digests(Some(0)).is_some());
    }
}
