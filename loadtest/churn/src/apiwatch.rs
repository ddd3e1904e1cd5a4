//! `typha-loadtest apiwatch`: what Typha saves the API server. N independent pod watches, each
//! on its own HTTP connection as N Felixes without Typha would hold, against a Kubernetes API
//! server on loopback; the API server's CPU time and RSS over the window, and the watch-event
//! latency, are the figures.
//!
//! - Every watcher has its own `kube::Client` (its own connection pool): kube speaks HTTP/1.1
//!   only (no ALPN), so a long-running watch holds a connection to itself anyway, but separate
//!   clients make that independent of the pool's behaviour. The established connections to the
//!   server's port are counted from `/proc/self/net/tcp*` once every watch is open and reported
//!   as `connections`.
//! - The watches are opened, from the resourceVersion of a list taken just before, before the
//!   window starts; the API server's RSS is sampled before the first one opens, so
//!   `rss_per_watcher_kib` is what the watches themselves cost it.
//! - Latency is the time an event was decoded minus the `typha-loadtest/stamp` label (unix
//!   nanoseconds, decimal) of the pod in it. With `--write-rate R` the tool writes that label
//!   itself on `--write-pods` pods of its own (namespace `--namespace`) at R writes/s during the
//!   window, which keeps it self-contained; with `--write-rate 0` another writer (e.g. `churn
//!   --mix labels=100`) must write it. A delivery is an ADDED or MODIFIED event whose stamp lies
//!   in the window and differs from the last one that watcher saw for that pod (a status write
//!   to a pod repeats its labels; it is not a new delivery of the label write).
//! - After the window, when the tool wrote the stamps itself, it waits (at most
//!   [`DRAIN_TIMEOUT`]) until every watcher has seen every write; the CPU window ends then.
//! - `--watchers 0 --write-rate R` only writes: the writer for a typha daemon watching the same
//!   server (`typha --datastore-type kubernetes`) with `typha-loadtest run` clients behind it,
//!   while still measuring the API server's CPU.
//!
//! Only a kubeconfig whose server is on loopback is accepted.

use futures::StreamExt;
use hdrhistogram::Histogram;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{watch, Semaphore};
use typha_loadtest_common::hist::{new_histogram, HistSummary};
use typha_loadtest_common::loopback::{is_loopback_url, loopback_server};
use typha_loadtest_common::sys;

/// The label whose value is the unix time in nanoseconds at which it was written.
pub const STAMP_LABEL: &str = "typha-loadtest/stamp";
/// Label on the pods apiwatch writes.
pub const POD_LABEL: &str = "typha-loadtest/apiwatch";
pub const POD_PREFIX: &str = "apiwatch-pod-";
pub const NODE_NAME: &str = "apiwatch-node";
pub const MAX_WATCHERS: usize = 100_000;
pub const MAX_WRITE_RATE: f64 = 10_000.0;
pub const MAX_WRITE_PODS: usize = 1_000;
/// Longest wait after the window for watchers to see the last writes.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Writes in flight at once.
const MAX_WRITES_IN_FLIGHT: usize = 64;
/// Watch or write errors logged on stderr; later ones are only counted.
const LOGGED_ERRORS: u64 = 10;

#[derive(Debug, Clone, clap::Args)]
pub struct ApiwatchArgs {
    /// Kubeconfig of the API server. Its server must be on loopback.
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// Independent pod watches (all namespaces, or --selector), each on its own connection.
    #[arg(long, default_value_t = 100)]
    pub watchers: usize,
    /// Seconds of the measurement window.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// The API server's process id: its CPU time and RSS are sampled over the window.
    #[arg(long)]
    pub apiserver_pid: Option<u32>,
    /// Write the stamp label on this tool's own pods at this many writes per second during the
    /// window (0: someone else writes it).
    #[arg(long, default_value_t = 10.0)]
    pub write_rate: f64,
    /// Pods the writer creates and writes in turn.
    #[arg(long, default_value_t = 10)]
    pub write_pods: usize,
    /// Namespace of the writer's pods.
    #[arg(long, default_value = "typha-apiwatch")]
    pub namespace: String,
    /// Label selector of the watches (default: every pod).
    #[arg(long)]
    pub selector: Option<String>,
    /// Print one JSON object on stdout at the end instead of the summary.
    #[arg(long)]
    pub json: bool,
}

