//! The reactor serving Typha's own protocol (the one unmodified Felix speaks) beside the native
//! one, on the same port: detection, both handshake paths, refusals, shared delta bytes,
//! timeouts, slow clients, TLS and shutdown. The client side is the codec's socket-free
//! `FelixClientSession` over a blocking socket (`docs/protocol-typha.md`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use typha::model::{SyncStatus, SyncerType};
use typha::proto::typha::{
    DecoderRestart, FelixClientConfig, FelixClientEvent, FelixClientSession, ServerHello,
    UPDATE_TYPE_DELETED, UPDATE_TYPE_NEW, UPDATE_TYPE_UPDATED,
};
use typha::server::ServerConfig;

mod support;
use support::{wep, Ca, Harness};

fn test_config() -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tick: Duration::from_millis(20),
        goodbye_grace: Duration::from_millis(300),
        // No pings unless a test wants them, so byte streams are deterministic.
        ping_interval: Duration::from_secs(3600),
        pong_timeout: Duration::from_secs(7200),
        ..ServerConfig::default()
    }
}

trait Conn: Read + Write {}
impl<T: Read + Write> Conn for T {}

/// A Felix-protocol client on a blocking socket (plain or TLS).
struct Felix {
    s: Box<dyn Conn>,
    sess: FelixClientSession,
    hello: Option<ServerHello>,
    restarts: Vec<DecoderRestart>,
    kvs: BTreeMap<String, Vec<u8>>,
    /// (key, update type) of every update, in order.
    seen: Vec<(String, u8)>,
    status: Option<u8>,
    pings: usize,
    /// Every byte received, for the byte-identity test.
    raw: Vec<u8>,
    answer: bool,
    closed: bool,
}

impl Felix {
    fn connect(addr: SocketAddr, cfg: FelixClientConfig) -> Felix {
        let s = TcpStream::connect(addr).unwrap();
        Felix::over(s, cfg)
    }

    fn over(s: TcpStream, cfg: FelixClientConfig) -> Felix {
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        Felix::over_conn(Box::new(s), cfg)
    }

    fn over_conn(s: Box<dyn Conn>, cfg: FelixClientConfig) -> Felix {
        let mut f = Felix {
            s,
            sess: FelixClientSession::new(cfg),
            hello: None,
            restarts: Vec::new(),
            kvs: BTreeMap::new(),
            seen: Vec::new(),
            status: None,
            pings: 0,
            raw: Vec::new(),
            answer: true,
            closed: false,
        };
        f.send();
        f
    }

    fn send(&mut self) {
        if self.sess.has_outbound() {
            let out = self.sess.take_outbound();
            if self.answer && !self.closed {
                // A server that closed may refuse the write: that is for the caller to see.
                if self.s.write_all(&out).is_err() {
                    self.closed = true;
                }
            }
        }
    }

    /// Reads what is there (up to one read timeout) and handles it.
    fn pump(&mut self) {
        let mut buf = [0u8; 64 * 1024];
        match self.s.read(&mut buf) {
            Ok(0) => self.closed = true,
            Ok(n) => {
                self.raw.extend_from_slice(&buf[..n]);
                self.sess.feed(&buf[..n]);
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => self.closed = true,
        }
        loop {
            match self.sess.poll_event() {
                Ok(Some(ev)) => self.on_event(ev),
                Ok(None) => break,
                Err(e) => panic!("Felix session failed: {e}"),
            }
        }
        self.send();
    }

    fn on_event(&mut self, ev: FelixClientEvent) {
        match ev {
            FelixClientEvent::ServerHello(h) => self.hello = Some(h),
            FelixClientEvent::DecoderRestart(r) => self.restarts.push(r),
            FelixClientEvent::Kvs(kvs) => {
                for u in kvs {
                    self.seen.push((u.key.clone(), u.update_type));
                    match u.value {
                        Some(v) => self.kvs.insert(u.key, v.to_vec()),
                        None => self.kvs.remove(&u.key),
                    };
                }
            }
            FelixClientEvent::SyncStatus(s) => self.status = Some(s),
            FelixClientEvent::Ping(_) => self.pings += 1,
        }
    }

    fn run_until(&mut self, what: &str, cond: impl Fn(&Felix) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond(self) {
            assert!(!self.closed, "closed while waiting for {what}");
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            self.pump();
        }
    }

    /// Reads until the server closes the connection.
    fn until_closed(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.closed {
            assert!(Instant::now() < deadline, "server did not close");
            self.pump();
        }
    }
}

fn felix(hostname: &str) -> FelixClientConfig {
    FelixClientConfig::felix(hostname, "felix", 7 << 32 | 1)
}

/// What the harness published, kept by the test.
struct Model {
    h: Harness,
    kvs: BTreeMap<String, Vec<u8>>,
}

impl Model {
    fn start(cfg: ServerConfig) -> Model {
        Model {
            h: Harness::start(cfg),
            kvs: BTreeMap::new(),
        }
    }

