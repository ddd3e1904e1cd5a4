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
use std::sync::Arc;
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

/// A connection waiting for a snapshot; `conn_id` guards against slab slot reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiter {
    pub slot: usize,
    pub conn_id: u64,
}

pub enum Lookup {
    Ready(Arc<EncodedSnapshot>),
    Wait,
}

pub struct SnapshotCache {
    cached: HashMap<SnapshotKey, Cached>,
    pending: HashMap<SnapshotKey, Vec<Waiter>>,
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
    /// the native compressed variant's.
    pub fn new(
        reuse_window: Duration,
        chunk_bytes: usize,
        codec: Option<Codec>,
        metrics: Arc<Metrics>,
        board: Arc<StatusBoard>,
        wake: impl Fn() + Send + 'static,
    ) -> std::io::Result<Self> {
        let (jobs_tx, jobs_rx) = crossbeam_channel::unbounded::<SnapshotJob>();
        let (res_tx, res_rx) = crossbeam_channel::unbounded();
        let restarts = metrics.component_restarts.with_label_values(&[ENCODER]);
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
    /// encode starts from `state` (the map as of the ring's newest sequence) when needed. A
    /// cached snapshot older than `min_seq` is not served (a legacy client's batches start
    /// later; the caller checks a finished encode the same way).
    pub fn request(
        &mut self,
        key: SnapshotKey,
        waiter: Waiter,
        min_seq: u64,
        ring: &Ring,
        state: &StateMap,
        status: SyncStatus,
    ) -> Lookup {
        if let Some(c) = self.cached.get(&key) {
            let current = c.snap.seq == ring.last_seq();
            if c.snap.seq >= min_seq
                && ring.holds_from(c.snap.seq + 1)
                && (current || c.built_at.elapsed() <= self.reuse_window)
            {
                self.metrics
                    .snapshots_reused
                    .with_label_values(&[key.0.as_str()])
                    .inc();
                return Lookup::Ready(c.snap.clone());
            }
        }
        if let Some(w) = self.pending.get_mut(&key) {
            w.push(waiter);
            return Lookup::Wait;
        }
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
        self.pending.insert(key, vec![waiter]);
        Lookup::Wait
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
