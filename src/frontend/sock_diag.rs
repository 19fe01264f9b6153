//! The owner uid of a local TCP socket from the kernel's socket table, found by its exact
//! address pair: one sock_diag netlink request ([`wire`]) for the socket whose local address
//! is the client's and whose remote address is ours.
//!
//! A lookup runs on the async worker without a thread hop: the netlink sockets are
//! non-blocking under tokio's [`AsyncFd`], and a lookup awaits the kernel's answer within
//! [`ANSWER_TIMEOUT`] (the kernel answers within the send itself; a slow kernel delays only
//! the client it is asked about). [`SockDiag`] keeps a few idle sockets: a lookup takes one
//! (no lock is held while it waits), asks, and gives it back; a socket that failed or timed
//! out is closed (a fresh one next time: no stale state), and a late answer to an earlier
//! request is skipped by its sequence number. One socket is opened at start, so a lookup
//! needs no descriptor of its own when the process is at its descriptor limit. (One socket
//! behind a tokio Mutex was measured too, `benches/identify.rs`: 1.2 µs a lookup against the
//! pool's 1.4 µs, but 17.2 µs against 12.5 µs for 8 lookups at once, which queue on it.)

mod wire;

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;

pub use wire::OWNED_STATES;

/// How long the kernel gets to answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// Idle sockets kept for the next lookups (more are opened while more lookups run at once).
const IDLE_MAX: usize = 4;

/// Outcome of a lookup that ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// The client's socket and its owner.
    Owner(u32),
    /// No socket with that address pair (or only one without an owner).
    Absent,
}

/// The process's sock_diag sockets.
#[derive(Debug, Default)]
pub struct SockDiag {
    /// Opened at start, before the runtime runs: registered with it at first use.
    spare: Mutex<Option<Socket>>,
    /// Sockets no lookup is using.
    idle: Mutex<Vec<AsyncFd<Socket>>>,
    seq: AtomicU32,
}

fn open() -> std::io::Result<Socket> {
    let socket = Socket::new(
        Domain::from(libc::AF_NETLINK),
        Type::DGRAM,
        Some(Protocol::from(libc::NETLINK_SOCK_DIAG)),
    )?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// `socket` under the runtime's reactor (which must be running).
fn register(socket: Socket) -> std::io::Result<AsyncFd<Socket>> {
    // SAFETY: the Socket owns its descriptor and closes it only when dropped; the AsyncFd
    // owns the Socket, so the descriptor stays open and the same while it is registered.
    unsafe { AsyncFd::register(socket) }.map_err(|e| e.into_parts().1)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SockDiag {
    /// Opens a socket now (so that one exists before descriptors run short).
    pub fn new() -> Self {
        let me = Self::default();
        *lock(&me.spare) = open().ok();
        me
    }

    /// The socket with local address `client` and remote address `server` (as the proxy
    /// sees its accepted connection: peer and local address). Both must be of one family.
    /// Must run within the tokio runtime.
    pub async fn lookup(&self, client: SocketAddr, server: SocketAddr) -> std::io::Result<Found> {
        let socket = self.take()?;
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let request = wire::request(seq, client, server);
        let mut buf = [0u8; 8192];
        // On an error the socket is dropped here: closed, not given back.
        let n = exchange(&socket, &request, seq, ANSWER_TIMEOUT, &mut buf).await?;
        self.give_back(socket);
        wire::parse(&buf[..n], client, server)
    }

    fn take(&self) -> std::io::Result<AsyncFd<Socket>> {
        if let Some(socket) = lock(&self.idle).pop() {
            return Ok(socket);
        }
        let spare = lock(&self.spare).take();
        register(match spare {
            Some(socket) => socket,
            None => open()?,
        })
    }

    fn give_back(&self, socket: AsyncFd<Socket>) {
        let mut idle = lock(&self.idle);
        if idle.len() < IDLE_MAX {
            idle.push(socket);
        }
    }
}

/// Sends `request` and reads into `buf` the answer that carries sequence number `seq`
/// (skipping answers to earlier requests), within `within`; its length.
async fn exchange(
    socket: &AsyncFd<Socket>,
    request: &[u8],
    seq: u32,
    within: Duration,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    let answer = async {
        loop {
            let mut ready = socket.writable().await?;
            if let Ok(sent) = ready.try_io(|s| s.get_ref().send(request)) {
                sent?;
                break;
            }
        }
        loop {
            let mut ready = socket.readable().await?;
            let Ok(read) = ready.try_io(|s| s.get_ref().read(buf)) else {
                continue; // not readable after all
            };
            let n = read?;
            if wire::seq_of(&buf[..n]) == Some(seq) {
                return Ok(n);
            }
        }
    };
    tokio::time::timeout(within, answer)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "sock_diag: no answer in time",
            ))
        })
}

#[cfg(test)]
mod tests;
