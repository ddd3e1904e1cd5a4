//! What several integration tests share: an in-process reactor fed by a batcher the test
//! drives (`Harness`), a certificate authority made at run time (`Ca`; no key is checked in),
//! and running the real `typha client` binary. Each test file uses part of it.
#![allow(dead_code)]

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use std::ffi::OsStr;
use std::fmt::Debug;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use typha::client::{BlockingClient, ClientOptions};
use typha::datastore::{BatchLimits, Batcher, FlushOutcome, ReactorSink};
use typha::metrics::Metrics;
use typha::model::{KvUpdate, SyncStatus, SyncerType};
use typha::proto::encode::EncodeOptions;
use typha::server::{Server, ServerConfig, ServerHandle};
use typha::status::StatusBoard;

// ---- an in-process reactor ------------------------------------------------------------------

/// A real `Server` on loopback, fed by a real `Batcher` that the test drives; shut down and
/// joined on drop.
pub struct Harness {
    pub addr: SocketAddr,
    pub handle: ServerHandle,
    pub reactor: Option<JoinHandle<std::io::Result<()>>>,
    pub batcher: Batcher<ReactorSink>,
    pub metrics: Arc<Metrics>,
    pub board: Arc<StatusBoard>,
    pub rev: u64,
}

impl Harness {
    pub fn start(cfg: ServerConfig) -> Harness {
        Self::start_with(cfg, 4096)
    }

    /// As [`start`](Self::start), with `channel` batches between batcher and reactor.
    pub fn start_with(cfg: ServerConfig, channel: usize) -> Harness {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let metrics = Arc::new(Metrics::new());
        let board = Arc::new(StatusBoard::new());
        let (tx, rx) = crossbeam_channel::bounded(channel);
        let encode = EncodeOptions {
            codec: cfg.codec,
            ..EncodeOptions::default()
        };
        let server = Server::bind(cfg, rx, metrics.clone(), board.clone()).unwrap();
        let addr = server.local_addr();
        let handle = server.handle();
        let sink = ReactorSink {
            tx,
            waker: server.waker(),
            legacy: server.legacy_key_demand(),
        };
        let reactor = std::thread::spawn(move || server.run());
        let batcher = Batcher::new(
            BatchLimits {
                max_updates: 50,
                max_age: Duration::from_secs(3600),
                ..BatchLimits::default()
            },
            encode,
            sink,
            metrics.clone(),
            board.clone(),
        );
        Harness {
            addr,
            handle,
            reactor: Some(reactor),
            batcher,
            metrics,
            board,
            rev: 0,
        }
    }

    pub fn set(&mut self, key: &str, value: &[u8]) {
        self.rev += 1;
        self.batcher
            .apply(KvUpdate::set(key, value.to_vec(), self.rev.to_string()));
        if self.batcher.due(Instant::now()) {
            self.flush();
        }
    }

    pub fn delete(&mut self, key: &str) {
        self.rev += 1;
        self.batcher
            .apply(KvUpdate::delete(key, self.rev.to_string()));
    }

