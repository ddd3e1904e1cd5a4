//! `typha client`: connects to a daemon the way a Felix does and prints what arrives, so an
//! operator can ask "what does Felix see right now?".
//!
//! Output is one line per event, human-readable or JSON lines (`--json`). With `--digest` it
//! runs until the stream is in sync (or for `--duration`), then compares the key count and
//! digest of the map it built with the daemon's own record for the same sequence number
//! (`GET /digest?seq=N` on the daemon's HTTP port). Exit codes: [`EXIT_OK`], [`EXIT_MISMATCH`],
//! [`EXIT_ERROR`] (connection and usage errors, as clap's own usage errors).
//!
//! Everything about reaching the daemon lives in [`ConnectArgs`]: the `--addr` list or a
//! Kubernetes Service's ready endpoints, and TLS as Felix has it (CA, client certificate,
//! expected server CN / URI SAN). With `--follow` a [`ReconnectingClient`] keeps the client on
//! some replica across goodbyes and lost connections, printing each move.

use crate::client::tls::{ClientTls, ClientTlsOptions};
use crate::client::{
    BlockingClient, ClientError, ClientEvent, ClientOptions, Discovery, ReconnectEvent,
    ReconnectOptions, ReconnectingClient, ServiceDiscovery, Tracking,
};
use crate::http::http_get;
use crate::model::{Digest, SyncerType};
use crate::proto::{Codec, ServerHello, WireUpdate};
use clap::{Args, Parser, ValueEnum};
use serde_json::{json, Value};
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use thiserror::Error;

/// In sync (or the duration ended), and with `--digest`, the digests matched.
pub const EXIT_OK: i32 = 0;
/// `--digest`: the client's map differs from the daemon's record at the same sequence number.
pub const EXIT_MISMATCH: i32 = 1;
/// A usage error, or the connection or the digest request failed.
pub const EXIT_ERROR: i32 = 2;

/// The daemon's Prometheus port, which also serves `/digest` (on all interfaces by default,
/// unlike the health port).
pub const DEFAULT_HTTP_PORT: u16 = 9093;

/// How long the `/digest` request may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum DebugClientError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot connect to {tried}")]
    Connect { tried: String },
    #[error("cannot find the daemons: {0}")]
    Discovery(ClientError),
    #[error("{0}")]
    TlsSetup(#[from] crate::tls::TlsError),
    #[error("connection to {addr} failed: {source}")]
    Connection {
        addr: SocketAddr,
        #[source]
        source: ClientError,
    },
    #[error("cannot get the daemon's digest from http://{addr}{path}: {msg}")]
    Http {
        addr: SocketAddr,
        path: String,
        msg: String,
    },
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SyncerArg {
    Felix,
    Bgp,
    TunnelIpAllocation,
    NodeStatus,
}

impl From<SyncerArg> for SyncerType {
    fn from(s: SyncerArg) -> SyncerType {
        match s {
            SyncerArg::Felix => SyncerType::Felix,
            SyncerArg::Bgp => SyncerType::Bgp,
            SyncerArg::TunnelIpAllocation => SyncerType::TunnelIpAllocation,
            SyncerArg::NodeStatus => SyncerType::NodeStatus,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressionArg {
    Zstd,
    Lz4,
    Snappy,
    /// Offer no compression.
    None,
}

/// How to reach the daemon and what to ask it for: every transport option of the debug client.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Daemon protocol address. Repeat it for several: they are tried in a random order until
    /// one accepts, as Felix spreads over Typha's endpoints.
    #[arg(long = "addr", value_name = "HOST:PORT")]
    pub addrs: Vec<String>,
    /// Syncer type to ask for.
    #[arg(long, value_enum, default_value = "felix")]
    pub syncer: SyncerArg,
    /// Compression to offer, comma-separated; `none` offers none.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "zstd,lz4,snappy"
    )]
    pub compression: Vec<CompressionArg>,
    /// Hostname sent in the Hello (the daemon logs it).
    #[arg(long, default_value = "typha-rs-debug-client")]
    pub hostname: String,
    #[arg(
        long = "connect-timeout-secs",
        value_name = "SECS",
        default_value_t = 10.0
    )]
    pub connect_timeout_secs: f64,
    /// A connection silent for this long fails (the daemon pings every 10 s by default).
    #[arg(
        long = "read-timeout-secs",
        value_name = "SECS",
        default_value_t = 30.0
    )]
    pub read_timeout_secs: f64,
    /// TLS: CA bundle (PEM) the daemon's certificate must chain to (Felix's TyphaCAFile).
    /// Any TLS flag turns TLS on, and then this one and --server-cn or --server-uri-san are
    /// required.
    #[arg(long = "ca-file", value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// TLS: the client's certificate (PEM); needs --key-file. A Typha daemon with TLS refuses
    /// clients without one.
    #[arg(long = "cert-file", value_name = "PATH")]
    pub cert_file: Option<PathBuf>,
    /// TLS: the client certificate's key (PEM); needs --cert-file.
    #[arg(long = "key-file", value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// TLS: accept the daemon if its certificate's Common Name is this (Felix's TyphaCN).
    #[arg(long = "server-cn", value_name = "CN")]
    pub server_cn: Option<String>,
    /// TLS: accept the daemon if one of its certificate's URI SANs is this (Felix's
    /// TyphaURISAN). With --server-cn too, either match admits.
    #[arg(long = "server-uri-san", value_name = "URI")]
    pub server_uri_san: Option<String>,
    /// Service discovery: kubeconfig to list the Service's endpoints with. Without --addr,
    /// the replicas are the ready endpoints of the Service (--k8s-*); unset means KUBECONFIG,
    /// ~/.kube/config or the in-cluster account.
    #[arg(long = "kubeconfig", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Service discovery: namespace of the daemons' Service [default: kube-system].
    #[arg(long = "k8s-namespace", value_name = "NAMESPACE")]
    pub k8s_namespace: Option<String>,
    /// Service discovery: name of the daemons' Service [default: calico-typha].
    #[arg(long = "k8s-service-name", value_name = "NAME")]
    pub k8s_service_name: Option<String>,
    /// Service discovery: name of the Service's protocol port [default: calico-typha].
    #[arg(long = "k8s-port-name", value_name = "NAME")]
    pub k8s_port_name: Option<String>,
}

