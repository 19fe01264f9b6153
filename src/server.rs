//! Accepting connections: one accept loop per listener (TCP or Unix socket), an optional
//! connection limit, a per-connection span, and a graceful drain on shutdown: stop
//! accepting, let sessions finish for up to the shutdown timeout, then cut the rest.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::client;
use crate::error::{sqlstate, ClientError};
use crate::session::{self, TargetContext};
use crate::upstream::connect::tune_socket;

/// A bound listener.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// Unix socket (the path is removed on exit).
    Unix(UnixListener, PathBuf),
}

/// How the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunReport {
    /// Sessions still open at the end of the drain, which were cut.
    pub cut_sessions: usize,
}

/// Serves `listeners` until `stop_accepting` fires, then lets sessions finish for at most
/// `drain`. `limit` bounds concurrent client connections.
pub async fn run(
    listeners: Vec<(Listener, Arc<TargetContext>)>,
    limit: Option<Arc<Semaphore>>,
    stop_accepting: CancellationToken,
    drain: std::time::Duration,
) -> RunReport {
    let tracker = TaskTracker::new();
    let cut = CancellationToken::new();
    let mut loops = Vec::new();
    for (listener, ctx) in listeners {
        let acceptor = Acceptor {
            ctx,
            tracker: tracker.clone(),
            cut: cut.clone(),
            limit: limit.clone(),
        };
        loops.push(tokio::spawn(acceptor.run(listener, stop_accepting.clone())));
    }
    for l in loops {
        let _ = l.await;
    }
    tracker.close();
    let open = tracker.len();
    if open > 0 {
        tracing::info!(open, ?drain, "waiting for open sessions to finish");
    }
    if tokio::time::timeout(drain, tracker.wait()).await.is_ok() {
        return RunReport { cut_sessions: 0 };
    }
    let cut_sessions = tracker.len();
    tracing::warn!(
        cut_sessions,
        "shutdown timeout reached; cutting open sessions"
    );
    cut.cancel();
    tracker.wait().await;
    RunReport { cut_sessions }
}

struct Acceptor {
    ctx: Arc<TargetContext>,
    tracker: TaskTracker,
    cut: CancellationToken,
    limit: Option<Arc<Semaphore>>,
}

impl Acceptor {
    async fn run(self, listener: Listener, shutdown: CancellationToken) {
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = accept(&listener) => accepted,
            };
            match accepted {
                Ok(Accepted::Tcp(stream, peer)) => {
                    let _ = tune_socket(&stream, self.ctx.settings.tcp_keepalive);
                    self.spawn(stream, &peer);
                }
                Ok(Accepted::Unix(stream)) => self.spawn(stream, &"unix-socket"),
                Err(e) => {
                    // EMFILE and friends: report and keep going; never spin hot.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
        if let Listener::Unix(_, path) = &listener {
            let _ = std::fs::remove_file(path);
        }
    }

    fn spawn<S>(&self, mut stream: S, peer: &dyn std::fmt::Display)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let span = tracing::info_span!("conn", client = %peer, target = %self.ctx.name,
            user = tracing::field::Empty, database = tracing::field::Empty);
        let permit = match &self.limit {
            None => None,
            Some(limit) => match limit.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    self.ctx.metrics.all.refused_at_limit.inc();
                    self.tracker.spawn(
                        async move {
                            tracing::warn!("connection limit reached; client refused");
                            let e = ClientError::new(
                                sqlstate::TOO_MANY_CONNECTIONS,
                                "sorry, too many clients already (pg-iam-proxy max_connections)",
                            );
                            client::reject(&mut stream, &e).await;
                        }
                        .instrument(span),
                    );
                    return;
                }
            },
        };
        let ctx = self.ctx.clone();
        let cut = self.cut.clone();
        ctx.metrics.accepted.inc();
        ctx.metrics.open.inc();
        self.tracker.spawn(
            async move {
                session::serve(&ctx, stream, cut).await;
                ctx.metrics.open.dec();
                drop(permit);
            }
            .instrument(span),
        );
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream, std::net::SocketAddr),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> std::io::Result<Accepted> {
    match listener {
        Listener::Tcp(l) => l.accept().await.map(|(s, a)| Accepted::Tcp(s, a)),
        Listener::Unix(l, _) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
    }
}
