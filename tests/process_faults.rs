//! The process never half-dies, and its supervised parts come back: faults injected through
//! the test-only fault points (`src/fault.rs`; this target needs the `fault-injection`
//! feature: `cargo test --features fault-injection --test process_faults`).
//!
//! The `typha` binary as a child process: a closed log pipe, a panic in each thread, a thread
//! that ends. An in-process daemon: the driver and the per-kind watches restart, with the
//! probes following.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use typha::client::{BlockingClient, ClientOptions};
use typha::daemon::{Daemon, DaemonConfig};
use typha::datastore::sim::SimConfig;
use typha::datastore::{BatchLimits, DatastoreThreadConfig, DriverConfig};
use typha::http::http_get;
use typha::proto::encode::EncodeOptions;
use typha::server::ServerConfig;

const T: Duration = Duration::from_secs(5);

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The daemon binary with loopback ports, killed and reaped on drop.
struct Proc {
    child: Child,
    protocol: SocketAddr,
    metrics: SocketAddr,
    health: SocketAddr,
    /// stderr, read on a thread until the process ends (when piped and kept).
    stderr: Option<std::thread::JoinHandle<String>>,
}

#[derive(PartialEq)]
enum Stderr {
    /// Read in full, for the test to look at.
    Keep,
    /// The read end closed at once: every log write fails with EPIPE.
    Close,
}

impl Proc {
    fn start(extra: &[&str], env: &[(&str, &str)], stderr: Stderr) -> Proc {
        let (p, h, m) = (free_port(), free_port(), free_port());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_typha"));
        cmd.args(["--config-file", "/dev/null", "--datastore-type", "sim"])
            .args([
                "--server-host",
                "127.0.0.1",
                "--server-port",
                &p.to_string(),
            ])
            .args([
                "--health-host",
                "127.0.0.1",
                "--health-port",
                &h.to_string(),
            ])
            .args(["--prometheus-metrics-host", "127.0.0.1"])
            .args(["--prometheus-metrics-port", &m.to_string()])
            .args(["--sim-endpoints", "200", "--sim-churn-rate", "50"])
            .args(extra)
            .env_remove("TYPHA_TEST_FAULTS")
            .env_remove("TYPHA_LOGFORMAT")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start typha");
        let err = child.stderr.take().unwrap();
        let stderr = match stderr {
            Stderr::Keep => Some(std::thread::spawn(move || {
                let mut s = String::new();
                let _ = BufReader::new(err).read_to_string(&mut s);
                s
            })),
            Stderr::Close => {
                drop(err);
                None
            }
        };
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        Proc {
            child,
            protocol: addr(p),
            health: addr(h),
            metrics: addr(m),
            stderr,
        }
    }

