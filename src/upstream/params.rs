//! A reused server connection made to look like a direct login for the next client: the
//! client's startup parameters applied with `set_config` in one round trip ([`apply`]),
//! the ParameterStatus values it would have seen ([`ServerParams`]), and the greeting
//! ([`encode_greeting`]).
//!
//! Each parameter is a Bind/Execute of one unnamed `SELECT pg_catalog.set_config($1, $2,
//! false)` with text parameters, so any value (lists such as `search_path`, quotes) arrives
//! exactly as the client sent it, then one Sync: the whole batch is one implicit
//! transaction, so a refused value leaves none of the others set.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pgwire::messages::extendedquery::{Bind, Close, Execute, Parse, Sync};
use pgwire::messages::response::{ErrorResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{Authentication, BackendKeyData, ParameterStatus, SecretKey};
use tokio::io::{AsyncRead, AsyncWrite};

use super::auth::ServerError;
use super::exchange;
use crate::wire::{self, EncodeError, FrameError};

/// The statement each parameter is bound to.
const SET_CONFIG: &str = "SELECT pg_catalog.set_config($1, $2, false)";
/// Its statement's name: the proxy's prefix, never one of [`crate::relay::prepared`]'s
/// (`pgiam_<n>`).
const SET_CONFIG_NAME: &str = "pgiam_set_config";

/// The `text` type's OID.
const TEXT: u32 = 25;

/// The SQLSTATE of a parameter that cannot be set after connection start (PGC_BACKEND).
pub const CANT_CHANGE_NOW: &str = "55P02";

/// ParameterStatus values in the order the server reported them at login; a name reported
/// later is appended. Kept packed (`name\0value\0`, one allocation): a pooled server
/// connection holds its baseline for as long as it lives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerParams(Vec<u8>);

impl ServerParams {
    /// The values among a login's ParameterStatus frames (NoticeResponse frames among them
    /// are skipped), as [`super::auth::Login::server_params`] holds them.
    pub fn from_login(frames: &[u8]) -> Result<Self, FrameError> {
        let mut params = Self::default();
        let mut rest = frames;
        while !rest.is_empty() {
            let len = rest
                .get(1..5)
                .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
                .ok_or(FrameError::Malformed("ParameterStatus"))?;
            let frame = rest
                .get(..len.saturating_add(1))
                .filter(|_| len >= 4)
                .ok_or(FrameError::BadLength(len))?;
            if frame[0] == b'S' {
                let p: ParameterStatus = wire::decode(frame.into(), "ParameterStatus")?;
                params.set(p.name, p.value);
            }
            rest = &rest[frame.len()..];
        }
        params.0.shrink_to_fit();
        Ok(params)
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        // Names compared as bytes; only the value found is decoded (on every transaction
        // of transaction mode, most of the names are passed over).
        let mut fields = self.0.split(|b| *b == 0);
        while let (Some(n), Some(v)) = (fields.next(), fields.next()) {
            if n == name.as_bytes() {
                return Some(std::str::from_utf8(v).unwrap_or_default());
            }
        }
        None
    }

    /// Sets `name` in place, or appends it.
    pub fn set(&mut self, name: String, value: String) {
        if self.get(&name) == Some(value.as_str()) {
            return;
        }
        let mut out = Vec::with_capacity(self.0.len() + value.len() + name.len() + 2);
        let mut replaced = false;
        for (n, v) in self.iter() {
            let v = if n == name {
                replaced = true;
                value.as_str()
            } else {
                v
            };
            push_pair(&mut out, n, v);
        }
        if !replaced {
            push_pair(&mut out, &name, &value);
        }
        self.0 = out;
    }

    /// Removes `name`, if it is there.
    pub fn remove(&mut self, name: &str) {
        if self.get(name).is_none() {
            return;
        }
        let mut out = Vec::with_capacity(self.0.len());
        for (n, v) in self.iter().filter(|(n, _)| *n != name) {
            push_pair(&mut out, n, v);
        }
        self.0 = out;
    }

    /// (name, value) in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        // Only whole pairs of valid UTF-8 ever enter (they come from decoded Strings).
        let mut fields = self
            .0
            .split(|b| *b == 0)
            .map(|f| std::str::from_utf8(f).unwrap_or_default());
        std::iter::from_fn(move || Some((fields.next()?, fields.next()?)))
    }
}

