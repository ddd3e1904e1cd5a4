//! Where the replicas are: a static list, or the ready endpoints of a Kubernetes Service
//! (its EndpointSlices, labelled `kubernetes.io/service-name=<service>`, as Calico's client
//! finds Typha). The daemon's replica counter uses the same listing.

use super::ClientError;
use kube::api::{Api, DynamicObject, ListParams};
use kube::discovery::ApiResource;
use kube::Client;
use serde_json::Value;
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// One endpoint of a Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceEndpoint {
    pub addr: SocketAddr,
    pub ready: bool,
}

/// The endpoints of `slices` (EndpointSlice objects as JSON, v1 or v1beta1: the fields read
/// are the same) on the port named `port_name` (any single port if the name is empty). A
/// pod listed in two slices (one per address family) counts once. `ready` unset counts as
/// ready, as in Kubernetes.
pub fn endpoints_from_slices(slices: &[Value], port_name: &str) -> Vec<ServiceEndpoint> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for slice in slices {
        let ports = slice["ports"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        let port = ports
            .iter()
            .find(|p| {
                p["name"].as_str().unwrap_or("") == port_name
                    || (port_name.is_empty() && ports.len() == 1)
            })
            .and_then(|p| p["port"].as_u64())
            .and_then(|p| u16::try_from(p).ok());
        let Some(port) = port else { continue };
        for ep in slice["endpoints"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            let Some(ip) = ep["addresses"]
                .as_array()
                .and_then(|a| a.first())
                .and_then(Value::as_str)
                .and_then(|a| a.parse::<IpAddr>().ok())
            else {
                continue;
            };
            let addr = SocketAddr::new(ip, port);
            let r = &ep["targetRef"];
            let key = match r["name"].as_str() {
                Some(name) => format!(
                    "{}/{}/{name}",
                    r["kind"].as_str().unwrap_or(""),
                    r["namespace"].as_str().unwrap_or("")
                ),
                None => addr.to_string(),
            };
            if !seen.insert(key) {
                continue;
            }
            let ready = ep["conditions"]["ready"].as_bool().unwrap_or(true);
            out.push(ServiceEndpoint { addr, ready });
        }
    }
    out
}

fn slice_resource(version: &str) -> ApiResource {
    ApiResource {
        group: "discovery.k8s.io".into(),
        version: version.into(),
        api_version: format!("discovery.k8s.io/{version}"),
        kind: "EndpointSlice".into(),
        plural: "endpointslices".into(),
    }
}

/// Lists the endpoints of `service` in `namespace`, through discovery.k8s.io/v1 or, on a server
/// that does not serve it (before Kubernetes 1.21), v1beta1.
pub async fn list_service_endpoints(
    client: &Client,
    namespace: &str,
    service: &str,
    port_name: &str,
) -> Result<Vec<ServiceEndpoint>, kube::Error> {
    let params = ListParams::default().labels(&format!("kubernetes.io/service-name={service}"));
    let list = |version: &'static str| {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), namespace, &slice_resource(version));
        let params = params.clone();
        async move { api.list(&params).await }
    };
    let list = match list("v1").await {
        // A server before 1.21 does not serve v1 (its 404 is sometimes plain text).
        Err(kube::Error::Api(s)) if s.is_not_found() || s.code == 404 => list("v1beta1").await?,
        other => other?,
    };
    let slices: Vec<Value> = list
        .items
        .iter()
        .filter_map(|o| serde_json::to_value(o).ok())
        .collect();
    Ok(endpoints_from_slices(&slices, port_name))
}

/// A Kubernetes Service whose ready endpoints are the replicas.
#[derive(Debug, Clone)]
pub struct ServiceDiscovery {
    /// Explicit kubeconfig; otherwise KUBECONFIG, ~/.kube/config or the in-cluster account.
    pub kubeconfig: Option<PathBuf>,
    pub namespace: String,
    pub service: String,
    pub port_name: String,
}

