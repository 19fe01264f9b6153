//! The proxy's Prometheus metrics, read over its operator endpoint: a series' value, the sum
//! of matching series, and bounded waits for a value.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{free_port, http};

/// A loopback address for an operator endpoint (a port that was free a moment ago).
pub fn http_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// The value of the first metric line starting with `prefix` (0 when absent).
pub async fn metric(addr: SocketAddr, prefix: &str) -> f64 {
    let (_, body) = http(addr, "GET", "/metrics").await;
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Polls `prefix` until it reaches `want` (bounded).
pub async fn metric_until(addr: SocketAddr, prefix: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(addr, prefix).await < want {
        assert!(Instant::now() < deadline, "{prefix} never reached {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The sum of the metric lines that start with `prefix` and contain `with`.
pub async fn metric_sum(addr: SocketAddr, prefix: &str, with: &str) -> f64 {
    let (_, body) = http(addr, "GET", "/metrics").await;
    body.lines()
        .filter(|l| l.starts_with(prefix) && l.contains(with))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls [`metric_sum`] until it is at least `want` (bounded by `within`).
pub async fn metric_sum_until(
    addr: SocketAddr,
    (prefix, with): (&str, &str),
    want: f64,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let seen = metric_sum(addr, prefix, with).await;
        if seen >= want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{prefix} with {with}: {seen} counted, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls a metric (by its exact series text) until it has `want`, bounded.
pub async fn metric_becomes(addr: SocketAddr, series: &str, want: &str) {
    let line = format!("{series} {want}");
    for _ in 0..200 {
        let (_, body) = http(addr, "GET", "/metrics").await;
        if body.lines().any(|l| l == line) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (_, body) = http(addr, "GET", "/metrics").await;
    panic!("{line} never showed up:\n{body}");
}

/// The `pool_pinned_clients_total` lines (reason and count; none while no client was
/// pinned).
pub async fn pins(addr: SocketAddr) -> Vec<String> {
    let (_, body) = http(addr, "GET", "/metrics").await;
    body.lines()
        .filter(|l| l.starts_with("pg_iam_proxy_pool_pinned_clients_total"))
        .map(str::to_owned)
        .collect()
}
