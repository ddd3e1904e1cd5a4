//! Felix compatibility checked with Go's own `encoding/gob` and `golang/snappy`: the interop
//! suite's `gobclient` (interop/, docs/interop.md) plays Felix's side of Typha's protocol
//! against the real daemon, decodes every message with Go's decoder, applies the updates to a
//! map and reports the map's digest, which must equal the daemon's `/digest` for felix.
//!
//! Each test skips (printing "skipped: ...") when the suite is not built and `CI` is not set;
//! `make test` builds it first (`make interop`).

use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use typha::client::{BlockingClient, ClientOptions};
use typha::http::http_get;
use typha::model::{entry_hash, Digest};

mod interop_bins;
mod support;
use interop_bins::interop_bins;
use support::DaemonProcess;

// ---- the Go client process ------------------------------------------------------------------

/// One `gobclient` process (N connections) whose JSON lines are collected as they arrive;
/// killed and reaped on drop.
struct GobClients {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    reader: Option<JoinHandle<()>>,
}

impl GobClients {
    fn start(bins: &Path, addr: SocketAddr, args: &[&str]) -> GobClients {
        let mut child = Command::new(bins.join("gobclient"))
            .arg("-addr")
            .arg(addr.to_string())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start gobclient");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("gobclient printed {line:?}: {e}"));
                sink.lock().unwrap().push(v);
            }
        });
        GobClients {
            child,
            lines,
            reader: Some(reader),
        }
    }

    fn lines(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    /// Polls until `cond` holds on the lines so far; fails on an "error" line or the deadline.
    fn wait_for(&self, what: &str, timeout: Duration, mut cond: impl FnMut(&[Value]) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.lines();
            let errors: Vec<_> = lines.iter().filter(|l| l["event"] == "error").collect();
            assert!(errors.is_empty(), "gobclient failed: {errors:?}");
            if cond(&lines) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gobclient never reached {what}; last lines: {:?}",
                &lines[lines.len().saturating_sub(5)..]
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: signalling our own child, which is not yet reaped.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as libc::pid_t, sig) },
            0
        );
    }

    /// Waits (at most `timeout`) for the process to exit by itself.
    fn wait_exit(mut self, timeout: Duration) -> (ExitStatus, Vec<Value>) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "gobclient did not exit; lines: {:?}",
                self.lines()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        (status, self.lines())
    }

    /// SIGTERM: every client stops, the summary is printed, the exit status says whether any
    /// client failed.
    fn stop(self) -> (ExitStatus, Vec<Value>) {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(30))
    }
}

impl Drop for GobClients {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn summary(lines: &[Value]) -> &Value {
    lines
        .iter()
        .rev()
        .find(|l| l["event"] == "summary")
        .expect("a summary line")
}

/// Every client's newest line of kind `event`, by client index.
fn latest_by_client(lines: &[Value], event: &str) -> HashMap<u64, Value> {
    let mut m = HashMap::new();
    for l in lines.iter().filter(|l| l["event"] == event) {
        m.insert(l["client"].as_u64().unwrap(), l.clone());
    }
    m
}

// ---- the daemon's view ----------------------------------------------------------------------

/// `(seq, keys, digest)` for felix from `/digest` (the newest record, or the one for `seq`).
fn daemon_felix(metrics: SocketAddr, seq: Option<u64>) -> Option<(u64, u64, String)> {
    let path = match seq {
        Some(s) => format!("/digest?seq={s}"),
        None => "/digest".to_string(),
    };
    let (code, body) = http_get(metrics, &path, Duration::from_secs(5)).ok()?;
    if code != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).unwrap();
    let felix = &v["syncers"]["felix"];
    Some((
        v["seq"].as_u64().unwrap(),
        felix["keys"].as_u64().unwrap(),
        felix["digest"].as_str().unwrap().to_string(),
    ))
}

fn sim(extra: &[&str]) -> DaemonProcess {
    let d = DaemonProcess::start(0, extra, &[]);
    d.wait_ready(Duration::from_secs(60));
    d
}

