//! Aurora topology: where new connections of a target on a cluster endpoint go.
//!
//! ```text
//! first login through the cluster endpoint (bootstrap) -> the monitor starts (monitor.rs):
//!   aurora_replica_status() on the writer every few seconds, one connection kept open
//!   fault (refused/reset, 57P01/57P03 at login, the monitor's connection closing, a poll
//!   that disagrees) -> switching: probe every known instance in parallel, fast, until
//!   exactly one says it is the writer -> switch (generation + 1)
//! route: writer target -> the writer's instance endpoint (its own token, its own name for
//!   TLS); reader target -> the readers in turn; unknown -> the cluster endpoint.
//!   While switching, new logins wait (bounded) for the switch.
//! pools: a connection to an instance that is no longer the writer (or a reader) is stale:
//!   closed, never handed out ([`Topology::is_current`]).
//! ```
//!
//! A target whose server has no Aurora functions (plain RDS, any PostgreSQL) keeps using its
//! endpoint as before. Files: [`names`] (endpoints and patterns), [`probe`] (the query),
//! [`monitor`] (the task), [`open`] (logins through the topology), [`metrics`], and
//! `describe` (what `check` prints).

mod describe;
pub mod metrics;
pub mod monitor;
pub mod names;
pub mod open;
pub mod probe;
#[cfg(test)]
mod tests;

pub use describe::describe;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{watch, Notify};
use tokio::time::Instant;

pub use metrics::TopologyMetrics;
pub use names::{HostPattern, Role};
use probe::Member;

use super::connect::Endpoint;
use super::connect_to::ConnectTo;

/// Whether the target's server is Aurora.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// Not known yet (no login yet).
    Unknown,
    /// Aurora: topology routing is on.
    Aurora,
    /// Not Aurora: the target's endpoint is used as it is.
    NotAurora,
}

#[derive(Debug)]
struct State {
    detected: Detected,
    writer: Option<String>,
    readers: Vec<String>,
    endpoints: HashMap<String, Arc<Endpoint>>,
    /// A fault was reported at this time; the switch is under way.
    switching: Option<Instant>,
    next_reader: usize,
}

