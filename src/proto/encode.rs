//! The seam between the model and the bytes on the wire: a batch or a snapshot becomes shared,
//! immutable frames here, once per syncer type (and compression variant), and nowhere else.
//! A second wire format (Typha's gob protocol) adds its own functions beside these and its own
//! slot in [`EncodedPart`], so it too encodes each batch once.

use super::codec::*;
use super::messages::*;
use crate::model::{Digest, Entry, Key, StateMap, SyncStatus, SyncerType, Update};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;

/// Encoding settings shared by batches and snapshots.
#[derive(Debug, Clone, Copy)]
pub struct EncodeOptions {
    /// Codec for the compressed variant; `None` disables compression.
    pub codec: Option<Codec>,
    /// `Updates` payloads below this size are never compressed.
    pub compress_min_bytes: usize,
    /// Target uncompressed payload size of a snapshot chunk.
    pub snapshot_chunk_bytes: usize,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            codec: Some(Codec::Zstd),
            compress_min_bytes: 1024,
            snapshot_chunk_bytes: 256 * 1024,
        }
    }
}

/// One syncer type's share of a batch: the frames every client of that type receives for it.
#[derive(Debug, Clone)]
pub struct EncodedPart {
    /// First sequence number this part covers: one past the previous part of the same type, so
    /// a client sees an unbroken chain of sequence ranges.
    pub first_seq: u64,
    pub last_seq: u64,
    pub update_count: usize,
    /// `Updates` (when there are updates) then `SyncStatus` (when the status changed).
    pub plain: Bytes,
    /// The same with the `Updates` frame compressed, when that saves bytes.
    pub compressed: Option<Bytes>,
}

impl EncodedPart {
    /// The frames for a client that does (or does not) accept compression.
    pub fn frames(&self, compressed: bool) -> &Bytes {
        match (&self.compressed, compressed) {
            (Some(c), true) => c,
            _ => &self.plain,
        }
    }
}

fn concat(a: &Bytes, b: Option<&Bytes>) -> Bytes {
    match b {
        None => a.clone(),
        Some(b) => {
            let mut m = BytesMut::with_capacity(a.len() + b.len());
            m.extend_from_slice(a);
            m.extend_from_slice(b);
            m.freeze()
        }
    }
}

/// Encodes one syncer type's part of a batch. `updates` are already filtered to that type.
///
/// An `Updates` frame above [`MAX_SERVER_FRAME`] is refused ([`ProtoError::FrameTooLarge`]):
/// the protocol promises no client ever receives one. The batcher keeps its batches below
/// that by [`updates_frame_bound`], so the refusal is a last line, not the way batches are cut.
pub fn encode_batch_part(
    first_seq: u64,
    last_seq: u64,
    received_at: u64,
    updates: &[&Update],
    status_change: Option<SyncStatus>,
    opts: &EncodeOptions,
) -> Result<EncodedPart, ProtoError> {
    let status = status_change.map(sync_status_frame);
    let (plain, compressed) = if updates.is_empty() {
        (status.clone().unwrap_or_default(), None)
    } else {
        let frame = encode_server_frame(&UpdatesRef {
            first_seq,
            last_seq,
            received_at,
            updates: UpdateSeq::Batch(updates),
        })?;
        let compressed = match opts.codec {
            Some(c) if frame.len() - FRAME_HEADER_LEN >= opts.compress_min_bytes => {
                compress_frame(&frame, c).map(|z| concat(&z, status.as_ref()))
            }
            _ => None,
        };
        (concat(&frame, status.as_ref()), compressed)
    };
    Ok(EncodedPart {
        first_seq,
        last_seq,
        update_count: updates.len(),
        plain,
        compressed,
    })
}

/// Fixed bytes of an `Updates` frame around its entries, at most: the length prefix, the tag,
/// three u64 varints and the entry count (9 bytes each at most), plus a `SyncStatus` frame.
pub const UPDATES_FRAME_OVERHEAD: usize = FRAME_HEADER_LEN + 1 + 4 * 9 + FRAME_HEADER_LEN + 2;

