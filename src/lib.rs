//! typha-rs: the fan-out layer between the Kubernetes datastore and Calico's Felix agents.
//!
//! Data flows one way: a datastore driver (`datastore`) produces Calico model updates
//! (`model`); the batcher drops no-ops and groups the rest into immutable, pre-encoded
//! `DeltaBatch`es (`proto::encode`); the mio reactor (`server`) writes the same shared frames
//! to every client. `client` is the receiving side, used by tests and the loadtest harness.

pub mod batch;
pub mod client;
pub mod config;
pub mod daemon;
pub mod datastore;
pub mod debug_client;
pub mod http;
pub mod metrics;
pub mod model;
pub mod proto;
pub mod rebalance;
pub mod server;
pub mod status;
#[doc(hidden)]
pub mod testing;
pub mod tls;
