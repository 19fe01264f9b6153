//! Real drivers in transaction mode, over a pool of 2 server connections: several clients of
//! each driver at once, each interleaving transactions (explicit, autocommit, lone statements)
//! with server-prepared statements under the driver's own names (the same names on every
//! connection, texts that differ per client), so statements move between server connections.
//! Each checks that every client got its own results, that statements were re-prepared on
//! another connection, and that no client was pinned (`pool_pinned_clients_total`) unless the
//! driver itself does what pins. Drivers: psycopg 3 (`prepare_threshold=0`, `prepare=True`,
//! and rollbacks, after which it sends `DEALLOCATE ALL`),
//! asyncpg (plain connections, and `create_pool`, whose release runs a reset query), pgjdbc
//! (Debian's postgresql.jar, `prepareThreshold=1`, autocommit, explicit transactions, a
//! batch). The scripts live in tests/drivers/{python,java}; scripts/install-test-deps
//! installs what they need.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use support::metrics::pins;
use support::pg::admin;
use support::{repo, ProxySpec, StandIn};

/// What a driver run may take at most.
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// A transaction-mode proxy with a pool of 2 and its operator endpoint.
async fn txn_proxy(si: &StandIn) -> (support::Proxy, SocketAddr) {
    let http = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    let mut spec = ProxySpec::new(si);
    spec.target.pool_mode = Some(pg_iam_proxy::config::PoolMode::Transaction);
    spec.target.pool_size = Some(2);
    spec.proxy.http_addr = Some(http);
    (spec.start().await, http)
}

