//! Logging in upstream for no client in particular: a token from the cache (one retry with a
//! fresh token when the server refuses a cached one), TCP + TLS, and the login, which yields a
//! [`ServerConn`]: the stream, the address it reached, the server's parameters and key.
//! [`open_gated`] adds the login gate and the connect timeout; [`check`] is `check --login`;
//! [`reset`] runs a reset query on a connection and reads it back to idle.

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use pgwire::messages::response::ErrorResponse;
use pgwire::messages::simplequery::Query;
use tokio::time::timeout;

use crate::client::StartupInfo;
use crate::error::{sqlstate, ClientError};
use crate::iam::{partition, TokenKey};
use crate::metrics::FdUse;
use crate::target::TargetContext;
use crate::upstream::auth::{login, startup_packet, AuthError, Login, ServerError};
use crate::upstream::connect::{connect, Endpoint, UpstreamStream};
use crate::wire::{self, EncodeError, FrameError};

/// A logged-in server connection.
#[derive(Debug)]
pub struct ServerConn {
    /// The endpoint it was opened to (an Aurora instance endpoint, or the target's).
    pub endpoint: Arc<Endpoint>,
    /// The TLS stream.
    pub stream: UpstreamStream,
    /// The address it reached (cancel requests go there).
    pub addr: std::net::SocketAddr,
    /// What the login collected: parameters, key, ReadyForQuery.
    pub login: Login,
    /// When the login completed.
    pub created: Instant,
}

