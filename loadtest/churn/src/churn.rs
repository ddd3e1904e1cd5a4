//! `typha-loadtest churn`: drives realistic churn through a Kubernetes API server (for load and
//! integration tests of the Kubernetes datastore).
//!
//! Two phases, each optional:
//!
//! - **Setup** creates the namespaces (`churn-ns-<i>`), the nodes (`churn-node-<i>`, with a
//!   `projectcalico.org/IPv4Address` annotation, a pod CIDR `10.<i/256>.<i%256>.0/24` and a
//!   Ready condition), one Kubernetes NetworkPolicy per namespace and `--pods-per-node` pods on
//!   every node, each given an IP with `patch_status`. Everything carries the label
//!   `typha-loadtest/churn=true`. Creates that answer 409 (the object exists) are skipped, so
//!   setup can be repeated.
//! - **Churn** lists the labelled objects, then issues `--rate` operations per second for
//!   `--duration` seconds, paced by a `tokio::time::interval`. Each tick draws one operation from
//!   `--mix` with a seeded generator, so a seed and a starting state give the same sequence:
//!   - `pods`: create a pod on a random node and set its IP (two writes), or delete one with
//!     grace period 0 (there is no kubelet). The choice reverts to `--pods-per-node` per node:
//!     the more pods a node has, the likelier a delete.
//!   - `heartbeats`: `patch_status` of a node's Ready condition with a new `lastHeartbeatTime`
//!     (never the same second twice for a node, so every heartbeat is a real change).
//!   - `labels`: change a pod's `app` and `rev` labels, and set its `typha-loadtest/stamp`
//!     label ([`STAMP_LABEL`]) to the Unix time in nanoseconds taken just before the request
//!     is sent: `run` measures datastore → client latency from it, `apiwatch` too.
//!   - `ns-labels`: change a namespace's `team` and `rev` labels.
//!   - `policies`: create, edit (selector and port) or delete one of three Kubernetes
//!     NetworkPolicies per namespace.
//!
//! Operations run concurrently (at most [`MAX_IN_FLIGHT`]), but the writes to one object run in
//! the order they were chosen. API errors are counted and logged (the first [`LOGGED_ERRORS`]),
//! never fatal. With `--record FILE`, every successful write is one JSON line
//! `{"t_unix_nanos":..,"op":"pod-create","object":"ns/name"}`, where the time is taken just
//! before the request was sent (so a watcher's receive time minus it is never negative).
//!
//! Only a kubeconfig whose server is on loopback (127.0.0.0/8, ::1, localhost) is accepted.

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use typha_loadtest_common::loopback::{is_loopback_url, loopback_server, refuse};

/// Label on every object the generator creates; churn only touches objects that carry it.
pub const LABEL: &str = "typha-loadtest/churn";
pub const LABEL_VALUE: &str = "true";
pub const NODE_PREFIX: &str = "churn-node-";
pub const NAMESPACE_PREFIX: &str = "churn-ns-";
pub const POD_PREFIX: &str = "churn-pod-";
pub const POLICY_PREFIX: &str = "churn-np-";
/// Kubernetes NetworkPolicies per namespace the churn creates, edits and deletes.
pub const POLICY_SLOTS: usize = 3;
/// Distinct `app` label values.
const APPS: usize = 5;
/// Distinct `team` label values on namespaces.
const TEAMS: usize = 4;
/// Operations in flight at once (including those waiting for an earlier write to their object).
pub const MAX_IN_FLIGHT: usize = 64;
/// Errors logged on stderr; later ones are only counted.
pub const LOGGED_ERRORS: usize = 20;
/// Largest node count: node `i` takes the pod CIDR `10.<i/256>.<i%256>.0/24`.
pub const MAX_NODES: usize = 65_536;
/// Largest `--pods-per-node`: a node holds up to twice as many, within its /24.
pub const MAX_PODS_PER_NODE: usize = 110;
pub const MAX_NAMESPACES: usize = 10_000;
pub const MAX_RATE: f64 = 100_000.0;
/// How long the end of a phase waits for writes still in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// Which phases to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phases {
    SetupAndChurn,
    SetupOnly,
    ChurnOnly,
}

impl Phases {
    fn setup(self) -> bool {
        self != Phases::ChurnOnly
    }
    fn churn(self) -> bool {
        self != Phases::SetupOnly
    }
}

/// A validated `churn`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChurnConfig {
    pub kubeconfig: PathBuf,
    pub nodes: usize,
    pub pods_per_node: usize,
    pub namespaces: usize,
    pub rate: f64,
    pub duration: Duration,
    pub mix: Mix,
    pub seed: u64,
    pub phases: Phases,
    pub record: Option<PathBuf>,
    pub json: bool,
}

/// The kinds of churn operation `--mix` weighs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MixKind {
    Pods,
    Heartbeats,
    PodLabels,
    NamespaceLabels,
    Policies,
}

/// Relative weights of the operation kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    pub pods: u32,
    pub heartbeats: u32,
    pub pod_labels: u32,
    pub namespace_labels: u32,
    pub policies: u32,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            pods: 40,
            heartbeats: 30,
            pod_labels: 15,
            namespace_labels: 5,
            policies: 10,
        }
    }
}

impl Mix {
    const MAX_WEIGHT: u32 = 1_000_000;

