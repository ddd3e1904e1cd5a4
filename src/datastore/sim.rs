//! The embedded synthetic datastore: a deterministic, seeded Kubernetes cluster that emits what
//! Calico v3.32's felix (and bgp / tunnel-ip-allocation) syncers would emit for it in KDD mode,
//! with the same key paths and value shapes (see `/work/shared/reference/felix-syncer-kdd.md`).
//!
//! The cluster is a model (nodes, namespaces, pods, policies) plus the rendered key/value map.
//! Values are rendered from the model only, never from the revision, so rendering an unchanged
//! object twice gives identical bytes: the no-op rewrites that churn produces (a pod status update,
//! a node heartbeat) are byte-identical to what the daemon holds and must be dropped by its no-op
//! filter.
//!
//! What is generated:
//! * global config (`/calico/v1/config/...`, raw text), `/calico/v1/Ready` (raw `true`);
//! * the tiers `default`, `kube-admin` and `kube-baseline`;
//! * one IPv4 pool (`10.0.0.0/16` unless the blocks need more room) and one IPv6 pool;
//! * raw v3 `bgpconfigurations/default`;
//! * per namespace the `kns.<ns>` and `ksa.<ns>.default` profiles (v1 rules, v1 labels when
//!   there are any, raw v3), plus `projectcalico-default-allow`;
//! * per node the raw v3 Node, the HostConfig `IpInIpTunnelAddr` and the HostIP `bird_ip`
//!   (both raw text; `bird_ip` is still emitted by v3.32), one block affinity and one IPAM block
//!   per /26 block of the node;
//! * `policies` policies, a mix of Calico NetworkPolicy, KubernetesNetworkPolicy and
//!   GlobalNetworkPolicy, at the 3.32+ paths with the tier in the value;
//! * `endpoints` v1 WorkloadEndpoints spread round-robin over the nodes and at random over the
//!   namespaces, with IPs from their node's blocks.
//!
//! Simplifications: IPAM block values show the allocations of the initial state and are not
//! rewritten by churn; every object has its own revision from one increasing counter (profiles
//! do not use Calico's `<nsRV>/<saRV>` form).

use super::{DriverEvent, DriverSender};
use crate::model::{now_unix_nanos, Key, KvUpdate, SyncStatus};
use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::Duration;

/// Most updates per [`DriverEvent::Updates`] message, as Calico's watchersyncer batches them.
pub const MAX_CHUNK: usize = 1000;

/// Churn pacing interval.
const TICK: Duration = Duration::from_millis(10);
const TICKS_PER_SEC: f64 = 100.0;
/// Cap on updates generated per tick (10 million a second), so a huge rate cannot make one tick
/// allocate without bound.
const MAX_PER_TICK: f64 = 100_000.0;

/// The key the payload stream rewrites: global config, which the felix syncer carries.
pub const PAYLOAD_KEY: &str = "/calico/v1/config/LoadtestPayload";
/// Hex digits at the start of every payload value: when it was written (Unix nanoseconds) and
/// its number in the stream, 16 digits each. Typha's protocol carries no timestamp and no
/// sequence number, so a Felix-protocol subscriber reads both from the value itself.
pub const PAYLOAD_HEAD_LEN: usize = 32;
/// Cap on payload rewrites per second (the tokio timer's resolution is a millisecond).
const MAX_PAYLOAD_RATE: f64 = 1000.0;

/// The IPv4 pool holds at most this many /26 blocks (a /8); node count is capped to it.
const MAX_BLOCKS: usize = 1 << 18;
const BLOCK_SIZE: usize = 64;
const FIRST_REVISION: u64 = 1000;

const CALICO_VERSION: &str = "v3.32.1";
const V3_API: &str = "projectcalico.org/v3";
const APPS: &[&str] = &[
    "web", "api", "auth", "cart", "catalog", "checkout", "db", "cache", "queue", "search",
    "billing", "frontend",
];
const ZONES: &[&str] = &["zone-a", "zone-b", "zone-c"];
/// The alphabet Kubernetes uses for generated name suffixes.
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Shape and pace of the synthetic cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Nodes (at least 1 is generated; at most 2^18).
    pub nodes: usize,
    /// Workload endpoints (pods) in the initial state; churn keeps the count within about 5%.
    pub endpoints: usize,
    /// Namespaces (at least 1 is generated).
    pub namespaces: usize,
    /// Network policies of all kinds together.
    pub policies: usize,
    /// Seed of the pseudo-random generator: same seed, same cluster and same churn.
    pub seed: u64,
    /// Churn updates per second; 0 means none.
    pub churn_rate: f64,
    /// Fraction of churn updates that rewrite an existing key with its identical value.
    pub noop_fraction: f64,
    /// When non-zero, after the initial sync the churn is replaced by `payload_rate` rewrites a
    /// second of one key ([`PAYLOAD_KEY`]) with a fresh pseudo-random value of this many bytes:
    /// a fixed-size message stream for the fan-out comparisons of `typha-loadtest pubsub`.
    pub payload_bytes: usize,
    /// Payload rewrites per second (see `payload_bytes`).
    pub payload_rate: f64,
}

impl SimConfig {
    /// The default cluster scaled to `endpoints` pods at the default 30 pods per node.
    pub fn scaled(endpoints: usize) -> SimConfig {
        SimConfig {
            nodes: endpoints.div_ceil(30).max(1),
            endpoints,
            ..SimConfig::default()
        }
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 100,
            endpoints: 3000,
            namespaces: 20,
            policies: 200,
            seed: 1,
            churn_rate: 100.0,
            noop_fraction: 0.2,
            payload_bytes: 0,
            payload_rate: 10.0,
        }
    }
}

/// splitmix64: tiny, fast, and good enough for a simulation; fully determined by the seed.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`; 0 when `n` is 0.
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    fn hex(&mut self, len: usize) -> String {
        let mut s = String::with_capacity(len + 16);
        while s.len() < len {
            let _ = write!(s, "{:016x}", self.next_u64());
        }
        s.truncate(len);
        s
    }

    fn uid(&mut self) -> String {
        let h = self.hex(32);
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }

    fn k8s_suffix(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| char::from(NAME_ALPHABET[self.below(NAME_ALPHABET.len())]))
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PolicyKind {
    Calico,
    Kubernetes,
    Global,
}

impl PolicyKind {
    fn path_kind(self) -> &'static str {
        match self {
            PolicyKind::Calico => "NetworkPolicy",
            PolicyKind::Kubernetes => "KubernetesNetworkPolicy",
            PolicyKind::Global => "GlobalNetworkPolicy",
        }
    }
}

#[derive(Debug)]
struct SimNamespace {
    name: String,
    uid: String,
    created: String,
    /// The pod-template-hash of each app's Deployment in this namespace.
    template_hashes: Vec<String>,
}

#[derive(Debug)]
struct SimNode {
    name: String,
    uid: String,
    created: String,
    zone: usize,
    host_ip: Ipv4Addr,
    /// Base addresses of the node's /26 blocks.
    blocks: Vec<u32>,
    tunnel_ip: Ipv4Addr,
    /// Free pod addresses, popped from the end.
    free: Vec<u32>,
    generation: u64,
}

#[derive(Debug)]
struct SimPod {
    key: Key,
    ns: usize,
    node: usize,
    app: usize,
    name: String,
    ip: u32,
    version: u64,
}

#[derive(Debug)]
struct SimPolicy {
    key: Key,
    kind: PolicyKind,
    ns: usize,
    app: usize,
    peer: usize,
    order: u32,
    base_port: u64,
    generation: u64,
}