    fn set(&mut self, k: &str, v: &[u8]) {
        self.h.set(k, v);
        self.kvs.insert(k.into(), v.into());
    }

    fn delete(&mut self, k: &str) {
        self.h.delete(k);
        self.kvs.remove(k);
    }

    fn populate(&mut self, n: usize) {
        for i in 0..n {
            self.set(&wep(i), format!("{{\"ep\":{i},\"v\":0}}").as_bytes());
        }
        self.h.flush();
        self.h.status(SyncStatus::InSync);
    }
}

const IN_SYNC: u8 = 2;

fn converge(f: &mut Felix, m: &Model) {
    f.run_until("the published state", |f| {
        f.status == Some(IN_SYNC) && f.kvs == m.kvs
    });
}

#[test]
fn path_a_restart_binary_snapshot_then_live_deltas() {
    let mut m = Model::start(test_config());
    m.populate(2500); // three binary-snapshot messages of up to 1000
    let mut f = Felix::connect(m.h.addr, felix("node-a"));
    converge(&mut f, &m);
    let hello = f.hello.clone().expect("ServerHello");
    assert_eq!(hello.syncer_type, "felix");
    assert!(hello.supports_node_resource_updates);
    assert_eq!(
        hello.server_conn_id & 0xffff_ffff,
        1,
        "random << 32 | counter"
    );
    assert_eq!(f.restarts.len(), 2, "{:?}", f.restarts);
    assert!(f.restarts.iter().all(|r| r.compression == "snappy"));
    assert_eq!(f.sess.compression(), "snappy");
    assert!(f.seen.iter().all(|(_, t)| *t == UPDATE_TYPE_NEW));
    // Snapshot entries are sorted by key.
    let keys: Vec<&String> = f.seen.iter().map(|(k, _)| k).collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]));

    f.seen.clear();
    m.set(&wep(1), b"{\"ep\":1,\"v\":1}");
    m.set("/calico/resources/v3/projectcalico.org/nodes/n1", b"{}");
    m.delete(&wep(2));
    m.h.flush();
    converge(&mut f, &m);
    let types: BTreeMap<String, u8> = f.seen.iter().cloned().collect();
    assert_eq!(types[&wep(1)], UPDATE_TYPE_UPDATED);
    assert_eq!(
        types["/calico/resources/v3/projectcalico.org/nodes/n1"],
        UPDATE_TYPE_NEW
    );
    assert_eq!(types[&wep(2)], UPDATE_TYPE_DELETED);
    m.h.stop();
}

#[test]
fn path_b_streams_the_snapshot_uncompressed() {
    let mut m = Model::start(test_config());
    m.populate(250);
    let mut cfg = felix("node-b");
    cfg.hello.supports_decoder_restart = false;
    let mut f = Felix::connect(m.h.addr, cfg);
    converge(&mut f, &m);
    assert!(f.restarts.is_empty());
    assert_eq!(f.sess.compression(), "");
    m.set(&wep(7), b"{\"v\":2}");
    m.h.flush();
    converge(&mut f, &m);

    // Restart support without snappy is path B too.
    let mut cfg = felix("node-b2");
    cfg.hello.supported_compression.clear();
    let mut g = Felix::connect(m.h.addr, cfg);
    converge(&mut g, &m);
    assert!(g.restarts.is_empty());
    m.h.stop();
}

#[test]
fn native_and_typha_clients_share_the_port() {
    let mut m = Model::start(test_config());
    m.populate(100);
    let mut native = m.h.client(SyncerType::Felix);
    native.run_until_in_sync(Duration::from_secs(20)).unwrap();
    let mut f = Felix::connect(m.h.addr, felix("node-n"));
    converge(&mut f, &m);
    m.h.assert_digest_equal(&native);
    m.h.stop();
}

