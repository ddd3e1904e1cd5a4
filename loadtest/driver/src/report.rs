//! The end-of-run report: figures merged from every thread and the daemon's samples, rendered
//! as a human summary or as one JSON object.

use crate::datastore_check::DatastoreCheck;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;
use typha_loadtest_common::daemon_http::FanoutCounters;
pub use typha_loadtest_common::hist::{fmt_bytes, fmt_us, HistSummary};

/// Server figures over one window (the whole run, or the steady state).
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub secs: f64,
    /// Server CPU seconds (user + system) used in the window, when `--target-pid` was given.
    pub cpu_secs: Option<f64>,
    /// Fan-out counter deltas, when `--metrics-addr` was given.
    pub fanout: Option<FanoutCounters>,
}

impl Window {
    pub fn cpu_us_per_frame(&self) -> Option<f64> {
        let frames = self.fanout.as_ref()?.frames_written;
        (frames > 0).then(|| self.cpu_secs.map(|c| c * 1e6 / frames as f64))?
    }

    /// Upper bounds (µs) of the buckets holding p50 and p99 of the daemon's own update →
    /// frame-written latency in this window.
    pub fn server_latency_bounds_us(&self) -> Option<(f64, f64)> {
        let b = &self.fanout.as_ref()?.latency;
        Some((b.quantile_bound(0.5)? * 1e6, b.quantile_bound(0.99)? * 1e6))
    }

    fn to_json(&self) -> Value {
        let f = self.fanout.as_ref();
        let bound = |v: f64| v.is_finite().then_some(v);
        json!({
            "secs": self.secs,
            "server_cpu_secs": self.cpu_secs,
            "frames_written": f.map(|f| f.frames_written),
            "write_calls": f.map(|f| f.write_calls),
            "bytes_written": f.map(|f| f.bytes_written),
            "server_cpu_us_per_frame": self.cpu_us_per_frame(),
            "server_latency_p50_le_us": self.server_latency_bounds_us().and_then(|b| bound(b.0)),
            "server_latency_p99_le_us": self.server_latency_bounds_us().and_then(|b| bound(b.1)),
        })
    }

    fn render(&self, out: &mut String, title: &str) {
        let _ = write!(out, "{title} ({:.1} s):", self.secs);
        match self.cpu_secs {
            Some(c) => {
                let _ = write!(
                    out,
                    " server CPU {c:.2} s ({:.0}% of a core)",
                    c * 100.0 / self.secs
                );
            }
            None => out.push_str(" server CPU not measured (no --target-pid)"),
        }
        match &self.fanout {
            Some(f) => {
                let _ = write!(
                    out,
                    ", {} frames written in {} write calls ({:.1} frames/call, {})",
                    f.frames_written,
                    f.write_calls,
                    f.frames_written as f64 / f.write_calls.max(1) as f64,
                    fmt_bytes(f.bytes_written)
                );
            }
            None => out.push_str(", server counters not read (no --metrics-addr)"),
        }
        if let Some(us) = self.cpu_us_per_frame() {
            let _ = write!(out, "\n    server CPU per delivered frame: {us:.2} µs");
        }
        if let Some((p50, p99)) = self.server_latency_bounds_us() {
            let le = |v: f64| {
                if v.is_finite() {
                    format!("≤ {}", fmt_us(v as u64))
                } else {
                    "> the largest bucket".to_owned()
                }
            };
            let _ = write!(
                out,
                "\n    server-side latency (update in → frame written, typha_client_latency_secs): p50 {}, p99 {}",
                le(p50),
                le(p99)
            );
        }
        out.push('\n');
    }
}

#[derive(Debug, Clone, Default)]
pub struct Verification {
    /// Why nothing was verified against the daemon, if nothing was.
    pub skipped: Option<String>,
    /// Client sessions verified: full-map clients plus digest-only sessions (a killed and
    /// restarted client has one session per connection).
    pub verified: u64,
    pub full_map_verified: u64,
    pub digest_only_verified: u64,
    /// Clients connected at the end whose current session verified.
    pub verified_at_end: u64,
    /// Distinct `Updates` frames whose content every client that received them agreed on.
    pub frames_compared: u64,
    pub mismatches: Vec<String>,
    /// Clients that could not be checked (no snapshot, seq no longer held by the daemon).
    pub unverified: Vec<String>,
}