/// How a reconnecting client finds the replicas; asked again before every connection.
#[derive(Debug, Clone)]
pub enum Discovery {
    Static(Vec<SocketAddr>),
    Kubernetes(ServiceDiscovery),
}

impl Discovery {
    /// The replicas to choose from now (for a Service, its ready endpoints).
    pub fn discover(&self) -> Result<Vec<SocketAddr>, ClientError> {
        match self {
            Discovery::Static(v) => Ok(v.clone()),
            Discovery::Kubernetes(s) => s.discover(),
        }
    }
}

impl ServiceDiscovery {
    /// Lists the Service's ready endpoints, on a small runtime of its own: the client library
    /// is synchronous.
    pub fn discover(&self) -> Result<Vec<SocketAddr>, ClientError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Discovery(format!("cannot start a runtime: {e}")))?;
        rt.block_on(async {
            let client = self.client().await?;
            let eps =
                list_service_endpoints(&client, &self.namespace, &self.service, &self.port_name)
                    .await
                    .map_err(|e| {
                        ClientError::Discovery(format!(
                            "cannot list the endpoints of {}/{}: {e}",
                            self.namespace, self.service
                        ))
                    })?;
            Ok(eps
                .into_iter()
                .filter(|e| e.ready)
                .map(|e| e.addr)
                .collect())
        })
    }

    async fn client(&self) -> Result<Client, ClientError> {
        let err = |e: String| ClientError::Discovery(e);
        let config = match &self.kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| err(format!("cannot read kubeconfig {}: {e}", path.display())))?;
                kube::Config::from_custom_kubeconfig(kc, &Default::default())
                    .await
                    .map_err(|e| err(format!("invalid kubeconfig {}: {e}", path.display())))?
            }
            None => kube::Config::infer()
                .await
                .map_err(|e| err(format!("no Kubernetes configuration found: {e}")))?,
        };
        Client::try_from(config).map_err(|e| err(format!("cannot build a Kubernetes client: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn slices_give_ready_and_unready_endpoints_on_the_named_port() {
        let slices = vec![
            json!({"ports": [{"name": "metrics", "port": 9093}, {"name": "calico-typha", "port": 5473}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true},
                 "targetRef": {"kind": "Pod", "namespace": "kube-system", "name": "typha-a"}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.3"]},
                {"addresses": ["not-an-ip"]},
                {"addresses": []}
            ]}),
            // The same pod's IPv6 slice: counted once.
            json!({"ports": [{"name": "calico-typha", "port": 5473}],
            "endpoints": [
                {"addresses": ["fd00::1"],
                 "targetRef": {"kind": "Pod", "namespace": "kube-system", "name": "typha-a"}}
            ]}),
            // A slice without the port: ignored.
            json!({"ports": [{"name": "other", "port": 1}],
                   "endpoints": [{"addresses": ["10.0.0.9"]}]}),
        ];
        let eps = endpoints_from_slices(&slices, "calico-typha");
        let want = [
            ("10.0.0.1:5473", true),
            ("10.0.0.2:5473", false),
            ("10.0.0.3:5473", true),
        ];
        assert_eq!(eps.len(), want.len(), "{eps:?}");
        for (e, (a, r)) in eps.iter().zip(want) {
            assert_eq!(e.addr, a.parse::<SocketAddr>().unwrap());
            assert_eq!(e.ready, r);
        }
        // Same address on different ports (replicas on one host) are different endpoints.
        let two = vec![
            json!({"ports": [{"name": "p", "port": 1000}], "endpoints": [{"addresses": ["127.0.0.1"]}]}),
            json!({"ports": [{"name": "p", "port": 1001}], "endpoints": [{"addresses": ["127.0.0.1"]}]}),
        ];
        assert_eq!(endpoints_from_slices(&two, "p").len(), 2);
        assert!(endpoints_from_slices(&[json!({"garbage": 1})], "p").is_empty());
    }
}