#[test]
fn unknown_syncer_and_garbage_close_only_that_connection() {
    let mut m = Model::start(test_config());
    m.populate(50);
    let mut good = Felix::connect(m.h.addr, felix("good"));
    converge(&mut good, &m);

    let mut bad = Felix::connect(
        m.h.addr,
        FelixClientConfig::felix("bad", "no-such-syncer", 1),
    );
    bad.until_closed();
    assert!(bad.hello.is_none());

    for garbage in [&b"GET / HTTP/1.1\r\n\r\n"[..], b"\x16\x03\x01\x02\x00"] {
        let mut s = TcpStream::connect(m.h.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(garbage).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        assert!(buf.is_empty(), "nothing is said to garbage: {buf:?}");
    }
    m.h.wait_for("the garbage connections to be counted", |h| {
        h.dropped("unknown-protocol") == 2
    });
    assert!(m.h.dropped("protocol-error") >= 1);

    m.set(&wep(3), b"{\"after\":1}");
    m.h.flush();
    converge(&mut good, &m);
    m.h.stop();
}

#[test]
fn deltas_are_byte_identical_on_every_connection() {
    let mut m = Model::start(test_config());
    m.populate(300);
    let mut a = Felix::connect(m.h.addr, felix("a"));
    converge(&mut a, &m);
    // B joins later, with a different snapshot.
    for i in 300..350 {
        m.set(&wep(i), b"{\"late\":1}");
    }
    m.h.flush();
    converge(&mut a, &m);
    let mut b = Felix::connect(m.h.addr, felix("b"));
    converge(&mut b, &m);
    let mut c = {
        let mut cfg = felix("c");
        cfg.hello.supports_decoder_restart = false;
        Felix::connect(m.h.addr, cfg)
    };
    converge(&mut c, &m);
    let (oa, ob) = (a.raw.len(), b.raw.len());
    for round in 0..20 {
        for k in 0..5 {
            m.set(&wep(k), format!("{{\"round\":{round}}}").as_bytes());
        }
        m.delete(&wep(100 + round));
        m.h.flush();
    }
    converge(&mut a, &m);
    converge(&mut b, &m);
    converge(&mut c, &m);
    assert!(a.raw.len() > oa);
    assert_eq!(
        a.raw[oa..],
        b.raw[ob..],
        "snappy clients that joined at different times got different delta bytes"
    );
    m.h.stop();
}

// ---- Felix v3.31 and older: policy keys in the v3.31 form --------------------------------------

/// A policy in the v3.32 form and the key a v3.31 Felix must get it under.
struct Policy {
    key: &'static str,
    legacy_key: &'static str,
    tier: &'static str,
}

const POLICIES: [Policy; 6] = [
    Policy {
        key: "/calico/v1/policy/GlobalNetworkPolicy//security.block",
        legacy_key: "/calico/v1/policy/tier/security/policy/security.block",
        tier: "security",
    },
    Policy {
        key: "/calico/v1/policy/NetworkPolicy/shop/allow-web",
        legacy_key: "/calico/v1/policy/tier/default/policy/shop%2fallow-web",
        tier: "default",
    },
    Policy {
        key: "/calico/v1/policy/KubernetesNetworkPolicy/shop/deny-all",
        legacy_key: "/calico/v1/policy/tier/default/policy/shop%2fknp.default.deny-all",
        tier: "default",
    },
    Policy {
        key: "/calico/v1/policy/StagedNetworkPolicy/shop/try",
        legacy_key: "/calico/v1/policy/tier/default/policy/shop%2fstaged:try",
        tier: "default",
    },
    Policy {
        key: "/calico/v1/policy/StagedGlobalNetworkPolicy//audit",
        legacy_key: "/calico/v1/policy/tier/security/policy/staged:audit",
        tier: "security",
    },
    Policy {
        key: "/calico/v1/policy/KubernetesClusterNetworkPolicy//guardrails",
        legacy_key: "/calico/v1/policy/tier/kube-admin/policy/kcnp.guardrails",
        tier: "kube-admin",
    },
];

fn policy_value(tier: &str, round: usize) -> Vec<u8> {
    format!(r#"{{"tier":"{tier}","order":{round},"selector":"all()"}}"#).into_bytes()
}

/// The harness' state twice: as a modern client must hold it, and as a v3.31 Felix must.
struct TwoForms {
    m: Model,
    legacy: BTreeMap<String, Vec<u8>>,
}

impl TwoForms {
    fn start() -> TwoForms {
        let mut t = TwoForms {
            m: Model::start(test_config()),
            legacy: BTreeMap::new(),
        };
        for i in 0..200 {
            t.set_plain(&wep(i), format!("{{\"ep\":{i}}}").as_bytes());
        }
        t.set_plain(
            "/calico/v1/policy/tier/security/metadata",
            b"{\"order\":10}",
        );
        for p in &POLICIES {
            t.set_policy(p, p.tier, 0);
        }
        t.m.h.flush();
        t.m.h.status(SyncStatus::InSync);
        t
    }

    fn set_plain(&mut self, k: &str, v: &[u8]) {
        self.m.set(k, v);
        self.legacy.insert(k.into(), v.into());
    }

    fn set_policy(&mut self, p: &Policy, tier: &str, round: usize) {
        let v = policy_value(tier, round);
        self.m.set(p.key, &v);
        self.legacy.insert(p.legacy_key.into(), v);
    }

    fn delete_policy(&mut self, p: &Policy) {
        self.m.delete(p.key);
        self.legacy.remove(p.legacy_key);
    }

    fn legacy_parts(&self) -> u64 {
        self.m.h.metrics.legacy_key_parts.get()
    }

    fn legacy_clients(&self) -> i64 {
        self.m.h.metrics.legacy_key_clients.get()
    }
}

fn legacy_felix(hostname: &str) -> FelixClientConfig {
    let mut cfg = felix(hostname);
    cfg.hello.supports_modern_policy_keys = false;
    cfg
}

fn converge_legacy(f: &mut Felix, t: &TwoForms) {
    f.run_until("the published state in the v3.31 form", |f| {
        f.status == Some(IN_SYNC) && f.kvs == t.legacy
    });
}

/// A Felix without `SupportsModernPolicyKeys` is served, on both paths, with every policy
/// under `/calico/v1/policy/tier/<tier>/policy/<name>`, including deletions (whose value is
/// gone: the tier comes from the value the client held) and a policy moved to another tier
/// (deleted under the old key, created under the new). The legacy variant is encoded only
/// while such a client is connected.
#[test]
fn legacy_felix_gets_v3_31_policy_keys_only_while_connected() {
    let mut t = TwoForms::start();
    let mut modern = Felix::connect(t.m.h.addr, felix("modern"));
    converge(&mut modern, &t.m);
    t.set_policy(&POLICIES[0], "security", 1);
    t.m.h.flush();
    converge(&mut modern, &t.m);
    assert_eq!(t.legacy_parts(), 0, "nothing encoded for nobody");

    let mut a = Felix::connect(t.m.h.addr, legacy_felix("old-a"));
    let mut b = {
        let mut cfg = legacy_felix("old-b");
        cfg.hello.supports_decoder_restart = false;
        Felix::connect(t.m.h.addr, cfg)
    };
    converge_legacy(&mut a, &t);
    converge_legacy(&mut b, &t);
    assert_eq!(a.restarts.len(), 2, "path A");
    assert!(b.restarts.is_empty(), "path B");
    assert_eq!(a.hello.as_ref().unwrap().syncer_type, "felix");
    assert_eq!(t.legacy_clients(), 2);

    // Updates, a deletion, a tier move, and an update holding no policy key.
    t.set_policy(&POLICIES[1], "default", 2);
    t.delete_policy(&POLICIES[2]);
    t.m.h.flush();
    t.m.set(POLICIES[3].key, &policy_value("team", 3));
    t.legacy.remove(POLICIES[3].legacy_key);
    t.legacy.insert(
        "/calico/v1/policy/tier/team/policy/shop%2fstaged:try".into(),
        policy_value("team", 3),
    );
    t.m.h.flush();
    t.set_plain(&wep(5), b"{\"ep\":5,\"v\":1}");
    t.m.h.flush();
    converge_legacy(&mut a, &t);
    converge_legacy(&mut b, &t);
    converge(&mut modern, &t.m);
    let moved: Vec<&(String, u8)> = a
        .seen
        .iter()
        .filter(|(k, _)| k.ends_with("shop%2fstaged:try"))
        .collect();
    assert_eq!(
        moved[moved.len() - 2..],
        [
            &(
                "/calico/v1/policy/tier/default/policy/shop%2fstaged:try".to_string(),
                UPDATE_TYPE_DELETED
            ),
            &(
                "/calico/v1/policy/tier/team/policy/shop%2fstaged:try".to_string(),
                UPDATE_TYPE_NEW
            )
        ]
    );
    assert!(t.legacy_parts() >= 3, "each batch encoded for them");

    // The last legacy client leaves: the variant is no longer encoded.
    drop(a);
    drop(b);
    t.m.h.wait_for("the legacy clients to be gone", |h| {
        h.metrics.legacy_key_clients.get() == 0
    });
    let before = t.legacy_parts();
    for round in 4..8 {
        t.set_policy(&POLICIES[0], "security", round);
        t.m.h.flush();
    }
    converge(&mut modern, &t.m);
    assert_eq!(t.legacy_parts(), before, "not encoded once they left");

    // A legacy client coming back gets it again, from a fresh snapshot.
    let mut c = Felix::connect(t.m.h.addr, legacy_felix("old-c"));
    converge_legacy(&mut c, &t);
    t.delete_policy(&POLICIES[5]);
    t.m.h.flush();
    converge_legacy(&mut c, &t);
    assert!(t.legacy_parts() > before);
    t.m.h.stop();
}

/// Two legacy clients that joined at different times receive byte-identical bytes after
/// their handshakes: the legacy variant is shared like the modern one.
#[test]
fn legacy_deltas_are_byte_identical_on_every_legacy_connection() {
    let mut t = TwoForms::start();
    let mut a = Felix::connect(t.m.h.addr, legacy_felix("old-a"));
    converge_legacy(&mut a, &t);
    t.set_policy(&POLICIES[4], "security", 1);
    t.m.h.flush();
    converge_legacy(&mut a, &t);
    let mut b = Felix::connect(t.m.h.addr, legacy_felix("old-b"));
    converge_legacy(&mut b, &t);
    let mut modern = Felix::connect(t.m.h.addr, felix("modern"));
    converge(&mut modern, &t.m);
    let (oa, ob, om) = (a.raw.len(), b.raw.len(), modern.raw.len());
    for round in 0..20 {
        let p = &POLICIES[round % POLICIES.len()];
        t.set_policy(p, p.tier, round + 2);
        t.set_plain(&wep(round), format!("{{\"round\":{round}}}").as_bytes());
        t.m.h.flush();
    }
    t.delete_policy(&POLICIES[1]);
    t.m.h.flush();
    converge_legacy(&mut a, &t);
    converge_legacy(&mut b, &t);
    converge(&mut modern, &t.m);
    assert!(a.raw.len() > oa);
    assert_eq!(
        a.raw[oa..],
        b.raw[ob..],
        "legacy clients that joined at different times got different delta bytes"
    );
    assert_ne!(
        a.raw[oa..],
        modern.raw[om..],
        "the legacy bytes are their own variant"
    );
    t.m.h.stop();
}

#[test]
fn pongs_keep_a_client_and_their_absence_drops_it() {
    let cfg = ServerConfig {
        ping_interval: Duration::from_millis(100),
        pong_timeout: Duration::from_millis(800),
        ..test_config()
    };
    let mut m = Model::start(cfg);
    m.populate(20);
    let mut good = Felix::connect(m.h.addr, felix("good"));
    converge(&mut good, &m);
    let mut deaf = Felix::connect(m.h.addr, felix("deaf"));
    converge(&mut deaf, &m);
    deaf.answer = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !deaf.closed {
        assert!(Instant::now() < deadline, "the deaf client was not dropped");
        deaf.pump();
        good.pump();
    }
    assert!(deaf.pings >= 1);
    assert_eq!(m.h.dropped("pong-timeout"), 1);
    // Meanwhile the answering client was pinged and kept.
    good.run_until("several pings", |f| f.pings >= 5);
    assert!(!good.closed);
    m.h.stop();
}

/// A Felix cannot answer while it downloads a binary snapshot (no ping can go inside one, and
/// the closing ACK comes after its last byte), so the pong timeout does not run while one is
/// written: thousands of Felixes reconnecting at once download slowly, and cut off they would
/// come back for another. Once it is written, a missing ACK ends in the timeout.
#[test]
fn a_slow_snapshot_download_outlasts_the_pong_timeout_but_a_missing_ack_does_not() {
    let pong_timeout = Duration::from_millis(300);
    let cfg = ServerConfig {
        ping_interval: Duration::from_millis(100),
        pong_timeout,
        ..test_config()
    };
    let mut m = Model::start(cfg);
    // About 5 MB that snappy cannot shrink: far more than the socket buffers hold.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..1200 {
        let v: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b'a' + (x % 26) as u8
            })
            .collect();
        m.set(&wep(i), &v);
    }
    m.h.flush();
    m.h.status(SyncStatus::InSync);
    let snapshots_written =
        || m.h.metrics.client_snapshot_send_secs[SyncerType::Felix.index()].get_sample_count();
    let slow = {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_recv_buffer_size(4096).unwrap();
        s.connect(&m.h.addr.into()).unwrap();
        let s: TcpStream = s.into();
        s
    };
    let mut slow = Felix::over(slow, felix("slow"));
    // Reads slowly for three pong timeouts: the server is still writing the snapshot all along.
    let started = Instant::now();
    while started.elapsed() < 3 * pong_timeout {
        slow.pump();
        assert!(
            !slow.closed,
            "cut off after {:?} while downloading",
            started.elapsed()
        );
        // Throttles the reader (a rate, not a wait for an event).
        std::thread::sleep(Duration::from_millis(3));
    }
    assert!(
        slow.restarts.len() == 1,
        "the snapshot is still being downloaded"
    );
    assert_eq!(
        snapshots_written(),
        0,
        "the snapshot is still being written"
    );
    assert_eq!(m.h.dropped("pong-timeout"), 0);
    // Then at full speed, to the end: in sync, not dropped.
    converge(&mut slow, &m);
    assert_eq!(snapshots_written(), 1);
    // Live: its pongs keep it.
    slow.run_until("pings after the snapshot", |f| f.pings >= 3);
    assert_eq!(m.h.dropped("pong-timeout"), 0);
    drop(slow);

    // A client that takes the snapshot but never ACKs its end is dropped by the timeout.
    let mut mute = Felix::connect(m.h.addr, felix("mute"));
    mute.run_until("the first restart", |f| !f.restarts.is_empty());
    mute.answer = false;
    mute.until_closed();
    assert_eq!(
        mute.restarts.len(),
        2,
        "the snapshot's closing restart arrived"
    );
    assert_eq!(mute.status, None, "nothing live before the ACK");
    assert_eq!(m.h.dropped("pong-timeout"), 1);
    m.h.stop();
}

