//! Both directions of a session until it ends, then, for a session the proxy ends itself,
//! the goodbye; in the pooled mode, until the client leaves, with the verdict whether the
//! server connection it leaves behind is provably idle.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::goodbye::{goodbye, GOODBYE};
use super::pin::PinScan;
use super::pipe::{Pipe, Track};
use super::prepared::{lock, Shared};
use super::rewrite::Rewrite;
use super::track::{self, Side};
use super::{Cut, PinReason};
use super::{Ended, Meters, Mode, Outcome};

/// Relays until both directions are done, an error occurs, `cut` fires, or nothing moved
/// for `idle` (when given), counting bytes into `meters` as they go. A cut or idle session
/// is ended politely (see [`super::goodbye`]) within [`super::FINISH_MESSAGE`] +
/// [`super::GOODBYE`]. The same as [`splice_with`] in [`Mode::Plain`].
pub async fn splice<C, U>(
    client: &mut C,
    upstream: &mut U,
    cut: &Cut,
    idle: Option<Duration>,
    meters: Meters<'_>,
) -> Outcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    splice_with(client, upstream, cut, idle, meters, Mode::Plain).await
}

/// [`splice`] in `mode`. In [`Mode::Pooled`] the client's Terminate is not forwarded and
/// the relay ends when the client leaves ([`Ended::Released`]), the server connection
/// left open (neither shut down nor told anything) with [`Outcome::server_idle`] saying
/// whether it may be reset and reused; the client's side is shut down within
/// [`super::GOODBYE`].
pub async fn splice_with<C, U>(
    client: &mut C,
    upstream: &mut U,
    cut: &Cut,
    idle: Option<Duration>,
    meters: Meters<'_>,
    mode: Mode,
) -> Outcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut up, mut down) = (Pipe::default(), Pipe::default());
    if mode == Mode::Pooled {
        up.track = Track::Client(Default::default());
        down.track = Track::server();
    }
    finish(client, upstream, up, down, cut, idle, meters).await
}

/// Transaction pooling: [`splice_with`] in [`Mode::Pooled`], the client's named statements
/// rewritten ([`super::prepared`]).
///
/// In [`Phase::Transaction`] it starts from `early` (what the client sent before the server
/// connection was assigned), scans the client's SQL for what pins it ([`super::pin`]), and
/// also ends with [`Ended::Returned`] as soon as the server connection is provably idle
/// outside a transaction block: in the common case before the final ReadyForQuery is
/// written to the client, which is left in [`Outcome::tail`] for the caller to write once
/// the connection is back. [`Outcome::pinned`] says whether (and why) the client must keep
/// the connection: the caller then goes on in [`Phase::Pinned`] (both sides stand settled,
/// as after a greeting), which relays until the client leaves, as session mode does.
pub async fn splice_transaction<C, U>(
    client: &mut C,
    upstream: &mut U,
    phase: Phase,
    cut: &Cut,
    idle: Option<Duration>,
    meters: Meters<'_>,
    prepared: &Shared,
) -> Outcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut up, mut down) = rewriting(prepared);
    let Phase::Transaction { early } = phase else {
        return finish(client, upstream, up, down, cut, idle, meters).await;
    };
    // One look per Query and Parse text: the rewrite judges pins with what it forgets; the
    // scan only the texts too long for the rewrite to collect.
    up.scan = Some(PinScan::long_only());
    if let Some(rewrite) = &mut up.rewrite {
        rewrite.judge_pins = true;
    }
    up.preload(early);
    down.hold = true;
    let mut outcome = finish(client, upstream, up, down, cut, idle, meters).await;
    if outcome.pinned.is_none() && lock(prepared).pinned {
        outcome.pinned = Some(PinReason::NamedStatement);
    }
    outcome
}

/// Which part of a transaction-mode session [`splice_transaction`] relays.
#[derive(Debug, Clone)]
pub enum Phase {
    /// One transaction, from what the client sent first.
    Transaction {
        /// Bytes the client sent before the server connection was assigned.
        early: Vec<u8>,
    },
    /// The rest of a pinned client's session.
    Pinned,
}

/// Both pipes of a pooled splice that rewrites named statements.
fn rewriting(prepared: &Shared) -> (Pipe, Pipe) {
    let (mut up, mut down) = (Pipe::default(), Pipe::default());
    up.track = Track::Client(Default::default());
    down.track = Track::server();
    up.rewrite = Some(Rewrite::new(prepared.clone(), true));
    down.rewrite = Some(Rewrite::new(prepared.clone(), false));
    (up, down)
}