/// Why no server connection was opened.
#[derive(Debug)]
pub enum Failure {
    /// Our own error for the client, with a short reason for metrics.
    Client(ClientError, &'static str),
    /// The server's ErrorResponse, to relay verbatim, with a short reason.
    Server(BytesMut, &'static str),
}

/// Waits for a login slot (in arrival order, bounded), then connects and logs in within the
/// connect timeout. Returns the connection and when its connect started.
pub async fn open_gated(
    ctx: &TargetContext,
    user: String,
    info: &StartupInfo,
) -> Result<(ServerConn, Instant), Failure> {
    let _slot = ctx
        .logins
        .enter()
        .await
        .map_err(|e| Failure::Client(e.to_client(), "queue_timeout"))?;
    let started = Instant::now();
    match timeout(ctx.settings.connect_timeout, open(ctx, user, info)).await {
        Ok(opened) => opened.map(|o| (o, started)),
        Err(_) => Err(Failure::Client(
            ClientError::new(
                sqlstate::UNABLE_TO_CONNECT,
                format!(
                    "pg-iam-proxy: timeout connecting to {} after {:?}",
                    ctx.endpoint.describe(),
                    ctx.settings.connect_timeout
                ),
            ),
            "timeout",
        )),
    }
}

/// Logs in upstream as `user` to `database` within the connect timeout: the `check` command's
/// login. The caller closes the connection.
pub async fn check(ctx: &TargetContext, user: &str, database: &str) -> Result<ServerConn, String> {
    let info = StartupInfo {
        user: user.to_owned(),
        database: database.to_owned(),
        params: vec![("application_name".into(), "pg-iam-proxy check".into())],
    };
    match timeout(
        ctx.settings.connect_timeout,
        open(ctx, user.to_owned(), &info),
    )
    .await
    {
        Ok(Ok(opened)) => Ok(opened),
        Ok(Err(Failure::Client(e, _))) => Err(e.to_string()),
        Ok(Err(Failure::Server(frame, _))) => {
            Err(server_error_text(frame)
                .unwrap_or_else(|| "the server refused the login".to_owned()))
        }
        Err(_) => Err(format!("timeout after {:?}", ctx.settings.connect_timeout)),
    }
}

/// An ErrorResponse frame as "SQLSTATE | message | hint", or `None` when it does not decode.
fn server_error_text(frame: BytesMut) -> Option<String> {
    let e = wire::decode::<ErrorResponse>(frame, "ErrorResponse").ok()?;
    let text = e
        .fields
        .iter()
        .filter(|(k, _)| matches!(k, b'C' | b'M' | b'H'))
        .map(|(_, v)| v.as_str())
        .collect::<Vec<_>>();
    Some(text.join(" | "))
}

/// Largest server message accepted while a reset query runs.
const MAX_RESET_MESSAGE: usize = 1024 * 1024;

/// Why a reset query did not leave the connection idle and reusable.
#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    /// The server answered with an error ("SQLSTATE | message | hint").
    #[error("{0}")]
    Server(String),
    /// ReadyForQuery came back with a status other than idle ('T' in a transaction,
    /// 'E' in a failed one).
    #[error("the connection is not idle afterwards (transaction status '{}')", char::from(*.0))]
    NotIdle(u8),
    /// A message a reset query must not produce (e.g. a COPY response).
    #[error("unexpected '{}' message from the server", char::from(*.0))]
    Unexpected(u8),
    /// The query did not encode.
    #[error("{0}")]
    Encode(#[from] EncodeError),
    /// The exchange broke.
    #[error("{0}")]
    Frame(#[from] FrameError),
}

/// Runs `query` as a simple Query on an idle server connection and reads to ReadyForQuery,
/// swallowing rows, notices, notifications and ParameterStatus. Ok only when the server raised
/// no error and the connection is idle again. The caller bounds it with a timeout.
pub async fn reset(conn: &mut ServerConn, query: &str) -> Result<(), ResetError> {
    let mut buf = BytesMut::new();
    wire::encode(&Query::new(query.to_owned()), "Query", &mut buf)?;
    wire::send(&mut conn.stream, &buf)
        .await
        .map_err(FrameError::Io)?;
    let mut failed = None;
    loop {
        let frame = wire::read_tagged(&mut conn.stream, MAX_RESET_MESSAGE).await?;
        match frame[0] {
            b'T' | b'D' | b'C' | b'I' | b'N' | b'A' | b'S' => {}
            b'E' => {
                let text = server_error_text(frame);
                failed = Some(text.unwrap_or_else(|| "malformed ErrorResponse".to_owned()));
            }
            b'Z' => {
                let status = frame.get(5).copied().unwrap_or(0);
                return match (failed, status) {
                    (Some(text), _) => Err(ResetError::Server(text)),
                    (None, b'I') => Ok(()),
                    (None, other) => Err(ResetError::NotIdle(other)),
                };
            }
            other => return Err(ResetError::Unexpected(other)),
        }
    }
}

/// Logs in as `user` with what `info` asks for (database, parameters): through the Aurora
/// topology when the target has one, else to the target's endpoint.
pub async fn open(
    ctx: &TargetContext,
    user: String,
    info: &StartupInfo,
) -> Result<ServerConn, Failure> {
    match &ctx.topology {
        Some(topo) => crate::upstream::topology::open::open(ctx, topo, user, info).await,
        None => open_at(ctx, ctx.endpoint.clone(), user, info).await,
    }
}

/// Logs in at `ep` as `user`, with a token signed for `ep`'s host name and port.
pub async fn open_at(
    ctx: &TargetContext,
    ep: Arc<Endpoint>,
    user: String,
    info: &StartupInfo,
) -> Result<ServerConn, Failure> {
    let key = TokenKey {
        host: ep.host.clone(),
        port: ep.port,
        user,
        region: ctx.region.clone(),
        role: ctx.role.clone(),
    };
    // Dropped unconfirmed (a failed or abandoned login), the lease frees the cache slot.
    let lease = ctx.cache.lease(key.clone());
    let user = key.user.as_str();
    let startup = startup_packet(user, info).map_err(|e| {
        let e = ClientError::new(sqlstate::PROTOCOL_VIOLATION, format!("pg-iam-proxy: {e}"));
        Failure::Client(e, "startup_too_long")
    })?;
    for attempt in 0..2 {
        let token = lease.token().await.map_err(|e| {
            let message = format!("pg-iam-proxy: no IAM auth token for {user}: {e}");
            Failure::Client(
                ClientError::new(sqlstate::INVALID_AUTHORIZATION, message),
                "token",
            )
        })?;
        let (mut stream, addr) = connect(&ep).await.map_err(|e| {
            if e.is_out_of_fds() {
                ctx.metrics.all.fd_exhausted(FdUse::Upstream);
            }
            Failure::Client(e.to_client(), e.reason())
        })?;
        match login(&mut stream, user, &startup, token.expose()).await {
            Ok(login) => {
                lease.confirm();
                return Ok(ServerConn {
                    endpoint: ep,
                    stream,
                    addr,
                    login,
                    created: Instant::now(),
                });
            }
            Err(AuthError::Refused(e)) if attempt == 0 => {
                tracing::info!(code = %e.code, "login with a cached token refused; retrying with a new token");
                lease.invalidate();
            }
            Err(AuthError::Refused(e)) => {
                return Err(Failure::Server(with_hint(ctx, user, e), "refused"))
            }
            Err(AuthError::Server(e)) => return Err(Failure::Server(e.frame, "server")),
            Err(other) => return Err(Failure::Client(other.to_client(), other.reason())),
        }
    }
    let refused = ClientError::new(
        sqlstate::INVALID_AUTHORIZATION,
        "pg-iam-proxy: login refused",
    );
    Err(Failure::Client(refused, "refused"))
}

/// The server's refusal, verbatim, plus a hint of what to check when it has none.
fn with_hint(ctx: &TargetContext, user: &str, e: ServerError) -> BytesMut {
    tracing::warn!(code = %e.code, message = %e.message, "upstream refused the IAM token twice");
    let Ok(mut parsed) = wire::decode::<ErrorResponse>(e.frame.clone(), "ErrorResponse") else {
        return e.frame;
    };
    if !parsed.fields.iter().any(|(k, _)| *k == b'H') {
        parsed.fields.push((
            b'H',
            format!(
                "pg-iam-proxy signed a fresh IAM token for user \"{user}\" in region {}. Check: \
                 the user is granted rds_iam; IAM auth is enabled on the cluster; the IAM \
                 policy allows rds-db:connect on arn:{}:rds-db:{}:<account>:dbuser:<resource-id>/{user}; \
                 the region is the database's; this machine's clock is correct.",
                ctx.region,
                partition(&ctx.region),
                ctx.region
            ),
        ));
    }
    let mut buf = BytesMut::new();
    match wire::encode(&parsed, "ErrorResponse", &mut buf) {
        Ok(()) => buf,
        Err(_) => e.frame, // the hint made it too long: the server's error as it was
    }
}