/// Runs `clients` gobclients with `args` until each reaches in-sync on a quiet daemon, and
/// checks each against the daemon's digest; returns their in-sync lines.
fn quiet_run(d: &DaemonProcess, bins: &Path, clients: usize, args: &[&str]) -> Vec<Value> {
    let n = clients.to_string();
    let mut all = vec!["-clients", &n, "-exit-after-insync"];
    all.extend_from_slice(args);
    let (status, lines) =
        GobClients::start(bins, d.protocol, &all).wait_exit(Duration::from_secs(120));
    assert!(status.success(), "gobclient {args:?} failed: {lines:?}");
    let s = summary(&lines);
    assert_eq!(s["in_sync"], clients as u64, "{s}");
    assert_eq!(s["errors"], 0, "{s}");
    let (_, keys, digest) = daemon_felix(d.metrics, None).expect("daemon digest");
    let in_sync = lines
        .iter()
        .filter(|l| l["event"] == "in-sync")
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(in_sync.len(), clients);
    for l in &in_sync {
        assert_eq!(l["keys"], keys, "client {} key count: {l}", l["client"]);
        assert_eq!(
            l["digest"], digest,
            "client {} digest differs from the daemon's: {l}",
            l["client"]
        );
        assert!(
            l["statuses"].as_array().unwrap().iter().any(|s| s == 2),
            "InSync status: {l}"
        );
    }
    in_sync
}

// ---- tests ----------------------------------------------------------------------------------

/// The Go side computes typha-rs's digest (interop/digest, zeebo/xxh3); these are the numbers
/// its Go test pins too, so both implementations agree entry by entry and in the 128-bit sum.
#[test]
fn digest_vectors_match_go() {
    let entries = [
        ("", "", "2c0a8a99dc147d5445c3b49d035665b2"),
        (
            "/calico/v1/Ready",
            "true",
            "a1946ef547d660cac70bb963aad423dc",
        ),
        ("/k", "v", "8102f21853735caf7be520c8e5d5a131"),
        (
            "/calico/resources/v3/projectcalico.org/nodes/node-1",
            "{\"kind\":\"Node\"}",
            "6e8e491769f2a0fa8217430e533392be",
        ),
    ];
    let mut sum = Digest::default();
    for (k, v, want) in entries {
        assert_eq!(
            format!("{:032x}", entry_hash(k, v.as_bytes())),
            want,
            "{k:?}"
        );
        sum.add(k, v.as_bytes());
    }
    assert_eq!(sum.to_string(), "bd3034bee150dbc90acbd1d7e733bd7d");
}

#[test]
fn felix_restart_path_on_go_gob_matches_the_daemon() {
    let Some(bins) = interop_bins("felix_restart_path_on_go_gob_matches_the_daemon") else {
        return;
    };
    let d = sim(&["--sim-endpoints", "3000", "--sim-churn-rate", "0"]);
    for l in quiet_run(&d, &bins, 3, &[]) {
        // Restart to snappy, then the shared snapshot's own closing restart (to snappy).
        assert_eq!(l["restarts"], 2, "{l}");
        assert_eq!(
            l["compression"],
            serde_json::json!(["snappy", "snappy"]),
            "{l}"
        );
        assert!(
            l["by_type"][1].as_u64().unwrap() > 0,
            "snapshot entries are KVNew: {l}"
        );
    }
}

#[test]
fn felix_streamed_path_on_go_gob_matches_the_daemon() {
    let Some(bins) = interop_bins("felix_streamed_path_on_go_gob_matches_the_daemon") else {
        return;
    };
    let d = sim(&["--sim-endpoints", "3000", "--sim-churn-rate", "0"]);
    for l in quiet_run(&d, &bins, 3, &["-no-restart"]) {
        assert_eq!(l["restarts"], 0, "{l}");
    }
}

const POLICY: &str = "/calico/v1/policy/";
const TIER: &str = "/calico/v1/policy/tier/";
const PROFILE: &str = "/calico/v1/policy/profile/";

/// Policy keys in the modern form `/calico/v1/policy/<Kind>/<Namespace>/<Name>`.
fn modern_policy_keys(l: &Value) -> u64 {
    let c = &l["prefix_counts"];
    c[POLICY].as_u64().unwrap() - c[TIER].as_u64().unwrap() - c[PROFILE].as_u64().unwrap()
}

