//! What the datastore stage hands the reactor: immutable, pre-encoded batches. Both sides import
//! this module and nothing of each other, so data flows one way (datastore -> batch -> reactor)
//! and the reactor never depends on a datastore type.

use crate::model::{StateMap, SyncStatus, SyncerType};
use crate::proto::encode::EncodedPart;
use std::sync::{Arc, Mutex, PoisonError};

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

/// Whether the datastore stage must encode the legacy (v3.31 policy key) Typha variants, shared
/// by the reactor, which counts the legacy clients, and the batcher, which asks before encoding
/// each batch. The batcher encodes them only while the count is above zero, so they cost
/// nothing when no old Felix is connected.
///
/// The handover is exact: the batcher decides per sequence number under the lock and records
/// the last one it encoded without them. A client registered after that decision must start
/// from a snapshot at or after [`LegacyKeyDemand::register`]'s answer, and then every batch it
/// is sent carries the legacy variants.
#[derive(Debug, Default)]
pub struct LegacyKeyDemand {
    inner: Mutex<DemandState>,
}

#[derive(Debug, Default)]
struct DemandState {
    clients: usize,
    /// The newest sequence number encoded without the legacy variants.
    last_without: u64,
}

impl LegacyKeyDemand {
    fn state(&self) -> std::sync::MutexGuard<'_, DemandState> {
        // The state is two integers, each write complete: a poisoned lock still holds valid data.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A legacy client arrived. Returns the sequence number its snapshot must be at or after:
    /// every later batch carries the legacy variants.
    pub fn register(&self) -> u64 {
        let mut s = self.state();
        s.clients += 1;
        s.last_without
    }

    /// A legacy client left (it was counted by [`register`](Self::register)). Returns how many
    /// remain.
    pub fn unregister(&self) -> usize {
        let mut s = self.state();
        s.clients = s.clients.saturating_sub(1);
        s.clients
    }

    /// Connected legacy clients.
    pub fn clients(&self) -> usize {
        self.state().clients
    }

    /// Asked by the batcher before it encodes batch `seq`: whether to encode the legacy
    /// variants. A `false` is recorded, so a client registering later waits past `seq`.
    pub fn encode_legacy(&self, seq: u64) -> bool {
        let mut s = self.state();
        if s.clients > 0 {
            return true;
        }
        s.last_without = s.last_without.max(seq);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::LegacyKeyDemand;

    #[test]
    fn legacy_demand_hands_over_at_the_last_sequence_encoded_without() {
        let d = LegacyKeyDemand::default();
        assert!(!d.encode_legacy(1));
        assert!(!d.encode_legacy(2));
        // Batch 2 went out without the variant: a client arriving now starts after it.
        assert_eq!(d.register(), 2);
        assert!(d.encode_legacy(3));
        // A second client while encoding is on: the handover point does not move.
        assert_eq!(d.register(), 2);
        assert_eq!(d.clients(), 2);
        assert_eq!(d.unregister(), 1);
        assert!(d.encode_legacy(4));
        assert_eq!(d.unregister(), 0);
        assert!(!d.encode_legacy(5));
        // Retried sequence numbers (a full channel) never move the mark back.
        assert!(!d.encode_legacy(4));
        assert_eq!(d.register(), 5);
        assert_eq!(d.unregister(), 0);
        assert_eq!(d.unregister(), 0, "an extra unregister does not underflow");
    }
}
