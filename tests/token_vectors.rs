//! Known-answer vectors made by botocore's `generate_db_auth_token`
//! (`tests/vectors/make_rds_tokens.py`): our tokens must be byte-identical.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use pg_iam_proxy::iam::{sign_token, TokenRequest};
use serde::Deserialize;

#[derive(Deserialize)]
struct Vector {
    name: String,
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
    signing_time: String,
    host: String,
    port: u16,
    user: String,
    region: String,
    token: String,
}

#[test]
fn tokens_are_byte_identical_to_botocore() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/rds_tokens.json");
    let vectors: Vec<Vector> =
        serde_json::from_str(&std::fs::read_to_string(path).expect("vectors")).expect("json");
    assert!(vectors.len() >= 10);
    let mut failures = Vec::new();
    for v in &vectors {
        let creds = Credentials::new(
            &v.access_key_id,
            &v.secret_access_key,
            v.session_token.clone(),
            None,
            "vector",
        );
        let time: SystemTime = humantime::parse_rfc3339(&v.signing_time).expect("time");
        let request = TokenRequest {
            host: &v.host,
            port: v.port,
            user: &v.user,
            region: &v.region,
        };
        let token = sign_token(&creds, &request, time).expect("sign");
        if token.expose() != v.token {
            failures.push(format!(
                "{}:\n  ours:     {}\n  botocore: {}",
                v.name,
                token.expose(),
                v.token
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