fn secs(name: &str, v: f64) -> Result<Duration, DebugClientError> {
    if v.is_finite() && v > 0.0 && v < 1e9 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(DebugClientError::Usage(format!(
            "--{name}: {v} is not a positive number of seconds"
        )))
    }
}

impl ConnectArgs {
    /// The protocol options these arguments ask for. `report_keys`: queue each frame's key
    /// updates as events (for printing them).
    pub fn client_options(&self, report_keys: bool) -> Result<ClientOptions, DebugClientError> {
        let accept_compression = self
            .compression
            .iter()
            .filter_map(|c| match c {
                CompressionArg::Zstd => Some(Codec::Zstd),
                CompressionArg::Lz4 => Some(Codec::Lz4),
                CompressionArg::Snappy => Some(Codec::Snappy),
                CompressionArg::None => None,
            })
            .collect();
        Ok(ClientOptions {
            hostname: self.hostname.clone(),
            syncer_type: self.syncer.into(),
            accept_compression,
            tracking: Tracking::Full,
            read_timeout: Some(secs("read-timeout-secs", self.read_timeout_secs)?),
            connect_timeout: secs("connect-timeout-secs", self.connect_timeout_secs)?,
            report_keys,
            tls: self.tls_options()?,
            ..ClientOptions::default()
        })
    }

    /// The TLS options these arguments ask for: `None` without any TLS flag. The files are
    /// loaded once here, so a bad file is reported before any connection is tried.
    pub fn tls_options(&self) -> Result<Option<ClientTlsOptions>, DebugClientError> {
        let any = self.ca_file.is_some()
            || self.cert_file.is_some()
            || self.key_file.is_some()
            || self.server_cn.is_some()
            || self.server_uri_san.is_some();
        if !any {
            return Ok(None);
        }
        let usage = |m: &str| Err(DebugClientError::Usage(m.to_owned()));
        let Some(ca_file) = self.ca_file.clone() else {
            return usage(
                "TLS needs --ca-file (the CA the daemon's certificate chains to) with \
                 --cert-file, --key-file, --server-cn or --server-uri-san",
            );
        };
        if self.cert_file.is_some() != self.key_file.is_some() {
            return usage("--cert-file and --key-file go together: give both or neither");
        }
        if self.server_cn.is_none() && self.server_uri_san.is_none() {
            return usage(
                "TLS needs --server-cn, --server-uri-san or both: the daemon is identified by \
                 its certificate's CN or URI SAN, not by its address",
            );
        }
        let opts = ClientTlsOptions {
            ca_file,
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            server_cn: self.server_cn.clone(),
            server_uri_san: self.server_uri_san.clone(),
        };
        ClientTls::from_files(&opts)?;
        Ok(Some(opts))
    }

