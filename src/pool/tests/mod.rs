//! Pool tests on a paused clock with a fake connector that counts opens, and can fail or hang
//! on demand; its connections record their closes and can be marked broken.

mod checkout;
mod lifecycle;
mod maintain;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;

use super::{Conn, Connector, PoolError, PoolKey, PoolMetrics, Pools, Settings, ToClient};
use crate::error::ClientError;

struct FakeState {
    opens: AtomicUsize,
    fail: AtomicBool,
    hang: AtomicBool,
    release: Semaphore,
    broken: Mutex<HashSet<usize>>,
    stale: Mutex<HashSet<usize>>,
    closed: Mutex<Vec<usize>>,
}

impl Default for FakeState {
    fn default() -> Self {
        Self {
            opens: AtomicUsize::new(0),
            fail: AtomicBool::new(false),
            hang: AtomicBool::new(false),
            release: Semaphore::new(0),
            broken: Mutex::default(),
            stale: Mutex::default(),
            closed: Mutex::default(),
        }
    }
}

/// A connector whose connections are numbered 0, 1, 2, ... in the order opens start.
#[derive(Clone, Default)]
struct Fake(Arc<FakeState>);

struct FakeConn {
    id: usize,
    state: Arc<FakeState>,
}

#[derive(Debug, thiserror::Error)]
#[error("fake open failed")]
struct FakeError;

impl ToClient for FakeError {
    fn to_client(&self) -> ClientError {
        ClientError::new("08001", "fake open failed")
    }
}

impl Conn for FakeConn {
    fn is_broken(&mut self) -> bool {
        self.state.broken.lock().unwrap().contains(&self.id)
    }

    async fn close(self) {
        self.state.closed.lock().unwrap().push(self.id);
    }
}

impl Connector for Fake {
    type Conn = FakeConn;
    type Error = FakeError;

    async fn open(&self, _key: &PoolKey) -> Result<FakeConn, FakeError> {
        let id = self.0.opens.fetch_add(1, Ordering::SeqCst);
        if self.0.hang.load(Ordering::SeqCst) {
            self.0.release.acquire().await.unwrap().forget();
        }
        if self.0.fail.load(Ordering::SeqCst) {
            return Err(FakeError);
        }
        Ok(FakeConn {
            id,
            state: self.0.clone(),
        })
    }

    fn is_current(&self, conn: &FakeConn) -> bool {
        !self
            .0
            .stale
            .lock()
            .expect("the stale set lock")
            .contains(&conn.id)
    }
}

impl Fake {
    fn opens(&self) -> usize {
        self.0.opens.load(Ordering::SeqCst)
    }
    fn closed(&self) -> Vec<usize> {
        self.0.closed.lock().unwrap().clone()
    }
    fn set_fail(&self, on: bool) {
        self.0.fail.store(on, Ordering::SeqCst);
    }
    fn set_hang(&self, on: bool) {
        self.0.hang.store(on, Ordering::SeqCst);
    }
    /// Lets `n` hanging opens finish.
    fn release(&self, n: usize) {
        self.0.release.add_permits(n);
    }
    fn make_stale(&self, id: usize) {
        self.0.stale.lock().expect("the stale set lock").insert(id);
    }
    fn break_conn(&self, id: usize) {
        self.0.broken.lock().unwrap().insert(id);
    }
}

fn key() -> PoolKey {
    PoolKey {
        user: "app".into(),
        database: "shop".into(),
        startup: Vec::new(),
    }
}

/// Settings for tests: small pool, short waits, no maintenance unless a test asks.
fn settings() -> Settings {
    Settings {
        size: 2,
        min_idle: 0,
        idle_timeout: Duration::from_secs(600),
        lifetime: Duration::from_secs(3600),
        wait_timeout: Duration::from_secs(5),
        maintain_every: Duration::from_secs(1),
        empty_pool_ttl: Duration::from_secs(60),
    }
}

struct Setup {
    pools: Pools<Fake>,
    fake: Fake,
    metrics: Arc<PoolMetrics>,
}

fn setup(settings: Settings) -> Setup {
    let metrics = Arc::new(PoolMetrics::default());
    Setup {
        pools: Pools::new("t", settings, metrics.clone()),
        fake: Fake::default(),
        metrics,
    }
}

impl Setup {
    async fn checkout(&self) -> super::Checkout<FakeConn> {
        self.try_checkout().await.expect("checkout")
    }

    async fn try_checkout(&self) -> Result<super::Checkout<FakeConn>, PoolError<FakeError>> {
        bounded(self.pools.checkout(&key(), &self.fake)).await
    }

    fn stats(&self) -> super::PoolStats {
        self.pools.stats(&key()).expect("pool exists")
    }

    /// The exposition text of the pool metrics.
    fn exposition(&self) -> String {
        let mut registry = Registry::with_prefix("pg_iam_proxy");
        self.metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    /// The value of a pool series (`name` with the pool's labels and `extra` ones).
    fn value(&self, name: &str, extra: &str) -> f64 {
        let series =
            format!("pg_iam_proxy_{name}{{target=\"t\",user=\"app\",database=\"shop\"{extra}}} ");
        let text = self.exposition();
        let line = text.lines().find(|l| l.starts_with(&series));
        line.map_or(0.0, |l| l[series.len()..].parse().unwrap())
    }

    fn closes(&self, reason: &str) -> f64 {
        self.value("pool_server_closes_total", &format!(",reason=\"{reason}\""))
    }
}

fn id(c: &mut super::Checkout<FakeConn>) -> usize {
    c.conn_mut().id
}

/// `f`, which must end within an (auto-advanced, virtual) hour: a broken pool fails the
/// test instead of hanging it.
async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(3600), f)
        .await
        .expect("ended within an hour")
}

/// Lets spawned tasks run until `cond` holds (no clock movement); panics if it never does.
async fn until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("never happened: {what}");
}

#[test]
fn pools_and_checkouts_can_move_between_tasks() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let s = setup(settings());
    send_sync(&s.pools);
    let k = key();
    let checkout = s.pools.checkout(&k, &s.fake);
    send(&checkout);
}
