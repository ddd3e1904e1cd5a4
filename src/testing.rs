//! Support for tests that need a real Kubernetes API server: `scripts/test-apiserver.sh` driven
//! from Rust, and a daemon on the Kubernetes datastore. Used by this crate's and the load-test
//! crate's integration tests; not part of the daemon.

use crate::daemon::{Daemon, DaemonConfig};
use crate::datastore::k8s::KubernetesConfig;
use crate::datastore::{BatchLimits, DatastoreThreadConfig, DriverConfig};
use crate::proto::encode::EncodeOptions;
use crate::server::ServerConfig;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The script, found from this crate's root.
pub const APISERVER_SCRIPT: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test-apiserver.sh");

/// etcd + the current test kube-apiserver (v1.37.2) on loopback in a private directory, with the Calico CRDs
/// applied; stopped (and the directory removed) on drop.
pub struct ApiServer {
    pub dir: PathBuf,
    /// `DIR/env`: KUBECONFIG, APISERVER_PID, ETCD_ENDPOINT, ...
    pub env: HashMap<String, String>,
}

/// Runs `scripts/test-apiserver.sh ARGS`; the error carries its output.
pub fn apiserver_script(args: &[&str]) -> Result<(), String> {
    let out = Command::new("bash")
        .arg(APISERVER_SCRIPT)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {APISERVER_SCRIPT}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "test-apiserver.sh {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

impl ApiServer {
    /// Starts one under the temp directory, named after `name` and this process.
    pub fn start(name: &str) -> Result<ApiServer, String> {
        let dir = std::env::temp_dir().join(format!("typha-k8s-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut api = ApiServer {
            dir,
            env: HashMap::new(),
        };
        api.run("start")?;
        api.run("crds")?;
        let text = std::fs::read_to_string(api.dir.join("env"))
            .map_err(|e| format!("no env file from the script: {e}"))?;
        api.env = text
            .lines()
            .filter_map(|l| {
                let l = l.strip_prefix("export ").unwrap_or(l);
                let (k, v) = l.split_once('=')?;
                Some((k.to_owned(), v.trim_matches(['"', '\'']).to_owned()))
            })
            .collect();
        Ok(api)
    }

    pub fn kubeconfig(&self) -> PathBuf {
        PathBuf::from(self.env.get("KUBECONFIG").cloned().unwrap_or_default())
    }

    /// Runs a subcommand on this server: `restart-apiserver`, `compact`, `rbac`, ...
    pub fn run(&self, cmd: &str) -> Result<(), String> {
        apiserver_script(&[cmd, &self.dir.to_string_lossy()])
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.run("stop");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A daemon on 127.0.0.1 (ephemeral port, no HTTP listeners) watching the API server of
/// `kubeconfig`, with a fast timer and missing-kind retry for tests.
pub fn start_kubernetes_daemon(kubeconfig: &Path) -> Result<Daemon, String> {
    Daemon::start(kubernetes_daemon_config(kubeconfig)).map_err(|e| e.to_string())
}

/// The configuration [`start_kubernetes_daemon`] uses, for tests that change a setting first.
pub fn kubernetes_daemon_config(kubeconfig: &Path) -> DaemonConfig {
    DaemonConfig {
        server: ServerConfig {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            tick: Duration::from_millis(20),
            ..ServerConfig::default()
        },
        datastore: DatastoreThreadConfig {
            driver: DriverConfig::Kubernetes(KubernetesConfig {
                kubeconfig: Some(kubeconfig.to_owned()),
                missing_api_retry: Duration::from_secs(5),
                ..KubernetesConfig::default()
            }),
            limits: BatchLimits::default(),
            encode: EncodeOptions::default(),
            health_listen: None,
            metrics_listen: None,
            liveness_stall: Duration::from_secs(30),
            datastore_unreachable: Duration::from_secs(300),
            component_down_unready: crate::status::DEFAULT_COMPONENT_DOWN_UNREADY,
        },
        batch_channel_capacity: 1024,
    }
}

/// A daemon in this process configured by daemon flags, as `typha --config-file /dev/null
/// FLAGS` would be, but listening on ephemeral loopback ports with the metrics listener (for
/// `/digest`) and no health listener; returned once in sync.
pub fn start_daemon_with_flags(flags: &[String], timeout: Duration) -> Result<Daemon, String> {
    let mut args = vec![
        "typha".to_owned(),
        "--config-file".to_owned(),
        "/dev/null".to_owned(),
        // The sim unless the flags name another datastore (a later flag wins).
        "--datastore-type".to_owned(),
        "sim".to_owned(),
    ];
    args.extend(flags.iter().cloned());
    let cfg = crate::config::Config::load_from(args).map_err(|e| e.to_string())?;
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let mut server = cfg.server_config().map_err(|e| e.to_string())?;
    server.listen = any;
    let mut datastore = cfg.datastore_config().map_err(|e| e.to_string())?;
    datastore.health_listen = None;
    datastore.metrics_listen = Some(any);
    let d = Daemon::start(DaemonConfig {
        server,
        datastore,
        batch_channel_capacity: cfg.batch_channel_capacity,
    })
    .map_err(|e| e.to_string())?;
    wait_ready(&d, timeout)?;
    Ok(d)
}

/// Waits (at most `timeout`) until the daemon is ready: in sync with the datastore.
pub fn wait_ready(d: &Daemon, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        match d.status.readiness() {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}
