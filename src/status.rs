//! State that the HTTP endpoints report: health of the two threads, sync status, and the
//! daemon's `(sequence, digest)` per syncer type, so anyone can check a client against it.
//!
//! Written by the pipeline stages, read by the HTTP listener; nothing here feeds back into the
//! data path.

use crate::model::{Digest, SyncStatus, SyncerType};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Blocks the calling thread if a test asked for a stall (one relaxed load otherwise).
#[cfg(any(test, feature = "fault-injection"))]
fn test_stall(ms: &AtomicU64) {
    if ms.load(Ordering::Relaxed) == 0 {
        return;
    }
    let n = ms.swap(0, Ordering::Relaxed);
    if n > 0 {
        std::thread::sleep(Duration::from_millis(n));
    }
}

/// `12.3s`: whole tenths are enough for an operator reading a probe's answer.
fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// One syncer type's view at a sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewDigest {
    pub key_count: u64,
    pub digest: Digest,
}

/// The digests of every syncer type as of one sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigestRecord {
    pub seq: u64,
    pub views: [ViewDigest; SyncerType::COUNT],
}

/// How many recent sequence numbers keep their digests, so a client that is a little behind
/// can still be checked at the sequence it has reached.
pub const DIGEST_HISTORY: usize = 4096;

#[derive(Debug)]
pub struct StatusBoard {
    started: Instant,
    sync_status: AtomicU8,
    /// Milliseconds since `started` at the last reactor loop iteration.
    reactor_beat_ms: AtomicU64,
    /// Milliseconds since `started` at the last datastore-thread tick.
    datastore_beat_ms: AtomicU64,
    reactor_stopped: AtomicBool,
    shutting_down: AtomicBool,
    /// Milliseconds since `started` at the last successful contact with the datastore; only
    /// meaningful once `datastore_contact_tracked` is set (by a driver that talks to a server).
    datastore_contact_ms: AtomicU64,
    datastore_contact_tracked: AtomicBool,
    /// Test-only: milliseconds the named thread should block at its next heartbeat.
    #[cfg(any(test, feature = "fault-injection"))]
    stall_reactor_ms: AtomicU64,
    #[cfg(any(test, feature = "fault-injection"))]
    stall_datastore_ms: AtomicU64,
    connections: AtomicU64,
    max_connections: AtomicU64,
    digests: Mutex<VecDeque<DigestRecord>>,
    /// Supervised parts that failed and have not recovered yet, with when they went down.
    down: Mutex<BTreeMap<String, Instant>>,
    /// A part down for longer than this fails `/readiness` (milliseconds).
    down_unready_ms: AtomicU64,
}

/// How long a supervised part may stay down before `/readiness` fails, unless configured.
pub const DEFAULT_COMPONENT_DOWN_UNREADY: Duration = Duration::from_secs(10);

impl Default for StatusBoard {
    fn default() -> Self {
        Self::new()
    }
}

