//! The client side before the relay: answer SSLRequest with 'S' when the proxy offers TLS
//! (the caller upgrades), else 'N', and GSSENCRequest with 'N'; read the
//! StartupMessage or CancelRequest (length-capped; the caller applies the timeout), send
//! NegotiateProtocolVersion where PostgreSQL would, and later greet the client with
//! AuthenticationOk, the server's parameters, BackendKeyData (the server's pid, our secret)
//! and ReadyForQuery. No password is requested: who may connect is decided by
//! [`crate::frontend`] from the client's OS user.

use bytes::{Buf, BytesMut};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::startup::{
    Authentication, BackendKeyData, NegotiateProtocolVersion, SecretKey,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{sqlstate, ClientError};
use crate::startup::{self, Parsed, PROTOCOL_3_0};
use crate::wire::{self, EncodeError, FrameError, MAX_STARTUP_PACKET};

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

/// A client's startup request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupInfo {
    /// The user the client sent.
    pub user: String,
    /// The database (defaults to the user, as in PostgreSQL).
    pub database: String,
    /// Other parameters to pass upstream (application_name, options, client_encoding, ...),
    /// in the client's order.
    pub params: Vec<(String, String)>,
}

/// What the client wants.
#[derive(Debug)]
pub enum Hello {
    /// A session.
    Startup(StartupInfo),
    /// Cancel a query running in another session.
    Cancel(CancelRequest),
    /// TLS, which the proxy offers and has accepted with `S`: the caller performs the TLS
    /// handshake and reads the startup request again over it.
    Tls,
}

fn malformed(e: FrameError) -> ClientError {
    ClientError::new(
        sqlstate::PROTOCOL_VIOLATION,
        format!("invalid startup packet: {e}"),
    )
}

/// Reads the client's startup request, declining GSS encryption, and TLS unless
/// `offer_tls` (then an SSLRequest is answered `S` and ends the handshake with
/// [`Hello::Tls`]).
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    offer_tls: bool,
) -> Result<Hello, ClientError> {
    let (mut ssl_declined, mut gss_declined) = (false, false);
    loop {
        let packet = wire::read_untagged(stream, MAX_STARTUP_PACKET)
            .await
            .map_err(malformed)?;
        let code = (&packet[4..8]).get_u32();
        match code {
            SSL_REQUEST if packet.len() == 8 && offer_tls && !ssl_declined => {
                wire::send(stream, b"S")
                    .await
                    .map_err(|e| malformed(e.into()))?;
                return Ok(Hello::Tls);
            }
            SSL_REQUEST | GSSENC_REQUEST if packet.len() == 8 => {
                let seen = if code == SSL_REQUEST {
                    &mut ssl_declined
                } else {
                    &mut gss_declined
                };
                if std::mem::replace(seen, true) {
                    return Err(malformed(FrameError::Malformed(
                        "repeated encryption request",
                    )));
                }
                wire::send(stream, b"N")
                    .await
                    .map_err(|e| malformed(e.into()))?;
            }
            CANCEL_REQUEST => {
                return wire::decode(packet, "CancelRequest")
                    .map(Hello::Cancel)
                    .map_err(malformed)
            }
            _ if code >> 16 == 3 => return startup(stream, &packet).await.map(Hello::Startup),
            _ => {
                return Err(ClientError::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!(
                        "unsupported frontend protocol {}.{}: server supports 3.0",
                        code >> 16,
                        code & 0xffff
                    ),
                ))
            }
        }
    }
}

fn encode_failed(e: EncodeError) -> ClientError {
    ClientError::new(sqlstate::PROTOCOL_VIOLATION, format!("pg-iam-proxy: {e}"))
}

/// Parses the StartupMessage and, exactly where PostgreSQL does (after the layout check,
/// before the user check), tells a client that asked for more than 3.0 what it gets.
async fn startup<S: AsyncWrite + Unpin>(
    stream: &mut S,
    packet: &[u8],
) -> Result<StartupInfo, ClientError> {
    let parsed =
        startup::parse(packet).map_err(|m| ClientError::new(sqlstate::PROTOCOL_VIOLATION, m))?;
    if let Some(n) = negotiation(&parsed) {
        let mut buf = BytesMut::new();
        wire::encode(&n, "NegotiateProtocolVersion", &mut buf).map_err(encode_failed)?;
        wire::send(stream, &buf)
            .await
            .map_err(|e| malformed(e.into()))?;
    }
    let (mut user, mut database, mut params) = (None, None, Vec::new());
    for (k, v) in parsed.params {
        match k.as_str() {
            "user" => user = Some(v),
            "database" => database = Some(v),
            _ => params.push((k, v)),
        }
    }
    let user = user.filter(|u| !u.is_empty()).ok_or_else(|| {
        ClientError::new(
            sqlstate::INVALID_AUTHORIZATION,
            "no PostgreSQL user name specified in startup packet",
        )
    })?;
    Ok(StartupInfo {
        database: database
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| user.clone()),
        user,
        params,
    })
}

