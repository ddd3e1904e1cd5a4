//! The list+watch loop per kind, the per-object diff, and the sync status.

use super::shared_keys::{self, SharedKeys};
use super::translate::{self, TranslateFn};
use crate::datastore::thread::{injected_fault, Fault};
use crate::datastore::{DriverEvent, DriverSender};
use crate::metrics::Metrics;
use crate::model::{entry_hash, KvUpdate, SyncStatus};
use crate::status::StatusBoard;
use crate::supervise::{panic_message, Backoff, Recoverable};
use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// How to reach the API server and how patiently.
#[derive(Debug, Clone)]
pub struct KubernetesConfig {
    /// Explicit kubeconfig; otherwise found as `kube::Config::infer` does (KUBECONFIG,
    /// ~/.kube/config, or the in-cluster service account).
    pub kubeconfig: Option<PathBuf>,
    /// How often to look again for a kind the server does not serve.
    pub missing_api_retry: Duration,
    /// List page size.
    pub page_size: u32,
    /// Count replicas and nodes for connection rebalancing (Kubernetes rebalancing mode).
    pub rebalance: Option<crate::rebalance::RebalanceConfig>,
    /// How often the API server is asked for its version, so that `/liveness` knows it is
    /// reachable even while every watch is quiet.
    pub probe_interval: Duration,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            kubeconfig: None,
            missing_api_retry: Duration::from_secs(30 * 60),
            page_size: 500,
            rebalance: None,
            probe_interval: Duration::from_secs(10),
        }
    }
}

/// One watched kind.
#[derive(Debug, Clone, Copy)]
pub struct KindSpec {
    /// Label for logs and metrics.
    pub name: &'static str,
    pub group: &'static str,
    /// Versions to try, preferred first.
    pub versions: &'static [&'static str],
    pub kind: &'static str,
    pub plural: &'static str,
    pub translate: TranslateFn,
}

const CALICO: &str = "crd.projectcalico.org";

/// Everything Calico's felix syncer reads in Kubernetes-datastore mode (which covers the bgp,
/// tunnel-ip-allocation syncers' kinds too: each syncer type takes its keys by prefix). With
/// `USE_POD_CIDR` set, IPAM blocks and block affinities are not watched (the node translator
/// makes the blocks from the pod CIDRs), as in Calico's felix and bgp syncers.
pub fn watched_kinds() -> Vec<KindSpec> {
    watched_kinds_for(translate::use_pod_cidr())
}

fn watched_kinds_for(use_pod_cidr: bool) -> Vec<KindSpec> {
    let mut kinds = all_kinds();
    if use_pod_cidr {
        kinds.retain(|k| k.name != "ipamblock" && k.name != "blockaffinity");
    }
    kinds
}

fn all_kinds() -> Vec<KindSpec> {
    use translate::*;
    let k = |name, group, versions, kind, plural, translate| KindSpec {
        name,
        group,
        versions,
        kind,
        plural,
        translate,
    };
    vec![
        k(
            "node",
            "",
            &["v1"],
            "Node",
            "nodes",
            translate_node as TranslateFn,
        ),
        k("pod", "", &["v1"], "Pod", "pods", translate_pod),
        k(
            "namespace",
            "",
            &["v1"],
            "Namespace",
            "namespaces",
            translate_namespace,
        ),
        k(
            "serviceaccount",
            "",
            &["v1"],
            "ServiceAccount",
            "serviceaccounts",
            translate_service_account,
        ),
        k(
            "service",
            "",
            &["v1"],
            "Service",
            "services",
            translate_service,
        ),
        k(
            "endpointslice",
            "discovery.k8s.io",
            &["v1", "v1beta1"],
            "EndpointSlice",
            "endpointslices",
            translate_endpoint_slice,
        ),
        k(
            "networkpolicy",
            "networking.k8s.io",
            &["v1"],
            "NetworkPolicy",
            "networkpolicies",
            translate_k8s_network_policy,
        ),
        k(
            "clusternetworkpolicy",
            "policy.networking.k8s.io",
            &["v1alpha2"],
            "ClusterNetworkPolicy",
            "clusternetworkpolicies",
            translate_k8s_cluster_network_policy,
        ),
        k(
            "clusterinformation",
            CALICO,
            &["v1"],
            "ClusterInformation",
            "clusterinformations",
            translate_cluster_information,
        ),
        k(
            "felixconfiguration",
            CALICO,
            &["v1"],
            "FelixConfiguration",
            "felixconfigurations",
            translate_felix_configuration,
        ),
        k(
            "globalnetworkpolicy",
            CALICO,
            &["v1"],
            "GlobalNetworkPolicy",
            "globalnetworkpolicies",
            translate_global_network_policy,
        ),
        k(
            "stagedglobalnetworkpolicy",
            CALICO,
            &["v1"],
            "StagedGlobalNetworkPolicy",
            "stagedglobalnetworkpolicies",
            translate_staged_global_network_policy,
        ),
        k(
            "calico-networkpolicy",
            CALICO,
            &["v1"],
            "NetworkPolicy",
            "networkpolicies",
            translate_calico_network_policy,
        ),
        k(
            "stagednetworkpolicy",
            CALICO,
            &["v1"],
            "StagedNetworkPolicy",
            "stagednetworkpolicies",
            translate_staged_network_policy,
        ),
        k(
            "stagedkubernetesnetworkpolicy",
            CALICO,
            &["v1"],
            "StagedKubernetesNetworkPolicy",
            "stagedkubernetesnetworkpolicies",
            translate_staged_k8s_network_policy,
        ),
        k(
            "globalnetworkset",
            CALICO,
            &["v1"],
            "GlobalNetworkSet",
            "globalnetworksets",
            translate_global_network_set,
        ),
        k(
            "networkset",
            CALICO,
            &["v1"],
            "NetworkSet",
            "networksets",
            translate_network_set,
        ),
        k("tier", CALICO, &["v1"], "Tier", "tiers", translate_tier),
        k(
            "hostendpoint",
            CALICO,
            &["v1"],
            "HostEndpoint",
            "hostendpoints",
            translate_host_endpoint,
        ),
        k(
            "ippool",
            CALICO,
            &["v1"],
            "IPPool",
            "ippools",
            translate_ip_pool,
        ),
        k(
            "bgpconfiguration",
            CALICO,
            &["v1"],
            "BGPConfiguration",
            "bgpconfigurations",
            translate_bgp_configuration,
        ),
        k(
            "bgppeer",
            CALICO,
            &["v1"],
            "BGPPeer",
            "bgppeers",
            translate_bgp_peer,
        ),
        k(
            "bgpfilter",
            CALICO,
            &["v1"],
            "BGPFilter",
            "bgpfilters",
            translate_bgp_filter,
        ),
        // Calico v3.32+; absent on clusters without KubeVirt, which then counts as listed.
        k(
            "livemigration",
            "kubevirt.io",
            &["v1"],
            "VirtualMachineInstanceMigration",
            "virtualmachineinstancemigrations",
            translate_live_migration,
        ),
        k(
            "ipamblock",
            CALICO,
            &["v1"],
            "IPAMBlock",
            "ipamblocks",
            translate_ipam_block,
        ),
        k(
            "blockaffinity",
            CALICO,
            &["v1"],
            "BlockAffinity",
            "blockaffinities",
            translate_block_affinity,
        ),
        k(
            "caliconodestatus",
            CALICO,
            &["v1"],
            "CalicoNodeStatus",
            "caliconodestatuses",
            translate_calico_node_status,
        ),
    ]
}