    /// Closes the pending batch, waiting while the reactor's channel is full.
    pub fn flush(&mut self) {
        while let FlushOutcome::ChannelFull = self.batcher.flush() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn status(&mut self, s: SyncStatus) {
        self.batcher.set_status(s);
        self.flush();
    }

    /// `n` workload endpoints, then in-sync.
    pub fn populate(&mut self, n: usize) {
        for i in 0..n {
            self.set(&wep(i), format!("{{\"ep\":{i},\"v\":0}}").as_bytes());
        }
        self.flush();
        self.status(SyncStatus::InSync);
    }

    pub fn client(&self, syncer: SyncerType) -> BlockingClient {
        BlockingClient::connect(
            self.addr,
            ClientOptions {
                syncer_type: syncer,
                hostname: "test-node".into(),
                ..ClientOptions::default()
            },
        )
        .unwrap()
    }

    /// Shuts the reactor down and checks that it exited cleanly.
    pub fn stop(mut self) {
        self.handle.shutdown();
        if let Some(r) = self.reactor.take() {
            r.join().unwrap().unwrap();
        }
    }

    pub fn dropped(&self, reason: &str) -> u64 {
        self.metrics
            .connections_dropped_by_reason
            .with_label_values(&[reason])
            .get()
    }

    pub fn reloads(&self, result: &str) -> u64 {
        self.metrics.tls_reloads.with_label_values(&[result]).get()
    }

    /// Waits (bounded) for a condition the reactor reaches asynchronously.
    pub fn wait_for(&self, what: &str, mut cond: impl FnMut(&Harness) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Asserts that `c` holds exactly what the server published for its sequence number.
    pub fn assert_digest_equal(&self, c: &BlockingClient) {
        let rec = self
            .board
            .digests(Some(c.state().seq()))
            .expect("digest record for the client's sequence");
        let view = rec.views[SyncerType::Felix.index()];
        assert_eq!(c.state().digest(), view.digest);
        assert_eq!(c.state().len() as u64, view.key_count);
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(r) = self.reactor.take() {
            let _ = r.join();
        }
    }
}

/// The key of workload endpoint `i` (on one of 50 nodes).
pub fn wep(i: usize) -> String {
    format!(
        "/calico/v1/host/node-{}/workload/k8s/default%2fpod-{i}/endpoint/eth0",
        i % 50
    )
}

// ---- certificates ---------------------------------------------------------------------------

/// A certificate authority generated at run time.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Ca {
            issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate (for a server or a client) and its key, both PEM.
    pub fn leaf(&self, cn: &str, uri: Option<&str>, server: bool) -> (String, String) {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        if let Some(u) = uri {
            p.subject_alt_names
                .push(SanType::URI(u.to_owned().try_into().unwrap()));
        }
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

// ---- the typha binary -----------------------------------------------------------------------

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Runs `typha client ARGS` to its end, killing it if it outlives `timeout`. Its output is read
/// while it runs, so a full pipe never stalls it.
pub fn run_typha_client<S: AsRef<OsStr> + Debug>(args: &[S], timeout: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_typha"))
        .arg("client")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start typha client");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "typha client {args:?} still running after {timeout:?}; stderr: {}",
                String::from_utf8_lossy(&stderr.join().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// The real `typha` binary as a child process on loopback ports; continued (if stopped),
/// killed and reaped on drop, so a failing test leaves no process behind.
pub struct DaemonProcess {
    pub child: std::process::Child,
    pub protocol: SocketAddr,
    pub health: SocketAddr,
    pub metrics: SocketAddr,
}

impl DaemonProcess {
    /// Starts `typha` with its protocol port `server_port` (0: any free one), free health and
    /// metrics ports, all on 127.0.0.1, warnings only, then `extra` flags and `env`; returns
    /// once it has printed where it listens.
    pub fn start<S: AsRef<OsStr>>(server_port: u16, extra: &[S], env: &[(&str, &OsStr)]) -> Self {
        let port = if server_port == 0 {
            free_port()
        } else {
            server_port
        };
        let (h, m) = (free_port(), free_port());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_typha"));
        cmd.args(["--config-file", "/dev/null", "--server-host", "127.0.0.1"])
            // The sim unless `extra` names another datastore (a later flag wins).
            .args(["--datastore-type", "sim"])
            .args(["--server-port", &port.to_string()])
            .args([
                "--health-host",
                "127.0.0.1",
                "--health-port",
                &h.to_string(),
            ])
            .args(["--prometheus-metrics-host", "127.0.0.1"])
            .args(["--prometheus-metrics-port", &m.to_string()])
            .args(["--log-severity-screen", "warning"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start typha");
        let stdout = child.stdout.take().unwrap();
        let unset = SocketAddr::from(([127, 0, 0, 1], 0));
        // Guarded before the output is checked, so a failed start leaves no process behind.
        let mut d = DaemonProcess {
            child,
            protocol: unset,
            health: unset,
            metrics: unset,
        };
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
        assert!(line.starts_with("typha-rs listening:"), "{line:?}");
        d.protocol = listen_field(&line, "protocol");
        d.health = listen_field(&line, "health");
        d.metrics = listen_field(&line, "metrics");
        d
    }

    pub fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: signalling our own child process, which is not yet reaped.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    /// Waits (at most `timeout`) until `/readiness` answers 200.
    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !matches!(
            typha::http::http_get(self.health, "/readiness", Duration::from_secs(2)),
            Ok((200, _))
        ) {
            assert!(Instant::now() < deadline, "typha never became ready");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: as in `signal`; a stopped process must be continued to die promptly.
            unsafe { libc::kill(self.pid(), libc::SIGCONT) };
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The loopback address of `name=HOST:PORT` in the daemon's "typha-rs listening:" line.
fn listen_field(line: &str, name: &str) -> SocketAddr {
    let v = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"));
    let port: u16 = v.rsplit(':').next().unwrap().parse().unwrap();
    SocketAddr::from(([127, 0, 0, 1], port))
}

// ---- test API servers of a chosen release --------------------------------------------------

/// A test API server (`scripts/test-apiserver.sh start DIR RELEASE`, then `crds`) of `release`
/// ("current" or "v1.20"), with `extra_args` appended to the kube-apiserver flags; stopped and
/// its directory removed when the returned value drops. Panics with the script's output.
pub fn start_apiserver(
    name: &str,
    release: &str,
    extra_args: &[&str],
) -> typha::testing::ApiServer {
    let dir = std::env::temp_dir().join(format!("typha-k8s-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Guarded from here on, so a failed start still stops whatever it started.
    let mut api = typha::testing::ApiServer {
        dir,
        env: std::collections::HashMap::new(),
    };
    let dir_s = api.dir.to_string_lossy().into_owned();
    let out = Command::new("bash")
        .arg(typha::testing::APISERVER_SCRIPT)
        .args(["start", &dir_s, release])
        .env("TEST_APISERVER_EXTRA_ARGS", extra_args.join(" "))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "test-apiserver.sh start {release} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    api.run("crds").unwrap_or_else(|e| panic!("{e}"));
    api.env = std::fs::read_to_string(api.dir.join("env"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    api
}
