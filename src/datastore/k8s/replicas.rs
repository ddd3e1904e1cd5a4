//! The replica counter of Kubernetes rebalancing mode: every poll interval, count this
//! daemon's Service endpoints (ready and not), take the number of Nodes from the driver's own
//! Node watch (listing every Node from etcd each time would cost the API server far more than
//! the answer is worth), compute this replica's connection target and publish it for the
//! reactor. It only reads and writes numbers; nothing flows back into the datastore pipeline.

use super::driver::NodeCount;
use crate::client::discovery::list_service_endpoints;
use crate::metrics::Metrics;
use crate::model::SyncerType;
use crate::rebalance::{connection_target, ClusterCounts, RebalanceConfig};
use kube::Client;
use std::sync::Arc;
use tracing::{info, warn};

async fn count(
    client: &Client,
    cfg: &RebalanceConfig,
    nodes: &NodeCount,
) -> Result<ClusterCounts, String> {
    let nodes = nodes
        .get()
        .ok_or_else(|| "the Node watch has not listed the nodes yet".to_owned())?;
    let endpoints = list_service_endpoints(client, &cfg.namespace, &cfg.service, &cfg.port_name)
        .await
        .map_err(|e| {
            format!(
                "cannot list the endpoints of {}/{}: {e}",
                cfg.namespace, cfg.service
            )
        })?;
    Ok(ClusterCounts {
        replicas: endpoints.len(),
        ready_replicas: endpoints.iter().filter(|e| e.ready).count(),
        nodes,
    })
}

/// Polls until the runtime stops. A failed poll keeps the previous target.
pub async fn run(client: Client, cfg: RebalanceConfig, metrics: Arc<Metrics>, nodes: NodeCount) {
    info!(
        namespace = %cfg.namespace,
        service = %cfg.service,
        port = %cfg.port_name,
        every = ?cfg.poll_interval,
        "connection rebalancing: counting replicas and nodes"
    );
    // The first target needs the node count: wait for the Node watch's first list.
    while nodes.get().is_none() {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut tick = tokio::time::interval(cfg.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<(ClusterCounts, usize)> = None;
    loop {
        tick.tick().await;
        match count(&client, &cfg, &nodes).await {
            Ok(c) => {
                let target = connection_target(&cfg.params, SyncerType::COUNT, c);
                cfg.target.set(target);
                metrics.rebalance_replicas.set(c.replicas as i64);
                metrics.rebalance_nodes.set(c.nodes as i64);
                if last != Some((c, target)) {
                    info!(
                        replicas = c.replicas,
                        ready = c.ready_replicas,
                        nodes = c.nodes,
                        target,
                        "connection target"
                    );
                    last = Some((c, target));
                }
            }
            Err(e) => {
                metrics
                    .datastore_errors
                    .with_label_values(&["rebalance"])
                    .inc();
                warn!(error = %e, "cannot count replicas; keeping the current target");
            }
        }
    }
}