    fn service_discovery_asked(&self) -> bool {
        self.kubeconfig.is_some()
            || self.k8s_namespace.is_some()
            || self.k8s_service_name.is_some()
            || self.k8s_port_name.is_some()
    }

    /// Where the daemons are: the `--addr` list (resolved now), or the ready endpoints of the
    /// Service named by the `--k8s-*` flags.
    pub fn discovery(&self) -> Result<Discovery, DebugClientError> {
        if !self.addrs.is_empty() {
            if self.service_discovery_asked() {
                return Err(DebugClientError::Usage(
                    "--addr and Service discovery (--kubeconfig, --k8s-*) exclude each other"
                        .into(),
                ));
            }
            let mut resolved = Vec::new();
            let mut failures = Vec::new();
            for a in &self.addrs {
                match a.to_socket_addrs() {
                    Ok(r) => resolved.extend(r),
                    Err(e) => failures.push(format!("{a}: {e}")),
                }
            }
            if resolved.is_empty() {
                return Err(DebugClientError::Connect {
                    tried: failures.join("; "),
                });
            }
            return Ok(Discovery::Static(resolved));
        }
        if !self.service_discovery_asked() {
            return Err(DebugClientError::Usage(
                "no daemon address: give --addr HOST:PORT, or --kubeconfig / --k8s-service-name \
                 to find the daemons through their Service"
                    .into(),
            ));
        }
        let or = |v: &Option<String>, d: &str| v.clone().unwrap_or_else(|| d.to_owned());
        Ok(Discovery::Kubernetes(ServiceDiscovery {
            kubeconfig: self.kubeconfig.clone(),
            namespace: or(&self.k8s_namespace, "kube-system"),
            service: or(&self.k8s_service_name, "calico-typha"),
            port_name: or(&self.k8s_port_name, "calico-typha"),
        }))
    }

    /// Connects to one of the daemons (random order, first that accepts) and sends the Hello.
    pub fn connect(
        &self,
        opts: ClientOptions,
    ) -> Result<(BlockingClient, SocketAddr), DebugClientError> {
        let discovery = self.discovery()?;
        let mut order = discovery.discover().map_err(DebugClientError::Discovery)?;
        if order.is_empty() {
            let Discovery::Kubernetes(s) = &discovery else {
                return Err(DebugClientError::Discovery(ClientError::NoReplicas));
            };
            return Err(DebugClientError::Discovery(ClientError::Discovery(
                format!(
                    "Service {}/{} has no ready endpoint on a port named {:?}",
                    s.namespace, s.service, s.port_name
                ),
            )));
        }
        let start = random_index(order.len());
        order.rotate_left(start);
        let mut failures = Vec::new();
        for sa in order {
            match BlockingClient::connect(sa, opts.clone()) {
                Ok(c) => {
                    tracing::debug!(addr = %sa, "connected");
                    return Ok((c, sa));
                }
                Err(e) => failures.push(format!("{sa}: {e}")),
            }
        }
        Err(DebugClientError::Connect {
            tried: failures.join("; "),
        })
    }
}

/// A start index that differs between runs, so that several clients do not all pick the first
/// address; not security relevant.
fn random_index(n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as usize);
    (nanos ^ std::process::id() as usize) % n
}

/// typha client: connect like a Felix and print what it receives.
#[derive(Debug, Clone, Parser)]
#[command(name = "typha client", bin_name = "typha client", version)]
pub struct ClientCli {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Print JSON lines (one object per event) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Run until in sync (or for --duration), then print the map's key count and digest and
    /// compare them with the daemon's record at the same sequence number: exit 0 on a match,
    /// 1 on a mismatch.
    #[arg(long)]
    pub digest: bool,
    /// Daemon HTTP address serving /digest; default: the protocol address's host, port 9093.
    #[arg(long = "http-addr", value_name = "HOST:PORT")]
    pub http_addr: Option<String>,
    /// Stop after this many seconds (default: run until the connection ends).
    #[arg(long = "duration", value_name = "SECS")]
    pub duration_secs: Option<f64>,
    /// Stop as soon as the snapshot is complete and the datastore is in sync.
    #[arg(long = "until-in-sync")]
    pub until_in_sync: bool,
    /// Keep running across Goodbyes and lost connections: reconnect to another daemon (after
    /// a jittered backoff), print a "reconnected to" line and the new snapshot. Without it the
    /// client exits when the connection ends. Not with --digest or --until-in-sync.
    #[arg(long)]
    pub follow: bool,
    /// Print one line per Updates frame instead of one per key.
    #[arg(long = "quiet-updates")]
    pub quiet_updates: bool,
    /// Log level on stderr (trace, debug, info, warning, error, none).
    #[arg(long = "log-severity", default_value = "warning")]
    pub log_severity: String,
}

