//! Core Kubernetes kinds (Pod, Node, Namespace, ServiceAccount, Service, EndpointSlice) and
//! the helpers the other translators share (IP parsing with Go's semantics, Calico's UID
//! conversion, Go-compatible number formatting, metadata normalization for raw v3 values).
//!
//! Values follow Calico v3.32.1's felix syncer in KDD mode (see
//! `shared/reference/felix-syncer-kdd.md` and the Calico sources it cites), byte for byte as Go's
//! `encoding/json` writes them: v1 model values are serialized from structs whose fields are
//! declared in Go's order; raw v3 and Kubernetes values are written by `gojson` against the Go
//! struct tables in `go_shapes` (declaration order, zero values, `omitempty`, durations); maps
//! (labels, annotations) are sorted as Go sorts map keys; `<`, `>`, `&` are escaped as Go does.

use super::gojson::{self, Shape};
use super::{escape, go_shapes, name, namespace, raw, Kv, TranslateError};
use bytes::Bytes;
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub(super) const V3_API: &str = "projectcalico.org/v3";
pub(super) const V3_PREFIX: &str = "/calico/resources/v3/projectcalico.org/";
/// The CRD group Calico resources are stored in when there is no Calico API server.
const CRD_V1_API: &str = "crd.projectcalico.org/v1";
/// The annotation holding the v3 metadata of a `crd.projectcalico.org/v1` resource.
const METADATA_ANNOTATION: &str = "projectcalico.org/metadata";
const NAMESPACE_LABEL_PREFIX: &str = "pcns.";
const SERVICE_ACCOUNT_LABEL_PREFIX: &str = "pcsa.";
const NAME_LABEL: &str = "projectcalico.org/name";
pub(super) const LABEL_NAMESPACE: &str = "projectcalico.org/namespace";
const LABEL_ORCHESTRATOR: &str = "projectcalico.org/orchestrator";
const LABEL_SERVICE_ACCOUNT: &str = "projectcalico.org/serviceaccount";

const ANNOTATION_POD_IP: &str = "cni.projectcalico.org/podIP";
const ANNOTATION_POD_IPS: &str = "cni.projectcalico.org/podIPs";
const ANNOTATION_AWS_POD_IPS: &str = "vpc.amazonaws.com/pod-ips";
const ANNOTATION_FLOATING_IPS: &str = "cni.projectcalico.org/floatingIPs";
const ANNOTATION_ALLOWED_SOURCE_PREFIXES: &str = "cni.projectcalico.org/allowedSourcePrefixes";
const ANNOTATION_NETWORK_STATUS: &str = "k8s.v1.cni.cncf.io/network-status";

const DEFAULT_ALLOW_PROFILE: &str = "projectcalico-default-allow";
/// v1 rules of an allow-all profile (namespace profiles and the default-allow profile).
const ALLOW_ALL_RULES: &[u8] =
    br#"{"inbound_rules":[{"action":"allow"}],"outbound_rules":[{"action":"allow"}]}"#;

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// Serializes a value Calico sends as JSON.
pub(super) fn to_bytes<T: Serialize>(v: &T) -> Bytes {
    super::gojson::serialize(v)
}

/// The string at `ptr`, if there is one (empty strings included).
pub(super) fn str_at<'a>(obj: &'a Value, ptr: &str) -> Option<&'a str> {
    obj.pointer(ptr).and_then(Value::as_str)
}

/// The non-empty string at `ptr`.
pub(super) fn nonempty_at<'a>(obj: &'a Value, ptr: &str) -> Option<&'a str> {
    str_at(obj, ptr).filter(|s| !s.is_empty())
}

pub(super) fn bool_at(obj: &Value, ptr: &str) -> bool {
    obj.pointer(ptr).and_then(Value::as_bool).unwrap_or(false)
}

/// The array at `ptr`; absent or `null` is empty, anything else is an error.
pub(super) fn array_at<'a>(
    obj: &'a Value,
    ptr: &str,
    field: &'static str,
) -> Result<&'a [Value], TranslateError> {
    match obj.pointer(ptr) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(invalid(field, "not a list")),
    }
}

/// The list of strings at `ptr` (absent or `null` is empty).
pub(super) fn strings_at(
    obj: &Value,
    ptr: &str,
    field: &'static str,
) -> Result<Vec<String>, TranslateError> {
    array_at(obj, ptr, field)?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| invalid(field, "not a list of strings"))
        })
        .collect()
}

pub(super) fn invalid(field: &'static str, reason: impl Into<String>) -> TranslateError {
    TranslateError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// A string map (labels, annotations) at `ptr`: `None` when absent or `null`.
pub(super) fn string_map_at(
    obj: &Value,
    ptr: &str,
    field: &'static str,
) -> Result<Option<BTreeMap<String, String>>, TranslateError> {
    match obj.pointer(ptr) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => string_map(v, field).map(Some),
    }
}

fn string_map(v: &Value, field: &'static str) -> Result<BTreeMap<String, String>, TranslateError> {
    let m = v.as_object().ok_or_else(|| invalid(field, "not a map"))?;
    m.iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            _ => Err(invalid(field, format!("value of {k:?} is not a string"))),
        })
        .collect()
}

pub(super) fn labels_of(obj: &Value) -> Result<BTreeMap<String, String>, TranslateError> {
    Ok(string_map_at(obj, "/metadata/labels", "metadata.labels")?.unwrap_or_default())
}

pub(super) fn annotations_of(obj: &Value) -> Result<BTreeMap<String, String>, TranslateError> {
    Ok(string_map_at(obj, "/metadata/annotations", "metadata.annotations")?.unwrap_or_default())
}

/// A float as Go's `encoding/json` writes it: integral values without a fraction (`1000`, not
/// `1000.0`) even through a plain serde_json serializer; every other value (and integral ones
/// from 9e15 on, where Go writes rounded digits) goes to `serialize_f64`, which
/// `gojson::serialize` writes in Go's form (`gojson::go_float64`: `1e+21`, `1e-7`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct GoFloat(pub f64);

impl Serialize for GoFloat {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let f = self.0;
        if f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15 {
            s.serialize_i64(f as i64)
        } else {
            s.serialize_f64(f)
        }
    }
}

/// A JSON number as an f64 (Go decodes every JSON number into a float64 field the same way).
pub(super) fn f64_at(
    obj: &Value,
    ptr: &str,
    field: &'static str,
) -> Result<Option<f64>, TranslateError> {
    match obj.pointer(ptr) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| invalid(field, "not a number")),
    }
}

// ---- IP addresses, with Go's `net` / Calico's `lib/net` semantics ----

/// An IP network; `addr` is masked or not depending on how it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    /// The masked network (Go's `IPNet` as `net.ParseCIDR` returns it).
    pub(super) fn network(self) -> IpNet {
        let addr = match self.addr {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.prefix))
                };
                IpAddr::V4(Ipv4Addr::from(bits & mask))
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.prefix))
                };
                IpAddr::V6(Ipv6Addr::from(bits & mask))
            }
        };
        IpNet {
            addr,
            prefix: self.prefix,
        }
    }

    pub(super) fn is_v4(self) -> bool {
        self.addr.is_ipv4()
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Go's `net.ParseIP`: IPv4-mapped IPv6 addresses are IPv4 (Go prints them dotted).
pub(super) fn parse_ip(s: &str) -> Option<IpAddr> {
    match s.parse::<IpAddr>().ok()? {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => Some(IpAddr::V4(v4)),
            None => Some(IpAddr::V6(v6)),
        },
        v4 => Some(v4),
    }
}

/// Go's `net.ParseCIDR`: the address as written and the masked network.
pub(super) fn parse_cidr(s: &str) -> Option<(IpAddr, IpNet)> {
    let (addr, len) = s.split_once('/')?;
    let ip: IpAddr = addr.parse().ok()?;
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) || len.len() > 3 {
        return None;
    }
    let prefix: u8 = len.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return None;
    }
    Some((ip, IpNet { addr: ip, prefix }.network()))
}

/// Calico's `ParseCIDROrIP`: a CIDR, or a single address as a /32 or /128.
pub(super) fn parse_cidr_or_ip(s: &str) -> Option<(IpAddr, IpNet)> {
    if let Some(r) = parse_cidr(s) {
        return Some(r);
    }
    let ip = parse_ip(s)?;
    let prefix = if ip.is_ipv4() { 32 } else { 128 };
    Some((ip, IpNet { addr: ip, prefix }))
}

// ---- UIDs ----

/// Calico's `conversion.ConvertUID`: the bits of every byte of the UUID reversed, except the
/// version (byte 6) and variant (byte 8) bytes. Derived resources (profiles, v3 copies of CRD
/// objects) get this UID rather than the source object's.
pub(super) fn convert_uid(uid: &str) -> Result<String, TranslateError> {
    let hex: String = match uid.len() {
        36 if [8, 13, 18, 23].iter().all(|&i| uid.as_bytes()[i] == b'-') => {
            uid.chars().filter(|&c| c != '-').collect()
        }
        32 => uid.to_string(),
        _ => return Err(invalid("metadata.uid", format!("not a UUID: {uid:?}"))),
    };
    let mut bytes = [0u8; 16];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = hex
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or_else(|| invalid("metadata.uid", format!("not a UUID: {uid:?}")))?;
    }
    let mut out = [0u8; 16];
    for (i, (o, b)) in out.iter_mut().zip(bytes).enumerate() {
        *o = if i == 6 || i == 8 {
            b
        } else {
            b.reverse_bits()
        };
    }
    let mut s = String::with_capacity(36);
    for (i, b) in out.iter().enumerate() {
        if [4, 6, 8, 10].contains(&i) {
            s.push('-');
        }
        let _ = write!(s, "{b:02x}");
    }
    Ok(s)
}

use crate::datastore::sim::sha1;

/// The host-side interface name of a pod: the prefix + 11 hex digits of `sha1("<ns>.<pod>")`.
/// The prefix is the first entry of `FELIX_INTERFACEPREFIX` in the daemon's environment, `cali`
/// when that is unset or empty (`VethNameForWorkload`, read when the first pod is translated).
fn interface_name(ns: &str, pod: &str) -> String {
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let prefix = PREFIX
        .get_or_init(|| interface_prefix(std::env::var("FELIX_INTERFACEPREFIX").ok().as_deref()));
    interface_name_with_prefix(prefix, ns, pod)
}

/// The prefix `FELIX_INTERFACEPREFIX` gives: its first comma-separated entry, or `cali`.
fn interface_prefix(env: Option<&str>) -> String {
    match env {
        None | Some("") => "cali".to_string(),
        Some(list) => list.split(',').next().unwrap_or("").to_string(),
    }
}