/// A validated `apiwatch`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiwatchConfig {
    pub kubeconfig: PathBuf,
    pub watchers: usize,
    pub duration: Duration,
    pub apiserver_pid: Option<u32>,
    pub write_rate: f64,
    pub write_pods: usize,
    pub namespace: String,
    pub selector: Option<String>,
    pub json: bool,
}

impl ApiwatchArgs {
    pub fn validate(&self) -> Result<ApiwatchConfig, String> {
        if self.watchers > MAX_WATCHERS {
            return Err(format!("--watchers must be at most {MAX_WATCHERS}"));
        }
        if !(self.duration.is_finite()
            && self.duration > 0.0
            && self.duration <= typha_loadtest_common::MAX_DURATION_SECS)
        {
            return Err(format!(
                "--duration must be more than 0 and at most {} seconds",
                typha_loadtest_common::MAX_DURATION_SECS
            ));
        }
        if !(self.write_rate.is_finite()
            && self.write_rate >= 0.0
            && self.write_rate <= MAX_WRITE_RATE)
        {
            return Err(format!(
                "--write-rate must be from 0 to {MAX_WRITE_RATE} writes per second"
            ));
        }
        if self.write_rate > 0.0 && !(1..=MAX_WRITE_PODS).contains(&self.write_pods) {
            return Err(format!(
                "--write-pods must be between 1 and {MAX_WRITE_PODS}"
            ));
        }
        if self.watchers == 0 && self.write_rate == 0.0 {
            return Err("nothing to do: --watchers 0 and --write-rate 0".into());
        }
        if self.apiserver_pid == Some(0) {
            return Err("--apiserver-pid 0 is not a process".into());
        }
        let ns_ok = !self.namespace.is_empty()
            && self.namespace.len() <= 63
            && self
                .namespace
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ns_ok {
            return Err(format!(
                "--namespace {:?} is not a namespace name (lower-case letters, digits, '-')",
                self.namespace
            ));
        }
        Ok(ApiwatchConfig {
            kubeconfig: self.kubeconfig.clone(),
            watchers: self.watchers,
            duration: Duration::from_secs_f64(self.duration),
            apiserver_pid: self.apiserver_pid,
            write_rate: self.write_rate,
            write_pods: self.write_pods,
            namespace: self.namespace.clone(),
            selector: self.selector.clone(),
            json: self.json,
        })
    }
}

/// What one `apiwatch` measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApiwatchReport {
    pub watchers: usize,
    pub watchers_open: usize,
    pub connections: Option<usize>,
    pub duration_secs: f64,
    pub window_secs: f64,
    pub write_rate: f64,
    pub writes: u64,
    pub write_errors: u64,
    pub watch_errors: u64,
    /// `writes × watchers` when this tool wrote the stamps; unknown otherwise.
    pub expected_deliveries: Option<u64>,
    pub delivered: u64,
    pub latency: HistSummary,
    pub apiserver_cpu_secs: Option<f64>,
    pub apiserver_rss_start_kib: Option<u64>,
    pub apiserver_rss_end_kib: Option<u64>,
}

impl ApiwatchReport {
    pub fn cpu_us_per_delivery(&self) -> Option<f64> {
        let cpu = self.apiserver_cpu_secs?;
        (self.delivered > 0).then(|| cpu * 1e6 / self.delivered as f64)
    }

    pub fn rss_per_watcher_kib(&self) -> Option<f64> {
        let (s, e) = (self.apiserver_rss_start_kib?, self.apiserver_rss_end_kib?);
        (self.watchers > 0).then(|| (e as f64 - s as f64) / self.watchers as f64)
    }

    pub fn failure_reasons(&self) -> Vec<String> {
        let mut r = Vec::new();
        if self.watchers_open < self.watchers {
            r.push(format!(
                "only {} of {} watches opened",
                self.watchers_open, self.watchers
            ));
        }
        if self.write_errors > 0 {
            r.push(format!("{} write(s) failed", self.write_errors));
        }
        if let Some(exp) = self.expected_deliveries {
            if self.delivered < exp {
                r.push(format!(
                    "{} of {exp} expected deliveries arrived",
                    self.delivered
                ));
            }
        }
        if self.write_rate > 0.0 && self.writes == 0 {
            r.push("no write succeeded".into());
        }
        r
    }

