//! One client connection through its stages: handshake (client) -> connect and login
//! (upstream, token from the cache, one retry with a fresh token if it is refused) ->
//! greet (client) -> relay. Every failure reaches the client as an ErrorResponse.

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use pgwire::messages::response::ErrorResponse;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::cancel::{CancelMap, CancelTarget};
use crate::client::{self, Hello, StartupInfo};
use crate::config::ProxySettings;
use crate::error::{sqlstate, ClientError};
use crate::gate::LoginGate;
use crate::iam::{partition, RoleSpec, TokenCache, TokenKey};
use crate::metrics::{FdUse, TargetMetrics};
use crate::relay;
use crate::upstream::auth::{login, startup_packet, AuthError, Login, ServerError};
use crate::upstream::connect::{connect, Endpoint, UpstreamStream};
use crate::wire;

/// Everything a session of one target needs, shared by its connections.
#[derive(Debug)]
pub struct TargetContext {
    /// Name for logs.
    pub name: String,
    /// The database endpoint.
    pub endpoint: Arc<Endpoint>,
    /// Region to sign for.
    pub region: String,
    /// Fixed upstream user, if any.
    pub db_user: Option<String>,
    /// Role to assume, if any.
    pub role: Option<RoleSpec>,
    /// Shared token cache.
    pub cache: TokenCache,
    /// Shared cancel map.
    pub cancels: Arc<CancelMap>,
    /// Timeouts.
    pub settings: ProxySettings,
    /// Bounds concurrent upstream logins; the other clients wait in order.
    pub logins: LoginGate,
    /// This target's metrics.
    pub metrics: TargetMetrics,
}

/// An upstream session ready for the client.
struct Opened {
    stream: UpstreamStream,
    addr: std::net::SocketAddr,
    login: Login,
}

/// Why no upstream session was opened.
enum Failure {
    /// Our own error for the client, with a short reason for metrics.
    Client(ClientError, &'static str),
    /// The server's ErrorResponse, to relay verbatim, with a short reason.
    Server(BytesMut, &'static str),
}

/// Serves one accepted client connection to the end. A cut before the relay (the client
/// still in its handshake or login) ends the connection with 57P01 too.
pub async fn serve<S>(ctx: &TargetContext, mut client: S, cut: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = timeout(
        ctx.settings.handshake_timeout,
        client::handshake(&mut client),
    );
    let hello = match or_cut(&cut, handshake).await {
        None => return client::reject(&mut client, &ClientError::admin_shutdown()).await,
        Some(Ok(Ok(hello))) => hello,
        Some(Ok(Err(e))) => {
            tracing::debug!(error = %e, "handshake failed");
            return client::reject(&mut client, &e).await;
        }
        Some(Err(_)) => {
            let e = ClientError::new(
                sqlstate::PROTOCOL_VIOLATION,
                "timeout waiting for the startup packet",
            );
            tracing::debug!("handshake timed out");
            return client::reject(&mut client, &e).await;
        }
    };
    match hello {
        Hello::Cancel(request) => {
            let forward = ctx.cancels.forward(&request, |o| ctx.metrics.cancel(o));
            let _ = or_cut(&cut, forward).await;
        }
        Hello::Startup(info) => session(ctx, client, info, cut).await,
    }
}

/// Runs a stage before the relay unless the shutdown drain ends first (`None`).
async fn or_cut<T>(
    cut: &CancellationToken,
    stage: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        out = stage => Some(out),
        () = cut.cancelled() => None,
    }
}

async fn session<S>(ctx: &TargetContext, mut client: S, info: StartupInfo, cut: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let user = ctx.db_user.clone().unwrap_or_else(|| info.user.clone());
    let span = tracing::Span::current();
    span.record("user", user.as_str());
    span.record("database", info.database.as_str());
    let mut early = BytesMut::new();
    // Boxed: the connect/login state is freed before the long relay stage.
    let opening = Box::pin(gated_open(ctx, user, &info));
    let opened = tokio::select! {
        opened = or_cut(&cut, opening) => opened,
        () = watch_client(&mut client, &mut early) => {
            ctx.metrics.login_failed("client_left");
            tracing::debug!("client left before the upstream login completed; login abandoned");
            return;
        }
    };
    let Some(opened) = opened else {
        return client::reject(&mut client, &ClientError::admin_shutdown()).await;
    };
    let (opened, started) = match opened {
        Ok(opened) => opened,
        Err(Failure::Client(e, reason)) => {
            ctx.metrics.login_failed(reason);
            tracing::warn!(error = %e, "upstream login failed");
            return client::reject(&mut client, &e).await;
        }
        Err(Failure::Server(frame, reason)) => {
            ctx.metrics.login_failed(reason);
            return client::relay_error(&mut client, &frame).await;
        }
    };
    ctx.metrics
        .connect_seconds
        .observe(started.elapsed().as_secs_f64());
    tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, addr = %opened.addr, "upstream session open");
    let Opened {
        mut stream,
        addr,
        login,
    } = opened;
    let guard = ctx.cancels.register(CancelTarget {
        endpoint: ctx.endpoint.clone(),
        addr,
        key: Arc::new(login.key),
    });
    let greeting = client::greet(&mut client, &login.server_params, guard.key, &login.ready);
    if let Err(e) = Box::pin(greeting).await {
        tracing::debug!(error = %e, "greeting failed");
        if let client::GreetError::Encode(e) = e {
            let e = ClientError::new(sqlstate::PROTOCOL_VIOLATION, format!("pg-iam-proxy: {e}"));
            client::reject(&mut client, &e).await;
        }
        let _ = stream.shutdown().await;
        return;
    }
    drop((info, login.server_params, login.ready));
    if !early.is_empty() {
        // What the client sent while its login ran (nothing, for every driver we know).
        if let Err(e) = wire::send(&mut stream, &early).await {
            tracing::debug!(error = %e, "upstream closed before the client's first message");
            return;
        }
        drop(early);
    }
    let meters = relay::Meters {
        to_server: &ctx.metrics.to_server,
        to_client: &ctx.metrics.to_client,
    };
    let outcome = relay::splice(
        &mut client,
        &mut stream,
        cut,
        ctx.settings.idle_timeout,
        meters,
    )
    .await;
    if outcome.ended == relay::Ended::Idle {
        tracing::info!(timeout = ?ctx.settings.idle_timeout, "idle session closed");
    }
}