    /// Parses `pods=40,heartbeats=30,labels=20,policies=10`; kinds not named weigh 0. Keys:
    /// `pods`, `heartbeats`, `labels` (pod labels; also `pod-labels`), `ns-labels` (also
    /// `namespace-labels`, `namespaces`), `policies`.
    pub fn parse(s: &str) -> Result<Mix, String> {
        let mut mix = Mix {
            pods: 0,
            heartbeats: 0,
            pod_labels: 0,
            namespace_labels: 0,
            policies: 0,
        };
        let mut seen = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                format!("--mix {part:?} is not KIND=WEIGHT (e.g. pods=40,heartbeats=30)")
            })?;
            let kind = match k.trim().to_ascii_lowercase().as_str() {
                "pods" | "pod" => MixKind::Pods,
                "heartbeats" | "heartbeat" => MixKind::Heartbeats,
                "labels" | "pod-labels" => MixKind::PodLabels,
                "ns-labels" | "namespace-labels" | "namespaces" => MixKind::NamespaceLabels,
                "policies" | "policy" => MixKind::Policies,
                other => {
                    return Err(format!(
                        "--mix: unknown kind {other:?} (pods, heartbeats, labels, ns-labels, \
                         policies)"
                    ))
                }
            };
            if seen.contains(&kind) {
                return Err(format!("--mix names {k:?} twice"));
            }
            seen.push(kind);
            let w: u32 = v
                .trim()
                .parse()
                .ok()
                .filter(|w| *w <= Self::MAX_WEIGHT)
                .ok_or_else(|| {
                    format!(
                        "--mix {part:?}: the weight must be a whole number from 0 to {}",
                        Self::MAX_WEIGHT
                    )
                })?;
            *mix.weight_mut(kind) = w;
        }
        if mix.total() == 0 {
            return Err("--mix: at least one kind needs a weight above 0".into());
        }
        Ok(mix)
    }

    fn weight_mut(&mut self, kind: MixKind) -> &mut u32 {
        match kind {
            MixKind::Pods => &mut self.pods,
            MixKind::Heartbeats => &mut self.heartbeats,
            MixKind::PodLabels => &mut self.pod_labels,
            MixKind::NamespaceLabels => &mut self.namespace_labels,
            MixKind::Policies => &mut self.policies,
        }
    }

    fn entries(&self) -> [(MixKind, u32); 5] {
        [
            (MixKind::Pods, self.pods),
            (MixKind::Heartbeats, self.heartbeats),
            (MixKind::PodLabels, self.pod_labels),
            (MixKind::NamespaceLabels, self.namespace_labels),
            (MixKind::Policies, self.policies),
        ]
    }

    pub fn total(&self) -> u64 {
        self.entries().iter().map(|(_, w)| u64::from(*w)).sum()
    }

    fn pick(&self, rng: &mut Rng) -> MixKind {
        let mut r = rng.below(self.total() as usize) as u64;
        for (kind, w) in self.entries() {
            if r < u64::from(w) {
                return kind;
            }
            r -= u64::from(w);
        }
        unreachable!("r < total")
    }
}

impl std::fmt::Display for Mix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pods={},heartbeats={},labels={},ns-labels={},policies={}",
            self.pods, self.heartbeats, self.pod_labels, self.namespace_labels, self.policies
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Loopback check
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// Deterministic choices
// ---------------------------------------------------------------------------------------------

/// SplitMix64: small, fast and fully determined by its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// One churn (or setup) operation, fully decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    NamespaceCreate {
        name: String,
        team: usize,
    },
    NodeCreate {
        name: String,
        index: u32,
    },
    PodCreate {
        ns: String,
        name: String,
        node: String,
        ip: String,
        app: usize,
    },
    PodDelete {
        ns: String,
        name: String,
    },
    Heartbeat {
        node: String,
        unix_secs: i64,
    },
    PodLabels {
        ns: String,
        name: String,
        app: usize,
        rev: u64,
    },
    NamespaceLabels {
        name: String,
        team: usize,
        rev: u64,
    },
    PolicyCreate {
        ns: String,
        name: String,
        app: usize,
        from: usize,
        port: u16,
    },
    PolicyUpdate {
        ns: String,
        name: String,
        app: usize,
        from: usize,
        port: u16,
    },
    PolicyDelete {
        ns: String,
        name: String,
    },
}

impl Op {
    /// The operation's kind, as counted in the summary and written in the record.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::NamespaceCreate { .. } => "namespace-create",
            Op::NodeCreate { .. } => "node-create",
            Op::PodCreate { .. } => "pod-create",
            Op::PodDelete { .. } => "pod-delete",
            Op::Heartbeat { .. } => "heartbeat",
            Op::PodLabels { .. } => "pod-label",
            Op::NamespaceLabels { .. } => "namespace-label",
            Op::PolicyCreate { .. } => "policy-create",
            Op::PolicyUpdate { .. } => "policy-update",
            Op::PolicyDelete { .. } => "policy-delete",
        }
    }

    /// `ns/name` for namespaced objects, `name` otherwise.
    pub fn object(&self) -> String {
        match self {
            Op::NamespaceCreate { name, .. }
            | Op::NamespaceLabels { name, .. }
            | Op::NodeCreate { name, .. } => name.clone(),
            Op::Heartbeat { node, .. } => node.clone(),
            Op::PodCreate { ns, name, .. }
            | Op::PodDelete { ns, name }
            | Op::PodLabels { ns, name, .. }
            | Op::PolicyCreate { ns, name, .. }
            | Op::PolicyUpdate { ns, name, .. }
            | Op::PolicyDelete { ns, name } => format!("{ns}/{name}"),
        }
    }

    /// Writes with the same key run in order.
    fn lock_key(&self) -> String {
        let resource = match self {
            Op::NamespaceCreate { .. } | Op::NamespaceLabels { .. } => "namespace",
            Op::NodeCreate { .. } | Op::Heartbeat { .. } => "node",
            Op::PodCreate { .. } | Op::PodDelete { .. } | Op::PodLabels { .. } => "pod",
            Op::PolicyCreate { .. } | Op::PolicyUpdate { .. } | Op::PolicyDelete { .. } => {
                "networkpolicy"
            }
        };
        format!("{resource}:{}", self.object())
    }
}

pub fn node_name(i: u32) -> String {
    format!("{NODE_PREFIX}{i}")
}

pub fn namespace_name(i: usize) -> String {
    format!("{NAMESPACE_PREFIX}{i}")
}

pub fn pod_name(seq: u64) -> String {
    format!("{POD_PREFIX}{seq}")
}

pub fn policy_name(slot: usize) -> String {
    format!("{POLICY_PREFIX}{slot}")
}

/// Node `i`'s address: `172.16.0.0/12` plus `i + 1`.
pub fn node_ip(i: u32) -> String {
    let v = (172u32 << 24 | 16 << 16) + i + 1;
    std::net::Ipv4Addr::from(v).to_string()
}

/// Node `i`'s pod CIDR, `10.<i/256>.<i%256>.0/24`, as its first three octets.
fn pod_net(i: u32) -> (u8, u8) {
    ((i >> 8) as u8, i as u8)
}

pub fn pod_cidr(i: u32) -> String {
    let (a, b) = pod_net(i);
    format!("10.{a}.{b}.0/24")
}

fn pod_ip(node: u32, octet: u8) -> String {
    let (a, b) = pod_net(node);
    format!("10.{a}.{b}.{octet}")
}

/// The churn's picture of the objects it manages.
#[derive(Debug, Clone)]
pub struct Model {
    pods_per_node: usize,
    nodes: Vec<NodeState>,
    namespaces: Vec<NamespaceState>,
    pod_total: usize,
    next_pod: u64,
    rev: u64,
}