    pub fn passed(&self) -> bool {
        self.failure_reasons().is_empty()
    }

    pub fn to_json(&self) -> Value {
        let l = self.latency;
        json!({
            "watchers": self.watchers,
            "watchers_open": self.watchers_open,
            "connections": self.connections,
            "duration_secs": self.duration_secs,
            "window_secs": self.window_secs,
            "write_rate": self.write_rate,
            "writes": self.writes,
            "write_errors": self.write_errors,
            "watch_errors": self.watch_errors,
            "expected_deliveries": self.expected_deliveries,
            "delivered": self.delivered,
            "apiserver_cpu_secs": self.apiserver_cpu_secs,
            "cpu_us_per_delivery": self.cpu_us_per_delivery(),
            "apiserver_rss_start_kib": self.apiserver_rss_start_kib,
            "apiserver_rss_end_kib": self.apiserver_rss_end_kib,
            "rss_per_watcher_kib": self.rss_per_watcher_kib(),
            "latency_us": {"count": l.count, "p50": l.p50, "p90": l.p90, "p99": l.p99, "max": l.max},
            "failure_reasons": self.failure_reasons(),
            "passed": self.passed(),
        })
    }

    pub fn render_text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "typha-loadtest apiwatch: {} watchers ({} open, {} connections), window {:.2} s",
            self.watchers,
            self.watchers_open,
            self.connections
                .map_or("unknown".to_owned(), |c| c.to_string()),
            self.window_secs
        );
        let _ = writeln!(
            o,
            "writes:    {} at {}/s ({} failed); watch errors {}",
            self.writes, self.write_rate, self.write_errors, self.watch_errors
        );
        let _ = writeln!(
            o,
            "delivered: {} of {}",
            self.delivered,
            self.expected_deliveries
                .map_or("unknown (another writer)".to_owned(), |e| e.to_string())
        );
        let _ = writeln!(o, "latency:   {}", self.latency);
        match self.apiserver_cpu_secs {
            Some(c) => {
                let _ = write!(
                    o,
                    "API server CPU: {c:.2} s ({:.0}% of a core)",
                    c * 100.0 / self.window_secs.max(1e-9)
                );
                if let Some(us) = self.cpu_us_per_delivery() {
                    let _ = write!(o, ", {us:.1} µs per delivery");
                }
                o.push('\n');
            }
            None => o.push_str("API server CPU: not measured (no --apiserver-pid)\n"),
        }
        if let (Some(s), Some(e)) = (self.apiserver_rss_start_kib, self.apiserver_rss_end_kib) {
            let _ = write!(
                o,
                "API server RSS: {s} KiB before the watches, {e} KiB at the end"
            );
            if let Some(p) = self.rss_per_watcher_kib() {
                let _ = write!(o, " ({p:.1} KiB per watcher)");
            }
            o.push('\n');
        }
        let reasons = self.failure_reasons();
        if reasons.is_empty() {
            o.push_str("result: PASS\n");
        } else {
            let _ = writeln!(o, "result: FAIL ({})", reasons.join("; "));
        }
        o
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The stamp label of a pod, if it has a valid one.
pub fn pod_stamp(pod: &Pod) -> Option<u64> {
    pod.metadata.labels.as_ref()?.get(STAMP_LABEL)?.parse().ok()
}

/// Counts and latencies the watchers share.
struct Shared {
    /// Stamps accepted from this unix-nanosecond time on; `u64::MAX` before the window.
    window_start: AtomicU64,
    /// Stamps accepted up to this time.
    window_end: AtomicU64,
    delivered: AtomicU64,
    watch_errors: AtomicU64,
    open: AtomicUsize,
    latency: Mutex<Histogram<u64>>,
}

impl Shared {
    fn error(&self, what: std::fmt::Arguments<'_>) {
        if self.watch_errors.fetch_add(1, Ordering::Relaxed) < LOGGED_ERRORS {
            eprintln!("typha-loadtest apiwatch: {what}");
        }
    }
}

