//! Reading a server's answer after login (the pool's reset and parameter exchanges): whole
//! frames with a size cap, and ErrorResponse parsed into a [`ServerError`] kept verbatim.

use bytes::BytesMut;
use pgwire::messages::response::ErrorResponse;
use tokio::io::AsyncRead;

use super::auth::ServerError;
use crate::wire::{self, FrameError};

/// Largest server message accepted in these exchanges (notices and errors are small; a
/// bigger message means the exchange is not what it should be).
pub const MAX_REPLY: usize = 1 << 20;

/// Reads one frame of the answer.
pub async fn next<S: AsyncRead + Unpin>(stream: &mut S) -> Result<BytesMut, FrameError> {
    wire::read_tagged(stream, MAX_REPLY).await
}

/// The SQLSTATE and message of an ErrorResponse frame, with the frame kept.
pub fn server_error(frame: BytesMut) -> Result<ServerError, FrameError> {
    let err: ErrorResponse = wire::decode(frame.clone(), "ErrorResponse")?;
    let field = |t: u8| {
        err.fields
            .iter()
            .find(|(k, _)| *k == t)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    Ok(ServerError {
        code: field(b'C'),
        message: field(b'M'),
        frame,
    })
}

/// The status byte of a ReadyForQuery frame (0 if it has none).
pub fn ready_status(frame: &[u8]) -> u8 {
    frame.get(5).copied().unwrap_or(0)
}
