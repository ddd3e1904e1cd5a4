//! `typha-loadtest run`: its flags, and their validation into a [`RunConfig`].

use crate::driver::Role;
use crate::session::Protocol;
use clap::ValueEnum;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use typha::model::SyncerType;
use typha::proto::Codec;
use typha_loadtest_common::loopback::parse_loopback_addr;
use typha_loadtest_common::MAX_DURATION_SECS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Compression {
    Zstd,
    Lz4,
    Snappy,
    /// Offer no codec: everything arrives uncompressed.
    None,
}

impl Compression {
    pub fn codecs(self) -> Vec<Codec> {
        match self {
            Compression::Zstd => vec![Codec::Zstd],
            Compression::Lz4 => vec![Codec::Lz4],
            Compression::Snappy => vec![Codec::Snappy],
            Compression::None => Vec::new(),
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The daemon's protocol address. Loopback only (127.0.0.0/8 or ::1): the harness is meant
    /// to run beside the daemon it measures.
    #[arg(long, default_value = "127.0.0.1:5473")]
    pub addr: String,
    /// Clients to connect.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Syncer type the clients ask for (felix, bgp, tunnel-ip-allocation, node-status).
    #[arg(long, default_value = "felix")]
    pub syncer: String,
    /// Compression the clients offer (native protocol; Felix-protocol clients offer snappy, as
    /// Felix does).
    #[arg(long, value_enum, default_value = "zstd")]
    pub compression: Compression,
    /// The protocol the clients speak: typha-rs' own (native), or Typha's as Calico's Felix
    /// speaks it (typha). Felix-protocol clients carry no sequence numbers: the full-map ones
    /// are verified against the daemon's /digest history, the others by reaching in-sync and
    /// decoding every message.
    #[arg(long, value_enum, default_value = "native")]
    pub protocol: Protocol,
    /// Client threads, each with its own poll loop.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Length of the run in seconds, counted from the first connect; the run then stops.
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// New connections per second; 0 connects every client at once (a reconnect storm).
    #[arg(long, default_value_t = 1000.0)]
    pub ramp_per_sec: f64,
    /// The first K clients keep their full map (verified against the daemon's /digest at the
    /// end); the others track sequence numbers only.
    #[arg(long, default_value_t = 10)]
    pub full_maps: usize,
    /// The daemon's process id: its CPU time and RSS are sampled at start and end.
    #[arg(long)]
    pub target_pid: Option<u32>,
    /// The daemon's metrics/HTTP address (loopback only), for /metrics deltas and the /digest
    /// verification of the full-map clients.
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// Print one JSON object on stdout at the end instead of the summary, and no progress lines.
    #[arg(long)]
    pub json: bool,
    /// Fraction (0..1) of the clients that are not full-map clients which read slowly, at most
    /// --slow-bytes-per-sec each.
    #[arg(long, default_value_t = 0.0)]
    pub slow_fraction: f64,
    /// Read rate of the slow clients.
    #[arg(long, default_value_t = 65536)]
    pub slow_bytes_per_sec: u64,
    /// Fraction (0..1) of the clients that are not full-map clients which connect, send their
    /// Hello and never read (the daemon is expected to drop them as too slow; not a failure).
    #[arg(long, default_value_t = 0.0)]
    pub stalled_fraction: f64,
    /// Kill this many random connected clients per second (abrupt close with a reset); each
    /// reconnects after a random delay up to --restart-delay and must resync and verify.
    /// Full-map and stalled clients are never killed.
    #[arg(long, default_value_t = 0.0)]
    pub kill_rate: f64,
    /// Longest delay (seconds) before a killed client reconnects.
    #[arg(long, default_value_t = 1.0)]
    pub restart_delay: f64,
    /// At the end, list every watched kind from the Kubernetes API server of --kubeconfig,
    /// translate it and compare its digest with the daemon's newest /digest (needs
    /// --metrics-addr; run it after the churn has stopped).
    #[arg(long, requires = "kubeconfig")]
    pub verify_datastore: bool,
    /// Kubeconfig of the daemon's API server (loopback only), for --verify-datastore.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Connect every client over TLS: the CA bundle (PEM) the daemon's certificate must chain
    /// to. With any TLS flag given, --ca-file, --cert-file, --key-file and one of --server-cn
    /// and --server-uri-san are required (as Felix's TyphaCAFile etc.).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// The clients' certificate (PEM), presented to the daemon.
    #[arg(long)]
    pub cert_file: Option<PathBuf>,
    /// The clients' private key (PEM).
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// The daemon is accepted if its certificate's CN is this...
    #[arg(long)]
    pub server_cn: Option<String>,
    /// ...or one of its URI SANs is this.
    #[arg(long)]
    pub server_uri_san: Option<String>,
}

/// A validated `run`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunConfig {
    pub addr: SocketAddr,
    pub clients: usize,
    pub syncer: SyncerType,
    pub compression: Compression,
    pub protocol: Protocol,
    pub threads: usize,
    pub duration: Duration,
    pub ramp_per_sec: f64,
    pub full_maps: usize,
    pub target_pid: Option<u32>,
    pub metrics_addr: Option<SocketAddr>,
    pub json: bool,
    pub slow_fraction: f64,
    pub slow_bytes_per_sec: u64,
    pub stalled_fraction: f64,
    pub kill_rate: f64,
    pub restart_delay: Duration,
    /// `--verify-datastore --kubeconfig PATH`.
    pub verify_datastore: Option<PathBuf>,
    /// `--ca-file` and the rest: every client connects over TLS.
    pub tls: Option<typha::client::tls::ClientTlsOptions>,
}

/// Largest client count accepted (far beyond what one host can open).
pub const MAX_CLIENTS: usize = 1_000_000;
pub const MAX_THREADS: usize = 256;
impl RunArgs {
    /// The TLS flags: none, or all of them (one of the server CN and URI SAN may be left out);
    /// empty counts as unset.
    fn tls_options(&self) -> Result<Option<typha::client::tls::ClientTlsOptions>, String> {
        let path = |p: &Option<PathBuf>| p.clone().filter(|p| !p.as_os_str().is_empty());
        let text = |t: &Option<String>| t.clone().filter(|t| !t.is_empty());
        let (ca, cert, key) = (
            path(&self.ca_file),
            path(&self.cert_file),
            path(&self.key_file),
        );
        let (cn, uri) = (text(&self.server_cn), text(&self.server_uri_san));
        if ca.is_none() && cert.is_none() && key.is_none() && cn.is_none() && uri.is_none() {
            return Ok(None);
        }
        let missing: Vec<&str> = [
            (ca.is_some(), "--ca-file"),
            (cert.is_some(), "--cert-file"),
            (key.is_some(), "--key-file"),
            (
                cn.is_some() || uri.is_some(),
                "--server-cn or --server-uri-san",
            ),
        ]
        .into_iter()
        .filter(|(set, _)| !set)
        .map(|(_, name)| name)
        .collect();
        match ca {
            Some(ca_file) if missing.is_empty() => Ok(Some(typha::client::tls::ClientTlsOptions {
                ca_file,
                cert_file: cert,
                key_file: key,
                server_cn: cn,
                server_uri_san: uri,
            })),
            _ => Err(format!(
                "incomplete TLS flags: with any TLS flag given, --ca-file, --cert-file, \
                 --key-file and one of --server-cn and --server-uri-san are needed; missing: {}",
                missing.join(", ")
            )),
        }
    }