#[derive(Debug, Clone)]
struct NodeState {
    name: String,
    index: u32,
    pods: Vec<PodState>,
    /// Host octets in use in the node's /24.
    used: Vec<bool>,
    last_beat: i64,
}

#[derive(Debug, Clone)]
struct PodState {
    ns: String,
    name: String,
    octet: Option<u8>,
}

#[derive(Debug, Clone)]
struct NamespaceState {
    name: String,
    policies: [bool; POLICY_SLOTS],
}

/// What a listing found, as plain data.
#[derive(Debug, Clone, Default)]
pub struct Discovered {
    pub nodes: Vec<String>,
    pub namespaces: Vec<String>,
    /// (namespace, name, node, pod IP).
    pub pods: Vec<(String, String, String, Option<String>)>,
    /// (namespace, name).
    pub policies: Vec<(String, String)>,
}

impl Model {
    /// Builds the model from a listing, ignoring objects whose names the churn did not make.
    /// Nodes and namespaces are ordered by index, pods by name, so the same server state gives
    /// the same model.
    pub fn new(pods_per_node: usize, d: &Discovered) -> Model {
        let mut nodes: Vec<NodeState> = d
            .nodes
            .iter()
            .filter_map(|n| {
                let index: u32 = n.strip_prefix(NODE_PREFIX)?.parse().ok()?;
                (node_name(index) == *n && (index as usize) < MAX_NODES).then(|| NodeState {
                    name: n.clone(),
                    index,
                    pods: Vec::new(),
                    used: vec![false; 256],
                    last_beat: 0,
                })
            })
            .collect();
        nodes.sort_by_key(|n| n.index);
        nodes.dedup_by_key(|n| n.index);
        let mut namespaces: Vec<(usize, NamespaceState)> = d
            .namespaces
            .iter()
            .filter_map(|n| {
                let i: usize = n.strip_prefix(NAMESPACE_PREFIX)?.parse().ok()?;
                (namespace_name(i) == *n).then(|| {
                    (
                        i,
                        NamespaceState {
                            name: n.clone(),
                            policies: [false; POLICY_SLOTS],
                        },
                    )
                })
            })
            .collect();
        namespaces.sort_by_key(|(i, _)| *i);
        namespaces.dedup_by_key(|(i, _)| *i);
        let mut namespaces: Vec<NamespaceState> = namespaces.into_iter().map(|(_, n)| n).collect();
        for (ns, name) in &d.policies {
            let slot = name
                .strip_prefix(POLICY_PREFIX)
                .and_then(|s| s.parse::<usize>().ok())
                .filter(|s| *s < POLICY_SLOTS && policy_name(*s) == *name);
            if let (Some(slot), Some(n)) = (slot, namespaces.iter_mut().find(|n| n.name == *ns)) {
                n.policies[slot] = true;
            }
        }
        let mut pods: Vec<_> = d.pods.iter().collect();
        pods.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
        let mut next_pod = 0;
        let mut pod_total = 0;
        for (ns, name, node, ip) in pods {
            if let Some(seq) = name
                .strip_prefix(POD_PREFIX)
                .and_then(|s| s.parse::<u64>().ok())
            {
                next_pod = next_pod.max(seq + 1);
            }
            let Some(n) = nodes.iter_mut().find(|n| n.name == *node) else {
                continue;
            };
            let (a, b) = pod_net(n.index);
            let octet = ip
                .as_deref()
                .and_then(|ip| ip.parse::<std::net::Ipv4Addr>().ok())
                .map(|ip| ip.octets())
                .filter(|o| o[0] == 10 && o[1] == a && o[2] == b && (1..=254).contains(&o[3]))
                .map(|o| o[3]);
            if let Some(o) = octet {
                n.used[usize::from(o)] = true;
            }
            n.pods.push(PodState {
                ns: ns.clone(),
                name: name.clone(),
                octet,
            });
            pod_total += 1;
        }
        Model {
            pods_per_node,
            nodes,
            namespaces,
            pod_total,
            next_pod,
            rev: 0,
        }
    }

    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    pub fn namespaces(&self) -> usize {
        self.namespaces.len()
    }

    pub fn pods(&self) -> usize {
        self.pod_total
    }

    pub fn policies(&self) -> usize {
        self.namespaces
            .iter()
            .map(|n| n.policies.iter().filter(|p| **p).count())
            .sum()
    }

    /// Most pods a node gets: twice the target, within its /24.
    fn node_cap(&self) -> usize {
        (2 * self.pods_per_node).clamp(2, 250)
    }

    /// Chooses the next operation. `now_unix_secs` only sets heartbeat times; the choices
    /// depend on the model and `rng` alone.
    pub fn plan(&mut self, rng: &mut Rng, mix: &Mix, now_unix_secs: i64) -> Op {
        assert!(
            !self.nodes.is_empty() && !self.namespaces.is_empty(),
            "churn needs a node and a namespace"
        );
        match mix.pick(rng) {
            MixKind::Pods => self.plan_pod(rng),
            MixKind::Heartbeats => {
                let i = rng.below(self.nodes.len());
                let n = &mut self.nodes[i];
                n.last_beat = now_unix_secs.max(n.last_beat + 1);
                Op::Heartbeat {
                    node: n.name.clone(),
                    unix_secs: n.last_beat,
                }
            }
            MixKind::PodLabels if self.pod_total == 0 => self.plan_pod(rng),
            MixKind::PodLabels => {
                let mut k = rng.below(self.pod_total);
                let app = rng.below(APPS);
                self.rev += 1;
                for n in &self.nodes {
                    if k < n.pods.len() {
                        let p = &n.pods[k];
                        return Op::PodLabels {
                            ns: p.ns.clone(),
                            name: p.name.clone(),
                            app,
                            rev: self.rev,
                        };
                    }
                    k -= n.pods.len();
                }
                unreachable!("k < pod_total")
            }
            MixKind::NamespaceLabels => {
                let ns = &self.namespaces[rng.below(self.namespaces.len())];
                self.rev += 1;
                Op::NamespaceLabels {
                    name: ns.name.clone(),
                    team: rng.below(TEAMS),
                    rev: self.rev,
                }
            }
            MixKind::Policies => {
                let i = rng.below(self.namespaces.len());
                let slot = rng.below(POLICY_SLOTS);
                let ns = &mut self.namespaces[i];
                let (nsn, name) = (ns.name.clone(), policy_name(slot));
                if ns.policies[slot] && rng.below(4) == 0 {
                    ns.policies[slot] = false;
                    return Op::PolicyDelete { ns: nsn, name };
                }
                let (app, from) = (rng.below(APPS), rng.below(APPS));
                let port = 1024 + rng.below(8976) as u16;
                if ns.policies[slot] {
                    Op::PolicyUpdate {
                        ns: nsn,
                        name,
                        app,
                        from,
                        port,
                    }
                } else {
                    ns.policies[slot] = true;
                    Op::PolicyCreate {
                        ns: nsn,
                        name,
                        app,
                        from,
                        port,
                    }
                }
            }
        }
    }

