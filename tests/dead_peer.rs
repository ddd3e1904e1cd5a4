//! A client whose process freezes (SIGSTOP: its socket stays open, nothing is sent, no FIN or
//! RST) is detected by the server's ping/pong timeout and dropped, while another client keeps
//! receiving updates. The frozen client is this test binary itself, re-run as a child process
//! with only the `child_client` helper test selected.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use typha::client::{BlockingClient, ClientOptions};
use typha::daemon::{Daemon, DaemonConfig};
use typha::datastore::sim::SimConfig;
use typha::datastore::{BatchLimits, DatastoreThreadConfig, DriverConfig};
use typha::model::SyncerType;
use typha::proto::encode::EncodeOptions;
use typha::server::ServerConfig;

/// Set in the child's environment: the daemon's protocol address.
const CHILD_ADDR_ENV: &str = "TYPHA_DEAD_PEER_TEST_ADDR";
const CHILD_IN_SYNC: &str = "dead-peer-child-in-sync";

const PING_INTERVAL: Duration = Duration::from_millis(200);
const PONG_TIMEOUT: Duration = Duration::from_millis(1500);
const GOODBYE_GRACE: Duration = Duration::from_millis(500);

/// Runs only in the child process (`--ignored --exact child_client`): connects, gets in sync,
/// says so on stdout, then keeps reading (and answering pings) until dropped.
#[test]
#[ignore = "helper: run as a child process by a_frozen_client_is_dropped_by_its_pong_timeout"]
fn child_client() {
    let addr: SocketAddr = std::env::var(CHILD_ADDR_ENV)
        .expect("run by the parent test")
        .parse()
        .unwrap();
    let mut c = BlockingClient::connect(
        addr,
        ClientOptions {
            hostname: "frozen-child".into(),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    c.run_until_in_sync(Duration::from_secs(60)).unwrap();
    let mut out = std::io::stdout();
    writeln!(out, "{CHILD_IN_SYNC} seq={}", c.state().seq()).unwrap();
    out.flush().unwrap();
    // Until the server drops us (after the parent resumes us), or a bound in case it never does.
    let _ = c.run_until(Duration::from_secs(120), |_| false);
}

/// The child process; continued, killed and reaped on drop so no test failure leaves a frozen
/// process behind.
struct ChildGuard(Child);

impl ChildGuard {
    fn pid(&self) -> libc::pid_t {
        self.0.id() as libc::pid_t
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: signalling our own child process, which has not been reaped yet.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0, "kill({sig})");
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: as above; a stopped process must be continued for SIGKILL to be reaped
            // promptly on every kernel.
            unsafe { libc::kill(self.pid(), libc::SIGCONT) };
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn start_daemon() -> Daemon {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    Daemon::start(DaemonConfig {
        server: ServerConfig {
            listen: loopback,
            tick: Duration::from_millis(20),
            ping_interval: PING_INTERVAL,
            pong_timeout: PONG_TIMEOUT,
            goodbye_grace: GOODBYE_GRACE,
            // Long enough that only the pong timeout can be what catches the frozen peer: on
            // loopback its kernel keeps acknowledging, so keepalive and TCP_USER_TIMEOUT stay
            // quiet until its receive buffer is full.
            write_timeout: Duration::from_secs(60),
            tcp_user_timeout: Some(Duration::from_secs(60)),
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
            health_listen: None,
            metrics_listen: None,
            liveness_stall: Duration::from_secs(30),
            datastore_unreachable: Duration::from_secs(300),
            component_down_unready: typha::status::DEFAULT_COMPONENT_DOWN_UNREADY,
        },
        batch_channel_capacity: 1024,
    })
    .unwrap()
}

/// Reads for `d` (answering pings); anything but the deadline passing is a failure.
fn keep_reading(c: &mut BlockingClient, d: Duration) {
    match c.run_until(d, |_| false) {
        Err(e) if e.is_timeout() => {}
        other => panic!("the healthy client stopped receiving: {other:?}"),
    }
}

#[test]
fn a_frozen_client_is_dropped_by_its_pong_timeout() {
    let d = start_daemon();
    let felix = SyncerType::Felix.index();
    let mut healthy = BlockingClient::connect(d.protocol_addr, ClientOptions::default()).unwrap();
    healthy.run_until_in_sync(Duration::from_secs(30)).unwrap();

    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_client",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ADDR_ENV, d.protocol_addr.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // libtest may print "test child_client ... " on the same line first.
            if line.contains(CHILD_IN_SYNC) {
                let _ = tx.send(line);
            }
        }
    });
    // The child says it is in sync; the daemon agrees once it has written both snapshots.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        keep_reading(&mut healthy, Duration::from_millis(20));
        match rx.try_recv() {
            Ok(_) => break,
            Err(mpsc::TryRecvError::Empty) => {}
            Err(mpsc::TryRecvError::Disconnected) => panic!("the child exited before its sync"),
        }
        assert!(Instant::now() < deadline, "the child never got in sync");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.metrics.client_snapshot_send_secs[felix].get_sample_count() < 2 {
        keep_reading(&mut healthy, Duration::from_millis(20));
        assert!(
            Instant::now() < deadline,
            "the daemon never finished both snapshots"
        );
    }
    assert_eq!(d.metrics.connections_active.get(), 2);
    let pong_timeouts = || {
        d.metrics
            .connections_dropped_by_reason
            .with_label_values(&["pong-timeout"])
            .get()
    };
    assert_eq!(pong_timeouts(), 0);

    child.signal(libc::SIGSTOP);
    let frozen_at = Instant::now();
    // Pongs stop at the freeze at the latest, so the timeout fires within PONG_TIMEOUT plus a
    // timer tick; the Goodbye then waits GOODBYE_GRACE for a peer that will never read it.
    let bound = PING_INTERVAL + PONG_TIMEOUT + GOODBYE_GRACE + Duration::from_secs(3);
    while d.metrics.connections_active.get() != 1 {
        keep_reading(&mut healthy, Duration::from_millis(20));
        assert!(
            frozen_at.elapsed() < bound,
            "frozen client not dropped within {bound:?} (active {}, pong timeouts {})",
            d.metrics.connections_active.get(),
            pong_timeouts()
        );
    }
    let took = frozen_at.elapsed();
    assert!(
        took >= PONG_TIMEOUT - PING_INTERVAL,
        "dropped after {took:?}, before the pong timeout could have expired"
    );
    assert_eq!(pong_timeouts(), 1, "dropped for its pong timeout");
    for other in ["tcp-timeout", "write-timeout", "io-error"] {
        assert_eq!(
            d.metrics
                .connections_dropped_by_reason
                .with_label_values(&[other])
                .get(),
            0,
            "{other}"
        );
    }

    // The healthy client kept up throughout and holds exactly the daemon's view.
    let target = d.status.digests(None).unwrap().seq + 20;
    healthy
        .run_until_seq(target, Duration::from_secs(30))
        .unwrap();
    let seq = healthy.state().seq();
    let rec = d.status.digests(Some(seq)).expect("digest still held");
    assert_eq!(healthy.state().digest(), rec.views[felix].digest);
    assert_eq!(healthy.state().len() as u64, rec.views[felix].key_count);

    // Resumed, the child finds itself dropped and exits by itself.
    child.signal(libc::SIGCONT);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            assert!(status.success(), "child exited with {status}");
            break;
        }
        assert!(Instant::now() < deadline, "the resumed child did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(healthy);
    d.stop().unwrap();
}
