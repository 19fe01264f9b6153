//! The owner uid of a local TCP socket from `/proc/net/tcp` and `/proc/net/tcp6`: the
//! fallback when sock_diag netlink is unavailable. The line whose local address is the
//! client's and whose remote address is ours, in a state with an owner.

use std::net::{IpAddr, SocketAddr};

use super::sock_diag::{Found, OWNED_STATES};

/// An address as the kernel prints it there: each 32-bit word of the address in host byte
/// order as 8 hex digits, then the port as 4.
fn hex(addr: SocketAddr) -> String {
    let bytes: Vec<u8> = match addr.ip() {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    let mut s: String = bytes
        .chunks(4)
        .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
        .collect();
    s.push_str(&format!(":{:04X}", addr.port()));
    s
}

/// The same pair as an IPv6 socket sees a v4 connection (`::ffff:a.b.c.d`).
fn mapped(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), addr.port()),
        IpAddr::V6(_) => addr,
    }
}

/// Looks the pair up in one table's text.
pub fn find(table: &str, client: SocketAddr, server: SocketAddr) -> Found {
    let (local, remote) = (hex(client), hex(server));
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || f[1] != local || f[2] != remote {
            continue;
        }
        let state = u8::from_str_radix(f[3], 16).unwrap_or(0);
        return match f[7].parse() {
            Ok(uid) if OWNED_STATES.contains(&state) => Found::Owner(uid),
            _ => Found::Absent,
        };
    }
    Found::Absent
}

/// Looks the pair up in `/proc/net/tcp` (v4) or `/proc/net/tcp6` (v6, and v4 pairs of
/// dual-stack sockets).
pub fn lookup(client: SocketAddr, server: SocketAddr) -> std::io::Result<Found> {
    if client.is_ipv4() {
        let v4 = std::fs::read_to_string("/proc/net/tcp")?;
        if let Found::Owner(uid) = find(&v4, client, server) {
            return Ok(Found::Owner(uid));
        }
        let v6 = std::fs::read_to_string("/proc/net/tcp6").unwrap_or_default();
        return Ok(find(&v6, mapped(client), mapped(server)));
    }
    let v6 = std::fs::read_to_string("/proc/net/tcp6")?;
    Ok(find(&v6, client, server))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0
   1: 0100007F:D2A4 0100007F:1538 01 00000000:00000000 00:00000000 00000000  1001        0 2 1 0
   2: 0100007F:1538 0100007F:D2A4 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0
   3: 0100007F:D2A5 0100007F:1538 06 00000000:00000000 03:00001000 00000000     0        0 0 3 0
";

    #[test]
    fn matches_the_exact_pair_in_an_owned_state() {
        let server: SocketAddr = "127.0.0.1:5432".parse().expect("addr");
        let client: SocketAddr = "127.0.0.1:53924".parse().expect("addr");
        if cfg!(target_endian = "little") {
            assert_eq!(find(TABLE, client, server), Found::Owner(1001));
        }
        // TIME_WAIT (uid 0 in the table) is no answer.
        let gone: SocketAddr = "127.0.0.1:53925".parse().expect("addr");
        assert_eq!(find(TABLE, gone, server), Found::Absent);
    }

    #[test]
    fn finds_a_live_socket_of_this_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let _client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (accepted, peer) = listener.accept().expect("accept");
        let local = accepted.local_addr().expect("local");
        let me = crate::frontend::users::own_uid();
        assert_eq!(lookup(peer, local).expect("lookup"), Found::Owner(me));
    }
}
