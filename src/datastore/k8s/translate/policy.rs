//! Policies: Kubernetes NetworkPolicy and Calico's (Global)NetworkPolicy and their staged
//! variants, converted to the v1 `Policy` value Felix consumes (§3.2, §4.3).
//!
//! The key is `/calico/v1/policy/<Kind>/<Namespace>/<Name>` (3.32+: raw names, global kinds
//! with an empty namespace segment, the tier in the value). The value is the v1 `Policy` of
//! `model/policy.go` with its rules (`model/rule.go`), fields in Go's order.
//!
//! Selector handling follows `updateprocessors/{rules,selectors,networkpolicyprocessor,
//! globalnetworkpolicyprocessor}.go` exactly: a namespaced policy's own selector is wrapped as
//! `(<sel>) && projectcalico.org/namespace == '<ns>'`; namespace and service-account selectors
//! are parsed, their labels prefixed with `pcns.` / `pcsa.`, and re-printed in Calico's
//! canonical form (double-quoted values, sorted sets, explicit parentheses), which is why a
//! small selector parser lives here.

use super::core::{
    array_at, bool_at, f64_at, invalid, parse_cidr, parse_cidr_or_ip, str_at, string_map_at,
    strings_at, to_bytes, CalicoMeta, GoFloat, LABEL_NAMESPACE,
};
use super::{name, namespace, Kv, TranslateError};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

const NAMESPACE_LABEL_PREFIX: &str = "pcns.";
const SERVICE_ACCOUNT_LABEL_PREFIX: &str = "pcsa.";
const LABEL_SERVICE_ACCOUNT: &str = "projectcalico.org/serviceaccount";
/// The order Calico gives every converted Kubernetes NetworkPolicy.
const K8S_POLICY_ORDER: f64 = 1000.0;

// ---------------------------------------------------------------------------------------------
// Selectors (`libcalico-go/lib/selector/{tokenizer,parser}`)
// ---------------------------------------------------------------------------------------------

const MAX_LABEL_LENGTH: usize = 512;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LParen,
    RParen,
    Str(String),
    LBrace,
    RBrace,
    Comma,
    Eq,
    Ne,
    Not,
    And,
    Or,
    Contains,
    StartsWith,
    EndsWith,
    In,
    NotIn,
    Has(String),
    All,
    Global,
    Label(String),
    Eof,
}

fn trim_ws(s: &str) -> &str {
    s.trim_start_matches([' ', '\t'])
}

fn ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'/' | b'-')
}

fn word_boundary(s: &str) -> bool {
    s.as_bytes().first().map_or(true, |&c| !ident_char(c))
}

fn cut_ident(s: &str) -> Option<(&str, &str)> {
    let end = s.bytes().position(|c| !ident_char(c)).unwrap_or(s.len());
    if end == 0 || end > MAX_LABEL_LENGTH {
        return None;
    }
    Some(s.split_at(end))
}

/// Cuts the operator made of `words` (whitespace allowed between them) if a word boundary
/// follows it.
fn cut_words<'a>(s: &'a str, words: &[&str]) -> Option<&'a str> {
    if let [word] = words {
        let rest = s.strip_prefix(word)?;
        return word_boundary(rest).then_some(rest);
    }
    let mut rest = s;
    for w in words {
        rest = trim_ws(rest.strip_prefix(w)?);
    }
    word_boundary(rest).then_some(rest)
}