fn api_resource(spec: &KindSpec, version: &str) -> ApiResource {
    ApiResource {
        group: spec.group.to_owned(),
        version: version.to_owned(),
        api_version: if spec.group.is_empty() {
            version.to_owned()
        } else {
            format!("{}/{version}", spec.group)
        },
        kind: spec.kind.to_owned(),
        plural: spec.plural.to_owned(),
    }
}

/// Tracks which kinds have listed, for the overall sync status. Status never goes backwards
/// once in sync (Calico ≤ 3.32 semantics): a relist is diffed in place, not re-announced.
struct SyncTracker {
    pending: HashSet<&'static str>,
    status: SyncStatus,
}

impl SyncTracker {
    /// Records progress of `kind` (`synced` once its list is complete); returns the new overall
    /// status if it changed.
    fn progress(&mut self, kind: &'static str, synced: bool) -> Option<SyncStatus> {
        if synced {
            self.pending.remove(kind);
        }
        let next = if self.status == SyncStatus::InSync || self.pending.is_empty() {
            SyncStatus::InSync
        } else {
            SyncStatus::ResyncInProgress
        };
        (next != self.status).then(|| {
            self.status = next;
            next
        })
    }
}

type Tracker = Arc<Mutex<SyncTracker>>;

async fn report(tx: &DriverSender, tracker: &Tracker, kind: &'static str, synced: bool) -> bool {
    let change = tracker
        .lock()
        .map(|mut t| t.progress(kind, synced))
        .unwrap_or(None);
    match change {
        Some(s) => {
            info!(status = s.as_str(), after = kind, "datastore status");
            tx.send(DriverEvent::Status(s)).await.is_ok()
        }
        None => true,
    }
}

async fn connect(cfg: &KubernetesConfig) -> Result<Client, String> {
    let config = match &cfg.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("cannot read kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("invalid kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| format!("no Kubernetes configuration found: {e}"))?,
    };
    Client::try_from(config).map_err(|e| format!("cannot build a Kubernetes client: {e}"))
}

/// Asks the API server for its version every `cfg.probe_interval`, recording each answer as
/// contact. Watch events count as contact too, but a healthy cluster can be quiet for hours,
/// and a watch that reconnected without news says nothing either way.
async fn probe_reachability(client: Client, every: Duration, board: Arc<StatusBoard>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        // A black-holed server never answers; the next probe is due anyway.
        match tokio::time::timeout(
            every.max(Duration::from_secs(1)),
            client.apiserver_version(),
        )
        .await
        {
            Ok(Ok(_)) => {
                board.datastore_contact();
                if std::mem::take(&mut failing) {
                    info!("API server reachable again");
                }
            }
            Ok(Err(e)) => {
                if !std::mem::replace(&mut failing, true) {
                    warn!(error = %e, "API server unreachable");
                }
            }
            Err(_) => {
                if !std::mem::replace(&mut failing, true) {
                    warn!("API server did not answer a version request in time");
                }
            }
        }
    }
}

/// Lists every watched kind once (the kinds the server does not serve count as empty) and
/// returns what the driver would hold after a resync: every translated key with its value,
/// including the default allow profile. An independent view of the datastore for checking a
/// daemon's digest (`typha-loadtest run --verify-datastore`). Objects that do not translate
/// yield nothing, values that fail validation are left out, and a key several objects share
/// holds the value of the object whose name sorts lowest, as in the watch loop.
pub async fn list_translated(
    cfg: &KubernetesConfig,
) -> Result<std::collections::BTreeMap<String, bytes::Bytes>, String> {
    let client = connect(cfg).await?;
    let mut out: std::collections::BTreeMap<String, bytes::Bytes> =
        translate::default_allow_profile()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
    for spec in watched_kinds() {
        let Some(ar) = resolve(&client, &spec)
            .await
            .map_err(|e| format!("{}: {e}", spec.name))?
        else {
            continue;
        };
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let mut lp = ListParams::default().limit(cfg.page_size);
        // By object id, so that shared keys go to the lowest name (see `shared_keys`).
        let mut by_object: std::collections::BTreeMap<String, Vec<(String, bytes::Bytes)>> =
            std::collections::BTreeMap::new();
        loop {
            let page = api
                .list(&lp)
                .await
                .map_err(|e| format!("listing {}: {e}", spec.plural))?;
            for obj in &page.items {
                let Ok(v) = serde_json::to_value(obj) else {
                    continue;
                };
                if let Ok(mut kvs) = (spec.translate)(&v) {
                    kvs.retain(|(k, val)| translate::validate(k, val).is_ok());
                    by_object.insert(object_id(obj), kvs);
                }
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(c) => lp = lp.continue_token(&c),
                None => break,
            }
        }
        let first_claim_wins = KindState::shares_keys(&spec);
        for (k, v) in by_object.into_values().flatten() {
            if first_claim_wins {
                out.entry(k).or_insert(v);
            } else {
                out.insert(k, v);
            }
        }
    }
    Ok(out)
}

