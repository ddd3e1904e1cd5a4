//! One `run`: sample the daemon, start the client threads, print progress, stop at the
//! deadline, sample again, verify the full-map clients against `/digest`, build the report.

use crate::args::RunConfig;
use crate::driver::{
    run_thread, ClientPlan, DriverConfig, FullMapState, Segment, Shared, MAX_FRAMES_REMEMBERED,
};
use crate::report::{Report, Scenario, Verification, Window};
use crate::session::Protocol;
use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use typha::model::{Digest, SyncerType};
use typha_loadtest_common::daemon_http::{
    fetch_digest, fetch_drops_by_reason, fetch_fanout_counters, fetch_latest_digest, DaemonDigest,
    FanoutCounters,
};
use typha_loadtest_common::hist::{fmt_us, new_histogram, HistSummary};
use typha_loadtest_common::sys::{raise_nofile_limit, sample_process, ProcSample};

/// File descriptors kept beyond one per client (epoll, HTTP, stdio, the daemon's own probes).
pub const FD_HEADROOM: u64 = 100;

/// The daemon's side at one moment.
#[derive(Debug, Clone)]
struct ServerSample {
    at: Instant,
    proc_: Option<ProcSample>,
    fanout: Option<FanoutCounters>,
}

fn sample_server(cfg: &RunConfig) -> anyhow::Result<ServerSample> {
    let proc_ = cfg
        .target_pid
        .map(|pid| sample_process(pid).with_context(|| format!("cannot sample --target-pid {pid}")))
        .transpose()?;
    let fanout = cfg
        .metrics_addr
        .map(fetch_fanout_counters)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    Ok(ServerSample {
        at: Instant::now(),
        proc_,
        fanout,
    })
}

fn window(a: &ServerSample, b: &ServerSample) -> Window {
    Window {
        secs: (b.at - a.at).as_secs_f64(),
        cpu_secs: a
            .proc_
            .zip(b.proc_)
            .map(|(a, b)| (b.cpu_secs - a.cpu_secs).max(0.0)),
        fanout: a
            .fanout
            .as_ref()
            .zip(b.fanout.as_ref())
            .map(|(a, b)| b.delta(a)),
    }
}

/// The daemon's `/digest` records fetched so far, by seq: fetched while the run goes on (the
/// daemon keeps a bounded history), once per distinct seq.
#[derive(Default)]
struct DaemonDigests {
    addr: Option<SocketAddr>,
    syncer: Option<SyncerType>,
    known: HashMap<u64, Result<Option<DaemonDigest>, String>>,
    pending: BTreeSet<u64>,
}

impl DaemonDigests {
    /// Fetches up to `max` pending seqs.
    fn fetch_some(&mut self, max: usize) {
        let (Some(addr), Some(syncer)) = (self.addr, self.syncer) else {
            self.pending.clear();
            return;
        };
        for _ in 0..max {
            let Some(seq) = self.pending.pop_first() else {
                return;
            };
            self.known
                .entry(seq)
                .or_insert_with(|| fetch_digest(addr, seq, syncer));
        }
    }

    fn get(&mut self, seq: u64) -> Result<Option<DaemonDigest>, String> {
        if !self.known.contains_key(&seq) {
            self.pending.insert(seq);
            self.fetch_some(1);
        }
        self.known
            .get(&seq)
            .cloned()
            .unwrap_or_else(|| Err("no --metrics-addr".into()))
    }
}

/// Once a second: a progress bar on a terminal, a plain line otherwise, nothing with --json.
enum Progress {
    Bar(ProgressBar),
    Lines,
    Quiet,
}

