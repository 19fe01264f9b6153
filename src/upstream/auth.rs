//! Logging in upstream: StartupMessage as the IAM database user with the client's database
//! and parameters; the server's cleartext password request is answered with the token.
//! Collects what the client must be shown (ParameterStatus, notices, ReadyForQuery) and the
//! server's BackendKeyData.

use bytes::BytesMut;

use pgwire::messages::startup::{Authentication, BackendKeyData, Password};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::client::StartupInfo;
use crate::error::{sqlstate, ClientError};
use crate::startup::{self, TooLong};
use crate::upstream::exchange::server_error;
use crate::wire::{self, EncodeError, FrameError, MAX_LOGIN_MESSAGE};

/// A completed login.
#[derive(Debug)]
pub struct Login {
    /// ParameterStatus and NoticeResponse frames, verbatim, for the client.
    pub server_params: BytesMut,
    /// The server's cancel key.
    pub key: BackendKeyData,
    /// The ReadyForQuery frame.
    pub ready: BytesMut,
}

/// A server error during login, kept verbatim for the client.
#[derive(Debug)]
pub struct ServerError {
    /// The whole ErrorResponse frame.
    pub frame: BytesMut,
    /// Its SQLSTATE.
    pub code: String,
    /// Its message.
    pub message: String,
}

/// Why the login failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The server refused the credentials (28000 / 28P01).
    #[error("login refused: {} (SQLSTATE {})", .0.message, .0.code)]
    Refused(ServerError),
    /// Another server error (e.g. the database does not exist).
    #[error("server error: {} (SQLSTATE {})", .0.message, .0.code)]
    Server(ServerError),
    /// The server wants a password method other than cleartext: not an IAM user.
    #[error("the server asked for {method} authentication for user \"{user}\"")]
    NotIam {
        /// Method name.
        method: &'static str,
        /// The upstream user.
        user: String,
    },
    /// The exchange broke.
    #[error("login exchange failed: {0}")]
    Protocol(#[from] FrameError),
    /// Our password message did not encode.
    #[error("{0}")]
    Encode(#[from] EncodeError),
}

impl AuthError {
    /// Short reason for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Refused(_) => "refused",
            Self::Server(_) => "server",
            Self::NotIam { .. } => "not_iam",
            Self::Protocol(_) => "protocol",
            Self::Encode(_) => "encode",
        }
    }

    /// What the client is told, unless the server's error is relayed verbatim.
    pub fn to_client(&self) -> ClientError {
        match self {
            Self::NotIam { user, .. } => ClientError::new(
                sqlstate::INVALID_AUTHORIZATION,
                format!("pg-iam-proxy: {self}, so it is not an IAM database user"),
            )
            .with_hint(format!(
                "IAM users get a cleartext password request: GRANT rds_iam TO \"{user}\" and \
                 make sure IAM database authentication is enabled on the cluster"
            )),
            Self::Protocol(_) => ClientError::new(
                sqlstate::CONNECTION_FAILURE,
                format!("pg-iam-proxy: upstream {self}"),
            ),
            Self::Encode(_) => ClientError::new(
                sqlstate::PROTOCOL_VIOLATION,
                format!("pg-iam-proxy: {self}"),
            ),
            Self::Refused(e) | Self::Server(e) => ClientError::new(
                sqlstate::INVALID_AUTHORIZATION,
                format!("pg-iam-proxy: {}", e.message),
            ),
        }
    }
}

/// The startup packet for logging in as `user` for the client described by `info`: the
/// client's parameters in its order, `database` only where the server's default (the user
/// name) would differ, so the packet grows no more than it must.
pub fn startup_packet(user: &str, info: &StartupInfo) -> Result<BytesMut, TooLong> {
    let database = (info.database != user).then_some(("database", info.database.as_str()));
    let params = info.params.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    startup::build(
        std::iter::once(("user", user))
            .chain(database)
            .chain(params),
    )
}

/// Logs in as `user` with `startup` (from [`startup_packet`]) and `password` (the token).
pub async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    user: &str,
    startup: &[u8],
    password: &str,
) -> Result<Login, AuthError> {
    wire::send(stream, startup)
        .await
        .map_err(FrameError::from)?;
    let mut out = BytesMut::new();
    let mut server_params = BytesMut::new();
    let mut key = None;
    loop {
        let frame = wire::read_tagged(stream, MAX_LOGIN_MESSAGE).await?;
        match frame[0] {
            b'R' => match wire::decode::<Authentication>(frame, "Authentication")? {
                Authentication::CleartextPassword => {
                    out.clear();
                    wire::encode(&Password::new(password.to_owned()), "password", &mut out)?;
                    wire::send(stream, &out).await.map_err(FrameError::from)?;
                }
                Authentication::Ok => {}
                other => {
                    let method = match other {
                        Authentication::MD5Password(_) => "MD5 password",
                        Authentication::SASL(_) => "SCRAM (SASL)",
                        _ => "an unsupported",
                    };
                    let user = user.to_owned();
                    return Err(AuthError::NotIam { method, user });
                }
            },
            b'E' => {
                let e = server_error(frame)?;
                return Err(match e.code.as_str() {
                    "28000" | "28P01" => AuthError::Refused(e),
                    _ => AuthError::Server(e),
                });
            }
            b'S' | b'N' => server_params.extend_from_slice(&frame),
            b'K' => key = Some(wire::decode::<BackendKeyData>(frame, "BackendKeyData")?),
            b'v' => {} // we always ask for plain 3.0; nothing to negotiate
            b'Z' => {
                let key = key.ok_or(FrameError::Malformed("login without BackendKeyData"))?;
                return Ok(Login {
                    server_params,
                    key,
                    ready: frame,
                });
            }
            _ => return Err(FrameError::Malformed("unexpected message during login").into()),
        }
    }
}
