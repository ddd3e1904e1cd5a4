//! Command line: parsing with clap, then validation into a [`RunConfig`].

use clap::{Parser, Subcommand, ValueEnum};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use typha::model::SyncerType;
use typha::proto::Codec;

/// Simulates many Felix clients against a typha-rs daemon on the same host and reports what
/// the daemon costs: update lag, time to sync, server CPU per delivered frame, RSS per client.
#[derive(Debug, Parser)]
#[command(name = "typha-loadtest", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Connect N clients, hold them for the duration, verify and report.
    Run(RunArgs),
}

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
    /// Compression the clients offer.
    #[arg(long, value_enum, default_value = "zstd")]
    pub compression: Compression,
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
}

/// A validated `run`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunConfig {
    pub addr: SocketAddr,
    pub clients: usize,
    pub syncer: SyncerType,
    pub compression: Compression,
    pub threads: usize,
    pub duration: Duration,
    pub ramp_per_sec: f64,
    pub full_maps: usize,
    pub target_pid: Option<u32>,
    pub metrics_addr: Option<SocketAddr>,
    pub json: bool,
}

/// Largest client count accepted (far beyond what one host can open).
pub const MAX_CLIENTS: usize = 1_000_000;
pub const MAX_THREADS: usize = 256;
/// Longest run accepted: one day.
pub const MAX_DURATION_SECS: f64 = 86_400.0;

/// Whether `ip` is loopback: 127.0.0.0/8 or ::1 (an IPv4-mapped address is not accepted).
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[0] == 127,
        IpAddr::V6(v6) => v6.is_loopback(),
    }
}

/// Parses `ip:port` (`[v6]:port` for IPv6) and refuses anything but loopback.
pub fn parse_loopback_addr(flag: &str, s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s.trim().parse().map_err(|_| {
        format!("{flag} {s:?} is not an address of the form IP:PORT (e.g. 127.0.0.1:5473)")
    })?;
    if !is_loopback(addr.ip()) {
        return Err(format!(
            "{flag} {addr}: typha-loadtest only connects to loopback addresses (127.0.0.0/8 or \
             ::1); run it on the daemon's host"
        ));
    }
    if addr.port() == 0 {
        return Err(format!("{flag} {addr}: port 0 is not a listening port"));
    }
    Ok(addr)
}

impl RunArgs {
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
        Ok(RunConfig {
            addr,
            clients: self.clients,
            syncer,
            compression: self.compression,
            // More threads than clients would leave threads with nothing to do.
            threads: self.threads.min(self.clients),
            duration: Duration::from_secs_f64(self.duration),
            ramp_per_sec: self.ramp_per_sec,
            full_maps: self.full_maps.min(self.clients),
            target_pid: self.target_pid,
            metrics_addr,
            json: self.json,
        })
    }
}

impl RunConfig {
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

    fn args(extra: &[&str]) -> Result<RunConfig, String> {
        let mut v = vec!["typha-loadtest", "run"];
        v.extend_from_slice(extra);
        let cli = Cli::try_parse_from(v).map_err(|e| e.to_string())?;
        let Command::Run(r) = cli.command;
        r.validate()
    }

    #[test]
    fn defaults() {
        let c = args(&[]).unwrap();
        assert_eq!(c.addr, "127.0.0.1:5473".parse().unwrap());
        assert_eq!(c.clients, 1000);
        assert_eq!(c.syncer, SyncerType::Felix);
        assert_eq!(c.compression, Compression::Zstd);
        assert_eq!(c.threads, 2);
        assert_eq!(c.duration, Duration::from_secs(30));
        assert_eq!(c.full_maps, 10);
        assert_eq!(c.target_pid, None);
        assert_eq!(c.metrics_addr, None);
        assert!(!c.json);
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
