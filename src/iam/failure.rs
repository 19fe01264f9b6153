//! Why fetching credentials failed, as one readable line: the SDK's errors are chains whose
//! `DisplayErrorContext` form appends a multi-line `Debug` dump, which is no message for a
//! database client. [`classify`] turns a chain into a [`Failure`] (timeout, unreachable,
//! refused with STS's code and message, or the chain's messages joined on one line).

use std::error::Error;
use std::fmt;
use std::time::Duration;

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sts::operation::assume_role::AssumeRoleError;
use aws_smithy_runtime_api::client::result::ConnectorError;

/// What went wrong talking to the credential provider (STS for a role).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No answer within the credentials timeout.
    TimedOut(Duration),
    /// The connection failed (refused, reset, DNS).
    Unreachable(String),
    /// The service answered with an error code and message.
    Refused {
        /// The error code, e.g. `AccessDenied`.
        code: String,
        /// The service's message.
        message: String,
    },
    /// The service answered with an HTTP status and no error we could read.
    Status(u16),
    /// Anything else, the error chain's messages on one line.
    Other(String),
}

impl Failure {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TimedOut(_) => "timeout",
            Self::Unreachable(_) => "unreachable",
            Self::Refused { .. } => "refused",
            Self::Status(_) => "status",
            Self::Other(_) => "other",
        }
    }

    /// The failure as said about `service` (e.g. `STS at https://sts.us-east-1.amazonaws.com`).
    pub fn describe(&self, service: &str) -> String {
        match self {
            Self::TimedOut(after) => format!(
                "{service} did not answer within {}",
                humantime::format_duration(*after)
            ),
            Self::Unreachable(why) => format!("cannot reach {service}: {why}"),
            Self::Refused { code, message } => format!("{service} refused: {code}: {message}"),
            Self::Status(status) => format!("{service} answered HTTP {status}"),
            Self::Other(text) => text.clone(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe("the credential provider"))
    }
}

/// Classifies a provider error. `after` is the timeout in force (for SDK timeouts).
pub fn classify(err: &CredentialsError, after: Duration) -> Failure {
    if let CredentialsError::ProviderTimedOut(_) = err {
        return Failure::TimedOut(after);
    }
    let mut cause: Option<&(dyn Error + 'static)> = Some(err);
    while let Some(e) = cause {
        if let Some(sdk) = e.downcast_ref::<SdkError<AssumeRoleError>>() {
            if let Some(found) = from_sdk(sdk, after) {
                return found;
            }
        }
        if let Some(connector) = e.downcast_ref::<ConnectorError>() {
            return from_connector(connector, after);
        }
        cause = e.source();
    }
    Failure::Other(one_line(err))
}

fn from_sdk(err: &SdkError<AssumeRoleError>, after: Duration) -> Option<Failure> {
    match err {
        SdkError::TimeoutError(_) => Some(Failure::TimedOut(after)),
        SdkError::DispatchFailure(d) => d.as_connector_error().map(|c| from_connector(c, after)),
        SdkError::ServiceError(context) => {
            let e = context.err();
            Some(match e.code() {
                Some(code) => Failure::Refused {
                    code: code.to_owned(),
                    message: e.message().unwrap_or("(no message)").to_owned(),
                },
                None => Failure::Status(context.raw().status().as_u16()),
            })
        }
        SdkError::ResponseError(context) => Some(Failure::Status(context.raw().status().as_u16())),
        _ => None,
    }
}

fn from_connector(err: &ConnectorError, after: Duration) -> Failure {
    if err.is_timeout() {
        return Failure::TimedOut(after);
    }
    // The innermost cause says what happened ("Connection refused (os error 111)").
    let mut inner: &(dyn Error + 'static) = err;
    while let Some(next) = inner.source() {
        inner = next;
    }
    let text = match inner.downcast_ref::<std::io::Error>() {
        Some(io) => io.kind().to_string(),
        None => single(&inner.to_string()),
    };
    if err.is_io() {
        Failure::Unreachable(text)
    } else {
        Failure::Other(text)
    }
}

/// The messages of an error chain joined with `: `, without repeats, on one line.
pub fn one_line(err: &(dyn Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cause = Some(err);
    while let Some(e) = cause {
        let text = single(&e.to_string());
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cause = e.source();
    }
    parts.join(": ")
}

/// Collapses whitespace (including newlines) to single spaces.
fn single(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_become_one_line_and_timeouts_are_named() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused\nnow");
        let connector = ConnectorError::io(Box::new(io));
        let err = CredentialsError::provider_error(connector);
        let failure = classify(&err, Duration::from_secs(5));
        assert_eq!(failure, Failure::Unreachable("connection refused".into()));
        let said = failure.describe("STS at http://127.0.0.1:9");
        assert_eq!(
            said,
            "cannot reach STS at http://127.0.0.1:9: connection refused"
        );

        let timeout = ConnectorError::timeout(Box::new(std::io::Error::other("slow")));
        let err = CredentialsError::provider_error(timeout);
        let failure = classify(&err, Duration::from_secs(5));
        assert_eq!(
            failure.describe("STS"),
            "STS did not answer within 5s",
            "{failure:?}"
        );

        let err = CredentialsError::provider_error("line one\nline two");
        let failure = classify(&err, Duration::from_secs(5));
        let text = failure.describe("STS");
        assert!(
            !text.contains('\n') && text.contains("line one line two"),
            "{text}"
        );
    }
}