impl Progress {
    fn new(json: bool, clients: u64) -> Progress {
        if json {
            return Progress::Quiet;
        }
        if !std::io::stderr().is_terminal() {
            return Progress::Lines;
        }
        let bar = ProgressBar::new(clients);
        let style = ProgressStyle::with_template(
            "[{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} in sync  {msg}",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        Progress::Bar(bar)
    }

    fn show(&self, elapsed: Duration, in_sync: u64, line: &str, clients: u64) {
        match self {
            Progress::Bar(b) => {
                b.set_position(in_sync.min(clients));
                b.set_message(line.to_owned());
            }
            Progress::Lines => eprintln!(
                "[{:>5.1}s] in-sync {in_sync}/{clients}  {line}",
                elapsed.as_secs_f64()
            ),
            Progress::Quiet => {}
        }
    }

    fn finish(&self) {
        if let Progress::Bar(b) = self {
            b.finish_and_clear();
        }
    }
}

/// Runs the load test; `Ok` carries the report (which may still say FAIL).
pub fn run(cfg: RunConfig) -> anyhow::Result<Report> {
    let fds = raise_nofile_limit().context("cannot read or raise RLIMIT_NOFILE")?;
    let need = cfg.clients as u64 + FD_HEADROOM;
    if !cfg.json {
        eprintln!(
            "typha-loadtest: {fds} file descriptors available ({need} needed for {} clients)",
            cfg.clients
        );
    }
    if fds < need {
        bail!(
            "only {fds} file descriptors are available but {} clients need {need}; raise the hard \
             limit (ulimit -Hn, LimitNOFILE=) or run fewer clients",
            cfg.clients
        );
    }

    // Loaded before anything is measured: a bad file ends the run with a clear error.
    let tls = cfg
        .tls
        .as_ref()
        .map(|o| {
            typha::client::tls::ClientTls::from_files(o)
                .context("cannot load the client TLS settings (--ca-file, --cert-file, --key-file)")
        })
        .transpose()?;

    let before = sample_server(&cfg)?;
    let drops_before = cfg.metrics_addr.map(fetch_drops_by_reason).transpose();
    let me = std::process::id();
    let harness_before = sample_process(me).ok();

    let start = Instant::now();
    let deadline = start + cfg.duration;
    let dcfg = Arc::new(DriverConfig {
        addr: cfg.addr,
        syncer: cfg.syncer,
        codecs: cfg.compression.codecs(),
        start,
        deadline,
        slow_bytes_per_sec: cfg.slow_bytes_per_sec,
        kills_per_sec: cfg.kill_rate / cfg.threads as f64,
        restart_delay: cfg.restart_delay,
        threads: cfg.threads,
        tls,
        protocol: cfg.protocol,
    });
    let shared = Arc::new(Shared::default());
    let (lag_tx, lag_rx) = mpsc::channel::<Histogram<u64>>();
    let (seq_tx, seq_rx) = mpsc::channel::<u64>();
    let mut plans: Vec<Vec<ClientPlan>> = vec![Vec::new(); cfg.threads];
    let mut roles: BTreeMap<&'static str, u64> = BTreeMap::new();
    for idx in 0..cfg.clients {
        let role = cfg.role(idx);
        *roles.entry(role.as_str()).or_default() += 1;
        plans[idx % cfg.threads].push(ClientPlan {
            idx,
            offset: cfg.connect_offset(idx),
            role,
        });
    }
    let mut handles = Vec::with_capacity(cfg.threads);
    for (t, p) in plans.into_iter().enumerate() {
        let (dcfg, shared, tx, stx) =
            (dcfg.clone(), shared.clone(), lag_tx.clone(), seq_tx.clone());
        let h = std::thread::Builder::new()
            .name(format!("loadtest-{t}"))
            .spawn(move || {
                let r = run_thread(t, p, dcfg, shared.clone(), tx, stx);
                if r.is_err() {
                    shared.stop.store(true, Relaxed);
                }
                r
            })
            .context("cannot start a client thread")?;
        handles.push(h);
    }
    drop(lag_tx);
    drop(seq_tx);
    let mut daemon = DaemonDigests {
        addr: cfg.metrics_addr,
        syncer: Some(cfg.syncer),
        ..Default::default()
    };

    // Wait for the deadline: progress every second, and note when the steady state begins
    // (every client connected and in sync, or gone, or stalled on purpose).
    let clients = cfg.clients as u64;
    let progress = Progress::new(cfg.json, clients);
    let mut steady_start: Option<ServerSample> = None;
    let mut window_lag = new_histogram();
    let mut next_progress = start + Duration::from_secs(1);
    let mut last = (start, 0u64, 0u64);
    loop {
        let now = Instant::now();
        if now >= deadline || shared.stop.load(Relaxed) {
            break;
        }
        if shared.started.load(Relaxed) == clients
            && shared.closed.load(Relaxed) == clients
            && shared.kills.load(Relaxed) == shared.restarts.load(Relaxed)
        {
            // Every client has come and gone: nothing is left to measure.
            shared.stop.store(true, Relaxed);
            break;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(50)));
        while let Ok(h) = lag_rx.try_recv() {
            let _ = window_lag.add(&h);
        }
        while let Ok(seq) = seq_rx.try_recv() {
            if !daemon.known.contains_key(&seq) {
                daemon.pending.insert(seq);
            }
        }
        daemon.fetch_some(DIGEST_FETCHES_PER_TICK);
        let in_sync_open = shared.in_sync_open.load(Relaxed);
        if steady_start.is_none()
            && shared.started.load(Relaxed) == clients
            && in_sync_open > 0
            && in_sync_open + shared.closed.load(Relaxed) + shared.stalled_open.load(Relaxed)
                == clients
        {
            // A failed sample only costs the steady-state figures.
            steady_start = sample_server(&cfg).ok();
            shared.steady.store(true, Relaxed);
        }
        let now = Instant::now();
        if now >= next_progress {
            next_progress += Duration::from_secs(1);
            let (updates, frames) = (
                shared.updates.load(Relaxed),
                shared.update_frames.load(Relaxed),
            );
            let dt = (now - last.0).as_secs_f64().max(1e-9);
            let p99 = if window_lag.is_empty() {
                "-".to_owned()
            } else {
                fmt_us(window_lag.value_at_quantile(0.99))
            };
            let line = format!(
                "connected {}/{}  updates/s {:.0}  deliveries/s {:.0}  lag p99 {}  dropped {}  killed {}",
                shared.open.load(Relaxed),
                clients,
                (updates - last.1) as f64 / dt,
                (frames - last.2) as f64 / dt,
                p99,
                shared
                    .closed
                    .load(Relaxed)
                    .saturating_sub(shared.kills.load(Relaxed) - shared.restarts.load(Relaxed)),
                shared.kills.load(Relaxed),
            );
            progress.show(now - start, in_sync_open, &line, clients);
            window_lag.reset();
            last = (now, updates, frames);
        }
    }
    progress.finish();
    let stopped_early = (Instant::now() < deadline).then(|| {
        if shared.hard_failures.load(Relaxed) > 0 {
            "a client hit a protocol error".to_owned()
        } else if shared.closed.load(Relaxed) == clients {
            "every client's connection failed or ended".to_owned()
        } else {
            "a client thread failed".to_owned()
        }
    });