    fn plan_pod(&mut self, rng: &mut Rng) -> Op {
        let cap = self.node_cap();
        let ni = rng.below(self.nodes.len());
        let n_pods = self.nodes[ni].pods.len();
        // Create with probability (cap - n) / cap: reverts to cap / 2 = --pods-per-node.
        let create = rng.below(cap) >= n_pods;
        let free = (1..=254u8).find(|o| !self.nodes[ni].used[usize::from(*o)]);
        match free.filter(|_| create) {
            Some(octet) => {
                let ns = self.namespaces[rng.below(self.namespaces.len())]
                    .name
                    .clone();
                let app = rng.below(APPS);
                let name = pod_name(self.next_pod);
                self.next_pod += 1;
                let node = &mut self.nodes[ni];
                node.used[usize::from(octet)] = true;
                node.pods.push(PodState {
                    ns: ns.clone(),
                    name: name.clone(),
                    octet: Some(octet),
                });
                self.pod_total += 1;
                Op::PodCreate {
                    ns,
                    name,
                    node: node.name.clone(),
                    ip: pod_ip(node.index, octet),
                    app,
                }
            }
            None if n_pods > 0 => {
                let node = &mut self.nodes[ni];
                let p = node.pods.swap_remove(rng.below(n_pods));
                if let Some(o) = p.octet {
                    node.used[usize::from(o)] = false;
                }
                self.pod_total -= 1;
                Op::PodDelete {
                    ns: p.ns,
                    name: p.name,
                }
            }
            // A node with no pods and no free address cannot happen (cap ≤ 250 < 254).
            None => unreachable!("an empty node always has a free address"),
        }
    }
}

/// The setup's objects, in two waves: namespaces and nodes, then policies and pods.
pub fn setup_ops(nodes: usize, pods_per_node: usize, namespaces: usize) -> (Vec<Op>, Vec<Op>) {
    let mut first = Vec::new();
    for i in 0..namespaces {
        first.push(Op::NamespaceCreate {
            name: namespace_name(i),
            team: i % TEAMS,
        });
    }
    for i in 0..nodes as u32 {
        first.push(Op::NodeCreate {
            name: node_name(i),
            index: i,
        });
    }
    let mut second = Vec::new();
    for i in 0..namespaces {
        second.push(Op::PolicyCreate {
            ns: namespace_name(i),
            name: policy_name(0),
            app: i % APPS,
            from: (i + 1) % APPS,
            port: 8080,
        });
    }
    for i in 0..nodes as u32 {
        for j in 0..pods_per_node {
            let seq = i as usize * pods_per_node + j;
            second.push(Op::PodCreate {
                ns: namespace_name(seq % namespaces),
                name: pod_name(seq as u64),
                node: node_name(i),
                ip: pod_ip(i, j as u8 + 1),
                app: seq % APPS,
            });
        }
    }
    (first, second)
}

// ---------------------------------------------------------------------------------------------
// Objects
// ---------------------------------------------------------------------------------------------

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time (UTC).
pub fn rfc3339(unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn app(i: usize) -> String {
    format!("app-{i}")
}

fn namespace_obj(name: &str, team: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": {LABEL: LABEL_VALUE, "team": format!("team-{team}")}}
    })
}

fn ready_condition(unix_secs: i64) -> Value {
    json!({
        "type": "Ready", "status": "True", "reason": "KubeletReady",
        "message": "kubelet is posting ready status",
        "lastHeartbeatTime": rfc3339(unix_secs),
        "lastTransitionTime": "2026-01-01T00:00:00Z"
    })
}

fn node_obj(name: &str, index: u32) -> Value {
    let ip = node_ip(index);
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {LABEL: LABEL_VALUE, "kubernetes.io/hostname": name,
                       "kubernetes.io/os": "linux"},
            "annotations": {"projectcalico.org/IPv4Address": format!("{ip}/12")}
        },
        "spec": {"podCIDR": pod_cidr(index), "podCIDRs": [pod_cidr(index)]},
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip},
                          {"type": "Hostname", "address": name}],
            "conditions": [ready_condition(1_767_225_600)]
        }
    })
}

fn pod_obj(ns: &str, name: &str, node: &str, app_idx: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns,
                     "labels": {LABEL: LABEL_VALUE, "app": app(app_idx), "rev": "0"}},
        "spec": {"nodeName": node,
                 "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.9"}]}
    })
}

fn policy_spec(app_idx: usize, from: usize, port: u16) -> Value {
    json!({
        "podSelector": {"matchLabels": {"app": app(app_idx)}},
        "policyTypes": ["Ingress"],
        "ingress": [{
            "from": [{"podSelector": {"matchLabels": {"app": app(from)}}}],
            "ports": [{"protocol": "TCP", "port": port}]
        }]
    })
}

fn policy_obj(ns: &str, name: &str, app_idx: usize, from: usize, port: u16) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns, "labels": {LABEL: LABEL_VALUE}},
        "spec": policy_spec(app_idx, from, port)
    })
}

// ---------------------------------------------------------------------------------------------
// Execution
// ---------------------------------------------------------------------------------------------

/// The write-time label of pod label changes (value: Unix nanoseconds, decimal). The name is
/// shared with `run` and `apiwatch`.
pub use typha_loadtest_common::STAMP_LABEL;

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn unix_secs() -> i64 {
    (unix_nanos() / 1_000_000_000) as i64
}

/// Counts for one phase.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub ok: BTreeMap<&'static str, u64>,
    pub errors: BTreeMap<&'static str, u64>,
    /// Creates that answered 409 (already exists) and were skipped.
    pub conflicts: u64,
    /// Successful API writes (a pod create is two: the create and its IP).
    pub writes: u64,
}

