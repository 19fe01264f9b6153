//! Per-pool metrics (labels target, user, database): server connections active / idle /
//! opening, clients waiting, wait seconds, logins, reuses, resets and closes by reason; per
//! target, the peaks ([`super::peaks`]). [`PoolMetrics::register`] adds the families to the
//! process registry.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::peaks::{PeakMetrics, Peaks};
use super::PoolKey;

/// Labels of one pool.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// Target name.
    pub target: String,
    /// Upstream user.
    pub user: String,
    /// Database.
    pub database: String,
}

/// Why the pool closed a server connection.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum CloseReason {
    /// Idle longer than the idle timeout (beyond min-idle).
    IdleTimeout,
    /// Older than the lifetime.
    Lifetime,
    /// Bytes or EOF waiting on an idle connection.
    Broken,
    /// The caller's reset failed.
    ResetFailed,
    /// Not provably idle when the client left (`check_in(false)`).
    NotIdle,
    /// The checkout was dropped without a check-in.
    Dropped,
    /// The pools were shut down.
    Shutdown,
    /// The connector says the connection's server is no longer the right one (an Aurora
    /// failover moved the writer elsewhere).
    Stale,
}

impl CloseReason {
    /// Every reason.
    pub const ALL: [Self; 8] = [
        Self::IdleTimeout,
        Self::Lifetime,
        Self::Broken,
        Self::ResetFailed,
        Self::NotIdle,
        Self::Dropped,
        Self::Shutdown,
        Self::Stale,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IdleTimeout => "idle_timeout",
            Self::Lifetime => "lifetime",
            Self::Broken => "broken",
            Self::ResetFailed => "reset_failed",
            Self::NotIdle => "not_idle",
            Self::Dropped => "dropped",
            Self::Shutdown => "shutdown",
            Self::Stale => "stale",
        }
    }
}

impl EncodeLabelValue for CloseReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// Labels of a pinned client (transaction mode).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PinLabels {
    /// Target name.
    pub target: String,
    /// Why (see `relay::PinReason`).
    pub reason: &'static str,
}

/// Labels of a target.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    /// Target name.
    pub target: String,
}

/// Labels of a close.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabels {
    /// Target name.
    pub target: String,
    /// Upstream user.
    pub user: String,
    /// Database.
    pub database: String,
    /// Why.
    pub reason: CloseReason,
}

fn wait_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

/// The pool metric families of the process.
#[derive(Debug)]
pub struct PoolMetrics {
    active: Family<PoolLabels, Gauge>,
    idle: Family<PoolLabels, Gauge>,
    opening: Family<PoolLabels, Gauge>,
    waiting: Family<PoolLabels, Gauge>,
    wait_seconds: Family<PoolLabels, Histogram, fn() -> Histogram>,
    logins: Family<PoolLabels, Counter>,
    login_failures: Family<PoolLabels, Counter>,
    reuses: Family<PoolLabels, Counter>,
    resets: Family<PoolLabels, Counter>,
    transactions: Family<PoolLabels, Counter>,
    closes: Family<CloseLabels, Counter>,
    pinned: Family<PinLabels, Counter>,
    reprepared: Family<TargetLabels, Counter>,
    peaks: PeakMetrics,
}

impl Default for PoolMetrics {
    fn default() -> Self {
        Self {
            active: Family::default(),
            idle: Family::default(),
            opening: Family::default(),
            waiting: Family::default(),
            wait_seconds: Family::new_with_constructor(wait_histogram),
            logins: Family::default(),
            login_failures: Family::default(),
            reuses: Family::default(),
            resets: Family::default(),
            transactions: Family::default(),
            closes: Family::default(),
            pinned: Family::default(),
            reprepared: Family::default(),
            peaks: PeakMetrics::default(),
        }
    }
}

/// The series of one pool, looked up once when the pool is created. Pools whose keys differ
/// only in startup parameters share series (gauges move by deltas, so they add up).
#[derive(Debug, Clone)]
pub(crate) struct PoolSeries {
    pub active: Gauge,
    pub idle: Gauge,
    pub opening: Gauge,
    pub waiting: Gauge,
    pub wait_seconds: Histogram,
    pub logins: Counter,
    pub login_failures: Counter,
    pub reuses: Counter,
    pub resets: Counter,
    pub transactions: Counter,
    closes: Family<CloseLabels, Counter>,
    labels: PoolLabels,
    /// The target's peaks (shared by its pools).
    pub peaks: Peaks,
}

impl PoolSeries {
    /// Counts a close.
    pub fn closed(&self, reason: CloseReason) {
        let labels = CloseLabels {
            target: self.labels.target.clone(),
            user: self.labels.user.clone(),
            database: self.labels.database.clone(),
            reason,
        };
        self.closes.get_or_create(&labels).inc();
    }
}