fn interface_name_with_prefix(prefix: &str, ns: &str, pod: &str) -> String {
    let mut s = String::from(prefix);
    let mut hex = String::new();
    for b in &sha1(format!("{ns}.{pod}").as_bytes())[..6] {
        let _ = write!(hex, "{b:02x}");
    }
    hex.truncate(11);
    s.push_str(&hex);
    s
}

// ---- Raw v3 values ----

/// The metadata of a Calico resource as the raw v3 value carries it.
///
/// Kept: `name`, `namespace`, `uid`, `generation`, `creationTimestamp`, `labels`,
/// `annotations` and `ownerReferences`, from where Calico v3.32.1's
/// `ConvertK8sResourceToCalicoResource` takes them. For a `crd.projectcalico.org/v1` object
/// with the `projectcalico.org/metadata` annotation (the normal case: Calico writes it) the
/// generation and owner references are the annotation's, each owner in `crd.projectcalico.org/v1`
/// or `projectcalico.org/v3` rewritten to `projectcalico.org/v3` with its UID converted;
/// without the annotation they are the CR's own.
/// Dropped, so that changes Felix does not care about give byte-identical values:
/// * `resourceVersion`: Calico moves it out of the value into `V3ResourceVersion`;
/// * `managedFields`: server-side-apply bookkeeping, rewritten on every write; no Calico
///   component reads it (docs/datastore.md measures what it costs);
/// * `selfLink`, `finalizers`, `deletionTimestamp`, `deletionGracePeriodSeconds`,
///   `generateName`: lifecycle bookkeeping Felix never reads;
/// * the annotation `projectcalico.org/metadata` (decoded, as Calico does). Every other
///   annotation is kept, `kubectl.kubernetes.io/last-applied-configuration` included: Calico
///   keeps it, and a side-by-side run against calico-typha v3.32.1 showed the difference.
///
/// For `crd.projectcalico.org/v1` objects the v3 metadata stored in the
/// `projectcalico.org/metadata` annotation is merged in (its labels and annotations over the
/// CR's, its name and creation time when set) and the UID is converted with
/// [`convert_uid`], as `ConvertK8sResourceToCalicoResource` does. Objects already in
/// `projectcalico.org/v3` (no Calico API server, v3 CRDs) are taken as they are.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct CalicoMeta {
    /// The name the object has in the API server. Calico's watcher builds the v3 `ResourceKey`
    /// from it before converting the metadata, so every key derived from that `ResourceKey`
    /// (policies, tiers, network sets, configuration, raw v3 paths) uses it as it is, whatever
    /// the metadata annotation says and whatever its prefix.
    pub key_name: String,
    /// The v3 name: from the metadata annotation when it names one (see [`CalicoMeta::of`]).
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub generation: Option<Value>,
    pub creation_timestamp: Option<Value>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub owner_references: Option<Value>,
}

/// An owner list from the metadata annotation, with Calico owners moved to the v3 API and their
/// UIDs converted (`ConvertK8sResourceToCalicoResource`).
fn v3_owner_references(refs: &Value) -> Result<Value, TranslateError> {
    let Value::Array(list) = refs else {
        return Err(invalid("metadata.ownerReferences", "not a list"));
    };
    let mut out = Vec::with_capacity(list.len());
    for r in list {
        let mut r = r.clone();
        let api = str_at(&r, "/apiVersion").unwrap_or("");
        if api == CRD_V1_API || api == V3_API {
            let uid = convert_uid(str_at(&r, "/uid").unwrap_or(""))?;
            if let Some(m) = r.as_object_mut() {
                m.insert("apiVersion".into(), Value::String(V3_API.into()));
                m.insert("uid".into(), Value::String(uid));
            }
        }
        out.push(r);
    }
    Ok(Value::Array(out))
}

/// Policy kinds whose CRD name may carry a legacy `default.` prefix (`determinePolicyName`).
const PREFIXED_POLICY_KINDS: &[&str] = &[
    "NetworkPolicy",
    "GlobalNetworkPolicy",
    "StagedNetworkPolicy",
    "StagedGlobalNetworkPolicy",
];

impl CalicoMeta {
    /// Reads the metadata of a Calico resource of `kind` (see the type's documentation).
    pub(super) fn of(obj: &Value, kind: &str) -> Result<CalicoMeta, TranslateError> {
        let cr_name = name(obj)?.to_string();
        let mut meta = CalicoMeta {
            key_name: cr_name.clone(),
            name: cr_name.clone(),
            namespace: namespace(obj).to_string(),
            uid: str_at(obj, "/metadata/uid").unwrap_or("").to_string(),
            generation: obj
                .pointer("/metadata/generation")
                .filter(|v| !v.is_null())
                .cloned(),
            owner_references: obj
                .pointer("/metadata/ownerReferences")
                .filter(|v| !v.is_null())
                .cloned(),
            creation_timestamp: obj
                .pointer("/metadata/creationTimestamp")
                .filter(|v| !v.is_null())
                .cloned(),
            labels: labels_of(obj)?,
            annotations: annotations_of(obj)?,
        };
        if str_at(obj, "/apiVersion") != Some(CRD_V1_API) {
            return Ok(meta);
        }
        if !meta.uid.is_empty() {
            meta.uid = convert_uid(&meta.uid)?;
        }
        let stored = meta.annotations.remove(METADATA_ANNOTATION);
        let stored: Value = match stored {
            // An unreadable metadata annotation fails the conversion in Calico too.
            Some(s) => serde_json::from_str(&s).map_err(|e| {
                invalid(
                    "metadata.annotations",
                    format!("{METADATA_ANNOTATION}: {e}"),
                )
            })?,
            None => return Ok(meta),
        };
        // With the annotation, Calico replaces the CR's metadata by the stored one: the
        // generation and owners are the stored ones (or none).
        meta.generation = stored.get("generation").filter(|v| !v.is_null()).cloned();
        meta.owner_references = match stored.get("ownerReferences").filter(|v| !v.is_null()) {
            Some(refs) => Some(v3_owner_references(refs)?),
            None => None,
        };
        if let Some(l) = string_map_at(&stored, "/labels", "metadata.labels")? {
            meta.labels.extend(l);
        }
        if let Some(a) = string_map_at(&stored, "/annotations", "metadata.annotations")? {
            meta.annotations.extend(a);
        }
        if let Some(ts) = stored.get("creationTimestamp").filter(|v| !v.is_null()) {
            meta.creation_timestamp = Some(ts.clone());
        }
        match nonempty_at(&stored, "/name") {
            Some(n) => meta.name = n.to_string(),
            None if PREFIXED_POLICY_KINDS.contains(&kind) => {
                let tier = str_at(obj, "/spec/tier").unwrap_or("");
                if tier.is_empty() || tier == "default" {
                    if let Some(n) = cr_name.strip_prefix("default.") {
                        meta.name = n.to_string();
                    }
                }
            }
            None => {}
        }
        Ok(meta)
    }

    pub(super) fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("name".into(), Value::String(self.name.clone()));
        if !self.namespace.is_empty() {
            m.insert("namespace".into(), Value::String(self.namespace.clone()));
        }
        if !self.uid.is_empty() {
            m.insert("uid".into(), Value::String(self.uid.clone()));
        }
        if let Some(g) = &self.generation {
            m.insert("generation".into(), g.clone());
        }
        if let Some(o) = &self.owner_references {
            m.insert("ownerReferences".into(), o.clone());
        }
        if let Some(ts) = &self.creation_timestamp {
            m.insert("creationTimestamp".into(), ts.clone());
        }
        if !self.labels.is_empty() {
            m.insert("labels".into(), map_value(&self.labels));
        }
        if !self.annotations.is_empty() {
            m.insert("annotations".into(), map_value(&self.annotations));
        }
        Value::Object(m)
    }
}

