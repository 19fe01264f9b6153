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
    /// The proxy ended the session at the end of its shutdown drain.
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    /// The proxy ended a session idle for longer than the idle timeout.
    pub const IDLE_SESSION_TIMEOUT: &str = "57P05";
    /// The process is out of a resource it needs (file descriptors).
    pub const INSUFFICIENT_RESOURCES: &str = "53000";
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

    /// What PostgreSQL says when it terminates a session on shutdown or
    /// `pg_terminate_backend` (the same severity, code and text).
    pub fn admin_shutdown() -> Self {
        Self::new(
            sqlstate::ADMIN_SHUTDOWN,
            "terminating connection due to administrator command",
        )
    }

    /// What PostgreSQL says when `idle_session_timeout` ends a session.
    pub fn idle_session_timeout() -> Self {
        Self::new(
            sqlstate::IDLE_SESSION_TIMEOUT,
            "terminating connection due to idle-session timeout",
        )
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
