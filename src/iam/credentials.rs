//! AWS credentials for signing: the standard aws-config chain, loaded once, optionally
//! exchanged for a role's credentials through STS AssumeRole (aws-config's provider).
//!
//! A [`CredentialSource`] keeps the last credentials it got and reuses them while they last
//! as long as the caller needs, so signing many tokens costs at most one provider call (one
//! STS call for a role) per credential lifetime. Concurrent callers share one fetch.

use std::fmt;
use std::time::SystemTime;

use aws_config::sts::AssumeRoleProvider;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_smithy_types::error::display::DisplayErrorContext;
use tokio::sync::Mutex;

use super::TokenError;

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

/// Loads the AWS SDK configuration once (env, profiles incl. SSO, web identity, container and
/// instance metadata credentials, `AWS_ENDPOINT_URL*` overrides). `fallback_region` is used
/// for STS only when the environment names no region.
pub async fn load_sdk_config(fallback_region: Option<&str>) -> SdkConfig {
    let sdk = aws_config::defaults(BehaviorVersion::latest()).load().await;
    match (sdk.region(), fallback_region) {
        (None, Some(region)) => sdk
            .into_builder()
            .region(Region::new(region.to_owned()))
            .build(),
        _ => sdk,
    }
}

/// Where credentials come from, and the last ones it produced.
pub struct CredentialSource {
    role: Option<String>,
    provider: Option<SharedCredentialsProvider>,
    cached: Mutex<Option<Credentials>>,
}

impl fmt::Debug for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialSource")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl CredentialSource {
    /// Wraps any credentials provider (the SDK chain, or a fixed one in tests).
    pub fn new(provider: Option<SharedCredentialsProvider>) -> Self {
        Self {
            role: None,
            provider,
            cached: Mutex::new(None),
        }
    }

    /// The SDK's default chain, from a loaded [`SdkConfig`].
    pub fn from_sdk(sdk: &SdkConfig) -> Self {
        Self::new(sdk.credentials_provider())
    }

    /// Assumes `role` with the SDK's credentials (aws-config's `AssumeRoleProvider`).
    pub async fn assume_role(sdk: &SdkConfig, role: &RoleSpec) -> Self {
        let mut builder = AssumeRoleProvider::builder(role.arn.clone()).configure(sdk);
        if let Some(name) = &role.session_name {
            builder = builder.session_name(name.clone());
        }
        if let Some(id) = &role.external_id {
            builder = builder.external_id(id.clone());
        }
        let provider = SharedCredentialsProvider::new(builder.build().await);
        Self {
            role: Some(role.arn.clone()),
            provider: Some(provider),
            cached: Mutex::new(None),
        }
    }

    fn error(&self, detail: String) -> TokenError {
        match &self.role {
            Some(role) => TokenError::AssumeRole {
                role: role.clone(),
                detail,
            },
            None => TokenError::Credentials { detail },
        }
    }

    /// The underlying provider (e.g. for an STS GetCallerIdentity check).
    pub fn provider(&self) -> Option<SharedCredentialsProvider> {
        self.provider.clone()
    }

    /// The role ARN this source assumes, if any.
    pub fn role(&self) -> Option<&str> {
        self.role.as_deref()
    }

    /// Expiry of the credentials in use, if they expire; `None` also while a fetch is running.
    pub fn expiry(&self) -> Option<SystemTime> {
        self.cached.try_lock().ok()?.as_ref()?.expiry()
    }

    /// Credentials valid beyond `needed_until` when the provider has such; the cached ones
    /// are reused while they are. Fails only when none are available or they expired by `now`.
    pub async fn credentials(
        &self,
        now: SystemTime,
        needed_until: SystemTime,
    ) -> Result<Credentials, TokenError> {
        let mut cached = self.cached.lock().await;
        let fresh = |c: &Credentials| c.expiry().is_none_or(|e| e > needed_until);
        if let Some(creds) = cached.as_ref().filter(|c| fresh(c)) {
            return Ok(creds.clone());
        }
        let provider = self.provider.as_ref().ok_or_else(|| {
            self.error(
                "no credentials found in the AWS credential chain (environment, profile, SSO, \
                 web identity, container or instance metadata)"
                    .to_owned(),
            )
        })?;
        let creds = provider
            .provide_credentials()
            .await
            .map_err(|e| self.error(DisplayErrorContext(&e).to_string()))?;
        if let Some(expiry) = creds.expiry().filter(|e| *e <= now) {
            return Err(self.error(format!(
                "the credentials expired at {}; refresh them (e.g. `aws sso login`)",
                humantime::format_rfc3339_seconds(expiry)
            )));
        }
        *cached = Some(creds.clone());
        Ok(creds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let source = CredentialSource::new(Some(SharedCredentialsProvider::new(creds.clone())));
        let now = SystemTime::now();
        let got = source.credentials(now, now).await.expect("credentials");
        let shown = format!("{role:?} {source:?} {got:?} {creds:?}");
        for secret in ["shared-external-secret", "very-secret-key", "session-tok"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("arn:aws:iam::123456789012:role/r"));
    }

    #[tokio::test]
    async fn no_provider_and_expired_credentials_say_why() {
        let now = SystemTime::now();
        let none = CredentialSource::new(None);
        let err = none
            .credentials(now, now)
            .await
            .expect_err("no credentials");
        assert!(err.to_string().contains("no credentials found"), "{err}");
        let past = now - std::time::Duration::from_secs(5);
        let expired = Credentials::new("AKID", "secret", None, Some(past), "t");
        let source = CredentialSource::new(Some(SharedCredentialsProvider::new(expired)));
        let err = source.credentials(now, now).await.expect_err("expired");
        assert!(err.to_string().contains("expired at"), "{err}");
    }
}
