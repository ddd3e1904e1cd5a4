//! `/liveness` and `/readiness` of a running daemon (sim datastore): a stuck thread fails
//! liveness with the reason, the connection limit fails readiness, and each probe lives on the
//! health port only.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use typha::client::{BlockingClient, ClientOptions};
use typha::daemon::{Daemon, DaemonConfig};
use typha::datastore::sim::SimConfig;
use typha::datastore::{BatchLimits, DatastoreThreadConfig, DriverConfig};
use typha::http::http_get;
use typha::proto::encode::EncodeOptions;
use typha::server::ServerConfig;

const T: Duration = Duration::from_secs(5);

fn start(stall: Duration, max_connections: usize) -> Daemon {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    Daemon::start(DaemonConfig {
        server: ServerConfig {
            listen: loopback,
            tick: Duration::from_millis(20),
            max_connections,
            ..ServerConfig::default()
        },
        datastore: DatastoreThreadConfig {
            driver: DriverConfig::Sim(SimConfig {
                nodes: 5,
                endpoints: 50,
                namespaces: 3,
                policies: 10,
                churn_rate: 50.0,
                ..SimConfig::default()
            }),
            limits: BatchLimits::default(),
            encode: EncodeOptions::default(),
            health_listen: Some(loopback),
            metrics_listen: Some(loopback),
            liveness_stall: stall,
            datastore_unreachable: Duration::from_secs(300),
            component_down_unready: typha::status::DEFAULT_COMPONENT_DOWN_UNREADY,
        },
        batch_channel_capacity: 1024,
    })
    .unwrap()
}

/// Polls `path` until its answer satisfies `want`; returns that answer.
fn wait_for(
    addr: SocketAddr,
    path: &str,
    within: Duration,
    what: &str,
    want: impl Fn(u16, &str) -> bool,
) -> (u16, String) {
    let deadline = Instant::now() + within;
    let mut last = None;
    while Instant::now() < deadline {
        match http_get(addr, path, T) {
            Ok((code, body)) if want(code, &body) => return (code, body),
            other => last = Some(other),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{path}: never {what} within {within:?}; last answer {last:?}");
}

/// Needs the test-only stall hooks: `cargo test --features fault-injection --test health`.
#[cfg(feature = "fault-injection")]
#[test]
fn a_stuck_thread_fails_liveness_with_the_reason_then_recovers() {
    let d = start(Duration::from_millis(400), 100);
    let health = d.health_addr.unwrap();
    wait_for(health, "/liveness", T, "live", |c, _| c == 200);

    // The datastore thread blocks for 2 s: the HTTP thread must still answer, with the reason.
    d.status.stall_datastore_for_test(Duration::from_secs(2));
    let (_, body) = wait_for(
        health,
        "/liveness",
        T,
        "failed for the datastore",
        |c, b| c == 503 && b.starts_with("datastore thread stalled for "),
    );
    assert!(body.ends_with('s'), "{body}");
    wait_for(health, "/liveness", T, "recovered", |c, _| c == 200);

    d.status.stall_reactor_for_test(Duration::from_secs(2));
    wait_for(health, "/liveness", T, "failed for the reactor", |c, b| {
        c == 503 && b.starts_with("reactor stalled for ")
    });
    wait_for(health, "/liveness", T, "recovered", |c, _| c == 200);
    d.stop().unwrap();
}

#[test]
fn readiness_fails_at_the_connection_limit() {
    let d = start(Duration::from_secs(30), 2);
    let health = d.health_addr.unwrap();
    wait_for(
        health,
        "/readiness",
        Duration::from_secs(30),
        "ready",
        |c, _| c == 200,
    );
    let mut a = BlockingClient::connect(d.protocol_addr, ClientOptions::default()).unwrap();
    a.run_until_in_sync(Duration::from_secs(30)).unwrap();
    assert_eq!(
        http_get(health, "/readiness", T).unwrap(),
        (200, "ok".into())
    );
    let mut b = BlockingClient::connect(d.protocol_addr, ClientOptions::default()).unwrap();
    b.run_until_in_sync(Duration::from_secs(30)).unwrap();
    let (code, body) = http_get(health, "/readiness", T).unwrap();
    assert_eq!(
        (code, body.as_str()),
        (503, "at the connection limit (2/2)")
    );
    // Liveness is unaffected: a full replica is healthy, just not taking more clients.
    assert_eq!(http_get(health, "/liveness", T).unwrap().0, 200);
    drop(b);
    wait_for(health, "/readiness", T, "ready again", |c, _| c == 200);
    drop(a);
    d.stop().unwrap();
}

#[test]
fn probes_and_metrics_live_on_separate_ports() {
    let d = start(Duration::from_secs(30), 100);
    let (health, metrics) = (d.health_addr.unwrap(), d.metrics_addr.unwrap());
    assert_ne!(health, metrics);
    wait_for(
        health,
        "/readiness",
        Duration::from_secs(30),
        "ready",
        |c, _| c == 200,
    );
    let (code, body) = http_get(metrics, "/metrics", T).unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("typha_connections_active 0"), "{body}");
    assert_eq!(http_get(metrics, "/digest", T).unwrap().0, 200);
    assert_eq!(http_get(metrics, "/liveness", T).unwrap().0, 404);
    assert_eq!(http_get(metrics, "/readiness", T).unwrap().0, 404);
    assert_eq!(http_get(health, "/metrics", T).unwrap().0, 404);
    assert_eq!(http_get(health, "/digest", T).unwrap().0, 404);
    d.stop().unwrap();
}
