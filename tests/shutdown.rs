//! Ending sessions: what the client reads when the proxy ends its session (the same FATAL
//! 57P01 / 57P05 as from PostgreSQL itself), and that nothing outlives the shutdown drain,
//! not even with a frozen server, a cancel in flight to it, or a login waiting on it.

mod support;

use std::time::{Duration, Instant};

use support::freeze::Frozen;
use support::running::Running;
use support::{code, ProxySpec, StandIn};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

type Ended = JoinHandle<Result<(), tokio_postgres::Error>>;

/// A client whose connection task tells how the connection ended.
async fn connect(conn: &str) -> (Client, Ended) {
    let (client, connection) = tokio_postgres::connect(conn, NoTls).await.expect("connect");
    (client, tokio::spawn(connection))
}

/// Through the proxy at `addr`, as the IAM user.
fn via(addr: std::net::SocketAddr, si: &StandIn) -> String {
    format!(
        "host={} port={} user={} dbname={} sslmode=disable connect_timeout=20",
        addr.ip(),
        addr.port(),
        si.info.iam_user,
        si.info.database
    )
}

/// Straight to the stand-in's PostgreSQL over its Unix socket, as the master user.
fn direct(si: &StandIn) -> String {
    format!(
        "host={} port={} user={} dbname={}",
        si.info.socket_dir.display(),
        si.info.port,
        si.info.master_user,
        si.info.database
    )
}

/// The fields a client can tell apart in the FATAL error a connection ended with.
fn fields(e: &tokio_postgres::Error) -> String {
    let e = e
        .as_db_error()
        .unwrap_or_else(|| panic!("no ErrorResponse: {e}"));
    format!(
        "S={} V={:?} C={} M={} D={:?} H={:?}",
        e.severity(),
        e.parsed_severity(),
        e.code().code(),
        e.message(),
        e.detail(),
        e.hint()
    )
}

/// Waits (bounded) for an idle connection to be ended by an error; returns its fields.
async fn ending(connection: Ended) -> String {
    let result = tokio::time::timeout(Duration::from_secs(30), connection)
        .await
        .expect("the connection ended")
        .expect("join");
    fields(&result.expect_err("ended by an error"))
}

