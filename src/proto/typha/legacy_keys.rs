//! Policy keys in the form Felix v3.31 and older understand.
//!
//! Calico v3.32 moved policies from `/calico/v1/policy/tier/<tier>/policy/<escaped name>` to
//! `/calico/v1/policy/<Kind>/<Namespace>/<Name>` and moved the tier into the value. A v3.31
//! Felix parses only the old path: it drops a key in the new form with a warning ("Failed to
//! parse key"), so without this translation it would run with no policy at all. The old path
//! carried the kind in the name:
//!
//! | v3.32 kind | v3.31 name (before escaping) |
//! |---|---|
//! | `GlobalNetworkPolicy` | `<name>` |
//! | `StagedGlobalNetworkPolicy` | `staged:<name>` |
//! | `NetworkPolicy` | `<ns>/<name>` |
//! | `StagedNetworkPolicy` | `<ns>/staged:<name>` |
//! | `KubernetesNetworkPolicy` | `<ns>/knp.default.<name>` |
//! | `StagedKubernetesNetworkPolicy` | `<ns>/staged:knp.default.<name>` |
//! | `KubernetesClusterNetworkPolicy` (v3.32 only) | `kcnp.<name>` |
//!
//! The name is escaped (`%` as `%25`, then `/` as `%2f`), so a namespaced name becomes one
//! path segment. v3.32's own Felix reads the same forms back (`parseLegacyPolicyName`), which
//! is why `kcnp.` is the prefix for a kind v3.31 never had.
//!
//! The tier is the value's `tier` (v3.32 always writes it). Where no value says it (a
//! deletion), the caller passes the value the client last received for the key; failing that,
//! the tier comes from the name as v3.31 derived it (`TierFromPolicyName`). The value itself is
//! sent unchanged: v3.31's `Policy` has every field v3.32 writes except `tier`, and Go's
//! `encoding/json` ignores a field the struct lacks.
//!
//! Everything here is a pure function of its arguments; `proto::encode` applies it while it
//! encodes the legacy wire variants.

use std::borrow::Cow;

const MODERN_PREFIX: &str = "/calico/v1/policy/";

/// The kinds v3.32 writes under `/calico/v1/policy/<Kind>/`.
const KINDS: [&str; 7] = [
    "GlobalNetworkPolicy",
    "StagedGlobalNetworkPolicy",
    "NetworkPolicy",
    "StagedNetworkPolicy",
    "KubernetesNetworkPolicy",
    "StagedKubernetesNetworkPolicy",
    "KubernetesClusterNetworkPolicy",
];

/// A v3.32 policy key, split into its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModernPolicyKey<'a> {
    pub kind: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

/// Splits `/calico/v1/policy/<Kind>/<Namespace>/<Name>`; `None` for any other key (tiers,
/// profiles, the v3.31 form, other resources, kinds this module does not know).
pub fn parse_modern_policy_key(key: &str) -> Option<ModernPolicyKey<'_>> {
    let rest = key.strip_prefix(MODERN_PREFIX)?;
    let mut parts = rest.splitn(3, '/');
    let kind = parts.next()?;
    let namespace = parts.next()?;
    let name = parts.next()?;
    if !KINDS.contains(&kind) || name.is_empty() || name.contains('/') {
        return None;
    }
    Some(ModernPolicyKey {
        kind,
        namespace,
        name,
    })
}

/// Whether a v3.31 client needs `key` rewritten.
pub fn is_modern_policy_key(key: &str) -> bool {
    parse_modern_policy_key(key).is_some()
}

