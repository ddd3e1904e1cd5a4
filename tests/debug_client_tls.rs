//! `typha client`'s transport flags against the real `typha` binary: TLS (certificates made at
//! run time with rcgen; no key is checked in), Service discovery through the real API server,
//! and `--follow` moving to another daemon when its own says goodbye.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod support;
use support::{run_typha_client, Ca, DaemonProcess};

type Daemon = DaemonProcess;

const CLIENT_CN: &str = "typha-client";
const SERVER_CN: &str = "typha-server";
const SERVER_URI: &str = "spiffe://cluster.local/ns/calico-system/sa/calico-typha";
const T: Duration = Duration::from_secs(60);

// ---- certificates ---------------------------------------------------------------------------

/// A temporary directory with a CA, a server certificate and a client certificate; removed on
/// drop.
struct Pki(PathBuf);

impl Pki {
    fn new(name: &str) -> Pki {
        let d =
            std::env::temp_dir().join(format!("typha-rs-client-tls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let ca = Ca::new("typha client test CA");
        let (server, server_key) = ca.leaf(SERVER_CN, Some(SERVER_URI), true);
        let (client, client_key) = ca.leaf(CLIENT_CN, None, false);
        for (f, text) in [
            ("ca.pem", ca.pem()),
            ("server.pem", server),
            ("server-key.pem", server_key),
            ("client.pem", client),
            ("client-key.pem", client_key),
        ] {
            std::fs::write(d.join(f), text).unwrap();
        }
        Pki(d)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }

    /// The client's TLS flags, expecting the server's CN to be `server_cn`.
    fn client_flags(&self, server_cn: &str) -> Vec<String> {
        vec![
            "--ca-file".into(),
            self.path("ca.pem"),
            "--cert-file".into(),
            self.path("client.pem"),
            "--key-file".into(),
            self.path("client-key.pem"),
            "--server-cn".into(),
            server_cn.into(),
        ]
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---- daemons and the client as child processes ------------------------------------------------

fn start_daemon(pki: Option<&Pki>) -> Daemon {
    let (cert, key, ca) = match pki {
        Some(p) => (
            p.path("server.pem"),
            p.path("server-key.pem"),
            p.path("ca.pem"),
        ),
        None => Default::default(),
    };
    let env: Vec<(&str, &std::ffi::OsStr)> = match pki {
        Some(_) => vec![
            ("TYPHA_SERVERCERTFILE", cert.as_ref()),
            ("TYPHA_SERVERKEYFILE", key.as_ref()),
            ("TYPHA_CAFILE", ca.as_ref()),
            ("TYPHA_CLIENTCN", CLIENT_CN.as_ref()),
        ],
        None => Vec::new(),
    };
    let d = DaemonProcess::start(
        0,
        &[
            "--shutdown-timeout-secs",
            "0",
            "--sim-nodes",
            "5",
            "--sim-endpoints",
            "100",
            "--sim-policies",
            "10",
            "--sim-churn-rate",
            "50",
        ],
        &env,
    );
    d.wait_ready(T);
    d
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The client exited 0 and its last line is a matching digest with keys in it.
fn assert_digest_matched(out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    let events = json_lines(out);
    let last = events.last().expect("some output");
    assert_eq!(last["event"], "digest", "{last}");
    assert_eq!(last["match"], true, "{last}");
    assert_eq!(last["digest"], last["daemon_digest"], "{last}");
    assert!(last["keys"].as_u64().unwrap() > 100, "{last}");
    assert!(
        events.iter().any(|e| e["event"] == "snapshot-complete"),
        "{events:?}"
    );
}

// ---- TLS -------------------------------------------------------------------------------------

#[test]
fn tls_client_digest_matches_and_a_wrong_server_name_is_refused() {
    let pki = Pki::new("digest");
    let d = start_daemon(Some(&pki));
    let base = args(&[
        "--addr",
        &d.protocol.to_string(),
        "--http-addr",
        &d.metrics.to_string(),
        "--digest",
        "--json",
        "--quiet-updates",
    ]);

    let out = run_typha_client(&[base.clone(), pki.client_flags(SERVER_CN)].concat(), T);
    assert_digest_matched(&out);
    let hello = &json_lines(&out)[0];
    assert_eq!(hello["event"], "connected", "{hello}");

    // The URI SAN alone identifies the server too.
    let mut by_uri = pki.client_flags(SERVER_CN);
    by_uri.truncate(6);
    by_uri.extend(args(&["--server-uri-san", SERVER_URI]));
    assert_digest_matched(&run_typha_client(&[base.clone(), by_uri].concat(), T));

    // The daemon's certificate is fine but not the one asked for.
    let out = run_typha_client(
        &[base.clone(), pki.client_flags("someone-else")].concat(),
        T,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("TLS")
            && stderr.contains("someone-else")
            && stderr.contains(SERVER_CN)
            && stderr.contains(&d.protocol.to_string()),
        "{stderr}"
    );
    let last = json_lines(&out).pop().unwrap();
    assert_eq!(last["event"], "error", "{last}");

    // A plaintext client on the TLS port gets nowhere: an error, not a hang or a digest.
    let out = run_typha_client(&base, T);
    assert_eq!(out.status.code(), Some(2));

    // Half a TLS configuration is a usage error, named, before anything is tried.
    for (flags, says) in [
        (args(&["--server-cn", SERVER_CN]), "--ca-file"),
        (
            args(&["--ca-file", &pki.path("ca.pem"), "--server-cn", SERVER_CN])
                .into_iter()
                .chain(args(&["--cert-file", &pki.path("client.pem")]))
                .collect(),
            "--key-file",
        ),
        (args(&["--ca-file", &pki.path("ca.pem")]), "--server-cn"),
        (
            args(&["--ca-file", &pki.path("missing.pem"), "--server-cn", "x"]),
            "missing.pem",
        ),
    ] {
        let out = run_typha_client(&[base.clone(), flags.clone()].concat(), T);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {stderr}");
        assert!(stderr.contains(says), "{flags:?}: {stderr}");
    }
}

// ---- Service discovery -----------------------------------------------------------------------

const NS: &str = "typha-client-test";
const SVC: &str = "typha-under-test";

#[test]
fn service_discovery_finds_the_daemon_through_its_endpoint_slice() {
    // v1.20: the client must connect to the address the slice names, and only a server that
    // serves EndpointSlices as v1beta1 accepts a loopback address there (v1 refuses it); the
    // v1beta1 fallback of discovery is what this covers. The v1 path is tests/rebalance.rs'.
    let api = support::start_apiserver("debug-client", "v1.20", &[]);
    let kubeconfig = api.kubeconfig();
    let d = start_daemon(None);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use k8s_openapi::api::core::v1::Namespace;
        use kube::api::{DynamicObject, PostParams};
        let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        let client = kube::Client::try_from(cfg).unwrap();
        let pp = PostParams::default();
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap();
        kube::Api::<Namespace>::all(client.clone())
            .create(&pp, &ns)
            .await
            .unwrap();
        // The test server is v1.20: EndpointSlices are v1beta1 only.
        let ar = kube::discovery::ApiResource {
            group: "discovery.k8s.io".into(),
            version: "v1beta1".into(),
            api_version: "discovery.k8s.io/v1beta1".into(),
            kind: "EndpointSlice".into(),
            plural: "endpointslices".into(),
        };
        // The daemon's port under the default port name, next to the metrics port.
        let slice: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1beta1",
            "kind": "EndpointSlice",
            "metadata": {"name": format!("{SVC}-a"), "namespace": NS,
                         "labels": {"kubernetes.io/service-name": SVC}},
            "addressType": "IPv4",
            "ports": [
                {"name": "metrics", "port": d.metrics.port(), "protocol": "TCP"},
                {"name": "calico-typha", "port": d.protocol.port(), "protocol": "TCP"}
            ],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]
        }))
        .unwrap();
        kube::Api::<DynamicObject>::namespaced_with(client, NS, &ar)
            .create(&pp, &slice)
            .await
            .unwrap();
    });
    let kc = kubeconfig.to_string_lossy().into_owned();
    let discovery = args(&[
        "--kubeconfig",
        &kc,
        "--k8s-namespace",
        NS,
        "--http-addr",
        &d.metrics.to_string(),
        "--digest",
        "--json",
        "--quiet-updates",
    ]);
    let out = run_typha_client(
        &[discovery.clone(), args(&["--k8s-service-name", SVC])].concat(),
        T,
    );
    assert_digest_matched(&out);
    let hello = &json_lines(&out)[0];
    assert_eq!(hello["addr"], d.protocol.to_string(), "{hello}");

    // A Service with no endpoints, and --addr mixed with discovery: clear errors, exit 2.
    let out = run_typha_client(
        &[discovery.clone(), args(&["--k8s-service-name", "nothing"])].concat(),
        T,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{NS}/nothing")) && stderr.contains("no ready endpoint"),
        "{stderr}"
    );
    let out = run_typha_client(
        &[discovery, args(&["--addr", &d.protocol.to_string()])].concat(),
        T,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("exclude each other"), "{stderr}");
}

