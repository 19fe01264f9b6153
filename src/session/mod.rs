//! One client connection through its stages, and nothing else: handshake (client) -> a
//! server connection -> greet (client) -> relay -> release. Every failure reaches the client
//! as an ErrorResponse. The server connection is either a login of the client's own
//! ([`direct`], pool mode `none`, replication connections) or lent by the target's pool
//! ([`pooled`], session mode; [`txn`], transaction mode: a connection per transaction).

mod direct;
mod pooled;
mod txn;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::client::{self, Hello, StartupInfo};
use crate::config::PoolMode;
use crate::error::{sqlstate, ClientError};
use crate::relay;
use crate::target::TargetContext;
use crate::upstream::login::Failure;
use crate::wire;

/// Serves one accepted client connection to the end. A cut before the relay (the client
/// still in its handshake or login) ends the connection with 57P01 too.
pub async fn serve<S>(ctx: &TargetContext, mut client: S, cut: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Boxed: the handshake's state is freed before the session starts.
    let handshake = Box::pin(timeout(
        ctx.settings.handshake_timeout,
        client::handshake(&mut client),
    ));
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
            // Boxed: this branch's state is not carried by every session's future.
            let forward = Box::pin(ctx.cancels.forward(&request, |o| ctx.metrics.cancel(o)));
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

async fn session<S>(ctx: &TargetContext, client: S, info: StartupInfo, cut: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let user = ctx.db_user.clone().unwrap_or_else(|| info.user.clone());
    let span = tracing::Span::current();
    span.record("user", user.as_str());
    span.record("database", info.database.as_str());
    // Boxed: an idle connection's task holds only the branch it took, not the larger of both.
    match &ctx.pooling {
        Some(pooling) if pooled::poolable(&info) => {
            if pooling.config.mode == PoolMode::Transaction {
                Box::pin(txn::session(ctx, pooling, client, user, info, cut)).await
            } else {
                Box::pin(pooled::session(ctx, pooling, client, user, info, cut)).await
            }
        }
        _ => {
            Box::pin(direct::session(
                ctx,
                client,
                user,
                info,
                cut,
                BytesMut::new(),
            ))
            .await
        }
    }
}

/// Tells the client why it got no server connection, and counts it.
async fn refuse<S>(ctx: &TargetContext, client: &mut S, failure: Failure)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match failure {
        Failure::Client(e, reason) => {
            ctx.metrics.login_failed(reason);
            tracing::warn!(error = %e, "upstream login failed");
            client::reject(client, &e).await;
        }
        Failure::Server(frame, reason) => {
            ctx.metrics.login_failed(reason);
            client::relay_error(client, &frame).await;
        }
    }
}

/// Passes on what the client sent while its login ran (nothing, for every driver we know);
/// false if the server is gone.
async fn send_early<U: AsyncWrite + Unpin>(server: &mut U, early: BytesMut) -> bool {
    if early.is_empty() {
        return true;
    }
    match wire::send(server, &early).await {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, "upstream closed before the client's first message");
            false
        }
    }
}

/// The relay's byte counters of target `ctx`.
fn meters(ctx: &TargetContext) -> relay::Meters<'_> {
    relay::Meters {
        to_server: &ctx.metrics.to_server,
        to_client: &ctx.metrics.to_client,
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