/// The scenario flags of a run and what they did.
#[derive(Debug, Clone, Default)]
pub struct Scenario {
    /// The flags in effect, as text.
    pub flags: Vec<String>,
    pub slow_fraction: f64,
    pub slow_bytes_per_sec: u64,
    pub stalled_fraction: f64,
    pub kill_rate: f64,
    pub restart_delay_secs: f64,
    /// Clients per role (full-map, digest-only, slow, stalled).
    pub roles: BTreeMap<String, u64>,
    pub kills: u64,
    pub restarts: u64,
}

impl Scenario {
    fn to_json(&self) -> Value {
        json!({
            "flags": self.flags,
            "slow_fraction": self.slow_fraction,
            "slow_bytes_per_sec": self.slow_bytes_per_sec,
            "stalled_fraction": self.stalled_fraction,
            "kill_rate": self.kill_rate,
            "restart_delay_secs": self.restart_delay_secs,
            "roles": self.roles,
            "kills": self.kills,
            "restarts": self.restarts,
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    // The run.
    pub addr: String,
    /// The clients connected over TLS.
    pub tls: bool,
    /// TLS clients refused in the handshake (the run fails: a configuration error).
    pub tls_handshake_failures: u64,
    pub syncer: String,
    /// `native` or `typha` (Felix's protocol).
    pub protocol: String,
    pub compression: String,
    pub threads: usize,
    pub ramp_per_sec: f64,
    pub duration_secs: f64,
    pub elapsed_secs: f64,
    pub stopped_early: Option<String>,
    // Clients.
    pub requested: u64,
    pub full_maps: u64,
    pub never_started: u64,
    pub connected: u64,
    pub in_sync: u64,
    pub open_at_end: u64,
    pub in_sync_at_end: u64,
    pub all_in_sync_after: Option<Duration>,
    // What they received.
    pub lag: HistSummary,
    /// Lag of the updates received in the steady state only (after the snapshots and the
    /// catch-up that follows them).
    pub steady_lag: HistSummary,
    pub time_to_sync: HistSummary,
    pub snapshots: u64,
    pub snapshot_bytes: u64,
    pub updates: u64,
    pub update_frames: u64,
    pub frames: u64,
    pub bytes: u64,
    pub pings: u64,
    pub drops: BTreeMap<String, u64>,
    pub hard_failures: u64,
    pub failures: Vec<String>,
    // The daemon.
    pub whole: Option<Window>,
    pub steady: Option<Window>,
    pub rss_start: Option<u64>,
    pub rss_end: Option<u64>,
    pub harness_cpu_secs: Option<f64>,
    pub verification: Verification,
    pub scenario: Scenario,
    /// Write stamp (`typha-loadtest/stamp` label set by `churn`) → first delivery to a client.
    pub datastore_lag: HistSummary,
    /// The daemon's `typha_connections_dropped_by_reason_total` over the run (non-zero only).
    pub daemon_drops: Option<BTreeMap<String, u64>>,
    pub daemon_drops_error: Option<String>,
    /// `--verify-datastore`: the API server's translated objects against the daemon.
    pub datastore_check: Option<Result<DatastoreCheck, String>>,
}

impl Report {
    /// Whether the run passed: no protocol error or undecodable frame, no digest mismatch, at
    /// least one client connected, and every client that reads (all but the stalled ones)
    /// reached in-sync within the duration. A run that leaves clients unsynced measured a
    /// daemon that could not serve them all: its cost figures would describe a smaller run.
    pub fn passed(&self) -> bool {
        self.failure_reasons().is_empty()
    }

    pub fn failure_reasons(&self) -> Vec<String> {
        let mut r = Vec::new();
        if self.hard_failures > 0 || !self.failures.is_empty() {
            r.push(format!(
                "{} protocol error(s) or undecodable frame(s)",
                self.hard_failures.max(self.failures.len() as u64)
            ));
        }
        if !self.verification.mismatches.is_empty() {
            r.push(format!(
                "{} verification mismatch(es): a client's data disagrees with another client's \
                 or with the daemon's /digest",
                self.verification.mismatches.len()
            ));
        }
        if self.tls_handshake_failures > 0 {
            r.push(format!(
                "{} client(s) failed the TLS handshake (see drops for why)",
                self.tls_handshake_failures
            ));
        }
        if self.connected == 0 && self.requested > 0 {
            r.push("no client could connect".into());
        } else if let Some(n) = self.not_in_sync() {
            r.push(format!(
                "{n} of {} clients did not reach in-sync within the {:.0} s run",
                self.must_sync(),
                self.duration_secs
            ));
        }
        r
    }

    /// Clients expected to reach in-sync: all but the stalled ones, which never read.
    pub fn must_sync(&self) -> u64 {
        let stalled = self.scenario.roles.get("stalled").copied().unwrap_or(0);
        self.requested.saturating_sub(stalled)
    }

    /// How many of [`Report::must_sync`] never reached in-sync, if any.
    pub fn not_in_sync(&self) -> Option<u64> {
        let n = self.must_sync().saturating_sub(self.in_sync);
        (n > 0).then_some(n)
    }

    /// (RSS end - RSS start) / clients connected at the end.
    pub fn rss_per_client(&self) -> Option<f64> {
        let (s, e) = (self.rss_start?, self.rss_end?);
        (self.open_at_end > 0).then(|| (e as f64 - s as f64) / self.open_at_end as f64)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "passed": self.passed(),
            "failure_reasons": self.failure_reasons(),
            "tls": self.tls,
            "tls_handshake_failures": self.tls_handshake_failures,
            "run": {
                "addr": self.addr,
                "syncer": self.syncer,
                "protocol": self.protocol,
                "compression": self.compression,
                "threads": self.threads,
                "ramp_per_sec": self.ramp_per_sec,
                "duration_secs": self.duration_secs,
                "elapsed_secs": self.elapsed_secs,
                "stopped_early": self.stopped_early,
            },
            "clients": {
                "requested": self.requested,
                "full_maps": self.full_maps,
                "never_started": self.never_started,
                "connected": self.connected,
                "in_sync": self.in_sync,
                "not_in_sync": self.not_in_sync().unwrap_or(0),
                "held_at_end": self.open_at_end,
                "in_sync_at_end": self.in_sync_at_end,
                "all_in_sync_after_secs": self.all_in_sync_after.map(|d| d.as_secs_f64()),
            },
            "lag": self.lag.to_json(),
            "steady_state_lag": self.steady_lag.to_json(),
            "time_to_in_sync": self.time_to_sync.to_json(),
            "received": {
                "snapshots": self.snapshots,
                "snapshot_bytes": self.snapshot_bytes,
                "updates": self.updates,
                "update_frames": self.update_frames,
                "frames": self.frames,
                "bytes": self.bytes,
                "pings": self.pings,
            },
            "drops": self.drops,
            "hard_failures": self.hard_failures,
            "failures": self.failures,
            "server": {
                "whole_run": self.whole.as_ref().map(Window::to_json),
                "steady_state": self.steady.as_ref().map(Window::to_json),
                "rss_start_bytes": self.rss_start,
                "rss_end_bytes": self.rss_end,
                "rss_per_client_bytes": self.rss_per_client(),
            },
            "harness_cpu_secs": self.harness_cpu_secs,
            "verification": {
                "skipped": self.verification.skipped,
                "verified": self.verification.verified,
                "mismatches": self.verification.mismatches,
                "unverified": self.verification.unverified,
                "full_map_verified": self.verification.full_map_verified,
                "digest_only_verified": self.verification.digest_only_verified,
                "verified_at_end": self.verification.verified_at_end,
                "frames_compared": self.verification.frames_compared,
            },
            "scenario": self.scenario.to_json(),
            "datastore_to_client_latency": self.datastore_lag.to_json(),
            "daemon_drops_by_reason": self.daemon_drops,
            "daemon_drops_error": self.daemon_drops_error,
            "datastore_check": match &self.datastore_check {
                None => Value::Null,
                Some(Ok(c)) => json!({
                    "matches": c.matches(),
                    "keys": c.keys,
                    "digest": c.digest,
                    "daemon_seq": c.daemon.seq,
                    "daemon_keys": c.daemon.keys,
                    "daemon_digest": c.daemon.digest,
                }),
                Some(Err(e)) => json!({ "error": e }),
            },
        })
    }

    pub fn render_text(&self) -> String {
        let mut o = String::new();
        let ramp = if self.ramp_per_sec == 0.0 {
            "all at once".to_owned()
        } else {
            format!("{}/s", self.ramp_per_sec)
        };
        let _ = writeln!(
            o,
            "typha-loadtest: {} {} clients ({} protocol) → {}{} ({} threads, compression {}, ramp {ramp}), {:.1} s",
            self.requested,
            self.syncer,
            if self.protocol.is_empty() { "native" } else { self.protocol.as_str() },
            self.addr,
            if self.tls { " over TLS" } else { "" },
            self.threads,
            self.compression,
            self.elapsed_secs
        );
        if let Some(why) = &self.stopped_early {
            let _ = writeln!(o, "  STOPPED EARLY: {why}");
        }
        let sc = &self.scenario;
        let roles: Vec<String> = sc.roles.iter().map(|(r, n)| format!("{n} {r}")).collect();
        let _ = writeln!(
            o,
            "scenario:  {}; clients: {}; {} killed, {} restarted",
            sc.flags.join(", "),
            roles.join(", "),
            sc.kills,
            sc.restarts
        );
        let _ = writeln!(
            o,
            "clients:   {} connected, {} reached in-sync, {} held at the end ({} in sync), {} never started",
            self.connected, self.in_sync, self.open_at_end, self.in_sync_at_end, self.never_started
        );
        let _ = writeln!(o, "to in-sync: {}", self.time_to_sync);
        match self.all_in_sync_after {
            Some(d) => {
                let _ = writeln!(
                    o,
                    "           all {} clients in sync {:.2} s after the start",
                    self.requested,
                    d.as_secs_f64()
                );
            }
            None => match self.not_in_sync() {
                Some(n) => {
                    let _ = writeln!(
                        o,
                        "           NOT IN SYNC: {n} of {} clients did not reach in-sync within \
                         {:.1} s ({} never started, {} never connected)",
                        self.must_sync(),
                        self.duration_secs,
                        self.never_started,
                        self.requested
                            .saturating_sub(self.connected + self.never_started)
                    );
                }
                None => {
                    let _ = writeln!(
                        o,
                        "           all {} clients that read reached in-sync (the stalled ones never do)",
                        self.must_sync()
                    );
                }
            },
        }
        let _ = writeln!(o, "lag:       {}", self.lag);
        let _ = writeln!(o, "  steady:  {}", self.steady_lag);
        let _ = writeln!(
            o,
            "datastore → client (write stamps): {}",
            self.datastore_lag
        );
        let _ = writeln!(
            o,
            "received:  {} snapshots ({} total), {} updates in {} Updates frames (deliveries), {} frames, {}, {} pings",
            self.snapshots,
            fmt_bytes(self.snapshot_bytes),
            self.updates,
            self.update_frames,
            self.frames,
            fmt_bytes(self.bytes),
            self.pings
        );
        if self.drops.is_empty() {
            let _ = writeln!(o, "drops:     none");
        } else {
            let list: Vec<String> = self
                .drops
                .iter()
                .map(|(r, n)| format!("{r}: {n}"))
                .collect();
            let _ = writeln!(o, "drops:     {}", list.join(", "));
        }
        match (&self.daemon_drops, &self.daemon_drops_error) {
            (Some(d), _) if d.is_empty() => {
                let _ = writeln!(o, "daemon drops: none");
            }
            (Some(d), _) => {
                let list: Vec<String> = d.iter().map(|(r, n)| format!("{r}: {n}")).collect();
                let _ = writeln!(o, "daemon drops: {}", list.join(", "));
            }
            (None, Some(e)) => {
                let _ = writeln!(o, "daemon drops: not read ({e})");
            }
            (None, None) => {}
        }
        if let Some(w) = &self.whole {
            w.render(&mut o, "server, whole run");
        }
        match &self.steady {
            Some(w) => w.render(&mut o, "server, steady state (all clients in sync → end)"),
            None => {
                let _ = writeln!(
                    o,
                    "server, steady state: not reached (not every client was in sync at once)"
                );
            }
        }
        match (self.rss_start, self.rss_end) {
            (Some(s), Some(e)) => {
                let per = self
                    .rss_per_client()
                    .map_or("n/a (no client held)".to_owned(), |p| {
                        format!("{} per held client", fmt_bytes(p.max(0.0) as u64))
                    });
                let _ = writeln!(
                    o,
                    "server RSS: {} at start, {} at end: {per}",
                    fmt_bytes(s),
                    fmt_bytes(e)
                );
            }
            _ => {
                let _ = writeln!(o, "server RSS: not measured (no --target-pid)");
            }
        }
        if let Some(c) = self.harness_cpu_secs {
            let _ = writeln!(
                o,
                "harness CPU: {c:.2} s ({:.0}% of a core; it shares the host with the daemon)",
                c * 100.0 / self.elapsed_secs.max(1e-9)
            );
        }
        let v = &self.verification;
        match &v.skipped {
            Some(why) => {
                let _ = writeln!(o, "verification: skipped ({why})");
            }
            None => {
                let _ = writeln!(
                    o,
                    "verification: {} sessions verified ({} full-map clients match the daemon's /digest, \
                     {} digest-only sessions), {} of the clients held at the end; {} frames compared; \
                     {} mismatch, {} unverified",
                    v.verified,
                    v.full_map_verified,
                    v.digest_only_verified,
                    v.verified_at_end,
                    v.frames_compared,
                    v.mismatches.len(),
                    v.unverified.len()
                );
            }
        }
        if v.skipped.is_some() && !v.mismatches.is_empty() {
            let _ = writeln!(
                o,
                "  (frames compared between clients: {})",
                v.frames_compared
            );
        }
        match &self.datastore_check {
            Some(Ok(c)) if c.matches() => {
                let _ = writeln!(
                    o,
                    "datastore: the API server's objects translate to the daemon's {} keys, digest {} (seq {})",
                    c.keys, c.digest, c.daemon.seq
                );
            }
            Some(Ok(_)) => {
                let _ = writeln!(o, "datastore: MISMATCH (below)");
            }
            Some(Err(e)) => {
                let _ = writeln!(o, "datastore: not checked ({e})");
            }
            None => {}
        }
        for m in &v.mismatches {
            let _ = writeln!(o, "  MISMATCH {m}");
        }
        for m in v.unverified.iter().take(20) {
            let _ = writeln!(o, "  unverified {m}");
        }
        if v.unverified.len() > 20 {
            let _ = writeln!(o, "  ... and {} more unverified", v.unverified.len() - 20);
        }
        if self.hard_failures > 0 {
            let _ = writeln!(o, "HARD FAILURES: {}", self.hard_failures);
            for f in &self.failures {
                let _ = writeln!(o, "  {f}");
            }
        }
        let reasons = self.failure_reasons();
        if reasons.is_empty() {
            let _ = writeln!(o, "result: PASS");
        } else {
            let _ = writeln!(o, "result: FAIL ({})", reasons.join("; "));
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use typha_loadtest_common::daemon_http::Buckets;
    use typha_loadtest_common::hist::new_histogram;

    #[test]
    fn human_durations() {
        assert_eq!(fmt_us(0), "0 µs");
        assert_eq!(fmt_us(999), "999 µs");
        assert_eq!(fmt_us(1_234), "1.23 ms");
        assert_eq!(fmt_us(45_678), "45.7 ms");
        assert_eq!(fmt_us(1_520_000), "1.52 s");
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(3 * 1024), "3.0 KiB");
        assert_eq!(fmt_bytes(12 * 1024 * 1024 + 400 * 1024), "12.4 MiB");
        assert_eq!(fmt_bytes(3 << 29), "1.50 GiB");
    }

    #[test]
    fn histogram_summary() {
        let h = new_histogram();
        let s = HistSummary::of(&h);
        assert_eq!(s.count, 0);
        assert_eq!(s.to_string(), "no samples");
        assert_eq!(s.to_json(), json!({"count": 0}));

        let mut h = new_histogram();
        for v in 1..=1000u64 {
            h.record(v * 100).unwrap();
        }
        let s = HistSummary::of(&h);
        assert_eq!(s.count, 1000);
        // 3 significant figures: values are exact to within 0.1%.
        let near = |got: u64, want: u64| got.abs_diff(want) * 1000 <= want;
        assert!(near(s.p50, 50_000), "{s:?}");
        assert!(near(s.p90, 90_000), "{s:?}");
        assert!(near(s.p99, 99_000), "{s:?}");
        assert!(near(s.max, 100_000), "{s:?}");
        let fixed = HistSummary {
            count: 1000,
            p50: 850,
            p90: 1_234,
            p99: 45_678,
            max: 1_520_000,
        };
        assert_eq!(
            fixed.to_string(),
            "p50 850 µs  p90 1.23 ms  p99 45.7 ms  max 1.52 s  (1000 samples)"
        );
        assert_eq!(fixed.to_json()["p99_us"], 45_678);
    }

    #[test]
    fn derived_figures() {
        let w = Window {
            secs: 10.0,
            cpu_secs: Some(2.0),
            fanout: Some(FanoutCounters {
                frames_written: 1_000_000,
                write_calls: 10,
                bytes_written: 1,
                latency: Buckets(vec![
                    (0.001, 900_000),
                    (0.004, 999_000),
                    (f64::INFINITY, 1_000_000),
                ]),
            }),
        };
        assert_eq!(w.server_latency_bounds_us(), Some((1000.0, 4000.0)));
        assert_eq!(w.cpu_us_per_frame(), Some(2.0));
        let none = Window {
            cpu_secs: None,
            ..w.clone()
        };
        assert_eq!(none.cpu_us_per_frame(), None);
        let zero = Window {
            fanout: Some(FanoutCounters::default()),
            ..w
        };
        assert_eq!(zero.cpu_us_per_frame(), None);

        let mut r = Report {
            rss_start: Some(100 << 20),
            rss_end: Some((100 << 20) + 10_000 * 8192),
            requested: 10_000,
            connected: 10_000,
            in_sync: 10_000,
            open_at_end: 10_000,
            duration_secs: 30.0,
            ..Default::default()
        };
        assert_eq!(r.rss_per_client(), Some(8192.0));
        assert!(r.passed());
        assert!(r.render_text().ends_with("result: PASS\n"));
        r.verification.mismatches.push("client 3".into());
        assert!(!r.passed());
        let text = r.render_text();
        assert!(
            text.contains("MISMATCH client 3") && text.contains("result: FAIL"),
            "{text}"
        );
        assert_eq!(r.to_json()["passed"], false);
        let nobody = Report {
            requested: 5,
            ..Default::default()
        };
        assert_eq!(nobody.failure_reasons(), ["no client could connect"]);
    }

    #[test]
    fn clients_left_unsynced_fail_the_run() {
        // The storm that used to pass: 923 of 10,000 clients still unsynced after 30 s.
        let mut r = Report {
            requested: 10_000,
            connected: 10_000,
            in_sync: 9_077,
            open_at_end: 10_000,
            duration_secs: 30.0,
            ..Default::default()
        };
        assert_eq!(r.not_in_sync(), Some(923));
        assert!(!r.passed());
        assert_eq!(
            r.failure_reasons(),
            ["923 of 10000 clients did not reach in-sync within the 30 s run"]
        );
        let text = r.render_text();
        assert!(
            text.contains("NOT IN SYNC: 923 of 10000 clients did not reach in-sync within 30.0 s"),
            "{text}"
        );
        assert!(text.ends_with(
            "result: FAIL (923 of 10000 clients did not reach in-sync within the 30 s run)\n"
        ));
        assert_eq!(r.to_json()["clients"]["not_in_sync"], 923);
        assert_eq!(r.to_json()["passed"], false);
        // Stalled clients never read, so they are not expected to sync.
        r.scenario.roles.insert("stalled".into(), 923);
        assert_eq!(r.not_in_sync(), None);
        assert!(r.passed(), "{:?}", r.failure_reasons());
        // Clients whose connect time never came count as unsynced too.
        r.scenario.roles.clear();
        r.in_sync = 10_000;
        assert!(r.passed());
        r.in_sync = 9_999;
        r.never_started = 1;
        assert!(r
            .render_text()
            .contains("(1 never started, 0 never connected)"));
        assert!(!r.passed());
    }
}
