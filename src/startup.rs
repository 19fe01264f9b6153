//! The StartupMessage. Parsed the way PostgreSQL's ProcessStartupPacket does: parameters
//! kept in the client's order, `_pq_.` protocol options collected in order, the terminator
//! required as the last byte. Rebuilt for the server against PostgreSQL's own length limit
//! (pgwire's encoder caps the whole packet at 10,000 bytes; PostgreSQL accepts 10,000 after
//! the length word), and without parameters the server would default to anyway.

use bytes::{BufMut, BytesMut};

use crate::wire::MAX_STARTUP_PACKET;

/// PostgreSQL's full protocol version number for 3.0, as NegotiateProtocolVersion carries it.
pub const PROTOCOL_3_0: i32 = 3 << 16;

/// A parsed startup packet (protocol major 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The minor protocol version asked for.
    pub minor: u16,
    /// Parameters other than `_pq_.` options, in the client's order.
    pub params: Vec<(String, String)>,
    /// `_pq_.` option names, in the client's order; none are supported.
    pub protocol_options: Vec<String>,
}

/// PostgreSQL's message for a packet whose parameters do not end exactly at its end.
pub const BAD_LAYOUT: &str = "invalid startup packet layout: expected terminator as last byte";

/// Parses a whole startup packet (length word and version included).
pub fn parse(packet: &[u8]) -> Result<Parsed, &'static str> {
    let body = packet.get(4..).filter(|b| b.len() >= 4).ok_or(BAD_LAYOUT)?;
    let minor = u16::from_be_bytes([body[2], body[3]]);
    let len = body.len();
    // PostgreSQL's strlen() stops at the zero byte it appends after the packet.
    let cstr = |from: usize| {
        let rest = &body[from.min(len)..];
        &rest[..rest.iter().position(|&c| c == 0).unwrap_or(rest.len())]
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let (mut params, mut protocol_options) = (Vec::new(), Vec::new());
    let mut offset = 4;
    while offset < len {
        let name = cstr(offset);
        if name.is_empty() {
            break; // the terminator
        }
        let value_at = offset + name.len() + 1;
        if value_at >= len {
            break; // a name without a value: the layout check below complains
        }
        let value = cstr(value_at);
        offset = value_at + value.len() + 1;
        if name.starts_with(b"_pq_.") {
            protocol_options.push(text(name));
        } else {
            params.push((text(name), text(value)));
        }
    }
    if offset + 1 != len {
        return Err(BAD_LAYOUT);
    }
    Ok(Parsed {
        minor,
        params,
        protocol_options,
    })
}

/// The rebuilt startup packet would exceed PostgreSQL's limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the startup packet rebuilt for the server (the IAM user and the database added) would be \
     {len} bytes, {} over PostgreSQL's limit of {MAX_STARTUP_PACKET} bytes; shorten the \
     parameters the client sends (options, application_name, ...)",
    len - MAX_STARTUP_PACKET
)]
pub struct TooLong {
    /// The length the packet would have, length word included.
    pub len: usize,
}

/// Builds a protocol 3.0 startup packet with `params` in order.
pub fn build<'a>(
    params: impl IntoIterator<Item = (&'a str, &'a str)> + Clone,
) -> Result<BytesMut, TooLong> {
    let len = 9 + params
        .clone()
        .into_iter()
        .map(|(k, v)| k.len() + v.len() + 2)
        .sum::<usize>();
    if len > MAX_STARTUP_PACKET {
        return Err(TooLong { len });
    }
    let mut buf = BytesMut::with_capacity(len);
    buf.put_u32(len as u32);
    buf.put_i32(PROTOCOL_3_0);
    for (k, v) in params {
        for s in [k, v] {
            buf.put_slice(s.as_bytes());
            buf.put_u8(0);
        }
    }
    buf.put_u8(0);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(minor: u8, body: &[u8]) -> Vec<u8> {
        let mut p = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        p.extend_from_slice(&[0, 3, 0, minor]);
        p.extend_from_slice(body);
        p
    }

    #[test]
    fn order_and_options_are_kept_as_sent() {
        let p = packet(2, b"user\0u\0_pq_.b\0x\0zz\0one\0_pq_.a\0y\0aa\0\0\0");
        let parsed = parse(&p).expect("valid");
        assert_eq!(parsed.minor, 2);
        assert_eq!(parsed.protocol_options, ["_pq_.b", "_pq_.a"]);
        let names: Vec<_> = parsed.params.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["user", "zz", "aa"]);
        assert_eq!(parsed.params[2].1, "");
    }

    #[test]
    fn the_terminator_must_be_the_last_byte() {
        for body in [&b"user\0u\0"[..], b"user\0u\0\0\0", b"user\0", b"", b"user"] {
            assert_eq!(parse(&packet(0, body)), Err(BAD_LAYOUT), "{body:?}");
        }
    }

    #[test]
    fn build_round_trips_and_stops_at_the_postgres_limit() {
        let built = build([("user", "u"), ("database", "d")]).expect("small");
        let parsed = parse(&built).expect("parses");
        assert_eq!(parsed.params.len(), 2);
        let fits = "x".repeat(MAX_STARTUP_PACKET - 9 - 2 - 1);
        assert_eq!(build([("a", fits.as_str())]).expect("fits").len(), 10_004);
        let over = format!("{fits}y");
        let err = build([("a", over.as_str())]).expect_err("one byte over");
        assert_eq!(err.len, 10_005);
        assert!(err.to_string().contains("1 over"), "{err}");
    }
}
