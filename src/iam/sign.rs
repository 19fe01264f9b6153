//! RDS IAM auth token signing: a SigV4 query-string presign of
//! `GET https://host:port/?Action=connect&DBUser=<user>` for the `rds-db` service.
//!
//! The result is byte-identical to botocore's `generate_db_auth_token` (see the known-answer
//! vectors under `tests/vectors/`). The canonical request hashes an empty body, as botocore
//! does; `UNSIGNED-PAYLOAD` would produce tokens the server rejects.

use std::fmt;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// How long a token is accepted by the server after it was signed (the AWS maximum).
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(900);

/// The SigV4 service name for database logins.
const SERVICE: &str = "rds-db";

/// SigV4 URI encoding: everything but the unreserved characters `A-Za-z0-9-_.~`.
const SIGV4_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// What a token is for: one database endpoint, one database user, one region.
#[derive(Debug, Clone, Copy)]
pub struct TokenRequest<'a> {
    /// Endpoint host name exactly as the client connects to it.
    pub host: &'a str,
    /// Endpoint port.
    pub port: u16,
    /// Database user name (the IAM database user).
    pub user: &'a str,
    /// AWS region of the database.
    pub region: &'a str,
}

/// A signed token. Its `Debug` output never shows the token itself.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthToken {
    value: String,
    signed_at: SystemTime,
    valid_until: SystemTime,
}

impl AuthToken {
    /// The token, to be sent as the password. Handle with care: it is a bearer credential.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// When the token was signed.
    pub fn signed_at(&self) -> SystemTime {
        self.signed_at
    }

    /// The last instant at which the server accepts it: signing time plus 15 minutes, or the
    /// expiry of the credentials that signed it, whichever comes first.
    pub fn valid_until(&self) -> SystemTime {
        self.valid_until
    }
}

impl fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthToken")
            .field("value", &"** redacted **")
            .field("len", &self.value.len())
            .field(
                "signed_at",
                &humantime::format_rfc3339_seconds(self.signed_at),
            )
            .field(
                "valid_until",
                &humantime::format_rfc3339_seconds(self.valid_until),
            )
            .finish()
    }
}

/// Signing failed (only on inputs that cannot form a valid request).
#[derive(Debug, thiserror::Error)]
#[error("cannot sign an IAM auth token for {endpoint}: {reason}")]
pub struct SignError {
    endpoint: String,
    reason: String,
}

/// Percent-encodes a query value the way SigV4 (and botocore) does.
fn encode(value: &str) -> percent_encoding::PercentEncode<'_> {
    utf8_percent_encode(value, SIGV4_ENCODE)
}

/// Signs a token for `request` with `credentials` at time `now`.
pub fn sign_token(
    credentials: &Credentials,
    request: &TokenRequest<'_>,
    now: SystemTime,
) -> Result<AuthToken, SignError> {
    let fail = |reason: String| SignError {
        endpoint: format!("{}:{}", request.host, request.port),
        reason,
    };
    let mut settings = SigningSettings::default();
    settings.expires_in = Some(TOKEN_LIFETIME);
    settings.signature_location = SignatureLocation::QueryParams;

    let identity: Identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(request.region)
        .name(SERVICE)
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| fail(e.to_string()))?
        .into();

    let query = format!("/?Action=connect&DBUser={}", encode(request.user));
    // botocore signs the lower-cased host (as HTTP does) but keeps the caller's spelling in
    // the token text.
    let url = format!(
        "https://{}:{}{query}",
        request.host.to_ascii_lowercase(),
        request.port
    );
    let signable = SignableRequest::new("GET", &url, std::iter::empty(), SignableBody::empty())
        .map_err(|e| fail(e.to_string()))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| fail(e.to_string()))?
        .into_parts();

    // botocore's parameter order: the signature last, after the session token.
    let mut value = format!("{}:{}{query}", request.host, request.port);
    let (signature, rest): (Vec<_>, Vec<_>) = instructions
        .params()
        .iter()
        .partition(|(name, _)| *name == "X-Amz-Signature");
    for (name, param) in rest.into_iter().chain(signature) {
        value.push('&');
        value.push_str(name);
        value.push('=');
        value.extend(encode(param));
    }
    let mut valid_until = now + TOKEN_LIFETIME;
    if let Some(expiry) = credentials.expiry() {
        valid_until = valid_until.min(expiry);
    }
    Ok(AuthToken {
        value,
        signed_at: now,
        valid_until,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(expiry: Option<SystemTime>) -> Credentials {
        Credentials::new("AKIDEXAMPLE", "secret", None, expiry, "test")
    }

    fn request() -> TokenRequest<'static> {
        TokenRequest {
            host: "db.example.com",
            port: 5432,
            user: "a&b=c d",
            region: "us-east-1",
        }
    }

    #[test]
    fn user_is_percent_encoded_and_empty_body_is_hashed() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let token = sign_token(&creds(None), &request(), now).expect("sign");
        assert!(token
            .expose()
            .starts_with("db.example.com:5432/?Action=connect&DBUser=a%26b%3Dc%20d&X-Amz-"));
        assert!(token.expose().contains("X-Amz-Expires=900"));
        assert_eq!(token.valid_until(), now + TOKEN_LIFETIME);
    }

    #[test]
    fn validity_is_capped_by_credential_expiry() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let expiry = now + Duration::from_secs(120);
        let token = sign_token(&creds(Some(expiry)), &request(), now).expect("sign");
        assert_eq!(token.valid_until(), expiry);
    }

    #[test]
    fn debug_never_shows_the_token() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let token = sign_token(&creds(None), &request(), now).expect("sign");
        let shown = format!("{token:?}");
        assert!(!shown.contains("X-Amz-Signature"), "{shown}");
        assert!(!shown.contains(token.expose()), "{shown}");
    }
}
