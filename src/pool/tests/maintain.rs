//! The maintenance task: lifetime and idle timeout on idle connections, min-idle refill,
//! dropping empty pools.

use std::time::Duration;

use tokio::time::sleep;

use super::{id, key, settings, setup, until, Settings};

#[tokio::test(start_paused = true)]
async fn maintenance_closes_idle_connections_past_their_lifetime() {
    let s = setup(Settings {
        lifetime: Duration::from_secs(100),
        ..settings()
    });
    s.checkout().await.check_in(true);
    sleep(Duration::from_secs(98)).await;
    assert_eq!(s.stats().idle, 1);
    sleep(Duration::from_secs(3)).await;
    assert_eq!(s.stats().idle, 0, "closed without any checkout");
    until("closed", || s.fake.closed() == [0]).await;
    assert_eq!(s.closes("lifetime"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_closes_the_oldest_idle_beyond_min_idle() {
    let s = setup(Settings {
        size: 5,
        min_idle: 1,
        idle_timeout: Duration::from_secs(60),
        ..settings()
    });
    let out = vec![s.checkout().await, s.checkout().await, s.checkout().await];
    for c in out {
        c.check_in(true);
    }
    sleep(Duration::from_secs(58)).await;
    assert_eq!(s.stats().idle, 3);
    sleep(Duration::from_secs(3)).await;
    assert_eq!(s.stats().idle, 1, "min-idle kept");
    until("two closed", || s.fake.closed().len() == 2).await;
    assert_eq!(s.closes("idle_timeout"), 2.0);
    let mut kept = s.checkout().await;
    assert_eq!(id(&mut kept), 2, "the most recently used one is kept");
    assert_eq!(s.fake.opens(), 3, "no refill: one was idle");
}

#[tokio::test(start_paused = true)]
async fn min_idle_is_refilled_within_the_size() {
    let s = setup(Settings {
        size: 3,
        min_idle: 2,
        ..settings()
    });
    let first = s.checkout().await;
    sleep(Duration::from_secs(2)).await;
    assert_eq!(
        s.fake.opens(),
        3,
        "the client's connection and two warm ones"
    );
    assert_eq!((s.stats().idle, s.stats().active), (2, 1));
    let (a, b) = (s.checkout().await, s.checkout().await);
    assert!(a.reused() && b.reused());
    sleep(Duration::from_secs(5)).await;
    assert_eq!(s.fake.opens(), 3, "no warm-up beyond the size");
    a.check_in(true);
    sleep(Duration::from_secs(5)).await;
    assert_eq!(s.fake.opens(), 3, "idle 1 + active 2 fill the size");
    drop((first, b));
    sleep(Duration::from_secs(2)).await;
    assert_eq!(
        s.fake.opens(),
        4,
        "two closed: one warm-up brings idle back to 2"
    );
    assert_eq!((s.stats().idle, s.stats().active), (2, 0));
    assert_eq!(s.value("pool_server_logins_total", ""), 4.0);
}

#[tokio::test(start_paused = true)]
async fn a_failing_warm_up_frees_its_permit_and_backs_off() {
    let s = setup(Settings {
        size: 1,
        min_idle: 1,
        ..settings()
    });
    let c = s.checkout().await;
    s.fake.set_fail(true);
    c.check_in(false);
    sleep(Duration::from_millis(1500)).await;
    let after_failure = s.fake.opens();
    assert_eq!(after_failure, 2, "one warm-up tried");
    assert_eq!(s.stats().opening, 0);
    sleep(Duration::from_secs(3)).await;
    assert_eq!(s.fake.opens(), 2, "backing off");
    s.fake.set_fail(false);
    let c = s.checkout().await;
    assert!(!c.reused(), "the failed warm-up left its permit");
}

#[tokio::test(start_paused = true)]
async fn an_empty_pool_is_dropped_but_not_while_in_use() {
    let s = setup(Settings {
        idle_timeout: Duration::from_secs(10),
        empty_pool_ttl: Duration::from_secs(20),
        ..settings()
    });
    let held = s.checkout().await;
    sleep(Duration::from_secs(100)).await;
    assert_eq!(s.pools.len(), 1, "a checked-out connection keeps it");
    held.check_in(true);
    sleep(Duration::from_secs(11)).await;
    assert_eq!(s.stats().idle, 0);
    sleep(Duration::from_secs(15)).await;
    assert_eq!(s.pools.len(), 1, "empty for less than the ttl");
    sleep(Duration::from_secs(6)).await;
    assert!(s.pools.is_empty());
    assert!(s.pools.stats(&key()).is_none());
    assert!(!s.checkout().await.reused(), "a new pool for the key");
}

#[tokio::test(start_paused = true)]
async fn a_pool_referenced_by_a_checkout_in_progress_is_not_dropped() {
    let s = setup(Settings {
        empty_pool_ttl: Duration::from_secs(20),
        ..settings()
    });
    s.checkout().await.check_in(false);
    // What a checkout holds between looking the pool up and taking a connection.
    let in_progress = super::super::lock(&s.pools.pools).get(&key()).cloned();
    sleep(Duration::from_secs(60)).await;
    assert_eq!(s.pools.len(), 1, "empty, but a checkout is about to use it");
    drop(in_progress);
    sleep(Duration::from_secs(22)).await;
    assert!(s.pools.is_empty());
}
