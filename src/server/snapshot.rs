//! The snapshot cache: each snapshot is encoded (and compressed) once per syncer type, wire
//! variant and sequence number, off the reactor thread, and shared by every client that joins at that point.
//!
//! Invariants (enforced by `tests/snapshot_cache.rs`, written down in `docs/snapshot-cache.md`):
//! 1. A snapshot at sequence S is built from the canonical map exactly as of S: the reactor
//!    hands the encoder the map that arrived with batch S.
//! 2. A client served a snapshot at S continues from S + 1 out of the ring, so it is only served
//!    while the ring still holds S + 1; otherwise a newer snapshot is built.
//! 3. At most one encode per (syncer type, wire variant) runs at a time; clients arriving meanwhile
//!    wait for it rather than starting their own (a reconnect storm costs one encode).
//! 4. A finished snapshot is reused for new clients while it is at most `reuse_window` old or
//!    still current, so a quiet datastore never re-encodes.
//! 5. The encoded bytes of every snapshot still referenced (by the cache or by a client still
//!    downloading it) stay below `max_live_bytes`, exceeded by at most the one snapshot whose
//!    encode was started while there was room. Beyond it a joiner is served the newest
//!    snapshot of its kind it can still continue from, however old, or waits until downloads
//!    finish; it is never refused. Under churn, each reuse window would otherwise pin another
//!    snapshot per kind until its slowest downloader finished.
//!
//! The encoder is supervised: an encode that panics is caught, counted as a restart of the
//! `snapshot-encoder`, marked down on the status board, and tried again after a backoff, so
//! the clients waiting for it are served once it succeeds (and readiness, then liveness, fail
//! while it does not).

use super::ring::Ring;
use crate::metrics::Metrics;
use crate::model::{StateMap, SyncStatus, SyncerType};
use crate::proto::encode::{encode_snapshot, encode_typha_snapshot, EncodedSnapshot, WireVariant};
use crate::proto::Codec;
use crate::status::StatusBoard;
use crate::supervise::{catch_recoverable, Backoff};
use crossbeam_channel::{Receiver, Sender};
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub type SnapshotKey = (SyncerType, WireVariant);

/// The status-board and metric name of the encoder.
const ENCODER: &str = "snapshot-encoder";

struct SnapshotJob {
    state: StateMap,
    seq: u64,
    status: SyncStatus,
    syncer: SyncerType,
    variant: WireVariant,
    /// The codec of the native compressed variant.
    codec: Option<Codec>,
    chunk_bytes: usize,
}

/// Encodes one snapshot job in its variant.
fn encode_job(job: &SnapshotJob) -> EncodedSnapshot {
    let native = |codec| {
        encode_snapshot(
            &job.state,
            job.seq,
            job.status,
            job.syncer,
            codec,
            job.chunk_bytes,
        )
    };
    match job.variant {
        WireVariant::NativePlain => native(None),
        WireVariant::NativeCompressed => {
            let mut snap = native(job.codec);
            snap.variant = WireVariant::NativeCompressed;
            snap
        }
        WireVariant::TyphaSnappy
        | WireVariant::TyphaPlain
        | WireVariant::TyphaSnappyLegacy
        | WireVariant::TyphaPlainLegacy => {
            encode_typha_snapshot(&job.state, job.seq, job.status, job.syncer, job.variant)
        }
    }
}

struct Cached {
    snap: Arc<EncodedSnapshot>,
    built_at: Instant,
}

/// A snapshot that may still be referenced, and the bytes it holds while it is.
struct LiveSnapshot {
    snap: Weak<EncodedSnapshot>,
    bytes: u64,
}

/// The bytes a snapshot keeps in memory: every frame, and the live-stream prefix.
fn held_bytes(snap: &EncodedSnapshot) -> u64 {
    let frames: usize = snap.frames.iter().map(|f| f.len()).sum();
    (frames + snap.live_prefix.as_ref().map_or(0, |p| p.len())) as u64
}

/// How a join went when the live-snapshot bound was reached (`outcome` label of
/// `typha_snapshot_joins_bounded_total`).
const SHARED_OLDER: &str = "shared_older";
const WAITED: &str = "waited";

/// A connection waiting for a snapshot; `conn_id` guards against slab slot reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiter {
    pub slot: usize,
    pub conn_id: u64,
    /// The oldest snapshot sequence this client can be given (a legacy client's batches
    /// start later than the ring's; 0 for everyone else).
    pub min_seq: u64,
}

pub enum Lookup {
    Ready(Arc<EncodedSnapshot>),
    Wait,
}