/// The most bytes `u` can take inside an `Updates` frame: its key, value and revision, three
/// length varints (9 bytes each at most), the `Option` byte and the update type.
pub fn update_entry_bound(key: &str, value: Option<&[u8]>, revision: &str) -> usize {
    key.len() + value.map_or(0, <[u8]>::len) + revision.len() + 3 * 9 + 2
}

/// An upper bound on the frames [`encode_batch_part`] writes for entries whose
/// [`update_entry_bound`]s sum to `entries`: what a batch must stay under to be sendable.
pub const fn updates_frame_bound(entries: usize) -> usize {
    entries.saturating_add(UPDATES_FRAME_OVERHEAD)
}

/// A snapshot of one syncer type's view, encoded as shared frames.
#[derive(Debug, Clone)]
pub struct EncodedSnapshot {
    pub syncer: SyncerType,
    pub seq: u64,
    pub codec: Option<Codec>,
    /// `SnapshotChunk` frames then one `SnapshotEnd`.
    pub frames: Vec<Bytes>,
    pub key_count: u64,
    pub digest: Digest,
    /// Bytes before compression, and on the wire.
    pub raw_bytes: u64,
    pub wire_bytes: u64,
}

/// Rough encoded size of an entry, to cut chunks near the target without encoding twice.
fn estimate(k: &Key, e: &Entry) -> usize {
    k.len() + e.value.len() + e.revision.len() + 8
}

/// Encodes `syncer`'s view of `state` as of `seq`, in key order.
pub fn encode_snapshot(
    state: &StateMap,
    seq: u64,
    status: SyncStatus,
    syncer: SyncerType,
    codec: Option<Codec>,
    chunk_bytes: usize,
) -> EncodedSnapshot {
    let mut out = EncodedSnapshot {
        syncer,
        seq,
        codec,
        frames: Vec::new(),
        key_count: 0,
        digest: Digest::default(),
        raw_bytes: 0,
        wire_bytes: 0,
    };
    let mut chunk: Vec<(&Key, &Arc<Entry>)> = Vec::new();
    let mut chunk_size = 0;
    // Upper bound of the chunk's encoded entries: an entry that would take the chunk past
    // `MAX_SERVER_FRAME` starts the next one, whatever the target.
    let mut chunk_bound = 0;
    let flush = |chunk: &mut Vec<(&Key, &Arc<Entry>)>, out: &mut EncodedSnapshot| {
        if chunk.is_empty() {
            return;
        }
        let frame = encode_frame(&SnapshotChunkRef {
            seq,
            updates: UpdateSeq::Snapshot(chunk),
        });
        out.raw_bytes += frame.len() as u64;
        let frame = match codec {
            Some(c) => compress_frame(&frame, c).unwrap_or(frame),
            None => frame,
        };
        out.wire_bytes += frame.len() as u64;
        out.frames.push(frame);
        chunk.clear();
    };
    for (k, e) in state.iter() {
        if !syncer.wants(k) {
            continue;
        }
        out.key_count += 1;
        out.digest.add(k, &e.value);
        let bound = update_entry_bound(k, Some(&e.value), &e.revision);
        if !chunk.is_empty() && updates_frame_bound(chunk_bound + bound) > MAX_SERVER_FRAME {
            flush(&mut chunk, &mut out);
            (chunk_size, chunk_bound) = (0, 0);
        }
        chunk_size += estimate(k, e);
        chunk_bound += bound;
        chunk.push((k, e));
        if chunk_size >= chunk_bytes {
            flush(&mut chunk, &mut out);
            (chunk_size, chunk_bound) = (0, 0);
        }
    }
    flush(&mut chunk, &mut out);
    let end = encode_frame(&ServerMessage::SnapshotEnd {
        seq,
        status,
        key_count: out.key_count,
        digest: out.digest.to_bytes(),
    });
    out.raw_bytes += end.len() as u64;
    out.wire_bytes += end.len() as u64;
    out.frames.push(end);
    out
}
