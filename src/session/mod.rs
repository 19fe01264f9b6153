//! One client connection through its stages, and nothing else: handshake (client) -> a
//! server connection -> greet (client) -> relay -> release. Every failure reaches the client
//! as an ErrorResponse. The server connection is either a login of the client's own
//! ([`direct`], pool mode `none`, replication connections) or lent by the target's pool
//! ([`pooled`], session mode; [`txn`], transaction mode: a connection per transaction).

mod direct;
mod front;

use front::Transport;
mod pooled;
mod txn;

use crate::relay::Cut;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::audit::{self, Tally, Traffic};
use crate::client::{self, Hello, StartupInfo};
use crate::config::PoolMode;
use crate::frontend::peer::{Identity, PeerAddr};
use crate::frontend::tls::common_name;
use crate::relay;
use crate::target::TargetContext;
use crate::upstream::login::Failure;
use crate::wire;

/// Serves one accepted client connection from `peer` to the end. A cut before the relay
/// (the client still in its handshake or login) ends the connection with 57P01 too.
pub async fn serve<S>(ctx: &TargetContext, mut client: S, peer: PeerAddr, cut: Cut)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Each stage boxed: the task holds only the stage it is in, so an idle session costs
    // little (the handshakes' state and the TLS path are not carried by every session).
    let identity = Box::pin(ctx.access.identify(peer)).await;
    let offer_tls = ctx.access.tls.is_some();
    let Some(hello) = Box::pin(front::hello(ctx, &mut client, &cut, offer_tls)).await else {
        return;
    };
    if !matches!(hello, Hello::Tls) {
        let plain = front::after_hello(ctx, client, identity, hello, Transport::Plain, cut);
        return Box::pin(plain).await;
    }
    let Some(mut tls) = Box::pin(front::accept_tls(ctx, client, &cut)).await else {
        return;
    };
    let cert_cn = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(common_name);
    let Some(hello) = Box::pin(front::hello(ctx, &mut tls, &cut, false)).await else {
        return;
    };
    let transport = Transport::Tls { cert_cn };
    Box::pin(front::after_hello(
        ctx, tls, identity, hello, transport, cut,
    ))
    .await
}

/// Runs a stage before the relay unless the shutdown drain ends first (`None`).
async fn or_cut<T>(cut: &Cut, stage: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::select! {
        biased; // the stage's own wake first; the cut is an atomic load until it fires
        out = stage => Some(out),
        () = cut.fired() => None,
    }
}

async fn session<S>(
    ctx: &TargetContext,
    client: S,
    identity: &Identity,
    user: String,
    info: StartupInfo,
    cut: Cut,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (database, traffic) = (info.database.clone(), Traffic::default());
    let audit = audit::Session {
        identity,
        db_user: &user.clone(),
        database: &database,
        target: &ctx.name,
        role_arn: ctx.role.as_ref().map(|r| r.arn.as_str()),
        started: std::time::Instant::now(),
    };
    audit.start();
    let span = tracing::Span::current();
    span.record("user", user.as_str());
    span.record("database", info.database.as_str());
    // Boxed: an idle connection's task holds only the branch it took, not the larger of both.
    match &ctx.pooling {
        Some(pooling) if pooled::poolable(&info) => {
            let _counted = pooling.pools.client(); // the pools' peaks
            if pooling.config.mode == PoolMode::Transaction {
                let txn = txn::session(ctx, pooling, client, user, info, cut, &traffic);
                Box::pin(txn).await
            } else {
                let pooled = pooled::session(ctx, pooling, client, user, info, cut, &traffic);
                Box::pin(pooled).await
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
                &traffic,
            ))
            .await
        }
    }
    audit.end(&traffic);
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

/// The relay's byte counters: target `ctx`'s and the session's `traffic`.
fn tallies<'a>(ctx: &'a TargetContext, traffic: &'a Traffic) -> [Tally<'a>; 2] {
    [
        Tally {
            target: &ctx.metrics.to_server,
            own: &traffic.to_server,
        },
        Tally {
            target: &ctx.metrics.to_client,
            own: &traffic.to_client,
        },
    ]
}

/// Meters over the two tallies of [`tallies`].
fn meters<'a>(t: &'a [Tally<'a>; 2]) -> relay::Meters<'a> {
    relay::Meters {
        to_server: &t[0],
        to_client: &t[1],
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
