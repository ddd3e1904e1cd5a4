//! Assembles the pipeline: datastore thread → bounded channel + waker → reactor thread.
//!
//! Every long-lived thread reports its end to the daemon ([`ExitWatch`]): [`Daemon::wait`]
//! returns when the reactor finishes, or with [`DaemonError::ThreadExited`] as soon as any
//! other thread ends while the daemon is not shutting down.

use crate::datastore::{
    spawn_datastore_thread, DatastoreHandle, DatastoreThreadConfig, DriverConfig,
};
use crate::metrics::Metrics;
use crate::server::{Server, ServerConfig, ServerHandle};
use crate::status::StatusBoard;
use crate::supervise::{ExitWatch, ThreadExit};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error("cannot listen for clients on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The TLS files named in the settings do not load (`source` wraps a `TlsError`).
    #[error("TLS setup failed: {0}")]
    Tls(std::io::Error),
    #[error("cannot start the datastore thread: {0}")]
    Datastore(std::io::Error),
    #[error("cannot start the reactor thread: {0}")]
    Reactor(std::io::Error),
    #[error("reactor failed: {0}")]
    ReactorFailed(std::io::Error),
    #[error("reactor thread panicked")]
    ReactorPanicked,
    #[error("thread {name} {} while the daemon was running", if *panicked { "panicked" } else { "ended" })]
    ThreadExited { name: &'static str, panicked: bool },
}

const REACTOR_THREAD: &str = "typha-reactor";

/// Starts a shutdown from anywhere (the signal thread) and records that it was asked for, so
/// that threads ending afterwards are not taken for failures.
#[derive(Clone)]
pub struct ShutdownHandle {
    server: ServerHandle,
    requested: Arc<AtomicBool>,
}

impl ShutdownHandle {
    /// Graceful: stop accepting, shed clients over the shutdown timeout.
    pub fn shutdown(&self) {
        self.requested.store(true, Ordering::SeqCst);
        self.server.shutdown();
    }

    /// Say goodbye to every remaining client now.
    pub fn shutdown_now(&self) {
        self.requested.store(true, Ordering::SeqCst);
        self.server.shutdown_now();
    }
}

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub server: ServerConfig,
    pub datastore: DatastoreThreadConfig,
    pub batch_channel_capacity: usize,
}

/// A running daemon: the reactor thread and the datastore thread.
pub struct Daemon {
    pub protocol_addr: SocketAddr,
    pub health_addr: Option<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    pub status: Arc<StatusBoard>,
    handle: ShutdownHandle,
    reactor: Option<JoinHandle<std::io::Result<()>>>,
    datastore: Option<DatastoreHandle>,
    exit_watch: ExitWatch,
    exits: crossbeam_channel::Receiver<ThreadExit>,
}

impl Daemon {
    pub fn start(mut cfg: DaemonConfig) -> Result<Daemon, DaemonError> {
        // The replica counter (datastore thread) publishes the target the reactor sheds to.
        if let DriverConfig::Kubernetes(k) = &mut cfg.datastore.driver {
            if let Some(r) = &mut k.rebalance {
                r.target = cfg.server.connection_target.clone();
            }
        }
        let metrics = Arc::new(Metrics::new());
        let status = Arc::new(StatusBoard::new());
        let (tx, rx) = crossbeam_channel::bounded(cfg.batch_channel_capacity.max(1));
        let listen = cfg.server.listen;
        let server =
            Server::bind(cfg.server, rx, metrics.clone(), status.clone()).map_err(|source| {
                if source
                    .get_ref()
                    .is_some_and(|e| e.is::<crate::tls::TlsError>())
                {
                    DaemonError::Tls(source)
                } else {
                    DaemonError::Listen {
                        addr: listen,
                        source,
                    }
                }
            })?;
        let protocol_addr = server.local_addr();
        let handle = ShutdownHandle {
            server: server.handle(),
            requested: Arc::new(AtomicBool::new(false)),
        };
        let (exit_watch, exits) = ExitWatch::new();
        let sink = crate::datastore::ReactorSink {
            tx,
            waker: server.waker(),
            legacy: server.legacy_key_demand(),
        };
        let datastore = spawn_datastore_thread(
            cfg.datastore,
            sink,
            metrics.clone(),
            status.clone(),
            &exit_watch,
        )
        .map_err(DaemonError::Datastore)?;
        let reactor_guard = exit_watch.guard(REACTOR_THREAD);
        let reactor = std::thread::Builder::new()
            .name(REACTOR_THREAD.into())
            .spawn(move || {
                let _exit_guard = reactor_guard;
                crate::fault_point!("reactor-panic");
                server.run()
            })
            .map_err(DaemonError::Reactor)?;
        Ok(Daemon {
            protocol_addr,
            health_addr: datastore.health_addr,
            metrics_addr: datastore.metrics_addr,
            metrics,
            status,
            handle,
            reactor: Some(reactor),
            datastore: Some(datastore),
            exit_watch,
            exits,
        })
    }

    /// Watches one more thread (the binary's signal thread): its end, while the daemon is not
    /// shutting down, ends [`Daemon::wait`] with [`DaemonError::ThreadExited`].
    pub fn watch_thread(&self, name: &'static str) -> crate::supervise::ExitGuard {
        self.exit_watch.guard(name)
    }

    /// A handle that starts a graceful shutdown from anywhere (a signal handler thread).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.handle.clone()
    }

    /// Waits for the reactor to finish (after a shutdown), then stops the datastore thread.
    /// Returns early with [`DaemonError::ThreadExited`] if another thread ends first while the
    /// daemon is not shutting down: the caller should end the process, not wait for the rest.
    pub fn wait(mut self) -> Result<(), DaemonError> {
        while let Ok(exit) = self.exits.recv() {
            if exit.name == REACTOR_THREAD {
                break;
            }
            if !self.handle.requested.load(Ordering::SeqCst) {
                return Err(DaemonError::ThreadExited {
                    name: exit.name,
                    panicked: exit.panicked,
                });
            }
        }
        let result = match self.reactor.take().map(JoinHandle::join) {
            Some(Ok(Ok(()))) | None => Ok(()),
            Some(Ok(Err(e))) => Err(DaemonError::ReactorFailed(e)),
            Some(Err(_)) => Err(DaemonError::ReactorPanicked),
        };
        if let Some(d) = self.datastore.take() {
            d.stop();
        }
        result
    }

    /// Graceful shutdown, then wait.
    pub fn stop(self) -> Result<(), DaemonError> {
        self.handle.shutdown();
        self.wait()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(r) = self.reactor.take() {
            self.handle.shutdown();
            let _ = r.join();
        }
    }
}
