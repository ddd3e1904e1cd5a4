//! One `run`: sample the daemon, start the client threads, print progress, stop at the
//! deadline, sample again, verify the full-map clients against `/digest`, build the report.

use crate::cli::RunConfig;
use crate::daemon_http::{fetch_digest, fetch_fanout_counters, FanoutCounters};
use crate::driver::{new_histogram, run_thread, ClientPlan, DriverConfig, FullMapState, Shared};
use crate::report::{fmt_us, HistSummary, Report, Verification, Window};
use crate::sys::{raise_nofile_limit, sample_process, ProcSample};
use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use typha::model::SyncerType;

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

/// Runs the load test; `Ok` carries the report (which may still say FAIL).
pub fn run(cfg: RunConfig) -> anyhow::Result<Report> {
    let fds = raise_nofile_limit().context("cannot read or raise RLIMIT_NOFILE")?;
    let need = cfg.clients as u64 + FD_HEADROOM;
    eprintln!(
        "typha-loadtest: {fds} file descriptors available ({need} needed for {} clients)",
        cfg.clients
    );
    if fds < need {
        bail!(
            "only {fds} file descriptors are available but {} clients need {need}; raise the hard \
             limit (ulimit -Hn, LimitNOFILE=) or run fewer clients",
            cfg.clients
        );
    }

    let before = sample_server(&cfg)?;
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
    });
    let shared = Arc::new(Shared::default());
    let (lag_tx, lag_rx) = mpsc::channel::<Histogram<u64>>();
    let mut plans: Vec<Vec<ClientPlan>> = vec![Vec::new(); cfg.threads];
    for idx in 0..cfg.clients {
        plans[idx % cfg.threads].push(ClientPlan {
            idx,
            offset: cfg.connect_offset(idx),
            full: idx < cfg.full_maps,
        });
    }
    let mut handles = Vec::with_capacity(cfg.threads);
    for (t, p) in plans.into_iter().enumerate() {
        let (dcfg, shared, tx) = (dcfg.clone(), shared.clone(), lag_tx.clone());
        let h = std::thread::Builder::new()
            .name(format!("loadtest-{t}"))
            .spawn(move || {
                let r = run_thread(p, dcfg, shared.clone(), tx);
                if r.is_err() {
                    shared.stop.store(true, Relaxed);
                }
                r
            })
            .context("cannot start a client thread")?;
        handles.push(h);
    }
    drop(lag_tx);

    // Wait for the deadline: progress every second, and note when the steady state begins
    // (every client connected and in sync, or gone).
    let clients = cfg.clients as u64;
    let mut steady_start: Option<ServerSample> = None;
    let mut window_lag = new_histogram();
    let mut next_progress = start + Duration::from_secs(1);
    let mut last = (start, 0u64, 0u64);
    loop {
        let now = Instant::now();
        if now >= deadline || shared.stop.load(Relaxed) {
            break;
        }
        if shared.started.load(Relaxed) == clients && shared.closed.load(Relaxed) == clients {
            // Every client has come and gone: nothing is left to measure.
            shared.stop.store(true, Relaxed);
            break;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(50)));
        while let Ok(h) = lag_rx.try_recv() {
            let _ = window_lag.add(&h);
        }
        let in_sync_open = shared.in_sync_open.load(Relaxed);
        if steady_start.is_none()
            && shared.started.load(Relaxed) == clients
            && in_sync_open > 0
            && in_sync_open + shared.closed.load(Relaxed) == clients
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
            if !cfg.json {
                let p99 = if window_lag.is_empty() {
                    "-".to_owned()
                } else {
                    fmt_us(window_lag.value_at_quantile(0.99))
                };
                eprintln!(
                    "[{:>5.1}s] connected {}/{}  in-sync {}  updates/s {:.0}  deliveries/s {:.0}  lag p99 {}  dropped {}",
                    (now - start).as_secs_f64(),
                    shared.open.load(Relaxed),
                    clients,
                    in_sync_open,
                    (updates - last.1) as f64 / dt,
                    (frames - last.2) as f64 / dt,
                    p99,
                    shared.closed.load(Relaxed),
                );
            }
            window_lag.reset();
            last = (now, updates, frames);
        }
    }
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
    let elapsed = start.elapsed();

    let mut r = Report {
        addr: cfg.addr.to_string(),
        syncer: cfg.syncer.as_str().to_owned(),
        compression: format!("{:?}", cfg.compression).to_lowercase(),
        threads: cfg.threads,
        ramp_per_sec: cfg.ramp_per_sec,
        duration_secs: cfg.duration.as_secs_f64(),
        elapsed_secs: elapsed.as_secs_f64(),
        stopped_early,
        requested: clients,
        full_maps: cfg.full_maps as u64,
        ..Default::default()
    };
    let mut lag = new_histogram();
    let mut steady_lag = new_histogram();
    let mut sync = new_histogram();
    let mut full_maps: Vec<FullMapState> = Vec::new();
    let mut streams = Vec::new();
    let mut last_in_sync: Option<Duration> = None;
    for t in results {
        let _ = lag.add(&t.lag_us);
        let _ = steady_lag.add(&t.steady_lag_us);
        let _ = sync.add(&t.sync_us);
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
    }
    r.hard_failures = shared.hard_failures.load(Relaxed);
    r.lag = HistSummary::of(&lag);
    r.steady_lag = HistSummary::of(&steady_lag);
    r.time_to_sync = HistSummary::of(&sync);
    r.all_in_sync_after = last_in_sync.filter(|_| r.in_sync == clients);
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
    r.verification = verify(cfg.metrics_addr, cfg.syncer, &full_maps);
    drop(streams);
    Ok(r)
}

/// Compares each full-map client's `(keys, digest)` at its sequence number with the daemon's.
fn verify(addr: Option<SocketAddr>, syncer: SyncerType, clients: &[FullMapState]) -> Verification {
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
    use crate::cli::Compression;
    use std::io::{Read, Write};
    use typha::config::Config;
    use typha::daemon::{Daemon, DaemonConfig};
    use typha::model::SyncStatus;
    use typha::proto::{encode_frame, ServerHello, ServerMessage, PROTOCOL_VERSION};

    fn config(addr: SocketAddr, clients: usize, full_maps: usize, secs: f64) -> RunConfig {
        RunConfig {
            addr,
            clients,
            syncer: SyncerType::Felix,
            compression: Compression::Zstd,
            threads: 2,
            duration: Duration::from_secs_f64(secs),
            ramp_per_sec: 0.0,
            full_maps,
            target_pid: None,
            metrics_addr: None,
            json: true,
        }
    }

    /// A small real daemon on ephemeral loopback ports, in this process.
    fn daemon() -> Daemon {
        let cfg = Config::load_from([
            "typha",
            "--config-file",
            "/dev/null",
            "--sim-nodes",
            "5",
            "--sim-endpoints",
            "200",
            "--sim-policies",
            "10",
            "--sim-churn-rate",
            "200",
            "--log-severity-screen",
            "none",
        ])
        .unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut server = cfg.server_config().unwrap();
        server.listen = any;
        let mut datastore = cfg.datastore_config().unwrap();
        datastore.health_listen = None;
        datastore.metrics_listen = Some(any);
        let d = Daemon::start(DaemonConfig {
            server,
            datastore,
            batch_channel_capacity: cfg.batch_channel_capacity,
        })
        .unwrap();
        let t = Instant::now();
        while d.status.sync_status() != SyncStatus::InSync {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "daemon never in sync"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
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
        assert_eq!(r.verification.verified, 5, "{:?}", r.verification);
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
        drop(d);
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
}
