//! Prometheus metrics (prometheus-client): connections, upstream connect latency, login
//! failures by reason, bytes each way, cancel requests by outcome, file descriptor exhaustion, and, read at scrape time, the token cache's counters and
//! the seconds until the credentials in use expire.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::iam::TokenCache;

/// Label: the target's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabel {
    /// Target name.
    pub target: String,
}

/// Labels: target and failure reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// Target name.
    pub target: String,
    /// Short reason (`dns`, `connect`, `tls`, `token`, `refused`, `not_iam`, `server`,
    /// `startup_too_long`, ...).
    pub reason: String,
}

/// Labels: target and direction of bytes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    /// Target name.
    pub target: String,
    /// `to_server` or `to_client`.
    pub direction: &'static str,
}

/// Labels: target and what became of a cancel request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CancelLabels {
    /// Target name.
    pub target: String,
    /// `forwarded`, `coalesced`, `dropped`, `unknown_key` or `failed`.
    pub outcome: &'static str,
}

/// What needed a file descriptor when there was none.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum FdUse {
    /// Accepting a client connection.
    Accept,
    /// Resolving or connecting to the database.
    Upstream,
}

impl prometheus_client::encoding::EncodeLabelValue for FdUse {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> std::fmt::Result {
        use std::fmt::Write;
        encoder.write_str(match self {
            Self::Accept => "accept",
            Self::Upstream => "upstream",
        })
    }
}

/// Label: where descriptors ran out.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FdLabels {
    /// `accept` or `upstream`.
    pub r#where: FdUse,
}

fn connect_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// All metrics of one process.
#[derive(Debug)]
pub struct Metrics {
    /// Open client connections.
    pub open: Family<TargetLabel, Gauge>,
    /// Accepted client connections.
    pub accepted: Family<TargetLabel, Counter>,
    /// Clients refused at the connection limit.
    pub refused_at_limit: Counter,
    /// Time from the start of the upstream connect to a completed login.
    pub connect_seconds: Family<TargetLabel, Histogram, fn() -> Histogram>,
    /// Login failures by reason.
    pub login_failures: Family<FailureLabels, Counter>,
    /// Clients refused before any login: not admitted (`uid`), owner unknown
    /// (`unknown_owner`), database user not allowed (`db_user`).
    pub client_refusals: Family<FailureLabels, Counter>,
    /// Bytes relayed, counted when a session ends.
    pub bytes: Family<BytesLabels, Counter>,
    /// Clients waiting for an upstream login slot.
    pub logins_waiting: Family<TargetLabel, Gauge>,
    /// Upstream connects + logins running.
    pub logins_active: Family<TargetLabel, Gauge>,
    /// Cancel requests by outcome.
    pub cancels: Family<CancelLabels, Counter>,
    /// The pools' series (labels target, user, database).
    pub pools: std::sync::Arc<crate::pool::PoolMetrics>,
    /// Times a descriptor was needed and the process had none.
    pub fd_exhausted: Family<FdLabels, Counter>,
    /// Aurora topology (writer, changes, failovers).
    pub topology: crate::upstream::topology::metrics::TopologyFamilies,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            open: Family::default(),
            accepted: Family::default(),
            refused_at_limit: Counter::default(),
            connect_seconds: Family::new_with_constructor(connect_histogram),
            login_failures: Family::default(),
            client_refusals: Family::default(),
            bytes: Family::default(),
            logins_waiting: Family::default(),
            logins_active: Family::default(),
            cancels: Family::default(),
            pools: std::sync::Arc::default(),
            fd_exhausted: Family::default(),
            topology: Default::default(),
        }
    }
}

/// One target's series, looked up once at start-up so the connection path does no label
/// hashing or allocation.
#[derive(Debug, Clone)]
pub struct TargetMetrics {
    /// Target name (the label).
    pub target: String,
    /// Open client connections.
    pub open: Gauge,
    /// Accepted client connections.
    pub accepted: Counter,
    /// Upstream connect + login time.
    pub connect_seconds: Histogram,
    /// Bytes client -> server.
    pub to_server: Counter,
    /// Bytes server -> client.
    pub to_client: Counter,
    /// Clients waiting for a login slot.
    pub logins_waiting: Gauge,
    /// Logins running.
    pub logins_active: Gauge,
    /// The process-wide metrics (limit refusals, login failures by reason).
    pub all: std::sync::Arc<Metrics>,
}

impl TargetMetrics {
    /// Counts a login failure of this target.
    pub fn login_failed(&self, reason: &str) {
        self.all.login_failed(&self.target, reason);
    }

