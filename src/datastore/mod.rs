//! The datastore stage: drivers watch a datastore and report Calico model updates; the
//! [`Batcher`] keeps the canonical map, drops no-ops, and hands immutable, pre-encoded
//! [`DeltaBatch`]es to the reactor. Everything here runs on the datastore thread's tokio runtime.

mod batcher;
pub mod k8s;
pub mod sim;
mod thread;

pub use batcher::{
    BatchLimits, BatchSink, Batcher, EncodeWork, FlushOutcome, ReactorSink, DEFAULT_BATCH_BYTES,
    MAX_BATCH_BYTES,
};
pub use thread::{spawn_datastore_thread, DatastoreHandle, DatastoreThreadConfig, DriverConfig};

use crate::model::{KvUpdate, StateMap, SyncStatus, SyncerType};
use crate::proto::encode::EncodedPart;
use std::sync::Arc;
use tokio::sync::mpsc;

/// What a datastore driver reports to the batcher, in order.
#[derive(Debug, Clone)]
pub enum DriverEvent {
    /// Updates that belong together (all the keys of one object): they always land in the
    /// same batch, so clients never see part of an object.
    Updates(Vec<KvUpdate>),
    Status(SyncStatus),
}

pub type DriverSender = mpsc::Sender<DriverEvent>;
pub type DriverReceiver = mpsc::Receiver<DriverEvent>;

/// An immutable group of updates with its sequence number, already encoded once per syncer
/// type. Shared by the reactor's ring and every client queue that still holds its frames.
#[derive(Debug)]
pub struct DeltaBatch {
    /// Strictly increasing, starting at 1; 0 is the empty state before any batch.
    pub seq: u64,
    /// When the oldest update of the batch reached the daemon (Unix nanoseconds).
    pub received_at: u64,
    /// The datastore status as of this batch.
    pub status: SyncStatus,
    /// Number of updates in the batch, all types together.
    pub update_count: usize,
    /// Each syncer type's frames, `None` where the batch holds nothing for that type.
    pub parts: [Option<EncodedPart>; SyncerType::COUNT],
}

impl DeltaBatch {
    pub fn part(&self, t: SyncerType) -> Option<&EncodedPart> {
        self.parts[t.index()].as_ref()
    }

    /// Bytes this batch keeps alive (both variants of every part).
    pub fn encoded_bytes(&self) -> usize {
        self.parts
            .iter()
            .flatten()
            .map(|p| p.plain.len() + p.compressed.as_ref().map_or(0, |c| c.len()))
            .sum()
    }
}

/// What the datastore thread sends the reactor, in sequence order.
#[derive(Debug)]
pub struct BatchMessage {
    pub batch: Arc<DeltaBatch>,
    /// The canonical map as of `batch.seq`: an O(1) copy of the persistent map, so the reactor
    /// can build a snapshot at exactly this sequence without asking anyone.
    pub state: StateMap,
}