impl Counts {
    pub fn ok_total(&self) -> u64 {
        self.ok.values().sum()
    }
    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

struct Ctx {
    client: kube::Client,
    counts: Mutex<Counts>,
    record: Option<Mutex<BufWriter<File>>>,
    record_error: Mutex<Option<String>>,
    logged: AtomicUsize,
}

enum Outcome {
    Done,
    Conflict,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn pp() -> PostParams {
    PostParams::default()
}

fn patch_params() -> PatchParams {
    PatchParams::default()
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// One line for an error: the API status (code, reason, message) or the client error.
fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} {}: {}", s.code, s.reason, s.message),
        other => other.to_string(),
    }
}

fn parse<T: k8s_openapi::serde::de::DeserializeOwned>(v: Value) -> Result<T, kube::Error> {
    serde_json::from_value(v).map_err(kube::Error::SerdeError)
}

impl Ctx {
    fn recorded(&self, op: &str, object: &str, t: u64) {
        lock(&self.counts).writes += 1;
        if let Some(rec) = &self.record {
            // Fields in the documented order (a json! object would sort them).
            let line = format!(
                "{{\"t_unix_nanos\":{t},\"op\":{},\"object\":{}}}",
                Value::from(op),
                Value::from(object)
            );
            if let Err(e) = writeln!(lock(rec), "{line}") {
                lock(&self.record_error).get_or_insert_with(|| e.to_string());
            }
        }
    }

    /// One write: the time is taken before the request, recorded if it succeeds.
    async fn write<T>(
        &self,
        op: &'static str,
        object: &str,
        fut: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<(), kube::Error> {
        let t = unix_nanos();
        fut.await?;
        self.recorded(op, object, t);
        Ok(())
    }

    async fn create<K>(
        &self,
        api: Api<K>,
        op: &'static str,
        object: &str,
        obj: Value,
    ) -> Result<Outcome, kube::Error>
    where
        K: kube::Resource
            + Clone
            + k8s_openapi::serde::Serialize
            + k8s_openapi::serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let obj: K = parse(obj)?;
        match self.write(op, object, api.create(&pp(), &obj)).await {
            Ok(()) => Ok(Outcome::Done),
            Err(e) if is_conflict(&e) => Ok(Outcome::Conflict),
            Err(e) => Err(e),
        }
    }

    async fn execute(&self, op: &Op) -> Result<Outcome, kube::Error> {
        let c = self.client.clone();
        let kind = op.kind();
        let object = op.object();
        let object = object.as_str();
        match op {
            Op::NamespaceCreate { name, team } => {
                self.create(
                    Api::<Namespace>::all(c),
                    kind,
                    object,
                    namespace_obj(name, *team),
                )
                .await
            }
            Op::NodeCreate { name, index } => {
                self.create(Api::<Node>::all(c), kind, object, node_obj(name, *index))
                    .await
            }
            Op::PodCreate {
                ns,
                name,
                node,
                ip,
                app,
            } => {
                let api = Api::<Pod>::namespaced(c, ns);
                let r = self
                    .create(api.clone(), kind, object, pod_obj(ns, name, node, *app))
                    .await?;
                if let Outcome::Conflict = r {
                    return Ok(r);
                }
                let status =
                    json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
                self.write(
                    "pod-ip",
                    object,
                    api.patch_status(name, &patch_params(), &Patch::Merge(&status)),
                )
                .await?;
                Ok(Outcome::Done)
            }
            Op::PodDelete { ns, name } => {
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                };
                let api = Api::<Pod>::namespaced(c, ns);
                self.write(kind, object, api.delete(name, &dp)).await?;
                Ok(Outcome::Done)
            }
            Op::Heartbeat { node, unix_secs } => {
                let status = json!({"status": {"conditions": [ready_condition(*unix_secs)]}});
                let api = Api::<Node>::all(c);
                self.write(
                    kind,
                    object,
                    api.patch_status(node, &patch_params(), &Patch::Merge(&status)),
                )
                .await?;
                Ok(Outcome::Done)
            }
            Op::PodLabels {
                ns,
                name,
                app: a,
                rev,
            } => {
                let p = json!({"metadata": {"labels": {
                    "app": app(*a), "rev": rev.to_string(),
                    STAMP_LABEL: unix_nanos().to_string()}}});
                let api = Api::<Pod>::namespaced(c, ns);
                self.write(
                    kind,
                    object,
                    api.patch(name, &patch_params(), &Patch::Merge(&p)),
                )
                .await?;
                Ok(Outcome::Done)
            }
            Op::NamespaceLabels { name, team, rev } => {
                let p = json!({"metadata": {"labels": {
                    "team": format!("team-{team}"), "rev": rev.to_string()}}});
                let api = Api::<Namespace>::all(c);
                self.write(
                    kind,
                    object,
                    api.patch(name, &patch_params(), &Patch::Merge(&p)),
                )
                .await?;
                Ok(Outcome::Done)
            }
            Op::PolicyCreate {
                ns,
                name,
                app,
                from,
                port,
            } => {
                let api = Api::<NetworkPolicy>::namespaced(c, ns);
                self.create(api, kind, object, policy_obj(ns, name, *app, *from, *port))
                    .await
            }
            Op::PolicyUpdate {
                ns,
                name,
                app,
                from,
                port,
            } => {
                let p = json!({"spec": policy_spec(*app, *from, *port)});
                let api = Api::<NetworkPolicy>::namespaced(c, ns);
                self.write(
                    kind,
                    object,
                    api.patch(name, &patch_params(), &Patch::Merge(&p)),
                )
                .await?;
                Ok(Outcome::Done)
            }
            Op::PolicyDelete { ns, name } => {
                let api = Api::<NetworkPolicy>::namespaced(c, ns);
                self.write(kind, object, api.delete(name, &DeleteParams::default()))
                    .await?;
                Ok(Outcome::Done)
            }
        }
    }

    async fn run_op(&self, op: Op) {
        let kind = op.kind();
        let r = self.execute(&op).await;
        let mut counts = lock(&self.counts);
        match r {
            Ok(Outcome::Done) => *counts.ok.entry(kind).or_default() += 1,
            Ok(Outcome::Conflict) => counts.conflicts += 1,
            Err(e) => {
                *counts.errors.entry(kind).or_default() += 1;
                drop(counts);
                let n = self.logged.fetch_add(1, Ordering::Relaxed);
                if n < LOGGED_ERRORS {
                    eprintln!(
                        "typha-loadtest churn: {kind} {}: {}",
                        op.object(),
                        describe(&e)
                    );
                } else if n == LOGGED_ERRORS {
                    eprintln!("typha-loadtest churn: further errors are counted, not logged");
                }
            }
        }
    }

    fn take_counts(&self) -> Counts {
        std::mem::take(&mut *lock(&self.counts))
    }
}