/// The key count and digest the client built, and the daemon's for the same sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestComparison {
    pub seq: u64,
    pub keys: u64,
    pub digest: Digest,
    pub daemon_keys: u64,
    pub daemon_digest: Digest,
}

impl DigestComparison {
    pub fn matches(&self) -> bool {
        self.keys == self.daemon_keys && self.digest == self.daemon_digest
    }
}

/// What the daemon's `/digest` body says about `syncer`: (key count, digest).
pub fn parse_digest_body(body: &str, syncer: SyncerType) -> Result<(u64, Digest), String> {
    let v: Value =
        serde_json::from_str(body).map_err(|e| format!("the body is not JSON ({e}): {body:?}"))?;
    let view = &v["syncers"][syncer.as_str()];
    let keys = view["keys"]
        .as_u64()
        .ok_or_else(|| format!("no syncers.{}.keys in {body:?}", syncer.as_str()))?;
    let digest = view["digest"]
        .as_str()
        .and_then(Digest::from_hex)
        .ok_or_else(|| format!("no valid syncers.{}.digest in {body:?}", syncer.as_str()))?;
    Ok((keys, digest))
}

/// A value as JSON: the JSON it is, else its text (lossy UTF-8).
fn value_json(v: &[u8]) -> Value {
    serde_json::from_slice(v).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(v).into()))
}

fn hello_json(h: &ServerHello, addr: SocketAddr) -> Value {
    json!({
        "event": "connected",
        "addr": addr.to_string(),
        "server_id": h.server_id,
        "connection_id": h.connection_id,
        "syncer": h.syncer_type,
        "compression": h.compression.map(Codec::as_str),
        "protocol_version": h.protocol_version.to_string(),
    })
}

/// One JSON object on one line, its `event` member first so that lines read well (serde_json
/// orders the other members by name).
fn event_first(v: Value) -> String {
    let Value::Object(mut m) = v else {
        return v.to_string();
    };
    let mut s = String::from("{");
    if let Some(e) = m.remove("event") {
        s.push_str("\"event\":");
        s.push_str(&e.to_string());
    }
    for (k, v) in &m {
        if s.len() > 1 {
            s.push(',');
        }
        s.push_str(&Value::String(k.clone()).to_string());
        s.push(':');
        s.push_str(&v.to_string());
    }
    s.push('}');
    s
}

/// Writes events as text or JSON lines.
struct Printer<'a> {
    out: &'a mut dyn Write,
    json: bool,
    per_key: bool,
}

