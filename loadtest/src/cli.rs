//! Command line: the subcommands, each parsed by its own tool's crate.

use clap::{Parser, Subcommand};

/// Simulates many Felix clients against a typha-rs daemon on the same host and reports what
/// the daemon costs: update lag, time to sync, server CPU per delivered frame, RSS per client.
#[derive(Debug, Parser)]
#[command(name = "typha-loadtest", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Connect N clients, hold them for the duration, verify and report.
    Run(typha_loadtest_driver::args::RunArgs),
    /// Drive realistic churn (pods, node heartbeats, labels, NetworkPolicies) through a
    /// Kubernetes API server on loopback, for load and integration tests.
    Churn(typha_loadtest_churn::args::ChurnArgs),
    /// N direct pod watchers on a loopback Kubernetes API server (what each Felix would do
    /// without Typha): the API server's CPU and RSS, and the watch-event latency.
    Apiwatch(typha_loadtest_churn::apiwatch::ApiwatchArgs),
    /// Run the benchmark matrix (or re-render recorded results) into docs/benchmarks.md.
    BenchReport(typha_loadtest_report::BenchReportArgs),
    /// Side-by-side fan-out comparison: start Redis, NATS, a bare writer or typha on loopback
    /// and measure CPU per delivery and latency to N subscribers (docs/comparisons.md).
    Pubsub(typha_loadtest_pubsub::PubsubArgs),
    /// The bare writer the `pubsub --target bare` comparison runs as its server.
    #[command(hide = true)]
    BareWriter(typha_loadtest_pubsub::bare::BareWriterArgs),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subcommand_parses_with_its_name() {
        let parse = |v: &[&str]| Cli::try_parse_from(v).map(|c| c.command);
        assert!(matches!(
            parse(&["typha-loadtest", "run", "--clients", "3"]),
            Ok(Command::Run(a)) if a.clients == 3
        ));
        assert!(matches!(
            parse(&["typha-loadtest", "churn", "--kubeconfig", "kc"]),
            Ok(Command::Churn(_))
        ));
        assert!(matches!(
            parse(&["typha-loadtest", "bench-report", "--list"]),
            Ok(Command::BenchReport(_))
        ));
        assert!(parse(&["typha-loadtest", "nope"]).is_err());
    }
}