    pub fn validate(&self) -> Result<RunConfig, String> {
        let addr = parse_loopback_addr("--addr", &self.addr)?;
        let metrics_addr = self
            .metrics_addr
            .as_deref()
            .map(|m| parse_loopback_addr("--metrics-addr", m))
            .transpose()?;
        if self.clients == 0 || self.clients > MAX_CLIENTS {
            return Err(format!("--clients must be between 1 and {MAX_CLIENTS}"));
        }
        let syncer = SyncerType::parse(&self.syncer).ok_or_else(|| {
            format!(
                "--syncer {:?} is not a syncer type (felix, bgp, tunnel-ip-allocation, node-status)",
                self.syncer
            )
        })?;
        if self.threads == 0 || self.threads > MAX_THREADS {
            return Err(format!("--threads must be between 1 and {MAX_THREADS}"));
        }
        if !(self.duration.is_finite() && self.duration > 0.0 && self.duration <= MAX_DURATION_SECS)
        {
            return Err(format!(
                "--duration must be more than 0 and at most {MAX_DURATION_SECS} seconds"
            ));
        }
        if !(self.ramp_per_sec.is_finite() && self.ramp_per_sec >= 0.0) {
            return Err("--ramp-per-sec must be 0 (all at once) or a positive rate".into());
        }
        if self.target_pid == Some(0) {
            return Err("--target-pid 0 is not a process".into());
        }
        for (flag, f) in [
            ("--slow-fraction", self.slow_fraction),
            ("--stalled-fraction", self.stalled_fraction),
        ] {
            if !(f.is_finite() && (0.0..=1.0).contains(&f)) {
                return Err(format!("{flag} must be between 0 and 1"));
            }
        }
        if self.slow_fraction + self.stalled_fraction > 1.0 {
            return Err("--slow-fraction plus --stalled-fraction must be at most 1".into());
        }
        if self.slow_bytes_per_sec == 0 {
            return Err("--slow-bytes-per-sec must be positive".into());
        }
        if !(self.kill_rate.is_finite() && self.kill_rate >= 0.0) {
            return Err("--kill-rate must be 0 (none) or a positive rate".into());
        }
        if !(self.restart_delay.is_finite()
            && self.restart_delay >= 0.0
            && self.restart_delay <= MAX_DURATION_SECS)
        {
            return Err(format!(
                "--restart-delay must be between 0 and {MAX_DURATION_SECS} seconds"
            ));
        }
        if self.verify_datastore && metrics_addr.is_none() {
            return Err("--verify-datastore needs --metrics-addr (the daemon's /digest)".into());
        }
        let tls = self.tls_options()?;
        Ok(RunConfig {
            addr,
            tls,
            clients: self.clients,
            syncer,
            compression: self.compression,
            protocol: self.protocol,
            // More threads than clients would leave threads with nothing to do.
            threads: self.threads.min(self.clients),
            duration: Duration::from_secs_f64(self.duration),
            ramp_per_sec: self.ramp_per_sec,
            full_maps: self.full_maps.min(self.clients),
            target_pid: self.target_pid,
            metrics_addr,
            json: self.json,
            slow_fraction: self.slow_fraction,
            slow_bytes_per_sec: self.slow_bytes_per_sec,
            stalled_fraction: self.stalled_fraction,
            kill_rate: self.kill_rate,
            restart_delay: Duration::from_secs_f64(self.restart_delay),
            verify_datastore: self
                .verify_datastore
                .then(|| self.kubeconfig.clone())
                .flatten(),
        })
    }
}

impl RunConfig {
    /// What client `i` does. The first `--full-maps` are the full-map references; among the
    /// rest, stalled and slow clients are spread evenly (by a low-discrepancy sequence) so that
    /// a ramp meets them throughout.
    pub fn role(&self, i: usize) -> Role {
        if i < self.full_maps {
            return Role::Full;
        }
        let u = ((i - self.full_maps) as f64 * 0.618_033_988_749_895).fract();
        if u < self.stalled_fraction {
            Role::Stalled
        } else if u < self.stalled_fraction + self.slow_fraction {
            Role::Slow
        } else {
            Role::DigestOnly
        }
    }

