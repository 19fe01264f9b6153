//! One direction of the splice: read into a buffer that exists only while data moves, write
//! it on, count it, and follow the message boundaries of what was written (in the pooled
//! mode, the client's messages as they are read, so Terminate is never written, and the
//! server's both as read and as written). In transaction mode the server's direction can
//! stop in front of writing a read that ends at ReadyForQuery('I') ([`Pipe::hold`]), so the
//! connection can go back to the pool before its client learns the transaction is over.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::frames::Frames;
use super::pin::PinScan;
use super::rewrite::Rewrite;
use super::track::{ClientWatch, ServerWatch};
use super::Meter;

/// Copy buffer size per direction while data moves.
const BUF: usize = 16 * 1024;
/// A read into a direction that holds no full-sized buffer takes at most this, on the stack;
/// one that fills it is followed by reads into a buffer of [`BUF`].
const FIRST: usize = 2048;

/// One direction of the splice.
#[derive(Default)]
pub(super) struct Pipe {
    buf: Vec<u8>,
    /// [`Pipe::rewrite`]: the other buffer of the two that a rewrite swaps (what was read,
    /// and what goes on), kept while data moves so a read reuses it.
    spare: Vec<u8>,
    pos: usize,
    /// The reader reached its end.
    pub eof: bool,
    unflushed: bool,
    /// Everything was written and the writer shut down.
    pub done: bool,
    /// Bytes written so far.
    pub bytes: u64,
    /// Where the written bytes stand between messages (for [`Track::Client`], the bytes
    /// read: the same once nothing is pending).
    pub frames: Frames,
    /// What is watched beyond boundaries.
    pub track: Track,
    /// Transaction mode ([`Track::Client`] only): the client's SQL scanned for what pins it.
    pub scan: Option<PinScan>,
    /// Transaction mode: named prepared statements rewritten ([`super::prepared`]).
    pub rewrite: Option<Rewrite>,
    /// [`Track::Server`]: after a read that ends at a ReadyForQuery('I'), stop before
    /// writing it ([`Pipe::held`]).
    pub hold: bool,
    /// Stopped as [`Pipe::hold`] says: the next [`Pipe::poll_copy`] writes the read and goes
    /// on, or [`Pipe::take_pending`] takes it.
    pub held: bool,
}

/// What a direction watches beyond message boundaries.
#[derive(Debug, Default)]
pub(super) enum Track {
    /// Boundaries only (the plain relay).
    #[default]
    Plain,
    /// The client's messages, as read: Terminate ends the reading and is dropped, and the
    /// writer (the server connection) is never shut down.
    Client(ClientWatch),
    /// The server's ReadyForQuery messages and its boundaries, as read ([`Pipe::frames`]
    /// follows what was written).
    Server {
        /// ReadyForQuery messages read.
        watch: ServerWatch,
        /// Where the bytes read stand.
        read: Frames,
    },
}

impl Track {
    /// The server's side, as read.
    pub fn server() -> Self {
        Self::Server {
            watch: ServerWatch::default(),
            read: Frames::default(),
        }
    }
}

impl Pipe {
    /// Read bytes not written yet.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Takes the bytes read and not written (after [`Pipe::held`], all of that read).
    pub fn take_pending(&mut self) -> Vec<u8> {
        self.held = false;
        let mut tail = std::mem::take(&mut self.buf);
        tail.drain(..self.pos);
        self.pos = 0;
        tail
    }

    /// Takes `bytes` (already read from the client, [`Track::Client`]) as if just read.
    pub fn preload(&mut self, bytes: Vec<u8>) {
        self.buf = bytes;
        self.pos = 0;
        self.watch_read();
        self.rewrite_read();
    }

    /// Replaces the bytes just read by what goes on ([`Rewrite`]); left in place when they
    /// go on unchanged (most of what a server sends).
    fn rewrite_read(&mut self) {
        if let Some(rewrite) = &mut self.rewrite {
            let input = &self.buf[self.pos..];
            if rewrite.skim(input) {
                return;
            }
            self.spare.clear();
            self.spare.reserve(input.len() + 64); // room for a rename or two
            rewrite.feed(input, &mut self.spare);
            std::mem::swap(&mut self.buf, &mut self.spare);
            self.pos = 0;
        }
    }

