//! After login: splice both directions with no per-message parsing until both sides are
//! done (a half-close is passed on), an error occurs, or the proxy cuts the session at the
//! end of a shutdown drain.
//!
//! Unlike `tokio::io::copy_bidirectional`, a direction holds its copy buffer only while
//! data is moving: the buffer is released whenever the reader has nothing more, so an idle
//! session costs no buffer memory (most proxied sessions are idle most of the time). Bytes
//! are counted into a [`Meter`] per direction as they are written, so a long session shows
//! its traffic while it lasts, not only when it ends.

use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

/// Copy buffer size per direction while data moves.
const BUF: usize = 16 * 1024;

/// Where one direction's byte count goes as data moves (a metrics counter, in the proxy).
pub trait Meter: Sync {
    /// Counts `bytes` more written.
    fn add(&self, bytes: u64);
}

/// No metering.
impl Meter for () {
    fn add(&self, _: u64) {}
}

/// The meters of both directions.
#[derive(Clone, Copy)]
pub struct Meters<'a> {
    /// Client -> server.
    pub to_server: &'a dyn Meter,
    /// Server -> client.
    pub to_client: &'a dyn Meter,
}

impl Meters<'static> {
    /// Counting nothing beyond the [`Outcome`].
    pub const NONE: Self = Self {
        to_server: &(),
        to_client: &(),
    };
}

/// One direction of the splice.
#[derive(Default)]
struct Pipe {
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
    unflushed: bool,
    done: bool,
    bytes: u64,
}

impl Pipe {
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
        meter: &dyn Meter,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            while self.pos < self.buf.len() {
                let n = ready!(w.as_mut().poll_write(cx, &self.buf[self.pos..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.bytes += n as u64;
                meter.add(n as u64);
                self.unflushed = true;
            }
            if self.eof {
                ready!(w.as_mut().poll_flush(cx))?;
                ready!(w.as_mut().poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            self.buf.clear();
            self.pos = 0;
            if self.buf.capacity() == 0 {
                self.buf.reserve_exact(BUF);
            }
            let spare: &mut [MaybeUninit<u8>] = self.buf.spare_capacity_mut();
            let mut read = ReadBuf::uninit(spare);
            match r.as_mut().poll_read(cx, &mut read) {
                Poll::Pending => {
                    self.buf = Vec::new(); // idle: give the buffer back
                    if self.unflushed {
                        ready!(w.as_mut().poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let n = read.filled().len();
                    // SAFETY: `ReadBuf` guarantees the first `n` bytes were initialised.
                    unsafe { self.buf.set_len(n) };
                    self.eof = n == 0;
                }
            }
        }
    }
}

/// How a splice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Both directions finished; `client_first` says who closed first.
    Closed {
        /// The client closed before the server did.
        client_first: bool,
    },
    /// An I/O error on one side.
    Failed,
    /// Cut at the end of a shutdown drain.
    Cut,
    /// No traffic either way for the idle timeout.
    Idle,
}

/// How a splice ended and what it moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Why it ended.
    pub ended: Ended,
    /// Bytes client -> server.
    pub to_server: u64,
    /// Bytes server -> client.
    pub to_client: u64,
}

/// Relays until both directions are done, an error occurs, `cut` fires, or nothing moved
/// for `idle` (when given), counting bytes into `meters` as they go.
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
    let mut client_first = None;
    let mut idle_timer = idle.map(|d| (d, Box::pin(tokio::time::sleep(d))));
    let mut moved = 0u64;
    let copy = poll_fn(|cx| {
        if !up.done {
            if let Poll::Ready(r) = up.poll_copy(
                cx,
                Pin::new(&mut *client),
                Pin::new(&mut *upstream),
                meters.to_server,
            ) {
                r?;
                client_first.get_or_insert(true);
            }
        }
        if !down.done {
            if let Poll::Ready(r) = down.poll_copy(
                cx,
                Pin::new(&mut *upstream),
                Pin::new(&mut *client),
                meters.to_client,
            ) {
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
    let ended = tokio::select! {
        result = copy => match result {
            Ok(()) => Ended::Closed { client_first: client_first.unwrap_or(true) },
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Ended::Idle,
            Err(e) => {
                tracing::debug!(error = %e, "session ended with an I/O error");
                Ended::Failed
            }
        },
        () = cut.cancelled() => Ended::Cut,
    };
    tracing::debug!(
        to_server = up.bytes,
        to_client = down.bytes,
        ?ended,
        "session closed"
    );
    Outcome {
        ended,
        to_server: up.bytes,
        to_client: down.bytes,
    }
}
