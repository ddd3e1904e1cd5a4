//! `typha-loadtest run`: N simulated clients against a typha-rs daemon on the same host, each a
//! protocol session over its own socket, every one verified against the others and the daemon's
//! `/digest`; the report says what serving them cost the daemon.
//!
//! - [`args`]: the flags and their validation.
//! - [`run`]: one run — sample the daemon, start the client threads, stop at the deadline,
//!   verify, build the report.
//! - [`driver`]: one client thread's poll loop over its sockets.
//! - [`session`]: the protocol seam, one session per client (native or Felix's Typha protocol).
//! - [`report`]: the end-of-run figures, as text or one JSON object.
//! - [`datastore_check`]: `--verify-datastore`, the API server's objects against the daemon.

pub mod args;
pub mod datastore_check;
pub mod driver;
pub mod felix_memo;
pub mod report;
pub mod run;
pub mod session;

use typha_loadtest_common::Outcome;

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
