//! Per target: how many clients the pools served at once and how many server connections
//! they needed at most, since the start, and the ratio of the two (server connections per
//! client at peak): about 1 in session mode, `pool size / clients` when transaction mode
//! shares connections well. Clients are counted by the sessions ([`Peaks::client`]), server
//! connections (idle + active + opening, all the target's pools) by the pools as they move.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::metrics::TargetLabels;

type Ratio = Gauge<f64, AtomicU64>;

/// The families, one series per target.
#[derive(Debug, Default)]
pub struct PeakMetrics {
    clients: Family<TargetLabels, Gauge>,
    clients_peak: Family<TargetLabels, Gauge>,
    servers_peak: Family<TargetLabels, Gauge>,
    ratio: Family<TargetLabels, Ratio>,
}

impl PeakMetrics {
    /// The series of `target`.
    pub(crate) fn series(&self, target: &str) -> Peaks {
        let labels = TargetLabels {
            target: target.to_owned(),
        };
        // One statement each: a family's read guard lives to the end of its statement.
        let clients = self.clients.get_or_create(&labels).clone();
        let clients_peak = self.clients_peak.get_or_create(&labels).clone();
        let servers_peak = self.servers_peak.get_or_create(&labels).clone();
        let ratio = self.ratio.get_or_create(&labels).clone();
        Peaks {
            clients,
            clients_peak,
            servers: Arc::default(),
            servers_peak,
            ratio,
        }
    }

    /// Registers the families.
    pub fn register(&self, r: &mut Registry) {
        let gauges = [
            (
                "pool_clients",
                "Clients in pooled sessions now",
                &self.clients,
            ),
            (
                "pool_clients_peak",
                "Most clients in pooled sessions at once since the start",
                &self.clients_peak,
            ),
            (
                "pool_server_connections_peak",
                "Most server connections open at once (all pools) since the start",
                &self.servers_peak,
            ),
        ];
        for (name, help, family) in gauges {
            r.register(name, help, family.clone());
        }
        r.register(
            "pool_server_connections_per_client_at_peak",
            "pool_server_connections_peak / pool_clients_peak",
            self.ratio.clone(),
        );
    }
}

/// One target's series and its count of server connections open.
#[derive(Debug, Clone)]
pub(crate) struct Peaks {
    clients: Gauge,
    clients_peak: Gauge,
    servers: Arc<AtomicI64>,
    servers_peak: Gauge,
    ratio: Ratio,
}

impl Peaks {
    /// A client in a pooled session, counted until the returned guard is dropped.
    pub fn client(&self) -> ClientCount {
        let now = self.clients.inc() + 1;
        if self.clients_peak.inner().fetch_max(now, Ordering::Relaxed) < now {
            self.rate();
        }
        ClientCount(self.clients.clone())
    }

    /// The target's server connections changed by `delta`.
    pub fn servers_moved(&self, delta: i64) {
        if delta == 0 {
            return;
        }
        let now = self.servers.fetch_add(delta, Ordering::Relaxed) + delta;
        if self.servers_peak.inner().fetch_max(now, Ordering::Relaxed) < now {
            self.rate();
        }
    }

    fn rate(&self) {
        let clients = self.clients_peak.get();
        if clients > 0 {
            self.ratio
                .set(self.servers_peak.get() as f64 / clients as f64);
        }
    }
}

/// Counts one client while it lives.
#[derive(Debug)]
pub struct ClientCount(Gauge);

impl Drop for ClientCount {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratio_is_of_the_two_peaks() {
        let m = PeakMetrics::default();
        let p = m.series("t");
        let clients: Vec<_> = (0..4).map(|_| p.client()).collect();
        p.servers_moved(1);
        p.servers_moved(1);
        assert_eq!(p.ratio.get(), 0.5);
        drop(clients);
        p.servers_moved(-2);
        assert_eq!(p.clients.get(), 0);
        assert_eq!(p.clients_peak.get(), 4);
        assert_eq!(p.ratio.get(), 0.5, "peaks stay");
        let _one = p.client();
        p.servers_moved(3);
        assert_eq!(p.servers_peak.get(), 3);
        assert_eq!(p.ratio.get(), 0.75);
    }
}
