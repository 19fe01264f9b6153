use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

use super::*;

fn verifier(password: &[u8]) -> Verifier {
    Verifier::parse(&postgres_protocol::password::scram_sha_256(password)).expect("verifier")
}

/// postgres-protocol's client (as tokio-postgres uses it) against our server side.
fn run(stored: &[u8], typed: &[u8], binding: ChannelBinding) -> Result<String, ClientError> {
    let mut client = ScramSha256::new(typed, binding);
    let first = std::str::from_utf8(client.message())
        .expect("utf8")
        .to_owned();
    let exchange = Exchange::start(verifier(stored), &first, "c2VydmVybm9uY2U=")?;
    client
        .update(exchange.server_first().as_bytes())
        .expect("client accepts server-first");
    let last = std::str::from_utf8(client.message())
        .expect("utf8")
        .to_owned();
    let server_final = exchange.finish(&last, "alice")?;
    client
        .finish(server_final.as_bytes())
        .expect("client accepts the server signature");
    Ok(server_final)
}

#[test]
fn the_right_password_passes_and_the_client_accepts_our_signature() {
    assert!(run(b"secret", b"secret", ChannelBinding::unsupported()).is_ok());
    assert!(run(b"secret", b"secret", ChannelBinding::unrequested()).is_ok());
}

#[test]
fn a_wrong_password_is_28p01() {
    let err = run(b"secret", b"Secret", ChannelBinding::unsupported()).expect_err("wrong");
    assert_eq!(err.code, INVALID_PASSWORD);
    assert_eq!(
        err.message,
        "password authentication failed for user \"alice\""
    );
}

#[test]
fn channel_binding_we_did_not_offer_is_refused() {
    let err = run(
        b"s",
        b"s",
        ChannelBinding::tls_server_end_point(vec![1; 32]),
    )
    .expect_err("p=");
    assert_eq!(err.code, sqlstate::PROTOCOL_VIOLATION);
}

#[test]
fn the_mock_verifier_is_stable_and_matches_nothing() {
    assert_eq!(mock_verifier("x"), mock_verifier("x"));
    assert_ne!(mock_verifier("x").salt, mock_verifier("y").salt);
}
