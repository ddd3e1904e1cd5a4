//! The `typha` daemon binary; `typha client ...` runs the debugging client instead.

use anyhow::Context;
use std::time::Duration;
use tracing::{error, info};
use typha::config::Config;
use typha::daemon::{Daemon, DaemonConfig};

fn init_logging(level: &str) -> anyhow::Result<()> {
    let filter = match level.to_ascii_lowercase().as_str() {
        "none" => "off".to_owned(),
        "warning" => "warn".to_owned(),
        "fatal" | "panic" => "error".to_owned(),
        l => l.to_owned(),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .with_context(|| format!("invalid log level {level:?}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}

/// `typha client ...`: the debugging client (`typha::debug_client`); exits with its code.
fn client_main() -> ! {
    use clap::Parser;
    // "client" stands in for the program name, so clap reports usage as `typha client`.
    let cli = match typha::debug_client::ClientCli::try_parse_from(std::env::args_os().skip(1)) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    if let Err(e) = init_logging(&cli.log_severity) {
        eprintln!("typha client: {e:#}");
        std::process::exit(typha::debug_client::EXIT_ERROR);
    }
    let code = cli.run_and_report(&mut std::io::stdout().lock(), &mut std::io::stderr());
    std::process::exit(code)
}

fn main() -> anyhow::Result<()> {
    if std::env::args_os().nth(1).is_some_and(|a| a == "client") {
        client_main();
    }
    let cfg = match Config::load() {
        Ok(c) => c,
        Err(typha::config::ConfigError::Args(e)) => e.exit(),
        Err(e) => return Err(e).context("invalid configuration"),
    };
    init_logging(&cfg.log_severity_screen)?;
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
    // One plain line on stdout so scripts and tests can find the ports.
    println!(
        "typha-rs listening: protocol={} health={} metrics={}",
        daemon.protocol_addr,
        daemon.health_addr.map_or("off".into(), |a| a.to_string()),
        daemon.metrics_addr.map_or("off".into(), |a| a.to_string()),
    );
    let handle = daemon.shutdown_handle();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .context("cannot install signal handlers")?;
    std::thread::Builder::new()
        .name("typha-signals".into())
        .spawn(move || {
            let mut signals = signals.forever();
            if let Some(sig) = signals.next() {
                info!(signal = sig, "signal received; shutting down gracefully");
                handle.shutdown();
            }
            // A second signal: the operator will not wait for the gradual shed.
            if let Some(sig) = signals.next() {
                info!(
                    signal = sig,
                    "second signal; saying goodbye to every client now"
                );
                handle.shutdown_now();
            }
        })
        .context("cannot start the signal thread")?;
    match daemon.wait() {
        Ok(()) => {
            info!("typha-rs stopped");
            // Let the log line out before exiting.
            std::thread::sleep(Duration::from_millis(10));
            Ok(())
        }
        Err(e) => {
            error!(error = %e, "typha-rs failed");
            Err(e.into())
        }
    }
}
