//! `typha-loadtest run` against a daemon watching a real kube-apiserver on loopback
//! (`scripts/test-apiserver.sh`) while `churn` writes pod labels: the write stamps give a
//! datastore → client latency, and `--verify-datastore` finds the API server's translated
//! objects equal to the daemon's map.

use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::Duration;
use typha::daemon::{Daemon, DaemonConfig};
use typha::datastore::k8s::KubernetesConfig;
use typha::datastore::{BatchLimits, DatastoreThreadConfig, DriverConfig};
use typha::proto::encode::EncodeOptions;
use typha::server::ServerConfig;
use typha::testing::{wait_ready, ApiServer};

const BIN: &str = env!("CARGO_BIN_EXE_typha-loadtest");

fn daemon(kubeconfig: &std::path::Path) -> Daemon {
    let d = Daemon::start(DaemonConfig {
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
            metrics_listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
            liveness_stall: Duration::from_secs(30),
            datastore_unreachable: Duration::from_secs(300),
            component_down_unready: typha::status::DEFAULT_COMPONENT_DOWN_UNREADY,
        },
        batch_channel_capacity: 1024,
    })
    .unwrap();
    wait_ready(&d, Duration::from_secs(60)).unwrap();
    d
}

#[test]
fn stamped_label_writes_give_latency_and_the_datastore_matches_the_daemon() {
    let api = ApiServer::start("loadtest-ds").unwrap_or_else(|e| panic!("{e}"));
    let kubeconfig = api.kubeconfig();
    let kc = kubeconfig.to_str().unwrap();
    let d = daemon(&kubeconfig);
    let shape = [
        "--kubeconfig",
        kc,
        "--nodes",
        "3",
        "--pods-per-node",
        "3",
        "--namespaces",
        "2",
    ];
    let setup = Command::new(BIN)
        .arg("churn")
        .args(shape)
        .args(["--setup-only", "--json"])
        .output()
        .unwrap();
    assert!(setup.status.success(), "{setup:?}");

    // Label churn for 3 s while 20 clients run for 7 s; the datastore check runs after both.
    let churn = Command::new(BIN)
        .arg("churn")
        .args(shape)
        .args([
            "--no-setup",
            "--mix",
            "labels=1",
            "--rate",
            "20",
            "--duration",
            "3",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = Command::new(BIN)
        .arg("run")
        .args([
            "--addr",
            &d.protocol_addr.to_string(),
            "--metrics-addr",
            &d.metrics_addr.unwrap().to_string(),
            "--clients",
            "20",
            "--full-maps",
            "2",
            "--duration",
            "7",
            "--verify-datastore",
            "--kubeconfig",
            kc,
            "--json",
        ])
        .output()
        .unwrap();
    let churned = churn.wait_with_output().unwrap();
    assert!(churned.status.success(), "{churned:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let j: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "{e}: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(out.status.code(), Some(0), "{j:#}");
    let ds = &j["datastore_check"];
    assert_eq!(ds["matches"], true, "{j:#}");
    assert!(ds["keys"].as_u64().unwrap() > 9, "{ds}");
    // About 60 label writes, each delivered to 20 clients; each client counts a write once.
    let lat = &j["datastore_to_client_latency"];
    let n = lat["count"].as_u64().unwrap();
    assert!(n >= 20 * 10, "{lat}");
    assert!(n <= 20 * 70, "{lat}");
    assert!(lat["p50_us"].as_u64().unwrap() > 0);
    assert_eq!(j["verification"]["verified_at_end"], 20, "{j:#}");
}
