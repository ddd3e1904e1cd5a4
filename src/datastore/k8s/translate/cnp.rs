//! Kubernetes ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`, network-policy-api
//! v0.2.0) converted to the v1 `Policy` Felix consumes (3.32+, KDD only).
//!
//! Calico converts the object into a v3 GlobalNetworkPolicy
//! (`k8s/conversion/clusternetworkpolicy.go`, K8sClusterNetworkPolicyToCalico) and runs that
//! through the GlobalNetworkPolicy update processor
//! (`updateprocessors/globalnetworkpolicyprocessor.go`, `rules.go`). Both steps are done here
//! in one go:
//!
//! * Key `/calico/v1/policy/KubernetesClusterNetworkPolicy//<name>` (global: empty namespace
//!   segment).
//! * Tier `kube-admin` (spec.tier `Admin`) or `kube-baseline` (`Baseline`); order
//!   `spec.priority`. Any other tier, or a subject with neither `namespaces` nor `pods`, makes
//!   Calico emit a tombstone (a delete); here it is an error, which the driver also turns into
//!   a delete.
//! * Subject: `namespaces` gives the selector `projectcalico.org/orchestrator == 'k8s'` plus the
//!   namespace selector; `pods` gives the pod selector (with the orchestrator term first) plus
//!   its namespace selector. The processor ANDs the namespace selector in with `pcns.` labels in
//!   Calico's canonical selector form and turns `all()` into `has(projectcalico.org/namespace)`.
//! * Rules: actions Accept → `allow`, Deny → `deny`, Pass → `next-tier`. One rule per protocol
//!   (sorted: none, SCTP, TCP, UDP) and per peer; destination ports merged into ranges
//!   (`SimplifyPorts`); a named port goes in a rule without a protocol. The rule's `name` is
//!   the annotation `name` in the rule metadata.
//! * Peers: `namespaces`, `pods` and (egress) `networks`. A rule Calico cannot convert (an
//!   unknown action, a bad port range or named port, an invalid CIDR, or a peer with none of
//!   those fields, such as the experimental `nodes` and `domainNames` peers) is dropped when
//!   its action is Accept and replaced by a bare deny-all rule when its action is Deny or Pass
//!   (the "fail closed" rule of the API). This is what Calico's List produces; on a watch event
//!   Calico raises a watch error instead, which ends in a relist and the same result.
//! * Types: `ingress` / `egress` only when there are inbound / outbound rules.

use super::core::{parse_cidr, to_bytes, GoFloat};
use super::policy::{simplify_ports, Port};
use super::{name, Kv, TranslateError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

const KIND: &str = "KubernetesClusterNetworkPolicy";
const TIER_ADMIN: &str = "kube-admin";
const TIER_BASELINE: &str = "kube-baseline";
/// `conversion.K8sCNPRuleNameLabel`: the rule annotation holding the CNP rule's name.
const RULE_NAME_ANNOTATION: &str = "name";
const ORCHESTRATOR_K8S: &str = "projectcalico.org/orchestrator == 'k8s'";
const NAMESPACE_LABEL_PREFIX: &str = "pcns.";
const HAS_NAMESPACE: &str = "has(projectcalico.org/namespace)";
const NOT_HAS_NAMESPACE: &str = "!has(projectcalico.org/namespace)";
/// Calico's selector tokenizer rejects longer labels.
const MAX_LABEL_LENGTH: usize = 512;

// ---------------------------------------------------------------------------------------------
// The v1alpha2 types (`sigs.k8s.io/network-policy-api/apis/v1alpha2`), as far as Calico reads
// them. Go decodes `null` as the zero value, hence the `Option`s; unknown fields are ignored.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    tier: Option<String>,
    priority: Option<i32>,
    subject: Option<Subject>,
    ingress: Option<Vec<IngressRule>>,
    egress: Option<Vec<EgressRule>>,
}