/// One watcher: the last stamp it saw per pod, so a repeat is not counted twice.
async fn watcher(
    client: kube::Client,
    selector: Option<String>,
    start_rv: String,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let api: Api<Pod> = Api::all(client);
    let mut wp = WatchParams::default();
    if let Some(s) = &selector {
        wp = wp.labels(s);
    }
    let mut rv = start_rv;
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut opened = false;
    while !*stop.borrow() {
        let stream = tokio::select! {
            r = api.watch(&wp, &rv) => r,
            _ = stop.changed() => return,
        };
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                shared.error(format_args!("watch from {rv}: {e}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if !opened {
            opened = true;
            shared.open.fetch_add(1, Ordering::Relaxed);
        }
        futures::pin_mut!(stream);
        loop {
            let ev = tokio::select! {
                ev = stream.next() => ev,
                _ = stop.changed() => return,
            };
            let pod = match ev {
                // The server closed the watch (its timeout): continue from the last version.
                None => break,
                Some(Err(e)) => {
                    shared.error(format_args!("watch stream: {e}"));
                    break;
                }
                Some(Ok(WatchEvent::Added(p) | WatchEvent::Modified(p))) => p,
                Some(Ok(WatchEvent::Deleted(p))) => {
                    if let Some(v) = &p.metadata.resource_version {
                        rv.clone_from(v);
                    }
                    continue;
                }
                Some(Ok(WatchEvent::Bookmark(b))) => {
                    rv = b.metadata.resource_version;
                    continue;
                }
                Some(Ok(WatchEvent::Error(s))) => {
                    shared.error(format_args!("watch error event: {} {}", s.code, s.message));
                    if s.code == 410 {
                        // Expired: restart from now (what was missed is counted as missing).
                        match current_rv(&api).await {
                            Ok(v) => rv = v,
                            Err(e) => shared.error(format_args!("list after 410: {e}")),
                        }
                    }
                    break;
                }
            };
            let received = unix_nanos();
            if let Some(v) = &pod.metadata.resource_version {
                rv.clone_from(v);
            }
            let Some(stamp) = pod_stamp(&pod) else {
                continue;
            };
            let key = format!(
                "{}/{}",
                pod.metadata.namespace.as_deref().unwrap_or(""),
                pod.metadata.name.as_deref().unwrap_or("")
            );
            if last.insert(key, stamp) == Some(stamp) {
                continue;
            }
            let start = shared.window_start.load(Ordering::Acquire);
            let end = shared.window_end.load(Ordering::Acquire);
            if stamp < start || stamp > end {
                continue;
            }
            shared.delivered.fetch_add(1, Ordering::Relaxed);
            let us = received.saturating_sub(stamp) / 1_000;
            if let Ok(mut h) = shared.latency.lock() {
                let _ = h.record(us.max(1));
            }
        }
    }
}

/// The resourceVersion of the pod collection now (a one-item list).
async fn current_rv(api: &Api<Pod>) -> Result<String, kube::Error> {
    let list = api.list(&ListParams::default().limit(1)).await?;
    Ok(list.metadata.resource_version.unwrap_or_default())
}

async fn connect(cfg: &kube::Config) -> anyhow::Result<kube::Client> {
    Ok(kube::Client::try_from(cfg.clone())?)
}

async fn load_config(path: &Path) -> anyhow::Result<kube::Config> {
    let server = loopback_server(path).map_err(anyhow::Error::msg)?;
    let kc = kube::config::Kubeconfig::read_from(path)?;
    let mut cfg =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    let url = cfg.cluster_url.to_string();
    if !is_loopback_url(&url) {
        anyhow::bail!(
            "--kubeconfig {}: {server} is not on loopback",
            path.display()
        );
    }
    // Loopback only: never through a proxy.
    cfg.proxy_url = None;
    Ok(cfg)
}

fn pod_name(i: usize) -> String {
    format!("{POD_PREFIX}{i}")
}

/// Creates the namespace and the writer's pods (each on a node and with an IP, so that a typha
/// daemon watching the server turns them into workload endpoints). Existing ones are kept.
async fn setup_pods(client: &kube::Client, cfg: &ApiwatchConfig) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let nss: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": cfg.namespace}}))?;
    match nss.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e).context(format!("creating namespace {}", cfg.namespace)),
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &cfg.namespace);
    for i in 0..cfg.write_pods {
        let name = pod_name(i);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {POD_LABEL: "true"}},
            "spec": {"nodeName": NODE_NAME,
                     "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.9"}]}
        }))?;
        match pods.create(&PostParams::default(), &pod).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(e).context(format!("creating pod {name}")),
        }
        let ip = format!("10.250.{}.{}", i / 250, i % 250 + 1);
        let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
        pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .with_context(|| format!("setting the IP of pod {name}"))?;
    }
    Ok(())
}

