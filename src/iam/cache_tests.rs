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
        delay,
        lifetime,
    };
    let source = CredentialSource::new(Some(SharedCredentialsProvider::new(provider.clone())));
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
    // Nothing valid left: the error says why.
    sleep(Duration::from_secs(50)).await;
    let err = b.cache.token(&key()).await.expect_err("expired");
    assert!(err.to_string().contains("STS is down (test)"), "{err}");
    // STS recovers: the next retry (at most 30 s away) restores service without a caller.
    b.provider.failing.store(false, Ordering::SeqCst);
    sleep(Duration::from_secs(31)).await;
    let misses = b.cache.stats().misses;
    let fresh = b.cache.token(&key()).await.expect("recovered");
    assert!(!Arc::ptr_eq(&first, &fresh));
    assert_eq!(b.cache.stats().misses, misses, "served from the cache");
}
