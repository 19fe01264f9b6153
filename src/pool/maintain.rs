//! The maintenance task of one pool: every `maintain_every` it closes idle connections past
//! the lifetime or (beyond min-idle) the idle timeout, opens warm-ups up to min-idle through
//! the pool's connector (each holds a permit and counts as opening), and drops the pool once
//! it has had no connections and no clients for `empty_pool_ttl` (at once if it never had a
//! connection: a user or database no one can log in as leaves nothing behind). It stops, closing the idle
//! connections, when the `Pools` is dropped or shut down.

use std::sync::{Arc, Weak};

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, MissedTickBehavior};

use super::metrics::{CloseReason, PoolMetrics};
use super::pool_core::{close, expired, Core, Entry, Idle};
use super::{lock, Conn, Connector, Map};

/// How long min-idle refill pauses after a warm-up failed to open.
const REFILL_BACKOFF: std::time::Duration = std::time::Duration::from_secs(5);

/// Starts the task of `core`.
pub(super) fn spawn<C: Connector>(
    core: Arc<Core<C::Conn>>,
    connector: C,
    pools: Weak<Map<C::Conn>>,
    metrics: Arc<PoolMetrics>,
) {
    tokio::spawn(run(core, connector, pools, metrics));
}

async fn run<C: Connector>(
    core: Arc<Core<C::Conn>>,
    connector: C,
    pools: Weak<Map<C::Conn>>,
    metrics: Arc<PoolMetrics>,
) {
    let mut tick = tokio::time::interval(core.settings.maintain_every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut empty_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = core.stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        core.evict(now);
        refill(&core, &connector, now);
        if !unused(&core) {
            empty_since = None;
            continue;
        }
        let since = *empty_since.get_or_insert(now);
        let ttl = if core.ever_opened() {
            core.settings.empty_pool_ttl
        } else {
            std::time::Duration::ZERO
        };
        if now.duration_since(since) >= ttl && remove(&pools, &core, &metrics) {
            tracing::debug!(user = %core.key.user, database = %core.key.database, "dropped empty pool");
            return;
        }
    }
    core.shut();
}

/// No connections, and nobody but the map and this task holds the pool (a checkout in
/// progress, a checked-out connection, an open and a held [`super::Pool`] each hold a
/// reference).
fn unused<T: Conn>(core: &Arc<Core<T>>) -> bool {
    Arc::strong_count(core) == 2 && core.is_empty()
}

/// Removes the pool from the map if it is still unused (checked under the map's lock, which
/// a checkout holds while it takes its reference).
/// The pool's metric series go with it unless another pool of the same user and database
/// (other startup parameters) shares them.
fn remove<T: Conn>(pools: &Weak<Map<T>>, core: &Arc<Core<T>>, metrics: &PoolMetrics) -> bool {
    let Some(pools) = pools.upgrade() else {
        return false;
    };
    let mut map = lock(&pools);
    if !unused(core) {
        return false;
    }
    map.remove(&core.key);
    let (user, database) = (&core.key.user, &core.key.database);
    if !map
        .keys()
        .any(|k| &k.user == user && &k.database == database)
    {
        metrics.forget(&core.series);
    }
    true
}

fn refill<C: Connector>(core: &Arc<Core<C::Conn>>, connector: &C, now: Instant) {
    while let Some(permit) = core.warm_slot(now) {
        let warming = Warming {
            core: core.clone(),
            permit: Some(permit),
        };
        let connector = connector.clone();
        tokio::spawn(async move {
            let result = connector.open(&warming.core.key).await;
            warming.done(result);
        });
    }
}

/// A warm-up in progress; dropped unfinished (panic), it frees its slot.
struct Warming<T: Conn> {
    core: Arc<Core<T>>,
    permit: Option<OwnedSemaphorePermit>,
}

impl<T: Conn> Warming<T> {
    fn done<E: std::fmt::Display>(mut self, result: Result<T, E>) {
        let series = &self.core.series;
        let conn = match result {
            Ok(conn) => {
                series.logins.inc();
                Some(conn)
            }
            Err(e) => {
                series.login_failures.inc();
                tracing::warn!(error = %e, user = %self.core.key.user, database = %self.core.key.database,
                    "opening a warm server connection (--pool-min-idle) failed");
                None
            }
        };
        self.core.warmed(conn, Instant::now());
        self.permit = None;
    }
}

impl<T: Conn> Drop for Warming<T> {
    fn drop(&mut self) {
        if self.permit.take().is_some() {
            self.core.warmed(None, Instant::now());
        }
    }
}

impl<T: Conn> Core<T> {
    /// Closes idle connections past the lifetime, and those idle longer than the idle
    /// timeout beyond the newest `min_idle`.
    pub fn evict(&self, now: Instant) {
        let s = &self.settings;
        let mut discard = Vec::new();
        let mut st = lock(&self.state);
        let mut kept = Vec::with_capacity(st.idle.len());
        let mut left = st.idle.len();
        for idle in st.idle.drain(..) {
            let timed_out = !s.idle_timeout.is_zero()
                && now.duration_since(idle.since) >= s.idle_timeout
                && left > s.min_idle;
            if expired(s, idle.entry.created, now) {
                discard.push((idle.entry.conn, CloseReason::Lifetime));
                left -= 1;
            } else if !(self.current)(&idle.entry.conn) {
                discard.push((idle.entry.conn, CloseReason::Stale));
                left -= 1;
            } else if timed_out {
                discard.push((idle.entry.conn, CloseReason::IdleTimeout));
                left -= 1;
            } else {
                kept.push(idle);
            }
        }
        st.idle = kept;
        self.publish(&mut st);
        drop(st);
        for (conn, reason) in discard {
            close(&self.series, conn, reason);
        }
    }
    /// A permit for a warm-up, if the pool is below min-idle, has room and a free permit,
    /// and no warm-up failed recently. Counted as opening.
    pub fn warm_slot(&self, now: Instant) -> Option<OwnedSemaphorePermit> {
        let mut st = lock(&self.state);
        let below = st.idle.len() + st.warming < self.settings.min_idle;
        let paused = st.refill_after.is_some_and(|t| now < t);
        if !below || paused || st.total() >= self.settings.size || self.stop.is_cancelled() {
            return None;
        }
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        st.opening += 1;
        st.warming += 1;
        self.publish(&mut st);
        Some(permit)
    }

    /// A warm-up ended: its connection (if it opened) joins the idle list.
    pub fn warmed(&self, conn: Option<T>, now: Instant) {
        let mut st = lock(&self.state);
        st.opening -= 1;
        st.warming -= 1;
        let closing = match conn {
            Some(conn) if self.stop.is_cancelled() => Some(conn),
            Some(conn) => {
                st.ever_opened = true;
                let entry = Box::new(Entry { conn, created: now });
                st.idle.push(Idle { entry, since: now });
                None
            }
            None => {
                st.refill_after = Some(now + REFILL_BACKOFF);
                None
            }
        };
        self.publish(&mut st);
        drop(st);
        if let Some(conn) = closing {
            close(&self.series, conn, CloseReason::Shutdown);
        }
    }

    /// Stops the pool: waiting clients are refused, idle connections closed.
    pub fn shut(&self) {
        self.permits.close();
        let mut st = lock(&self.state);
        let idle = std::mem::take(&mut st.idle);
        self.publish(&mut st);
        drop(st);
        for idle in idle {
            close(&self.series, idle.entry.conn, CloseReason::Shutdown);
        }
    }
}
