//! The Kubernetes datastore driver: one list+watch per kind, through `kube`'s watcher.
//!
//! Every watched kind runs the same loop over `DynamicObject`s: find which served version
//! exists (a kind the server lacks, such as a CRD not installed or discovery.k8s.io/v1 on an
//! old server, is reported and retried, never fatal), then list+watch it. Each object is
//! translated by a pure function (`translate`) into the complete set of keys it yields now; the
//! driver remembers, per object, each key's value hash and sends only keys that changed, plus
//! deletes for keys the object no longer yields. A relist (after a 410 Gone, an etcd
//! compaction, an API server restart) is diffed the same way: unchanged objects send nothing,
//! and objects missing from the relist are deleted, so a delete that happened while the watch
//! was down is never lost and clients are never resnapshotted.

mod driver;
mod replicas;
mod shared_keys;
pub mod translate;

pub use driver::{list_translated, run, watched_kinds, KindSpec, KubernetesConfig};
