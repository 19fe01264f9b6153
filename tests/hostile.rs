//! Hostile and malformed input at the listener: each gets a precise ErrorResponse, and none
//! disturbs other clients or the process.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::metrics::{http_addr, metric_becomes};
use support::wire::error_field;
use support::{pg, startup, ProxySpec, StandIn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `bytes`, then reads backend frames until the proxy closes: (tag, body) pairs.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    read_frames(&mut s).await
}

async fn read_frames(s: &mut TcpStream) -> Vec<(u8, Vec<u8>)> {
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut all))
        .await
        .expect("the proxy answers and closes")
        .expect("read");
    let mut frames = Vec::new();
    let mut rest = &all[..];
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        frames.push((rest[0], rest[5..1 + len].to_vec()));
        rest = &rest[1 + len..];
    }
    frames
}

/// The SQLSTATE and message of an ErrorResponse body.
fn error_fields(body: &[u8]) -> (String, String) {
    (error_field(body, b'C'), error_field(body, b'M'))
}

fn assert_error(frames: &[(u8, Vec<u8>)], want_code: &str, want_text: &str) {
    let (tag, body) = frames
        .last()
        .unwrap_or_else(|| panic!("no reply; wanted {want_code}"));
    assert_eq!(*tag, b'E', "{frames:?}");
    let (code, msg) = error_fields(body);
    assert_eq!(code, want_code, "{msg}");
    assert!(msg.contains(want_text), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_startup_packets_get_precise_errors() {
    let si = StandIn::shared();
    let proxy = ProxySpec::new(si).start().await;
    let a = proxy.addr;
    assert_error(
        &exchange(a, &[0xff, 0xff, 0xff, 0xf0, 0, 3, 0, 0]).await,
        "08P01",
        "invalid message length",
    );
    assert_error(
        &exchange(a, &[0, 0, 0, 4]).await,
        "08P01",
        "invalid message length",
    );
    assert_error(
        &exchange(a, &startup(4, 0, &[("user", "x")])).await,
        "0A000",
        "unsupported frontend protocol 4.0",
    );
    assert_error(
        &exchange(a, &startup(3, 0, &[("database", "labdb")])).await,
        "28000",
        "no PostgreSQL user name",
    );
    let mut two_ssl = vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    two_ssl.extend_from_slice(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
    let mut s = TcpStream::connect(a).await.expect("connect");
    s.write_all(&two_ssl).await.expect("write");
    let mut n = [0u8; 2];
    s.read_exact(&mut n).await.expect("answer");
    assert_eq!(&n, b"NE", "first declined, second is an error");
    // A truncated packet followed by a close.
    let frames = exchange(a, &[0, 0, 0, 100, 0, 3]).await;
    assert!(frames.is_empty() || frames[0].0 == b'E');
    // A cancel with an unknown key is dropped silently, like PostgreSQL does.
    let cancel = [0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1, 0, 0, 0, 2];
    assert!(exchange(a, &cancel).await.is_empty());
    // Still serving.
    let (client, _c) = pg(a, &si.info.iam_user, &si.info.database)
        .await
        .expect("connect");
    client.simple_query("select 1").await.expect("query");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_minor_protocol_version_is_negotiated_down() {
    let si = StandIn::shared();
    let proxy = ProxySpec::new(si).start().await;
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    let packet = startup(
        3,
        2,
        &[
            ("user", &si.info.iam_user),
            ("database", &si.info.database),
            ("_pq_.test_option", "1"),
        ],
    );
    s.write_all(&packet).await.expect("write");
    // Read until ReadyForQuery, then terminate.
    let mut tags = Vec::new();
    let mut negotiated = Vec::new();
    loop {
        let tag = s.read_u8().await.expect("tag");
        let len = s.read_u32().await.expect("len") as usize;
        let mut body = vec![0; len - 4];
        s.read_exact(&mut body).await.expect("body");
        if tag == b'v' {
            negotiated = body;
        }
        tags.push(tag);
        if tag == b'Z' || tag == b'E' {
            break;
        }
    }
    assert_eq!(tags[0], b'v', "{tags:?}");
    assert_eq!(
        &negotiated[..4],
        &196_608i32.to_be_bytes(),
        "the full version number of 3.0, as PostgreSQL sends it"
    );
    assert!(String::from_utf8_lossy(&negotiated).contains("_pq_.test_option"));
    assert!(tags.contains(&b'K') && tags.ends_with(b"Z"), "{tags:?}");
    s.write_all(&[b'X', 0, 0, 0, 4]).await.expect("terminate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_time_out_without_blocking_others() {
    let si = StandIn::shared();
    let mut spec = ProxySpec::new(si);
    spec.proxy.handshake_timeout = Some(Duration::from_secs(2));
    let proxy = spec.start().await;
    // Many clients that connect and say nothing, and some that send half a packet.
    let mut stalled = Vec::new();
    for i in 0..50 {
        let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
        if i % 2 == 0 {
            s.write_all(&[0, 0, 0, 50, 0, 3]).await.expect("write");
        }
        stalled.push(s);
    }
    // A real client is served while they stall.
    let (client, _c) = pg(proxy.addr, &si.info.iam_user, &si.info.database)
        .await
        .expect("connect");
    client.simple_query("select 1").await.expect("query");
    // And each stalled one is told why it is being dropped.
    for mut s in stalled {
        let frames = read_frames(&mut s).await;
        assert_error(&frames, "08P01", "timeout waiting for the startup packet");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_garbage_connections_leaves_the_proxy_serving() {
    let si = StandIn::shared();
    let proxy = ProxySpec::new(si).start().await;
    let mut tasks = Vec::new();
    for i in 0u32..200 {
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            let junk: Vec<u8> = (0..64)
                .map(|j| (i.wrapping_mul(31).wrapping_add(j) % 251) as u8)
                .collect();
            exchange(addr, &junk).await
        }));
    }
    for t in tasks {
        let frames = t.await.expect("join");
        assert!(frames.iter().all(|(tag, _)| *tag == b'E'), "{frames:?}");
    }
    let (client, _c) = pg(proxy.addr, &si.info.iam_user, &si.info.database)
        .await
        .expect("connect");
    client.simple_query("select 1").await.expect("query");
}

/// A server that accepts connections and never answers: every login to it hangs in the TLS
/// handshake. Yields the accepted sockets so a test can see when the proxy gives one up.
async fn silent_server() -> (u16, tokio::sync::mpsc::UnboundedReceiver<TcpStream>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            if tx.send(s).is_err() {
                return;
            }
        }
    });
    (port, rx)
}

/// Reads what the proxy sends on an upstream socket until it closes it (bounded).
async fn closed_by_proxy(s: &mut TcpStream) -> bool {
    let mut sink = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink))
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_are_bounded_queued_in_order_and_abandoned_with_their_client() {
    let si = StandIn::shared();
    let (port, mut accepted) = silent_server().await;
    let admin = http_addr();
    let mut spec = ProxySpec::new(si);
    spec.target.host = Some("127.0.0.1".into());
    spec.target.port = Some(port);
    spec.proxy.http_addr = Some(admin);
    spec.proxy.connect_timeout = Some(Duration::from_secs(60));
    spec.proxy.max_concurrent_logins = Some(1);
    // A login per client (in session mode a login started for a client that left completes
    // and the connection waits in the pool for the next one).
    spec.target.pool_mode = Some(pg_iam_proxy::config::PoolMode::None);
    spec.proxy.login_queue_timeout = Some(Duration::from_secs(2));
    let proxy = spec.start().await;
    let target = "{target=\"127.0.0.1\"}";
    let hello = startup(3, 0, &[("user", &si.info.iam_user), ("database", "labdb")]);

    // A's login takes the only slot and hangs upstream.
    let mut a = TcpStream::connect(proxy.addr).await.expect("connect a");
    a.write_all(&hello).await.expect("a");
    let mut upstream_a = accepted.recv().await.expect("A's upstream connection");
    metric_becomes(
        admin,
        &format!("pg_iam_proxy_upstream_logins_active{target}"),
        "1",
    )
    .await;

    // B waits for it, and is told why at the end of its wait, without the server being tried.
    let mut b = TcpStream::connect(proxy.addr).await.expect("connect b");
    b.write_all(&hello).await.expect("b");
    metric_becomes(
        admin,
        &format!("pg_iam_proxy_upstream_logins_waiting{target}"),
        "1",
    )
    .await;
    assert_error(
        &read_frames(&mut b).await,
        "53300",
        "--max-concurrent-logins",
    );
    metric_becomes(
        admin,
        &format!("pg_iam_proxy_upstream_logins_waiting{target}"),
        "0",
    )
    .await;
    assert!(accepted.try_recv().is_err(), "B never reached the server");

    // C waits too, then leaves: it gives its place up.
    let mut c = TcpStream::connect(proxy.addr).await.expect("connect c");
    c.write_all(&hello).await.expect("c");
    metric_becomes(
        admin,
        &format!("pg_iam_proxy_upstream_logins_waiting{target}"),
        "1",
    )
    .await;
    drop(c);
    metric_becomes(
        admin,
        &format!("pg_iam_proxy_upstream_logins_waiting{target}"),
        "0",
    )
    .await;

    // A leaves: its login is abandoned (the upstream socket is closed), which frees the slot.
    drop(a);
    assert!(
        closed_by_proxy(&mut upstream_a).await,
        "the login of a client that left is given up"
    );
    metric_becomes(
        admin,
        &format!("pg_iam_proxy_upstream_logins_active{target}"),
        "0",
    )
    .await;
    let mut d = TcpStream::connect(proxy.addr).await.expect("connect d");
    d.write_all(&hello).await.expect("d");
    let _upstream_d = accepted.recv().await.expect("D gets the free slot");
    assert!(
        accepted.try_recv().is_err(),
        "C, who left, never reached the server"
    );
}
