//! `typha-loadtest churn` against a real kube-apiserver (the current test release) on loopback
//! (`scripts/test-apiserver.sh`), with typha daemons watching it.

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use typha::client::{BlockingClient, ClientOptions, SyncState};
use typha::daemon::Daemon;
use typha::testing::{start_kubernetes_daemon, wait_ready, ApiServer};

const BIN: &str = env!("CARGO_BIN_EXE_typha-loadtest");

const NODES: usize = 6;
const PODS_PER_NODE: usize = 4;
const NAMESPACES: usize = 3;
const RATE: f64 = 40.0;
const DURATION_SECS: f64 = 5.0;

fn start_daemon(kubeconfig: &Path) -> Daemon {
    start_kubernetes_daemon(kubeconfig).expect("daemon starts")
}

fn wait_in_sync(d: &Daemon) {
    wait_ready(d, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("daemon never got in sync: {e}"));
}

fn client(d: &Daemon) -> BlockingClient {
    let mut c = BlockingClient::connect(d.protocol_addr, ClientOptions::default()).unwrap();
    c.run_until_in_sync(Duration::from_secs(60)).unwrap();
    c
}

fn until(c: &mut BlockingClient, what: &str, mut cond: impl FnMut(&SyncState) -> bool) {
    if let Err(e) = c.run_until(Duration::from_secs(60), &mut cond) {
        panic!("client never saw {what}: {e}");
    }
}

/// Reads whatever the daemon sent for `d`, failing on anything but a timeout.
fn pump(c: &mut BlockingClient, d: Duration) {
    if let Err(e) = c.run_until(d, |_| false) {
        assert!(e.is_timeout(), "client failed: {e}");
    }
}

/// `name{kind="…"}` (or plain `name` for an empty kind) from the daemon's metrics.
fn metric(d: &Daemon, name: &str, kind: &str) -> u64 {
    let text = d.metrics.render();
    let prefix = if kind.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{kind=\"{kind}\"}} ")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap_or(0.0) as u64)
}

/// Runs the binary while the client keeps reading (a connected Felix does not stop reading).
fn run_churn(c: &mut BlockingClient, args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .arg("churn")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn typha-loadtest");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("typha-loadtest churn {args:?} did not stop");
        }
        pump(c, Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn summary(out: &Output, what: &str) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what}: {:?}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{what}: {e}: {stdout}"))
}

const V3_NODES: &str = "/calico/resources/v3/projectcalico.org/nodes/churn-node-";
const MARKER: &str = "/calico/v1/policy/profile/kns.churn-marker/rules";

fn count(s: &SyncState, f: impl Fn(&str) -> bool) -> usize {
    s.iter().filter(|(k, _)| f(k)).count()
}

fn is_churn_wep(k: &str) -> bool {
    k.starts_with("/calico/v1/host/churn-node-") && k.contains("/workload/k8s/churn-ns-")
}

