//! Prometheus plumbing both services share.

use prometheus::Registry;
use prometheus::core::Collector;

/// Registers a new metric with `r` and gives it back: the one place a metric that does
/// not build or is registered twice is caught.
#[expect(
    clippy::expect_used,
    reason = "metric names, help texts and labels are literals: a bad or duplicate one panics at start-up, in every test"
)]
pub fn register<C: Collector + Clone + 'static>(r: &Registry, metric: prometheus::Result<C>) -> C {
    let m = metric.expect("valid metric");
    r.register(Box::new(m.clone())).expect("unique metric");
    m
}
