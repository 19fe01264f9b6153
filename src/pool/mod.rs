//! Session pooling: server connections that outlive client sessions.
//!
//! [`Pools`] holds one pool per [`PoolKey`] (upstream user, database, and the startup
//! parameters the login carries) of one target. A client calls
//! [`Pools::checkout`] and gets a [`Checkout`]: the most recently used idle server connection
//! (LIFO), or a new one opened through the caller's [`Connector`] (one IAM login).
//!
//! ```text
//! checkout: wait for a permit (FIFO, at most --pool-timeout; 53300 after it)
//!        -> pop idle (LIFO): too old (--server-lifetime) or broken => close, try the next
//!        -> none left => open a new one (counts as opening; finishes even if the client left)
//! Checkout::check_in(true)  -> back on the idle list, then the permit is freed
//! Checkout::check_in(false), Checkout::close(reason) or drop -> closed, permit freed
//! maintenance (one task per pool): idle timeout beyond min-idle, lifetime, min-idle refill,
//!        drops the pool once it has been empty (and unheld, [`Pool`]) for a while; stops
//!        when the Pools is dropped
//! ```
//!
//! Bound: idle + checked out + opening <= pool size. A permit of a fair semaphore with
//! `size` permits is held by each checked-out or opening connection; idle ones hold none, and
//! a new connection is only opened when no idle one is left, so the total never exceeds the
//! permits. The pool never resets a connection: the caller resets it before `check_in(true)`.
//!
//! Files: [`traits`] (what the pool needs of a connection and a connector), `pool_core` (one pool:
//! idle list, permits, counts), `open` (opening for a client), [`guard`] (the checked-out
//! connection), `maintain` (the per-pool task), [`metrics`], [`peaks`] (clients and server
//! connections at their peaks), [`error`].

pub mod error;
pub mod guard;
mod maintain;
pub mod metrics;
mod open;
pub mod peaks;
mod pool_core;
pub mod traits;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use error::{PoolError, ToClient};
pub use guard::Checkout;
pub use metrics::{CloseReason, PoolMetrics};
pub use peaks::ClientCount;
use peaks::Peaks;
pub use traits::{Conn, Connector};

use pool_core::Core;

/// What server connections of one pool have in common: they are interchangeable.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct PoolKey {
    /// The upstream (IAM) database user.
    pub user: String,
    /// The database.
    pub database: String,
    /// The startup parameters the login itself carries, sorted by name: `options` (it cannot
    /// be set after login) and every parameter whose `RESET` must come back to the client's
    /// value (a startup parameter is a session default; a `SET` after login is not).
    pub startup: Vec<(String, String)>,
}

/// Pool settings, with PgBouncer's meanings. A zero duration disables that limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Server connections per pool, idle + checked out + opening (`--pool-size`; at least 1).
    pub size: usize,
    /// Idle connections kept open and warm (`--pool-min-idle`; at most `size`).
    pub min_idle: usize,
    /// Idle connections beyond `min_idle` are closed after this (`--server-idle-timeout`).
    pub idle_timeout: Duration,
    /// A connection older than this is never handed out, and is closed at check-in or while
    /// idle (`--server-lifetime`).
    pub lifetime: Duration,
    /// How long a client waits for a free connection before 53300 (`--pool-timeout`).
    pub wait_timeout: Duration,
    /// How often the maintenance task runs.
    pub maintain_every: Duration,
    /// A pool with no connections and no clients is dropped after this long.
    pub empty_pool_ttl: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            size: 50,
            min_idle: 0,
            idle_timeout: Duration::from_secs(600),
            lifetime: Duration::from_secs(3600),
            wait_timeout: Duration::from_secs(60),
            maintain_every: Duration::from_secs(1),
            empty_pool_ttl: Duration::from_secs(60),
        }
    }
}

impl Settings {
    /// The settings with their bounds applied (size >= 1, min_idle <= size, a maintenance
    /// interval of at least 10 ms).
    fn normalized(mut self) -> Self {
        self.size = self.size.max(1);
        self.min_idle = self.min_idle.min(self.size);
        self.maintain_every = self.maintain_every.max(Duration::from_millis(10));
        self
    }
}

/// How many connections one pool has in each state, and how many clients wait.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Idle, ready to hand out.
    pub idle: usize,
    /// Checked out by clients.
    pub active: usize,
    /// Being opened (for a client or to keep `min_idle`).
    pub opening: usize,
    /// Clients waiting for a permit.
    pub waiting: usize,
}