impl Printer<'_> {
    fn line(
        &mut self,
        text: impl FnOnce() -> String,
        json: impl FnOnce() -> Value,
    ) -> Result<(), DebugClientError> {
        if self.json {
            writeln!(self.out, "{}", event_first(json()))?;
        } else {
            writeln!(self.out, "{}", text())?;
        }
        Ok(())
    }

    fn event(&mut self, ev: &ClientEvent, addr: SocketAddr) -> Result<(), DebugClientError> {
        match ev {
            ClientEvent::ServerHello(h) => self.line(
                || {
                    format!(
                        "connected to {addr}: server {}, connection {}, syncer {}, compression {}, protocol {}",
                        h.server_id,
                        h.connection_id,
                        h.syncer_type,
                        h.compression.map_or("none", Codec::as_str),
                        h.protocol_version
                    )
                },
                || hello_json(h, addr),
            ),
            ClientEvent::SnapshotComplete {
                seq,
                key_count,
                digest,
                status,
            } => self.line(
                || {
                    format!(
                        "snapshot complete: seq {seq}, {key_count} keys, digest {digest}, status {}",
                        status.as_str()
                    )
                },
                || {
                    json!({
                        "event": "snapshot-complete",
                        "seq": seq,
                        "keys": key_count,
                        "digest": digest.to_string(),
                        "status": status.as_str(),
                    })
                },
            ),
            ClientEvent::Status(s) => self.line(
                || format!("status: {}", s.as_str()),
                || json!({"event": "status", "status": s.as_str()}),
            ),
            ClientEvent::Updates {
                first_seq,
                last_seq,
                count,
                lag,
                ..
            } if !self.per_key => self.line(
                || format!("updates {first_seq}..={last_seq}: {count} keys, lag {lag:?}"),
                || {
                    json!({
                        "event": "updates",
                        "first_seq": first_seq,
                        "last_seq": last_seq,
                        "count": count,
                        "lag_ms": lag.as_secs_f64() * 1e3,
                    })
                },
            ),
            ClientEvent::Keys {
                seq,
                snapshot,
                updates,
            } if self.per_key => {
                for u in updates {
                    self.key(u, *seq, *snapshot)?;
                }
                Ok(())
            }
            ClientEvent::Goodbye { reason, message } => self.line(
                || format!("goodbye: {}: {message}", reason.as_str()),
                || json!({"event": "goodbye", "reason": reason.as_str(), "message": message}),
            ),
            ClientEvent::Ping { id } => {
                tracing::debug!(id, "ping");
                Ok(())
            }
            ClientEvent::Updates { .. } | ClientEvent::Keys { .. } => Ok(()),
        }
    }

    fn reconnected(&mut self, addr: SocketAddr, connections: u64) -> Result<(), DebugClientError> {
        self.line(
            || format!("reconnected to {addr} (connection {connections}); a new snapshot follows"),
            || json!({"event": "reconnected", "addr": addr.to_string(), "connections": connections}),
        )
    }

    /// `--follow`: a connection ended (`what` = "disconnected") or could not be made
    /// ("connect-failed"); the next attempt is in `retry_in`.
    fn connection_lost(
        &mut self,
        what: &str,
        addr: Option<SocketAddr>,
        error: &ClientError,
        retry_in: Duration,
    ) -> Result<(), DebugClientError> {
        self.line(
            || {
                let at = addr.map_or_else(String::new, |a| format!(" {a}"));
                let verb = if what == "disconnected" {
                    "disconnected from"
                } else {
                    "cannot connect to"
                };
                let at = if at.is_empty() {
                    " a daemon".into()
                } else {
                    at
                };
                format!("{verb}{at}: {error}; retrying in {retry_in:?}")
            },
            || {
                json!({
                    "event": what,
                    "addr": addr.map(|a| a.to_string()),
                    "error": error.to_string(),
                    "retry_in_ms": retry_in.as_secs_f64() * 1e3,
                })
            },
        )
    }

    fn key(&mut self, u: &WireUpdate, seq: u64, snapshot: bool) -> Result<(), DebugClientError> {
        self.line(
            || {
                let what = if snapshot { "snapshot" } else { "update" };
                match &u.value {
                    Some(v) => format!(
                        "{what} seq {seq}: set {} rev {} {}",
                        u.key,
                        u.revision,
                        String::from_utf8_lossy(v)
                    ),
                    None => format!("{what} seq {seq}: delete {} rev {}", u.key, u.revision),
                }
            },
            || {
                json!({
                    "event": "update",
                    "key": u.key,
                    "value": u.value.as_deref().map_or(Value::Null, value_json),
                    "revision": u.revision,
                    "seq": seq,
                    "snapshot": snapshot,
                })
            },
        )
    }

    fn digest(&mut self, c: &DigestComparison, http: SocketAddr) -> Result<(), DebugClientError> {
        let ok = c.matches();
        self.line(
            || {
                format!(
                    "digest at seq {}: {} keys, digest {}; daemon ({http}): {} keys, digest {}: {}",
                    c.seq,
                    c.keys,
                    c.digest,
                    c.daemon_keys,
                    c.daemon_digest,
                    if ok { "match" } else { "MISMATCH" }
                )
            },
            || {
                json!({
                    "event": "digest",
                    "seq": c.seq,
                    "keys": c.keys,
                    "digest": c.digest.to_string(),
                    "daemon_keys": c.daemon_keys,
                    "daemon_digest": c.daemon_digest.to_string(),
                    "match": ok,
                })
            },
        )
    }
}

