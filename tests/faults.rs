//! Faults, end to end: the `typha` binary on the Kubernetes datastore, watching the current
//! test kube-apiserver and etcd (`scripts/test-apiserver.sh`), while the API server restarts
//! mid-churn, etcd compacts away the history a watch resumes from (410), etcd stops for 30 s,
//! the API server stays away for twice the liveness timeout, and a tenth of the clients stop
//! reading until the daemon drops them.
//!
//! Each test ends the same way: every client's map digest equals the digest of a fresh
//! daemon's translation of what the API server then holds (a new `typha` process that listed
//! everything from scratch), so a fault that left a client with a stale, missing or extra key
//! fails the test. docs/operations.md ("Failure model") describes what each fault does.

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::HashSet;
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use typha::client::{BlockingClient, ClientOptions};
use typha::http::http_get;
use typha::model::Digest;
use typha::testing::ApiServer;

mod support;
use support::{start_apiserver, DaemonProcess};

const NS: &str = "team-a";
const HTTP: Duration = Duration::from_secs(5);

fn wep_key(pod: &str) -> String {
    format!("/calico/v1/host/node-1/workload/k8s/{NS}%2f{pod}/endpoint/eth0")
}

fn profile_key(ns: &str) -> String {
    format!("/calico/v1/policy/profile/kns.{ns}/rules")
}

// ---- the cluster ----------------------------------------------------------------------------

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn kube_client(rt: &tokio::runtime::Runtime, kubeconfig: &Path) -> kube::Client {
    rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(cfg).unwrap()
    })
}

fn run_ok(api: &ApiServer, cmd: &str) {
    api.run(cmd).unwrap_or_else(|e| panic!("{e}"));
}

/// Namespace `team-a`, Node `node-1` and `pods` running pods on it, each with an IP, and
/// `labels` extra labels per pod (to make their endpoints large).
fn populate(rt: &tokio::runtime::Runtime, kc: &kube::Client, pods: usize, labels: usize) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap();
    rt.block_on(Api::<Namespace>::all(kc.clone()).create(&PostParams::default(), &ns))
        .unwrap();
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": "node-1",
                     "annotations": {"projectcalico.org/IPv4Address": "10.0.0.1/24"}},
        "spec": {"podCIDR": "192.168.1.0/24"}
    }))
    .unwrap();
    rt.block_on(Api::<Node>::all(kc.clone()).create(&PostParams::default(), &node))
        .unwrap();
    let api: Api<Pod> = Api::namespaced(kc.clone(), NS);
    for i in 0..pods {
        let name = format!("web-{i}");
        let mut l = big_labels(labels, i as u64);
        l.insert("app".into(), json!("web"));
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": NS, "labels": l},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "nginx"}]}
        }))
        .unwrap();
        rt.block_on(api.create(&PostParams::default(), &pod))
            .unwrap();
        let ip = format!("192.168.1.{}", 10 + i);
        let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
        rt.block_on(api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)))
            .unwrap();
    }
}

/// `n` labels whose values vary with `seed` and compress poorly (so that a stream of them
/// fills socket buffers).
fn big_labels(n: usize, seed: u64) -> serde_json::Map<String, serde_json::Value> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut m = serde_json::Map::new();
    for i in 0..n {
        let v: String = (0..60)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let c = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                    [(x % 62) as usize];
                c as char
            })
            .collect();
        m.insert(format!("bulk-{i:05}"), json!(v));
    }
    m
}

/// Creates namespace `name` (its profile key is a marker: once a client holds it, the client
/// has everything written before it).
fn marker(rt: &tokio::runtime::Runtime, kc: &kube::Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    rt.block_on(Api::<Namespace>::all(kc.clone()).create(&PostParams::default(), &ns))
        .unwrap();
}

/// Removes a pod straight from etcd, behind the API server's back (as a write nobody watched).
fn etcd_delete_pod(api: &ApiServer, pod: &str) {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &api.env["ETCD_ENDPOINT"], "del"])
        .arg(format!("/registry/pods/{NS}/{pod}"))
        .output()
        .expect("etcdctl (installed by test-apiserver.sh)");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1", "{out:?}");
}

