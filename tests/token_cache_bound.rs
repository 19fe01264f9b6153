//! The token cache is bounded: a slot whose login fails goes away with it, so 20,000
//! distinct user names leave no slots (and no refreshers) behind; a user that logs in keeps
//! exactly one slot.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::fault::{FaultProxy, Mode};
use support::running::BIN;
use support::{free_port, http, must_fail, pg, ProxySpec, StandIn};

fn rss_kib(child: &Child) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

async fn slots(http_addr: std::net::SocketAddr) -> u64 {
    let (status, body) = http(http_addr, "GET", "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix("pg_iam_proxy_token_cache_slots "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("token_cache_slots in {body}"))
}

/// Logs in as `count` distinct users (names `prefix0..`), `workers` at a time; every login
/// must fail (the database port is closed).
async fn distinct_logins(addr: std::net::SocketAddr, prefix: &str, count: usize, workers: usize) {
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let prefix = prefix.to_owned();
            tokio::spawn(async move {
                for i in (w..count).step_by(workers) {
                    let user = format!("{prefix}{i}");
                    let err = must_fail(pg(addr, &user, "labdb").await);
                    assert_eq!(err.code().map(|c| c.code()), Some("08001"), "{err}");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("worker");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_user_names_leave_no_slots_behind() {
    let si = StandIn::shared();
    let closed = free_port();
    let (port, http_port) = (free_port(), free_port());
    let mut child = Command::new(BIN)
        .args(["run", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
        .args(["--host", "127.0.0.1", "--port", &closed.to_string()])
        .envs(si.aws_env())
        .env("PG_IAM_PROXY_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start proxy");
    let addr = ([127, 0, 0, 1], port).into();
    let http_addr = ([127, 0, 0, 1], http_port).into();
    support::http_until(http_addr, "/startup", 200).await;
    // Warm up (allocator arenas, runtime), then measure.
    distinct_logins(addr, "warmup_", 1_000, 8).await;
    let before = rss_kib(&child);
    let started = Instant::now();
    distinct_logins(addr, "user_", 20_000, 8).await;
    let after = rss_kib(&child);
    let left = slots(http_addr).await;
    eprintln!(
        "20,000 distinct user names in {:?}: RSS {before} KiB -> {after} KiB ({:+} KiB), {left} slots",
        started.elapsed(),
        after as i64 - before as i64
    );
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(left, 0, "no slot outlives its failed login");
    // Before the fix every name kept a slot and a refresher: 62 MiB for 20,000 names.
    assert!(
        after < before + 16 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_that_logs_in_keeps_one_slot_and_names_the_server_refuses_keep_none() {
    let si = StandIn::shared();
    let proxy = ProxySpec::new(si).start().await;
    for i in 0..20 {
        let user = format!("no_such_user_{i}");
        let failed = pg(proxy.addr, &user, &si.info.database).await;
        assert!(failed.is_err(), "{user} may not log in");
    }
    assert_eq!(proxy.cache.slot_count(), 0);
    let signed = proxy.cache.stats().signings;
    let (client, _conn) = pg(proxy.addr, &si.info.iam_user, &si.info.database)
        .await
        .expect("login");
    client.simple_query("select 1").await.expect("query");
    drop(client);
    let (again, _conn) = pg(proxy.addr, &si.info.iam_user, &si.info.database)
        .await
        .expect("login");
    again.simple_query("select 1").await.expect("query");
    assert_eq!(proxy.cache.slot_count(), 1, "one slot for the user in use");
    assert_eq!(
        proxy.cache.stats().signings,
        signed + 1,
        "its token was reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_login_frees_its_slot() {
    let si = StandIn::shared();
    // The database accepts connections and then says nothing: the login is dropped by the
    // connect timeout while it holds the slot's lease.
    let fault = FaultProxy::start(([127, 0, 0, 1], si.info.port).into()).await;
    fault.set(Mode::Hang);
    let mut spec = ProxySpec::new(si);
    spec.target.host = Some("127.0.0.1".into());
    spec.target.port = Some(fault.addr.port());
    spec.proxy.connect_timeout = Some(Duration::from_secs(2));
    let proxy = spec.start().await;
    let err = must_fail(pg(proxy.addr, &si.info.iam_user, &si.info.database).await);
    assert_eq!(err.code().map(|c| c.code()), Some("08001"), "{err}");
    assert_eq!(fault.hung(), 1, "the login reached the hanging database");
    assert_eq!(proxy.cache.stats().signings, 1, "a token was signed for it");
    assert_eq!(
        proxy.cache.slot_count(),
        0,
        "and its slot went with the login"
    );
}
