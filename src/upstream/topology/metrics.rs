//! Topology metrics: the current writer of each target (a gauge set to 1 for it, 0 for the
//! instances that were), topology changes, failovers, and the seconds from the first fault
//! to the switch.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::metrics::TargetLabel;

/// Labels: target and instance.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    /// Target name.
    pub target: String,
    /// Instance identifier.
    pub instance: String,
}

fn switch_histogram() -> Histogram {
    Histogram::new([0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0])
}

/// The families, shared by all targets.
#[derive(Debug, Clone)]
pub struct TopologyFamilies {
    writer: Family<InstanceLabels, Gauge>,
    changes: Family<TargetLabel, Counter>,
    failovers: Family<TargetLabel, Counter>,
    switch_seconds: Family<TargetLabel, Histogram, fn() -> Histogram>,
}

impl Default for TopologyFamilies {
    fn default() -> Self {
        Self {
            writer: Family::default(),
            changes: Family::default(),
            failovers: Family::default(),
            switch_seconds: Family::new_with_constructor(switch_histogram),
        }
    }
}

impl TopologyFamilies {
    /// Registers the families.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "aurora_writer",
            "1 for the instance that is the target's writer now, 0 for former writers",
            self.writer.clone(),
        );
        r.register(
            "aurora_topology_changes",
            "Topology changes seen (writer or readers)",
            self.changes.clone(),
        );
        r.register(
            "aurora_failovers",
            "Writer changes detected after a fault",
            self.failovers.clone(),
        );
        r.register(
            "aurora_failover_switch_seconds",
            "Seconds from the first fault to the switch to the new writer",
            self.switch_seconds.clone(),
        );
    }

    /// The series of one target.
    pub fn for_target(&self, target: &str) -> TopologyMetrics {
        TopologyMetrics {
            target: target.to_owned(),
            families: self.clone(),
        }
    }
}

/// One target's topology metrics.
#[derive(Debug, Clone)]
pub struct TopologyMetrics {
    target: String,
    families: TopologyFamilies,
}

impl TopologyMetrics {
    fn label(&self) -> TargetLabel {
        TargetLabel {
            target: self.target.clone(),
        }
    }

    fn writer(&self, instance: &str) -> Gauge {
        let labels = InstanceLabels {
            target: self.target.clone(),
            instance: instance.to_owned(),
        };
        self.families.writer.get_or_create(&labels).clone()
    }

    /// The topology changed; the writer is `now` (was `old`).
    pub fn changed(&self, old: Option<&str>, now: &str) {
        self.families.changes.get_or_create(&self.label()).inc();
        if let Some(old) = old.filter(|o| *o != now) {
            self.writer(old).set(0);
        }
        self.writer(now).set(1);
    }

    /// A failover was switched to, `took` after the first fault.
    pub fn failover(&self, took: Duration) {
        self.families.failovers.get_or_create(&self.label()).inc();
        let h = self
            .families
            .switch_seconds
            .get_or_create(&self.label())
            .clone();
        h.observe(took.as_secs_f64());
    }
}
