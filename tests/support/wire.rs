//! The Postgres wire protocol by hand, for tests that need bytes no driver sends: frontend
//! messages, a raw client greeted by the proxy, reading backend frames with a bound, and the
//! fields of an ErrorResponse.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{startup, StandIn};

/// How long a test waits for the proxy's answer.
const ANSWER: Duration = Duration::from_secs(10);

/// A frontend message with `tag` and `body`.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// Reads until ReadyForQuery('I') (bounded), returning all bytes.
pub async fn until_ready(raw: &mut TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    while !seen.ends_with(&[b'Z', 0, 0, 0, 5, b'I']) {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(ANSWER, raw.read(&mut buf))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(n > 0, "closed before ReadyForQuery");
        seen.extend_from_slice(&buf[..n]);
    }
    seen
}

/// A raw client (startup with user and database only) greeted by the proxy.
pub async fn raw_client(si: &StandIn, addr: SocketAddr) -> TcpStream {
    let mut raw = TcpStream::connect(addr).await.expect("raw");
    let i = &si.info;
    let startup = startup(3, 0, &[("user", &i.iam_user), ("database", &i.database)]);
    raw.write_all(&startup).await.expect("startup");
    until_ready(&mut raw).await;
    raw
}

/// A simple-protocol Query.
pub fn query(sql: &str) -> Vec<u8> {
    message(b'Q', &[sql.as_bytes(), b"\0"].concat())
}

/// Reads whole frames (type, body) until one whose type is in `stop` or the peer closes,
/// within 10 s.
pub async fn frames_until(s: &mut TcpStream, stop: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let read = async {
        let mut out = Vec::new();
        loop {
            let Ok(tag) = s.read_u8().await else {
                return out;
            };
            let len = s.read_u32().await.expect("length") as usize;
            let mut body = vec![0; len - 4];
            s.read_exact(&mut body).await.expect("body");
            out.push((tag, body));
            if stop.contains(&tag) {
                return out;
            }
        }
    };
    tokio::time::timeout(ANSWER, read)
        .await
        .expect("an answer within 10 s")
}

/// The field `code` (b'C': SQLSTATE, b'M': message) of an ErrorResponse body ("" if none).
pub fn error_field(body: &[u8], code: u8) -> String {
    body.split(|b| *b == 0)
        .find(|f| f.first() == Some(&code))
        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
        .unwrap_or_default()
}
