//! TLS on the protocol port: the server's rustls configuration, its reload when the files
//! change, and the per-connection read path.
//!
//! Everything runs on the reactor thread. A connection's `rustls::ServerConnection` sits
//! between the socket and the same frame decoder and `Outbox` a plain connection uses: the
//! shared plaintext frames stay shared, and each client encrypts its own copy as it is written.
//! The reactor (`server/mod.rs`) feeds plaintext to rustls only while rustls' outgoing buffer
//! is below [`TLS_OUT_BUFFER`], so a multi-megabyte snapshot is never copied whole into one
//! client's TLS buffer.

use crate::metrics::Metrics;
use crate::tls::{
    cert_key_error, parse_certs, parse_key, parse_roots, read_pem_file, Identity, TlsError,
};
use mio::net::TcpStream;
use rustls::server::WebPkiClientVerifier;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
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

/// The server's TLS state: the config new connections get, and the reload bookkeeping.
pub struct ServerTls {
    settings: TlsSettings,
    identity: Identity,
    config: Arc<rustls::ServerConfig>,
    /// Fingerprint of the files last tried, whether that load worked or not: a bad file is
    /// reported once, not every interval, and tried again when it changes.
    tried: u64,
    next_check: Instant,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the files; any problem is a startup error.
    pub fn load(settings: TlsSettings) -> Result<ServerTls, TlsError> {
        let identity = settings.identity();
        if !identity.is_set() {
            return Err(TlsError::NoIdentity);
        }
        let material = Material::read(&settings)?;
        let config = material.build(&settings)?;
        Ok(ServerTls {
            tried: material.fingerprint(),
            next_check: Instant::now() + settings.reload_interval,
            settings,
            identity,
            config,
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

    /// On the reactor's tick: every `reload_interval`, re-reads the files and, if they
    /// changed, builds a new config for new connections. Existing connections keep theirs. A
    /// failed load keeps the old config.
    pub fn maybe_reload(&mut self, now: Instant, metrics: &Metrics) {
        if now < self.next_check {
            return;
        }
        self.next_check = now + self.settings.reload_interval;
        let material = match Material::read(&self.settings) {
            Ok(m) => m,
            Err(e) => {
                // Mid-rotation a file can be briefly missing; say so once per distinct state.
                let fp = u64::MAX;
                if self.tried != fp {
                    self.tried = fp;
                    metrics.tls_reloads.with_label_values(&["failure"]).inc();
                    error!(error = %e, "TLS files unreadable; keeping the current certificates");
                }
                return;
            }
        };
        let fp = material.fingerprint();
        if fp == self.tried {
            return;
        }
        self.tried = fp;
        match material.build(&self.settings) {
            Ok(cfg) => {
                self.config = cfg;
                metrics.tls_reloads.with_label_values(&["success"]).inc();
                info!(
                    cert = %self.settings.cert_file.display(),
                    "TLS files changed; new connections use the new certificates"
                );
            }
            Err(e) => {
                metrics.tls_reloads.with_label_values(&["failure"]).inc();
                error!(error = %e, "TLS files changed but do not load; keeping the current certificates");
            }
        }
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
