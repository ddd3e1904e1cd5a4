//! The Kubernetes datastore against a real kube-apiserver and etcd on loopback
//! (`scripts/test-apiserver.sh`, which `make test` installs and builds once): the current
//! release, and v1.20 for the one behaviour only an old cluster shows (EndpointSlices served
//! as `discovery.k8s.io/v1beta1` only).

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use typha::client::{BlockingClient, ClientOptions};
use typha::daemon::Daemon;
use typha::model::{Digest, SyncerType};
use typha::testing::{kubernetes_daemon_config, start_kubernetes_daemon, wait_ready, ApiServer};

mod support;

/// A real API server for one test (panics with the script's output if it cannot start).
fn apiserver(name: &str) -> ApiServer {
    ApiServer::start(name).unwrap_or_else(|e| panic!("{e}"))
}

trait Run {
    fn run_ok(&self, cmd: &str);
}

impl Run for ApiServer {
    fn run_ok(&self, cmd: &str) {
        self.run(cmd).unwrap_or_else(|e| panic!("{e}"));
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn kube_client(rt: &tokio::runtime::Runtime, kubeconfig: &Path) -> kube::Client {
    rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(cfg).unwrap()
    })
}

fn start_daemon(kubeconfig: &Path) -> Daemon {
    start_kubernetes_daemon(kubeconfig).expect("daemon starts")
}

fn wait_in_sync(d: &Daemon) {
    wait_ready(d, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("daemon never got in sync: {e}"));
}

fn felix_view(d: &Daemon, seq: Option<u64>) -> (u64, Digest, u64) {
    let rec = d.status.digests(seq).expect("digest record");
    let v = rec.views[SyncerType::Felix.index()];
    (rec.seq, v.digest, v.key_count)
}

fn client(d: &Daemon) -> BlockingClient {
    let mut c = BlockingClient::connect(d.protocol_addr, ClientOptions::default()).unwrap();
    c.run_until_in_sync(Duration::from_secs(60)).unwrap();
    c
}

fn until(
    c: &mut BlockingClient,
    what: &str,
    mut cond: impl FnMut(&typha::client::SyncState) -> bool,
) {
    if let Err(e) = c.run_until(Duration::from_secs(60), &mut cond) {
        panic!("client never saw {what}: {e}");
    }
}

const WEP: &str = "/calico/v1/host/node-1/workload/k8s/team-a%2fweb-1/endpoint/eth0";
const NODE_V3: &str = "/calico/resources/v3/projectcalico.org/nodes/node-1";

fn node() -> Node {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-1", "labels": {"kubernetes.io/hostname": "node-1"},
                     "annotations": {"projectcalico.org/IPv4Address": "10.0.0.1/24",
                                     "projectcalico.org/IPv4IPIPTunnelAddr": "192.168.1.1"}},
        "spec": {"podCIDR": "192.168.1.0/24"}
    }))
    .unwrap()
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "team-a", "labels": {"app": "web"}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "nginx"}]}
    }))
    .unwrap()
}

fn set_pod_ip(rt: &tokio::runtime::Runtime, pods: &Api<Pod>, name: &str, ip: &str) {
    let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
    rt.block_on(pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)))
        .unwrap();
}

