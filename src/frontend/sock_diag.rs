//! The owner uid of a local TCP socket from the kernel's socket table, found by its exact
//! address pair: one sock_diag netlink request (`SOCK_DIAG_BY_FAMILY`, INET_DIAG, as `ss`
//! uses) for the socket whose local address is the client's and whose remote address is
//! ours. Only a full socket counts: a TIME_WAIT or SYN_RECV entry reports uid 0 and is not
//! an answer. One netlink socket serves the process ([`SockDiag`], opened once, reopened
//! after an error), so a lookup needs no descriptor of its own: it works when the process
//! is at its descriptor limit, and costs one send and one receive. The socket has a receive
//! timeout, so a lookup never hangs; a late answer to an earlier request is skipped by its
//! sequence number.

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

/// How long the kernel gets to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_HDR: usize = 16;
/// `inet_diag_req_v2`: family, protocol, ext, pad, states, then the socket id.
const REQ_LEN: usize = 8 + ID_LEN;
/// `inet_diag_sockid`: sport, dport, src[16], dst[16], if, cookie[2].
const ID_LEN: usize = 48;
/// In `inet_diag_msg`: family, state, timer, retrans, id, expires, rqueue, wqueue, then uid.
const MSG_UID_AT: usize = 4 + ID_LEN + 12;

/// TCP states in which a socket has an owner: ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT,
/// LAST_ACK, CLOSING (the client may have sent its startup packet and closed already).
pub const OWNED_STATES: [u8; 6] = [1, 4, 5, 8, 9, 11];

/// Outcome of a lookup that ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// The client's socket and its owner.
    Owner(u32),
    /// No socket with that address pair (or only one without an owner).
    Absent,
}

/// The process's sock_diag socket (lookups take turns on it; each takes microseconds).
#[derive(Debug, Default)]
pub struct SockDiag {
    socket: Mutex<Option<Socket>>,
    seq: AtomicU32,
}

fn open() -> std::io::Result<Socket> {
    let socket = Socket::new(
        Domain::from(libc::AF_NETLINK),
        Type::DGRAM,
        Some(Protocol::from(libc::NETLINK_SOCK_DIAG)),
    )?;
    socket.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    Ok(socket)
}

impl SockDiag {
    /// Opens the socket now (so that it exists before descriptors run short).
    pub fn new() -> Self {
        let me = Self::default();
        if let Ok(mut slot) = me.socket.lock() {
            *slot = open().ok();
        }
        me
    }

    /// The socket with local address `client` and remote address `server` (as the proxy
    /// sees its accepted connection: peer and local address). Both must be of one family.
    pub fn lookup(&self, client: SocketAddr, server: SocketAddr) -> std::io::Result<Found> {
        let mut slot = self
            .socket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(open()?);
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let result = match slot.as_ref() {
            Some(socket) => ask(socket, seq, client, server),
            None => Err(std::io::Error::other("no sock_diag socket")),
        };
        if result.is_err() {
            *slot = None; // a fresh socket next time: no stale state
        }
        result
    }
}

/// One request and its answer, skipping answers to earlier requests.
fn ask(
    socket: &Socket,
    seq: u32,
    client: SocketAddr,
    server: SocketAddr,
) -> std::io::Result<Found> {
    socket.send(&request(seq, client, server))?;
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    let mut buf = [0u8; 8192];
    loop {
        let n = (&*socket).read(&mut buf)?;
        let answer = &buf[..n];
        if u32_at(answer, 8) == Some(seq) {
            return parse(answer, client, server);
        }
        if Instant::now() > deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "sock_diag: no answer to this request",
            ));
        }
    }
}

fn family(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

/// The 48-byte socket id for local `a`, remote `b` (ports in network order, cookie "none").
fn sock_id(a: SocketAddr, b: SocketAddr) -> [u8; ID_LEN] {
    let mut id = [0u8; ID_LEN];
    id[0..2].copy_from_slice(&a.port().to_be_bytes());
    id[2..4].copy_from_slice(&b.port().to_be_bytes());
    for (at, ip) in [(4, a.ip()), (20, b.ip())] {
        match ip {
            IpAddr::V4(v4) => id[at..at + 4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => id[at..at + 16].copy_from_slice(&v6.octets()),
        }
    }
    id[40..48].copy_from_slice(&[0xff; 8]);
    id
}

fn request(seq: u32, client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let len = NLMSG_HDR + REQ_LEN;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    m.push(family(client.ip()));
    m.push(libc::IPPROTO_TCP as u8);
    m.extend_from_slice(&[0, 0]); // no extensions, padding
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    m.extend_from_slice(&sock_id(client, server));
    m
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_ne_bytes)
}

fn malformed(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("sock_diag: {what}"),
    )
}

/// Reads the kernel's answer: an error (ENOENT: no such socket) or the socket's message,
/// whose id must be the one asked for.
fn parse(answer: &[u8], client: SocketAddr, server: SocketAddr) -> std::io::Result<Found> {
    if answer.len() < NLMSG_HDR {
        return Err(malformed("short answer"));
    }
    let kind = u16::from_ne_bytes([answer[4], answer[5]]);
    let body = &answer[NLMSG_HDR..];
    if kind == NLMSG_ERROR {
        let errno = u32_at(body, 0).ok_or_else(|| malformed("short error"))? as i32;
        return match -errno {
            libc::ENOENT => Ok(Found::Absent),
            e => Err(std::io::Error::from_raw_os_error(e)),
        };
    }
    if kind != SOCK_DIAG_BY_FAMILY || body.len() < MSG_UID_AT + 4 {
        return Err(malformed("unexpected answer"));
    }
    let id = &body[4..4 + ID_LEN];
    if id[..40] != sock_id(client, server)[..40] {
        return Err(malformed("answer for another socket"));
    }
    if !OWNED_STATES.contains(&body[1]) {
        return Ok(Found::Absent);
    }
    let uid = u32_at(body, MSG_UID_AT).ok_or_else(|| malformed("short message"))?;
    Ok(Found::Owner(uid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_owner_of_a_connected_socket_and_not_of_a_closed_one() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (accepted, peer) = listener.accept().expect("accept");
        let local = accepted.local_addr().expect("local");
        let me = crate::frontend::users::own_uid();
        let diag = SockDiag::new();
        assert_eq!(diag.lookup(peer, local).expect("lookup"), Found::Owner(me));
        let unused: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        assert_eq!(diag.lookup(unused, local).expect("lookup"), Found::Absent);
        drop(client);
        // Once the client's socket is closed, its TIME_WAIT/FIN entry names no owner.
        drop(accepted);
        let deadline = Instant::now() + Duration::from_secs(10);
        while diag.lookup(peer, local).expect("lookup") != Found::Absent {
            assert!(
                Instant::now() < deadline,
                "a closed socket still has an owner"
            );
            std::thread::yield_now();
        }
    }
}