/// The NegotiateProtocolVersion PostgreSQL sends a client that asked for a newer minor
/// version or for `_pq_.` options: the full version number it speaks (196608 for 3.0) and
/// the options it did not recognise (all of them), in the client's order.
pub fn negotiation(parsed: &Parsed) -> Option<NegotiateProtocolVersion> {
    (parsed.minor > 0 || !parsed.protocol_options.is_empty())
        .then(|| NegotiateProtocolVersion::new(PROTOCOL_3_0, parsed.protocol_options.clone()))
}

/// The greeting could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum GreetError {
    /// A message did not encode.
    #[error("{0}")]
    Encode(#[from] EncodeError),
    /// The client is gone.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Sends the whole greeting in one write: AuthenticationOk, `server_params` (raw
/// ParameterStatus/NoticeResponse frames from the server), the key (the server's real pid
/// and our own secret) and ReadyForQuery.
pub async fn greet<S: AsyncWrite + Unpin>(
    stream: &mut S,
    server_params: &[u8],
    key: (i32, i32),
    ready: &[u8],
) -> Result<(), GreetError> {
    let mut buf = BytesMut::with_capacity(64 + server_params.len());
    wire::encode(&Authentication::Ok, "AuthenticationOk", &mut buf)?;
    buf.extend_from_slice(server_params);
    let key = BackendKeyData::new(key.0, SecretKey::I32(key.1));
    wire::encode(&key, "BackendKeyData", &mut buf)?;
    buf.extend_from_slice(ready);
    Ok(wire::send(stream, &buf).await?)
}

/// Sends a FATAL error (best effort: the client may already be gone) and closes.
pub async fn reject<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, error: &ClientError) {
    let mut buf = BytesMut::new();
    if let Err(e) = wire::encode(&error.to_response(), "ErrorResponse", &mut buf) {
        tracing::warn!(error = %e, "error message too long for the client; sending a short one");
        let short = ClientError::new(error.code, "pg-iam-proxy: error message too long to send");
        if wire::encode(&short.to_response(), "ErrorResponse", &mut buf).is_err() {
            return;
        }
    }
    relay_error(stream, &buf).await;
}

/// Sends an ErrorResponse frame verbatim and closes. Unread input from the client is drained
/// briefly first: closing a socket with unread data sends a reset, which can destroy the
/// error before the client reads it.
pub async fn relay_error<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, frame: &[u8]) {
    if wire::send(stream, frame).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let drain = async {
        let mut sink = vec![0u8; 4096]; // on the heap: every caller's future would carry it
        let mut total = 0usize;
        while total < DRAIN_LIMIT {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
}

/// At most this much unread client input is drained after an error...
const DRAIN_LIMIT: usize = 64 * 1024;
/// ...for at most this long.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the handshake on one startup packet with `version` and `params` (NUL-separated).
    async fn handshake_of(version: [u8; 4], params: &[u8]) -> Result<Hello, ClientError> {
        let mut packet = ((params.len() + 8) as u32).to_be_bytes().to_vec();
        packet.extend_from_slice(&version);
        packet.extend_from_slice(params);
        let (mut a, mut b) = tokio::io::duplex(1024);
        tokio::io::AsyncWriteExt::write_all(&mut b, &packet)
            .await
            .expect("write");
        handshake(&mut a, false).await
    }

    #[tokio::test]
    async fn startup_without_user_is_refused() {
        let err = handshake_of([0, 3, 0, 0], b"database\0labdb\0\0")
            .await
            .expect_err("no user");
        assert_eq!(err.code, sqlstate::INVALID_AUTHORIZATION, "{err}");
    }

    #[tokio::test]
    async fn unknown_protocol_is_refused() {
        let err = handshake_of([0, 4, 0, 0], b"user\0x\0\0")
            .await
            .expect_err("bad protocol");
        assert_eq!(err.code, sqlstate::FEATURE_NOT_SUPPORTED, "{err}");
    }

    #[tokio::test]
    async fn database_defaults_to_the_user_and_parameters_pass_through() {
        let hello = handshake_of([0, 3, 0, 0], b"user\0alice\0application_name\0psql\0\0")
            .await
            .expect("startup");
        let Hello::Startup(info) = hello else {
            panic!("a startup")
        };
        assert_eq!(
            (info.user.as_str(), info.database.as_str()),
            ("alice", "alice")
        );
        assert_eq!(
            info.params,
            [("application_name".to_owned(), "psql".to_owned())]
        );
    }
}
