//! TLS on the protocol port, over loopback: a real `Server` with TLS settings, fed by a
//! `Batcher`, and real clients (the library's `BlockingClient` with TLS options, or raw
//! sockets). Every certificate is generated at run time with rcgen into a temporary directory;
//! no key is checked in.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use typha::client::tls::{ClientTls, ClientTlsOptions};
use typha::client::{BlockingClient, ClientError, ClientEvent, ClientOptions};
use typha::metrics::Metrics;
use typha::proto::{encode_frame, ClientMessage, GoodbyeReason, Hello, PROTOCOL_VERSION};
use typha::server::{Server, ServerConfig, TlsSettings};
use typha::status::StatusBoard;

mod support;
use support::{wep, Ca, Harness};

const DONE: &str = "/calico/resources/v3/projectcalico.org/nodes/zz-test-done";
const CLIENT_CN: &str = "typha-client";
const CLIENT_URI: &str = "spiffe://cluster.local/ns/calico-system/sa/calico-node";
const SERVER_CN: &str = "typha-server";
const SERVER_URI: &str = "spiffe://cluster.local/ns/calico-system/sa/calico-typha";

// ---- certificates ---------------------------------------------------------------------------

/// A temporary directory, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("typha-rs-tls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    /// Writes `text` to `name` atomically (write, then rename), as a rotation tool would.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA, a server certificate from it, and the server's settings in `dir`.
struct Pki {
    dir: Dir,
    ca: Ca,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = Dir::new(name);
        let ca = Ca::new("typha test CA");
        dir.write("ca.pem", &ca.pem());
        let (cert, key) = ca.leaf(SERVER_CN, Some(SERVER_URI), true);
        dir.write("server.pem", &cert);
        dir.write("server-key.pem", &key);
        Pki { dir, ca }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.0.join(name)
    }

    fn settings(&self, cn: Option<&str>, uri: Option<&str>) -> TlsSettings {
        TlsSettings {
            cert_file: self.path("server.pem"),
            key_file: self.path("server-key.pem"),
            ca_file: self.path("ca.pem"),
            client_cn: cn.map(str::to_owned),
            client_uri_san: uri.map(str::to_owned),
            reload_interval: Duration::from_millis(50),
        }
    }

    /// Client TLS options with a certificate from `ca` (written under `name`), trusting the
    /// CA file `trust`, expecting the server's CN.
    fn client(
        &self,
        name: &str,
        ca: &Ca,
        cn: &str,
        uri: Option<&str>,
        trust: &Path,
    ) -> ClientTlsOptions {
        let (cert, key) = ca.leaf(cn, uri, false);
        ClientTlsOptions {
            ca_file: trust.to_owned(),
            cert_file: Some(self.dir.write(&format!("{name}.pem"), &cert)),
            key_file: Some(self.dir.write(&format!("{name}-key.pem"), &key)),
            server_cn: Some(SERVER_CN.into()),
            server_uri_san: None,
        }
    }

    /// A client the server admits (CN and URI SAN both right).
    fn good_client(&self, name: &str) -> ClientTlsOptions {
        self.client(
            name,
            &self.ca,
            CLIENT_CN,
            Some(CLIENT_URI),
            &self.path("ca.pem"),
        )
    }
}

// ---- server harness -------------------------------------------------------------------------

fn tls_config(tls: TlsSettings) -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tick: Duration::from_millis(20),
        goodbye_grace: Duration::from_millis(300),
        tls: Some(tls),
        ..ServerConfig::default()
    }
}

/// `len` bytes of hex digits from a fixed-seed generator: incompressible enough to stay large
/// on the wire.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b"0123456789abcdef"[(x & 15) as usize]
        })
        .collect()
}

fn connect(addr: SocketAddr, tls: ClientTlsOptions) -> Result<BlockingClient, ClientError> {
    BlockingClient::connect(
        addr,
        ClientOptions {
            hostname: "tls-test-node".into(),
            read_timeout: Some(Duration::from_secs(20)),
            tls: Some(tls),
            ..ClientOptions::default()
        },
    )
}

/// Connects and syncs; the result of the whole attempt.
fn try_sync(addr: SocketAddr, tls: ClientTlsOptions) -> Result<BlockingClient, ClientError> {
    let mut c = connect(addr, tls)?;
    c.run_until_in_sync(Duration::from_secs(20))?;
    Ok(c)
}

