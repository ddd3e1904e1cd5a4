//! The datastore thread: a current-thread tokio runtime running the datastore driver and the
//! batcher loop. The HTTP listeners get a thread (and runtime) of their own, so that `/liveness`
//! can still answer, with the reason, while the datastore thread is stuck.
//!
//! The driver is supervised: if it panics or ends while the daemon runs, it is restarted after
//! a backoff and marked down on the status board until its new instance is in sync again. The
//! new instance knows nothing of what the old one sent, so the pipeline sweeps: every key the
//! daemon held at the restart that the new instance did not report by the time it is in sync
//! is deleted, and the statuses the new instance reports on the way (waiting, resyncing) are
//! not passed on to clients that were already in sync (status never goes backwards).

use super::batcher::{BatchLimits, Batcher, FlushOutcome, ReactorSink};
use super::{k8s, sim, DriverEvent};
use crate::http::{self, Endpoints, HttpContext};
use crate::metrics::Metrics;
use crate::model::{Key, KvUpdate, StateMap, SyncStatus};
use crate::proto::encode::EncodeOptions;
use crate::status::StatusBoard;
use crate::supervise::{panic_message, Backoff, ExitWatch, Recoverable};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

/// Which datastore to watch.
#[derive(Debug, Clone)]
pub enum DriverConfig {
    Sim(sim::SimConfig),
    Kubernetes(k8s::KubernetesConfig),
}

#[derive(Debug, Clone)]
pub struct DatastoreThreadConfig {
    pub driver: DriverConfig,
    pub limits: BatchLimits,
    pub encode: EncodeOptions,
    /// Where to serve `/liveness` and `/readiness`; `None` disables.
    pub health_listen: Option<SocketAddr>,
    /// Where to serve `/metrics` and `/digest`; `None` disables.
    pub metrics_listen: Option<SocketAddr>,
    /// A thread that has not made progress for this long fails `/liveness`.
    pub liveness_stall: Duration,
    /// A datastore server (Kubernetes) unreachable for this long fails `/liveness`.
    pub datastore_unreachable: Duration,
    /// A supervised part (the driver, a per-kind watch) down for this long fails `/readiness`.
    pub component_down_unready: Duration,
}

/// The status-board and metric name of the supervised driver.
const DRIVER: &str = "driver";

/// The running datastore thread.
pub struct DatastoreHandle {
    thread: Option<JoinHandle<()>>,
    http_thread: Option<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    pub health_addr: Option<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
}

impl DatastoreHandle {
    /// Stops the driver and the listeners and waits for the thread.
    pub fn stop(self) {
        // Drop does it all.
    }
}

impl Drop for DatastoreHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for t in [self.thread.take(), self.http_thread.take()]
            .into_iter()
            .flatten()
        {
            let _ = t.join();
        }
    }
}

fn bind_http(addr: Option<SocketAddr>) -> std::io::Result<Option<std::net::TcpListener>> {
    addr.map(|a| {
        let l = std::net::TcpListener::bind(a)?;
        l.set_nonblocking(true)?;
        Ok(l)
    })
    .transpose()
}