#[derive(Debug, Default, Deserialize)]
struct Subject {
    namespaces: Option<LabelSelector>,
    pods: Option<NamespacedPod>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NamespacedPod {
    namespace_selector: Option<LabelSelector>,
    pod_selector: Option<LabelSelector>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LabelSelector {
    match_labels: Option<BTreeMap<String, Option<String>>>,
    match_expressions: Option<Vec<Requirement>>,
}

#[derive(Debug, Default, Deserialize)]
struct Requirement {
    key: Option<String>,
    operator: Option<String>,
    values: Option<Vec<Option<String>>>,
}

#[derive(Debug, Default, Deserialize)]
struct IngressRule {
    name: Option<String>,
    action: Option<String>,
    from: Option<Vec<IngressPeer>>,
    protocols: Option<Vec<Protocol>>,
}

#[derive(Debug, Default, Deserialize)]
struct EgressRule {
    name: Option<String>,
    action: Option<String>,
    to: Option<Vec<EgressPeer>>,
    protocols: Option<Vec<Protocol>>,
}

#[derive(Debug, Default, Deserialize)]
struct IngressPeer {
    namespaces: Option<LabelSelector>,
    pods: Option<NamespacedPod>,
}

/// `nodes` and `domainNames` (experimental channel) are not read by Calico.
#[derive(Debug, Default, Deserialize)]
struct EgressPeer {
    namespaces: Option<LabelSelector>,
    pods: Option<NamespacedPod>,
    networks: Option<Vec<Option<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Protocol {
    tcp: Option<ProtocolPort>,
    udp: Option<ProtocolPort>,
    sctp: Option<ProtocolPort>,
    destination_named_port: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProtocolPort {
    destination_port: Option<PortSpec>,
}

#[derive(Debug, Default, Deserialize)]
struct PortSpec {
    number: Option<i32>,
    range: Option<PortRange>,
}

#[derive(Debug, Default, Deserialize)]
struct PortRange {
    start: Option<i32>,
    end: Option<i32>,
}

fn text(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("")
}

// ---------------------------------------------------------------------------------------------
// Selectors
// ---------------------------------------------------------------------------------------------

/// One term of a label selector (`k8sSelectorToCalico`).
#[derive(Debug, Clone, PartialEq)]
enum Term {
    Eq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Has(String),
    NotHas(String),
}

impl Term {
    /// The term as `k8sSelectorToCalico` writes it.
    fn k8s(&self) -> String {
        match self {
            Term::Eq(k, v) => format!("{k} == '{v}'"),
            Term::In(k, vs) => format!("{k} in {{ '{}' }}", vs.join("', '")),
            Term::NotIn(k, vs) => format!("{k} not in {{ '{}' }}", vs.join("', '")),
            Term::Has(k) => format!("has({k})"),
            Term::NotHas(k) => format!("! has({k})"),
        }
    }

    /// The term with `prefix` on its label, printed as Calico's selector parser prints it
    /// (`parseSelectorAttachPrefix`), or `None` when the parser would reject the text
    /// [`Term::k8s`] produces (a label that is not an identifier, a value holding a `'`).
    /// Built from the label selector instead of by parsing that text; the two agree except for
    /// crafted keys or values that turn the text into another valid selector (a value such as
    /// `x' || has(b) || a == 'y`), which Calico prints as that selector and this drops.
    fn canonical(&self, prefix: &str) -> Option<String> {
        fn quoted(v: &str) -> String {
            if v.contains('"') {
                format!("'{v}'")
            } else {
                format!("\"{v}\"")
            }
        }
        fn set(vs: &[String]) -> String {
            // `k in { '' }` when there are no values; the parser sorts and dedupes the set.
            let mut vs: Vec<&str> = vs.iter().map(String::as_str).collect();
            if vs.is_empty() {
                vs.push("");
            }
            vs.sort_unstable();
            vs.dedup();
            let vs: Vec<String> = vs.into_iter().map(quoted).collect();
            format!("{{{}}}", vs.join(", "))
        }
        let (key, values): (&str, &[String]) = match self {
            Term::Eq(k, v) => (k, std::slice::from_ref(v)),
            Term::In(k, vs) | Term::NotIn(k, vs) => (k, vs),
            Term::Has(k) | Term::NotHas(k) => (k, &[]),
        };
        if values.iter().any(|v| v.contains('\'')) {
            return None;
        }
        if let Term::NotIn(k, vs) = self {
            if k.is_empty() {
                // `k8sSelectorToCalico` writes ` not in { ... }`, which the tokenizer reads as
                // the label `not` followed by the operator `in`.
                return Some(format!("{prefix}not in {}", set(vs)));
            }
        }
        let ident = !key.is_empty()
            && key.len() <= MAX_LABEL_LENGTH
            && key
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'/' | b'-'));
        if !ident {
            return None;
        }
        Some(match self {
            Term::Eq(k, v) => format!("{prefix}{k} == {}", quoted(v)),
            Term::In(k, vs) => format!("{prefix}{k} in {}", set(vs)),
            Term::NotIn(k, vs) => format!("{prefix}{k} not in {}", set(vs)),
            Term::Has(k) => format!("has({prefix}{k})"),
            Term::NotHas(k) => format!("!has({prefix}{k})"),
        })
    }
}

/// The terms of a label selector: `matchLabels` sorted by key, then `matchExpressions` in
/// order; expressions with another operator are skipped, as Calico does.
fn terms(sel: &LabelSelector) -> Vec<Term> {
    let mut out: Vec<Term> = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| Term::Eq(k.clone(), text(v).to_string()))
        .collect();
    for e in sel.match_expressions.iter().flatten() {
        let key = text(&e.key).to_string();
        let values = || -> Vec<String> {
            e.values
                .iter()
                .flatten()
                .map(|v| text(v).to_string())
                .collect()
        };
        match text(&e.operator) {
            "In" => out.push(Term::In(key, values())),
            "NotIn" => out.push(Term::NotIn(key, values())),
            "Exists" => out.push(Term::Has(key)),
            "DoesNotExist" => out.push(Term::NotHas(key)),
            _ => {}
        }
    }
    out
}

/// A pod selector: `projectcalico.org/orchestrator == 'k8s'`, then the selector's terms.
fn pod_selector(sel: Option<&LabelSelector>) -> String {
    let mut parts = vec![ORCHESTRATOR_K8S.to_string()];
    if let Some(sel) = sel {
        parts.extend(terms(sel).iter().map(Term::k8s));
    }
    parts.join(" && ")
}

/// A namespace selector in its two forms.
#[derive(Debug, Clone, PartialEq)]
struct NsSelector {
    /// As the v3 GlobalNetworkPolicy holds it (`k8sSelectorToCalico`): `all()` for an empty
    /// selector, `""` when every expression was skipped (which means "no namespace selector").
    text: String,
    /// `text` with the `pcns.` prefix in canonical form, `""` when Calico cannot parse `text`.
    prefixed: String,
}

fn namespace_selector(sel: &LabelSelector) -> NsSelector {
    let no_labels = sel.match_labels.as_ref().map_or(true, BTreeMap::is_empty);
    let no_exprs = sel.match_expressions.as_ref().map_or(true, Vec::is_empty);
    if no_labels && no_exprs {
        return NsSelector {
            text: "all()".to_string(),
            prefixed: "all()".to_string(),
        };
    }
    let terms = terms(sel);
    let text = terms.iter().map(Term::k8s).collect::<Vec<_>>().join(" && ");
    let canonical: Option<Vec<String>> = terms
        .iter()
        .map(|t| t.canonical(NAMESPACE_LABEL_PREFIX))
        .collect();
    let prefixed = match canonical {
        Some(c) if c.len() == 1 => c.concat(),
        Some(c) if !c.is_empty() => format!("({})", c.join(" && ")),
        _ => String::new(),
    };
    NsSelector { text, prefixed }
}

/// `getEndpointSelector` for a global policy: the rule's selector scoped by its namespace
/// selector.
fn rule_selector(ns: Option<&NsSelector>, selector: &str) -> String {
    let ns_sel = match ns {
        Some(ns) if !ns.text.is_empty() => ns
            .prefixed
            .replace("all()", HAS_NAMESPACE)
            .replace("global()", NOT_HAS_NAMESPACE),
        _ => String::new(),
    };
    match (ns_sel.is_empty(), selector.is_empty()) {
        (true, _) => selector.to_string(),
        (false, true) => ns_sel,
        (false, false) => format!("({ns_sel}) && ({selector})"),
    }
}

/// `ConvertGlobalNetworkPolicyV3ToV1Value`'s selector: the subject's pod selector with its
/// namespace selector ANDed in.
fn policy_selector(pod: String, ns: &NsSelector) -> String {
    if ns.text.is_empty() {
        return pod;
    }
    let selector = if ns.prefixed.is_empty() {
        pod
    } else {
        format!("({pod}) && {}", ns.prefixed)
    };
    selector.replace("all()", HAS_NAMESPACE)
}

// ---------------------------------------------------------------------------------------------
// Ports and protocols
// ---------------------------------------------------------------------------------------------

/// `k8sCNPPortToCalico`: `None` means every port. Go converts the int32 fields with
/// `uint16(...)`, which the `as` casts reproduce.
fn destination_port(p: Option<&ProtocolPort>) -> Result<Option<Port>, String> {
    let Some(port) = p.and_then(|p| p.destination_port.as_ref()) else {
        return Ok(None);
    };
    let number = port.number.unwrap_or(0);
    if number != 0 {
        return Ok(Some(Port::Range(number as u16, number as u16)));
    }
    if let Some(r) = &port.range {
        let (min, max) = (r.start.unwrap_or(0) as u16, r.end.unwrap_or(0) as u16);
        if min > max {
            return Err(format!(
                "minimum port number ({min}) is greater than maximum port number ({max}) in port range"
            ));
        }
        return Ok(Some(Port::Range(min, max)));
    }
    Ok(None)
}

/// `k8sCNPPortToCalicoFields`: the protocol (Calico's canonical name) and destination port.
fn protocol_fields(p: &Protocol) -> Result<(Option<&'static str>, Option<Port>), String> {
    for (proto, name) in [(&p.tcp, "TCP"), (&p.udp, "UDP"), (&p.sctp, "SCTP")] {
        if let Some(proto) = proto {
            return Ok((Some(name), destination_port(Some(proto))?));
        }
    }
    let named = text(&p.destination_named_port);
    if !named.is_empty() {
        // `numorstring.NamedPort`.
        let valid = named.len() <= 128
            && named
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !valid {
            return Err(format!("invalid name for named port ({named})"));
        }
        return Ok((None, Some(Port::Named(named.to_string()))));
    }
    Ok((None, None))
}

/// `unpackCNPProtocols`: protocol (`""` for none) → destination ports (`None`: every port),
/// in sorted protocol order.
fn unpack_protocols(
    protocols: Option<&[Protocol]>,
) -> Result<BTreeMap<&'static str, Option<Vec<Port>>>, String> {
    let default = [Protocol::default()];
    let protocols = match protocols {
        Some(p) if !p.is_empty() => p,
        _ => &default,
    };
    let mut out: BTreeMap<&'static str, Option<Vec<Port>>> = BTreeMap::new();
    for p in protocols {
        let (proto, port) =
            protocol_fields(p).map_err(|e| format!("failed to parse k8s protocol: {e}"))?;
        let key = proto.unwrap_or("");
        match port {
            None if proto.is_none() => {
                // An entry matching everything: one rule with no protocol and no ports.
                out = BTreeMap::from([("", None)]);
                break;
            }
            None => {
                out.insert(key, None);
            }
            Some(port) => match out.get_mut(key) {
                None => {
                    out.insert(key, Some(vec![port]));
                }
                Some(Some(ports)) => ports.push(port),
                Some(None) => {}
            },
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Rules
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize)]
struct RuleMetadata {
    annotations: BTreeMap<String, String>,
}

/// The v1 `Rule` fields (`model/rule.go`) a converted CNP rule can set, in Go's order.
#[derive(Debug, Default, Serialize)]
struct Rule {
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<&'static str>,
    #[serde(skip_serializing_if = "String::is_empty")]
    src_selector: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    dst_selector: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    dst_nets: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    dst_ports: Vec<Value>,
    #[serde(skip_serializing_if = "String::is_empty")]
    orig_src_selector: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    orig_src_namespace_selector: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    orig_dst_selector: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    orig_dst_namespace_selector: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<RuleMetadata>,
}

/// `K8sClusterNetworkPolicyActionToCalico`, then `ruleActionAPIV3ToBackend`.
fn action_v1(action: &str) -> Result<&'static str, String> {
    match action {
        "Accept" => Ok("allow"),
        "Deny" => Ok("deny"),
        "Pass" => Ok("next-tier"),
        _ => Err(format!(
            "unsupported cluster network policy action {action}"
        )),
    }
}

