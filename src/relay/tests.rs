//! The splice over in-memory streams: what the client and the server see when the proxy
//! ends a session itself, at and between message boundaries.

use std::time::Duration;

use bytes::BytesMut;
use pgwire::messages::response::ErrorResponse;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{splice, Ended, Meters, Outcome};
use crate::wire;

/// A message with `tag` and `body`.
fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

struct Ends {
    client: DuplexStream,
    server: DuplexStream,
    cut: CancellationToken,
    relay: JoinHandle<Outcome>,
}

fn start(idle: Option<Duration>) -> Ends {
    let (client, mut proxy_client) = tokio::io::duplex(64 * 1024);
    let (mut proxy_upstream, server) = tokio::io::duplex(64 * 1024);
    let cut = CancellationToken::new();
    let token = cut.clone();
    let relay = tokio::spawn(async move {
        let cut = super::Cut::new(token);
        splice(
            &mut proxy_client,
            &mut proxy_upstream,
            &cut,
            idle,
            Meters::NONE,
        )
        .await
    });
    Ends {
        client,
        server,
        cut,
        relay,
    }
}

/// Reads `n` bytes.
async fn read_n(s: &mut DuplexStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    s.read_exact(&mut buf).await.expect("read");
    buf
}

/// Reads one whole message.
async fn read_message(s: &mut DuplexStream) -> BytesMut {
    wire::read_tagged(s, 1 << 20).await.expect("a message")
}

/// Reads to the end.
async fn rest(s: &mut DuplexStream) -> Vec<u8> {
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read to end");
    buf
}

/// The (code, message) of an ErrorResponse frame, with its severities checked.
fn fatal(frame: BytesMut) -> (String, String) {
    assert_eq!(frame[0], b'E', "an ErrorResponse, not {frame:?}");
    let e: ErrorResponse = wire::decode(frame, "ErrorResponse").expect("an ErrorResponse");
    let field = |k| {
        e.fields
            .iter()
            .find(|(f, _)| *f == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(field(b'S').as_deref(), Some("FATAL"));
    assert_eq!(field(b'V').as_deref(), Some("FATAL"));
    (field(b'C').expect("code"), field(b'M').expect("message"))
}

#[tokio::test]
async fn a_cut_between_messages_tells_the_client_and_terminates_the_server() {
    let mut e = start(None);
    let ready = message(b'Z', b"I");
    e.server.write_all(&ready).await.expect("write");
    assert_eq!(read_n(&mut e.client, ready.len()).await, ready);
    e.cut.cancel();
    let (code, text) = fatal(read_message(&mut e.client).await);
    assert_eq!(
        (code.as_str(), text.as_str()),
        (
            "57P01",
            "terminating connection due to administrator command"
        )
    );
    assert_eq!(rest(&mut e.client).await, b"");
    assert_eq!(rest(&mut e.server).await, message(b'X', b""), "Terminate");
    let outcome = e.relay.await.expect("join");
    assert_eq!((outcome.ended, outcome.told), (Ended::Cut, true));
}

#[tokio::test]
async fn a_cut_in_the_middle_of_a_message_lets_that_message_finish_and_no_more() {
    let mut e = start(None);
    let row = message(b'D', &[7; 100]);
    e.server.write_all(&row[..3]).await.expect("write");
    assert_eq!(read_n(&mut e.client, 3).await, &row[..3]);
    // The client is in the middle of a message too: the server gets no Terminate.
    e.client
        .write_all(&message(b'Q', b"select")[..4])
        .await
        .expect("write");
    assert_eq!(read_n(&mut e.server, 4).await.len(), 4);
    e.cut.cancel();
    let mut tail = row[3..].to_vec();
    tail.extend(message(b'C', b"SELECT 1\0"));
    e.server.write_all(&tail).await.expect("write");
    assert_eq!(read_n(&mut e.client, row.len() - 3).await, &row[3..]);
    let (code, _) = fatal(read_message(&mut e.client).await);
    assert_eq!(
        code, "57P01",
        "the error right after the row, CommandComplete dropped"
    );
    assert_eq!(rest(&mut e.client).await, b"");
    assert_eq!(rest(&mut e.server).await, b"", "no Terminate mid-message");
    assert!(e.relay.await.expect("join").told);
}

#[tokio::test(start_paused = true)]
async fn a_message_that_does_not_finish_in_time_ends_in_a_plain_close() {
    let mut e = start(None);
    let row = message(b'D', &[7; 100]);
    e.server.write_all(&row[..50]).await.expect("write");
    assert_eq!(read_n(&mut e.client, 50).await, &row[..50]);
    e.cut.cancel();
    // Nothing more comes from the server: after FINISH_MESSAGE the client sees the end.
    assert_eq!(rest(&mut e.client).await, b"", "no error inside a message");
    let outcome = e.relay.await.expect("join");
    assert_eq!((outcome.ended, outcome.told), (Ended::Cut, false));
}

#[tokio::test(start_paused = true)]
async fn an_idle_session_is_told_57p05() {
    let mut e = start(Some(Duration::from_secs(5)));
    let ready = message(b'Z', b"I");
    e.server.write_all(&ready).await.expect("write");
    assert_eq!(read_n(&mut e.client, ready.len()).await, ready);
    let (code, text) = fatal(read_message(&mut e.client).await);
    assert_eq!(
        (code.as_str(), text.as_str()),
        (
            "57P05",
            "terminating connection due to idle-session timeout"
        )
    );
    assert_eq!(rest(&mut e.server).await, message(b'X', b""), "Terminate");
    assert_eq!(e.relay.await.expect("join").ended, Ended::Idle);
}
