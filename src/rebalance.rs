//! How many connections this replica should hold when several share a Service
//! (`TYPHA_CONNECTIONREBALANCINGMODE=kubernetes`), and the one-way cell that carries the answer
//! from the datastore thread (which counts replicas and nodes) to the reactor (which sheds).
//!
//! `docs/rebalancing.md` explains the formula and its settings.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The limits and headroom of the target formula.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TargetParams {
    /// Never aim below this many connections (Typha's `MaxConnectionsLowerLimit`).
    pub lower: usize,
    /// Never aim above this many (Typha's `MaxConnectionsUpperLimit`; also the hard limit).
    pub upper: usize,
    /// Extra share over the node count in the rolling-update formula: 0.2 is Typha's 120 %.
    pub headroom: f64,
    /// Slack over the even share used once every replica is ready; `None` keeps Typha's
    /// formula only.
    pub even_share_slack: Option<f64>,
}

impl Default for TargetParams {
    fn default() -> Self {
        TargetParams {
            lower: 400,
            upper: 10_000,
            headroom: 0.2,
            even_share_slack: Some(0.1),
        }
    }
}

/// What one poll of the API server found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterCounts {
    /// Endpoints of the Service, ready or not.
    pub replicas: usize,
    /// Those of them that are ready.
    pub ready_replicas: usize,
    pub nodes: usize,
}

/// Typha's rule: a lone replica takes the upper limit; otherwise
/// `syncer_types × (1 + nodes × (1 + headroom) / (replicas − 1))`, clamped to the limits. The
/// `− 1` leaves room for one replica to be down (a rolling update) without any client left
/// over.
pub fn typha_target(p: &TargetParams, syncer_types: usize, c: ClusterCounts) -> usize {
    let upper = p.upper.max(1);
    if c.replicas <= 1 {
        return upper;
    }
    let per_replica = c.nodes as f64 * (1.0 + p.headroom) / (c.replicas - 1) as f64;
    let raw = syncer_types as f64 * (1.0 + per_replica);
    clamp(ceil(raw), p.lower, upper)
}

/// The target this replica sheds toward. While a replica is missing or not ready, Typha's rule
/// (room for one replica down). Once every listed replica is ready, the even share
/// `ceil(syncer_types × nodes / replicas × (1 + slack))` where that is lower: with Typha's rule
/// alone, three replicas may each hold 60 % of all clients, so one replica can end up with
/// nearly twice the others' load and nothing moves it; the even share evens them out, and the
/// slack keeps a replica that is a few clients over from shedding back and forth. Never below
/// the lower limit, never above the upper.
pub fn connection_target(p: &TargetParams, syncer_types: usize, c: ClusterCounts) -> usize {
    let typha = typha_target(p, syncer_types, c);
    let Some(slack) = p.even_share_slack else {
        return typha;
    };
    if c.replicas <= 1 || c.ready_replicas < c.replicas {
        return typha;
    }
    let share = (syncer_types * c.nodes).div_ceil(c.replicas);
    let even = share as f64 * (1.0 + slack.max(0.0));
    clamp(ceil(even), p.lower, p.upper.max(1)).min(typha)
}

/// Rounds up, forgiving float noise (200 × 1.1 is 220.00000000000003).
fn ceil(v: f64) -> f64 {
    (v - 1e-9).ceil()
}

fn clamp(v: f64, lower: usize, upper: usize) -> usize {
    let v = if v.is_finite() && v < upper as f64 {
        v as usize
    } else {
        upper
    };
    v.max(lower).min(upper)
}

/// The current connection target, written by the replica counter and read by the reactor on
/// every tick. Unset, it is `usize::MAX`: only the hard limit applies.
#[derive(Debug, Clone)]
pub struct ConnectionTarget(Arc<AtomicUsize>);

impl Default for ConnectionTarget {
    fn default() -> Self {
        ConnectionTarget(Arc::new(AtomicUsize::new(usize::MAX)))
    }
}

