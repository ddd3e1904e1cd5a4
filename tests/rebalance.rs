//! Several `typha` replicas as child processes on loopback: connection rebalancing against the
//! real API server, clients moving when a replica dies (kill -9), and a client leaving a
//! replica that went silent without FIN or RST (SIGSTOP).

use mio::net::TcpStream as MioStream;
use mio::{Events, Interest, Poll, Token};
use serde_json::json;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use typha::client::reconnect::{pick_replica, Backoff, Rng};
use typha::client::{
    ClientError, ClientOptions, ClientSession, Discovery, ReconnectEvent, ReconnectOptions,
    ReconnectingClient, ServiceDiscovery,
};
use typha::http::http_get;
use typha::model::{Digest, SyncerType};
use typha::proto::GoodbyeReason;
use typha::rebalance::{connection_target, ClusterCounts, TargetParams};
use typha::testing::ApiServer;

mod support;
use support::{free_port, DaemonProcess};

type Replica = DaemonProcess;

// ---- replicas as child processes ---------------------------------------------------------

fn start_replica(port: u16, extra: &[String]) -> Replica {
    let mut args = vec!["--shutdown-timeout-secs".to_owned(), "0".to_owned()];
    args.extend(extra.iter().cloned());
    DaemonProcess::start(port, &args, &[])
}

fn wait_ready(r: &Replica) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((200, _)) = http_get(r.health, "/readiness", Duration::from_secs(2)) {
            return;
        }
        assert!(Instant::now() < deadline, "replica never became ready");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of an unlabelled metric.