/// `k8sClusterNetPolHandleFailedRules`: a Deny or Pass rule that cannot be converted becomes
/// a bare deny-all rule; an Accept (or unknown) rule is dropped.
fn fail_closed(action: &str) -> Option<Rule> {
    matches!(action, "Deny" | "Pass").then(|| Rule {
        action: "deny",
        ..Rule::default()
    })
}

/// A converted peer: the v3 entity's selector, namespace selector and nets.
struct Peer {
    selector: String,
    namespace: Option<NsSelector>,
    nets: Vec<String>,
}

/// One peer of a rule; `Err` when it has none of the fields Calico supports.
fn peer(
    namespaces: Option<&LabelSelector>,
    pods: Option<&NamespacedPod>,
    networks: &[Option<String>],
    field: &str,
) -> Result<Peer, String> {
    let mut out = Peer {
        selector: String::new(),
        namespace: None,
        nets: Vec::new(),
    };
    let mut found = false;
    if let Some(ns) = namespaces {
        out.namespace = Some(namespace_selector(ns));
        found = true;
    }
    if let Some(p) = pods {
        out.selector = pod_selector(Some(p.pod_selector.as_ref().unwrap_or(&EMPTY)));
        out.namespace = Some(namespace_selector(
            p.namespace_selector.as_ref().unwrap_or(&EMPTY),
        ));
        found = true;
    }
    if !networks.is_empty() {
        for n in networks {
            let n = text(n);
            // The v3 rule holds the masked network; the v1 conversion re-parses it, which
            // changes nothing.
            let (_, net) = parse_cidr(n)
                .ok_or_else(|| format!("invalid CIDR in ANP rule: invalid CIDR address: {n}"))?;
            out.nets.push(net.to_string());
        }
        found = true;
    }
    if !found {
        return Err(format!("none of supported fields in '{field}' is set."));
    }
    Ok(out)
}