impl ConnectionTarget {
    pub fn set(&self, n: usize) {
        self.0.store(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Everything the replica counter needs (Kubernetes rebalancing mode).
#[derive(Debug, Clone)]
pub struct RebalanceConfig {
    pub params: TargetParams,
    pub namespace: String,
    pub service: String,
    /// The Service port clients use; an EndpointSlice without a port of this name is ignored.
    pub port_name: String,
    pub poll_interval: Duration,
    /// Where the counter writes its answer; [`Daemon::start`](crate::daemon::Daemon::start)
    /// connects it to the reactor.
    pub target: ConnectionTarget,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(replicas: usize, ready: usize, nodes: usize) -> ClusterCounts {
        ClusterCounts {
            replicas,
            ready_replicas: ready,
            nodes,
        }
    }

    #[test]
    fn typha_rule_matches_its_formula() {
        let p = TargetParams::default();
        // A lone replica (or none listed yet) takes everything.
        assert_eq!(typha_target(&p, 4, counts(1, 1, 5000)), 10_000);
        assert_eq!(typha_target(&p, 4, counts(0, 0, 5000)), 10_000);
        // 3 replicas, 1000 nodes: 4 × (1 + 1000 × 1.2 / 2) = 2404.
        assert_eq!(typha_target(&p, 4, counts(3, 3, 1000)), 2404);
        // Small clusters stay at the lower limit.
        assert_eq!(typha_target(&p, 4, counts(3, 3, 10)), 400);
        // Huge clusters are capped.
        assert_eq!(typha_target(&p, 4, counts(2, 2, 100_000)), 10_000);
        // The headroom is a setting: 0 gives 4 × (1 + 1000 / 2) = 2004.
        let p0 = TargetParams { headroom: 0.0, ..p };
        assert_eq!(typha_target(&p0, 4, counts(3, 3, 1000)), 2004);
    }

    #[test]
    fn even_share_applies_only_when_every_replica_is_ready() {
        let p = TargetParams {
            lower: 10,
            ..TargetParams::default()
        };
        // 150 nodes × 4 types over 3 ready replicas: 200 each, 220 with 10 % slack.
        assert_eq!(connection_target(&p, 4, counts(3, 3, 150)), 220);
        // One not ready (rolling update): Typha's rule, 4 × (1 + 150 × 1.2 / 2) = 364.
        assert_eq!(connection_target(&p, 4, counts(3, 2, 150)), 364);
        assert_eq!(typha_target(&p, 4, counts(3, 2, 150)), 364);
        // Off: Typha's rule always.
        let off = TargetParams {
            even_share_slack: None,
            ..p
        };
        assert_eq!(connection_target(&off, 4, counts(3, 3, 150)), 364);
        // Never below the lower limit, never above Typha's rule.
        let high_lower = TargetParams { lower: 300, ..p };
        assert_eq!(connection_target(&high_lower, 4, counts(3, 3, 150)), 300);
        assert_eq!(connection_target(&p, 4, counts(1, 1, 150)), 10_000);
    }

    #[test]
    fn even_shares_cover_every_client() {
        // Whatever the counts, the replicas' targets together hold all syncer_types × nodes
        // clients, so shedding can never leave one without a place.
        let p = TargetParams {
            lower: 1,
            ..TargetParams::default()
        };
        for replicas in 2..8 {
            for nodes in [0, 1, 7, 150, 999, 2000] {
                let c = counts(replicas, replicas, nodes);
                let t = connection_target(&p, 4, c);
                assert!(t * replicas >= 4 * nodes, "{replicas} {nodes} {t}");
                // And with one replica down, the remaining ones hold everyone under Typha's rule.
                let down = counts(replicas, replicas - 1, nodes);
                let t = connection_target(&p, 4, down);
                assert!(t * (replicas - 1) >= 4 * nodes, "{replicas} {nodes} {t}");
            }
        }
    }

    #[test]
    fn target_cell_starts_unset() {
        let t = ConnectionTarget::default();
        assert_eq!(t.get(), usize::MAX);
        let u = t.clone();
        u.set(5);
        assert_eq!(t.get(), 5);
    }
}
