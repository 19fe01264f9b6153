//! Session pooling against the real stand-in: a reused server connection (same backend pid)
//! carries nothing from one client to the next; a connection that is not provably idle is
//! never reused; the pool's limit, wait and timeout; idle and lifetime expiry; a pooled
//! connection the server ended is never handed out; a cancel after release reaches no one;
//! reused connections cost no IAM login.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::pg::{admin, backend_gone, connect, connect_as, one, pid};
use support::wire::until_ready;
use support::{code, message, pg, ProxySpec, StandIn};
use tokio::io::AsyncWriteExt;

/// A proxy in session mode with one server connection per pool, so every client that gets a
/// reused connection gets the same backend.
async fn pooled(si: &StandIn, tune: impl FnOnce(&mut ProxySpec)) -> support::Proxy {
    let mut spec = ProxySpec::new(si);
    spec.target.pool_mode = Some(pg_iam_proxy::config::PoolMode::Session);
    spec.target.pool_size = Some(1);
    tune(&mut spec);
    spec.start().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_connection_carries_nothing_from_the_last_client() {
    let si = StandIn::shared();
    let proxy = pooled(si, |_| {}).await;
    let a = connect(si, proxy.addr).await;
    let first = pid(&a).await;
    let timezone = one(&a, "SHOW TimeZone").await;
    a.batch_execute(
        "CREATE TEMP TABLE leak (x int);
         PREPARE leak_sql AS SELECT 1;
         SET TimeZone = 'Pacific/Chatham';
         SET search_path = leak_schema;
         SELECT pg_advisory_lock(4242);
         LISTEN leak_channel;",
    )
    .await
    .expect("session state");
    a.prepare("SELECT 2")
        .await
        .expect("a protocol-level prepared statement");
    drop(a);

    let b = connect(si, proxy.addr).await;
    assert_eq!(pid(&b).await, first, "the same backend is reused");
    for (sql, want) in [
        (
            "SELECT count(*) FROM pg_class WHERE relname = 'leak' AND relpersistence = 't'",
            "0",
        ),
        ("SELECT count(*) FROM pg_prepared_statements", "0"),
        (
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
            "0",
        ),
        ("SELECT count(*) FROM pg_listening_channels()", "0"),
        ("SHOW search_path", "\"$user\", public"),
    ] {
        assert_eq!(one(&b, sql).await, want, "{sql}");
    }
    assert_eq!(one(&b, "SHOW TimeZone").await, timezone);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_application_name_gives_back_the_name_the_connection_was_opened_for() {
    let si = StandIn::shared();
    let proxy = pooled(si, |_| {}).await;
    let a = connect_as(si, proxy.addr, "orders").await;
    let first = pid(&a).await;
    a.batch_execute("SET application_name = 'changed'")
        .await
        .expect("set");
    drop(a);

    // As on a direct login: RESET returns to the name the client connected with.
    let b = connect_as(si, proxy.addr, "orders").await;
    assert_eq!(pid(&b).await, first, "the same backend is reused");
    assert_eq!(one(&b, "SHOW application_name").await, "orders");
    assert_eq!(
        one(&b, "RESET application_name; SHOW application_name").await,
        "orders"
    );
    drop(b);

    // Another app on the same connection sees its own name; RESET gives the opener's.
    let c = connect_as(si, proxy.addr, "billing").await;
    assert_eq!(pid(&c).await, first, "the same backend is reused");
    assert_eq!(one(&c, "SHOW application_name").await, "billing");
    assert_eq!(
        one(&c, "RESET application_name; SHOW application_name").await,
        "orders"
    );
    drop(c);

    // A client that names no app has none, as on a direct login (not the opener's name).
    let d = connect(si, proxy.addr).await;
    assert_eq!(pid(&d).await, first, "the same backend is reused");
    assert_eq!(one(&d, "SHOW application_name").await, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_is_not_provably_idle_is_never_reused() {
    let si = StandIn::shared();
    let proxy = pooled(si, |_| {}).await;
    let admin = admin(si).await;

    // Left inside a transaction.
    let a = connect(si, proxy.addr).await;
    let in_tx = pid(&a).await;
    a.batch_execute("BEGIN; CREATE TEMP TABLE t (x int)")
        .await
        .expect("begin");
    drop(a);
    backend_gone(&admin, &in_tx).await;

    // Killed in the middle of a query (its socket closed; the server is still busy).
    let (a, a_conn) = pg(proxy.addr, &si.info.iam_user, &si.info.database)
        .await
        .expect("connect");
    let mid_query = pid(&a).await;
    assert_ne!(mid_query, in_tx);
    let sleeping = tokio::spawn(async move {
        let _ = a.simple_query("SELECT pg_sleep(20)").await;
    });
    let running = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = {mid_query} AND state = 'active'"
    );
    while one(&admin, &running).await != "1" {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a_conn.abort();
    sleeping.abort();
    let b = connect(si, proxy.addr).await;
    assert_ne!(
        pid(&b).await,
        mid_query,
        "a connection left mid-query is not lent"
    );
    drop(b);
    one(&admin, &format!("SELECT pg_terminate_backend({mid_query})")).await;
    backend_gone(&admin, &mid_query).await;

    // In the middle of COPY FROM STDIN.
    let a = connect(si, proxy.addr).await;
    let in_copy = pid(&a).await;
    a.batch_execute("CREATE TEMP TABLE c (x int)")
        .await
        .expect("table");
    let sink = a
        .copy_in::<_, bytes::Bytes>("COPY c FROM STDIN")
        .await
        .expect("copy");
    drop(sink);
    drop(a);
    backend_gone(&admin, &in_copy).await;

    // The next client still gets a clean, working connection.
    let b = connect(si, proxy.addr).await;
    assert!(![in_tx, mid_query, in_copy].contains(&pid(&b).await));
    assert_eq!(
        one(&b, "SELECT count(*) FROM pg_prepared_statements").await,
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_makes_clients_wait_then_says_why() {
    let si = StandIn::shared();
    let proxy = pooled(si, |spec| {
        spec.target.pool_timeout = Some(Duration::from_secs(1));
    })
    .await;
    let a = connect(si, proxy.addr).await;
    let held = pid(&a).await;
    let Err(err) = pg(proxy.addr, &si.info.iam_user, &si.info.database).await else {
        panic!("a connection although the pool is full");
    };
    assert_eq!(code(&err), "53300", "{err}");
    assert!(message(&err).contains("--pool-timeout"), "{err}");

    // A waiting client gets the connection as soon as its holder leaves.
    let waiter = tokio::spawn({
        let addr = proxy.addr;
        let (user, db) = (si.info.iam_user.clone(), si.info.database.clone());
        async move { pg(addr, &user, &db).await.map(|(c, _)| c) }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(a);
    let b = waiter
        .await
        .expect("join")
        .expect("served after the holder left");
    assert_eq!(pid(&b).await, held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_old_connections_are_closed_and_never_handed_out() {
    let si = StandIn::shared();
    let admin = admin(si).await;
    let idle = pooled(si, |spec| {
        spec.target.server_idle_timeout = Some(Duration::from_secs(1));
    })
    .await;
    let a = connect(si, idle.addr).await;
    let first = pid(&a).await;
    drop(a);
    let b = connect(si, idle.addr).await;
    assert_eq!(pid(&b).await, first, "reused while not idle for long");
    drop(b);
    backend_gone(&admin, &first).await;
    let c = connect(si, idle.addr).await;
    assert_ne!(pid(&c).await, first, "the idle connection was closed");

    let short = pooled(si, |spec| {
        spec.target.server_lifetime = Some(Duration::from_secs(3));
    })
    .await;
    let a = connect(si, short.addr).await;
    let old = pid(&a).await;
    drop(a);
    let b = connect(si, short.addr).await;
    assert_eq!(pid(&b).await, old, "reused while young");
    tokio::time::sleep(Duration::from_millis(3100)).await; // let it grow old
    drop(b);
    let c = connect(si, short.addr).await;
    assert_ne!(
        pid(&c).await,
        old,
        "older than server_lifetime: not handed out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_server_ended_is_not_handed_out() {
    let si = StandIn::shared();
    let admin = admin(si).await;
    let proxy = pooled(si, |_| {}).await;
    let a = connect(si, proxy.addr).await;
    let first = pid(&a).await;
    drop(a);
    // Wait until it is back in the pool (the next client gets it), then end it server-side,
    // as a server restart or an admin would.
    let b = connect(si, proxy.addr).await;
    assert_eq!(pid(&b).await, first);
    drop(b);
    let idle =
        format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {first} AND state = 'idle'");
    while one(&admin, &idle).await != "1" {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    one(&admin, &format!("SELECT pg_terminate_backend({first})")).await;
    backend_gone(&admin, &first).await;
    let c = connect(si, proxy.addr).await;
    assert_ne!(pid(&c).await, first);
    assert_eq!(one(&c, "SELECT 1").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_after_release_reaches_no_one() {
    let si = StandIn::shared();
    let admin = admin(si).await;
    let proxy = pooled(si, |_| {}).await;
    let a = connect(si, proxy.addr).await;
    let first = pid(&a).await;
    let late_cancel = a.cancel_token();
    drop(a);
    let b = connect(si, proxy.addr).await;
    assert_eq!(pid(&b).await, first, "B holds A's old backend");
    let query = tokio::spawn(async move {
        let r = b.simple_query("SELECT pg_sleep(2)").await;
        (b, r)
    });
    let running =
        format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {first} AND state = 'active'");
    while one(&admin, &running).await != "1" {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    late_cancel
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("the proxy takes the cancel request");
    let (_b, result) = query.await.expect("join");
    assert!(result.is_ok(), "A's late cancel hit B's query: {result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_connections_cost_no_iam_login_and_terminate_is_not_forwarded() {
    let si = StandIn::start(false);
    let proxy = pooled(&si, |_| {}).await;
    let before = si.decisions().len();
    let mut pids = std::collections::HashSet::new();
    for _ in 0..20 {
        let c = connect(&si, proxy.addr).await;
        pids.insert(pid(&c).await);
    }
    assert_eq!(pids.len(), 1, "one server connection served all 20 clients");
    assert_eq!(
        si.decisions().len() - before,
        1,
        "one IAM login for 20 clients"
    );

    // Raw clients (a pool of their own: other startup parameters) that say Terminate: the
    // server connection stays in the pool, and the next one gets the same backend.
    let first = raw_session_pid(&si, proxy.addr).await;
    let second = raw_session_pid(&si, proxy.addr).await;
    assert_eq!(
        first, second,
        "Terminate was not forwarded: the backend was reused"
    );
    assert_eq!(si.decisions().len() - before, 2, "one IAM login per pool");
}

/// Opens a session with a bare startup packet, reads the greeting, says Terminate and
/// returns the pid the greeting's BackendKeyData named.
async fn raw_session_pid(si: &StandIn, addr: SocketAddr) -> i32 {
    let mut raw = tokio::net::TcpStream::connect(addr).await.expect("raw");
    let packet = support::startup(
        3,
        0,
        &[("user", &si.info.iam_user), ("database", &si.info.database)],
    );
    raw.write_all(&packet).await.expect("startup");
    let seen = until_ready(&mut raw).await;
    raw.write_all(&[b'X', 0, 0, 0, 4]).await.expect("terminate");
    let k = seen
        .windows(5)
        .position(|w| w == [b'K', 0, 0, 0, 12])
        .expect("BackendKeyData");
    i32::from_be_bytes([seen[k + 5], seen[k + 6], seen[k + 7], seen[k + 8]])
}
