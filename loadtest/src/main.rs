//! `typha-loadtest`: simulates many Felix clients against a typha-rs daemon on the same host
//! and reports what serving them costs. See `docs/benchmarks.md` ("Load test") for how to run it
//! and what it measured.
//!
//! Exit status: 0 when the run passed; 1 when it failed (a protocol error, an undecodable frame,
//! a full-map client whose digest differs from the daemon's, or no client could connect); 2 when
//! it could not run (bad arguments, too few file descriptors, the daemon's process or metrics
//! unreadable). Clients that did not reach in-sync within the duration are reported, not failed.

mod cli;
mod daemon_http;
mod driver;
mod report;
mod run;
mod sys;

use clap::Parser;
use cli::{Cli, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            let cfg = match args.validate() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("typha-loadtest: {e}");
                    return ExitCode::from(2);
                }
            };
            let json = cfg.json;
            match run::run(cfg) {
                Ok(report) => {
                    if json {
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
                    eprintln!("typha-loadtest: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
