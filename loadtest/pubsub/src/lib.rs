//! `typha-loadtest pubsub`: the same fan-out — one publisher, N subscribers on loopback, one
//! message size and rate — served by Redis pub/sub, NATS, a bare writer (the floor: only the
//! syscalls) or typha-rs, each started here as a child process, so the report can put typha's
//! CPU per delivery and latency beside the best single-threaded fan-out servers and the physical
//! limit. See `docs/comparisons.md`.
//!
//! Timeline: start the server; connect and subscribe every subscriber; start publishing; after
//! `--warmup` seconds the measured window begins and lasts until `--duration` seconds after the
//! publishing began. The server's CPU time and RSS are sampled from `/proc` at the window's
//! edges. Messages stamped inside the window are the expected deliveries; the subscribers get a
//! bounded drain time after the window to receive them, and whatever is still in flight then
//! (newer than the last message a subscriber got) does not count as lost.

pub mod bare;
mod publish;
mod server;
mod sub;
pub mod wire;

use anyhow::bail;
use clap::ValueEnum;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use sub::{unix_nanos, Shared};
use typha::datastore::sim::PAYLOAD_HEAD_LEN;
use typha_loadtest_common::sys;
use wire::{BareWire, FelixWire, NatsWire, RespWire, TyphaWire, Wire, HEAD};

/// Share of the expected deliveries (less those in flight) that must arrive for a pass.
const PASS_FRACTION: f64 = 0.95;
const MAX_MSG_BYTES: usize = 16 << 20;
/// The sim's payload stream is paced by a millisecond timer.
const MAX_TYPHA_RATE: f64 = 1000.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// Debian's redis-server, PUBLISH/SUBSCRIBE.
    Redis,
    /// Debian's nats-server, PUB/SUB.
    Nats,
    /// The floor: a minimal writer of one pre-built buffer to every socket.
    Bare,
    /// The typha daemon on its sim datastore's payload stream, native protocol.
    Typha,
    /// The same daemon and stream, subscribers speaking Felix's protocol (Typha's gob and
    /// snappy), as Calico's Felix does.
    TyphaFelix,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Redis => "redis",
            Target::Nats => "nats",
            Target::Bare => "bare",
            Target::Typha => "typha",
            Target::TyphaFelix => "typha-felix",
        }
    }

    /// Whether the server is the typha daemon on its sim's payload stream (it publishes by
    /// itself; the harness starts no publisher).
    pub fn is_typha(self) -> bool {
        matches!(self, Target::Typha | Target::TyphaFelix)
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct PubsubArgs {
    /// Server to measure; it is started here on a free loopback port and stopped at the end.
    #[arg(long, value_enum)]
    pub target: Target,
    /// Subscriber connections.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Size of each message (payload bytes; for typha, the size of the rewritten value).
    #[arg(long, default_value_t = 512)]
    pub msg_bytes: usize,
    /// Messages published per second.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Seconds of publishing, counted once every subscriber is subscribed.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds at the start of the publishing that are not measured.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Subscriber threads, each with its own poll loop.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Print one JSON object on stdout instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// The server binary (default: redis-server / nats-server from PATH or /usr/sbin, this
    /// executable for bare, the `typha` binary next to this executable for typha).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Seconds allowed for connecting and subscribing every subscriber.
    #[arg(long, default_value_t = 60.0)]
    pub subscribe_timeout: f64,
}

#[derive(Debug, Clone)]
pub struct PubsubConfig {
    pub target: Target,
    pub subscribers: usize,
    pub msg_bytes: usize,
    pub rate: f64,
    pub duration: f64,
    pub warmup: f64,
    pub threads: usize,
    pub json: bool,
    pub server_bin: Option<PathBuf>,
    pub subscribe_timeout: f64,
}

impl PubsubArgs {
    pub fn validate(self) -> Result<PubsubConfig, String> {
        if self.subscribers == 0 || self.subscribers > 1_000_000 {
            return Err("--subscribers must be between 1 and 1000000".into());
        }
        if !(HEAD..=MAX_MSG_BYTES).contains(&self.msg_bytes) {
            return Err(format!(
                "--msg-bytes must be between {HEAD} (the stamp and sequence number) and {MAX_MSG_BYTES}"
            ));
        }
        if self.target == Target::TyphaFelix && self.msg_bytes < PAYLOAD_HEAD_LEN {
            return Err(format!(
                "--msg-bytes must be at least {PAYLOAD_HEAD_LEN} for typha-felix (the value's \
                 stamp and number)"
            ));
        }
        let max_rate = if self.target.is_typha() {
            MAX_TYPHA_RATE
        } else {
            100_000.0
        };
        if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= max_rate) {
            return Err(format!(
                "--rate must be positive and at most {max_rate} for this target"
            ));
        }
        if !(self.warmup.is_finite() && self.warmup >= 0.0) {
            return Err("--warmup must be zero or more seconds".into());
        }
        if !(self.duration.is_finite() && self.duration > self.warmup && self.duration < 1e6) {
            return Err("--duration must be longer than --warmup".into());
        }
        if self.threads == 0 || self.threads > 64 {
            return Err("--threads must be between 1 and 64".into());
        }
        if !(self.subscribe_timeout.is_finite() && self.subscribe_timeout > 0.0) {
            return Err("--subscribe-timeout must be positive".into());
        }
        Ok(PubsubConfig {
            target: self.target,
            subscribers: self.subscribers,
            msg_bytes: self.msg_bytes,
            rate: self.rate,
            duration: self.duration,
            warmup: self.warmup,
            threads: self.threads,
            json: self.json,
            server_bin: self.server_bin,
            subscribe_timeout: self.subscribe_timeout,
        })
    }
}