fn heartbeat(rt: &tokio::runtime::Runtime, nodes: &Api<Node>, n: u32) {
    let now = format!("2026-01-01T00:00:{:02}Z", n % 60);
    let status = json!({"status": {"conditions": [{
        "type": "Ready", "status": "True", "reason": "KubeletReady",
        "lastHeartbeatTime": now, "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    rt.block_on(nodes.patch_status("node-1", &PatchParams::default(), &Patch::Merge(&status)))
        .unwrap();
}

/// Deletes at once: without a kubelet, a graceful delete of a scheduled pod only marks it
/// terminating (and a terminating pod that still has its IP stays a live endpoint, as in Calico).
fn now() -> kube::api::DeleteParams {
    kube::api::DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    }
}

fn metric(d: &Daemon, name: &str, kind: &str) -> u64 {
    let text = d.metrics.render();
    let prefix = format!("{name}{{kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap_or(0))
}

#[test]
fn objects_become_calico_keys_and_heartbeats_become_nothing() {
    let api = apiserver("translate");
    let rt = rt();
    let kc = kube_client(&rt, &api.kubeconfig());
    let daemon = start_daemon(&api.kubeconfig());
    wait_in_sync(&daemon);
    let mut c = client(&daemon);
    assert!(
        c.state()
            .get("/calico/v1/policy/profile/projectcalico-default-allow/rules")
            .is_some(),
        "the synthetic default-allow profile is part of every snapshot"
    );

    let namespaces: Api<Namespace> = Api::all(kc.clone());
    let nodes: Api<Node> = Api::all(kc.clone());
    let pods: Api<Pod> = Api::namespaced(kc.clone(), "team-a");
    let ns: Namespace = serde_json::from_value(json!({
        "metadata": {"name": "team-a", "labels": {"tier": "frontend"}}}))
    .unwrap();
    rt.block_on(namespaces.create(&PostParams::default(), &ns))
        .unwrap();
    until(&mut c, "the namespace profile", |s| {
        s.get("/calico/v1/policy/profile/kns.team-a/labels")
            .is_some()
    });
    let labels: serde_json::Value = serde_json::from_slice(
        &c.state()
            .get("/calico/v1/policy/profile/kns.team-a/labels")
            .unwrap()
            .value,
    )
    .unwrap();
    assert_eq!(labels["pcns.tier"], "frontend");

    rt.block_on(nodes.create(&PostParams::default(), &node()))
        .unwrap();
    until(&mut c, "the node", |s| s.get(NODE_V3).is_some());
    assert_eq!(
        c.state()
            .get("/calico/v1/host/node-1/config/IpInIpTunnelAddr")
            .map(|e| e.value.clone()),
        Some(b"192.168.1.1".to_vec())
    );

    // A pod shows up only once it has an IP.
    rt.block_on(pods.create(&PostParams::default(), &pod("web-1")))
        .unwrap();
    set_pod_ip(&rt, &pods, "web-1", "192.168.1.10");
    until(&mut c, "the workload endpoint", |s| s.get(WEP).is_some());
    let wep: serde_json::Value =
        serde_json::from_slice(&c.state().get(WEP).unwrap().value).unwrap();
    assert_eq!(wep["ipv4_nets"], json!(["192.168.1.10/32"]));
    assert_eq!(wep["labels"]["app"], "web");

    // Node heartbeats and pod status churn change nothing Felix reads: events arrive, no
    // update is emitted, and the client's values stay byte-identical.
    let node_before = c.state().get(NODE_V3).unwrap().value.clone();
    let events_before = metric(&daemon, "typha_datastore_events_total", "node");
    let emitted_before = metric(&daemon, "typha_datastore_updates_emitted_total", "node");
    for i in 0..20 {
        heartbeat(&rt, &nodes, i);
    }
    let cond = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
    rt.block_on(pods.patch_status("web-1", &PatchParams::default(), &Patch::Merge(&cond)))
        .unwrap();
    // A marker after the churn: once the client has it, the churn has been processed.
    let marker: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "marker"}})).unwrap();
    rt.block_on(namespaces.create(&PostParams::default(), &marker))
        .unwrap();
    until(&mut c, "the marker", |s| {
        s.get("/calico/v1/policy/profile/kns.marker/rules")
            .is_some()
    });
    let events = metric(&daemon, "typha_datastore_events_total", "node") - events_before;
    let emitted = metric(&daemon, "typha_datastore_updates_emitted_total", "node") - emitted_before;
    assert!(events >= 20, "heartbeats were received ({events})");
    assert_eq!(
        emitted, 0,
        "{events} node heartbeat events emitted {emitted} updates"
    );
    assert_eq!(c.state().get(NODE_V3).unwrap().value, node_before);

    // A Calico CRD object.
    let gnp = ApiResource {
        group: "crd.projectcalico.org".into(),
        version: "v1".into(),
        api_version: "crd.projectcalico.org/v1".into(),
        kind: "GlobalNetworkPolicy".into(),
        plural: "globalnetworkpolicies".into(),
    };
    let gnps: Api<DynamicObject> = Api::all_with(kc.clone(), &gnp);
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "crd.projectcalico.org/v1", "kind": "GlobalNetworkPolicy",
        "metadata": {"name": "deny-egress"},
        "spec": {"order": 10, "selector": "app == 'web'", "types": ["Egress"], "egress": [{"action": "Deny"}]}
    }))
    .unwrap();
    rt.block_on(gnps.create(&PostParams::default(), &obj))
        .unwrap();
    until(&mut c, "the global network policy", |s| {
        s.get("/calico/v1/policy/GlobalNetworkPolicy//deny-egress")
            .is_some()
    });

    // Deleting the pod deletes its endpoint.
    rt.block_on(pods.delete("web-1", &now())).unwrap();
    until(&mut c, "the endpoint's deletion", |s| s.get(WEP).is_none());

    let (_, digest, keys) = felix_view(&daemon, Some(c.state().seq()));
    assert_eq!(c.state().digest(), digest);
    assert_eq!(c.state().len() as u64, keys);
    drop(c);
    daemon.stop().unwrap();
}