/// An empty label selector (Go's zero value for the non-pointer selectors of `pods`).
const EMPTY: LabelSelector = LabelSelector {
    match_labels: None,
    match_expressions: None,
};

fn rule_metadata(name: &str) -> Option<RuleMetadata> {
    (!name.is_empty()).then(|| RuleMetadata {
        annotations: BTreeMap::from([(RULE_NAME_ANNOTATION.to_string(), name.to_string())]),
    })
}

/// Converts one CNP rule (`k8sClusterNetPol{Ingress,Egress}RuleToCalico` and
/// `combinePortsWithCNP{Ingress,Egress}Peers`: one rule per protocol and peer); `Err` is
/// Calico's conversion error for the whole rule.
fn rule_v1(
    name: &str,
    action: &str,
    protocols: Option<&[Protocol]>,
    peers: &[Result<Peer, String>],
    ingress: bool,
) -> Result<Vec<Rule>, String> {
    let action = action_v1(action)?;
    let protocols = unpack_protocols(protocols)?;
    let mut rules = Vec::new();
    for (proto, ports) in protocols {
        let ports: Vec<Value> = simplify_ports(ports.unwrap_or_default())
            .iter()
            .map(Port::to_json)
            .collect();
        let protocol = match proto {
            "TCP" => Some("tcp"),
            "UDP" => Some("udp"),
            "SCTP" => Some("sctp"),
            _ => None,
        };
        for p in peers {
            let p = p.as_ref().map_err(String::clone)?;
            let selector = rule_selector(p.namespace.as_ref(), &p.selector);
            let ns_text = p
                .namespace
                .as_ref()
                .map(|n| n.text.clone())
                .unwrap_or_default();
            let mut rule = Rule {
                action,
                protocol,
                dst_ports: ports.clone(),
                metadata: rule_metadata(name),
                ..Rule::default()
            };
            if ingress {
                rule.src_selector = selector;
                rule.orig_src_selector = p.selector.clone();
                rule.orig_src_namespace_selector = ns_text;
            } else {
                rule.dst_selector = selector;
                rule.dst_nets = p.nets.clone();
                rule.orig_dst_selector = p.selector.clone();
                rule.orig_dst_namespace_selector = ns_text;
            }
            rules.push(rule);
        }
    }
    Ok(rules)
}

// ---------------------------------------------------------------------------------------------
// The policy
// ---------------------------------------------------------------------------------------------

/// The v1 `Policy` fields (`model/policy.go`) a CNP sets, in Go's order.
#[derive(Debug, Serialize)]
struct PolicyValue {
    tier: &'static str,
    order: GoFloat,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    inbound_rules: Vec<Rule>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    outbound_rules: Vec<Rule>,
    selector: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    types: Vec<&'static str>,
}

