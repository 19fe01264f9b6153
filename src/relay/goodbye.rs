//! Ending a session the proxy ends itself, as PostgreSQL ends one: the client gets the
//! server's own words (`FATAL 57P01 terminating connection due to administrator command` at
//! the end of a shutdown drain, `FATAL 57P05 terminating connection due to idle-session
//! timeout` after the idle timeout), and the server gets Terminate and a TLS close_notify.
//!
//! The error may only go in between two messages. If the server was in the middle of one
//! when the session was cut, the rest of that message (and nothing after it) is still
//! relayed for at most [`FINISH_MESSAGE`]; a message that does not end in time (a huge row,
//! a frozen server) leaves the client with a plain close, as a dropped connection would.
//! Terminate is sent only if the client's side is itself between messages; otherwise the
//! server sees the TLS close alone. Everything here is bounded by [`GOODBYE`].

use std::future::poll_fn;
use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

use super::pipe::Pipe;
use super::{Ended, Meters};
use crate::client;
use crate::error::ClientError;

/// How long the rest of a server message in flight may take to arrive at a cut.
pub const FINISH_MESSAGE: Duration = Duration::from_millis(500);

/// How long the farewells may take (writing to a client that does not read, a server that
/// does not answer), after [`FINISH_MESSAGE`].
pub const GOODBYE: Duration = Duration::from_millis(1500);

/// The frontend's Terminate message.
const TERMINATE: [u8; 5] = [b'X', 0, 0, 0, 4];

/// Ends a session cut or idle (`why`); true if the client was told why.
pub(super) async fn goodbye<C, U>(
    client: &mut C,
    upstream: &mut U,
    up: &Pipe,
    down: &mut Pipe,
    why: Ended,
    meters: Meters<'_>,
) -> bool
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let error = match why {
        Ended::Idle => ClientError::idle_session_timeout(),
        _ => ClientError::admin_shutdown(),
    };
    let between = !down.eof
        && timeout(
            FINISH_MESSAGE,
            poll_fn(|cx| {
                let (r, w) = (Pin::new(&mut *upstream), Pin::new(&mut *client));
                down.poll_finish(cx, r, w, meters.to_client)
            }),
        )
        .await
        .is_ok_and(|r| r.unwrap_or(false));
    let tell = async {
        if between {
            client::reject(client, &error).await;
        } else {
            let _ = client.shutdown().await;
        }
    };
    let polite = !up.done && up.pending() == 0 && up.frames.at_boundary();
    let close = async {
        if polite {
            let _ = upstream.write_all(&TERMINATE).await;
        }
        let _ = upstream.shutdown().await;
    };
    let (told, _) = tokio::join!(timeout(GOODBYE, tell), timeout(GOODBYE, close));
    if !between {
        tracing::debug!("session ended in the middle of a server message: closed without an error");
    }
    between && told.is_ok()
}
