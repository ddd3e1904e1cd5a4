//! Drop-in for Calico's Typha: the daemon runs with exactly the environment that Calico's
//! `manifests/calico-typha.yaml` and the tigera-operator's Typha render (`pkg/render/typha.go`)
//! give the `calico-typha` container, with Typha's meaning for each variable.

use clap::CommandFactory;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use typha::config::Config;
use typha::http::http_get;
use typha::testing::ApiServer;

mod support;
use support::{free_port, Ca};

/// Every `TYPHA_*` variable either render sets (the manifest's commented-out metrics pair
/// included), with the values they set. Ports, paths and the namespace are filled in by the
/// test; the rest are the renders' own values.
const RENDERED: &[(&str, &str)] = &[
    ("TYPHA_LOGSEVERITYSCREEN", "info"),
    ("TYPHA_LOGFILEPATH", "none"),
    ("TYPHA_LOGSEVERITYSYS", "none"),
    ("TYPHA_CONNECTIONREBALANCINGMODE", "kubernetes"),
    ("TYPHA_DATASTORETYPE", "kubernetes"),
    ("TYPHA_HEALTHENABLED", "true"),
    ("TYPHA_SHUTDOWNTIMEOUTSECS", "300"),
    ("TYPHA_PROMETHEUSMETRICSENABLED", "true"),
    ("TYPHA_PROMETHEUSMETRICSPORT", "<metrics>"),
    ("TYPHA_HEALTHPORT", "<health>"),
    ("TYPHA_K8SNAMESPACE", "calico-system"),
    ("TYPHA_CAFILE", "<ca>"),
    ("TYPHA_SERVERCERTFILE", "<cert>"),
    ("TYPHA_SERVERKEYFILE", "<key>"),
    ("TYPHA_FIPSMODEENABLED", "true"),
    ("TYPHA_CLIENTCN", "typha-client"),
    (
        "TYPHA_CLIENTURISAN",
        "spiffe://cluster.local/ns/calico-system/sa/calico-node",
    ),
];

#[test]
fn every_rendered_variable_is_a_setting() {
    let known: Vec<String> = Config::command()
        .get_arguments()
        .filter_map(|a| a.get_env().and_then(|e| e.to_str()).map(str::to_owned))
        .collect();
    let missing: Vec<&str> = RENDERED
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| !known.iter().any(|e| e == k))
        .collect();
    assert!(missing.is_empty(), "not settings of typha-rs: {missing:?}");
}

#[test]
fn the_daemon_runs_on_the_rendered_environment() {
    let api = ApiServer::start("dropin").unwrap_or_else(|e| panic!("{e}"));
    let dir = std::env::temp_dir().join(format!("typha-dropin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = Ca::new("dropin-ca");
    let (cert, key) = ca.leaf("calico-typha", None, true);
    for (name, pem) in [("ca.pem", ca.pem()), ("cert.pem", cert), ("key.pem", key)] {
        std::fs::write(dir.join(name), pem).unwrap();
    }
    let (health, metrics, server) = (free_port(), free_port(), free_port());
    let fill = |v: &str| -> String {
        match v {
            "<metrics>" => metrics.to_string(),
            "<health>" => health.to_string(),
            "<ca>" => dir.join("ca.pem").display().to_string(),
            "<cert>" => dir.join("cert.pem").display().to_string(),
            "<key>" => dir.join("key.pem").display().to_string(),
            v => v.to_owned(),
        }
    };
    // The renders leave the port at Typha's default (5473); a test takes a free one. The
    // API server is found through the kubeconfig, as in-cluster config is not available here.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_typha"));
    cmd.env_clear()
        .env("KUBECONFIG", api.kubeconfig())
        .env("TYPHA_SERVERPORT", server.to_string())
        .env("TYPHA_SERVERHOST", "127.0.0.1")
        .env("TYPHA_PROMETHEUSMETRICSHOST", "127.0.0.1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in RENDERED {
        cmd.env(k, fill(v));
    }
    let mut child = cmd.spawn().unwrap();
    let guard = KillOnDrop(&mut child);
    let stdout = guard.0.stdout.take().unwrap();
    let stderr = guard.0.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut s);
        s
    });
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert!(line.starts_with("typha-rs listening:"), "{line:?}");

    // Probes where the operator's Deployment points them: localhost:<TYPHA_HEALTHPORT>.
    let health_addr: SocketAddr = format!("127.0.0.1:{health}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match http_get(health_addr, "/readiness", Duration::from_secs(2)) {
            Ok((200, _)) => break,
            other => assert!(Instant::now() < deadline, "never ready: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, _) = http_get(health_addr, "/liveness", Duration::from_secs(2)).unwrap();
    assert_eq!(code, 200);
    let metrics_addr: SocketAddr = format!("127.0.0.1:{metrics}").parse().unwrap();
    let (code, body) = http_get(metrics_addr, "/metrics", Duration::from_secs(5)).unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("typha_connections_active"), "{body}");

    // TLS is on (the three files are set): a plaintext client gets no byte of the protocol.
    let mut plain = TcpStream::connect(("127.0.0.1", server)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    plain
        .write_all(&[0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8])
        .unwrap();
    let mut buf = [0u8; 64];
    let n = plain.read(&mut buf).unwrap_or(0);
    assert!(
        n == 0 || buf[0] == 0x15,
        "plaintext answered with {n} bytes: {:?}",
        &buf[..n]
    );

    // SIGTERM with Typha's shutdown timeout: no client is left, so it exits at once, cleanly.
    let pid = guard.0.id() as libc::pid_t;
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = guard.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(guard);
    let log = log.join().unwrap();
    assert!(status.success(), "exit {status}; log:\n{log}");
    assert!(log.contains("FIPS mode"), "{log}");
    assert!(
        !log.contains("TYPHA_LOGFILEPATH is set") && !log.contains("TYPHA_LOGSEVERITYSYS is set"),
        "`none` is Typha's meaning, nothing to warn about:\n{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

struct KillOnDrop<'a>(&'a mut std::process::Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
