//! The datastore stage: drivers watch a datastore and report Calico model updates; the
//! [`Batcher`] keeps the canonical map, drops no-ops, and hands immutable, pre-encoded
//! [`DeltaBatch`]es to the reactor. Everything here runs on the datastore thread's tokio runtime.

mod batcher;
pub mod k8s;
pub mod sim;
pub(crate) mod thread;

pub use batcher::{
    BatchLimits, BatchSink, Batcher, EncodeWork, FlushOutcome, ReactorSink, DEFAULT_BATCH_BYTES,
    MAX_BATCH_BYTES,
};
pub use thread::{spawn_datastore_thread, DatastoreHandle, DatastoreThreadConfig, DriverConfig};

// The batch types live in `crate::batch`, shared with the reactor; re-exported for the stage's
// users (sinks, tests) that name them beside the batcher.
pub use crate::batch::{BatchMessage, DeltaBatch, LegacyKeyDemand};

use crate::model::{KvUpdate, SyncStatus};
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
