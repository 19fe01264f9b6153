//! The client side before any server work: the startup handshake (with a TLS upgrade when
//! the proxy offers TLS), admission of the identified client, SCRAM for remote clients
//! (only over TLS), and the database user its rule allows. Each refusal reaches the client
//! as an ErrorResponse, is counted and logged.

use crate::relay::Cut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::timeout;

use super::{or_cut, session};
use crate::client::{self, Hello, StartupInfo};
use crate::error::{sqlstate, ClientError};
use crate::frontend::access::Refusal;
use crate::frontend::peer::{AuthMethod, Client, Identity};
use crate::frontend::scram;
use crate::target::TargetContext;

/// How the client's connection is carried.
pub(super) enum Transport {
    /// In the clear.
    Plain,
    /// Over TLS, with the CN of the client's certificate if it showed one (verified).
    Tls {
        /// The certificate's subject CN.
        cert_cn: Option<String>,
    },
}

/// Reads the startup request within the handshake timeout; `None` when the client has
/// been answered already (an error, a cut).
pub(super) async fn hello<S>(
    ctx: &TargetContext,
    client: &mut S,
    cut: &Cut,
    offer_tls: bool,
) -> Option<Hello>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = timeout(
        ctx.settings.handshake_timeout,
        client::handshake(client, offer_tls),
    );
    let e = match or_cut(cut, handshake).await {
        None => ClientError::admin_shutdown(),
        Some(Ok(Ok(hello))) => return Some(hello),
        Some(Ok(Err(e))) => {
            tracing::debug!(error = %e, "handshake failed");
            e
        }
        Some(Err(_)) => {
            tracing::debug!("handshake timed out");
            ClientError::new(
                sqlstate::PROTOCOL_VIOLATION,
                "timeout waiting for the startup packet",
            )
        }
    };
    client::reject(client, &e).await;
    None
}

/// The TLS handshake with a client that asked for it, within the handshake timeout.
pub(super) async fn accept_tls<S>(
    ctx: &TargetContext,
    client: S,
    cut: &Cut,
) -> Option<Box<tokio_rustls::server::TlsStream<S>>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = ctx.access.tls.clone()?;
    let accept = tokio_rustls::TlsAcceptor::from(config).accept(client);
    match or_cut(cut, timeout(ctx.settings.handshake_timeout, accept)).await {
        Some(Ok(Ok(tls))) => Some(Box::new(tls)),
        Some(Ok(Err(e))) => {
            tracing::debug!(error = %e, "client TLS handshake failed");
            None
        }
        _ => {
            tracing::debug!("client TLS handshake timed out or cut");
            None
        }
    }
}

/// Admits, authenticates and places the client, then runs its session.
pub(super) async fn after_hello<S>(
    ctx: &TargetContext,
    mut client: S,
    identity: Identity,
    hello: Hello,
    transport: Transport,
    cut: Cut,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let admitted = ctx.access.admit(&identity);
    let info = match (hello, admitted) {
        (Hello::Cancel(request), Ok(())) => {
            let forward = Box::pin(ctx.cancels.forward(&request, |o| ctx.metrics.cancel(o)));
            let _ = or_cut(&cut, forward).await;
            return;
        }
        (Hello::Startup(info), Ok(())) => info,
        (Hello::Tls, _) => {
            let e = ClientError::new(sqlstate::PROTOCOL_VIOLATION, "repeated SSLRequest");
            return Box::pin(client::reject(&mut client, &e)).await;
        }
        (hello, Err(refusal)) => {
            let cancel = matches!(hello, Hello::Cancel(_));
            return Box::pin(refuse(ctx, &mut client, refusal, cancel)).await;
        }
    };
    // Boxed stages: an idle session's future holds none of the handshake's state.
    let authenticated = Box::pin(authenticate(ctx, &mut client, identity, &info, transport));
    let identity = match authenticated.await {
        Ok(identity) => identity,
        Err(refusal) => return Box::pin(refuse(ctx, &mut client, refusal, false)).await,
    };
    match ctx.db_users.decide(&ctx.access, &identity, &info.user) {
        Ok(user) => Box::pin(session(ctx, client, &identity, user, info, cut)).await,
        Err(refusal) => Box::pin(refuse(ctx, &mut client, refusal, false)).await,
    }
}

/// Counts, logs and tells the client (a cancel request gets no answer, as PostgreSQL's).
async fn refuse<S>(ctx: &TargetContext, client: &mut S, refusal: Refusal, cancel: bool)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ctx.metrics.client_refused(refusal.reason());
    tracing::warn!(client = %refusal.identity().describe(), reason = refusal.reason(),
        cancel, "client refused");
    if !cancel {
        client::reject(client, &refusal.to_error(&ctx.access)).await;
    }
}

/// A remote client proves who it is with SCRAM, over TLS only; a local one is known already.
async fn authenticate<S>(
    ctx: &TargetContext,
    client: &mut S,
    identity: Identity,
    info: &StartupInfo,
    transport: Transport,
) -> Result<Identity, Refusal>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let access = &ctx.access;
    let remote_auth = access.auth_file.is_some() || access.client_certs;
    if !remote_auth || !matches!(identity.client, Client::Remote) {
        return Ok(identity);
    }
    let authenticated = |user: String, method| Identity {
        client: Client::Authenticated { user, method },
        addr: identity.addr.clone(),
    };
    let cert_cn = match transport {
        Transport::Plain => return Err(Refusal::TlsRequired(Box::new(identity))),
        Transport::Tls { cert_cn } => cert_cn,
    };
    if let Some(cn) = cert_cn {
        return Ok(authenticated(cn, AuthMethod::Certificate));
    }
    let Some(users) = access.auth_file.as_ref() else {
        return Err(Refusal::TlsRequired(Box::new(identity)));
    };
    let exchange = scram::authenticate(client, &info.user, users.get(&info.user));
    match timeout(ctx.settings.handshake_timeout, exchange).await {
        Ok(Ok(())) => Ok(authenticated(info.user.clone(), AuthMethod::Scram)),
        Ok(Err(e)) => Err(Refusal::Password(Box::new(identity), e)),
        Err(_) => {
            let e = ClientError::new(sqlstate::PROTOCOL_VIOLATION, "SCRAM: timed out");
            Err(Refusal::Password(Box::new(identity), e))
        }
    }
}