/// Runs operations concurrently, in order per object, at most `cap` at once.
struct Dispatcher {
    ctx: Arc<Ctx>,
    cap: usize,
    in_flight: Arc<AtomicUsize>,
    last: HashMap<String, JoinHandle<()>>,
}

impl Dispatcher {
    fn new(ctx: Arc<Ctx>, cap: usize) -> Dispatcher {
        Dispatcher {
            ctx,
            cap,
            in_flight: Arc::new(AtomicUsize::new(0)),
            last: HashMap::new(),
        }
    }

    async fn dispatch(&mut self, op: Op) {
        while self.in_flight.load(Ordering::Acquire) >= self.cap {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if self.last.len() >= 4 * self.cap {
            self.last.retain(|_, h| !h.is_finished());
        }
        let key = op.lock_key();
        let prev = self.last.remove(&key);
        let ctx = self.ctx.clone();
        let in_flight = self.in_flight.clone();
        in_flight.fetch_add(1, Ordering::AcqRel);
        let h = tokio::spawn(async move {
            if let Some(p) = prev {
                let _ = p.await;
            }
            ctx.run_op(op).await;
            in_flight.fetch_sub(1, Ordering::AcqRel);
        });
        self.last.insert(key, h);
    }

    /// Waits for everything dispatched; returns how many operations did not finish in time.
    async fn drain(&mut self) -> usize {
        let handles: Vec<_> = self.last.drain().map(|(_, h)| h).collect();
        let all = async {
            for h in handles {
                let _ = h.await;
            }
        };
        if tokio::time::timeout(DRAIN_TIMEOUT, all).await.is_err() {
            self.in_flight.load(Ordering::Acquire)
        } else {
            0
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Phases and report
// ---------------------------------------------------------------------------------------------

/// One phase's outcome.
#[derive(Debug, Clone)]
pub struct PhaseReport {
    pub ops_issued: u64,
    pub counts: Counts,
    /// Operations still running when the phase gave up waiting.
    pub unfinished: usize,
    /// From the first operation until the last one finished.
    pub elapsed: Duration,
}

impl PhaseReport {
    /// Successful operations per second.
    pub fn achieved_rate(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.counts.ok_total() as f64 / s
        } else {
            0.0
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "ops_issued": self.ops_issued,
            "ops": self.counts.ok,
            "ops_total": self.counts.ok_total(),
            "errors": self.counts.errors,
            "errors_total": self.counts.errors_total(),
            "conflicts_skipped": self.counts.conflicts,
            "writes": self.counts.writes,
            "unfinished": self.unfinished,
            "elapsed_secs": self.elapsed.as_secs_f64(),
            "achieved_rate": self.achieved_rate(),
        })
    }

    fn render(&self, out: &mut String) {
        let list = |m: &BTreeMap<&str, u64>| {
            if m.is_empty() {
                "none".to_string()
            } else {
                m.iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let _ = writeln!(out, "  ops:    {}", list(&self.counts.ok));
        let _ = writeln!(out, "  errors: {}", list(&self.counts.errors));
        let _ = writeln!(
            out,
            "  {} writes, {} creates skipped (409 already exists){}",
            self.counts.writes,
            self.counts.conflicts,
            if self.unfinished > 0 {
                format!(", {} operations unfinished", self.unfinished)
            } else {
                String::new()
            }
        );
    }
}

/// The whole run.
#[derive(Debug, Clone)]
pub struct ChurnReport {
    pub server: String,
    pub seed: u64,
    pub mix: Mix,
    pub requested_rate: f64,
    pub duration: Duration,
    pub setup: Option<PhaseReport>,
    pub churn: Option<PhaseReport>,
    /// The churn's model at the end: nodes, namespaces, pods, policies.
    pub objects: [usize; 4],
    pub record_error: Option<String>,
}

impl ChurnReport {
    pub fn errors_total(&self) -> u64 {
        [&self.setup, &self.churn]
            .iter()
            .filter_map(|p| p.as_ref())
            .map(|p| p.counts.errors_total() + p.unfinished as u64)
            .sum()
    }

    /// Whether every write succeeded (or was a skipped conflict) and the record was written.
    pub fn passed(&self) -> bool {
        self.errors_total() == 0 && self.record_error.is_none()
    }

    pub fn to_json(&self) -> Value {
        let mut churn = self.churn.as_ref().map(PhaseReport::to_json);
        if let Some(Value::Object(m)) = churn.as_mut() {
            m.insert("requested_rate".into(), json!(self.requested_rate));
            m.insert("duration_secs".into(), json!(self.duration.as_secs_f64()));
            m.insert("mix".into(), json!(self.mix.to_string()));
        }
        let [nodes, namespaces, pods, policies] = self.objects;
        json!({
            "server": self.server,
            "seed": self.seed,
            "setup": self.setup.as_ref().map(PhaseReport::to_json),
            "churn": churn,
            "objects": {"nodes": nodes, "namespaces": namespaces, "pods": pods,
                        "policies": policies},
            "errors_total": self.errors_total(),
            "record_error": self.record_error,
            "passed": self.passed(),
        })
    }

    pub fn render_text(&self) -> String {
        let mut out = format!("churn against {} (seed {})\n", self.server, self.seed);
        if let Some(s) = &self.setup {
            let _ = writeln!(
                out,
                "setup: {} operations in {:.2} s",
                s.ops_issued,
                s.elapsed.as_secs_f64()
            );
            s.render(&mut out);
        }
        if let Some(c) = &self.churn {
            let _ = writeln!(
                out,
                "churn: {} operations issued over {:.1} s ({}), {} done in {:.2} s: \
                 {:.1} ops/s achieved ({} requested)",
                c.ops_issued,
                self.duration.as_secs_f64(),
                self.mix,
                c.counts.ok_total(),
                c.elapsed.as_secs_f64(),
                c.achieved_rate(),
                self.requested_rate
            );
            c.render(&mut out);
        }
        let [nodes, namespaces, pods, policies] = self.objects;
        let _ = writeln!(
            out,
            "objects: {nodes} nodes, {namespaces} namespaces, {pods} pods, {policies} policies"
        );
        if let Some(e) = &self.record_error {
            let _ = writeln!(out, "record: write failed: {e}");
        }
        let _ = writeln!(
            out,
            "{}",
            if self.passed() {
                "PASS"
            } else {
                "FAIL (errors)"
            }
        );
        out
    }
}

async fn connect(path: &Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(path)?;
    let mut cfg =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    let url = cfg.cluster_url.to_string();
    if !is_loopback_url(&url) {
        anyhow::bail!(refuse(path, &url));
    }
    // Loopback only: never through a proxy (HTTPS_PROXY would otherwise apply).
    cfg.proxy_url = None;
    Ok(kube::Client::try_from(cfg)?)
}

async fn discover(client: &kube::Client) -> anyhow::Result<Discovered> {
    use anyhow::Context as _;
    let lp = ListParams::default().labels(&format!("{LABEL}={LABEL_VALUE}"));
    let name = |m: &kube::api::ObjectMeta| m.name.clone().unwrap_or_default();
    let ns_of = |m: &kube::api::ObjectMeta| m.namespace.clone().unwrap_or_default();
    let nodes = Api::<Node>::all(client.clone())
        .list(&lp)
        .await
        .context("listing nodes")?;
    let namespaces = Api::<Namespace>::all(client.clone())
        .list(&lp)
        .await
        .context("listing namespaces")?;
    let pods = Api::<Pod>::all(client.clone())
        .list(&lp)
        .await
        .context("listing pods")?;
    let policies = Api::<NetworkPolicy>::all(client.clone())
        .list(&lp)
        .await
        .context("listing networkpolicies")?;
    Ok(Discovered {
        nodes: nodes.items.iter().map(|n| name(&n.metadata)).collect(),
        namespaces: namespaces
            .items
            .iter()
            .filter(|n| n.metadata.deletion_timestamp.is_none())
            .map(|n| name(&n.metadata))
            .collect(),
        pods: pods
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| {
                let node = p.spec.as_ref()?.node_name.clone()?;
                let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone());
                Some((ns_of(&p.metadata), name(&p.metadata), node, ip))
            })
            .collect(),
        policies: policies
            .items
            .iter()
            .map(|p| (ns_of(&p.metadata), name(&p.metadata)))
            .collect(),
    })
}

async fn run_unpaced(d: &mut Dispatcher, waves: Vec<Vec<Op>>) -> PhaseReport {
    let start = Instant::now();
    let mut issued = 0;
    let mut unfinished = 0;
    for wave in waves {
        for op in wave {
            issued += 1;
            d.dispatch(op).await;
        }
        unfinished += d.drain().await;
    }
    PhaseReport {
        ops_issued: issued,
        counts: d.ctx.take_counts(),
        unfinished,
        elapsed: start.elapsed(),
    }
}

async fn run_paced(
    d: &mut Dispatcher,
    model: &mut Model,
    cfg: &ChurnConfig,
    rng: &mut Rng,
) -> PhaseReport {
    let period = Duration::from_secs_f64(1.0 / cfg.rate);
    let mut interval = tokio::time::interval(period);
    // Ticks missed while the in-flight limit held the loop back are made up at once.
    interval.set_missed_tick_behavior(MissedTickBehavior::Burst);
    // The first tick is immediate; the run lasts `duration` from it.
    let start = interval.tick().await;
    let deadline = start + cfg.duration;
    let mut issued = 0;
    let mut t = start;
    // Ticks made up after a stall never run past the deadline on the wall clock.
    while t < deadline && tokio::time::Instant::now() < deadline {
        let op = model.plan(rng, &cfg.mix, unix_secs());
        issued += 1;
        d.dispatch(op).await;
        t = interval.tick().await;
    }
    let unfinished = d.drain().await;
    PhaseReport {
        ops_issued: issued,
        counts: d.ctx.take_counts(),
        unfinished,
        elapsed: start.elapsed(),
    }
}

async fn run_async(cfg: ChurnConfig, server: String) -> anyhow::Result<ChurnReport> {
    use anyhow::Context as _;
    let client = connect(&cfg.kubeconfig).await?;
    let record = cfg
        .record
        .as_ref()
        .map(|p| {
            File::create(p)
                .map(|f| Mutex::new(BufWriter::new(f)))
                .with_context(|| format!("--record {}", p.display()))
        })
        .transpose()?;
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        counts: Mutex::new(Counts::default()),
        record,
        record_error: Mutex::new(None),
        logged: AtomicUsize::new(0),
    });
    let mut d = Dispatcher::new(ctx.clone(), MAX_IN_FLIGHT);

