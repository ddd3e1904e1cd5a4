//! Pure translation of Kubernetes objects into Calico model keys and values.
//!
//! Each watched kind has a [`TranslateFn`]: the object's JSON in, the complete set of
//! `(key, value)` pairs that object yields right now out. "Complete" matters: the driver
//! remembers what each object yielded last time and deletes keys that are no longer produced,
//! so a pod that loses its IP, or a node whose WireGuard key is cleared, turns into deletes
//! without the translator knowing history. An empty result means the object yields nothing
//! (a host-network pod, a finished pod) and everything it yielded before is deleted.
//!
//! Keys and JSON shapes follow what Calico v3.32's felix syncer emits in KDD mode; see
//! `docs/datastore.md` and the reference in `shared/reference/felix-syncer-kdd.md`.

use bytes::Bytes;
use serde_json::Value;
use thiserror::Error;

mod calico;
mod cnp;
mod core;
mod go_shapes;
mod gojson;
mod livemigration;
mod policy;
mod qos;
mod validate;

pub use self::calico::*;
pub use self::cnp::*;
pub use self::core::*;
pub use self::livemigration::*;
pub use self::policy::*;
pub use self::validate::{validate, Invalid};

/// One key a translated object yields, with its serialized value.
pub type Kv = (String, Bytes);

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TranslateError {
    #[error("missing field {0}")]
    Missing(&'static str),
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// Translates one object (its full JSON, as the API server returns it) into every key it yields.
pub type TranslateFn = fn(&Value) -> Result<Vec<Kv>, TranslateError>;

/// The object's `metadata.name`.
pub fn name(obj: &Value) -> Result<&str, TranslateError> {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(TranslateError::Missing("metadata.name"))
}

/// The object's `metadata.namespace` (empty for cluster-scoped objects).
pub fn namespace(obj: &Value) -> &str {
    obj.pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Calico's escaping of a name segment in a key path: `%` → `%25`, `/` → `%2f`.
pub fn escape(segment: &str) -> String {
    segment.replace('%', "%25").replace('/', "%2f")
}

/// Serializes a value Calico sends as JSON.
pub fn json(v: &Value) -> Bytes {
    gojson::serialize(v)
}

/// A value Calico sends as raw text (config strings, the ready flag, host IPs).
pub fn raw(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}