#[test]
fn restart_and_compaction_relist_without_disconnecting_clients() {
    let api = apiserver("relist");
    let rt = rt();
    let kc = kube_client(&rt, &api.kubeconfig());
    let namespaces: Api<Namespace> = Api::all(kc.clone());
    let nodes: Api<Node> = Api::all(kc.clone());
    let pods: Api<Pod> = Api::namespaced(kc.clone(), "team-a");
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "team-a"}})).unwrap();
    rt.block_on(namespaces.create(&PostParams::default(), &ns))
        .unwrap();
    rt.block_on(nodes.create(&PostParams::default(), &node()))
        .unwrap();
    for i in 0..5 {
        let name = format!("web-{i}");
        rt.block_on(pods.create(&PostParams::default(), &pod(&name)))
            .unwrap();
        set_pod_ip(&rt, &pods, &name, &format!("192.168.1.{}", 10 + i));
    }

    let daemon = start_daemon(&api.kubeconfig());
    wait_in_sync(&daemon);
    let mut c = client(&daemon);
    until(&mut c, "all five endpoints", |s| {
        (0..5).all(|i| s.get(&WEP.replace("web-1", &format!("web-{i}"))).is_some())
    });
    let conn = c.state().server_hello().map(|h| h.connection_id);

    // Restart the API server, compact etcd so old resource versions are gone (410 on resume),
    // and change things in between.
    api.run_ok("restart-apiserver");
    let kc = kube_client(&rt, &api.kubeconfig());
    let pods: Api<Pod> = Api::namespaced(kc.clone(), "team-a");
    rt.block_on(pods.delete("web-0", &now())).unwrap();
    set_pod_ip(&rt, &pods, "web-1", "192.168.1.99");
    for i in 0..20 {
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": format!("churn-{i}")}})).unwrap();
        rt.block_on(Api::<Namespace>::all(kc.clone()).create(&PostParams::default(), &ns))
            .unwrap();
    }
    api.run_ok("compact");
    let marker: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "marker"}})).unwrap();
    rt.block_on(Api::<Namespace>::all(kc.clone()).create(&PostParams::default(), &marker))
        .unwrap();
    until(&mut c, "the marker after the restart", |s| {
        s.get("/calico/v1/policy/profile/kns.marker/rules")
            .is_some()
    });
    until(&mut c, "web-0's deletion and web-1's new IP", |s| {
        s.get(&WEP.replace("web-1", "web-0")).is_none()
            && s.get(WEP)
                .is_some_and(|e| String::from_utf8_lossy(&e.value).contains("192.168.1.99/32"))
    });
    assert_eq!(
        c.state().server_hello().map(|h| h.connection_id),
        conn,
        "the client stayed on its connection"
    );

    // A fresh daemon's translation of the API server's state is the reference.
    let fresh = start_daemon(&api.kubeconfig());
    wait_in_sync(&fresh);
    let mut fc = client(&fresh);
    until(&mut fc, "the marker", |s| {
        s.get("/calico/v1/policy/profile/kns.marker/rules")
            .is_some()
    });
    // Both have settled on the same state; compare the maps' digests.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _ = c.run_until(Duration::from_millis(200), |_| false);
        let _ = fc.run_until(Duration::from_millis(200), |_| false);
        if c.state().digest() == fc.state().digest() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the relist the client ({} keys) differs from a fresh translation ({} keys)",
            c.state().len(),
            fc.state().len()
        );
    }
    drop((c, fc));
    fresh.stop().unwrap();
    daemon.stop().unwrap();
}

/// A kubeconfig like `admin`'s but authenticating with `token`.
fn kubeconfig_with_token(admin: &Path, token: &str, out: &Path) {
    let mut kc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(admin).unwrap()).unwrap();
    let users = kc["users"].as_sequence_mut().expect("users in kubeconfig");
    for u in users {
        u["user"] = serde_yaml::to_value(json!({ "token": token })).unwrap();
    }
    std::fs::write(out, serde_yaml::to_string(&kc).unwrap()).unwrap();
}