/// A Felix that predates `SupportsModernPolicyKeys` (v3.31 and older) is served, not refused
/// as Typha v3.32 does, on both paths: with no policies its map is the daemon's exactly; with
/// policies it holds as many keys, and every policy in the v3.31 form
/// `/calico/v1/policy/tier/<tier>/policy/<name>` (the Go client itself fails on any policy key
/// in another form).
#[test]
fn legacy_felix_on_go_gob_is_served() {
    let Some(bins) = interop_bins("legacy_felix_on_go_gob_is_served") else {
        return;
    };
    let d = sim(&[
        "--sim-endpoints",
        "1000",
        "--sim-policies",
        "0",
        "--sim-churn-rate",
        "0",
    ]);
    for l in quiet_run(&d, &bins, 2, &["-legacy"]) {
        assert_eq!(l["restarts"], 2, "{l}");
    }
    for l in quiet_run(&d, &bins, 2, &["-legacy", "-no-restart"]) {
        assert_eq!(l["restarts"], 0, "{l}");
    }
    drop(d);

    let d = sim(&[
        "--sim-endpoints",
        "1000",
        "--sim-policies",
        "200",
        "--sim-churn-rate",
        "0",
    ]);
    let prefixes = format!("{POLICY},{TIER},{PROFILE}");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "-clients",
            "1",
            "-exit-after-insync",
            "-count-prefixes",
            &prefixes,
        ];
        args.extend_from_slice(extra);
        let (status, lines) =
            GobClients::start(&bins, d.protocol, &args).wait_exit(Duration::from_secs(120));
        assert!(status.success(), "{extra:?}: {lines:?}");
        lines.into_iter().find(|l| l["event"] == "in-sync").unwrap()
    };
    let modern = run(&[]);
    let (_, keys, digest) = daemon_felix(d.metrics, None).unwrap();
    assert_eq!(modern["digest"], digest);
    let policies = modern_policy_keys(&modern);
    assert!(policies > 0, "the sim made policies: {modern}");
    let mut legacy_digests = Vec::new();
    for extra in [&["-legacy"][..], &["-legacy", "-no-restart"]] {
        let legacy = run(extra);
        assert_eq!(legacy["keys"], keys, "one key per key: {legacy}");
        assert_eq!(
            modern_policy_keys(&legacy),
            0,
            "no modern policy key: {legacy}"
        );
        assert_eq!(
            legacy["prefix_counts"][TIER].as_u64().unwrap(),
            modern["prefix_counts"][TIER].as_u64().unwrap() + policies,
            "every policy under its tier: {legacy}"
        );
        legacy_digests.push(legacy["digest"].clone());
    }
    assert_eq!(
        legacy_digests[0], legacy_digests[1],
        "both paths give the same v3.31 map"
    );
}

/// The daemon's felix digests from `from` on, gathered as they are recorded (each sequence
/// number once), so a client's digest can be matched to a state the daemon really had.
struct DaemonHistory {
    metrics: SocketAddr,
    next: u64,
    digests: HashSet<String>,
}

impl DaemonHistory {
    fn from_now(metrics: SocketAddr) -> DaemonHistory {
        let (seq, _, digest) = daemon_felix(metrics, None).expect("daemon digest");
        DaemonHistory {
            metrics,
            next: seq + 1,
            digests: HashSet::from([digest]),
        }
    }

    fn catch_up(&mut self) {
        let Some((newest, _, _)) = daemon_felix(self.metrics, None) else {
            return;
        };
        while self.next <= newest {
            let (_, _, d) = daemon_felix(self.metrics, Some(self.next))
                .unwrap_or_else(|| panic!("seq {} left the daemon's history", self.next));
            self.digests.insert(d);
            self.next += 1;
        }
    }
}

/// Under churn there is no quiet point and Typha's protocol carries no sequence number, so each
/// client must report, at some moment after the check starts, a digest the daemon recorded for
/// a sequence number at or after that start.
#[test]
fn go_gob_clients_converge_under_sim_churn() {
    let Some(bins) = interop_bins("go_gob_clients_converge_under_sim_churn") else {
        return;
    };
    let d = sim(&["--sim-endpoints", "2000", "--sim-churn-rate", "200"]);
    let report = ["-report-interval", "30ms", "-print-digest-after-insync"];
    let mut restart = vec!["-clients", "20"];
    restart.extend_from_slice(&report);
    let mut streamed = vec!["-clients", "10", "-no-restart"];
    streamed.extend_from_slice(&report);
    let procs = [
        (
            "restart",
            20,
            GobClients::start(&bins, d.protocol, &restart),
        ),
        (
            "streamed",
            10,
            GobClients::start(&bins, d.protocol, &streamed),
        ),
    ];
    for (name, n, p) in &procs {
        p.wait_for(&format!("{name}: in-sync"), Duration::from_secs(60), |l| {
            l.iter().filter(|l| l["event"] == "in-sync").count() == *n
        });
    }
    let started = procs
        .iter()
        .map(|(_, _, p)| p.lines().len())
        .collect::<Vec<_>>();
    let mut history = DaemonHistory::from_now(d.metrics);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        history.catch_up();
        let mut pending = Vec::new();
        for ((name, n, p), from) in procs.iter().zip(&started) {
            let lines = p.lines();
            let errors: Vec<_> = lines.iter().filter(|l| l["event"] == "error").collect();
            assert!(errors.is_empty(), "{name}: {errors:?}");
            let mut matched = HashSet::new();
            for l in lines[*from..].iter().filter(|l| l["event"] == "digest") {
                if history.digests.contains(l["digest"].as_str().unwrap()) {
                    matched.insert(l["client"].as_u64().unwrap());
                }
            }
            if matched.len() < *n {
                pending.push(format!("{name}: {}/{n}", matched.len()));
            }
        }
        if pending.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "clients never matched a daemon digest under churn: {pending:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for (name, n, p) in procs {
        let (status, lines) = p.stop();
        assert!(status.success(), "{name}: {lines:?}");
        let s = summary(&lines);
        assert_eq!(
            (s["in_sync"].as_u64(), s["errors"].as_u64()),
            (Some(n as u64), Some(0)),
            "{name}"
        );
        // Deltas arrived and were typed: updates beyond the snapshot's KVNew entries.
        let finals = latest_by_client(&lines, "final");
        assert!(
            finals
                .values()
                .all(|l| l["by_type"][2].as_u64().unwrap() > 0),
            "{name}"
        );
    }
}