/// The sum of the proxy's metric `name` (every label set).
async fn metric(http: SocketAddr, name: &str) -> f64 {
    let (status, body) = support::http(http, "GET", "/metrics").await;
    assert_eq!(status, 200, "/metrics: {body}");
    let full = format!("pg_iam_proxy_{name}");
    body.lines()
        .filter(|l| l.starts_with(&full) && l[full.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Runs `cmd` (its environment pointed at the proxy) to its end within [`RUN_LIMIT`]; returns
/// the one JSON line it printed.
async fn run(mut cmd: tokio::process::Command, what: &str) -> Value {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what} ({e}): run scripts/install-test-deps"));
    let out = tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {RUN_LIMIT:?}"))
        .expect("driver output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {stdout}"))
}

/// A Python driver script of tests/drivers/python with libpq's variables set for the proxy.
fn python(si: &StandIn, proxy: &support::Proxy, script: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(repo().join("tests/drivers/python").join(script));
    pg_env(&mut cmd, si, proxy);
    cmd
}

fn pg_env(cmd: &mut tokio::process::Command, si: &StandIn, proxy: &support::Proxy) {
    cmd.env("PGHOST", proxy.addr.ip().to_string())
        .env("PGPORT", proxy.addr.port().to_string())
        .env("PGUSER", &si.info.iam_user)
        .env("PGDATABASE", &si.info.database)
        .env("PGSSLMODE", "disable")
        .env("PGCONNECT_TIMEOUT", "20")
        .env_remove("PGPASSWORD")
        .env_remove("PGSERVICE");
}

/// Checks every client of `result` got only its own results, and that some client's
/// statements ran on more than one backend; returns the number of clients.
fn own_results(result: &Value, what: &str) -> usize {
    let clients = result["clients"].as_array().expect("clients");
    let moved = (0..clients.len()).filter(|i| backends(result, *i, what) > 1);
    assert!(
        moved.count() > 0,
        "{what}: no client ever changed backends: {result}"
    );
    clients.len()
}

/// Checks client `i` of `result` got only its own results; returns how many backends it saw.
fn backends(result: &Value, i: usize, what: &str) -> usize {
    let c = &result["clients"][i];
    assert_eq!(c["wrong"], serde_json::json!([]), "{what}: {c}");
    let pids = c["pids"].as_array().expect("pids");
    assert!(!pids.is_empty() && pids.len() <= 2, "{what}: {c}");
    pids.len()
}

/// Checks nobody was pinned and statements were prepared again on another connection.
async fn unpinned_and_reprepared(http: SocketAddr, what: &str) {
    // Counted before the client reads the ReadyForQuery that ends the transaction, so
    // before the driver finished.
    let pinned = metric(http, "pool_pinned_clients_total").await;
    assert_eq!(pinned, 0.0, "{what} pinned clients: {:?}", pins(http).await);
    let reprepared = metric(http, "pool_prepared_statements_reprepared_total").await;
    assert!(reprepared >= 1.0, "{what}: no statement re-prepared");
    assert!(
        metric(http, "pool_transactions_total").await >= 1.0,
        "{what}"
    );
}

/// Runs `script` of tests/drivers/python with `env` through a fresh proxy: its result, the
/// proxy's operator address, and the proxy (kept running for its metrics).
async fn python_run(script: &str, env: &[(&str, &str)]) -> (Value, SocketAddr, support::Proxy) {
    let si = StandIn::shared();
    let (proxy, http) = txn_proxy(si).await;
    let mut cmd = python(si, &proxy, script);
    cmd.envs(env.iter().copied());
    let result = run(cmd, &format!("{script} {env:?}")).await;
    println!("{result}");
    (result, http, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_prepared_statements_in_transaction_mode() {
    let env = [("CLIENTS", "4"), ("ROUNDS", "15")];
    let (result, http, _proxy) = python_run("psycopg_txn.py", &env).await;
    assert_eq!(own_results(&result, "psycopg"), 4);
    unpinned_and_reprepared(http, "psycopg").await;
}

/// psycopg's rollback() sends DEALLOCATE ALL once it has prepared statements (its
/// prepared-statement cache is cleared, on the server too), then prepares them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_rollback_deallocates_all_without_pinning() {
    let env = [("CLIENTS", "4"), ("ROUNDS", "12"), ("ROLLBACKS", "1")];
    let (result, http, _proxy) = python_run("psycopg_txn.py", &env).await;
    assert_eq!(own_results(&result, "psycopg with rollbacks"), 4);
    for c in result["clients"].as_array().expect("clients") {
        assert_eq!(c["rolled_back"], 4, "{c}");
    }
    unpinned_and_reprepared(http, "psycopg with rollbacks").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_connections_in_transaction_mode() {
    let env = [("MODE", "connections"), ("CLIENTS", "4")];
    let (result, http, _proxy) = python_run("asyncpg_txn.py", &env).await;
    assert_eq!(own_results(&result, "asyncpg"), 4);
    unpinned_and_reprepared(http, "asyncpg").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_pool_release_does_not_pin() {
    let env = [("MODE", "pool"), ("CLIENTS", "3")];
    let (result, http, _proxy) = python_run("asyncpg_txn.py", &env).await;
    assert_eq!(own_results(&result, "asyncpg pool"), 6);
    unpinned_and_reprepared(http, "asyncpg pool").await;
}

/// TxnDriver.java compiled into `dir`.
async fn compile_java(dir: &Path) {
    let source = repo().join("tests/drivers/java/TxnDriver.java");
    let mut javac = tokio::process::Command::new("javac");
    javac.arg("-d").arg(dir).arg(source);
    let out = tokio::time::timeout(RUN_LIMIT, javac.kill_on_drop(true).output())
        .await
        .expect("javac finished")
        .unwrap_or_else(|e| panic!("cannot run javac ({e}): run scripts/install-test-deps"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "javac: {stderr}");
}

/// Debian's pgjdbc.
fn jdbc_jar() -> PathBuf {
    let jar = PathBuf::from("/usr/share/java/postgresql.jar");
    assert!(
        jar.exists(),
        "{} missing: run scripts/install-test-deps",
        jar.display()
    );
    jar
}

/// Runs TxnDriver.java (compiled into a temp dir) with `clients` clients of `rounds` rounds
/// through a fresh proxy, the JDBC URL's parameters `params` added to the test's own, and
/// a table made for it: its result, the proxy's operator address, and the proxy.
async fn jdbc_run(
    params: &str,
    clients: usize,
    rounds: usize,
) -> (Value, SocketAddr, support::Proxy) {
    let si = StandIn::shared();
    let jar = jdbc_jar();
    let classes = tempfile::tempdir().expect("a temp dir");
    compile_java(classes.path()).await;
    let admin = admin(si).await;
    let table = format!("txn_jdbc_{}_{}", std::process::id(), support::free_port());
    let create = format!(
        "CREATE TABLE {table} (client int, n int); GRANT SELECT, INSERT ON {table} TO {}",
        si.info.iam_user
    );
    admin.batch_execute(&create).await.expect("create table");
    let (proxy, http) = txn_proxy(si).await;
    let url = format!(
        "jdbc:postgresql://{}/{}?user={}&sslmode=disable&prepareThreshold=1\
         &connectTimeout=20&socketTimeout=60{params}",
        proxy.addr, si.info.database, si.info.iam_user
    );
    let mut cmd = tokio::process::Command::new("java");
    let classpath = format!("{}:{}", classes.path().display(), jar.display());
    let (n, r) = (clients.to_string(), rounds.to_string());
    cmd.args(["-cp", &classpath, "TxnDriver", &url, &n, &r, &table]);
    let result = run(cmd, &format!("pgjdbc {params}")).await;
    let drop = admin.batch_execute(&format!("DROP TABLE {table}")).await;
    drop.expect("drop table");
    println!("{result}");
    (result, http, proxy)
}

/// pgjdbc with the URL's `params`, 4 clients of 8 rounds over the pool of 2: each moves
/// between backends, commits every batch and keeps `extra_float_digits` 3 (the setting it
/// makes at connect); none is pinned and statements are prepared again.
async fn jdbc_unpinned(params: &str, what: &str) {
    let (result, http, _proxy) = jdbc_run(params, 4, 8).await;
    assert_eq!(own_results(&result, what), 4);
    for c in result["clients"].as_array().expect("clients") {
        assert_eq!(c["batched"], 3 * 8, "every batch committed: {c}");
        assert_eq!(c["extra_float_digits"], "3", "{c}");
    }
    unpinned_and_reprepared(http, what).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc_server_prepared_statements_in_transaction_mode() {
    // assumeMinServerVersion: the settings go in the StartupMessage instead of SETs after
    // connecting.
    jdbc_unpinned("&assumeMinServerVersion=9.4", "pgjdbc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc_with_its_defaults_is_not_pinned_by_its_set() {
    // pgjdbc's defaults: `SET extra_float_digits = 3` and `SET application_name` after
    // connecting, tracked settings (README, Transaction pooling): every client keeps them on
    // whichever connection its transactions run, and none is pinned.
    jdbc_unpinned("", "pgjdbc (defaults)").await;
}
