//! 1,000 cancel requests with one valid key, at once and as a sequential burst: the upstream
//! connections they open are counted by the server itself (log_connections on this test
//! binary's own stand-in), and must stay within what the per-key spacing allows.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::metrics::metric_sum;
use support::{free_port, ProxySpec, StandIn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CANCELS: usize = 1_000;
const SPACING: Duration = Duration::from_millis(100);

/// Connections the server has logged so far.
fn server_connections(si: &StandIn) -> usize {
    std::fs::read_to_string(&si.info.server_log)
        .unwrap_or_default()
        .matches("connection received:")
        .count()
}

/// Turns on log_connections and waits until a new connection shows in the log.
async fn log_connections(si: &StandIn) {
    let i = &si.info;
    let direct = format!(
        "host=127.0.0.1 port={} user={} password={} dbname={} sslmode=disable",
        i.port, i.master_user, i.master_password, i.database
    );
    let connect = || tokio_postgres::connect(&direct, tokio_postgres::NoTls);
    let (admin, conn) = connect().await.expect("direct");
    tokio::spawn(conn);
    for sql in [
        "ALTER SYSTEM SET log_connections = on",
        "SELECT pg_reload_conf()",
    ] {
        admin.simple_query(sql).await.expect("log_connections");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while server_connections(si) == 0 {
        assert!(
            Instant::now() < deadline,
            "log_connections never took effect"
        );
        let (_c, conn) = connect().await.expect("direct");
        drop(conn);
    }
}

/// Opens a session through the proxy; returns it and the key the client was given.
async fn session(addr: SocketAddr, si: &StandIn) -> (TcpStream, [u8; 8]) {
    let mut body = vec![0, 3, 0, 0];
    for s in ["user", &si.info.iam_user, "database", &si.info.database] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&((body.len() + 4) as u32).to_be_bytes())
        .await
        .expect("write");
    s.write_all(&body).await.expect("write");
    let mut key = None;
    loop {
        let tag = s.read_u8().await.expect("tag");
        let mut frame = vec![0; s.read_u32().await.expect("len") as usize - 4];
        s.read_exact(&mut frame).await.expect("frame");
        match tag {
            b'K' => key = Some(frame[..8].try_into().expect("key")),
            b'Z' => return (s, key.expect("BackendKeyData")),
            b'E' => panic!("login failed: {}", String::from_utf8_lossy(&frame)),
            _ => {}
        }
    }
}

fn cancel_packet(key: [u8; 8]) -> Vec<u8> {
    let mut p = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
    p.extend_from_slice(&key);
    p
}

/// Waits until only the held session is open (every cancel connection has finished).
async fn cancels_finished(http_addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric_sum(http_addr, "pg_iam_proxy_client_connections_open{", "").await != 1.0 {
        assert!(
            Instant::now() < deadline,
            "cancel connections never finished"
        );
        tokio::task::yield_now().await;
    }
}

/// The most upstream connections `elapsed` of cancels with one key may open.
fn allowed(elapsed: Duration) -> usize {
    2 + (elapsed.as_millis() / SPACING.as_millis()) as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_cancels_with_a_valid_key_open_few_upstream_connections() {
    let si = StandIn::shared();
    log_connections(si).await;
    let mut spec = ProxySpec::new(si);
    let http_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    spec.proxy.http_addr = Some(http_addr);
    let proxy = spec.start().await;
    let (_held, key) = session(proxy.addr, si).await;
    let packet = cancel_packet(key);

    let before = server_connections(si);
    let started = Instant::now();
    let all = (0..CANCELS).map(|_| async {
        let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
        s.write_all(&packet).await.expect("write");
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
        assert!(rest.is_empty(), "a cancel gets no answer");
    });
    futures_util::future::join_all(all).await;
    cancels_finished(http_addr).await;
    let concurrent = server_connections(si) - before;
    let concurrent_time = started.elapsed();

    let before = server_connections(si);
    let started = Instant::now();
    for _ in 0..CANCELS {
        let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
        s.write_all(&packet).await.expect("write");
    }
    cancels_finished(http_addr).await;
    let sequential = server_connections(si) - before;
    let sequential_time = started.elapsed();

    let cancels = "pg_iam_proxy_cancel_requests_total{";
    let forwarded = metric_sum(http_addr, cancels, "outcome=\"forwarded\"").await;
    let coalesced = metric_sum(http_addr, cancels, "outcome=\"coalesced\"").await;
    println!(
        "upstream connections for {CANCELS} cancels: concurrent {concurrent} in \
         {concurrent_time:?}, sequential {sequential} in {sequential_time:?}; metrics: \
         forwarded {forwarded}, coalesced {coalesced}"
    );
    assert!(
        (1..=allowed(concurrent_time)).contains(&concurrent),
        "{concurrent}"
    );
    assert!(
        (1..=allowed(sequential_time)).contains(&sequential),
        "{sequential}"
    );
    assert_eq!(
        forwarded as usize,
        concurrent + sequential,
        "every upstream connection counted"
    );
}

/// Stops a process (SIGSTOP) until dropped (SIGCONT): a frozen server, for real.
struct Frozen(i32);

impl Frozen {
    fn postmaster(si: &StandIn) -> Self {
        let pidfile = si.info.dir.join("data/postmaster.pid");
        let text = std::fs::read_to_string(pidfile).expect("postmaster.pid");
        let pid: i32 = text
            .lines()
            .next()
            .and_then(|l| l.parse().ok())
            .expect("pid");
        signal(pid, "-STOP");
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

fn signal(pid: i32, which: &str) {
    let status = std::process::Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {which} {pid}");
}

/// Sends a cancel and returns how long the proxy took to close the connection.
async fn cancel_took(addr: SocketAddr, key: [u8; 8], bound: Duration) -> Duration {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&cancel_packet(key)).await.expect("write");
    let mut rest = Vec::new();
    tokio::time::timeout(bound, s.read_to_end(&mut rest))
        .await
        .expect("the proxy ends the cancel within the bound")
        .expect("read");
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_to_a_frozen_server_ends_in_bounded_time_and_never_holds_shutdown() {
    let si = StandIn::start(false);
    let mut quick = ProxySpec::new(&si);
    quick.proxy.connect_timeout = Some(Duration::from_secs(2));
    let quick = quick.start().await;
    let mut slow = ProxySpec::new(&si);
    slow.proxy.connect_timeout = Some(Duration::from_secs(120));
    slow.proxy.max_shutdown_delay = Some(Duration::from_secs(1));
    let http_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    slow.proxy.http_addr = Some(http_addr);
    let slow = slow.start().await;
    let (_a, quick_key) = session(quick.addr, &si).await;
    let (_b, slow_key) = session(slow.addr, &si).await;

    let frozen = Frozen::postmaster(&si);
    // The forward's deadline is the connect timeout (connect + TLS + send + close).
    let took = cancel_took(quick.addr, quick_key, Duration::from_secs(20)).await;
    assert!(took >= Duration::from_secs(2), "{took:?}");
    // A forward still waiting when shutdown begins is cut with the sessions.
    let pending = tokio::spawn(cancel_took(slow.addr, slow_key, Duration::from_secs(20)));
    let deadline = Instant::now() + Duration::from_secs(20);
    let open = "pg_iam_proxy_client_connections_open{";
    while metric_sum(http_addr, open, "").await < 2.0 {
        assert!(
            Instant::now() < deadline,
            "the cancel never reached the proxy"
        );
        tokio::task::yield_now().await;
    }
    let started = Instant::now();
    slow.shutdown.cancel();
    let report = tokio::time::timeout(Duration::from_secs(20), slow.task)
        .await
        .expect("the proxy stops within max_shutdown_delay")
        .expect("join");
    pending.await.expect("the cancel connection was closed");
    drop(frozen);
    assert!(report.cut_sessions >= 1, "the frozen forward was cut");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}
