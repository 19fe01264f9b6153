//! The operator endpoint (`--http-addr`): `/startup`, `/liveness`, `/readiness`, `/metrics`
//! (Prometheus text) and, when enabled, `POST /quitquitquit` to start a graceful shutdown
//! (obeyed from the proxy's own OS user or root only; the peer is identified as Postgres
//! clients are).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::frontend::access::Access;
use crate::frontend::peer::{self, Client, PeerAddr};
use crate::health::Health;

/// What the endpoint serves.
#[derive(Debug)]
pub struct HttpState {
    /// Health flags.
    pub health: Arc<Health>,
    /// Metrics.
    pub registry: Registry,
    /// Set when `/quitquitquit` is enabled: the shutdown it triggers.
    pub quit: Option<CancellationToken>,
    /// Who may connect; its own uid (and root) is whom `/quitquitquit` obeys.
    pub access: Arc<Access>,
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

fn status(ok: bool) -> Response<Full<Bytes>> {
    if ok {
        reply(StatusCode::OK, "ok\n")
    } else {
        reply(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

fn route(state: &HttpState, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let get = method == Method::GET || method == Method::HEAD;
    match path {
        "/liveness" if get => reply(StatusCode::OK, "ok\n"),
        "/startup" if get => status(state.health.started()),
        "/readiness" if get => status(state.health.ready()),
        "/metrics" if get => {
            let mut text = String::new();
            if prometheus_client::encoding::text::encode(&mut text, &state.registry).is_err() {
                return reply(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n");
            }
            let mut r = reply(StatusCode::OK, text);
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        "/quitquitquit" => match (&state.quit, method) {
            (None, _) => reply(StatusCode::NOT_FOUND, "not enabled (--quitquitquit)\n"),
            (Some(quit), &Method::POST) => {
                tracing::info!("/quitquitquit: shutting down");
                // Not ready from the moment the caller reads this answer (the shutdown task
                // would flip it too, a moment later).
                state.health.set_draining();
                quit.cancel();
                reply(StatusCode::OK, "shutting down\n")
            }
            (Some(_), _) => reply(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
        },
        "/liveness" | "/startup" | "/readiness" | "/metrics" => {
            reply(StatusCode::METHOD_NOT_ALLOWED, "use GET\n")
        }
        _ => reply(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `/quitquitquit` obeys only the proxy's own user and root, identified as a Postgres
/// client is (the kernel's socket table); anyone else, and any remote peer, gets 403.
async fn quit_denied(
    state: &HttpState,
    peer: std::net::SocketAddr,
    local: std::net::SocketAddr,
) -> Option<Response<Full<Bytes>>> {
    let id = peer::identify(
        PeerAddr::Tcp { peer, local },
        false,
        state.access.lookups.clone(),
    )
    .await;
    match id.client {
        Client::Local { uid, .. } if state.access.privileged(uid) => None,
        _ => {
            tracing::warn!(client = %id.describe(), "/quitquitquit refused");
            Some(reply(
                StatusCode::FORBIDDEN,
                format!(
                    "/quitquitquit is for the proxy's own user (uid {}) and root; {} is neither\n",
                    state.access.own_uid,
                    id.describe()
                ),
            ))
        }
    }
}

/// Serves the endpoint until `stop` fires.
pub async fn serve(listener: TcpListener, state: Arc<HttpState>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => (stream, peer),
                Err(e) => {
                    tracing::warn!(error = %e, "http accept failed");
                    continue;
                }
            },
        };
        let (stream, peer) = stream;
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move {
                    let (method, path) = (req.method(), req.uri().path());
                    if path == "/quitquitquit" && method == Method::POST && state.quit.is_some() {
                        if let Some(denied) = quit_denied(&state, peer, local).await {
                            return Ok::<_, Infallible>(denied);
                        }
                    }
                    Ok(route(&state, method, path))
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "http connection error");
            }
        });
    }
}
