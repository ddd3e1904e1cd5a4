//! TLS on the protocol port: the server's rustls configuration, its reload when the files
//! change, and the per-connection read path.
//!
//! Everything but the reload runs on the reactor thread. The files are re-read on a thread of
//! their own (`typha-tls-reload`), which hands a new configuration over a channel that the
//! reactor drains on its tick: a slow or stuck filesystem delays a certificate rotation, never a
//! client. A connection's `rustls::ServerConnection` sits
//! between the socket and the same frame decoder and `Outbox` a plain connection uses: the
//! shared plaintext frames stay shared, and each client encrypts its own copy as it is written.
//! The reactor (`server/mod.rs`) feeds plaintext to rustls only while rustls' outgoing buffer
//! is below [`TLS_OUT_BUFFER`], so a multi-megabyte snapshot is never copied whole into one
//! client's TLS buffer.

use crate::tls::{
    cert_key_error, parse_certs, parse_key, parse_roots, read_pem_file, Identity, TlsError,
};
use mio::net::TcpStream;
use rustls::server::WebPkiClientVerifier;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info};

/// Bound on one connection's encrypted-but-unsent bytes (rustls' own default, made explicit):
/// the Outbox is advanced only by what rustls accepted under it.
pub const TLS_OUT_BUFFER: usize = 64 * 1024;

/// Where the server's TLS material lives and whom it admits. Typha's settings:
/// `TYPHA_SERVERCERTFILE`, `TYPHA_SERVERKEYFILE`, `TYPHA_CAFILE`, `TYPHA_CLIENTCN`,
/// `TYPHA_CLIENTURISAN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// CA bundle that client certificates must chain to.
    pub ca_file: PathBuf,
    /// A client is admitted if its certificate's CN equals this...
    pub client_cn: Option<String>,
    /// ...or one of its URI SANs equals this.
    pub client_uri_san: Option<String>,
    /// How often the three files are checked for changes.
    pub reload_interval: Duration,
}

impl TlsSettings {
    pub fn identity(&self) -> Identity {
        Identity::new(self.client_cn.clone(), self.client_uri_san.clone())
    }
}

/// The three files' contents, as read for one (re)load.
struct Material {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Vec<u8>,
}

impl Material {
    fn read(s: &TlsSettings) -> Result<Material, TlsError> {
        Ok(Material {
            cert: read_pem_file("server certificate file", &s.cert_file)?,
            key: read_pem_file("server key file", &s.key_file)?,
            ca: read_pem_file("CA file", &s.ca_file)?,
        })
    }

    /// A fingerprint of all three files: content, not metadata, so that a rotation which
    /// keeps sizes and lands within one mtime tick (or swaps a symlink, as Kubernetes secret
    /// volumes do) is still seen.
    fn fingerprint(&self) -> u64 {
        use xxhash_rust::xxh3::Xxh3;
        let mut h = Xxh3::new();
        for part in [&self.cert, &self.key, &self.ca] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.digest()
    }

    fn build(&self, s: &TlsSettings) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = crate::tls::provider();
        let certs = parse_certs("server certificate file", &s.cert_file, &self.cert)?;
        let key = parse_key("server key file", &s.key_file, &self.key)?;
        let roots = Arc::new(parse_roots(&s.ca_file, &self.ca)?);
        // Client certificates are required (Typha: RequireAndVerifyClientCert).
        let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| TlsError::Setup(format!("client verifier: {e}")))?;
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| cert_key_error(e, &s.cert_file, &s.key_file, TlsError::CertKey))?;
        Ok(Arc::new(cfg))
    }
}

/// The server's TLS state: the config new connections get, and the channel from the thread
/// that reloads it.
pub struct ServerTls {
    settings: TlsSettings,
    identity: Identity,
    config: Arc<rustls::ServerConfig>,
    reloaded: crossbeam_channel::Receiver<Arc<rustls::ServerConfig>>,
    /// Dropping it stops the reload thread at once (or, if it is stuck reading a file, as soon
    /// as that read returns: it is not joined, so a hung filesystem cannot hang a shutdown).
    _stop: crossbeam_channel::Sender<()>,
}

/// The reload thread's state.
struct Reloader {
    settings: TlsSettings,
    /// Fingerprint of the files last tried, whether that load worked or not: a bad file is
    /// reported once, not every interval, and tried again when it changes.
    tried: u64,
    reloads: prometheus::IntCounterVec,
    out: crossbeam_channel::Sender<Arc<rustls::ServerConfig>>,
}