    /// The scenario flags in effect, for the report.
    pub fn scenario(&self) -> Vec<String> {
        let mut v = vec![if self.ramp_per_sec == 0.0 {
            "reconnect storm (--ramp-per-sec 0)".to_owned()
        } else {
            format!("ramp --ramp-per-sec {}", self.ramp_per_sec)
        }];
        if self.slow_fraction > 0.0 {
            v.push(format!(
                "--slow-fraction {} --slow-bytes-per-sec {}",
                self.slow_fraction, self.slow_bytes_per_sec
            ));
        }
        if self.stalled_fraction > 0.0 {
            v.push(format!("--stalled-fraction {}", self.stalled_fraction));
        }
        if self.kill_rate > 0.0 {
            v.push(format!(
                "--kill-rate {} --restart-delay {}",
                self.kill_rate,
                self.restart_delay.as_secs_f64()
            ));
        }
        v
    }

    /// When client `i` connects, relative to the start of the run.
    pub fn connect_offset(&self, i: usize) -> Duration {
        if self.ramp_per_sec == 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(i as f64 / self.ramp_per_sec)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The `run` subcommand's flags on their own.
    #[derive(Debug, Parser)]
    struct RunCli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn args(extra: &[&str]) -> Result<RunConfig, String> {
        let mut v = vec!["run"];
        v.extend_from_slice(extra);
        RunCli::try_parse_from(v)
            .map_err(|e| e.to_string())?
            .run
            .validate()
    }

    #[test]
    fn tls_flags_are_all_or_nothing() {
        assert_eq!(args(&[]).unwrap().tls, None);
        let full = [
            "--ca-file",
            "/ca.pem",
            "--cert-file",
            "/c.pem",
            "--key-file",
            "/k.pem",
            "--server-cn",
            "typha-server",
        ];
        let tls = args(&full).unwrap().tls.unwrap();
        assert_eq!(tls.ca_file, PathBuf::from("/ca.pem"));
        assert_eq!(tls.cert_file, Some(PathBuf::from("/c.pem")));
        assert_eq!(tls.key_file, Some(PathBuf::from("/k.pem")));
        assert_eq!(tls.server_cn.as_deref(), Some("typha-server"));
        assert_eq!(tls.server_uri_san, None);
        // The URI SAN alone identifies the server too.
        let mut by_uri = full[..6].to_vec();
        by_uri.extend(["--server-uri-san", "spiffe://x/typha"]);
        let tls = args(&by_uri).unwrap().tls.unwrap();
        assert_eq!(tls.server_uri_san.as_deref(), Some("spiffe://x/typha"));
        assert_eq!(tls.server_cn, None);
        // Any one flag missing is named.
        for (drop, name) in [
            (0, "--ca-file"),
            (2, "--cert-file"),
            (4, "--key-file"),
            (6, "--server-cn or --server-uri-san"),
        ] {
            let mut a = full.to_vec();
            a.drain(drop..drop + 2);
            let e = args(&a).unwrap_err();
            assert!(
                e.contains("incomplete TLS flags") && e.contains(name),
                "{e}"
            );
        }
        let e = args(&["--server-cn", "x"]).unwrap_err();
        assert!(e.contains("--ca-file, --cert-file, --key-file"), "{e}");
    }

    #[test]
    fn defaults() {
        let c = args(&[]).unwrap();
        assert_eq!(c.addr, "127.0.0.1:5473".parse().unwrap());
        assert_eq!(c.clients, 1000);
        assert_eq!(c.syncer, SyncerType::Felix);
        assert_eq!(c.compression, Compression::Zstd);
        assert_eq!(c.protocol, Protocol::Native);
        assert_eq!(
            args(&["--protocol", "typha"]).unwrap().protocol,
            Protocol::Typha
        );
        assert!(args(&["--protocol", "gob"]).is_err());
        assert_eq!(c.threads, 2);
        assert_eq!(c.duration, Duration::from_secs(30));
        assert_eq!(c.full_maps, 10);
        assert_eq!(c.target_pid, None);
        assert_eq!(c.metrics_addr, None);
        assert!(!c.json);
        assert_eq!(
            (c.slow_fraction, c.stalled_fraction, c.kill_rate),
            (0.0, 0.0, 0.0)
        );
        assert_eq!(c.scenario(), ["ramp --ramp-per-sec 1000"]);
    }

    #[test]
    fn scenario_flags() {
        let c = args(&[
            "--clients",
            "1000",
            "--full-maps",
            "10",
            "--slow-fraction",
            "0.2",
            "--stalled-fraction",
            "0.1",
            "--kill-rate",
            "5",
            "--restart-delay",
            "0.5",
            "--ramp-per-sec",
            "0",
        ])
        .unwrap();
        use crate::driver::Role;
        let count = |r: Role| (0..1000).filter(|&i| c.role(i) == r).count();
        assert_eq!(count(Role::Full), 10);
        assert!(
            (90..=108).contains(&count(Role::Stalled)),
            "{}",
            count(Role::Stalled)
        );
        assert!(
            (188..=208).contains(&count(Role::Slow)),
            "{}",
            count(Role::Slow)
        );
        assert_eq!(c.restart_delay, Duration::from_millis(500));
        assert_eq!(c.scenario().len(), 4);
        assert!(c.scenario()[0].contains("storm"));
        for bad in [
            ["--slow-fraction", "1.5"],
            ["--stalled-fraction", "-0.1"],
            ["--kill-rate", "-1"],
            ["--restart-delay", "NaN"],
            ["--slow-bytes-per-sec", "0"],
        ] {
            assert!(args(&bad).is_err(), "{bad:?}");
        }
        assert!(args(&["--slow-fraction", "0.6", "--stalled-fraction", "0.6"]).is_err());
        assert!(args(&["--verify-datastore"]).is_err());
        assert!(args(&["--verify-datastore", "--kubeconfig", "kc"])
            .unwrap_err()
            .contains("--metrics-addr"));
        let c = args(&[
            "--verify-datastore",
            "--kubeconfig",
            "kc",
            "--metrics-addr",
            "127.0.0.1:9093",
        ])
        .unwrap();
        assert_eq!(c.verify_datastore, Some(PathBuf::from("kc")));
        assert_eq!(
            args(&["--kubeconfig", "kc"]).unwrap().verify_datastore,
            None
        );
    }

    #[test]
    fn loopback_is_required() {
        for ok in ["127.0.0.1:1", "127.1.2.3:5473", "[::1]:5473"] {
            assert!(parse_loopback_addr("--addr", ok).is_ok(), "{ok}");
        }
        for bad in [
            "10.0.0.1:5473",
            "0.0.0.0:5473",
            "192.168.1.1:5473",
            "[::]:5473",
            "[::ffff:127.0.0.1]:5473",
            "[2001:db8::1]:5473",
            "128.0.0.1:5473",
        ] {
            let e = parse_loopback_addr("--addr", bad).unwrap_err();
            assert!(e.contains("loopback"), "{bad}: {e}");
        }
        let e = args(&["--addr", "10.1.2.3:5473"]).unwrap_err();
        assert!(
            e.contains("--addr 10.1.2.3:5473") && e.contains("loopback"),
            "{e}"
        );
        let e = args(&["--metrics-addr", "8.8.8.8:9093"]).unwrap_err();
        assert!(
            e.contains("--metrics-addr") && e.contains("loopback"),
            "{e}"
        );
        assert!(args(&["--addr", "localhost:5473"])
            .unwrap_err()
            .contains("IP:PORT"));
        assert!(args(&["--addr", "127.0.0.1"]).is_err());
        assert!(args(&["--addr", "127.0.0.1:0"])
            .unwrap_err()
            .contains("port 0"));
        let c = args(&["--addr", "[::1]:25473", "--metrics-addr", "127.0.0.1:29093"]).unwrap();
        assert_eq!(c.metrics_addr, Some("127.0.0.1:29093".parse().unwrap()));
    }

    #[test]
    fn ranges_are_checked() {
        assert!(args(&["--clients", "0"]).is_err());
        assert!(args(&["--threads", "0"]).is_err());
        assert!(args(&["--duration", "0"]).is_err());
        assert!(args(&["--duration", "-1"]).is_err());
        assert!(args(&["--duration", "inf"]).is_err());
        assert!(args(&["--duration", "NaN"]).is_err());
        assert!(args(&["--ramp-per-sec", "-5"]).is_err());
        assert!(args(&["--syncer", "calico"])
            .unwrap_err()
            .contains("syncer"));
        assert!(args(&["--compression", "gzip"]).is_err());
        assert!(args(&["--target-pid", "0"]).is_err());
        let c = args(&["--clients", "3", "--threads", "8", "--full-maps", "10"]).unwrap();
        assert_eq!((c.threads, c.full_maps), (3, 3));
        let c = args(&["--compression", "none", "--syncer", "bgp"]).unwrap();
        assert!(c.compression.codecs().is_empty());
        assert_eq!(c.syncer, SyncerType::Bgp);
    }

    #[test]
    fn ramp_schedule() {
        let c = args(&["--ramp-per-sec", "0"]).unwrap();
        assert_eq!(c.connect_offset(999), Duration::ZERO);
        let c = args(&["--ramp-per-sec", "2000"]).unwrap();
        assert_eq!(c.connect_offset(0), Duration::ZERO);
        assert_eq!(c.connect_offset(2000), Duration::from_secs(1));
        assert_eq!(c.connect_offset(3), Duration::from_micros(1500));
    }
}
