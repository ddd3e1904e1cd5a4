//! The seam between the model and the bytes on the wire: a batch or a snapshot becomes shared,
//! immutable frames here, once per syncer type and [`WireVariant`], and nowhere else. Every
//! wire format a client can be served in is one variant, with its own slot in [`EncodedPart`]
//! and its own snapshot cache entry, so each is encoded once however many clients take it.

use super::codec::*;
use super::messages::*;
use super::typha;
use crate::model::{Digest, Entry, Key, StateMap, SyncStatus, SyncerType, Update, UpdateType};
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
    /// `TyphaSnappy` with policy keys in the v3.31 form ([`typha::legacy_keys`]), for a Felix
    /// that predates `SupportsModernPolicyKeys`. Encoded only while such a client is connected.
    TyphaSnappyLegacy,
    /// `TyphaPlain` with policy keys in the v3.31 form; as `TyphaSnappyLegacy`.
    TyphaPlainLegacy,
}

impl WireVariant {
    pub const COUNT: usize = 6;
    pub const ALL: [WireVariant; WireVariant::COUNT] = [
        WireVariant::NativePlain,
        WireVariant::NativeCompressed,
        WireVariant::TyphaSnappy,
        WireVariant::TyphaPlain,
        WireVariant::TyphaSnappyLegacy,
        WireVariant::TyphaPlainLegacy,
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
            WireVariant::TyphaSnappyLegacy => "typha-snappy-v3.31-keys",
            WireVariant::TyphaPlainLegacy => "typha-plain-v3.31-keys",
        }
    }

    /// The Typha variant: snappy (after a decoder restart) or plain, with policy keys in the
    /// v3.31 form or not.
    pub fn typha(snappy: bool, legacy_keys: bool) -> WireVariant {
        match (snappy, legacy_keys) {
            (true, false) => WireVariant::TyphaSnappy,
            (false, false) => WireVariant::TyphaPlain,
            (true, true) => WireVariant::TyphaSnappyLegacy,
            (false, true) => WireVariant::TyphaPlainLegacy,
        }
    }

    /// Whether the Typha messages of this variant are snappy chunks.
    pub fn is_snappy(self) -> bool {
        matches!(
            self,
            WireVariant::TyphaSnappy | WireVariant::TyphaSnappyLegacy
        )
    }

    /// Whether policy keys go out in the v3.31 form.
    pub fn legacy_keys(self) -> bool {
        matches!(
            self,
            WireVariant::TyphaSnappyLegacy | WireVariant::TyphaPlainLegacy
        )
    }

    /// Which policy-key form a client of this variant gets (logged per connection).
    pub fn key_form(self) -> &'static str {
        if self.legacy_keys() {
            "v3.31"
        } else {
            "v3.32"
        }
    }

    /// The `protocol` label of per-connection metrics.
    pub fn protocol(self) -> &'static str {
        match self {
            WireVariant::NativePlain | WireVariant::NativeCompressed => "native",
            WireVariant::TyphaSnappy
            | WireVariant::TyphaPlain
            | WireVariant::TyphaSnappyLegacy
            | WireVariant::TyphaPlainLegacy => "typha",
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

    /// The variant with modern policy keys that a legacy variant is encoded from.
    fn modern_keys(self) -> WireVariant {
        match self {
            WireVariant::TyphaSnappyLegacy => WireVariant::TyphaSnappy,
            WireVariant::TyphaPlainLegacy => WireVariant::TyphaPlain,
            v => v,
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
    /// the `Updates` frame saved bytes. The legacy variants are set only when the part holds
    /// a policy key and a legacy client was connected when it was encoded.
    pub variants: [Option<Bytes>; WireVariant::COUNT],
    /// The part was encoded for legacy clients too and holds no policy key, so the legacy
    /// variants are the modern Typha bytes (shared, not copied).
    pub legacy_same_as_modern: bool,
}

impl EncodedPart {
    /// The bytes for a client served in `variant`; `None` if this part was not encoded in it.
    pub fn frames(&self, variant: WireVariant) -> Option<&Bytes> {
        if variant.legacy_keys() && self.legacy_same_as_modern {
            return self.variants[variant.modern_keys().index()].as_ref();
        }
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
    encode_batch_part_with_legacy(
        first_seq,
        last_seq,
        received_at,
        updates,
        status_change,
        opts,
        None,
    )
}

/// [`encode_batch_part`], plus the legacy Typha variants when `legacy_from` is set (while a
/// v3.31 Felix is connected): the map as of the previous batch, what every client holds before
/// this part, from which a deletion's policy tier is taken.
pub fn encode_batch_part_with_legacy(
    first_seq: u64,
    last_seq: u64,
    received_at: u64,
    updates: &[&Update],
    status_change: Option<SyncStatus>,
    opts: &EncodeOptions,
    legacy_from: Option<&StateMap>,
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
    let gob = typha_delta_gob(updates.iter().map(|u| typha_update(u)), status_change);
    variants[WireVariant::TyphaSnappy.index()] = Some(snappy_framed(&gob));
    variants[WireVariant::TyphaPlain.index()] = Some(gob);
    let mut legacy_same_as_modern = false;
    if let Some(before) = legacy_from {
        match legacy_delta_gob(updates, status_change, before) {
            Some(gob) => {
                variants[WireVariant::TyphaSnappyLegacy.index()] = Some(snappy_framed(&gob));
                variants[WireVariant::TyphaPlainLegacy.index()] = Some(gob);
            }
            None => legacy_same_as_modern = true,
        }
    }
    Ok(EncodedPart {
        first_seq,
        last_seq,
        update_count: updates.len(),
        variants,
        legacy_same_as_modern,
    })
}

fn snappy_framed(gob: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(gob.len() / 2 + 64);
    typha::snappy::frame_chunks(gob, &mut framed);
    framed.freeze()
}

/// The Typha delta for a v3.31 Felix, or `None` when no update holds a policy key (the modern
/// bytes serve it as they are). `before` gives the value each client holds for a key.
fn legacy_delta_gob(
    updates: &[&Update],
    status_change: Option<SyncStatus>,
    before: &StateMap,
) -> Option<Bytes> {
    use typha::legacy_keys::{is_modern_policy_key, legacy_update, LegacyUpdate};
    if !updates.iter().any(|u| is_modern_policy_key(&u.key)) {
        return None;
    }
    // Owned keys first, then references into them: a moved policy becomes two updates.
    let mut translated: Vec<(Option<String>, Option<String>)> = Vec::with_capacity(updates.len());
    for u in updates {
        let previous = before.get(u.key.as_ref()).map(|e| &e.value[..]);
        translated.push(match legacy_update(&u.key, u.value.as_deref(), previous) {
            LegacyUpdate::Unchanged => (None, None),
            LegacyUpdate::Rekeyed { key } => (None, Some(key)),
            LegacyUpdate::Moved { removed, key } => (Some(removed), Some(key)),
        });
    }
    let mut out: Vec<typha::SerializedUpdateRef<'_>> = Vec::with_capacity(updates.len());
    for (u, (removed, key)) in updates.iter().zip(&translated) {
        if let Some(removed) = removed {
            out.push(typha::SerializedUpdateRef {
                key: removed,
                value: None,
                revision: &u.revision,
                v3_resource_version: "",
                ttl_nanos: 0,
                update_type: typha::UPDATE_TYPE_DELETED,
            });
        }
        let mut t = typha_update(u);
        if let Some(key) = key {
            t.key = key;
            if removed.is_some() {
                t.update_type = typha::UPDATE_TYPE_NEW;
            }
        }
        out.push(t);
    }
    Some(typha_delta_gob(out.into_iter(), status_change))
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

/// Most updates in one Typha `MsgKVs`: Typha's `ServerMaxMessageSize` for streamed snapshots
/// and deltas.
pub const TYPHA_KVS_PER_MESSAGE: usize = 100;
/// Most updates in one `MsgKVs` of a binary (snappy) snapshot, as Typha writes them.
pub const TYPHA_BINARY_SNAPSHOT_KVS_PER_MESSAGE: usize = 1000;
/// The restart that ends a binary snapshot; Felix logs the text.
pub const TYPHA_SNAPSHOT_END_RESTART: &str = "End of compressed snapshot.";

/// The gob messages of one Typha delta: `MsgKVs` of the updates (at most
/// [`TYPHA_KVS_PER_MESSAGE`] each), then `MsgSyncStatus` when the status changed. No preamble:
/// these use the fixed type ids every Typha stream of ours opens with.
fn typha_delta_gob<'a>(
    updates: impl Iterator<Item = typha::SerializedUpdateRef<'a>>,
    status_change: Option<SyncStatus>,
) -> Bytes {
    let mut out = BytesMut::new();
    let mut chunk = Vec::with_capacity(TYPHA_KVS_PER_MESSAGE);
    for u in updates {
        chunk.push(u);
        if chunk.len() == TYPHA_KVS_PER_MESSAGE {
            typha::encode_kvs_into(&mut out, chunk.iter().cloned());
            chunk.clear();
        }
    }
    if !chunk.is_empty() {
        typha::encode_kvs_into(&mut out, chunk.iter().cloned());
    }
    if let Some(status) = status_change {
        out.extend_from_slice(&typha::encode_sync_status(status as u8));
    }
    out.freeze()
}

/// Typha's `V3ResourceVersion`: the revision, for keys of v3 resources (whose JSON value carries
/// no resourceVersion of its own); empty otherwise, and empty for profiles too: Calico's
/// profile conversion leaves the v3 Profile's resourceVersion unset (calico-typha v3.32.1 sends
/// `""` for every profile in a snapshot).
fn v3_resource_version<'a>(key: &str, revision: &'a str) -> &'a str {
    if key.starts_with("/calico/resources/v3/")
        && !key.starts_with("/calico/resources/v3/projectcalico.org/profiles/")
    {
        revision
    } else {
        ""
    }
}

/// One delta as Typha serialises it: the real update type, no value for a deletion.
fn typha_update(u: &Update) -> typha::SerializedUpdateRef<'_> {
    typha::SerializedUpdateRef {
        key: &u.key,
        value: u.value.as_deref(),
        revision: &u.revision,
        v3_resource_version: v3_resource_version(&u.key, &u.revision),
        ttl_nanos: 0,
        update_type: match u.update_type {
            UpdateType::New => typha::UPDATE_TYPE_NEW,
            UpdateType::Updated => typha::UPDATE_TYPE_UPDATED,
            UpdateType::Deleted => typha::UPDATE_TYPE_DELETED,
        },
    }
}