/// What PostgreSQL itself sends a session ended by pg_terminate_backend.
async fn postgres_terminate(si: &StandIn) -> String {
    let (victim, connection) = connect(&direct(si)).await;
    let pid: i32 = victim
        .query_one("select pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    let (admin, _admin_conn) = connect(&direct(si)).await;
    admin
        .execute("select pg_terminate_backend($1)", &[&pid])
        .await
        .expect("terminate");
    ending(connection).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cut_at_the_end_of_the_drain_reads_what_postgresql_sends() {
    let si = StandIn::shared();
    let expected = postgres_terminate(si).await;
    assert!(expected.contains("C=57P01"), "{expected}");
    let mut proxy = Running::start(si, &["--max-shutdown-delay", "1s"]);
    let (client, connection) = connect(&via(proxy.addr(), si)).await;
    client.simple_query("select 1").await.expect("query");
    proxy.signal(libc::SIGTERM);
    assert_eq!(ending(connection).await, expected);
    assert_eq!(proxy.exit_within(Duration::from_secs(30)).code(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_closed_by_the_proxy_reads_what_postgresql_sends() {
    let si = StandIn::shared();
    let (direct_client, connection) = connect(&direct(si)).await;
    direct_client
        .batch_execute("set idle_session_timeout = '200ms'")
        .await
        .expect("set");
    let expected = ending(connection).await;
    assert!(expected.contains("C=57P05"), "{expected}");

    let mut spec = ProxySpec::new(si);
    spec.proxy.idle_timeout = Some(Duration::from_secs(1));
    let proxy = spec.start().await;
    let (client, connection) = connect(&via(proxy.addr, si)).await;
    client.simple_query("select 1").await.expect("query");
    assert_eq!(ending(connection).await, expected);
}

/// The proxy with `delay` as --max-shutdown-delay; in flight when SIGTERM arrives with the
/// server frozen: a query, a cancel of that query, and a login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_outlives_the_drain_with_a_frozen_server() {
    let si = StandIn::start(false);
    let delay = Duration::from_secs(2);
    let mut proxy = Running::start(&si, &["--max-shutdown-delay", "2s"]);
    let addr = proxy.addr();
    let (client, _connection) = connect(&via(addr, &si)).await;
    client.simple_query("select 1").await.expect("query");
    let frozen = Frozen::freeze(&si);
    assert!(frozen.count() > 1, "the postmaster and its children");
    let cancel = client.cancel_token();
    let busy = tokio::spawn(async move { client.simple_query("select 1").await.map(|_| ()) });
    let cancelling = tokio::spawn(async move { cancel.cancel_query(NoTls).await });
    let conn = via(addr, &si);
    let login =
        tokio::spawn(async move { tokio_postgres::connect(&conn, NoTls).await.map(|_| ()) });
    // The session, the cancel and the login each hold a connection to the frozen server.
    until_connections_to(si.info.port, 3).await;

    let sigterm = Instant::now();
    proxy.signal(libc::SIGTERM);
    let status = tokio::task::block_in_place(|| proxy.exit_within(Duration::from_secs(60)));
    let took = sigterm.elapsed();
    eprintln!("exit {took:?} after SIGTERM with a frozen server (drain {delay:?})");
    assert_eq!(status.code(), Some(1), "{}", proxy.logs());
    let bound = delay + Duration::from_secs(5);
    assert!(took < bound, "{took:?} > {bound:?}: {}", proxy.logs());

    let busy = busy.await.expect("join").expect_err("cut");
    assert_eq!(code(&busy), "57P01", "the busy session is told why");
    let login = login
        .await
        .expect("join")
        .expect_err("no login to a frozen server");
    assert_eq!(code(&login), "57P01", "the login is told why");
    let _ = cancelling.await.expect("join"); // ended with the process, whatever it says
    drop(frozen);
}

/// Waits (bounded) until `n` established TCP connections go to `port` on this machine.
async fn until_connections_to(port: u16, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let established = ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|t| std::fs::read_to_string(t).ok())
            .flat_map(|t| t.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let remote_port = f.get(2).and_then(|a| a.rsplit(':').next());
                remote_port == Some(&format!("{port:04X}")) && f.get(3) == Some(&"01")
            })
            .count();
        if established >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{established} of {n} connections to {port}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await; // polling the kernel, bounded
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_cuts_at_once() {
    let si = StandIn::shared();
    let mut proxy = Running::start(
        si,
        &["--min-shutdown-delay", "60s", "--max-shutdown-delay", "60s"],
    );
    let (client, _connection) = connect(&via(proxy.addr(), si)).await;
    client.simple_query("select 1").await.expect("query");
    let busy = tokio::spawn(async move { client.simple_query("select pg_sleep(20)").await });
    // The query must be running before the cut, or the cut may land before it is sent.
    let (admin, _admin_conn) = connect(&direct(si)).await;
    let running = "select count(*) from pg_stat_activity where query = 'select pg_sleep(20)'";
    let deadline = Instant::now() + Duration::from_secs(15);
    while admin
        .query_one(running, &[])
        .await
        .expect("poll")
        .get::<_, i64>(0)
        == 0
    {
        assert!(Instant::now() < deadline, "the query never started");
        tokio::time::sleep(Duration::from_millis(20)).await; // polling the server, bounded
    }
    proxy.signal(libc::SIGTERM);
    proxy.wait_for("SIGTERM: shutting down");
    proxy.wait_for("still accepting for the minimum delay");
    let second = Instant::now();
    proxy.signal(libc::SIGTERM);
    let status = tokio::task::block_in_place(|| proxy.exit_within(Duration::from_secs(30)));
    eprintln!("exit {:?} after the second SIGTERM", second.elapsed());
    assert_eq!(
        status.code(),
        Some(1),
        "sessions were cut: {}",
        proxy.logs()
    );
    assert!(proxy
        .logs()
        .contains("SIGTERM again: cutting open sessions now"));
    let e = busy.await.expect("join").expect_err("cut");
    assert_eq!(code(&e), "57P01", "{e}");
}