fn push_pair(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.extend_from_slice(value.as_bytes());
    out.push(0);
}

/// The server refused a parameter (the whole batch was rolled back).
#[derive(Debug)]
pub struct Rejected {
    /// The server's error, verbatim (severity ERROR: see [`fatal`] for the client).
    pub error: ServerError,
    /// The server reached ReadyForQuery('I') afterwards: the connection is clean.
    pub reusable: bool,
}

impl Rejected {
    /// 55P02: the parameter can only be given at login (serve that client unpooled).
    pub fn cannot_change_now(&self) -> bool {
        self.error.code == CANT_CHANGE_NOW
    }
}

/// Why the parameters could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The server refused a parameter.
    #[error("the server refused a startup parameter: {} (SQLSTATE {})", .0.error.message, .0.error.code)]
    Rejected(Rejected),
    /// A message that has no place in the answer.
    #[error("unexpected message '{}' in the answer to set_config", char::from(*.0))]
    Unexpected(u8),
    /// ReadyForQuery with a status other than 'I' and no error.
    #[error("the server was not idle after set_config (status '{}')", char::from(*.0))]
    NotIdle(u8),
    /// No ReadyForQuery in time.
    #[error("applying the startup parameters did not finish within {0:?}")]
    Timeout(Duration),
    /// The exchange broke.
    #[error("set_config exchange failed: {0}")]
    Protocol(#[from] FrameError),
    /// A parameter did not encode.
    #[error("{0}")]
    Encode(#[from] EncodeError),
}

/// Applies `params` (the client's startup parameters to set after login: not `user`,
/// `database`, `options` or `replication`, which belong to the pool key) in one round trip
/// within `timeout`; returns `baseline` updated by the ParameterStatus values reported.
/// On [`ApplyError::Rejected`] the client gets [`fatal`] of the server's error, or, for
/// [`Rejected::cannot_change_now`], an unpooled login.
pub async fn apply<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    params: &[(String, String)],
    baseline: &ServerParams,
    timeout: Duration,
) -> Result<ServerParams, ApplyError> {
    let mut out = baseline.clone();
    // A value the connection already has (its login carried it) needs no round trip.
    let params: Vec<_> = params
        .iter()
        .filter(|(name, value)| baseline.get(name) != Some(value.as_str()))
        .collect();
    if params.is_empty() {
        return Ok(out);
    }
    let pairs: Vec<_> = params
        .iter()
        .map(|(n, v)| (n.as_str(), Some(v.as_str())))
        .collect();
    exchange(stream, &pairs, &mut out, timeout).await?;
    Ok(out)
}

/// Sets each of `changes` on the session (a value `None`: back to the login's, as `RESET`
/// does) in one round trip within `timeout`: transaction mode's lend
/// ([`crate::upstream::pooled::PooledServer::changes_for`]). What the server reports is not
/// kept: the client saw its own values when it set them.
pub async fn change<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    changes: &[(String, Option<String>)],
    timeout: Duration,
) -> Result<(), ApplyError> {
    let pairs: Vec<_> = changes
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_deref()))
        .collect();
    exchange(stream, &pairs, &mut ServerParams::default(), timeout).await
}

/// One round trip of `set_config` calls for `pairs` within `timeout`, the values the server
/// reports collected into `reported`.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    pairs: &[(&str, Option<&str>)],
    reported: &mut ServerParams,
    timeout: Duration,
) -> Result<(), ApplyError> {
    let request = request(pairs)?;
    let mut refused = None;
    let answer = tokio::time::timeout(
        timeout,
        round_trip(stream, &request, reported, &mut refused),
    )
    .await
    .map_err(|_| ApplyError::Timeout(timeout))
    .and_then(|r| r);
    match (refused, answer) {
        (Some(error), answer) => Err(ApplyError::Rejected(Rejected {
            error,
            reusable: matches!(answer, Ok(b'I')),
        })),
        (None, Ok(b'I')) => Ok(()),
        (None, Ok(status)) => Err(ApplyError::NotIdle(status)),
        (None, Err(e)) => Err(e),
    }
}