/// The v3.31 policy name of `k`, before escaping (see the module table).
pub fn legacy_policy_name(k: &ModernPolicyKey<'_>) -> String {
    let n = k.name;
    let ns = k.namespace;
    match k.kind {
        "StagedGlobalNetworkPolicy" => format!("staged:{n}"),
        "NetworkPolicy" => format!("{ns}/{n}"),
        "StagedNetworkPolicy" => format!("{ns}/staged:{n}"),
        "KubernetesNetworkPolicy" => format!("{ns}/knp.default.{n}"),
        "StagedKubernetesNetworkPolicy" => format!("{ns}/staged:knp.default.{n}"),
        "KubernetesClusterNetworkPolicy" => format!("kcnp.{n}"),
        // GlobalNetworkPolicy, and any namespaced kind written without a namespace.
        _ if ns.is_empty() => n.to_owned(),
        _ => format!("{ns}/{n}"),
    }
}

/// The tier v3.31 derived from a policy name (`names.TierFromPolicyName`): the prefix of
/// Kubernetes-derived names, else the word before the first dot, else `default`. `name` is
/// the v3.31 name without its namespace and `staged:` prefix.
pub fn tier_from_name(name: &str) -> &str {
    const FIXED: [(&str, &str); 4] = [
        ("knp.default.", "default"),
        ("kanp.adminnetworkpolicy.", "adminnetworkpolicy"),
        (
            "kbanp.baselineadminnetworkpolicy.",
            "baselineadminnetworkpolicy",
        ),
        ("ossg.", "default"),
    ];
    for (prefix, tier) in FIXED {
        if name.starts_with(prefix) {
            return tier;
        }
    }
    match name.split_once('.') {
        Some((tier, _)) if !tier.is_empty() => tier,
        _ => "default",
    }
}

/// The value's `tier` (v3.32's `model.Policy.Tier`), if the value is a JSON object that has a
/// non-empty one.
pub fn policy_tier(value: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct TierOnly<'a> {
        #[serde(borrow, default)]
        tier: Option<Cow<'a, str>>,
    }
    let t: TierOnly<'_> = serde_json::from_slice(value).ok()?;
    t.tier.filter(|t| !t.is_empty()).map(Cow::into_owned)
}

/// `%` as `%25`, then `/` as `%2f`, as v3.31's `escapeName`.
pub fn escape_name(name: &str) -> Cow<'_, str> {
    if !name.contains(['%', '/']) {
        return Cow::Borrowed(name);
    }
    Cow::Owned(name.replace('%', "%25").replace('/', "%2f"))
}

/// `/calico/v1/policy/tier/<tier>/policy/<escaped v3.31 name>`.
pub fn legacy_path(tier: &str, legacy_name: &str) -> String {
    format!(
        "/calico/v1/policy/tier/{tier}/policy/{}",
        escape_name(legacy_name)
    )
}

/// The v3.31 key of the modern policy key `key`, for the policy whose value is `value` (or,
/// for a deletion, whose last value sent was `previous`). `None` when `key` is not a modern
/// policy key: the key is sent as it is.
pub fn legacy_policy_key(
    key: &str,
    value: Option<&[u8]>,
    previous: Option<&[u8]>,
) -> Option<String> {
    let k = parse_modern_policy_key(key)?;
    let legacy_name = legacy_policy_name(&k);
    let tier = value
        .or(previous)
        .and_then(policy_tier)
        .unwrap_or_else(|| tier_from_name(name_for_tier(&k)).to_owned());
    Some(legacy_path(&tier, &legacy_name))
}

/// The part of the v3.31 name `TierFromPolicyName` looked at: no namespace, no `staged:`.
fn name_for_tier<'a>(k: &ModernPolicyKey<'a>) -> &'a str {
    match k.kind {
        "KubernetesNetworkPolicy" | "StagedKubernetesNetworkPolicy" => "knp.default.",
        _ => k.name,
    }
}

/// How one update reaches a v3.31 client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegacyUpdate {
    /// Not a policy key: as it is.
    Unchanged,
    /// A policy key, sent under `key`.
    Rekeyed { key: String },
    /// A policy whose tier changed: the client holds it under `removed`, which must be deleted
    /// before the policy is sent under `key`.
    Moved { removed: String, key: String },
}