impl ClientCli {
    /// Runs the client, writing events to `out`. `Ok(None)` when it stopped without comparing
    /// digests, `Ok(Some(c))` with `--digest`.
    pub fn run(&self, out: &mut dyn Write) -> Result<Option<DigestComparison>, DebugClientError> {
        if self.follow {
            if self.digest || self.until_in_sync {
                return Err(DebugClientError::Usage(
                    "--follow runs until --duration ends or it is stopped; it does not go with \
                     --digest or --until-in-sync"
                        .into(),
                ));
            }
            self.follow(out)?;
            return Ok(None);
        }
        let deadline = self
            .duration_secs
            .map(|s| secs("duration", s))
            .transpose()?
            .map(|d| Instant::now() + d);
        let per_key = !self.quiet_updates;
        let opts = self.connect.client_options(per_key)?;
        let syncer = opts.syncer_type;
        // Resolved before connecting, so a bad --http-addr is a usage error without a wait.
        let http_override = self
            .http_addr
            .as_deref()
            .map(|a| {
                a.to_socket_addrs()
                    .ok()
                    .and_then(|mut it| it.next())
                    .ok_or_else(|| {
                        DebugClientError::Usage(format!("--http-addr {a:?} is not a HOST:PORT"))
                    })
            })
            .transpose()?;
        let (mut client, addr) = self.connect.connect(opts)?;
        let stop_in_sync = self.until_in_sync || (self.digest && deadline.is_none());
        let mut printer = Printer {
            out,
            json: self.json,
            per_key,
        };
        loop {
            // The state runs ahead of the events still queued; stop only once they are printed,
            // so the output and the digest describe the same map.
            if stop_in_sync && client.state().is_in_sync() && client.session().pending_events() == 0
            {
                break;
            }
            let next = match deadline {
                Some(d) => client.next_event_timeout(d.saturating_duration_since(Instant::now())),
                None => client.next_event(),
            };
            match next {
                Ok(ev) => printer.event(&ev, addr)?,
                Err(e) if e.is_timeout() && deadline.is_some_and(|d| Instant::now() >= d) => break,
                Err(source) => return Err(DebugClientError::Connection { addr, source }),
            }
        }
        printer.out.flush()?;
        if !self.digest {
            let _ = client.shutdown();
            return Ok(None);
        }
        let state = client.state();
        let (seq, keys, digest) = (state.seq(), state.len() as u64, state.digest());
        let http = http_override.unwrap_or_else(|| SocketAddr::new(addr.ip(), DEFAULT_HTTP_PORT));
        let path = format!("/digest?seq={seq}");
        let http_err = |msg: String| DebugClientError::Http {
            addr: http,
            path: path.clone(),
            msg,
        };
        let (code, body) =
            http_get(http, &path, HTTP_TIMEOUT).map_err(|e| http_err(e.to_string()))?;
        let _ = client.shutdown();
        if code != 200 {
            return Err(http_err(format!("HTTP {code}: {}", body.trim())));
        }
        let (daemon_keys, daemon_digest) = parse_digest_body(&body, syncer).map_err(http_err)?;
        let cmp = DigestComparison {
            seq,
            keys,
            digest,
            daemon_keys,
            daemon_digest,
        };
        printer.digest(&cmp, http)?;
        printer.out.flush()?;
        Ok(Some(cmp))
    }

    /// `--follow`: a [`ReconnectingClient`] over the same daemons, printing its connection
    /// changes between the events.
    fn follow(&self, out: &mut dyn Write) -> Result<(), DebugClientError> {
        let deadline = self
            .duration_secs
            .map(|s| secs("duration", s))
            .transpose()?
            .map(|d| Instant::now() + d);
        let per_key = !self.quiet_updates;
        let opts = self.connect.client_options(per_key)?;
        let discovery = self.connect.discovery()?;
        let mut client = ReconnectingClient::new(ReconnectOptions {
            client: opts,
            ..ReconnectOptions::new(discovery)
        });
        let mut printer = Printer {
            out,
            json: self.json,
            per_key,
        };
        let mut addr = SocketAddr::from(([0, 0, 0, 0], 0));
        loop {
            // Without --duration, wake up now and then only to wait again.
            let wait = deadline.map_or(Duration::from_secs(3600), |d| {
                d.saturating_duration_since(Instant::now())
            });
            match client.next_event_timeout(wait) {
                Ok(ReconnectEvent::Connected { addr: a }) => {
                    addr = a;
                    if client.connections() > 1 {
                        printer.reconnected(a, client.connections())?;
                    }
                }
                Ok(ReconnectEvent::Event(ev)) => printer.event(&ev, addr)?,
                Ok(ReconnectEvent::Disconnected {
                    addr,
                    error,
                    retry_in,
                }) => printer.connection_lost("disconnected", Some(addr), &error, retry_in)?,
                Ok(ReconnectEvent::ConnectFailed {
                    addr,
                    error,
                    retry_in,
                }) => printer.connection_lost("connect-failed", addr, &error, retry_in)?,
                Err(_) if deadline.is_some_and(|d| Instant::now() >= d) => break,
                Err(_) => {}
            }
        }
        printer.out.flush()?;
        Ok(())
    }

