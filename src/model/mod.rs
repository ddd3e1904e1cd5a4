//! Calico's key/value data model as typha-rs carries it.
//!
//! Keys are Calico "default path" strings (`/calico/v1/host/<node>/...`), values are the opaque
//! serialized bytes Felix expects (JSON for most kinds, raw text for a few config keys), and every
//! entry carries the datastore revision of the object it came from. Nothing in the fan-out path
//! interprets a value: it is compared, hashed and copied as bytes.

mod digest;
mod syncer;

pub use digest::{entry_hash, Digest};
pub use syncer::{SyncerType, SyncerTypeSet};

use bytes::Bytes;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A key path, shared between the canonical map, batches and snapshots without copying.
pub type Key = Arc<str>;

/// Whether the datastore is in sync; numbered as Calico's `api.SyncStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, bincode::Encode, bincode::Decode)]
pub enum SyncStatus {
    WaitingForDatastore = 0,
    ResyncInProgress = 1,
    InSync = 2,
}

impl SyncStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncStatus::WaitingForDatastore => "wait-for-ready",
            SyncStatus::ResyncInProgress => "resync",
            SyncStatus::InSync => "in-sync",
        }
    }
}

/// Calico's `api.UpdateType`, kept so a wire format that needs it (Typha's gob protocol) can
/// send it without re-deriving it per client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, bincode::Encode, bincode::Decode)]
pub enum UpdateType {
    New = 1,
    Updated = 2,
    Deleted = 3,
}

/// One change as a datastore driver reports it: `value: None` deletes the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvUpdate {
    pub key: Key,
    pub value: Option<Bytes>,
    pub revision: String,
}

impl KvUpdate {
    pub fn set(key: impl Into<Key>, value: impl Into<Bytes>, revision: impl Into<String>) -> Self {
        KvUpdate {
            key: key.into(),
            value: Some(value.into()),
            revision: revision.into(),
        }
    }

    pub fn delete(key: impl Into<Key>, revision: impl Into<String>) -> Self {
        KvUpdate {
            key: key.into(),
            value: None,
            revision: revision.into(),
        }
    }
}

/// A value held in the canonical map. Boxed in an `Arc` so that copying a path of the persistent
/// map (which happens on every write while a snapshot still references the old version) copies
/// pointers, not strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Bytes,
    pub revision: String,
}

/// An update that survived the no-op filter, as it goes into a [`DeltaBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub key: Key,
    pub value: Option<Bytes>,
    pub revision: String,
    pub update_type: UpdateType,
}

/// The canonical state: a persistent ordered map, so that a consistent view as of any sequence
/// number costs one pointer copy and snapshots iterate in key order.
pub type StateMap = imbl::OrdMap<Key, Arc<Entry>>;

/// Nanoseconds since the Unix epoch; the unit of every timestamp on the wire.
pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub fn now_unix_nanos() -> u64 {
    unix_nanos(SystemTime::now())
}
