//! AWS credentials for signing: the standard aws-config chain, loaded once, optionally
//! exchanged for a role's credentials through STS AssumeRole (aws-config's provider).
//!
//! A [`CredentialSource`] keeps the last credentials it got and reuses them while they last
//! as long as the caller needs, so signing many tokens costs at most one provider call (one
//! STS call for a role) per credential lifetime. Every provider call is bounded twice: the
//! SDK's own timeouts ([`sdk_timeouts`]) and a tokio timeout around the call. Concurrent
//! callers share one fetch and its outcome (see `credentials_fetch.rs`).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::sts::AssumeRoleProvider;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;

use super::TokenError;

#[path = "credentials_fetch.rs"]
mod fetch;
use fetch::Fetcher;

/// Default bound on one credential provider call (STS AssumeRole included).
pub const DEFAULT_CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(5);

/// An IAM role to assume before signing.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RoleSpec {
    /// The role ARN.
    pub arn: String,
    /// The role session name (shows up in CloudTrail).
    pub session_name: Option<String>,
    /// The external ID the role's trust policy may require.
    pub external_id: Option<String>,
}

impl fmt::Debug for RoleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The external ID is a shared secret in some trust policies: never print it.
        f.debug_struct("RoleSpec")
            .field("arn", &self.arn)
            .field("session_name", &self.session_name)
            .field(
                "external_id",
                &self.external_id.as_ref().map(|_| "** redacted **"),
            )
            .finish()
    }
}

/// The SDK timeouts for calls to AWS (STS, and the credential chain's own STS calls):
/// connect within at most 3.1 s, the whole operation (retries included) within `timeout`.
/// A silent attempt is not retried: it uses up the operation's time.
pub fn sdk_timeouts(timeout: Duration) -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(timeout.min(Duration::from_millis(3100)))
        .operation_timeout(timeout)
        .build()
}

/// `sdk` with [`sdk_timeouts`] applied (for configurations loaded elsewhere, e.g. in tests).
pub fn with_timeouts(sdk: &SdkConfig, timeout: Duration) -> SdkConfig {
    sdk.to_builder()
        .timeout_config(sdk_timeouts(timeout))
        .build()
}

/// Loads the AWS SDK configuration once (env, profiles incl. SSO, web identity, container and
/// instance metadata credentials, `AWS_ENDPOINT_URL*` overrides), with [`sdk_timeouts`].
/// `fallback_region` is used for STS only when the environment names no region.
pub async fn load_sdk_config(fallback_region: Option<&str>, timeout: Duration) -> SdkConfig {
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(sdk_timeouts(timeout))
        .load()
        .await;
    match (sdk.region(), fallback_region) {
        (None, Some(region)) => sdk
            .into_builder()
            .region(Region::new(region.to_owned()))
            .build(),
        _ => sdk,
    }
}

/// The STS endpoint the SDK will call for `sdk`: an `AWS_ENDPOINT_URL[_STS]` override, else
/// the regional endpoint (for messages only).
async fn sts_endpoint(sdk: &SdkConfig) -> String {
    use aws_sdk_sts::config::endpoint::{DefaultResolver, Params, ResolveEndpoint};
    use aws_types::service_config::ServiceConfigKey;
    let from_service = || {
        let key = ServiceConfigKey::builder()
            .service_id("STS")
            .env("AWS_ENDPOINT_URL")
            .profile("endpoint_url")
            .build()
            .ok()?;
        sdk.service_config()?.load_config(key)
    };
    let explicit = if sdk.get_origin("endpoint_url").is_client_config() {
        sdk.endpoint_url().map(str::to_owned)
    } else {
        from_service().or_else(|| sdk.endpoint_url().map(str::to_owned))
    };
    if let Some(url) = explicit {
        return url;
    }
    let region = sdk.region().map(|r| r.to_string());
    let resolved = match Params::builder().set_region(region).build() {
        Ok(params) => DefaultResolver::new().resolve_endpoint(&params).await.ok(),
        Err(_) => None,
    };
    resolved.map_or_else(|| "the STS endpoint".to_owned(), |e| e.url().to_owned())
}

/// Where credentials come from, and the last ones it produced.
pub struct CredentialSource {
    role: Option<String>,
    fetcher: Arc<Fetcher>,
}

impl fmt::Debug for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialSource")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl CredentialSource {
    /// Wraps any credentials provider (the SDK chain, or a fixed one in tests); each call to
    /// it is bounded by `timeout`.
    pub fn new(provider: Option<SharedCredentialsProvider>, timeout: Duration) -> Self {
        Self {
            role: None,
            fetcher: Fetcher::new(provider, timeout, None),
        }
    }

    /// The SDK's default chain, from a loaded [`SdkConfig`].
    pub fn from_sdk(sdk: &SdkConfig, timeout: Duration) -> Self {
        Self::new(sdk.credentials_provider(), timeout)
    }

    /// Assumes `role` with the SDK's credentials (aws-config's `AssumeRoleProvider`), the STS
    /// call bounded by `timeout` (set on the SDK client and around the call).
    pub async fn assume_role(sdk: &SdkConfig, role: &RoleSpec, timeout: Duration) -> Self {
        let sdk = with_timeouts(sdk, timeout);
        let mut builder = AssumeRoleProvider::builder(role.arn.clone()).configure(&sdk);
        if let Some(name) = &role.session_name {
            builder = builder.session_name(name.clone());
        }
        if let Some(id) = &role.external_id {
            builder = builder.external_id(id.clone());
        }
        let provider = SharedCredentialsProvider::new(builder.build().await);
        let service = format!("STS at {}", sts_endpoint(&sdk).await);
        Self {
            role: Some(role.arn.clone()),
            fetcher: Fetcher::new(Some(provider), timeout, Some((role.arn.clone(), service))),
        }
    }

    /// The underlying provider (e.g. for an STS GetCallerIdentity check).
    pub fn provider(&self) -> Option<SharedCredentialsProvider> {
        self.fetcher.provider()
    }

    /// The role ARN this source assumes, if any.
    pub fn role(&self) -> Option<&str> {
        self.role.as_deref()
    }

    /// Expiry of the credentials in use, if they expire.
    pub fn expiry(&self) -> Option<SystemTime> {
        self.fetcher.cached()?.expiry()
    }

    /// Credentials valid beyond `wanted_until` when the provider has such; the cached ones
    /// are reused while they are. Cached credentials that are still valid beyond
    /// `usable_until` are returned at once while a fetch runs in the background; otherwise
    /// the caller waits for the (shared, bounded) fetch. Fails when none are available.
    pub async fn credentials(
        &self,
        now: SystemTime,
        wanted_until: SystemTime,
        usable_until: SystemTime,
    ) -> Result<Credentials, TokenError> {
        self.fetcher
            .credentials(now, wanted_until, usable_until)
            .await
    }
}

#[cfg(test)]
#[path = "credentials_tests.rs"]
mod tests;