/// The snapshot entries of `chunk`, each under the key its client is sent.
fn typha_snapshot_entries<'a>(
    chunk: &'a [(&'a Key, Option<String>, &'a Arc<Entry>)],
) -> Vec<typha::SerializedUpdateRef<'a>> {
    chunk
        .iter()
        .map(|(k, l, e)| typha_snapshot_entry(k, l.as_deref().unwrap_or(k), e))
        .collect()
}

/// One snapshot entry as Typha serialises it: always `KVNew`. `key` is the entry's key as the
/// client is sent it (a policy key in the v3.31 form for a legacy client).
fn typha_snapshot_entry<'a>(
    k: &'a Key,
    key: &'a str,
    e: &'a Entry,
) -> typha::SerializedUpdateRef<'a> {
    typha::SerializedUpdateRef {
        key,
        value: Some(&e.value),
        revision: &e.revision,
        v3_resource_version: v3_resource_version(k, &e.revision),
        ttl_nanos: 0,
        update_type: typha::UPDATE_TYPE_NEW,
    }
}

/// A Typha `MsgSyncStatus` in `variant` (snappy chunk or plain gob).
pub fn typha_sync_status(status: SyncStatus, variant: WireVariant) -> Bytes {
    typha_message(typha::encode_sync_status(status as u8), variant)
}

