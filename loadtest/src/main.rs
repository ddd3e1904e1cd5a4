//! `typha-loadtest`: simulates many Felix clients against a typha-rs daemon on the same host
//! and reports what serving them costs. See `docs/benchmarks.md` ("Load test") for how to run it
//! and what it measured.
//!
//! Exit status: 0 when the run passed; 1 when it failed (a protocol error, an undecodable frame,
//! a verification mismatch — a client's frames or digest disagreeing with another client's, the
//! daemon's `/digest` or, with `--verify-datastore`, the API server's objects — or no client
//! could connect); 2 when it could not run (bad arguments, too few file descriptors, the
//! daemon's process or metrics unreadable). A client that never reached in-sync within the
//! duration (stalled clients aside) fails the run: the figures would describe a smaller run.
//!
//! `churn` drives writes through a Kubernetes API server on loopback. Exit status: 0 when every
//! write succeeded; 1 when some failed (counted in the summary); 2 when it could not run (bad
//! arguments, a kubeconfig whose server is not on loopback, the API server unreachable, nothing
//! to churn).
//!
//! This binary only parses the command line and dispatches; each tool is its own crate under
//! `loadtest/`: `driver` (`run`: the simulated clients), `churn` (`churn`, `apiwatch`),
//! `pubsub` (`pubsub`, the hidden `bare-writer`), `report` (`bench-report`), and `common` (what
//! they share: process sampling, the daemon's HTTP endpoints, histograms, the loopback rule).

mod cli;

use clap::Parser;
use cli::{Cli, Command};
use std::process::ExitCode;
use typha_loadtest_common::Outcome;

/// Validates, runs, prints (text or one JSON object) and maps to the exit code: 0 passed,
/// 1 failed, 2 could not run.
fn execute<C, R: Outcome>(
    name: &str,
    cfg: Result<C, String>,
    json: impl Fn(&C) -> bool,
    run: impl FnOnce(C) -> anyhow::Result<R>,
) -> ExitCode {
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    let as_json = json(&cfg);
    match run(cfg) {
        Ok(report) => {
            if as_json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.render_text());
            }
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run(args) => execute(
            "typha-loadtest",
            args.validate(),
            |c| c.json,
            typha_loadtest_driver::run::run,
        ),
        Command::Churn(args) => execute(
            "typha-loadtest churn",
            args.validate(),
            |c| c.json,
            typha_loadtest_churn::churn::run,
        ),
        Command::Apiwatch(args) => execute(
            "typha-loadtest apiwatch",
            args.validate(),
            |c| c.json,
            typha_loadtest_churn::apiwatch::run,
        ),
        Command::BenchReport(args) => typha_loadtest_report::main(args),
        Command::Pubsub(args) => execute(
            "typha-loadtest pubsub",
            args.validate(),
            |c| c.json,
            typha_loadtest_pubsub::run,
        ),
        Command::BareWriter(args) => typha_loadtest_pubsub::bare::main(args),
    }
}