pub(super) fn map_value(m: &BTreeMap<String, String>) -> Value {
    Value::Object(
        m.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// The key of a raw v3 resource: `/calico/resources/v3/projectcalico.org/<plural>/[<ns>/]<name>`
/// (names are not escaped in these paths).
pub(super) fn v3_key(plural: &str, ns: &str, name: &str) -> String {
    if ns.is_empty() {
        format!("{V3_PREFIX}{plural}/{name}")
    } else {
        format!("{V3_PREFIX}{plural}/{ns}/{name}")
    }
}

/// A Calico resource passed through as raw v3: `kind`, `apiVersion: projectcalico.org/v3`,
/// the normalized metadata of [`CalicoMeta`], the spec as the object has it, and its status
/// when the kind's Go struct has one (CalicoNodeStatus), all written by `gojson` against
/// `shape`, as Typha marshals the whole v3 struct.
pub(super) fn raw_v3_resource(
    kind: &str,
    plural: &str,
    obj: &Value,
    shape: &Shape,
) -> Result<Kv, TranslateError> {
    let meta = CalicoMeta::of(obj, kind)?;
    let spec = obj
        .get("spec")
        .filter(|v| !v.is_null())
        .cloned()
        .unwrap_or_else(|| Value::Object(Map::new()));
    let mut m = Map::new();
    m.insert("kind".into(), Value::String(kind.to_string()));
    m.insert("apiVersion".into(), Value::String(V3_API.to_string()));
    m.insert("metadata".into(), meta.to_value());
    m.insert("spec".into(), spec);
    if let Some(status) = obj.get("status").filter(|v| !v.is_null()) {
        m.insert("status".into(), status.clone());
    }
    Ok((
        v3_key(plural, &meta.namespace, &meta.key_name),
        gojson::to_bytes(&Value::Object(m), shape),
    ))
}

// ---------------------------------------------------------------------------------------------
// Pod → v1 WorkloadEndpoint
// ---------------------------------------------------------------------------------------------

/// v1 WorkloadEndpoint (`model/workloadendpoint.go`), fields in Go's declaration order.
#[derive(Serialize)]
struct WorkloadEndpointValue {
    state: &'static str,
    name: String,
    active_instance_id: &'static str,
    mac: Option<String>,
    profile_ids: Vec<String>,
    ipv4_nets: Option<Vec<String>>,
    ipv6_nets: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ipv4_nat: Vec<IpNat>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ipv6_nat: Vec<IpNat>,
    labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ports: Vec<EndpointPort>,
    #[serde(skip_serializing_if = "String::is_empty")]
    generate_name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    allow_spoofed_source_ips: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
    #[serde(rename = "qosControls", skip_serializing_if = "Option::is_none")]
    qos_controls: Option<super::qos::QosControls>,
}

#[derive(Serialize)]
struct IpNat {
    int_ip: String,
    ext_ip: String,
}

/// v1 `EndpointPort` (workload and host endpoints).
#[derive(Serialize)]
pub(super) struct EndpointPort {
    pub name: String,
    pub protocol: Value,
    pub port: u16,
}

/// The pod's IPs, looked for in `status.podIPs`, `status.podIP`, then the Calico and AWS
/// annotations (`getPodIPs`); each as a network (/32 or /128 for plain addresses).
fn pod_ips(
    pod: &Value,
    annotations: &BTreeMap<String, String>,
) -> Result<Vec<IpNet>, TranslateError> {
    let mut ips: Vec<String> = Vec::new();
    let pod_ips = array_at(pod, "/status/podIPs", "status.podIPs")?;
    let ann = |k: &str| annotations.get(k).map(String::as_str).unwrap_or("");
    if !pod_ips.is_empty() {
        for ip in pod_ips {
            ips.push(str_at(ip, "/ip").unwrap_or("").to_string());
        }
    } else if let Some(ip) = nonempty_at(pod, "/status/podIP") {
        ips.push(ip.to_string());
    } else if !ann(ANNOTATION_POD_IPS).is_empty() {
        ips.extend(ann(ANNOTATION_POD_IPS).split(',').map(str::to_string));
    } else if !ann(ANNOTATION_POD_IP).is_empty() {
        ips.push(ann(ANNOTATION_POD_IP).to_string());
    } else if !ann(ANNOTATION_AWS_POD_IPS).is_empty() {
        ips.extend(ann(ANNOTATION_AWS_POD_IPS).split(',').map(str::to_string));
    }
    ips.iter()
        .map(|ip| {
            parse_cidr_or_ip(ip)
                .map(|(_, n)| n.network())
                .ok_or_else(|| invalid("status.podIPs", format!("bad pod IP {ip:?}")))
        })
        .collect()
}

/// Calico's `IsFinished`: phase Failed/Succeeded/Completed, or being deleted with the CNI's IP
/// annotation explicitly emptied.
fn is_finished(pod: &Value, annotations: &BTreeMap<String, String>) -> bool {
    let deleting = pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null());
    if deleting
        && (annotations
            .get(ANNOTATION_POD_IP)
            .is_some_and(|s| s.is_empty())
            || annotations
                .get(ANNOTATION_AWS_POD_IPS)
                .is_some_and(|s| s.is_empty()))
    {
        return true;
    }
    matches!(
        str_at(pod, "/status/phase"),
        Some("Failed" | "Succeeded" | "Completed")
    )
}

/// Named container and init-container ports (`appendEndpointPorts`, then the processor's
/// filter on the name).
fn pod_ports(pod: &Value) -> Result<Vec<EndpointPort>, TranslateError> {
    let mut out = Vec::new();
    for list in ["/spec/containers", "/spec/initContainers"] {
        for c in array_at(pod, list, "spec.containers")? {
            for p in array_at(c, "/ports", "spec.containers.ports")? {
                let port = p.get("containerPort").and_then(Value::as_u64).unwrap_or(0);
                let host_port = p.get("hostPort").and_then(Value::as_u64).unwrap_or(0);
                let name = str_at(p, "/name").unwrap_or("");
                if port == 0 || (host_port == 0 && name.is_empty()) {
                    continue;
                }
                let proto = match str_at(p, "/protocol").unwrap_or("") {
                    "UDP" => "udp",
                    "SCTP" => "sctp",
                    "TCP" | "" => "tcp",
                    _ => continue,
                };
                if name.is_empty() {
                    // Host-port-only ports reach the v3 endpoint but not the v1 value.
                    continue;
                }
                let port = u16::try_from(port)
                    .map_err(|_| invalid("spec.containers.ports", "port out of range"))?;
                out.push(EndpointPort {
                    name: name.to_string(),
                    protocol: Value::String(proto.to_string()),
                    port,
                });
            }
        }
    }
    Ok(out)
}

/// Translates a Pod into its v1 WorkloadEndpoint (Calico §4.1).
///
/// Yields nothing for a host-networked pod or one not yet scheduled (Calico ignores those
/// pods altogether), nor for a pod without an IP or a finished one (phase Failed, Succeeded or
/// Completed, or deleting with `cni.projectcalico.org/podIP` emptied). Otherwise yields one key,
/// `/calico/v1/host/<node>/workload/k8s/<ns>%2f<pod>/endpoint/eth0`, whose value has, in Go's
/// order: `state`, `name` (`cali` + 11 hex digits of `sha1("<ns>.<pod>")`),
/// `active_instance_id`, `mac` (null), `profile_ids` (`kns.<ns>` and, with a service account,
/// `ksa.<ns>.<sa>`), `ipv4_nets`/`ipv6_nets` (null when none), then when set `ipv4_nat` /
/// `ipv6_nat` (from `cni.projectcalico.org/floatingIPs`), `labels` (the pod's, minus any
/// `pcns.`/`pcsa.` ones, plus `projectcalico.org/{namespace,orchestrator,serviceaccount}`),
/// `ports` (named container ports), `generate_name`, `allow_spoofed_source_ips` (from
/// `cni.projectcalico.org/allowedSourcePrefixes`) and `annotations` (only
/// `k8s.v1.cni.cncf.io/network-status`). QoS controls (bandwidth annotations) are not
/// translated.
///
/// Status-only changes (conditions, container statuses, resourceVersion) give identical bytes.
pub fn translate_pod(pod: &Value) -> Result<Vec<Kv>, TranslateError> {
    let pod_name = name(pod)?;
    let ns = namespace(pod);
    if ns.is_empty() {
        return Err(TranslateError::Missing("metadata.namespace"));
    }
    if bool_at(pod, "/spec/hostNetwork") {
        return Ok(Vec::new());
    }
    let Some(node) = nonempty_at(pod, "/spec/nodeName") else {
        return Ok(Vec::new());
    };
    let annotations = annotations_of(pod)?;
    let nets = pod_ips(pod, &annotations)?;
    if nets.is_empty() || is_finished(pod, &annotations) {
        return Ok(Vec::new());
    }

    let sa = str_at(pod, "/spec/serviceAccountName").unwrap_or("");
    let mut profile_ids = vec![format!("kns.{ns}")];
    if !sa.is_empty() {
        profile_ids.push(format!("ksa.{ns}.{sa}"));
    }

    let mut labels: BTreeMap<String, String> = labels_of(pod)?
        .into_iter()
        .filter(|(k, _)| {
            !k.starts_with(NAMESPACE_LABEL_PREFIX) && !k.starts_with(SERVICE_ACCOUNT_LABEL_PREFIX)
        })
        .collect();
    labels.insert(LABEL_NAMESPACE.into(), ns.to_string());
    labels.insert(LABEL_ORCHESTRATOR.into(), "k8s".into());
    if !sa.is_empty() {
        labels.insert(LABEL_SERVICE_ACCOUNT.into(), sa.to_string());
    }

    let (v4, v6): (Vec<IpNet>, Vec<IpNet>) = nets.iter().partition(|n| n.is_v4());
    let to_strings = |v: &[IpNet]| -> Option<Vec<String>> {
        (!v.is_empty()).then(|| v.iter().map(IpNet::to_string).collect())
    };

    let (mut ipv4_nat, mut ipv6_nat) = (Vec::new(), Vec::new());
    if let Some(fips) = annotations.get(ANNOTATION_FLOATING_IPS) {
        let ext: Vec<String> = serde_json::from_str(fips).map_err(|e| {
            invalid(
                "metadata.annotations",
                format!("{ANNOTATION_FLOATING_IPS}: {e}"),
            )
        })?;
        for ip in ext {
            let (int_net, out) = if ip.contains(':') {
                (v6.last(), &mut ipv6_nat)
            } else {
                (v4.last(), &mut ipv4_nat)
            };
            // ConvertV2ToV1IPNAT drops pairs whose addresses do not parse.
            if let (Some(int_net), Some(ext_ip)) = (int_net, parse_ip(&ip)) {
                out.push(IpNat {
                    int_ip: int_net.addr.to_string(),
                    ext_ip: ext_ip.to_string(),
                });
            }
        }
    }

    let mut spoof = Vec::new();
    if let Some(a) = annotations
        .get(ANNOTATION_ALLOWED_SOURCE_PREFIXES)
        .filter(|a| !a.is_empty())
    {
        let prefixes: Vec<String> = serde_json::from_str(a).map_err(|e| {
            invalid(
                "metadata.annotations",
                format!("{ANNOTATION_ALLOWED_SOURCE_PREFIXES}: {e}"),
            )
        })?;
        for p in prefixes {
            let (_, n) = parse_cidr(&p).ok_or_else(|| {
                invalid(
                    "metadata.annotations",
                    format!("{ANNOTATION_ALLOWED_SOURCE_PREFIXES}: bad CIDR {p:?}"),
                )
            })?;
            spoof.push(n.to_string());
        }
    }

    let mut wep_annotations = BTreeMap::new();
    if let Some(v) = annotations.get(ANNOTATION_NETWORK_STATUS) {
        wep_annotations.insert(ANNOTATION_NETWORK_STATUS.to_string(), v.clone());
    }

    let value = WorkloadEndpointValue {
        state: "active",
        name: interface_name(ns, pod_name),
        active_instance_id: "",
        mac: None,
        profile_ids,
        ipv4_nets: to_strings(&v4),
        ipv6_nets: to_strings(&v6),
        ipv4_nat,
        ipv6_nat,
        labels,
        ports: pod_ports(pod)?,
        generate_name: str_at(pod, "/metadata/generateName")
            .unwrap_or("")
            .to_string(),
        allow_spoofed_source_ips: spoof,
        annotations: wep_annotations,
        qos_controls: super::qos::qos_controls(&annotations),
    };
    let key = format!(
        "/calico/v1/host/{node}/workload/k8s/{}/endpoint/eth0",
        escape(&format!("{ns}/{pod_name}"))
    );
    Ok(vec![(key, to_bytes(&value))])
}

// ---------------------------------------------------------------------------------------------
// Node
// ---------------------------------------------------------------------------------------------

const ANN_NODE_LABELS: &str = "projectcalico.org/labels";
const ANN_NODE_ANNOTATIONS: &str = "projectcalico.org/annotations";
const ANN_KUBE_LABELS: &str = "projectcalico.org/kube-labels";
const ANN_IPV4_ADDRESS: &str = "projectcalico.org/IPv4Address";
const ANN_IPV6_ADDRESS: &str = "projectcalico.org/IPv6Address";
const ANN_ASN: &str = "projectcalico.org/ASNumber";
const ANN_RR_CLUSTER_ID: &str = "projectcalico.org/RouteReflectorClusterID";
const ANN_IPIP_TUNNEL: &str = "projectcalico.org/IPv4IPIPTunnelAddr";
const ANN_VXLAN_TUNNEL: &str = "projectcalico.org/IPv4VXLANTunnelAddr";
const ANN_VXLAN_MAC: &str = "projectcalico.org/VXLANTunnelMACAddr";
const ANN_VXLAN_TUNNEL_V6: &str = "projectcalico.org/IPv6VXLANTunnelAddr";
const ANN_VXLAN_MAC_V6: &str = "projectcalico.org/VXLANTunnelMACAddrV6";
const ANN_WG_IFACE_V4: &str = "projectcalico.org/IPv4WireguardInterfaceAddr";
const ANN_WG_IFACE_V6: &str = "projectcalico.org/IPv6WireguardInterfaceAddr";
const ANN_WG_KEY: &str = "projectcalico.org/WireguardPublicKey";
const ANN_WG_KEY_V6: &str = "projectcalico.org/WireguardPublicKeyV6";
const ANN_INTERFACES: &str = "projectcalico.org/Interfaces";

fn validate_cidr_v(s: &str, v4: bool) -> bool {
    parse_cidr_or_ip(s).is_some_and(|(ip, _)| ip.is_ipv4() == v4)
}

/// A strictly masked network, or a single address, of the given family.
fn validate_network_v(s: &str, v4: bool) -> bool {
    parse_cidr_or_ip(s).is_some_and(|(ip, n)| ip.is_ipv4() == v4 && n.network().addr == ip)
}

/// Go's `net.ParseMAC` formats: 6, 8 or 20 octets as `xx:xx..`, `xx-xx..` or `xxxx.xxxx..`.
fn validate_mac(s: &str) -> bool {
    let hex = |g: &str| g.bytes().all(|b| b.is_ascii_hexdigit());
    if s.contains('.') {
        let groups: Vec<&str> = s.split('.').collect();
        [3, 4, 10].contains(&groups.len()) && groups.iter().all(|g| g.len() == 4 && hex(g))
    } else {
        let sep = match s.as_bytes().get(2) {
            Some(b':') => ':',
            Some(b'-') => '-',
            _ => return false,
        };
        let groups: Vec<&str> = s.split(sep).collect();
        [6, 8, 20].contains(&groups.len()) && groups.iter().all(|g| g.len() == 2 && hex(g))
    }
}

/// `numorstring.ASNumberFromString`: a plain 32-bit number or the dotted `a.b` form.
fn parse_asn(s: &str) -> Option<u32> {
    match s.split_once('.') {
        Some((hi, lo)) => {
            let hi: u16 = hi.parse().ok()?;
            let lo: u16 = lo.parse().ok()?;
            Some((u32::from(hi) << 16) | u32::from(lo))
        }
        None => s.parse().ok(),
    }
}

/// The annotation `key` when it is set and passes `valid` (`getAnnotation`).
fn node_annotation<'a>(
    annotations: &'a BTreeMap<String, String>,
    key: &str,
    valid: impl Fn(&str) -> bool,
) -> Option<&'a str> {
    annotations
        .get(key)
        .map(String::as_str)
        .filter(|v| !v.is_empty() && valid(v))
}

