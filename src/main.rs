//! The `typha` daemon binary; `typha client ...` runs the debugging client instead.
//!
//! The process never half-dies: the panic hook ends it on any panic outside a supervised part,
//! and the main thread ends it as soon as any daemon thread ends while no shutdown was asked
//! for (`typha::supervise`). Logging cannot take a thread down (`typha::logging`), and the
//! signal thread starts the shutdown before it logs anything.

use anyhow::Context;
use std::time::Duration;
use tracing::{error, info, warn};
use typha::config::Config;
use typha::daemon::{Daemon, DaemonConfig, DaemonError};
use typha::logging::{LogFormat, LogGuard, LogSettings};
use typha::supervise;

/// How long the last log lines may take to reach stderr at exit.
const FINAL_FLUSH: Duration = Duration::from_millis(500);

fn init_logging(level: &str, format: LogFormat) -> anyhow::Result<LogGuard> {
    typha::logging::init(&LogSettings {
        level: level.to_owned(),
        format,
        ..LogSettings::default()
    })
    .context("cannot set up logging")
}

/// `typha client ...`: the debugging client (`typha::debug_client`); exits with its code.
fn client_main() -> ! {
    use clap::Parser;
    // "client" stands in for the program name, so clap reports usage as `typha client`.
    let cli = match typha::debug_client::ClientCli::try_parse_from(std::env::args_os().skip(1)) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let guard = match init_logging(&cli.log_severity, LogFormat::Text) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("typha client: {e:#}");
            std::process::exit(typha::debug_client::EXIT_ERROR);
        }
    };
    let code = cli.run_and_report(&mut std::io::stdout().lock(), &mut std::io::stderr());
    guard.flush(FINAL_FLUSH);
    std::process::exit(code)
}

fn main() -> anyhow::Result<()> {
    if std::env::args_os().nth(1).is_some_and(|a| a == "client") {
        client_main();
    }
    supervise::install_panic_hook();
    let cfg = match Config::load() {
        Ok(c) => c,
        Err(typha::config::ConfigError::Args(e)) => e.exit(),
        Err(e) => return Err(e).context("invalid configuration"),
    };
    let logs = init_logging(&cfg.log_severity_screen, cfg.log_format)?;
    // Typha's settings for outputs typha-rs does not have: `none` (what Calico's manifests and
    // operator set) means what it means to Typha; anything else is said once, not ignored.
    if !cfg.log_file_path.eq_ignore_ascii_case("none") {
        warn!(
            path = %cfg.log_file_path,
            "TYPHA_LOGFILEPATH is set but typha-rs writes no log file; logs go to stderr only"
        );
    }
    if !cfg.log_severity_sys.eq_ignore_ascii_case("none") {
        warn!(
            level = %cfg.log_severity_sys,
            "TYPHA_LOGSEVERITYSYS is set but typha-rs has no syslog output; logs go to stderr only"
        );
    }
    if cfg.fips_mode_enabled {
        typha::tls::enable_fips_mode();
        info!("FIPS mode: TLS offers only AES-GCM suites and the P-256/P-384 groups");
    }
    let daemon = Daemon::start(DaemonConfig {
        server: cfg.server_config()?,
        datastore: cfg.datastore_config()?,
        batch_channel_capacity: cfg.batch_channel_capacity,
    })?;
    info!(
        protocol = %daemon.protocol_addr,
        health = ?daemon.health_addr,
        metrics = ?daemon.metrics_addr,
        datastore = ?cfg.datastore_type,
        "typha-rs started"
    );
    // Installed before the ports are announced, so a signal sent as soon as they are is handled.
    let handle = daemon.shutdown_handle();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .context("cannot install signal handlers")?;
    // One plain line on stdout so scripts and tests can find the ports. A closed stdout is
    // no reason to stop serving, so the error is ignored rather than panicking in println!.
    {
        use std::io::Write;
        let _ = writeln!(
            std::io::stdout(),
            "typha-rs listening: protocol={} health={} metrics={}",
            daemon.protocol_addr,
            daemon.health_addr.map_or("off".into(), |a| a.to_string()),
            daemon.metrics_addr.map_or("off".into(), |a| a.to_string()),
        );
        let _ = std::io::stdout().flush();
    }
    let signal_guard = daemon.watch_thread("typha-signals");
    std::thread::Builder::new()
        .name("typha-signals".into())
        .spawn(move || {
            let _exit_guard = signal_guard;
            let mut signals = signals.forever();
            // The shutdown starts before anything is logged: it must not depend on logging.
            if let Some(sig) = signals.next() {
                typha::fault_point!("signal-thread-panic");
                handle.shutdown();
                info!(signal = sig, "signal received; shutting down gracefully");
            }
            // A second signal: the operator will not wait for the gradual shed.
            if let Some(sig) = signals.next() {
                handle.shutdown_now();
                info!(
                    signal = sig,
                    "second signal; saying goodbye to every client now"
                );
            }
        })
        .context("cannot start the signal thread")?;
    match daemon.wait() {
        Ok(()) => {
            info!("typha-rs stopped");
            logs.flush(FINAL_FLUSH);
            Ok(())
        }
        Err(e @ DaemonError::ThreadExited { .. }) => {
            // Half a daemon must not keep running: say why, then go without waiting for the
            // remaining threads (the reactor's graceful shed could take minutes).
            error!(error = %e, "typha-rs failed");
            logs.flush(FINAL_FLUSH);
            supervise::fatal_exit(&format!("typha: fatal: {e}; exiting\n"))
        }
        Err(e) => {
            error!(error = %e, "typha-rs failed");
            logs.flush(FINAL_FLUSH);
            Err(e.into())
        }
    }
}