    /// Counts a client refused by the access rules of this target.
    pub fn client_refused(&self, reason: &str) {
        self.all
            .client_refusals
            .get_or_create(&FailureLabels {
                target: self.target.clone(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a cancel request's outcome for this target.
    pub fn cancel(&self, outcome: crate::cancel::CancelOutcome) {
        let labels = CancelLabels {
            target: self.target.clone(),
            outcome: outcome.as_str(),
        };
        self.all.cancels.get_or_create(&labels).inc();
    }
}

/// A byte counter the relay counts into as it writes.
impl crate::relay::Meter for Counter {
    fn add(&self, bytes: u64) {
        self.inc_by(bytes);
    }
}

impl Metrics {
    /// The series of one target.
    pub fn for_target(self: &std::sync::Arc<Self>, target: &str) -> TargetMetrics {
        let label = TargetLabel {
            target: target.to_owned(),
        };
        let bytes = |direction| BytesLabels {
            target: target.to_owned(),
            direction,
        };
        // One statement each: a family's read guard lives to the end of its statement, and
        // creating a second series of the same family needs the write lock.
        let open = self.open.get_or_create(&label).clone();
        let accepted = self.accepted.get_or_create(&label).clone();
        let connect_seconds = self.connect_seconds.get_or_create(&label).clone();
        let to_server = self.bytes.get_or_create(&bytes("to_server")).clone();
        let to_client = self.bytes.get_or_create(&bytes("to_client")).clone();
        let logins_waiting = self.logins_waiting.get_or_create(&label).clone();
        let logins_active = self.logins_active.get_or_create(&label).clone();
        TargetMetrics {
            target: target.to_owned(),
            open,
            accepted,
            connect_seconds,
            to_server,
            to_client,
            logins_waiting,
            logins_active,
            all: self.clone(),
        }
    }

    /// Counts a login failure.
    pub fn login_failed(&self, target: &str, reason: &str) {
        self.login_failures
            .get_or_create(&FailureLabels {
                target: target.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a descriptor needed for `what` when there was none.
    pub fn fd_exhausted(&self, what: FdUse) {
        self.fd_exhausted
            .get_or_create(&FdLabels { r#where: what })
            .inc();
    }

    /// A registry exposing these metrics and the cache's.
    pub fn registry(self: &std::sync::Arc<Self>, cache: TokenCache) -> Registry {
        let mut r = Registry::with_prefix("pg_iam_proxy");
        r.register(
            "client_connections_open",
            "Open client connections",
            self.open.clone(),
        );
        r.register(
            "client_connections",
            "Accepted client connections",
            self.accepted.clone(),
        );
        r.register(
            "client_connections_refused_at_limit",
            "Clients refused because max_connections was reached",
            self.refused_at_limit.clone(),
        );
        r.register(
            "upstream_connect_seconds",
            "Time to connect, negotiate TLS and log in upstream",
            self.connect_seconds.clone(),
        );
        r.register(
            "login_failures",
            "Failed upstream logins by reason",
            self.login_failures.clone(),
        );
        r.register(
            "client_refusals",
            "Clients refused before any login, by reason (uid, unknown_owner, db_user)",
            self.client_refusals.clone(),
        );
        r.register(
            "relayed_bytes",
            "Bytes relayed, by direction",
            self.bytes.clone(),
        );
        r.register(
            "upstream_logins_waiting",
            "Clients waiting for an upstream login slot (--max-concurrent-logins)",
            self.logins_waiting.clone(),
        );
        r.register(
            "upstream_logins_active",
            "Upstream connects and logins in progress",
            self.logins_active.clone(),
        );
        r.register(
            "cancel_requests",
            "Cancel requests by outcome (forwarded counts upstream forwards)",
            self.cancels.clone(),
        );
        r.register(
            "fd_exhausted",
            "Times the process was out of file descriptors, by what needed one",
            self.fd_exhausted.clone(),
        );
        self.pools.register(&mut r);
        self.topology.register(&mut r);
        r.register_collector(Box::new(CacheCollector(cache)));
        r
    }
}

/// Reads the token cache at scrape time.
#[derive(Debug)]
struct CacheCollector(TokenCache);

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let c = ConstCounter::new(value);
    let m = e.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m)
}

impl Collector for CacheCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.stats();
        counter(
            &mut e,
            "token_cache_hits",
            "Token requests served from the cache",
            s.hits,
        )?;
        counter(
            &mut e,
            "token_cache_misses",
            "Token requests that waited for signing",
            s.misses,
        )?;
        counter(&mut e, "token_refreshes", "Tokens signed", s.signings)?;
        counter(
            &mut e,
            "token_refresh_failures",
            "Failed signing attempts",
            s.failures,
        )?;
        let slots = ConstGauge::new(s.slots as i64);
        let m = e.encode_descriptor(
            "token_cache_slots",
            "Token cache slots (one per host, port, user, region and role in use)",
            None,
            slots.metric_type(),
        )?;
        slots.encode(m)?;
        let now = self.0.now();
        let soonest = self
            .0
            .credential_expiries()
            .into_iter()
            .filter_map(|(_, expiry)| expiry)
            .min();
        if let Some(expiry) = soonest {
            let left = match expiry.duration_since(now) {
                Ok(d) => d.as_secs_f64(),
                Err(e) => -e.duration().as_secs_f64(),
            };
            let g = ConstGauge::new(left);
            let m = e.encode_descriptor(
                "credentials_expiry_seconds",
                "Seconds until the soonest-expiring AWS credentials in use expire",
                None,
                g.metric_type(),
            )?;
            g.encode(m)?;
        }
        Ok(())
    }
}
