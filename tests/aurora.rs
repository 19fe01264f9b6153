//! Aurora topology against the stand-in cluster (`standin.py --cluster`: real PostgreSQL 15
//! writer and streaming replicas, each checking certificates and tokens for its own names).
//! The proxy reaches every name through `--connect-to` with verify-full; the cluster names
//! stay mapped to the first writer, so after a failover they are stale DNS.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::metrics::{http_addr, metric, metric_until};
use support::{code, http, pg, ProxySpec, StandIn};

/// (instance, in recovery) of a session.
async fn whoami(client: &tokio_postgres::Client) -> Result<(String, bool), tokio_postgres::Error> {
    let row = client
        .query_one(
            "select aurora_db_instance_identifier(), pg_is_in_recovery()",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// A new client through the proxy writes one row; the instance it landed on.
async fn write_once(proxy: SocketAddr, si: &StandIn, id: i32) -> Result<String, String> {
    let (client, _c) = pg(proxy, &si.info.iam_user, &si.info.database)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let row = client
        .query_one(
            "insert into t values ($1, 'x') returning aurora_db_instance_identifier()",
            &[&id],
        )
        .await
        .map_err(|e| format!("{}: {e}", code(&e)))?;
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failover_writes_reach_the_new_writer_within_2s_despite_stale_dns() {
    // The proxy's log, shown if the test fails.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("pg_iam_proxy=info")
        .with_test_writer()
        .try_init();
    let si = Arc::new(StandIn::start_cluster(2));
    let c = si.cluster().clone();
    let metrics = http_addr();
    let mut spec = ProxySpec::cluster(&si, &c.cluster_host);
    spec.proxy.http_addr = Some(metrics);
    spec.target.pool_min_idle = Some(2);
    let target = c.cluster_host.clone();
    let proxy = spec.start().await;
    assert_eq!(write_once(proxy.addr, &si, 1000).await, Ok("inst-1".into()));
    let writer = format!("pg_iam_proxy_aurora_writer{{target=\"{target}\",instance=\"inst-1\"}}");
    metric_until(metrics, &writer, 1.0).await;
    // Tokens: the cluster endpoint's (bootstrap), then one per instance, kept warm.
    let deadline = Instant::now() + Duration::from_secs(20);
    while proxy.cache.stats().signings < 3 {
        assert!(Instant::now() < deadline, "{:?}", proxy.cache.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let signed_before = proxy.cache.stats().signings;
    // A session held on the old writer, and idle pooled connections to it (min-idle 2).
    let (held, _h) = pg(proxy.addr, &si.info.iam_user, &si.info.database)
        .await
        .expect("held session");
    assert_eq!(whoami(&held).await.expect("who"), ("inst-1".into(), false));

    let started = Instant::now();
    let cluster = si.clone();
    let failover =
        tokio::task::spawn_blocking(move || cluster.failover(serde_json::json!({"pause_s": 0.5})));
    let mut id = 2000;
    let landed = loop {
        id += 1;
        match write_once(proxy.addr, &si, id).await {
            Ok(instance) if instance == "inst-2" => break started.elapsed(),
            other => {
                eprintln!("{:?} attempt: {other:?}", started.elapsed());
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "no write reached the new writer: {other:?}"
                );
            }
        }
    };
    eprintln!("first write on the new writer {landed:?} after the failover started");
    let timings = failover.await.expect("failover");
    // Within 2 s of the start; on a machine so loaded that the stand-in itself took longer
    // to promote, within 1 s of the promotion.
    let promoted = Duration::from_secs_f64(timings["promoted_s"].as_f64().expect("promoted_s"));
    assert!(
        landed <= Duration::from_secs(2)
            || landed.saturating_sub(promoted) <= Duration::from_secs(1),
        "a write reached the new writer {landed:?} after the failover started ({timings})"
    );
    assert_eq!(timings["new_writer"], "inst-2", "{timings}");
    // The session on the old writer ended with the server's own error.
    let e = held
        .simple_query("select 1")
        .await
        .expect_err("the old writer went away");
    assert!(
        e.code().is_none_or(|c| c.code() == "57P01"),
        "unexpected error: {e}"
    );
    // The old writer is back, read-only, and the cluster name still leads to it: every later
    // connection (pooled or new) still lands on the new writer.
    for n in 0..10 {
        assert_eq!(
            write_once(proxy.addr, &si, 3000 + n).await,
            Ok("inst-2".into())
        );
    }
    assert_eq!(
        proxy.cache.stats().signings,
        signed_before,
        "the failover waited on no signing: the new writer's token was warm"
    );
    let stale = format!("pg_iam_proxy_pool_server_closes_total{{target=\"{target}\"");
    let closed_stale = {
        let (_, body) = http(metrics, "GET", "/metrics").await;
        body.lines()
            .filter(|l| l.starts_with(&stale) && l.contains("reason=\"stale\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    assert!(
        closed_stale >= 1.0,
        "pooled connections to the old writer were closed"
    );
    let failovers = format!("pg_iam_proxy_aurora_failovers_total{{target=\"{target}\"}}");
    assert_eq!(metric(metrics, &failovers).await, 1.0);
    let now = format!("pg_iam_proxy_aurora_writer{{target=\"{target}\",instance=\"inst-2\"}}");
    assert_eq!(metric(metrics, &now).await, 1.0);
    assert_eq!(metric(metrics, &writer).await, 0.0);

    // Stale DNS indeed: the cluster name, as mapped, now reaches a read-only instance.
    let mut direct = ProxySpec::cluster(&si, &c.cluster_host);
    direct.target.instance_host_pattern = None;
    direct.proxy.connect_to = Some(vec![format!(
        "{}:{}:127.0.0.1:{}",
        c.instances[0].host, c.virtual_port, c.instances[0].port
    )]);
    direct.target.host = Some(c.instances[0].host.clone());
    let plain = direct.start().await;
    let (old, _o) = pg(plain.addr, &si.info.iam_user, &si.info.database)
        .await
        .expect("old writer by its instance name");
    assert_eq!(whoami(&old).await.expect("who"), ("inst-1".into(), true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reader_endpoint_spreads_new_connections_over_the_readers() {
    let si = StandIn::start_cluster(3);
    let c = si.cluster().clone();
    let metrics = http_addr();
    let mut spec = ProxySpec::cluster(&si, &c.reader_host);
    spec.proxy.http_addr = Some(metrics);
    spec.target.pool_mode = Some(pg_iam_proxy::config::PoolMode::None);
    let proxy = spec.start().await;
    let (first, _f) = pg(proxy.addr, &si.info.iam_user, &si.info.database)
        .await
        .expect("first");
    whoami(&first).await.expect("who");
    let changes = format!(
        "pg_iam_proxy_aurora_topology_changes_total{{target=\"{}\"}}",
        c.reader_host
    );
    metric_until(metrics, &changes, 1.0).await;
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..8 {
        let (client, _c) = pg(proxy.addr, &si.info.iam_user, &si.info.database)
            .await
            .expect("reader session");
        let (instance, recovery) = whoami(&client).await.expect("who");
        assert!(recovery, "{instance} is a reader");
        *seen.entry(instance).or_insert(0) += 1;
    }
    let spread: Vec<_> = seen.keys().cloned().collect();
    assert_eq!(spread, ["inst-2", "inst-3"], "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_postgres_target_is_unaffected_even_with_a_host_pattern() {
    let si = StandIn::shared();
    let metrics = http_addr();
    let mut spec = ProxySpec::new(si);
    spec.proxy.http_addr = Some(metrics);
    spec.target.instance_host_pattern = Some("?.nowhere.invalid".into());
    let proxy = spec.start().await;
    for _ in 0..3 {
        let (client, _c) = pg(proxy.addr, &si.info.iam_user, &si.info.database)
            .await
            .expect("plain target");
        let row = client
            .query_one("select current_user::text", &[])
            .await
            .expect("query");
        assert_eq!(row.get::<_, String>(0), si.info.iam_user);
    }
    let (_, body) = http(metrics, "GET", "/metrics").await;
    assert!(
        !body.contains("aurora_writer{"),
        "no topology for a plain server: {body}"
    );
}

#[test]
fn check_prints_the_topology_through_connect_to() {
    let si = StandIn::start_with(&["--cluster", "--sts"]);
    let c = si.cluster().clone();
    let mut cmd = std::process::Command::new(support::running::BIN);
    cmd.args(["check", "--host", &c.cluster_host, "--ca-file"])
        .arg(&si.info.ca_file)
        .args(["--login", "--login-user", &si.info.iam_user])
        .args(["--database", &si.info.database])
        .envs(si.aws_env())
        .env("PG_IAM_PROXY_CONNECT_TO", c.connect_to.join(","))
        .env(
            "AWS_ENDPOINT_URL_STS",
            si.info.sts_endpoint.clone().expect("moto"),
        );
    let (ok, out) = support::run_joined(&mut cmd);
    assert!(ok, "{out}");
    let inst = |n: usize| format!("{} ({})", c.instances[n].id, c.instances[n].host);
    let line = format!(
        "Aurora topology (logged in on inst-1): writer {}; readers {}; new connections go to the writer",
        inst(0),
        inst(1)
    );
    assert!(out.contains(&line), "{out}");
}