/// A refused client: connecting or syncing fails (not by timing out) and it never got a
/// ServerHello.
fn assert_refused(addr: SocketAddr, tls: ClientTlsOptions, what: &str) -> ClientError {
    let e = match connect(addr, tls) {
        Err(e) => e,
        Ok(mut c) => {
            let e = c
                .run_until_in_sync(Duration::from_secs(20))
                .expect_err(what);
            assert!(
                !c.state().snapshot_complete(),
                "{what}: got a snapshot before being refused"
            );
            e
        }
    };
    assert!(!e.is_timeout(), "{what}: refused by timing out: {e}");
    e
}

/// A background client that keeps reading until it holds the DONE marker.
fn stream_until_done(mut c: BlockingClient) -> JoinHandle<(BlockingClient, u64)> {
    std::thread::spawn(move || {
        let mut updates = 0;
        loop {
            match c.next_event() {
                Ok(ClientEvent::Updates { .. }) => updates += 1,
                Ok(_) => {}
                Err(e) => panic!("streaming client failed: {e}"),
            }
            if c.state().get(DONE).is_some() {
                return (c, updates);
            }
        }
    })
}

/// Churns keys from a thread until `stop` is set; the harness comes back when it is.
fn churn(mut h: Harness, stop: Arc<AtomicBool>) -> JoinHandle<Harness> {
    std::thread::spawn(move || {
        let mut i = 0usize;
        while !stop.load(Ordering::SeqCst) {
            h.set(&wep(i % 300), format!("{{\"ep\":{i},\"v\":1}}").as_bytes());
            if i % 10 == 0 {
                h.flush();
                std::thread::sleep(Duration::from_millis(2));
            }
            i += 1;
        }
        h.flush();
        h
    })
}

// ---- tests ----------------------------------------------------------------------------------