/// Waits for a login slot (in arrival order, bounded), then connects and logs in within the
/// connect timeout. Returns the session and when its connect started.
async fn gated_open(
    ctx: &TargetContext,
    user: String,
    info: &StartupInfo,
) -> Result<(Opened, Instant), Failure> {
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
                    "pg-iam-proxy: timeout connecting to {}:{} after {:?}",
                    ctx.endpoint.host, ctx.endpoint.port, ctx.settings.connect_timeout
                ),
            ),
            "timeout",
        )),
    }
}

/// Client input kept while its login runs is capped at this; beyond it the client is no
/// longer watched (it cannot be reading our answer yet, so it is not waiting for one).
const EARLY_INPUT_LIMIT: usize = 64 * 1024;

/// Completes when the client closes its connection (or it fails) before its login is done;
/// anything it sends meanwhile is kept in `early` to be passed on after the greeting.
async fn watch_client<S: AsyncRead + Unpin>(client: &mut S, early: &mut BytesMut) {
    while early.len() < EARLY_INPUT_LIMIT {
        match client.read_buf(early).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
    std::future::pending().await
}

/// Logs in upstream as `user` to `database` and closes again: the `check` command's login.
pub async fn login_check(ctx: &TargetContext, user: &str, database: &str) -> Result<(), String> {
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
        Ok(Ok(mut opened)) => {
            let _ = opened.stream.shutdown().await;
            Ok(())
        }
        Ok(Err(Failure::Client(e, _))) => Err(e.to_string()),
        Ok(Err(Failure::Server(frame, _))) => Err(
            match wire::decode::<ErrorResponse>(frame, "ErrorResponse") {
                Ok(e) => e
                    .fields
                    .iter()
                    .filter(|(k, _)| matches!(k, b'C' | b'M' | b'H'))
                    .map(|(_, v)| v.as_str())
                    .collect::<Vec<_>>()
                    .join(" | "),
                Err(_) => "the server refused the login".to_owned(),
            },
        ),
        Err(_) => Err(format!("timeout after {:?}", ctx.settings.connect_timeout)),
    }
}

async fn open(ctx: &TargetContext, user: String, info: &StartupInfo) -> Result<Opened, Failure> {
    let key = TokenKey {
        host: ctx.endpoint.host.clone(),
        port: ctx.endpoint.port,
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
        let (mut stream, addr) = connect(&ctx.endpoint).await.map_err(|e| {
            if e.is_out_of_fds() {
                ctx.metrics.all.fd_exhausted(FdUse::Upstream);
            }
            Failure::Client(e.to_client(), e.reason())
        })?;
        match login(&mut stream, user, &startup, token.expose()).await {
            Ok(login) => {
                lease.confirm();
                return Ok(Opened {
                    stream,
                    addr,
                    login,
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