    // Sample the daemon with every client still connected, then stop the threads.
    let after = sample_server(&cfg)?;
    let drops_after = cfg.metrics_addr.map(fetch_drops_by_reason).transpose();
    let harness_after = sample_process(me).ok();
    shared.stop.store(true, Relaxed);
    let mut results = Vec::with_capacity(handles.len());
    for h in handles {
        match h.join() {
            Ok(Ok(r)) => results.push(r),
            Ok(Err(e)) => bail!("a client thread failed: {e}"),
            Err(_) => bail!("a client thread panicked"),
        }
    }
    while let Ok(seq) = seq_rx.try_recv() {
        if !daemon.known.contains_key(&seq) {
            daemon.pending.insert(seq);
        }
    }
    let elapsed = start.elapsed();

    let mut r = Report {
        addr: cfg.addr.to_string(),
        tls: cfg.tls.is_some(),
        syncer: cfg.syncer.as_str().to_owned(),
        protocol: cfg.protocol.as_str().to_owned(),
        compression: match cfg.protocol {
            Protocol::Native => format!("{:?}", cfg.compression).to_lowercase(),
            Protocol::Typha => "snappy".to_owned(),
        },
        threads: cfg.threads,
        ramp_per_sec: cfg.ramp_per_sec,
        duration_secs: cfg.duration.as_secs_f64(),
        elapsed_secs: elapsed.as_secs_f64(),
        stopped_early,
        requested: clients,
        full_maps: cfg.full_maps as u64,
        scenario: Scenario {
            flags: cfg.scenario(),
            slow_fraction: cfg.slow_fraction,
            slow_bytes_per_sec: cfg.slow_bytes_per_sec,
            stalled_fraction: cfg.stalled_fraction,
            kill_rate: cfg.kill_rate,
            restart_delay_secs: cfg.restart_delay.as_secs_f64(),
            roles: roles.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            kills: 0,
            restarts: 0,
        },
        ..Default::default()
    };
    match (drops_before, drops_after) {
        (Ok(Some(a)), Ok(Some(b))) => {
            r.daemon_drops = Some(
                b.iter()
                    .map(|(k, v)| (k.clone(), v.saturating_sub(*a.get(k).unwrap_or(&0))))
                    .filter(|(_, v)| *v > 0)
                    .collect(),
            );
        }
        (Err(e), _) | (_, Err(e)) => r.daemon_drops_error = Some(e),
        _ => {}
    }
    let mut lag = new_histogram();
    let mut steady_lag = new_histogram();
    let mut sync = new_histogram();
    let mut ds_lag = new_histogram();
    let mut full_maps: Vec<FullMapState> = Vec::new();
    let mut streams = Vec::new();
    let mut last_in_sync: Option<Duration> = None;
    let mut frames: HashMap<(u64, u64), (u128, usize)> = HashMap::new();
    let mut refs: BTreeMap<u64, (Digest, usize)> = BTreeMap::new();
    let mut segments: Vec<Segment> = Vec::new();
    let mut mismatches: Vec<String> = Vec::new();
    let mut records_full = false;
    for t in results {
        let _ = lag.add(&t.lag_us);
        let _ = steady_lag.add(&t.steady_lag_us);
        let _ = sync.add(&t.sync_us);
        let _ = ds_lag.add(&t.ds_lag_us);
        r.never_started += t.never_started;
        r.connected += t.connected;
        r.in_sync += t.in_sync;
        r.open_at_end += t.open_at_end;
        r.in_sync_at_end += t.in_sync_at_end;
        r.snapshots += t.snapshots;
        r.snapshot_bytes += t.snapshot_bytes;
        r.updates += t.updates;
        r.update_frames += t.update_frames;
        r.frames += t.frames;
        r.bytes += t.bytes;
        r.pings += t.pings;
        r.scenario.kills += t.kills;
        r.scenario.restarts += t.restarts;
        r.tls_handshake_failures += t.tls_failures;
        for (k, v) in t.drops {
            *r.drops.entry(k).or_default() += v;
        }
        r.failures.extend(t.failures);
        full_maps.extend(t.full_maps);
        streams.extend(t.streams);
        last_in_sync = match (last_in_sync, t.last_in_sync) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        // Threads compared their own clients; now compare the threads with each other.
        for (k, (h, idx)) in t.frames_seen {
            match frames.get(&k) {
                Some(&(h2, idx2)) if h2 != h => mismatches.push(format!(
                    "client {idx}: Updates {}..={} differs from client {idx2}'s (content hash {h:032x} vs {h2:032x})",
                    k.0, k.1
                )),
                Some(_) => {}
                None => {
                    frames.insert(k, (h, idx));
                }
            }
        }
        for (seq, (d, idx)) in t.ref_digests {
            match refs.get(&seq) {
                Some(&(d2, idx2)) if d2 != d => mismatches.push(format!(
                    "full-map clients {idx} and {idx2} disagree at seq {seq}: digest {d} vs {d2}"
                )),
                Some(_) => {}
                None => {
                    refs.insert(seq, (d, idx));
                }
            }
        }
        segments.extend(t.segments);
        mismatches.extend(t.mismatches);
        records_full |= t.records_full;
    }
    r.hard_failures = shared.hard_failures.load(Relaxed);
    r.lag = HistSummary::of(&lag);
    r.steady_lag = HistSummary::of(&steady_lag);
    r.time_to_sync = HistSummary::of(&sync);
    r.datastore_lag = HistSummary::of(&ds_lag);
    // Stalled clients never read, so never sync: "all" means all the others.
    let stalled = r.scenario.roles.get("stalled").copied().unwrap_or(0);
    r.all_in_sync_after = last_in_sync.filter(|_| r.in_sync == clients - stalled);
    r.whole = Some(window(&before, &after));
    r.steady = steady_start
        .filter(|s| (after.at - s.at) >= Duration::from_secs(1))
        .map(|s| window(&s, &after));
    r.rss_start = before.proc_.map(|p| p.rss_bytes);
    r.rss_end = after.proc_.map(|p| p.rss_bytes);
    r.harness_cpu_secs = harness_before
        .zip(harness_after)
        .map(|(a, b)| b.cpu_secs - a.cpu_secs);
    full_maps.sort_by_key(|f| f.idx);
    segments.sort_by_key(|s| (s.idx, s.snap_seq));
    r.verification = match cfg.protocol {
        Protocol::Native => verify(cfg.metrics_addr, cfg.syncer, &mut full_maps),
        Protocol::Typha => verify_felix(
            cfg.metrics_addr,
            cfg.syncer,
            &mut full_maps,
            clients - r.full_maps,
        ),
    };
    let lost = shared.mismatches.load(Relaxed) as usize;
    let v = &mut r.verification;
    v.frames_compared = frames.len() as u64;
    if lost > mismatches.len() {
        mismatches.push(format!(
            "... and {} more mismatches not listed",
            lost - mismatches.len()
        ));
    }
    v.mismatches.extend(mismatches);
    if records_full {
        v.unverified.push(format!(
            "more than {MAX_FRAMES_REMEMBERED} frames: later frames were not compared"
        ));
    }
    let coverage: Vec<(u64, u64)> = full_maps
        .iter()
        .filter_map(|f| f.snap_seq.map(|s| (s, f.seq)))
        .collect();
    verify_segments(
        &segments,
        &RefDigests {
            by_seq: refs,
            coverage,
        },
        &mut daemon,
        v,
    );
    v.verified_at_end += full_maps.iter().filter(|f| f.open && f.verified).count() as u64;
    drop(streams);
    if let (Some(kc), Some(m)) = (&cfg.verify_datastore, cfg.metrics_addr) {
        match crate::datastore_check::check(kc, m, cfg.syncer) {
            Ok(c) => {
                if !c.matches() {
                    r.verification.mismatches.push(format!(
                        "datastore: the API server's objects translate to {} keys, digest {}; the \
                         daemon (seq {}) has {} keys, digest {}",
                        c.keys, c.digest, c.daemon.seq, c.daemon.keys, c.daemon.digest
                    ));
                }
                r.datastore_check = Some(Ok(c));
            }
            Err(e) => {
                r.verification.unverified.push(format!("datastore: {e}"));
                r.datastore_check = Some(Err(e));
            }
        }
    }
    Ok(r)
}