/// Runs the driver until `tx` closes.
pub async fn run(
    cfg: KubernetesConfig,
    tx: DriverSender,
    metrics: Arc<Metrics>,
    board: Arc<StatusBoard>,
) {
    board.track_datastore_contact();
    if tx
        .send(DriverEvent::Status(SyncStatus::WaitingForDatastore))
        .await
        .is_err()
    {
        return;
    }
    let mut backoff = Duration::from_millis(500);
    let client = loop {
        match connect(&cfg).await {
            Ok(c) => break c,
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "cannot set up the Kubernetes client");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = tx.closed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    };
    let defaults: Vec<KvUpdate> = translate::default_allow_profile()
        .into_iter()
        .map(|(k, v)| KvUpdate::set(k, v, "1"))
        .collect();
    if tx.send(DriverEvent::Updates(defaults)).await.is_err() {
        return;
    }
    // Everything this driver starts lives in `tasks`: if the driver ends or panics, dropping
    // the set aborts them, so a restarted driver never runs beside the remains of the old one.
    let mut tasks = tokio::task::JoinSet::new();
    let node_count = NodeCount::default();
    if let Some(r) = cfg.rebalance.clone() {
        tasks.spawn(super::replicas::run(
            client.clone(),
            r,
            metrics.clone(),
            node_count.clone(),
        ));
    }
    tasks.spawn(probe_reachability(
        client.clone(),
        cfg.probe_interval.max(Duration::from_millis(10)),
        board.clone(),
    ));
    let kinds = watched_kinds();
    // Every kind's series exists (at zero) from the first scrape, so `rate()` and alerts work.
    for spec in &kinds {
        let l = [spec.name];
        metrics.datastore_events.with_label_values(&l);
        metrics.datastore_updates_emitted.with_label_values(&l);
        metrics.datastore_translate_errors.with_label_values(&l);
        metrics.validation_failures.with_label_values(&l);
        metrics.datastore_errors.with_label_values(&l);
        metrics.datastore_watch_restarts.with_label_values(&l);
        metrics.datastore_kind_absent.with_label_values(&l);
        metrics
            .component_restarts
            .with_label_values(&[&watch_component(spec.name)]);
    }
    let tracker: Tracker = Arc::new(Mutex::new(SyncTracker {
        pending: kinds.iter().map(|k| k.name).collect(),
        status: SyncStatus::WaitingForDatastore,
    }));
    for spec in kinds {
        let counts_nodes = spec.kind == "Node" && spec.group.is_empty();
        let state = Arc::new(Mutex::new(KindState {
            spec,
            objects: HashMap::new(),
            shared: KindState::shares_keys(&spec).then(SharedKeys::default),
            last_invalid_warning: None,
            metrics: metrics.clone(),
            present: counts_nodes.then(|| NodeTally {
                ids: HashSet::new(),
                count: node_count.clone(),
                listed: false,
            }),
        }));
        tasks.spawn(supervise_kind(WatchContext {
            client: client.clone(),
            spec,
            cfg: cfg.clone(),
            tx: tx.clone(),
            tracker: tracker.clone(),
            metrics: metrics.clone(),
            board: board.clone(),
            state,
        }));
    }
    tx.closed().await;
}

/// The status-board and metric name of one kind's watch.
fn watch_component(kind: &str) -> String {
    format!("watch/{kind}")
}

/// The number of Node objects the Node watch holds, for the replica counter: it reads the
/// watch's count instead of listing every Node from etcd itself. `None` until the first list
/// of Nodes has completed.
#[derive(Debug, Clone)]
pub struct NodeCount(Arc<AtomicU64>);

impl Default for NodeCount {
    fn default() -> Self {
        NodeCount(Arc::new(AtomicU64::new(u64::MAX)))
    }
}

impl NodeCount {
    pub fn get(&self) -> Option<usize> {
        match self.0.load(Ordering::Relaxed) {
            u64::MAX => None,
            n => Some(n as usize),
        }
    }

    fn set(&self, n: usize) {
        self.0.store(n as u64, Ordering::Relaxed);
    }
}

/// What a kind's watch needs, and what outlives one run of it: `state` (what each object
/// yielded) is kept across restarts, so a restarted watch relists and diffs like any relist.
#[derive(Clone)]
struct WatchContext {
    client: Client,
    spec: KindSpec,
    cfg: KubernetesConfig,
    tx: DriverSender,
    tracker: Tracker,
    metrics: Arc<Metrics>,
    board: Arc<StatusBoard>,
    state: Arc<Mutex<KindState>>,
}

/// Aborts a spawned task when dropped: a task outlives its `JoinHandle` otherwise.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How one run of a kind's watch ended.
#[derive(Debug, PartialEq, Eq)]
enum WatchEnd {
    /// The pipeline has gone: the driver is stopping.
    Closed,
    /// The watch stream ended, which it never should.
    StreamEnded,
}

/// Runs a kind's watch, restarting it with a backoff whenever it panics or ends while the
/// driver runs. The kind counts as down (status board, readiness) from its failure until its
/// restarted watch has listed again.
async fn supervise_kind(ctx: WatchContext) {
    let component = watch_component(ctx.spec.name);
    let (tx, board) = (ctx.tx.clone(), ctx.board.clone());
    let restarts = ctx
        .metrics
        .component_restarts
        .with_label_values(&[&component]);
    let backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    supervise(&component, &tx, &board, restarts, backoff, || {
        watch_kind(ctx.clone())
    })
    .await
}