/// Translates a Kubernetes ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`) into
/// `/calico/v1/policy/KubernetesClusterNetworkPolicy//<name>`: a global v1 Policy in tier
/// `kube-admin` or `kube-baseline` with order `spec.priority`, converted as Calico 3.32 does
/// (see the module documentation). A missing spec, an unknown tier or an empty subject is an
/// error (Calico emits a delete for the last two); rules Calico cannot convert are dropped
/// (Accept) or replaced by a deny-all rule (Deny, Pass).
pub fn translate_k8s_cluster_network_policy(obj: &Value) -> Result<Vec<Kv>, TranslateError> {
    let n = name(obj)?;
    let spec = obj
        .get("spec")
        .filter(|v| !v.is_null())
        .ok_or(TranslateError::Missing("spec"))?;
    let spec = Spec::deserialize(spec).map_err(|e| TranslateError::Invalid {
        field: "spec",
        reason: e.to_string(),
    })?;
    let tier = match text(&spec.tier) {
        "Admin" => TIER_ADMIN,
        "Baseline" => TIER_BASELINE,
        other => {
            return Err(TranslateError::Invalid {
                field: "spec.tier",
                reason: format!("invalid cluster network policy tier {other:?}"),
            })
        }
    };
    let subject = spec.subject.unwrap_or_default();
    let (pod_sel, ns_sel) = if let Some(ns) = &subject.namespaces {
        (pod_selector(None), namespace_selector(ns))
    } else if let Some(p) = &subject.pods {
        (
            pod_selector(Some(p.pod_selector.as_ref().unwrap_or(&EMPTY))),
            namespace_selector(p.namespace_selector.as_ref().unwrap_or(&EMPTY)),
        )
    } else {
        return Err(TranslateError::Missing("spec.subject"));
    };

    let mut inbound = Vec::new();
    for r in spec.ingress.iter().flatten() {
        let peers: Vec<Result<Peer, String>> = r
            .from
            .iter()
            .flatten()
            .map(|p| peer(p.namespaces.as_ref(), p.pods.as_ref(), &[], "From"))
            .collect();
        let action = text(&r.action);
        match rule_v1(text(&r.name), action, r.protocols.as_deref(), &peers, true) {
            Ok(rules) => inbound.extend(rules),
            Err(_) => inbound.extend(fail_closed(action)),
        }
    }
    let mut outbound = Vec::new();
    for r in spec.egress.iter().flatten() {
        let peers: Vec<Result<Peer, String>> =
            r.to.iter()
                .flatten()
                .map(|p| {
                    let networks = p.networks.as_deref().unwrap_or(&[]);
                    peer(p.namespaces.as_ref(), p.pods.as_ref(), networks, "To")
                })
                .collect();
        let action = text(&r.action);
        match rule_v1(text(&r.name), action, r.protocols.as_deref(), &peers, false) {
            Ok(rules) => outbound.extend(rules),
            Err(_) => outbound.extend(fail_closed(action)),
        }
    }

    let mut types = Vec::new();
    if !inbound.is_empty() {
        types.push("ingress");
    }
    if !outbound.is_empty() {
        types.push("egress");
    }
    let value = PolicyValue {
        tier,
        order: GoFloat(f64::from(spec.priority.unwrap_or(0))),
        inbound_rules: inbound,
        outbound_rules: outbound,
        selector: policy_selector(pod_sel, &ns_sel),
        types,
    };
    Ok(vec![(
        format!("/calico/v1/policy/{KIND}//{n}"),
        to_bytes(&value),
    )])
}

#[cfg(test)]
mod tests {
    use super::super::core::tests::{pairs, text as kv_text, translate};
    use super::*;
    use serde_json::json;

    fn run(obj: Value) -> Vec<(String, String)> {
        kv_text(&translate_k8s_cluster_network_policy(&obj).expect("translates"))
    }

    fn cnp(spec: Value) -> Value {
        json!({
            "apiVersion": "policy.networking.k8s.io/v1alpha2",
            "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "p", "resourceVersion": "1"},
            "spec": spec,
        })
    }

    fn ns_sel(v: Value) -> NsSelector {
        namespace_selector(&LabelSelector::deserialize(&v).expect("selector"))
    }