/// The full-map clients' map digests: recorded at their snapshot seq and at the `last_seq` of
/// every frame after it. A syncer type's frames chain (each starts right after the previous
/// one ends) but one frame can span batches that had nothing for that type, so its map is the
/// same at every seq from the end of one frame to just before the end of the next: the digest
/// at `x` is the one recorded at the greatest seq at or below `x`, provided a full-map client
/// received every frame around `x` (held a range of seqs containing it).
struct RefDigests {
    by_seq: BTreeMap<u64, (Digest, usize)>,
    /// `(snapshot seq, final seq)` of each full-map client.
    coverage: Vec<(u64, u64)>,
}

impl RefDigests {
    fn at(&self, seq: u64) -> Option<(Digest, usize)> {
        if !self.coverage.iter().any(|&(a, b)| a <= seq && seq <= b) {
            return None;
        }
        self.by_seq.range(..=seq).next_back().map(|(_, v)| *v)
    }
}

/// Daemon digests fetched per progress tick while running.
const DIGEST_FETCHES_PER_TICK: usize = 50;

/// Verifies every digest-only session (see `docs/benchmarks.md`, "Verification"): its snapshot
/// equals the daemon's at its seq, and the full-map clients' maps went from a map with the same
/// digest at its snapshot seq to the daemon's at its final seq through the very frames it
/// received.
fn verify_segments(
    segments: &[Segment],
    refs: &RefDigests,
    daemon: &mut DaemonDigests,
    v: &mut Verification,
) {
    if daemon.addr.is_none() {
        return;
    }
    for s in segments {
        let who = format!("client {} ({})", s.idx, s.ended);
        let snap = daemon.get(s.snap_seq);
        match &snap {
            Ok(Some(d)) if d.keys != s.snap_keys || d.digest != s.snap_digest.to_string() => {
                v.mismatches.push(format!(
                    "{who}: snapshot at seq {} has {} keys, digest {}; the daemon's has {} keys, digest {}",
                    s.snap_seq, s.snap_keys, s.snap_digest, d.keys, d.digest
                ));
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                v.unverified.push(format!("{who}: {e}"));
                continue;
            }
        }
        let snap_known = matches!(snap, Ok(Some(_)));
        if s.final_seq == s.snap_seq {
            if snap_known {
                v.digest_only_verified += 1;
                v.verified_at_end += u64::from(s.ended == "open at the end");
            } else {
                v.unverified.push(format!(
                    "{who}: the daemon no longer holds its snapshot seq {}",
                    s.snap_seq
                ));
            }
            continue;
        }
        if !s.frames_compared {
            v.unverified
                .push(format!("{who}: some of its frames were not compared"));
            continue;
        }
        let (Some((ref_snap, r1)), Some((ref_final, r2))) =
            (refs.at(s.snap_seq), refs.at(s.final_seq))
        else {
            v.unverified.push(format!(
                "{who}: no full-map client held both its snapshot seq {} and its final seq {}",
                s.snap_seq, s.final_seq
            ));
            continue;
        };
        if ref_snap != s.snap_digest {
            v.mismatches.push(format!(
                "{who}: snapshot at seq {} has digest {}, full-map client {r1} had {ref_snap}",
                s.snap_seq, s.snap_digest
            ));
            continue;
        }
        match daemon.get(s.final_seq) {
            Ok(Some(d)) if d.digest == ref_final.to_string() => {
                v.digest_only_verified += 1;
                v.verified_at_end += u64::from(s.ended == "open at the end");
            }
            Ok(Some(d)) => v.mismatches.push(format!(
                "{who}: at its final seq {} its map (as full-map client {r2}'s) has digest {ref_final}; the daemon's is {}",
                s.final_seq, d.digest
            )),
            Ok(None) => v.unverified.push(format!(
                "{who}: the daemon no longer holds its final seq {}",
                s.final_seq
            )),
            Err(e) => v.unverified.push(format!("{who}: {e}")),
        }
    }
    v.verified += v.digest_only_verified;
}