impl Reloader {
    fn run(mut self, stop: crossbeam_channel::Receiver<()>) {
        while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
            stop.recv_timeout(self.settings.reload_interval)
        {
            if let Some(cfg) = self.check() {
                if self.out.send(cfg).is_err() {
                    return;
                }
            }
        }
    }

    /// Re-reads the files and, if they changed and load, returns the new config. A failed
    /// load keeps the old config.
    fn check(&mut self) -> Option<Arc<rustls::ServerConfig>> {
        let material = match Material::read(&self.settings) {
            Ok(m) => m,
            Err(e) => {
                // Mid-rotation a file can be briefly missing; say so once per distinct state.
                let fp = u64::MAX;
                if self.tried != fp {
                    self.tried = fp;
                    self.reloads.with_label_values(&["failure"]).inc();
                    error!(error = %e, "TLS files unreadable; keeping the current certificates");
                }
                return None;
            }
        };
        let fp = material.fingerprint();
        if fp == self.tried {
            return None;
        }
        self.tried = fp;
        match material.build(&self.settings) {
            Ok(cfg) => {
                self.reloads.with_label_values(&["success"]).inc();
                info!(
                    cert = %self.settings.cert_file.display(),
                    "TLS files changed; new connections use the new certificates"
                );
                Some(cfg)
            }
            Err(e) => {
                self.reloads.with_label_values(&["failure"]).inc();
                error!(error = %e, "TLS files changed but do not load; keeping the current certificates");
                None
            }
        }
    }
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the files (any problem is a startup error) and starts the thread that re-reads
    /// them every `reload_interval`, counting its results in `reloads` (by `result`).
    pub fn load(
        settings: TlsSettings,
        reloads: prometheus::IntCounterVec,
    ) -> Result<ServerTls, TlsError> {
        let identity = settings.identity();
        if !identity.is_set() {
            return Err(TlsError::NoIdentity);
        }
        let material = Material::read(&settings)?;
        let config = material.build(&settings)?;
        let (out, reloaded) = crossbeam_channel::unbounded();
        let (stop, stop_rx) = crossbeam_channel::bounded(1);
        let reloader = Reloader {
            settings: settings.clone(),
            tried: material.fingerprint(),
            reloads,
            out,
        };
        std::thread::Builder::new()
            .name("typha-tls-reload".into())
            .spawn(move || reloader.run(stop_rx))
            .map_err(|e| TlsError::Setup(format!("cannot start the TLS reload thread: {e}")))?;
        Ok(ServerTls {
            settings,
            identity,
            config,
            reloaded,
            _stop: stop,
        })
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// A TLS session for a newly accepted connection, with the current config.
    pub fn session(&self) -> Result<TlsSession, rustls::Error> {
        let mut conn = rustls::ServerConnection::new(self.config.clone())?;
        conn.set_buffer_limit(Some(TLS_OUT_BUFFER));
        Ok(TlsSession {
            conn,
            identity_checked: false,
        })
    }

    /// On the reactor's tick: takes the newest config the reload thread built, if any, for
    /// new connections; existing connections keep theirs. Never touches the filesystem.
    pub fn take_reloaded(&mut self) {
        while let Ok(cfg) = self.reloaded.try_recv() {
            self.config = cfg;
        }
    }

    /// The config new connections get now.
    pub fn current_config(&self) -> &Arc<rustls::ServerConfig> {
        &self.config
    }
}

/// One connection's TLS state.
pub struct TlsSession {
    pub conn: rustls::ServerConnection,
    /// The peer's identity (CN / URI SAN) was checked after the handshake.
    pub identity_checked: bool,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field("handshaking", &self.conn.is_handshaking())
            .field("identity_checked", &self.identity_checked)
            .finish()
    }
}

/// How a TLS read round ended.
#[derive(Debug)]
pub enum TlsRead {
    /// Drained to `WouldBlock`.
    Drained,
    /// The peer closed (TCP EOF or close_notify).
    Eof,
    /// More than the budget arrived in one round.
    OverBudget,
    Io(io::Error),
    /// rustls refused what arrived during the handshake (no or bad client certificate,
    /// not TLS at all, ...).
    Handshake(rustls::Error),
    /// The handshake completed but the certificate's CN / URI SAN is not the allowed one.
    Identity(crate::tls::IdentityError),
    /// rustls refused a record after the handshake.
    Protocol(rustls::Error),
    /// The plaintext handler asked to stop (a framing error).
    Stopped,
}