/// Label writes to the pods from another thread, tolerating failures (the API server may be
/// away); counts the writes that succeeded.
struct Churn {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Churn {
    fn start(kubeconfig: &Path, pods: usize, labels: usize) -> Churn {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let kubeconfig = kubeconfig.to_owned();
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let thread = std::thread::spawn(move || {
            let rt = rt();
            let kc = kube_client(&rt, &kubeconfig);
            let api: Api<Pod> = Api::namespaced(kc, NS);
            let mut n: u64 = 0;
            while !s.load(Ordering::Relaxed) {
                n += 1;
                let pod = format!("web-{}", n as usize % pods);
                let mut l = big_labels(labels, n << 20);
                l.insert("gen".into(), json!(n.to_string()));
                let patch = json!({"metadata": {"labels": l}});
                let res = rt.block_on(async {
                    tokio::time::timeout(
                        Duration::from_secs(5),
                        api.patch(&pod, &PatchParams::default(), &Patch::Merge(&patch)),
                    )
                    .await
                });
                match res {
                    Ok(Ok(_)) => {
                        o.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        f.fetch_add(1, Ordering::Relaxed);
                        // The API server is away: try again shortly.
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        });
        Churn {
            stop,
            ok,
            failed,
            thread: Some(thread),
        }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits until `more` further writes have succeeded.
    fn wait_for_writes(&self, more: u64, timeout: Duration) {
        let want = self.ok() + more;
        wait_until(&format!("{more} more churn writes"), timeout, || {
            (self.ok() >= want)
                .then_some(())
                .ok_or(format!("{} of {want}", self.ok()))
        });
    }

    fn stop(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        (self.ok(), self.failed.load(Ordering::Relaxed))
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---- the daemon and its clients ---------------------------------------------------------------

/// `typha` on the Kubernetes datastore of `api`, with `extra` flags; returned once ready.
fn daemon(api: &ApiServer, extra: &[&str]) -> DaemonProcess {
    let kubeconfig = api.kubeconfig().to_string_lossy().into_owned();
    let mut args = vec![
        "--datastore-type",
        "kubernetes",
        "--kubeconfig",
        &kubeconfig,
        "--shutdown-timeout-secs",
        "0",
    ];
    args.extend_from_slice(extra);
    let d = DaemonProcess::start(0, &args, &[]);
    d.wait_ready(Duration::from_secs(60));
    d
}

/// The sum of a metric's samples whose line starts with `prefix` (name and labels).
fn metric(d: &DaemonProcess, prefix: &str) -> f64 {
    let (_, body) = http_get(d.metrics, "/metrics", HTTP).unwrap();
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn vm_rss_kib(pid: libc::pid_t) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// What a client thread last saw.
#[derive(Debug, Clone, Default)]
struct View {
    seq: u64,
    digest: Digest,
    keys: HashSet<String>,
    connection: Option<u64>,
    updates: u64,
    in_sync: bool,
    error: Option<String>,
}

/// A felix client on its own thread, reading all the time (as a healthy Felix does).
struct Watcher {
    stop: Arc<AtomicBool>,
    view: Arc<Mutex<View>>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    fn start(d: &DaemonProcess) -> Watcher {
        let mut c = BlockingClient::connect(d.protocol, ClientOptions::default()).unwrap();
        c.run_until_in_sync(Duration::from_secs(60)).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let view = Arc::new(Mutex::new(View::default()));
        let (s, v) = (stop.clone(), view.clone());
        let publish = move |c: &BlockingClient, v: &Mutex<View>, error: Option<String>| {
            let st = c.state();
            *v.lock().unwrap() = View {
                seq: st.seq(),
                digest: st.digest(),
                keys: st.map().keys().cloned().collect(),
                connection: st.server_hello().map(|h| h.connection_id),
                updates: st.updates_received(),
                in_sync: st.is_in_sync(),
                error,
            };
        };
        publish(&c, &view, None);
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match c.run_until(Duration::from_millis(100), |_| false) {
                    Err(e) if e.is_timeout() => publish(&c, &v, None),
                    Err(e) => {
                        publish(&c, &v, Some(e.to_string()));
                        return;
                    }
                    Ok(()) => unreachable!("the condition is never true"),
                }
            }
        });
        Watcher {
            stop,
            view,
            thread: Some(thread),
        }
    }

    fn view(&self) -> View {
        self.view.lock().unwrap().clone()
    }

    fn wait_for(&self, what: &str, timeout: Duration, cond: impl Fn(&View) -> bool) {
        wait_until(what, timeout, || {
            let v = self.view();
            if let Some(e) = &v.error {
                panic!("client failed while waiting for {what}: {e}");
            }
            cond(&v).then_some(()).ok_or(format!(
                "seq {} with {} keys, in sync {}",
                v.seq,
                v.keys.len(),
                v.in_sync
            ))
        });
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + timeout;
    loop {
        match cond() {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => panic!("timed out waiting for {what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The digest and key count of a fresh daemon's felix view of what `api` holds now.
fn fresh_translation(api: &ApiServer) -> (Digest, usize) {
    let fresh = daemon(api, &[]);
    let mut c = BlockingClient::connect(fresh.protocol, ClientOptions::default()).unwrap();
    c.run_until_in_sync(Duration::from_secs(60)).unwrap();
    (c.state().digest(), c.state().len())
}

/// Every watcher ends with exactly the fresh translation's map.
fn assert_converged(api: &ApiServer, watchers: &[Watcher]) {
    let (digest, keys) = fresh_translation(api);
    for (i, w) in watchers.iter().enumerate() {
        w.wait_for(
            &format!("client {i} to match a fresh translation ({keys} keys)"),
            Duration::from_secs(60),
            |v| v.digest == digest,
        );
    }
}

// ---- the faults -----------------------------------------------------------------------------

#[test]
fn api_server_restart_mid_churn_ends_with_the_fresh_translation() {
    const PODS: usize = 20;
    let api = start_apiserver("fault-restart", "current", &[]);
    let rt = rt();
    let kc = kube_client(&rt, &api.kubeconfig());
    populate(&rt, &kc, PODS, 0);
    let d = daemon(&api, &[]);
    let watchers: Vec<Watcher> = (0..3).map(|_| Watcher::start(&d)).collect();
    let conns: Vec<Option<u64>> = watchers.iter().map(|w| w.view().connection).collect();
    let restarts_before = metric(&d, "typha_datastore_watch_restarts_total");

    let churn = Churn::start(&api.kubeconfig(), PODS, 0);
    churn.wait_for_writes(30, Duration::from_secs(60));
    run_ok(&api, "restart-apiserver");
    churn.wait_for_writes(30, Duration::from_secs(60));
    let (ok, failed) = churn.stop();
    eprintln!("churn: {ok} writes, {failed} failed while the API server restarted");

    marker(&rt, &kube_client(&rt, &api.kubeconfig()), "marker");
    for w in &watchers {
        w.wait_for("the marker", Duration::from_secs(60), |v| {
            v.keys.contains(&profile_key("marker"))
        });
    }
    assert!(
        metric(&d, "typha_datastore_watch_restarts_total") > restarts_before,
        "the restart made the watches resume or relist"
    );
    assert_converged(&api, &watchers);
    let now: Vec<Option<u64>> = watchers.iter().map(|w| w.view().connection).collect();
    assert_eq!(now, conns, "no client was disconnected");
}

#[test]
fn compaction_forces_410_and_the_relist_finds_what_changed() {
    // Without the watch cache, a watch resumes from etcd's own history, so only the
    // compaction can make it fail with 410 Expired.
    let api = start_apiserver("fault-compact", "current", &["--watch-cache=false"]);
    let rt = rt();
    let kc = kube_client(&rt, &api.kubeconfig());
    populate(&rt, &kc, 5, 0);
    let d = daemon(&api, &[]);
    let w = Watcher::start(&d);
    w.wait_for("web-0", Duration::from_secs(30), |v| {
        v.keys.contains(&wep_key("web-0"))
    });
    let conn = w.view().connection;
    let restarts_before = metric(&d, "typha_datastore_watch_restarts_total{kind=\"pod\"}");

    run_ok(&api, "stop-apiserver");
    etcd_delete_pod(&api, "web-0");
    run_ok(&api, "compact");
    run_ok(&api, "restart-apiserver");

    w.wait_for("web-0's endpoint to go", Duration::from_secs(60), |v| {
        !v.keys.contains(&wep_key("web-0")) && v.keys.contains(&wep_key("web-1"))
    });
    assert!(
        metric(&d, "typha_datastore_watch_restarts_total{kind=\"pod\"}") > restarts_before,
        "the pod watch relisted after its resume point was compacted"
    );
    assert_eq!(w.view().connection, conn, "the client stayed connected");
    assert_converged(&api, &[w]);
}

#[test]
fn etcd_stopped_for_30_seconds_keeps_the_last_state_served_then_catches_up() {
    let api = start_apiserver("fault-etcd", "current", &[]);
    let rt = rt();
    let kc = kube_client(&rt, &api.kubeconfig());
    populate(&rt, &kc, 5, 0);
    let d = daemon(&api, &["--datastore-unreachable-timeout-secs", "10"]);
    let watchers: Vec<Watcher> = (0..2).map(|_| Watcher::start(&d)).collect();
    let conns: Vec<Option<u64>> = watchers.iter().map(|w| w.view().connection).collect();
    let before = watchers[0].view();

    run_ok(&api, "stop-etcd");
    let down = Instant::now();
    // The outage is the test: for 30 s the API server answers but cannot read or write.
    let mut live_fail = 0;
    while down.elapsed() < Duration::from_secs(30) {
        let (code, _) = http_get(d.health, "/liveness", HTTP).unwrap();
        if code != 200 {
            live_fail += 1;
        }
        for w in &watchers {
            let v = w.view();
            assert!(v.error.is_none(), "{:?}", v.error);
            assert_eq!(v.digest, before.digest, "the served state did not change");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        live_fail, 0,
        "the API server still answers, so the daemon stays live"
    );
    run_ok(&api, "start-etcd");

    // Changes after the outage reach the clients.
    let kc = kube_client(&rt, &api.kubeconfig());
    wait_until(
        "the API server to write again",
        Duration::from_secs(60),
        || {
            let ns: Namespace =
                serde_json::from_value(json!({"metadata": {"name": "after-etcd"}})).unwrap();
            match rt.block_on(Api::<Namespace>::all(kc.clone()).create(&PostParams::default(), &ns))
            {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        },
    );
    let pods: Api<Pod> = Api::namespaced(kc.clone(), NS);
    rt.block_on(pods.delete(
        "web-0",
        &kube::api::DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    ))
    .unwrap();
    for w in &watchers {
        w.wait_for(
            "the changes after the outage",
            Duration::from_secs(60),
            |v| v.keys.contains(&profile_key("after-etcd")) && !v.keys.contains(&wep_key("web-0")),
        );
    }
    assert_converged(&api, &watchers);
    let now: Vec<Option<u64>> = watchers.iter().map(|w| w.view().connection).collect();
    assert_eq!(now, conns, "no client was disconnected");
}

#[test]
fn api_server_away_twice_the_liveness_timeout_fails_liveness_then_resyncs_only_the_diff() {
    const TIMEOUT: Duration = Duration::from_secs(3);
    const PODS: usize = 20;
    let api = start_apiserver("fault-away", "current", &[]);
    let rt = rt();
    let kc = kube_client(&rt, &api.kubeconfig());
    populate(&rt, &kc, PODS, 0);
    let d = daemon(&api, &["--datastore-unreachable-timeout-secs", "3"]);
    let watchers: Vec<Watcher> = (0..3).map(|_| Watcher::start(&d)).collect();
    let conns: Vec<Option<u64>> = watchers.iter().map(|w| w.view().connection).collect();
    let updates_before: Vec<u64> = watchers.iter().map(|w| w.view().updates).collect();
    let total_before = metric(&d, "typha_updates_total ");
    let skipped_before = metric(&d, "typha_updates_skipped ");

    // The daemon's last answer from the API server is no earlier than this.
    let down = Instant::now();
    run_ok(&api, "stop-apiserver");
    // While it is away, one pod goes: the only difference the resync may send.
    etcd_delete_pod(&api, "web-0");
    wait_until(
        "/liveness to fail",
        Duration::from_secs(30),
        || match http_get(d.health, "/liveness", HTTP).unwrap() {
            (503, _) => Ok(()),
            (code, body) => Err(format!("{code} {body}")),
        },
    );
    let failed_after = down.elapsed();
    assert!(
        failed_after >= TIMEOUT - Duration::from_millis(750),
        "liveness failed after {failed_after:?}, before the {TIMEOUT:?} timeout"
    );
    // Readiness is about the data: the last in-sync state is still served.
    assert_eq!(http_get(d.health, "/readiness", HTTP).unwrap().0, 200);
    // Away for twice the timeout in all (waiting for wall-clock time is the test here).
    if let Some(rest) = (2 * TIMEOUT).checked_sub(down.elapsed()) {
        std::thread::sleep(rest);
    }
    run_ok(&api, "restart-apiserver");
    wait_until(
        "/liveness to recover",
        Duration::from_secs(30),
        || match http_get(d.health, "/liveness", HTTP).unwrap() {
            (200, _) => Ok(()),
            (code, body) => Err(format!("{code} {body}")),
        },
    );
    for w in &watchers {
        w.wait_for("web-0's deletion", Duration::from_secs(60), |v| {
            !v.keys.contains(&wep_key("web-0"))
        });
    }
    assert_converged(&api, &watchers);

    // The resync relisted everything, but clients were sent only the one deletion.
    let sent: Vec<u64> = watchers
        .iter()
        .zip(&updates_before)
        .map(|(w, b)| w.view().updates - b)
        .collect();
    let total = metric(&d, "typha_updates_total ") - total_before;
    let skipped = metric(&d, "typha_updates_skipped ") - skipped_before;
    eprintln!("resync: {total} updates from the datastore, {skipped} skipped, sent {sent:?}");
    assert_eq!(sent, vec![1; watchers.len()], "only the diff is sent");
    let now: Vec<Option<u64>> = watchers.iter().map(|w| w.view().connection).collect();
    assert_eq!(now, conns, "no client was disconnected");
}

/// `typha client --follow` as a child process (so it can be SIGSTOPped), its JSON events
/// collected by a thread.
struct ClientProcess {
    child: std::process::Child,
    events: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl ClientProcess {
    fn start(d: &DaemonProcess) -> ClientProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_typha"))
            .args(["client", "--follow", "--json", "--quiet-updates"])
            .args(["--log-severity", "none", "--addr"])
            .arg(d.protocol.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let e = events.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if let Ok(v) = serde_json::from_str(&line) {
                    e.lock().unwrap().push(v);
                }
            }
        });
        ClientProcess { child, events }
    }

    fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: signalling our own child process, which is not yet reaped.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    /// The `snapshot-complete` events so far: (seq, digest).
    fn snapshots(&self) -> Vec<(u64, String)> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["event"] == "snapshot-complete")
            .map(|v| {
                (
                    v["seq"].as_u64().unwrap(),
                    v["digest"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        // SAFETY: as in `signal`; a stopped process must be continued to die promptly.
        unsafe { libc::kill(self.pid(), libc::SIGCONT) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn stopped_clients_are_dropped_reconnect_and_converge_with_bounded_memory() {
    const PODS: usize = 4;
    // About 160 KB of poorly compressible labels per endpoint, so that megabytes flow to every
    // client while some are stopped.
    const LABELS: usize = 2000;
    const CLIENTS: usize = 20;
    const STOPPED: usize = CLIENTS / 10;
    let api = start_apiserver("fault-stopped", "current", &[]);
    let rt = rt();
    let kc = kube_client(&rt, &api.kubeconfig());
    populate(&rt, &kc, PODS, LABELS);
    // A stopped client is dropped by whichever detector fires first: the write timeout once
    // its socket buffers are full, or the pong timeout. Loopback buffers can take tens of MiB
    // (tcp_rmem's maximum is 32 MiB here), more than the churn below may write in 20 s.
    let d = daemon(
        &api,
        &[
            "--server-write-timeout-secs",
            "2",
            "--server-pong-timeout-secs",
            "20",
        ],
    );
    let watchers: Vec<Watcher> = (0..CLIENTS - STOPPED).map(|_| Watcher::start(&d)).collect();
    let stopped: Vec<ClientProcess> = (0..STOPPED).map(|_| ClientProcess::start(&d)).collect();
    for c in &stopped {
        wait_until(
            "the client process's snapshot",
            Duration::from_secs(60),
            || {
                (c.snapshots().len() == 1)
                    .then_some(())
                    .ok_or_else(String::new)
            },
        );
    }
    let rss_before = vm_rss_kib(d.pid());
    let written_before = metric(&d, "typha_bytes_written_total");
    for c in &stopped {
        c.signal(libc::SIGSTOP);
    }

    // Churn until the daemon has dropped every stopped client.
    let churn = Churn::start(&api.kubeconfig(), PODS, LABELS);
    let mut rss_peak = rss_before;
    wait_until(
        "the stopped clients to be dropped",
        Duration::from_secs(120),
        || {
            rss_peak = rss_peak.max(vm_rss_kib(d.pid()));
            let dropped = metric(&d, "typha_connections_dropped_by_reason_total");
            (dropped >= STOPPED as f64).then_some(()).ok_or(format!(
                "{dropped} dropped; {} churn writes, {} failed; {:.1} MiB written",
                churn.ok(),
                churn.failed.load(Ordering::Relaxed),
                (metric(&d, "typha_bytes_written_total") - written_before) / 1048576.0
            ))
        },
    );
    let by_write = metric(
        &d,
        "typha_connections_dropped_by_reason_total{reason=\"write-timeout\"}",
    );
    let by_pong = metric(
        &d,
        "typha_connections_dropped_by_reason_total{reason=\"pong-timeout\"}",
    );
    assert_eq!(
        by_write + by_pong,
        STOPPED as f64,
        "exactly the stopped clients were dropped, as unresponsive"
    );
    let (writes, _) = churn.stop();
    rss_peak = rss_peak.max(vm_rss_kib(d.pid()));
    let written = metric(&d, "typha_bytes_written_total") - written_before;

    // Continued, they find their connection gone, reconnect and take a new snapshot that
    // matches the daemon's record for its sequence number.
    for c in &stopped {
        c.signal(libc::SIGCONT);
    }
    for c in &stopped {
        wait_until(
            "the client process to resync",
            Duration::from_secs(60),
            || {
                (c.snapshots().len() >= 2)
                    .then_some(())
                    .ok_or_else(String::new)
            },
        );
        let (seq, digest) = c.snapshots()[1].clone();
        let (code, body) = http_get(d.metrics, &format!("/digest?seq={seq}"), HTTP).unwrap();
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["syncers"]["felix"]["digest"], digest.as_str());
    }
    assert_converged(&api, &watchers);
    for w in &watchers {
        assert_eq!(w.view().error, None, "a reading client was never dropped");
    }

    // Memory: the frames are shared, so what the daemon holds for clients that read nothing
    // is bounded by what was sent while they were stopped, not multiplied by the clients.
    let grew_mib = rss_peak.saturating_sub(rss_before) as f64 / 1024.0;
    let per_client_mib = written / (CLIENTS - STOPPED) as f64 / 1048576.0;
    eprintln!(
        "dropped: {by_write} for the write timeout, {by_pong} for the pong timeout; \
         {writes} writes; daemon VmRSS {} MiB before, peak {} MiB (+{grew_mib:.1} MiB); \
         {per_client_mib:.1} MiB sent to each reading client meanwhile",
        rss_before / 1024,
        rss_peak / 1024
    );
    assert!(
        grew_mib < per_client_mib * 2.0 + 64.0,
        "the daemon grew by {grew_mib:.1} MiB while {per_client_mib:.1} MiB went to each client"
    );
}