pub struct SnapshotCache {
    cached: HashMap<SnapshotKey, Cached>,
    pending: HashMap<SnapshotKey, Vec<Waiter>>,
    /// Joiners held back by the bound, to be served once there is room again.
    deferred: HashMap<SnapshotKey, Vec<Waiter>>,
    /// Every snapshot built that may still be referenced.
    live: Vec<LiveSnapshot>,
    /// The size of each kind's latest snapshot: what its next encode is expected to add.
    last_bytes: HashMap<SnapshotKey, u64>,
    max_live_bytes: u64,
    jobs: Option<Sender<SnapshotJob>>,
    results: Receiver<(Arc<EncodedSnapshot>, Duration)>,
    worker: Option<JoinHandle<()>>,
    reuse_window: Duration,
    chunk_bytes: usize,
    codec: Option<Codec>,
    metrics: Arc<Metrics>,
}

impl SnapshotCache {
    /// Starts the encoder thread; `wake` is called after each finished snapshot. `codec` is
    /// the native compressed variant's. `max_live_bytes` bounds the bytes of all snapshots
    /// still referenced (invariant 5).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        reuse_window: Duration,
        max_live_bytes: u64,
        chunk_bytes: usize,
        codec: Option<Codec>,
        metrics: Arc<Metrics>,
        board: Arc<StatusBoard>,
        wake: impl Fn() + Send + 'static,
    ) -> std::io::Result<Self> {
        let (jobs_tx, jobs_rx) = crossbeam_channel::unbounded::<SnapshotJob>();
        let (res_tx, res_rx) = crossbeam_channel::unbounded();
        let restarts = metrics.component_restarts.with_label_values(&[ENCODER]);
        for outcome in [SHARED_OLDER, WAITED] {
            metrics.snapshot_joins_bounded.with_label_values(&[outcome]);
        }
        let worker = std::thread::Builder::new()
            .name("typha-snapshot".into())
            .spawn(move || {
                let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
                for job in jobs_rx {
                    let started = Instant::now();
                    let snap = loop {
                        match catch_recoverable(|| {
                            crate::fault_point!("snapshot-panic");
                            encode_job(&job)
                        }) {
                            Ok(snap) => break snap,
                            Err(why) => {
                                let delay = backoff.next_delay();
                                tracing::warn!(reason = %why, syncer = job.syncer.as_str(), seq = job.seq, retry_in = ?delay, "snapshot encoder panicked; restarting it");
                                restarts.inc();
                                board.component_down(ENCODER);
                                std::thread::sleep(delay);
                            }
                        }
                    };
                    board.component_up(ENCODER);
                    backoff.reset();
                    drop(job.state);
                    if res_tx.send((Arc::new(snap), started.elapsed())).is_err() {
                        return;
                    }
                    wake();
                }
            })?;
        Ok(SnapshotCache {
            cached: HashMap::new(),
            pending: HashMap::new(),
            deferred: HashMap::new(),
            live: Vec::new(),
            last_bytes: HashMap::new(),
            max_live_bytes,
            jobs: Some(jobs_tx),
            results: res_rx,
            worker: Some(worker),
            reuse_window,
            chunk_bytes,
            codec,
            metrics,
        })
    }

    /// Serves a snapshot for `key` now, or registers `waiter` for the one being built. A new
    /// encode starts from `state` (the map as of the ring's newest sequence) when needed and
    /// the live-snapshot bound leaves room for it. No snapshot older than the waiter's
    /// `min_seq` is served from the cache (the caller checks a finished encode the same way).
    pub fn request(
        &mut self,
        key: SnapshotKey,
        waiter: Waiter,
        ring: &Ring,
        state: &StateMap,
        status: SyncStatus,
    ) -> Lookup {
        let min_seq = waiter.min_seq;
        if let Some(snap) = self.reusable(key, ring, min_seq) {
            self.count_reused(key, 1);
            return Lookup::Ready(snap);
        }
        if let Some(w) = self.pending.get_mut(&key) {
            w.push(waiter);
            return Lookup::Wait;
        }
        if !self.has_room() {
            if let Some(snap) = self.newest_servable(key, ring, min_seq) {
                self.count_reused(key, 1);
                self.count_bounded(SHARED_OLDER, 1);
                return Lookup::Ready(snap);
            }
            self.count_bounded(WAITED, 1);
            self.deferred.entry(key).or_default().push(waiter);
            return Lookup::Wait;
        }
        self.start_encode(key, vec![waiter], ring, state, status);
        Lookup::Wait
    }

    /// A cached snapshot for `key` that is current or inside the reuse window and can be
    /// continued from the ring.
    fn reusable(
        &self,
        key: SnapshotKey,
        ring: &Ring,
        min_seq: u64,
    ) -> Option<Arc<EncodedSnapshot>> {
        self.continuable(key, ring, min_seq, true)
    }

    /// Beyond the bound: the cached snapshot for `key`, however old, if the ring still
    /// continues it (the client then catches up from the ring like any other).
    fn newest_servable(
        &self,
        key: SnapshotKey,
        ring: &Ring,
        min_seq: u64,
    ) -> Option<Arc<EncodedSnapshot>> {
        self.continuable(key, ring, min_seq, false)
    }

    /// The cached snapshot for `key` if it is at `min_seq` or later, the ring holds every batch
    /// after it and, when `must_be_fresh`, it is current or inside the reuse window.
    fn continuable(
        &self,
        key: SnapshotKey,
        ring: &Ring,
        min_seq: u64,
        must_be_fresh: bool,
    ) -> Option<Arc<EncodedSnapshot>> {
        let c = self.cached.get(&key)?;
        let fresh = !must_be_fresh
            || c.snap.seq == ring.last_seq()
            || c.built_at.elapsed() <= self.reuse_window;
        (fresh && c.snap.seq >= min_seq && ring.holds_from(c.snap.seq + 1)).then(|| c.snap.clone())
    }

    fn count_reused(&self, key: SnapshotKey, clients: usize) {
        self.metrics
            .snapshots_reused
            .with_label_values(&[key.0.as_str()])
            .inc_by(clients as u64);
    }

    fn count_bounded(&self, outcome: &str, clients: usize) {
        self.metrics
            .snapshot_joins_bounded
            .with_label_values(&[outcome])
            .inc_by(clients as u64);
    }

    fn start_encode(
        &mut self,
        key: SnapshotKey,
        waiters: Vec<Waiter>,
        ring: &Ring,
        state: &StateMap,
        status: SyncStatus,
    ) {
        let job = SnapshotJob {
            state: state.clone(),
            seq: ring.last_seq(),
            status,
            syncer: key.0,
            variant: key.1,
            codec: self.codec,
            chunk_bytes: self.chunk_bytes,
        };
        if let Some(jobs) = &self.jobs {
            // The worker only stops when `jobs` is dropped (an encode that panics is caught and
            // tried again), so this send cannot fail while we hold it.
            let _ = jobs.send(job);
        }
        self.pending.insert(key, waiters);
    }

    /// Bytes of every snapshot still referenced; forgets those no longer referenced.
    pub fn live_bytes(&mut self) -> u64 {
        self.live.retain(|l| l.snap.strong_count() > 0);
        let bytes = self.live.iter().map(|l| l.bytes).sum();
        self.metrics
            .snapshot_bytes_live
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        bytes
    }

    /// Whether another encode fits under the bound: the live bytes plus what the encodes
    /// already under way are expected to add (each kind's last size; for a kind never built,
    /// the largest size seen) leave room. So the bound is exceeded by at most the last
    /// encode admitted, give or take how much the snapshots grew since they were last built.
    fn has_room(&mut self) -> bool {
        let largest = self.last_bytes.values().copied().max().unwrap_or(0);
        let under_way: u64 = self
            .pending
            .keys()
            .map(|k| self.last_bytes.get(k).copied().unwrap_or(largest))
            .sum();
        self.live_bytes().saturating_add(under_way) < self.max_live_bytes
    }

    /// Serves the joiners the bound held back, now that downloads have finished: returns
    /// those served an existing snapshot, and starts an encode for the rest while there is
    /// room. `still_waiting` drops those whose connection has gone, so no encode starts for
    /// nobody. Call it after [`SnapshotCache::trim`].
    pub fn admit_deferred(
        &mut self,
        ring: &Ring,
        state: &StateMap,
        status: SyncStatus,
        still_waiting: impl Fn(&Waiter) -> bool,
    ) -> Vec<(Arc<EncodedSnapshot>, Vec<Waiter>)> {
        let mut served = Vec::new();
        if self.deferred.is_empty() {
            return served;
        }
        self.deferred.retain(|_, w| {
            w.retain(&still_waiting);
            !w.is_empty()
        });
        let keys: Vec<SnapshotKey> = self.deferred.keys().copied().collect();
        for key in keys {
            let Some(waiters) = self.deferred.remove(&key) else {
                continue;
            };
            // One key's waiters share a variant, so they are all legacy or none is.
            let min_seq = waiters.iter().map(|w| w.min_seq).max().unwrap_or(0);
            if let Some(snap) = self.reusable(key, ring, min_seq) {
                self.count_reused(key, waiters.len());
                served.push((snap, waiters));
            } else if let Some(w) = self.pending.get_mut(&key) {
                w.extend(waiters);
            } else if self.has_room() {
                self.start_encode(key, waiters, ring, state, status);
            } else if let Some(snap) = self.newest_servable(key, ring, min_seq) {
                self.count_reused(key, waiters.len());
                self.count_bounded(SHARED_OLDER, waiters.len());
                served.push((snap, waiters));
            } else {
                self.deferred.insert(key, waiters);
            }
        }
        served
    }

    /// Takes a finished snapshot, if any, with the connections that were waiting for it.
    pub fn poll_finished(&mut self) -> Option<(Arc<EncodedSnapshot>, Vec<Waiter>)> {
        let (snap, took) = self.results.try_recv().ok()?;
        let key = (snap.syncer, snap.variant);
        let name = snap.syncer.as_str();
        self.metrics
            .snapshots_generated
            .with_label_values(&[name])
            .inc();
        self.metrics
            .snapshot_raw_bytes
            .with_label_values(&[name])
            .set(snap.raw_bytes as i64);
        self.metrics
            .snapshot_wire_bytes
            .with_label_values(&[name])
            .set(snap.wire_bytes as i64);
        self.metrics
            .snapshot_encode_secs
            .observe(took.as_secs_f64());
        tracing::debug!(
            syncer = name,
            seq = snap.seq,
            keys = snap.key_count,
            raw_bytes = snap.raw_bytes,
            wire_bytes = snap.wire_bytes,
            took_ms = took.as_millis() as u64,
            "snapshot encoded"
        );
        let bytes = held_bytes(&snap);
        self.live.push(LiveSnapshot {
            snap: Arc::downgrade(&snap),
            bytes,
        });
        self.last_bytes.insert(key, bytes);
        self.live_bytes();
        self.cached.insert(
            key,
            Cached {
                snap: snap.clone(),
                built_at: Instant::now(),
            },
        );
        let waiters = self.pending.remove(&key).unwrap_or_default();
        Some((snap, waiters))
    }

    /// Drops the cached legacy-variant snapshots: the last client that took them left. A client
    /// still writing one keeps its own reference.
    pub fn forget_legacy(&mut self) {
        self.cached.retain(|key, _| !key.1.legacy_keys());
    }

    /// Releases cached snapshots that are stale and no client is still writing.
    pub fn trim(&mut self, ring: &Ring) {
        let window = self.reuse_window;
        self.cached.retain(|_, c| {
            let stale = c.snap.seq != ring.last_seq() && c.built_at.elapsed() > window;
            !(stale && Arc::strong_count(&c.snap) == 1)
        });
        self.live_bytes();
    }
}

