//! sock_diag against the real kernel, and the exchange's timeout and sequence matching
//! against a real datagram peer that answers as told.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use tokio::io::unix::AsyncFd;

use super::{exchange, Found, SockDiag};

#[tokio::test]
async fn finds_the_owner_of_a_connected_socket_and_not_of_a_closed_one() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let client =
        std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (accepted, peer) = listener.accept().expect("accept");
    let local = accepted.local_addr().expect("local");
    let me = crate::frontend::users::own_uid();
    let diag = SockDiag::new();
    let found = diag.lookup(peer, local).await.expect("lookup");
    assert_eq!(found, Found::Owner(me));
    let unused: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let found = diag.lookup(unused, local).await.expect("lookup");
    assert_eq!(found, Found::Absent);
    drop(client);
    // Once the client's socket is closed, its TIME_WAIT/FIN entry names no owner.
    drop(accepted);
    let deadline = Instant::now() + Duration::from_secs(10);
    while diag.lookup(peer, local).await.expect("lookup") != Found::Absent {
        assert!(
            Instant::now() < deadline,
            "a closed socket still has an owner"
        );
        tokio::task::yield_now().await;
    }
}

/// Two connected UDP sockets: ours (non-blocking, under AsyncFd) and the peer's.
fn datagram_pair() -> (AsyncFd<Socket>, std::net::UdpSocket) {
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind peer");
    let ours = Socket::new(Domain::IPV4, Type::DGRAM, None).expect("socket");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    ours.bind(&any.into()).expect("bind");
    ours.connect(&peer.local_addr().expect("addr").into())
        .expect("connect");
    let our_addr = ours.local_addr().expect("addr").as_socket().expect("inet");
    peer.connect(our_addr).expect("connect peer");
    ours.set_nonblocking(true).expect("nonblocking");
    (super::register(ours).expect("register"), peer)
}

/// A netlink-shaped answer: a 16-byte header whose sequence number is `seq`, then `tail`.
fn answer(seq: u32, tail: &[u8]) -> Vec<u8> {
    let mut m = vec![0u8; 8];
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&[0; 4]);
    m.extend_from_slice(tail);
    m
}

#[tokio::test]
async fn a_request_nobody_answers_times_out() {
    let (ours, peer) = datagram_pair();
    let mut buf = [0u8; 256];
    let ask = exchange(&ours, b"request", 7, Duration::from_millis(100), &mut buf);
    let result = tokio::time::timeout(Duration::from_secs(10), ask)
        .await
        .expect("the exchange ends by itself");
    let e = result.expect_err("no answer");
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
    let mut got = [0u8; 16];
    assert_eq!(peer.recv(&mut got).expect("the request"), 7, "it was sent");
}

#[tokio::test]
async fn an_answer_to_an_earlier_request_is_skipped() {
    let (ours, peer) = datagram_pair();
    let answering = std::thread::spawn(move || {
        let mut got = [0u8; 16];
        peer.recv(&mut got).expect("the request");
        peer.send(&answer(6, b"late")).expect("late answer");
        peer.send(&answer(7, b"this one")).expect("answer");
    });
    let mut buf = [0u8; 256];
    let n = exchange(&ours, b"request", 7, Duration::from_secs(10), &mut buf)
        .await
        .expect("answered");
    answering.join().expect("peer");
    assert_eq!(&buf[..n], &answer(7, b"this one")[..]);
}
