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
use support::{wep, Harness};

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

/// A Felix-protocol client on a blocking socket.
struct Felix {
    s: TcpStream,
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
fn unknown_syncer_legacy_hello_and_garbage_close_only_that_connection() {
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

    // A Felix of v3.31 or older: refused, as Typha v3.32 does (serving it the old policy key
    // form is not built).
    let mut cfg = felix("old");
    cfg.hello.supports_modern_policy_keys = false;
    let mut old = Felix::connect(m.h.addr, cfg);
    old.until_closed();
    assert!(old.hello.is_none());

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
    assert!(m.h.dropped("unsupported-version") >= 1);

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
