//! Checkout: limits, order, timeout, LIFO, lifetime and broken connections at checkout.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{id, settings, setup, until};
use crate::pool::PoolError;

#[tokio::test(start_paused = true)]
async fn opening_and_checked_out_connections_count_against_the_size() {
    let s = Arc::new(setup(settings()));
    s.fake.set_hang(true);
    let opening: Vec<_> = (0..2)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.checkout().await })
        })
        .collect();
    until("two opens hang", || s.fake.opens() == 2).await;
    assert_eq!(s.stats().opening, 2);
    let third = s.try_checkout().await;
    assert!(matches!(third, Err(PoolError::Timeout { .. })), "{third:?}");
    assert_eq!(
        s.fake.opens(),
        2,
        "no third connection while two are opening"
    );
    s.fake.release(2);
    let mut out = Vec::new();
    for task in opening {
        out.push(super::bounded(task).await.unwrap());
    }
    assert_eq!(s.stats().active, 2);
    let third = s.try_checkout().await;
    assert!(
        matches!(third, Err(PoolError::Timeout { .. })),
        "two checked out fill it"
    );
    out.pop().unwrap().check_in(true);
    let reused = s.checkout().await;
    assert!(reused.reused());
    assert_eq!(s.fake.opens(), 2);
}

#[tokio::test(start_paused = true)]
async fn waiting_clients_are_served_in_arrival_order() {
    let s = Arc::new(setup(super::Settings {
        size: 1,
        ..settings()
    }));
    let first = s.checkout().await;
    let served = Arc::new(Mutex::new(Vec::new()));
    for n in 0..4 {
        let (s2, served) = (s.clone(), served.clone());
        tokio::spawn(async move {
            let c = s2.checkout().await;
            served.lock().unwrap().push(n);
            c.check_in(true);
        });
        until("queued", || s.stats().waiting == n + 1).await;
    }
    first.check_in(true);
    until("all served", || served.lock().unwrap().len() == 4).await;
    assert_eq!(*served.lock().unwrap(), vec![0, 1, 2, 3]);
    assert_eq!(s.fake.opens(), 1, "all reused the one connection");
}

#[tokio::test(start_paused = true)]
async fn pool_timeout_is_53300_naming_the_flags() {
    let s = setup(super::Settings {
        size: 1,
        wait_timeout: Duration::from_secs(7),
        ..settings()
    });
    let _held = s.checkout().await;
    let start = Instant::now();
    let err = s.try_checkout().await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(7));
    let client = err.to_client();
    assert_eq!(client.code, "53300");
    for part in ["--pool-timeout", "--pool-size", "\"app\"", "\"shop\"", "7s"] {
        assert!(
            client.message.contains(part),
            "{part} in {}",
            client.message
        );
    }
    assert_eq!(s.stats().waiting, 0);
    assert_eq!(s.value("pool_clients_waiting", ""), 0.0);
    assert_eq!(s.value("pool_wait_seconds_count", ""), 2.0);
}

#[tokio::test(start_paused = true)]
async fn open_errors_pass_through_and_free_the_permit() {
    let s = setup(super::Settings {
        size: 1,
        ..settings()
    });
    s.fake.set_fail(true);
    let err = s.try_checkout().await.unwrap_err();
    assert!(matches!(err, PoolError::Open(_)));
    assert_eq!(err.to_client().code, "08001");
    assert_eq!(err.to_client().message, "fake open failed");
    assert_eq!(s.stats(), Default::default(), "nothing left opening");
    s.fake.set_fail(false);
    let start = Instant::now();
    let mut c = s.checkout().await;
    assert_eq!(start.elapsed(), Duration::ZERO, "the permit was free");
    assert_eq!(id(&mut c), 1);
    assert_eq!(s.value("pool_server_login_failures_total", ""), 1.0);
    assert_eq!(s.value("pool_server_logins_total", ""), 1.0);
}

#[tokio::test(start_paused = true)]
async fn idle_connections_are_reused_newest_first() {
    let s = setup(super::Settings {
        size: 3,
        ..settings()
    });
    let mut out = vec![s.checkout().await, s.checkout().await, s.checkout().await];
    let ids: Vec<_> = out.iter_mut().map(id).collect();
    assert_eq!(ids, [0, 1, 2]);
    for c in out {
        c.check_in(true);
    }
    let mut a = s.checkout().await;
    let mut b = s.checkout().await;
    assert!(a.reused() && b.reused());
    assert_eq!((id(&mut a), id(&mut b)), (2, 1));
    assert_eq!(s.fake.opens(), 3);
    assert_eq!(s.value("pool_server_reuses_total", ""), 2.0);
}

#[tokio::test(start_paused = true)]
async fn a_connection_past_its_lifetime_is_not_handed_out() {
    let s = setup(super::Settings {
        lifetime: Duration::from_secs(100),
        maintain_every: Duration::from_secs(3600),
        ..settings()
    });
    s.checkout().await.check_in(true);
    tokio::time::sleep(Duration::from_secs(99)).await;
    let c = s.checkout().await;
    assert!(c.reused(), "99 s old: still young enough");
    c.check_in(true);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut c = s.checkout().await;
    assert!(!c.reused());
    assert_eq!(id(&mut c), 1);
    until("old one closed", || s.fake.closed() == [0]).await;
    assert_eq!(s.closes("lifetime"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn a_broken_idle_connection_is_skipped() {
    let s = setup(settings());
    let (a, b) = (s.checkout().await, s.checkout().await);
    a.check_in(true);
    b.check_in(true);
    s.fake.break_conn(1);
    let mut c = s.checkout().await;
    assert!(c.reused());
    assert_eq!(
        id(&mut c),
        0,
        "the newest (1) was broken; the next one served"
    );
    until("broken one closed", || s.fake.closed() == [1]).await;
    assert_eq!(s.closes("broken"), 1.0);
    assert_eq!(s.fake.opens(), 2);
    assert_eq!(s.stats().idle, 0);
}

#[tokio::test(start_paused = true)]
async fn a_stale_connection_is_never_handed_out_and_closed_wherever_it_is() {
    let mut set = settings();
    set.size = 3;
    let s = setup(set);
    let (a, b, mut c) = (s.checkout().await, s.checkout().await, s.checkout().await);
    a.check_in(true);
    b.check_in(true);
    // The connector's server moved (a failover): 1 idle and 2 checked out are stale now.
    s.fake.make_stale(1);
    s.fake.make_stale(2);
    let mut d = s.checkout().await;
    assert!(d.reused());
    assert_eq!(
        id(&mut d),
        0,
        "the newest idle one (1) is stale; the next one served"
    );
    until("stale idle one closed", || s.fake.closed() == [1]).await;
    assert_eq!(id(&mut c), 2);
    c.check_in(true);
    until("stale one closed at check-in", || s.fake.closed() == [1, 2]).await;
    assert_eq!(s.closes("stale"), 2.0);
    assert_eq!(s.stats().idle, 0);
    // And while idle: the maintenance task closes it.
    d.check_in(true);
    s.fake.make_stale(0);
    tokio::time::advance(Duration::from_secs(2)).await;
    until("stale idle one closed by maintenance", || {
        s.fake.closed() == [1, 2, 0]
    })
    .await;
}