impl PoolMetrics {
    /// The peak series of `target` (one per target: its pools share it).
    pub(crate) fn peaks(&self, target: &str) -> Peaks {
        self.peaks.series(target)
    }

    /// The series of the pool `key` of `target`, whose peaks are `peaks`.
    pub(crate) fn series(&self, target: &str, key: &PoolKey, peaks: &Peaks) -> PoolSeries {
        let labels = PoolLabels {
            target: target.to_owned(),
            user: key.user.clone(),
            database: key.database.clone(),
        };
        // One statement each: a family's read guard lives to the end of its statement.
        let active = self.active.get_or_create(&labels).clone();
        let idle = self.idle.get_or_create(&labels).clone();
        let opening = self.opening.get_or_create(&labels).clone();
        let waiting = self.waiting.get_or_create(&labels).clone();
        let wait_seconds = self.wait_seconds.get_or_create(&labels).clone();
        let logins = self.logins.get_or_create(&labels).clone();
        let login_failures = self.login_failures.get_or_create(&labels).clone();
        let reuses = self.reuses.get_or_create(&labels).clone();
        let resets = self.resets.get_or_create(&labels).clone();
        let transactions = self.transactions.get_or_create(&labels).clone();
        PoolSeries {
            active,
            idle,
            opening,
            waiting,
            wait_seconds,
            logins,
            login_failures,
            reuses,
            resets,
            transactions,
            closes: self.closes.clone(),
            labels,
            peaks: peaks.clone(),
        }
    }

    /// Removes the series of a dropped pool.
    pub(crate) fn forget(&self, series: &PoolSeries) {
        let labels = &series.labels;
        self.active.remove(labels);
        self.idle.remove(labels);
        self.opening.remove(labels);
        self.waiting.remove(labels);
        self.wait_seconds.remove(labels);
        self.logins.remove(labels);
        self.login_failures.remove(labels);
        self.reuses.remove(labels);
        self.resets.remove(labels);
        self.transactions.remove(labels);
        for reason in CloseReason::ALL {
            self.closes.remove(&CloseLabels {
                target: labels.target.clone(),
                user: labels.user.clone(),
                database: labels.database.clone(),
                reason,
            });
        }
    }

    /// Counts a client of `target` pinned to its server connection for `reason`.
    pub fn pinned(&self, target: &str, reason: &'static str) {
        let target = target.to_owned();
        self.pinned
            .get_or_create(&PinLabels { target, reason })
            .inc();
    }

    /// Counts `n` named statements of clients of `target` prepared again on a server
    /// connection (transaction mode).
    pub fn reprepared(&self, target: &str, n: u64) {
        let target = target.to_owned();
        self.reprepared
            .get_or_create(&TargetLabels { target })
            .inc_by(n);
    }

    /// Registers the families (names under the registry's prefix; counters get `_total`).
    pub fn register(&self, r: &mut Registry) {
        let gauges = [
            (
                "pool_server_connections_active",
                "Server connections checked out by clients",
                &self.active,
            ),
            (
                "pool_server_connections_idle",
                "Idle server connections in the pool",
                &self.idle,
            ),
            (
                "pool_server_connections_opening",
                "Server connections being opened (logins)",
                &self.opening,
            ),
            (
                "pool_clients_waiting",
                "Clients waiting for a server connection (--pool-timeout)",
                &self.waiting,
            ),
        ];
        for (name, help, family) in gauges {
            r.register(name, help, family.clone());
        }
        r.register(
            "pool_wait_seconds",
            "Time clients waited for a permit of the pool (timeouts included)",
            self.wait_seconds.clone(),
        );
        let counters = [
            (
                "pool_server_logins",
                "Server connections opened (each one IAM login)",
                &self.logins,
            ),
            (
                "pool_server_login_failures",
                "Server connections that failed to open",
                &self.login_failures,
            ),
            (
                "pool_server_reuses",
                "Checkouts served by an idle server connection",
                &self.reuses,
            ),
            (
                "pool_server_resets",
                "Reset server connections checked back in",
                &self.resets,
            ),
            (
                "pool_transactions",
                "Transactions (transaction mode) after which the server connection went back",
                &self.transactions,
            ),
        ];
        for (name, help, family) in counters {
            r.register(name, help, family.clone());
        }
        r.register(
            "pool_server_closes",
            "Server connections closed by the pool, by reason",
            self.closes.clone(),
        );
        r.register(
            "pool_pinned_clients",
            "Clients pinned to their server connection in transaction mode, by reason",
            self.pinned.clone(),
        );
        r.register(
            "pool_prepared_statements_reprepared",
            "Named prepared statements of clients prepared again on a server connection (transaction mode)",
            self.reprepared.clone(),
        );
        self.peaks.register(r);
    }
}
