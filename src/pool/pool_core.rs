//! One pool: the idle list (LIFO), the permits (a fair semaphore of `size` permits, held by
//! each checked-out or opening connection), and the counts. Every change of the counts
//! happens under one lock, so idle + active + opening never exceeds `size`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::metrics::{CloseReason, PoolSeries};
use super::{lock, Conn, PoolKey, PoolStats, Settings};

/// How long a polite close may take before the connection is just dropped.
const CLOSE_BOUND: Duration = Duration::from_secs(5);

/// A server connection and when it was opened, boxed once when it is: a checkout moves a
/// pointer, not the connection's TLS state.
pub(crate) type Slot<T> = Box<Entry<T>>;

/// A server connection and when it was opened.
pub(crate) struct Entry<T> {
    pub conn: T,
    pub created: Instant,
}

pub(super) struct Idle<T> {
    pub entry: Slot<T>,
    pub since: Instant,
}

pub(super) struct State<T> {
    /// Oldest first; checkout pops the newest.
    pub idle: Vec<Idle<T>>,
    pub active: usize,
    /// Client opens and warm-ups.
    pub opening: usize,
    /// Warm-ups among `opening`.
    pub warming: usize,
    pub refill_after: Option<Instant>,
    /// A connection of this pool was ever opened (a pool that never had one is dropped as
    /// soon as it is unused: its user or database may well not exist).
    pub ever_opened: bool,
    /// The gauge values last added (idle, active, opening).
    shown: [i64; 3],
}

impl<T> State<T> {
    pub fn total(&self) -> usize {
        self.idle.len() + self.active + self.opening
    }
}

/// Why a client got no permit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WaitFailed {
    /// The pool timeout passed after this long.
    TimedOut(Duration),
    /// The pool was shut down.
    Closed,
}

/// What a client holding a permit gets.
pub(crate) enum Taken<T> {
    /// An idle connection, now counted active.
    Idle(Slot<T>),
    /// Nothing idle: the caller opens one, already counted as opening.
    Open,
}

/// Whether a connection still goes to the right server ([`super::Connector::is_current`]).
pub(crate) type Current<T> = Box<dyn Fn(&T) -> bool + Send + Sync>;

/// One pool.
pub(crate) struct Core<T> {
    pub key: PoolKey,
    pub(super) current: Current<T>,
    pub settings: Settings,
    pub series: PoolSeries,
    pub stop: CancellationToken,
    /// Set when `stop`'s parent is cancelled, without a lock.
    stopped: Arc<AtomicBool>,
    pub(super) permits: Arc<Semaphore>,
    pub(super) state: Mutex<State<T>>,
    waiting: AtomicUsize,
}

/// Whether `created` is too old to hand out or keep.
pub(crate) fn expired(settings: &Settings, created: Instant, now: Instant) -> bool {
    !settings.lifetime.is_zero() && now.duration_since(created) >= settings.lifetime
}

/// Counts the close and closes `conn` in a task of its own (bounded), or drops it when there
/// is no runtime left.
pub(crate) fn close<T: Conn>(series: &PoolSeries, conn: T, reason: CloseReason) {
    series.closed(reason);
    tracing::debug!(reason = reason.as_str(), "closing pooled server connection");
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            let _ = tokio::time::timeout(CLOSE_BOUND, conn.close()).await;
        });
    }
}

/// Counts a waiting client for as long as it waits, however the wait ends.
struct Waiting<'a> {
    count: &'a AtomicUsize,
    gauge: &'a Gauge,
}

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize, gauge: &'a Gauge) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        gauge.inc();
        Self { count, gauge }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
        self.gauge.dec();
    }
}

impl<T: Conn> Core<T> {
    pub fn new(
        key: PoolKey,
        settings: Settings,
        series: PoolSeries,
        stop: CancellationToken,
        stopped: Arc<AtomicBool>,
        current: Current<T>,
    ) -> Self {
        Self {
            key,
            current,
            permits: Arc::new(Semaphore::new(settings.size)),
            settings,
            series,
            stop,
            stopped,
            state: Mutex::new(State {
                idle: Vec::new(),
                active: 0,
                opening: 0,
                warming: 0,
                refill_after: None,
                ever_opened: false,
                shown: [0; 3],
            }),
            waiting: AtomicUsize::new(0),
        }
    }