impl Drop for SnapshotCache {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::DeltaBatch;
    use crate::model::Entry;

    const KEY: SnapshotKey = (SyncerType::Felix, WireVariant::NativePlain);

    fn state(keys: usize) -> StateMap {
        (0..keys)
            .map(|i| {
                let k: crate::model::Key =
                    format!("/calico/v1/host/n{i}/workload/k8s/ns%2fp/endpoint/eth0").into();
                let e = Entry {
                    value: vec![b'x'; 200].into(),
                    revision: i.to_string(),
                };
                (k, Arc::new(e))
            })
            .collect()
    }

    fn advance(ring: &mut Ring) {
        let batch = DeltaBatch {
            seq: ring.last_seq() + 1,
            received_at: 0,
            status: SyncStatus::InSync,
            update_count: 0,
            parts: Default::default(),
        };
        ring.push(Arc::new(batch), Instant::now());
    }

    struct Harness {
        cache: SnapshotCache,
        finished: Receiver<()>,
        metrics: Arc<Metrics>,
        next_conn: u64,
    }

    impl Harness {
        fn new(max_live_bytes: u64) -> Self {
            let metrics = Arc::new(Metrics::new());
            let (tx, finished) = crossbeam_channel::unbounded();
            let cache = SnapshotCache::new(
                Duration::ZERO,
                max_live_bytes,
                64 * 1024,
                None,
                metrics.clone(),
                Arc::new(StatusBoard::new()),
                move || {
                    let _ = tx.send(());
                },
            )
            .expect("encoder thread");
            Harness {
                cache,
                finished,
                metrics,
                next_conn: 0,
            }
        }

