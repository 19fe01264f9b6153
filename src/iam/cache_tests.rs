//! Cache timing tests on tokio's paused clock: virtual time, no real waiting.

use super::*;
use aws_credential_types::provider::{
    error::CredentialsError, future, ProvideCredentials, SharedCredentialsProvider,
};
use aws_credential_types::Credentials;
use std::sync::atomic::AtomicBool;
use tokio::time::{sleep, Instant};

/// Wall-clock time that follows tokio's (paused) clock.
#[derive(Debug, Clone)]
struct TokioClock {
    base: SystemTime,
    start: Instant,
}

impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        self.base + self.start.elapsed()
    }
}

/// A credentials provider that counts calls and can be made to fail, like STS going down.
#[derive(Debug, Clone)]
struct TestProvider {
    clock: TokioClock,
    calls: Arc<AtomicU64>,
    failing: Arc<AtomicBool>,
    hanging: Arc<AtomicBool>,
    delay: Duration,
    lifetime: Option<Duration>,
}

impl ProvideCredentials for TestProvider {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            sleep(self.delay).await;
            if self.hanging.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            if self.failing.load(Ordering::SeqCst) {
                return Err(CredentialsError::provider_error("STS is down (test)"));
            }
            let expiry = self.lifetime.map(|l| self.clock.now() + l);
            Ok(Credentials::new(
                format!("ASIATEST{n}"),
                "secret",
                Some("session".into()),
                expiry,
                "test",
            ))
        })
    }
}

struct Bed {
    cache: TokenCache,
    provider: TestProvider,
}

fn bed(lifetime: Option<Duration>, delay: Duration) -> Bed {
    let clock = TokioClock {
        base: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        start: Instant::now(),
    };
    let provider = TestProvider {
        clock: clock.clone(),
        calls: Arc::default(),
        failing: Arc::default(),
        hanging: Arc::default(),
        delay,
        lifetime,
    };
    let source = CredentialSource::new(
        Some(SharedCredentialsProvider::new(provider.clone())),
        crate::iam::DEFAULT_CREDENTIALS_TIMEOUT,
    );
    let sources = HashMap::from([(None, Arc::new(source))]);
    let cache = TokenCache::new(sources, CacheSettings::default(), Arc::new(clock));
    Bed { cache, provider }
}

fn key() -> TokenKey {
    TokenKey {
        host: "db.example.com".into(),
        port: 5432,
        user: "iam_dbuser".into(),
        region: "us-east-1".into(),
        role: None,
    }
}

fn calls(b: &Bed) -> u64 {
    b.provider.calls.load(Ordering::SeqCst)
}

