//! The seam between the model and the bytes on the wire: a batch or a snapshot becomes shared,
//! immutable frames here, once per syncer type and [`WireVariant`], and nowhere else. Every
//! wire format a client can be served in is one variant, with its own slot in [`EncodedPart`]
//! and its own snapshot cache entry, so each is encoded once however many clients take it.

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

/// The forms in which a client can be sent the same shared bytes. A connection takes exactly
/// one for its whole life once its handshake chose it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WireVariant {
    /// typha-rs' own protocol, uncompressed frames.
    NativePlain,
    /// typha-rs' own protocol, large frames compressed with the server's codec (zstd unless
    /// configured otherwise); a frame that would not shrink is sent as in `NativePlain`.
    NativeCompressed,
    /// Typha's gob protocol after a decoder restart to snappy: every message its own snappy
    /// framing chunk.
    TyphaSnappy,
    /// Typha's gob protocol on the client's first, uncompressed gob stream.
    TyphaPlain,
}

impl WireVariant {
    pub const COUNT: usize = 4;
    pub const ALL: [WireVariant; WireVariant::COUNT] = [
        WireVariant::NativePlain,
        WireVariant::NativeCompressed,
        WireVariant::TyphaSnappy,
        WireVariant::TyphaPlain,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WireVariant::NativePlain => "native-plain",
            WireVariant::NativeCompressed => "native-compressed",
            WireVariant::TyphaSnappy => "typha-snappy",
            WireVariant::TyphaPlain => "typha-plain",
        }
    }

    /// The `protocol` label of per-connection metrics.
    pub fn protocol(self) -> &'static str {
        match self {
            WireVariant::NativePlain | WireVariant::NativeCompressed => "native",
            WireVariant::TyphaSnappy | WireVariant::TyphaPlain => "typha",
        }
    }

    /// The native variant for a client served with `codec` (none: plain).
    pub fn native(codec: Option<Codec>) -> WireVariant {
        match codec {
            Some(_) => WireVariant::NativeCompressed,
            None => WireVariant::NativePlain,
        }
    }

    /// The variant whose bytes stand in when this one was not worth encoding separately.
    fn fallback(self) -> Option<WireVariant> {
        match self {
            WireVariant::NativeCompressed => Some(WireVariant::NativePlain),
            _ => None,
        }
    }
}

/// One syncer type's share of a batch: the frames every client of that type receives for it,
/// in each wire variant.
#[derive(Debug, Clone)]
pub struct EncodedPart {
    /// First sequence number this part covers: one past the previous part of the same type, so
    /// a client sees an unbroken chain of sequence ranges.
    pub first_seq: u64,
    pub last_seq: u64,
    pub update_count: usize,
    /// Indexed by [`WireVariant::index`]. Native: `Updates` (when there are updates) then
    /// `SyncStatus` (when the status changed); `NativeCompressed` is set only when compressing
    /// the `Updates` frame saved bytes.
    pub variants: [Option<Bytes>; WireVariant::COUNT],
}

impl EncodedPart {
    /// The bytes for a client served in `variant`; `None` if this part was not encoded in it.
    pub fn frames(&self, variant: WireVariant) -> Option<&Bytes> {
        self.variants[variant.index()]
            .as_ref()
            .or_else(|| self.variants[variant.fallback()?.index()].as_ref())
    }

    /// The native uncompressed frames (always encoded).
    pub fn plain(&self) -> &Bytes {
        static EMPTY: Bytes = Bytes::new();
        self.variants[WireVariant::NativePlain.index()]
            .as_ref()
            .unwrap_or(&EMPTY)
    }

    /// The native compressed frames, when compressing saved bytes.
    pub fn compressed(&self) -> Option<&Bytes> {
        self.variants[WireVariant::NativeCompressed.index()].as_ref()
    }

    /// Bytes this part keeps alive, all variants together.
    pub fn encoded_bytes(&self) -> usize {
        self.variants.iter().flatten().map(Bytes::len).sum()
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
    let mut variants: [Option<Bytes>; WireVariant::COUNT] = Default::default();
    variants[WireVariant::NativePlain.index()] = Some(plain);
    variants[WireVariant::NativeCompressed.index()] = compressed;
    Ok(EncodedPart {
        first_seq,
        last_seq,
        update_count: updates.len(),
        variants,
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
    pub variant: WireVariant,
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
        variant: WireVariant::native(codec),
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
