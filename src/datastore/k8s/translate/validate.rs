//! Typha's validation filter (`typha/pkg/calc/validation_filter.go`, v3.32.1).
//!
//! Typha validates every value its syncers produce before caching it: the v1 validator
//! (`libcalico-go/lib/validator/v1`) for v1 model values, and a value that fails, or a
//! workload endpoint without a `name`, is sent as missing (a delete). This module applies the
//! v1 rules that real objects can break to the translated `(key, value)` pairs, by key family.
//!
//! Covered (each with the v1 validator rule it mirrors):
//! * **rules** (policies, profile rules): numeric ports without a protocol
//!   (`validateBackendRule`: only named ports may go without one); any port with a protocol
//!   that has none (anything but TCP, UDP, SCTP and 6, 17, 132); a protocol name outside
//!   `tcp|udp|icmp|icmpv6|sctp|udplite` or the number 0 (`validateProtocol`); a port range
//!   whose start is above its end or below 1 (`validatePort`); `ip_version` other than 4 or 6;
//!   ICMP type outside 0..=254 and code outside 0..=255; selectors (`src_selector`,
//!   `dst_selector`, their `!` and `orig_` forms) that do not parse;
//! * **policies**: the `selector` must parse; `performance_hints` must be distinct and
//!   `AssumeNeededOnEveryNode`;
//! * **workload and host endpoints**: every port's protocol must be `tcp`, `udp` or `sctp`
//!   (`validateBackendEndpointPort`); a workload endpoint needs a `name` (the filter's own
//!   check); a host endpoint's interface name must match `^[a-zA-Z0-9_.-]{1,15}$` or be `*`,
//!   and its profile IDs `^[a-zA-Z0-9_.-]{1,128}$`;
//! * **network sets**: profile IDs as for host endpoints.
//!
//! Labels are not checked: the `labels` tag sits on `uniquelabels.Map` fields, which are
//! structs, and the validator library does not apply field tags to struct-typed fields, so
//! v3.32.1 never runs it on these values.
//!
//! Raw v3 values (`/calico/resources/v3/...`, Typha's `ResourceKey`s) go through the v3
//! validator instead (module `v3`): `validateObjectMeta` on every kind (name, labels,
//! annotations), the `labels` tag on a Profile's `labelsToApply`, the `ipv4`/`ipv6` and
//! `wireguardPublicKey` tags of a Node, `validateBGPPeerSpec` and the BGPPeer tags, the
//! BGPFilter rule tags and checks, and `validateFelixConfigSpec`. The list, each with the real
//! object that breaks it, is in docs/datastore.md ("Validation").
//!
//! The IP and CIDR tags of v1 values (`ipv4_gateway`, NAT addresses, expected IPs, nets) are
//! never applied by v3.32.1: they sit on Calico's `net.IP`/`net.IPNet`, which are structs.
//! What happens to an address that does not parse is the conversion's business (dropped from
//! the list, or the object fails to convert), pinned by the parity fixtures.

use super::core::{parse_cidr_or_ip, parse_ip};
use super::policy::selector_parses;
use serde_json::Value;
use std::net::IpAddr;

/// Where raw v3 values live; Typha's filter runs the v3 validator on every `ResourceKey`.
const V3_RESOURCES: &str = "/calico/resources/v3/projectcalico.org/";

/// Why a value fails validation, for the log.
pub type Invalid = String;

/// Checks one translated pair as Typha's validation filter would; `Err` means Typha sends the
/// key as missing.
pub fn validate(key: &str, value: &[u8]) -> Result<(), Invalid> {
    if let Some(rest) = key.strip_prefix(V3_RESOURCES) {
        let plural = rest.split('/').next().unwrap_or("");
        let v: Value =
            serde_json::from_slice(value).map_err(|e| format!("value is not JSON: {e}"))?;
        return v3::validate(plural, &v);
    }
    let Some(family) = family(key) else {
        return Ok(());
    };
    let v: Value = serde_json::from_slice(value).map_err(|e| format!("value is not JSON: {e}"))?;
    match family {
        Family::Policy => policy(&v),
        Family::ProfileRules => {
            rules(&v, "inbound_rules")?;
            rules(&v, "outbound_rules")
        }
        Family::Workload => {
            if v.get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
            {
                return Err("missing name".into());
            }
            endpoint_ports(&v)
        }
        Family::HostEndpoint => {
            if let Some(name) = v.get("name").and_then(Value::as_str) {
                if !name.is_empty() && name != "*" && !interface_name(name) {
                    return Err(format!("invalid interface name {name:?}"));
                }
            }
            profile_ids(&v)?;
            endpoint_ports(&v)
        }
        Family::NetworkSet => profile_ids(&v),
    }
}

enum Family {
    Policy,
    ProfileRules,
    Workload,
    HostEndpoint,
    NetworkSet,
}

fn family(key: &str) -> Option<Family> {
    if let Some(rest) = key.strip_prefix("/calico/v1/policy/") {
        if let Some(profile) = rest.strip_prefix("profile/") {
            return profile.ends_with("/rules").then_some(Family::ProfileRules);
        }
        if rest.starts_with("tier/") {
            return None;
        }
        return Some(Family::Policy);
    }
    if key.starts_with("/calico/v1/netset/") {
        return Some(Family::NetworkSet);
    }
    let host = key.strip_prefix("/calico/v1/host/")?;
    let (_, rest) = host.split_once('/')?;
    if rest.starts_with("workload/") {
        Some(Family::Workload)
    } else if rest.starts_with("endpoint/") {
        Some(Family::HostEndpoint)
    } else {
        None
    }
}

