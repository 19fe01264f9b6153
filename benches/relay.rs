//! Relay throughput: bytes spliced between two in-memory streams (no sockets, no TLS), so
//! the number is the proxy's own copying cost: large messages, and 30-byte messages in the
//! plain and the pooled mode (where each message's type is looked at).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pg_iam_proxy::relay::Frames;
use pg_iam_proxy::relay::{splice_with, Cut, Meters, Mode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const TOTAL: usize = 16 * 1024 * 1024;

/// 64 KiB of 30-byte CopyData messages (harmless to the pooled mode's verdict).
fn small_messages() -> Vec<u8> {
    let mut m = vec![b'd'];
    m.extend_from_slice(&29u32.to_be_bytes());
    m.extend_from_slice(&[7; 25]);
    m.iter().copied().cycle().take(30 * 2184).collect()
}

async fn one_pass(chunk: &[u8], mode: Mode) {
    let chunk = chunk.to_vec();
    let (mut client_end, mut proxy_client) = tokio::io::duplex(64 * 1024);
    let (mut proxy_upstream, mut server_end) = tokio::io::duplex(64 * 1024);
    let chunk_len = chunk.len();
    let relay = tokio::spawn(async move {
        let cut = Cut::new(CancellationToken::new());
        splice_with(
            &mut proxy_client,
            &mut proxy_upstream,
            &cut,
            None,
            Meters::NONE,
            mode,
        )
        .await;
    });
    let writer = tokio::spawn(async move {
        for _ in 0..TOTAL / chunk.len() {
            client_end.write_all(&chunk).await.expect("write");
        }
        client_end.shutdown().await.expect("shutdown");
        client_end
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    let total = TOTAL / chunk_len * chunk_len;
    while got < total {
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
    let big = vec![7u8; 64 * 1024];
    let small = small_messages();
    group.bench_function("splice 16 MiB client->server", |b| {
        b.to_async(&rt).iter(|| one_pass(&big, Mode::Plain))
    });
    group.bench_function("splice 16 MiB of 30-byte messages, plain", |b| {
        b.to_async(&rt).iter(|| one_pass(&small, Mode::Plain))
    });
    group.bench_function("splice 16 MiB of 30-byte messages, pooled", |b| {
        b.to_async(&rt).iter(|| one_pass(&small, Mode::Pooled))
    });
    group.finish();
}

/// Following boundaries alone (no I/O): the per-message cost of the header inspection.
fn bench_frames(c: &mut Criterion) {
    let stream = small_messages();
    let mut group = c.benchmark_group("frames");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    group.bench_function("advance over 64 KiB of 30-byte messages", |b| {
        b.iter(|| {
            let mut f = Frames::default();
            for chunk in stream.chunks(16 * 1024) {
                f.advance(std::hint::black_box(chunk));
            }
            f
        })
    });
    group.finish();
}

criterion_group!(benches, bench_relay, bench_frames);
criterion_main!(benches);