#[test]
fn syncs_with_the_read_only_service_account_of_deploy_rbac() {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let api = apiserver("rbac");
    api.run_ok("rbac");
    let rt = rt();
    let kc = kube_client(&rt, &api.kubeconfig());
    let sas: Api<ServiceAccount> = Api::namespaced(kc.clone(), "kube-system");
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let tr = rt
        .block_on(sas.create_token_request("calico-typha", &PostParams::default(), &req))
        .expect("token for the calico-typha service account");
    let token = tr.status.expect("token status").token;
    let sa_kubeconfig = api.dir.join("typha-sa.kubeconfig");
    kubeconfig_with_token(&api.kubeconfig(), &token, &sa_kubeconfig);

    // The token really is limited: it cannot write.
    let sa_client = kube_client(&rt, &sa_kubeconfig);
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "nope"}})).unwrap();
    let denied = rt.block_on(Api::<Namespace>::all(sa_client).create(&PostParams::default(), &ns));
    assert!(
        matches!(&denied, Err(kube::Error::Api(s)) if s.code == 403),
        "the service account must be read-only: {denied:?}"
    );

    // With it, every watched kind lists (a missing grant would keep the daemon out of sync).
    let daemon = start_daemon(&sa_kubeconfig);
    wait_in_sync(&daemon);
    let mut c = client(&daemon);
    let nodes: Api<Node> = Api::all(kc.clone());
    rt.block_on(nodes.create(&PostParams::default(), &node()))
        .unwrap();
    until(&mut c, "the node, watched with the service account", |s| {
        s.get(NODE_V3).is_some()
    });
    let text = daemon.metrics.render();
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("typha_datastore_errors_total") && !l.ends_with(" 0")),
        "no list/watch errors with the service account:\n{}",
        text.lines()
            .filter(|l| l.starts_with("typha_datastore_errors_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    drop(c);
    daemon.stop().unwrap();
}

#[test]
fn unreachable_api_server_at_start_is_retried_and_clients_wait() {
    let api = apiserver("unreachable");
    let pid: i32 = api.env["APISERVER_PID"].parse().unwrap();
    // SAFETY: signalling the API server process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let daemon = start_daemon(&api.kubeconfig());
    // A client may connect meanwhile: it gets a snapshot that says "waiting".
    let mut c = BlockingClient::connect(daemon.protocol_addr, ClientOptions::default()).unwrap();
    c.run_until(Duration::from_secs(30), |s| s.snapshot_complete())
        .unwrap();
    assert_eq!(
        c.state().status(),
        Some(typha::model::SyncStatus::WaitingForDatastore)
    );
    assert!(daemon.status.readiness().is_err());
    api.run_ok("restart-apiserver");
    wait_in_sync(&daemon);
    c.run_until_in_sync(Duration::from_secs(60)).unwrap();
    assert!(c
        .state()
        .get("/calico/v1/policy/profile/kns.default/rules")
        .is_some());
    drop(c);
    daemon.stop().unwrap();
}

#[test]
fn liveness_fails_while_the_api_server_is_unreachable_and_recovers() {
    use typha::datastore::DriverConfig;
    use typha::http::http_get;
    const TIMEOUT: Duration = Duration::from_secs(3);
    const PROBE: Duration = Duration::from_millis(250);
    let t = Duration::from_secs(5);
    let api = apiserver("liveness");
    let mut cfg = kubernetes_daemon_config(&api.kubeconfig());
    cfg.datastore.health_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    cfg.datastore.datastore_unreachable = TIMEOUT;
    if let DriverConfig::Kubernetes(k) = &mut cfg.datastore.driver {
        k.probe_interval = PROBE;
    }
    let daemon = Daemon::start(cfg).unwrap();
    wait_in_sync(&daemon);
    let health = daemon.health_addr.unwrap();
    // Longer than the timeout with every watch quiet: the version probe alone keeps it live.
    let quiet_until = Instant::now() + TIMEOUT + Duration::from_secs(2);
    while Instant::now() < quiet_until {
        assert_eq!(
            http_get(health, "/liveness", t).unwrap(),
            (200, "ok".into())
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let pid: i32 = api.env["APISERVER_PID"].parse().unwrap();
    // SAFETY: signalling the API server process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let down_at = Instant::now();
    let body = loop {
        let (code, body) = http_get(health, "/liveness", t).unwrap();
        if code == 503 {
            break body;
        }
        assert_eq!(code, 200, "{body}");
        assert!(
            down_at.elapsed() < Duration::from_secs(30),
            "/liveness still 200 long after the API server went away"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = down_at.elapsed();
    assert!(body.starts_with("datastore unreachable for "), "{body}");
    assert!(
        took + PROBE >= TIMEOUT,
        "failed after {took:?}, before the {TIMEOUT:?} timeout"
    );
    daemon.metrics.observe_status(&daemon.status);
    assert!(daemon.metrics.datastore_contact_age_secs.get() > TIMEOUT.as_secs_f64());
    // Readiness is about the data: the replica still serves its last in-sync state.
    assert!(daemon.status.readiness().is_ok());

    api.run_ok("restart-apiserver");
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(health, "/liveness", t).unwrap().0 != 200 {
        assert!(Instant::now() < deadline, "/liveness did not recover");
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon.stop().unwrap();
}

/// The watched kind of an object, by its apiVersion's group and its kind.
fn spec_of(obj: &DynamicObject) -> Option<typha::datastore::k8s::KindSpec> {
    let types = obj.types.as_ref()?;
    let group = types.api_version.rsplit_once('/').map_or("", |(g, _)| g);
    typha::datastore::k8s::watched_kinds()
        .into_iter()
        .find(|k| k.group == group && k.kind == types.kind)
}

fn api_for(
    kc: &kube::Client,
    spec: &typha::datastore::k8s::KindSpec,
    obj: &DynamicObject,
) -> Api<DynamicObject> {
    let version = obj
        .types
        .as_ref()
        .map_or("v1", |t| t.api_version.rsplit('/').next().unwrap_or("v1"));
    let ar = ApiResource {
        group: spec.group.into(),
        version: version.into(),
        api_version: obj
            .types
            .as_ref()
            .map(|t| t.api_version.clone())
            .unwrap_or_default(),
        kind: spec.kind.into(),
        plural: spec.plural.into(),
    };
    match &obj.metadata.namespace {
        Some(ns) => Api::namespaced_with(kc.clone(), ns, &ar),
        None => Api::all_with(kc.clone(), &ar),
    }
}

/// What the objects, as the API server now holds them, translate to.
fn expected_keys(
    rt: &tokio::runtime::Runtime,
    kc: &kube::Client,
    objs: &[DynamicObject],
) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for o in objs {
        let spec = spec_of(o).unwrap();
        let live = rt
            .block_on(api_for(kc, &spec, o).get(o.metadata.name.as_deref().unwrap()))
            .unwrap();
        let v = serde_json::to_value(&live).unwrap();
        for (k, val) in (spec.translate)(&v).unwrap() {
            // The test's client is a felix client; some keys (block affinities) are bgp-only.
            if SyncerType::Felix.wants(&k) {
                out.push((k, val.to_vec()));
            }
        }
    }
    out
}

fn holds_exactly(s: &typha::client::SyncState, keys: &[(String, Vec<u8>)]) -> bool {
    keys.iter()
        .all(|(k, v)| s.get(k).is_some_and(|e| e.value == *v))
}

#[test]
fn every_sample_kind_is_created_updated_and_deleted_through_to_clients() {
    let api = apiserver("kinds");
    let rt = rt();
    let kc = kube_client(&rt, &api.kubeconfig());
    let daemon = start_daemon(&api.kubeconfig());
    wait_in_sync(&daemon);
    let mut c = client(&daemon);

    // Every sample under deploy/crds/examples (core objects first: namespaces precede the
    // namespaced samples), plus the Kubernetes kinds the samples do not cover.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/crds/examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort_by_key(|p| !p.ends_with("core-objects.yaml"));
    let mut objs: Vec<DynamicObject> = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
            if v.is_null() {
                continue;
            }
            let o: DynamicObject = serde_json::from_value(v).unwrap();
            if spec_of(&o).is_some() {
                objs.push(o);
            }
        }
    }
    for extra in [
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": "web", "namespace": "typha-test", "labels": {"team": "a"}}}),
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "web", "namespace": "typha-test"},
               "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "protocol": "TCP"}]}}),
        // discovery.k8s.io/v1: the only version Calico v3.32 watches (1.21+ serve it).
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "web-abc", "namespace": "typha-test",
                            "labels": {"kubernetes.io/service-name": "web"}},
               "addressType": "IPv4",
               "endpoints": [{"addresses": ["192.168.1.0"], "conditions": {"ready": true},
                              "nodeName": "node-1"}],
               "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": "allow-web", "namespace": "typha-test"},
               "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                        "ingress": [{"ports": [{"port": 80, "protocol": "TCP"}]}]}}),
    ] {
        objs.push(serde_json::from_value(extra).unwrap());
    }
    let kinds: std::collections::BTreeSet<&str> = objs
        .iter()
        .filter_map(|o| spec_of(o).map(|s| s.name))
        .collect();
    assert!(
        kinds.len() >= 20,
        "samples cover most watched kinds: {kinds:?}"
    );

    for o in &objs {
        let spec = spec_of(o).unwrap();
        rt.block_on(api_for(&kc, &spec, o).create(&PostParams::default(), o))
            .unwrap_or_else(|e| panic!("create {} {:?}: {e}", spec.name, o.metadata.name));
    }
    let want = expected_keys(&rt, &kc, &objs);
    assert!(want.len() > objs.len(), "samples yield keys");
    if c.run_until(Duration::from_secs(30), |s| holds_exactly(s, &want))
        .is_err()
    {
        let diff: Vec<String> = want
            .iter()
            .filter(|(k, v)| c.state().get(k).is_none_or(|e| e.value != *v))
            .map(|(k, v)| {
                format!(
                    "{k}\n  want {}\n  have {:?}",
                    String::from_utf8_lossy(v),
                    c.state()
                        .get(k)
                        .map(|e| String::from_utf8_lossy(&e.value).into_owned())
                )
            })
            .collect();
        panic!(
            "client differs from the translation of the live objects:\n{}",
            diff.join("\n")
        );
    }

    // Update: a label on every object; the clients end with exactly the new translation.
    let patch = json!({"metadata": {"labels": {"typha-test-updated": "yes"}}});
    for o in &objs {
        let spec = spec_of(o).unwrap();
        rt.block_on(api_for(&kc, &spec, o).patch(
            o.metadata.name.as_deref().unwrap(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        ))
        .unwrap();
    }
    let want_updated = expected_keys(&rt, &kc, &objs);
    until(&mut c, "every updated object's keys", |s| {
        holds_exactly(s, &want_updated)
    });
    let stale: Vec<&String> = want
        .iter()
        .filter(|(k, _)| !want_updated.iter().any(|(nk, _)| nk == k))
        .map(|(k, _)| k)
        .collect();
    assert!(
        stale.iter().all(|k| c.state().get(k).is_none()),
        "keys no longer yielded are deleted"
    );

    // Delete everything (namespaced objects first, then the rest).
    let mut order: Vec<&DynamicObject> = objs.iter().collect();
    order.sort_by_key(|o| o.metadata.namespace.is_none());
    for o in order {
        let spec = spec_of(o).unwrap();
        let _ =
            rt.block_on(api_for(&kc, &spec, o).delete(o.metadata.name.as_deref().unwrap(), &now()));
    }
    // Without a controller-manager a deleted Namespace stays Terminating (its finalizer is
    // never cleared), and Calico keeps a terminating namespace's profile: objects the server
    // still holds must keep exactly their translation; the keys of the others must be gone.
    let remaining: Vec<DynamicObject> = objs
        .iter()
        .filter(|o| {
            let spec = spec_of(o).unwrap();
            rt.block_on(api_for(&kc, &spec, o).get_opt(o.metadata.name.as_deref().unwrap()))
                .unwrap()
                .is_some()
        })
        .cloned()
        .collect();
    assert!(
        remaining.len() < 3,
        "only the namespace may linger: {:?}",
        remaining
            .iter()
            .map(|o| &o.metadata.name)
            .collect::<Vec<_>>()
    );
    let still = expected_keys(&rt, &kc, &remaining);
    let gone: Vec<String> = want_updated
        .iter()
        .map(|(k, _)| k.clone())
        .filter(|k| !still.iter().any(|(sk, _)| sk == k) && !k.contains("/profile/kns.default/"))
        .collect();
    assert!(!gone.is_empty());
    until(&mut c, "the deleted objects' keys to vanish", |s| {
        holds_exactly(s, &still) && gone.iter().all(|k| s.get(k).is_none())
    });
    let (_, digest, _) = felix_view(&daemon, Some(c.state().seq()));
    assert_eq!(c.state().digest(), digest);
    drop(c);
    daemon.stop().unwrap();
}

#[test]
fn a_delete_while_no_watch_could_see_it_is_found_by_the_relist() {
    let api = apiserver("blind-delete");
    let rt = rt();
    let kc = kube_client(&rt, &api.kubeconfig());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "team-a"}})).unwrap();
    rt.block_on(Api::<Namespace>::all(kc.clone()).create(&PostParams::default(), &ns))
        .unwrap();
    rt.block_on(Api::<Node>::all(kc.clone()).create(&PostParams::default(), &node()))
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(kc.clone(), "team-a");
    for i in 0..3 {
        let name = format!("web-{i}");
        rt.block_on(pods.create(&PostParams::default(), &pod(&name)))
            .unwrap();
        set_pod_ip(&rt, &pods, &name, &format!("192.168.1.{}", 10 + i));
    }
    let daemon = start_daemon(&api.kubeconfig());
    wait_in_sync(&daemon);
    let mut c = client(&daemon);
    let web0 = WEP.replace("web-1", "web-0");
    until(&mut c, "three endpoints", |s| {
        s.get(&web0).is_some() && s.get(WEP).is_some()
    });
    let conn = c.state().server_hello().map(|h| h.connection_id);

    // With no API server running, remove web-0 straight from etcd, then compact so that no
    // watch can resume from history: only a relist, diffed against what the daemon held,
    // can notice that web-0 is gone.
    let pid: i32 = api.env["APISERVER_PID"].parse().unwrap();
    // SAFETY: signalling the API server process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &api.env["ETCD_ENDPOINT"],
            "del",
            "/registry/pods/team-a/web-0",
        ])
        .output()
        .expect("etcdctl (installed by test-apiserver.sh)");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1", "{out:?}");
    api.run_ok("compact");
    api.run_ok("restart-apiserver");

    until(
        &mut c,
        "web-0's endpoint to be deleted after the relist",
        |s| s.get(&web0).is_none(),
    );
    assert!(
        c.state().get(WEP).is_some(),
        "the other endpoints are untouched"
    );
    assert_eq!(c.state().server_hello().map(|h| h.connection_id), conn);
    let restarts: u64 = daemon
        .metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("typha_datastore_watch_restarts_total{kind=\"pod\"}"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(restarts >= 1, "the pod watch relisted");
    drop(c);
    daemon.stop().unwrap();
}