    #[test]
    fn admin_tier_policy() {
        let expected = concat!(
            r#"{"tier":"kube-admin","order":10,"inbound_rules":["#,
            // allow-monitoring: the named port in a rule of its own without a protocol, then
            // TCP with 9090 and 9091 merged.
            r#"{"action":"allow","src_selector":"pcns.kubernetes.io/metadata.name == \"monitoring\"","#,
            r#""dst_ports":["metrics"],"orig_src_namespace_selector":"kubernetes.io/metadata.name == 'monitoring'","#,
            r#""metadata":{"annotations":{"name":"allow-monitoring"}}},"#,
            r#"{"action":"allow","protocol":"tcp","src_selector":"pcns.kubernetes.io/metadata.name == \"monitoring\"","#,
            r#""dst_ports":["9090:9091","9100:9102"],"orig_src_namespace_selector":"kubernetes.io/metadata.name == 'monitoring'","#,
            r#""metadata":{"annotations":{"name":"allow-monitoring"}}},"#,
            // deny-untrusted: one rule per peer.
            r#"{"action":"deny","src_selector":"(pcns.trust == \"untrusted\") \u0026\u0026 (projectcalico.org/orchestrator == 'k8s')","#,
            r#""orig_src_selector":"projectcalico.org/orchestrator == 'k8s'","orig_src_namespace_selector":"trust == 'untrusted'","#,
            r#""metadata":{"annotations":{"name":"deny-untrusted"}}},"#,
            r#"{"action":"deny","src_selector":"pcns.environment in {\"dev\", \"sandbox\"}","#,
            r#""orig_src_namespace_selector":"environment in { 'sandbox', 'dev' }","#,
            r#""metadata":{"annotations":{"name":"deny-untrusted"}}},"#,
            // pass-tenant-traffic: every namespace.
            r#"{"action":"next-tier","src_selector":"has(projectcalico.org/namespace)","#,
            r#""orig_src_namespace_selector":"all()","metadata":{"annotations":{"name":"pass-tenant-traffic"}}}],"#,
            r#""outbound_rules":["#,
            // allow-dns: TCP before UDP.
            r#"{"action":"allow","protocol":"tcp","#,
            r#""dst_selector":"(pcns.kubernetes.io/metadata.name == \"kube-system\") \u0026\u0026 (projectcalico.org/orchestrator == 'k8s' \u0026\u0026 k8s-app == 'kube-dns')","#,
            r#""dst_ports":[53],"orig_dst_selector":"projectcalico.org/orchestrator == 'k8s' \u0026\u0026 k8s-app == 'kube-dns'","#,
            r#""orig_dst_namespace_selector":"kubernetes.io/metadata.name == 'kube-system'","#,
            r#""metadata":{"annotations":{"name":"allow-dns"}}},"#,
            r#"{"action":"allow","protocol":"udp","#,
            r#""dst_selector":"(pcns.kubernetes.io/metadata.name == \"kube-system\") \u0026\u0026 (projectcalico.org/orchestrator == 'k8s' \u0026\u0026 k8s-app == 'kube-dns')","#,
            r#""dst_ports":[53],"orig_dst_selector":"projectcalico.org/orchestrator == 'k8s' \u0026\u0026 k8s-app == 'kube-dns'","#,
            r#""orig_dst_namespace_selector":"kubernetes.io/metadata.name == 'kube-system'","#,
            r#""metadata":{"annotations":{"name":"allow-dns"}}},"#,
            r#"{"action":"deny","dst_nets":["169.254.169.254/32","fd00:ec2::254/128"],"#,
            r#""metadata":{"annotations":{"name":"deny-cloud-metadata"}}}],"#,
            r#""selector":"(projectcalico.org/orchestrator == 'k8s') \u0026\u0026 "#,
            r#"(pcns.environment == \"production\" \u0026\u0026 pcns.kubernetes.io/metadata.name not in {\"calico-system\", \"kube-system\"})","#,
            r#""types":["ingress","egress"]}"#
        );
        assert_eq!(
            translate(
                translate_k8s_cluster_network_policy,
                "clusternetworkpolicy/admin-platform-guardrails.yaml"
            ),
            pairs(&[(
                "/calico/v1/policy/KubernetesClusterNetworkPolicy//platform-guardrails",
                expected
            )])
        );
    }

    #[test]
    fn baseline_tier_policy() {
        let ingress_src = concat!(
            r#"(pcns.kubernetes.io/metadata.name == \"ingress-nginx\") \u0026\u0026 "#,
            r#"(projectcalico.org/orchestrator == 'k8s' \u0026\u0026 app.kubernetes.io/component == 'controller' \u0026\u0026 "#,
            r#"app.kubernetes.io/name == 'ingress-nginx')"#
        );
        let expected = [
            r#"{"tier":"kube-baseline","order":100,"inbound_rules":["#,
            r#"{"action":"allow","protocol":"tcp","src_selector":""#,
            ingress_src,
            r#"","dst_ports":[8080,8443],"#,
            r#""orig_src_selector":"projectcalico.org/orchestrator == 'k8s' \u0026\u0026 app.kubernetes.io/component == 'controller' \u0026\u0026 app.kubernetes.io/name == 'ingress-nginx'","#,
            r#""orig_src_namespace_selector":"kubernetes.io/metadata.name == 'ingress-nginx'","#,
            r#""metadata":{"annotations":{"name":"allow-ingress-controller"}}},"#,
            r#"{"action":"deny","src_selector":"has(projectcalico.org/namespace)","orig_src_namespace_selector":"all()","#,
            r#""metadata":{"annotations":{"name":"default-deny-ingress"}}}],"#,
            r#""outbound_rules":["#,
            r#"{"action":"allow","protocol":"tcp","dst_nets":["10.96.0.0/12","172.20.0.0/16"],"dst_ports":["1024:65535"],"#,
            r#""metadata":{"annotations":{"name":"allow-internal-services"}}},"#,
            r#"{"action":"allow","protocol":"udp","dst_nets":["10.96.0.0/12","172.20.0.0/16"],"dst_ports":[123],"#,
            r#""metadata":{"annotations":{"name":"allow-internal-services"}}},"#,
            r#"{"action":"deny","dst_nets":["0.0.0.0/0"],"metadata":{"annotations":{"name":"default-deny-egress"}}},"#,
            r#"{"action":"deny","dst_nets":["::/0"],"metadata":{"annotations":{"name":"default-deny-egress"}}}],"#,
            r#""selector":"(projectcalico.org/orchestrator == 'k8s' \u0026\u0026 has(app.kubernetes.io/name) \u0026\u0026 ! has(policy.example.com/exempt)) \u0026\u0026 "#,
            r#"pcns.kubernetes.io/metadata.name not in {\"kube-system\"}","#,
            r#""types":["ingress","egress"]}"#,
        ]
        .concat();
        assert_eq!(
            translate(
                translate_k8s_cluster_network_policy,
                "clusternetworkpolicy/baseline-default-deny.yaml"
            ),
            pairs(&[(
                "/calico/v1/policy/KubernetesClusterNetworkPolicy//default-deny",
                &expected
            )])
        );
    }

