//! A server connection lent by the target's pool (session mode): checkout (an idle
//! connection, or a new login through the gate) -> the client's own startup parameters
//! applied with `set_config` -> a greeting with the resulting ParameterStatus values, the
//! server's real pid and our secret -> the relay, which keeps the client's Terminate and says
//! whether the server connection is provably idle -> release: the cancel key is retired
//! (waiting out a forward in flight), then the reset query runs and the connection goes back,
//! or it is closed.

use std::sync::Arc;
use std::time::Duration;

use crate::relay::Cut;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{direct, meters, or_cut, refuse, send_early, tallies, watch_client};
use crate::audit::Traffic;
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
    cut: Cut,
    traffic: &Traffic,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Two boxed stages: while the client is served, this future holds only the second.
    let lend = Box::pin(lend(ctx, pooling, &mut client, &user, &info, &cut)).await;
    match lend {
        Lend::Answered => {}
        Lend::Unpooled(early) => {
            let direct = direct::session(ctx, client, user, info, cut, early, traffic);
            Box::pin(direct).await
        }
        Lend::Ready(ready) => {
            let Lent { lent, shown, early } = ready;
            // Only the fallback needed these: an idle session keeps as little as it can.
            drop((user, info));
            let rest = Rest {
                early,
                cut,
                traffic,
            };
            Box::pin(serve(ctx, pooling, &mut client, lent, shown, rest)).await
        }
    }
}

/// How the lending stage ended.
enum Lend {
    /// The client was answered (refused, or it left).
    Answered,
    /// A startup parameter needs a login of the client's own; what it sent meanwhile.
    Unpooled(BytesMut),
    /// A connection with the client's parameters applied.
    Ready(Lent),
}

/// A connection lent to the client, ready for its greeting.
struct Lent {
    /// The connection.
    lent: Checkout<PooledServer>,
    /// The ParameterStatus values to greet the client with.
    shown: ServerParams,
    /// What the client sent while the connection was checked out.
    early: BytesMut,
}

/// Checks a connection out for the client and applies its parameters.
async fn lend<S>(
    ctx: &TargetContext,
    pooling: &Pooling,
    client: &mut S,
    user: &str,
    info: &StartupInfo,
    cut: &Cut,
) -> Lend
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (key, settable) = split(user.to_owned(), info);
    let mut early = BytesMut::new();
    let connector = pooling.connector.for_client(&settable);
    let checkout = Box::pin(pooling.pools.checkout(&key, &connector));
    let checkout = tokio::select! {
        checkout = or_cut(cut, checkout) => checkout,
        () = watch_client(client, &mut early) => {
            ctx.metrics.login_failed("client_left");
            tracing::debug!("client left while waiting for a server connection");
            return Lend::Answered;
        }
    };
    let mut lent = match checkout {
        None => {
            client::reject(client, &ClientError::admin_shutdown()).await;
            return Lend::Answered;
        }
        Some(Ok(lent)) => lent,
        Some(Err(e)) => {
            refuse(ctx, client, checkout_failure(e)).await;
            return Lend::Answered;
        }
    };
    tracing::debug!(reused = lent.reused(), "server connection checked out");
    let server = lent.conn_mut();
    let limit = ctx.settings.connect_timeout;
    let applied = params::apply(&mut server.conn.stream, &settable, &server.baseline, limit);
    match applied.await {
        Ok(shown) => Lend::Ready(Lent { lent, shown, early }),
        Err(ApplyError::Rejected(r)) if r.cannot_change_now() => {
            // A parameter only a login can set: this client gets a login of its own.
            tracing::debug!(code = %r.error.code, "startup parameter needs a login; not pooled");
            release(lent, r.reusable, &pooling.config.reset_query).await;
            Lend::Unpooled(early)
        }
        Err(ApplyError::Rejected(r)) => {
            // As a direct login refuses a bad startup parameter: FATAL, the server's words.
            client::relay_error(client, &params::fatal(&r.error.frame)).await;
            release(lent, r.reusable, &pooling.config.reset_query).await;
            Lend::Answered
        }
        Err(e) => {
            lent.close(CloseReason::Broken);
            let e = ClientError::new(sqlstate::CONNECTION_FAILURE, format!("pg-iam-proxy: {e}"));
            refuse(ctx, client, Failure::Client(e, "protocol")).await;
            Lend::Answered
        }
    }
}

/// What the relay stage takes besides the two connections.
struct Rest<'a> {
    /// What the client sent while its connection was checked out.
    early: BytesMut,
    /// The shutdown cut.
    cut: Cut,
    /// The session's byte counts.
    traffic: &'a Traffic,
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
    rest: Rest<'_>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Rest {
        early,
        cut,
        traffic,
    } = rest;
    let server = lent.conn_mut();
    let guard = ctx.cancels.register(CancelTarget {
        endpoint: server.conn.endpoint.clone(),
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
    let tallies = tallies(ctx, traffic);
    let outcome =
        relay::splice_with(client, stream, &cut, idle, meters(&tallies), Mode::Pooled).await;
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
/// the parameters to apply on whichever connection the pool lends (each of
/// [`SET_AFTER_LOGIN`], empty when the client sent none).
pub(super) fn split(user: String, info: &StartupInfo) -> (PoolKey, Vec<(String, String)>) {
    let (mut startup, mut settable): (Vec<_>, Vec<_>) = info
        .params
        .iter()
        .cloned()
        .partition(|(k, _)| !SET_AFTER_LOGIN.contains(&k.as_str()));
    startup.sort();
    // A client that sends none has the server's default (''), not the name of whoever the
    // lent connection was opened for.
    for name in SET_AFTER_LOGIN {
        if !settable.iter().any(|(k, _)| k == name) {
            settable.push(((*name).to_owned(), String::new()));
        }
    }
    let key = PoolKey {
        user,
        database: info.database.clone(),
        startup,
    };
    (key, settable)
}