fn metric(r: &Replica, name: &str) -> Option<i64> {
    let (_, body) = http_get(r.metrics, "/metrics", Duration::from_secs(5)).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The replica's digest of `syncer`'s view at `seq`, if it still holds it.
fn digest_at(r: &Replica, seq: u64, syncer: SyncerType) -> Option<(Digest, u64)> {
    let (code, body) = http_get(
        r.metrics,
        &format!("/digest?seq={seq}"),
        Duration::from_secs(5),
    )
    .ok()?;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let view = &v["syncers"][syncer.as_str()];
    Some((
        Digest::from_hex(view["digest"].as_str()?)?,
        view["keys"].as_u64()?,
    ))
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + timeout;
    loop {
        match cond() {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => panic!("timed out waiting for {what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

// ---- many clients on a few threads ------------------------------------------------------

/// What a fleet client last published.
#[derive(Debug, Clone, Copy)]
struct ClientStatus {
    replica: Option<SocketAddr>,
    in_sync: bool,
    seq: u64,
    digest: Digest,
    keys: u64,
    syncer: SyncerType,
    connects: u32,
    rebalanced: u32,
}

struct FleetClient {
    syncer: SyncerType,
    conn: Option<(MioStream, ClientSession, SocketAddr)>,
    next_attempt: Instant,
    last: Option<SocketAddr>,
    first: Option<SocketAddr>,
    backoff: Backoff,
    connects: u32,
    rebalanced: u32,
}

/// Clients multiplexed on a few threads (one mio `Poll` each), each following the library's
/// reconnect policy (`pick_replica`, `Backoff`): a random other replica after a Goodbye or
/// a lost connection. Each client's first connection goes to `first`.
struct Fleet {
    stop: Arc<AtomicBool>,
    status: Arc<Mutex<Vec<ClientStatus>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Fleet {
    fn start(n: usize, threads: usize, replicas: Vec<SocketAddr>, first: SocketAddr) -> Fleet {
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(Mutex::new(
            (0..n)
                .map(|i| ClientStatus {
                    replica: None,
                    in_sync: false,
                    seq: 0,
                    digest: Digest::default(),
                    keys: 0,
                    syncer: SyncerType::ALL[i % SyncerType::COUNT],
                    connects: 0,
                    rebalanced: 0,
                })
                .collect::<Vec<_>>(),
        ));
        let per = n.div_ceil(threads);
        let handles = (0..threads)
            .map(|t| {
                let ids: Vec<usize> = (t * per..((t + 1) * per).min(n)).collect();
                let (stop, status, replicas) = (stop.clone(), status.clone(), replicas.clone());
                std::thread::spawn(move || fleet_thread(ids, replicas, first, stop, status))
            })
            .collect();
        Fleet {
            stop,
            status,
            threads: handles,
        }
    }

    fn snapshot(&self) -> Vec<ClientStatus> {
        self.status.lock().unwrap().clone()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn fleet_thread(
    ids: Vec<usize>,
    replicas: Vec<SocketAddr>,
    first: SocketAddr,
    stop: Arc<AtomicBool>,
    status: Arc<Mutex<Vec<ClientStatus>>>,
) {
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(1024);
    let mut rng = Rng::new();
    let mut clients: Vec<FleetClient> = ids
        .iter()
        .map(|&i| FleetClient {
            syncer: SyncerType::ALL[i % SyncerType::COUNT],
            conn: None,
            next_attempt: Instant::now(),
            last: None,
            first: Some(first),
            backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(1)),
            connects: 0,
            rebalanced: 0,
        })
        .collect();
    let mut buf = vec![0u8; 64 * 1024];
    let mut published = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        for (k, c) in clients.iter_mut().enumerate() {
            if c.conn.is_some() || now < c.next_attempt {
                continue;
            }
            let addr = c
                .first
                .take()
                .or_else(|| pick_replica(&replicas, c.last, &mut rng))
                .unwrap();
            c.last = Some(addr);
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(s) => {
                    s.set_nonblocking(true).unwrap();
                    s.set_nodelay(true).unwrap();
                    let mut s = MioStream::from_std(s);
                    poll.registry()
                        .register(&mut s, Token(k), Interest::READABLE | Interest::WRITABLE)
                        .unwrap();
                    let session = ClientSession::new(ClientOptions {
                        syncer_type: c.syncer,
                        hostname: format!("fleet-{}", ids[k]),
                        ..ClientOptions::default()
                    });
                    c.conn = Some((s, session, addr));
                    c.connects += 1;
                }
                Err(_) => c.next_attempt = now + c.backoff.fail(&mut rng),
            }
        }
        poll.poll(&mut events, Some(Duration::from_millis(20)))
            .unwrap();
        for ev in events.iter() {
            let k = ev.token().0;
            let c = &mut clients[k];
            let Some((s, session, _)) = c.conn.as_mut() else {
                continue;
            };
            let mut ended = false;
            loop {
                match s.read(&mut buf) {
                    Ok(0) => {
                        ended = true;
                        break;
                    }
                    Ok(n) => {
                        if session.feed(&buf[..n]).is_err() {
                            ended = true;
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        ended = true;
                        break;
                    }
                }
            }
            while session.poll_event().is_some() {}
            while !ended && session.has_output() {
                match s.write(session.pending_output()) {
                    Ok(n) => session.advance_output(n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => ended = true,
                }
            }
            if session.goodbye().is_some() {
                ended = true;
            }
            if ended {
                let (mut s, session, _) = c.conn.take().unwrap();
                let _ = poll.registry().deregister(&mut s);
                let moved = matches!(
                    session.goodbye(),
                    Some((GoodbyeReason::Rebalancing | GoodbyeReason::Shutdown, _))
                );
                if matches!(session.goodbye(), Some((GoodbyeReason::Rebalancing, _))) {
                    c.rebalanced += 1;
                }
                if session.state().is_in_sync() {
                    c.backoff.reset();
                }
                let delay = if moved {
                    c.backoff.moved(&mut rng)
                } else {
                    c.backoff.fail(&mut rng)
                };
                c.next_attempt = Instant::now() + delay;
            }
        }
        if published.elapsed() >= Duration::from_millis(100) {
            published = Instant::now();
            let mut st = status.lock().unwrap();
            for (k, c) in clients.iter().enumerate() {
                let s = &mut st[ids[k]];
                s.connects = c.connects;
                s.rebalanced = c.rebalanced;
                match &c.conn {
                    Some((_, session, addr)) => {
                        let state = session.state();
                        s.replica = Some(*addr);
                        s.in_sync = state.is_in_sync();
                        s.seq = state.seq();
                        s.digest = state.digest();
                        s.keys = state.len() as u64;
                    }
                    None => {
                        s.replica = None;
                        s.in_sync = false;
                    }
                }
            }
        }
    }
}

/// Every client in sync on one of `replicas`, each replica at or below its target, and the
/// replicas' own counts agreeing.
fn check_spread(
    fleet: &Fleet,
    replicas: &[&Replica],
    want_target: usize,
) -> Result<HashMap<SocketAddr, usize>, String> {
    let st = fleet.snapshot();
    let mut per: HashMap<SocketAddr, usize> = HashMap::new();
    for s in &st {
        match s.replica {
            Some(a) if s.in_sync => *per.entry(a).or_default() += 1,
            _ => return Err(format!("a client is not connected and in sync: {s:?}")),
        }
    }
    for r in replicas {
        let n = per.get(&r.protocol).copied().unwrap_or(0);
        let target = metric(r, "typha_connections_target").unwrap_or(-1);
        let active = metric(r, "typha_connections_active").unwrap_or(-1);
        if target != want_target as i64 {
            return Err(format!(
                "{}: target {target}, want {want_target}",
                r.protocol
            ));
        }
        if n > want_target || active != n as i64 {
            return Err(format!(
                "{}: {n} clients (server counts {active}), target {want_target}; spread {per:?}",
                r.protocol
            ));
        }
    }
    let on_known: usize = replicas
        .iter()
        .map(|r| per.get(&r.protocol).copied().unwrap_or(0))
        .sum();
    if on_known != st.len() {
        return Err(format!("clients on other replicas: {per:?}"));
    }
    Ok(per)
}

/// Every client's map equals its replica's at the client's sequence number.
fn check_digests(fleet: &Fleet, replicas: &[&Replica]) -> Result<(), String> {
    let by_addr: HashMap<SocketAddr, &Replica> =
        replicas.iter().map(|r| (r.protocol, *r)).collect();
    let mut cache: HashMap<(SocketAddr, u64, usize), (Digest, u64)> = HashMap::new();
    for s in fleet.snapshot() {
        let addr = s.replica.ok_or("a client is disconnected")?;
        let r = by_addr
            .get(&addr)
            .ok_or("a client is on an unknown replica")?;
        let key = (addr, s.seq, s.syncer.index());
        let want = match cache.get(&key) {
            Some(w) => *w,
            None => {
                let w = digest_at(r, s.seq, s.syncer)
                    .ok_or_else(|| format!("{addr} holds no digest for seq {}", s.seq))?;
                cache.insert(key, w);
                w
            }
        };
        if (s.digest, s.keys) != want {
            return Err(format!("client {s:?} differs from its replica's {want:?}"));
        }
    }
    Ok(())
}

// ---- the API server side ----------------------------------------------------------------

const NS: &str = "typha-rebalance";
const SVC: &str = "calico-typha";

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

fn slices_api(client: &kube::Client) -> kube::Api<kube::api::DynamicObject> {
    // discovery.k8s.io/v1, as every cluster Calico v3.32 supports serves them (the v1beta1
    // fallback is covered against v1.20 in tests/k8s.rs).
    let ar = kube::discovery::ApiResource {
        group: "discovery.k8s.io".into(),
        version: "v1".into(),
        api_version: "discovery.k8s.io/v1".into(),
        kind: "EndpointSlice".into(),
        plural: "endpointslices".into(),
    };
    kube::Api::namespaced_with(client.clone(), NS, &ar)
}

/// One slice per replica, as the EndpointSlice controller would write for a ready pod. The
/// replicas listen on loopback, but a current API server refuses loopback addresses in
/// `discovery.k8s.io/v1` slices, so each slice carries a documentation-range stand-in
/// (192.0.2.0/24, RFC 5737: never routed) with the replica's own port. The daemons only count
/// ready endpoints; the clients below connect to the loopback ports.
fn slice_for(port: u16, i: usize) -> kube::api::DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": format!("{SVC}-{i}"), "namespace": NS,
                     "labels": {"kubernetes.io/service-name": SVC}},
        "addressType": "IPv4",
        "ports": [{"name": "calico-typha", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [stand_in(i).to_string()], "conditions": {"ready": true}}]
    }))
    .unwrap()
}

/// The address replica `i`'s slice names instead of 127.0.0.1.
fn stand_in(i: usize) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(192, 0, 2, 1 + i as u8)
}

fn client_count() -> usize {
    std::env::var("TYPHA_TEST_REBALANCE_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600)
}

#[test]
fn replicas_keep_their_share_and_take_over_a_killed_ones_clients() {
    let t0 = Instant::now();
    let clients = client_count();
    // One client per syncer type per node, as a cluster running every syncer would have.
    let nodes = clients.div_ceil(SyncerType::COUNT);
    let api = ApiServer::start("rebalance").unwrap_or_else(|e| panic!("{e}"));
    let kubeconfig = api.kubeconfig();
    let rt = rt();
    let client = kube_client(&rt, &kubeconfig);
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    rt.block_on(async {
        use k8s_openapi::api::core::v1::{Namespace, Node};
        use kube::api::PostParams;
        let pp = PostParams::default();
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap();
        kube::Api::<Namespace>::all(client.clone())
            .create(&pp, &ns)
            .await
            .unwrap();
        let node_api = kube::Api::<Node>::all(client.clone());
        for i in 0..nodes {
            let n: Node =
                serde_json::from_value(json!({"metadata": {"name": format!("node-{i}")}})).unwrap();
            node_api.create(&pp, &n).await.unwrap();
        }
        for (i, p) in ports.iter().enumerate() {
            slices_api(&client)
                .create(&pp, &slice_for(*p, i))
                .await
                .unwrap();
        }
    });
    // The client library's Service discovery sees the three replicas (by their stand-ins).
    let discovery = ServiceDiscovery {
        kubeconfig: Some(kubeconfig.clone()),
        namespace: NS.into(),
        service: SVC.into(),
        port_name: "calico-typha".into(),
    };
    let mut found = discovery.discover().unwrap();
    found.sort();
    let mut want: Vec<SocketAddr> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| SocketAddr::from((stand_in(i), *p)))
        .collect();
    want.sort();
    assert_eq!(found, want);

    let args: Vec<String> = [
        "--datastore-type",
        "kubernetes",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--connection-rebalancing-mode",
        "kubernetes",
        "--k8s-namespace",
        NS,
        "--k8s-service-name",
        SVC,
        "--k8s-service-poll-interval-secs",
        "0.5",
        "--connection-drop-interval-secs",
        "0.01",
        "--max-connections-lower-limit",
        "10",
        "--k8s-missing-api-retry-secs",
        "5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut replicas: Vec<Replica> = ports.iter().map(|p| start_replica(*p, &args)).collect();
    for r in &replicas {
        wait_ready(r);
    }
    let params = TargetParams {
        lower: 10,
        ..TargetParams::default()
    };
    let counts = |n| ClusterCounts {
        replicas: n,
        ready_replicas: n,
        nodes,
    };
    let target3 = connection_target(&params, SyncerType::COUNT, counts(3));
    let target2 = connection_target(&params, SyncerType::COUNT, counts(2));
    assert!(target3 * 3 >= clients && target3 < clients, "{target3}");
    eprintln!(
        "setup took {:?}; targets {target3} (3 replicas), {target2} (2)",
        t0.elapsed()
    );

    // Everyone starts on the first replica, as when the other two came up late.
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.protocol).collect();
    let fleet = Fleet::start(clients, 4, addrs.clone(), addrs[0]);
    let all: Vec<&Replica> = replicas.iter().collect();
    wait_until(
        "the clients to spread over three replicas",
        Duration::from_secs(60),
        || check_spread(&fleet, &all, target3).map(|_| ()),
    );
    let per = check_spread(&fleet, &all, target3).unwrap();
    eprintln!("spread over 3 after {:?}: {per:?}", t0.elapsed());
    let shed: u32 = fleet.snapshot().iter().map(|s| s.rebalanced).sum();
    assert!(
        shed as usize >= clients - target3,
        "the first replica shed {shed} clients"
    );
    wait_until(
        "digests to match (3 replicas)",
        Duration::from_secs(20),
        || check_digests(&fleet, &all),
    );

    // kill -9 one replica and take it out of the Service, as the endpoints controller would.
    let victim = replicas.remove(1);
    let victim_addr = victim.protocol;
    let orphans = fleet
        .snapshot()
        .iter()
        .filter(|s| s.replica == Some(victim_addr))
        .count();
    assert!(orphans > 0);
    let mut victim = victim;
    victim.signal(libc::SIGKILL);
    let _ = victim.child.wait();
    rt.block_on(async {
        slices_api(&client)
            .delete(&format!("{SVC}-1"), &Default::default())
            .await
            .unwrap();
    });
    let rest: Vec<&Replica> = replicas.iter().collect();
    wait_until(
        "the killed replica's clients to move",
        Duration::from_secs(60),
        || check_spread(&fleet, &rest, target2).map(|_| ()),
    );
    let per = check_spread(&fleet, &rest, target2).unwrap();
    eprintln!(
        "{orphans} orphans moved; spread over 2 after {:?}: {per:?}",
        t0.elapsed()
    );
    assert!(!per.contains_key(&victim_addr));
    wait_until(
        "digests to match (2 replicas)",
        Duration::from_secs(20),
        || check_digests(&fleet, &rest),
    );
    drop(fleet);
    drop(replicas);
}

// ---- a silent replica ---------------------------------------------------------------------

#[test]
fn a_frozen_replica_is_detected_by_the_read_timeout_and_left() {
    let args: Vec<String> = [
        "--sim-nodes",
        "20",
        "--sim-endpoints",
        "200",
        "--sim-churn-rate",
        "0",
        "--server-ping-interval-secs",
        "0.2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let replicas: Vec<Replica> = (0..2).map(|_| start_replica(free_port(), &args)).collect();
    for r in &replicas {
        wait_ready(r);
    }
    let mut opts = ReconnectOptions::new(Discovery::Static(
        replicas.iter().map(|r| r.protocol).collect(),
    ));
    opts.client.read_timeout = Some(Duration::from_secs(1));
    opts.backoff_initial = Duration::from_millis(50);
    let mut c = ReconnectingClient::new(opts);
    c.run_until(
        Duration::from_secs(30),
        |_| {},
        ReconnectingClient::is_in_sync,
    )
    .unwrap();
    let first = c.replica().unwrap();
    assert_eq!(c.connections(), 1);
    // Pings keep a healthy connection alive well past the read timeout.
    let quiet_until = Instant::now() + Duration::from_millis(2500);
    let mut dropped = false;
    while Instant::now() < quiet_until {
        match c.next_event_timeout(quiet_until.saturating_duration_since(Instant::now())) {
            Ok(ReconnectEvent::Event(_)) | Err(ClientError::Timeout) => {}
            Ok(other) => {
                dropped = true;
                eprintln!("unexpected: {other:?}");
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(!dropped, "a healthy connection was given up");
    let frozen = replicas.iter().find(|r| r.protocol == first).unwrap();
    // The peer stops without FIN or RST: its kernel still holds the connection open.
    frozen.signal(libc::SIGSTOP);
    let stopped_at = Instant::now();
    let mut timed_out_at = None;
    c.run_until(
        Duration::from_secs(20),
        |ev| {
            if let ReconnectEvent::Disconnected {
                addr,
                error: ClientError::Timeout,
                ..
            } = ev
            {
                assert_eq!(*addr, first);
                timed_out_at.get_or_insert_with(Instant::now);
            }
        },
        |c| c.is_in_sync() && c.replica().is_some_and(|a| a != first),
    )
    .unwrap();
    let detected = timed_out_at.expect("left by the read timeout") - stopped_at;
    assert!(
        detected >= Duration::from_millis(700) && detected < Duration::from_secs(5),
        "detected after {detected:?}"
    );
    assert_eq!(c.connections(), 2);
    // The new replica's snapshot replaced the map: it matches that replica's digest.
    let other = replicas.iter().find(|r| r.protocol != first).unwrap();
    let s = c.state().unwrap();
    let (digest, keys) = digest_at(other, s.seq(), SyncerType::Felix).unwrap();
    assert_eq!((s.digest(), s.len() as u64), (digest, keys));
    frozen.signal(libc::SIGCONT);
}