type Map<T> = Mutex<HashMap<PoolKey, Arc<Core<T>>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The pools of one target. Dropping it stops every pool's maintenance task, which closes the
/// idle connections; checked-out connections are closed when they come back.
pub struct Pools<C: Connector> {
    target: String,
    settings: Settings,
    metrics: Arc<PoolMetrics>,
    peaks: Peaks,
    pools: Arc<Map<C::Conn>>,
    stop: CancellationToken,
    /// Set with `stop`: read on every checkout and check-in, where `stop.is_cancelled()`
    /// would take the token's lock.
    stopped: Arc<AtomicBool>,
}

/// One pool of a [`Pools`], held by a client that checks out of it again and again.
pub struct Pool<C: Connector> {
    core: Arc<Core<C::Conn>>,
    stopped: Arc<AtomicBool>,
}

impl<C: Connector> Pool<C> {
    /// [`Pools::checkout`] from this pool.
    pub async fn checkout(&self, connector: &C) -> Result<Checkout<C::Conn>, PoolError<C::Error>> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(PoolError::Closed);
        }
        open::checkout(self.core.clone(), connector).await
    }
}

impl<C: Connector> Pools<C> {
    /// The pools of `target` (the metrics label).
    pub fn new(target: impl Into<String>, settings: Settings, metrics: Arc<PoolMetrics>) -> Self {
        let target = target.into();
        Self {
            peaks: metrics.peaks(&target),
            target,
            settings: settings.normalized(),
            metrics,
            pools: Arc::default(),
            stop: CancellationToken::new(),
            stopped: Arc::default(),
        }
    }

    /// A server connection for `key`: an idle one, or a new one from `connector`. The first
    /// checkout of a key creates its pool, whose maintenance task keeps a clone of `connector`
    /// for warm-ups, so it must not depend on the client. Waits at most the pool timeout.
    pub async fn checkout(
        &self,
        key: &PoolKey,
        connector: &C,
    ) -> Result<Checkout<C::Conn>, PoolError<C::Error>> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(PoolError::Closed);
        }
        let core = self.pool_for(key, connector);
        open::checkout(core, connector).await
    }

    /// The pool for `key`, to check out of again and again without looking it up each time
    /// (creating it as [`Pools::checkout`] would). A pool is not dropped while it is held.
    pub fn pool(&self, key: &PoolKey, connector: &C) -> Pool<C> {
        Pool {
            core: self.pool_for(key, connector),
            stopped: self.stopped.clone(),
        }
    }

    fn pool_for(&self, key: &PoolKey, connector: &C) -> Arc<Core<C::Conn>> {
        let mut pools = lock(&self.pools);
        if let Some(core) = pools.get(key) {
            return core.clone();
        }
        let series = self.metrics.series(&self.target, key, &self.peaks);
        let judge = connector.clone();
        let core = Arc::new(Core::new(
            key.clone(),
            self.settings,
            series,
            self.stop.child_token(),
            self.stopped.clone(),
            Box::new(move |conn: &C::Conn| judge.is_current(conn)),
        ));
        maintain::spawn(
            core.clone(),
            connector.clone(),
            Arc::downgrade(&self.pools),
            self.metrics.clone(),
        );
        pools.insert(key.clone(), core.clone());
        core
    }

    /// The counts of the pool for `key`, if it exists.
    pub fn stats(&self, key: &PoolKey) -> Option<PoolStats> {
        lock(&self.pools).get(key).map(|core| core.stats())
    }

    /// The pool metric families.
    pub fn metrics(&self) -> &PoolMetrics {
        &self.metrics
    }

    /// Counts a client of a pooled session until the guard is dropped ([`peaks`]).
    pub fn client(&self) -> ClientCount {
        self.peaks.client()
    }

    /// The target's name (the metrics label).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// How many pools exist.
    pub fn len(&self) -> usize {
        lock(&self.pools).len()
    }

    /// Whether no pool exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops pooling: waiting clients get [`PoolError::Closed`], idle connections are closed,
    /// checked-out ones are closed when they come back.
    pub fn shutdown(&self) {
        self.stopped.store(true, Ordering::Release);
        self.stop.cancel();
    }
}

impl<C: Connector> std::fmt::Debug for Pools<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pools")
            .field("target", &self.target)
            .field("settings", &self.settings)
            .field("pools", &self.len())
            .finish()
    }
}

impl<C: Connector> Drop for Pools<C> {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Release);
        self.stop.cancel();
    }
}