/// Latency summary in microseconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

impl Latency {
    fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct PubsubReport {
    pub target: &'static str,
    pub server_version: String,
    pub subscribers: usize,
    pub msg_bytes: usize,
    pub rate: f64,
    pub duration_secs: f64,
    pub window_secs: f64,
    pub threads: usize,
    /// Subscribers whose subscription was confirmed.
    pub subscribed: u64,
    /// Subscriber connections that failed or were closed.
    pub disconnected: u64,
    /// Messages published in the window.
    pub published: u64,
    pub expected_deliveries: u64,
    /// Window messages received by a subscriber (whenever they arrived).
    pub delivered: u64,
    /// Expected deliveries still on their way at the end (newer than a subscriber's last).
    pub in_flight: u64,
    /// Expected deliveries neither delivered nor in flight.
    pub lost: u64,
    /// Deliveries (of any message) that happened during the window: the work the server's
    /// window CPU paid for.
    pub window_arrivals: u64,
    pub server_cpu_secs: f64,
    pub server_rss_start_kib: u64,
    pub server_rss_end_kib: u64,
    pub harness_cpu_secs: f64,
    pub latency_us: Latency,
    /// Messages the publisher sent more than one period late (it could not keep the rate).
    pub publisher_late: u64,
    /// Every message and byte the subscribers received, warm-up and drain included.
    pub messages_received: u64,
    pub bytes_received: u64,
    pub drops: BTreeMap<String, u64>,
    pub failures: Vec<String>,
}

impl PubsubReport {
    pub fn cpu_us_per_delivery(&self) -> Option<f64> {
        (self.window_arrivals > 0 && self.server_cpu_secs > 0.0)
            .then(|| self.server_cpu_secs * 1e6 / self.window_arrivals as f64)
    }

    pub fn deliveries_per_cpu_sec(&self) -> Option<f64> {
        (self.server_cpu_secs > 0.0).then(|| self.window_arrivals as f64 / self.server_cpu_secs)
    }

    pub fn passed(&self) -> bool {
        let due = self.expected_deliveries.saturating_sub(self.in_flight);
        self.failures.is_empty()
            && self.subscribed == self.subscribers as u64
            && self.disconnected == 0
            && self.published > 0
            && self.delivered as f64 >= PASS_FRACTION * due as f64
    }

    pub fn to_json(&self) -> Value {
        let round = |v: f64, d: i32| {
            let m = 10f64.powi(d);
            (v * m).round() / m
        };
        json!({
            "target": self.target,
            "server_version": self.server_version,
            "subscribers": self.subscribers,
            "msg_bytes": self.msg_bytes,
            "rate": self.rate,
            "duration_secs": self.duration_secs,
            "window_secs": round(self.window_secs, 3),
            "threads": self.threads,
            "subscribed": self.subscribed,
            "disconnected": self.disconnected,
            "published": self.published,
            "expected_deliveries": self.expected_deliveries,
            "delivered": self.delivered,
            "in_flight": self.in_flight,
            "lost": self.lost,
            "window_arrivals": self.window_arrivals,
            "server_cpu_secs": round(self.server_cpu_secs, 3),
            "cpu_us_per_delivery": self.cpu_us_per_delivery().map(|v| round(v, 3)),
            "deliveries_per_cpu_sec": self.deliveries_per_cpu_sec().map(|v| v.round()),
            "server_rss_start_kib": self.server_rss_start_kib,
            "server_rss_end_kib": self.server_rss_end_kib,
            "latency_us": {
                "count": self.latency_us.count,
                "p50": self.latency_us.p50,
                "p90": self.latency_us.p90,
                "p99": self.latency_us.p99,
                "max": self.latency_us.max,
            },
            "harness_cpu_secs": round(self.harness_cpu_secs, 3),
            "publisher_late": self.publisher_late,
            "messages_received": self.messages_received,
            "bytes_received": self.bytes_received,
            "drops": self.drops,
            "failures": self.failures,
            "passed": self.passed(),
        })
    }

