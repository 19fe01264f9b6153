//! CredentialSource: secrets stay out of Debug, errors say why, concurrent callers share one
//! bounded fetch.

use super::*;
use aws_credential_types::provider::{future, ProvideCredentials};
use std::sync::atomic::{AtomicU64, Ordering};

const T: Duration = DEFAULT_CREDENTIALS_TIMEOUT;

#[tokio::test]
async fn debug_output_shows_no_secret() {
    let role = RoleSpec {
        arn: "arn:aws:iam::123456789012:role/r".into(),
        session_name: Some("s".into()),
        external_id: Some("shared-external-secret".into()),
    };
    let creds = Credentials::new(
        "AKIDEXAMPLE",
        "very-secret-key",
        Some("session-tok".into()),
        None,
        "t",
    );
    let source = CredentialSource::new(Some(SharedCredentialsProvider::new(creds.clone())), T);
    let now = SystemTime::now();
    let got = source
        .credentials(now, now, now)
        .await
        .expect("credentials");
    let shown = format!("{role:?} {source:?} {got:?} {creds:?}");
    for secret in ["shared-external-secret", "very-secret-key", "session-tok"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    assert!(shown.contains("arn:aws:iam::123456789012:role/r"));
}

#[tokio::test]
async fn no_provider_and_expired_credentials_say_why() {
    let now = SystemTime::now();
    let none = CredentialSource::new(None, T);
    let err = none
        .credentials(now, now, now)
        .await
        .expect_err("no credentials");
    assert!(err.to_string().contains("no credentials found"), "{err}");
    let past = now - Duration::from_secs(5);
    let expired = Credentials::new("AKID", "secret", None, Some(past), "t");
    let source = CredentialSource::new(Some(SharedCredentialsProvider::new(expired)), T);
    let err = source
        .credentials(now, now, now)
        .await
        .expect_err("expired");
    assert!(err.to_string().contains("expired at"), "{err}");
}

/// A provider that never answers (STS accepting connections and then saying nothing).
#[derive(Debug, Default)]
struct Hanging {
    calls: AtomicU64,
}

impl ProvideCredentials for Hanging {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        self.calls.fetch_add(1, Ordering::SeqCst);
        future::ProvideCredentials::new(std::future::pending())
    }
}

#[tokio::test(start_paused = true)]
async fn concurrent_callers_share_one_fetch_bounded_by_the_timeout() {
    let hanging = Arc::new(Hanging::default());
    let shared: Arc<dyn ProvideCredentials> = hanging.clone();
    let provider = SharedCredentialsProvider::new(shared);
    let source = Arc::new(CredentialSource::new(Some(provider), T));
    let started = tokio::time::Instant::now();
    let now = SystemTime::now();
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let source = source.clone();
            tokio::spawn(async move { source.credentials(now, now, now).await })
        })
        .collect();
    for caller in callers {
        let err = caller.await.expect("join").expect_err("no answer");
        assert!(
            err.to_string().contains("did not answer within 5s"),
            "{err}"
        );
        assert!(!err.to_string().contains('\n'), "{err}");
    }
    assert_eq!(hanging.calls.load(Ordering::SeqCst), 1, "one shared fetch");
    assert!(started.elapsed() <= T + Duration::from_millis(10));
    // Within the retry spacing the failure is answered at once, without a new call.
    let err = source
        .credentials(now, now, now)
        .await
        .expect_err("cached failure");
    assert!(err.to_string().contains("did not answer"), "{err}");
    assert_eq!(hanging.calls.load(Ordering::SeqCst), 1);
    // After it, a caller starts a new attempt.
    tokio::time::sleep(fetch::RETRY_SPACING).await;
    let _ = source.credentials(now, now, now).await;
    assert_eq!(hanging.calls.load(Ordering::SeqCst), 2);
}

/// Usable cached credentials are returned at once while the provider hangs.
#[tokio::test(start_paused = true)]
async fn usable_credentials_are_served_while_a_fetch_hangs() {
    #[derive(Debug)]
    struct OnceThenHang(AtomicU64, SystemTime);
    impl ProvideCredentials for OnceThenHang {
        fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            if self.0.fetch_add(1, Ordering::SeqCst) > 0 {
                return future::ProvideCredentials::new(std::future::pending());
            }
            let expiry = self.1 + Duration::from_secs(600);
            future::ProvideCredentials::ready(Ok(Credentials::new(
                "ASIA1",
                "s",
                None,
                Some(expiry),
                "t",
            )))
        }
    }
    let now = SystemTime::now();
    let provider = Arc::new(OnceThenHang(AtomicU64::new(0), now));
    let shared: Arc<dyn ProvideCredentials> = provider.clone();
    let source = CredentialSource::new(Some(SharedCredentialsProvider::new(shared)), T);
    source.credentials(now, now, now).await.expect("first");
    let wanted = now + Duration::from_secs(900);
    let started = tokio::time::Instant::now();
    let got = source
        .credentials(now, wanted, now + Duration::from_secs(10))
        .await
        .expect("served from the cache");
    assert_eq!(got.access_key_id(), "ASIA1");
    assert_eq!(started.elapsed(), Duration::ZERO, "no wait on the provider");
    tokio::task::yield_now().await;
    assert_eq!(provider.0.load(Ordering::SeqCst), 2, "a fetch runs behind");
    // A caller that needs them to last (the background refresh) waits, bounded.
    let err = source
        .credentials(now, wanted, wanted)
        .await
        .expect_err("the fetch hangs");
    assert!(
        err.to_string().contains("did not answer within 5s"),
        "{err}"
    );
}
