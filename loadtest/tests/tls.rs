//! `typha-loadtest run` over TLS as a binary against a typha-rs daemon with TLS (sim datastore,
//! in this test process): every client connects, verifies and the report says `"tls": true`; a
//! client certificate from another CA is refused in the handshake and fails the run. The
//! certificates are generated at run time with rcgen into a temporary directory.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;
use typha::daemon::Daemon;

const BIN: &str = env!("CARGO_BIN_EXE_typha-loadtest");
const SERVER_CN: &str = "typha-server";
const CLIENT_CN: &str = "typha-client";

struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Ca(CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap())
    }

    /// A leaf certificate and its key (PEM) with `cn`, for a server or a client.
    fn leaf(&self, cn: &str, server: bool) -> (String, String) {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.0).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A temporary directory with the PKI of a test, removed on drop.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// The daemon's CA and server certificate, a client certificate from the same CA
    /// (`client.pem`) and one from another CA (`stranger.pem`).
    fn new(name: &str) -> Pki {
        let dir =
            std::env::temp_dir().join(format!("typha-loadtest-tls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pki = Pki { dir };
        let ca = Ca::new("typha-loadtest test CA");
        pki.write("ca.pem", &ca.0.pem());
        let (cert, key) = ca.leaf(SERVER_CN, true);
        pki.write("server.pem", &cert);
        pki.write("server-key.pem", &key);
        let (cert, key) = ca.leaf(CLIENT_CN, false);
        pki.write("client.pem", &cert);
        pki.write("client-key.pem", &key);
        let other = Ca::new("another CA");
        let (cert, key) = other.leaf(CLIENT_CN, false);
        pki.write("stranger.pem", &cert);
        pki.write("stranger-key.pem", &key);
        pki
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.dir.join(name), text).unwrap();
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_owned()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A small daemon with TLS (client CN `typha-client` required) on ephemeral loopback ports.
fn daemon(pki: &Pki) -> Daemon {
    let flags = [
        "--sim-nodes".to_owned(),
        "10".to_owned(),
        "--sim-endpoints".to_owned(),
        "300".to_owned(),
        "--sim-policies".to_owned(),
        "20".to_owned(),
        "--sim-churn-rate".to_owned(),
        "300".to_owned(),
        "--log-severity-screen".to_owned(),
        "none".to_owned(),
        format!("--server-cert-file={}", pki.path("server.pem")),
        format!("--server-key-file={}", pki.path("server-key.pem")),
        format!("--ca-file={}", pki.path("ca.pem")),
        format!("--client-cn={CLIENT_CN}"),
    ];
    typha::testing::start_daemon_with_flags(&flags, Duration::from_secs(20)).unwrap()
}

fn run(
    d: &Daemon,
    pki: &Pki,
    cert: &str,
    clients: &str,
    secs: &str,
    extra: &[&str],
) -> (Output, Value) {
    let mut args = vec![
        "run".to_owned(),
        "--addr".into(),
        d.protocol_addr.to_string(),
        "--metrics-addr".into(),
        d.metrics_addr.unwrap().to_string(),
        "--target-pid".into(),
        std::process::id().to_string(),
        "--threads".into(),
        "2".into(),
        "--duration".into(),
        secs.into(),
        "--clients".into(),
        clients.into(),
        "--full-maps".into(),
        "4".into(),
        "--ramp-per-sec".into(),
        "500".into(),
        "--json".into(),
        "--ca-file".into(),
        pki.path("ca.pem"),
        "--cert-file".into(),
        pki.path(&format!("{cert}.pem")),
        "--key-file".into(),
        pki.path(&format!("{cert}-key.pem")),
        "--server-cn".into(),
        SERVER_CN.into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let out = Command::new(BIN).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let j: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, j)
}

#[test]
fn tls_clients_connect_sync_and_verify() {
    let pki = Pki::new("ok");
    let d = daemon(&pki);
    let (out, j) = run(&d, &pki, "client", "50", "4", &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{j:#}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(j["passed"], true);
    assert_eq!(j["tls"], true);
    assert_eq!(j["tls_handshake_failures"], 0);
    let c = &j["clients"];
    assert_eq!(c["connected"], 50, "{j:#}");
    assert_eq!(c["in_sync"], 50, "{j:#}");
    assert_eq!(c["in_sync_at_end"], 50, "{j:#}");
    let v = &j["verification"];
    assert_eq!(v["mismatches"].as_array().unwrap().len(), 0, "{v}");
    assert_eq!(v["verified_at_end"], 50, "{v}");
    assert_eq!(v["full_map_verified"], 4, "{v}");
    assert!(v["frames_compared"].as_u64().unwrap() > 0, "{v}");
    // Updates flowed through the encrypted streams while the sim churned.
    assert!(j["received"]["updates"].as_u64().unwrap() > 0, "{j:#}");
    assert!(j["lag"]["count"].as_u64().unwrap() > 0);
    assert_eq!(j["drops"].as_object().unwrap().len(), 0, "{}", j["drops"]);
    drop(d);
}

/// Slow, stalled and killed clients over TLS: the stalled ones (which stop reading once their
/// side of the handshake is done) and the killed ones are not handshake failures, and every
/// restarted session verifies.
#[test]
fn tls_with_slow_stalled_and_killed_clients_passes() {
    let pki = Pki::new("scenarios");
    let d = daemon(&pki);
    let extra = [
        "--slow-fraction",
        "0.1",
        "--slow-bytes-per-sec",
        "200000",
        "--stalled-fraction",
        "0.1",
        "--kill-rate",
        "10",
        "--restart-delay",
        "0.3",
    ];
    let (out, j) = run(&d, &pki, "client", "60", "4", &extra);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{j:#}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(j["tls"], true);
    assert_eq!(j["tls_handshake_failures"], 0, "{j:#}");
    let roles = &j["scenario"]["roles"];
    let stalled = roles["stalled"].as_u64().unwrap();
    assert!(
        stalled > 0 && roles["slow"].as_u64().unwrap() > 0,
        "{roles}"
    );
    assert!(
        j["scenario"]["kills"].as_u64().unwrap() >= 10,
        "{}",
        j["scenario"]
    );
    assert!(j["scenario"]["restarts"].as_u64().unwrap() > 0);
    // Every client but the stalled ones reached in-sync over TLS, and verified.
    assert_eq!(
        j["clients"]["in_sync"].as_u64().unwrap(),
        60 - stalled,
        "{j:#}"
    );
    let v = &j["verification"];
    assert_eq!(v["mismatches"].as_array().unwrap().len(), 0, "{v}");
    assert_eq!(v["verified_at_end"], j["clients"]["in_sync_at_end"], "{v}");
    drop(d);
}

#[test]
fn a_client_certificate_from_another_ca_fails_the_run() {
    let pki = Pki::new("stranger");
    let d = daemon(&pki);
    let (out, j) = run(&d, &pki, "stranger", "10", "2", &[]);
    assert_eq!(out.status.code(), Some(1), "{j:#}");
    assert_eq!(j["passed"], false);
    assert_eq!(j["tls"], true);
    assert_eq!(j["clients"]["in_sync"], 0, "{j:#}");
    assert_eq!(j["tls_handshake_failures"], 10, "{j:#}");
    let reasons = j["failure_reasons"].as_array().unwrap();
    assert!(
        reasons
            .iter()
            .any(|r| r.as_str().unwrap().contains("TLS handshake")),
        "{reasons:?}"
    );
    // Each refused client is a drop whose reason says it was the handshake.
    let drops = j["drops"].as_object().unwrap();
    let refused: u64 = drops
        .iter()
        .filter(|(k, _)| k.starts_with("TLS handshake failed"))
        .map(|(_, v)| v.as_u64().unwrap())
        .sum();
    assert_eq!(refused, 10, "{drops:?}");
    drop(d);
}
