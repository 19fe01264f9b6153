//! The token side of the proxy; it knows nothing about sockets.
//!
//! ```text
//! credentials (aws-config chain, optional STS assume-role)  ->  sign (aws-sigv4 presign)
//!   ->  cache (keyed by host, port, user, region, role; refreshed ahead; single-flight)
//! ```

pub mod cache;
pub mod clock;
pub mod credentials;
pub mod failure;
pub mod region;
pub mod sign;

pub use cache::{CacheSettings, CacheStats, Lease, TokenCache, TokenKey};
pub use clock::{Clock, SystemClock};
pub use credentials::{
    load_sdk_config, sdk_timeouts, with_timeouts, CredentialSource, RoleSpec,
    DEFAULT_CREDENTIALS_TIMEOUT,
};
pub use region::{infer_region, partition, resolve_region, RegionError};
pub use sign::{sign_token, AuthToken, SignError, TokenRequest, TOKEN_LIFETIME};

/// Why no token could be produced. The text is safe to show to a client and to log: it
/// names the cause (e.g. the STS error) and never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The credential chain gave no usable credentials.
    #[error("cannot load AWS credentials: {detail}")]
    Credentials {
        /// What the chain reported.
        detail: String,
    },
    /// STS AssumeRole failed.
    #[error("cannot assume role {role}: {detail}")]
    AssumeRole {
        /// The role ARN.
        role: String,
        /// What STS (or the source credentials) reported.
        detail: String,
    },
    /// Signing failed.
    #[error("{0}")]
    Sign(String),
    /// No attempt finished within the cache's bounded wait.
    #[error("no token could be signed within {}", humantime::format_duration(*.0))]
    Timeout(std::time::Duration),
    /// A key named a role for which no credential source was configured.
    #[error("no credential source configured for role {0}")]
    UnknownRole(String),
}

/// Locks a std mutex; a panic while holding one of the token side's locks cannot leave the
/// data half-updated (plain stores), so a poisoned lock is used as is.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