    #[test]
    fn peers_calico_cannot_convert_fail_closed() {
        // domainNames (Accept): dropped. nodes (Deny): a bare deny-all rule. A Pass rule with
        // a networks peer and a nodes peer fails as a whole: deny-all too.
        let expected = concat!(
            r#"{"tier":"kube-admin","order":50,"outbound_rules":["#,
            r#"{"action":"deny"},{"action":"deny"},"#,
            r#"{"action":"allow","protocol":"tcp","dst_nets":["10.20.0.0/16"],"dst_ports":[5000],"#,
            r#""metadata":{"annotations":{"name":"allow-registry"}}}],"#,
            r#""selector":"(projectcalico.org/orchestrator == 'k8s') \u0026\u0026 has(projectcalico.org/namespace)","#,
            r#""types":["egress"]}"#
        );
        assert_eq!(
            translate(
                translate_k8s_cluster_network_policy,
                "clusternetworkpolicy/admin-unsupported-peers.yaml"
            ),
            pairs(&[(
                "/calico/v1/policy/KubernetesClusterNetworkPolicy//egress-controls",
                expected
            )])
        );
    }

    #[test]
    fn missing_or_malformed_spec_is_an_error() {
        let mut obj = cnp(json!(null));
        assert_eq!(
            translate_k8s_cluster_network_policy(&obj),
            Err(TranslateError::Missing("spec"))
        );
        obj.as_object_mut().map(|o| o.remove("spec"));
        assert_eq!(
            translate_k8s_cluster_network_policy(&obj),
            Err(TranslateError::Missing("spec"))
        );
        // Calico emits a tombstone (a delete) for these two.
        let bad_tier =
            cnp(json!({"tier": "Developer", "priority": 1, "subject": {"namespaces": {}}}));
        assert!(matches!(
            translate_k8s_cluster_network_policy(&bad_tier),
            Err(TranslateError::Invalid {
                field: "spec.tier",
                ..
            })
        ));
        let no_subject = cnp(json!({"tier": "Admin", "priority": 1, "subject": {}}));
        assert_eq!(
            translate_k8s_cluster_network_policy(&no_subject),
            Err(TranslateError::Missing("spec.subject"))
        );
        // What Go would fail to decode.
        let bad_type =
            cnp(json!({"tier": "Admin", "priority": "high", "subject": {"namespaces": {}}}));
        assert!(matches!(
            translate_k8s_cluster_network_policy(&bad_type),
            Err(TranslateError::Invalid { field: "spec", .. })
        ));
        let no_name = json!({"spec": {"tier": "Admin", "subject": {"namespaces": {}}}});
        assert_eq!(
            translate_k8s_cluster_network_policy(&no_name),
            Err(TranslateError::Missing("metadata.name"))
        );
    }

    #[test]
    fn rules_that_fail_to_convert() {
        let from = json!([{"namespaces": {"matchLabels": {"k": "v"}}}]);
        let bad_range = json!([{"udp": {"destinationPort": {"range": {"start": 40, "end": 20}}}}]);
        let obj = cnp(json!({
            "tier": "Baseline",
            "subject": {"pods": {"podSelector": {"matchLabels": {"app": "web"}}}},
            "ingress": [
                {"name": "log", "action": "Log", "from": from},
                {"name": "bad-pass", "action": "Pass", "from": from, "protocols": bad_range},
                {"name": "bad-accept", "action": "Accept", "from": from, "protocols": bad_range},
                {"name": "bad-named", "action": "Accept", "from": from,
                 "protocols": [{"destinationNamedPort": "no spaces"}]},
                {"name": "no-peer-fields", "action": "Deny", "from": [{}]},
                {"name": "no-peers", "action": "Deny", "from": []},
            ],
            "egress": [
                {"name": "bad-cidr", "action": "Deny", "to": [{"networks": ["10.0.0.0/33"]}]},
                {"action": "Accept", "to": [{"networks": ["10.1.2.3/16"]}],
                 "protocols": [{"tcp": {"destinationPort": {"number": 80}}}, {}]},
            ],
        }));
        let expected = concat!(
            // No priority: order 0, still sent.
            r#"{"tier":"kube-baseline","order":0,"inbound_rules":[{"action":"deny"},{"action":"deny"}],"#,
            // The bad CIDR fails closed; the host bits are masked off; an empty protocol entry
            // matches every protocol and port; no name, no metadata.
            r#""outbound_rules":[{"action":"deny"},{"action":"allow","dst_nets":["10.1.0.0/16"]}],"#,
            // A pods subject without a namespace selector selects every namespace.
            r#""selector":"(projectcalico.org/orchestrator == 'k8s' \u0026\u0026 app == 'web') \u0026\u0026 has(projectcalico.org/namespace)","#,
            r#""types":["ingress","egress"]}"#
        );
        assert_eq!(
            run(obj),
            pairs(&[(
                "/calico/v1/policy/KubernetesClusterNetworkPolicy//p",
                expected
            )])
        );
    }

    #[test]
    fn no_rules_no_types() {
        let obj = cnp(
            json!({"tier": "Admin", "priority": 3, "subject": {"namespaces": {"matchLabels": {"team": "a"}}}}),
        );
        assert_eq!(
            run(obj),
            pairs(&[(
                "/calico/v1/policy/KubernetesClusterNetworkPolicy//p",
                r#"{"tier":"kube-admin","order":3,"selector":"(projectcalico.org/orchestrator == 'k8s') \u0026\u0026 pcns.team == \"a\""}"#
            )])
        );
    }

