//! The API-server tools: `typha-loadtest churn` (realistic writes through a loopback Kubernetes
//! API server, see [`churn`]) and `typha-loadtest apiwatch` (N direct pod watchers, what each
//! Felix would cost the API server without Typha, see [`apiwatch`]).

pub mod apiwatch;
pub mod args;
pub mod churn;

use typha_loadtest_common::Outcome;

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