// ---- several hundred Go clients beside native ones, churn from a real API server ------------

mod kube_churn {
    use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
    use kube::api::{Api, Patch, PatchParams, PostParams};
    use serde_json::json;
    use std::path::Path;

    pub struct Churn {
        pub rt: tokio::runtime::Runtime,
        pub namespaces: Api<Namespace>,
        pub pods: Api<Pod>,
    }

    impl Churn {
        pub fn connect(kubeconfig: &Path) -> Churn {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let client = rt.block_on(async {
                let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
                let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                    .await
                    .unwrap();
                kube::Client::try_from(cfg).unwrap()
            });
            let nodes: Api<Node> = Api::all(client.clone());
            let namespaces: Api<Namespace> = Api::all(client.clone());
            let ns: Namespace =
                serde_json::from_value(json!({"metadata": {"name": "team-a"}})).unwrap();
            rt.block_on(namespaces.create(&PostParams::default(), &ns))
                .unwrap();
            let node: Node = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": "node-1",
                             "annotations": {"projectcalico.org/IPv4Address": "10.0.0.1/24"}},
                "spec": {"podCIDR": "192.168.1.0/24"}
            }))
            .unwrap();
            rt.block_on(nodes.create(&PostParams::default(), &node))
                .unwrap();
            Churn {
                pods: Api::namespaced(client, "team-a"),
                namespaces,
                rt,
            }
        }

        pub fn create_pod(&self, name: &str, ip: &str) {
            let pod: Pod = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "team-a", "labels": {"app": "web"}},
                "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "nginx"}]}
            }))
            .unwrap();
            self.rt
                .block_on(self.pods.create(&PostParams::default(), &pod))
                .unwrap();
            self.set_ip(name, ip);
        }

        pub fn set_ip(&self, name: &str, ip: &str) {
            let status =
                json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
            self.rt
                .block_on(self.pods.patch_status(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(&status),
                ))
                .unwrap();
        }

        pub fn delete_pod(&self, name: &str) {
            let now = kube::api::DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            };
            self.rt.block_on(self.pods.delete(name, &now)).unwrap();
        }

        pub fn create_namespace(&self, name: &str) {
            let ns: Namespace = serde_json::from_value(
                json!({"metadata": {"name": name, "labels": {"churn": "yes"}}}),
            )
            .unwrap();
            self.rt
                .block_on(self.namespaces.create(&PostParams::default(), &ns))
                .unwrap();
        }
    }
}

/// A native client pumped on its own thread until `stop`, so it keeps up during the churn.
fn pump(mut c: BlockingClient, stop: Arc<AtomicBool>) -> JoinHandle<BlockingClient> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match c.run_until(Duration::from_millis(100), |_| false) {
                Err(e) if e.is_timeout() => {}
                Err(e) => panic!("native client failed under churn: {e}"),
                Ok(()) => {}
            }
        }
        c
    })
}

