//! Accepting connections: one accept loop per listener (TCP or Unix socket), an optional
//! connection limit, a per-connection span, and a graceful drain on shutdown: stop
//! accepting, let sessions finish for up to the shutdown timeout (or until a second signal),
//! then cut the rest. Nothing outlives the cut by more than [`CUT_GRACE`]: tasks still
//! running then (a cancel forwarded to a frozen server, say) are left behind and the
//! process exits.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::client;
use crate::error::{sqlstate, ClientError};
use crate::fds::{self, Spare};
use crate::frontend::peer::PeerAddr;
use crate::metrics::FdUse;
use crate::session;
use crate::target::TargetContext;
use crate::upstream::connect::tune_socket;

/// A bound listener.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// Unix socket (the path is removed on exit).
    Unix(UnixListener, PathBuf),
}

/// How long tasks get to end after the cut (a cut session says goodbye within
/// [`crate::relay::FINISH_MESSAGE`] + [`crate::relay::GOODBYE`]) before [`run`] returns without them.
pub const CUT_GRACE: Duration = Duration::from_secs(3);

/// When to stop.
#[derive(Debug, Clone)]
pub struct Stop {
    /// Stop accepting and start the drain.
    pub accepting: CancellationToken,
    /// Cut open sessions now, whatever is left of the drain (a second signal).
    pub now: CancellationToken,
    /// The longest the drain lasts (`--max-shutdown-delay`).
    pub drain: Duration,
}

/// How the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunReport {
    /// Sessions still open at the end of the drain, which were cut.
    pub cut_sessions: usize,
}

/// Serves `listeners` until `stop.accepting` fires, then lets sessions finish for at most
/// `stop.drain` or until `stop.now`. `limit` bounds concurrent client connections.
pub async fn run(
    listeners: Vec<(Listener, Arc<TargetContext>)>,
    limit: Option<Arc<Semaphore>>,
    stop: Stop,
) -> RunReport {
    let tracker = TaskTracker::new();
    let cut = CancellationToken::new();
    let spare = Arc::new(Spare::reserve());
    let mut loops = Vec::new();
    for (listener, ctx) in listeners {
        let acceptor = Acceptor {
            ctx,
            tracker: tracker.clone(),
            cut: cut.clone(),
            limit: limit.clone(),
            spare: spare.clone(),
            exhausted: fds::Episode::default(),
        };
        loops.push(tokio::spawn(acceptor.run(listener, stop.accepting.clone())));
    }
    for l in loops {
        let _ = l.await;
    }
    tracker.close();
    let open = tracker.len();
    if open > 0 {
        tracing::info!(open, drain = ?stop.drain, "waiting for open sessions to finish");
    }
    let why = tokio::select! {
        drained = tokio::time::timeout(stop.drain, tracker.wait()) => match drained {
            Ok(()) => return RunReport { cut_sessions: 0 },
            Err(_) => "shutdown timeout reached",
        },
        () = stop.now.cancelled() => "second signal",
    };
    let cut_sessions = tracker.len();
    if cut_sessions > 0 {
        tracing::warn!(cut_sessions, "{why}; cutting open sessions");
    }
    cut.cancel();
    if tokio::time::timeout(CUT_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = tracker.len(),
            grace = ?CUT_GRACE,
            "tasks still running after the cut; exiting without them"
        );
    }
    RunReport { cut_sessions }
}

struct Acceptor {
    ctx: Arc<TargetContext>,
    tracker: TaskTracker,
    cut: CancellationToken,
    limit: Option<Arc<Semaphore>>,
    /// The descriptor held back for refusing a client at exhaustion (shared by all).
    spare: Arc<Spare>,
    exhausted: fds::Episode,
}

/// Pause after a failed accept: never spin on a listener that stays readable.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How long a client accepted on the spare descriptor gets to send its startup packet
/// (so that it reads the error rather than a reset) before it is told anyway.
const SPARE_HANDSHAKE: Duration = Duration::from_secs(1);

impl Acceptor {
    async fn run(mut self, listener: Listener, shutdown: CancellationToken) {
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = accept(&listener) => accepted,
            };
            match accepted {
                Ok(accepted) => {
                    if self.spare.lost() {
                        self.spare.restore();
                    }
                    self.exhausted.over();
                    self.serve(accepted);
                }
                Err(e) if fds::is_exhaustion(&e) => self.out_of_fds(&listener, &e).await,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
        if let Listener::Unix(_, path) = &listener {
            let _ = std::fs::remove_file(path);
        }
    }