/// `K8sNodeToCalico` (with `usePodCIDR` off): the v3 Node built from the fields Calico keeps.
fn k8s_node_to_calico(node: &Value, use_pod_cidr: bool) -> Result<Value, TranslateError> {
    let node_name = name(node)?;
    let ann = annotations_of(node)?;
    let k8s_labels = string_map_at(node, "/metadata/labels", "metadata.labels")?;

    // Metadata: name, uid, creation time; labels are the Calico labels from the annotation
    // with the k8s labels merged over them; annotations are the Calico ones plus kube-labels.
    let mut labels: BTreeMap<String, String> = ann
        .get(ANN_NODE_LABELS)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    labels.extend(k8s_labels.clone().unwrap_or_default());
    let mut annotations: BTreeMap<String, String> = ann
        .get(ANN_NODE_ANNOTATIONS)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    annotations.insert(
        ANN_KUBE_LABELS.into(),
        serde_json::to_string(&k8s_labels).unwrap_or_default(),
    );
    let mut meta = Map::new();
    meta.insert("name".into(), Value::String(node_name.to_string()));
    if let Some(uid) = nonempty_at(node, "/metadata/uid") {
        meta.insert("uid".into(), Value::String(uid.to_string()));
    }
    if let Some(ts) = node
        .pointer("/metadata/creationTimestamp")
        .filter(|v| !v.is_null())
    {
        meta.insert("creationTimestamp".into(), ts.clone());
    }
    if !labels.is_empty() {
        meta.insert("labels".into(), map_value(&labels));
    }
    meta.insert("annotations".into(), map_value(&annotations));

    let mut spec = Map::new();
    let mut bgp = Map::new();
    let ipv4 = node_annotation(&ann, ANN_IPV4_ADDRESS, |s| validate_cidr_v(s, true));
    let ipv6 = node_annotation(&ann, ANN_IPV6_ADDRESS, |s| validate_cidr_v(s, false));
    if let Some(asn) = ann.get(ANN_ASN).and_then(|s| parse_asn(s)) {
        bgp.insert("asNumber".into(), Value::from(asn));
    }
    let str_entry = |m: &mut Map<String, Value>, k: &str, v: Option<&str>| {
        if let Some(v) = v {
            m.insert(k.into(), Value::String(v.to_string()));
        }
    };
    str_entry(&mut bgp, "ipv4Address", ipv4);
    str_entry(&mut bgp, "ipv6Address", ipv6);
    // With host-local IPAM (USE_POD_CIDR) the IPIP and WireGuard tunnel addresses are the
    // first address of the pod CIDR; otherwise they come from the annotations.
    let pod_cidr = nonempty_at(node, "/spec/podCIDR").filter(|_| use_pod_cidr);
    let static_tunnel = match pod_cidr {
        Some(c) => Some(static_tunnel_address(c)?),
        None => None,
    };
    match &static_tunnel {
        Some(addr) => str_entry(&mut bgp, "ipv4IPIPTunnelAddr", addr.as_deref()),
        None => str_entry(
            &mut bgp,
            "ipv4IPIPTunnelAddr",
            node_annotation(&ann, ANN_IPIP_TUNNEL, |s| validate_network_v(s, true)),
        ),
    }
    str_entry(
        &mut bgp,
        "routeReflectorClusterID",
        node_annotation(&ann, ANN_RR_CLUSTER_ID, |s| validate_network_v(s, true)),
    );
    if !bgp.is_empty() {
        spec.insert("bgp".into(), Value::Object(bgp));
    }
    str_entry(
        &mut spec,
        "ipv4VXLANTunnelAddr",
        node_annotation(&ann, ANN_VXLAN_TUNNEL, |s| validate_network_v(s, true)),
    );
    str_entry(
        &mut spec,
        "vxlanTunnelMACAddr",
        node_annotation(&ann, ANN_VXLAN_MAC, validate_mac),
    );
    str_entry(
        &mut spec,
        "ipv6VXLANTunnelAddr",
        node_annotation(&ann, ANN_VXLAN_TUNNEL_V6, |s| validate_network_v(s, false)),
    );
    str_entry(
        &mut spec,
        "vxlanTunnelMACAddrV6",
        node_annotation(&ann, ANN_VXLAN_MAC_V6, validate_mac),
    );
    spec.insert(
        "orchRefs".into(),
        serde_json::json!([{ "nodeName": node_name, "orchestrator": "k8s" }]),
    );
    let mut wg = Map::new();
    match &static_tunnel {
        Some(addr) => {
            if ann.get(ANN_WG_KEY).is_some_and(|k| !k.is_empty()) {
                str_entry(&mut wg, "interfaceIPv4Address", addr.as_deref());
            }
        }
        None => {
            str_entry(
                &mut wg,
                "interfaceIPv4Address",
                node_annotation(&ann, ANN_WG_IFACE_V4, |s| validate_network_v(s, true)),
            );
            str_entry(
                &mut wg,
                "interfaceIPv6Address",
                node_annotation(&ann, ANN_WG_IFACE_V6, |s| validate_network_v(s, false)),
            );
        }
    }
    if !wg.is_empty() {
        spec.insert("wireguard".into(), Value::Object(wg));
    }
    let mut addresses = Vec::new();
    for a in [ipv4, ipv6].into_iter().flatten() {
        addresses.push(serde_json::json!({ "address": a, "type": "CalicoNodeIP" }));
    }
    for a in array_at(node, "/status/addresses", "status.addresses")? {
        let t = str_at(a, "/type").unwrap_or("");
        if t == "InternalIP" || t == "ExternalIP" {
            let addr = str_at(a, "/address").unwrap_or("");
            addresses.push(serde_json::json!({ "address": addr, "type": t }));
        }
    }
    if !addresses.is_empty() {
        spec.insert("addresses".into(), Value::Array(addresses));
    }
    if let Some(ifaces) = ann
        .get(ANN_INTERFACES)
        .and_then(|s| serde_json::from_str::<Vec<Value>>(s).ok())
    {
        let ifaces: Vec<Value> = ifaces
            .iter()
            .map(|i| {
                let mut m = Map::new();
                if let Some(n) = nonempty_at(i, "/name") {
                    m.insert("name".into(), Value::String(n.to_string()));
                }
                let addrs: Vec<Value> = i
                    .get("addresses")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter(|v| v.as_str().and_then(parse_ip).is_some())
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                if !addrs.is_empty() {
                    m.insert("addresses".into(), Value::Array(addrs));
                }
                Value::Object(m)
            })
            .collect();
        if !ifaces.is_empty() {
            spec.insert("interfaces".into(), Value::Array(ifaces));
        }
    }

    let mut status = Map::new();
    str_entry(
        &mut status,
        "wireguardPublicKey",
        ann.get(ANN_WG_KEY)
            .map(String::as_str)
            .filter(|s| !s.is_empty()),
    );
    str_entry(
        &mut status,
        "wireguardPublicKeyV6",
        ann.get(ANN_WG_KEY_V6)
            .map(String::as_str)
            .filter(|s| !s.is_empty()),
    );
    let pod_cidrs = strings_at(node, "/spec/podCIDRs", "spec.podCIDRs")?;
    if !pod_cidrs.is_empty() {
        status.insert("podCIDRs".into(), serde_json::json!(pod_cidrs));
    }

    let mut v = Map::new();
    v.insert("kind".into(), Value::String("Node".into()));
    v.insert("apiVersion".into(), Value::String(V3_API.into()));
    v.insert("metadata".into(), Value::Object(meta));
    v.insert("spec".into(), Value::Object(spec));
    v.insert("status".into(), Value::Object(status));
    Ok(Value::Object(v))
}

