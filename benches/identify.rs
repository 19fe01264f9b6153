//! Identifying a loopback client, as every TCP connect does: one sock_diag lookup (a netlink
//! request and its answer, on the task, under tokio's AsyncFd), eight at once, and a whole
//! connection (connect, accept, identify with the user entry cached).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::future::join_all;
use pg_iam_proxy::frontend::peer::{identify, Client, Lookups, PeerAddr};
use pg_iam_proxy::frontend::sock_diag::{Found, SockDiag};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A connected loopback pair: the sockets, and the client's and the server's address.
async fn pair(listener: &TcpListener) -> (TcpStream, TcpStream, SocketAddr, SocketAddr) {
    let (client, accepted) = tokio::join!(
        TcpStream::connect(listener.local_addr().expect("addr")),
        listener.accept()
    );
    let (accepted, peer) = accepted.expect("accept");
    let local = accepted.local_addr().expect("local");
    (client.expect("connect"), accepted, peer, local)
}

fn bench_lookup(c: &mut Criterion) {
    let rt = runtime();
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind");
    let (_client, _accepted, peer, local) = rt.block_on(pair(&listener));
    let diag = SockDiag::new();
    c.bench_function("identify/sock_diag lookup", |b| {
        b.to_async(&rt).iter(|| async {
            let found = diag.lookup(peer, local).await.expect("lookup");
            assert!(matches!(found, Found::Owner(_)));
        })
    });
    c.bench_function("identify/sock_diag lookup, 8 at once", |b| {
        b.to_async(&rt).iter(|| async {
            let all = join_all((0..8).map(|_| diag.lookup(peer, local))).await;
            assert!(all.iter().all(|f| matches!(f, Ok(Found::Owner(_)))));
        })
    });
}

fn bench_connection(c: &mut Criterion) {
    let rt = runtime();
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind");
    let lookups = Arc::new(Lookups::new());
    c.bench_function("identify/connection (connect, accept, identify)", |b| {
        b.to_async(&rt).iter(|| async {
            let (client, accepted, peer, local) = pair(&listener).await;
            let who = identify(PeerAddr::Tcp { peer, local }, false, lookups.clone()).await;
            assert!(matches!(who.client, Client::Local { .. }), "{who:?}");
            // A reset, not a close: no TIME_WAIT entry to hold the client's port.
            let reset = socket2::SockRef::from(&accepted).set_linger(Some(Duration::ZERO));
            reset.expect("linger");
            drop((accepted, client));
        })
    });
}

criterion_group!(benches, bench_lookup, bench_connection);
criterion_main!(benches);