    let setup = if cfg.phases.setup() {
        let (first, second) = setup_ops(cfg.nodes, cfg.pods_per_node, cfg.namespaces);
        Some(run_unpaced(&mut d, vec![first, second]).await)
    } else {
        None
    };
    let discovered = discover(&client)
        .await
        .context("cannot list the churn's objects")?;
    let mut model = Model::new(cfg.pods_per_node, &discovered);
    let churn = if cfg.phases.churn() {
        if model.nodes() == 0 || model.namespaces() == 0 {
            anyhow::bail!(
                "the API server has {} churn nodes and {} churn namespaces (labelled \
                 {LABEL}={LABEL_VALUE}); churn needs at least one of each: run without \
                 --no-setup first",
                model.nodes(),
                model.namespaces()
            );
        }
        let mut rng = Rng::new(cfg.seed);
        Some(run_paced(&mut d, &mut model, &cfg, &mut rng).await)
    } else {
        None
    };

    if let Some(rec) = &ctx.record {
        if let Err(e) = lock(rec).flush() {
            lock(&ctx.record_error).get_or_insert_with(|| e.to_string());
        }
    }
    let record_error = lock(&ctx.record_error).clone();
    Ok(ChurnReport {
        server,
        seed: cfg.seed,
        mix: cfg.mix,
        requested_rate: cfg.rate,
        duration: cfg.duration,
        setup,
        churn,
        objects: [
            model.nodes(),
            model.namespaces(),
            model.pods(),
            model.policies(),
        ],
        record_error,
    })
}

