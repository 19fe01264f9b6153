//! SCRAM-SHA-256 toward a client (RFC 5802/7677 as PostgreSQL speaks it), against a stored
//! verifier: AuthenticationSASL -> SASLInitialResponse (client-first) -> SASLContinue
//! (server-first: nonce, salt, iterations) -> SASLResponse (client-final with the proof) ->
//! SASLFinal (the server signature). Channel binding is not offered (`y,,` and `n,,` are
//! accepted). An unknown user runs the same exchange with a mock verifier, so the answer
//! does not tell which users exist; both fail as PostgreSQL fails them: 28P01.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::{Buf, BufMut, BytesMut};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};

use super::auth_file::Verifier;
use crate::error::{sqlstate, ClientError};
use crate::wire;

const SASL: i32 = 10;
const SASL_CONTINUE: i32 = 11;
const SASL_FINAL: i32 = 12;
/// SQLSTATE of a failed password check.
pub const INVALID_PASSWORD: &str = "28P01";

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

fn protocol(msg: &str) -> ClientError {
    ClientError::new(sqlstate::PROTOCOL_VIOLATION, format!("SCRAM: {msg}"))
}

/// The server side of one exchange.
#[derive(Debug)]
pub struct Exchange {
    verifier: Verifier,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl Exchange {
    /// Starts from the client-first message; returns the server-first message.
    pub fn start(
        verifier: Verifier,
        client_first: &str,
        server_nonce: &str,
    ) -> Result<Self, ClientError> {
        let (gs2_header, bare) = match client_first.as_bytes().first() {
            Some(b'n' | b'y') => client_first
                .match_indices(',')
                .nth(1)
                .map(|(i, _)| (&client_first[..=i], &client_first[i + 1..]))
                .ok_or_else(|| protocol("malformed client-first message"))?,
            Some(b'p') => return Err(protocol("channel binding was not offered")),
            _ => return Err(protocol("malformed client-first message")),
        };
        if gs2_header.len() != 3 {
            return Err(protocol("authorization identities are not supported"));
        }
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty())
            .ok_or_else(|| protocol("client-first message without a nonce"))?;
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            STANDARD.encode(&verifier.salt),
            verifier.iterations
        );
        Ok(Self {
            verifier,
            gs2_header: gs2_header.to_owned(),
            client_first_bare: bare.to_owned(),
            server_first,
            nonce,
        })
    }

    /// The server-first message.
    pub fn server_first(&self) -> &str {
        &self.server_first
    }

    /// Checks the client-final message: the server-final message when the proof is right,
    /// 28P01 when not.
    pub fn finish(&self, client_final: &str, user: &str) -> Result<String, ClientError> {
        let (without_proof, proof) = client_final
            .rsplit_once(",p=")
            .ok_or_else(|| protocol("client-final message without a proof"))?;
        let mut attrs = without_proof.split(',');
        let binding = attrs.next().and_then(|a| a.strip_prefix("c="));
        if binding != Some(STANDARD.encode(&self.gs2_header).as_str()) {
            return Err(protocol("unexpected channel binding"));
        }
        if attrs.next().and_then(|a| a.strip_prefix("r=")) != Some(self.nonce.as_str()) {
            return Err(protocol("nonce mismatch"));
        }
        let proof = STANDARD
            .decode(proof)
            .map_err(|_| protocol("malformed proof"))?;
        let auth = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let signature = hmac(&self.verifier.stored_key, auth.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
        let stored = Sha256::digest(&client_key);
        if proof.len() != 32 || stored.as_slice() != self.verifier.stored_key.as_slice() {
            return Err(password_failed(user));
        }
        let server_signature = hmac(&self.verifier.server_key, auth.as_bytes());
        Ok(format!("v={}", STANDARD.encode(server_signature)))
    }
}

/// What PostgreSQL says for a wrong password (or unknown user).
pub fn password_failed(user: &str) -> ClientError {
    ClientError::new(
        INVALID_PASSWORD,
        format!("password authentication failed for user \"{user}\""),
    )
}

/// The verifier an unknown user is checked against: fixed per user name, matching no
/// password, so repeated attempts see the same salt as for a real user.
pub fn mock_verifier(user: &str) -> Verifier {
    let digest = Sha256::digest(format!("pg-iam-proxy mock {user}").as_bytes());
    Verifier {
        iterations: 4096,
        salt: digest[..16].to_vec(),
        stored_key: hmac(&digest, b"stored").to_vec(),
        server_key: hmac(&digest, b"server").to_vec(),
    }
}

fn auth_message(code: i32, data: &[u8]) -> BytesMut {
    let mut m = BytesMut::with_capacity(9 + data.len());
    m.put_u8(b'R');
    m.put_i32(8 + data.len() as i32);
    m.put_i32(code);
    m.put_slice(data);
    m
}

async fn read_response<S: AsyncRead + Unpin>(stream: &mut S) -> Result<BytesMut, ClientError> {
    let mut m = wire::read_tagged(stream, 8192)
        .await
        .map_err(|e| protocol(&e.to_string()))?;
    if m[0] != b'p' {
        return Err(protocol("expected a SASL response"));
    }
    m.advance(5);
    Ok(m)
}

/// Runs the exchange for `user` against `verifier` (`None`: an unknown user).
pub async fn authenticate<S>(
    stream: &mut S,
    user: &str,
    verifier: Option<&Verifier>,
) -> Result<(), ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let offer = auth_message(SASL, b"SCRAM-SHA-256\0\0");
    wire::send(stream, &offer)
        .await
        .map_err(|e| protocol(&e.to_string()))?;
    let mut initial = read_response(stream).await?;
    let mechanism_end = initial
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| protocol("malformed SASLInitialResponse"))?;
    if &initial[..mechanism_end] != b"SCRAM-SHA-256" {
        return Err(protocol("unsupported SASL mechanism"));
    }
    initial.advance(mechanism_end + 1);
    if initial.len() < 4 {
        return Err(protocol("malformed SASLInitialResponse"));
    }
    let len = initial.get_i32();
    if len < 0 || len as usize != initial.len() {
        return Err(protocol("malformed SASLInitialResponse"));
    }
    let client_first = std::str::from_utf8(&initial).map_err(|_| protocol("not UTF-8"))?;
    let verifier = verifier.cloned().unwrap_or_else(|| mock_verifier(user));
    let mut nonce = [0u8; 18];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut nonce)
        .map_err(|_| protocol("no randomness"))?;
    let exchange = Exchange::start(verifier, client_first, &STANDARD.encode(nonce))?;
    let first = auth_message(SASL_CONTINUE, exchange.server_first().as_bytes());
    wire::send(stream, &first)
        .await
        .map_err(|e| protocol(&e.to_string()))?;
    let response = read_response(stream).await?;
    let client_final = std::str::from_utf8(&response).map_err(|_| protocol("not UTF-8"))?;
    let server_final = exchange.finish(client_final, user)?;
    let last = auth_message(SASL_FINAL, server_final.as_bytes());
    wire::send(stream, &last)
        .await
        .map_err(|e| protocol(&e.to_string()))
}

#[cfg(test)]
mod tests;
