//! `typha-loadtest churn`: its flags, and their validation into a [`ChurnConfig`].

use crate::churn::{self, ChurnConfig, Mix, Phases};
use std::path::PathBuf;
use std::time::Duration;
use typha_loadtest_common::MAX_DURATION_SECS;

#[derive(Debug, Clone, clap::Args)]
pub struct ChurnArgs {
    /// Kubeconfig of the API server to churn. Its server must be on loopback (127.0.0.0/8,
    /// ::1 or localhost).
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// Nodes the setup creates.
    #[arg(long, default_value_t = 50)]
    pub nodes: usize,
    /// Pods the setup creates per node; the churn keeps each node around this many.
    #[arg(long, default_value_t = 10)]
    pub pods_per_node: usize,
    /// Namespaces the setup creates.
    #[arg(long, default_value_t = 5)]
    pub namespaces: usize,
    /// Churn operations per second, all kinds together.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Seconds of churn; then it stops by itself.
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Weights of the operation kinds, e.g. pods=40,heartbeats=30,labels=20,policies=10
    /// (kinds: pods, heartbeats, labels, ns-labels, policies; unnamed kinds weigh 0).
    /// [default: pods=40,heartbeats=30,labels=15,ns-labels=5,policies=10]
    #[arg(long)]
    pub mix: Option<String>,
    /// Seed of the choice sequence (the same seed and starting state give the same
    /// operations); without it, one is taken from the clock and printed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Create the namespaces, nodes, policies and pods, then stop.
    #[arg(long, conflicts_with = "no_setup")]
    pub setup_only: bool,
    /// Skip the setup: churn the labelled objects already on the server.
    #[arg(long)]
    pub no_setup: bool,
    /// Write one JSON line per successful write:
    /// {"t_unix_nanos":..,"op":"pod-create","object":"ns/name"}.
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Print one JSON object on stdout at the end instead of the summary.
    #[arg(long)]
    pub json: bool,
}

impl ChurnArgs {
    pub fn validate(&self) -> Result<ChurnConfig, String> {
        if self.nodes == 0 || self.nodes > churn::MAX_NODES {
            return Err(format!(
                "--nodes must be between 1 and {}",
                churn::MAX_NODES
            ));
        }
        if self.pods_per_node > churn::MAX_PODS_PER_NODE {
            return Err(format!(
                "--pods-per-node must be at most {}",
                churn::MAX_PODS_PER_NODE
            ));
        }
        if self.namespaces == 0 || self.namespaces > churn::MAX_NAMESPACES {
            return Err(format!(
                "--namespaces must be between 1 and {}",
                churn::MAX_NAMESPACES
            ));
        }
        if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= churn::MAX_RATE) {
            return Err(format!(
                "--rate must be more than 0 and at most {} operations per second",
                churn::MAX_RATE
            ));
        }
        if !(self.duration.is_finite() && self.duration > 0.0 && self.duration <= MAX_DURATION_SECS)
        {
            return Err(format!(
                "--duration must be more than 0 and at most {MAX_DURATION_SECS} seconds"
            ));
        }
        let mix = match &self.mix {
            Some(m) => Mix::parse(m)?,
            None => Mix::default(),
        };
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        let phases = match (self.setup_only, self.no_setup) {
            (true, _) => Phases::SetupOnly,
            (_, true) => Phases::ChurnOnly,
            _ => Phases::SetupAndChurn,
        };
        Ok(ChurnConfig {
            kubeconfig: self.kubeconfig.clone(),
            nodes: self.nodes,
            pods_per_node: self.pods_per_node,
            namespaces: self.namespaces,
            rate: self.rate,
            duration: Duration::from_secs_f64(self.duration),
            mix,
            seed,
            phases,
            record: self.record.clone(),
            json: self.json,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The `churn` subcommand's flags on their own.
    #[derive(Debug, Parser)]
    struct ChurnCli {
        #[command(flatten)]
        churn: ChurnArgs,
    }

    fn churn(extra: &[&str]) -> Result<ChurnConfig, String> {
        let mut v = vec!["churn"];
        v.extend_from_slice(extra);
        ChurnCli::try_parse_from(v)
            .map_err(|e| e.to_string())?
            .churn
            .validate()
    }

    #[test]
    fn churn_flags() {
        assert!(churn(&[]).unwrap_err().contains("--kubeconfig"));
        let c = churn(&["--kubeconfig", "/tmp/kc", "--seed", "3"]).unwrap();
        assert_eq!(c.kubeconfig, PathBuf::from("/tmp/kc"));
        assert_eq!((c.nodes, c.pods_per_node, c.namespaces), (50, 10, 5));
        assert_eq!(c.rate, 50.0);
        assert_eq!(c.duration, Duration::from_secs(30));
        assert_eq!(c.mix, Mix::default());
        assert_eq!(c.seed, 3);
        assert_eq!(c.phases, Phases::SetupAndChurn);
        assert_eq!(c.record, None);
        assert!(!c.json);
        let c = churn(&[
            "--kubeconfig",
            "kc",
            "--mix",
            "pods=40,heartbeats=30,labels=20,policies=10",
            "--no-setup",
            "--record",
            "/tmp/r.jsonl",
            "--json",
            "--rate",
            "40",
            "--duration",
            "5",
        ])
        .unwrap();
        assert_eq!(c.mix.namespace_labels, 0);
        assert_eq!(c.mix.pod_labels, 20);
        assert_eq!(c.phases, Phases::ChurnOnly);
        assert_eq!(c.duration, Duration::from_secs(5));
        assert!(c.json && c.record.is_some());
        assert_eq!(
            churn(&["--kubeconfig", "kc", "--setup-only"])
                .unwrap()
                .phases,
            Phases::SetupOnly
        );
        assert!(churn(&["--kubeconfig", "kc", "--setup-only", "--no-setup"]).is_err());
        for bad in [
            ["--nodes", "0"],
            ["--namespaces", "0"],
            ["--pods-per-node", "111"],
            ["--rate", "0"],
            ["--rate", "NaN"],
            ["--duration", "0"],
            ["--mix", "pods=0"],
            ["--mix", "dogs=1"],
        ] {
            let mut v = vec!["--kubeconfig", "kc"];
            v.extend_from_slice(&bad);
            assert!(churn(&v).is_err(), "{bad:?}");
        }
    }
}