#[test]
fn good_client_gets_snapshot_and_updates_over_tls() {
    let pki = Pki::new("good");
    let cfg = ServerConfig {
        // Pings and pongs cross TLS too.
        ping_interval: Duration::from_millis(20),
        pong_timeout: Duration::from_secs(5),
        ..tls_config(pki.settings(Some(CLIENT_CN), Some(CLIENT_URI)))
    };
    let mut h = Harness::start(cfg);
    h.populate(500);
    // A snapshot of several chunks, each larger than the TLS output bound, so the reactor
    // feeds rustls in steps; the values do not compress away.
    for i in 0..64 {
        h.set(&wep(1000 + i), &noise(i as u64, 8 * 1024));
    }
    h.flush();
    let mut c = try_sync(h.addr, pki.good_client("client")).unwrap();
    assert!(c.is_tls());
    h.assert_digest_equal(&c);
    // And a batch larger than the bound.
    let big = noise(99, 100 * 1024);
    h.set(&wep(2000), &big);
    for i in 0..200 {
        h.set(&wep(i), format!("{{\"ep\":{i},\"v\":2}}").as_bytes());
    }
    h.set(DONE, b"{}");
    h.flush();
    c.run_until(Duration::from_secs(20), |s| s.get(DONE).is_some())
        .unwrap();
    h.assert_digest_equal(&c);
    assert_eq!(c.state().get(&wep(2000)).unwrap().value, big);
    // The client answers pings as it reads: keep it reading until the server has a pong.
    let deadline = Instant::now() + Duration::from_secs(20);
    while h
        .metrics
        .ping_latency
        .iter()
        .map(|x| x.get_sample_count())
        .sum::<u64>()
        == 0
    {
        assert!(Instant::now() < deadline, "no pong arrived over TLS");
        match c.next_event_timeout(Duration::from_millis(50)) {
            Ok(_) => {}
            Err(e) if e.is_timeout() => {}
            Err(e) => panic!("client failed: {e}"),
        }
    }
    assert_eq!(h.dropped("pong-timeout"), 0);
    // Shutdown: the Goodbye arrives over TLS, followed by a close_notify (a clean close).
    h.stop();
    let e = c.run_until(Duration::from_secs(20), |_| false).unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Goodbye {
                reason: GoodbyeReason::Shutdown,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn clients_without_the_right_certificate_are_refused_and_others_keep_streaming() {
    let pki = Pki::new("refused");
    let mut h = Harness::start(tls_config(pki.settings(Some(CLIENT_CN), Some(CLIENT_URI))));
    h.populate(200);
    let addr = h.addr;
    let good = try_sync(addr, pki.good_client("good")).unwrap();
    let reader = stream_until_done(good);
    let stop = Arc::new(AtomicBool::new(false));
    let churner = churn(h, stop.clone());
    let ca_file = pki.path("ca.pem");

    // No client certificate at all.
    let mut no_cert = pki.good_client("no-cert");
    no_cert.cert_file = None;
    no_cert.key_file = None;
    assert_refused(addr, no_cert, "client without a certificate");

    // A certificate with the right names from another CA.
    let other_ca = Ca::new("some other CA");
    let foreign = pki.client("foreign", &other_ca, CLIENT_CN, Some(CLIENT_URI), &ca_file);
    assert_refused(addr, foreign, "certificate from another CA");

    // The right CA, but neither the CN nor the URI SAN is the allowed one.
    let wrong_cn = pki.client("wrong-cn", &pki.ca, "not-felix", None, &ca_file);
    assert_refused(addr, wrong_cn, "wrong CN, no URI SAN");
    let wrong_uri = pki.client(
        "wrong-uri",
        &pki.ca,
        "not-felix",
        Some("spiffe://cluster.local/ns/x/sa/intruder"),
        &ca_file,
    );
    assert_refused(addr, wrong_uri, "wrong CN and URI SAN");

    // Either match alone admits.
    let by_cn = pki.client("by-cn", &pki.ca, CLIENT_CN, None, &ca_file);
    let c = try_sync(addr, by_cn).expect("CN match admits");
    drop(c);
    let by_uri = pki.client("by-uri", &pki.ca, "anything", Some(CLIENT_URI), &ca_file);
    let c = try_sync(addr, by_uri).expect("URI SAN match admits");
    drop(c);

    stop.store(true, Ordering::SeqCst);
    let mut h = churner.join().unwrap();
    h.set(DONE, b"{}");
    h.flush();
    let (good, updates) = reader.join().unwrap();
    assert!(updates > 0, "the good client streamed updates meanwhile");
    h.assert_digest_equal(&good);
    assert!(
        h.dropped("tls-handshake") >= 2,
        "no cert and foreign CA fail the handshake ({})",
        h.dropped("tls-handshake")
    );
    assert_eq!(h.dropped("tls-identity"), 2, "wrong CN, wrong URI SAN");
    h.stop();
}

#[test]
fn server_admitting_by_cn_only_or_uri_san_only() {
    let pki = Pki::new("one-name");
    let ca_file = pki.path("ca.pem");
    // CN only: a matching URI SAN does not help.
    let mut h = Harness::start(tls_config(pki.settings(Some(CLIENT_CN), None)));
    h.populate(20);
    try_sync(
        h.addr,
        pki.client("cn-ok", &pki.ca, CLIENT_CN, None, &ca_file),
    )
    .unwrap();
    assert_refused(
        h.addr,
        pki.client("cn-bad", &pki.ca, "other", Some(CLIENT_URI), &ca_file),
        "CN-only server, URI SAN match",
    );
    assert_eq!(h.dropped("tls-identity"), 1);
    h.stop();
    // URI SAN only.
    let mut h = Harness::start(tls_config(pki.settings(None, Some(CLIENT_URI))));
    h.populate(20);
    try_sync(
        h.addr,
        pki.client("uri-ok", &pki.ca, "other", Some(CLIENT_URI), &ca_file),
    )
    .unwrap();
    assert_refused(
        h.addr,
        pki.client("uri-bad", &pki.ca, CLIENT_CN, None, &ca_file),
        "URI-only server, CN match",
    );
    assert_eq!(h.dropped("tls-identity"), 1);
    h.stop();
}

#[test]
fn plaintext_client_on_a_tls_port_is_refused() {
    let pki = Pki::new("plaintext");
    let mut h = Harness::start(tls_config(pki.settings(Some(CLIENT_CN), None)));
    h.populate(20);
    let mut s = TcpStream::connect(h.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let hello = encode_frame(&ClientMessage::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        hostname: "plain".into(),
        client_info: "test".into(),
        syncer_type: "felix".into(),
        accepts_compression: vec![],
    }));
    s.write_all(&hello).unwrap();
    // The server answers with at most a TLS alert record (content type 21), then closes.
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("read failed: {e}"),
    }
    assert!(
        got.is_empty() || got[0] == 21,
        "plaintext client got {} bytes that are not a TLS alert",
        got.len()
    );
    // The library client, speaking plaintext, fails too.
    let mut c = BlockingClient::connect(h.addr, ClientOptions::default()).unwrap();
    let e = c.run_until_in_sync(Duration::from_secs(20)).unwrap_err();
    assert!(!e.is_timeout(), "{e}");
    h.wait_for("both plaintext clients to be dropped", |h| {
        h.dropped("tls-handshake") == 2
    });
    h.stop();
}