#[tokio::test(start_paused = true)]
async fn reuses_a_token_until_its_refresh_point() {
    let b = bed(None, Duration::ZERO);
    let first = b.cache.token(&key()).await.expect("token");
    sleep(Duration::from_secs(600)).await;
    let again = b.cache.token(&key()).await.expect("token");
    assert!(Arc::ptr_eq(&first, &again));
    let stats = b.cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.signings), (1, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn refreshes_in_the_background_before_the_refresh_point() {
    let b = bed(None, Duration::ZERO);
    let first = b.cache.token(&key()).await.expect("token");
    // Refresh is due at 900 - 2 * 60 = 780 s; the token is served until 840 s.
    sleep(Duration::from_secs(790)).await;
    assert_eq!(b.cache.stats().signings, 2, "background refresh ran");
    let second = b.cache.token(&key()).await.expect("token");
    assert!(!Arc::ptr_eq(&first, &second));
    assert_eq!(b.cache.stats().misses, 1, "no caller waited after warm-up");
    // And again, one lifetime later.
    sleep(Duration::from_secs(790)).await;
    let third = b.cache.token(&key()).await.expect("token");
    assert!(!Arc::ptr_eq(&second, &third));
    assert_eq!(b.cache.stats().misses, 1);
}

#[tokio::test(start_paused = true)]
async fn validity_is_capped_by_credential_expiry() {
    let b = bed(Some(Duration::from_secs(300)), Duration::ZERO);
    let first = b.cache.token(&key()).await.expect("token");
    assert_eq!(
        first.valid_until(),
        first.signed_at() + Duration::from_secs(300)
    );
    // Due at 300 - 120 = 180 s, with credentials fetched again (they would not outlive it).
    sleep(Duration::from_secs(185)).await;
    assert_eq!(calls(&b), 2);
    let second = b.cache.token(&key()).await.expect("token");
    assert!(second.valid_until() > first.valid_until());
    assert_eq!(b.cache.stats().misses, 1);
}

#[tokio::test(start_paused = true)]
async fn invalidate_forces_a_new_signing() {
    let b = bed(None, Duration::ZERO);
    let first = b.cache.token(&key()).await.expect("token");
    b.cache.invalidate(&key());
    let second = b.cache.token(&key()).await.expect("token");
    assert!(!Arc::ptr_eq(&first, &second));
    assert_eq!(b.cache.stats().signings, 2);
    // Other keys are untouched.
    let mut other = key();
    other.user = "someone_else".into();
    b.cache.token(&other).await.expect("token");
    b.cache.invalidate(&other);
    assert!(Arc::ptr_eq(
        &second,
        &b.cache.token(&key()).await.expect("token")
    ));
}

#[tokio::test(start_paused = true)]
async fn a_cold_miss_is_single_flight() {
    let b = bed(None, Duration::from_millis(200));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let cache = b.cache.clone();
            tokio::spawn(async move { cache.token(&key()).await })
        })
        .collect();
    let mut tokens = Vec::new();
    for t in tasks {
        tokens.push(t.await.expect("join").expect("token"));
    }
    assert!(tokens.iter().all(|t| Arc::ptr_eq(t, &tokens[0])));
    assert_eq!(calls(&b), 1);
    assert_eq!(b.cache.stats().signings, 1);
}

#[tokio::test(start_paused = true)]
async fn a_failing_cold_miss_is_attempted_once_for_all_waiters() {
    let b = bed(None, Duration::from_millis(200));
    b.provider.failing.store(true, Ordering::SeqCst);
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let cache = b.cache.clone();
            tokio::spawn(async move { cache.token(&key()).await })
        })
        .collect();
    for t in tasks {
        let err = t.await.expect("join").expect_err("no token");
        assert!(err.to_string().contains("STS is down (test)"), "{err}");
    }
    assert_eq!(calls(&b), 1);
}

#[tokio::test(start_paused = true)]
async fn serves_the_valid_token_while_sts_fails_and_recovers() {
    // Credentials that last 1000 s: the refresh at 780 s must fetch new ones.
    let b = bed(Some(Duration::from_secs(1000)), Duration::ZERO);
    let first = b.cache.token(&key()).await.expect("token");
    b.provider.failing.store(true, Ordering::SeqCst);
    sleep(Duration::from_secs(790)).await;
    let failures = b.cache.stats().failures;
    assert!(failures >= 1, "background refresh failed and was counted");
    // Past the refresh point (840 s) but still valid (900 s): served, with a retry.
    sleep(Duration::from_secs(60)).await;
    let still = b.cache.token(&key()).await.expect("still valid");
    assert!(Arc::ptr_eq(&first, &still));
    assert!(b.cache.stats().failures > failures, "retried with backoff");
    // The token expired, the credentials did not: a token they sign is served at once.
    sleep(Duration::from_secs(50)).await;
    let short = b
        .cache
        .token(&key())
        .await
        .expect("signed with the old credentials");
    assert_eq!(
        short.valid_until(),
        first.signed_at() + Duration::from_secs(1000)
    );
    // Nothing valid left: the error says why.
    sleep(Duration::from_secs(100)).await;
    let err = b.cache.token(&key()).await.expect_err("expired");
    assert!(err.to_string().contains("STS is down (test)"), "{err}");
    // STS recovers: the next retry (at most 2 s away without a valid token) restores
    // service without a caller.
    b.provider.failing.store(false, Ordering::SeqCst);
    sleep(Duration::from_secs(3)).await;
    let misses = b.cache.stats().misses;
    let fresh = b.cache.token(&key()).await.expect("recovered");
    assert!(!Arc::ptr_eq(&first, &fresh));
    assert_eq!(b.cache.stats().misses, misses, "served from the cache");
}