    pub fn render_text(&self) -> String {
        let mut s = String::new();
        let opt = |v: Option<f64>, d: usize| v.map_or_else(|| "n/a".into(), |v| format!("{v:.d$}"));
        let _ = writeln!(
            s,
            "pubsub {} ({}): {} subscribers, {} B x {}/s, window {:.1} s of {:.1} s",
            self.target,
            self.server_version,
            self.subscribers,
            self.msg_bytes,
            self.rate,
            self.window_secs,
            self.duration_secs
        );
        let _ = writeln!(
            s,
            "  subscribed {} / {}, disconnected {}",
            self.subscribed, self.subscribers, self.disconnected
        );
        let _ = writeln!(
            s,
            "  published {} in the window; deliveries expected {}, delivered {}, in flight {}, lost {}",
            self.published, self.expected_deliveries, self.delivered, self.in_flight, self.lost
        );
        let _ = writeln!(
            s,
            "  server CPU {:.2} s for {} deliveries: {} us/delivery, {} deliveries/CPU-s",
            self.server_cpu_secs,
            self.window_arrivals,
            opt(self.cpu_us_per_delivery(), 2),
            opt(self.deliveries_per_cpu_sec(), 0)
        );
        let l = &self.latency_us;
        let ms = |us: u64| us as f64 / 1000.0;
        let _ = writeln!(
            s,
            "  latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}  ({} samples)",
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.max),
            l.count
        );
        let _ = writeln!(
            s,
            "  server RSS {} -> {} KiB; harness CPU {:.2} s; publisher late {}",
            self.server_rss_start_kib,
            self.server_rss_end_kib,
            self.harness_cpu_secs,
            self.publisher_late
        );
        for (reason, n) in &self.drops {
            let _ = writeln!(s, "  dropped: {n} x {reason}");
        }
        for f in &self.failures {
            let _ = writeln!(s, "  failure: {f}");
        }
        let _ = writeln!(s, "{}", if self.passed() { "PASSED" } else { "FAILED" });
        s
    }
}

impl typha_loadtest_common::Outcome for PubsubReport {
    fn to_json(&self) -> Value {
        PubsubReport::to_json(self)
    }
    fn render_text(&self) -> String {
        PubsubReport::render_text(self)
    }
    fn passed(&self) -> bool {
        PubsubReport::passed(self)
    }
}

fn new_wire(target: Target, idx: usize, msg_bytes: usize) -> Box<dyn Wire> {
    match target {
        Target::Redis => Box::new(RespWire::default()),
        Target::Nats => Box::new(NatsWire::default()),
        Target::Bare => Box::new(BareWire::new(msg_bytes)),
        Target::Typha => Box::new(TyphaWire::new(idx)),
        Target::TyphaFelix => Box::new(FelixWire::new(idx)),
    }
}