#[test]
fn stalled_tls_handshakes_are_cut_by_the_handshake_timeout() {
    let pki = Pki::new("stall");
    let cfg = ServerConfig {
        handshake_timeout: Duration::from_millis(300),
        ..tls_config(pki.settings(Some(CLIENT_CN), None))
    };
    let h = Harness::start(cfg);
    let started = Instant::now();
    // Connects and sends nothing.
    let mut silent = TcpStream::connect(h.addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // Sends its ClientHello, reads the server's flight, then stops.
    let tls = ClientTls::from_files(&pki.good_client("half")).unwrap();
    let mut conn = tls.connection().unwrap();
    let mut half = TcpStream::connect(h.addr).unwrap();
    half.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    conn.write_tls(&mut half).unwrap();
    let n = conn.read_tls(&mut half).unwrap();
    assert!(n > 0, "the server answered the ClientHello");

    let mut buf = [0u8; 64];
    assert_eq!(
        silent.read(&mut buf).unwrap_or(0),
        0,
        "nothing but a close for a silent connection"
    );
    // The half-done one may still get the rest of the server's flight, then the close.
    loop {
        match half.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    assert!(started.elapsed() >= Duration::from_millis(300));
    h.wait_for("both stalled handshakes to be cut", |h| {
        h.dropped("handshake-timeout") == 2
    });
    assert_eq!(h.metrics.connections_active.get(), 0);
}

#[test]
fn rotated_certificates_serve_new_clients_and_keep_old_ones() {
    let pki = Pki::new("rotate");
    let mut h = Harness::start(tls_config(pki.settings(Some(CLIENT_CN), None)));
    h.populate(100);
    let addr = h.addr;
    let old = try_sync(addr, pki.good_client("old")).unwrap();
    let reader = stream_until_done(old);

    // Rotate to a new CA: new server certificate and key, and client certificates must now
    // come from the new CA too.
    let new_ca = Ca::new("typha test CA 2");
    let (cert, key) = new_ca.leaf(SERVER_CN, None, true);
    pki.dir.write("new-ca.pem", &new_ca.pem());
    pki.dir.write("server.pem", &cert);
    pki.dir.write("server-key.pem", &key);
    pki.dir.write("ca.pem", &new_ca.pem());
    h.wait_for("the new certificates to load", |h| {
        h.reloads("success") >= 1
    });

    // The files were written one by one, so a reload may have caught only some of them: poll
    // (bounded) until a client of the new CA gets in.
    let new_ca_file = pki.path("new-ca.pem");
    let fresh_opts = pki.client("fresh", &new_ca, CLIENT_CN, None, &new_ca_file);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut fresh = loop {
        match try_sync(addr, fresh_opts.clone()) {
            Ok(c) => break c,
            Err(e) => assert!(
                Instant::now() < deadline,
                "a client of the new CA cannot connect after the rotation: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // A client trusting only the old CA now refuses the server.
    let old_ca_file = pki.dir.write("old-ca.pem", &pki.ca.pem());
    let e = assert_refused(
        addr,
        pki.client("stale", &pki.ca, CLIENT_CN, None, &old_ca_file),
        "client trusting only the old CA",
    );
    assert!(matches!(e, ClientError::Tls(_)), "{e}");

    // The client connected before the rotation still gets every update.
    for i in 0..50 {
        h.set(&wep(i), format!("{{\"ep\":{i},\"v\":3}}").as_bytes());
    }
    h.set(DONE, b"{}");
    h.flush();
    let (old, updates) = reader.join().unwrap();
    assert!(updates > 0);
    h.assert_digest_equal(&old);
    fresh
        .run_until(Duration::from_secs(20), |s| s.get(DONE).is_some())
        .unwrap();
    h.assert_digest_equal(&fresh);
    h.stop();
}

#[test]
fn a_bad_replacement_keeps_the_old_certificates() {
    let pki = Pki::new("bad-reload");
    let mut h = Harness::start(tls_config(pki.settings(Some(CLIENT_CN), None)));
    h.populate(20);
    // A key that does not match the certificate.
    let (_, other_key) = pki.ca.leaf(SERVER_CN, None, true);
    pki.dir.write("server-key.pem", &other_key);
    h.wait_for("the reload to fail", |h| h.reloads("failure") >= 1);
    try_sync(h.addr, pki.good_client("after-mismatch")).expect("old config still serves");
    // Not PEM at all.
    pki.dir.write("server.pem", "this is not a certificate\n");
    h.wait_for("the second reload to fail", |h| h.reloads("failure") >= 2);
    try_sync(h.addr, pki.good_client("after-garbage")).expect("old config still serves");
    assert_eq!(h.reloads("success"), 0);
    h.stop();
}

#[test]
fn bad_tls_files_are_a_startup_error() {
    let pki = Pki::new("startup");
    let bind = |tls: TlsSettings| {
        let (_tx, rx) = crossbeam_channel::bounded(1);
        Server::bind(
            tls_config(tls),
            rx,
            Arc::new(Metrics::new()),
            Arc::new(StatusBoard::new()),
        )
        .err()
        .expect("bind fails")
    };
    let mut missing = pki.settings(Some(CLIENT_CN), None);
    missing.ca_file = pki.path("no-such-ca.pem");
    let e = bind(missing);
    assert!(
        e.get_ref().is_some_and(|i| i.is::<typha::tls::TlsError>()),
        "{e:?}"
    );
    assert!(e.to_string().contains("no-such-ca.pem"), "{e}");
    let (_, other_key) = pki.ca.leaf(SERVER_CN, None, true);
    pki.dir.write("server-key.pem", &other_key);
    let e = bind(pki.settings(Some(CLIENT_CN), None));
    assert!(e.to_string().contains("does not match"), "{e}");
    let e = bind(pki.settings(None, None));
    assert!(e.to_string().contains("CN"), "{e}");
}

#[test]
fn client_refuses_a_server_with_the_wrong_name_or_ca() {
    let pki = Pki::new("client-side");
    let mut h = Harness::start(tls_config(pki.settings(Some(CLIENT_CN), None)));
    h.populate(20);
    // Expecting another server CN.
    let mut wrong = pki.good_client("wrong-server-cn");
    wrong.server_cn = Some("some-other-typha".into());
    let e = connect(h.addr, wrong).and_then(|mut c| c.run_until_in_sync(Duration::from_secs(20)));
    assert!(
        matches!(
            &e,
            Err(ClientError::Tls(rustls::Error::InvalidCertificate(_)))
        ),
        "{e:?}"
    );
    // Expecting a URI SAN: the server's matches, its CN is not checked.
    let mut by_uri = pki.good_client("server-by-uri");
    by_uri.server_cn = None;
    by_uri.server_uri_san = Some(SERVER_URI.into());
    try_sync(h.addr, by_uri).expect("server URI SAN match");
    let mut wrong_uri = pki.good_client("wrong-server-uri");
    wrong_uri.server_cn = None;
    wrong_uri.server_uri_san = Some("spiffe://elsewhere/typha".into());
    assert!(matches!(
        connect(h.addr, wrong_uri).and_then(|mut c| c.run_until_in_sync(Duration::from_secs(20))),
        Err(ClientError::Tls(_))
    ));
    // Trusting another CA.
    let other = Ca::new("not the server's CA");
    let mut untrusting = pki.good_client("untrusting");
    untrusting.ca_file = pki.dir.write("other-ca.pem", &other.pem());
    assert!(matches!(
        connect(h.addr, untrusting),
        Err(ClientError::Tls(_))
    ));
    // No expected name at all is a setup error, as in Felix.
    let mut unnamed = pki.good_client("unnamed");
    unnamed.server_cn = None;
    assert!(matches!(
        connect(h.addr, unnamed),
        Err(ClientError::TlsSetup(_))
    ));
    h.stop();
}

/// The binary as an operator runs it: TLS from environment variables (Typha's names), a
/// TLS client syncs; an unloadable key stops it at startup with a clear message.
#[test]
fn daemon_binary_serves_tls_from_typha_settings() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let pki = Pki::new("daemon");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let run = |key: &Path| {
        Command::new(env!("CARGO_BIN_EXE_typha"))
            .args(["--config-file", "/dev/null", "--server-host", "127.0.0.1"])
            .args(["--server-port", &port.to_string()])
            .args([
                "--health-enabled=false",
                "--prometheus-metrics-enabled=false",
            ])
            .args(["--datastore-type", "sim"])
            .args(["--sim-endpoints", "50", "--sim-churn-rate", "0"])
            .args(["--log-severity-screen", "warning"])
            .env("TYPHA_SERVERCERTFILE", pki.path("server.pem"))
            .env("TYPHA_SERVERKEYFILE", key)
            .env("TYPHA_CAFILE", pki.path("ca.pem"))
            .env("TYPHA_CLIENTURISAN", CLIENT_URI)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Kill(run(&pki.path("server-key.pem")));
    let mut line = String::new();
    std::io::BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening"), "{line:?}");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let c = try_sync(addr, pki.good_client("daemon-client")).expect("TLS client syncs");
    assert!(!c.state().is_empty());
    drop(c);
    drop(child);

    let (_, other_key) = pki.ca.leaf(SERVER_CN, None, true);
    let bad_key = pki.dir.write("other-key.pem", &other_key);
    let out = run(&bad_key).wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("TLS setup failed") && err.contains("does not match"),
        "{err}"
    );
}
