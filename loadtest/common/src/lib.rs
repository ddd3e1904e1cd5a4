//! What the `typha-loadtest` tools share: process sampling (`sys`), the daemon's HTTP endpoints
//! (`daemon_http`), latency histograms (`hist`), the loopback rule (`loopback`), the turn over ready sockets (`ready`), and the
//! [`Outcome`] every subcommand prints and maps to its exit status.

pub mod daemon_http;
pub mod hist;
pub mod loopback;
pub mod ready;
pub mod sys;

/// Longest run accepted: one day.
pub const MAX_DURATION_SECS: f64 = 86_400.0;

/// The label the churn generator stamps its pod label writes with (Unix nanoseconds, decimal);
/// the client driver and `apiwatch` turn it into datastore → client latency. Keep the name.
pub const STAMP_LABEL: &str = "typha-loadtest/stamp";

/// What every measuring subcommand reports at the end.
pub trait Outcome {
    fn to_json(&self) -> serde_json::Value;
    fn render_text(&self) -> String;
    fn passed(&self) -> bool;
}