struct StopOnDrop<'a>(&'a Shared);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop.store(true, Relaxed);
    }
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// Polls `cond` every 10 ms until it holds or `deadline` passes; returns whether it held.
fn wait_for(deadline: Instant, mut cond: impl FnMut() -> bool) -> bool {
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn run(cfg: PubsubConfig) -> anyhow::Result<PubsubReport> {
    let nofile = sys::raise_nofile_limit()?;
    let need = cfg.subscribers as u64 + 128;
    if nofile < need {
        bail!(
            "{} subscribers need {need} file descriptors; the limit is {nofile} (raise ulimit -n)",
            cfg.subscribers
        );
    }
    let server = server::start(&cfg)?;
    let shared = Shared::default();
    let n = cfg.subscribers;
    let threads = cfg.threads.min(n);
    let mut report = PubsubReport {
        target: cfg.target.name(),
        server_version: server.version.clone(),
        subscribers: n,
        msg_bytes: cfg.msg_bytes,
        rate: cfg.rate,
        duration_secs: cfg.duration,
        threads,
        ..PubsubReport::default()
    };
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let shared = &shared;
        // Whichever way this closure returns, the threads must stop before the scope joins them.
        let _stop = StopOnDrop(shared);
        let mut handles = Vec::new();
        for t in 0..threads {
            let wires: Vec<Box<dyn Wire>> = (t..n)
                .step_by(threads)
                .map(|i| new_wire(cfg.target, i, cfg.msg_bytes))
                .collect();
            let addr = server.addr;
            handles.push(
                std::thread::Builder::new()
                    .name(format!("subscriber-{t}"))
                    .spawn_scoped(scope, move || sub::run_thread(addr, wires, shared))?,
            );
        }
        let subscribed = wait_for(
            Instant::now() + Duration::from_secs_f64(cfg.subscribe_timeout),
            || {
                let s = shared.subscribed.load(Relaxed);
                s == n as u64 || s + shared.closed.load(Relaxed) >= n as u64
            },
        );
        let all = subscribed && shared.subscribed.load(Relaxed) == n as u64;
        let mut publisher = None;
        let mut window = None;
        if all {
            let t0 = Instant::now();
            let t0_ns = unix_nanos();
            let start = t0 + Duration::from_secs_f64(cfg.warmup);
            let end = t0 + Duration::from_secs_f64(cfg.duration);
            shared
                .window_start_ns
                .store(t0_ns + (cfg.warmup * 1e9) as u64, Relaxed);
            shared
                .window_end_ns
                .store(t0_ns + (cfg.duration * 1e9) as u64, Relaxed);
            if !cfg.target.is_typha() {
                let addr = server.publish_addr;
                let (target, bytes, rate) = (cfg.target, cfg.msg_bytes, cfg.rate);
                publisher = Some(
                    std::thread::Builder::new()
                        .name("publisher".into())
                        .spawn_scoped(scope, move || {
                            publish::run(target, addr, bytes, rate, shared)
                        })?,
                );
            }
            sleep_until(start);
            let server0 = server.sample()?;
            let self0 = sys::sample_process(std::process::id())?;
            let w0 = Instant::now();
            sleep_until(end);
            let server1 = server.sample()?;
            let self1 = sys::sample_process(std::process::id())?;
            report.window_secs = w0.elapsed().as_secs_f64();
            report.server_cpu_secs = server1.cpu_secs - server0.cpu_secs;
            report.harness_cpu_secs = self1.cpu_secs - self0.cpu_secs;
            report.server_rss_start_kib = server0.rss_bytes / 1024;
            report.server_rss_end_kib = server1.rss_bytes / 1024;
            window = Some(end);
        } else {
            report.failures.push(format!(
                "only {} of {n} subscribers subscribed within {} s",
                shared.subscribed.load(Relaxed),
                cfg.subscribe_timeout
            ));
        }
        let published = publisher.map(|h| {
            h.join().unwrap_or_else(|_| publish::Published {
                error: Some("the publisher thread panicked".into()),
                ..publish::Published::default()
            })
        });
        if let Some(p) = &published {
            report.publisher_late = p.late;
            if let Some(e) = &p.error {
                report.failures.push(e.clone());
            }
        }
        // The window's message range: from the publisher, or for typha from what arrived.
        let range = |shared: &Shared| -> (u64, u64) {
            match &published {
                Some(p) => (p.window_first_seq, p.window_last_seq),
                None => (
                    shared.window_min_seq.load(Relaxed),
                    shared.window_max_seq.load(Relaxed),
                ),
            }
        };
        if let Some(end) = window {
            // Give the server a bounded time to deliver what was stamped in the window.
            let drain = Duration::from_secs_f64(cfg.duration.clamp(2.0, 10.0));
            wait_for(end + drain, || {
                let (first, last) = range(shared);
                let alive = n as u64 - shared.closed.load(Relaxed).min(n as u64);
                let final_range = published.is_some() || shared.seen_after_window.load(Relaxed);
                final_range
                    && last >= first
                    && shared.window_delivered.load(Relaxed) >= (last - first + 1) * alive
            });
        }
        shared.stop.store(true, Relaxed);
        let mut latency = sub::new_histogram();
        let (first, last) = range(shared);
        let per_sub = if last >= first { last - first + 1 } else { 0 };
        for h in handles {
            let r = match h.join() {
                Ok(r) => r?,
                Err(_) => bail!("a subscriber thread panicked"),
            };
            latency.add(&r.latency_us).ok();
            report.delivered += r.window_delivered;
            report.window_arrivals += r.window_arrivals;
            report.messages_received += r.messages;
            report.bytes_received += r.bytes;
            for s in &r.subscribers {
                report.subscribed += u64::from(s.subscribed);
                if s.open && per_sub > 0 {
                    report.in_flight +=
                        last.saturating_sub(s.last_seq.max(first.saturating_sub(1)));
                }
            }
            for (k, v) in r.drops {
                *report.drops.entry(k).or_default() += v;
            }
        }
        report.disconnected = shared.closed.load(Relaxed);
        report.published = per_sub;
        report.expected_deliveries = per_sub * n as u64;
        report.lost = report
            .expected_deliveries
            .saturating_sub(report.delivered + report.in_flight);
        report.latency_us = Latency::from_histogram(&latency);
        let f = shared.failures.lock().unwrap_or_else(|p| p.into_inner());
        report.failures.extend(f.iter().cloned());
        Ok(())
    })?;
    drop(server);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> PubsubReport {
        PubsubReport {
            target: "redis",
            subscribers: 10,
            subscribed: 10,
            published: 100,
            expected_deliveries: 1000,
            delivered: 960,
            window_arrivals: 1000,
            server_cpu_secs: 0.01,
            ..PubsubReport::default()
        }
    }

    #[test]
    fn pass_needs_everyone_subscribed_and_95_percent_of_what_is_not_in_flight() {
        assert!(report().passed());
        assert!(!PubsubReport {
            delivered: 949,
            ..report()
        }
        .passed());
        // In-flight deliveries do not count against the run.
        assert!(PubsubReport {
            delivered: 900,
            in_flight: 60,
            ..report()
        }
        .passed());
        assert!(!PubsubReport {
            subscribed: 9,
            ..report()
        }
        .passed());
        assert!(!PubsubReport {
            disconnected: 1,
            ..report()
        }
        .passed());
        assert!(!PubsubReport {
            published: 0,
            expected_deliveries: 0,
            delivered: 0,
            ..report()
        }
        .passed());
    }

    #[test]
    fn cpu_per_delivery_and_json_fields() {
        let r = report();
        assert_eq!(r.cpu_us_per_delivery(), Some(10.0));
        assert_eq!(r.deliveries_per_cpu_sec(), Some(100_000.0));
        let j = r.to_json();
        for k in [
            "target",
            "subscribers",
            "msg_bytes",
            "rate",
            "duration_secs",
            "window_secs",
            "published",
            "expected_deliveries",
            "delivered",
            "server_cpu_secs",
            "cpu_us_per_delivery",
            "deliveries_per_cpu_sec",
            "server_rss_start_kib",
            "server_rss_end_kib",
            "latency_us",
            "harness_cpu_secs",
            "server_version",
            "passed",
        ] {
            assert!(j.get(k).is_some(), "missing {k}");
        }
        for k in ["count", "p50", "p90", "p99", "max"] {
            assert!(j["latency_us"].get(k).is_some(), "missing latency_us.{k}");
        }
        assert_eq!(j["passed"], true);
        // No CPU measured: the ratios are null rather than infinite.
        let none = PubsubReport {
            server_cpu_secs: 0.0,
            ..report()
        };
        assert!(none.to_json()["cpu_us_per_delivery"].is_null());
        assert!(none.to_json()["deliveries_per_cpu_sec"].is_null());
    }

    #[test]
    fn validation() {
        let args = |target, msg_bytes, rate, duration| PubsubArgs {
            target,
            subscribers: 10,
            msg_bytes,
            rate,
            duration,
            warmup: 1.0,
            threads: 2,
            json: false,
            server_bin: None,
            subscribe_timeout: 10.0,
        };
        assert!(args(Target::Redis, 512, 10.0, 3.0).validate().is_ok());
        assert!(args(Target::Redis, 8, 10.0, 3.0).validate().is_err());
        assert!(args(Target::Redis, 512, 0.0, 3.0).validate().is_err());
        assert!(args(Target::Redis, 512, 10.0, 1.0).validate().is_err());
        assert!(args(Target::Typha, 512, 5000.0, 3.0).validate().is_err());
        assert!(args(Target::TyphaFelix, 512, 5000.0, 3.0)
            .validate()
            .is_err());
        assert!(args(Target::TyphaFelix, 16, 10.0, 3.0).validate().is_err());
        assert!(args(Target::Typha, 16, 10.0, 3.0).validate().is_ok());
        assert!(args(Target::TyphaFelix, 32, 10.0, 3.0).validate().is_ok());
        assert!(args(Target::Nats, 512, 5000.0, 3.0).validate().is_ok());
    }
}
