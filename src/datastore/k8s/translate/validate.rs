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
//! Not covered: the v3 validator, which Typha runs on raw v3 values (nodes, profiles, BGP
//! resources, selector-scoped FelixConfiguration): its rules match what the API server's CRD
//! schemas and Calico's own clients already enforce on write, so objects that break them are
//! rare; they are sent as translated. Also not covered: the IP and CIDR tags of v1 values
//! (`ipv4_gateway`, NAT addresses, expected IPs, nets), because the translators only ever put
//! parsed addresses there.

use super::policy::selector_parses;
use serde_json::Value;

/// Why a value fails validation, for the log.
pub type Invalid = String;

/// Checks one translated pair as Typha's validation filter would; `Err` means Typha sends the
/// key as missing.
pub fn validate(key: &str, value: &[u8]) -> Result<(), Invalid> {
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
}