    /// Copies until the reader has nothing more for now (`Pending`, buffer released) or has
    /// ended and the writer is shut down (`Ready`; [`Track::Client`]: flushed, left open), or
    /// a read is [`Pipe::held`] (`Ready`, nothing of it written).
    pub fn poll_copy<R, W>(
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
            while self.pending() > 0 {
                ready!(self.poll_write(cx, w.as_mut(), usize::MAX, meter))?;
            }
            if self.eof {
                ready!(w.as_mut().poll_flush(cx))?;
                if !matches!(self.track, Track::Client(_)) {
                    ready!(w.as_mut().poll_shutdown(cx))?;
                }
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            if self.poll_fill(cx, r.as_mut())?.is_pending() {
                // Idle: give the buffers back.
                self.buf = Vec::new();
                self.spare = Vec::new();
                if self.unflushed {
                    ready!(w.as_mut().poll_flush(cx))?;
                    self.unflushed = false;
                }
                return Poll::Pending;
            }
            if self.held {
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Copies up to the end of the message in flight and not a byte further: `true` once the
    /// written bytes end at a message boundary, `false` if the reader ended first.
    pub fn poll_finish<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
        meter: &dyn Meter,
    ) -> Poll<io::Result<bool>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            let limit = self.frames.within_message();
            if limit == 0 {
                return Poll::Ready(Ok(true));
            }
            if self.pending() > 0 {
                ready!(self.poll_write(cx, w.as_mut(), limit, meter))?;
            } else if self.eof {
                return Poll::Ready(Ok(false));
            } else {
                ready!(self.poll_fill(cx, r.as_mut()))?;
            }
        }
    }

    /// Writes at most `limit` of the pending bytes once.
    fn poll_write<W>(
        &mut self,
        cx: &mut Context<'_>,
        w: Pin<&mut W>,
        limit: usize,
        meter: &dyn Meter,
    ) -> Poll<io::Result<()>>
    where
        W: AsyncWrite + ?Sized,
    {
        let end = self.buf.len().min(self.pos.saturating_add(limit));
        let n = ready!(w.poll_write(cx, &self.buf[self.pos..end]))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        let written = &self.buf[self.pos..self.pos + n];
        match &mut self.track {
            Track::Plain | Track::Server { .. } => self.frames.advance(written),
            Track::Client(_) => {} // followed as read
        }
        self.pos += n;
        self.bytes += n as u64;
        meter.add(n as u64);
        self.unflushed = true;
        Poll::Ready(Ok(()))
    }

    /// Reads once into the (emptied) buffer; a read of 0 bytes marks the end, and so does
    /// the client's Terminate ([`Track::Client`]), which is cut off with all after it.
    fn poll_fill<R>(&mut self, cx: &mut Context<'_>, r: Pin<&mut R>) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
    {
        self.buf.clear();
        self.pos = 0;
        if self.buf.capacity() < BUF && self.spare.capacity() >= BUF {
            // What a rewrite left in the buffer may be short: read into the full-sized one.
            std::mem::swap(&mut self.buf, &mut self.spare);
            self.buf.clear();
        }
        if self.buf.capacity() < BUF {
            // No full-sized buffer yet: read on the stack first, so a direction with nothing
            // to read, or a short message (most of a transaction's), allocates none.
            let mut first = [MaybeUninit::<u8>::uninit(); FIRST];
            let mut read = ReadBuf::uninit(&mut first);
            ready!(r.poll_read(cx, &mut read))?;
            let got = read.filled();
            self.buf
                .reserve_exact(if got.len() == FIRST { BUF } else { got.len() });
            self.buf.extend_from_slice(got);
        } else {
            let spare: &mut [MaybeUninit<u8>] = self.buf.spare_capacity_mut();
            let mut read = ReadBuf::uninit(spare);
            ready!(r.poll_read(cx, &mut read))?;
            let n = read.filled().len();
            // SAFETY: `ReadBuf` guarantees the first `n` bytes were initialised.
            unsafe { self.buf.set_len(n) };
        }
        self.eof = self.buf.is_empty();
        self.watch_read();
        self.rewrite_read();
        Poll::Ready(Ok(()))
    }

    /// Follows the bytes just read. [`Track::Client`]: Terminate is cut off with all after
    /// it, and ends the reading. [`Track::Server`]: a read that ends at ReadyForQuery('I') is
    /// held if [`Pipe::hold`].
    fn watch_read(&mut self) {
        if let Track::Server { watch, read } = &mut self.track {
            let before = (watch.ready, watch.status);
            read.follow(&self.buf, watch);
            let answered = (watch.ready, watch.status) != before; // a ReadyForQuery ended here
            self.held = self.hold && answered && watch.is_idle() && read.at_boundary();
        }
        if let Track::Client(watch) = &mut self.track {
            let kept = self.frames.follow(&self.buf, watch);
            if kept < self.buf.len() {
                // Terminate: the session ends in front of it; nothing after it counts.
                self.buf.truncate(kept);
                self.eof = true;
            }
            if let Some(scan) = &mut self.scan {
                scan.feed(&self.buf);
            }
        }
    }
}