/// On a cluster older than 1.21 EndpointSlices exist only as `discovery.k8s.io/v1beta1`: the
/// driver falls back to that version, and the slice's translation reaches clients. This is
/// the one check that needs the v1.20 server (docs/test-apiserver.md).
#[test]
fn endpoint_slices_are_read_as_v1beta1_where_v1_is_not_served() {
    let api = support::start_apiserver("v1beta1-slices", "v1.20", &[]);
    assert_eq!(api.env["APISERVER_VERSION"], "v1.20.2");
    let rt = rt();
    let kc = kube_client(&rt, &api.kubeconfig());
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "typha-test"}})).unwrap();
    rt.block_on(Api::<Namespace>::all(kc.clone()).create(&PostParams::default(), &ns))
        .unwrap();
    let slice: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice",
        "metadata": {"name": "web-abc", "namespace": "typha-test",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["192.168.1.0"], "conditions": {"ready": true},
                       "topology": {"kubernetes.io/hostname": "node-1"}}],
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]
    }))
    .unwrap();
    let spec = spec_of(&slice).expect("EndpointSlice is a watched kind");
    rt.block_on(api_for(&kc, &spec, &slice).create(&PostParams::default(), &slice))
        .unwrap();
    let want = expected_keys(&rt, &kc, std::slice::from_ref(&slice));
    assert!(
        want.iter()
            .any(|(k, _)| k.ends_with("/kubernetesendpointslices/typha-test/web-abc")),
        "{want:?}"
    );

    let daemon = start_daemon(&api.kubeconfig());
    wait_in_sync(&daemon);
    let mut c = client(&daemon);
    until(&mut c, "the v1beta1 slice's translation", |s| {
        holds_exactly(s, &want)
    });
    rt.block_on(api_for(&kc, &spec, &slice).delete("web-abc", &now()))
        .unwrap();
    until(&mut c, "the slice's deletion", |s| {
        want.iter().all(|(k, _)| s.get(k).is_none())
    });
    drop(c);
    daemon.stop().unwrap();
}