#[test]
fn a_client_that_stops_reading_is_dropped_and_others_keep_up() {
    let cfg = ServerConfig {
        max_backlog_batches: 40,
        ..test_config()
    };
    let mut m = Model::start(cfg);
    m.populate(100);
    let stalled = {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_recv_buffer_size(4096).unwrap();
        s.connect(&m.h.addr.into()).unwrap();
        let mut cfg = felix("stalled");
        cfg.hello.supports_decoder_restart = false;
        let s: TcpStream = s.into();
        Felix::over(s, cfg)
    };
    let mut good = Felix::connect(m.h.addr, felix("good"));
    converge(&mut good, &m);
    let big = vec![b'x'; 8 * 1024];
    let mut round = 0u64;
    while m.h.dropped("too-slow") == 0 {
        assert!(round < 3000, "the stalled client was never dropped");
        for k in 0..4 {
            let mut v = big.clone();
            v[..8].copy_from_slice(&round.to_le_bytes());
            m.set(&wep(k), &v);
        }
        m.h.flush();
        round += 1;
        if round % 20 == 0 {
            good.pump();
        }
    }
    converge(&mut good, &m);
    drop(stalled);
    m.h.stop();
}

#[test]
fn shutdown_closes_typha_clients_and_the_reactor_exits() {
    let mut m = Model::start(test_config());
    m.populate(20);
    let mut f = Felix::connect(m.h.addr, felix("x"));
    converge(&mut f, &m);
    let before = f.raw.len();
    m.h.handle.shutdown();
    f.until_closed();
    assert_eq!(
        f.raw.len(),
        before,
        "Typha has no goodbye: nothing is written"
    );
    if let Some(r) = m.h.reactor.take() {
        r.join().unwrap().unwrap();
    }
}

