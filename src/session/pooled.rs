//! A server connection lent by the target's pool (session mode): checkout (an idle
//! connection, or a new login through the gate) -> the client's own startup parameters
//! applied with `set_config` -> a greeting with the resulting ParameterStatus values, the
//! server's real pid and our secret -> the relay, which keeps the client's Terminate and says
//! whether the server connection is provably idle -> release: the cancel key is retired
//! (waiting out a forward in flight), then the reset query runs and the connection goes back,
//! or it is closed.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::{direct, meters, or_cut, refuse, send_early, watch_client};
use crate::cancel::CancelTarget;
use crate::client::{self, StartupInfo};
use crate::error::{sqlstate, ClientError};
use crate::pool::{Checkout, CloseReason, PoolError, PoolKey};
use crate::relay::{self, Ended, Mode};
use crate::target::{Pooling, TargetContext};
use crate::upstream::login::Failure;
use crate::upstream::params::{self, ApplyError, ServerParams};
use crate::upstream::pooled::PooledServer;
use crate::upstream::reset::reset;
use crate::wire;

/// How long the reset of a released connection may take before it is closed instead.
const RESET_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a client may share server connections: replication connections never do.
pub(super) fn poolable(info: &StartupInfo) -> bool {
    !info.params.iter().any(|(k, _)| k == "replication")
}

/// Serves the client on a pooled server connection of `user`.
pub(super) async fn session<S>(
    ctx: &TargetContext,
    pooling: &Pooling,
    mut client: S,
    user: String,
    info: StartupInfo,
    cut: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (key, settable) = split(user.clone(), &info);
    let mut early = BytesMut::new();
    let connector = pooling.connector.for_client(&settable);
    let checkout = Box::pin(pooling.pools.checkout(key, &connector));
    let checkout = tokio::select! {
        checkout = or_cut(&cut, checkout) => checkout,
        () = watch_client(&mut client, &mut early) => {
            ctx.metrics.login_failed("client_left");
            tracing::debug!("client left while waiting for a server connection");
            return;
        }
    };
    let mut lent = match checkout {
        None => return client::reject(&mut client, &ClientError::admin_shutdown()).await,
        Some(Ok(lent)) => lent,
        Some(Err(e)) => return refuse(ctx, &mut client, checkout_failure(e)).await,
    };
    tracing::debug!(reused = lent.reused(), "server connection checked out");
    let server = lent.conn_mut();
    let limit = ctx.settings.connect_timeout;
    let applied = params::apply(&mut server.conn.stream, &settable, &server.baseline, limit);
    let shown = match applied.await {
        Ok(shown) => shown,
        Err(ApplyError::Rejected(r)) if r.cannot_change_now() => {
            // A parameter only a login can set: this client gets a login of its own.
            tracing::debug!(code = %r.error.code, "startup parameter needs a login; not pooled");
            release(lent, r.reusable, &pooling.config.reset_query).await;
            let direct = direct::session(ctx, client, user, info, cut, early);
            return Box::pin(direct).await;
        }
        Err(ApplyError::Rejected(r)) => {
            // As a direct login refuses a bad startup parameter: FATAL, the server's words.
            client::relay_error(&mut client, &params::fatal(&r.error.frame)).await;
            return release(lent, r.reusable, &pooling.config.reset_query).await;
        }
        Err(e) => {
            lent.close(CloseReason::Broken);
            let e = ClientError::new(sqlstate::CONNECTION_FAILURE, format!("pg-iam-proxy: {e}"));
            return refuse(ctx, &mut client, Failure::Client(e, "protocol")).await;
        }
    };
    // Only the fallback needed these: an idle session keeps as little as it can.
    drop((user, info, settable));
    serve(ctx, pooling, &mut client, lent, shown, early, cut).await;
}

