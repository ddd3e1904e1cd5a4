//! `run --verify-datastore`: the datastore's own view, independent of the daemon. Lists every
//! watched kind from the Kubernetes API server, translates it with the library's translators
//! (the driver's [`list_translated`]) and compares the digest of the syncer type's keys with the
//! daemon's newest `/digest`, once the daemon is quiet (its newest seq the same before and
//! after the listing).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use typha::datastore::k8s::{list_translated, KubernetesConfig};
use typha::model::{Digest, SyncerType};
use typha_loadtest_common::daemon_http::{fetch_latest_digest, DaemonDigest};

/// Listings tried before giving up on a daemon that keeps changing.
const ATTEMPTS: usize = 5;

/// What the datastore check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatastoreCheck {
    pub keys: u64,
    pub digest: String,
    pub daemon: DaemonDigest,
}

impl DatastoreCheck {
    pub fn matches(&self) -> bool {
        self.keys == self.daemon.keys && self.digest == self.daemon.digest
    }
}

/// `(keys, digest)` of the entries of `map` that `syncer` receives.
pub fn digest_of<'a, B: AsRef<[u8]> + 'a>(
    map: impl IntoIterator<Item = (&'a String, &'a B)>,
    syncer: SyncerType,
) -> (u64, Digest) {
    let mut d = Digest::default();
    let mut n = 0;
    for (k, v) in map {
        if syncer.wants(k) {
            d.add(k, v.as_ref());
            n += 1;
        }
    }
    (n, d)
}

pub fn check(
    kubeconfig: &Path,
    metrics: SocketAddr,
    syncer: SyncerType,
) -> Result<DatastoreCheck, String> {
    typha_loadtest_common::loopback::loopback_server(kubeconfig)?;
    let cfg = KubernetesConfig {
        kubeconfig: Some(kubeconfig.to_owned()),
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a tokio runtime: {e}"))?;
    for _ in 0..ATTEMPTS {
        let before = fetch_latest_digest(metrics, syncer)?;
        let map = rt.block_on(list_translated(&cfg))?;
        let after = fetch_latest_digest(metrics, syncer)?;
        if before.seq != after.seq {
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        let (keys, digest) = digest_of(&map, syncer);
        return Ok(DatastoreCheck {
            keys,
            digest: digest.to_string(),
            daemon: after,
        });
    }
    Err(format!(
        "the daemon's seq kept changing over {ATTEMPTS} listings: is churn still running?"
    ))
}
