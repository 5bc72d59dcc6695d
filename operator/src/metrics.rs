//! Prometheus metrics: reconciles, failures by category, reconcile duration, node transitions
//! and nodes by state per runtime.

use std::sync::atomic::AtomicI64;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::planner::Counts;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    runtime: String,
    state: &'static str,
}

/// The operator's metrics, registered once.
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    failures: Family<ErrorLabels, Counter>,
    duration: Histogram,
    transitions: Family<StateLabels, Counter>,
    nodes: Family<NodeLabels, Gauge<i64, AtomicI64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("wasm_operator");
        let reconciles = Counter::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        let transitions = Family::<StateLabels, Counter>::default();
        let nodes = Family::<NodeLabels, Gauge<i64, AtomicI64>>::default();
        registry.register("reconciles", "Reconciles started", reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Reconciles that failed, by error category",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            duration.clone(),
        );
        registry.register(
            "node_transitions",
            "Node label transitions, by new state",
            transitions.clone(),
        );
        registry.register(
            "nodes",
            "Nodes by install state, per WasmRuntime",
            nodes.clone(),
        );
        Self {
            registry,
            reconciles,
            failures,
            duration,
            transitions,
            nodes,
        }
    }
}

/// Observes the reconcile duration when dropped.
pub struct ReconcileTimer<'a> {
    histogram: &'a Histogram,
    started: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}

impl Metrics {
    pub fn reconcile_started(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer {
            histogram: &self.duration,
            started: Instant::now(),
        }
    }

    pub fn reconcile_failed(&self, error: &'static str) {
        self.failures.get_or_create(&ErrorLabels { error }).inc();
    }

    pub fn node_transition(&self, state: &'static str) {
        self.transitions.get_or_create(&StateLabels { state }).inc();
    }

    pub fn record_nodes(&self, runtime: &str, counts: &Counts) {
        for (state, n) in [
            ("pending", counts.pending),
            ("provisioned", counts.provisioned),
            ("failed", counts.failed),
            ("uninstalling", counts.uninstalling),
        ] {
            let labels = NodeLabels {
                runtime: runtime.to_string(),
                state,
            };
            self.nodes
                .get_or_create(&labels)
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