    #[test]
    fn protocol_unpacking() {
        let p =
            |v: Value| -> Vec<Protocol> { Vec::<Protocol>::deserialize(&v).expect("protocols") };
        let r = |a, b| Some(vec![Port::Range(a, b)]);
        // A protocol without a port means all its ports, whatever else is listed for it.
        let ps = p(json!([
            {"tcp": {"destinationPort": {"number": 80}}},
            {"tcp": {}},
            {"tcp": {"destinationPort": {"number": 81}}},
            {"sctp": {"destinationPort": {"number": 3868}}},
        ]));
        assert_eq!(
            unpack_protocols(Some(&ps)),
            Ok(BTreeMap::from([("SCTP", r(3868, 3868)), ("TCP", None)]))
        );
        // An entry with nothing set replaces everything seen so far and stops.
        let ps = p(json!([{"tcp": {"destinationPort": {"number": 80}}}, {}, {"udp": {}}]));
        assert_eq!(
            unpack_protocols(Some(&ps)),
            Ok(BTreeMap::from([("", None)]))
        );
        assert_eq!(
            unpack_protocols(Some(&[])),
            Ok(BTreeMap::from([("", None)]))
        );
        assert_eq!(unpack_protocols(None), Ok(BTreeMap::from([("", None)])));
        let ps = p(json!([{"tcp": {"destinationPort": {"range": {"start": 9, "end": 8}}}}]));
        assert_eq!(
            unpack_protocols(Some(&ps)),
            Err("failed to parse k8s protocol: minimum port number (9) is greater than maximum port number (8) in port range".to_string())
        );
    }

    #[test]
    fn port_simplification() {
        let r = Port::Range;
        let named = || Port::Named("http".into());
        assert_eq!(
            simplify_ports(vec![
                r(82, 82),
                r(80, 80),
                named(),
                r(81, 81),
                r(9090, 9090)
            ]),
            vec![named(), r(80, 82), r(9090, 9090)]
        );
        assert_eq!(
            simplify_ports(vec![r(80, 80), named()]),
            vec![r(80, 80), named()]
        );
        assert_eq!(
            simplify_ports(vec![r(65534, 65535), r(65535, 65535)]),
            vec![r(65534, 65535)]
        );
        assert_eq!(r(80, 90).to_json(), json!("80:90"));
        assert_eq!(r(80, 80).to_json(), json!(80));
    }

    #[test]
    fn namespace_selector_forms() {
        let s = ns_sel(json!({}));
        assert_eq!((s.text.as_str(), s.prefixed.as_str()), ("all()", "all()"));
        let s = ns_sel(json!({"matchLabels": {}, "matchExpressions": []}));
        assert_eq!(s.text, "all()");
        let s = ns_sel(json!({"matchExpressions": [
            {"key": "a", "operator": "In", "values": ["y", "x", "y"]},
            {"key": "b", "operator": "Exists"},
            {"key": "c", "operator": "DoesNotExist"},
            {"key": "d", "operator": "Gt", "values": ["1"]},
            {"key": "e", "operator": "NotIn", "values": []},
        ]}));
        assert_eq!(
            s.text,
            "a in { 'y', 'x', 'y' } && has(b) && ! has(c) && e not in { '' }"
        );
        assert_eq!(
            s.prefixed,
            r#"(pcns.a in {"x", "y"} && has(pcns.b) && !has(pcns.c) && pcns.e not in {""})"#
        );
        // A value with a double quote is single-quoted.
        let s = ns_sel(json!({"matchLabels": {"a": "say \"hi\""}}));
        assert_eq!(s.prefixed, r#"pcns.a == 'say "hi"'"#);
        // Only skipped expressions: no namespace selector at all.
        let s = ns_sel(json!({"matchExpressions": [{"key": "d", "operator": "Gt"}]}));
        assert_eq!((s.text.as_str(), s.prefixed.as_str()), ("", ""));
        // An empty key in a NotIn expression reads as the label `not` with `in`.
        let s = ns_sel(
            json!({"matchExpressions": [{"key": "", "operator": "NotIn", "values": ["a"]}]}),
        );
        assert_eq!(
            (s.text.as_str(), s.prefixed.as_str()),
            (" not in { 'a' }", r#"pcns.not in {"a"}"#)
        );
        // Text Calico's parser rejects: the prefixed form is empty.
        for bad in [
            json!({"matchLabels": {"bad key": "v"}}),
            json!({"matchLabels": {"k": "it's"}}),
            json!({"matchExpressions": [{"key": "", "operator": "Exists"}]}),
        ] {
            assert_eq!(ns_sel(bad.clone()).prefixed, "", "{bad}");
        }
    }

    #[test]
    fn unparseable_namespace_selectors_are_dropped() {
        // As Calico: the namespace term disappears from the policy selector and from the rule
        // selector (which is then unscoped), but the original text is kept.
        let obj = cnp(json!({
            "tier": "Admin",
            "subject": {"pods": {"namespaceSelector": {"matchLabels": {"k": "it's"}}, "podSelector": {}}},
            "egress": [{"action": "Deny", "to": [
                {"pods": {"namespaceSelector": {"matchLabels": {"k": "it's"}}, "podSelector": {}}},
                {"namespaces": {"matchLabels": {"k": "it's"}}},
            ]}],
        }));
        let expected = concat!(
            r#"{"tier":"kube-admin","order":0,"outbound_rules":["#,
            r#"{"action":"deny","dst_selector":"projectcalico.org/orchestrator == 'k8s'","#,
            r#""orig_dst_selector":"projectcalico.org/orchestrator == 'k8s'","orig_dst_namespace_selector":"k == 'it's'"},"#,
            r#"{"action":"deny","orig_dst_namespace_selector":"k == 'it's'"}],"#,
            r#""selector":"projectcalico.org/orchestrator == 'k8s'","types":["egress"]}"#
        );
        assert_eq!(
            run(obj),
            pairs(&[(
                "/calico/v1/policy/KubernetesClusterNetworkPolicy//p",
                expected
            )])
        );
    }
}