fn tokenize(input: &str) -> Option<Vec<Tok>> {
    let mut toks = Vec::new();
    let mut s = input;
    loop {
        let start_len = s.len();
        s = trim_ws(s);
        let Some(&c) = s.as_bytes().first() else {
            toks.push(Tok::Eof);
            return Some(toks);
        };
        let after_label = matches!(toks.last(), Some(Tok::Label(_)));
        match c {
            b'(' | b')' | b'{' | b'}' | b',' => {
                toks.push(match c {
                    b'(' => Tok::LParen,
                    b')' => Tok::RParen,
                    b'{' => Tok::LBrace,
                    b'}' => Tok::RBrace,
                    _ => Tok::Comma,
                });
                s = &s[1..];
            }
            b'"' | b'\'' => {
                let rest = &s[1..];
                let end = rest.find(char::from(c))?;
                toks.push(Tok::Str(rest[..end].to_string()));
                s = &rest[end + 1..];
            }
            b'=' => {
                s = s.strip_prefix("==")?;
                toks.push(Tok::Eq);
            }
            b'!' => {
                if let Some(r) = s.strip_prefix("!=") {
                    toks.push(Tok::Ne);
                    s = r;
                } else {
                    toks.push(Tok::Not);
                    s = &s[1..];
                }
            }
            b'&' => {
                s = s.strip_prefix("&&")?;
                toks.push(Tok::And);
            }
            b'|' => {
                s = s.strip_prefix("||")?;
                toks.push(Tok::Or);
            }
            _ if after_label => {
                let ops: [(&[&str], Tok); 5] = [
                    (&["contains"], Tok::Contains),
                    (&["starts", "with"], Tok::StartsWith),
                    (&["ends", "with"], Tok::EndsWith),
                    (&["not", "in"], Tok::NotIn),
                    (&["in"], Tok::In),
                ];
                let (rest, tok) = ops
                    .into_iter()
                    .find_map(|(words, tok)| cut_words(s, words).map(|r| (r, tok)))?;
                toks.push(tok);
                s = rest;
            }
            _ => {
                if let Some(r) = s.strip_prefix("has(") {
                    let (ident, r) = cut_ident(trim_ws(r))?;
                    s = trim_ws(r).strip_prefix(')')?;
                    toks.push(Tok::Has(ident.to_string()));
                } else if let Some(r) = s.strip_prefix("all(") {
                    s = trim_ws(r).strip_prefix(')')?;
                    toks.push(Tok::All);
                } else if let Some(r) = s.strip_prefix("global(") {
                    s = trim_ws(r).strip_prefix(')')?;
                    toks.push(Tok::Global);
                } else {
                    let (ident, r) = cut_ident(s)?;
                    toks.push(Tok::Label(ident.to_string()));
                    s = r;
                }
            }
        }
        if s.len() >= start_len {
            return None;
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Sel {
    Eq(String, String),
    Ne(String, String),
    Contains(String, String),
    StartsWith(String, String),
    EndsWith(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Has(String),
    Not(Box<Sel>),
    And(Vec<Sel>),
    Or(Vec<Sel>),
    All,
    Global,
}

struct SelParser {
    toks: Vec<Tok>,
    pos: usize,
}

impl SelParser {
    fn peek(&self) -> &Tok {
        self.toks.get(self.pos).unwrap_or(&Tok::Eof)
    }

    fn at(&self, offset: usize) -> &Tok {
        self.toks.get(self.pos + offset).unwrap_or(&Tok::Eof)
    }

    fn parse_or(&mut self) -> Option<Sel> {
        let mut nodes = vec![self.parse_and()?];
        while *self.peek() == Tok::Or {
            self.pos += 1;
            nodes.push(self.parse_and()?);
        }
        Some(if nodes.len() == 1 {
            nodes.remove(0)
        } else {
            Sel::Or(nodes)
        })
    }

    fn parse_and(&mut self) -> Option<Sel> {
        let mut nodes = vec![self.parse_op()?];
        while *self.peek() == Tok::And {
            self.pos += 1;
            nodes.push(self.parse_op()?);
        }
        Some(if nodes.len() == 1 {
            nodes.remove(0)
        } else {
            Sel::And(nodes)
        })
    }

    fn parse_op(&mut self) -> Option<Sel> {
        let mut negated = false;
        while *self.peek() == Tok::Not {
            negated = !negated;
            self.pos += 1;
        }
        let node = match self.peek().clone() {
            Tok::Has(l) => {
                self.pos += 1;
                Sel::Has(l)
            }
            Tok::All => {
                self.pos += 1;
                Sel::All
            }
            Tok::Global => {
                self.pos += 1;
                Sel::Global
            }
            Tok::Label(l) => {
                // Go requires at least three tokens here (the EOF counts).
                if self.pos + 3 > self.toks.len() {
                    return None;
                }
                let op = self.at(1).clone();
                match op {
                    Tok::Eq | Tok::Ne | Tok::Contains | Tok::StartsWith | Tok::EndsWith => {
                        let Tok::Str(v) = self.at(2).clone() else {
                            return None;
                        };
                        self.pos += 3;
                        match op {
                            Tok::Eq => Sel::Eq(l, v),
                            Tok::Ne => Sel::Ne(l, v),
                            Tok::Contains => Sel::Contains(l, v),
                            Tok::StartsWith => Sel::StartsWith(l, v),
                            _ => Sel::EndsWith(l, v),
                        }
                    }
                    Tok::In | Tok::NotIn => {
                        if *self.at(2) != Tok::LBrace {
                            return None;
                        }
                        self.pos += 3;
                        let mut values = Vec::new();
                        while let Tok::Str(v) = self.peek().clone() {
                            values.push(v);
                            self.pos += 1;
                            if *self.peek() == Tok::Comma {
                                self.pos += 1;
                            } else {
                                break;
                            }
                        }
                        if *self.peek() != Tok::RBrace {
                            return None;
                        }
                        self.pos += 1;
                        // ConvertToStringSetInPlace: sorted, deduplicated.
                        values.sort();
                        values.dedup();
                        if op == Tok::In {
                            Sel::In(l, values)
                        } else {
                            Sel::NotIn(l, values)
                        }
                    }
                    _ => return None,
                }
            }
            Tok::LParen => {
                self.pos += 1;
                let inner = self.parse_or()?;
                if *self.peek() != Tok::RParen {
                    return None;
                }
                self.pos += 1;
                inner
            }
            _ => return None,
        };
        Some(if negated {
            Sel::Not(Box::new(node))
        } else {
            node
        })
    }
}

/// Whether Calico's selector parser accepts `s` (the v1 validator's `selector` rule).
pub fn selector_parses(s: &str) -> bool {
    parse_selector(s).is_some()
}

fn parse_selector(s: &str) -> Option<Sel> {
    let toks = tokenize(s)?;
    if toks.first() == Some(&Tok::Eof) {
        return Some(Sel::All);
    }
    let mut p = SelParser { toks, pos: 0 };
    let node = p.parse_or()?;
    // Only the EOF may remain.
    (p.pos + 1 == p.toks.len()).then_some(node)
}

impl Sel {
    fn add_prefix(&mut self, prefix: &str) {
        match self {
            Sel::Eq(l, _)
            | Sel::Ne(l, _)
            | Sel::Contains(l, _)
            | Sel::StartsWith(l, _)
            | Sel::EndsWith(l, _)
            | Sel::In(l, _)
            | Sel::NotIn(l, _)
            | Sel::Has(l) => l.insert_str(0, prefix),
            Sel::Not(n) => n.add_prefix(prefix),
            Sel::And(ns) | Sel::Or(ns) => ns.iter_mut().for_each(|n| n.add_prefix(prefix)),
            Sel::All | Sel::Global => {}
        }
    }

    fn write(&self, out: &mut String) {
        fn quoted(out: &mut String, v: &str) {
            let q = if v.contains('"') { '\'' } else { '"' };
            out.push(q);
            out.push_str(v);
            out.push(q);
        }
        let op = |out: &mut String, l: &str, op: &str, v: &str| {
            out.push_str(l);
            out.push_str(op);
            quoted(out, v);
        };
        match self {
            Sel::Eq(l, v) => op(out, l, " == ", v),
            Sel::Ne(l, v) => op(out, l, " != ", v),
            Sel::Contains(l, v) => op(out, l, " contains ", v),
            Sel::StartsWith(l, v) => op(out, l, " starts with ", v),
            Sel::EndsWith(l, v) => op(out, l, " ends with ", v),
            Sel::In(l, vs) | Sel::NotIn(l, vs) => {
                out.push_str(l);
                out.push_str(if matches!(self, Sel::In(..)) {
                    " in {"
                } else {
                    " not in {"
                });
                for (i, v) in vs.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    quoted(out, v);
                }
                out.push('}');
            }
            Sel::Has(l) => {
                out.push_str("has(");
                out.push_str(l);
                out.push(')');
            }
            Sel::Not(n) => {
                out.push('!');
                n.write(out);
            }
            Sel::And(ns) | Sel::Or(ns) => {
                let sep = if matches!(self, Sel::And(_)) {
                    " && "
                } else {
                    " || "
                };
                out.push('(');
                for (i, n) in ns.iter().enumerate() {
                    if i > 0 {
                        out.push_str(sep);
                    }
                    n.write(out);
                }
                out.push(')');
            }
            Sel::All => out.push_str("all()"),
            Sel::Global => out.push_str("global()"),
        }
    }
}

/// `parseSelectorAttachPrefix`: parses `s`, prefixes every label with `prefix` and prints it
/// back in canonical form; an unparseable selector gives `""` (Calico logs and drops it).
fn attach_prefix(s: &str, prefix: &str) -> String {
    match parse_selector(s) {
        Some(mut sel) => {
            sel.add_prefix(prefix);
            let mut out = String::new();
            sel.write(&mut out);
            out
        }
        None => String::new(),
    }
}

/// `prefixAndAppendSelector`: `(<current>) && <prefixed new>`.
fn prefix_and_append(current: &str, new: &str, prefix: &str) -> String {
    if new.is_empty() {
        return current.to_string();
    }
    let prefixed = attach_prefix(new, prefix);
    match (prefixed.is_empty(), current.is_empty()) {
        (true, _) => current.to_string(),
        (false, true) => prefixed,
        (false, false) => format!("({current}) && {prefixed}"),
    }
}

/// `parseServiceAccounts`: the `pcsa.`-prefixed selector ANDed with the names as an `in` set.
fn service_account_selector(names: &[String], selector: &str) -> String {
    let updated = if selector.is_empty() {
        String::new()
    } else {
        attach_prefix(selector, SERVICE_ACCOUNT_LABEL_PREFIX)
    };
    if names.is_empty() {
        return updated;
    }
    let set = format!("{LABEL_SERVICE_ACCOUNT} in {{ '{}' }}", names.join("', '"));
    let normalized = attach_prefix(&set, "");
    if normalized.is_empty() {
        return String::new();
    }
    if updated.is_empty() {
        normalized
    } else {
        format!("({updated}) && ({normalized})")
    }
}

/// `getEndpointSelector`: the one selector a rule's source or destination matches, scoped to
/// the policy's namespace (`ns`) unless a namespace selector is given.
fn endpoint_selector(
    namespace_selector: &str,
    selector: &str,
    sa_selector: &str,
    not_selector: &str,
    ns: &str,
) -> String {
    let ns_sel = if !namespace_selector.is_empty() {
        attach_prefix(namespace_selector, NAMESPACE_LABEL_PREFIX)
            .replace("all()", "has(projectcalico.org/namespace)")
            .replace("global()", "!has(projectcalico.org/namespace)")
    } else if !ns.is_empty() {
        format!("{LABEL_NAMESPACE} == '{ns}'")
    } else {
        String::new()
    };
    let sels: Vec<&str> = [sa_selector, selector]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect();
    let combined = match sels.len() {
        0 => String::new(),
        1 => sels[0].to_string(),
        _ => format!("({})", sels.join(") && (")),
    };
    if !ns_sel.is_empty()
        && (!combined.is_empty() || !not_selector.is_empty() || !namespace_selector.is_empty())
    {
        if combined.is_empty() {
            ns_sel
        } else {
            format!("({ns_sel}) && ({combined})")
        }
    } else {
        combined
    }
}

// ---------------------------------------------------------------------------------------------
// Ports and protocols (`numorstring`)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Port {
    Range(u16, u16),
    Named(String),
}

impl Port {
    /// `numorstring.PortFromString`: `"80"`, `"80:90"` or a port name.
    fn parse(s: &str) -> Result<Port, String> {
        let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
        if digits(s) {
            return s
                .parse()
                .map(|p| Port::Range(p, p))
                .map_err(|_| format!("invalid port format ({s})"));
        }
        if let Some((a, b)) = s.split_once(':').filter(|(a, b)| digits(a) && digits(b)) {
            let min: u16 = a
                .parse()
                .map_err(|_| format!("invalid minimum port number in range ({s})"))?;
            let max: u16 = b
                .parse()
                .map_err(|_| format!("invalid maximum port number in range ({s})"))?;
            if min > max {
                return Err(format!("minimum port number ({min}) is greater than maximum port number ({max}) in port range"));
            }
            return Ok(Port::Range(min, max));
        }
        let valid = !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if valid {
            Ok(Port::Named(s.to_string()))
        } else {
            Err(format!("invalid name for named port ({s})"))
        }
    }

    fn from_json(v: &Value) -> Result<Port, TranslateError> {
        match v {
            Value::String(s) => Port::parse(s).map_err(|e| invalid("ports", e)),
            Value::Number(n) => n
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .map(|p| Port::Range(p, p))
                .ok_or_else(|| invalid("ports", format!("bad port {n}"))),
            _ => Err(invalid("ports", "not a number or string")),
        }
    }

    /// The v1 JSON form: a number, a `"min:max"` string or the name.
    pub(super) fn to_json(&self) -> Value {
        match self {
            Port::Named(n) => Value::String(n.clone()),
            Port::Range(a, b) if a == b => Value::from(*a),
            Port::Range(a, b) => Value::String(format!("{a}:{b}")),
        }
    }
}

/// A protocol (`numorstring.Protocol`): a number or a name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Proto {
    Num(u8),
    Name(String),
}

impl Proto {
    fn from_json(v: &Value) -> Result<Proto, TranslateError> {
        match v {
            Value::String(s) => Ok(match s.parse::<u8>() {
                Ok(n) => Proto::Num(n),
                Err(_) => Proto::Name(s.clone()),
            }),
            Value::Number(n) => n
                .as_u64()
                .and_then(|n| u8::try_from(n).ok())
                .map(Proto::Num)
                .ok_or_else(|| invalid("protocol", format!("bad protocol {n}"))),
            _ => Err(invalid("protocol", "not a number or string")),
        }
    }

    /// `ProtocolFromString`: known names in their canonical case, others unchanged.
    fn from_k8s(s: &str) -> Proto {
        const NAMES: [&str; 6] = ["UDP", "TCP", "ICMP", "ICMPv6", "SCTP", "UDPLite"];
        let canonical = NAMES.iter().find(|n| n.eq_ignore_ascii_case(s));
        Proto::Name(canonical.map_or(s, |n| *n).to_string())
    }

    /// The v1 form (`ToV1`): names lower-cased; a numeric string is sent as a number.
    fn to_v1_json(&self) -> Value {
        match self {
            Proto::Num(n) => Value::from(*n),
            Proto::Name(s) => match s.parse::<u8>() {
                Ok(n) => Value::from(n),
                Err(_) => Value::String(s.to_lowercase()),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// v3 rules and their v1 form
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default, PartialEq)]
struct Entity {
    nets: Vec<String>,
    not_nets: Vec<String>,
    selector: String,
    not_selector: String,
    namespace_selector: String,
    ports: Vec<Port>,
    not_ports: Vec<Port>,
    /// `serviceAccounts`: names and selector.
    service_accounts: Option<(Vec<String>, String)>,
    /// `services`: name and namespace.
    services: Option<(String, String)>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Icmp {
    r#type: Option<i64>,
    code: Option<i64>,
}

/// A v3 `Rule` (`api/pkg/apis/projectcalico/v3/policy_common.go`).
#[derive(Debug, Clone, Default, PartialEq)]
struct V3Rule {
    action: String,
    ip_version: Option<i64>,
    protocol: Option<Proto>,
    not_protocol: Option<Proto>,
    icmp: Option<Icmp>,
    not_icmp: Option<Icmp>,
    source: Entity,
    destination: Entity,
    http: Option<HttpMatch>,
    /// `metadata.annotations`, when `metadata` and its annotations are set.
    annotations: Option<BTreeMap<String, String>>,
}

fn int_at(v: &Value, ptr: &str, field: &'static str) -> Result<Option<i64>, TranslateError> {
    match v.pointer(ptr) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_i64()
            .map(Some)
            .ok_or_else(|| invalid(field, "not an integer")),
    }
}

fn ports_at(v: &Value, key: &str) -> Result<Vec<Port>, TranslateError> {
    array_at(v, key, "ports")?
        .iter()
        .map(Port::from_json)
        .collect()
}

fn parse_entity(v: Option<&Value>) -> Result<Entity, TranslateError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Entity::default());
    };
    let s = |ptr: &str| str_at(v, ptr).unwrap_or("").to_string();
    Ok(Entity {
        nets: strings_at(v, "/nets", "rule nets")?,
        not_nets: strings_at(v, "/notNets", "rule notNets")?,
        selector: s("/selector"),
        not_selector: s("/notSelector"),
        namespace_selector: s("/namespaceSelector"),
        ports: ports_at(v, "/ports")?,
        not_ports: ports_at(v, "/notPorts")?,
        service_accounts: match v.get("serviceAccounts").filter(|x| !x.is_null()) {
            Some(sa) => Some((
                strings_at(sa, "/names", "serviceAccounts.names")?,
                str_at(sa, "/selector").unwrap_or("").to_string(),
            )),
            None => None,
        },
        services: v.get("services").filter(|x| !x.is_null()).map(|svc| {
            (
                str_at(svc, "/name").unwrap_or("").to_string(),
                str_at(svc, "/namespace").unwrap_or("").to_string(),
            )
        }),
    })
}