        fn waiter(&mut self) -> Waiter {
            self.next_conn += 1;
            Waiter {
                slot: self.next_conn as usize,
                conn_id: self.next_conn,
                min_seq: 0,
            }
        }

        /// The next finished snapshot, with its waiters.
        fn finished(&mut self) -> (Arc<EncodedSnapshot>, Vec<Waiter>) {
            self.finished
                .recv_timeout(Duration::from_secs(30))
                .expect("an encode finishes");
            self.cache.poll_finished().expect("a finished snapshot")
        }

        fn generated(&self) -> u64 {
            self.metrics
                .snapshots_generated
                .with_label_values(&["felix"])
                .get()
        }

        fn bounded(&self, outcome: &str) -> u64 {
            self.metrics
                .snapshot_joins_bounded
                .with_label_values(&[outcome])
                .get()
        }
    }

    /// Clients that keep downloading pin their snapshots; once those reach the bound, a joiner
    /// shares the newest snapshot it can continue from, or waits while there is none, and no
    /// further snapshot is built until downloads finish.
    #[test]
    fn joiners_beyond_the_live_bound_share_or_wait_and_pin_nothing_more() {
        let map = state(2000);
        let size = {
            let mut h = Harness::new(u64::MAX);
            let ring = Ring::new(3, usize::MAX);
            let w = h.waiter();
            assert!(matches!(
                h.cache.request(KEY, w, &ring, &map, SyncStatus::InSync),
                Lookup::Wait
            ));
            held_bytes(&h.finished().0)
        };
        assert!(size > 100_000, "{size}");
        // Room for one snapshot and a half: the second encode starts, the third must not.
        let bound = size * 3 / 2;
        let mut h = Harness::new(bound);
        let mut ring = Ring::new(3, usize::MAX);
        let mut downloading = Vec::new();

        let first = h.waiter();
        let lookup = h.cache.request(KEY, first, &ring, &map, SyncStatus::InSync);
        assert!(matches!(lookup, Lookup::Wait));
        let (snap, waiters) = h.finished();
        assert_eq!(waiters, vec![first]);
        downloading.push(snap);

        // Churn: the cached one is stale, and there is room, so a second one is built.
        advance(&mut ring);
        let second = h.waiter();
        let lookup = h
            .cache
            .request(KEY, second, &ring, &map, SyncStatus::InSync);
        assert!(matches!(lookup, Lookup::Wait));
        let (snap, _) = h.finished();
        assert_eq!(snap.seq, 1);
        downloading.push(snap);
        assert_eq!(h.cache.live_bytes(), 2 * size);
        assert_eq!(h.generated(), 2);

        // Beyond the bound: the next joiner shares the newest snapshot, older than the reuse
        // window, and catches up from the ring.
        advance(&mut ring);
        let third = h.waiter();
        match h.cache.request(KEY, third, &ring, &map, SyncStatus::InSync) {
            Lookup::Ready(s) => assert_eq!(s.seq, 1),
            Lookup::Wait => panic!("a joiner beyond the bound caused another encode"),
        }
        assert_eq!(h.bounded(SHARED_OLDER), 1);

        // Once the ring no longer continues it, joiners wait; nothing is built meanwhile.
        for _ in 0..3 {
            advance(&mut ring);
        }
        assert!(!ring.holds_from(2));
        let fourth = h.waiter();
        let fifth = h.waiter();
        for w in [fourth, fifth] {
            let lookup = h.cache.request(KEY, w, &ring, &map, SyncStatus::InSync);
            assert!(matches!(lookup, Lookup::Wait));
        }
        assert_eq!(h.bounded(WAITED), 2);
        assert!(h
            .cache
            .admit_deferred(&ring, &map, SyncStatus::InSync, |_| true)
            .is_empty());
        assert!(
            h.cache.pending.is_empty(),
            "an encode started beyond the bound"
        );
        assert!(h.cache.live_bytes() <= bound + size);

        // The downloads finish: the stale cached snapshots go, and the waiters get a new one.
        downloading.clear();
        h.cache.trim(&ring);
        assert_eq!(h.cache.live_bytes(), 0);
        assert!(h
            .cache
            .admit_deferred(&ring, &map, SyncStatus::InSync, |w| *w != fifth)
            .is_empty());
        let (snap, waiters) = h.finished();
        assert_eq!(snap.seq, ring.last_seq());
        assert_eq!(waiters, vec![fourth], "a closed connection's wait was kept");
        assert_eq!(h.generated(), 3);
        assert_eq!(h.cache.live_bytes(), size);
        assert_eq!(h.metrics.snapshot_bytes_live.get(), size as i64);
    }
}
