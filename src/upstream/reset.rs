//! Resetting a server connection between two clients of a pool: the reset query (e.g.
//! `DISCARD ALL`) as a simple Query, read to ReadyForQuery('I'). Notices, notifications,
//! ParameterStatus (RESET ALL reports the values it restores), CommandComplete and
//! EmptyQueryResponse are swallowed; an ErrorResponse, any other message, another status
//! or the timeout is a [`ResetError`], after which the caller closes the connection.
//!
//! [`has_pending_input`] tells whether an idle connection has something waiting (the server
//! closed it, or sent a FATAL on shutdown): such a connection is never handed out.
//! [`tls_has_pending_input`] says the same of a TLS connection, first without a read.

use std::pin::Pin;
use std::task::{Context, Waker};
use std::time::Duration;

use bytes::BytesMut;
use pgwire::messages::simplequery::Query;
use pgwire::messages::startup::ParameterStatus;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::auth::ServerError;
use super::exchange;
use crate::wire::{self, EncodeError, FrameError};

/// A reset that brought the connection back to ReadyForQuery('I').
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ResetOk {
    /// ParameterStatus values the server reported during the reset, in order.
    pub reported: Vec<(String, String)>,
    /// NoticeResponse and NotificationResponse messages swallowed.
    pub swallowed: usize,
}

/// Why a reset failed (the connection must be closed).
#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    /// The server refused the reset query.
    #[error("the reset query failed: {} (SQLSTATE {})", .0.message, .0.code)]
    Server(ServerError),
    /// A message that has no place in the answer to a reset.
    #[error("unexpected message '{}' in the answer to the reset query", char::from(*.0))]
    Unexpected(u8),
    /// ReadyForQuery with a status other than 'I'.
    #[error("the server was not idle after the reset (status '{}')", char::from(*.0))]
    NotIdle(u8),
    /// No ReadyForQuery in time.
    #[error("the reset did not finish within {0:?}")]
    Timeout(Duration),
    /// The exchange broke (I/O, closed, bad framing).
    #[error("reset exchange failed: {0}")]
    Protocol(#[from] FrameError),
    /// The query did not encode.
    #[error("{0}")]
    Encode(#[from] EncodeError),
}

impl ResetError {
    /// Short reason for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Server(_) => "server_error",
            Self::Unexpected(_) => "unexpected",
            Self::NotIdle(_) => "not_idle",
            Self::Timeout(_) => "timeout",
            Self::Protocol(_) => "protocol",
            Self::Encode(_) => "encode",
        }
    }
}

/// Sends `query` and reads its answer to ReadyForQuery('I'), all within `timeout`.
pub async fn reset<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    query: &str,
    timeout: Duration,
) -> Result<ResetOk, ResetError> {
    let mut buf = BytesMut::new();
    wire::encode(&Query::new(query.to_owned()), "Query", &mut buf)?;
    tokio::time::timeout(timeout, round_trip(stream, &buf))
        .await
        .map_err(|_| ResetError::Timeout(timeout))?
}

async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8],
) -> Result<ResetOk, ResetError> {
    wire::send(stream, request)
        .await
        .map_err(FrameError::from)?;
    let mut ok = ResetOk::default();
    loop {
        let frame = exchange::next(stream).await?;
        match frame[0] {
            b'C' | b'I' => {}
            b'N' | b'A' => ok.swallowed += 1,
            b'S' => {
                let p: ParameterStatus = wire::decode(frame, "ParameterStatus")?;
                ok.reported.push((p.name, p.value));
            }
            b'E' => return Err(ResetError::Server(exchange::server_error(frame)?)),
            b'Z' => {
                return match exchange::ready_status(&frame) {
                    b'I' => Ok(ok),
                    status => Err(ResetError::NotIdle(status)),
                }
            }
            tag => return Err(ResetError::Unexpected(tag)),
        }
    }
}

/// True if bytes or the end of the stream are waiting on `stream`'s read side, looking once
/// without waiting (as of the runtime's last look at the socket). An idle pooled
/// connection has nothing waiting. A true answer may have consumed a byte: the connection
/// must then be closed. Call it only on a connection no task is reading.
pub fn has_pending_input<S: AsyncRead + Unpin>(stream: &mut S) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(Waker::noop());
    // Ready: bytes, the end, or an error; none of them is a clean idle connection.
    Pin::new(stream).poll_read(&mut cx, &mut buf).is_ready()
}

/// [`has_pending_input`] for a TLS connection, which reads only when something may be
/// waiting: decrypted bytes not taken yet, an end seen, or a socket that is not known to
/// have nothing (as of the runtime's last look). An idle connection in a pool is checked
/// on every checkout; most have nothing, and finding that needs no read through the TLS
/// layer.
pub fn tls_has_pending_input(stream: &mut TlsStream<TcpStream>) -> bool {
    let (tcp, tls) = stream.get_ref();
    let mut cx = Context::from_waker(Waker::noop());
    let quiet = tls.wants_read() && tcp.poll_read_ready(&mut cx).is_pending();
    !quiet && has_pending_input(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn pending_input_is_bytes_or_the_end() {
        let (mut ours, mut theirs) = tokio::io::duplex(64);
        assert!(!has_pending_input(&mut ours), "nothing waiting");
        theirs.write_all(b"E").await.expect("write");
        assert!(has_pending_input(&mut ours), "a byte waiting");
        let (mut ours, theirs) = tokio::io::duplex(64);
        drop(theirs);
        assert!(has_pending_input(&mut ours), "the end waiting");
    }
}
