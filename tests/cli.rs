//! The real binary: `token` (static keys and assume-role through moto's STS), and `run`
//! with JSON logs that never contain a secret, and a graceful SIGTERM drain.

mod support;

use std::process::{Command, Stdio};

use support::running::{Running, BIN};
use support::{pg, run_joined, StandIn};

/// psql straight to the stand-in over verify-full TLS with `password`.
fn direct_login(si: &StandIn, user: &str, password: &str) -> (bool, String) {
    run_joined(
        Command::new("psql")
            .args(["-X", "-A", "-t", "-c", "select current_user"])
            .arg(format!(
                "host=localhost port={} user={user} dbname={} sslmode=verify-full sslrootcert={}",
                si.info.port,
                si.info.database,
                si.info.ca_file.display()
            ))
            .env("PGPASSWORD", password),
    )
}

fn token_cmd(si: &StandIn) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["token", "--host", "localhost", "--port"])
        .arg(si.info.port.to_string())
        .args(["--user", &si.info.iam_user])
        .envs(si.aws_env())
        .stdin(Stdio::null());
    cmd
}

#[test]
fn token_prints_one_token_that_the_server_accepts() {
    let si = StandIn::shared();
    let out = token_cmd(si).output().expect("run token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf8");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = stdout.trim();
    assert!(token.starts_with(&format!(
        "localhost:{}/?Action=connect&DBUser=iam_dbuser&",
        si.info.port
    )));
    let (ok, text) = direct_login(si, &si.info.iam_user, token);
    assert!(ok, "{text}");
    assert_eq!(text.trim(), "iam_dbuser");
}

#[test]
fn token_without_a_region_fails_clearly() {
    let si = StandIn::shared();
    let out = token_cmd(si)
        .env_remove("AWS_REGION")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no AWS region for localhost") && stderr.contains("--region"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn token_with_assume_role_is_signed_with_the_role_credentials() {
    let si = StandIn::start(true);
    let sts = si.info.sts_endpoint.clone().expect("moto STS");
    let out = token_cmd(&si)
        .args([
            "--role-arn",
            "arn:aws:iam::123456789012:role/rdsa-iam-dbuser-role",
        ])
        .args(["--role-session-name", "pg-iam-proxy-test"])
        .env("AWS_ENDPOINT_URL_STS", &sts)
        .output()
        .expect("run token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_owned();
    assert!(token.contains("X-Amz-Credential=ASIA"), "{token}");
    assert!(token.contains("X-Amz-Security-Token="), "{token}");
    assert!(
        !token.contains(&si.info.access_key_id),
        "not signed with the source keys"
    );
    let (ok, text) = direct_login(&si, &si.info.iam_user, &token);
    assert!(ok, "the server accepts the role's token: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_open_sessions_and_logs_no_secrets() {
    let si = StandIn::shared();
    let mut proxy = Running::start(si, &["--max-shutdown-delay", "60s"]);
    let addr = proxy.addr();
    let (client, conn) = pg(addr, &si.info.iam_user, &si.info.database)
        .await
        .expect("connect");
    // A session is busy when SIGTERM arrives...
    let busy = tokio::spawn(async move {
        client
            .simple_query("select pg_sleep(1.5), 'finished'")
            .await
            .map(|_| client)
    });
    proxy.signal(libc::SIGTERM);
    proxy.wait_for("SIGTERM");
    // ...new connections are refused at once...
    let refused = pg(addr, &si.info.iam_user, &si.info.database).await;
    assert!(refused.is_err(), "listener closed after SIGTERM");
    // ...and the busy one finishes its query, then leaves; the proxy exits 0.
    let client = busy
        .await
        .expect("join")
        .expect("query finished during the drain");
    drop(client);
    let _ = conn.await;
    let (status, lines) = proxy.rest();
    assert_eq!(status.code(), Some(0), "{lines:#?}");
    let logs = lines.join("\n");
    assert!(
        logs.contains("\"user\":\"iam_dbuser\""),
        "connection span in the logs: {logs}"
    );
    for secret in [
        si.info.secret_access_key.as_str(),
        "X-Amz-Signature",
        "X-Amz-Credential",
    ] {
        assert!(!logs.contains(secret), "{secret} leaked into the logs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_still_open_after_the_drain_are_cut_with_exit_code_1() {
    let si = StandIn::shared();
    let mut proxy = Running::start(si, &["--max-shutdown-delay", "1s"]);
    let addr = proxy.addr();
    let (client, _conn) = pg(addr, &si.info.iam_user, &si.info.database)
        .await
        .expect("connect");
    client.simple_query("select 1").await.expect("query");
    proxy.signal(libc::SIGTERM);
    let (status, lines) = proxy.rest();
    assert_eq!(status.code(), Some(1), "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains("cutting open sessions")));
    assert!(
        client.simple_query("select 1").await.is_err(),
        "the session was cut"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_listener_needs_allow_remote_clients_tls_and_client_auth() {
    let si = StandIn::shared();
    let (status, lines) = Running::start_on(si, "0.0.0.0:0", &[]).rest();
    assert_eq!(status.code(), Some(2), "a configuration error: {lines:#?}");
    let logs = lines.join("\n");
    assert!(
        logs.contains("--allow-remote-clients") && !logs.contains("\"listening\""),
        "{logs}"
    );
    let consent = ["--allow-remote-clients"];
    let (status, lines) = Running::start_on(si, "0.0.0.0:0", &consent).rest();
    assert_eq!(
        status.code(),
        Some(2),
        "TLS and client auth missing: {lines:#?}"
    );
    let logs = lines.join("\n");
    assert!(
        logs.contains("--client-tls-cert") && logs.contains("--client-auth-file"),
        "{logs}"
    );

    let dir = tempfile::tempdir().expect("dir");
    let auth = dir.path().join("users.txt");
    let verifier = postgres_protocol::password::scram_sha_256(b"pw");
    std::fs::write(&auth, format!("\"alice\" \"{verifier}\"\n")).expect("auth file");
    let certs = si.info.ca_file.parent().expect("dir");
    let (cert, key) = (certs.join("server.crt"), certs.join("server.key"));
    let flags = [
        "--allow-remote-clients",
        "--client-tls-cert",
        cert.to_str().expect("path"),
        "--client-tls-key",
        key.to_str().expect("path"),
        "--client-auth-file",
        auth.to_str().expect("path"),
    ];
    let mut proxy = Running::start_on(si, "0.0.0.0:0", &flags);
    proxy.wait_for("listening beyond loopback");
    let port = proxy.addr().port();
    let (client, _conn) = pg(
        ([127, 0, 0, 1], port).into(),
        &si.info.iam_user,
        &si.info.database,
    )
    .await
    .expect("connect");
    client.simple_query("select 1").await.expect("query");
    drop(client);
    proxy.signal(libc::SIGTERM);
    assert_eq!(proxy.rest().0.code(), Some(0));
}