fn policy(v: &Value) -> Result<(), Invalid> {
    let sel = v.get("selector").and_then(Value::as_str).unwrap_or("");
    if !selector_parses(sel) {
        return Err(format!("invalid selector {sel:?}"));
    }
    if let Some(hints) = v.get("performance_hints").and_then(Value::as_array) {
        for (i, h) in hints.iter().enumerate() {
            if h.as_str() != Some("AssumeNeededOnEveryNode") {
                return Err(format!("invalid performance hint {h}"));
            }
            if hints[..i].contains(h) {
                return Err(format!("repeated performance hint {h}"));
            }
        }
    }
    rules(v, "inbound_rules")?;
    rules(v, "outbound_rules")
}

const RULE_SELECTORS: &[&str] = &[
    "src_selector",
    "dst_selector",
    "!src_selector",
    "!dst_selector",
    "orig_src_selector",
    "orig_src_namespace_selector",
    "orig_dst_selector",
    "orig_dst_namespace_selector",
    "!orig_src_selector",
    "!orig_dst_selector",
    "orig_src_service_acct_selector",
    "orig_dst_service_acct_selector",
];

const RULE_PORTS: &[&str] = &["src_ports", "dst_ports", "!src_ports", "!dst_ports"];

fn rules(v: &Value, field: &str) -> Result<(), Invalid> {
    let Some(list) = v.get(field).and_then(Value::as_array) else {
        return Ok(());
    };
    list.iter().try_for_each(rule)
}

/// A protocol as the v1 value holds it: a lower-case name or a number.
enum Protocol<'a> {
    Name(&'a str),
    Number(u64),
}

fn protocol(v: Option<&Value>) -> Result<Option<Protocol<'_>>, Invalid> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => match s.parse::<u64>() {
            Ok(n) => Ok(Some(Protocol::Number(n))),
            Err(_) => Ok(Some(Protocol::Name(s))),
        },
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|n| Some(Protocol::Number(n)))
            .ok_or_else(|| format!("invalid protocol {n}")),
        Some(other) => Err(format!("invalid protocol {other}")),
    }
}

fn check_protocol(p: &Protocol) -> Result<(), Invalid> {
    match p {
        Protocol::Number(0) => Err("protocol number invalid".into()),
        Protocol::Number(n) if *n > 255 => Err("protocol number invalid".into()),
        Protocol::Number(_) => Ok(()),
        Protocol::Name(s) => match *s {
            "tcp" | "udp" | "icmp" | "icmpv6" | "sctp" | "udplite" => Ok(()),
            _ => Err(format!("protocol name invalid: {s:?}")),
        },
    }
}

fn supports_ports(p: &Protocol) -> bool {
    match p {
        Protocol::Number(n) => matches!(n, 6 | 17 | 132),
        Protocol::Name(s) => matches!(*s, "tcp" | "udp" | "sctp" | "TCP" | "UDP" | "SCTP"),
    }
}

/// A v1 port: a number, `"min:max"`, or a name. Returns whether it is named.
fn port(v: &Value) -> Result<bool, Invalid> {
    match v {
        Value::Number(n) => match n.as_u64() {
            Some(p) if (1..=65535).contains(&p) => Ok(false),
            _ => Err(format!("port range invalid: {n}")),
        },
        Value::String(s) => match s.split_once(':') {
            Some((a, b)) => match (a.parse::<u16>(), b.parse::<u16>()) {
                (Ok(a), Ok(b)) if a >= 1 && a <= b => Ok(false),
                _ => Err(format!("port range invalid: {s:?}")),
            },
            None if s.parse::<u64>().is_ok() => port(&Value::from(s.parse::<u64>().unwrap_or(0))),
            None if s.is_empty() => Err("empty port name".into()),
            None => Ok(true),
        },
        other => Err(format!("invalid port {other}")),
    }
}

fn rule(r: &Value) -> Result<(), Invalid> {
    let proto = protocol(r.get("protocol"))?;
    if let Some(p) = &proto {
        check_protocol(p)?;
    }
    if let Some(p) = protocol(r.get("!protocol"))? {
        check_protocol(&p)?;
    }
    if let Some(ipv) = r.get("ip_version").filter(|v| !v.is_null()) {
        if ipv.as_u64() != Some(4) && ipv.as_u64() != Some(6) {
            return Err(format!("invalid ip_version {ipv}"));
        }
    }
    for (field, max) in [
        ("icmp_type", 254),
        ("!icmp_type", 254),
        ("icmp_code", 255),
        ("!icmp_code", 255),
    ] {
        if let Some(n) = r.get(field).filter(|v| !v.is_null()) {
            match n.as_i64() {
                Some(x) if (0..=max).contains(&x) => {}
                _ => return Err(format!("invalid {field} {n}")),
            }
        }
    }
    for field in RULE_PORTS {
        let Some(ports) = r.get(*field).and_then(Value::as_array) else {
            continue;
        };
        let mut all_named = true;
        for p in ports {
            all_named &= port(p)?;
        }
        match &proto {
            None if !all_named => {
                return Err(
                    "rules with numeric port or port range must set protocol to TCP or UDP or SCTP"
                        .into(),
                )
            }
            Some(p) if !ports.is_empty() && !supports_ports(p) => {
                return Err(
                    "rules that specify ports must set protocol to TCP or UDP or SCTP".into(),
                )
            }
            _ => {}
        }
    }
    for field in RULE_SELECTORS {
        if let Some(sel) = r.get(*field).and_then(Value::as_str) {
            if !sel.is_empty() && !selector_parses(sel) {
                return Err(format!("invalid {field} {sel:?}"));
            }
        }
    }
    Ok(())
}

fn endpoint_ports(v: &Value) -> Result<(), Invalid> {
    let Some(ports) = v.get("ports").and_then(Value::as_array) else {
        return Ok(());
    };
    for p in ports {
        match p.get("protocol").and_then(Value::as_str) {
            Some("tcp" | "udp" | "sctp") => {}
            _ => {
                return Err(format!(
                    "EndpointPort protocol must be 'tcp' or 'udp' or 'sctp', not {}",
                    p.get("protocol").unwrap_or(&Value::Null)
                ))
            }
        }
    }
    Ok(())
}