/// The restart loop of [`supervise_kind`], apart from what is restarted (so that it can be
/// tested without an API server). Each run is a task of its own in a recoverable scope.
async fn supervise<F, Fut>(
    component: &str,
    tx: &DriverSender,
    board: &StatusBoard,
    restarts: prometheus::IntCounter,
    mut backoff: Backoff,
    mut start: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = WatchEnd> + Send + 'static,
{
    loop {
        let started = Instant::now();
        let task = tokio::spawn(Recoverable::new(start()));
        // If this supervisor is dropped (the driver stops or fails), its watch goes with it.
        let _abort = AbortOnDrop(task.abort_handle());
        let ended = task.await;
        let why = match ended {
            Ok(WatchEnd::Closed) => return,
            Ok(WatchEnd::StreamEnded) => "watch stream ended".to_owned(),
            Err(e) if e.is_panic() => format!("panicked: {}", panic_message(&*e.into_panic())),
            Err(e) => e.to_string(),
        };
        if tx.is_closed() {
            return;
        }
        // A watch that ran for a good while before failing starts the backoff again.
        if started.elapsed() > Duration::from_secs(60) {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        warn!(component, reason = %why, restart_in = ?delay, "watch failed; restarting it");
        restarts.inc();
        board.component_down(component);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = tx.closed() => return,
        }
    }
}

/// What one object yielded last: each key with the hash of its value.
type Yielded = Vec<(String, u128)>;

struct KindState {
    spec: KindSpec,
    objects: HashMap<String, Yielded>,
    /// For the kinds whose objects can share a key (see `shared_keys`), every claimant.
    shared: Option<SharedKeys>,
    /// When a validation failure of this kind was last logged at warn level.
    last_invalid_warning: Option<std::time::Instant>,
    metrics: Arc<Metrics>,
    /// For the Node kind: every object present, whether it yields keys or not.
    present: Option<NodeTally>,
}

/// The Node objects the watch holds, published as a [`NodeCount`] once the first list is
/// complete (a count mid-list would understate the cluster).
struct NodeTally {
    ids: HashSet<String>,
    count: NodeCount,
    listed: bool,
}

impl NodeTally {
    fn publish(&self) {
        if self.listed {
            self.count.set(self.ids.len());
        }
    }
}

/// The kind's state, whatever a panic in a previous run left behind: each method below
/// leaves it consistent at every point a panic could come from (translation happens before
/// anything changes).
fn lock(state: &Mutex<KindState>) -> std::sync::MutexGuard<'_, KindState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Validation failures are logged at warn level at most this often per kind (at debug level
/// otherwise): a bad object is re-validated on every change and every relist.
const INVALID_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// The revision the keys of `obj` carry: its resourceVersion, except for the objects Calico
/// merges into profiles. Calico's profile client keeps one revision for the pair of watches,
/// `<Namespace RV>/<ServiceAccount RV>`, and a profile made from one of them carries that
/// side's half: `<rv>/` for a Namespace, `/<rv>` for a ServiceAccount (as calico-typha
/// v3.32.1 sends them, seen side by side).
fn kv_revision(kind: &str, obj: &DynamicObject) -> String {
    let rv = obj.metadata.resource_version.as_deref().unwrap_or("");
    match kind {
        "namespace" => format!("{rv}/"),
        "serviceaccount" => format!("/{rv}"),
        _ => rv.to_owned(),
    }
}

/// Objects Calico's list leaves out although its watch passes them on: a block affinity
/// marked `spec.deleted: "true"` (`ipam_affinity_v1.go`, `List`). A list, and so a relist,
/// drops it, while a watch event that marks it deleted reaches the clients as an update (seen
/// side by side with calico-typha v3.32.1: its bgp syncer snapshot lacks such an affinity).
fn hidden_from_list(kind: &str, obj: &DynamicObject) -> bool {
    kind == "blockaffinity"
        && match obj.data.pointer("/spec/deleted") {
            Some(serde_json::Value::Bool(b)) => *b,
            Some(serde_json::Value::String(s)) => s == "true",
            _ => false,
        }
}

fn object_id(obj: &DynamicObject) -> String {
    match &obj.metadata.namespace {
        Some(ns) => format!("{ns}/{}", obj.metadata.name.as_deref().unwrap_or("")),
        None => obj.metadata.name.clone().unwrap_or_default(),
    }
}

impl KindState {
    fn shares_keys(spec: &KindSpec) -> bool {
        shared_keys::KINDS.contains(&spec.name)
    }

    /// The updates that bring the clients from what `id` yielded before to `now`.
    fn diff(&mut self, id: &str, now: Vec<(String, bytes::Bytes)>, rev: &str) -> Vec<KvUpdate> {
        let before = self.objects.remove(id).unwrap_or_default();
        let mut out = Vec::new();
        let mut yielded: Yielded = Vec::with_capacity(now.len());
        for (k, v) in now {
            let h = entry_hash(&k, &v);
            if !before.iter().any(|(bk, bh)| *bk == k && *bh == h) {
                out.push(KvUpdate::set(k.as_str(), v, rev));
            }
            yielded.push((k, h));
        }
        for (k, _) in before {
            if !yielded.iter().any(|(nk, _)| *nk == k) {
                out.push(KvUpdate::delete(k.as_str(), rev));
            }
        }
        if !yielded.is_empty() {
            self.objects.insert(id.to_owned(), yielded);
        }
        match &mut self.shared {
            Some(shared) => shared.resolve(id, out),
            None => out,
        }
    }

    fn apply(&mut self, obj: &DynamicObject) -> Vec<KvUpdate> {
        let id = object_id(obj);
        if let Some(t) = &mut self.present {
            t.ids.insert(id.clone());
            t.publish();
        }
        let rev = kv_revision(self.spec.name, obj);
        let kvs = match serde_json::to_value(obj) {
            Ok(v) => match (self.spec.translate)(&v) {
                Ok(kvs) => kvs,
                Err(e) => {
                    // As Calico does: an object that does not convert yields nothing.
                    warn!(kind = self.spec.name, object = %id, error = %e, "cannot translate; treating as deleted");
                    self.metrics
                        .datastore_translate_errors
                        .with_label_values(&[self.spec.name])
                        .inc();
                    Vec::new()
                }
            },
            Err(_) => Vec::new(),
        };
        let kvs = self.validated(&id, kvs);
        self.diff(&id, kvs, &rev)
    }

    /// Drops the pairs Typha's validation filter would send as missing; a key an object
    /// yielded while valid is then deleted by the diff.
    fn validated(
        &mut self,
        id: &str,
        mut kvs: Vec<(String, bytes::Bytes)>,
    ) -> Vec<(String, bytes::Bytes)> {
        kvs.retain(|(k, v)| match translate::validate(k, v) {
            Ok(()) => true,
            Err(reason) => {
                self.metrics
                    .validation_failures
                    .with_label_values(&[self.spec.name])
                    .inc();
                let now = std::time::Instant::now();
                let due = self
                    .last_invalid_warning
                    .map_or(true, |t| now.duration_since(t) >= INVALID_WARNING_INTERVAL);
                if due {
                    self.last_invalid_warning = Some(now);
                    warn!(kind = self.spec.name, object = %id, key = %k, %reason, "Validation failed; treating as missing");
                } else {
                    debug!(kind = self.spec.name, object = %id, key = %k, %reason, "Validation failed; treating as missing");
                }
                false
            }
        });
        kvs
    }

    fn delete(&mut self, id: &str, rev: &str) -> Vec<KvUpdate> {
        if let Some(t) = &mut self.present {
            t.ids.remove(id);
            t.publish();
        }
        self.diff(id, Vec::new(), rev)
    }

    /// After a complete list: deletes every object the list did not return (gone while no
    /// watch could see it).
    fn end_of_list(&mut self, seen: &HashSet<String>) -> Vec<KvUpdate> {
        if let Some(t) = &mut self.present {
            t.ids.retain(|id| seen.contains(id));
            t.listed = true;
            t.publish();
        }
        let gone: Vec<String> = self
            .objects
            .keys()
            .filter(|id| !seen.contains(*id))
            .cloned()
            .collect();
        let mut out = Vec::new();
        for id in gone {
            debug!(kind = self.spec.name, object = %id, "gone while the watch was down");
            out.extend(self.delete(&id, ""));
        }
        out
    }
}

/// The served version of `spec`, or `None` when the server has none of them.
async fn resolve(client: &Client, spec: &KindSpec) -> Result<Option<ApiResource>, kube::Error> {
    for v in spec.versions {
        let ar = api_resource(spec, v);
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        match api.list(&ListParams::default().limit(1)).await {
            Ok(_) => return Ok(Some(ar)),
            // A group the server does not serve at all answers with a plain-text 404 that kube
            // cannot parse as a Status (its reason is then not "NotFound"): go by the code.
            Err(kube::Error::Api(s)) if s.is_not_found() || s.code == 404 => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// One run of a kind's watch: resolve the served version, then list+watch until the pipeline
/// goes away. `ctx.state` carries what the objects yielded across runs.
async fn watch_kind(ctx: WatchContext) -> WatchEnd {
    let WatchContext {
        client,
        spec,
        cfg,
        tx,
        tracker,
        metrics,
        board,
        state,
    } = ctx;
    let component = watch_component(spec.name);
    let label = [spec.name];
    let mut backoff = Duration::from_millis(500);
    let ar = loop {
        match resolve(&client, &spec).await {
            Ok(Some(ar)) => break ar,
            Ok(None) => {
                // Not served (CRD not installed, or an old server): not fatal, counts as in
                // sync so it cannot hold up the others, and is looked for again later.
                info!(kind = spec.name, retry_in = ?cfg.missing_api_retry, "kind not served by the API server; will look again");
                metrics
                    .datastore_kind_absent
                    .with_label_values(&label)
                    .set(1);
                // Working as intended: an absent kind holds nothing to catch up on.
                board.component_up(&component);
                if !report(&tx, &tracker, spec.name, true).await {
                    return WatchEnd::Closed;
                }
                tokio::select! {
                    _ = tokio::time::sleep(cfg.missing_api_retry) => {}
                    _ = tx.closed() => return WatchEnd::Closed,
                }
            }
            Err(e) => {
                warn!(kind = spec.name, error = %e, retry_in = ?backoff, "cannot reach the API server");
                metrics.datastore_errors.with_label_values(&label).inc();
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = tx.closed() => return WatchEnd::Closed,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    };
    metrics
        .datastore_kind_absent
        .with_label_values(&label)
        .set(0);
    info!(kind = spec.name, api_version = %ar.api_version, "watching");
    let api: Api<DynamicObject> = Api::all_with(client, &ar);
    let stream = watcher::watcher(api, watcher::Config::default().page_size(cfg.page_size))
        .default_backoff();
    futures::pin_mut!(stream);
    let mut listed_once = false;
    let mut seen: HashSet<String> = HashSet::new();
    let fault_name = format!("watch-{}", spec.name);
    loop {
        let ev = tokio::select! {
            ev = stream.next() => ev,
            _ = tx.closed() => return WatchEnd::Closed,
            f = injected_fault(&fault_name) => match f {
                Fault::Panic => panic!("injected fault watch-{}-panic", spec.name),
                Fault::Finish => return WatchEnd::StreamEnded,
            },
        };
        let Some(ev) = ev else {
            return WatchEnd::StreamEnded;
        };
        if ev.is_ok() {
            board.datastore_contact();
        }
        let updates = match ev {
            Ok(Event::Init) => {
                if listed_once {
                    info!(kind = spec.name, "relisting (watch expired or restarted)");
                    metrics
                        .datastore_watch_restarts
                        .with_label_values(&label)
                        .inc();
                } else if !report(&tx, &tracker, spec.name, false).await {
                    return WatchEnd::Closed;
                }
                seen.clear();
                continue;
            }
            Ok(Event::InitApply(obj)) => {
                metrics.datastore_events.with_label_values(&label).inc();
                if hidden_from_list(spec.name, &obj) {
                    // Left out of `seen`, so the end of the list deletes what it yielded.
                    continue;
                }
                seen.insert(object_id(&obj));
                let out = lock(&state).apply(&obj);
                out
            }
            Ok(Event::InitDone) => {
                let out = lock(&state).end_of_list(&seen);
                seen.clear();
                if !out.is_empty() {
                    metrics
                        .datastore_updates_emitted
                        .with_label_values(&label)
                        .inc_by(out.len() as u64);
                    if tx.send(DriverEvent::Updates(out)).await.is_err() {
                        return WatchEnd::Closed;
                    }
                }
                listed_once = true;
                // Caught up: a restarted watch is up again.
                board.component_up(&component);
                if !report(&tx, &tracker, spec.name, true).await {
                    return WatchEnd::Closed;
                }
                continue;
            }
            Ok(Event::Apply(obj)) => {
                metrics.datastore_events.with_label_values(&label).inc();
                let out = lock(&state).apply(&obj);
                out
            }
            Ok(Event::Delete(obj)) => {
                metrics.datastore_events.with_label_values(&label).inc();
                let rev = kv_revision(spec.name, &obj);
                let out = lock(&state).delete(&object_id(&obj), &rev);
                out
            }
            Err(e) => {
                warn!(kind = spec.name, error = %e, "watch error; retrying");
                metrics.datastore_errors.with_label_values(&label).inc();
                continue;
            }
        };
        if updates.is_empty() {
            continue;
        }
        metrics
            .datastore_updates_emitted
            .with_label_values(&label)
            .inc_by(updates.len() as u64);
        if tx.send(DriverEvent::Updates(updates)).await.is_err() {
            return WatchEnd::Closed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SyncerType;

    fn state() -> KindState {
        KindState {
            spec: watched_kinds()[0],
            objects: HashMap::new(),
            shared: None,
            last_invalid_warning: None,
            metrics: Arc::new(Metrics::new()),
            present: None,
        }
    }

    fn kind_state(name: &str) -> KindState {
        let spec = watched_kinds()
            .into_iter()
            .find(|k| k.name == name)
            .unwrap();
        KindState {
            spec,
            objects: HashMap::new(),
            shared: KindState::shares_keys(&spec).then(SharedKeys::default),
            last_invalid_warning: None,
            metrics: Arc::new(Metrics::new()),
            present: None,
        }
    }

    fn ippool(name: &str, cidr: &str, nat: bool) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "crd.projectcalico.org/v1",
            "kind": "IPPool",
            "metadata": {"name": name, "uid": "0a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d", "resourceVersion": "5"},
            "spec": {"cidr": cidr, "natOutgoing": nat},
        }))
        .unwrap()
    }

    fn values(us: &[KvUpdate]) -> Vec<(String, Option<bool>)> {
        us.iter()
            .map(|u| {
                let nat = u.value.as_ref().map(|v| {
                    let j: serde_json::Value = serde_json::from_slice(v).unwrap();
                    j["masquerade"].as_bool().unwrap()
                });
                (u.key.to_string(), nat)
            })
            .collect()
    }

    /// Two pools with one CIDR: the key carries the lowest name's value, and deleting either
    /// pool leaves the key with the survivor's value.
    #[test]
    fn ip_pools_sharing_a_cidr_resolve_as_calico_does() {
        const KEY: &str = "/calico/v1/ipam/v4/pool/10.0.0.0-16";
        for delete_first in ["pool-a", "pool-b"] {
            let mut s = kind_state("ippool");
            assert!(s.shared.is_some());
            let b = ippool("pool-b", "10.0.0.0/16", false);
            let a = ippool("pool-a", "10.0.0.0/16", true);
            assert_eq!(values(&s.apply(&b)), vec![(KEY.into(), Some(false))]);
            // pool-a sorts first: it takes the key.
            assert_eq!(values(&s.apply(&a)), vec![(KEY.into(), Some(true))]);
            // A change to pool-b is swallowed while pool-a holds the key.
            assert!(s.apply(&ippool("pool-b", "10.0.0.0/16", true)).is_empty());
            s.apply(&b);
            let survivor = if delete_first == "pool-a" {
                Some(false)
            } else {
                None
            };
            let out = values(&s.delete(delete_first, "9"));
            match survivor {
                // The lowest went: the key is re-sent with pool-b's value, not deleted.
                Some(nat) => assert_eq!(out, vec![(KEY.into(), Some(nat))]),
                // pool-b went: pool-a still holds the key, nothing changes.
                None => assert!(out.is_empty()),
            }
            let last = if delete_first == "pool-a" {
                "pool-b"
            } else {
                "pool-a"
            };
            assert_eq!(values(&s.delete(last, "10")), vec![(KEY.into(), None)]);
        }
    }

    fn gnp(ports: serde_json::Value) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "crd.projectcalico.org/v1",
            "kind": "GlobalNetworkPolicy",
            "metadata": {"name": "p", "uid": "0a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d", "resourceVersion": "5"},
            "spec": {"selector": "all()", "ingress": [{"action": "Allow", "destination": {"ports": ports}}]},
        }))
        .unwrap()
    }

    /// A valid object that turns invalid is deleted (Typha's "treating as missing"), counted
    /// per kind, and comes back when valid again.
    #[test]
    fn an_object_failing_validation_is_sent_as_missing() {
        const KEY: &str = "/calico/v1/policy/GlobalNetworkPolicy//p";
        let mut s = kind_state("globalnetworkpolicy");
        let named = s.apply(&gnp(serde_json::json!(["http"])));
        assert_eq!(values_of(&named), vec![(KEY.to_string(), true)]);
        // A numeric port without a protocol fails Calico's v1 rule validation.
        let bad = s.apply(&gnp(serde_json::json!([80])));
        assert_eq!(values_of(&bad), vec![(KEY.to_string(), false)]);
        let failures = |s: &KindState| {
            s.metrics
                .validation_failures
                .with_label_values(&["globalnetworkpolicy"])
                .get()
        };
        assert_eq!(failures(&s), 1);
        // Still invalid: nothing more to send.
        assert!(s.apply(&gnp(serde_json::json!([81]))).is_empty());
        assert_eq!(failures(&s), 2);
        let back = s.apply(&gnp(serde_json::json!(["http"])));
        assert_eq!(values_of(&back), vec![(KEY.to_string(), true)]);
    }

    /// The v3 validator on a raw v3 value: a BGPPeer that gains a nodeSelector next to its
    /// node fails `validateBGPPeerSpec`, so its key is deleted, and it returns once fixed.
    #[test]
    fn a_raw_v3_object_failing_validation_is_sent_as_missing() {
        const KEY: &str = "/calico/resources/v3/projectcalico.org/bgppeers/tor";
        let peer = |spec: serde_json::Value| -> DynamicObject {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "crd.projectcalico.org/v1",
                "kind": "BGPPeer",
                "metadata": {"name": "tor", "uid": "0a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d", "resourceVersion": "5"},
                "spec": spec,
            }))
            .unwrap()
        };
        let mut s = kind_state("bgppeer");
        let ok = s.apply(&peer(
            serde_json::json!({"node": "n1", "peerIP": "192.0.2.1", "asNumber": 64512}),
        ));
        assert_eq!(values_of(&ok), vec![(KEY.to_string(), true)]);
        let bad = s.apply(&peer(
            serde_json::json!({"node": "n1", "nodeSelector": "all()", "peerIP": "192.0.2.1", "asNumber": 64512}),
        ));
        assert_eq!(values_of(&bad), vec![(KEY.to_string(), false)]);
        assert_eq!(
            s.metrics
                .validation_failures
                .with_label_values(&["bgppeer"])
                .get(),
            1
        );
        let back = s.apply(&peer(
            serde_json::json!({"nodeSelector": "all()", "peerIP": "192.0.2.1", "asNumber": 64512}),
        ));
        assert_eq!(values_of(&back), vec![(KEY.to_string(), true)]);
    }

    fn values_of(us: &[KvUpdate]) -> Vec<(String, bool)> {
        us.iter()
            .map(|u| (u.key.to_string(), u.value.is_some()))
            .collect()
    }

    fn hep(cr_name: &str, iface: &str) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "crd.projectcalico.org/v1",
            "kind": "HostEndpoint",
            "metadata": {
                "name": cr_name, "uid": "0a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d", "resourceVersion": "5",
                "annotations": {"projectcalico.org/metadata": "{\"name\":\"node1-eth0\"}"},
            },
            "spec": {"node": "node1", "interfaceName": iface},
        }))
        .unwrap()
    }

    /// Two host endpoints whose metadata annotation gives one v3 name on one node share a key;
    /// the claimant order is by CR name. Deleting either keeps the other's value on the key.
    #[test]
    fn host_endpoints_sharing_a_key_resolve_as_calico_does() {
        const KEY: &str = "/calico/v1/host/node1/endpoint/node1-eth0";
        let iface = |us: &[KvUpdate]| -> Vec<(String, Option<String>)> {
            us.iter()
                .map(|u| {
                    let name = u.value.as_ref().map(|v| {
                        let j: serde_json::Value = serde_json::from_slice(v).unwrap();
                        j["name"].as_str().unwrap().to_string()
                    });
                    (u.key.to_string(), name)
                })
                .collect()
        };
        for first_deleted in ["hep-a", "hep-b"] {
            let mut s = kind_state("hostendpoint");
            assert_eq!(
                iface(&s.apply(&hep("hep-b", "eth1"))),
                vec![(KEY.into(), Some("eth1".into()))]
            );
            assert_eq!(
                iface(&s.apply(&hep("hep-a", "eth0"))),
                vec![(KEY.into(), Some("eth0".into()))]
            );
            let out = iface(&s.delete(first_deleted, "6"));
            if first_deleted == "hep-a" {
                assert_eq!(out, vec![(KEY.into(), Some("eth1".into()))]);
            } else {
                assert!(out.is_empty(), "hep-a still holds the key");
            }
            let other = if first_deleted == "hep-a" {
                "hep-b"
            } else {
                "hep-a"
            };
            assert_eq!(iface(&s.delete(other, "7")), vec![(KEY.into(), None)]);
        }
    }

    #[test]
    fn use_pod_cidr_drops_the_ipam_watches() {
        let names = |on| -> Vec<&str> { watched_kinds_for(on).iter().map(|k| k.name).collect() };
        assert!(names(false).contains(&"ipamblock") && names(false).contains(&"blockaffinity"));
        assert!(!names(true).contains(&"ipamblock") && !names(true).contains(&"blockaffinity"));
        assert_eq!(names(false).len(), names(true).len() + 2);
    }

    #[test]
    fn only_key_sharing_kinds_keep_claimants() {
        let shared: Vec<&str> = watched_kinds()
            .iter()
            .filter(|k| KindState::shares_keys(k))
            .map(|k| k.name)
            .collect();
        assert_eq!(shared, vec!["globalnetworkset", "hostendpoint", "ippool"]);
    }

    fn kv(k: &str, v: &str) -> (String, bytes::Bytes) {
        (k.to_owned(), bytes::Bytes::copy_from_slice(v.as_bytes()))
    }

    #[test]
    fn diff_sends_changes_and_deletes_keys_no_longer_yielded() {
        let mut s = state();
        let first = s.diff("n1", vec![kv("/a", "1"), kv("/b", "2")], "10");
        assert_eq!(first.len(), 2);
        // Same content, new revision: nothing.
        assert!(s
            .diff("n1", vec![kv("/a", "1"), kv("/b", "2")], "11")
            .is_empty());
        // /b changes, /a disappears, /c appears.
        let next = s.diff("n1", vec![kv("/b", "3"), kv("/c", "4")], "12");
        let mut got: Vec<(String, Option<Vec<u8>>)> = next
            .iter()
            .map(|u| (u.key.to_string(), u.value.as_ref().map(|v| v.to_vec())))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("/a".into(), None),
                ("/b".into(), Some(b"3".to_vec())),
                ("/c".into(), Some(b"4".to_vec())),
            ]
        );
        // The object goes: everything it yields is deleted, and it is forgotten.
        assert_eq!(s.delete("n1", "13").len(), 2);
        assert!(s.objects.is_empty());
        assert!(s.delete("n1", "14").is_empty());
    }

    #[test]
    fn the_node_count_is_published_after_the_list_and_follows_the_watch() {
        let count = NodeCount::default();
        let spec = watched_kinds()[0];
        assert_eq!(spec.kind, "Node");
        let mut s = KindState {
            present: Some(NodeTally {
                ids: HashSet::new(),
                count: count.clone(),
                listed: false,
            }),
            ..state()
        };
        let node = |name: &str| DynamicObject::new(name, &api_resource(&spec, "v1"));
        let seen: HashSet<String> = ["n1", "n2", "n3"].map(String::from).into();
        for n in &seen {
            s.apply(&node(n));
        }
        assert_eq!(count.get(), None, "no count mid-list");
        s.end_of_list(&seen);
        // Bare objects translate to nothing, and are counted all the same.
        assert_eq!(count.get(), Some(3));
        s.apply(&node("n4"));
        s.apply(&node("n4"));
        assert_eq!(count.get(), Some(4));
        s.delete("n1", "9");
        assert_eq!(count.get(), Some(3));
        // A relist that no longer returns n2 (deleted while the watch was down).
        s.end_of_list(&["n3", "n4"].map(String::from).into());
        assert_eq!(count.get(), Some(2));
    }

    #[test]
    fn a_failing_watch_is_restarted_and_down_until_it_has_listed_again() {
        use std::sync::atomic::AtomicU32;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let board = Arc::new(StatusBoard::new());
        board.set_component_down_unready(Duration::ZERO);
        board.set_sync_status(SyncStatus::InSync);
        let restarts = prometheus::IntCounter::new("r", "r").unwrap();
        let runs = Arc::new(AtomicU32::new(0));
        let (tx, rx) = tokio::sync::mpsc::channel::<DriverEvent>(1);
        rt.block_on(async {
            let sup = tokio::spawn({
                let (tx, board, runs, restarts) =
                    (tx.clone(), board.clone(), runs.clone(), restarts.clone());
                async move {
                    let backoff =
                        Backoff::new(Duration::from_millis(10), Duration::from_millis(40));
                    let watch_tx = tx.clone();
                    let watch_board = board.clone();
                    supervise("watch/x", &tx, &board, restarts, backoff, move || {
                        let n = runs.fetch_add(1, Ordering::SeqCst);
                        let (tx, board) = (watch_tx.clone(), watch_board.clone());
                        async move {
                            match n {
                                0 => panic!("test: the first run panics"),
                                1 => WatchEnd::StreamEnded,
                                _ => {
                                    // Listed: up again, then watching until the driver stops.
                                    board.component_up("watch/x");
                                    tx.closed().await;
                                    WatchEnd::Closed
                                }
                            }
                        }
                    })
                    .await
                }
            });
            let mut saw_down = false;
            let deadline = Instant::now() + Duration::from_secs(10);
            while runs.load(Ordering::SeqCst) < 3 || board.longest_down().is_some() {
                saw_down |= board
                    .readiness()
                    .is_err_and(|e| e.contains("watch/x down for"));
                assert!(Instant::now() < deadline, "never recovered");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            assert!(saw_down, "readiness failed while the watch was down");
            assert_eq!(restarts.get(), 2);
            // The driver stops: the supervisor ends with its watch, without a restart.
            drop(rx);
            tokio::time::timeout(Duration::from_secs(10), sup)
                .await
                .expect("the supervisor ends once the pipeline has gone")
                .unwrap();
            assert_eq!(runs.load(Ordering::SeqCst), 3);
            assert_eq!(restarts.get(), 2);
        });
    }

    #[test]
    fn tracker_goes_in_sync_once_every_kind_listed_and_stays() {
        let mut t = SyncTracker {
            pending: ["a", "b"].into_iter().collect(),
            status: SyncStatus::WaitingForDatastore,
        };
        assert_eq!(t.progress("a", false), Some(SyncStatus::ResyncInProgress));
        assert_eq!(t.progress("a", true), None);
        assert_eq!(t.progress("b", true), Some(SyncStatus::InSync));
        assert_eq!(
            t.progress("a", false),
            None,
            "a relist does not leave InSync"
        );
    }

    #[test]
    fn every_kind_is_wanted_by_some_syncer_shape() {
        let names: HashSet<_> = watched_kinds().iter().map(|k| k.name).collect();
        assert_eq!(names.len(), watched_kinds().len(), "kind labels are unique");
        assert!(SyncerType::Felix.wants("/calico/v1/policy/profile/kns.default/rules"));
    }

    /// Calico's profile revisions, as calico-typha v3.32.1 sent them side by side: a
    /// Namespace's profile keys carry `<rv>/`, a ServiceAccount's `/<rv>`, other kinds the
    /// plain resourceVersion.
    #[test]
    fn profile_keys_carry_calicos_split_revision() {
        let obj = |kind: &str| -> DynamicObject {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": kind,
                "metadata": {"name": "shop", "namespace": "shop", "resourceVersion": "300",
                             "uid": "0a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d"},
            }))
            .unwrap()
        };
        let mut ns = kind_state("namespace");
        let ups = ns.apply(&obj("Namespace"));
        assert!(!ups.is_empty());
        assert!(ups.iter().all(|u| u.revision == "300/"), "{ups:?}");
        let mut sa = kind_state("serviceaccount");
        let ups = sa.apply(&obj("ServiceAccount"));
        assert!(!ups.is_empty());
        assert!(ups.iter().all(|u| u.revision == "/300"), "{ups:?}");
        assert_eq!(
            kv_revision("ippool", &ippool("p", "10.0.0.0/16", true)),
            "5"
        );
    }

    /// A block affinity marked deleted is left out of a list (Calico's `List` filter) but an
    /// update that marks it deleted is passed on, as calico-typha v3.32.1 does.
    #[test]
    fn deleted_block_affinities_are_hidden_from_lists_only() {
        let affinity = |deleted: serde_json::Value| -> DynamicObject {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "crd.projectcalico.org/v1", "kind": "BlockAffinity",
                "metadata": {"name": "a", "resourceVersion": "7"},
                "spec": {"node": "n", "cidr": "10.0.0.0/26", "state": "pendingDeletion",
                         "deleted": deleted},
            }))
            .unwrap()
        };
        assert!(hidden_from_list("blockaffinity", &affinity("true".into())));
        assert!(hidden_from_list("blockaffinity", &affinity(true.into())));
        assert!(!hidden_from_list(
            "blockaffinity",
            &affinity("false".into())
        ));
        assert!(!hidden_from_list("ippool", &affinity("true".into())));
        let mut st = kind_state("blockaffinity");
        assert_eq!(st.apply(&affinity("true".into())).len(), 1);
    }
}