/// Parse once, Bind + Execute per parameter (a NULL value resets it), Close, Sync. The
/// statement is named ([`SET_CONFIG_NAME`]) and closed: a transaction-mode client's unnamed
/// statement on the connection is left as it was.
fn request(params: &[(&str, Option<&str>)]) -> Result<BytesMut, EncodeError> {
    let mut buf = BytesMut::new();
    let statement = Some(SET_CONFIG_NAME.to_owned());
    let parse = Parse::new(statement.clone(), SET_CONFIG.to_owned(), vec![TEXT, TEXT]);
    wire::encode(&parse, "Parse", &mut buf)?;
    for (name, value) in params {
        let values = vec![
            Some(Bytes::copy_from_slice(name.as_bytes())),
            value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
        ];
        wire::encode(
            &Bind::new(None, statement.clone(), vec![], values, vec![]),
            "Bind",
            &mut buf,
        )?;
        wire::encode(&Execute::new(None, 0), "Execute", &mut buf)?;
    }
    wire::encode(&Close::new(b'S', statement), "Close", &mut buf)?;
    wire::encode(&Sync::new(), "Sync", &mut buf)?;
    Ok(buf)
}

/// Sends `request` and reads to ReadyForQuery, collecting ParameterStatus into `params`
/// and the first ErrorResponse into `refused`; returns the ReadyForQuery status.
async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8],
    params: &mut ServerParams,
    refused: &mut Option<ServerError>,
) -> Result<u8, ApplyError> {
    wire::send(stream, request)
        .await
        .map_err(FrameError::from)?;
    loop {
        let frame = exchange::next(stream).await?;
        match frame[0] {
            b'1' | b'2' | b'3' | b'D' | b'C' | b'N' => {}
            b'S' => {
                let p: ParameterStatus = wire::decode(frame, "ParameterStatus")?;
                params.set(p.name, p.value);
            }
            b'E' if refused.is_none() => *refused = Some(exchange::server_error(frame)?),
            b'Z' => return Ok(exchange::ready_status(&frame)),
            tag => return Err(ApplyError::Unexpected(tag)),
        }
    }
}

/// `frame` (an ErrorResponse) with its severity made FATAL, as a login refusing the same
/// parameter would send it; the frame unchanged if it does not decode or re-encode.
pub fn fatal(frame: &[u8]) -> BytesMut {
    let Ok(mut e) = wire::decode::<ErrorResponse>(frame.into(), "ErrorResponse") else {
        return frame.into();
    };
    for (k, v) in &mut e.fields {
        if matches!(*k, b'S' | b'V') {
            *v = "FATAL".to_owned();
        }
    }
    let mut buf = BytesMut::new();
    match wire::encode(&e, "ErrorResponse", &mut buf) {
        Ok(()) => buf,
        Err(_) => frame.into(),
    }
}

/// What a client sees at the end of a login: AuthenticationOk, `params` as
/// ParameterStatus, BackendKeyData(`pid`, `secret`), ReadyForQuery('I').
pub fn encode_greeting(
    params: &ServerParams,
    pid: i32,
    secret: i32,
) -> Result<BytesMut, EncodeError> {
    let mut buf = BytesMut::with_capacity(512);
    wire::encode(&Authentication::Ok, "AuthenticationOk", &mut buf)?;
    for (name, value) in params.iter() {
        let p = ParameterStatus::new(name.to_owned(), value.to_owned());
        wire::encode(&p, "ParameterStatus", &mut buf)?;
    }
    let key = BackendKeyData::new(pid, SecretKey::I32(secret));
    wire::encode(&key, "BackendKeyData", &mut buf)?;
    let ready = ReadyForQuery::new(TransactionStatus::Idle);
    wire::encode(&ready, "ReadyForQuery", &mut buf)?;
    Ok(buf)
}