#[test]
fn hundreds_of_go_clients_beside_native_ones_converge_under_api_server_churn() {
    let Some(bins) =
        interop_bins("hundreds_of_go_clients_beside_native_ones_converge_under_api_server_churn")
    else {
        return;
    };
    const GO_CLIENTS: usize = 300;
    const NATIVE_CLIENTS: usize = 20;
    let api = typha::testing::ApiServer::start("interop").unwrap_or_else(|e| panic!("{e}"));
    let churn = kube_churn::Churn::connect(&api.kubeconfig());
    for i in 0..20 {
        churn.create_pod(&format!("web-{i}"), &format!("192.168.1.{}", 10 + i));
    }
    let daemon = typha::testing::start_kubernetes_daemon(&api.kubeconfig()).expect("daemon");
    typha::testing::wait_ready(&daemon, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("daemon never in sync: {e}"));

    let n = GO_CLIENTS.to_string();
    let go = GobClients::start(
        &bins,
        daemon.protocol_addr,
        &["-clients", &n, "-print-digest-after-insync"],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let natives = (0..NATIVE_CLIENTS)
        .map(|i| {
            let mut c = BlockingClient::connect(
                daemon.protocol_addr,
                ClientOptions {
                    hostname: format!("native-{i}"),
                    ..ClientOptions::default()
                },
            )
            .unwrap();
            c.run_until_in_sync(Duration::from_secs(60)).unwrap();
            pump(c, stop.clone())
        })
        .collect::<Vec<_>>();
    go.wait_for("every Go client in sync", Duration::from_secs(120), |l| {
        l.iter().filter(|l| l["event"] == "in-sync").count() == GO_CLIENTS
    });

    // Churn: new pods, moved IPs, deleted pods, new namespaces (profiles), for a few seconds.
    let until = Instant::now() + Duration::from_secs(8);
    let mut i = 0u32;
    while Instant::now() < until {
        match i % 4 {
            0 => churn.create_pod(&format!("churn-{i}"), &format!("192.168.2.{}", i % 250)),
            1 => churn.set_ip(
                &format!("web-{}", i % 20),
                &format!("192.168.3.{}", i % 250),
            ),
            2 => churn.delete_pod(&format!("churn-{}", i - 2)),
            _ => churn.create_namespace(&format!("ns-{i}")),
        }
        i += 1;
    }
    // One marker per watched kind: each watch is ordered, so once both are in, so is the churn.
    churn.create_namespace("marker");
    churn.create_pod("marker", "192.168.4.1");
    let markers = [
        "/calico/v1/policy/profile/kns.marker/rules",
        "/calico/v1/host/node-1/workload/k8s/team-a%2fmarker/endpoint/eth0",
    ];

    // Quiescent: every client must come to the daemon's final digest.
    stop.store(true, Ordering::Relaxed);
    let mut natives = natives
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect::<Vec<_>>();
    natives[0]
        .run_until(Duration::from_secs(60), |s| {
            markers.iter().all(|m| s.get(m).is_some())
        })
        .unwrap_or_else(|e| panic!("the markers never arrived: {e}"));
    let rec = daemon.status.digests(None).expect("digest record");
    let final_digest = rec.views[typha::model::SyncerType::Felix.index()];
    for (i, c) in natives.iter_mut().enumerate() {
        c.run_until(Duration::from_secs(30), |s| {
            s.digest() == final_digest.digest
        })
        .unwrap_or_else(|e| panic!("native client {i} never converged: {e}"));
    }
    let want = final_digest.digest.to_string();
    let settled = Instant::now();
    let deadline = settled + Duration::from_secs(60);
    loop {
        go.signal(libc::SIGUSR1);
        std::thread::sleep(Duration::from_millis(200));
        let lines = go.lines();
        let errors: Vec<_> = lines.iter().filter(|l| l["event"] == "error").collect();
        assert!(errors.is_empty(), "Go clients failed: {errors:?}");
        let latest = latest_by_client(&lines, "digest");
        let converged = latest.values().filter(|l| l["digest"] == want).count();
        if converged == GO_CLIENTS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{converged}/{GO_CLIENTS} Go clients converged on {want} ({} keys)",
            final_digest.key_count
        );
    }
    println!(
        "{i} API writes of churn; {GO_CLIENTS} Go and {NATIVE_CLIENTS} native clients on {} \
         keys; the Go clients matched {:.1} s after the native ones",
        final_digest.key_count,
        settled.elapsed().as_secs_f64()
    );
    let (status, lines) = go.stop();
    assert!(status.success(), "{:?}", summary(&lines));
    let s = summary(&lines);
    assert_eq!(s["refused"], 0);
    assert_eq!(s["errors"], 0);
    drop(natives);
    daemon.stop().unwrap();
}