    fn serve(&self, accepted: Accepted) {
        match accepted {
            Accepted::Tcp(stream, peer) => {
                let _ = tune_socket(&stream, self.ctx.settings.tcp_keepalive);
                // A socket without a local address is already broken: drop it.
                if let Ok(local) = stream.local_addr() {
                    self.spawn(stream, PeerAddr::Tcp { peer, local });
                }
            }
            Accepted::Unix(stream) => {
                let cred = stream.peer_cred().ok().map(|c| (c.uid(), c.gid()));
                self.spawn(stream, PeerAddr::Unix(cred));
            }
        }
    }

    /// Accept failed for want of a descriptor. Linux says so even with no client waiting
    /// (the descriptor is allocated first): then the last accept simply took the last one.
    /// With a client waiting: count it, warn once per episode, and use the spare descriptor
    /// to accept the client and tell it (SQLSTATE 53000).
    async fn out_of_fds(&mut self, listener: &Listener, e: &std::io::Error) {
        if !fds::readable(listener.fd()) {
            return tokio::time::sleep(ACCEPT_BACKOFF).await;
        }
        self.ctx.metrics.all.fd_exhausted(FdUse::Accept);
        self.exhausted.warn(e);
        if !self.spare.release() {
            if self.spare.lost() {
                self.spare.restore();
            }
            return tokio::time::sleep(ACCEPT_BACKOFF).await;
        }
        let waiting = tokio::time::timeout(ACCEPT_BACKOFF, accept(listener)).await;
        let Ok(Ok(accepted)) = waiting else {
            self.spare.restore();
            return tokio::time::sleep(ACCEPT_BACKOFF).await;
        };
        match accepted {
            Accepted::Tcp(stream, peer) => self.refuse(stream, &peer),
            Accepted::Unix(stream) => self.refuse(stream, &"unix-socket"),
        }
    }

    /// Tells a client accepted on the spare descriptor that the proxy is out of
    /// descriptors, after reading its startup packet (briefly) so that it reads the error
    /// rather than a reset; then takes the spare back.
    fn refuse<S>(&self, mut stream: S, peer: &dyn std::fmt::Display)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let spare = self.spare.clone();
        self.tracker.spawn(
            async move {
                let _ =
                    tokio::time::timeout(SPARE_HANDSHAKE, client::handshake(&mut stream, false))
                        .await;
                client::reject(&mut stream, &fds::exhausted_error()).await;
                drop(stream);
                spare.restore();
            }
            .instrument(conn_span(&self.ctx, peer)),
        );
    }

    fn spawn<S>(&self, mut stream: S, peer: PeerAddr)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let span = conn_span(&self.ctx, &peer);
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
        // A token of the session's own, cancelled with the drain's: every stage of the
        // session waits on it (transaction mode: several times a transaction), and waiting on
        // the shared token locks its mutex, which every session's task would contend for.
        let cut = crate::relay::Cut::new(self.cut.child_token());
        ctx.metrics.accepted.inc();
        ctx.metrics.open.inc();
        self.tracker.spawn(
            async move {
                session::serve(&ctx, stream, peer, cut).await;
                ctx.metrics.open.dec();
                drop(permit);
            }
            .instrument(span),
        );
    }
}

fn conn_span(ctx: &TargetContext, peer: &dyn std::fmt::Display) -> tracing::Span {
    tracing::info_span!("conn", client = %peer, target = %ctx.name,
        user = tracing::field::Empty, database = tracing::field::Empty)
}

enum Accepted {
    Tcp(tokio::net::TcpStream, std::net::SocketAddr),
    Unix(tokio::net::UnixStream),
}

impl Listener {
    fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match self {
            Self::Tcp(l) => l.as_raw_fd(),
            Self::Unix(l, _) => l.as_raw_fd(),
        }
    }
}

async fn accept(listener: &Listener) -> std::io::Result<Accepted> {
    match listener {
        Listener::Tcp(l) => l.accept().await.map(|(s, a)| Accepted::Tcp(s, a)),
        Listener::Unix(l, _) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
    }
}
