//! Whole protocol frames off a stream, with length caps, decoded by pgwire's codecs.
//! No I/O policy lives here (timeouts belong to the callers' stages).

use bytes::{BufMut, BytesMut};
use pgwire::messages::{DecodeContext, Message, ProtocolVersion};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest startup-phase packet accepted from a client, length word included: PostgreSQL's
/// MAX_STARTUP_PACKET_LENGTH (10,000) bounds the packet after its 4-byte length word.
pub const MAX_STARTUP_PACKET: usize = 10_000 + 4;

/// Largest message accepted from the server before login completes.
pub const MAX_LOGIN_MESSAGE: usize = 64 * 1024;

/// A frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection.
    #[error("connection closed")]
    Closed,
    /// I/O failure.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The length field is out of bounds.
    #[error("invalid message length {0}")]
    BadLength(usize),
    /// The content does not decode.
    #[error("malformed {0} message")]
    Malformed(&'static str),
}

fn closed_or_io(e: std::io::Error) -> FrameError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        FrameError::Closed
    } else {
        FrameError::Io(e)
    }
}

/// The decoding context for protocol 3.0 after the startup phase.
pub fn context() -> DecodeContext {
    let mut ctx = DecodeContext::new(ProtocolVersion::PROTOCOL3_0);
    ctx.awaiting_frontend_ssl = false;
    ctx.awaiting_frontend_startup = false;
    ctx
}

/// Reads an untagged startup-phase packet (length included) of at most `max` bytes.
pub async fn read_untagged<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<BytesMut, FrameError> {
    let len = r.read_u32().await.map_err(closed_or_io)? as usize;
    if !(8..=max).contains(&len) {
        return Err(FrameError::BadLength(len));
    }
    let mut buf = BytesMut::with_capacity(len);
    buf.put_u32(len as u32);
    buf.resize(len, 0);
    r.read_exact(&mut buf[4..]).await.map_err(closed_or_io)?;
    Ok(buf)
}

/// Reads one tagged message (tag and length included) of at most `max` bytes.
pub async fn read_tagged<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<BytesMut, FrameError> {
    let tag = r.read_u8().await.map_err(closed_or_io)?;
    let len = r.read_u32().await.map_err(closed_or_io)? as usize;
    if !(4..=max).contains(&len) {
        return Err(FrameError::BadLength(len));
    }
    let mut buf = BytesMut::with_capacity(len + 1);
    buf.put_u8(tag);
    buf.put_u32(len as u32);
    buf.resize(len + 1, 0);
    r.read_exact(&mut buf[5..]).await.map_err(closed_or_io)?;
    Ok(buf)
}

/// Decodes a complete frame with pgwire's codec for `M`.
pub fn decode<M: Message>(mut frame: BytesMut, what: &'static str) -> Result<M, FrameError> {
    match M::decode(&mut frame, &context()) {
        Ok(Some(m)) => Ok(m),
        _ => Err(FrameError::Malformed(what)),
    }
}

/// A message could not be encoded (pgwire refuses values over its per-message limits).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode {what}: {source}")]
pub struct EncodeError {
    /// The message type.
    pub what: &'static str,
    /// pgwire's reason.
    pub source: pgwire::error::PgWireError,
}

/// Appends the encoding of `m` (a `what`) to `buf`; on failure `buf` is left as it was.
pub fn encode<M: Message>(
    m: &M,
    what: &'static str,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let start = buf.len();
    m.encode(buf).map_err(|source| {
        buf.truncate(start);
        EncodeError { what, source }
    })
}

/// Writes `buf` and flushes.
pub async fn send<W: AsyncWrite + Unpin>(w: &mut W, buf: &[u8]) -> std::io::Result<()> {
    w.write_all(buf).await?;
    w.flush().await
}