/// Why a checkout gave no connection, as the client is told.
pub(super) fn checkout_failure(e: PoolError<Failure>) -> Failure {
    match e {
        PoolError::Open(failure) => failure,
        e => {
            let reason = if matches!(e, PoolError::Timeout { .. }) {
                "pool_timeout"
            } else {
                "shutdown"
            };
            Failure::Client(e.to_client(), reason)
        }
    }
}

/// Greets the client on the lent connection, relays, and releases the connection.
async fn serve<S>(
    ctx: &TargetContext,
    pooling: &Pooling,
    client: &mut S,
    mut lent: Checkout<PooledServer>,
    shown: ServerParams,
    early: BytesMut,
    cut: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let server = lent.conn_mut();
    let guard = ctx.cancels.register(CancelTarget {
        endpoint: ctx.endpoint.clone(),
        addr: server.conn.addr,
        key: Arc::clone(&server.key),
    });
    let greeting = params::encode_greeting(&shown, guard.key.0, guard.key.1);
    drop(shown);
    let greeting = match greeting {
        Ok(greeting) => greeting,
        Err(e) => {
            let e = ClientError::new(sqlstate::PROTOCOL_VIOLATION, format!("pg-iam-proxy: {e}"));
            client::reject(client, &e).await;
            guard.release().await;
            return release(lent, true, &pooling.config.reset_query).await;
        }
    };
    let sent = wire::send(client, &greeting).await;
    drop(greeting);
    if sent.is_err() {
        tracing::debug!("client left before the greeting");
        guard.release().await;
        return release(lent, true, &pooling.config.reset_query).await;
    }
    let stream = &mut lent.conn_mut().conn.stream;
    if !send_early(stream, early).await {
        guard.release().await;
        return lent.close(CloseReason::Broken);
    }
    let idle = ctx.settings.idle_timeout;
    let outcome = relay::splice_with(client, stream, cut, idle, meters(ctx), Mode::Pooled).await;
    if outcome.ended == Ended::Idle {
        tracing::info!(timeout = ?idle, "idle session closed");
    }
    guard.release().await;
    let reusable = matches!(outcome.ended, Ended::Released { .. }) && outcome.server_idle;
    if !reusable {
        tracing::debug!(ended = ?outcome.ended, "server connection not provably idle; closed");
    }
    release(lent, reusable, &pooling.config.reset_query).await;
}

/// Resets the connection and returns it to its pool when `idle`; closes it otherwise or when
/// the reset fails.
pub(super) async fn release(mut lent: Checkout<PooledServer>, idle: bool, reset_query: &str) {
    if !idle {
        return lent.check_in(false);
    }
    match reset(&mut lent.conn_mut().conn.stream, reset_query, RESET_TIMEOUT).await {
        Ok(_) => lent.check_in(true),
        Err(e) => {
            tracing::info!(error = %e, "server connection reset failed; closed");
            lent.close(CloseReason::ResetFailed);
        }
    }
}

/// Startup parameters applied with `set_config` on whichever connection the pool lends
/// rather than carried by its login: `application_name` differs between the sessions of one
/// app (pgAdmin names every tab), and a pool per name would cost a login per tab. A new login
/// carries the name of the client it is opened for, so the clients of that app that come
/// after it need no `set_config`. The one difference a client can see: on a connection opened
/// for another name, `RESET application_name` restores that name, not the client's.
const SET_AFTER_LOGIN: &[&str] = &["application_name"];

/// The pool key (user, database and the startup parameters a login must carry, sorted) and
/// the parameters to apply on whichever connection the pool lends.
pub(super) fn split(user: String, info: &StartupInfo) -> (PoolKey, Vec<(String, String)>) {
    let (mut startup, settable): (Vec<_>, Vec<_>) = info
        .params
        .iter()
        .cloned()
        .partition(|(k, _)| !SET_AFTER_LOGIN.contains(&k.as_str()));
    startup.sort();
    let key = PoolKey {
        user,
        database: info.database.clone(),
        startup,
    };
    (key, settable)
}
