//! One client connection through its stages, and nothing else: handshake (client) -> a
//! server connection (upstream login, see [`crate::upstream::login`]) -> greet (client) ->
//! relay. Every failure reaches the client as an ErrorResponse.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::cancel::CancelTarget;
use crate::client::{self, Hello, StartupInfo};
use crate::error::{sqlstate, ClientError};
use crate::relay;
use crate::target::TargetContext;
use crate::upstream::login::{open_gated, Failure, ServerConn};
use crate::wire;

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
    let opening = Box::pin(open_gated(ctx, user, &info));
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
    let ServerConn {
        mut stream,
        addr,
        login,
        ..
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
