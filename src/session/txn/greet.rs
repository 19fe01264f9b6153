//! Transaction mode's greeting: the client gets the ParameterStatus values of its pool's
//! first login (kept per pool; one checkout at once for a pool that has none) with its own
//! settable parameters, and a cancel key of the proxy's that names the client, not a backend.

use crate::relay::Cut;
use tokio::io::{AsyncRead, AsyncWrite};

use super::super::pooled::checkout_failure;
use super::super::{or_cut, refuse};
use crate::cancel::ClientCancel;
use crate::client;
use crate::error::{sqlstate, ClientError};
use crate::pool::PoolKey;
use crate::target::{Pooling, TargetContext};
use crate::upstream::params::{self, ServerParams};
use crate::upstream::pooled::ServerConnector;
use crate::wire;

/// Greets the client of pool `key`; its cancel key, or `None` when it was told why not (or
/// left).
pub(super) async fn greet<S>(
    ctx: &TargetContext,
    pooling: &Pooling,
    key: &PoolKey,
    connector: &ServerConnector,
    settable: &[(String, String)],
    client: &mut S,
    cut: &Cut,
) -> Option<ClientCancel>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut shown = baseline(ctx, pooling, key, connector, client, cut).await?;
    for (name, value) in settable {
        shown.set(name.clone(), value.clone());
    }
    let cancel = ctx.cancels.register_client();
    let (pid, secret) = cancel.key();
    let greeting = match params::encode_greeting(&shown, pid, secret) {
        Ok(greeting) => greeting,
        Err(e) => {
            let e = ClientError::new(sqlstate::PROTOCOL_VIOLATION, format!("pg-iam-proxy: {e}"));
            client::reject(client, &e).await;
            cancel.release().await;
            return None;
        }
    };
    if wire::send(client, &greeting).await.is_err() {
        tracing::debug!("client left before the greeting");
        cancel.release().await;
        return None;
    }
    Some(cancel)
}

/// The pool's baseline ParameterStatus values: kept from its first login; a checkout (and
/// at once a check-in) gets them for a pool that has none. `None`: the client was told why.
async fn baseline<S>(
    ctx: &TargetContext,
    pooling: &Pooling,
    key: &PoolKey,
    connector: &ServerConnector,
    client: &mut S,
    cut: &Cut,
) -> Option<ServerParams>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let known = |k: &PoolKey| lock(pooling).get(k).cloned();
    if let Some(baseline) = known(key) {
        return Some(baseline);
    }
    let checkout = Box::pin(pooling.pools.checkout(key, connector));
    let mut lent = match or_cut(cut, checkout).await {
        None => {
            client::reject(client, &ClientError::admin_shutdown()).await;
            return None;
        }
        Some(Ok(lent)) => lent,
        Some(Err(e)) => {
            refuse(ctx, client, checkout_failure(e)).await;
            return None;
        }
    };
    let baseline = lent.conn_mut().baseline.clone();
    lent.park();
    lock(pooling).insert(key.clone(), baseline.clone());
    Some(baseline)
}

fn lock(
    pooling: &Pooling,
) -> std::sync::MutexGuard<'_, std::collections::HashMap<PoolKey, ServerParams>> {
    pooling
        .baselines
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
