//! The replica counter of Kubernetes rebalancing mode: every poll interval, count this
//! daemon's Service endpoints (ready and not) and the Nodes, compute this replica's connection
//! target and publish it for the reactor. It only reads the API server and writes one number;
//! nothing flows back into the datastore pipeline.

use crate::client::discovery::list_service_endpoints;
use crate::metrics::Metrics;
use crate::model::SyncerType;
use crate::rebalance::{connection_target, ClusterCounts, RebalanceConfig};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use kube::Client;
use std::sync::Arc;
use tracing::{info, warn};

async fn count(client: &Client, cfg: &RebalanceConfig) -> Result<ClusterCounts, String> {
    let endpoints = list_service_endpoints(client, &cfg.namespace, &cfg.service, &cfg.port_name)
        .await
        .map_err(|e| {
            format!(
                "cannot list the endpoints of {}/{}: {e}",
                cfg.namespace, cfg.service
            )
        })?;
    let nodes: Api<Node> = Api::all(client.clone());
    // Metadata only: the count is all that is wanted, and Node statuses are large.
    let mut n = 0usize;
    let mut params = ListParams::default().limit(500);
    loop {
        let page = nodes
            .list_metadata(&params)
            .await
            .map_err(|e| format!("cannot list nodes: {e}"))?;
        n += page.items.len();
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => params = params.continue_token(&c),
            None => break,
        }
    }
    Ok(ClusterCounts {
        replicas: endpoints.len(),
        ready_replicas: endpoints.iter().filter(|e| e.ready).count(),
        nodes: n,
    })
}

/// Polls until the runtime stops. A failed poll keeps the previous target.
pub async fn run(client: Client, cfg: RebalanceConfig, metrics: Arc<Metrics>) {
    info!(
        namespace = %cfg.namespace,
        service = %cfg.service,
        port = %cfg.port_name,
        every = ?cfg.poll_interval,
        "connection rebalancing: counting replicas and nodes"
    );
    let mut tick = tokio::time::interval(cfg.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<(ClusterCounts, usize)> = None;
    loop {
        tick.tick().await;
        match count(&client, &cfg).await {
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
