//! Why a checkout failed, and what the client is told.

use std::time::Duration;

use crate::error::{sqlstate, ClientError};

/// An error that knows what a client may be told about it.
pub trait ToClient {
    /// The `FATAL` error for the client.
    fn to_client(&self) -> ClientError;
}

/// Why a client got no server connection.
#[derive(Debug, thiserror::Error)]
pub enum PoolError<E> {
    /// No connection became free within the pool timeout.
    #[error(
        "no server connection free for user \"{user}\" database \"{database}\" after waiting \
         {waited:?}: all {size} of the pool are in use (--pool-timeout, --pool-size)"
    )]
    Timeout {
        /// The pool's user.
        user: String,
        /// The pool's database.
        database: String,
        /// How long the client waited.
        waited: Duration,
        /// The pool size.
        size: usize,
    },
    /// Opening a new server connection failed.
    #[error("{0}")]
    Open(E),
    /// The pools were shut down.
    #[error("the connection pool is shut down")]
    Closed,
}

impl<E: ToClient + std::fmt::Display> PoolError<E> {
    /// What the client is told: 53300 on timeout, the connector's own error when opening
    /// failed, 57P01 when the pools were shut down.
    pub fn to_client(&self) -> ClientError {
        match self {
            Self::Timeout { .. } => ClientError::new(
                sqlstate::TOO_MANY_CONNECTIONS,
                format!("pg-iam-proxy: {self}"),
            )
            .with_hint(
                "raise --pool-size (within the server's max_connections) or \
                         --pool-timeout, or have clients hold connections for less time",
            ),
            Self::Open(e) => e.to_client(),
            Self::Closed => ClientError::admin_shutdown(),
        }
    }
}