/// v1 `Wireguard` value (`model/node.go`), omitempty fields in Go's order.
#[derive(Serialize)]
struct WireguardValue {
    #[serde(rename = "interfaceIPv4Addr", skip_serializing_if = "Option::is_none")]
    interface_ipv4_addr: Option<String>,
    #[serde(rename = "publicKey", skip_serializing_if = "String::is_empty")]
    public_key: String,
    #[serde(rename = "interfaceIPv6Addr", skip_serializing_if = "Option::is_none")]
    interface_ipv6_addr: Option<String>,
    #[serde(rename = "publicKeyV6", skip_serializing_if = "String::is_empty")]
    public_key_v6: String,
}

/// The first address of `kind` and the given family in the v3 node's `spec.addresses`
/// (`FindNodeAddress`).
fn find_node_address(v3: &Value, kind: &str) -> Option<IpAddr> {
    v3.pointer("/spec/addresses")?
        .as_array()?
        .iter()
        .filter(|a| str_at(a, "/type") == Some(kind))
        .filter_map(|a| parse_cidr_or_ip(str_at(a, "/address")?))
        .map(|(ip, _)| ip)
        .find(IpAddr::is_ipv4)
}

/// Translates a k8s Node into what Calico's felix node processor emits for it (§3.4, §6).
///
/// The node is first converted to a v3 Node keeping only what `K8sNodeToCalico` keeps: name,
/// uid, creationTimestamp; labels (the k8s labels merged over those in the
/// `projectcalico.org/labels` annotation); annotations (those in `projectcalico.org/annotations`
/// plus `projectcalico.org/kube-labels`); `spec.bgp` from the annotations
/// `projectcalico.org/{IPv4Address, IPv6Address, ASNumber, RouteReflectorClusterID,
/// IPv4IPIPTunnelAddr}`; the VXLAN tunnel addresses and MACs, WireGuard interface addresses and
/// public keys, and `projectcalico.org/Interfaces` from their annotations; `orchRefs`; the
/// InternalIP/ExternalIP entries of `status.addresses`; `spec.podCIDRs` as `status.podCIDRs`.
/// Heartbeats, conditions, capacity, images and everything else are dropped, so such changes
/// give byte-identical output. Annotations that fail Calico's validation are ignored.
/// (`USE_POD_CIDR` host-local IPAM is not supported: no static tunnel address, no blocks.)
///
/// Yields, when set:
/// * `/calico/v1/host/<node>/bird_ip` (raw): the address part of `spec.bgp.ipv4Address`, i.e.
///   of the `projectcalico.org/IPv4Address` annotation, else the first IPv4 InternalIP, else
///   the first IPv4 ExternalIP (still sent by v3.32);
/// * `/calico/v1/host/<node>/config/{IpInIpTunnelAddr, IPv4VXLANTunnelAddr, VXLANTunnelMACAddr,
///   IPv6VXLANTunnelAddr, VXLANTunnelMACAddrV6}` (raw);
/// * `/calico/v1/host/<node>/wireguard` (JSON) when a WireGuard interface address or public
///   key is set;
///
/// and always the raw v3 Node at `/calico/resources/v3/projectcalico.org/nodes/<node>`.
pub fn translate_node(node: &Value) -> Result<Vec<Kv>, TranslateError> {
    translate_node_with(node, use_pod_cidr())
}

/// Whether `USE_POD_CIDR` (host-local IPAM from the nodes' pod CIDRs) is set in the daemon's
/// environment, read once as Go's `strconv.ParseBool` reads it (`K8sUsePodCIDR` in
/// `lib/apiconfig`). The node translator then sends the static tunnel addresses and a block
/// per pod CIDR, and the driver does not watch IPAM blocks and block affinities.
pub fn use_pod_cidr() -> bool {
    static SET: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SET.get_or_init(|| {
        matches!(
            std::env::var("USE_POD_CIDR").as_deref(),
            Ok("1" | "t" | "T" | "true" | "TRUE" | "True")
        )
    })
}

/// `getStaticTunnelAddress`: the pod CIDR's address as written with its last byte incremented
/// (wrapping, as a Go byte does); nothing for an IPv6 CIDR. A CIDR that does not parse fails
/// the node's conversion, as in Calico.
fn static_tunnel_address(pod_cidr: &str) -> Result<Option<String>, TranslateError> {
    let (ip, _) = parse_cidr(pod_cidr)
        .ok_or_else(|| invalid("spec.podCIDR", format!("not a CIDR: {pod_cidr:?}")))?;
    Ok(match ip {
        IpAddr::V4(v4) => {
            let mut o = v4.octets();
            o[3] = o[3].wrapping_add(1);
            Some(Ipv4Addr::from(o).to_string())
        }
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(|v4| {
            let mut o = v4.octets();
            o[3] = o[3].wrapping_add(1);
            Ipv4Addr::from(o).to_string()
        }),
    })
}