fn parse_icmp(v: &Value, key: &str) -> Result<Option<Icmp>, TranslateError> {
    match v.get(key).filter(|x| !x.is_null()) {
        None => Ok(None),
        Some(i) => Ok(Some(Icmp {
            r#type: int_at(i, "/type", "icmp.type")?,
            code: int_at(i, "/code", "icmp.code")?,
        })),
    }
}

fn parse_v3_rule(v: &Value) -> Result<V3Rule, TranslateError> {
    let proto = |key: &str| {
        v.get(key)
            .filter(|x| !x.is_null())
            .map(Proto::from_json)
            .transpose()
    };
    let http = match v.get("http").filter(|x| !x.is_null()) {
        None => None,
        Some(h) => Some(HttpMatch {
            methods: strings_at(h, "/methods", "http.methods")?,
            paths: array_at(h, "/paths", "http.paths")?
                .iter()
                .map(|p| HttpPath {
                    exact: str_at(p, "/exact").unwrap_or("").to_string(),
                    prefix: str_at(p, "/prefix").unwrap_or("").to_string(),
                })
                .collect(),
        }),
    };
    Ok(V3Rule {
        action: str_at(v, "/action").unwrap_or("").to_string(),
        ip_version: int_at(v, "/ipVersion", "ipVersion")?,
        protocol: proto("protocol")?,
        not_protocol: proto("notProtocol")?,
        icmp: parse_icmp(v, "icmp")?,
        not_icmp: parse_icmp(v, "notICMP")?,
        source: parse_entity(v.get("source"))?,
        destination: parse_entity(v.get("destination"))?,
        http,
        annotations: string_map_at(v, "/metadata/annotations", "rule metadata.annotations")?,
    })
}

fn parse_v3_rules(spec: &Value, key: &str) -> Result<Vec<V3Rule>, TranslateError> {
    array_at(spec, key, "rules")?
        .iter()
        .map(parse_v3_rule)
        .collect()
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
struct HttpMatch {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    methods: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    paths: Vec<HttpPath>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
struct HttpPath {
    #[serde(skip_serializing_if = "String::is_empty")]
    exact: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    prefix: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct RuleMetadata {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

/// v1 `Rule` (`model/rule.go`): every field omitempty, in Go's declaration order (fields
/// Calico's conversion never sets, such as `src_tag` or `src_net`, are left out).
#[derive(Debug, Default, Serialize)]
struct Rule {
    #[serde(skip_serializing_if = "String::is_empty")]
    action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip_version: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<Value>,
    #[serde(rename = "!protocol", skip_serializing_if = "Option::is_none")]
    not_protocol: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    icmp_type: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    icmp_code: Option<i64>,
    #[serde(rename = "!icmp_type", skip_serializing_if = "Option::is_none")]
    not_icmp_type: Option<i64>,
    #[serde(rename = "!icmp_code", skip_serializing_if = "Option::is_none")]
    not_icmp_code: Option<i64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    src_nets: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    src_selector: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    src_ports: Vec<Value>,
    #[serde(skip_serializing_if = "String::is_empty")]
    src_service: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    src_service_ns: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    dst_selector: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    dst_nets: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    dst_ports: Vec<Value>,
    #[serde(skip_serializing_if = "String::is_empty")]
    dst_service: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    dst_service_ns: String,
    #[serde(rename = "!src_nets", skip_serializing_if = "Vec::is_empty")]
    not_src_nets: Vec<String>,
    #[serde(rename = "!src_selector", skip_serializing_if = "String::is_empty")]
    not_src_selector: String,
    #[serde(rename = "!src_ports", skip_serializing_if = "Vec::is_empty")]
    not_src_ports: Vec<Value>,
    #[serde(rename = "!dst_selector", skip_serializing_if = "String::is_empty")]
    not_dst_selector: String,
    #[serde(rename = "!dst_nets", skip_serializing_if = "Vec::is_empty")]
    not_dst_nets: Vec<String>,
    #[serde(rename = "!dst_ports", skip_serializing_if = "Vec::is_empty")]
    not_dst_ports: Vec<Value>,
    #[serde(skip_serializing_if = "String::is_empty")]
    orig_src_selector: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    orig_src_namespace_selector: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    orig_dst_selector: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    orig_dst_namespace_selector: String,
    #[serde(
        rename = "!orig_src_selector",
        skip_serializing_if = "String::is_empty"
    )]
    not_orig_src_selector: String,
    #[serde(
        rename = "!orig_dst_selector",
        skip_serializing_if = "String::is_empty"
    )]
    not_orig_dst_selector: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    orig_src_service_acct_names: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    orig_src_service_acct_selector: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    orig_dst_service_acct_names: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    orig_dst_service_acct_selector: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    http: Option<HttpMatch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<RuleMetadata>,
}

/// Masked networks; entries that do not parse are skipped (`ConvertStringsToNets`,
/// `NormalizeIPNets`).
fn nets_v1(nets: &[String]) -> Vec<String> {
    nets.iter()
        .filter_map(|n| parse_cidr_or_ip(n))
        .map(|(_, n)| n.network().to_string())
        .collect()
}