// ---- --follow --------------------------------------------------------------------------------

/// A running `typha client` whose stdout lines arrive on a channel.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Follower {
    fn start(args: &[String]) -> Follower {
        let mut child = Command::new(env!("CARGO_BIN_EXE_typha"))
            .arg("client")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start typha client");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Follower { child, lines }
    }

    /// The JSON events up to and including the first that `want` accepts, within `timeout`.
    fn until(&self, what: &str, timeout: Duration, want: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no {what} within {timeout:?} ({e}); saw {seen:?}"));
            let v: Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            let done = want(&v);
            seen.push(v);
            if done {
                return seen;
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn follow_moves_to_the_other_daemon_when_its_own_says_goodbye() {
    let daemons = [start_daemon(None), start_daemon(None)];
    let addrs: Vec<String> = daemons.iter().map(|d| d.protocol.to_string()).collect();
    let f = Follower::start(&args(&[
        "--addr",
        &addrs[0],
        "--addr",
        &addrs[1],
        "--follow",
        "--json",
        "--quiet-updates",
    ]));
    let seen = f.until("first snapshot", T, |v| v["event"] == "snapshot-complete");
    let first = seen
        .iter()
        .find(|v| v["event"] == "connected")
        .unwrap_or_else(|| panic!("no connected event in {seen:?}"))["addr"]
        .as_str()
        .unwrap()
        .to_owned();
    let (on, other) = if first == addrs[0] { (0, 1) } else { (1, 0) };
    assert_eq!(first, addrs[on]);

    daemons[on].signal(libc::SIGTERM);
    let seen = f.until("reconnect", T, |v| v["event"] == "reconnected");
    let goodbye = seen.iter().find(|v| v["event"] == "goodbye");
    assert_eq!(
        goodbye.map(|g| g["reason"].clone()),
        Some(json!("shutdown")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|v| v["event"] == "disconnected" && v["addr"] == addrs[on]),
        "{seen:?}"
    );
    assert_eq!(seen.last().unwrap()["addr"], addrs[other], "{seen:?}");
    // The new connection's hello and snapshot follow, and the stream goes on.
    let seen = f.until("second snapshot", T, |v| v["event"] == "snapshot-complete");
    let hello = seen.iter().find(|v| v["event"] == "connected");
    assert_eq!(
        hello.map(|h| h["addr"].clone()),
        Some(json!(addrs[other])),
        "{seen:?}"
    );
    assert!(seen.last().unwrap()["keys"].as_u64().unwrap() > 100);
    f.until("updates after the move", T, |v| v["event"] == "updates");
}
