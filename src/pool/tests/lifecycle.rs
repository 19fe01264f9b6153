//! Clients that leave, checkouts that are not checked in, shutdown, metric names.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{timeout, Instant};

use super::{id, key, settings, setup, until, Settings};
use crate::pool::{CloseReason, PoolError};

fn one() -> Settings {
    Settings {
        size: 1,
        ..settings()
    }
}

#[tokio::test(start_paused = true)]
async fn a_waiter_that_gives_up_leaves_the_queue() {
    let s = Arc::new(setup(one()));
    let held = s.checkout().await;
    let gave_up = timeout(Duration::from_secs(1), s.pools.checkout(&key(), &s.fake)).await;
    assert!(gave_up.is_err(), "still waiting after 1 s");
    assert_eq!(s.stats().waiting, 0);
    assert_eq!(s.value("pool_clients_waiting", ""), 0.0);
    let s2 = s.clone();
    let next = tokio::spawn(async move { s2.checkout().await.reused() });
    until("next waits", || s.stats().waiting == 1).await;
    let start = Instant::now();
    held.check_in(true);
    assert!(
        super::bounded(next).await.unwrap(),
        "the next waiter got the connection"
    );
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_connection_opened_for_a_client_that_left_goes_idle() {
    let s = setup(one());
    s.fake.set_hang(true);
    let gave_up = timeout(Duration::from_secs(1), s.pools.checkout(&key(), &s.fake)).await;
    assert!(gave_up.is_err());
    assert_eq!(s.stats().opening, 1, "the open goes on");
    s.fake.set_hang(false);
    s.fake.release(1);
    until("parked", || s.stats().idle == 1).await;
    assert_eq!(s.stats().opening, 0);
    let c = s.checkout().await;
    assert!(c.reused());
    assert_eq!(s.fake.opens(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_checkout_dropped_without_check_in_is_closed_and_frees_its_permit() {
    let s = setup(one());
    let c = s.checkout().await;
    drop(c);
    until("closed", || s.fake.closed() == [0]).await;
    assert_eq!(s.closes("dropped"), 1.0);
    assert_eq!(s.stats(), Default::default());
    let start = Instant::now();
    let mut c = s.checkout().await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(!c.reused());
    assert_eq!(id(&mut c), 1);
}

#[tokio::test(start_paused = true)]
async fn check_in_without_reset_and_close_close_with_their_reason() {
    let s = setup(one());
    s.checkout().await.check_in(false);
    s.checkout().await.close(CloseReason::ResetFailed);
    until("both closed", || s.fake.closed() == [0, 1]).await;
    assert_eq!(s.closes("not_idle"), 1.0);
    assert_eq!(s.closes("reset_failed"), 1.0);
    assert_eq!(s.value("pool_server_resets_total", ""), 0.0);
    s.checkout().await.check_in(true);
    assert_eq!(s.value("pool_server_resets_total", ""), 1.0);
    assert_eq!(s.stats().idle, 1);
}

#[tokio::test(start_paused = true)]
async fn shutdown_closes_idle_then_returning_connections() {
    let s = setup(settings());
    let (a, b) = (s.checkout().await, s.checkout().await);
    a.check_in(true);
    let fake = s.fake.clone();
    s.pools.shutdown();
    until("idle closed", || fake.closed() == [0]).await;
    b.check_in(true);
    until("returning one closed", || fake.closed() == [0, 1]).await;
    assert_eq!(s.closes("shutdown"), 2.0);
    let err = s.try_checkout().await.unwrap_err();
    assert!(matches!(err, PoolError::Closed));
    assert_eq!(err.to_client().code, "57P01");
    let other = crate::pool::PoolKey {
        database: "other".into(),
        ..key()
    };
    let err = super::bounded(s.pools.checkout(&other, &fake))
        .await
        .unwrap_err();
    assert!(
        matches!(err, PoolError::Closed),
        "no new pool after shutdown"
    );
    assert_eq!((fake.opens(), s.pools.len()), (2, 1));
}

#[tokio::test(start_paused = true)]
async fn shutdown_wakes_waiters_and_dropping_closes() {
    let s = Arc::new(setup(one()));
    let held = s.checkout().await;
    let s2 = s.clone();
    let waiter = tokio::spawn(async move { s2.try_checkout().await.err() });
    until("waiting", || s.stats().waiting == 1).await;
    s.pools.shutdown();
    let err = super::bounded(waiter).await.unwrap();
    assert!(matches!(err, Some(PoolError::Closed)), "{err:?}");
    drop(held);
    let fake = s.fake.clone();
    drop(s);
    until("closed", || fake.closed() == [0]).await;
}

#[tokio::test(start_paused = true)]
async fn maintenance_ends_when_the_pools_are_dropped() {
    let s = setup(settings());
    s.checkout().await.check_in(true);
    let fake = s.fake.clone();
    drop(s);
    until("idle closed on drop", || fake.closed() == [0]).await;
}

#[tokio::test(start_paused = true)]
async fn metrics_have_the_documented_names_and_labels() {
    let s = setup(settings());
    let c = s.checkout().await;
    assert_eq!(s.value("pool_server_connections_active", ""), 1.0);
    c.check_in(true);
    assert_eq!(s.value("pool_server_connections_active", ""), 0.0);
    assert_eq!(s.value("pool_server_connections_idle", ""), 1.0);
    assert_eq!(s.value("pool_server_connections_opening", ""), 0.0);
    s.checkout().await.check_in(false);
    let text = s.exposition();
    for name in [
        "pool_server_connections_active gauge",
        "pool_server_connections_idle gauge",
        "pool_server_connections_opening gauge",
        "pool_clients_waiting gauge",
        "pool_wait_seconds histogram",
        "pool_server_logins counter",
        "pool_server_login_failures counter",
        "pool_server_reuses counter",
        "pool_server_resets counter",
        "pool_server_closes counter",
    ] {
        assert!(
            text.contains(&format!("# TYPE pg_iam_proxy_{name}")),
            "{name}:\n{text}"
        );
    }
}
