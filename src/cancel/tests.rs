//! Keys (the server's pid, our secret) and the forwarding bounds, against a listener that
//! accepts and never answers (a frozen server).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::startup::{BackendKeyData, SecretKey};

use super::{CancelLimits, CancelMap, CancelOutcome, CancelTarget};
use crate::config::TlsMode;
use crate::upstream::connect::Endpoint;
use crate::upstream::tls::client_config;

/// A server that accepts connections, counts them and never answers.
async fn frozen_server() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    (addr, accepted)
}

fn target(addr: std::net::SocketAddr, pid: i32) -> CancelTarget {
    let tls = client_config(None, TlsMode::VerifyFull).expect("tls config");
    let endpoint = Endpoint::new("localhost", addr.port(), tls, None).expect("endpoint");
    CancelTarget {
        endpoint: Arc::new(endpoint),
        addr,
        key: Arc::new(BackendKeyData::new(pid, SecretKey::I32(42))),
    }
}

fn limits(max_in_flight: usize) -> CancelLimits {
    CancelLimits {
        spacing: Duration::from_millis(100),
        max_in_flight,
        timeout: Duration::from_millis(300),
    }
}

fn request(key: (i32, i32)) -> CancelRequest {
    CancelRequest::new(key.0, SecretKey::I32(key.1))
}

#[tokio::test]
async fn clients_get_the_server_pid_and_a_secret_of_ours() {
    let (addr, _) = frozen_server().await;
    let map = Arc::new(CancelMap::default());
    // Two sessions on different servers with the same pid.
    let a = map.register(target(addr, 4242));
    let b = map.register(target(addr, 4242));
    assert_eq!((a.key.0, b.key.0), (4242, 4242));
    assert_ne!(a.key, b.key, "same pid, different secrets");
    assert_ne!(a.key.1, 42, "the server's secret is never handed out");
}

#[tokio::test]
async fn a_forward_to_a_frozen_server_ends_within_the_timeout() {
    let (addr, accepted) = frozen_server().await;
    let map = Arc::new(CancelMap::new(limits(8)));
    let guard = map.register(target(addr, 7));
    let outcomes = Mutex::new(Vec::new());
    let started = Instant::now();
    let bound = Duration::from_secs(5);
    let req = request(guard.key);
    let forward = map.forward(&req, |o| outcomes.lock().unwrap().push(o));
    tokio::time::timeout(bound, forward)
        .await
        .expect("the forward returned within its own timeout");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(*outcomes.lock().unwrap(), [CancelOutcome::Failed]);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn duplicates_coalesce_into_one_follow_up_and_unknown_keys_are_ignored() {
    let (addr, accepted) = frozen_server().await;
    let map = Arc::new(CancelMap::new(limits(8)));
    let guard = map.register(target(addr, 7));
    let outcomes = Mutex::new(Vec::new());
    let record = |o| outcomes.lock().unwrap().push(o);
    let req = request(guard.key);
    let all = (0..200).map(|_| map.forward(&req, record));
    futures_util::future::join_all(all).await;
    map.forward(&request((guard.key.0, guard.key.1 ^ 1)), record)
        .await;
    let outcomes = outcomes.into_inner().unwrap();
    let count = |want| outcomes.iter().filter(|o| **o == want).count();
    // The first forward, and one follow-up for everything that arrived while it ran.
    assert_eq!(count(CancelOutcome::Failed), 2, "{outcomes:?}");
    assert_eq!(count(CancelOutcome::Coalesced), 199, "{outcomes:?}");
    assert_eq!(count(CancelOutcome::UnknownKey), 1, "{outcomes:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn forwards_beyond_the_process_cap_are_dropped() {
    let (addr, accepted) = frozen_server().await;
    let map = Arc::new(CancelMap::new(limits(1)));
    let (a, b) = (map.register(target(addr, 1)), map.register(target(addr, 2)));
    let outcomes = Mutex::new(Vec::new());
    let record = |o| outcomes.lock().unwrap().push(o);
    let (ra, rb) = (request(a.key), request(b.key));
    tokio::join!(map.forward(&ra, record), map.forward(&rb, record));
    let mut outcomes = outcomes.into_inner().unwrap();
    outcomes.sort_by_key(|o| o.as_str());
    assert_eq!(outcomes, [CancelOutcome::Dropped, CancelOutcome::Failed]);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_session_that_ended_gets_no_more_forwards() {
    let (addr, accepted) = frozen_server().await;
    let map = Arc::new(CancelMap::new(limits(8)));
    let key = map.register(target(addr, 9)).key; // the guard drops here
    let outcomes = Mutex::new(Vec::new());
    map.forward(&request(key), |o| outcomes.lock().unwrap().push(o))
        .await;
    assert_eq!(*outcomes.lock().unwrap(), [CancelOutcome::UnknownKey]);
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn release_waits_for_the_forward_in_flight_and_stops_new_ones() {
    let (addr, accepted) = frozen_server().await;
    let map = Arc::new(CancelMap::new(limits(8)));
    let guard = map.register(target(addr, 9));
    let req = request(guard.key);
    let forwarding = tokio::spawn({
        let (map, key) = (map.clone(), guard.key);
        async move { map.forward(&request(key), |_| {}).await }
    });
    while accepted.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    // The forward is stuck at the frozen server; release must not return before it ends.
    guard.release().await;
    assert!(
        forwarding.is_finished(),
        "release returned while a cancel forward for the key was still running"
    );
    let outcomes = Mutex::new(Vec::new());
    map.forward(&req, |o| outcomes.lock().unwrap().push(o))
        .await;
    assert_eq!(*outcomes.lock().unwrap(), [CancelOutcome::UnknownKey]);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}