#[test]
fn churn_through_a_real_apiserver_is_translated_like_a_fresh_daemon() {
    let api = ApiServer::start("e2e").unwrap_or_else(|e| panic!("{e}"));
    let kubeconfig = api.kubeconfig();
    let kc = kubeconfig.to_str().unwrap();
    let daemon = start_daemon(&kubeconfig);
    wait_in_sync(&daemon);
    let mut c = client(&daemon);

    // Setup while the daemon watches.
    let (nodes, ppn, nss) = (
        NODES.to_string(),
        PODS_PER_NODE.to_string(),
        NAMESPACES.to_string(),
    );
    let shape = [
        "--kubeconfig",
        kc,
        "--nodes",
        &nodes,
        "--pods-per-node",
        &ppn,
        "--namespaces",
        &nss,
    ];
    let mut args = shape.to_vec();
    args.extend(["--setup-only", "--json"]);
    let setup = summary(&run_churn(&mut c, &args), "setup");
    let s = &setup["setup"];
    assert_eq!(s["errors_total"], 0, "{setup}");
    assert_eq!(s["ops"]["node-create"], NODES, "{setup}");
    assert_eq!(s["ops"]["pod-create"], NODES * PODS_PER_NODE, "{setup}");
    assert!(setup["churn"].is_null());
    until(&mut c, "the setup's nodes and endpoints", |s| {
        count(s, |k| k.starts_with(V3_NODES)) == NODES
            && count(s, is_churn_wep) == NODES * PODS_PER_NODE
    });
    // Everything the setup made is in; nothing else writes nodes.
    std::thread::sleep(Duration::from_millis(500));
    pump(&mut c, Duration::from_millis(200));
    let node_events_before = metric(&daemon, "typha_datastore_events_total", "node");
    let node_emitted_before = metric(&daemon, "typha_datastore_updates_emitted_total", "node");
    assert!(
        node_events_before >= NODES as u64,
        "{node_events_before} node events for {NODES} node creations"
    );
    assert!(
        node_emitted_before >= NODES as u64 && node_emitted_before % NODES as u64 == 0,
        "{NODES} identical node creations emitted {node_emitted_before} updates"
    );

    // The churn: ~5 s at ~40 ops/s, recorded.
    let record = api.dir.join("churn.jsonl");
    let (rate, duration) = (RATE.to_string(), DURATION_SECS.to_string());
    let mut args = shape.to_vec();
    args.extend([
        "--no-setup",
        "--rate",
        &rate,
        "--duration",
        &duration,
        "--seed",
        "42",
        "--record",
        record.to_str().unwrap(),
        "--json",
    ]);
    let started = Instant::now();
    let out = run_churn(&mut c, &args);
    let wall = started.elapsed();
    let report = summary(&out, "churn");
    let churn = &report["churn"];
    assert!(report["setup"].is_null());
    assert_eq!(churn["errors_total"], 0, "{report}");
    assert_eq!(churn["unfinished"], 0, "{report}");
    let ops = churn["ops_total"].as_u64().unwrap();
    let achieved = churn["achieved_rate"].as_f64().unwrap();
    let heartbeats = churn["ops"]["heartbeat"].as_u64().unwrap_or(0);
    eprintln!(
        "churn: {ops} ops in {:.2} s, {achieved:.1} ops/s achieved ({RATE} requested), ops {}, \
         process wall time {:.2} s",
        churn["elapsed_secs"].as_f64().unwrap(),
        churn["ops"],
        wall.as_secs_f64()
    );
    let expected = (RATE * DURATION_SECS) as u64;
    // Every tick issued one operation (a tick still due at the deadline may be dropped).
    let issued = churn["ops_issued"].as_u64().unwrap();
    assert!(
        (expected * 9 / 10..=expected).contains(&issued),
        "{issued} of {expected} ticks: {report}"
    );
    assert_eq!(ops, issued, "{report}");
    assert!(
        (0.9 * RATE..=1.05 * RATE).contains(&achieved),
        "achieved {achieved} ops/s of {RATE}"
    );
    for kind in ["pod-create", "pod-delete", "heartbeat", "pod-label"] {
        assert!(
            churn["ops"][kind].as_u64().unwrap_or(0) > 0,
            "no {kind} in {report}"
        );
    }

    // The record: one line per successful write, in the documented shape.
    let lines: Vec<Value> = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as u64, churn["writes"].as_u64().unwrap());
    let now_nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    for l in &lines {
        let t = l["t_unix_nanos"].as_u64().expect("t_unix_nanos");
        assert!(t <= now_nanos && now_nanos - t < 300_000_000_000, "{l}");
        assert!(l["op"].is_string() && l["object"].is_string(), "{l}");
    }
    let recorded = |op: &str| lines.iter().filter(|l| l["op"] == op).count() as u64;
    assert_eq!(recorded("heartbeat"), heartbeats);
    assert_eq!(
        recorded("pod-ip"),
        churn["ops"]["pod-create"].as_u64().unwrap()
    );

    // A marker after the churn: once the client has it, the namespace watch has caught up.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        let client = kube::Client::try_from(cfg).unwrap();
        let marker: Namespace =
            serde_json::from_value(json!({"metadata": {"name": "churn-marker"}})).unwrap();
        Api::<Namespace>::all(client)
            .create(&PostParams::default(), &marker)
            .await
            .unwrap();
    });
    until(&mut c, "the marker", |s| s.get(MARKER).is_some());

    // Watches of other kinds may still be delivering: wait for every heartbeat's event.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = metric(&daemon, "typha_datastore_events_total", "node") - node_events_before;
        if events >= heartbeats {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{heartbeats} heartbeats sent, {events} node events received"
        );
        pump(&mut c, Duration::from_millis(100));
    }
    let node_events = metric(&daemon, "typha_datastore_events_total", "node") - node_events_before;
    let node_emitted = metric(&daemon, "typha_datastore_updates_emitted_total", "node");
    assert!(heartbeats > 0);
    assert_eq!(
        node_emitted,
        node_emitted_before,
        "{node_events} node events ({heartbeats} heartbeats) emitted {} updates",
        node_emitted - node_emitted_before
    );
    assert!(metric(&daemon, "typha_updates_total", "") > 0);

    // A fresh daemon's translation of the API server's state is the reference.
    let fresh = start_daemon(&kubeconfig);
    wait_in_sync(&fresh);
    let mut fc = client(&fresh);
    until(&mut fc, "the marker", |s| s.get(MARKER).is_some());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        pump(&mut c, Duration::from_millis(200));
        pump(&mut fc, Duration::from_millis(200));
        if c.state().digest() == fc.state().digest() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the churn the client ({} keys) differs from a fresh translation ({} keys)",
            c.state().len(),
            fc.state().len()
        );
    }
    let weps = count(c.state(), is_churn_wep) as u64;
    assert_eq!(
        weps,
        report["objects"]["pods"].as_u64().unwrap(),
        "endpoints vs the churn's pods"
    );
    assert_eq!(count(c.state(), |k| k.starts_with(V3_NODES)), NODES);
    drop((c, fc));
    fresh.stop().unwrap();
    daemon.stop().unwrap();
}

#[test]
fn refuses_a_kubeconfig_whose_server_is_not_loopback() {
    let dir = std::env::temp_dir().join(format!("typha-churn-refuse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for server in [
        "https://10.1.2.3:6443",
        "https://[2001:db8::1]:6443",
        "https://localhost.example.com:6443",
    ] {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: k\n  \
                 cluster:\n    server: {server}\ncontexts:\n- name: c\n  context:\n    \
                 cluster: k\n    user: u\nusers:\n- name: u\n  user:\n    token: t\n"
            ),
        )
        .unwrap();
        let out = Command::new(BIN)
            .args(["churn", "--kubeconfig", path.to_str().unwrap(), "--json"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{server}: {stderr}");
        assert!(
            stderr.contains("not on loopback") && stderr.contains(server),
            "{server}: {stderr}"
        );
        assert!(out.stdout.is_empty());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