/// Starts the datastore thread. Listeners are bound before it returns, so a port conflict is
/// reported here and the bound addresses are known.
pub fn spawn_datastore_thread(
    cfg: DatastoreThreadConfig,
    sink: ReactorSink,
    metrics: Arc<Metrics>,
    board: Arc<StatusBoard>,
    exits: &ExitWatch,
) -> std::io::Result<DatastoreHandle> {
    board.set_component_down_unready(cfg.component_down_unready);
    let health = bind_http(cfg.health_listen)?;
    let metrics_l = bind_http(cfg.metrics_listen)?;
    let health_addr = health.as_ref().map(|l| l.local_addr()).transpose()?;
    let metrics_addr = metrics_l.as_ref().map(|l| l.local_addr()).transpose()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let http_thread = if health.is_some() || metrics_l.is_some() {
        let http_runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let ctx = Arc::new(HttpContext {
            metrics: metrics.clone(),
            status: board.clone(),
            liveness_stall: cfg.liveness_stall,
            datastore_unreachable: cfg.datastore_unreachable,
        });
        let mut stop = stop_rx.clone();
        let exit_guard = exits.guard("typha-http");
        Some(
            std::thread::Builder::new()
                .name("typha-http".into())
                .spawn(move || {
                    let _exit_guard = exit_guard;
                    crate::fault_point!("http-panic");
                    http_runtime.block_on(async move {
                        for (l, which) in
                            [(health, Endpoints::Health), (metrics_l, Endpoints::Metrics)]
                        {
                            let Some(l) = l else { continue };
                            match tokio::net::TcpListener::from_std(l) {
                                Ok(l) => {
                                    tokio::spawn(http::serve(l, ctx.clone(), which));
                                }
                                Err(e) => error!(error = %e, "cannot serve HTTP"),
                            }
                        }
                        let _ = stop.wait_for(|s| *s).await;
                    });
                })?,
        )
    } else {
        None
    };
    let beat_every =
        (cfg.liveness_stall / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let exit_guard = exits.guard("typha-datastore");
    let thread = std::thread::Builder::new()
        .name("typha-datastore".into())
        .spawn(move || {
            let _exit_guard = exit_guard;
            runtime.block_on(async move {
                let batcher =
                    Batcher::new(cfg.limits, cfg.encode, sink, metrics.clone(), board.clone());
                run_pipeline(cfg.driver, batcher, board, metrics, stop_rx, beat_every).await;
            });
        })?;
    Ok(DatastoreHandle {
        thread: Some(thread),
        http_thread,
        stop: stop_tx,
        health_addr,
        metrics_addr,
    })
}

/// Starts one instance of the driver, in a recoverable scope so that its panic comes back
/// through the `JoinHandle`.
fn spawn_driver(
    driver: &DriverConfig,
    dtx: mpsc::Sender<DriverEvent>,
    metrics: &Arc<Metrics>,
    board: &Arc<StatusBoard>,
) -> tokio::task::JoinHandle<()> {
    let run: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = match driver {
        DriverConfig::Sim(c) => {
            info!(
                nodes = c.nodes,
                endpoints = c.endpoints,
                churn_rate = c.churn_rate,
                "starting the sim datastore"
            );
            Box::pin(sim::run(c.clone(), dtx))
        }
        DriverConfig::Kubernetes(c) => {
            info!(kubeconfig = ?c.kubeconfig, "starting the Kubernetes datastore");
            Box::pin(k8s::run(c.clone(), dtx, metrics.clone(), board.clone()))
        }
    };
    tokio::spawn(Recoverable::new(async move {
        tokio::select! {
            _ = run => {}
            f = injected_fault("driver") => {
                if f == Fault::Panic {
                    panic!("injected fault driver-panic");
                }
            }
        }
    }))
}

/// What a fault point of a supervised task asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
pub(crate) enum Fault {
    Panic,
    Finish,
}

/// Resolves when the test-only fault `<name>-panic` or `<name>-finish` is armed; without the
/// `fault-injection` feature, never.
pub(crate) async fn injected_fault(name: &str) -> Fault {
    #[cfg(feature = "fault-injection")]
    {
        let (panic, finish) = (format!("{name}-panic"), format!("{name}-finish"));
        loop {
            if crate::fault::fires(&panic) {
                return Fault::Panic;
            }
            if crate::fault::fires(&finish) {
                return Fault::Finish;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    #[cfg(not(feature = "fault-injection"))]
    {
        let _ = name;
        std::future::pending().await
    }
}

/// After a driver restart: what the daemon held then, and the keys the new instance has
/// reported since.
struct Resync {
    before: StateMap,
    reported: HashSet<Key>,
    /// Clients had been told "in sync": hold back the new instance's earlier statuses.
    was_in_sync: bool,
}

/// Driver → batcher loop, until stopped or the reactor goes away.
async fn run_pipeline(
    driver: DriverConfig,
    mut batcher: Batcher<ReactorSink>,
    board: Arc<StatusBoard>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
    beat_every: Duration,
) {
    let (dtx, mut drx) = mpsc::channel::<DriverEvent>(64);
    let restarts = metrics.component_restarts.with_label_values(&[DRIVER]);
    let mut driver_task = spawn_driver(&driver, dtx.clone(), &metrics, &board);
    let mut driver_running = true;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut restart_at: Option<tokio::time::Instant> = None;
    let mut resync: Option<Resync> = None;
    let mut beat = tokio::time::interval(beat_every);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // While the reactor's channel is full, retry on this timer rather than spinning.
    let retry = Duration::from_millis(2);
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        let deadline = match (retry_at, batcher.deadline()) {
            (Some(r), _) => Some(r),
            (None, Some(d)) => Some(tokio::time::Instant::from_std(d)),
            (None, None) => None,
        };
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            _ = beat.tick() => {
                board.datastore_beat();
                if crate::fault::fires("datastore-thread-finish") {
                    break;
                }
            }
            ended = &mut driver_task, if driver_running => {
                let why = match ended {
                    Ok(()) => "finished".to_owned(),
                    Err(e) if e.is_panic() => format!("panicked: {}", panic_message(&*e.into_panic())),
                    Err(e) => e.to_string(),
                };
                let delay = backoff.next_delay();
                warn!(reason = %why, restart_in = ?delay, "datastore driver failed; restarting it");
                restarts.inc();
                board.component_down(DRIVER);
                driver_running = false;
                restart_at = Some(tokio::time::Instant::now() + delay);
            }
            _ = sleep_until(restart_at), if restart_at.is_some() => {
                restart_at = None;
                // A restart after a failed restart keeps the first one's baseline.
                if resync.is_none() {
                    resync = Some(Resync {
                        before: batcher.state().clone(),
                        reported: HashSet::new(),
                        was_in_sync: board.sync_status() == SyncStatus::InSync,
                    });
                }
                driver_task = spawn_driver(&driver, dtx.clone(), &metrics, &board);
                driver_running = true;
            }
            // While part of an event waits for the open batch to close, the driver waits too.
            ev = drx.recv(), if batcher.accepting() => {
                // The pipeline holds a sender, so the channel never closes.
                let Some(ev) = ev else { break };
                let ev = match resync.as_mut() {
                    Some(r) => match track_resync(r, ev) {
                        ResyncStep::Pass(ev) => ev,
                        ResyncStep::Hold => continue,
                        ResyncStep::Done(ev) => {
                            let gone = resync.take().map_or(0, |r| sweep(&mut batcher, &r.before, &r.reported));
                            info!(deleted = gone, "restarted datastore driver in sync; keys it no longer reports deleted");
                            board.component_up(DRIVER);
                            backoff.reset();
                            ev
                        }
                    },
                    None => ev,
                };
                let flush_now = apply_event(&mut batcher, ev);
                if flush_now && retry_at.is_none() && !flush(&mut batcher, &mut retry_at, retry) {
                    break;
                }
            }
            _ = sleep_until(deadline) => {
                retry_at = None;
                if !flush(&mut batcher, &mut retry_at, retry) {
                    break;
                }
            }
        }
    }
    driver_task.abort();
}

enum ResyncStep {
    Pass(DriverEvent),
    Hold,
    /// The new instance is in sync: sweep, then apply this event.
    Done(DriverEvent),
}

/// Notes the keys a restarted driver reports and decides what its statuses become.
fn track_resync(r: &mut Resync, ev: DriverEvent) -> ResyncStep {
    match ev {
        DriverEvent::Updates(us) => {
            for u in &us {
                if u.value.is_some() {
                    r.reported.insert(u.key.clone());
                }
            }
            ResyncStep::Pass(DriverEvent::Updates(us))
        }
        DriverEvent::Status(SyncStatus::InSync) => {
            ResyncStep::Done(DriverEvent::Status(SyncStatus::InSync))
        }
        DriverEvent::Status(_) if r.was_in_sync => ResyncStep::Hold,
        ev @ DriverEvent::Status(_) => ResyncStep::Pass(ev),
    }
}

/// Deletes every key of `before` that the new driver instance did not report and that is
/// still held; returns how many.
fn sweep<S: super::BatchSink>(
    batcher: &mut Batcher<S>,
    before: &StateMap,
    reported: &HashSet<Key>,
) -> usize {
    let gone: Vec<Key> = before
        .keys()
        .filter(|k| !reported.contains(*k) && batcher.state().contains_key(*k))
        .cloned()
        .collect();
    let n = gone.len();
    for k in gone {
        batcher.apply(KvUpdate::delete(k, ""));
    }
    n
}

/// Applies one driver event; returns whether the batch should close now. One `Updates` event
/// is one object's keys (or one chunk of a list) and goes into one batch whole, so a client
/// never sees half an object: the size limit is checked at event boundaries only, and only an
/// event above the byte limit is split (`Batcher::apply_event`).
fn apply_event<S: super::BatchSink>(batcher: &mut Batcher<S>, ev: DriverEvent) -> bool {
    match ev {
        DriverEvent::Updates(us) => {
            batcher.apply_event(us);
            batcher.due(std::time::Instant::now())
        }
        DriverEvent::Status(s) => {
            batcher.set_status(s);
            true
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Flushes (again, while a held event still fills whole batches); returns false when the
/// datastore thread must stop.
fn flush(
    batcher: &mut Batcher<ReactorSink>,
    retry_at: &mut Option<tokio::time::Instant>,
    retry: Duration,
) -> bool {
    let mut outcome = batcher.flush();
    while outcome == FlushOutcome::Sent && !batcher.accepting() {
        outcome = batcher.flush();
    }
    match outcome {
        FlushOutcome::Sent | FlushOutcome::NothingPending => true,
        FlushOutcome::ChannelFull => {
            *retry_at = Some(tokio::time::Instant::now() + retry);
            true
        }
        FlushOutcome::Disconnected => {
            info!("reactor has gone; datastore thread stopping");
            false
        }
        FlushOutcome::EncodeFailed => {
            error!("a batch could not be encoded; datastore thread stopping");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::{BatchMessage, BatchSink};
    use crate::model::KvUpdate;
    use crossbeam_channel::TrySendError;

    struct Count(usize, Vec<usize>);
    impl BatchSink for &mut Count {
        fn try_send(&mut self, m: BatchMessage) -> Result<(), TrySendError<BatchMessage>> {
            self.0 += 1;
            self.1.push(m.batch.update_count);
            Ok(())
        }
    }

    #[test]
    fn a_restarted_driver_sweeps_what_it_no_longer_reports() {
        let mut sink = Count(0, Vec::new());
        let mut b = Batcher::new(
            BatchLimits::default(),
            EncodeOptions::default(),
            &mut sink,
            Arc::new(Metrics::new()),
            Arc::new(StatusBoard::new()),
        );
        let set = |k: &str| KvUpdate::set(k, vec![b'x'], "1");
        for k in ["/calico/v1/a", "/calico/v1/b", "/calico/v1/c"] {
            b.apply(set(k));
        }
        b.set_status(SyncStatus::InSync);
        let mut r = Resync {
            before: b.state().clone(),
            reported: HashSet::new(),
            was_in_sync: true,
        };
        // Clients were in sync: the new instance's "resyncing" is not passed on.
        let held = track_resync(&mut r, DriverEvent::Status(SyncStatus::ResyncInProgress));
        assert!(matches!(held, ResyncStep::Hold));
        let ups = vec![
            set("/calico/v1/a"),
            set("/calico/v1/c"),
            set("/calico/v1/d"),
        ];
        match track_resync(&mut r, DriverEvent::Updates(ups)) {
            ResyncStep::Pass(ev) => {
                apply_event(&mut b, ev);
            }
            _ => panic!("updates pass"),
        }
        let done = track_resync(&mut r, DriverEvent::Status(SyncStatus::InSync));
        assert!(matches!(done, ResyncStep::Done(_)));
        assert_eq!(sweep(&mut b, &r.before, &r.reported), 1);
        let keys: Vec<&str> = b.state().keys().map(|k| &**k).collect();
        assert_eq!(keys, ["/calico/v1/a", "/calico/v1/c", "/calico/v1/d"]);
    }

    #[test]
    fn an_event_is_never_split_across_batches() {
        let mut sink = Count(0, Vec::new());
        let mut b = Batcher::new(
            BatchLimits {
                max_updates: 3,
                max_age: Duration::from_secs(3600),
                ..BatchLimits::default()
            },
            EncodeOptions::default(),
            &mut sink,
            Arc::new(Metrics::new()),
            Arc::new(StatusBoard::new()),
        );
        // One object yielding five keys, with a batch limit of three.
        let node: Vec<KvUpdate> = (0..5)
            .map(|i| KvUpdate::set(format!("/calico/v1/host/n1/config/K{i}"), vec![b'x'], "1"))
            .collect();
        assert!(apply_event(&mut b, DriverEvent::Updates(node)));
        b.flush();
        drop(b);
        assert_eq!(sink.1, vec![5], "all five keys in one batch");
    }
}