#[tokio::test(start_paused = true)]
async fn a_hanging_sts_never_blocks_a_token_that_is_still_valid() {
    // Credentials for 300 s: the token's refresh point is at 240 s, it is valid until 300 s.
    let b = bed(Some(Duration::from_secs(300)), Duration::ZERO);
    let first = b.cache.token(&key()).await.expect("token");
    b.provider.hanging.store(true, Ordering::SeqCst);
    sleep(Duration::from_secs(250)).await;
    // The background refresh hangs on STS; past the refresh point the token is served at
    // once (no virtual time passes), with the refresh still in flight.
    let started = Instant::now();
    for _ in 0..10 {
        let again = b.cache.token(&key()).await.expect("still valid");
        assert!(Arc::ptr_eq(&first, &again));
    }
    assert_eq!(started.elapsed(), Duration::ZERO, "no caller waited");
    assert!(calls(&b) >= 2, "a refresh is running behind");
    let stats = b.cache.stats();
    assert_eq!(stats.misses, 1, "only the first request missed");
}

#[tokio::test(start_paused = true)]
async fn a_cold_miss_on_a_hanging_sts_fails_within_the_bound_and_recovers() {
    let b = bed(Some(Duration::from_secs(3600)), Duration::ZERO);
    b.provider.hanging.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let waiters: Vec<_> = (0..20)
        .map(|_| {
            let cache = b.cache.clone();
            tokio::spawn(async move { cache.token(&key()).await })
        })
        .collect();
    for w in waiters {
        let err = w.await.expect("join").expect_err("STS hangs");
        let text = err.to_string();
        assert!(text.contains("did not answer within 5s"), "{text}");
        assert!(!text.contains('\n'), "{text}");
    }
    assert!(
        started.elapsed() <= crate::iam::DEFAULT_CREDENTIALS_TIMEOUT + Duration::from_millis(1)
    );
    assert_eq!(calls(&b), 1, "one attempt for all waiters");
    // STS answers again: a cold miss with no attempt in flight starts a new one.
    b.provider.hanging.store(false, Ordering::SeqCst);
    sleep(Duration::from_secs(1)).await;
    b.cache
        .token(&key())
        .await
        .expect("recovered without a restart");
    assert_eq!(calls(&b), 2);
}

#[tokio::test(start_paused = true)]
async fn unconfirmed_slots_leave_with_their_lease_and_idle_slots_are_removed() {
    let b = bed(None, Duration::ZERO);
    for i in 0..1000 {
        let mut k = key();
        k.user = format!("nobody_{i}");
        let lease = b.cache.lease(k);
        lease.token().await.expect("token");
        // The login failed: the lease is dropped unconfirmed.
    }
    assert_eq!(b.cache.slot_count(), 0, "no slot outlives its failed login");
    // Two logins share a slot; it stays while either holds it.
    let one = b.cache.lease(key());
    let two = b.cache.lease(key());
    one.token().await.expect("token");
    drop(one);
    assert_eq!(b.cache.slot_count(), 1);
    two.confirm();
    drop(two);
    assert_eq!(b.cache.slot_count(), 1, "a confirmed slot stays");
    // Unused for idle_after (1 h), it is removed by its refresher.
    sleep(Duration::from_secs(3600 + 900)).await;
    assert_eq!(b.cache.slot_count(), 0, "the idle slot was removed");
    b.cache.token(&key()).await.expect("a cold miss again");
    assert_eq!(b.cache.slot_count(), 1);
}