    /// Waits (in arrival order) for a permit, at most the pool timeout.
    pub async fn permit(&self) -> Result<OwnedSemaphorePermit, WaitFailed> {
        let start = Instant::now();
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            self.series.wait_seconds.observe(0.0);
            return Ok(permit);
        }
        let _waiting = Waiting::new(&self.waiting, &self.series.waiting);
        let acquire = self.permits.clone().acquire_owned();
        let result = if self.settings.wait_timeout.is_zero() {
            acquire.await.map_err(|_| WaitFailed::Closed)
        } else {
            match tokio::time::timeout(self.settings.wait_timeout, acquire).await {
                Ok(r) => r.map_err(|_| WaitFailed::Closed),
                Err(_) => Err(WaitFailed::TimedOut(start.elapsed())),
            }
        };
        self.series
            .wait_seconds
            .observe(start.elapsed().as_secs_f64());
        result
    }

    /// For a client holding a permit: the newest idle connection that is young enough and not
    /// broken (closing the others), else a slot to open one.
    pub fn take(&self, now: Instant) -> Taken<T> {
        let mut discard = Vec::new();
        let mut st = lock(&self.state);
        let mut taken = Taken::Open;
        while let Some(mut idle) = st.idle.pop() {
            if expired(&self.settings, idle.entry.created, now) {
                discard.push((idle.entry.conn, CloseReason::Lifetime));
            } else if !(self.current)(&idle.entry.conn) {
                discard.push((idle.entry.conn, CloseReason::Stale));
            } else if idle.entry.conn.is_broken() {
                discard.push((idle.entry.conn, CloseReason::Broken));
            } else {
                taken = Taken::Idle(idle.entry);
                break;
            }
        }
        match taken {
            Taken::Idle(_) => st.active += 1,
            Taken::Open => st.opening += 1,
        }
        self.publish(&mut st);
        drop(st);
        for (conn, reason) in discard {
            close(&self.series, conn, reason);
        }
        taken
    }

    /// A client's open ended: counted active if it succeeded.
    pub fn opened(&self, ok: bool) {
        let mut st = lock(&self.state);
        st.opening -= 1;
        if ok {
            st.active += 1;
            st.ever_opened = true;
        }
        self.publish(&mut st);
    }

    /// A checked-out connection comes back: onto the idle list, or closed when it is too old
    /// or the pools are shut down. The caller frees the permit afterwards.
    pub fn check_in(&self, entry: Slot<T>, now: Instant) {
        let reason = if self.stopped.load(Ordering::Acquire) {
            Some(CloseReason::Shutdown)
        } else if expired(&self.settings, entry.created, now) {
            Some(CloseReason::Lifetime)
        } else if !(self.current)(&entry.conn) {
            Some(CloseReason::Stale)
        } else {
            None
        };
        let mut st = lock(&self.state);
        st.active -= 1;
        match reason {
            None => st.idle.push(Idle { entry, since: now }),
            Some(reason) => {
                self.publish(&mut st);
                drop(st);
                return close(&self.series, entry.conn, reason);
            }
        }
        self.publish(&mut st);
    }

    /// A checked-out connection is closed instead of coming back.
    pub fn discard(&self, conn: T, reason: CloseReason) {
        let mut st = lock(&self.state);
        st.active -= 1;
        self.publish(&mut st);
        drop(st);
        close(&self.series, conn, reason);
    }
}

impl<T: Conn> Core<T> {
    /// Whether the pool has no connections at all.
    pub fn ever_opened(&self) -> bool {
        lock(&self.state).ever_opened
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.state).total() == 0
    }

    /// The counts.
    pub fn stats(&self) -> PoolStats {
        let st = lock(&self.state);
        PoolStats {
            idle: st.idle.len(),
            active: st.active,
            opening: st.opening,
            waiting: self.waiting.load(Ordering::Relaxed),
        }
    }

    /// Moves the gauges by what changed since the last call (pools sharing labels add up).
    pub(super) fn publish(&self, st: &mut State<T>) {
        let now = [st.idle.len(), st.active, st.opening].map(|n| n as i64);
        let gauges = [&self.series.idle, &self.series.active, &self.series.opening];
        for ((gauge, new), old) in gauges.into_iter().zip(now).zip(st.shown) {
            gauge.inc_by(new - old);
        }
        let total = |counts: [i64; 3]| counts.iter().sum::<i64>();
        self.series
            .peaks
            .servers_moved(total(now) - total(st.shown));
        st.shown = now;
    }
}

impl<T> Drop for Core<T> {
    fn drop(&mut self) {
        // A dropped pool shows nothing: its idle connections go with it (dropped, not
        // closed, only if the runtime is gone before maintenance could close them).
        let st = self
            .state
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let gauges = [&self.series.idle, &self.series.active, &self.series.opening];
        for (gauge, old) in gauges.into_iter().zip(st.shown) {
            gauge.dec_by(old);
        }
        self.series
            .peaks
            .servers_moved(-st.shown.iter().sum::<i64>());
    }
}
