//! Operating the proxy as a sidecar: health endpoints through the lifecycle, the connection
//! limit (SQLSTATE 53300), metrics, /quitquitquit with a minimum shutdown delay, `wait`, and
//! `check` against the stand-in and moto's STS.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::metrics::http_addr;
use support::running::BIN;
use support::{code, free_port, http, http_until, message, pg, run_joined, ProxySpec, StandIn};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_limit_and_metrics() {
    let si = StandIn::shared();
    let admin = http_addr();
    let mut spec = ProxySpec::new(si);
    spec.proxy.http_addr = Some(admin);
    spec.proxy.max_connections = Some(1);
    let proxy = spec.start().await;
    http_until(admin, "/startup", 200).await;
    assert_eq!(http(admin, "GET", "/liveness").await.0, 200);
    assert_eq!(http(admin, "GET", "/readiness").await.0, 200);
    assert_eq!(
        http(admin, "POST", "/quitquitquit").await.0,
        404,
        "opt-in only"
    );
    assert_eq!(http(admin, "GET", "/nope").await.0, 404);

    // At the limit: readiness turns 503 and the next client gets 53300.
    let (held, _c) = pg(proxy.addr, &si.info.iam_user, &si.info.database)
        .await
        .expect("first");
    held.simple_query("select 1").await.expect("query");
    // Relayed bytes show while the session is still open, not only once it ends.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = http(admin, "GET", "/metrics").await.1;
        let counted = |direction: &str| {
            let series = format!(
                "pg_iam_proxy_relayed_bytes_total{{target=\"localhost\",direction=\"{direction}\"}} "
            );
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(series.as_str()))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        if counted("to_server") > 0 && counted("to_client") > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no relayed bytes counted for an open session:\n{metrics}"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(http(admin, "GET", "/readiness").await.0, 503);
    let err = match pg(proxy.addr, &si.info.iam_user, &si.info.database).await {
        Ok(_) => panic!("over the limit"),
        Err(e) => e,
    };
    assert_eq!(code(&err), "53300", "{}", message(&err));
    drop(held);
    http_until(admin, "/readiness", 200).await;

    // A failed login is counted by reason.
    let _ = pg(proxy.addr, &si.info.plain_user, &si.info.database).await;
    let (status, metrics) = http(admin, "GET", "/metrics").await;
    assert_eq!(status, 200);
    for needle in [
        "pg_iam_proxy_client_connections_total{target=\"localhost\"} 2",
        "pg_iam_proxy_client_connections_refused_at_limit_total 1",
        "pg_iam_proxy_upstream_connect_seconds_bucket{",
        "pg_iam_proxy_login_failures_total{target=\"localhost\",reason=\"not_iam\"} 1",
        "pg_iam_proxy_relayed_bytes_total{target=\"localhost\",direction=\"to_client\"}",
        // Two users, two keys: two cold misses, two signings.
        "pg_iam_proxy_token_cache_hits_total 0",
        "pg_iam_proxy_token_cache_misses_total 2",
        "pg_iam_proxy_token_refreshes_total 2",
        "pg_iam_proxy_token_refresh_failures_total 0",
    ] {
        assert!(metrics.contains(needle), "{needle} missing in\n{metrics}");
    }
    assert!(!metrics.contains(&si.info.secret_access_key));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quitquitquit_turns_readiness_off_and_drains_after_the_minimum_delay() {
    let si = StandIn::shared();
    let admin = http_addr();
    let mut spec = ProxySpec::new(si);
    spec.proxy.http_addr = Some(admin);
    spec.proxy.quitquitquit = Some(true);
    spec.proxy.min_shutdown_delay = Some(Duration::from_secs(3));
    let proxy = spec.start().await;
    http_until(admin, "/readiness", 200).await;
    assert_eq!(http(admin, "GET", "/quitquitquit").await.0, 405);
    assert_eq!(http(admin, "POST", "/quitquitquit").await.0, 200);
    // Readiness is off at once, while the listener still accepts during the minimum delay.
    assert_eq!(http(admin, "GET", "/readiness").await.0, 503);
    assert_eq!(http(admin, "GET", "/liveness").await.0, 200);
    let (client, _c) = pg(proxy.addr, &si.info.iam_user, &si.info.database)
        .await
        .expect("still accepting during the minimum delay");
    client.simple_query("select 1").await.expect("query");
    drop(client);
    let report = tokio::time::timeout(Duration::from_secs(30), proxy.task)
        .await
        .expect("the proxy stops after the delay")
        .expect("join");
    assert_eq!(report.cut_sessions, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_exits_0_once_started_and_1_when_nothing_starts() {
    let si = StandIn::shared();
    let admin = http_addr();
    let mut spec = ProxySpec::new(si);
    spec.proxy.http_addr = Some(admin);
    let _proxy = spec.start().await;
    let wait = |addr: SocketAddr, max: &str| {
        Command::new(BIN)
            .args(["wait", "--max", max, "--http-addr", &addr.to_string()])
            .stdin(Stdio::null())
            .output()
            .expect("run wait")
    };
    let started = tokio::task::spawn_blocking(move || wait(admin, "20s"))
        .await
        .expect("join");
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let nothing = http_addr();
    let out = tokio::task::spawn_blocking(move || wait(nothing, "1s"))
        .await
        .expect("join");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not started after"));
}

fn check(si: &StandIn, extra: &[&str], sts: &str) -> (bool, String) {
    // The target comes from the environment, so that flags in `extra` override it.
    run_joined(
        Command::new(BIN)
            .arg("check")
            .env("PG_IAM_PROXY_HOST", "localhost")
            .env("PG_IAM_PROXY_PORT", si.info.port.to_string())
            .env("PG_IAM_PROXY_CA_FILE", &si.info.ca_file)
            .args(extra)
            .envs(si.aws_env())
            .env("AWS_ENDPOINT_URL_STS", sts),
    )
}

#[test]
fn check_passes_against_the_stand_in_and_names_each_failure() {
    let si = StandIn::start(true);
    let sts = si.info.sts_endpoint.clone().expect("moto");
    let login = [
        "--login",
        "--login-user",
        "iam_dbuser",
        "--database",
        "labdb",
    ];
    let (ok, text) = check(&si, &login, &sts);
    assert!(ok, "{text}");
    for line in [
        "ok    config: 1 target(s)",
        "ok    credentials (default credential chain)",
        "account 123456789012",
        "ok    localhost: region us-east-1",
        "ok    localhost: DNS localhost -> ",
        "ok    localhost: TLS verify-full to 127.0.0.1:",
        "ok    localhost: pool session: up to 50 server connections per (user, database, \
         options), 0 kept idle, idle ones closed after 10m, none older than 1h, reset with \
         DISCARD ALL, clients wait up to 1m",
        "ok    localhost: login as iam_dbuser to labdb",
        "ok    localhost: reset query DISCARD ALL runs on the logged-in connection",
        "all checks passed",
    ] {
        assert!(text.contains(line), "{line} missing in\n{text}");
    }
    assert!(!text.contains(&si.info.secret_access_key));

    let (ok, text) = check(
        &si,
        &[
            "--role-arn",
            "arn:aws:iam::123456789012:role/rdsa-iam-dbuser-role",
        ],
        &sts,
    );
    assert!(ok, "{text}");
    assert!(text.contains("assumed-role/rdsa-iam-dbuser-role"), "{text}");

    // No pool, no reset: the reset query is not run (nor would it be on release).
    let none = [
        &login[..],
        &["--pool-mode", "none", "--server-reset-query", "SELEC 1"],
    ];
    let (ok, text) = check(&si, &none.concat(), &sts);
    assert!(ok, "{text}");
    let line = "ok    localhost: pool none: every client gets its own IAM login\n";
    assert!(text.contains(line), "{line} missing in\n{text}");
    assert!(!text.contains("reset query"), "{text}");

    // Rows, notices and ParameterStatus from a reset query are read past.
    let chatty = "SELECT 1; DO $$BEGIN RAISE NOTICE 'hi'; END$$; RESET application_name";
    let settings = [
        "--pool-size",
        "7",
        "--pool-min-idle",
        "2",
        "--server-idle-timeout",
        "90s",
        "--server-lifetime",
        "2h",
        "--pool-timeout",
        "5s",
        "--server-reset-query",
        chatty,
    ];
    let (ok, text) = check(&si, &[&login[..], &settings].concat(), &sts);
    assert!(ok, "{text}");
    for line in [
        format!(
            "ok    localhost: pool session: up to 7 server connections per (user, database, \
             options), 2 kept idle, idle ones closed after 1m 30s, none older than 2h, reset \
             with {chatty}, clients wait up to 5s\n"
        ),
        format!("ok    localhost: reset query {chatty} runs on the logged-in connection\n"),
    ] {
        assert!(text.contains(&line), "{line} missing in\n{text}");
    }

    let wrong_ca = si.info.wrong_ca_file.to_str().expect("utf8").to_owned();
    let cases: Vec<(Vec<&str>, String, &str)> = vec![
        (
            vec!["--ca-file", &wrong_ca],
            sts.clone(),
            "FAIL  localhost: TLS handshake with localhost",
        ),
        (
            vec!["--port", "1"],
            sts.clone(),
            "FAIL  localhost: cannot connect to localhost:1",
        ),
        (
            vec![
                "--login",
                "--login-user",
                "plain_user",
                "--database",
                "labdb",
            ],
            sts.clone(),
            "not an IAM database user",
        ),
        (
            [&login[..], &["--server-reset-query", "SELEC 1"]].concat(),
            sts.clone(),
            "FAIL  localhost: --server-reset-query \"SELEC 1\" failed on the logged-in \
             connection: 42601 | syntax error at or near \"SELEC\"",
        ),
        (
            [&login[..], &["--server-reset-query", "BEGIN"]].concat(),
            sts.clone(),
            "FAIL  localhost: --server-reset-query \"BEGIN\" failed on the logged-in \
             connection: the connection is not idle afterwards (transaction status 'T')",
        ),
        (
            vec![],
            format!("http://127.0.0.1:{}", free_port()),
            "FAIL  credentials (default credential chain): STS GetCallerIdentity failed",
        ),
        (
            vec!["--tls-mode", "none"],
            sts.clone(),
            "invalid value 'none'",
        ),
    ];
    for (extra, sts, want) in cases {
        let (ok, text) = check(&si, &extra, &sts);
        assert!(!ok, "{extra:?} should fail:\n{text}");
        assert!(text.contains(want), "{want} missing in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_are_closed_after_the_idle_timeout() {
    let si = StandIn::shared();
    let mut spec = ProxySpec::new(si);
    spec.proxy.idle_timeout = Some(Duration::from_secs(1));
    let proxy = spec.start().await;
    let (client, connection) = pg(proxy.addr, &si.info.iam_user, &si.info.database)
        .await
        .expect("connect");
    let started = std::time::Instant::now();
    client.simple_query("select 1").await.expect("query");
    // The proxy closes the idle session; the client's connection task ends on its own.
    tokio::time::timeout(Duration::from_secs(20), connection)
        .await
        .expect("the idle session was closed")
        .expect("join");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(client.simple_query("select 1").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_when_the_assumed_role_credentials_expire() {
    let si = StandIn::start(true);
    let admin = http_addr();
    let mut spec = ProxySpec::new(&si);
    spec.proxy.http_addr = Some(admin);
    spec.target.role_arn = Some("arn:aws:iam::123456789012:role/rdsa-iam-dbuser-role".into());
    let proxy = spec.start().await;
    http_until(admin, "/startup", 200).await;
    let (client, _c) = pg(proxy.addr, &si.info.iam_user, &si.info.database)
        .await
        .expect("login with the role's token");
    client.simple_query("select 1").await.expect("query");
    let (_, metrics) = http(admin, "GET", "/metrics").await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("pg_iam_proxy_credentials_expiry_seconds "))
        .unwrap_or_else(|| panic!("no expiry gauge in\n{metrics}"));
    let seconds: f64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("value");
    assert!(seconds > 60.0 && seconds <= 43_200.0, "{line}");
}