#[derive(Debug)]
struct Entry {
    key: Key,
    value: Bytes,
    revision: u64,
}

/// The synthetic cluster: its model, the rendered key/value map, and the churn generator.
#[derive(Debug)]
pub struct SimCluster {
    cfg: SimConfig,
    rng: Rng,
    revision: u64,
    target_endpoints: usize,
    noop_fraction: f64,
    namespaces: Vec<SimNamespace>,
    nodes: Vec<SimNode>,
    pods: Vec<SimPod>,
    policies: Vec<SimPolicy>,
    /// The current map, in a deterministic order (creation order, reshuffled by swap-removes).
    entries: Vec<Entry>,
    index: HashMap<Key, usize>,
    /// Payload rewrites made so far (the stream numbers them from 1).
    payloads: u64,
}

/// The `(unix_nanos, number)` a payload value starts with (see [`PAYLOAD_HEAD_LEN`]); `None`
/// for a value that is not a payload or was too short to carry its head.
pub fn parse_payload_head(value: &[u8]) -> Option<(u64, u64)> {
    let head = value.get(..PAYLOAD_HEAD_LEN)?;
    // By hand: a load generator parses this for every delivery it counts.
    let field = |b: &[u8]| {
        b.iter().try_fold(0u64, |acc, &c| {
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                _ => return None,
            };
            Some(acc << 4 | u64::from(d))
        })
    };
    Some((field(&head[..16])?, field(&head[16..])?))
}

// ---- Rendering helpers ----

/// Escapes a name segment as Calico's `model/name.go` does.
fn escape_segment(s: &str) -> String {
    s.replace('%', "%25").replace('/', "%2f")
}

/// `/` in a CIDR becomes `-` in IPAM and pool keys.
fn cidr_segment(cidr: &str) -> String {
    cidr.replace('/', "-")
}

fn to_bytes<T: Serialize>(v: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

/// A creation timestamp in RFC 3339, spread over one day by `i`.
fn timestamp(i: usize) -> String {
    let s = i % 86_400;
    format!(
        "2026-01-01T{:02}:{:02}:{:02}Z",
        s / 3600,
        (s / 60) % 60,
        s % 60
    )
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// SHA-1, for Calico's interface names (`cali` + 11 hex digits of `sha1("<ns>.<pod>")`); the
/// known-answer tests below cover it.
pub(crate) fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [
        0x6745_2301,
        0xEFCD_AB89,
        0x98BA_DCFE,
        0x1032_5476,
        0xC3D2_E1F0,
    ];
    let bit_len = (data.len() as u64).wrapping_mul(8);
    let mut msg = Vec::with_capacity(data.len() + 72);
    msg.extend_from_slice(data);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 80];
        for (wi, word) in w.iter_mut().zip(block.chunks_exact(4)) {
            *wi = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (hv, v) in h.iter_mut().zip([a, b, c, d, e]) {
            *hv = hv.wrapping_add(v);
        }
    }
    let mut out = [0u8; 20];
    for (o, v) in out.chunks_exact_mut(4).zip(h) {
        o.copy_from_slice(&v.to_be_bytes());
    }
    out
}

fn interface_name(ns: &str, pod: &str) -> String {
    let h = hex(&sha1(format!("{ns}.{pod}").as_bytes()));
    format!("cali{}", &h[..11])
}