impl TlsSession {
    /// Reads from `stream` until `WouldBlock`, handing decrypted plaintext to `on_plain`
    /// (which returns false to stop). The identity is checked as soon as the handshake
    /// completes, before any plaintext is handed on.
    pub fn read(
        &mut self,
        mut stream: &TcpStream,
        identity: &Identity,
        scratch: &mut [u8],
        budget: usize,
        mut on_plain: impl FnMut(&[u8]) -> bool,
    ) -> TlsRead {
        let mut total = 0usize;
        loop {
            match self.conn.read_tls(&mut stream) {
                Ok(0) => return TlsRead::Eof,
                Ok(n) => {
                    total += n;
                    if total > budget {
                        return TlsRead::OverBudget;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return TlsRead::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return TlsRead::Io(e),
            }
            let handshaking = self.conn.is_handshaking();
            let state = match self.conn.process_new_packets() {
                Ok(s) => s,
                Err(e) if handshaking => return TlsRead::Handshake(e),
                Err(e) => return TlsRead::Protocol(e),
            };
            if !self.identity_checked && !self.conn.is_handshaking() {
                let checked = match self.conn.peer_certificates().and_then(|c| c.first()) {
                    Some(cert) => identity.check(cert),
                    None => Err(crate::tls::IdentityError::NoCertificate),
                };
                if let Err(e) = checked {
                    return TlsRead::Identity(e);
                }
                self.identity_checked = true;
            }
            if state.plaintext_bytes_to_read() > 0 {
                loop {
                    match self.conn.reader().read(scratch) {
                        Ok(0) => break,
                        Ok(n) => {
                            if !on_plain(&scratch[..n]) {
                                return TlsRead::Stopped;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return TlsRead::Io(e),
                    }
                }
            }
            if state.peer_has_closed() {
                return TlsRead::Eof;
            }
        }
    }

    /// Best effort: sends what rustls queued (an alert after a failure) before a close.
    pub fn flush_alert(&mut self, mut stream: &TcpStream) {
        for _ in 0..4 {
            if !self.conn.wants_write() || self.conn.write_tls(&mut stream).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair,
    };
    use std::time::Instant;

    fn ca() -> CertifiedIssuer<'static, KeyPair> {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "test-ca");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
    }

    fn leaf(ca: &CertifiedIssuer<'static, KeyPair>) -> (String, String) {
        let mut p = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, "typha");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        (p.signed_by(&key, ca).unwrap().pem(), key.serialize_pem())
    }

    /// A certificate file that blocks its reader (a FIFO with no writer, as a hung network
    /// volume would) holds up the reload thread only; the reactor's side returns at once, and
    /// picks the new certificate up once the read completes.
    #[test]
    fn a_stuck_certificate_file_never_blocks_the_reactor() {
        let dir = std::env::temp_dir().join(format!("typha-rs-tls-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = ca();
        let (cert, key) = leaf(&ca);
        let settings = TlsSettings {
            cert_file: dir.join("cert.pem"),
            key_file: dir.join("key.pem"),
            ca_file: dir.join("ca.pem"),
            client_cn: Some("felix".into()),
            client_uri_san: None,
            reload_interval: Duration::from_millis(20),
        };
        std::fs::write(&settings.cert_file, &cert).unwrap();
        std::fs::write(&settings.key_file, &key).unwrap();
        std::fs::write(&settings.ca_file, ca.pem()).unwrap();
        let metrics = Metrics::new();
        let mut tls = ServerTls::load(settings.clone(), metrics.tls_reloads.clone()).unwrap();
        let first = tls.current_config().clone();

        // Rotate: the new key is written, the new certificate sits behind a FIFO.
        let (cert2, key2) = leaf(&ca);
        std::fs::write(&settings.key_file, &key2).unwrap();
        std::fs::remove_file(&settings.cert_file).unwrap();
        let fifo = std::ffi::CString::new(settings.cert_file.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        // Long enough for the reload thread to be stuck on it several intervals over.
        std::thread::sleep(Duration::from_millis(200));
        let t = Instant::now();
        for _ in 0..10 {
            tls.take_reloaded();
        }
        assert!(t.elapsed() < Duration::from_millis(50), "{:?}", t.elapsed());
        assert!(Arc::ptr_eq(tls.current_config(), &first));
        assert!(
            tls.session().is_ok(),
            "new connections still get the old config"
        );

        // The volume recovers: the read completes and the new config arrives.
        let path = settings.cert_file.clone();
        let writer = std::thread::spawn(move || std::fs::write(path, cert2).unwrap());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Arc::ptr_eq(tls.current_config(), &first) {
            assert!(
                Instant::now() < deadline,
                "the new certificates never arrived"
            );
            std::thread::sleep(Duration::from_millis(10));
            tls.take_reloaded();
        }
        writer.join().unwrap();
        assert_eq!(metrics.tls_reloads.with_label_values(&["success"]).get(), 1);
        drop(tls);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