/// A target's view of its cluster.
#[derive(Debug)]
pub struct Topology {
    /// The target's name (logs, metrics).
    pub target: String,
    /// What the target's endpoint asks for.
    pub role: Role,
    /// Instance endpoints.
    pub pattern: HostPattern,
    template: Endpoint,
    connect_to: Vec<ConnectTo>,
    state: Mutex<State>,
    generation: watch::Sender<u64>,
    fault: Notify,
    started: AtomicBool,
    /// Metrics.
    pub metrics: TopologyMetrics,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Topology {
    /// The topology of a target on `endpoint` (a cluster or reader endpoint).
    pub fn new(
        target: &str,
        role: Role,
        pattern: HostPattern,
        endpoint: &Endpoint,
        connect_to: &[ConnectTo],
        metrics: TopologyMetrics,
    ) -> Self {
        Self {
            target: target.to_owned(),
            role,
            pattern,
            template: endpoint.clone(),
            connect_to: connect_to.to_vec(),
            state: Mutex::new(State {
                detected: Detected::Unknown,
                writer: None,
                readers: Vec::new(),
                endpoints: HashMap::new(),
                switching: None,
                next_reader: 0,
            }),
            generation: watch::channel(0).0,
            fault: Notify::new(),
            started: AtomicBool::new(false),
            metrics,
        }
    }

    /// The topology of a target on `endpoint`: on for a cluster or reader endpoint, or for
    /// any host when `pattern` is given (a reader target if the host says `cluster-ro-`).
    pub fn for_target(
        target: &str,
        endpoint: &Endpoint,
        pattern: Option<&HostPattern>,
        connect_to: &[ConnectTo],
        metrics: TopologyMetrics,
    ) -> Option<Self> {
        let derived = names::cluster_endpoint(&endpoint.host);
        let (role, pattern) = match (derived, pattern) {
            (Some((role, _)), Some(p)) => (role, p.clone()),
            (Some((role, p)), None) => (role, p),
            (None, Some(p)) if endpoint.host.contains(".cluster-ro-") => (Role::Reader, p.clone()),
            (None, Some(p)) => (Role::Writer, p.clone()),
            (None, None) => return None,
        };
        Some(Self::new(
            target, role, pattern, endpoint, connect_to, metrics,
        ))
    }

    /// Whether the server is known to be Aurora (or not).
    pub fn detected(&self) -> Detected {
        lock(&self.state).detected
    }

    /// The current writer's identifier, if known.
    pub fn writer(&self) -> Option<String> {
        lock(&self.state).writer.clone()
    }

    /// The known readers.
    pub fn readers(&self) -> Vec<String> {
        lock(&self.state).readers.clone()
    }

    /// The instance endpoint of `id` (made once, `--connect-to` applied).
    pub fn endpoint(&self, id: &str) -> Option<Arc<Endpoint>> {
        let mut st = lock(&self.state);
        if let Some(ep) = st.endpoints.get(id) {
            return Some(ep.clone());
        }
        let host = self.pattern.host(id);
        let t = &self.template;
        let ep = Endpoint::new(&host, t.port, t.tls.clone(), t.keepalive).ok()?;
        let ep = Arc::new(ep.routed(&self.connect_to));
        st.endpoints.insert(id.to_owned(), ep.clone());
        Some(ep)
    }

    /// Every instance known (writer first).
    pub fn instances(&self) -> Vec<String> {
        let st = lock(&self.state);
        st.writer.iter().chain(&st.readers).cloned().collect()
    }

    /// The monitor has been started (once per target).
    pub fn claim_monitor(&self) -> bool {
        !self.started.swap(true, Ordering::SeqCst)
    }

    /// Where a new connection goes now: waits while a switch is under way (until it ends or
    /// `deadline`), then the writer's (or the next reader's) instance endpoint, else `None`
    /// (use the target's endpoint).
    pub async fn route(&self, deadline: Instant) -> Option<Arc<Endpoint>> {
        let mut changes = self.generation.subscribe();
        while self.is_switching() {
            let wait = tokio::time::timeout_at(deadline, changes.changed()).await;
            if !matches!(wait, Ok(Ok(()))) {
                break;
            }
        }
        let id = {
            let mut st = lock(&self.state);
            if st.detected != Detected::Aurora {
                return None;
            }
            match self.role {
                Role::Writer => st.writer.clone()?,
                Role::Reader if st.readers.is_empty() => return None,
                Role::Reader => {
                    st.next_reader = st.next_reader.wrapping_add(1);
                    st.readers[st.next_reader % st.readers.len()].clone()
                }
            }
        };
        self.endpoint(&id)
    }

    fn is_switching(&self) -> bool {
        lock(&self.state).switching.is_some()
    }

    /// Whether a server connection to `host` still serves this target: while a switch is
    /// under way no connection of a writer target is, afterwards only the writer's (for a
    /// reader target: a reader's). Without a known topology, every one is.
    pub fn is_current(&self, host: &str) -> bool {
        let st = lock(&self.state);
        if st.detected != Detected::Aurora || st.writer.is_none() {
            return true;
        }
        let is = |id: &String| self.pattern.host(id).eq_ignore_ascii_case(host);
        match self.role {
            Role::Writer => st.switching.is_none() && st.writer.as_ref().is_some_and(is),
            Role::Reader => st.readers.iter().any(is),
        }
    }

    /// Something suggests the writer moved: wake the monitor to probe at once.
    pub fn fault(&self, what: &str) {
        let mut st = lock(&self.state);
        if st.detected != Detected::Aurora {
            return;
        }
        if st.switching.is_none() {
            tracing::info!(target = %self.target, fault = what, "possible failover: probing the instances");
            st.switching = Some(Instant::now());
        }
        drop(st);
        self.fault.notify_one();
    }

    /// The server is Aurora (its writer not known yet).
    pub fn mark_aurora(&self) {
        let mut st = lock(&self.state);
        if st.detected == Detected::Unknown {
            st.detected = Detected::Aurora;
        }
    }

    /// The server is not Aurora: routing stays off.
    pub fn set_not_aurora(&self) {
        lock(&self.state).detected = Detected::NotAurora;
        self.generation.send_modify(|g| *g += 1);
    }

    /// A verified topology: `writer` says it is the writer, `members` as it reported them.
    /// Ends a switch; counts a failover when the writer changed.
    pub fn set(&self, writer: &str, members: &[Member]) {
        let readers: Vec<String> = members
            .iter()
            .filter(|m| m.id != writer)
            .map(|m| m.id.clone())
            .collect();
        let mut st = lock(&self.state);
        let old = st.writer.replace(writer.to_owned());
        let changed = old.as_deref() != Some(writer) || st.readers != readers;
        let switched = st.switching.take();
        st.detected = Detected::Aurora;
        st.readers = readers;
        drop(st);
        if changed {
            self.metrics.changed(old.as_deref(), writer);
            tracing::info!(target = %self.target, writer, readers = ?self.readers(), previous = ?old, "topology");
        }
        if let (Some(old), Some(since)) = (old.as_deref(), switched) {
            if old != writer {
                self.metrics.failover(since.elapsed());
                tracing::warn!(target = %self.target, from = old, to = writer,
                    switch_ms = since.elapsed().as_millis() as u64, "failover: new writer");
            }
        }
        self.generation.send_modify(|g| *g += 1);
    }

    /// A switch found no single writer in time: stop holding new logins back.
    pub fn give_up_switch(&self) {
        lock(&self.state).switching = None;
        self.generation.send_modify(|g| *g += 1);
    }

    /// Waits for a fault report.
    pub async fn faulted(&self) {
        self.fault.notified().await;
    }

    /// A switch is under way.
    pub fn switching(&self) -> bool {
        self.is_switching()
    }
}
