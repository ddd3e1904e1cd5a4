//! The `typha` binary as an operator runs it: sim datastore, real ports, real signals.

use std::process::Command;
use std::time::{Duration, Instant};
use typha::client::{BlockingClient, ClientError, ClientOptions};
use typha::http::http_get;
use typha::model::Digest;
use typha::proto::GoodbyeReason;

mod support;
use support::DaemonProcess;

type Running = DaemonProcess;

fn start(extra: &[&str]) -> Running {
    DaemonProcess::start(0, extra, &[])
}

fn wait_ready(r: &Running) {
    r.wait_ready(Duration::from_secs(30));
}

fn server_digest(r: &Running, seq: u64) -> (Digest, u64) {
    let (code, body) = http_get(
        r.metrics,
        &format!("/digest?seq={seq}"),
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let felix = &v["syncers"]["felix"];
    (
        Digest::from_hex(felix["digest"].as_str().unwrap()).unwrap(),
        felix["keys"].as_u64().unwrap(),
    )
}

#[test]
fn sigterm_sheds_clients_gradually_and_exits_zero() {
    let mut r = start(&[
        "--sim-endpoints",
        "2000",
        "--sim-churn-rate",
        "500",
        "--shutdown-timeout-secs",
        "2",
    ]);
    wait_ready(&r);
    let mut clients: Vec<_> = (0..10)
        .map(|_| BlockingClient::connect(r.protocol, ClientOptions::default()).unwrap())
        .collect();
    for c in &mut clients {
        c.run_until_in_sync(Duration::from_secs(30)).unwrap();
        // Let some churn through, then check against the daemon's own digest at that sequence.
        let target = c.state().seq() + 5;
        c.run_until(Duration::from_secs(30), |s| s.seq() >= target)
            .unwrap();
        let (digest, keys) = server_digest(&r, c.state().seq());
        assert_eq!(c.state().digest(), digest);
        assert_eq!(c.state().len() as u64, keys);
    }
    let (code, metrics) = http_get(r.metrics, "/metrics", Duration::from_secs(5)).unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("typha_connections_active 10"), "{metrics}");
    assert!(
        metrics.contains("typha_updates_skipped "),
        "no-op filter metric present"
    );

    let pid = r.child.id() as libc::pid_t;
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || {
                let err = c.run_until(Duration::from_secs(20), |_| false).unwrap_err();
                (err, Instant::now())
            })
        })
        .collect();
    let signalled = Instant::now();
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    // Not ready from the start of the shutdown, so a Service sends no new clients.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match http_get(r.health, "/readiness", Duration::from_secs(2)) {
            Ok((503, body)) if body.contains("shutting down") => break,
            other => assert!(Instant::now() < deadline, "still ready: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut times = Vec::new();
    for t in readers {
        let (err, at) = t.join().unwrap();
        assert!(
            matches!(
                err,
                ClientError::Goodbye {
                    reason: GoodbyeReason::Shutdown,
                    ..
                }
            ),
            "{err}"
        );
        times.push(at - signalled);
    }
    times.sort();
    // Shed one at a time over 95 % of 2 s (190 ms apart), not all at once.
    assert!(
        times[times.len() - 1] - times[0] >= Duration::from_millis(1000),
        "goodbyes at {times:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = r.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
}

#[test]
fn bad_settings_fail_fast_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_typha"))
        .args([
            "--config-file",
            "/dev/null",
            "--server-ping-interval-secs=0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server-ping-interval-secs"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_typha"))
        .args(["--config-file", "/nonexistent/typha.cfg"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/typha.cfg"));
}

#[test]
fn occupied_port_is_a_clear_startup_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_typha"))
        .args([
            "--config-file",
            "/dev/null",
            "--datastore-type",
            "sim",
            "--server-host",
            "127.0.0.1",
            "--server-port",
            &port,
            "--health-enabled",
            "false",
            "--prometheus-metrics-enabled",
            "false",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot listen for clients"), "{err}");
}

#[test]
fn sim_settings_without_the_sim_datastore_are_refused() {
    // The default datastore is kubernetes: a sim flag alone must not quietly start a daemon
    // that watches a real cluster (or, before, a synthetic one that served real nodes).
    let out = Command::new(env!("CARGO_BIN_EXE_typha"))
        .args(["--config-file", "/dev/null", "--sim-endpoints", "10"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("datastore-type") && err.contains("--sim-endpoints"),
        "{err}"
    );
}

#[test]
fn an_unreachable_datastore_leaves_the_daemon_unready_and_empty() {
    // A kubeconfig whose API server is a closed loopback port: the daemon must stay unready and
    // serve no keys at all, never fall back to anything synthetic.
    let dir = std::env::temp_dir().join(format!("typha-unreachable-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    let dead = support::free_port();
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{dead}\n\
             contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n\
             users:\n- name: u\n  user: {{}}\n"
        ),
    )
    .unwrap();
    let r = DaemonProcess::start(
        0,
        &[
            "--datastore-type".as_ref(),
            "kubernetes".as_ref(),
            "--kubeconfig".as_ref(),
            kubeconfig.as_os_str(),
        ],
        &[],
    );
    // Give the driver time for several failed attempts; readiness must say why it is not ready.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let (code, body) = http_get(r.health, "/readiness", Duration::from_secs(2)).unwrap();
        assert_eq!(code, 503, "ready without a datastore: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // What a client is served is only Calico's static default-allow profile, which exists
    // without any datastore; nothing synthetic.
    let (code, body) = http_get(r.metrics, "/digest", Duration::from_secs(5)).unwrap();
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let seq = v["seq"].as_u64().unwrap();
    let mut c = BlockingClient::connect(r.protocol, ClientOptions::default()).unwrap();
    c.run_until_seq(seq, Duration::from_secs(10)).unwrap();
    let keys: Vec<&String> = c.state().iter().map(|(k, _)| k).collect();
    assert!(
        keys.iter()
            .all(|k| k.contains("projectcalico-default-allow")),
        "served without a datastore: {keys:?}"
    );
    assert_eq!(
        keys.len() as u64,
        v["syncers"]["felix"]["keys"].as_u64().unwrap()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