    /// Reads the "listening" line: the daemon is up.
    fn wait_listening(&mut self) {
        let out = self.child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line).unwrap();
        assert!(line.starts_with("typha-rs listening:"), "{line:?}");
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(http_get(self.health, "/readiness", T), Ok((200, _))) {
            assert!(Instant::now() < deadline, "never ready");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// Waits for the exit (at most `limit`); its code and the stderr it wrote.
    fn wait_exit(&mut self, limit: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "typha still running after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let err = self
            .stderr
            .take()
            .map(|t| t.join().unwrap())
            .unwrap_or_default();
        (status.code(), err)
    }

    fn metric(&self, name: &str) -> u64 {
        let (code, body) = http_get(self.metrics, "/metrics", T).unwrap();
        assert_eq!(code, 200);
        metric_value(&body, name)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The value of the series `name` (full series text, labels included) in an exposition.
fn metric_value(exposition: &str, name: &str) -> u64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn client(addr: SocketAddr, hostname: &str) -> BlockingClient {
    let mut c = BlockingClient::connect(
        addr,
        ClientOptions {
            hostname: hostname.to_owned(),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    c.run_until_in_sync(Duration::from_secs(30)).unwrap();
    c
}

#[test]
fn a_closed_log_pipe_neither_stops_serving_nor_blocks_shutdown() {
    let mut p = Proc::start(&["--log-severity-screen", "info"], &[], Stderr::Close);
    p.wait_listening();
    p.wait_ready();
    // Each connection logs a line, and every line fails to write.
    let clients: Vec<_> = (0..5)
        .map(|i| client(p.protocol, &format!("n{i}")))
        .collect();
    assert!(
        p.metric("typha_log_errors") > 0,
        "the failed writes are counted"
    );
    // Still serving after the failures: a new client gets a full snapshot.
    let late = client(p.protocol, "late");
    assert!(!late.state().is_empty());
    drop((clients, late));
    p.signal(libc::SIGTERM);
    let (code, _) = p.wait_exit(Duration::from_secs(30));
    assert_eq!(
        code,
        Some(0),
        "a clean shutdown, whatever became of the logs"
    );
}

/// Each thread's panic ends the process with the thread-died status, after a last word.
#[test]
fn a_panic_in_any_thread_ends_the_process() {
    for (fault, thread) in [
        ("reactor-panic", "typha-reactor"),
        ("datastore-thread-panic", "typha-datastore"),
        ("http-panic", "typha-http"),
    ] {
        let mut p = Proc::start(&[], &[("TYPHA_TEST_FAULTS", fault)], Stderr::Keep);
        let (code, err) = p.wait_exit(Duration::from_secs(30));
        assert_eq!(code, Some(70), "{fault}: {err}");
        assert!(
            err.contains(&format!("typha: fatal: thread '{thread}' panicked"))
                && err.contains(&format!("injected fault {fault}")),
            "{fault}: {err}"
        );
    }
    // The signal thread panics on the signal: the process must still go, with the status.
    let mut p = Proc::start(
        &[],
        &[("TYPHA_TEST_FAULTS", "signal-thread-panic")],
        Stderr::Keep,
    );
    p.wait_listening();
    p.signal(libc::SIGTERM);
    let (code, err) = p.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(70), "{err}");
    assert!(err.contains("thread 'typha-signals' panicked"), "{err}");
}

#[test]
fn a_thread_that_ends_early_ends_the_process() {
    let mut p = Proc::start(
        &[],
        &[("TYPHA_TEST_FAULTS", "datastore-thread-finish")],
        Stderr::Keep,
    );
    let (code, err) = p.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(70), "{err}");
    assert!(
        err.contains("typha: fatal: thread typha-datastore ended while the daemon was running"),
        "{err}"
    );
}

#[test]
fn log_lines_cannot_be_forged_and_json_is_one_object_per_line() {
    let evil = "evil\n2026-01-01T00:00:00Z  INFO fake line\u{1b}[31m";
    for json in [false, true] {
        let env: &[(&str, &str)] = if json {
            &[("TYPHA_LOGFORMAT", "json")]
        } else {
            &[]
        };
        let mut p = Proc::start(&["--log-severity-screen", "info"], env, Stderr::Keep);
        p.wait_listening();
        p.wait_ready();
        drop(client(p.protocol, evil));
        p.signal(libc::SIGTERM);
        let (code, err) = p.wait_exit(Duration::from_secs(30));
        assert_eq!(code, Some(0), "{err}");
        assert!(
            !err.contains('\u{1b}'),
            "no raw escape (nor colour on a pipe): {err}"
        );
        assert!(
            !err.lines().any(|l| l.starts_with("2026-01-01T00:00:00Z")),
            "the hostname forged a line: {err}"
        );
        let connected: Vec<&str> = err
            .lines()
            .filter(|l| l.contains("client connected"))
            .collect();
        assert_eq!(connected.len(), 1, "{err}");
        if json {
            for l in err.lines() {
                let v: serde_json::Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {l:?}"));
                assert!(v["level"].is_string() && v["fields"].is_object(), "{l}");
            }
            let v: serde_json::Value = serde_json::from_str(connected[0]).unwrap();
            assert_eq!(
                v["fields"]["hostname"], evil,
                "the hostname survives intact"
            );
        } else {
            assert!(
                connected[0].contains(
                    "hostname=\"evil\\n2026-01-01T00:00:00Z  INFO fake line\\u{1b}[31m\""
                ),
                "{}",
                connected[0]
            );
        }
    }
}

#[test]
fn a_connection_storm_logs_a_summary_instead_of_every_line() {
    let mut p = Proc::start(&["--log-severity-screen", "info"], &[], Stderr::Keep);
    p.wait_listening();
    p.wait_ready();
    // Many more connections than the per-second limit of a call site (20), within a second.
    let started = Instant::now();
    let clients: Vec<_> = (0..80)
        .map(|i| {
            BlockingClient::connect(
                p.protocol,
                ClientOptions {
                    hostname: format!("storm-{i}"),
                    ..ClientOptions::default()
                },
            )
            .unwrap()
        })
        .collect();
    let suppressed_in_time = started.elapsed() < Duration::from_millis(900);
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.metric("typha_logs_suppressed_total") == 0 && suppressed_in_time {
        assert!(Instant::now() < deadline, "nothing suppressed");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The summary is written within the next second.
    std::thread::sleep(Duration::from_millis(1500));
    drop(clients);
    p.signal(libc::SIGTERM);
    let (code, err) = p.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{err}");
    if !suppressed_in_time {
        // A machine this slow spread the storm over several windows; nothing to check.
        return;
    }
    let accepted = err
        .lines()
        .filter(|l| l.contains("client connected"))
        .count();
    assert!(accepted < 80, "every connect was logged: {accepted}");
    let summary: u64 = err
        .lines()
        .filter(|l| l.contains("per-connection log lines suppressed"))
        .filter_map(|l| {
            let v = l.split("suppressed=").nth(1)?;
            v.split(' ').next()?.parse::<u64>().ok()
        })
        .sum();
    assert!(summary > 0, "no summary line: {err}");
}

// ---- supervised parts, in process -----------------------------------------------------------

fn sim_daemon(unready_after: Duration, unreachable: Duration) -> Daemon {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let d = Daemon::start(DaemonConfig {
        server: ServerConfig {
            listen: loopback,
            tick: Duration::from_millis(20),
            ..ServerConfig::default()
        },
        datastore: DatastoreThreadConfig {
            driver: DriverConfig::Sim(SimConfig {
                nodes: 5,
                endpoints: 100,
                namespaces: 3,
                policies: 10,
                churn_rate: 200.0,
                ..SimConfig::default()
            }),
            limits: BatchLimits::default(),
            encode: EncodeOptions::default(),
            health_listen: Some(loopback),
            metrics_listen: Some(loopback),
            liveness_stall: Duration::from_secs(30),
            datastore_unreachable: unreachable,
            component_down_unready: unready_after,
        },
        batch_channel_capacity: 1024,
    })
    .unwrap();
    typha::testing::wait_ready(&d, Duration::from_secs(30)).unwrap();
    d
}

/// Polls `path` on `addr` until `want` holds for its answer (at most `limit`).
fn wait_probe(addr: SocketAddr, path: &str, limit: Duration, want: impl Fn(u16, &str) -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        let (code, body) = http_get(addr, path, T).unwrap();
        if want(code, &body) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path}: still {code} {body:?} after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn restarts(d: &Daemon, component: &str) -> u64 {
    metric_value(
        &d.metrics.render(),
        &format!("typha_component_restarts_total{{component=\"{component}\"}}"),
    )
}

/// One test for both, as the fault points are process-wide: the snapshot encoder's fault must
/// reach this daemon's encoder, not another test's.
#[test]
fn a_failed_snapshot_encoder_or_driver_restarts_and_the_clients_stay_consistent() {
    // Unready as soon as a part is down; the restart backoff is 500 ms.
    let d = sim_daemon(Duration::from_millis(1), Duration::from_secs(300));
    let health = d.health_addr.unwrap();
    // The first client's snapshot encode panics: it is retried, and the client still joins.
    typha::fault::arm("snapshot-panic");
    let joining = std::thread::spawn({
        let addr = d.protocol_addr;
        move || client(addr, "first")
    });
    wait_probe(health, "/readiness", T, |code, body| {
        code == 503 && body.contains("snapshot-encoder down for")
    });
    let first = joining.join().unwrap();
    assert!(!first.state().is_empty());
    assert_eq!(restarts(&d, "snapshot-encoder"), 1);
    wait_probe(health, "/readiness", T, |code, _| code == 200);
    drop(first);
    let mut c = client(d.protocol_addr, "watcher");
    for (fault, n) in [("driver-panic", 1), ("driver-finish", 2)] {
        typha::fault::arm(fault);
        wait_probe(health, "/readiness", T, |code, body| {
            code == 503 && body.contains("driver down for")
        });
        assert_eq!(restarts(&d, "driver"), n, "{fault}");
        wait_probe(health, "/readiness", Duration::from_secs(30), |code, _| {
            code == 200
        });
        wait_probe(health, "/liveness", T, |code, _| code == 200);
    }
    // The client never saw the restarts, only data: it matches the daemon at its sequence.
    let target = d.status.digests(None).unwrap().seq;
    c.run_until(Duration::from_secs(30), |s| s.seq() >= target)
        .unwrap();
    let rec = d.status.digests(Some(c.state().seq())).unwrap();
    let felix = rec.views[typha::model::SyncerType::Felix.index()];
    assert_eq!(c.state().digest(), felix.digest);
    assert_eq!(c.state().len() as u64, felix.key_count);
    d.stop().unwrap();
}

#[test]
fn a_watch_that_keeps_failing_fails_readiness_then_liveness_and_recovers() {
    let api =
        typha::testing::ApiServer::start("process-faults-watch").unwrap_or_else(|e| panic!("{e}"));
    let mut cfg = typha::testing::kubernetes_daemon_config(&api.kubeconfig());
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.datastore.health_listen = Some(loopback);
    cfg.datastore.component_down_unready = Duration::from_millis(300);
    cfg.datastore.datastore_unreachable = Duration::from_secs(2);
    if let DriverConfig::Kubernetes(k) = &mut cfg.datastore.driver {
        k.probe_interval = Duration::from_millis(100);
    }
    let d = Daemon::start(cfg).unwrap();
    typha::testing::wait_ready(&d, Duration::from_secs(60)).unwrap();
    let health = d.health_addr.unwrap();
    // One failure: down through the 500 ms backoff (unready), then back.
    typha::fault::arm("watch-pod-panic");
    wait_probe(health, "/readiness", T, |code, body| {
        code == 503 && body.contains("watch/pod down for")
    });
    wait_probe(health, "/readiness", Duration::from_secs(30), |code, _| {
        code == 200
    });
    assert_eq!(restarts(&d, "watch/pod"), 1);
    // Four more in a row: 0.5 + 1 + 2 + 4 s of backoff, past the 2 s liveness limit.
    for _ in 0..4 {
        typha::fault::arm("watch-namespace-finish");
    }
    wait_probe(
        health,
        "/liveness",
        Duration::from_secs(30),
        |code, body| code == 503 && body.contains("watch/namespace down for"),
    );
    wait_probe(health, "/liveness", Duration::from_secs(60), |code, _| {
        code == 200
    });
    wait_probe(health, "/readiness", T, |code, _| code == 200);
    assert_eq!(restarts(&d, "watch/namespace"), 4);
    d.stop().unwrap();
}