    /// Runs the client and reports: events and the digest line to `out`, an error to `err`
    /// (and, with `--json`, as an `{"event":"error"}` line to `out` too). Returns the exit code.
    pub fn run_and_report(&self, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
        match self.run(out) {
            Ok(None) => EXIT_OK,
            Ok(Some(c)) if c.matches() => EXIT_OK,
            Ok(Some(_)) => EXIT_MISMATCH,
            Err(e) => {
                let _ = writeln!(err, "typha client: {e}");
                if self.json {
                    let _ = writeln!(
                        out,
                        "{}",
                        event_first(json!({"event": "error", "error": e.to_string()}))
                    );
                }
                EXIT_ERROR
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UpdateType;

    fn cli(args: &[&str]) -> Result<ClientCli, clap::Error> {
        ClientCli::try_parse_from(std::iter::once("typha client").chain(args.iter().copied()))
    }

    #[test]
    fn parses_options_into_client_options() {
        let c = cli(&[
            "--addr",
            "127.0.0.1:1",
            "--addr",
            "[::1]:2",
            "--syncer",
            "tunnel-ip-allocation",
            "--compression",
            "lz4,none",
            "--json",
        ])
        .unwrap();
        assert_eq!(c.connect.addrs, ["127.0.0.1:1", "[::1]:2"]);
        let o = c.connect.client_options(true).unwrap();
        assert_eq!(o.syncer_type, SyncerType::TunnelIpAllocation);
        assert_eq!(o.accept_compression, [Codec::Lz4]);
        assert!(o.report_keys);
        assert_eq!(o.tracking, Tracking::Full);
        assert!(cli(&["--syncer", "etcd"]).is_err());
        assert!(cli(&["--compression", "gzip"]).is_err());
        let c = cli(&["--addr", "x:1", "--read-timeout-secs", "0"]).unwrap();
        assert!(matches!(
            c.connect.client_options(false),
            Err(DebugClientError::Usage(_))
        ));
    }

    #[test]
    fn discovery_flags_default_to_typhas_names_and_exclude_addr() {
        let c = cli(&["--kubeconfig", "/k/config"]).unwrap();
        let Discovery::Kubernetes(s) = c.connect.discovery().unwrap() else {
            panic!("not Service discovery");
        };
        assert_eq!(
            s.kubeconfig.as_deref(),
            Some(std::path::Path::new("/k/config"))
        );
        assert_eq!(
            (
                s.namespace.as_str(),
                s.service.as_str(),
                s.port_name.as_str()
            ),
            ("kube-system", "calico-typha", "calico-typha")
        );
        let c = cli(&[
            "--k8s-namespace",
            "ns",
            "--k8s-service-name",
            "svc",
            "--k8s-port-name",
            "p",
        ])
        .unwrap();
        let Discovery::Kubernetes(s) = c.connect.discovery().unwrap() else {
            panic!("not Service discovery");
        };
        assert_eq!(
            (s.kubeconfig, &*s.namespace, &*s.service, &*s.port_name),
            (None, "ns", "svc", "p")
        );
        let c = cli(&["--addr", "127.0.0.1:1", "--addr", "127.0.0.1:2"]).unwrap();
        let Discovery::Static(v) = c.connect.discovery().unwrap() else {
            panic!("not static");
        };
        assert_eq!(v.len(), 2);
        let c = cli(&["--addr", "127.0.0.1:1", "--k8s-namespace", "x"]).unwrap();
        assert!(matches!(
            c.connect.discovery(),
            Err(DebugClientError::Usage(_))
        ));
    }

    #[test]
    fn tls_flags_are_all_or_nothing() {
        let usage = |args: &[&str]| {
            let c = cli(&[&["--addr", "127.0.0.1:1"], args].concat()).unwrap();
            match c.connect.tls_options() {
                Err(DebugClientError::Usage(m)) => m,
                other => panic!("{args:?}: {other:?}"),
            }
        };
        assert!(usage(&["--server-cn", "t"]).contains("--ca-file"));
        assert!(
            usage(&["--ca-file", "/ca", "--server-cn", "t", "--key-file", "/k"])
                .contains("--cert-file")
        );
        assert!(
            usage(&["--ca-file", "/ca", "--cert-file", "/c", "--key-file", "/k"])
                .contains("--server-cn")
        );
        assert!(cli(&["--addr", "127.0.0.1:1"])
            .unwrap()
            .connect
            .tls_options()
            .unwrap()
            .is_none());
        // Complete flags load the files: a missing one is a TLS setup error naming it.
        let c = cli(&[
            "--addr",
            "127.0.0.1:1",
            "--ca-file",
            "/nonexistent/ca.pem",
            "--server-uri-san",
            "spiffe://x",
        ])
        .unwrap();
        let e = c.connect.tls_options().unwrap_err();
        assert!(matches!(e, DebugClientError::TlsSetup(_)), "{e:?}");
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        // --follow is for watching, not for a one-off digest.
        let c = cli(&["--addr", "127.0.0.1:1", "--follow", "--digest"]).unwrap();
        assert!(matches!(
            c.run(&mut Vec::new()),
            Err(DebugClientError::Usage(_))
        ));
    }

    #[test]
    fn no_address_is_a_usage_error() {
        let c = cli(&[]).unwrap();
        let mut out = Vec::new();
        let mut err = Vec::new();
        assert_eq!(c.run_and_report(&mut out, &mut err), EXIT_ERROR);
        let err = String::from_utf8(err).unwrap();
        assert!(err.contains("--addr"), "{err}");
    }

    #[test]
    fn digest_body_is_read_per_syncer() {
        let body = r#"{"seq":9,"syncers":{"felix":{"keys":3,"digest":"000000000000000000000000000000ff"},"bgp":{"keys":1,"digest":"00000000000000000000000000000001"}}}"#;
        assert_eq!(
            parse_digest_body(body, SyncerType::Felix).unwrap(),
            (3, Digest(0xff))
        );
        assert_eq!(
            parse_digest_body(body, SyncerType::Bgp).unwrap(),
            (1, Digest(1))
        );
        assert!(parse_digest_body(body, SyncerType::NodeStatus).is_err());
        assert!(parse_digest_body("not json", SyncerType::Felix).is_err());
        let bad = r#"{"syncers":{"felix":{"keys":3,"digest":"xyz"}}}"#;
        assert!(parse_digest_body(bad, SyncerType::Felix).is_err());
    }

    #[test]
    fn json_lines_put_the_event_first() {
        let line = event_first(json!({"status": "in-sync", "event": "status", "a": [1]}));
        assert_eq!(line, r#"{"event":"status","a":[1],"status":"in-sync"}"#);
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v, json!({"event": "status", "status": "in-sync", "a": [1]}));
    }

    #[test]
    fn keys_print_as_json_values_or_text() {
        let mut out = Vec::new();
        let mut p = Printer {
            out: &mut out,
            json: true,
            per_key: true,
        };
        let ev = ClientEvent::Keys {
            seq: 5,
            snapshot: false,
            updates: vec![
                WireUpdate {
                    key: "/a".into(),
                    value: Some(br#"{"x":1}"#.to_vec()),
                    revision: "7".into(),
                    update_type: UpdateType::New,
                },
                WireUpdate {
                    key: "/b".into(),
                    value: Some(b"10.0.0.1".to_vec()),
                    revision: "8".into(),
                    update_type: UpdateType::New,
                },
                WireUpdate {
                    key: "/c".into(),
                    value: None,
                    revision: "9".into(),
                    update_type: UpdateType::Deleted,
                },
            ],
        };
        p.event(&ev, SocketAddr::from(([127, 0, 0, 1], 1))).unwrap();
        let lines: Vec<Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines,
            [
                json!({"event":"update","key":"/a","value":{"x":1},"revision":"7","seq":5,"snapshot":false}),
                json!({"event":"update","key":"/b","value":"10.0.0.1","revision":"8","seq":5,"snapshot":false}),
                json!({"event":"update","key":"/c","value":null,"revision":"9","seq":5,"snapshot":false}),
            ]
        );
    }
}