/// A Typha `MsgPing` in `variant`.
pub fn typha_ping(timestamp: typha::GoTime, variant: WireVariant) -> Bytes {
    typha_message(typha::encode_ping(timestamp), variant)
}

fn typha_message(gob: Bytes, variant: WireVariant) -> Bytes {
    if variant.is_snappy() {
        let mut out = BytesMut::with_capacity(gob.len() + 16);
        typha::snappy::frame_chunks(&gob, &mut out);
        out.freeze()
    } else {
        gob
    }
}

/// Encodes `syncer`'s view of `state` as of `seq` for Typha clients, in key order, every entry
/// `KVNew`:
/// - `TyphaSnappy`: a complete binary snapshot stream, which a client reads right after the
///   decoder restart that announced it: the snappy stream identifier, then chunks holding a
///   fresh gob stream (the preamble, `MsgKVs` of up to 1000 updates, and a closing
///   `MsgDecoderRestart` back to a fresh snappy stream).
/// - `TyphaPlain`: `MsgKVs` of up to 100 updates on the client's first gob stream (whose
///   preamble went out before the `ServerHello`), then `MsgSyncStatus` unless the status is
///   `WaitForDatastore`, as Typha sends it after a streamed snapshot.
/// - `TyphaSnappyLegacy` / `TyphaPlainLegacy`: the same, with each policy key in the v3.31 form
///   ([`typha::legacy_keys`]).
pub fn encode_typha_snapshot(
    state: &StateMap,
    seq: u64,
    status: SyncStatus,
    syncer: SyncerType,
    variant: WireVariant,
) -> EncodedSnapshot {
    let mut out = EncodedSnapshot {
        syncer,
        seq,
        variant,
        codec: None,
        frames: Vec::new(),
        key_count: 0,
        digest: Digest::default(),
        raw_bytes: 0,
        wire_bytes: 0,
        status,
        live_prefix: None,
    };
    let binary = variant.is_snappy();
    let legacy = variant.legacy_keys();
    let per_message = if binary {
        TYPHA_BINARY_SNAPSHOT_KVS_PER_MESSAGE
    } else {
        TYPHA_KVS_PER_MESSAGE
    };
    let mut gob = BytesMut::new();
    if binary {
        gob.extend_from_slice(&typha::server_preamble());
    }
    // Each entry with the key its client is sent: the v3.31 form of a policy key for a legacy
    // client, which reads the tier from the value (a snapshot has no deletions).
    let mut chunk: Vec<(&Key, Option<String>, &Arc<Entry>)> = Vec::with_capacity(per_message);
    let sent_key = |k: &Key, e: &Entry| {
        if legacy {
            typha::legacy_keys::legacy_policy_key(k, Some(&e.value), None)
        } else {
            None
        }
    };
    let mut frames = Vec::new();
    // Each message is framed on its own (snappy chunks are independent), so a frame is a
    // whole number of messages and the outbox can write the snapshot frame by frame.
    let emit = |gob: &mut BytesMut, frames: &mut Vec<Bytes>, out: &mut EncodedSnapshot| {
        if gob.is_empty() {
            return;
        }
        let raw = gob.split().freeze();
        out.raw_bytes += raw.len() as u64;
        let wire = if binary {
            let mut framed = BytesMut::with_capacity(raw.len() / 2 + 64);
            if frames.is_empty() {
                framed.extend_from_slice(typha::snappy::STREAM_IDENTIFIER);
            }
            typha::snappy::frame_chunks(&raw, &mut framed);
            framed.freeze()
        } else {
            raw
        };
        out.wire_bytes += wire.len() as u64;
        frames.push(wire);
    };
    for (k, e) in state.iter() {
        if !syncer.wants(k) {
            continue;
        }
        out.key_count += 1;
        out.digest.add(k, &e.value);
        chunk.push((k, sent_key(k, e), e));
        if chunk.len() == per_message {
            typha::encode_kvs_into(&mut gob, typha_snapshot_entries(&chunk));
            chunk.clear();
            emit(&mut gob, &mut frames, &mut out);
        }
    }
    if !chunk.is_empty() {
        typha::encode_kvs_into(&mut gob, typha_snapshot_entries(&chunk));
    }
    if binary {
        gob.extend_from_slice(&typha::encode_decoder_restart(&typha::DecoderRestart {
            message: TYPHA_SNAPSHOT_END_RESTART.into(),
            compression: typha::COMPRESSION_SNAPPY.into(),
        }));
    } else if status != SyncStatus::WaitingForDatastore {
        gob.extend_from_slice(&typha::encode_sync_status(status as u8));
    }
    emit(&mut gob, &mut frames, &mut out);
    out.frames = frames;
    if binary {
        let mut prefix = BytesMut::new();
        // The snappy identifier and the gob preamble: after it every shared `TyphaSnappy`
        // frame decodes on any connection.
        prefix.extend_from_slice(&typha::server_preamble_snappy());
        if status != SyncStatus::WaitingForDatastore {
            prefix.extend_from_slice(&typha_sync_status(status, variant));
        }
        out.live_prefix = Some(prefix.freeze());
    }
    out
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
    /// The datastore status as of `seq`.
    pub status: SyncStatus,
    /// `TyphaSnappy` only: what opens the live stream once the client acknowledged the
    /// snapshot's closing restart (the snappy identifier and gob preamble, then
    /// `MsgSyncStatus` unless the status is `WaitForDatastore`).
    pub live_prefix: Option<Bytes>,
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
        status,
        live_prefix: None,
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
