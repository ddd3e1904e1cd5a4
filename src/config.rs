//! Settings: each from a command-line flag, else an environment variable `TYPHA_<NAME>`, else
//! the config file, else its default. Names follow Typha's where the meaning is the same
//! (`TYPHA_SERVERPORT`, `TYPHA_SERVERPINGINTERVALSECS`, ...); `docs/configuration.md` tables
//! them all. The config file uses Typha's format: `Name = value` lines, optionally under a
//! `[global]` header, `#` or `;` comments, names matched case-insensitively without the
//! `TYPHA_` prefix.

use crate::datastore::k8s::KubernetesConfig;
use crate::datastore::sim::SimConfig;
use crate::datastore::{
    BatchLimits, DatastoreThreadConfig, DriverConfig, DEFAULT_BATCH_BYTES, MAX_BATCH_BYTES,
};
use crate::proto::encode::EncodeOptions;
use crate::proto::{Codec, MAX_CLIENT_FRAME, MAX_SERVER_FRAME};
use crate::rebalance::{ConnectionTarget, RebalanceConfig, TargetParams};
use crate::server::{ServerConfig, TlsSettings};
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DatastoreType {
    /// The embedded synthetic cluster.
    Sim,
    /// The Kubernetes API server.
    Kubernetes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RebalancingMode {
    /// Only the upper limit applies.
    None,
    /// Keep this replica's share, from the Service's endpoints and the Node count.
    Kubernetes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressionSetting {
    Zstd,
    Lz4,
    Snappy,
    None,
}

impl CompressionSetting {
    pub fn codec(self) -> Option<Codec> {
        match self {
            CompressionSetting::Zstd => Some(Codec::Zstd),
            CompressionSetting::Lz4 => Some(Codec::Lz4),
            CompressionSetting::Snappy => Some(Codec::Snappy),
            CompressionSetting::None => None,
        }
    }
}

/// typha-rs: fans Calico datastore updates out to many Felix agents.
#[derive(Debug, Clone, Parser)]
#[command(name = "typha", version, args_override_self = true)]
pub struct Config {
    /// Config file (Typha's `Name = value` format); a missing default file is not an error.
    #[arg(
        long = "config-file",
        short = 'c',
        env = "TYPHA_CONFIGFILE",
        default_value = "/etc/calico/typha.cfg"
    )]
    pub config_file: PathBuf,

    /// Datastore to watch. `kubernetes`, as every Calico manifest sets: a replica that lost its
    /// setting must never serve a synthetic cluster to real nodes. `sim` (the embedded synthetic
    /// datastore of `make run`, the tests and the load tests) must be asked for by name.
    #[arg(
        long = "datastore-type",
        env = "TYPHA_DATASTORETYPE",
        value_enum,
        default_value = "kubernetes"
    )]
    pub datastore_type: DatastoreType,

    /// Log level for the screen: trace, debug, info, warning, error, or none.
    #[arg(
        long = "log-severity-screen",
        env = "TYPHA_LOGSEVERITYSCREEN",
        default_value = "info"
    )]
    pub log_severity_screen: String,
    /// Log line format: text, or json (one JSON object per line). Typha has no equivalent.
    #[arg(
        long = "log-format",
        env = "TYPHA_LOGFORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: crate::logging::LogFormat,
    /// Typha's log file. typha-rs logs to stderr only (what a container runtime collects);
    /// `none`, as Calico's manifests and operator set, is Typha's meaning exactly. Any other
    /// value is accepted with a startup warning that no file is written.
    #[arg(
        long = "log-file-path",
        env = "TYPHA_LOGFILEPATH",
        default_value = "none"
    )]
    pub log_file_path: String,
    /// Typha's log level for the file; only meaningful with a log file (see above).
    #[arg(
        long = "log-severity-file",
        env = "TYPHA_LOGSEVERITYFILE",
        default_value = "none"
    )]
    pub log_severity_file: String,
    /// Typha's log level for syslog. typha-rs has no syslog output: `none`, as the manifests
    /// set, is Typha's meaning exactly; any other value gets a startup warning.
    #[arg(
        long = "log-severity-sys",
        env = "TYPHA_LOGSEVERITYSYS",
        default_value = "none"
    )]
    pub log_severity_sys: String,
    /// Offer only FIPS-approved TLS algorithms (AES-GCM, NIST P-256/P-384), as the operator's
    /// FIPS mode asks of Typha. The crypto module (ring) is not FIPS 140 validated.
    #[arg(long = "fips-mode-enabled", env = "TYPHA_FIPSMODEENABLED", default_value_t = false, action = clap::ArgAction::Set)]
    pub fips_mode_enabled: bool,

    /// Kubernetes: kubeconfig file; unset means KUBECONFIG, ~/.kube/config, or the in-cluster
    /// service account, in that order.
    #[arg(long = "kubeconfig", env = "TYPHA_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubernetes: how often to look again for a kind the API server does not serve (a CRD
    /// not installed).
    #[arg(
        long = "k8s-missing-api-retry-secs",
        env = "TYPHA_K8SMISSINGAPIRETRYSECS",
        default_value_t = 1800.0
    )]
    pub k8s_missing_api_retry_secs: f64,

    // ---- protocol listener ----
    /// Address to listen on for clients; empty means all interfaces.
    #[arg(long = "server-host", env = "TYPHA_SERVERHOST", default_value = "")]
    pub server_host: String,
    /// Port to listen on for clients; 0 means 5473, as in Typha.
    #[arg(long = "server-port", env = "TYPHA_SERVERPORT", default_value_t = 5473)]
    pub server_port: u16,
    /// Listen backlog (capped by the kernel's somaxconn).
    #[arg(
        long = "server-listen-backlog",
        env = "TYPHA_SERVERLISTENBACKLOG",
        default_value_t = 4096
    )]
    pub server_listen_backlog: i32,
    /// Time a new connection has to send its Hello.
    #[arg(
        long = "server-handshake-timeout-secs",
        env = "TYPHA_SERVERHANDSHAKETIMEOUTSECS",
        default_value_t = 10.0
    )]
    pub server_handshake_timeout_secs: f64,
    /// Interval between pings to each client.
    #[arg(
        long = "server-ping-interval-secs",
        env = "TYPHA_SERVERPINGINTERVALSECS",
        default_value_t = 10.0
    )]
    pub server_ping_interval_secs: f64,
    /// A client that answers no ping for this long is dropped.
    #[arg(
        long = "server-pong-timeout-secs",
        env = "TYPHA_SERVERPONGTIMEOUTSECS",
        default_value_t = 60.0
    )]
    pub server_pong_timeout_secs: f64,
    /// A client that accepts no bytes for this long, while it has data pending, is dropped.
    #[arg(
        long = "server-write-timeout-secs",
        env = "TYPHA_SERVERWRITETIMEOUTSECS",
        default_value_t = 120.0
    )]
    pub server_write_timeout_secs: f64,
    /// A client whose oldest unsent batch is older than this is dropped as too slow.
    #[arg(
        long = "server-max-fall-behind-secs",
        env = "TYPHA_SERVERMAXFALLBEHINDSECS",
        default_value_t = 300.0
    )]
    pub server_max_fall_behind_secs: f64,
    /// Batches held for clients that are behind; a client further behind is dropped as too slow.
    #[arg(
        long = "server-max-backlog-batches",
        env = "TYPHA_SERVERMAXBACKLOGBATCHES",
        default_value_t = 10_000
    )]
    pub server_max_backlog_batches: usize,
    /// Encoded bytes held for clients that are behind (bounds the ring's memory).
    #[arg(long = "server-max-backlog-bytes", env = "TYPHA_SERVERMAXBACKLOGBYTES", default_value_t = 256 << 20)]
    pub server_max_backlog_bytes: usize,
    /// Largest frame a client may send, in bytes (at most 1 MiB).
    #[arg(long = "server-max-input-frame-bytes", env = "TYPHA_SERVERMAXINPUTFRAMEBYTES", default_value_t = 64 * 1024)]
    pub server_max_input_frame_bytes: usize,
    /// Connections beyond this get Goodbye(ServerFull).
    #[arg(
        long = "max-connections-upper-limit",
        env = "TYPHA_MAXCONNECTIONSUPPERLIMIT",
        default_value_t = 10_000
    )]
    pub max_connections_upper_limit: usize,
    /// Compression for snapshots and large batches (each shared frame compressed once).
    #[arg(
        long = "server-compression",
        env = "TYPHA_SERVERCOMPRESSION",
        value_enum,
        default_value = "zstd"
    )]
    pub server_compression: CompressionSetting,
    /// Batches smaller than this are sent uncompressed.
    #[arg(
        long = "server-compression-min-bytes",
        env = "TYPHA_SERVERCOMPRESSIONMINBYTES",
        default_value_t = 1024
    )]
    pub server_compression_min_bytes: usize,
    /// Target size of a snapshot chunk before compression.
    #[arg(long = "snapshot-chunk-bytes", env = "TYPHA_SNAPSHOTCHUNKBYTES", default_value_t = 256 * 1024)]
    pub snapshot_chunk_bytes: usize,
    /// An encoded snapshot is reused for new clients for this long after it was built.
    #[arg(
        long = "snapshot-reuse-secs",
        env = "TYPHA_SNAPSHOTREUSESECS",
        default_value_t = 1.0
    )]
    pub snapshot_reuse_secs: f64,
    /// Bound on the encoded bytes of all snapshots still referenced (cached or being
    /// downloaded). Beyond it a joiner shares an older snapshot or waits for downloads to
    /// finish, rather than another snapshot being built and pinned. From 1 MiB to 1 PiB.
    #[arg(
        long = "snapshot-cache-max-bytes",
        env = "TYPHA_SNAPSHOTCACHEMAXBYTES",
        default_value_t = crate::server::DEFAULT_SNAPSHOT_MAX_LIVE_BYTES
    )]
    pub snapshot_cache_max_bytes: u64,
    /// TCP keepalive: idle time before the first probe on a client socket.
    #[arg(
        long = "server-keepalive-idle-secs",
        env = "TYPHA_SERVERKEEPALIVEIDLESECS",
        default_value_t = 30.0
    )]
    pub server_keepalive_idle_secs: f64,
    /// TCP keepalive: time between probes.
    #[arg(
        long = "server-keepalive-interval-secs",
        env = "TYPHA_SERVERKEEPALIVEINTERVALSECS",
        default_value_t = 10.0
    )]
    pub server_keepalive_interval_secs: f64,
    /// TCP keepalive: unanswered probes before the kernel drops the connection.
    #[arg(
        long = "server-keepalive-count",
        env = "TYPHA_SERVERKEEPALIVECOUNT",
        default_value_t = 3
    )]
    pub server_keepalive_count: u32,
    /// TCP_USER_TIMEOUT: data unacknowledged for this long makes the kernel drop a client
    /// socket (a peer gone without FIN or RST); 0 leaves the kernel default.
    #[arg(
        long = "server-tcp-user-timeout-secs",
        env = "TYPHA_SERVERTCPUSERTIMEOUTSECS",
        default_value_t = 60.0
    )]
    pub server_tcp_user_timeout_secs: f64,

    // ---- replicas, rebalancing and shutdown (docs/rebalancing.md) ----
    /// `kubernetes`: keep this replica's share of the clients, learned from the Service's
    /// endpoints and the Node count (needs the Kubernetes datastore); `none`: only the upper
    /// limit applies.
    #[arg(
        long = "connection-rebalancing-mode",
        env = "TYPHA_CONNECTIONREBALANCINGMODE",
        value_enum,
        default_value = "none"
    )]
    pub connection_rebalancing_mode: RebalancingMode,
    /// Rebalancing never aims below this many connections.
    #[arg(
        long = "max-connections-lower-limit",
        env = "TYPHA_MAXCONNECTIONSLOWERLIMIT",
        default_value_t = 400
    )]
    pub max_connections_lower_limit: usize,
    /// Rebalancing: extra share over the node count while a replica is missing or not ready
    /// (0.2 is Typha's 120 %).
    #[arg(
        long = "connection-rebalancing-headroom",
        env = "TYPHA_CONNECTIONREBALANCINGHEADROOM",
        default_value_t = 0.2
    )]
    pub connection_rebalancing_headroom: f64,
    /// Rebalancing: once every replica is ready, aim for the even share plus this fraction;
    /// negative keeps Typha's formula only.
    #[arg(
        long = "connection-rebalancing-even-share-slack",
        env = "TYPHA_CONNECTIONREBALANCINGEVENSHARESLACK",
        default_value_t = 0.1,
        allow_negative_numbers = true
    )]
    pub connection_rebalancing_even_share_slack: f64,
    /// Above the target, one client is asked to move (Goodbye(Rebalancing)) per interval.
    #[arg(
        long = "connection-drop-interval-secs",
        env = "TYPHA_CONNECTIONDROPINTERVALSECS",
        default_value_t = 1.0
    )]
    pub connection_drop_interval_secs: f64,
    /// Rebalancing: how often to count the Service's endpoints and the Nodes.
    #[arg(
        long = "k8s-service-poll-interval-secs",
        env = "TYPHA_K8SSERVICEPOLLINTERVALSECS",
        default_value_t = 30.0
    )]
    pub k8s_service_poll_interval_secs: f64,
    /// Rebalancing: namespace of this daemon's Service.
    #[arg(
        long = "k8s-namespace",
        env = "TYPHA_K8SNAMESPACE",
        default_value = "kube-system"
    )]
    pub k8s_namespace: String,
    /// Rebalancing: this daemon's Service.
    #[arg(
        long = "k8s-service-name",
        env = "TYPHA_K8SSERVICENAME",
        default_value = "calico-typha"
    )]
    pub k8s_service_name: String,
    /// Rebalancing: the Service port's name.
    #[arg(
        long = "k8s-port-name",
        env = "TYPHA_K8SPORTNAME",
        default_value = "calico-typha"
    )]
    pub k8s_port_name: String,
    /// On SIGTERM, clients are shed one at a time over (95 % of) this long; whoever is left
    /// then gets Goodbye at once. 0 says goodbye to everyone at once.
    #[arg(
        long = "shutdown-timeout-secs",
        env = "TYPHA_SHUTDOWNTIMEOUTSECS",
        default_value_t = 300.0
    )]
    pub shutdown_timeout_secs: f64,
    /// Longest gap between two drops of a graceful shutdown.
    #[arg(
        long = "shutdown-connection-drop-interval-max-secs",
        env = "TYPHA_SHUTDOWNCONNECTIONDROPINTERVALMAXSECS",
        default_value_t = 1.0
    )]
    pub shutdown_connection_drop_interval_max_secs: f64,

    // ---- TLS (setting any of these turns TLS on and requires all but one of CN / URI SAN) ----
    /// TLS: the server's certificate (PEM, leaf first, then any intermediates).
    #[arg(long = "server-cert-file", env = "TYPHA_SERVERCERTFILE")]
    pub server_cert_file: Option<PathBuf>,
    /// TLS: the server certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long = "server-key-file", env = "TYPHA_SERVERKEYFILE")]
    pub server_key_file: Option<PathBuf>,
    /// TLS: CA bundle (PEM) that client certificates must chain to.
    #[arg(long = "ca-file", env = "TYPHA_CAFILE")]
    pub ca_file: Option<PathBuf>,
    /// TLS: a client is admitted if its certificate's Common Name is this (or see
    /// client-uri-san).
    #[arg(long = "client-cn", env = "TYPHA_CLIENTCN")]
    pub client_cn: Option<String>,
    /// TLS: a client is admitted if one of its certificate's URI SANs is this (or see
    /// client-cn).
    #[arg(long = "client-uri-san", env = "TYPHA_CLIENTURISAN")]
    pub client_uri_san: Option<String>,

    // ---- batching ----
    /// Most updates in one delta batch.
    #[arg(
        long = "snapshot-cache-max-batch-size",
        env = "TYPHA_SNAPSHOTCACHEMAXBATCHSIZE",
        default_value_t = 100
    )]
    pub snapshot_cache_max_batch_size: usize,
    /// Longest an update waits for its batch to fill.
    #[arg(
        long = "batch-max-age-secs",
        env = "TYPHA_BATCHMAXAGESECS",
        default_value_t = 0.01
    )]
    pub batch_max_age_secs: f64,
    /// Batches queued between the datastore thread and the reactor.
    #[arg(
        long = "batch-channel-capacity",
        env = "TYPHA_BATCHCHANNELCAPACITY",
        default_value_t = 1024
    )]
    pub batch_channel_capacity: usize,
    /// Most bytes of updates in one delta batch (each entry counted at its largest encoded size).
    /// It bounds what the batcher merges while the reactor is behind and the largest `Updates`
    /// frame; a driver event above it (a list chunk of many objects) is split across batches.
    #[arg(
        long = "batch-max-bytes",
        env = "TYPHA_BATCHMAXBYTES",
        default_value_t = DEFAULT_BATCH_BYTES
    )]
    pub batch_max_bytes: usize,

    // ---- health and metrics ----
    /// Serve /liveness and /readiness.
    #[arg(long = "health-enabled", env = "TYPHA_HEALTHENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub health_enabled: bool,
    #[arg(
        long = "health-host",
        env = "TYPHA_HEALTHHOST",
        default_value = "localhost"
    )]
    pub health_host: String,
    #[arg(long = "health-port", env = "TYPHA_HEALTHPORT", default_value_t = 9098)]
    pub health_port: u16,
    /// Serve /metrics (Prometheus) and /digest.
    #[arg(long = "prometheus-metrics-enabled", env = "TYPHA_PROMETHEUSMETRICSENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub prometheus_metrics_enabled: bool,
    /// Empty means all interfaces.
    #[arg(
        long = "prometheus-metrics-host",
        env = "TYPHA_PROMETHEUSMETRICSHOST",
        default_value = ""
    )]
    pub prometheus_metrics_host: String,
    #[arg(
        long = "prometheus-metrics-port",
        env = "TYPHA_PROMETHEUSMETRICSPORT",
        default_value_t = 9093
    )]
    pub prometheus_metrics_port: u16,
    /// /liveness fails when a thread has made no progress for this long.
    #[arg(
        long = "liveness-stall-secs",
        env = "TYPHA_LIVENESSSTALLSECS",
        default_value_t = 30.0
    )]
    pub liveness_stall_secs: f64,
    /// Kubernetes: /liveness fails once the API server has been unreachable (no answer to
    /// list, watch or version requests) for this long, so that Kubernetes restarts the replica.
    #[arg(
        long = "datastore-unreachable-timeout-secs",
        env = "TYPHA_DATASTOREUNREACHABLETIMEOUTSECS",
        default_value_t = 300.0
    )]
    pub datastore_unreachable_timeout_secs: f64,
    /// /readiness fails while a supervised part (a per-kind watch, the datastore driver, the
    /// snapshot encoder) has been down, restarting, for longer than this; /liveness fails once
    /// it has been down for longer than the datastore-unreachable timeout.
    #[arg(
        long = "component-down-unready-secs",
        env = "TYPHA_COMPONENTDOWNUNREADYSECS",
        default_value_t = 10.0
    )]
    pub component_down_unready_secs: f64,

    // ---- sim datastore ----
    /// Sim: nodes in the synthetic cluster.
    #[arg(long = "sim-nodes", env = "TYPHA_SIMNODES", default_value_t = 100)]
    pub sim_nodes: usize,
    /// Sim: workload endpoints (pods).
    #[arg(
        long = "sim-endpoints",
        env = "TYPHA_SIMENDPOINTS",
        default_value_t = 3000
    )]
    pub sim_endpoints: usize,
    /// Sim: namespaces.
    #[arg(
        long = "sim-namespaces",
        env = "TYPHA_SIMNAMESPACES",
        default_value_t = 20
    )]
    pub sim_namespaces: usize,
    /// Sim: policies.
    #[arg(
        long = "sim-policies",
        env = "TYPHA_SIMPOLICIES",
        default_value_t = 200
    )]
    pub sim_policies: usize,
    /// Sim: random seed; the same seed gives the same cluster and churn.
    #[arg(long = "sim-seed", env = "TYPHA_SIMSEED", default_value_t = 1)]
    pub sim_seed: u64,
    /// Sim: updates per second after the initial sync (0 for none).
    #[arg(
        long = "sim-churn-rate",
        env = "TYPHA_SIMCHURNRATE",
        default_value_t = 100.0
    )]
    pub sim_churn_rate: f64,
    /// Sim: fraction of churn that rewrites a value unchanged (exercises the no-op filter).
    #[arg(
        long = "sim-noop-fraction",
        env = "TYPHA_SIMNOOPFRACTION",
        default_value_t = 0.2
    )]
    pub sim_noop_fraction: f64,
    /// Sim: when non-zero, replace the churn by rewrites of one key with a fresh value of this
    /// many bytes (a fixed-size message stream for fan-out comparisons).
    #[arg(
        long = "sim-payload-bytes",
        env = "TYPHA_SIMPAYLOADBYTES",
        default_value_t = 0
    )]
    pub sim_payload_bytes: usize,
    /// Sim: payload rewrites per second (with --sim-payload-bytes; at most 1000).
    #[arg(
        long = "sim-payload-rate",
        env = "TYPHA_SIMPAYLOADRATE",
        default_value_t = 10.0
    )]
    pub sim_payload_rate: f64,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{0}")]
    Args(#[from] clap::Error),
    #[error("cannot read config file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {msg}")]
    FileSyntax {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("invalid setting {name}: {msg}")]
    Invalid { name: &'static str, msg: String },
}

const DEFAULT_CONFIG_FILE: &str = "/etc/calico/typha.cfg";

fn invalid(name: &'static str, msg: String) -> ConfigError {
    ConfigError::Invalid { name, msg }
}

/// Parses `Name = value` lines; returns (lower-cased name, value, line number).
pub fn parse_config_file(
    text: &str,
    path: &std::path::Path,
) -> Result<Vec<(String, String, usize)>, ConfigError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') && line.ends_with(']') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(ConfigError::FileSyntax {
                path: path.to_owned(),
                line: i + 1,
                msg: "expected `Name = value`".into(),
            });
        };
        let k = k.trim().to_ascii_lowercase();
        let k = k.strip_prefix("typha_").unwrap_or(&k).to_owned();
        out.push((k, v.trim().to_owned(), i + 1));
    }
    Ok(out)
}

