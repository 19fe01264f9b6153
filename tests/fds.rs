//! File descriptors, with the real binary started under a low limit: the soft limit is
//! raised to the hard one at start; at exhaustion a client is told so (SQLSTATE 53000),
//! both when the upstream connect is what fails (getaddrinfo hides the EMFILE) and when the
//! proxy cannot even accept (the spare descriptor lets it answer); and the process serves
//! again once descriptors are free.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use support::running::Running;
use support::{code, http, message, pg, StandIn};

const SOFT: u64 = 64;
const HARD: u64 = 128;

/// The proxy with RLIMIT_NOFILE soft SOFT, hard HARD, and clients that may hold the
/// handshake open.
fn start(si: &StandIn, admin: SocketAddr) -> Running {
    let admin = admin.to_string();
    let mut cmd = Running::command(
        si,
        // A login per client: every session needs its own upstream descriptor.
        &[
            "--handshake-timeout",
            "120s",
            "--http-addr",
            admin.as_str(),
            "--pool-mode",
            "none",
        ],
    );
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: SOFT,
                rlim_max: HARD,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Running::spawn(cmd)
}

/// Descriptor numbers in use below the limit (an inherited descriptor above it, such as the
/// test harness's job-server pipe, takes no slot).
fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .filter(|&fd| fd < HARD)
        .count()
}

/// Opens idle connections to the proxy (each holds one of its descriptors in the
/// handshake) until it has `target` descriptors open.
fn fill(pid: i32, addr: SocketAddr, target: usize, hogs: &mut Vec<TcpStream>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while open_fds(pid) < target {
        let before = open_fds(pid);
        hogs.push(TcpStream::connect(addr).expect("connect"));
        while open_fds(pid) == before {
            assert!(Instant::now() < deadline, "the proxy did not accept");
            std::thread::yield_now();
        }
    }
    assert_eq!(open_fds(pid), target, "filled exactly");
}

/// A client's error at exhaustion, once the proxy has closed its socket again.
async fn refused(pid: i32, addr: SocketAddr, si: &StandIn) -> (String, String) {
    let before = open_fds(pid);
    let refused = match pg(addr, &si.info.iam_user, &si.info.database).await {
        Ok(_) => panic!("a session at exhaustion"),
        Err(e) => (code(&e), message(&e)),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while open_fds(pid) > before {
        assert!(
            Instant::now() < deadline,
            "the refused client's socket stays open"
        );
        tokio::task::yield_now().await;
    }
    refused
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_clients_are_told_53000_and_the_proxy_recovers() {
    let si = StandIn::shared();
    let admin = support::metrics::http_addr();
    let mut proxy = start(si, admin);
    proxy.wait_for("file descriptor limit raised to the hard limit");
    let addr = proxy.addr();
    let pid = proxy.pid();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    assert_eq!(
        line.split_whitespace().collect::<Vec<_>>()[3..5],
        [HARD.to_string(), HARD.to_string()],
        "soft raised to hard: {line}"
    );
    let (client, _c) = pg(addr, &si.info.iam_user, &si.info.database)
        .await
        .expect("a session before exhaustion (and a cached token)");
    client.simple_query("select 1").await.expect("query");
    // Once the session's two sockets are closed, the count is the proxy's own.
    let with_session = open_fds(pid);
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(20);
    while open_fds(pid) != with_session - 2 {
        assert!(Instant::now() < deadline, "the session's sockets stay open");
        tokio::task::yield_now().await;
    }

    let want = format!(
        "pg-iam-proxy: out of file descriptors (limit {HARD}); raise LimitNOFILE / ulimit -n"
    );
    let mut hogs = Vec::new();
    // One descriptor left: the client is accepted, resolving the server fails.
    tokio::task::block_in_place(|| fill(pid, addr, HARD as usize - 1, &mut hogs));
    let (code, text) = refused(pid, addr, si).await;
    assert_eq!(code, "53000", "{text}");
    assert!(text.starts_with(&want), "{text}");
    // None left: accepting fails; the spare descriptor takes the client to tell it.
    tokio::task::block_in_place(|| fill(pid, addr, HARD as usize, &mut hogs));
    let (code, text) = refused(pid, addr, si).await;
    assert_eq!(code, "53000", "{text}");
    assert!(text.starts_with(&want), "{text}");
    proxy.wait_for("out of file descriptors: new clients are refused");

    drop(hogs);
    let deadline = Instant::now() + Duration::from_secs(30);
    let (client, _c) = loop {
        match pg(addr, &si.info.iam_user, &si.info.database).await {
            Ok(ok) => break ok,
            Err(e) => assert!(Instant::now() < deadline, "no recovery: {}", message(&e)),
        }
    };
    client
        .simple_query("select 1")
        .await
        .expect("a session after exhaustion");
    let (_, metrics) = http(admin, "GET", "/metrics").await;
    for series in ["where=\"accept\"", "where=\"upstream\""] {
        let counted = metrics
            .lines()
            .filter(|l| l.starts_with("pg_iam_proxy_fd_exhausted_total{") && l.contains(series))
            .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
            .sum::<u64>();
        assert!(counted >= 1, "{series} not counted:\n{metrics}");
    }
}