/// Daemon digest records searched for a Felix-protocol client's map: the newest and this many
/// before it. A few seconds of batches at the churn rates the harness runs.
const FELIX_DIGEST_WINDOW: u64 = 2_000;
/// Consecutive seqs the daemon no longer holds after which its history is taken as ended.
const FELIX_HISTORY_END: u32 = 64;

/// Verifies Felix-protocol full-map clients, which know no sequence number: each one's
/// `(keys, digest)` after one of its last messages must equal the daemon's record at some seq in
/// the daemon's recent history (a batch may span several `MsgKVs`, so the very last point may
/// fall inside one). The digest-only Felix clients are not verified beyond decoding every
/// message and reaching in-sync: the protocol gives them nothing to compare.
fn verify_felix(
    addr: Option<SocketAddr>,
    syncer: SyncerType,
    clients: &mut [FullMapState],
    digest_only: u64,
) -> Verification {
    let mut v = Verification::default();
    let Some(addr) = addr else {
        v.skipped = Some("no --metrics-addr".into());
        return v;
    };
    if digest_only > 0 {
        v.unverified.push(format!(
            "{digest_only} Felix-protocol clients keep no map: the protocol carries no sequence \
             number or digest to verify them by (they decoded every message and are counted in \
             in-sync)"
        ));
    }
    if clients.is_empty() {
        v.skipped = Some("no full-map clients (--full-maps 0)".into());
        return v;
    }
    let newest = match fetch_latest_digest(addr, syncer) {
        Ok(d) => d.seq,
        Err(e) => {
            v.unverified.push(format!("Felix-protocol clients: {e}"));
            return v;
        }
    };
    let low = newest.saturating_sub(FELIX_DIGEST_WINDOW);
    let mut pending: Vec<usize> = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        if c.snapshot_complete {
            pending.push(i);
        } else {
            v.unverified
                .push(format!("client {}: never reached in-sync", c.idx));
        }
    }
    // Newest first, until every client matched, the window ends or the daemon's history does.
    let mut seq = newest;
    let mut misses = 0;
    while !pending.is_empty() && seq >= low && misses < FELIX_HISTORY_END {
        match fetch_digest(addr, seq, syncer) {
            Ok(Some(d)) => {
                misses = 0;
                pending.retain(|&i| {
                    let c = &mut clients[i];
                    let hit = c
                        .recent
                        .iter()
                        .any(|&(keys, digest)| keys == d.keys && digest.to_string() == d.digest);
                    if hit {
                        c.verified = true;
                        c.seq = seq;
                    }
                    !hit
                });
            }
            Ok(None) => misses += 1,
            Err(e) => {
                v.unverified.push(format!("Felix-protocol clients: {e}"));
                break;
            }
        }
        let Some(next) = seq.checked_sub(1) else {
            break;
        };
        seq = next;
    }
    let matched = clients.iter().filter(|c| c.verified).count() as u64;
    v.verified += matched;
    v.full_map_verified += matched;
    for i in pending {
        let c = &clients[i];
        v.mismatches.push(format!(
            "client {} (Felix protocol): none of its last {} map states (the last: {} keys, \
             digest {}) matches the daemon's /digest at any seq in {}..={newest}",
            c.idx,
            c.recent.len(),
            c.keys,
            c.digest,
            seq.max(low)
        ));
    }
    v
}