fn interface_name(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn profile_ids(v: &Value) -> Result<(), Invalid> {
    let Some(ids) = v.get("profile_ids").and_then(Value::as_array) else {
        return Ok(());
    };
    for id in ids {
        let s = id.as_str().unwrap_or("");
        let ok = (1..=128).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !ok {
            return Err(format!("invalid profile ID {id}"));
        }
    }
    Ok(())
}

/// The v3 validator (`libcalico-go/lib/validator/v3`) as Typha v3.32.1 runs it on raw v3
/// values in KDD mode: go-playground field tags and Calico's struct-level checks, without the
/// CRD schema pass (`SetCRDValidationEnabled` is only called for etcd). Only what a translated
/// value can break is checked; see docs/datastore.md, "Validation", for the list and for what
/// the validator library never reaches (slice members without `dive`, struct-typed fields).
mod v3 {
    use super::*;

    pub(super) fn validate(plural: &str, v: &Value) -> Result<(), Invalid> {
        // `validateObjectMeta` runs on every `metav1.ObjectMeta` the value holds: all of
        // these kinds, Kubernetes Services and EndpointSlices included.
        object_meta(v.get("metadata").unwrap_or(&Value::Null))?;
        let spec = v.get("spec").unwrap_or(&Value::Null);
        match plural {
            "profiles" => labels_rule("spec.labelsToApply", spec.get("labelsToApply")),
            "nodes" => node(spec, v.get("status").unwrap_or(&Value::Null)),
            "bgppeers" => bgp_peer(spec),
            "bgpfilters" => bgp_filter(spec),
            "felixconfigurations" => felix_configuration(spec),
            _ => Ok(()),
        }
    }

    fn str_of<'a>(v: &'a Value, field: &str) -> &'a str {
        v.get(field).and_then(Value::as_str).unwrap_or("")
    }

    fn string_map(v: Option<&Value>) -> Vec<(&str, &str)> {
        v.and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, x)| (k.as_str(), x.as_str().unwrap_or("")))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `nameRegex`: a DNS-1123 subdomain (without the length limit, checked apart).
    pub(super) fn dns_subdomain(s: &str) -> bool {
        !s.is_empty() && s.split('.').all(dns_label)
    }

    /// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`
    pub(super) fn dns_label(s: &str) -> bool {
        let b = s.as_bytes();
        let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        match (b.first(), b.last()) {
            (Some(first), Some(last)) => {
                edge(first) && edge(last) && b.iter().all(|c| edge(c) || *c == b'-')
            }
            _ => false,
        }
    }

    /// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, the name part of a qualified name and a
    /// non-empty label value.
    fn qualified_part(s: &str) -> bool {
        let b = s.as_bytes();
        match (b.first(), b.last()) {
            (Some(first), Some(last)) => {
                first.is_ascii_alphanumeric()
                    && last.is_ascii_alphanumeric()
                    && b.iter()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            }
            _ => false,
        }
    }

    /// `k8s.io/apimachinery` `IsQualifiedName`: `[prefix/]name`, the prefix a DNS-1123
    /// subdomain of at most 253 bytes, the name at most 63.
    pub(super) fn qualified_name(s: &str) -> bool {
        let name = match s.split('/').collect::<Vec<_>>()[..] {
            [name] => name,
            [prefix, name] => {
                if prefix.len() > 253 || !dns_subdomain(prefix) {
                    return false;
                }
                name
            }
            _ => return false,
        };
        name.len() <= 63 && qualified_part(name)
    }

    /// `IsValidLabelValue`: empty, or at most 63 bytes of the qualified-name form.
    pub(super) fn label_value(s: &str) -> bool {
        s.is_empty() || (s.len() <= 63 && qualified_part(s))
    }

    fn labels(field: &str, m: &[(&str, &str)]) -> Result<(), Invalid> {
        for (k, x) in m {
            if !qualified_name(k) {
                return Err(format!("{field}: invalid label key {k:?}"));
            }
            if !label_value(x) {
                return Err(format!("{field}: invalid value {x:?} of label {k:?}"));
            }
        }
        Ok(())
    }

    /// The `labels` field tag (a map, so the library does apply it).
    fn labels_rule(field: &str, v: Option<&Value>) -> Result<(), Invalid> {
        labels(field, &string_map(v))
    }

    /// `validateObjectMeta`.
    fn object_meta(meta: &Value) -> Result<(), Invalid> {
        let name = str_of(meta, "name");
        if name.len() > 253 {
            return Err(format!(
                "metadata.name is too long by {} bytes",
                name.len() - 253
            ));
        }
        if !dns_subdomain(name) {
            return Err(format!(
                "metadata.name {name:?} must consist of lower case alphanumeric characters, '-' or '.'"
            ));
        }
        let mut size = 0usize;
        for (k, x) in string_map(meta.get("annotations")) {
            if !qualified_name(&k.to_lowercase()) {
                return Err(format!("metadata.annotations: invalid key {k:?}"));
            }
            size += k.len() + x.len();
        }
        if size > 256 * 1024 {
            return Err(format!(
                "metadata.annotations: total size is too large by {} bytes",
                size - 256 * 1024
            ));
        }
        labels("metadata.labels", &string_map(meta.get("labels")))
    }

    /// Go's `net.ParseIP`, and whether `To4()` is non-nil (IPv4, or IPv4-mapped IPv6).
    fn go_ip(s: &str) -> Option<IpAddr> {
        parse_ip(s)
    }

    /// The `ipv4` and `ipv6` tags (an address, no prefix length).
    fn ip_tag(field: &str, s: &str, v4: bool) -> Result<(), Invalid> {
        match go_ip(s) {
            Some(ip) if ip.is_ipv4() == v4 => Ok(()),
            _ => Err(format!(
                "{field}: {s:?} is not an {} address",
                if v4 { "IPv4" } else { "IPv6" }
            )),
        }
    }

    /// The `wireguardPublicKey` tag (`wgtypes.ParseKey`): standard base64 of 32 bytes. Go's
    /// decoder skips `\r` and `\n` and, not being strict, ignores the pad bits.
    fn wireguard_key(field: &str, s: &str) -> Result<(), Invalid> {
        let b: Vec<u8> = s.bytes().filter(|c| !matches!(c, b'\r' | b'\n')).collect();
        let alphabet = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/');
        let ok = b.len() == 44 && b[43] == b'=' && b[..43].iter().all(alphabet);
        if ok {
            Ok(())
        } else {
            Err(format!("{field}: {s:?} is not a WireGuard key"))
        }
    }

    /// `internalapi.Node`: the `ipv4`/`ipv6` tags on the tunnel and WireGuard addresses (the
    /// conversion accepted these annotations as networks, so `10.0.0.1/32` gets here and
    /// fails), the WireGuard public keys (not checked by the conversion at all). Addresses,
    /// interfaces and orchRefs are slices without `dive`: never checked.
    fn node(spec: &Value, status: &Value) -> Result<(), Invalid> {
        let null = Value::Null;
        let bgp = spec.get("bgp").unwrap_or(&null);
        let wg = spec.get("wireguard").unwrap_or(&null);
        let ips: [(&str, &Value, &str, bool); 6] = [
            (
                "spec.bgp.ipv4IPIPTunnelAddr",
                bgp,
                "ipv4IPIPTunnelAddr",
                true,
            ),
            (
                "spec.bgp.routeReflectorClusterID",
                bgp,
                "routeReflectorClusterID",
                true,
            ),
            (
                "spec.ipv4VXLANTunnelAddr",
                spec,
                "ipv4VXLANTunnelAddr",
                true,
            ),
            (
                "spec.ipv6VXLANTunnelAddr",
                spec,
                "ipv6VXLANTunnelAddr",
                false,
            ),
            (
                "spec.wireguard.interfaceIPv4Address",
                wg,
                "interfaceIPv4Address",
                true,
            ),
            (
                "spec.wireguard.interfaceIPv6Address",
                wg,
                "interfaceIPv6Address",
                false,
            ),
        ];
        for (field, obj, member, v4) in ips {
            let s = str_of(obj, member);
            if !s.is_empty() {
                ip_tag(field, s, v4)?;
            }
        }
        for member in ["wireguardPublicKey", "wireguardPublicKeyV6"] {
            let s = str_of(status, member);
            if !s.is_empty() {
                wireguard_key(&format!("status.{member}"), s)?;
            }
        }
        Ok(())
    }

    /// The `IP:port` tag (`processIPPort`): an IP, `<IPv4>:<port>` or `[<IPv6>]:<port>`,
    /// port 1..=65535. Returns the address.
    fn ip_port(s: &str) -> Option<IpAddr> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, p) = rest.split_once("]:")?;
            (h, Some(p))
        } else {
            match s.split_once(':') {
                // One colon and dotted digits: `<IPv4>:<port>`; anything else is parsed whole.
                Some((h, p))
                    if !p.contains(':') && h.bytes().all(|c| c.is_ascii_digit() || c == b'.') =>
                {
                    (h, Some(p))
                }
                _ => (s, None),
            }
        };
        if let Some(p) = port {
            if p.is_empty() || !p.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            match p.parse::<u16>() {
                Ok(n) if n >= 1 => {}
                _ => return None,
            }
        }
        go_ip(host)
    }

    fn selector_tag(field: &str, s: &str) -> Result<(), Invalid> {
        if s.is_empty() || selector_parses(s) {
            Ok(())
        } else {
            Err(format!("{field}: invalid selector {s:?}"))
        }
    }

    /// `BGPPeerSpec`: its field tags and `validateBGPPeerSpec`.
    fn bgp_peer(spec: &Value) -> Result<(), Invalid> {
        let node = str_of(spec, "node");
        let node_selector = str_of(spec, "nodeSelector");
        let peer_ip = str_of(spec, "peerIP");
        let peer_selector = str_of(spec, "peerSelector");
        let local_selector = str_of(spec, "localWorkloadSelector");
        let reachable_by = str_of(spec, "reachableBy");
        // `numorstring.ASNumber` reads a number or a string (`"64512"`, dotted `"1.10"`).
        let asn_set = match spec.get("asNumber") {
            Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
            Some(Value::String(s)) => s.bytes().any(|c| c.is_ascii_digit() && c != b'0'),
            _ => false,
        };
        if !node.is_empty() && !dns_subdomain(node) {
            return Err(format!("spec.node: invalid name {node:?}"));
        }
        selector_tag("spec.nodeSelector", node_selector)?;
        selector_tag("spec.peerSelector", peer_selector)?;
        selector_tag("spec.localWorkloadSelector", local_selector)?;
        if !peer_ip.is_empty() && ip_port(peer_ip).is_none() {
            return Err(format!(
                "spec.peerIP: {peer_ip:?} is not <IP>, <IPv4>:<port> or [<IPv6>]:<port>"
            ));
        }
        match str_of(spec, "sourceAddress") {
            "" | "UseNodeIP" | "None" => {}
            other => return Err(format!("spec.sourceAddress: invalid {other:?}")),
        }
        if !reachable_by.is_empty() && go_ip(reachable_by).is_none() {
            return Err(format!(
                "spec.reachableBy: {reachable_by:?} is not an address"
            ));
        }
        if let Some(filters) = spec.get("filters").and_then(Value::as_array) {
            for f in filters {
                let f = f.as_str().unwrap_or("");
                if !dns_subdomain(f) {
                    return Err(format!("spec.filters: invalid name {f:?}"));
                }
            }
        }
        let both = |a: &str, b: &str| !a.is_empty() && !b.is_empty();
        if both(node, node_selector) {
            return Err("Node field must be empty when NodeSelector is specified".into());
        }
        if both(peer_ip, peer_selector) {
            return Err("PeerIP field must be empty when PeerSelector is specified".into());
        }
        if asn_set && !peer_selector.is_empty() {
            return Err("ASNumber field must be empty when PeerSelector is specified".into());
        }
        if !asn_set && !local_selector.is_empty() {
            return Err(
                "ASNumber field must NOT be empty when LocalWorkloadSelector is specified".into(),
            );
        }
        if both(peer_ip, local_selector) {
            return Err(
                "PeerIP field must be empty when LocalWorkloadSelector is specified".into(),
            );
        }
        if both(peer_selector, local_selector) {
            return Err(
                "PeerSelector field must be empty when LocalWorkloadSelector is specified".into(),
            );
        }
        if !reachable_by.is_empty() {
            if peer_ip.is_empty() {
                return Err("ReachablyBy field must be empty when PeerIP is empty".into());
            }
            match (go_ip(reachable_by), ip_port(peer_ip)) {
                (Some(r), Some(p)) if r.is_ipv4() == p.is_ipv4() => {}
                _ => return Err("ReachableBy and PeerIP address family mismatched".into()),
            }
        }
        if spec.get("keepOriginalNextHop").and_then(Value::as_bool) == Some(true)
            && spec.get("nextHopMode").is_some_and(|m| !m.is_null())
        {
            return Err("KeepOriginalNextHop must not be true when NextHopMode is set".into());
        }
        Ok(())
    }

    /// `BGPFilterSpec`: every rule list is `dive`d; each rule's tags, `validateBGPFilterRule`
    /// and each operation's `validateBGPFilterOperation`.
    fn bgp_filter(spec: &Value) -> Result<(), Invalid> {
        for (list, v4) in [
            ("exportV4", true),
            ("importV4", true),
            ("exportV6", false),
            ("importV6", false),
        ] {
            let Some(rules) = spec.get(list).and_then(Value::as_array) else {
                continue;
            };
            for r in rules {
                bgp_filter_rule(list, r, v4)?;
            }
        }
        Ok(())
    }

    fn bgp_filter_rule(list: &str, r: &Value, v4: bool) -> Result<(), Invalid> {
        let cidr = str_of(r, "cidr");
        let op = str_of(r, "matchOperator");
        if !cidr.is_empty() {
            // netv4 / netv6: an address or a strictly masked network of that family.
            let ok = parse_cidr_or_ip(cidr)
                .is_some_and(|(ip, net)| ip.is_ipv4() == v4 && net.addr == ip);
            if !ok {
                return Err(format!(
                    "spec.{list}.cidr: {cidr:?} is not a masked network"
                ));
            }
        }
        if !matches!(op, "" | "Equal" | "In" | "NotEqual" | "NotIn") {
            return Err(format!("spec.{list}.matchOperator: invalid {op:?}"));
        }
        if !matches!(str_of(r, "action"), "Accept" | "Reject") {
            return Err(format!("spec.{list}.action must be Accept or Reject"));
        }
        if !matches!(str_of(r, "source"), "" | "RemotePeers") {
            return Err(format!("spec.{list}.source must be RemotePeers"));
        }
        if !matches!(str_of(r, "peerType"), "" | "eBGP" | "iBGP") {
            return Err(format!("spec.{list}.peerType must be eBGP or iBGP"));
        }
        let iface = str_of(r, "interface");
        let iface_ok = iface.is_empty()
            || iface == "*"
            || ((1..=15).contains(&iface.len())
                && iface
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'*' | b'-')));
        if !iface_ok {
            return Err(format!("spec.{list}.interface: invalid {iface:?}"));
        }
        let max = if v4 { 32 } else { 128 };
        let prefix = r.get("prefixLength").filter(|p| !p.is_null());
        if let Some(p) = prefix {
            for bound in ["min", "max"] {
                if let Some(n) = p.get(bound).filter(|n| !n.is_null()) {
                    if !n.as_i64().is_some_and(|n| (0..=max).contains(&n)) {
                        return Err(format!("spec.{list}.prefixLength.{bound}: invalid {n}"));
                    }
                }
            }
        }
        if !cidr.is_empty() && op.is_empty() {
            return Err("MatchOperator cannot be empty when CIDR is not".into());
        }
        if cidr.is_empty() && !op.is_empty() {
            return Err("CIDR cannot be empty when MatchOperator is not".into());
        }
        if cidr.is_empty() && prefix.is_some() {
            return Err("CIDR cannot be empty when PrefixLength is not".into());
        }
        if let Some(priority) = r.get("priority").filter(|p| !p.is_null()) {
            if !priority
                .as_i64()
                .is_some_and(|n| (1..=2_147_483_646).contains(&n))
            {
                return Err(format!("spec.{list}.priority: {priority} out of range"));
            }
        }
        for op in r
            .get("operations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let set = ["addCommunity", "prependASPath", "setPriority"]
                .iter()
                .filter(|k| op.get(**k).is_some_and(|x| !x.is_null()))
                .count();
            if set != 1 {
                return Err(format!(
                    "spec.{list}.operations: exactly one operation must be set"
                ));
            }
        }
        Ok(())
    }

    /// `validateFelixConfigSpec` (the struct-level checks; the field tags are enums and
    /// patterns the CRD schema also states).
    fn felix_configuration(spec: &Value) -> Result<(), Invalid> {
        if let Some(ranges) = spec.get("kubeNodePortRanges").and_then(Value::as_array) {
            if ranges.len() > 7 {
                return Err("kubeNodePortRanges: list is too long (max 7)".into());
            }
            for p in ranges {
                if let Some(s) = p.as_str() {
                    let numeric = s
                        .split(':')
                        .all(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()));
                    if !numeric {
                        return Err(format!("kubeNodePortRanges: named port {s:?}"));
                    }
                }
            }
        }
        for cidr in spec
            .get("externalNodesCIDRList")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let s = cidr.as_str().unwrap_or("");
            match parse_cidr_or_ip(s) {
                Some((ip, _)) if ip.is_ipv4() => {}
                Some(_) => return Err(format!("externalNodesCIDRList: IPv6 CIDR {s:?}")),
                None => return Err(format!("externalNodesCIDRList: invalid CIDR {s:?}")),
            }
        }
        let region = str_of(spec, "openstackRegion");
        if region.len() > 63 - "openstack-region-".len() {
            return Err("openstackRegion is too long".into());
        }
        if !region.is_empty() && !dns_label(region) {
            return Err(format!(
                "openstackRegion {region:?} must be a valid DNS label"
            ));
        }
        for (member, v4) in [
            ("natOutgoingAddress", true),
            ("deviceRouteSourceAddress", true),
            ("deviceRouteSourceAddressIPv6", false),
        ] {
            let s = str_of(spec, member);
            if !s.is_empty() && !go_ip(s).is_some_and(|ip| ip.is_ipv4() == v4) {
                return Err(format!("{member}: {s:?} is not a valid address"));
            }
        }
        if spec.get("routeTableRange").is_some_and(|r| !r.is_null())
            && spec.get("routeTableRanges").is_some_and(|r| !r.is_null())
        {
            return Err("routeTableRange cannot be set when routeTableRanges is also set".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(key: &str, v: &str) -> Result<(), Invalid> {
        validate(key, v.as_bytes())
    }

    const GNP: &str = "/calico/v1/policy/GlobalNetworkPolicy//p";

    #[test]
    fn rule_ports_need_a_protocol_that_has_ports() {
        let ok = r#"{"selector":"all()","inbound_rules":[{"action":"allow","protocol":"tcp","dst_ports":[80,"8000:9000"]}]}"#;
        assert_eq!(check(GNP, ok), Ok(()));
        let named =
            r#"{"selector":"all()","inbound_rules":[{"action":"allow","dst_ports":["http"]}]}"#;
        assert_eq!(check(GNP, named), Ok(()));
        let no_proto =
            r#"{"selector":"all()","inbound_rules":[{"action":"allow","dst_ports":[80]}]}"#;
        assert!(check(GNP, no_proto).is_err());
        let icmp = r#"{"selector":"all()","outbound_rules":[{"action":"allow","protocol":"icmp","src_ports":["http"]}]}"#;
        assert!(check(GNP, icmp).is_err());
        let bad_range = r#"{"selector":"all()","inbound_rules":[{"action":"allow","protocol":"udp","dst_ports":["90:80"]}]}"#;
        assert!(check(GNP, bad_range).is_err());
        let profile = r#"{"inbound_rules":[{"action":"allow","dst_ports":[22]}]}"#;
        assert!(check("/calico/v1/policy/profile/kns.x/rules", profile).is_err());
    }

    #[test]
    fn selectors_protocols_icmp_and_hints() {
        assert!(check(GNP, r#"{"selector":"a =="}"#).is_err());
        assert!(check(GNP, r#"{"selector":"a == 'b'","inbound_rules":[{"action":"allow","src_selector":"x in {"}]}"#).is_err());
        assert!(check(
            GNP,
            r#"{"selector":"all()","inbound_rules":[{"action":"allow","protocol":"gre"}]}"#
        )
        .is_err());
        assert!(check(GNP, r#"{"selector":"all()","inbound_rules":[{"action":"allow","protocol":"icmp","icmp_type":255}]}"#).is_err());
        assert!(check(
            GNP,
            r#"{"selector":"all()","inbound_rules":[{"action":"allow","ip_version":5}]}"#
        )
        .is_err());
        assert!(check(GNP, r#"{"selector":"all()","performance_hints":["Fast"]}"#).is_err());
        assert_eq!(
            check(
                GNP,
                r#"{"selector":"a == 'b' \u0026\u0026 has(c)","inbound_rules":[{"action":"allow","protocol":1,"icmp_type":8,"icmp_code":0}]}"#
            ),
            Ok(())
        );
        // Tiers are not rules: never checked here.
        assert_eq!(check("/calico/v1/policy/tier/t/metadata", "{}"), Ok(()));
    }

    #[test]
    fn endpoints_and_network_sets() {
        let wep = "/calico/v1/host/n/workload/k8s/ns%2fp/endpoint/eth0";
        assert_eq!(
            check(
                wep,
                r#"{"name":"cali1","ports":[{"name":"h","protocol":"tcp","port":80}]}"#
            ),
            Ok(())
        );
        assert!(check(wep, r#"{"name":"","ports":[]}"#).is_err());
        assert!(check(
            wep,
            r#"{"name":"cali1","ports":[{"name":"h","protocol":"icmp","port":80}]}"#
        )
        .is_err());
        let hep = "/calico/v1/host/n/endpoint/e";
        assert_eq!(
            check(
                hep,
                r#"{"name":"eth0","labels":{"a.b/c":"d"},"profile_ids":["p"]}"#
            ),
            Ok(())
        );
        assert_eq!(check(hep, r#"{"name":"*","labels":null}"#), Ok(()));
        assert!(check(
            hep,
            r#"{"name":"a-very-long-interface-name","labels":null}"#
        )
        .is_err());
        // Labels are not validated (see the module documentation); profile IDs are.
        assert_eq!(
            check(hep, r#"{"name":"eth0","labels":{"a":"-odd"}}"#),
            Ok(())
        );
        assert!(check(
            hep,
            r#"{"name":"eth0","labels":null,"profile_ids":["bad id"]}"#
        )
        .is_err());
        assert!(check(
            "/calico/v1/netset/s",
            r#"{"nets":["10.0.0.0/8"],"labels":null,"profile_ids":["kns.a b"]}"#
        )
        .is_err());
        assert_eq!(
            check(
                "/calico/v1/netset/s",
                r#"{"nets":["10.0.0.0/8"],"labels":null}"#
            ),
            Ok(())
        );
        // Keys outside the validated families are not looked at.
        assert_eq!(check("/calico/v1/config/LogSeverityScreen", "Info"), Ok(()));
    }

    const V3: &str = "/calico/resources/v3/projectcalico.org/";

    fn v3(plural: &str, v: serde_json::Value) -> Result<(), Invalid> {
        validate(&format!("{V3}{plural}/x"), v.to_string().as_bytes())
    }

    fn meta(name: &str) -> serde_json::Value {
        serde_json::json!({"name": name})
    }

    #[test]
    fn v3_object_meta_names_labels_and_annotations() {
        use serde_json::json;
        let ok = json!({"metadata": {"name": "kns.shop", "labels": {"a.b/c": "d", "e": ""},
            "annotations": {"Example.COM/Key": "anything at all"}}});
        assert_eq!(v3("profiles", ok), Ok(()));
        assert!(v3("profiles", json!({"metadata": meta("Upper")})).is_err());
        assert!(v3("profiles", json!({"metadata": meta("")})).is_err());
        assert!(v3("profiles", json!({"metadata": meta(&"a".repeat(254))})).is_err());
        assert_eq!(
            v3("profiles", json!({"metadata": meta(&"a".repeat(253))})),
            Ok(())
        );
        for bad_labels in [
            json!({"bad key": "x"}),
            json!({"a/b/c": "x"}),
            json!({"-a": "x"}),
            json!({"x": "-v"}),
            json!({"x": "v".repeat(64)}),
            json!({"x".repeat(64): "v"}),
        ] {
            let v = json!({"metadata": {"name": "n", "labels": bad_labels}});
            assert!(v3("nodes", v).is_err());
        }
        let huge = json!({"metadata": {"name": "n", "annotations": {"k": "x".repeat(256 * 1024)}}});
        assert!(v3("kubernetesservice", huge).is_err());
        let bad_key = json!({"metadata": {"name": "n", "annotations": {"a b": "x"}}});
        assert!(v3("livemigrations", bad_key).is_err());
    }

    #[test]
    fn v3_profile_labels_to_apply() {
        use serde_json::json;
        let ok = json!({"metadata": meta("ksa.shop.sa"),
            "spec": {"labelsToApply": {"pcsa.projectcalico.org/name": "sa"}}});
        assert_eq!(v3("profiles", ok), Ok(()));
        let long_value = json!({"metadata": meta("ksa.shop.sa"),
            "spec": {"labelsToApply": {"pcsa.projectcalico.org/name": "s".repeat(64)}}});
        assert!(v3("profiles", long_value).is_err());
        let long_key = json!({"metadata": meta("kns.shop"),
            "spec": {"labelsToApply": {format!("pcns.{}", "k".repeat(59)): "v"}}});
        assert!(v3("profiles", long_key).is_err());
    }

    #[test]
    fn v3_node_addresses_and_wireguard_keys() {
        use serde_json::json;
        let key = "jlkVyQYooZYzI2wFfNhSZez5eWh44yfq1wKVjLvSXgY=";
        let ok = json!({"metadata": meta("n"), "spec": {"bgp": {"ipv4Address": "10.0.0.1/24",
            "ipv4IPIPTunnelAddr": "10.244.0.1"}, "ipv6VXLANTunnelAddr": "fd00::1",
            "addresses": [{"address": "10.0.0.1/24"}], "interfaces": [{"name": "Not_A_Name"}]},
            "status": {"wireguardPublicKey": key}});
        assert_eq!(v3("nodes", ok), Ok(()));
        for spec in [
            json!({"bgp": {"ipv4IPIPTunnelAddr": "10.244.0.1/32"}}),
            json!({"bgp": {"routeReflectorClusterID": "fd00::1"}}),
            json!({"ipv4VXLANTunnelAddr": "10.0.0.300"}),
            json!({"ipv6VXLANTunnelAddr": "10.0.0.1"}),
            json!({"wireguard": {"interfaceIPv4Address": "10.0.0.1/32"}}),
            json!({"wireguard": {"interfaceIPv6Address": "10.0.0.1"}}),
        ] {
            assert!(v3("nodes", json!({"metadata": meta("n"), "spec": spec})).is_err());
        }
        for bad in ["not-a-key", &key[..43], &format!("{key}A")] {
            let v = json!({"metadata": meta("n"), "status": {"wireguardPublicKeyV6": bad}});
            assert!(v3("nodes", v).is_err(), "{bad}");
        }
    }

    #[test]
    fn v3_bgp_peer_rules() {
        use serde_json::json;
        let peer =
            |spec: serde_json::Value| v3("bgppeers", json!({"metadata": meta("p"), "spec": spec}));
        assert_eq!(
            peer(json!({"peerIP": "192.0.2.1:179", "asNumber": 64512, "nodeSelector": "all()"})),
            Ok(())
        );
        assert_eq!(
            peer(json!({"peerIP": "[fd00::1]:179", "asNumber": "1.10", "reachableBy": "fd00::fe"})),
            Ok(())
        );
        assert_eq!(
            peer(json!({"localWorkloadSelector": "a == 'b'", "asNumber": "64512"})),
            Ok(())
        );
        for bad in [
            json!({"node": "n1", "nodeSelector": "all()"}),
            json!({"peerIP": "192.0.2.1", "peerSelector": "all()"}),
            json!({"peerSelector": "all()", "asNumber": 64512}),
            json!({"localWorkloadSelector": "all()"}),
            json!({"localWorkloadSelector": "all()", "asNumber": 1, "peerIP": "192.0.2.1"}),
            json!({"localWorkloadSelector": "all()", "asNumber": 1, "peerSelector": "all()"}),
            json!({"reachableBy": "192.0.2.254"}),
            json!({"peerIP": "fd00::1", "reachableBy": "192.0.2.254"}),
            json!({"peerIP": "192.0.2.1:0"}),
            json!({"peerIP": "192.0.2.1:65536"}),
            json!({"peerIP": "peer.example.com"}),
            json!({"nodeSelector": "a =="}),
            json!({"node": "Node_1"}),
            json!({"sourceAddress": "Other"}),
            json!({"filters": ["Bad_Filter"]}),
            json!({"keepOriginalNextHop": true, "nextHopMode": "Self"}),
        ] {
            assert!(peer(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn v3_bgp_filter_rules() {
        use serde_json::json;
        let filter = |spec: serde_json::Value| {
            v3("bgpfilters", json!({"metadata": meta("f"), "spec": spec}))
        };
        assert_eq!(
            filter(
                json!({"exportV4": [{"cidr": "10.0.0.0/8", "matchOperator": "In",
            "prefixLength": {"min": 8, "max": 32}, "action": "Accept", "interface": "eth*",
            "operations": [{"setPriority": {"value": 5}}]}],
            "importV6": [{"cidr": "fd00::/8", "matchOperator": "NotIn", "action": "Reject"}]})
            ),
            Ok(())
        );
        for bad in [
            json!({"exportV4": [{"cidr": "10.0.0.1/8", "matchOperator": "In", "action": "Accept"}]}),
            json!({"exportV4": [{"cidr": "fd00::/8", "matchOperator": "In", "action": "Accept"}]}),
            json!({"exportV4": [{"cidr": "10.0.0.0/8", "action": "Accept"}]}),
            json!({"exportV4": [{"matchOperator": "In", "action": "Accept"}]}),
            json!({"exportV4": [{"prefixLength": {"max": 24}, "action": "Accept"}]}),
            json!({"exportV4": [{"cidr": "10.0.0.0/8", "matchOperator": "In", "prefixLength": {"max": 33}, "action": "Accept"}]}),
            json!({"importV6": [{"cidr": "fd00::/8", "matchOperator": "In", "prefixLength": {"min": 129}, "action": "Accept"}]}),
            json!({"importV4": [{"action": "Allow"}]}),
            json!({"importV4": [{"action": "Accept", "matchOperator": "Like", "cidr": "10.0.0.0/8"}]}),
            json!({"importV4": [{"action": "Accept", "interface": "a-very-long-interface"}]}),
            json!({"importV4": [{"action": "Accept", "peerType": "BGP"}]}),
            json!({"importV4": [{"action": "Accept", "source": "Peers"}]}),
            json!({"importV4": [{"action": "Accept", "priority": 0}]}),
            json!({"importV4": [{"action": "Accept", "operations": [{}]}]}),
            json!({"importV4": [{"action": "Accept", "operations": [{"setPriority": {"value": 1}, "addCommunity": {"value": "1:1"}}]}]}),
        ] {
            assert!(filter(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn v3_felix_configuration_struct_checks() {
        use serde_json::json;
        let fc = |spec: serde_json::Value| {
            v3(
                "felixconfigurations",
                json!({"metadata": meta("gpu"), "spec": spec}),
            )
        };
        assert_eq!(
            fc(json!({"kubeNodePortRanges": [30000, "31000:32000"],
            "externalNodesCIDRList": ["10.0.0.0/8", "192.0.2.1"], "openstackRegion": "region-1",
            "natOutgoingAddress": "192.0.2.9", "deviceRouteSourceAddressIPv6": "fd00::9",
            "routeTableRanges": [{"min": 1, "max": 250}]})),
            Ok(())
        );
        for bad in [
            json!({"kubeNodePortRanges": [1, 2, 3, 4, 5, 6, 7, 8]}),
            json!({"kubeNodePortRanges": ["http"]}),
            json!({"externalNodesCIDRList": ["fd00::/8"]}),
            json!({"externalNodesCIDRList": ["10.0.0.0/33"]}),
            json!({"openstackRegion": "Region_1"}),
            json!({"openstackRegion": "r".repeat(47)}),
            json!({"natOutgoingAddress": "fd00::1"}),
            json!({"deviceRouteSourceAddress": "not-an-ip"}),
            json!({"deviceRouteSourceAddressIPv6": "192.0.2.1"}),
            json!({"routeTableRange": {"min": 1, "max": 250}, "routeTableRanges": [{"min": 1, "max": 250}]}),
        ] {
            assert!(fc(bad.clone()).is_err(), "{bad}");
        }
    }

    /// The v1 values' IP and CIDR tags sit on Calico's `net.IP`/`net.IPNet` structs, which the
    /// validator library does not apply tags to: only the translators' parsing decides (pinned
    /// by the parity fixtures hostendpoint/bad-expected-ip, globalnetworkset/bad-net,
    /// globalnetworkpolicy/bad-rule-net, ippool/bad-cidr). Validation never looks at them.
    #[test]
    fn v1_ip_and_cidr_fields_are_not_validated() {
        assert_eq!(
            check(
                "/calico/v1/host/n/endpoint/e",
                r#"{"name":"eth0","expected_ipv4_addrs":["10.0.0.300"],"labels":null}"#
            ),
            Ok(())
        );
        assert_eq!(
            check("/calico/v1/netset/s", r#"{"nets":["10.0.0.0/33"]}"#),
            Ok(())
        );
        assert_eq!(
            check(
                GNP,
                r#"{"selector":"all()","inbound_rules":[{"action":"allow","src_nets":["x"]}]}"#
            ),
            Ok(())
        );
        assert_eq!(
            check(
                "/calico/v1/host/n/workload/k8s/ns%2fp/endpoint/eth0",
                r#"{"name":"cali1","ipv4_nets":["bad"],"ipv4_gateway":"bad"}"#
            ),
            Ok(())
        );
    }
}
