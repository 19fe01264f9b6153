//! Both directions of a session until it ends, then, for a session the proxy ends itself,
//! the goodbye.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::goodbye::goodbye;
use super::pipe::Pipe;
use super::{Ended, Meters, Outcome};

/// Relays until both directions are done, an error occurs, `cut` fires, or nothing moved
/// for `idle` (when given), counting bytes into `meters` as they go. A cut or idle session
/// is ended politely (see [`super::goodbye`]) within [`super::FINISH_MESSAGE`] +
/// [`super::GOODBYE`].
pub async fn splice<C, U>(
    client: &mut C,
    upstream: &mut U,
    cut: CancellationToken,
    idle: Option<Duration>,
    meters: Meters<'_>,
) -> Outcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut up = Pipe::default();
    let mut down = Pipe::default();
    let ended = relay(client, upstream, &mut up, &mut down, cut, idle, meters).await;
    let told = match ended {
        Ended::Cut | Ended::Idle => goodbye(client, upstream, &up, &mut down, ended, meters).await,
        Ended::Closed { .. } | Ended::Failed => false,
    };
    tracing::debug!(
        to_server = up.bytes,
        to_client = down.bytes,
        ?ended,
        told,
        "session closed"
    );
    Outcome {
        ended,
        to_server: up.bytes,
        to_client: down.bytes,
        told,
    }
}

async fn relay<C, U>(
    client: &mut C,
    upstream: &mut U,
    up: &mut Pipe,
    down: &mut Pipe,
    cut: CancellationToken,
    idle: Option<Duration>,
    meters: Meters<'_>,
) -> Ended
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut client_first = None;
    let mut idle_timer = idle.map(|d| (d, Box::pin(tokio::time::sleep(d))));
    let mut moved = 0u64;
    let copy = poll_fn(|cx| {
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
                client_first.get_or_insert(false);
            }
        }
        if up.done && down.done {
            return Poll::Ready(Ok::<_, io::Error>(()));
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
        Poll::Pending
    });
    tokio::select! {
        biased; // once cut, relay no more
        () = cut.cancelled() => Ended::Cut,
        result = copy => match result {
            Ok(()) => Ended::Closed { client_first: client_first.unwrap_or(true) },
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Ended::Idle,
            Err(e) => {
                tracing::debug!(error = %e, "session ended with an I/O error");
                Ended::Failed
            }
        },
    }
}
