//! A server connection of the client's own: an upstream login per client (pool mode
//! `none`, replication connections, and startup parameters that cannot be changed after
//! login), greeted with the server's own parameters and key, relayed, and closed with the
//! client.

use std::sync::Arc;

use crate::relay::Cut;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{meters, or_cut, refuse, send_early, tallies, watch_client};
use crate::audit::Traffic;
use crate::cancel::CancelTarget;
use crate::client::{self, StartupInfo};
use crate::error::{sqlstate, ClientError};
use crate::relay;
use crate::target::TargetContext;
use crate::upstream::login::{open_gated, ServerConn};

/// Logs in for this client (as `user`), greets it and relays until the session ends.
/// `early` is what the client already sent after its startup packet.
pub(super) async fn session<S>(
    ctx: &TargetContext,
    mut client: S,
    user: String,
    info: StartupInfo,
    cut: Cut,
    mut early: BytesMut,
    traffic: &Traffic,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
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
        Err(failure) => return refuse(ctx, &mut client, failure).await,
    };
    ctx.metrics
        .connect_seconds
        .observe(started.elapsed().as_secs_f64());
    tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, addr = %opened.addr, "upstream session open");
    let ServerConn {
        mut stream,
        addr,
        login,
        endpoint,
        ..
    } = opened;
    let guard = ctx.cancels.register(CancelTarget {
        endpoint,
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
    if !send_early(&mut stream, early).await {
        return;
    }
    let idle = ctx.settings.idle_timeout;
    let tallies = tallies(ctx, traffic);
    let outcome = relay::splice(&mut client, &mut stream, &cut, idle, meters(&tallies)).await;
    if outcome.ended == relay::Ended::Idle {
        tracing::info!(timeout = ?ctx.settings.idle_timeout, "idle session closed");
    }
}