#[test]
fn felix_over_tls_with_the_same_identity_rules() {
    use typha::client::tls::{ClientTls, ClientTlsOptions};
    use typha::server::TlsSettings;
    let dir = std::env::temp_dir().join(format!("typha-rs-typha-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ca = Ca::new("typha test CA");
    let ca_file = write("ca.pem", &ca.pem());
    let (cert, key) = ca.leaf("typha-server", None, true);
    let settings = TlsSettings {
        cert_file: write("server.pem", &cert),
        key_file: write("server-key.pem", &key),
        ca_file: ca_file.clone(),
        client_cn: Some("typha-client".into()),
        client_uri_san: None,
        reload_interval: Duration::from_secs(60),
    };
    let mut m = Model::start(ServerConfig {
        tls: Some(settings),
        ..test_config()
    });
    m.populate(200);
    let client = |cn: &str| {
        let (cert, key) = ca.leaf(cn, None, false);
        ClientTls::from_files(&ClientTlsOptions {
            ca_file: ca_file.clone(),
            cert_file: Some(write(&format!("{cn}.pem"), &cert)),
            key_file: Some(write(&format!("{cn}-key.pem"), &key)),
            server_cn: Some("typha-server".into()),
            server_uri_san: None,
        })
        .unwrap()
    };
    let addr = m.h.addr;
    let dial = |tls: &ClientTls| {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        Box::new(rustls::StreamOwned::new(tls.connection().unwrap(), s))
    };
    let mut f = Felix::over_conn(dial(&client("typha-client")), felix("tls-node"));
    converge(&mut f, &m);
    assert_eq!(f.restarts.len(), 2);
    m.set(&wep(1), b"{\"tls\":1}");
    m.h.flush();
    converge(&mut f, &m);

    // The wrong CN is refused during the TLS handshake, before any Typha byte.
    let mut wrong = Felix::over_conn(dial(&client("someone-else")), felix("wrong"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !wrong.closed {
        assert!(
            Instant::now() < deadline,
            "the wrong identity was not refused"
        );
        wrong.pump();
    }
    assert!(wrong.hello.is_none());
    m.h.wait_for("the identity refusal", |h| h.dropped("tls-identity") == 1);
    let _ = std::fs::remove_dir_all(&dir);
    m.h.stop();
}

#[test]
fn rebalancing_closes_the_newest_felix_and_tells_native_clients() {
    let target = typha::rebalance::ConnectionTarget::default();
    let mut m = Model::start(ServerConfig {
        drop_interval: Duration::from_millis(50),
        connection_target: target.clone(),
        ..test_config()
    });
    m.populate(30);
    let mut native = m.h.client(SyncerType::Felix);
    native.run_until_in_sync(Duration::from_secs(20)).unwrap();
    let mut felixes: Vec<Felix> = (0..3)
        .map(|i| {
            let mut f = Felix::connect(m.h.addr, felix(&format!("r{i}")));
            converge(&mut f, &m);
            f
        })
        .collect();
    // Two over the target: the two newest go (Felix connections, closed without a word).
    target.set(2);
    let deadline = Instant::now() + Duration::from_secs(20);
    while felixes[1..].iter().any(|f| !f.closed) {
        assert!(
            Instant::now() < deadline,
            "the newest Felix clients were not shed"
        );
        for f in &mut felixes[1..] {
            if !f.closed {
                f.pump();
            }
        }
    }
    m.h.wait_for("two connections left", |h| {
        h.metrics.connections_active.get() == 2
    });
    assert_eq!(m.h.dropped("rebalancing"), 2);
    // The oldest Felix and the native client keep streaming.
    m.set(&wep(0), b"{\"after\":1}");
    m.h.flush();
    converge(&mut felixes[0], &m);
    native
        .run_until(Duration::from_secs(20), |s| {
            s.get(&wep(0))
                .is_some_and(|e| e.value[..] == b"{\"after\":1}"[..])
        })
        .unwrap();
    m.h.stop();
}