/// Writes the stamp label at `rate`/s until `until`, pods in turn; returns (writes, errors).
async fn write_stamps(
    client: kube::Client,
    cfg: &ApiwatchConfig,
    until: tokio::time::Instant,
) -> (u64, u64) {
    let pods: Api<Pod> = Api::namespaced(client, &cfg.namespace);
    let writes = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let slots = Arc::new(Semaphore::new(MAX_WRITES_IN_FLIGHT));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / cfg.write_rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = tokio::task::JoinSet::new();
    let mut i = 0usize;
    loop {
        tick.tick().await;
        if tokio::time::Instant::now() >= until {
            break;
        }
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let (pods, writes, errors) = (pods.clone(), writes.clone(), errors.clone());
        let name = pod_name(i % cfg.write_pods);
        i += 1;
        tasks.spawn(async move {
            let stamp = unix_nanos().to_string();
            let patch = json!({"metadata": {"labels": {STAMP_LABEL: stamp}}});
            match pods
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    writes.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    if errors.fetch_add(1, Ordering::Relaxed) < LOGGED_ERRORS {
                        eprintln!("typha-loadtest apiwatch: writing the stamp of {name}: {e}");
                    }
                }
            }
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    (
        writes.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
    )
}

/// Established TCP connections of this process to `port` (from `/proc/self/fd` and
/// `/proc/self/net/tcp{,6}`), or `None` where that cannot be read.
pub fn connections_to_port(port: u16) -> Option<usize> {
    let mut inodes = std::collections::HashSet::new();
    for e in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        if let Ok(target) = std::fs::read_link(e.path()) {
            let t = target.to_string_lossy();
            if let Some(n) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                inodes.insert(n.to_owned());
            }
        }
    }
    let mut n = 0;
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        n += count_established(&text, port, |inode| inodes.contains(inode));
    }
    Some(n)
}

/// Rows of a `/proc/net/tcp` table in state ESTABLISHED (01) whose remote port is `port` and
/// whose inode `mine` accepts.
pub fn count_established(table: &str, port: u16, mine: impl Fn(&str) -> bool) -> usize {
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_ascii_whitespace().collect();
            if f.len() < 10 || f[3] != "01" {
                return false;
            }
            let remote_port = f[2]
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            remote_port == Some(port) && mine(f[9])
        })
        .count()
}

/// The port of a server URL (`https://host:port/...`), or the scheme's default.
fn server_port(url: &str) -> Option<u16> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let after_host = authority.rsplit_once(']').map_or(authority, |(_, r)| r);
    match after_host.rsplit_once(':') {
        Some((_, p)) => p.parse().ok(),
        None => match scheme {
            "https" => Some(443),
            "http" => Some(80),
            _ => None,
        },
    }
}

fn rss_kib(pid: Option<u32>) -> anyhow::Result<Option<sys::ProcSample>> {
    pid.map(|p| {
        sys::sample_process(p)
            .map_err(|e| anyhow::anyhow!("cannot sample the API server (pid {p}): {e}"))
    })
    .transpose()
}