/// v1 WorkloadEndpoint (`model/workloadendpoint.go`), fields in Go's declaration order.
#[derive(Serialize)]
struct WorkloadEndpointValue<'a> {
    state: &'static str,
    name: &'a str,
    active_instance_id: &'static str,
    mac: Option<&'static str>,
    profile_ids: [&'a str; 2],
    ipv4_nets: [&'a str; 1],
    ipv6_nets: Option<[&'a str; 0]>,
    labels: &'a BTreeMap<String, String>,
}

/// v1 Rule (`model/rule.go`); absent fields are omitted as Go's omitempty does.
#[derive(Serialize, Default)]
struct RuleValue {
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    src_nets: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    src_selector: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dst_nets: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dst_selector: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dst_ports: Option<Vec<u16>>,
}

/// v1 Policy (`model/policy.go`, 3.32+ with `tier`).
#[derive(Serialize)]
struct PolicyValue {
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    tier: &'static str,
    order: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    inbound_rules: Vec<RuleValue>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    outbound_rules: Vec<RuleValue>,
    selector: String,
    types: Vec<&'static str>,
}

fn v3_meta(name: &str, uid: &str, created: &str) -> Value {
    json!({ "name": name, "uid": uid, "creationTimestamp": created })
}

fn v3_allow_rule() -> Value {
    json!({ "action": "Allow", "source": {}, "destination": {} })
}

impl SimCluster {
    pub fn new(cfg: SimConfig) -> Self {
        let n_nodes = cfg.nodes.clamp(1, MAX_BLOCKS);
        let n_ns = cfg.namespaces.max(1);
        // Each node gets room for twice its share of pods (plus its tunnel address), so churn
        // that moves pods around always finds a free address.
        let per_node = cfg.endpoints.div_ceil(n_nodes);
        let slots = per_node.saturating_mul(2).saturating_add(1);
        let mut blocks_per_node = slots.div_ceil(BLOCK_SIZE).max(1);
        if n_nodes.saturating_mul(blocks_per_node) > MAX_BLOCKS {
            blocks_per_node = (MAX_BLOCKS / n_nodes).max(1);
        }
        let capacity = n_nodes * (blocks_per_node * BLOCK_SIZE - 1);
        let noop_fraction = if cfg.noop_fraction.is_nan() {
            0.0
        } else {
            cfg.noop_fraction.clamp(0.0, 1.0)
        };

        let mut sim = SimCluster {
            rng: Rng(cfg.seed),
            revision: FIRST_REVISION,
            target_endpoints: cfg.endpoints.min(capacity),
            noop_fraction,
            namespaces: Vec::with_capacity(n_ns),
            nodes: Vec::with_capacity(n_nodes),
            pods: Vec::new(),
            policies: Vec::new(),
            entries: Vec::new(),
            index: HashMap::new(),
            payloads: 0,
            cfg,
        };

        for i in 0..n_ns {
            let name = match i {
                0 => "default".to_string(),
                1 => "kube-system".to_string(),
                _ => format!("ns-{i:03}"),
            };
            let uid = sim.rng.uid();
            let template_hashes = (0..APPS.len()).map(|_| sim.rng.k8s_suffix(10)).collect();
            sim.namespaces.push(SimNamespace {
                name,
                uid,
                created: timestamp(i),
                template_hashes,
            });
        }

        for i in 0..n_nodes {
            let blocks: Vec<u32> = (i * blocks_per_node..(i + 1) * blocks_per_node)
                .map(|b| 0x0A00_0000 | ((b as u32) << 6))
                .collect();
            let first = blocks.first().copied().unwrap_or(0x0A00_0000);
            let mut free: Vec<u32> = blocks
                .iter()
                .flat_map(|&base| base..base + BLOCK_SIZE as u32)
                .filter(|&a| a != first)
                .collect();
            free.reverse();
            let host = 0xAC10_0000 | ((i as u32 + 10) & 0x000F_FFFF);
            let uid = sim.rng.uid();
            let zone = sim.rng.below(ZONES.len());
            sim.nodes.push(SimNode {
                name: format!("node-{i:04}"),
                uid,
                created: timestamp(i),
                zone,
                host_ip: Ipv4Addr::from(host),
                blocks,
                tunnel_ip: Ipv4Addr::from(first),
                free,
                generation: 0,
            });
        }

        sim.build_global();
        sim.build_profiles();
        for n in 0..sim.nodes.len() {
            sim.build_node(n);
        }
        sim.build_policies();
        for i in 0..sim.target_endpoints {
            let node = i % sim.nodes.len();
            if sim.create_pod_on(node).is_none() {
                // Round-robin never overfills a node (capacity covers the target); should it,
                // any node with room takes the pod.
                if sim.create_pod().is_none() {
                    break;
                }
            }
        }
        sim.build_blocks();
        sim
    }

    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// The last revision handed out; every update gets a new, higher one.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Keys currently in the cluster's map.
    pub fn key_count(&self) -> usize {
        self.entries.len()
    }

    /// Workload endpoints currently in the cluster.
    pub fn endpoint_count(&self) -> usize {
        self.pods.len()
    }

    /// The whole current map as updates, as a full list would return it. Right after `new`
    /// this is the initial state; calling it does not change anything.
    /// The current state as the canonical map the batcher would hold.
    pub fn state_map(&self) -> crate::model::StateMap {
        self.initial_state()
            .into_iter()
            .filter_map(|u| {
                let value = u.value?;
                Some((
                    u.key,
                    std::sync::Arc::new(crate::model::Entry {
                        value,
                        revision: u.revision,
                    }),
                ))
            })
            .collect()
    }

    pub fn initial_state(&self) -> Vec<KvUpdate> {
        self.entries
            .iter()
            .map(|e| KvUpdate::set(e.key.clone(), e.value.clone(), e.revision.to_string()))
            .collect()
    }

    /// One churn update, applied to the cluster's own map.
    pub fn next_change(&mut self) -> KvUpdate {
        if !self.entries.is_empty() && self.rng.chance(self.noop_fraction) {
            return self.noop();
        }
        let r = self.rng.below(100);
        let change = if r < 40 {
            self.pod_churn()
        } else if r < 65 {
            self.pod_relabel()
        } else if r < 85 {
            self.policy_edit()
        } else {
            None
        };
        match change {
            Some(u) => u,
            None => self.node_update(),
        }
    }

    // ---- The map ----

    fn bump(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    fn put(&mut self, key: Key, value: Bytes, revision: u64) -> KvUpdate {
        match self.index.get(&key) {
            Some(&i) => {
                self.entries[i].value = value.clone();
                self.entries[i].revision = revision;
            }
            None => {
                self.index.insert(key.clone(), self.entries.len());
                self.entries.push(Entry {
                    key: key.clone(),
                    value: value.clone(),
                    revision,
                });
            }
        }
        KvUpdate::set(key, value, revision.to_string())
    }

    fn put_new(&mut self, key: impl Into<Key>, value: impl Into<Bytes>) -> KvUpdate {
        let rev = self.bump();
        self.put(key.into(), value.into(), rev)
    }

    fn remove(&mut self, key: &Key) -> Option<KvUpdate> {
        let i = self.index.remove(key)?;
        self.entries.swap_remove(i);
        if let Some(moved) = self.entries.get(i) {
            self.index.insert(moved.key.clone(), i);
        }
        let rev = self.bump();
        Some(KvUpdate::delete(key.clone(), rev.to_string()))
    }

    // ---- Initial objects ----

    fn build_global(&mut self) {
        let guid = self.rng.hex(32);
        let rev = self.bump();
        for (name, value) in [
            ("ClusterGUID", guid.as_str()),
            ("ClusterType", "k8s,bgp,kubeadm,kdd,typha"),
            ("CalicoVersion", CALICO_VERSION),
            ("Variant", "Calico"),
        ] {
            self.put(
                format!("/calico/v1/config/{name}").into(),
                Bytes::copy_from_slice(value.as_bytes()),
                rev,
            );
        }
        self.put("/calico/v1/Ready".into(), Bytes::from_static(b"true"), rev);

        let rev = self.bump();
        for (name, value) in [
            ("FloatingIPs", "Disabled"),
            ("LogSeverityScreen", "Info"),
            ("ReportingIntervalSecs", "0"),
        ] {
            self.put(
                format!("/calico/v1/config/{name}").into(),
                Bytes::copy_from_slice(value.as_bytes()),
                rev,
            );
        }

        for (tier, value) in [
            ("kube-admin", r#"{"order":1000,"defaultAction":"Pass"}"#),
            ("default", r#"{"order":1000000,"defaultAction":"Deny"}"#),
            (
                "kube-baseline",
                r#"{"order":10000000,"defaultAction":"Pass"}"#,
            ),
        ] {
            self.put_new(
                format!("/calico/v1/policy/tier/{tier}/metadata"),
                Bytes::from_static(value.as_bytes()),
            );
        }

        // The v4 pool: a /16 unless the nodes' blocks need a wider one.
        let total_blocks = self.nodes.iter().map(|n| n.blocks.len()).sum::<usize>();
        let addresses = (total_blocks * BLOCK_SIZE).max(1 << 16);
        let prefix = 32 - addresses.next_power_of_two().trailing_zeros().min(24);
        let cidr = format!("10.0.0.0/{prefix}");
        let v4 = format!(
            r#"{{"cidr":"{cidr}","ipip":"tunl0","ipip_mode":"always","vxlan_mode":"","masquerade":true,"ipam":true,"disabled":false,"disableBGPExport":false,"assignment_mode":"Automatic","allowed_uses":["Workload","Tunnel"]}}"#
        );
        self.put_new(
            format!("/calico/v1/ipam/v4/pool/{}", cidr_segment(&cidr)),
            v4,
        );
        let cidr6 = "fd00:10:244::/48";
        let v6 = format!(
            r#"{{"cidr":"{cidr6}","ipip":"","ipip_mode":"","vxlan_mode":"","masquerade":false,"ipam":true,"disabled":false,"disableBGPExport":false,"assignment_mode":"Automatic","allowed_uses":["Workload","Tunnel"]}}"#
        );
        self.put_new(
            format!("/calico/v1/ipam/v6/pool/{}", cidr_segment(cidr6)),
            v6,
        );

        let uid = self.rng.uid();
        let bgp = json!({
            "kind": "BGPConfiguration",
            "apiVersion": V3_API,
            "metadata": v3_meta("default", &uid, &timestamp(0)),
            "spec": {
                "logSeverityScreen": "Info",
                "nodeToNodeMeshEnabled": true,
                "asNumber": 64512
            }
        });
        self.put_new(
            "/calico/resources/v3/projectcalico.org/bgpconfigurations/default",
            to_bytes(&bgp),
        );
    }

    fn put_profile(
        &mut self,
        name: &str,
        uid: &str,
        created: &str,
        allow: bool,
        labels: &BTreeMap<String, String>,
    ) {
        let rev = self.bump();
        let rules: &'static [u8] = if allow {
            br#"{"inbound_rules":[{"action":"allow"}],"outbound_rules":[{"action":"allow"}]}"#
        } else {
            b"{}"
        };
        self.put(
            format!("/calico/v1/policy/profile/{}/rules", escape_segment(name)).into(),
            Bytes::from_static(rules),
            rev,
        );
        // A profile without labels gets no labels key at all (the processor sends a delete).
        if !labels.is_empty() {
            self.put(
                format!("/calico/v1/policy/profile/{}/labels", escape_segment(name)).into(),
                to_bytes(labels),
                rev,
            );
        }
        let mut spec = serde_json::Map::new();
        if allow {
            spec.insert("ingress".into(), json!([v3_allow_rule()]));
            spec.insert("egress".into(), json!([v3_allow_rule()]));
        }
        if !labels.is_empty() {
            spec.insert("labelsToApply".into(), json!(labels));
        }
        let v3 = json!({
            "kind": "Profile",
            "apiVersion": V3_API,
            "metadata": v3_meta(name, uid, created),
            "spec": spec
        });
        self.put(
            format!("/calico/resources/v3/projectcalico.org/profiles/{name}").into(),
            to_bytes(&v3),
            rev,
        );
    }

    fn build_profiles(&mut self) {
        let uid = self.rng.uid();
        self.put_profile(
            "projectcalico-default-allow",
            &uid,
            &timestamp(0),
            true,
            &BTreeMap::new(),
        );
        for i in 0..self.namespaces.len() {
            let (ns, uid, created) = {
                let n = &self.namespaces[i];
                (n.name.clone(), n.uid.clone(), n.created.clone())
            };
            let labels: BTreeMap<String, String> = [
                ("pcns.kubernetes.io/metadata.name".to_string(), ns.clone()),
                ("pcns.projectcalico.org/name".to_string(), ns.clone()),
            ]
            .into_iter()
            .collect();
            self.put_profile(&format!("kns.{ns}"), &uid, &created, true, &labels);
            let sa_uid = self.rng.uid();
            let sa_labels: BTreeMap<String, String> = [(
                "pcsa.projectcalico.org/name".to_string(),
                "default".to_string(),
            )]
            .into_iter()
            .collect();
            self.put_profile(
                &format!("ksa.{ns}.default"),
                &sa_uid,
                &created,
                false,
                &sa_labels,
            );
        }
    }

    fn render_node(&self, n: usize) -> Bytes {
        let node = &self.nodes[n];
        let mut labels: BTreeMap<String, String> = [
            ("beta.kubernetes.io/arch", "amd64"),
            ("beta.kubernetes.io/os", "linux"),
            ("kubernetes.io/arch", "amd64"),
            ("kubernetes.io/hostname", node.name.as_str()),
            ("kubernetes.io/os", "linux"),
            (
                "topology.kubernetes.io/zone",
                ZONES[node.zone % ZONES.len()],
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        if node.generation > 0 {
            labels.insert(
                "typha-sim/generation".to_string(),
                node.generation.to_string(),
            );
        }
        let kube_labels = serde_json::to_string(&labels).unwrap_or_default();
        let addr = format!("{}/12", node.host_ip);
        let v = json!({
            "kind": "Node",
            "apiVersion": V3_API,
            "metadata": {
                "name": node.name,
                "uid": node.uid,
                "creationTimestamp": node.created,
                "labels": labels,
                "annotations": { "projectcalico.org/kube-labels": kube_labels }
            },
            "spec": {
                "bgp": {
                    "ipv4Address": addr,
                    "ipv4IPIPTunnelAddr": node.tunnel_ip.to_string()
                },
                "orchRefs": [{ "nodeName": node.name, "orchestrator": "k8s" }],
                "addresses": [
                    { "address": addr, "type": "CalicoNodeIP" },
                    { "address": node.host_ip.to_string(), "type": "InternalIP" }
                ]
            },
            "status": {}
        });
        to_bytes(&v)
    }

    fn node_key(&self, n: usize) -> Key {
        format!(
            "/calico/resources/v3/projectcalico.org/nodes/{}",
            self.nodes[n].name
        )
        .into()
    }

    fn build_node(&mut self, n: usize) {
        let rev = self.bump();
        let key = self.node_key(n);
        let value = self.render_node(n);
        self.put(key, value, rev);
        let (name, tunnel, host, blocks) = {
            let node = &self.nodes[n];
            (
                node.name.clone(),
                node.tunnel_ip.to_string(),
                node.host_ip.to_string(),
                node.blocks.clone(),
            )
        };
        self.put(
            format!("/calico/v1/host/{name}/config/IpInIpTunnelAddr").into(),
            Bytes::from(tunnel),
            rev,
        );
        self.put(
            format!("/calico/v1/host/{name}/bird_ip").into(),
            Bytes::from(host),
            rev,
        );
        for base in blocks {
            let cidr = format!("{}/26", Ipv4Addr::from(base));
            self.put_new(
                format!(
                    "/calico/ipam/v2/host/{name}/ipv4/block/{}",
                    cidr_segment(&cidr)
                ),
                Bytes::from_static(br#"{"state":"confirmed","deleted":false}"#),
            );
        }
    }

    /// IPAM blocks, with the allocations of the pods that exist when this runs.
    fn build_blocks(&mut self) {
        let by_ip: HashMap<u32, usize> = self
            .pods
            .iter()
            .enumerate()
            .map(|(i, p)| (p.ip, i))
            .collect();
        let mut out = Vec::new();
        for node in &self.nodes {
            let tunnel = u32::from(node.tunnel_ip);
            for &base in &node.blocks {
                let cidr = format!("{}/26", Ipv4Addr::from(base));
                let mut allocations = Vec::with_capacity(BLOCK_SIZE);
                let mut unallocated = Vec::new();
                let mut attributes = Vec::new();
                for ord in 0..BLOCK_SIZE as u32 {
                    let ip = base + ord;
                    let attr = if ip == tunnel {
                        Some(json!({
                            "handle_id": format!("ipip-tunnel-addr-{}", node.name),
                            "secondary": { "node": node.name, "type": "ipipTunnelAddress" }
                        }))
                    } else {
                        by_ip.get(&ip).and_then(|&p| self.pods.get(p)).map(|p| {
                            let ns = &self.namespaces[p.ns].name;
                            let handle = hex(&sha1(format!("{ns}/{}", p.name).as_bytes()));
                            json!({
                                "handle_id": format!("k8s-pod-network.{handle}"),
                                "secondary": {
                                    "namespace": ns,
                                    "node": node.name,
                                    "pod": p.name,
                                    "timestamp": node.created
                                }
                            })
                        })
                    };
                    match attr {
                        Some(a) => {
                            allocations.push(json!(attributes.len()));
                            attributes.push(a);
                        }
                        None => {
                            allocations.push(Value::Null);
                            unallocated.push(ord);
                        }
                    }
                }
                let v = json!({
                    "cidr": cidr,
                    "affinity": format!("host:{}", node.name),
                    "affinityClaimTime": node.created,
                    "allocations": allocations,
                    "unallocated": unallocated,
                    "attributes": attributes,
                    "deleted": false,
                    "sequenceNumber": attributes.len()
                });
                out.push((
                    format!(
                        "/calico/ipam/v2/assignment/ipv4/block/{}",
                        cidr_segment(&cidr)
                    ),
                    to_bytes(&v),
                ));
            }
        }
        for (k, v) in out {
            self.put_new(k, v);
        }
    }

    fn policy_port(p: &SimPolicy) -> u16 {
        1024 + ((p.base_port + p.generation.wrapping_mul(7919)) % 60_000) as u16
    }

    fn render_policy(&self, p: &SimPolicy) -> Bytes {
        let ns = self
            .namespaces
            .get(p.ns)
            .map_or("default", |n| n.name.as_str());
        let app = APPS[p.app % APPS.len()];
        let peer = APPS[p.peer % APPS.len()];
        let port = Self::policy_port(p);
        let v = match p.kind {
            PolicyKind::Calico | PolicyKind::Kubernetes => {
                // A Kubernetes NetworkPolicy selects only Kubernetes endpoints.
                let k8s = if matches!(p.kind, PolicyKind::Kubernetes) {
                    "projectcalico.org/orchestrator == 'k8s' && "
                } else {
                    ""
                };
                PolicyValue {
                    namespace: Some(ns.to_string()),
                    tier: "default",
                    order: p.order,
                    inbound_rules: vec![RuleValue {
                        action: "allow",
                        protocol: Some("TCP"),
                        src_selector: Some(format!(
                            "({k8s}app == '{peer}') && projectcalico.org/namespace == '{ns}'"
                        )),
                        dst_ports: Some(vec![port]),
                        ..Default::default()
                    }],
                    outbound_rules: Vec::new(),
                    selector: format!(
                        "({k8s}app == '{app}') && projectcalico.org/namespace == '{ns}'"
                    ),
                    types: vec!["ingress"],
                }
            }
            PolicyKind::Global => PolicyValue {
                namespace: None,
                tier: "default",
                order: p.order,
                inbound_rules: vec![RuleValue {
                    action: "allow",
                    protocol: Some("TCP"),
                    src_nets: Some(vec!["10.0.0.0/8".to_string()]),
                    dst_ports: Some(vec![port]),
                    ..Default::default()
                }],
                outbound_rules: vec![
                    RuleValue {
                        action: "deny",
                        dst_nets: Some(vec!["169.254.169.254/32".to_string()]),
                        ..Default::default()
                    },
                    RuleValue {
                        action: "allow",
                        protocol: Some("UDP"),
                        dst_selector: Some("k8s-app == 'kube-dns'".to_string()),
                        dst_ports: Some(vec![53]),
                        ..Default::default()
                    },
                ],
                selector: format!("app == '{app}'"),
                types: vec!["ingress", "egress"],
            },
        };
        to_bytes(&v)
    }

    fn build_policies(&mut self) {
        for i in 0..self.cfg.policies {
            let r = self.rng.below(100);
            let kind = if r < 50 {
                PolicyKind::Kubernetes
            } else if r < 85 {
                PolicyKind::Calico
            } else {
                PolicyKind::Global
            };
            let ns = self.rng.below(self.namespaces.len());
            let app = self.rng.below(APPS.len());
            let peer = self.rng.below(APPS.len());
            let base_port = self.rng.below(60_000) as u64;
            let (key, order) = match kind {
                PolicyKind::Kubernetes => (
                    format!(
                        "/calico/v1/policy/{}/{}/{}-allow-{i}",
                        kind.path_kind(),
                        self.namespaces[ns].name,
                        APPS[app]
                    ),
                    1000,
                ),
                PolicyKind::Calico => (
                    format!(
                        "/calico/v1/policy/{}/{}/{}-policy-{i}",
                        kind.path_kind(),
                        self.namespaces[ns].name,
                        APPS[app]
                    ),
                    100 + (i % 10) as u32 * 10,
                ),
                PolicyKind::Global => (
                    format!(
                        "/calico/v1/policy/{}//global-{}-{i}",
                        kind.path_kind(),
                        APPS[app]
                    ),
                    10 + (i % 50) as u32,
                ),
            };
            let p = SimPolicy {
                key: key.into(),
                kind,
                ns,
                app,
                peer,
                order,
                base_port,
                generation: 0,
            };
            let value = self.render_policy(&p);
            let key = p.key.clone();
            self.policies.push(p);
            self.put_new(key, value);
        }
    }

    // ---- Pods ----

    fn render_pod(&self, p: &SimPod) -> Bytes {
        let ns = &self.namespaces[p.ns];
        let app = APPS[p.app % APPS.len()];
        let labels: BTreeMap<String, String> = [
            ("app".to_string(), app.to_string()),
            (
                "pod-template-hash".to_string(),
                ns.template_hashes.get(p.app).cloned().unwrap_or_default(),
            ),
            ("projectcalico.org/namespace".to_string(), ns.name.clone()),
            (
                "projectcalico.org/orchestrator".to_string(),
                "k8s".to_string(),
            ),
            (
                "projectcalico.org/serviceaccount".to_string(),
                "default".to_string(),
            ),
            ("version".to_string(), format!("v{}", p.version)),
        ]
        .into_iter()
        .collect();
        let iface = interface_name(&ns.name, &p.name);
        let kns = format!("kns.{}", ns.name);
        let ksa = format!("ksa.{}.default", ns.name);
        let net = format!("{}/32", Ipv4Addr::from(p.ip));
        to_bytes(&WorkloadEndpointValue {
            state: "active",
            name: &iface,
            active_instance_id: "",
            mac: None,
            profile_ids: [&kns, &ksa],
            ipv4_nets: [&net],
            ipv6_nets: None,
            labels: &labels,
        })
    }

    /// Creates a pod on `node` if it has a free address.
    fn create_pod_on(&mut self, node: usize) -> Option<KvUpdate> {
        let ip = self.nodes.get_mut(node)?.free.pop()?;
        let ns = self.rng.below(self.namespaces.len());
        let app = self.rng.below(APPS.len());
        let node_name = self.nodes[node].name.clone();
        let ns_name = self.namespaces[ns].name.clone();
        let hash = self.namespaces[ns]
            .template_hashes
            .get(app)
            .cloned()
            .unwrap_or_default();
        let mut attempt = 0;
        let (name, key) = loop {
            let mut name = format!("{}-{hash}-{}", APPS[app], self.rng.k8s_suffix(5));
            if attempt >= 16 {
                // Practically unreachable; guarantees uniqueness without looping forever.
                let _ = write!(name, "-{}", self.revision + 1);
            }
            let key: Key = format!(
                "/calico/v1/host/{node_name}/workload/k8s/{}/endpoint/eth0",
                escape_segment(&format!("{ns_name}/{name}"))
            )
            .into();
            if !self.index.contains_key(&key) || attempt >= 16 {
                break (name, key);
            }
            attempt += 1;
        };
        let pod = SimPod {
            key: key.clone(),
            ns,
            node,
            app,
            name,
            ip,
            version: 1,
        };
        let value = self.render_pod(&pod);
        self.pods.push(pod);
        Some(self.put_new(key, value))
    }

    /// Creates a pod on a random node with room.
    fn create_pod(&mut self) -> Option<KvUpdate> {
        let n = self.nodes.len();
        let start = self.rng.below(n);
        let node = (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| !self.nodes[i].free.is_empty())?;
        self.create_pod_on(node)
    }

    fn delete_pod(&mut self) -> Option<KvUpdate> {
        if self.pods.is_empty() {
            return None;
        }
        let i = self.rng.below(self.pods.len());
        let pod = self.pods.swap_remove(i);
        if let Some(node) = self.nodes.get_mut(pod.node) {
            node.free.push(pod.ip);
        }
        self.remove(&pod.key)
    }

    /// Pod create or delete, a random walk kept within about 5% of the target count.
    fn pod_churn(&mut self) -> Option<KvUpdate> {
        let n = self.pods.len();
        let target = self.target_endpoints;
        let slack = (target / 20).max(1);
        let create = if target == 0 {
            false
        } else if n + slack <= target {
            true
        } else if n >= target + slack {
            false
        } else {
            self.rng.chance(0.5)
        };
        if create {
            self.create_pod()
        } else {
            self.delete_pod()
        }
    }

    fn pod_relabel(&mut self) -> Option<KvUpdate> {
        if self.pods.is_empty() {
            return None;
        }
        let i = self.rng.below(self.pods.len());
        self.pods[i].version += 1;
        let value = self.render_pod(&self.pods[i]);
        let key = self.pods[i].key.clone();
        Some(self.put_new(key, value))
    }

    fn policy_edit(&mut self) -> Option<KvUpdate> {
        if self.policies.is_empty() {
            return None;
        }
        let i = self.rng.below(self.policies.len());
        let p = &mut self.policies[i];
        p.generation += 1;
        if p.generation % 3 == 0 {
            p.peer = (p.peer + 1) % APPS.len();
        }
        let value = self.render_policy(&self.policies[i]);
        let key = self.policies[i].key.clone();
        Some(self.put_new(key, value))
    }

    /// A Node change that survives Calico's conversion (a label, so the labels and the
    /// kube-labels annotation of the v3 Node change).
    fn node_update(&mut self) -> KvUpdate {
        let n = self.rng.below(self.nodes.len());
        if let Some(node) = self.nodes.get_mut(n) {
            node.generation += 1;
        }
        let key = self.node_key(n);
        let value = self.render_node(n);
        self.put_new(key, value)
    }

    /// Rewrites [`PAYLOAD_KEY`] with a `bytes`-long value: the head (send time and number,
    /// truncated when `bytes` is shorter) then fresh pseudo-random hex.
    pub fn payload_update(&mut self, bytes: usize) -> KvUpdate {
        self.payloads += 1;
        let mut value = format!("{:016x}{:016x}", now_unix_nanos(), self.payloads);
        value.push_str(&self.rng.hex(bytes.saturating_sub(PAYLOAD_HEAD_LEN)));
        value.truncate(bytes);
        self.put_new(PAYLOAD_KEY, value)
    }

    /// Re-sends an existing key with its identical value under a new revision.
    fn noop(&mut self) -> KvUpdate {
        let i = self.rng.below(self.entries.len());
        let rev = self.bump();
        let e = &mut self.entries[i];
        e.revision = rev;
        KvUpdate::set(e.key.clone(), e.value.clone(), rev.to_string())
    }
}

/// Runs the synthetic datastore: `ResyncInProgress`, the initial state in chunks of at most
/// [`MAX_CHUNK`], `InSync`, then `churn_rate` updates a second (paced every 10 ms) until the
/// receiver goes away.
pub async fn run(cfg: SimConfig, tx: DriverSender) {
    let churn_rate = cfg.churn_rate;
    let (payload_bytes, payload_rate) = (cfg.payload_bytes, cfg.payload_rate);
    let mut sim = SimCluster::new(cfg);
    if tx
        .send(DriverEvent::Status(SyncStatus::ResyncInProgress))
        .await
        .is_err()
    {
        return;
    }
    let mut updates = sim.initial_state().into_iter();
    loop {
        let chunk: Vec<KvUpdate> = updates.by_ref().take(MAX_CHUNK).collect();
        if chunk.is_empty() {
            break;
        }
        if tx.send(DriverEvent::Updates(chunk)).await.is_err() {
            return;
        }
    }
    if tx
        .send(DriverEvent::Status(SyncStatus::InSync))
        .await
        .is_err()
    {
        return;
    }
    tracing::info!(
        keys = sim.key_count(),
        endpoints = sim.endpoint_count(),
        "synthetic datastore in sync"
    );

    if payload_bytes > 0 && payload_rate > 0.0 {
        return payload_stream(&mut sim, payload_bytes, payload_rate, &tx).await;
    }
    // NaN and non-positive rates mean no churn.
    if churn_rate.is_nan() || churn_rate <= 0.0 {
        tx.closed().await;
        return;
    }
    let per_tick = (churn_rate / TICKS_PER_SEC).min(MAX_PER_TICK);
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut carry = 0.0f64;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = tx.closed() => return,
        }
        carry += per_tick;
        let n = carry.floor();
        carry -= n;
        let mut remaining = n as usize;
        while remaining > 0 {
            let take = remaining.min(MAX_CHUNK);
            remaining -= take;
            let batch: Vec<KvUpdate> = (0..take).map(|_| sim.next_change()).collect();
            if tx.send(DriverEvent::Updates(batch)).await.is_err() {
                return;
            }
        }
    }
}

/// One payload rewrite per tick, each its own driver event, until the receiver goes away.
async fn payload_stream(sim: &mut SimCluster, bytes: usize, rate: f64, tx: &DriverSender) {
    let period = Duration::from_secs_f64(1.0 / rate.min(MAX_PAYLOAD_RATE));
    let mut interval = tokio::time::interval(period);
    // Missed ticks are made up (Burst), so the count over a run matches the rate.
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = tx.closed() => return,
        }
        let update = sim.payload_update(bytes);
        if tx.send(DriverEvent::Updates(vec![update])).await.is_err() {
            return;
        }
    }
}

/// A batch of `n` felix updates as the batcher would close it from this cluster's churn: no-ops
/// dropped, one entry per key. For benchmarks and examples that need realistic batches.
pub fn churn_batch(cfg: SimConfig, n: usize) -> Vec<crate::model::Update> {
    use super::batcher::{BatchLimits, BatchSink, Batcher};
    use super::BatchMessage;
    use crossbeam_channel::TrySendError;

    struct Discard;
    impl BatchSink for Discard {
        fn try_send(&mut self, msg: BatchMessage) -> Result<(), TrySendError<BatchMessage>> {
            drop(msg);
            Ok(())
        }
    }

    let mut sim = SimCluster::new(cfg);
    let mut batcher = Batcher::new(
        BatchLimits {
            max_updates: usize::MAX,
            max_age: std::time::Duration::MAX,
            ..BatchLimits::default()
        },
        crate::proto::encode::EncodeOptions::default(),
        Discard,
        std::sync::Arc::new(crate::metrics::Metrics::new()),
        std::sync::Arc::new(crate::status::StatusBoard::new()),
    );
    for u in sim.initial_state() {
        batcher.apply(u);
    }
    batcher.flush();
    let felix = |b: &Batcher<Discard>| {
        b.pending()
            .filter(|u| crate::model::SyncerType::Felix.wants(&u.key))
            .count()
    };
    while felix(&batcher) < n {
        batcher.apply(sim.next_change());
    }
    batcher
        .pending()
        .filter(|u| crate::model::SyncerType::Felix.wants(&u.key))
        .take(n)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(seed: u64) -> SimConfig {
        SimConfig {
            nodes: 10,
            endpoints: 300,
            namespaces: 5,
            policies: 30,
            seed,
            ..SimConfig::default()
        }
    }

    fn is_raw(key: &str) -> bool {
        key.starts_with("/calico/v1/config/")
            || key == "/calico/v1/Ready"
            || key.ends_with("/bird_ip")
            || (key.starts_with("/calico/v1/host/") && key.contains("/config/"))
    }

    fn wep_count(updates: &[KvUpdate]) -> usize {
        updates
            .iter()
            .filter(|u| u.key.contains("/workload/"))
            .count()
    }

    #[test]
    fn sha1_matches_known_vectors() {
        assert_eq!(
            hex(&sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(hex(&sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(
            hex(&sha1(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1"
        );
    }

    #[test]
    fn same_seed_same_cluster_and_churn() {
        let mut a = SimCluster::new(small(7));
        let mut b = SimCluster::new(small(7));
        assert_eq!(a.initial_state(), b.initial_state());
        for _ in 0..5000 {
            assert_eq!(a.next_change(), b.next_change());
        }
        assert_eq!(a.initial_state(), b.initial_state());
    }

    #[test]
    fn different_seed_differs() {
        let mut a = SimCluster::new(small(1));
        let mut b = SimCluster::new(small(2));
        assert_ne!(a.initial_state(), b.initial_state());
        let ca: Vec<_> = (0..100).map(|_| a.next_change()).collect();
        let cb: Vec<_> = (0..100).map(|_| b.next_change()).collect();
        assert_ne!(ca, cb);
    }

    #[test]
    fn keys_and_values_have_calico_shapes() {
        let sim = SimCluster::new(small(3));
        let init = sim.initial_state();
        let mut seen = std::collections::HashSet::new();
        for u in &init {
            assert!(u.key.starts_with("/calico/"), "{}", u.key);
            assert!(seen.insert(u.key.clone()), "duplicate key {}", u.key);
            let value = u.value.as_ref().expect("initial state has no deletes");
            assert!(u.revision.parse::<u64>().is_ok());
            if is_raw(&u.key) {
                continue;
            }
            let v: Value = serde_json::from_slice(value)
                .unwrap_or_else(|e| panic!("{}: {e}: {:?}", u.key, value));
            if u.key.contains("/workload/") {
                let parts: Vec<&str> = u.key.split('/').collect();
                assert_eq!(parts.len(), 10, "{}", u.key);
                assert_eq!(&parts[..4], &["", "calico", "v1", "host"]);
                assert!(parts[4].starts_with("node-"));
                assert_eq!(parts[5], "workload");
                assert_eq!(parts[6], "k8s");
                let (ns, pod) = parts[7].split_once("%2f").expect("escaped ns/pod");
                assert!(!ns.is_empty() && !pod.is_empty());
                assert_eq!(&parts[8..], &["endpoint", "eth0"]);
                assert_eq!(v["state"], "active");
                assert_eq!(v["active_instance_id"], "");
                assert!(v["mac"].is_null());
                assert!(v["ipv6_nets"].is_null());
                let name = v["name"].as_str().unwrap_or_default();
                assert_eq!(name, interface_name(ns, pod));
                assert_eq!(name.len(), 15);
                assert!(name[4..].bytes().all(|b| b.is_ascii_hexdigit()));
                assert_eq!(
                    v["profile_ids"],
                    json!([format!("kns.{ns}"), format!("ksa.{ns}.default")])
                );
                let net = v["ipv4_nets"][0].as_str().unwrap_or_default();
                assert!(net.starts_with("10.") && net.ends_with("/32"), "{net}");
                assert_eq!(v["labels"]["projectcalico.org/namespace"], ns);
                assert_eq!(v["labels"]["projectcalico.org/orchestrator"], "k8s");
                assert_eq!(v["labels"]["projectcalico.org/serviceaccount"], "default");
                // Go field order.
                assert!(value.starts_with(br#"{"state":"active","name":"cali"#));
            } else if u.key.starts_with("/calico/v1/policy/")
                && !u.key.starts_with("/calico/v1/policy/profile/")
                && !u.key.starts_with("/calico/v1/policy/tier/")
            {
                let parts: Vec<&str> = u.key.split('/').collect();
                assert_eq!(parts.len(), 7, "{}", u.key);
                match parts[4] {
                    "GlobalNetworkPolicy" => assert_eq!(parts[5], ""),
                    "NetworkPolicy" | "KubernetesNetworkPolicy" => {
                        assert_eq!(v["namespace"], parts[5]);
                    }
                    k => panic!("unexpected policy kind {k}"),
                }
                assert_eq!(v["tier"], "default");
                assert!(v["order"].is_number());
                assert!(v["selector"].is_string());
                assert!(v["types"].is_array());
            } else if u.key.starts_with("/calico/resources/v3/projectcalico.org/") {
                assert_eq!(v["apiVersion"], V3_API);
                assert!(v["metadata"].get("resourceVersion").is_none());
            }
        }
        let has = |k: &str| seen.contains(&Key::from(k));
        assert!(has("/calico/v1/Ready"));
        assert!(has("/calico/v1/config/ClusterGUID"));
        assert!(has("/calico/v1/policy/tier/default/metadata"));
        assert!(has("/calico/v1/ipam/v4/pool/10.0.0.0-16"));
        assert!(has(
            "/calico/resources/v3/projectcalico.org/bgpconfigurations/default"
        ));
        assert!(has("/calico/v1/policy/profile/kns.default/rules"));
        assert!(has("/calico/v1/policy/profile/kns.default/labels"));
        assert!(has(
            "/calico/resources/v3/projectcalico.org/profiles/kns.default"
        ));
        assert!(has(
            "/calico/resources/v3/projectcalico.org/nodes/node-0000"
        ));
        assert!(has("/calico/v1/host/node-0000/config/IpInIpTunnelAddr"));
        assert!(has("/calico/ipam/v2/host/node-0000/ipv4/block/10.0.0.0-26"));
        assert!(has("/calico/ipam/v2/assignment/ipv4/block/10.0.0.0-26"));
        assert!(seen.iter().any(|k| k.contains("/v6/pool/")));
        let ready = init.iter().find(|u| &*u.key == "/calico/v1/Ready");
        assert_eq!(
            ready.and_then(|u| u.value.clone()),
            Some(Bytes::from_static(b"true"))
        );
        let tunnel = init
            .iter()
            .find(|u| &*u.key == "/calico/v1/host/node-0000/config/IpInIpTunnelAddr")
            .and_then(|u| u.value.clone())
            .unwrap_or_default();
        assert_eq!(&tunnel[..], b"10.0.0.0");
        for kind in [
            "NetworkPolicy",
            "KubernetesNetworkPolicy",
            "GlobalNetworkPolicy",
        ] {
            let prefix = format!("/calico/v1/policy/{kind}/");
            assert!(seen.iter().any(|k| k.starts_with(&prefix)), "no {kind}");
        }
    }

    #[test]
    fn initial_endpoint_count_matches_config() {
        for (nodes, endpoints) in [(10, 300), (3, 1000), (1, 0), (0, 5), (100, 3000)] {
            let cfg = SimConfig {
                nodes,
                endpoints,
                policies: 5,
                ..SimConfig::default()
            };
            let sim = SimCluster::new(cfg);
            let init = sim.initial_state();
            assert_eq!(wep_count(&init), endpoints, "{nodes} nodes");
            assert_eq!(sim.endpoint_count(), endpoints);
            assert_eq!(sim.key_count(), init.len());
            // Pod IPs are unique.
            let ips: std::collections::HashSet<_> = init
                .iter()
                .filter(|u| u.key.contains("/workload/"))
                .map(|u| {
                    let v: Value = serde_json::from_slice(u.value.as_deref().unwrap_or(b"{}"))
                        .unwrap_or(Value::Null);
                    v["ipv4_nets"][0].as_str().unwrap_or_default().to_string()
                })
                .collect();
            assert_eq!(ips.len(), endpoints);
        }
    }

    #[test]
    fn churn_honours_noop_fraction_and_deletes_only_existing_keys() {
        let cfg = SimConfig {
            noop_fraction: 0.2,
            ..small(11)
        };
        let mut sim = SimCluster::new(cfg);
        let mut map: HashMap<Key, Bytes> = sim
            .initial_state()
            .into_iter()
            .filter_map(|u| u.value.map(|v| (u.key, v)))
            .collect();
        let mut last_rev = sim.revision();
        let (mut noops, mut deletes, mut creates) = (0usize, 0usize, 0usize);
        let total = 20_000;
        for _ in 0..total {
            let u = sim.next_change();
            let rev: u64 = u.revision.parse().expect("decimal revision");
            assert!(rev > last_rev);
            last_rev = rev;
            match u.value {
                None => {
                    assert!(map.remove(&u.key).is_some(), "delete of absent {}", u.key);
                    deletes += 1;
                }
                Some(v) => match map.insert(u.key.clone(), v.clone()) {
                    Some(old) if old == v => noops += 1,
                    Some(_) => {}
                    None => creates += 1,
                },
            }
        }
        let frac = noops as f64 / total as f64;
        assert!((0.17..0.23).contains(&frac), "no-op fraction {frac}");
        assert!(
            deletes > 100 && creates > 100,
            "{deletes} deletes, {creates} creates"
        );
        // The map the updates describe is the cluster's map.
        let now: HashMap<Key, Bytes> = sim
            .initial_state()
            .into_iter()
            .filter_map(|u| u.value.map(|v| (u.key, v)))
            .collect();
        assert_eq!(now, map);
        let weps = map.keys().filter(|k| k.contains("/workload/")).count();
        assert!((280..=320).contains(&weps), "{weps} endpoints");
    }

    #[test]
    fn zero_noop_fraction_gives_only_real_changes() {
        let cfg = SimConfig {
            noop_fraction: 0.0,
            ..small(5)
        };
        let mut sim = SimCluster::new(cfg);
        let mut map: HashMap<Key, Bytes> = sim
            .initial_state()
            .into_iter()
            .filter_map(|u| u.value.map(|v| (u.key, v)))
            .collect();
        for _ in 0..5000 {
            let u = sim.next_change();
            match u.value {
                None => assert!(map.remove(&u.key).is_some()),
                Some(v) => assert_ne!(map.insert(u.key.clone(), v.clone()), Some(v)),
            }
        }
    }

    #[test]
    fn degenerate_configs_do_not_panic() {
        for cfg in [
            SimConfig {
                nodes: 0,
                endpoints: 0,
                namespaces: 0,
                policies: 0,
                ..SimConfig::default()
            },
            SimConfig {
                noop_fraction: f64::NAN,
                churn_rate: f64::NAN,
                ..small(1)
            },
            SimConfig {
                noop_fraction: 1.0,
                ..small(1)
            },
        ] {
            let mut sim = SimCluster::new(cfg);
            assert!(!sim.initial_state().is_empty());
            for _ in 0..1000 {
                let _ = sim.next_change();
            }
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn run_sends_resync_initial_state_then_in_sync() {
        let rt = runtime();
        rt.block_on(async {
            let cfg = SimConfig {
                nodes: 20,
                endpoints: 2500,
                churn_rate: 0.0,
                ..SimConfig::default()
            };
            let expected = SimCluster::new(cfg.clone()).initial_state();
            let (tx, mut rx) = tokio::sync::mpsc::channel(4);
            let task = tokio::spawn(run(cfg, tx));
            let first = rx.recv().await;
            assert!(matches!(
                first,
                Some(DriverEvent::Status(SyncStatus::ResyncInProgress))
            ));
            let mut got = Vec::new();
            loop {
                match rx.recv().await {
                    Some(DriverEvent::Updates(u)) => {
                        assert!(!u.is_empty() && u.len() <= MAX_CHUNK);
                        got.extend(u);
                    }
                    Some(DriverEvent::Status(SyncStatus::InSync)) => break,
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(got, expected);
            // No churn: nothing more until the receiver goes, then `run` returns.
            let quiet = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await;
            assert!(quiet.is_err());
            stops_when_closed(rx, task).await;
        });
    }

    /// Receives until the driver reports in-sync (the initial listing done).
    async fn skip_to_in_sync(rx: &mut tokio::sync::mpsc::Receiver<DriverEvent>) {
        loop {
            match rx.recv().await {
                Some(DriverEvent::Status(SyncStatus::InSync)) => return,
                Some(_) => {}
                None => panic!("closed early"),
            }
        }
    }

    /// Closes the channel and checks that `run` returns, without panicking.
    async fn stops_when_closed(
        rx: tokio::sync::mpsc::Receiver<DriverEvent>,
        task: tokio::task::JoinHandle<()>,
    ) {
        drop(rx);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("run returns when the channel closes")
            .expect("no panic");
    }

    #[test]
    fn run_churns_at_the_configured_rate_and_stops_on_close() {
        let rt = runtime();
        rt.block_on(async {
            let cfg = SimConfig {
                churn_rate: 1000.0,
                ..small(9)
            };
            let (tx, mut rx) = tokio::sync::mpsc::channel(16);
            let task = tokio::spawn(run(cfg, tx));
            skip_to_in_sync(&mut rx).await;
            let start = tokio::time::Instant::now();
            let mut churned = 0;
            while churned < 200 {
                match rx.recv().await {
                    Some(DriverEvent::Updates(u)) => {
                        assert!(u.len() <= MAX_CHUNK);
                        churned += u.len();
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            // 200 updates at 1000/s take about 200 ms; no burst.
            assert!(start.elapsed() >= Duration::from_millis(150));
            stops_when_closed(rx, task).await;
        });
    }

    #[test]
    fn payload_heads_round_trip_and_reject_what_is_not_one() {
        let mut sim = SimCluster::new(small(1));
        let before = now_unix_nanos();
        let v = sim.payload_update(100).value.expect("a set");
        let (stamp, n) = parse_payload_head(&v).expect("a head");
        assert!(stamp >= before && stamp <= now_unix_nanos());
        assert_eq!(n, 1);
        assert_eq!(
            parse_payload_head(b"00000000000000ff0000000000000010xyz"),
            Some((255, 16))
        );
        // Too short, upper-case or non-hex: not a head.
        assert_eq!(parse_payload_head(b"00000000000000ff000000000000001"), None);
        assert_eq!(
            parse_payload_head(b"00000000000000FF0000000000000010"),
            None
        );
        assert_eq!(
            parse_payload_head(b"00000000000000fg0000000000000010"),
            None
        );
        // A value shorter than the head carries a truncated one.
        assert_eq!(sim.payload_update(20).value.map(|v| v.len()), Some(20));
    }

    #[test]
    fn payload_stream_rewrites_one_key_with_fresh_values_at_the_rate() {
        let rt = runtime();
        rt.block_on(async {
            let cfg = SimConfig {
                churn_rate: 1000.0,
                payload_bytes: 300,
                payload_rate: 200.0,
                ..small(3)
            };
            let (tx, mut rx) = tokio::sync::mpsc::channel(16);
            let before = now_unix_nanos();
            let task = tokio::spawn(run(cfg, tx));
            skip_to_in_sync(&mut rx).await;
            let start = tokio::time::Instant::now();
            let mut values = std::collections::HashSet::new();
            for _ in 0..40 {
                match rx.recv().await {
                    // The payload replaces the churn: one update per event, always the same key.
                    Some(DriverEvent::Updates(u)) => {
                        assert_eq!(u.len(), 1);
                        assert_eq!(u[0].key, Key::from(PAYLOAD_KEY));
                        let v = u[0].value.clone().expect("a set");
                        assert_eq!(v.len(), 300);
                        let (stamp, number) = parse_payload_head(&v).expect("a payload head");
                        assert_eq!(number, values.len() as u64 + 1, "numbered from 1 in order");
                        assert!(stamp <= now_unix_nanos() && stamp >= before);
                        values.insert(v);
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(values.len(), 40, "every rewrite has a fresh value");
            // 40 rewrites at 200/s take about 200 ms (the first tick is immediate).
            assert!(start.elapsed() >= Duration::from_millis(150));
            stops_when_closed(rx, task).await;
        });
    }
}
