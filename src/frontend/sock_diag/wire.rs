//! The sock_diag messages: an `inet_diag_req_v2` for one socket by its exact address pair
//! (`SOCK_DIAG_BY_FAMILY`, INET_DIAG, as `ss` sends it), and the kernel's answer read back
//! into an owner uid. Only a full socket counts: a TIME_WAIT or SYN_RECV entry reports uid 0
//! and is not an answer.

use std::net::{IpAddr, SocketAddr};

use super::Found;

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

/// Request `seq` for the socket with local address `client` and remote address `server`.
pub fn request(seq: u32, client: SocketAddr, server: SocketAddr) -> Vec<u8> {
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

/// The sequence number an answer is for.
pub fn seq_of(answer: &[u8]) -> Option<u32> {
    u32_at(answer, 8)
}

fn malformed(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("sock_diag: {what}"),
    )
}

/// Reads the kernel's answer: an error (ENOENT: no such socket) or the socket's message,
/// whose id must be the one asked for.
pub fn parse(answer: &[u8], client: SocketAddr, server: SocketAddr) -> std::io::Result<Found> {
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