/// A `--sim-*` setting with another datastore is a mistake worth stopping for: it means the
/// operator thinks the daemon serves a synthetic cluster when it watches a real one, or the
/// reverse (the default datastore used to be the sim).
fn check_sim_settings(matches: &clap::ArgMatches, cfg: &Config) -> Result<(), ConfigError> {
    if cfg.datastore_type == DatastoreType::Sim {
        return Ok(());
    }
    let given = Config::command()
        .get_arguments()
        .filter(|a| a.get_id().as_str().starts_with("sim_"))
        .find(|a| {
            matches!(
                matches.value_source(a.get_id().as_str()),
                Some(ValueSource::CommandLine) | Some(ValueSource::EnvVariable)
            )
        })
        .and_then(|a| a.get_long().map(str::to_owned));
    match given {
        Some(long) => Err(ConfigError::Invalid {
            name: "datastore-type",
            msg: format!(
                "--{long} applies only to the sim datastore; pass --datastore-type sim \
                 (TYPHA_DATASTORETYPE=sim) to run on the synthetic cluster"
            ),
        }),
        None => Ok(()),
    }
}

impl Config {
    /// Loads the settings from `args` (the first being the program name), the environment and
    /// the config file.
    pub fn load_from<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let cmd = Config::command();
        let matches = cmd.clone().try_get_matches_from(&args)?;
        let first = Config::from_arg_matches(&matches)?;
        let path = first.config_file.clone();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && matches.value_source("config_file") == Some(ValueSource::DefaultValue)
                    && path.as_os_str() == DEFAULT_CONFIG_FILE =>
            {
                check_sim_settings(&matches, &first)?;
                return first.validated();
            }
            Err(source) => return Err(ConfigError::File { path, source }),
        };
        // Map the file's names onto flags and put them before the real arguments, only for
        // settings that neither a flag nor the environment set.
        let mut from_file: Vec<OsString> = Vec::new();
        for (name, value, line) in parse_config_file(&text, &path)? {
            let arg = cmd.get_arguments().find(|a| {
                a.get_env()
                    .and_then(|e| e.to_str())
                    .and_then(|e| e.strip_prefix("TYPHA_"))
                    .is_some_and(|e| e.eq_ignore_ascii_case(&name))
            });
            let Some(arg) = arg else {
                return Err(ConfigError::FileSyntax {
                    path,
                    line,
                    msg: format!("unknown setting {name:?}"),
                });
            };
            let id = arg.get_id().as_str();
            if id == "config_file" {
                continue;
            }
            match matches.value_source(id) {
                Some(ValueSource::CommandLine) | Some(ValueSource::EnvVariable) => {}
                _ => {
                    if let Some(long) = arg.get_long() {
                        from_file.push(format!("--{long}={value}").into());
                    }
                }
            }
        }
        let mut merged = vec![args.first().cloned().unwrap_or_else(|| "typha".into())];
        merged.extend(from_file);
        merged.extend(args.into_iter().skip(1));
        let matches = cmd.try_get_matches_from(merged)?;
        let cfg = Config::from_arg_matches(&matches)?;
        check_sim_settings(&matches, &cfg)?;
        cfg.validated()
    }

    pub fn load() -> Result<Config, ConfigError> {
        Self::load_from(std::env::args_os())
    }

    fn validated(self) -> Result<Config, ConfigError> {
        // Every numeric setting, each checked under its own name. The upper bounds keep every
        // later conversion (Duration::from_secs_f64, allocations sized by a setting) in range;
        // none of them is a limit anyone should reach.
        const MAX_SECS: f64 = 1e9;
        let positive_secs = [
            (
                "server-handshake-timeout-secs",
                self.server_handshake_timeout_secs,
            ),
            ("server-ping-interval-secs", self.server_ping_interval_secs),
            ("server-pong-timeout-secs", self.server_pong_timeout_secs),
            ("server-write-timeout-secs", self.server_write_timeout_secs),
            (
                "server-max-fall-behind-secs",
                self.server_max_fall_behind_secs,
            ),
            ("batch-max-age-secs", self.batch_max_age_secs),
            ("liveness-stall-secs", self.liveness_stall_secs),
            (
                "connection-drop-interval-secs",
                self.connection_drop_interval_secs,
            ),
            (
                "k8s-service-poll-interval-secs",
                self.k8s_service_poll_interval_secs,
            ),
            (
                "shutdown-connection-drop-interval-max-secs",
                self.shutdown_connection_drop_interval_max_secs,
            ),
            (
                "datastore-unreachable-timeout-secs",
                self.datastore_unreachable_timeout_secs,
            ),
            (
                "component-down-unready-secs",
                self.component_down_unready_secs,
            ),
            (
                "server-keepalive-idle-secs",
                self.server_keepalive_idle_secs,
            ),
            (
                "server-keepalive-interval-secs",
                self.server_keepalive_interval_secs,
            ),
            (
                "k8s-missing-api-retry-secs",
                self.k8s_missing_api_retry_secs,
            ),
        ];
        for (name, v) in positive_secs {
            if !(v.is_finite() && v > 0.0 && v < MAX_SECS) {
                return Err(invalid(
                    name,
                    format!("{v} is not a positive number of seconds below {MAX_SECS:e}"),
                ));
            }
        }
        let zero_or_more = [
            ("snapshot-reuse-secs", self.snapshot_reuse_secs, MAX_SECS),
            (
                "shutdown-timeout-secs",
                self.shutdown_timeout_secs,
                MAX_SECS,
            ),
            (
                "server-tcp-user-timeout-secs",
                self.server_tcp_user_timeout_secs,
                // TCP_USER_TIMEOUT is a u32 of milliseconds.
                1e6,
            ),
            ("sim-churn-rate", self.sim_churn_rate, 1e9),
            ("sim-payload-rate", self.sim_payload_rate, 1e9),
            (
                "connection-rebalancing-headroom",
                self.connection_rebalancing_headroom,
                100.0,
            ),
        ];
        for (name, v, max) in zero_or_more {
            if !(v.is_finite() && (0.0..max).contains(&v)) {
                return Err(invalid(
                    name,
                    format!("{v} is not zero or more and below {max:e}"),
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.sim_noop_fraction) {
            return Err(invalid(
                "sim-noop-fraction",
                format!("{} is not a fraction in [0, 1]", self.sim_noop_fraction),
            ));
        }
        // Negative means Typha's formula only.
        let slack = self.connection_rebalancing_even_share_slack;
        if !(slack.is_finite() && slack < 100.0) {
            return Err(invalid(
                "connection-rebalancing-even-share-slack",
                format!("{slack} is not a number below 100 (negative turns it off)"),
            ));
        }
        const MIB: u64 = 1 << 20;
        let counts: [(&'static str, u64, u64, u64); 18] = [
            (
                "server-listen-backlog",
                self.server_listen_backlog.max(0) as u64,
                1,
                1 << 20,
            ),
            (
                "server-keepalive-count",
                self.server_keepalive_count.into(),
                1,
                127,
            ),
            (
                "server-max-input-frame-bytes",
                self.server_max_input_frame_bytes as u64,
                1,
                MAX_CLIENT_FRAME as u64,
            ),
            (
                "server-max-backlog-batches",
                self.server_max_backlog_batches as u64,
                1,
                u64::MAX,
            ),
            (
                "server-max-backlog-bytes",
                self.server_max_backlog_bytes as u64,
                1,
                u64::MAX,
            ),
            (
                "max-connections-upper-limit",
                self.max_connections_upper_limit as u64,
                1,
                1 << 24,
            ),
            (
                "snapshot-chunk-bytes",
                self.snapshot_chunk_bytes as u64,
                0,
                (MAX_SERVER_FRAME / 4) as u64,
            ),
            (
                "snapshot-cache-max-batch-size",
                self.snapshot_cache_max_batch_size as u64,
                1,
                u64::MAX,
            ),
            // Below a snapshot or so every join after the first per kind would wait; above a
            // PiB the gauge of live bytes would no longer be exact.
            (
                "snapshot-cache-max-bytes",
                self.snapshot_cache_max_bytes,
                MIB,
                1 << 50,
            ),
            // The channel's slots are allocated up front.
            (
                "batch-channel-capacity",
                self.batch_channel_capacity as u64,
                1,
                MIB,
            ),
            (
                "batch-max-bytes",
                self.batch_max_bytes as u64,
                64 * 1024,
                MAX_BATCH_BYTES as u64,
            ),
            ("sim-nodes", self.sim_nodes as u64, 0, 1 << 24),
            ("sim-endpoints", self.sim_endpoints as u64, 0, 1 << 26),
            ("sim-namespaces", self.sim_namespaces as u64, 0, 1 << 20),
            ("sim-policies", self.sim_policies as u64, 0, 1 << 20),
            (
                "sim-payload-bytes",
                self.sim_payload_bytes as u64,
                0,
                (MAX_SERVER_FRAME / 4) as u64,
            ),
            (
                "server-compression-min-bytes",
                self.server_compression_min_bytes as u64,
                0,
                u64::MAX,
            ),
            (
                "max-connections-lower-limit",
                self.max_connections_lower_limit as u64,
                0,
                1 << 24,
            ),
        ];
        for (name, v, min, max) in counts {
            if !(min..=max).contains(&v) {
                return Err(invalid(name, format!("must be between {min} and {max}")));
            }
        }
        // The lower limit only bounds a rebalancing share; without rebalancing, a small upper
        // limit (a test, a lab) must not trip over the lower limit's default.
        if self.connection_rebalancing_mode == RebalancingMode::Kubernetes
            && self.max_connections_lower_limit > self.max_connections_upper_limit
        {
            return Err(ConfigError::Invalid {
                name: "max-connections-lower-limit",
                msg: "must not exceed max-connections-upper-limit".into(),
            });
        }
        if self.connection_rebalancing_mode == RebalancingMode::Kubernetes
            && self.datastore_type != DatastoreType::Kubernetes
        {
            return Err(ConfigError::Invalid {
                name: "connection-rebalancing-mode",
                msg: "kubernetes rebalancing needs the kubernetes datastore".into(),
            });
        }
        self.tls_settings()?;
        Ok(self)
    }

    fn resolve(host: &str, port: u16, name: &'static str) -> Result<SocketAddr, ConfigError> {
        if host.is_empty() {
            return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
        }
        if host == "localhost" {
            return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
        }
        let ip: IpAddr = host
            .trim_matches(|c| c == '[' || c == ']')
            .parse()
            .map_err(|_| ConfigError::Invalid {
                name,
                msg: format!("{host:?} is not an IP address"),
            })?;
        Ok(SocketAddr::new(ip, port))
    }

    pub fn server_config(&self) -> Result<ServerConfig, ConfigError> {
        let port = if self.server_port == 0 {
            5473
        } else {
            self.server_port
        };
        let secs = Duration::from_secs_f64;
        Ok(ServerConfig {
            listen: Self::resolve(&self.server_host, port, "server-host")?,
            listen_backlog: self.server_listen_backlog,
            handshake_timeout: secs(self.server_handshake_timeout_secs),
            ping_interval: secs(self.server_ping_interval_secs),
            pong_timeout: secs(self.server_pong_timeout_secs),
            write_timeout: secs(self.server_write_timeout_secs),
            max_fall_behind: secs(self.server_max_fall_behind_secs),
            max_connections: self.max_connections_upper_limit,
            max_input_frame: self.server_max_input_frame_bytes,
            max_backlog_batches: self.server_max_backlog_batches,
            max_backlog_bytes: self.server_max_backlog_bytes,
            snapshot_reuse: secs(self.snapshot_reuse_secs),
            snapshot_chunk_bytes: self.snapshot_chunk_bytes.max(1024),
            snapshot_max_live_bytes: self.snapshot_cache_max_bytes,
            codec: self.server_compression.codec(),
            goodbye_grace: Duration::from_secs(5),
            tick: Duration::from_millis(100),
            server_id: server_id(),
            drop_interval: secs(self.connection_drop_interval_secs),
            connection_target: ConnectionTarget::default(),
            shutdown_timeout: secs(self.shutdown_timeout_secs),
            shutdown_drop_interval_max: secs(self.shutdown_connection_drop_interval_max_secs),
            keepalive_idle: secs(self.server_keepalive_idle_secs),
            keepalive_interval: secs(self.server_keepalive_interval_secs),
            keepalive_count: self.server_keepalive_count,
            tcp_user_timeout: (self.server_tcp_user_timeout_secs > 0.0)
                .then(|| secs(self.server_tcp_user_timeout_secs)),
            tls: self.tls_settings()?,
        })
    }

    /// The replica counter's settings in Kubernetes rebalancing mode. Its target cell is
    /// connected to the reactor's by [`Daemon::start`](crate::daemon::Daemon::start).
    pub fn rebalance_config(&self) -> Option<RebalanceConfig> {
        (self.connection_rebalancing_mode == RebalancingMode::Kubernetes).then(|| RebalanceConfig {
            params: TargetParams {
                lower: self.max_connections_lower_limit,
                upper: self.max_connections_upper_limit,
                headroom: self.connection_rebalancing_headroom,
                even_share_slack: (self.connection_rebalancing_even_share_slack >= 0.0)
                    .then_some(self.connection_rebalancing_even_share_slack),
            },
            namespace: self.k8s_namespace.clone(),
            service: self.k8s_service_name.clone(),
            port_name: self.k8s_port_name.clone(),
            poll_interval: Duration::from_secs_f64(self.k8s_service_poll_interval_secs),
            target: ConnectionTarget::default(),
        })
    }

    /// The TLS settings, if any is set. As in Typha, setting any one requires the certificate,
    /// key and CA files and at least one of the client CN and URI SAN; empty counts as unset.
    pub fn tls_settings(&self) -> Result<Option<TlsSettings>, ConfigError> {
        let path = |p: &Option<PathBuf>| p.clone().filter(|p| !p.as_os_str().is_empty());
        let text = |t: &Option<String>| t.clone().filter(|t| !t.is_empty());
        let (cert, key, ca) = (
            path(&self.server_cert_file),
            path(&self.server_key_file),
            path(&self.ca_file),
        );
        let (cn, uri) = (text(&self.client_cn), text(&self.client_uri_san));
        if cert.is_none() && key.is_none() && ca.is_none() && cn.is_none() && uri.is_none() {
            return Ok(None);
        }
        let mut missing = Vec::new();
        for (set, name) in [
            (cert.is_some(), "TYPHA_SERVERCERTFILE"),
            (key.is_some(), "TYPHA_SERVERKEYFILE"),
            (ca.is_some(), "TYPHA_CAFILE"),
            (
                cn.is_some() || uri.is_some(),
                "TYPHA_CLIENTCN or TYPHA_CLIENTURISAN",
            ),
        ] {
            if !set {
                missing.push(name);
            }
        }
        match (cert, key, ca) {
            (Some(cert_file), Some(key_file), Some(ca_file)) if missing.is_empty() => {
                Ok(Some(TlsSettings {
                    cert_file,
                    key_file,
                    ca_file,
                    client_cn: cn,
                    client_uri_san: uri,
                    reload_interval: Duration::from_secs(5),
                }))
            }
            _ => Err(ConfigError::Invalid {
                name: "tls",
                msg: format!(
                    "incomplete TLS configuration: with any TLS setting given, all must be, \
                     except that one of the client CN and URI SAN may be left out; missing: {}",
                    missing.join(", ")
                ),
            }),
        }
    }

    pub fn datastore_config(&self) -> Result<DatastoreThreadConfig, ConfigError> {
        let driver = match self.datastore_type {
            DatastoreType::Sim => DriverConfig::Sim(SimConfig {
                nodes: self.sim_nodes,
                endpoints: self.sim_endpoints,
                namespaces: self.sim_namespaces.max(1),
                policies: self.sim_policies,
                seed: self.sim_seed,
                churn_rate: self.sim_churn_rate,
                noop_fraction: self.sim_noop_fraction,
                payload_bytes: self.sim_payload_bytes,
                payload_rate: self.sim_payload_rate,
            }),
            DatastoreType::Kubernetes => DriverConfig::Kubernetes(KubernetesConfig {
                kubeconfig: self.kubeconfig.clone(),
                missing_api_retry: Duration::from_secs_f64(self.k8s_missing_api_retry_secs),
                rebalance: self.rebalance_config(),
                // Several probes per timeout, so one lost answer does not fail liveness.
                probe_interval: Duration::from_secs_f64(
                    (self.datastore_unreachable_timeout_secs / 4.0).clamp(0.1, 10.0),
                ),
                ..KubernetesConfig::default()
            }),
        };
        Ok(DatastoreThreadConfig {
            driver,
            limits: BatchLimits {
                max_updates: self.snapshot_cache_max_batch_size,
                max_age: Duration::from_secs_f64(self.batch_max_age_secs),
                max_bytes: self.batch_max_bytes,
            },
            encode: EncodeOptions {
                codec: self.server_compression.codec(),
                compress_min_bytes: self.server_compression_min_bytes,
                snapshot_chunk_bytes: self.snapshot_chunk_bytes.max(1024),
            },
            health_listen: self
                .health_enabled
                .then(|| Self::resolve(&self.health_host, self.health_port, "health-host"))
                .transpose()?,
            metrics_listen: self
                .prometheus_metrics_enabled
                .then(|| {
                    Self::resolve(
                        &self.prometheus_metrics_host,
                        self.prometheus_metrics_port,
                        "prometheus-metrics-host",
                    )
                })
                .transpose()?,
            liveness_stall: Duration::from_secs_f64(self.liveness_stall_secs),
            datastore_unreachable: Duration::from_secs_f64(self.datastore_unreachable_timeout_secs),
            component_down_unready: Duration::from_secs_f64(self.component_down_unready_secs),
        })
    }
}

/// Identifies this daemon to clients: host name and process id.
fn server_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    format!("{host}/{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load(args: &[&str]) -> Result<Config, ConfigError> {
        let mut v = vec!["typha"];
        v.extend_from_slice(args);
        Config::load_from(v)
    }

    #[test]
    fn defaults_match_typha_where_shared() {
        let c = load(&["--config-file", "/nonexistent/typha-rs-test.cfg"]);
        assert!(
            matches!(c, Err(ConfigError::File { .. })),
            "an explicit missing file is an error"
        );
        let c = load(&[]).unwrap();
        // Every Calico manifest sets kubernetes; a replica that lost the setting must not serve
        // the synthetic cluster.
        assert_eq!(c.datastore_type, DatastoreType::Kubernetes);
        assert_eq!(c.server_port, 5473);
        assert_eq!(c.server_ping_interval_secs, 10.0);
        assert_eq!(c.server_pong_timeout_secs, 60.0);
        assert_eq!(c.server_handshake_timeout_secs, 10.0);
        assert_eq!(c.server_write_timeout_secs, 120.0);
        assert_eq!(c.snapshot_cache_max_batch_size, 100);
        assert_eq!(c.max_connections_upper_limit, 10_000);
        assert_eq!(c.health_port, 9098);
        assert_eq!(c.prometheus_metrics_port, 9093);
        assert_eq!(c.connection_rebalancing_mode, RebalancingMode::None);
        assert_eq!(c.max_connections_lower_limit, 400);
        assert_eq!(c.connection_drop_interval_secs, 1.0);
        assert_eq!(c.k8s_service_poll_interval_secs, 30.0);
        assert_eq!(
            (c.k8s_namespace.as_str(), c.k8s_service_name.as_str()),
            ("kube-system", "calico-typha")
        );
        assert_eq!(c.k8s_port_name, "calico-typha");
        assert_eq!(c.shutdown_timeout_secs, 300.0);
        assert_eq!(c.shutdown_connection_drop_interval_max_secs, 1.0);
        assert!(c.rebalance_config().is_none());
        let k = load(&[
            "--datastore-type=kubernetes",
            "--connection-rebalancing-mode=kubernetes",
            "--connection-rebalancing-even-share-slack=-1",
        ])
        .unwrap()
        .rebalance_config()
        .unwrap();
        assert_eq!(k.params.even_share_slack, None);
        assert_eq!((k.params.lower, k.params.upper), (400, 10_000));
        assert_eq!(c.datastore_unreachable_timeout_secs, 300.0);
        let s = c.server_config().unwrap();
        assert_eq!(s.keepalive_idle, Duration::from_secs(30));
        assert_eq!(s.keepalive_interval, Duration::from_secs(10));
        assert_eq!(s.keepalive_count, 3);
        assert_eq!(s.tcp_user_timeout, Some(Duration::from_secs(60)));
        let c0 = load(&["--server-tcp-user-timeout-secs=0"]).unwrap();
        assert_eq!(c0.server_config().unwrap().tcp_user_timeout, None);
        assert_eq!(s.listen.port(), 5473);
        assert!(s.listen.ip().is_unspecified());
    }

    #[test]
    fn file_fills_in_below_flags() {
        let dir = std::env::temp_dir().join(format!("typha-rs-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("typha.cfg");
        let mut f = std::fs::File::create(&path).unwrap();
        writeln!(f, "[global]\n# comment\nServerPort = 6000\nServerPingIntervalSecs = 3.5\nTYPHA_SIMNODES=7").unwrap();
        drop(f);
        let p = path.to_str().unwrap();
        let c = load(&["-c", p, "--server-port", "7000", "--datastore-type", "sim"]).unwrap();
        assert_eq!(c.server_port, 7000, "a flag beats the file");
        assert_eq!(
            c.server_ping_interval_secs, 3.5,
            "the file beats the default"
        );
        assert_eq!(c.sim_nodes, 7);

        std::fs::write(&path, "NoSuchSetting = 1\n").unwrap();
        assert!(matches!(
            load(&["-c", p]),
            Err(ConfigError::FileSyntax { line: 1, .. })
        ));
        std::fs::write(&path, "just words\n").unwrap();
        assert!(matches!(
            load(&["-c", p]),
            Err(ConfigError::FileSyntax { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(load(&["--server-ping-interval-secs", "0"]).is_err());
        assert!(load(&["--server-ping-interval-secs", "abc"]).is_err());
        assert!(load(&["--server-max-input-frame-bytes", "99999999"]).is_err());
        assert!(load(&["--datastore-type", "etcdv3"]).is_err());
        assert!(load(&["--k8s-missing-api-retry-secs=0"]).is_err());
        assert!(load(&[
            "--datastore-type=sim",
            "--connection-rebalancing-mode=kubernetes"
        ])
        .is_err());
        assert!(load(&[
            "--datastore-type=kubernetes",
            "--connection-rebalancing-mode=kubernetes",
            "--max-connections-lower-limit=20000",
        ])
        .is_err());
        // Without rebalancing the lower limit means nothing: a small upper limit is fine.
        assert!(load(&["--max-connections-upper-limit", "100"]).is_ok());
        assert!(load(&["--shutdown-timeout-secs=-1"]).is_err());
        assert!(load(&["--connection-drop-interval-secs=0"]).is_err());
        assert!(load(&["--datastore-unreachable-timeout-secs=0"]).is_err());
        assert!(load(&["--server-keepalive-count=0"]).is_err());
        assert!(load(&["--server-tcp-user-timeout-secs=-1"]).is_err());
        assert!(load(&["--server-host", "not-an-ip"])
            .unwrap()
            .server_config()
            .is_err());
    }

    /// The long names of every setting whose default is a number.
    fn numeric_settings() -> Vec<String> {
        Config::command()
            .get_arguments()
            .filter(|a| {
                a.get_default_values()
                    .first()
                    .and_then(|v| v.to_str())
                    .is_some_and(|v| v.parse::<f64>().is_ok())
            })
            .filter_map(|a| a.get_long().map(str::to_owned))
            .collect()
    }

    /// Loads with `--name=value`: it may be refused, by the parser or under `name` itself, but
    /// an accepted value must convert into every component's settings without panicking.
    fn load_one(name: &str, value: &str) {
        let flag = format!("--{name}={value}");
        match load(&["--datastore-type=sim", &flag]) {
            Ok(c) => {
                let _ = c.server_config();
                let _ = c.datastore_config();
                let _ = c.rebalance_config();
            }
            Err(ConfigError::Invalid { name: n, msg }) => {
                assert_eq!(n, name, "{flag} refused under another name: {msg}")
            }
            Err(ConfigError::Args(_)) => {}
            Err(e) => panic!("{flag}: unexpected {e}"),
        }
    }

    #[test]
    fn every_numeric_setting_is_range_checked_under_its_own_name() {
        let settings = numeric_settings();
        assert!(settings.len() > 40, "{settings:?}");
        for name in &settings {
            for v in [
                "NaN",
                "nan",
                "inf",
                "-inf",
                "-1",
                "0",
                "-0",
                "1e-300",
                "1e300",
                "1e9",
                "4294967296",
                "18446744073709551615",
                "99999999999999999999999",
                "-1e300",
            ] {
                load_one(name, v);
            }
        }
        let named = |args: &[&str]| match load(args) {
            Err(ConfigError::Invalid { name, .. }) => name,
            other => panic!("{args:?}: {other:?}"),
        };
        // These used to panic (Duration::from_secs_f64) or to name another setting.
        assert_eq!(
            named(&["--snapshot-reuse-secs=1e300"]),
            "snapshot-reuse-secs"
        );
        assert_eq!(
            named(&["--batch-channel-capacity=0"]),
            "batch-channel-capacity"
        );
        assert_eq!(
            named(&["--snapshot-cache-max-batch-size=0"]),
            "snapshot-cache-max-batch-size"
        );
        assert_eq!(
            named(&["--datastore-type=sim", "--sim-churn-rate=-1"]),
            "sim-churn-rate"
        );
        assert_eq!(
            named(&["--connection-rebalancing-even-share-slack=NaN"]),
            "connection-rebalancing-even-share-slack"
        );
        assert_eq!(named(&["--batch-max-bytes=100"]), "batch-max-bytes");
        assert_eq!(
            named(&["--server-listen-backlog=-5"]),
            "server-listen-backlog"
        );
    }

    fn value() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            any::<f64>().prop_map(|f| f.to_string()),
            any::<u64>().prop_map(|v| v.to_string()),
            any::<i64>().prop_map(|v| v.to_string()),
            "[-+]?[0-9]{0,25}(\\.[0-9]{0,6})?([eE][-+]?[0-9]{1,3})?",
            "\\PC{0,12}",
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        #[test]
        fn no_numeric_setting_value_panics(
            which in proptest::prelude::any::<proptest::sample::Index>(),
            v in value(),
        ) {
            let settings = numeric_settings();
            load_one(which.get(&settings).as_str(), &v);
        }
    }

    #[test]
    fn tls_settings_are_all_or_nothing_as_in_typha() {
        let c = load(&[]).unwrap();
        assert_eq!(c.server_config().unwrap().tls, None);
        let full = [
            "--server-cert-file=/c.pem",
            "--server-key-file=/k.pem",
            "--ca-file=/ca.pem",
        ];
        // Certificate, key and CA, plus a CN or a URI SAN (or both).
        for extra in [
            &["--client-cn=felix"][..],
            &["--client-uri-san=spiffe://x/felix"][..],
            &["--client-cn=felix", "--client-uri-san=spiffe://x/felix"][..],
        ] {
            let mut args = full.to_vec();
            args.extend_from_slice(extra);
            let tls = load(&args).unwrap().server_config().unwrap().tls.unwrap();
            assert_eq!(tls.cert_file, PathBuf::from("/c.pem"));
            assert_eq!(tls.ca_file, PathBuf::from("/ca.pem"));
            assert!(tls.client_cn.is_some() || tls.client_uri_san.is_some());
        }
        // Neither CN nor URI SAN.
        let e = load(&full).unwrap_err().to_string();
        assert!(e.contains("TYPHA_CLIENTCN or TYPHA_CLIENTURISAN"), "{e}");
        // Any one setting alone turns TLS on and names what is missing.
        let e = load(&["--client-cn=felix"]).unwrap_err().to_string();
        assert!(
            e.contains("TYPHA_SERVERCERTFILE")
                && e.contains("TYPHA_SERVERKEYFILE")
                && e.contains("TYPHA_CAFILE"),
            "{e}"
        );
        let e = load(&["--ca-file=/ca.pem", "--client-cn=felix"])
            .unwrap_err()
            .to_string();
        assert!(
            !e.contains("TYPHA_CAFILE") && e.contains("TYPHA_SERVERKEYFILE"),
            "{e}"
        );
        // Empty values count as unset, as Typha's empty defaults do.
        assert!(load(&["--client-cn="])
            .unwrap()
            .tls_settings()
            .unwrap()
            .is_none());
        // Typha's config-file names work too.
        let dir = std::env::temp_dir().join(format!("typha-rs-tls-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("typha.cfg");
        std::fs::write(
            &path,
            "[global]\nServerCertFile = /c.pem\nServerKeyFile = /k.pem\nCAFile = /ca.pem\n\
             ClientURISAN = spiffe://x/felix\n",
        )
        .unwrap();
        let tls = load(&["-c", path.to_str().unwrap()])
            .unwrap()
            .tls_settings()
            .unwrap()
            .unwrap();
        assert_eq!(tls.key_file, PathBuf::from("/k.pem"));
        assert_eq!(tls.client_uri_san.as_deref(), Some("spiffe://x/felix"));
        assert_eq!(tls.client_cn, None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