fn ports_v1(ports: &[Port]) -> Vec<Value> {
    ports.iter().map(Port::to_json).collect()
}

fn entity_selector(e: &Entity, ns: &str) -> String {
    let sa = e
        .service_accounts
        .as_ref()
        .map(|(names, sel)| service_account_selector(names, sel))
        .unwrap_or_default();
    endpoint_selector(&e.namespace_selector, &e.selector, &sa, &e.not_selector, ns)
}

/// `RuleAPIV3ToBackend`.
fn rule_v1(r: &V3Rule, ns: &str) -> Rule {
    let (src, dst) = (&r.source, &r.destination);
    let sa = |e: &Entity| e.service_accounts.clone().unwrap_or_default();
    let svc = |e: &Entity| e.services.clone().unwrap_or_default();
    let (src_sa, dst_sa) = (sa(src), sa(dst));
    let (src_svc, dst_svc) = (svc(src), svc(dst));
    Rule {
        action: if r.action == "Pass" {
            "next-tier".to_string()
        } else {
            r.action.to_lowercase()
        },
        ip_version: r.ip_version,
        protocol: r.protocol.as_ref().map(Proto::to_v1_json),
        not_protocol: r.not_protocol.as_ref().map(Proto::to_v1_json),
        icmp_type: r.icmp.as_ref().and_then(|i| i.r#type),
        icmp_code: r.icmp.as_ref().and_then(|i| i.code),
        not_icmp_type: r.not_icmp.as_ref().and_then(|i| i.r#type),
        not_icmp_code: r.not_icmp.as_ref().and_then(|i| i.code),
        src_nets: nets_v1(&src.nets),
        src_selector: entity_selector(src, ns),
        src_ports: ports_v1(&src.ports),
        src_service: src_svc.0,
        src_service_ns: src_svc.1,
        dst_selector: entity_selector(dst, ns),
        dst_nets: nets_v1(&dst.nets),
        dst_ports: ports_v1(&dst.ports),
        dst_service: dst_svc.0,
        dst_service_ns: dst_svc.1,
        not_src_nets: nets_v1(&src.not_nets),
        not_src_selector: src.not_selector.clone(),
        not_src_ports: ports_v1(&src.not_ports),
        not_dst_selector: dst.not_selector.clone(),
        not_dst_nets: nets_v1(&dst.not_nets),
        not_dst_ports: ports_v1(&dst.not_ports),
        orig_src_selector: src.selector.clone(),
        orig_src_namespace_selector: src.namespace_selector.clone(),
        orig_dst_selector: dst.selector.clone(),
        orig_dst_namespace_selector: dst.namespace_selector.clone(),
        not_orig_src_selector: src.not_selector.clone(),
        not_orig_dst_selector: dst.not_selector.clone(),
        orig_src_service_acct_names: src_sa.0,
        orig_src_service_acct_selector: src_sa.1,
        orig_dst_service_acct_names: dst_sa.0,
        orig_dst_service_acct_selector: dst_sa.1,
        http: r.http.clone(),
        metadata: r
            .annotations
            .clone()
            .map(|annotations| RuleMetadata { annotations }),
    }
}

// ---------------------------------------------------------------------------------------------
// Policies
// ---------------------------------------------------------------------------------------------

/// v1 `Policy` (`model/policy.go`, 3.32+), fields in Go's order; `annotations` is never set by
/// the conversions and left out.
#[derive(Debug, Serialize)]
struct PolicyValue {
    #[serde(skip_serializing_if = "String::is_empty")]
    namespace: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    tier: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    order: Option<GoFloat>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    inbound_rules: Vec<Rule>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    outbound_rules: Vec<Rule>,
    selector: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    untracked: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pre_dnat: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    apply_on_forward: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    types: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    performance_hints: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    staged_action: Option<String>,
}

/// The v3 policy spec fields the conversions read (NetworkPolicy and GlobalNetworkPolicy).
#[derive(Debug, Clone, Default, PartialEq)]
struct V3PolicySpec {
    tier: String,
    order: Option<f64>,
    selector: String,
    namespace_selector: String,
    service_account_selector: String,
    ingress: Vec<V3Rule>,
    egress: Vec<V3Rule>,
    types: Vec<String>,
    do_not_track: bool,
    pre_dnat: bool,
    apply_on_forward: bool,
    performance_hints: Vec<String>,
}

fn parse_v3_policy_spec(obj: &Value) -> Result<V3PolicySpec, TranslateError> {
    let null = Value::Null;
    let spec = obj.get("spec").unwrap_or(&null);
    let s = |ptr: &str| str_at(spec, ptr).unwrap_or("").to_string();
    Ok(V3PolicySpec {
        tier: s("/tier"),
        order: f64_at(spec, "/order", "spec.order")?,
        selector: s("/selector"),
        namespace_selector: s("/namespaceSelector"),
        service_account_selector: s("/serviceAccountSelector"),
        ingress: parse_v3_rules(spec, "/ingress")?,
        egress: parse_v3_rules(spec, "/egress")?,
        types: strings_at(spec, "/types", "spec.types")?,
        do_not_track: bool_at(spec, "/doNotTrack"),
        pre_dnat: bool_at(spec, "/preDNAT"),
        apply_on_forward: bool_at(spec, "/applyOnForward"),
        performance_hints: strings_at(spec, "/performanceHints", "spec.performanceHints")?,
    })
}

fn tier_or_default(tier: &str) -> String {
    if tier.is_empty() {
        "default".to_string()
    } else {
        tier.to_string()
    }
}

fn rules_v1(rules: &[V3Rule], ns: &str) -> Vec<Rule> {
    rules.iter().map(|r| rule_v1(r, ns)).collect()
}

fn types_v1(types: &[String]) -> Vec<String> {
    types.iter().map(|t| t.to_lowercase()).collect()
}

/// `ConvertNetworkPolicyV3ToV1Value` (namespaced policies).
fn network_policy_v1(spec: &V3PolicySpec, ns: &str) -> PolicyValue {
    let mut selector = spec.selector.clone();
    if !ns.is_empty() {
        let ns_sel = format!("{LABEL_NAMESPACE} == '{ns}'");
        selector = if selector.is_empty() {
            ns_sel
        } else {
            format!("({selector}) && {ns_sel}")
        };
    }
    selector = prefix_and_append(
        &selector,
        &spec.service_account_selector,
        SERVICE_ACCOUNT_LABEL_PREFIX,
    );
    PolicyValue {
        namespace: ns.to_string(),
        tier: tier_or_default(&spec.tier),
        order: spec.order.map(GoFloat),
        inbound_rules: rules_v1(&spec.ingress, ns),
        outbound_rules: rules_v1(&spec.egress, ns),
        selector,
        untracked: false,
        pre_dnat: false,
        apply_on_forward: false,
        types: types_v1(&spec.types),
        performance_hints: spec.performance_hints.clone(),
        staged_action: None,
    }
}

/// `ConvertGlobalNetworkPolicyV3ToV1Value`.
fn global_network_policy_v1(spec: &V3PolicySpec) -> PolicyValue {
    let mut selector = spec.selector.clone();
    if !spec.namespace_selector.is_empty() {
        selector = prefix_and_append(&selector, &spec.namespace_selector, NAMESPACE_LABEL_PREFIX)
            .replace("all()", "has(projectcalico.org/namespace)");
    }
    if !spec.service_account_selector.is_empty() {
        selector = prefix_and_append(
            &selector,
            &spec.service_account_selector,
            SERVICE_ACCOUNT_LABEL_PREFIX,
        )
        .replace("all()", "has(projectcalico.org/serviceaccount)");
    }
    PolicyValue {
        namespace: String::new(),
        tier: tier_or_default(&spec.tier),
        order: spec.order.map(GoFloat),
        inbound_rules: rules_v1(&spec.ingress, ""),
        outbound_rules: rules_v1(&spec.egress, ""),
        selector,
        untracked: spec.do_not_track,
        pre_dnat: spec.pre_dnat,
        apply_on_forward: spec.apply_on_forward,
        types: types_v1(&spec.types),
        performance_hints: spec.performance_hints.clone(),
        staged_action: None,
    }
}

fn policy_key(kind: &str, ns: &str, name: &str) -> String {
    format!("/calico/v1/policy/{kind}/{ns}/{name}")
}

/// The staged action of a staged policy: `None` means "Delete" (the policy yields nothing).
fn staged_action(obj: &Value) -> Option<Option<String>> {
    match str_at(obj, "/spec/stagedAction").unwrap_or("") {
        "Delete" => None,
        "" => Some(None),
        a => Some(Some(a.to_string())),
    }
}

fn namespaced_calico_policy(
    obj: &Value,
    kind: &str,
    staged: bool,
) -> Result<Vec<Kv>, TranslateError> {
    let meta = CalicoMeta::of(obj, kind)?;
    if meta.namespace.is_empty() {
        return Err(TranslateError::Missing("metadata.namespace"));
    }
    let action = if staged {
        match staged_action(obj) {
            None => return Ok(Vec::new()),
            Some(a) => a,
        }
    } else {
        None
    };
    let mut v = network_policy_v1(&parse_v3_policy_spec(obj)?, &meta.namespace);
    v.staged_action = action;
    Ok(vec![(
        policy_key(kind, &meta.namespace, &meta.key_name),
        to_bytes(&v),
    )])
}

fn global_calico_policy(obj: &Value, kind: &str, staged: bool) -> Result<Vec<Kv>, TranslateError> {
    let meta = CalicoMeta::of(obj, kind)?;
    let action = if staged {
        match staged_action(obj) {
            None => return Ok(Vec::new()),
            Some(a) => a,
        }
    } else {
        None
    };
    let mut v = global_network_policy_v1(&parse_v3_policy_spec(obj)?);
    v.staged_action = action;
    Ok(vec![(policy_key(kind, "", &meta.key_name), to_bytes(&v))])
}

/// Translates a Calico NetworkPolicy into
/// `/calico/v1/policy/NetworkPolicy/<ns>/<name>`: the v1 Policy with `namespace`, `tier`
/// (`default` when unset), `order`, the rules (actions lower case, `Pass` as `next-tier`,
/// selectors scoped to the namespace unless a rule has a namespace selector), the selector
/// `(<selector>) && projectcalico.org/namespace == '<ns>'` with any `serviceAccountSelector`
/// ANDed in as `pcsa.` terms, `types` (lower case) and `performance_hints`. For
/// The key carries the object's own name as it is (a legacy `default.` prefix included, whatever
/// the `projectcalico.org/metadata` annotation says): Calico's watcher builds the key from the
/// CR name before it converts the metadata.
pub fn translate_calico_network_policy(obj: &Value) -> Result<Vec<Kv>, TranslateError> {
    namespaced_calico_policy(obj, "NetworkPolicy", false)
}

/// Translates a GlobalNetworkPolicy into `/calico/v1/policy/GlobalNetworkPolicy//<name>`: as
/// [`translate_calico_network_policy`] without a namespace, with `namespaceSelector` and
/// `serviceAccountSelector` ANDed into the selector as `pcns.` / `pcsa.` terms (`all()` becoming
/// `has(projectcalico.org/namespace)` / `has(projectcalico.org/serviceaccount)`), and with
/// `untracked`, `pre_dnat` and `apply_on_forward`.
pub fn translate_global_network_policy(obj: &Value) -> Result<Vec<Kv>, TranslateError> {
    global_calico_policy(obj, "GlobalNetworkPolicy", false)
}

/// Translates a StagedNetworkPolicy into `/calico/v1/policy/StagedNetworkPolicy/<ns>/<name>`,
/// converted as a NetworkPolicy plus `staged_action` (when set). A `stagedAction` of `Delete`
/// yields nothing.
pub fn translate_staged_network_policy(obj: &Value) -> Result<Vec<Kv>, TranslateError> {
    namespaced_calico_policy(obj, "StagedNetworkPolicy", true)
}

/// Translates a StagedGlobalNetworkPolicy into
/// `/calico/v1/policy/StagedGlobalNetworkPolicy//<name>`, converted as a GlobalNetworkPolicy
/// plus `staged_action`. A `stagedAction` of `Delete` yields nothing.
pub fn translate_staged_global_network_policy(obj: &Value) -> Result<Vec<Kv>, TranslateError> {
    global_calico_policy(obj, "StagedGlobalNetworkPolicy", true)
}

// ---- Kubernetes NetworkPolicy (`conversion.go` K8sNetworkPolicyToCalico) ----

/// `k8sSelectorToCalico`: a pod selector always starts with
/// `projectcalico.org/orchestrator == 'k8s'`; a present but empty namespace selector is
/// `all()`; an absent one is `""`.
fn k8s_selector(sel: Option<&Value>, pod: bool) -> Result<String, TranslateError> {
    let mut parts: Vec<String> = Vec::new();
    if pod {
        parts.push("projectcalico.org/orchestrator == 'k8s'".to_string());
    }
    let Some(sel) = sel.filter(|v| !v.is_null()) else {
        return Ok(parts.join(" && "));
    };
    let labels = string_map_at(sel, "/matchLabels", "matchLabels")?.unwrap_or_default();
    let exprs = array_at(sel, "/matchExpressions", "matchExpressions")?;
    if !pod && labels.is_empty() && exprs.is_empty() {
        return Ok("all()".to_string());
    }
    for (k, v) in &labels {
        parts.push(format!("{k} == '{v}'"));
    }
    for e in exprs {
        let key = str_at(e, "/key").unwrap_or("");
        let values = strings_at(e, "/values", "matchExpressions.values")?.join("', '");
        match str_at(e, "/operator").unwrap_or("") {
            "In" => parts.push(format!("{key} in {{ '{values}' }}")),
            "NotIn" => parts.push(format!("{key} not in {{ '{values}' }}")),
            "Exists" => parts.push(format!("has({key})")),
            "DoesNotExist" => parts.push(format!("! has({key})")),
            _ => {}
        }
    }
    Ok(parts.join(" && "))
}

/// `k8sPeerToCalicoFields`: (selector, namespace selector, nets, not-nets).
fn k8s_peer(
    peer: Option<&Value>,
) -> Result<(String, String, Vec<String>, Vec<String>), TranslateError> {
    let Some(peer) = peer else {
        return Ok(Default::default());
    };
    if let Some(block) = peer.get("ipBlock").filter(|v| !v.is_null()) {
        // A CIDR that does not parse leaves the peer empty, as in Calico.
        let Some((_, net)) = str_at(block, "/cidr").and_then(parse_cidr) else {
            return Ok(Default::default());
        };
        let nets = vec![net.to_string()];
        let mut not_nets = Vec::new();
        for e in strings_at(block, "/except", "ipBlock.except")? {
            match parse_cidr(&e) {
                Some((_, n)) => not_nets.push(n.to_string()),
                None => break,
            }
        }
        return Ok((String::new(), String::new(), nets, not_nets));
    }
    Ok((
        k8s_selector(peer.get("podSelector"), true)?,
        k8s_selector(peer.get("namespaceSelector"), false)?,
        Vec::new(),
        Vec::new(),
    ))
}

/// `SimplifyPorts`: named ports first, then the numeric ports merged into ranges.
pub(super) fn simplify_ports(ports: Vec<Port>) -> Vec<Port> {
    if ports.len() <= 1 {
        return ports;
    }
    let mut out = Vec::new();
    let mut numeric: Vec<u32> = Vec::new();
    for p in &ports {
        match p {
            Port::Named(_) => out.push(p.clone()),
            Port::Range(a, b) => numeric.extend(u32::from(*a)..=u32::from(*b)),
        }
    }
    if numeric.len() <= 1 {
        return ports;
    }
    numeric.sort_unstable();
    let mut i = 0;
    while i < numeric.len() {
        let first = numeric[i];
        let mut last = first;
        i += 1;
        while i < numeric.len() && numeric[i] <= last + 1 {
            last = numeric[i];
            i += 1;
        }
        // Both ends come from u16 ports.
        out.push(Port::Range(first as u16, last as u16));
    }
    out
}

/// `k8sRuleToCalico`: one rule per protocol (sorted) and peer; `Err` drops the k8s rule.
fn k8s_rule(peers: &[Value], ports: &[Value], ingress: bool) -> Result<Vec<V3Rule>, String> {
    // Protocol → ports; `None` means every port of that protocol.
    let mut by_proto: BTreeMap<String, Option<Vec<Port>>> = BTreeMap::new();
    if ports.is_empty() {
        by_proto.insert(String::new(), None);
    }
    for p in ports {
        let proto = str_at(p, "/protocol").unwrap_or("TCP");
        let port_text = match p.get("port") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(_) => return Err("port is not a number or string".to_string()),
        };
        let calico_ports = match port_text {
            None => None,
            Some(mut text) => {
                if let Some(end) = p.get("endPort").and_then(Value::as_i64) {
                    text = format!("{text}:{end}");
                }
                Some(vec![Port::parse(&text).map_err(|e| {
                    format!("failed to parse k8s port: invalid port {text}: {e}")
                })?])
            }
        };
        let Proto::Name(key) = Proto::from_k8s(proto) else {
            continue;
        };
        match calico_ports {
            None => {
                by_proto.insert(key, None);
            }
            Some(ps) => match by_proto.get_mut(&key) {
                None => {
                    by_proto.insert(key, Some(ps));
                }
                Some(Some(existing)) => existing.extend(ps),
                Some(None) => {}
            },
        }
    }
    let peers: Vec<Option<&Value>> = if peers.is_empty() {
        vec![None]
    } else {
        peers.iter().map(Some).collect()
    };
    let mut rules = Vec::new();
    for (proto, ports) in by_proto {
        let ports = simplify_ports(ports.unwrap_or_default());
        let protocol = (!proto.is_empty()).then(|| Proto::from_k8s(&proto));
        for peer in &peers {
            let (selector, namespace_selector, nets, not_nets) =
                k8s_peer(*peer).map_err(|e| e.to_string())?;
            let entity = Entity {
                selector,
                namespace_selector,
                nets,
                not_nets,
                ..Entity::default()
            };
            let mut rule = V3Rule {
                action: "Allow".to_string(),
                protocol: protocol.clone(),
                ..V3Rule::default()
            };
            if ingress {
                rule.source = entity;
                rule.destination.ports = ports.clone();
            } else {
                rule.destination = Entity {
                    ports: ports.clone(),
                    ..entity
                };
            }
            rules.push(rule);
        }
    }
    Ok(rules)
}

/// Converts a k8s NetworkPolicy spec into the v3 NetworkPolicy spec Calico makes of it. Rules
/// that fail to convert (a named port with an `endPort`, say) are dropped, as Calico does when
/// listing; `strict` turns such a failure into an error instead.
fn k8s_network_policy_spec(spec: &Value, strict: bool) -> Result<V3PolicySpec, TranslateError> {
    let mut out = V3PolicySpec {
        tier: "default".to_string(),
        order: Some(K8S_POLICY_ORDER),
        selector: k8s_selector(spec.get("podSelector"), true)?,
        ..V3PolicySpec::default()
    };
    for (list, peers_key, ingress) in [("/ingress", "/from", true), ("/egress", "/to", false)] {
        for r in array_at(spec, list, "spec rules")? {
            let peers = array_at(r, peers_key, "rule peers")?;
            let ports = array_at(r, "/ports", "rule ports")?;
            match k8s_rule(peers, ports, ingress) {
                Ok(rules) if ingress => out.ingress.extend(rules),
                Ok(rules) => out.egress.extend(rules),
                Err(e) if strict => return Err(invalid("spec rules", e)),
                Err(_) => {}
            }
        }
    }
    let types = strings_at(spec, "/policyTypes", "spec.policyTypes")?;
    if types.iter().any(|t| t == "Ingress") {
        out.types.push("Ingress".to_string());
    }
    if types.iter().any(|t| t == "Egress") {
        out.types.push("Egress".to_string());
    }
    if out.types.is_empty() {
        out.types.push("Ingress".to_string());
    }
    Ok(out)
}

/// Translates a Kubernetes NetworkPolicy (§4.3) into
/// `/calico/v1/policy/KubernetesNetworkPolicy/<ns>/<name>`: tier `default`, order 1000,
/// selector `(projectcalico.org/orchestrator == 'k8s'[ && <matchLabels/matchExpressions>]) &&
/// projectcalico.org/namespace == '<ns>'`, Allow rules grouped by protocol (TCP when unset)
/// with their ports merged into ranges (`endPort` supported), `ipBlock` as nets / `!nets`,
/// namespace selectors as `pcns.` selectors (an empty one selecting every namespace), and types
/// from `policyTypes` (ingress only when unset). A rule that cannot be converted is dropped
/// and the rest of the policy kept.
pub fn translate_k8s_network_policy(obj: &Value) -> Result<Vec<Kv>, TranslateError> {
    let n = name(obj)?;
    let ns = namespace(obj);
    if ns.is_empty() {
        return Err(TranslateError::Missing("metadata.namespace"));
    }
    let null = Value::Null;
    let spec = k8s_network_policy_spec(obj.get("spec").unwrap_or(&null), false)?;
    Ok(vec![(
        policy_key("KubernetesNetworkPolicy", ns, n),
        to_bytes(&network_policy_v1(&spec, ns)),
    )])
}

/// Translates a StagedKubernetesNetworkPolicy into
/// `/calico/v1/policy/StagedKubernetesNetworkPolicy/<ns>/<name>`: its spec converted as a
/// Kubernetes NetworkPolicy plus `staged_action`. A `stagedAction` of `Delete` yields nothing,
/// and so does a policy with a rule that cannot be converted (Calico's staged processor fails
/// the whole conversion, which it turns into a delete).
pub fn translate_staged_k8s_network_policy(obj: &Value) -> Result<Vec<Kv>, TranslateError> {
    let n = name(obj)?;
    let ns = namespace(obj);
    if ns.is_empty() {
        return Err(TranslateError::Missing("metadata.namespace"));
    }
    let Some(action) = staged_action(obj) else {
        return Ok(Vec::new());
    };
    let null = Value::Null;
    let spec = match k8s_network_policy_spec(obj.get("spec").unwrap_or(&null), true) {
        Ok(s) => s,
        Err(TranslateError::Invalid {
            field: "spec rules",
            ..
        }) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut v = network_policy_v1(&spec, ns);
    v.staged_action = action;
    Ok(vec![(
        policy_key("StagedKubernetesNetworkPolicy", ns, n),
        to_bytes(&v),
    )])
}

#[cfg(test)]
mod tests {
    use super::super::core::tests::{pairs, translate};
    use super::super::TranslateFn;
    use super::*;

    fn norm(s: &str) -> String {
        attach_prefix(s, "")
    }

    #[test]
    fn selector_canonical_form() {
        assert_eq!(norm("a == 'b'"), r#"a == "b""#);
        assert_eq!(norm("a=='b'&&c!=\"d\""), r#"(a == "b" && c != "d")"#);
        assert_eq!(norm("(a == 'b')"), r#"a == "b""#);
        assert_eq!(
            norm("(a == 'x' && b == 'y') && c == 'z'"),
            r#"((a == "x" && b == "y") && c == "z")"#
        );
        assert_eq!(
            norm("a == 'x' || b == 'y' && c == 'z'"),
            r#"(a == "x" || (b == "y" && c == "z"))"#
        );
        assert_eq!(norm("k in { 'b', 'a', 'b' }"), r#"k in {"a", "b"}"#);
        assert_eq!(norm("k not in {'x'}"), r#"k not in {"x"}"#);
        assert_eq!(norm("k notin {'x'}"), r#"k not in {"x"}"#);
        assert_eq!(norm("! has( k )"), "!has(k)");
        assert_eq!(norm("!!has(k)"), "has(k)");
        assert_eq!(norm("!(a == 'b' || has(c))"), r#"!(a == "b" || has(c))"#);
        assert_eq!(norm(""), "all()");
        assert_eq!(norm("all()"), "all()");
        assert_eq!(norm("global()"), "global()");
        assert_eq!(norm("a contains 'x'"), r#"a contains "x""#);
        assert_eq!(norm("a starts with 'x'"), r#"a starts with "x""#);
        assert_eq!(norm("a ends  with 'x'"), r#"a ends with "x""#);
        // A value holding a double quote is single-quoted.
        assert_eq!(norm(r#"a == 'say "hi"'"#), r#"a == 'say "hi"'"#);
        // Errors give "".
        for bad in [
            "a ==",
            "a = 'b'",
            "a == b",
            "(a == 'b'",
            "a == 'b' c",
            "a in 'b'",
            "&&",
            "a",
        ] {
            assert_eq!(norm(bad), "", "{bad}");
        }
        // A label is not an operator: "has" without a paren is a label.
        assert_eq!(norm("has == 'x'"), r#"has == "x""#);
        assert_eq!(norm("a containsx 'x'"), "");
    }

    #[test]
    fn selector_prefixing() {
        assert_eq!(attach_prefix("team == 'a'", "pcns."), r#"pcns.team == "a""#);
        assert_eq!(
            attach_prefix("has(a) && !has(b) && c in {'x'} && d not in {'y'}", "pcsa."),
            r#"(has(pcsa.a) && !has(pcsa.b) && pcsa.c in {"x"} && pcsa.d not in {"y"})"#
        );
        assert_eq!(
            attach_prefix(
                "a contains 'x' || b starts with 'y' || c ends with 'z' || d != 'w'",
                "p."
            ),
            r#"(p.a contains "x" || p.b starts with "y" || p.c ends with "z" || p.d != "w")"#
        );
        assert_eq!(attach_prefix("all()", "pcns."), "all()");
        assert_eq!(attach_prefix("global()", "pcns."), "global()");
    }

    #[test]
    fn endpoint_selector_rules() {
        // Nothing given: no selector, even in a namespaced policy.
        assert_eq!(endpoint_selector("", "", "", "", "ns1"), "");
        // A selector in a namespaced policy is limited to the namespace.
        assert_eq!(
            endpoint_selector("", "app == 'db'", "", "", "ns1"),
            "(projectcalico.org/namespace == 'ns1') && (app == 'db')"
        );
        // So is a notSelector alone (the namespace term is the whole selector).
        assert_eq!(
            endpoint_selector("", "", "", "app == 'x'", "ns1"),
            "projectcalico.org/namespace == 'ns1'"
        );
        // Global policy: the selector as it is.
        assert_eq!(
            endpoint_selector("", "app == 'db'", "", "", ""),
            "app == 'db'"
        );
        // A namespace selector replaces the policy's namespace, prefixed and normalized.
        assert_eq!(
            endpoint_selector("team == 'a'", "app == 'db'", "", "", "ns1"),
            r#"(pcns.team == "a") && (app == 'db')"#
        );
        assert_eq!(
            endpoint_selector("team == 'a'", "", "", "", ""),
            r#"pcns.team == "a""#
        );
        assert_eq!(
            endpoint_selector("all()", "", "", "", "ns1"),
            "has(projectcalico.org/namespace)"
        );
        assert_eq!(
            endpoint_selector("global()", "", "", "", ""),
            "!has(projectcalico.org/namespace)"
        );
        // Service accounts come first, then the endpoint selector.
        let sa = service_account_selector(&["web".into(), "api".into()], "role == 'fe'");
        assert_eq!(
            sa,
            r#"(pcsa.role == "fe") && (projectcalico.org/serviceaccount in {"api", "web"})"#
        );
        assert_eq!(
            endpoint_selector("", "app == 'x'", &sa, "", "ns1"),
            concat!(
                r#"(projectcalico.org/namespace == 'ns1') && (((pcsa.role == "fe") && "#,
                r#"(projectcalico.org/serviceaccount in {"api", "web"})) && (app == 'x'))"#
            )
        );
        assert_eq!(
            service_account_selector(&["web".into()], ""),
            r#"projectcalico.org/serviceaccount in {"web"}"#
        );
        assert_eq!(
            service_account_selector(&[], "x == 'y'"),
            r#"pcsa.x == "y""#
        );
        // An unparseable namespace selector is dropped, leaving the rule unscoped.
        assert_eq!(
            endpoint_selector("a ==", "app == 'x'", "", "", "ns1"),
            "app == 'x'"
        );
    }

    #[test]
    fn policy_level_selector_rewriting() {
        let spec = V3PolicySpec {
            selector: "app == 'web'".into(),
            service_account_selector: "role == 'x'".into(),
            ..V3PolicySpec::default()
        };
        assert_eq!(
            network_policy_v1(&spec, "ns1").selector,
            r#"((app == 'web') && projectcalico.org/namespace == 'ns1') && pcsa.role == "x""#
        );
        let empty = V3PolicySpec::default();
        assert_eq!(
            network_policy_v1(&empty, "ns1").selector,
            "projectcalico.org/namespace == 'ns1'"
        );
        let gnp = V3PolicySpec {
            selector: "all()".into(),
            namespace_selector: "all()".into(),
            service_account_selector: "all()".into(),
            ..V3PolicySpec::default()
        };
        // Every all() is replaced, including the policy's own (Calico's strings.Replace).
        assert_eq!(
            global_network_policy_v1(&gnp).selector,
            "((has(projectcalico.org/namespace)) && has(projectcalico.org/namespace)) && has(projectcalico.org/serviceaccount)"
        );
        let gnp = V3PolicySpec {
            namespace_selector: "kubernetes.io/metadata.name in {'b','a'}".into(),
            ..V3PolicySpec::default()
        };
        assert_eq!(
            global_network_policy_v1(&gnp).selector,
            r#"pcns.kubernetes.io/metadata.name in {"a", "b"}"#
        );
    }

    #[test]
    fn port_simplification() {
        let r = |a, b| Port::Range(a, b);
        assert_eq!(
            simplify_ports(vec![
                r(82, 82),
                r(80, 80),
                Port::Named("http".into()),
                r(81, 81),
                r(9090, 9090)
            ]),
            vec![Port::Named("http".into()), r(80, 82), r(9090, 9090)]
        );
        assert_eq!(simplify_ports(vec![r(80, 80)]), vec![r(80, 80)]);
        // A single numeric port among named ones is returned as given.
        assert_eq!(
            simplify_ports(vec![r(80, 80), Port::Named("x".into())]),
            vec![r(80, 80), Port::Named("x".into())]
        );
        assert_eq!(
            simplify_ports(vec![r(1000, 1002), r(1003, 1003)]),
            vec![r(1000, 1003)]
        );
        assert!(Port::parse("http:90").is_err());
        assert!(Port::parse("90:80").is_err());
        assert!(Port::parse("70000").is_err());
        assert_eq!(Port::parse("80:90"), Ok(r(80, 90)));
        assert_eq!(r(80, 90).to_json(), Value::String("80:90".into()));
        assert_eq!(r(80, 80).to_json(), Value::from(80));
    }

    #[test]
    fn k8s_network_policy_full() {
        let expected = concat!(
            r#"{"namespace":"shop","tier":"default","order":1000,"inbound_rules":["#,
            // From podSelector (role=frontend) and namespaceSelector {}, TCP 8081, 8080 and "metrics"
            // (named first, numbers merged into a range).
            r#"{"action":"allow","protocol":"tcp","#,
            r#""src_selector":"(projectcalico.org/namespace == 'shop') \u0026\u0026 (projectcalico.org/orchestrator == 'k8s' \u0026\u0026 role == 'frontend')","#,
            r#""dst_ports":["metrics","8080:8081"],"orig_src_selector":"projectcalico.org/orchestrator == 'k8s' \u0026\u0026 role == 'frontend'"},"#,
            r#"{"action":"allow","protocol":"tcp","src_selector":"(has(projectcalico.org/namespace)) \u0026\u0026 (projectcalico.org/orchestrator == 'k8s')","#,
            r#""dst_ports":["metrics","8080:8081"],"orig_src_selector":"projectcalico.org/orchestrator == 'k8s'","orig_src_namespace_selector":"all()"},"#,
            // UDP 53 from the same peers.
            r#"{"action":"allow","protocol":"udp","#,
            r#""src_selector":"(projectcalico.org/namespace == 'shop') \u0026\u0026 (projectcalico.org/orchestrator == 'k8s' \u0026\u0026 role == 'frontend')","#,
            r#""dst_ports":[53],"orig_src_selector":"projectcalico.org/orchestrator == 'k8s' \u0026\u0026 role == 'frontend'"},"#,
            r#"{"action":"allow","protocol":"udp","src_selector":"(has(projectcalico.org/namespace)) \u0026\u0026 (projectcalico.org/orchestrator == 'k8s')","#,
            r#""dst_ports":[53],"orig_src_selector":"projectcalico.org/orchestrator == 'k8s'","orig_src_namespace_selector":"all()"},"#,
            // Second ingress rule: ipBlock with except, all ports.
            r#"{"action":"allow","src_nets":["10.0.0.0/8"],"!src_nets":["10.1.0.0/16","10.2.0.0/16"]}],"#,
            r#""outbound_rules":["#,
            // Egress to namespaces labelled team=payments (and env in prod,staging), pods app=db, TCP 5432 and endPort range.
            r#"{"action":"allow","protocol":"tcp","#,
            r#""dst_selector":"((pcns.team == \"payments\" \u0026\u0026 pcns.env in {\"prod\", \"staging\"})) \u0026\u0026 (projectcalico.org/orchestrator == 'k8s' \u0026\u0026 app == 'db')","#,
            r#""dst_ports":[5432,"30000:30100"],"#,
            r#""orig_dst_selector":"projectcalico.org/orchestrator == 'k8s' \u0026\u0026 app == 'db'","#,
            r#""orig_dst_namespace_selector":"team == 'payments' \u0026\u0026 env in { 'staging', 'prod' }"},"#,
            // Egress anywhere on UDP 53 (no peers).
            r#"{"action":"allow","protocol":"udp","dst_ports":[53]}],"#,
            r#""selector":"(projectcalico.org/orchestrator == 'k8s' \u0026\u0026 app == 'api' \u0026\u0026 tier in { 'web', 'edge' } \u0026\u0026 ! has(canary)) \u0026\u0026 projectcalico.org/namespace == 'shop'","#,
            r#""types":["ingress","egress"]}"#
        );
        assert_eq!(
            translate(translate_k8s_network_policy, "networkpolicy/api-allow.yaml"),
            pairs(&[(
                "/calico/v1/policy/KubernetesNetworkPolicy/shop/api-allow",
                expected
            )])
        );
    }

    #[test]
    fn k8s_network_policy_defaults_and_bad_rules() {
        // No policyTypes: ingress only. Empty podSelector. An ingress rule with no peers and
        // no ports allows everything; a rule with a named port + endPort is dropped.
        let expected = concat!(
            r#"{"namespace":"default","tier":"default","order":1000,"#,
            r#""inbound_rules":[{"action":"allow"}],"#,
            r#""selector":"(projectcalico.org/orchestrator == 'k8s') \u0026\u0026 projectcalico.org/namespace == 'default'","#,
            r#""types":["ingress"]}"#
        );
        assert_eq!(
            translate(
                translate_k8s_network_policy,
                "networkpolicy/allow-all-legacy.yaml"
            ),
            pairs(&[(
                "/calico/v1/policy/KubernetesNetworkPolicy/default/allow-all",
                expected
            )])
        );
        let deny = concat!(
            r#"{"namespace":"shop","tier":"default","order":1000,"#,
            r#""selector":"(projectcalico.org/orchestrator == 'k8s') \u0026\u0026 projectcalico.org/namespace == 'shop'","#,
            r#""types":["ingress","egress"]}"#
        );
        assert_eq!(
            translate(
                translate_k8s_network_policy,
                "networkpolicy/default-deny.yaml"
            ),
            pairs(&[(
                "/calico/v1/policy/KubernetesNetworkPolicy/shop/default-deny",
                deny
            )])
        );
    }

    #[test]
    fn calico_network_policy() {
        let expected = concat!(
            r#"{"namespace":"shop","tier":"security","order":100.5,"inbound_rules":["#,
            r#"{"action":"allow","protocol":"tcp","src_selector":"(projectcalico.org/namespace == 'shop') \u0026\u0026 (app == 'frontend')","#,
            r#""dst_ports":[8080,"9000:9100","http"],"orig_src_selector":"app == 'frontend'"},"#,
            r#"{"action":"next-tier","ip_version":4,"protocol":"icmp","icmp_type":8,"icmp_code":0,"#,
            r#""src_selector":"(pcns.team == \"ops\") \u0026\u0026 ((pcsa.role == \"monitor\") \u0026\u0026 (projectcalico.org/serviceaccount in {\"prometheus\"}))","#,
            r#""orig_src_namespace_selector":"team == 'ops'","orig_src_service_acct_names":["prometheus"],"#,
            r#""orig_src_service_acct_selector":"role == 'monitor'","metadata":{"annotations":{"owner":"sec"}}}],"#,
            r#""outbound_rules":[{"action":"deny","protocol":6,"dst_nets":["169.254.0.0/16"],"!dst_nets":["169.254.1.0/24"]},"#,
            r#"{"action":"log","!protocol":"udp","dst_selector":"projectcalico.org/namespace == 'shop'","#,
            r#""dst_service":"kube-dns","dst_service_ns":"kube-system","!dst_selector":"app == 'db'","!dst_ports":[22],"#,
            r#""!orig_dst_selector":"app == 'db'","http":{"methods":["GET"],"paths":[{"prefix":"/api"}]}}],"#,
            r#""selector":"((app == 'api') \u0026\u0026 projectcalico.org/namespace == 'shop') \u0026\u0026 pcsa.team == \"payments\"","#,
            r#""types":["ingress","egress"],"performance_hints":["AssumeNeededOnEveryNode"]}"#
        );
        assert_eq!(
            translate(
                translate_calico_network_policy,
                "calico-networkpolicy/api.yaml"
            ),
            pairs(&[(
                "/calico/v1/policy/NetworkPolicy/shop/security.api",
                expected
            )])
        );
    }

    #[test]
    fn calico_network_policy_legacy_default_prefix() {
        // A crd.projectcalico.org/v1 policy in the default tier without the metadata
        // annotation: Calico v3.32 builds the key from the CR name before converting the
        // metadata, so the "default." prefix stays in the key.
        let out = translate(
            translate_calico_network_policy,
            "calico-networkpolicy/legacy-name.yaml",
        );
        assert_eq!(
            out,
            pairs(&[(
                "/calico/v1/policy/NetworkPolicy/shop/default.allow-dns",
                concat!(
                    r#"{"namespace":"shop","tier":"default","outbound_rules":[{"action":"allow","protocol":"udp","dst_ports":[53]}],"#,
                    r#""selector":"projectcalico.org/namespace == 'shop'","types":["egress"]}"#
                )
            )])
        );
    }

    #[test]
    fn policy_keys_use_the_object_name_whatever_the_metadata_annotation_says() {
        // Calico v3.32 builds the ResourceKey from the CR name before the metadata annotation
        // is decoded, so neither the annotation's name nor a "default." prefix changes the key.
        let spec = serde_json::json!({"selector": "all()", "types": ["Ingress"]});
        let with_annotation = |kind: &str, ns: Option<&str>| {
            let mut meta = serde_json::json!({
                "name": "default.x",
                "uid": "0a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d",
                "annotations": {"projectcalico.org/metadata": "{\"name\":\"other\"}"},
            });
            if let Some(ns) = ns {
                meta["namespace"] = Value::String(ns.into());
            }
            serde_json::json!({
                "apiVersion": "crd.projectcalico.org/v1",
                "kind": kind,
                "metadata": meta,
                "spec": spec.clone(),
            })
        };
        let cases: [(TranslateFn, &str, Option<&str>, &str); 4] = [
            (
                translate_global_network_policy,
                "GlobalNetworkPolicy",
                None,
                "/calico/v1/policy/GlobalNetworkPolicy//default.x",
            ),
            (
                translate_staged_global_network_policy,
                "StagedGlobalNetworkPolicy",
                None,
                "/calico/v1/policy/StagedGlobalNetworkPolicy//default.x",
            ),
            (
                translate_calico_network_policy,
                "NetworkPolicy",
                Some("ns1"),
                "/calico/v1/policy/NetworkPolicy/ns1/default.x",
            ),
            (
                translate_staged_network_policy,
                "StagedNetworkPolicy",
                Some("ns1"),
                "/calico/v1/policy/StagedNetworkPolicy/ns1/default.x",
            ),
        ];
        for (f, kind, ns, key) in cases {
            let out = f(&with_annotation(kind, ns)).unwrap();
            let keys: Vec<&str> = out.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(keys, vec![key], "{kind}");
        }
    }

    #[test]
    fn global_network_policy() {
        let expected = concat!(
            r#"{"tier":"default","order":10,"inbound_rules":[{"action":"allow","protocol":"tcp","#,
            r#""src_nets":["10.0.0.0/8","192.168.1.7/32"],"dst_ports":[22],"#,
            r#""!src_nets":["10.9.0.0/16"]}],"#,
            r#""outbound_rules":[{"action":"next-tier"}],"#,
            r#""selector":"(role == 'gateway') \u0026\u0026 (pcns.kubernetes.io/metadata.name == \"kube-system\" || has(projectcalico.org/namespace))","#,
            r#""untracked":true,"apply_on_forward":true,"types":["ingress","egress"]}"#
        );
        assert_eq!(
            translate(
                translate_global_network_policy,
                "globalnetworkpolicy/gateway.yaml"
            ),
            pairs(&[(
                "/calico/v1/policy/GlobalNetworkPolicy//default.gateway",
                expected
            )])
        );
    }

    #[test]
    fn staged_policies() {
        assert_eq!(
            translate(
                translate_staged_network_policy,
                "stagednetworkpolicy/set.yaml"
            ),
            pairs(&[(
                "/calico/v1/policy/StagedNetworkPolicy/shop/default.trial",
                concat!(
                    r#"{"namespace":"shop","tier":"default","order":50,"#,
                    r#""inbound_rules":[{"action":"deny"}],"selector":"(app == 'api') \u0026\u0026 projectcalico.org/namespace == 'shop'","#,
                    r#""types":["ingress"],"staged_action":"Set"}"#
                )
            )])
        );
        assert_eq!(
            translate(
                translate_staged_network_policy,
                "stagednetworkpolicy/delete.yaml"
            ),
            vec![]
        );
        assert_eq!(
            translate(
                translate_staged_global_network_policy,
                "stagedglobalnetworkpolicy/learn.yaml"
            ),
            pairs(&[(
                "/calico/v1/policy/StagedGlobalNetworkPolicy//default.audit",
                concat!(
                    r#"{"tier":"default","outbound_rules":[{"action":"next-tier"}],"#,
                    r#""selector":"all()","types":["egress"],"staged_action":"Learn"}"#
                )
            )])
        );
        assert_eq!(
            translate(
                translate_staged_global_network_policy,
                "stagedglobalnetworkpolicy/delete.yaml"
            ),
            vec![]
        );
        assert_eq!(
            translate(
                translate_staged_k8s_network_policy,
                "stagedkubernetesnetworkpolicy/set.yaml"
            ),
            pairs(&[(
                "/calico/v1/policy/StagedKubernetesNetworkPolicy/shop/lockdown",
                concat!(
                    r#"{"namespace":"shop","tier":"default","order":1000,"#,
                    r#""selector":"(projectcalico.org/orchestrator == 'k8s' \u0026\u0026 app == 'api') \u0026\u0026 projectcalico.org/namespace == 'shop'","#,
                    r#""types":["ingress"],"staged_action":"Set"}"#
                )
            )])
        );
        assert_eq!(
            translate(
                translate_staged_k8s_network_policy,
                "stagedkubernetesnetworkpolicy/delete.yaml"
            ),
            vec![]
        );
    }
}
