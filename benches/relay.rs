//! Relay throughput: bytes spliced between two in-memory streams (no sockets, no TLS), so
//! the number is the proxy's own copying cost.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pg_iam_proxy::relay::{splice, Meters};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const TOTAL: usize = 16 * 1024 * 1024;

async fn one_pass() {
    let (mut client_end, mut proxy_client) = tokio::io::duplex(64 * 1024);
    let (mut proxy_upstream, mut server_end) = tokio::io::duplex(64 * 1024);
    let relay = tokio::spawn(async move {
        splice(
            &mut proxy_client,
            &mut proxy_upstream,
            CancellationToken::new(),
            None,
            Meters::NONE,
        )
        .await;
    });
    let writer = tokio::spawn(async move {
        let chunk = vec![7u8; 64 * 1024];
        for _ in 0..TOTAL / chunk.len() {
            client_end.write_all(&chunk).await.expect("write");
        }
        client_end.shutdown().await.expect("shutdown");
        client_end
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < TOTAL {
        got += server_end.read(&mut buf).await.expect("read");
    }
    drop(server_end);
    let _ = writer.await;
    let _ = relay.await;
}

fn bench_relay(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("relay");
    group.throughput(Throughput::Bytes(TOTAL as u64));
    group.sample_size(20);
    group.bench_function("splice 16 MiB client->server", |b| {
        b.to_async(&rt).iter(one_pass)
    });
    group.finish();
}

criterion_group!(benches, bench_relay);
criterion_main!(benches);
