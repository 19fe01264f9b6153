//! `--connect-to HOST1:PORT1:HOST2:PORT2` against the stand-in: TCP goes to HOST2:PORT2 (a
//! real TCP forwarder that counts connections, or another address of the server), while the
//! token is signed for HOST1:PORT1 (the stand-in's verifier refuses any other host) and the
//! certificate is verified against HOST1 (verify-full).

mod support;

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::fault::FaultProxy;
use support::running::BIN;
use support::{code, message, pg, run_joined, ProxySpec, StandIn};

fn rule(from: &str, port: u16, to: impl std::fmt::Display) -> Option<Vec<String>> {
    Some(vec![format!("{from}:{port}:{to}")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_and_cancels_go_where_connect_to_says_signed_for_the_named_host() {
    let si = StandIn::shared();
    let upstream = format!("127.0.0.1:{}", si.info.port).parse().expect("addr");
    let forward = FaultProxy::start(upstream).await;
    let mut spec = ProxySpec::new(si);
    spec.proxy.connect_to = rule("localhost", si.info.port, forward.addr);
    spec.target.pool_mode = Some(pg_iam_proxy::config::PoolMode::None);
    let proxy = spec.start().await;
    let (client, _c) = pg(proxy.addr, &si.info.iam_user, &si.info.database)
        .await
        .expect("login through the forwarder");
    let row = client
        .query_one("select inet_server_addr()::text, current_user::text", &[])
        .await
        .expect("query");
    assert_eq!(row.get::<_, String>(1), si.info.iam_user);
    let passed = forward.counts.passed.load(Ordering::SeqCst);
    assert_eq!(passed, 1, "the login went through the forwarder");
    // The verifier accepted a token signed for localhost:<port> (it checks the signed host).
    let last = si.decisions().pop().expect("a decision");
    assert_eq!(last["ok"], true, "{last}");
    // A cancel goes to the address the session reached: through the forwarder again.
    let cancel = client.cancel_token();
    let sleeper = tokio::spawn(async move { client.simple_query("select pg_sleep(30)").await });
    // Until the query runs, a cancel does nothing: repeat it (bounded) until the query ends.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !sleeper.is_finished() {
        assert!(std::time::Instant::now() < deadline, "never cancelled");
        cancel
            .cancel_query(tokio_postgres::NoTls)
            .await
            .expect("cancel");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let err = sleeper.await.expect("join").expect_err("cancelled");
    assert_eq!(code(&err), "57014");
    assert!(forward.counts.passed.load(Ordering::SeqCst) >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_checks_the_named_host_not_the_address_connected_to() {
    let si = StandIn::shared();
    let port = si.info.port;
    // 127.0.0.2 is not in the certificate and not a host the verifier accepts: reached as
    // "localhost" through --connect-to, both checks pass.
    let mut spec = ProxySpec::new(si);
    spec.proxy.connect_to = rule("localhost", port, format!("127.0.0.2:{port}"));
    let proxy = spec.start().await;
    let (client, _c) = pg(proxy.addr, &si.info.iam_user, &si.info.database)
        .await
        .expect("login via 127.0.0.2 as localhost");
    let row = client
        .query_one("select inet_server_addr()::text", &[])
        .await
        .expect("query");
    assert_eq!(row.get::<_, String>(0), "127.0.0.2/32");
    // The other way round, the certificate does not name the host: verify-full refuses.
    let mut spec = ProxySpec::new(si);
    spec.target.host = Some("127.0.0.2".into());
    spec.proxy.connect_to = rule("127.0.0.2", port, format!("localhost:{port}"));
    let proxy = spec.start().await;
    let e = pg(proxy.addr, &si.info.iam_user, &si.info.database)
        .await
        .expect_err("certificate does not name 127.0.0.2");
    assert_eq!(code(&e), "08006", "{e}");
    let text = message(&e);
    assert!(
        text.contains("via localhost") && text.contains("TLS"),
        "{text}"
    );
}

#[test]
fn check_resolves_and_connects_through_connect_to() {
    let si = StandIn::start(true);
    let port = si.info.port.to_string();
    let (ok, out) = run_joined(
        Command::new(BIN)
            .args(["check", "--host", "localhost", "--port", &port, "--ca-file"])
            .arg(&si.info.ca_file)
            .args([
                "--connect-to",
                &format!("localhost:{port}:127.0.0.2:{port}"),
            ])
            .args(["--login", "--login-user", &si.info.iam_user])
            .args(["--database", &si.info.database])
            .envs(si.aws_env())
            .env(
                "AWS_ENDPOINT_URL_STS",
                si.info.sts_endpoint.clone().expect("moto"),
            ),
    );
    assert!(ok, "{out}");
    let via =
        format!("DNS 127.0.0.2 -> 127.0.0.2 (--connect-to localhost:{port} -> 127.0.0.2:{port})");
    assert!(out.contains(&via), "{out}");
    assert!(out.contains("login as iam_dbuser"), "{out}");
}