impl StatusBoard {
    pub fn new() -> Self {
        StatusBoard {
            started: Instant::now(),
            sync_status: AtomicU8::new(SyncStatus::WaitingForDatastore as u8),
            reactor_beat_ms: AtomicU64::new(0),
            datastore_beat_ms: AtomicU64::new(0),
            reactor_stopped: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            datastore_contact_ms: AtomicU64::new(0),
            datastore_contact_tracked: AtomicBool::new(false),
            #[cfg(any(test, feature = "fault-injection"))]
            stall_reactor_ms: AtomicU64::new(0),
            #[cfg(any(test, feature = "fault-injection"))]
            stall_datastore_ms: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            max_connections: AtomicU64::new(u64::MAX),
            digests: Mutex::new(VecDeque::with_capacity(DIGEST_HISTORY)),
            down: Mutex::new(BTreeMap::new()),
            down_unready_ms: AtomicU64::new(DEFAULT_COMPONENT_DOWN_UNREADY.as_millis() as u64),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn set_sync_status(&self, s: SyncStatus) {
        self.sync_status.store(s as u8, Ordering::Relaxed);
    }

    pub fn sync_status(&self) -> SyncStatus {
        match self.sync_status.load(Ordering::Relaxed) {
            2 => SyncStatus::InSync,
            1 => SyncStatus::ResyncInProgress,
            _ => SyncStatus::WaitingForDatastore,
        }
    }

    pub fn reactor_beat(&self) {
        #[cfg(any(test, feature = "fault-injection"))]
        test_stall(&self.stall_reactor_ms);
        self.reactor_beat_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    pub fn datastore_beat(&self) {
        crate::fault_point!("datastore-thread-panic");
        #[cfg(any(test, feature = "fault-injection"))]
        test_stall(&self.stall_datastore_ms);
        self.datastore_beat_ms
            .store(self.now_ms(), Ordering::Relaxed);
    }

    pub fn set_reactor_stopped(&self) {
        self.reactor_stopped.store(true, Ordering::Relaxed);
    }

    /// From now on not ready, so a Service stops sending new clients here.
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// How long a supervised part may stay down before `/readiness` fails.
    pub fn set_component_down_unready(&self, d: Duration) {
        self.down_unready_ms.store(
            d.as_millis().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }

    /// Records that the supervised part `component` failed; the first failure of an outage
    /// starts its clock, later ones (a restart that failed again) keep it.
    pub fn component_down(&self, component: &str) {
        let mut d = self.down.lock().unwrap_or_else(|p| p.into_inner());
        d.entry(component.to_owned()).or_insert_with(Instant::now);
    }

    /// Records that `component` works again (its restart has caught up).
    pub fn component_up(&self, component: &str) {
        let mut d = self.down.lock().unwrap_or_else(|p| p.into_inner());
        d.remove(component);
    }

    /// The part down the longest, and for how long.
    pub fn longest_down(&self) -> Option<(String, Duration)> {
        let d = self.down.lock().unwrap_or_else(|p| p.into_inner());
        d.iter()
            .map(|(c, since)| (c.clone(), since.elapsed()))
            .max_by_key(|(_, age)| *age)
    }

    pub fn set_connections(&self, n: usize, max: usize) {
        self.connections.store(n as u64, Ordering::Relaxed);
        self.max_connections.store(max as u64, Ordering::Relaxed);
    }

    fn age(&self, beat: &AtomicU64) -> Duration {
        Duration::from_millis(self.now_ms().saturating_sub(beat.load(Ordering::Relaxed)))
    }

    /// Turns on the datastore-reachability check of [`StatusBoard::liveness`]: a driver that
    /// talks to a server calls this once, then [`StatusBoard::datastore_contact`] on every
    /// successful exchange. The clock starts now, so a server never reached counts too.
    pub fn track_datastore_contact(&self) {
        self.datastore_contact_ms
            .store(self.now_ms(), Ordering::Relaxed);
        self.datastore_contact_tracked
            .store(true, Ordering::Relaxed);
    }

    /// Records a successful exchange with the datastore.
    pub fn datastore_contact(&self) {
        self.datastore_contact_ms
            .store(self.now_ms(), Ordering::Relaxed);
    }

    /// How long the datastore has been unreachable (time since the last successful contact),
    /// or `None` when no driver tracks it.
    pub fn datastore_unreachable_for(&self) -> Option<Duration> {
        self.datastore_contact_tracked
            .load(Ordering::Relaxed)
            .then(|| self.age(&self.datastore_contact_ms))
    }

    /// Live while both threads have made progress within `stall`, the datastore (where
    /// tracked) has answered within `unreachable`, and no supervised part has been down for
    /// longer than `unreachable`. A replica that fails this cannot recover on
    /// its own, so Kubernetes should restart it.
    pub fn liveness(&self, stall: Duration, unreachable: Duration) -> Result<(), String> {
        if self.reactor_stopped.load(Ordering::Relaxed) {
            return Err("reactor stopped".into());
        }
        let r = self.age(&self.reactor_beat_ms);
        if r > stall {
            return Err(format!("reactor stalled for {}", secs(r)));
        }
        let d = self.age(&self.datastore_beat_ms);
        if d > stall {
            return Err(format!("datastore thread stalled for {}", secs(d)));
        }
        if let Some(u) = self.datastore_unreachable_for() {
            if u > unreachable {
                return Err(format!("datastore unreachable for {}", secs(u)));
            }
        }
        // A part its supervisor cannot bring back: as stale as an unreachable datastore.
        if let Some((c, age)) = self.longest_down() {
            if age > unreachable {
                return Err(format!("{c} down for {}", secs(age)));
            }
        }
        Ok(())
    }

    /// Test-only (the `fault-injection` feature): makes the reactor thread block for `d` at its
    /// next heartbeat, so tests can check that a stuck thread fails `/liveness`.
    #[cfg(any(test, feature = "fault-injection"))]
    #[doc(hidden)]
    pub fn stall_reactor_for_test(&self, d: Duration) {
        self.stall_reactor_ms
            .store(d.as_millis() as u64, Ordering::Relaxed);
    }

    /// Test-only: as [`StatusBoard::stall_reactor_for_test`], for the datastore thread.
    #[cfg(any(test, feature = "fault-injection"))]
    #[doc(hidden)]
    pub fn stall_datastore_for_test(&self, d: Duration) {
        self.stall_datastore_ms
            .store(d.as_millis() as u64, Ordering::Relaxed);
    }

    /// Ready while in sync with the datastore, no supervised part has been down for longer
    /// than its limit ([`StatusBoard::set_component_down_unready`]), and below the connection
    /// limit.
    pub fn readiness(&self) -> Result<(), String> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err("shutting down".into());
        }
        let s = self.sync_status();
        if s != SyncStatus::InSync {
            return Err(format!("datastore status is {}", s.as_str()));
        }
        if let Some((c, age)) = self.longest_down() {
            let limit = Duration::from_millis(self.down_unready_ms.load(Ordering::Relaxed));
            if age > limit {
                return Err(format!("{c} down for {}", secs(age)));
            }
        }
        let (n, max) = (
            self.connections.load(Ordering::Relaxed),
            self.max_connections.load(Ordering::Relaxed),
        );
        if n >= max {
            return Err(format!("at the connection limit ({n}/{max})"));
        }
        Ok(())
    }

    pub fn record_digests(&self, rec: DigestRecord) {
        let mut d = self.digests.lock().unwrap_or_else(|p| p.into_inner());
        // The same seq again: a batch whose send failed is being retried, with the updates
        // that arrived meanwhile; the new record is the one that goes out.
        if let Some(last) = d.back_mut().filter(|l| l.seq == rec.seq) {
            *last = rec;
            return;
        }
        if d.len() == DIGEST_HISTORY {
            d.pop_front();
        }
        d.push_back(rec);
    }

    /// The newest record, or the one for `seq` if it is still held. A sequence number between
    /// two records (a status-only batch is still recorded, so none are skipped) is not found.
    pub fn digests(&self, seq: Option<u64>) -> Option<DigestRecord> {
        let d = self.digests.lock().unwrap_or_else(|p| p.into_inner());
        match seq {
            None => d.back().copied(),
            Some(s) => {
                let first = d.front()?.seq;
                let idx = usize::try_from(s.checked_sub(first)?).ok()?;
                d.get(idx).filter(|r| r.seq == s).copied()
            }
        }
    }
}
