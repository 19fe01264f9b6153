//! Errors a client can see: each has a SQLSTATE and a message that is safe to show (an
//! allowlist by construction: every variant chooses its own text; internals such as token
//! values never reach it).

use pgwire::messages::response::ErrorResponse;

/// SQLSTATE codes used by the proxy.
pub mod sqlstate {
    /// Malformed or unexpected protocol data.
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    /// Could not reach the server (DNS, TCP, timeout).
    pub const UNABLE_TO_CONNECT: &str = "08001";
    /// The connection failed after it was made (TLS, server closed).
    pub const CONNECTION_FAILURE: &str = "08006";
    /// Authentication failed or could not be attempted.
    pub const INVALID_AUTHORIZATION: &str = "28000";
    /// Unsupported protocol feature.
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    /// Connection limit reached.
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    /// The proxy is shutting down.
    pub const ADMIN_SHUTDOWN: &str = "57P01";
}

/// An error to report to a client as a `FATAL` `ErrorResponse`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (SQLSTATE {code})")]
pub struct ClientError {
    /// SQLSTATE.
    pub code: &'static str,
    /// Primary message.
    pub message: String,
    /// Optional hint.
    pub hint: Option<String>,
}

impl ClientError {
    /// An error with a code and message.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            hint: None,
        }
    }

    /// Adds a hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The wire message.
    pub fn to_response(&self) -> ErrorResponse {
        let mut fields = vec![
            (b'S', "FATAL".to_owned()),
            (b'V', "FATAL".to_owned()),
            (b'C', self.code.to_owned()),
            (b'M', self.message.clone()),
        ];
        if let Some(hint) = &self.hint {
            fields.push((b'H', hint.clone()));
        }
        ErrorResponse::new(fields)
    }
}
