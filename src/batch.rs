//! What the datastore stage hands the reactor: immutable, pre-encoded batches. Both sides import
//! this module and nothing of each other, so data flows one way (datastore -> batch -> reactor)
//! and the reactor never depends on a datastore type.

use crate::model::{StateMap, SyncStatus, SyncerType};
use crate::proto::encode::EncodedPart;
use std::sync::Arc;

/// An immutable group of updates with its sequence number, already encoded once per syncer
/// type and wire variant. Shared by the reactor's ring and every client that still writes it.
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

    /// Bytes this batch keeps alive (every variant of every part).
    pub fn encoded_bytes(&self) -> usize {
        self.parts
            .iter()
            .flatten()
            .map(EncodedPart::encoded_bytes)
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