/// Compares each full-map client's `(keys, digest)` at its sequence number with the daemon's.
fn verify(
    addr: Option<SocketAddr>,
    syncer: SyncerType,
    clients: &mut [FullMapState],
) -> Verification {
    let mut v = Verification::default();
    let Some(addr) = addr else {
        v.skipped = Some("no --metrics-addr".into());
        return v;
    };
    if clients.is_empty() {
        v.skipped = Some("no full-map clients (--full-maps 0)".into());
        return v;
    }
    for c in clients {
        if !c.snapshot_complete {
            v.unverified
                .push(format!("client {}: snapshot never completed", c.idx));
            continue;
        }
        match fetch_digest(addr, c.seq, syncer) {
            Ok(Some(d)) => {
                if d.seq == c.seq && d.keys == c.keys && d.digest == c.digest {
                    v.verified += 1;
                    v.full_map_verified += 1;
                    c.verified = true;
                } else {
                    v.mismatches.push(format!(
                        "client {}{} at seq {}: client has {} keys, digest {}; daemon (seq {}) has {} keys, digest {}",
                        c.idx,
                        if c.open { "" } else { " (dropped before the end)" },
                        c.seq,
                        c.keys,
                        c.digest,
                        d.seq,
                        d.keys,
                        d.digest
                    ));
                }
            }
            Ok(None) => v.unverified.push(format!(
                "client {}: the daemon no longer holds seq {}",
                c.idx, c.seq
            )),
            Err(e) => v.unverified.push(format!("client {}: {e}", c.idx)),
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Compression;
    use std::io::{Read, Write};

    use typha::daemon::Daemon;
    use typha::model::SyncStatus;
    use typha::proto::{encode_frame, ServerHello, ServerMessage, PROTOCOL_VERSION};

    fn config(addr: SocketAddr, clients: usize, full_maps: usize, secs: f64) -> RunConfig {
        RunConfig {
            addr,
            clients,
            syncer: SyncerType::Felix,
            compression: Compression::Zstd,
            protocol: Protocol::Native,
            threads: 2,
            duration: Duration::from_secs_f64(secs),
            ramp_per_sec: 0.0,
            full_maps,
            target_pid: None,
            metrics_addr: None,
            json: true,
            slow_fraction: 0.0,
            slow_bytes_per_sec: 65536,
            stalled_fraction: 0.0,
            kill_rate: 0.0,
            restart_delay: Duration::from_millis(300),
            verify_datastore: None,
            tls: None,
        }
    }

    /// A small real daemon on ephemeral loopback ports, in this process.
    fn daemon() -> Daemon {
        let flags = [
            "--sim-nodes".to_owned(),
            "5".to_owned(),
            "--sim-endpoints".to_owned(),
            "200".to_owned(),
            "--sim-policies".to_owned(),
            "10".to_owned(),
            "--sim-churn-rate".to_owned(),
            "200".to_owned(),
            "--log-severity-screen".to_owned(),
            "none".to_owned(),
        ];
        typha::testing::start_daemon_with_flags(&flags, Duration::from_secs(10)).unwrap()
    }

    #[test]
    fn run_against_a_daemon_verifies_every_full_map_client() {
        let d = daemon();
        let mut cfg = config(d.protocol_addr, 40, 5, 2.0);
        cfg.metrics_addr = d.metrics_addr;
        cfg.target_pid = Some(std::process::id());
        let r = run(cfg).unwrap();
        assert!(r.passed(), "{}", r.render_text());
        assert_eq!((r.connected, r.in_sync, r.open_at_end), (40, 40, 40));
        assert_eq!(r.verification.full_map_verified, 5, "{:?}", r.verification);
        assert!(r.verification.mismatches.is_empty());
        assert!(r.updates > 0 && r.update_frames > 0 && r.lag.count > 0);
        assert_eq!(r.time_to_sync.count, 40);
        assert!(r.all_in_sync_after.is_some());
        let w = r.whole.as_ref().unwrap();
        assert!(w.cpu_secs.is_some());
        assert!(w.fanout.as_ref().unwrap().frames_written > 0);
        assert!(r.drops.is_empty(), "{:?}", r.drops);
        let j = r.to_json();
        assert_eq!(j["clients"]["in_sync"], 40);
        // Every digest-only client verified too, through the full-map clients' frames.
        assert_eq!(
            r.verification.digest_only_verified, 35,
            "{:?}",
            r.verification
        );
        assert_eq!(r.verification.verified, 40);
        assert_eq!(r.verification.verified_at_end, 40);
        assert!(r.verification.frames_compared > 0);
        drop(d);
    }

    #[test]
    fn killed_slow_and_stalled_clients() {
        let d = daemon();
        let mut cfg = config(d.protocol_addr, 60, 4, 3.0);
        cfg.metrics_addr = d.metrics_addr;
        cfg.kill_rate = 8.0;
        cfg.slow_fraction = 0.2;
        cfg.slow_bytes_per_sec = 1 << 20;
        cfg.stalled_fraction = 0.1;
        let r = run(cfg).unwrap();
        assert!(r.passed(), "{}", r.render_text());
        assert!(r.scenario.kills >= 10, "{:?}", r.scenario);
        assert!(r.scenario.restarts > 0);
        let stalled = r.scenario.roles["stalled"];
        assert!(stalled > 0 && r.scenario.roles["slow"] > 0);
        // Killed sessions were verified as well as the final ones.
        assert!(
            r.verification.digest_only_verified > 56 - stalled,
            "{:?}",
            r.verification
        );
        assert!(r.verification.mismatches.is_empty());
        assert!(r.drops.is_empty(), "{:?}", r.drops);
        drop(d);
    }

    #[test]
    fn digest_only_sessions_are_verified_through_the_full_map_clients() {
        let dg = |n: u128| Digest(n);
        let dd = |seq: u64, keys: u64, n: u128| {
            Ok(Some(DaemonDigest {
                seq,
                keys,
                digest: dg(n).to_string(),
            }))
        };
        // A full-map client held seqs 10..=30: digest 1 at 10, 2 at 20 (a frame 11..=20), 3 at
        // 30 (a frame 21..=30).
        let refs = RefDigests {
            by_seq: [(10, (dg(1), 0)), (20, (dg(2), 0)), (30, (dg(3), 0))]
                .into_iter()
                .collect(),
            coverage: vec![(10, 30)],
        };
        assert_eq!(refs.at(15), Some((dg(1), 0)));
        assert_eq!(refs.at(20), Some((dg(2), 0)));
        assert_eq!(refs.at(9), None);
        assert_eq!(refs.at(31), None);
        let mut daemon = DaemonDigests {
            addr: Some("127.0.0.1:9".parse().unwrap()),
            syncer: Some(SyncerType::Felix),
            ..Default::default()
        };
        daemon.known.insert(15, dd(15, 5, 1));
        daemon.known.insert(30, dd(30, 6, 3));
        daemon.known.insert(20, dd(20, 6, 99));
        daemon.known.insert(5, Ok(None));
        let seg = |idx, snap_seq, snap_digest: u128, final_seq| Segment {
            idx,
            snap_seq,
            snap_keys: 5,
            snap_digest: dg(snap_digest),
            final_seq,
            first_frame_seq: Some(snap_seq + 1),
            frames_compared: true,
            ended: "open at the end",
        };
        let segments = [
            // Snapshot mid-frame at 15 (same map as at 10), then frames to 30: verified.
            seg(1, 15, 1, 30),
            // Its snapshot disagrees with the daemon's at 15.
            seg(2, 15, 7, 30),
            // Ends at 20, where the daemon disagrees with the full-map client.
            seg(3, 15, 1, 20),
            // Snapshot before any full-map client and outside the daemon's history.
            seg(4, 5, 1, 30),
        ];
        let mut v = Verification::default();
        verify_segments(&segments, &refs, &mut daemon, &mut v);
        assert_eq!(v.digest_only_verified, 1, "{v:?}");
        assert_eq!(v.verified_at_end, 1);
        assert_eq!(v.mismatches.len(), 2, "{v:?}");
        assert!(v.mismatches[0].starts_with("client 2 (open at the end): snapshot at seq 15"));
        assert!(v.mismatches[1].contains("client 3") && v.mismatches[1].contains("seq 20"));
        assert_eq!(v.unverified.len(), 1, "{v:?}");
        assert!(v.unverified[0].starts_with("client 4"));
    }

    #[test]
    fn a_sequence_gap_is_a_hard_failure() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut hello = [0u8; 256];
            let _ = s.read(&mut hello).unwrap();
            let mut out = encode_frame(&ServerMessage::ServerHello(ServerHello {
                protocol_version: PROTOCOL_VERSION,
                server_id: "fake".into(),
                connection_id: 1,
                syncer_type: "felix".into(),
                compression: None,
            }))
            .to_vec();
            out.extend_from_slice(&encode_frame(&ServerMessage::SnapshotEnd {
                seq: 10,
                status: SyncStatus::InSync,
                key_count: 0,
                digest: [0; 16],
            }));
            out.extend_from_slice(&encode_frame(&ServerMessage::Updates {
                first_seq: 12,
                last_seq: 12,
                received_at: 0,
                updates: Vec::new(),
            }));
            s.write_all(&out).unwrap();
            // Hold the connection until the client drops it.
            let _ = s.read(&mut hello);
        });
        let r = run(config(addr, 1, 0, 10.0)).unwrap();
        server.join().unwrap();
        assert!(!r.passed());
        assert_eq!(r.hard_failures, 1);
        assert!(r.failures[0].contains("gap"), "{:?}", r.failures);
        assert_eq!(r.drops.get("protocol error"), Some(&1));
        assert!(r.stopped_early.is_some(), "a hard failure stops the run");
        assert!(r.elapsed_secs < 5.0);
        assert!(r.render_text().contains("result: FAIL"));
    }
    /// A Felix-protocol server on loopback: per connection, the preamble, a ServerHello, a
    /// two-key snapshot, InSync and one delta (no decoder restart: the streamed path), then it
    /// holds the connection. Returns its address and the map's final digest.
    fn felix_server() -> (SocketAddr, Digest) {
        use typha::proto::typha::{
            encode_kvs, encode_server_hello, encode_sync_status, server_preamble, SerializedUpdate,
            ServerHello, SYNC_STATUS_IN_SYNC, UPDATE_TYPE_DELETED, UPDATE_TYPE_NEW,
        };
        let kv = |k: &str, v: Option<&'static [u8]>, t| SerializedUpdate {
            key: k.into(),
            value: v.map(bytes::Bytes::from_static),
            update_type: t,
            ..Default::default()
        };
        let mut stream = server_preamble().to_vec();
        stream.extend_from_slice(&encode_server_hello(&ServerHello {
            version: "fake".into(),
            syncer_type: "felix".into(),
            supports_node_resource_updates: true,
            server_conn_id: 1,
        }));
        stream.extend_from_slice(&encode_kvs(&[
            kv("/a", Some(b"1"), UPDATE_TYPE_NEW),
            kv("/b", Some(b"2"), UPDATE_TYPE_NEW),
        ]));
        stream.extend_from_slice(&encode_sync_status(SYNC_STATUS_IN_SYNC));
        stream.extend_from_slice(&encode_kvs(&[kv("/b", None, UPDATE_TYPE_DELETED)]));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { return };
                let stream = stream.clone();
                std::thread::spawn(move || {
                    let mut hello = [0u8; 512];
                    let _ = s.read(&mut hello);
                    let _ = s.write_all(&stream);
                    let _ = s.read(&mut hello);
                });
            }
        });
        let mut d = Digest::default();
        d.add("/a", b"1");
        (addr, d)
    }

    /// Serves `/metrics` (the fan-out counters) and `/digest` with one record, seq 7.
    fn digest_server(keys: u64, digest: Digest) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { return };
                let mut req = Vec::new();
                let mut b = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&b[..n]),
                    }
                }
                let req = String::from_utf8_lossy(&req);
                let path = req.split(' ').nth(1).unwrap_or("/").to_owned();
                let record = format!(
                    r#"{{"seq":7,"syncers":{{"felix":{{"keys":{keys},"digest":"{digest}"}}}}}}"#
                );
                let (code, body) = match path.as_str() {
                    "/metrics" => (
                        200,
                        "typha_frames_written_total 1\ntypha_write_calls_total 1\n\
                         typha_bytes_written_total 1\n"
                            .to_owned(),
                    ),
                    "/digest" | "/digest?seq=7" => (200, record),
                    _ => (404, "no such seq\n".to_owned()),
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        addr
    }

    #[test]
    fn felix_protocol_clients_sync_and_full_maps_match_the_daemon_digest() {
        let (addr, digest) = felix_server();
        let mut cfg = config(addr, 30, 3, 1.0);
        cfg.protocol = Protocol::Typha;
        cfg.metrics_addr = Some(digest_server(1, digest));
        let r = run(cfg).unwrap();
        assert!(r.passed(), "{}", r.render_text());
        assert_eq!((r.connected, r.in_sync, r.open_at_end), (30, 30, 30));
        assert_eq!(r.protocol, "typha");
        assert_eq!(r.verification.full_map_verified, 3, "{:?}", r.verification);
        // One delta (one key) per client after in-sync.
        assert_eq!((r.updates, r.update_frames), (30, 30));
        assert_eq!(r.lag.count, 0, "Felix messages carry no timestamps");
        assert!(r.render_text().contains("(typha protocol)"));

        // A daemon whose digest disagrees fails the run, naming the client.
        let (addr, _) = felix_server();
        let mut cfg = config(addr, 5, 2, 1.0);
        cfg.protocol = Protocol::Typha;
        cfg.metrics_addr = Some(digest_server(1, Digest(42)));
        let r = run(cfg).unwrap();
        assert!(!r.passed());
        assert_eq!(r.verification.mismatches.len(), 2, "{:?}", r.verification);
        assert!(
            r.verification.mismatches[0].contains("(Felix protocol)"),
            "{:?}",
            r.verification.mismatches
        );
    }
}