/// Translates one delta. `value` is the new value (`None`: deleted); `previous` is the value
/// the client holds for `key` (the map as of the batch before), if any.
pub fn legacy_update(key: &str, value: Option<&[u8]>, previous: Option<&[u8]>) -> LegacyUpdate {
    let Some(new_key) = legacy_policy_key(key, value, previous) else {
        return LegacyUpdate::Unchanged;
    };
    if let (Some(_), Some(prev)) = (value, previous) {
        if let Some(old_key) = legacy_policy_key(key, Some(prev), None) {
            if old_key != new_key {
                return LegacyUpdate::Moved {
                    removed: old_key,
                    key: new_key,
                };
            }
        }
    }
    LegacyUpdate::Rekeyed { key: new_key }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GNP_VALUE: &[u8] = br#"{"tier":"security","order":10,"selector":"all()"}"#;

    fn key(kind: &str, ns: &str, name: &str) -> String {
        format!("/calico/v1/policy/{kind}/{ns}/{name}")
    }

    fn with_tier(tier: &str) -> Vec<u8> {
        format!(r#"{{"namespace":"shop","tier":"{tier}","selector":"a == 'b'"}}"#).into_bytes()
    }

    #[test]
    fn global_network_policy_goes_under_its_tier_unescaped() {
        assert_eq!(
            legacy_policy_key(
                &key("GlobalNetworkPolicy", "", "security.block"),
                Some(GNP_VALUE),
                None
            ),
            Some("/calico/v1/policy/tier/security/policy/security.block".into())
        );
        // v3.32 allows names without the tier prefix; the value's tier still decides.
        assert_eq!(
            legacy_policy_key(
                &key("GlobalNetworkPolicy", "", "block"),
                Some(GNP_VALUE),
                None
            ),
            Some("/calico/v1/policy/tier/security/policy/block".into())
        );
    }

    #[test]
    fn staged_global_network_policy_gets_the_staged_prefix() {
        assert_eq!(
            legacy_policy_key(
                &key("StagedGlobalNetworkPolicy", "", "default.audit"),
                Some(&with_tier("default")),
                None
            ),
            Some("/calico/v1/policy/tier/default/policy/staged:default.audit".into())
        );
    }

    #[test]
    fn network_policy_name_is_namespace_slash_name_escaped() {
        assert_eq!(
            legacy_policy_key(
                &key("NetworkPolicy", "shop", "team.allow"),
                Some(&with_tier("team")),
                None
            ),
            Some("/calico/v1/policy/tier/team/policy/shop%2fteam.allow".into())
        );
    }

    #[test]
    fn staged_network_policy_puts_staged_after_the_namespace() {
        assert_eq!(
            legacy_policy_key(
                &key("StagedNetworkPolicy", "shop", "p"),
                Some(&with_tier("default")),
                None
            ),
            Some("/calico/v1/policy/tier/default/policy/shop%2fstaged:p".into())
        );
    }

    #[test]
    fn kubernetes_network_policy_gets_knp_default() {
        assert_eq!(
            legacy_policy_key(
                &key("KubernetesNetworkPolicy", "shop", "deny"),
                Some(&with_tier("default")),
                None
            ),
            Some("/calico/v1/policy/tier/default/policy/shop%2fknp.default.deny".into())
        );
    }

    #[test]
    fn staged_kubernetes_network_policy_gets_staged_knp_default() {
        assert_eq!(
            legacy_policy_key(
                &key("StagedKubernetesNetworkPolicy", "shop", "deny"),
                Some(&with_tier("default")),
                None
            ),
            Some("/calico/v1/policy/tier/default/policy/shop%2fstaged:knp.default.deny".into())
        );
    }

    #[test]
    fn cluster_network_policy_gets_kcnp_in_its_tier() {
        assert_eq!(
            legacy_policy_key(
                &key("KubernetesClusterNetworkPolicy", "", "guardrails"),
                Some(br#"{"tier":"kube-admin","order":5,"selector":"all()"}"#),
                None
            ),
            Some("/calico/v1/policy/tier/kube-admin/policy/kcnp.guardrails".into())
        );
    }

    #[test]
    fn a_deletion_takes_the_tier_of_the_value_the_client_holds() {
        let k = key("NetworkPolicy", "shop", "p");
        assert_eq!(
            legacy_policy_key(&k, None, Some(&with_tier("team"))),
            Some("/calico/v1/policy/tier/team/policy/shop%2fp".into())
        );
        assert_eq!(
            legacy_update(&k, None, Some(&with_tier("team"))),
            LegacyUpdate::Rekeyed {
                key: "/calico/v1/policy/tier/team/policy/shop%2fp".into()
            }
        );
    }

    #[test]
    fn without_any_value_the_tier_comes_from_the_name_as_in_v3_31() {
        let deleted = |kind, ns, name| legacy_policy_key(&key(kind, ns, name), None, None);
        assert_eq!(
            deleted("GlobalNetworkPolicy", "", "team.p"),
            Some("/calico/v1/policy/tier/team/policy/team.p".into())
        );
        assert_eq!(
            deleted("GlobalNetworkPolicy", "", "p"),
            Some("/calico/v1/policy/tier/default/policy/p".into())
        );
        assert_eq!(
            deleted("StagedNetworkPolicy", "ns", "team.p"),
            Some("/calico/v1/policy/tier/team/policy/ns%2fstaged:team.p".into())
        );
        assert_eq!(
            deleted("KubernetesNetworkPolicy", "ns", "a.b"),
            Some("/calico/v1/policy/tier/default/policy/ns%2fknp.default.a.b".into())
        );
        assert_eq!(
            tier_from_name("kanp.adminnetworkpolicy.x"),
            "adminnetworkpolicy"
        );
        assert_eq!(
            tier_from_name("kbanp.baselineadminnetworkpolicy.x"),
            "baselineadminnetworkpolicy"
        );
        assert_eq!(tier_from_name("ossg.default.sg1"), "default");
        assert_eq!(tier_from_name(".odd"), "default");
    }

    #[test]
    fn a_tier_change_removes_the_old_key_first() {
        let k = key("GlobalNetworkPolicy", "", "p");
        assert_eq!(
            legacy_update(&k, Some(&with_tier("b")), Some(&with_tier("a"))),
            LegacyUpdate::Moved {
                removed: "/calico/v1/policy/tier/a/policy/p".into(),
                key: "/calico/v1/policy/tier/b/policy/p".into(),
            }
        );
        assert_eq!(
            legacy_update(&k, Some(&with_tier("a")), Some(&with_tier("a"))),
            LegacyUpdate::Rekeyed {
                key: "/calico/v1/policy/tier/a/policy/p".into()
            }
        );
    }

    #[test]
    fn other_keys_are_left_alone() {
        for k in [
            "/calico/v1/policy/tier/default/metadata",
            "/calico/v1/policy/tier/default/policy/p",
            "/calico/v1/policy/profile/kns.shop/rules",
            "/calico/v1/host/n1/workload/k8s/shop%2fpod/endpoint/eth0",
            "/calico/resources/v3/projectcalico.org/nodes/n1",
            "/calico/v1/policy/SomeFutureKind//p",
            "/calico/v1/policy/NetworkPolicy/shop/",
        ] {
            assert_eq!(
                legacy_update(k, Some(GNP_VALUE), None),
                LegacyUpdate::Unchanged,
                "{k}"
            );
        }
    }

    #[test]
    fn escaping_matches_v3_31() {
        assert_eq!(escape_name("a/b%c"), "a%2fb%25c");
        assert_eq!(escape_name("plain"), "plain");
        assert_eq!(escape_name("%2f"), "%252f");
    }

    #[test]
    fn a_value_without_tier_or_not_json_has_none() {
        assert_eq!(policy_tier(br#"{"selector":"all()"}"#), None);
        assert_eq!(policy_tier(br#"{"tier":""}"#), None);
        assert_eq!(policy_tier(b"not json"), None);
        assert_eq!(policy_tier(br#"{"tier":"t\u0031"}"#).as_deref(), Some("t1"));
    }
}
