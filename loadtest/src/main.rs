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
//! `churn` drives writes through a Kubernetes API server on loopback (see `churn.rs`). Exit
//! status: 0 when every write succeeded; 1 when some failed (counted in the summary); 2 when it
//! could not run (bad arguments, a kubeconfig whose server is not on loopback, the API server
//! unreachable, nothing to churn).

mod apiwatch;
mod bench_report;
mod churn;
mod cli;
mod daemon_http;
mod datastore_check;
mod driver;
mod pubsub;
mod report;
mod run;
mod sys;

use clap::Parser;
use cli::{Cli, Command};
use std::process::ExitCode;

/// What both subcommands report at the end.
trait Outcome {
    fn to_json(&self) -> serde_json::Value;
    fn render_text(&self) -> String;
    fn passed(&self) -> bool;
}

impl Outcome for report::Report {
    fn to_json(&self) -> serde_json::Value {
        report::Report::to_json(self)
    }
    fn render_text(&self) -> String {
        report::Report::render_text(self)
    }
    fn passed(&self) -> bool {
        report::Report::passed(self)
    }
}

impl Outcome for churn::ChurnReport {
    fn to_json(&self) -> serde_json::Value {
        churn::ChurnReport::to_json(self)
    }
    fn render_text(&self) -> String {
        churn::ChurnReport::render_text(self)
    }
    fn passed(&self) -> bool {
        churn::ChurnReport::passed(self)
    }
}

impl Outcome for apiwatch::ApiwatchReport {
    fn to_json(&self) -> serde_json::Value {
        apiwatch::ApiwatchReport::to_json(self)
    }
    fn render_text(&self) -> String {
        apiwatch::ApiwatchReport::render_text(self)
    }
    fn passed(&self) -> bool {
        apiwatch::ApiwatchReport::passed(self)
    }
}

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
        Command::Run(args) => execute("typha-loadtest", args.validate(), |c| c.json, run::run),
        Command::Churn(args) => execute(
            "typha-loadtest churn",
            args.validate(),
            |c| c.json,
            churn::run,
        ),
        Command::Apiwatch(args) => execute(
            "typha-loadtest apiwatch",
            args.validate(),
            |c| c.json,
            apiwatch::run,
        ),
        Command::BenchReport(args) => bench_report::main(args),
        Command::Pubsub(args) => execute(
            "typha-loadtest pubsub",
            args.validate(),
            |c| c.json,
            pubsub::run,
        ),
        Command::BareWriter(args) => pubsub::bare::main(args),
    }
}
