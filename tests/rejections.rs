//! Every way a login can fail reaches the client as an ErrorResponse with the right
//! SQLSTATE and a message naming the cause; the proxy keeps serving.

mod support;

use aws_credential_types::Credentials;
use support::clock::ShiftedClock;
use support::{code, message, must_fail, pg, ProxySpec, StandIn};

async fn refusal(spec: ProxySpec, user: &str, db: &str) -> (String, String) {
    let proxy = spec.start().await;
    let err = must_fail(pg(proxy.addr, user, db).await);
    (code(&err), message(&err))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_that_did_not_sign_the_server_is_refused() {
    let si = StandIn::shared();
    let mut spec = ProxySpec::new(si);
    spec.target.ca_file = Some(si.info.wrong_ca_file.clone());
    let (code, msg) = refusal(spec, &si.info.iam_user, &si.info.database).await;
    assert_eq!(code, "08006", "{msg}");
    assert!(
        msg.contains("TLS handshake") && msg.contains("certificate"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_the_certificate_does_not_name_is_refused_unless_verify_ca() {
    let si = StandIn::shared();
    let mut spec = ProxySpec::new(si);
    spec.target.host = Some("127.0.0.2".into());
    let (code, msg) = refusal(spec, &si.info.iam_user, &si.info.database).await;
    assert_eq!(code, "08006", "{msg}");
    assert!(msg.contains("not valid for name"), "{msg}");
    // verify-ca accepts the chain; the server then refuses the token signed for 127.0.0.2.
    let mut spec = ProxySpec::new(si);
    spec.target.host = Some("127.0.0.2".into());
    spec.target.tls_mode = Some(pg_iam_proxy::config::TlsMode::VerifyCa);
    let (code, msg) = refusal(spec, &si.info.iam_user, &si.info.database).await;
    assert_eq!(code, "28000", "{msg}");
    assert!(msg.contains("PAM authentication failed"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_retried_once_then_relayed_with_a_hint() {
    let si = StandIn::start(false);
    si.control(serde_json::json!({"skew_seconds": 1000}));
    let (code, msg) = refusal(ProxySpec::new(&si), &si.info.iam_user, &si.info.database).await;
    assert_eq!(code, "28000", "{msg}");
    assert!(
        msg.contains("PAM authentication failed for user \"iam_dbuser\""),
        "{msg}"
    );
    assert!(msg.contains("rds_iam") && msg.contains("clock"), "{msg}");
    let refusals: Vec<_> = si
        .decisions()
        .into_iter()
        .filter(|d| d["ok"] == false)
        .map(|d| d["reason"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        refusals.len(),
        2,
        "one retry with a fresh token: {refusals:?}"
    );
    assert!(
        refusals.iter().all(|r| r.contains("expired")),
        "{refusals:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_access_key_is_refused() {
    let si = StandIn::shared();
    let mut spec = ProxySpec::new(si);
    spec.credentials = Credentials::new(
        "AKIAUNKNOWN000000000",
        "not-a-known-secret",
        None,
        None,
        "t",
    );
    let (code, msg) = refusal(spec, &si.info.iam_user, &si.info.database).await;
    assert_eq!(code, "28000", "{msg}");
    assert!(msg.contains("PAM authentication failed"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_rds_iam_gets_a_clear_error() {
    let si = StandIn::shared();
    let (code, msg) = refusal(ProxySpec::new(si), &si.info.plain_user, &si.info.database).await;
    assert_eq!(code, "28000", "{msg}");
    assert!(
        msg.contains("SCRAM") && msg.contains("not an IAM database user"),
        "{msg}"
    );
    assert!(msg.contains("GRANT rds_iam"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_after_authentication_are_relayed_verbatim() {
    let si = StandIn::shared();
    let (code, msg) = refusal(ProxySpec::new(si), &si.info.iam_user, "no_such_db").await;
    assert_eq!(code, "3D000", "{msg}");
    assert!(
        msg.contains("database \"no_such_db\" does not exist"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_down_or_unresolvable_is_reported() {
    let si = StandIn::shared();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let mut spec = ProxySpec::new(si);
    spec.target.port = Some(port);
    let (code, msg) = refusal(spec, &si.info.iam_user, &si.info.database).await;
    assert_eq!(code, "08001", "{msg}");
    assert!(msg.contains("cannot connect to localhost"), "{msg}");

    let mut spec = ProxySpec::new(si);
    spec.target.host = Some("no-such-host.invalid".into());
    let (code, msg) = refusal(spec, &si.info.iam_user, &si.info.database).await;
    assert_eq!(code, "08001", "{msg}");
    assert!(msg.contains("cannot resolve no-such-host.invalid"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_assume_role_is_named_in_the_error() {
    let si = StandIn::shared();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let mut spec = ProxySpec::new(si);
    spec.target.role_arn = Some("arn:aws:iam::123456789012:role/rdsa-iam-dbuser-role".into());
    spec.sts_endpoint = Some(format!("http://127.0.0.1:{port}"));
    let proxy = spec.start().await;
    let err = must_fail(pg(proxy.addr, &si.info.iam_user, &si.info.database).await);
    let msg = message(&err);
    assert_eq!(code(&err), "28000", "{msg}");
    assert!(
        msg.contains("cannot assume role arn:aws:iam::123456789012:role/rdsa-iam-dbuser-role"),
        "{msg}"
    );
    // The proxy is still up and serves the next client the same clear error.
    let again = must_fail(pg(proxy.addr, &si.info.iam_user, &si.info.database).await);
    assert_eq!(code(&again), "28000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_cached_token_is_replaced_and_the_login_retried_once() {
    let si = StandIn::start(false);
    let clock = std::sync::Arc::new(ShiftedClock::default());
    clock.set(-600);
    let mut spec = ProxySpec::new(&si);
    spec.clock = clock.clone();
    let proxy = spec.start().await;
    // A token signed ten minutes ago: still valid for five, so the cache keeps serving it.
    let (first, _c) = pg(proxy.addr, &si.info.iam_user, &si.info.database)
        .await
        .expect("first");
    first.simple_query("select 1").await.expect("query");
    clock.set(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs();
    si.control(serde_json::json!({"revoke_signed_before": now - 300}));
    // The cached token is refused; the proxy signs a fresh one and the client never notices.
    let (second, _c) = pg(proxy.addr, &si.info.iam_user, &si.info.database)
        .await
        .expect("retried with a fresh token");
    second.simple_query("select 1").await.expect("query");
    let reasons: Vec<String> = si
        .decisions()
        .iter()
        .map(|d| d["reason"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(reasons, ["ok", "revoked", "ok"]);
    assert_eq!(proxy.cache.stats().signings, 2);
}

/// A fake upstream that answers the SSLRequest with `answer` and then closes.
async fn fake_upstream(answer: &'static [u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut request = [0u8; 8];
            if s.read_exact(&mut request).await.is_ok() {
                let _ = s.write_all(answer).await;
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest).await;
            }
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_without_tls_or_with_injected_bytes_is_refused() {
    let si = StandIn::shared();
    // 'N': the server will not do TLS; the token must never be sent in clear.
    let mut spec = ProxySpec::new(si);
    spec.target.port = Some(fake_upstream(b"N").await);
    let (code, msg) = refusal(spec, &si.info.iam_user, &si.info.database).await;
    assert_eq!(code, "08006", "{msg}");
    assert!(msg.contains("does not support TLS"), "{msg}");
    // 'S' followed by plaintext bytes (CVE-2021-23222): they go to the TLS handshake and fail it.
    let mut spec = ProxySpec::new(si);
    spec.target.port = Some(fake_upstream(b"SR\x00\x00\x00\x08\x00\x00\x00\x00").await);
    let (code, msg) = refusal(spec, &si.info.iam_user, &si.info.database).await;
    assert_eq!(code, "08006", "{msg}");
    assert!(msg.contains("TLS handshake"), "{msg}");
    // Anything else is a protocol error, named.
    let mut spec = ProxySpec::new(si);
    spec.target.port = Some(fake_upstream(b"X").await);
    let (code, msg) = refusal(spec, &si.info.iam_user, &si.info.database).await;
    assert_eq!(code, "08006", "{msg}");
    assert!(msg.contains("unexpected answer byte 0x58"), "{msg}");
}
