//! Proxies in a pool mode, in front of the stand-in.

use std::net::SocketAddr;

use pg_iam_proxy::config::PoolMode;

use super::{Proxy, ProxySpec, StandIn};

/// A proxy in transaction mode with `size` server connections per pool.
pub async fn txn_proxy(si: &StandIn, size: usize) -> Proxy {
    txn_proxy_http(si, size, None).await
}

/// [`txn_proxy`] with its operator endpoint at `http`.
pub async fn txn_proxy_http(si: &StandIn, size: usize, http: Option<SocketAddr>) -> Proxy {
    let mut spec = ProxySpec::new(si);
    spec.target.pool_mode = Some(PoolMode::Transaction);
    spec.target.pool_size = Some(size);
    spec.proxy.http_addr = http;
    spec.start().await
}