/// [`translate_node`] with `USE_POD_CIDR` given: when it is on, also a block
/// `/calico/ipam/v2/assignment/ipv<4|6>/block/<cidr>` per entry of `spec.podCIDRs`, affine to
/// `host:<node>` (`FelixNodeUpdateProcessor`).
pub fn translate_node_with(node: &Value, use_pod_cidr: bool) -> Result<Vec<Kv>, TranslateError> {
    let node_name = name(node)?;
    let v3 = k8s_node_to_calico(node, use_pod_cidr)?;
    let host = |k: &str| format!("/calico/v1/host/{node_name}/{k}");
    let mut out = Vec::new();

    let bird_ip = nonempty_at(&v3, "/spec/bgp/ipv4Address")
        .and_then(parse_cidr_or_ip)
        .map(|(ip, _)| ip)
        .or_else(|| find_node_address(&v3, "InternalIP"))
        .or_else(|| find_node_address(&v3, "ExternalIP"));
    if let Some(ip) = bird_ip {
        out.push((host("bird_ip"), raw(&ip.to_string())));
    }
    let ip_config = |ptr: &str| {
        nonempty_at(&v3, ptr)
            .and_then(parse_ip)
            .map(|ip| ip.to_string())
    };
    let configs = [
        (
            "IpInIpTunnelAddr",
            ip_config("/spec/bgp/ipv4IPIPTunnelAddr"),
        ),
        (
            "IPv4VXLANTunnelAddr",
            ip_config("/spec/ipv4VXLANTunnelAddr"),
        ),
        (
            "VXLANTunnelMACAddr",
            nonempty_at(&v3, "/spec/vxlanTunnelMACAddr").map(str::to_string),
        ),
        (
            "IPv6VXLANTunnelAddr",
            ip_config("/spec/ipv6VXLANTunnelAddr"),
        ),
        (
            "VXLANTunnelMACAddrV6",
            nonempty_at(&v3, "/spec/vxlanTunnelMACAddrV6").map(str::to_string),
        ),
    ];
    for (config, value) in configs {
        if let Some(v) = value {
            out.push((host(&format!("config/{config}")), raw(&v)));
        }
    }
    out.push((
        v3_key("nodes", "", node_name),
        gojson::to_bytes(&v3, &go_shapes::NODE),
    ));

    let wg = WireguardValue {
        interface_ipv4_addr: ip_config("/spec/wireguard/interfaceIPv4Address"),
        public_key: str_at(&v3, "/status/wireguardPublicKey")
            .unwrap_or("")
            .to_string(),
        interface_ipv6_addr: ip_config("/spec/wireguard/interfaceIPv6Address"),
        public_key_v6: str_at(&v3, "/status/wireguardPublicKeyV6")
            .unwrap_or("")
            .to_string(),
    };
    if wg.interface_ipv4_addr.is_some()
        || !wg.public_key.is_empty()
        || wg.interface_ipv6_addr.is_some()
        || !wg.public_key_v6.is_empty()
    {
        out.push((host("wireguard"), to_bytes(&wg)));
    }
    if use_pod_cidr {
        for c in strings_at(&v3, "/status/podCIDRs", "spec.podCIDRs")? {
            // Calico skips a pod CIDR that does not parse.
            let Some((_, net)) = parse_cidr(&c) else {
                continue;
            };
            let v = if net.is_v4() { 4 } else { 6 };
            let block = serde_json::json!({
                "cidr": net.to_string(),
                "affinity": format!("host:{node_name}"),
            });
            let value = format!(
                r#"{{"cidr":{},"affinity":{},"allocations":null,"unallocated":null,"attributes":null,"sequenceNumber":0,"sequenceNumberForAllocation":null,"deleted":false}}"#,
                block["cidr"], block["affinity"]
            );
            out.push((
                format!(
                    "/calico/ipam/v2/assignment/ipv{v}/block/{}-{}",
                    net.addr, net.prefix
                ),
                Bytes::from(value),
            ));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Namespace / ServiceAccount → profiles
// ---------------------------------------------------------------------------------------------

fn profile_kvs(
    profile: &str,
    uid: Option<String>,
    created: Option<&Value>,
    allow: bool,
    labels: &BTreeMap<String, String>,
) -> Vec<Kv> {
    let base = format!("/calico/v1/policy/profile/{}", escape(profile));
    let rules: &'static [u8] = if allow { ALLOW_ALL_RULES } else { b"{}" };
    let mut out = vec![(format!("{base}/rules"), Bytes::from_static(rules))];
    if !labels.is_empty() {
        out.push((format!("{base}/labels"), to_bytes(labels)));
    }
    let mut meta = Map::new();
    meta.insert("name".into(), Value::String(profile.to_string()));
    if let Some(uid) = uid {
        meta.insert("uid".into(), Value::String(uid));
    }
    if let Some(ts) = created.filter(|v| !v.is_null()) {
        meta.insert("creationTimestamp".into(), ts.clone());
    }
    let mut spec = Map::new();
    if allow {
        // v3 rules: `source`/`destination` are `omitzero` in v3.32, so an allow-all rule is
        // just its action.
        spec.insert("ingress".into(), serde_json::json!([{ "action": "Allow" }]));
        spec.insert("egress".into(), serde_json::json!([{ "action": "Allow" }]));
    }
    if !labels.is_empty() {
        spec.insert("labelsToApply".into(), map_value(labels));
    }
    let v3 = serde_json::json!({
        "kind": "Profile",
        "apiVersion": V3_API,
        "metadata": meta,
        "spec": spec,
    });
    out.push((
        v3_key("profiles", "", profile),
        gojson::to_bytes(&v3, &go_shapes::PROFILE),
    ));
    out
}

/// Translates a Namespace into its profile `kns.<ns>` (§4.2): the rules key
/// `/calico/v1/policy/profile/kns.<ns>/rules` (allow inbound, allow outbound), the labels key
/// `/calico/v1/policy/profile/kns.<ns>/labels` (`pcns.<k>` for every namespace label plus
/// `pcns.projectcalico.org/name`, so never empty in practice) and the raw v3 Profile
/// `/calico/resources/v3/projectcalico.org/profiles/kns.<ns>` (uid converted with Calico's
/// `ConvertUID`).
pub fn translate_namespace(ns: &Value) -> Result<Vec<Kv>, TranslateError> {
    let ns_name = name(ns)?;
    let uid = nonempty_at(ns, "/metadata/uid").ok_or(TranslateError::Missing("metadata.uid"))?;
    let mut labels: BTreeMap<String, String> = labels_of(ns)?
        .into_iter()
        .map(|(k, v)| (format!("{NAMESPACE_LABEL_PREFIX}{k}"), v))
        .collect();
    labels.insert(
        format!("{NAMESPACE_LABEL_PREFIX}{NAME_LABEL}"),
        ns_name.to_string(),
    );
    Ok(profile_kvs(
        &format!("kns.{ns_name}"),
        Some(convert_uid(uid)?),
        ns.pointer("/metadata/creationTimestamp"),
        true,
        &labels,
    ))
}

/// Translates a ServiceAccount into its profile `ksa.<ns>.<sa>` (§4.2): the rules key (value
/// `{}`: no rules), the labels key (`pcsa.<k>` for every label plus
/// `pcsa.projectcalico.org/name`) and the raw v3 Profile.
pub fn translate_service_account(sa: &Value) -> Result<Vec<Kv>, TranslateError> {
    let sa_name = name(sa)?;
    let ns = match namespace(sa) {
        "" => "default",
        ns => ns,
    };
    let uid = nonempty_at(sa, "/metadata/uid").ok_or(TranslateError::Missing("metadata.uid"))?;
    let mut labels: BTreeMap<String, String> = labels_of(sa)?
        .into_iter()
        .map(|(k, v)| (format!("{SERVICE_ACCOUNT_LABEL_PREFIX}{k}"), v))
        .collect();
    labels.insert(
        format!("{SERVICE_ACCOUNT_LABEL_PREFIX}{NAME_LABEL}"),
        sa_name.to_string(),
    );
    Ok(profile_kvs(
        &format!("ksa.{ns}.{sa_name}"),
        Some(convert_uid(uid)?),
        sa.pointer("/metadata/creationTimestamp"),
        false,
        &labels,
    ))
}

/// The synthetic `projectcalico-default-allow` profile Calico's profile watcher always lists
/// (`lib/resources/static.go`): allow/allow rules, no labels key, and its raw v3 Profile.
pub fn default_allow_profile() -> Vec<Kv> {
    profile_kvs(DEFAULT_ALLOW_PROFILE, None, None, true, &BTreeMap::new())
}

// ---------------------------------------------------------------------------------------------
// Service / EndpointSlice (raw)
// ---------------------------------------------------------------------------------------------

/// The object as Calico passes it through raw: the whole object, except
/// * `metadata.resourceVersion`: Calico moves it out of the value (into `V3ResourceVersion`);
/// * `metadata.managedFields`: Felix never reads it and it changes on every write;
/// * `kind` and `apiVersion`: client-go's typed decoding leaves them empty in the objects Calico
///   serializes, and the API server sets them on watch events but not on list items, so keeping
///   them would make a relist change the bytes.
fn k8s_passthrough(obj: &Value) -> Result<Value, TranslateError> {
    let mut v = obj.clone();
    let m = v
        .as_object_mut()
        .ok_or_else(|| invalid("object", "not a JSON object"))?;
    m.remove("kind");
    m.remove("apiVersion");
    if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
        meta.remove("managedFields");
    }
    Ok(v)
}

fn namespaced_name(obj: &Value) -> Result<(&str, &str), TranslateError> {
    let n = name(obj)?;
    let ns = namespace(obj);
    if ns.is_empty() {
        return Err(TranslateError::Missing("metadata.namespace"));
    }
    Ok((ns, n))
}

/// Translates a Service into the raw key
/// `/calico/resources/v3/projectcalico.org/kubernetesservice/<ns>/<name>` whose value is the
/// whole Service (see `k8s_passthrough` for the fields removed: resourceVersion, which Calico
/// moves out of the value, managedFields, which Felix never reads and which change on every
/// write, and kind/apiVersion). Any other change, status included, changes the value, as in
/// Calico.
pub fn translate_service(svc: &Value) -> Result<Vec<Kv>, TranslateError> {
    let (ns, n) = namespaced_name(svc)?;
    Ok(vec![(
        v3_key("kubernetesservice", ns, n),
        gojson::to_bytes(&k8s_passthrough(svc)?, &go_shapes::k8s::SERVICE),
    )])
}

/// Rewrites a `discovery.k8s.io/v1beta1` endpoint into the v1 shape, as the API server's
/// conversion does: `topology` becomes `deprecatedTopology`, minus the zone (moved to `zone`)
/// and the hostname when it equals `nodeName`.
fn endpoint_v1beta1_to_v1(ep: &mut Map<String, Value>) {
    let Some(topology) = ep.remove("topology") else {
        return;
    };
    let Value::Object(mut topology) = topology else {
        return;
    };
    if let Some(zone) = topology.remove("topology.kubernetes.io/zone") {
        ep.insert("zone".into(), zone);
    }
    let node_name = ep.get("nodeName").and_then(Value::as_str);
    if let Some(host) = topology.get("kubernetes.io/hostname") {
        if host.as_str() == node_name {
            topology.remove("kubernetes.io/hostname");
        }
    }
    if !topology.is_empty() {
        ep.insert("deprecatedTopology".into(), Value::Object(topology));
    }
}

/// Translates an EndpointSlice into the raw key
/// `/calico/resources/v3/projectcalico.org/kubernetesendpointslices/<ns>/<name>` whose value is
/// the whole slice, treated as [`translate_service`] treats a Service. Both
/// `discovery.k8s.io/v1` and `v1beta1` objects are accepted; v1beta1 endpoints are rewritten
/// into the v1 shape (Calico decodes slices as v1), so both give the same bytes.
pub fn translate_endpoint_slice(slice: &Value) -> Result<Vec<Kv>, TranslateError> {
    let (ns, n) = namespaced_name(slice)?;
    let mut v = k8s_passthrough(slice)?;
    if let Some(eps) = v.get_mut("endpoints").and_then(Value::as_array_mut) {
        for ep in eps.iter_mut().filter_map(Value::as_object_mut) {
            endpoint_v1beta1_to_v1(ep);
        }
    }
    Ok(vec![(
        v3_key("kubernetesendpointslices", ns, n),
        gojson::to_bytes(&v, &go_shapes::k8s::ENDPOINT_SLICE),
    )])
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::path::PathBuf;

    /// Loads `tests/fixtures/k8s/<path>` (YAML) as JSON.
    pub(crate) fn fixture(path: &str) -> Value {
        let p: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests/fixtures/k8s", path]
            .iter()
            .collect();
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// The output as (key, value text) pairs, for exact comparisons.
    pub(crate) fn text(kvs: &[Kv]) -> Vec<(String, String)> {
        kvs.iter()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect()
    }

    pub(crate) fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        expected
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    pub(crate) fn translate(f: super::super::TranslateFn, path: &str) -> Vec<(String, String)> {
        let obj = fixture(path);
        text(&f(&obj).unwrap_or_else(|e| panic!("{path}: {e}")))
    }

    #[test]
    fn sha1_and_interface_name() {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(
            hex(&sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        // sha1("default.nginx") = c440f455693b69cd... (Python's hashlib).
        assert_eq!(interface_name("default", "nginx"), "calic440f455693");
        // FELIX_INTERFACEPREFIX: the first entry of the list names the interface.
        assert_eq!(interface_prefix(None), "cali");
        assert_eq!(interface_prefix(Some("")), "cali");
        assert_eq!(interface_prefix(Some("tap,cali")), "tap");
        assert_eq!(
            interface_name_with_prefix(&interface_prefix(Some("tap,cali")), "default", "nginx"),
            "tapc440f455693"
        );
    }

    #[test]
    fn convert_uid_reverses_bits_except_version_and_variant() {
        assert_eq!(
            convert_uid("01234567-89ab-cdef-0123-456789abcdef").as_deref(),
            Ok("80c4a2e6-91d5-cdf7-01c4-a2e691d5b3f7")
        );
        // An involution.
        let back = convert_uid("80c4a2e6-91d5-cdf7-01c4-a2e691d5b3f7");
        assert_eq!(back.as_deref(), Ok("01234567-89ab-cdef-0123-456789abcdef"));
        assert!(convert_uid("not-a-uid").is_err());
    }

    #[test]
    fn cidr_parsing_masks_like_go() {
        let (ip, n) = parse_cidr("10.1.2.3/8").expect("cidr");
        assert_eq!(ip.to_string(), "10.1.2.3");
        assert_eq!(n.to_string(), "10.0.0.0/8");
        assert_eq!(
            parse_cidr_or_ip("fd00::1").map(|(_, n)| n.to_string()),
            Some("fd00::1/128".to_string())
        );
        assert_eq!(
            parse_cidr("fd00:10:244:1::5/64").map(|(_, n)| n.to_string()),
            Some("fd00:10:244:1::/64".to_string())
        );
        assert!(parse_cidr("10.0.0.0/33").is_none());
        assert!(parse_cidr("10.0.0.1").is_none());
        assert!(parse_cidr_or_ip("nope").is_none());
        assert_eq!(
            parse_ip("::ffff:10.0.0.1").map(|i| i.to_string()),
            Some("10.0.0.1".to_string())
        );
    }

    #[test]
    fn go_float_has_no_fraction_when_integral() {
        assert_eq!(
            serde_json::to_string(&GoFloat(1000.0)).ok().as_deref(),
            Some("1000")
        );
        assert_eq!(
            serde_json::to_string(&GoFloat(100.5)).ok().as_deref(),
            Some("100.5")
        );
        assert_eq!(
            serde_json::to_string(&GoFloat(-3.0)).ok().as_deref(),
            Some("-3")
        );
    }

    #[test]
    fn mac_and_asn_validation() {
        assert!(validate_mac("66:2f:1e:a0:3c:7b"));
        assert!(validate_mac("66-2f-1e-a0-3c-7b"));
        assert!(validate_mac("662f.1ea0.3c7b"));
        assert!(!validate_mac("66:2f:1e:a0:3c"));
        assert!(!validate_mac("66:2f:1e-a0:3c:7b"));
        assert_eq!(parse_asn("64512"), Some(64512));
        assert_eq!(parse_asn("1.10"), Some(65546));
        assert_eq!(parse_asn("x"), None);
    }

    // ---- Pods ----

    const WEP_KEY: &str =
        "/calico/v1/host/worker-1/workload/k8s/shop%2ffrontend-7d4b9c6f5-x8k2p/endpoint/eth0";

    fn frontend_value(iface: &str) -> String {
        format!(
            concat!(
                r#"{{"state":"active","name":"{}","active_instance_id":"","mac":null,"#,
                r#""profile_ids":["kns.shop","ksa.shop.frontend"],"ipv4_nets":["10.244.1.17/32"],"#,
                r#""ipv6_nets":["fd00:10:244:1::11/128"],"labels":{{"app":"frontend","#,
                r#""pod-template-hash":"7d4b9c6f5","projectcalico.org/namespace":"shop","#,
                r#""projectcalico.org/orchestrator":"k8s","projectcalico.org/serviceaccount":"frontend","#,
                r#""tier":"web"}},"ports":[{{"name":"http","protocol":"tcp","port":8080}},"#,
                r#"{{"name":"metrics","protocol":"tcp","port":9090}},{{"name":"dns","protocol":"udp","port":53}},"#,
                r#"{{"name":"init-sync","protocol":"sctp","port":7000}}],"generate_name":"frontend-7d4b9c6f5-"}}"#
            ),
            iface
        )
    }

    #[test]
    fn pod_becomes_workload_endpoint() {
        // Interface names here are from Python's hashlib, not our SHA-1.
        assert_eq!(
            translate(translate_pod, "pod/running.yaml"),
            vec![(WEP_KEY.to_string(), frontend_value("calidfae6cf42b3"))]
        );
    }

    #[test]
    fn pod_status_churn_is_byte_identical_but_relabel_is_not() {
        let a = translate(translate_pod, "pod/running.yaml");
        let b = translate(translate_pod, "pod/running-status-churn.yaml");
        assert_eq!(a, b);
        let c = translate(translate_pod, "pod/running-relabelled.yaml");
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].0, a[0].0);
        assert_ne!(c[0].1, a[0].1);
        assert!(c[0].1.contains(r#""tier":"api""#), "{}", c[0].1);
    }

    #[test]
    fn pods_that_yield_nothing() {
        for f in [
            "pod/host-network.yaml",
            "pod/pending-no-ip.yaml",
            "pod/unscheduled.yaml",
            "pod/succeeded.yaml",
            "pod/terminating-ip-released.yaml",
        ] {
            assert_eq!(translate(translate_pod, f), vec![], "{f}");
        }
    }

    #[test]
    fn terminating_pod_with_annotation_ip_stays_live() {
        let out = translate(translate_pod, "pod/terminating-annotation-ip.yaml");
        let iface = "cali1a8fdc70178";
        let expected = format!(
            concat!(
                r#"{{"state":"active","name":"{}","active_instance_id":"","mac":null,"#,
                r#""profile_ids":["kns.kube-system","ksa.kube-system.coredns"],"#,
                r#""ipv4_nets":["10.244.2.5/32"],"ipv6_nets":null,"#,
                r#""labels":{{"k8s-app":"kube-dns","projectcalico.org/namespace":"kube-system","#,
                r#""projectcalico.org/orchestrator":"k8s","projectcalico.org/serviceaccount":"coredns"}},"#,
                r#""ports":[{{"name":"dns","protocol":"udp","port":53}},{{"name":"dns-tcp","protocol":"tcp","port":53}}],"#,
                r#""generate_name":"coredns-5d78c9869d-"}}"#
            ),
            iface
        );
        assert_eq!(
            out,
            vec![(
                "/calico/v1/host/worker-2/workload/k8s/kube-system%2fcoredns-5d78c9869d-q2w4e/endpoint/eth0"
                    .to_string(),
                expected
            )]
        );
    }

    #[test]
    fn pod_annotations_labels_and_nat() {
        // IP from the Calico annotation (no status IPs), pcns./pcsa. labels stripped, a
        // spoofed label overridden, floating IPs, spoofing prefixes and network-status kept.
        let out = translate(translate_pod, "pod/annotated.yaml");
        let iface = "cali2924ab75b46";
        let expected = format!(
            concat!(
                r#"{{"state":"active","name":"{}","active_instance_id":"","mac":null,"#,
                r#""profile_ids":["kns.team-a"],"ipv4_nets":["10.244.3.9/32"],"ipv6_nets":null,"#,
                r#""ipv4_nat":[{{"int_ip":"10.244.3.9","ext_ip":"172.16.0.50"}}],"#,
                r#""labels":{{"app":"gw","projectcalico.org/namespace":"team-a","#,
                r#""projectcalico.org/orchestrator":"k8s"}},"#,
                r#""allow_spoofed_source_ips":["192.168.0.0/16"],"#,
                r#""annotations":{{"k8s.v1.cni.cncf.io/network-status":"[{{\"name\":\"calico\"}}]"}}}}"#
            ),
            iface
        );
        assert_eq!(
            out,
            vec![(
                "/calico/v1/host/worker-3/workload/k8s/team-a%2fvm-gateway/endpoint/eth0"
                    .to_string(),
                expected
            )]
        );
    }

    #[test]
    fn pod_errors() {
        let mut pod = fixture("pod/running.yaml");
        pod["status"]["podIPs"] = serde_json::json!([{ "ip": "10.244.1.999" }]);
        assert!(matches!(
            translate_pod(&pod),
            Err(TranslateError::Invalid { .. })
        ));
        let mut pod = fixture("pod/running.yaml");
        if let Some(m) = pod["metadata"].as_object_mut() {
            m.remove("name");
        }
        assert_eq!(
            translate_pod(&pod),
            Err(TranslateError::Missing("metadata.name"))
        );
    }

    #[test]
    fn raw_v3_metadata_carries_generation_and_owner_references_as_calico_does() {
        let owner_uid = "0a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d";
        let stored = serde_json::json!({
            "generation": 4,
            "ownerReferences": [
                {"apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration", "name": "default", "uid": owner_uid},
                {"apiVersion": "apps/v1", "kind": "Deployment", "name": "op", "uid": owner_uid, "controller": true},
            ],
        });
        let obj = serde_json::json!({
            "apiVersion": "crd.projectcalico.org/v1",
            "kind": "BGPPeer",
            "metadata": {
                "name": "peer", "uid": owner_uid, "generation": 9, "resourceVersion": "7",
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
                "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "cr-owner", "uid": owner_uid}],
                "annotations": {"projectcalico.org/metadata": stored.to_string()},
            },
            "spec": {"peerIP": "10.0.0.1"},
        });
        let converted = convert_uid(owner_uid).unwrap();
        let meta = CalicoMeta::of(&obj, "BGPPeer").unwrap();
        // The stored metadata wins: its generation and its owners, Calico's moved to v3.
        assert_eq!(meta.generation, Some(serde_json::json!(4)));
        assert_eq!(
            meta.owner_references,
            Some(serde_json::json!([
                {"apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration", "name": "default", "uid": converted},
                {"apiVersion": "apps/v1", "kind": "Deployment", "name": "op", "uid": owner_uid, "controller": true},
            ]))
        );
        let (_, bytes) =
            raw_v3_resource("BGPPeer", "bgppeers", &obj, &go_shapes::BGP_PEER).unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(text.starts_with(&format!(
            r#"{{"kind":"BGPPeer","apiVersion":"projectcalico.org/v3","metadata":{{"name":"peer","uid":"{converted}","generation":4,"creationTimestamp":null,"ownerReferences":[{{"apiVersion":"projectcalico.org/v3","kind":"BGPConfiguration","name":"default","uid":"{converted}"}},{{"apiVersion":"apps/v1","kind":"Deployment","name":"op","uid":"{owner_uid}","controller":true}}]}}"#
        )), "{text}");
        assert!(!text.contains("managedFields") && !text.contains("resourceVersion"));

        // Without the annotation the CR's own generation and owners are kept as they are.
        let mut bare = obj.clone();
        bare["metadata"]["annotations"] = serde_json::json!({});
        let meta = CalicoMeta::of(&bare, "BGPPeer").unwrap();
        assert_eq!(meta.generation, Some(serde_json::json!(9)));
        assert_eq!(
            meta.owner_references,
            Some(obj["metadata"]["ownerReferences"].clone())
        );
    }

    // ---- Nodes ----

    const NODE_V3: &str = concat!(
        r#"{"kind":"Node","apiVersion":"projectcalico.org/v3","metadata":{"name":"worker-1","#,
        r#""uid":"5a0b7c2e-3f41-4d8a-9e6b-1c2d3e4f5a6b","creationTimestamp":"2026-03-02T09:14:07Z","#,
        r#""labels":{"beta.kubernetes.io/arch":"amd64","kubernetes.io/hostname":"worker-1","kubernetes.io/os":"linux","#,
        r#""topology.kubernetes.io/zone":"zone-a"},"annotations":{"projectcalico.org/kube-labels":"{\"beta.kubernetes.io/arch\":\"amd64\","#,
        r#"\"kubernetes.io/hostname\":\"worker-1\",\"kubernetes.io/os\":\"linux\",\"topology.kubernetes.io/zone\":\"zone-a\"}"}},"#,
        r#""spec":{"bgp":{"ipv4Address":"172.18.0.3/16","ipv4IPIPTunnelAddr":"10.244.1.0"},"vxlanTunnelMACAddr":"66:2f:1e:a0:3c:7b","#,
        r#""orchRefs":[{"nodeName":"worker-1","orchestrator":"k8s"}],"addresses":[{"address":"172.18.0.3/16","#,
        r#""type":"CalicoNodeIP"},{"address":"172.18.0.3","type":"InternalIP"}]},"status":{"podCIDRs":["10.244.1.0/24"]}}"#
    );

    #[test]
    fn use_pod_cidr_gives_static_tunnel_addresses_and_blocks() {
        let mut node = fixture("node/worker-1.yaml");
        node["spec"]["podCIDR"] = Value::String("10.244.1.0/24".into());
        node["spec"]["podCIDRs"] = serde_json::json!(["10.244.1.0/24", "fd00:244:1::/64"]);
        let out = text(&translate_node_with(&node, true).unwrap());
        let get = |k: &str| out.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        assert_eq!(
            get("/calico/v1/host/worker-1/config/IpInIpTunnelAddr").as_deref(),
            Some("10.244.1.1")
        );
        assert_eq!(
            get("/calico/ipam/v2/assignment/ipv4/block/10.244.1.0-24").as_deref(),
            Some(concat!(
                r#"{"cidr":"10.244.1.0/24","affinity":"host:worker-1","allocations":null,"unallocated":null,"#,
                r#""attributes":null,"sequenceNumber":0,"sequenceNumberForAllocation":null,"deleted":false}"#
            ))
        );
        assert!(get("/calico/ipam/v2/assignment/ipv6/block/fd00:244:1::-64").is_some());
        // Without USE_POD_CIDR: no blocks, and the tunnel address is the annotation's.
        let plain = text(&translate_node_with(&node, false).unwrap());
        assert!(plain.iter().all(|(k, _)| !k.starts_with("/calico/ipam/")));
        assert_eq!(
            static_tunnel_address("10.0.0.255/24").unwrap().as_deref(),
            Some("10.0.0.0")
        );
        assert_eq!(static_tunnel_address("fd00::/64").unwrap(), None);
        assert!(static_tunnel_address("bad").is_err());
    }

    #[test]
    fn node_with_bgp_annotations() {
        assert_eq!(
            translate(translate_node, "node/worker-1.yaml"),
            pairs(&[
                ("/calico/v1/host/worker-1/bird_ip", "172.18.0.3"),
                (
                    "/calico/v1/host/worker-1/config/IpInIpTunnelAddr",
                    "10.244.1.0"
                ),
                (
                    "/calico/v1/host/worker-1/config/VXLANTunnelMACAddr",
                    "66:2f:1e:a0:3c:7b"
                ),
                (
                    "/calico/resources/v3/projectcalico.org/nodes/worker-1",
                    NODE_V3
                ),
            ])
        );
    }

    #[test]
    fn node_heartbeat_is_byte_identical_but_annotation_change_is_not() {
        let a = translate(translate_node, "node/worker-1.yaml");
        let b = translate(translate_node, "node/worker-1-heartbeat.yaml");
        assert_eq!(a, b);
        let c = translate(translate_node, "node/worker-1-new-tunnel.yaml");
        assert_ne!(a, c);
        assert!(c.contains(&(
            "/calico/v1/host/worker-1/config/IpInIpTunnelAddr".to_string(),
            "10.244.1.64".to_string()
        )));
    }

    #[test]
    fn node_without_bgp_annotations_uses_internal_ip() {
        let v3 = concat!(
            r#"{"kind":"Node","apiVersion":"projectcalico.org/v3","metadata":{"name":"edge-1","uid":"0f1e2d3c-4b5a-4697-8877-665544332211","#,
            r#""creationTimestamp":"2026-03-05T11:00:00Z","labels":{"kubernetes.io/hostname":"edge-1"},"#,
            r#""annotations":{"projectcalico.org/kube-labels":"{\"kubernetes.io/hostname\":\"edge-1\"}"}},"#,
            r#""spec":{"orchRefs":[{"nodeName":"edge-1","orchestrator":"k8s"}],"addresses":[{"address":"fd00:172:18::50","#,
            r#""type":"InternalIP"},{"address":"192.168.50.7","type":"InternalIP"},{"address":"203.0.113.7","#,
            r#""type":"ExternalIP"}]},"status":{}}"#
        );
        assert_eq!(
            translate(translate_node, "node/no-bgp.yaml"),
            pairs(&[
                ("/calico/v1/host/edge-1/bird_ip", "192.168.50.7"),
                ("/calico/resources/v3/projectcalico.org/nodes/edge-1", v3),
            ])
        );
    }

    #[test]
    fn node_with_wireguard_and_vxlan() {
        let out = translate(translate_node, "node/wireguard.yaml");
        let keys: Vec<&str> = out.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "/calico/v1/host/worker-9/bird_ip",
                "/calico/v1/host/worker-9/config/IPv4VXLANTunnelAddr",
                "/calico/v1/host/worker-9/config/VXLANTunnelMACAddr",
                "/calico/v1/host/worker-9/config/IPv6VXLANTunnelAddr",
                "/calico/resources/v3/projectcalico.org/nodes/worker-9",
                "/calico/v1/host/worker-9/wireguard",
            ]
        );
        assert_eq!(out[0].1, "10.0.0.9");
        assert_eq!(out[1].1, "10.244.9.0");
        assert_eq!(out[3].1, "fd00:10:244:9::");
        assert_eq!(
            out[5].1,
            r#"{"interfaceIPv4Addr":"10.244.9.1","publicKey":"jlkVyQYooZYzI2wFfNhSZez5eWh44yfq1wKVjLvSXgY="}"#
        );
        let v: Value = serde_json::from_str(&out[4].1).unwrap_or(Value::Null);
        // Calico labels from the annotation, overridden by the k8s label of the same name.
        assert_eq!(v["metadata"]["labels"]["rack"], "r12");
        assert_eq!(
            v["metadata"]["labels"]["kubernetes.io/hostname"],
            "worker-9"
        );
        assert_eq!(v["metadata"]["annotations"]["owner"], "netops");
        assert_eq!(v["spec"]["bgp"]["asNumber"], 64513);
        assert_eq!(v["spec"]["bgp"]["ipv6Address"], "fd00:172:18::9/64");
        // The invalid RouteReflectorClusterID (not masked) is dropped.
        assert!(v["spec"]["bgp"].get("routeReflectorClusterID").is_none());
        assert_eq!(
            v["spec"]["interfaces"],
            serde_json::json!([{ "name": "eth0", "addresses": ["10.0.0.9"] }])
        );
        assert_eq!(v["spec"]["wireguard"]["interfaceIPv4Address"], "10.244.9.1");
        assert_eq!(
            v["status"]["wireguardPublicKey"],
            "jlkVyQYooZYzI2wFfNhSZez5eWh44yfq1wKVjLvSXgY="
        );
    }

    // ---- Profiles ----

    #[test]
    fn namespace_profile() {
        assert_eq!(
            translate(translate_namespace, "namespace/shop.yaml"),
            pairs(&[
                (
                    "/calico/v1/policy/profile/kns.shop/rules",
                    r#"{"inbound_rules":[{"action":"allow"}],"outbound_rules":[{"action":"allow"}]}"#
                ),
                (
                    "/calico/v1/policy/profile/kns.shop/labels",
                    r#"{"pcns.kubernetes.io/metadata.name":"shop","pcns.projectcalico.org/name":"shop","pcns.team":"payments"}"#
                ),
                (
                    "/calico/resources/v3/projectcalico.org/profiles/kns.shop",
                    concat!(
                        r#"{"kind":"Profile","apiVersion":"projectcalico.org/v3","metadata":{"name":"kns.shop","#,
                        r#""uid":"bc34d850-f971-4d3e-8b56-fa72bc34d850","creationTimestamp":"2026-03-01T08:00:00Z"},"#,
                        r#""spec":{"ingress":[{"action":"Allow","source":{},"destination":{}}],"egress":[{"action":"Allow","#,
                        r#""source":{},"destination":{}}],"labelsToApply":{"pcns.kubernetes.io/metadata.name":"shop","#,
                        r#""pcns.projectcalico.org/name":"shop","pcns.team":"payments"}}}"#
                    )
                ),
            ])
        );
    }

    #[test]
    fn service_account_profile() {
        assert_eq!(
            translate(translate_service_account, "serviceaccount/frontend.yaml"),
            pairs(&[
                ("/calico/v1/policy/profile/ksa.shop.frontend/rules", "{}"),
                (
                    "/calico/v1/policy/profile/ksa.shop.frontend/labels",
                    r#"{"pcsa.app":"frontend","pcsa.projectcalico.org/name":"frontend"}"#
                ),
                (
                    "/calico/resources/v3/projectcalico.org/profiles/ksa.shop.frontend",
                    concat!(
                        r#"{"kind":"Profile","apiVersion":"projectcalico.org/v3","metadata":{"name":"ksa.shop.frontend","#,
                        r#""uid":"3cba7451-f8d4-4cbc-9ef1-5ed63ab27cf4","creationTimestamp":"2026-03-01T08:00:01Z"},"#,
                        r#""spec":{"labelsToApply":{"pcsa.app":"frontend","pcsa.projectcalico.org/name":"frontend"}}}"#
                    )
                ),
            ])
        );
    }

    #[test]
    fn default_allow() {
        assert_eq!(
            text(&default_allow_profile()),
            pairs(&[
                (
                    "/calico/v1/policy/profile/projectcalico-default-allow/rules",
                    r#"{"inbound_rules":[{"action":"allow"}],"outbound_rules":[{"action":"allow"}]}"#
                ),
                (
                    "/calico/resources/v3/projectcalico.org/profiles/projectcalico-default-allow",
                    concat!(
                        r#"{"kind":"Profile","apiVersion":"projectcalico.org/v3","metadata":{"name":"projectcalico-default-allow","#,
                        r#""creationTimestamp":null},"spec":{"ingress":[{"action":"Allow","source":{},"destination":{}}],"#,
                        r#""egress":[{"action":"Allow","source":{},"destination":{}}]}}"#
                    )
                ),
            ])
        );
    }

    // ---- Services and EndpointSlices ----

    #[test]
    fn service_passthrough_drops_resource_version_and_managed_fields() {
        let out = translate(translate_service, "service/frontend.yaml");
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].0,
            "/calico/resources/v3/projectcalico.org/kubernetesservice/shop/frontend"
        );
        let v: Value = serde_json::from_str(&out[0].1).unwrap_or(Value::Null);
        let mut expected = fixture("service/frontend.yaml");
        if let Some(m) = expected.as_object_mut() {
            m.remove("kind");
            m.remove("apiVersion");
        }
        if let Some(m) = expected["metadata"].as_object_mut() {
            m.remove("resourceVersion");
            m.remove("managedFields");
        }
        assert_eq!(v, expected);
        assert!(v["metadata"].get("resourceVersion").is_none());
        assert!(v["metadata"].get("managedFields").is_none());
        assert_eq!(v["spec"]["clusterIP"], "10.96.12.34");
        assert_eq!(v["metadata"]["labels"]["app"], "frontend");
    }

    #[test]
    fn endpoint_slice_v1_and_v1beta1_give_the_same_bytes() {
        let v1 = translate(translate_endpoint_slice, "endpointslice/frontend-v1.yaml");
        let beta = translate(
            translate_endpoint_slice,
            "endpointslice/frontend-v1beta1.yaml",
        );
        assert_eq!(v1, beta);
        assert_eq!(
            v1[0].0,
            "/calico/resources/v3/projectcalico.org/kubernetesendpointslices/shop/frontend-abc12"
        );
        let v: Value = serde_json::from_str(&v1[0].1).unwrap_or(Value::Null);
        assert_eq!(v["endpoints"][0]["nodeName"], "worker-1");
        assert_eq!(v["endpoints"][0]["zone"], "zone-a");
        assert!(v["endpoints"][0].get("deprecatedTopology").is_none());
        assert_eq!(v["endpoints"][1]["deprecatedTopology"]["rack"], "r3");
        assert!(v.get("apiVersion").is_none() && v.get("kind").is_none());
        assert!(v["metadata"].get("resourceVersion").is_none());
    }
}
