//! The datastore thread: a current-thread tokio runtime running the datastore driver and the
//! batcher loop. The HTTP listeners get a thread (and runtime) of their own, so that `/liveness`
//! can still answer, with the reason, while the datastore thread is stuck.

use super::batcher::{BatchLimits, Batcher, FlushOutcome, ReactorSink};
use super::{k8s, sim, BatchMessage, DriverEvent};
use crate::http::{self, Endpoints, HttpContext};
use crate::metrics::Metrics;
use crate::proto::encode::EncodeOptions;
use crate::status::StatusBoard;
use crossbeam_channel::Sender;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tracing::{error, info};

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
}

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
    tx: Sender<BatchMessage>,
    waker: Arc<mio::Waker>,
    metrics: Arc<Metrics>,
    board: Arc<StatusBoard>,
) -> std::io::Result<DatastoreHandle> {
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
        Some(
            std::thread::Builder::new()
                .name("typha-http".into())
                .spawn(move || {
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
    let thread = std::thread::Builder::new()
        .name("typha-datastore".into())
        .spawn(move || {
            runtime.block_on(async move {
                let sink = ReactorSink { tx, waker };
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
    let driver_task = match driver {
        DriverConfig::Sim(c) => {
            info!(
                nodes = c.nodes,
                endpoints = c.endpoints,
                churn_rate = c.churn_rate,
                "starting the sim datastore"
            );
            tokio::spawn(sim::run(c, dtx))
        }
        DriverConfig::Kubernetes(c) => {
            info!(kubeconfig = ?c.kubeconfig, "starting the Kubernetes datastore");
            tokio::spawn(k8s::run(c, dtx, metrics, board.clone()))
        }
    };
    let mut beat = tokio::time::interval(beat_every);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // While the reactor's channel is full, retry on this timer rather than spinning.
    let retry = Duration::from_millis(2);
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut driver_open = true;
    loop {
        let deadline = match (retry_at, batcher.deadline()) {
            (Some(r), _) => Some(r),
            (None, Some(d)) => Some(tokio::time::Instant::from_std(d)),
            (None, None) => None,
        };
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            _ = beat.tick() => board.datastore_beat(),
            // While part of an event waits for the open batch to close, the driver waits too.
            ev = drx.recv(), if driver_open && batcher.accepting() => match ev {
                Some(ev) => {
                    let flush_now = apply_event(&mut batcher, ev);
                    if flush_now && retry_at.is_none() && !flush(&mut batcher, &mut retry_at, retry) {
                        return;
                    }
                }
                None => {
                    info!("datastore driver finished");
                    driver_open = false;
                }
            },
            _ = sleep_until(deadline) => {
                retry_at = None;
                if !flush(&mut batcher, &mut retry_at, retry) {
                    return;
                }
            }
        }
    }
    driver_task.abort();
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