async fn finish<C, U>(
    client: &mut C,
    upstream: &mut U,
    mut up: Pipe,
    mut down: Pipe,
    cut: &Cut,
    idle: Option<Duration>,
    meters: Meters<'_>,
) -> Outcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut ended = relay(client, upstream, &mut up, &mut down, cut, idle, meters).await;
    let mut server_idle = ended == Ended::Returned;
    if let (Track::Client(c), Track::Server { watch, read }) = (&up.track, &down.track) {
        if ended == (Ended::Closed { client_first: true }) && !down.done {
            ended = Ended::Released {
                terminate: c.terminate,
            };
            let server = Side {
                watch,
                frames: read,
            };
            server_idle = up.pending() == 0 && track::idle(client_side(&up, c), server);
            let _ = tokio::time::timeout(GOODBYE, client.shutdown()).await;
        }
    }
    let told = match ended {
        Ended::Cut | Ended::Idle => goodbye(client, upstream, &up, &mut down, ended, meters).await,
        Ended::Closed { .. } | Ended::Failed | Ended::Released { .. } | Ended::Returned => false,
    };
    let judged = up.rewrite.as_ref().and_then(|r| r.pinned);
    let pinned = up.scan.as_ref().and_then(|s| s.pinned).or(judged);
    let tail = match ended {
        Ended::Returned => down.take_pending(),
        _ => Vec::new(),
    };
    if ended != Ended::Returned {
        tracing::debug!(
            to_server = up.bytes,
            to_client = down.bytes,
            ?ended,
            told,
            server_idle,
            "session closed"
        );
    }
    Outcome {
        ended,
        to_server: up.bytes,
        to_client: down.bytes,
        told,
        server_idle,
        pinned,
        tail,
    }
}

/// Transaction mode: the server connection is provably idle outside a transaction block
/// (the client's bytes all written, the server's all read; some may be unwritten).
fn transaction_over(up: &Pipe, down: &Pipe) -> bool {
    if up.scan.is_none() || up.eof || down.eof {
        return false;
    }
    match (&up.track, &down.track) {
        (Track::Client(c), Track::Server { watch, read }) => {
            let server = Side {
                watch,
                frames: read,
            };
            up.pending() == 0 && track::idle(client_side(up, c), server)
        }
        _ => false,
    }
}

/// The client's side: followed as read.
fn client_side<'a, W>(pipe: &'a Pipe, watch: &'a W) -> Side<'a, W> {
    Side {
        watch,
        frames: &pipe.frames,
    }
}

async fn relay<C, U>(
    client: &mut C,
    upstream: &mut U,
    up: &mut Pipe,
    down: &mut Pipe,
    cut: &Cut,
    idle: Option<Duration>,
    meters: Meters<'_>,
) -> Ended
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut client_first = None;
    // Pooled: the session ends when the client leaves; the server connection stays.
    let client_ends = matches!(up.track, Track::Client(_));
    let mut idle_timer = idle.map(|d| (d, Box::pin(tokio::time::sleep(d))));
    let mut moved = 0u64;
    let copy = poll_fn(|cx| loop {
        if !up.done {
            let (r, w) = (Pin::new(&mut *client), Pin::new(&mut *upstream));
            if let Poll::Ready(r) = up.poll_copy(cx, r, w, meters.to_server) {
                r?;
                client_first.get_or_insert(true);
            }
        }
        if !down.done {
            let (r, w) = (Pin::new(&mut *upstream), Pin::new(&mut *client));
            if let Poll::Ready(r) = down.poll_copy(cx, r, w, meters.to_client) {
                r?;
                if !down.held {
                    client_first.get_or_insert(false);
                }
            }
        }
        if up.done && (down.done || client_ends) {
            return Poll::Ready(Ok::<_, io::Error>(false));
        }
        if transaction_over(up, down) {
            return Poll::Ready(Ok(true));
        }
        if down.held {
            // Not over after all (more was asked): write what was held and go on.
            down.held = false;
            continue;
        }
        if let Some((limit, timer)) = idle_timer.as_mut() {
            let total = up.bytes + down.bytes;
            if total != moved {
                moved = total;
                timer.as_mut().reset(tokio::time::Instant::now() + *limit);
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
            }
        }
        return Poll::Pending;
    });
    tokio::select! {
        biased; // once cut, relay no more
        () = cut.fired() => Ended::Cut,
        result = copy => match result {
            Ok(true) => Ended::Returned,
            Ok(false) => Ended::Closed { client_first: client_first.unwrap_or(true) },
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Ended::Idle,
            Err(e) => {
                tracing::debug!(error = %e, "session ended with an I/O error");
                Ended::Failed
            }
        },
    }
}
