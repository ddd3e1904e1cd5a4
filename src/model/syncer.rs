//! Syncer types: which slice of the canonical map each kind of client receives.
//!
//! typha-rs watches the datastore once and keeps one canonical map; each syncer type is a
//! projection of it by key prefix. The prefixes follow what Calico's felix, bgp,
//! tunnel-ip-allocation and node-status syncers emit (see `docs/datastore.md`).

use std::fmt;
use std::str::FromStr;

const V3: &str = "/calico/resources/v3/projectcalico.org/";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SyncerType {
    Felix = 0,
    Bgp = 1,
    TunnelIpAllocation = 2,
    NodeStatus = 3,
}

impl SyncerType {
    pub const ALL: [SyncerType; 4] = [
        SyncerType::Felix,
        SyncerType::Bgp,
        SyncerType::TunnelIpAllocation,
        SyncerType::NodeStatus,
    ];
    pub const COUNT: usize = Self::ALL.len();

    pub fn index(self) -> usize {
        self as usize
    }

    /// The name used on the wire and in settings, as Typha spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncerType::Felix => "felix",
            SyncerType::Bgp => "bgp",
            SyncerType::TunnelIpAllocation => "tunnel-ip-allocation",
            SyncerType::NodeStatus => "node-status",
        }
    }

    /// Parses a syncer type as a client names it; empty means felix, as in Typha.
    pub fn parse(s: &str) -> Option<SyncerType> {
        match s {
            "" | "felix" => Some(SyncerType::Felix),
            "bgp" => Some(SyncerType::Bgp),
            "tunnel-ip-allocation" => Some(SyncerType::TunnelIpAllocation),
            "node-status" => Some(SyncerType::NodeStatus),
            _ => None,
        }
    }

    /// Whether clients of this type receive `key`.
    pub fn wants(self, key: &str) -> bool {
        match self {
            SyncerType::Felix => {
                if key.starts_with("/calico/v1/") || key.starts_with("/calico/ipam/v2/assignment/")
                {
                    return true;
                }
                match key.strip_prefix(V3) {
                    Some(rest) => [
                        "nodes/",
                        "profiles/",
                        "clusterinformations/",
                        "felixconfigurations/",
                        "bgpconfigurations/",
                        "bgppeers/",
                        "livemigrations/",
                        "kubernetesservice/",
                        "kubernetesendpointslices/",
                    ]
                    .iter()
                    .any(|p| rest.starts_with(p)),
                    None => false,
                }
            }
            SyncerType::Bgp => {
                // Block affinities: `/calico/ipam/v2/<affinity type>/<host>/...`, where the type
                // is usually `host` but can be e.g. `virtual`; blocks (`assignment/`) are felix's.
                let affinity = key.starts_with("/calico/ipam/v2/")
                    && !key.starts_with("/calico/ipam/v2/assignment/");
                if is_ip_pool(key) || affinity {
                    return true;
                }
                match key.strip_prefix(V3) {
                    Some(rest) => ["nodes/", "bgpconfigurations/", "bgppeers/", "bgpfilters/"]
                        .iter()
                        .any(|p| rest.starts_with(p)),
                    None => false,
                }
            }
            SyncerType::TunnelIpAllocation => {
                is_ip_pool(key)
                    || key
                        .strip_prefix(V3)
                        .is_some_and(|r| r.starts_with("nodes/"))
            }
            SyncerType::NodeStatus => key
                .strip_prefix(V3)
                .is_some_and(|r| r.starts_with("caliconodestatuses/")),
        }
    }
}

fn is_ip_pool(key: &str) -> bool {
    key.starts_with("/calico/v1/ipam/v4/pool/") || key.starts_with("/calico/v1/ipam/v6/pool/")
}

impl fmt::Display for SyncerType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SyncerType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SyncerType::parse(s).ok_or_else(|| format!("unknown syncer type {s:?}"))
    }
}

/// A small set of syncer types, as a bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyncerTypeSet(u8);

impl SyncerTypeSet {
    pub fn of_key(key: &str) -> Self {
        let mut s = SyncerTypeSet(0);
        for t in SyncerType::ALL {
            if t.wants(key) {
                s.0 |= 1 << t.index();
            }
        }
        s
    }

    pub fn contains(self, t: SyncerType) -> bool {
        self.0 & (1 << t.index()) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn felix_gets_v1_keys_and_its_raw_v3_kinds() {
        let f = SyncerType::Felix;
        assert!(f.wants("/calico/v1/host/n1/workload/k8s/ns%2fpod/endpoint/eth0"));
        assert!(f.wants("/calico/v1/policy/NetworkPolicy/default/p"));
        assert!(f.wants("/calico/resources/v3/projectcalico.org/nodes/n1"));
        assert!(f.wants("/calico/ipam/v2/assignment/ipv4/block/10.0.0.0-26"));
        // A ClusterInformation not named `default` reaches felix clients as raw v3, as
        // calico-typha v3.32.1 sends it.
        assert!(f.wants("/calico/resources/v3/projectcalico.org/clusterinformations/x"));
        assert!(
            !SyncerType::Bgp.wants("/calico/resources/v3/projectcalico.org/clusterinformations/x")
        );
        assert!(!f.wants("/calico/resources/v3/projectcalico.org/bgpfilters/x"));
        assert!(!f.wants("/calico/ipam/v2/host/n1/ipv4/block/10.0.0.0-26"));
        assert!(!f.wants("/calico/resources/v3/projectcalico.org/caliconodestatuses/n1"));
    }

    #[test]
    fn bgp_gets_pools_nodes_and_affinities_only() {
        let b = SyncerType::Bgp;
        assert!(b.wants("/calico/v1/ipam/v4/pool/10.0.0.0-16"));
        assert!(b.wants("/calico/resources/v3/projectcalico.org/nodes/n1"));
        assert!(b.wants("/calico/ipam/v2/host/n1/ipv4/block/10.0.0.0-26"));
        assert!(b.wants("/calico/ipam/v2/virtual/vm-1/ipv4/block/10.0.0.64-26"));
        assert!(!b.wants("/calico/ipam/v2/assignment/ipv4/block/10.0.0.0-26"));
        assert!(!b.wants("/calico/v1/host/n1/workload/k8s/ns%2fpod/endpoint/eth0"));
        assert!(!b.wants("/calico/v1/policy/NetworkPolicy/default/p"));
    }

    #[test]
    fn names_round_trip_and_empty_is_felix() {
        for t in SyncerType::ALL {
            assert_eq!(SyncerType::parse(t.as_str()), Some(t));
        }
        assert_eq!(SyncerType::parse(""), Some(SyncerType::Felix));
        assert_eq!(SyncerType::parse("bogus"), None);
    }

    #[test]
    fn set_of_key() {
        let s = SyncerTypeSet::of_key("/calico/resources/v3/projectcalico.org/nodes/n1");
        assert!(s.contains(SyncerType::Felix));
        assert!(s.contains(SyncerType::Bgp));
        assert!(s.contains(SyncerType::TunnelIpAllocation));
        assert!(!s.contains(SyncerType::NodeStatus));
        assert!(SyncerTypeSet::of_key("/other").is_empty());
    }
}