pub fn run(cfg: ApiwatchConfig) -> anyhow::Result<ApiwatchReport> {
    let nofile = sys::raise_nofile_limit()
        .map_err(|e| anyhow::anyhow!("cannot raise RLIMIT_NOFILE: {e}"))?;
    if (nofile as usize) < cfg.watchers + 100 {
        anyhow::bail!(
            "{} watchers need about {} file descriptors, RLIMIT_NOFILE allows {nofile}",
            cfg.watchers,
            cfg.watchers + 100
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_async(cfg))
}

async fn run_async(cfg: ApiwatchConfig) -> anyhow::Result<ApiwatchReport> {
    let kcfg = load_config(&cfg.kubeconfig).await?;
    let port = server_port(&kcfg.cluster_url.to_string());
    let control = connect(&kcfg).await?;
    let writing = cfg.write_rate > 0.0;
    if writing {
        setup_pods(&control, &cfg).await?;
    }
    let before = rss_kib(cfg.apiserver_pid)?;

    let shared = Arc::new(Shared {
        window_start: AtomicU64::new(u64::MAX),
        window_end: AtomicU64::new(u64::MAX),
        delivered: AtomicU64::new(0),
        watch_errors: AtomicU64::new(0),
        open: AtomicUsize::new(0),
        latency: Mutex::new(new_histogram()),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let pods_all: Api<Pod> = Api::all(control.clone());
    let start_rv = current_rv(&pods_all).await?;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..cfg.watchers {
        let client = connect(&kcfg).await?;
        tasks.spawn(watcher(
            client,
            cfg.selector.clone(),
            start_rv.clone(),
            shared.clone(),
            stop_rx.clone(),
        ));
    }
    // Every watch open before the window (or the deadline: then the report says how many).
    let open_deadline = Instant::now() + Duration::from_secs(60 + cfg.watchers as u64 / 50);
    while shared.open.load(Ordering::Relaxed) < cfg.watchers && Instant::now() < open_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let watchers_open = shared.open.load(Ordering::Relaxed);
    let connections = port.and_then(connections_to_port);
    // Let the server settle after the burst of watch requests before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let t0 = Instant::now();
    let cpu0 = rss_kib(cfg.apiserver_pid)?;
    shared.window_start.store(unix_nanos(), Ordering::Release);
    let until = tokio::time::Instant::now() + cfg.duration;
    let (writes, write_errors) = if writing {
        // The writer runs on its own thread and runtime, so thousands of busy watchers cannot
        // delay the writes (a real writer is another process).
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (wcfg, kc, deadline) = (cfg.clone(), kcfg.clone(), until.into_std());
        std::thread::Builder::new()
            .name("apiwatch-writer".into())
            .spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(anyhow::Error::from)
                    .and_then(|rt| {
                        rt.block_on(async {
                            let client = connect(&kc).await?;
                            let until = tokio::time::Instant::from_std(deadline);
                            Ok(write_stamps(client, &wcfg, until).await)
                        })
                    });
                let _ = tx.send(result);
            })?;
        rx.await
            .map_err(|_| anyhow::anyhow!("the writer thread ended without a result"))??
    } else {
        tokio::time::sleep_until(until).await;
        (0, 0)
    };
    shared.window_end.store(unix_nanos(), Ordering::Release);
    let expected = writing.then(|| writes * cfg.watchers as u64);
    if let Some(exp) = expected {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while shared.delivered.load(Ordering::Relaxed) < exp && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let cpu1 = rss_kib(cfg.apiserver_pid)?;
    let window_secs = t0.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}

    let latency = shared
        .latency
        .lock()
        .map(|h| HistSummary::of(&h))
        .unwrap_or_default();
    Ok(ApiwatchReport {
        watchers: cfg.watchers,
        watchers_open,
        connections,
        duration_secs: cfg.duration.as_secs_f64(),
        window_secs,
        write_rate: cfg.write_rate,
        writes,
        write_errors,
        watch_errors: shared.watch_errors.load(Ordering::Relaxed),
        expected_deliveries: expected,
        delivered: shared.delivered.load(Ordering::Relaxed),
        latency,
        apiserver_cpu_secs: match (cpu0, cpu1) {
            (Some(a), Some(b)) => Some((b.cpu_secs - a.cpu_secs).max(0.0)),
            _ => None,
        },
        apiserver_rss_start_kib: before.map(|s| s.rss_bytes / 1024),
        apiserver_rss_end_kib: cpu1.map(|s| s.rss_bytes / 1024),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The `apiwatch` subcommand's flags on their own.
    #[derive(Debug, Parser)]
    struct ApiwatchCli {
        #[command(flatten)]
        apiwatch: ApiwatchArgs,
    }

    fn args(extra: &[&str]) -> Result<ApiwatchConfig, String> {
        let mut v = vec!["apiwatch"];
        v.extend_from_slice(extra);
        ApiwatchCli::try_parse_from(v)
            .map_err(|e| e.to_string())?
            .apiwatch
            .validate()
    }

    #[test]
    fn flags() {
        assert!(args(&[]).unwrap_err().contains("--kubeconfig"));
        let c = args(&["--kubeconfig", "kc"]).unwrap();
        assert_eq!(c.watchers, 100);
        assert_eq!(c.duration, Duration::from_secs(10));
        assert_eq!(c.write_rate, 10.0);
        assert_eq!(c.write_pods, 10);
        assert_eq!(c.namespace, "typha-apiwatch");
        assert!(!c.json && c.apiserver_pid.is_none() && c.selector.is_none());
        let c = args(&[
            "--kubeconfig",
            "kc",
            "--watchers",
            "0",
            "--write-rate",
            "5",
            "--apiserver-pid",
            "42",
            "--json",
        ])
        .unwrap();
        assert_eq!((c.watchers, c.apiserver_pid, c.json), (0, Some(42), true));
        for bad in [
            &["--watchers", "0", "--write-rate", "0"][..],
            &["--duration", "0"],
            &["--duration", "NaN"],
            &["--write-rate", "-1"],
            &["--write-pods", "0"],
            &["--apiserver-pid", "0"],
            &["--namespace", "Bad_NS"],
            &["--watchers", "1000001"],
        ] {
            let mut v = vec!["--kubeconfig", "kc"];
            v.extend_from_slice(bad);
            assert!(args(&v).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn established_rows() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:A3F2 0100007F:1A0B 01 00000000:00000000 00:00000000 00000000     0        0 111 1 0 20 4 30 10 -1\n\
   1: 0100007F:A3F3 0100007F:1A0B 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0 20 4 30 10 -1\n\
   2: 0100007F:A3F4 0100007F:1A0B 06 00000000:00000000 00:00000000 00000000     0        0 333 1 0 20 4 30 10 -1\n\
   3: 0100007F:A3F5 0100007F:1A0C 01 00000000:00000000 00:00000000 00000000     0        0 444 1 0 20 4 30 10 -1\n";
        assert_eq!(count_established(table, 0x1A0B, |_| true), 2);
        assert_eq!(count_established(table, 0x1A0B, |i| i == "222"), 1);
        assert_eq!(count_established(table, 0x1A0C, |_| true), 1);
        assert_eq!(count_established(table, 80, |_| true), 0);
        assert_eq!(server_port("https://127.0.0.1:6443"), Some(6443));
        assert_eq!(server_port("https://localhost/"), Some(443));
        assert_eq!(server_port("https://[::1]:8443/"), Some(8443));
        assert_eq!(server_port("https://[::1]/"), Some(443));
    }

    #[test]
    fn report_figures() {
        let r = ApiwatchReport {
            watchers: 1000,
            watchers_open: 1000,
            window_secs: 10.0,
            write_rate: 10.0,
            writes: 100,
            expected_deliveries: Some(100_000),
            delivered: 100_000,
            apiserver_cpu_secs: Some(3.1),
            apiserver_rss_start_kib: Some(400_000),
            apiserver_rss_end_kib: Some(517_000),
            ..Default::default()
        };
        assert!((r.cpu_us_per_delivery().unwrap() - 31.0).abs() < 1e-9);
        assert_eq!(r.rss_per_watcher_kib(), Some(117.0));
        assert!(r.passed());
        let j = r.to_json();
        for k in [
            "watchers",
            "duration_secs",
            "window_secs",
            "writes",
            "expected_deliveries",
            "delivered",
            "apiserver_cpu_secs",
            "cpu_us_per_delivery",
            "apiserver_rss_start_kib",
            "apiserver_rss_end_kib",
            "rss_per_watcher_kib",
            "passed",
        ] {
            assert!(j.get(k).is_some(), "{k} missing in {j}");
        }
        assert!(j["latency_us"]["p99"].is_u64());
        let short = ApiwatchReport {
            delivered: 99_999,
            ..r
        };
        assert!(!short.passed());
        assert!(short.render_text().contains("FAIL"));
    }
}
