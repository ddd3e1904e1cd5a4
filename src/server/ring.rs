//! The ring of recent batches: the one copy of every recent frame that all clients write from.
//!
//! Clients do not queue frames; each holds a cursor (the next sequence number it needs) into
//! this ring. A client's memory therefore does not grow when it falls behind; the ring's bounds
//! are the backlog limit, and a client whose cursor falls off the end is too slow.

use crate::batch::DeltaBatch;
use crate::model::SyncerType;
use crate::proto::encode::WireVariant;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

/// A batch as the reactor holds it.
#[derive(Debug)]
pub struct RingEntry {
    pub batch: Arc<DeltaBatch>,
    /// When the reactor received it, for the queue-to-socket latency.
    pub arrived: Instant,
}

#[derive(Debug)]
pub struct Ring {
    entries: VecDeque<RingEntry>,
    bytes: usize,
    max_batches: usize,
    max_bytes: usize,
    /// Sequence number of the newest batch (0 before any).
    last_seq: u64,
}

impl Ring {
    pub fn new(max_batches: usize, max_bytes: usize) -> Self {
        Ring {
            entries: VecDeque::new(),
            bytes: 0,
            max_batches: max_batches.max(1),
            max_bytes,
            last_seq: 0,
        }
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The oldest sequence number still held; `last_seq + 1` when empty.
    pub fn first_seq(&self) -> u64 {
        self.entries
            .front()
            .map_or(self.last_seq + 1, |e| e.batch.seq)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Appends the next batch and evicts from the old end to stay within bounds (the newest
    /// batch is always kept). Sequence numbers must be contiguous.
    pub fn push(&mut self, batch: Arc<DeltaBatch>, arrived: Instant) {
        debug_assert!(self.last_seq == 0 || batch.seq == self.last_seq + 1);
        self.last_seq = batch.seq;
        self.bytes += batch.encoded_bytes();
        self.entries.push_back(RingEntry { batch, arrived });
        while self.entries.len() > 1
            && (self.entries.len() > self.max_batches || self.bytes > self.max_bytes)
        {
            if let Some(e) = self.entries.pop_front() {
                self.bytes -= e.batch.encoded_bytes();
            }
        }
    }

    /// Whether a client needing `next_seq` onwards can still be served from the ring.
    pub fn holds_from(&self, next_seq: u64) -> bool {
        next_seq >= self.first_seq()
    }

    pub fn get(&self, seq: u64) -> Option<&RingEntry> {
        let idx = usize::try_from(seq.checked_sub(self.entries.front()?.batch.seq)?).ok()?;
        self.entries.get(idx)
    }

    /// The entries from `next_seq` on that carry a part for `syncer`, with its bytes in
    /// `variant`.
    pub fn parts_from(
        &self,
        next_seq: u64,
        syncer: SyncerType,
        variant: WireVariant,
    ) -> impl Iterator<Item = (&RingEntry, &Bytes)> {
        let start = match self.entries.front() {
            Some(f) => usize::try_from(next_seq.saturating_sub(f.batch.seq)).unwrap_or(usize::MAX),
            None => 0,
        };
        self.entries
            .range(start.min(self.entries.len())..)
            .filter_map(move |e| {
                e.batch
                    .part(syncer)
                    .and_then(|p| p.frames(variant))
                    .map(|b| (e, b))
            })
    }
}