/// Runs `churn`. `Err` means it could not run (refused server, unreadable kubeconfig, the API
/// server unreachable or nothing to churn); API errors during the run are in the report.
pub fn run(cfg: ChurnConfig) -> anyhow::Result<ChurnReport> {
    let server = loopback_server(&cfg.kubeconfig).map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(cfg, server))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parsing() {
        let m = Mix::parse("pods=40,heartbeats=30,labels=20,policies=10").unwrap();
        assert_eq!(
            m,
            Mix {
                pods: 40,
                heartbeats: 30,
                pod_labels: 20,
                namespace_labels: 0,
                policies: 10
            }
        );
        assert_eq!(Mix::parse(&m.to_string()).unwrap(), m);
        assert_eq!(
            Mix::parse(&Mix::default().to_string()).unwrap(),
            Mix::default()
        );
        assert_eq!(Mix::parse(" ns-labels = 3 ").unwrap().namespace_labels, 3);
        for bad in [
            "",
            "pods=0",
            "pods",
            "pods=x",
            "pods=-1",
            "cats=1",
            "pods=1,pods=2",
            "pods=1000001",
        ] {
            assert!(Mix::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mix_pick_follows_weights() {
        let m = Mix::parse("pods=3,heartbeats=1").unwrap();
        let mut rng = Rng::new(1);
        let mut pods = 0;
        for _ in 0..4000 {
            match m.pick(&mut rng) {
                MixKind::Pods => pods += 1,
                MixKind::Heartbeats => {}
                other => panic!("{other:?} has weight 0"),
            }
        }
        assert!((2800..3200).contains(&pods), "{pods}");
    }

    #[test]
    fn kubeconfig_server_is_checked() {
        let dir = std::env::temp_dir().join(format!("churn-kc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |server: &str| {
            let p = dir.join("kubeconfig");
            std::fs::write(
                &p,
                format!(
                    "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: k\n  \
                     cluster:\n    server: {server}\ncontexts:\n- name: c\n  context:\n    \
                     cluster: k\n    user: u\nusers:\n- name: u\n  user:\n    token: t\n"
                ),
            )
            .unwrap();
            p
        };
        assert_eq!(
            loopback_server(&write("https://127.0.0.1:6443")).unwrap(),
            "https://127.0.0.1:6443"
        );
        let e = loopback_server(&write("https://192.168.1.10:6443")).unwrap_err();
        assert!(e.contains("not on loopback"), "{e}");
        assert!(loopback_server(&dir.join("missing")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_767_225_600), "2026-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_825_599), "2000-02-29T11:59:59Z");
        assert_eq!(rfc3339(4_107_542_400), "2100-03-01T00:00:00Z");
    }

    #[test]
    fn addresses() {
        assert_eq!(node_ip(0), "172.16.0.1");
        assert_eq!(node_ip(65_535), "172.17.0.0");
        assert_eq!(pod_cidr(0), "10.0.0.0/24");
        assert_eq!(pod_cidr(258), "10.1.2.0/24");
        assert_eq!(pod_ip(258, 7), "10.1.2.7");
    }

    fn setup_model(nodes: usize, ppn: usize, namespaces: usize) -> Model {
        let (first, second) = setup_ops(nodes, ppn, namespaces);
        let mut d = Discovered::default();
        for op in first.into_iter().chain(second) {
            match op {
                Op::NamespaceCreate { name, .. } => d.namespaces.push(name),
                Op::NodeCreate { name, .. } => d.nodes.push(name),
                Op::PodCreate {
                    ns, name, node, ip, ..
                } => d.pods.push((ns, name, node, Some(ip))),
                Op::PolicyCreate { ns, name, .. } => d.policies.push((ns, name)),
                other => panic!("setup made {other:?}"),
            }
        }
        // Listing order must not matter.
        d.nodes.reverse();
        d.pods.reverse();
        Model::new(ppn, &d)
    }

    #[test]
    fn setup_layout() {
        let m = setup_model(12, 3, 4);
        assert_eq!(
            (m.nodes(), m.namespaces(), m.pods(), m.policies()),
            (12, 4, 36, 4)
        );
        assert_eq!(m.next_pod, 36);
        assert_eq!(m.nodes[11].name, "churn-node-11");
        assert!(m.nodes.iter().all(|n| n.pods.len() == 3
            && n.used[1..=3].iter().all(|u| *u)
            && n.pods.iter().all(|p| p.octet.is_some())));
    }

    #[test]
    fn plans_are_deterministic_and_bounded() {
        let ops = |seed| {
            let mut m = setup_model(5, 4, 3);
            let live: HashMap<String, String> = m
                .nodes
                .iter()
                .flat_map(|n| {
                    n.pods.iter().map(|p| {
                        (
                            format!("{}/{}", p.ns, p.name),
                            pod_ip(n.index, p.octet.unwrap()),
                        )
                    })
                })
                .collect();
            let mut rng = Rng::new(seed);
            let ops: Vec<Op> = (0..3000)
                .map(|i| m.plan(&mut rng, &Mix::default(), 1_767_225_600 + i / 100))
                .collect();
            (ops, m, live)
        };
        let (a, m, mut live) = ops(7);
        let (b, _, _) = ops(7);
        let (c, _, _) = ops(8);
        assert_eq!(a, b);
        assert_ne!(a, c);
        for kind in [
            "pod-create",
            "pod-delete",
            "heartbeat",
            "pod-label",
            "namespace-label",
            "policy-create",
            "policy-update",
            "policy-delete",
        ] {
            assert!(a.iter().any(|o| o.kind() == kind), "no {kind}");
        }
        // Pods stay within the cap, addresses are unique per node, names never repeat, and
        // only live pods are deleted or relabelled.
        for n in &m.nodes {
            assert!(n.pods.len() <= m.node_cap());
            let mut ips: Vec<_> = n.pods.iter().map(|p| p.octet.unwrap()).collect();
            ips.sort();
            ips.dedup();
            assert_eq!(ips.len(), n.pods.len());
        }
        let mut names: std::collections::HashSet<String> = live.keys().cloned().collect();
        for op in &a {
            let o = op.object();
            match op {
                Op::PodCreate { ip, .. } => {
                    assert!(names.insert(o.clone()), "{o} reused");
                    assert!(!live.values().any(|v| v == ip), "{ip} given twice");
                    live.insert(o, ip.clone());
                }
                Op::PodDelete { .. } => {
                    assert!(live.remove(&o).is_some(), "delete of a dead pod {o}");
                }
                Op::PodLabels { .. } => {
                    assert!(live.contains_key(&o), "label of a dead pod {o}");
                }
                _ => {}
            }
        }
        assert_eq!(live.len(), m.pods());
        assert_eq!(
            m.pods(),
            m.nodes.iter().map(|n| n.pods.len()).sum::<usize>()
        );
        // The population reverts towards --pods-per-node.
        assert!((5..=35).contains(&m.pods()), "{}", m.pods());
        // Heartbeats never repeat a second for a node.
        let mut beats: HashMap<&str, i64> = HashMap::new();
        for op in &a {
            if let Op::Heartbeat { node, unix_secs } = op {
                if let Some(last) = beats.insert(node, *unix_secs) {
                    assert!(last < *unix_secs, "{node}: {last} then {unix_secs}");
                }
            }
        }
    }
}
