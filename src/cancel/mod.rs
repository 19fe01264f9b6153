//! Query cancellation. A session's BackendKeyData is the server's real pid (drivers compare
//! it with NOTIFY senders and pass it to `pg_terminate_backend`) with a random secret of
//! ours, so a client cannot cancel other sessions by guessing. The map takes
//! (real pid, our secret) to the upstream address the session actually used (Aurora
//! endpoints move) and the server's real key; sessions on different servers with the same
//! pid differ in the secret. Forwarding is bounded ([`forward`]). A CancelRequest with an
//! unknown key is dropped silently, as PostgreSQL does.

mod forward;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::startup::BackendKeyData;
use rustls::crypto::SecureRandom;
use tokio::sync::Semaphore;

use crate::upstream::connect::Endpoint;
use forward::Entry;
pub use forward::{CancelLimits, CancelOutcome};

/// Where a session's cancel goes.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    /// The endpoint (TLS settings, server name).
    pub endpoint: Arc<Endpoint>,
    /// The address the session connected to.
    pub addr: SocketAddr,
    /// The server's key for the session.
    pub key: Arc<BackendKeyData>,
}

/// Our keys to the sessions' real ones, and the bounds on forwarding.
pub struct CancelMap {
    sessions: Mutex<HashMap<(i32, i32), Arc<Entry>>>,
    random: &'static dyn SecureRandom,
    limits: CancelLimits,
    in_flight: Arc<Semaphore>,
}

impl std::fmt::Debug for CancelMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelMap")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Default for CancelMap {
    fn default() -> Self {
        Self::new(CancelLimits::default())
    }
}

/// Unregisters a session's key when the session ends; a forward still running for it stops
/// before its next attempt.
#[derive(Debug)]
pub struct CancelGuard {
    map: Arc<CancelMap>,
    /// The key given to the client: the server's pid and our secret.
    pub key: (i32, i32),
}

impl CancelGuard {
    /// Unregisters the key now and waits (at most the forward timeout) until no cancel
    /// forward for it is running. A server connection goes back to a pool only after this: a
    /// cancel that reaches an idle backend is a no-op in PostgreSQL, one that arrived after
    /// the next client's query started would cancel that query.
    pub async fn release(self) {
        let entry = self.map.lock().remove(&self.key);
        if let Some(entry) = entry {
            entry.close();
            let limit = self.map.limits.timeout + self.map.limits.spacing;
            if tokio::time::timeout(limit, entry.settled()).await.is_err() {
                tracing::warn!("a cancel forward outlived its timeout at release");
            }
        }
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Some(entry) = self.map.lock().remove(&self.key) {
            entry.close();
        }
    }
}

/// Transaction mode: a client's cancel key, pointed at the server connection of its current
/// transaction while it has one. Dropping it unregisters the key.
#[derive(Debug)]
pub struct ClientCancel {
    guard: CancelGuard,
    entry: Arc<Entry>,
}

impl ClientCancel {
    /// The key given to the client (pid and secret of ours).
    pub fn key(&self) -> (i32, i32) {
        self.guard.key
    }

    /// The client's cancels go to `target` from now on.
    pub fn assign(&self, target: CancelTarget) {
        self.entry.point(Some(target));
    }

    /// The client's cancels are dropped from now on; returns once no forward to the
    /// previous target is running (at most the forward timeout), so the server connection
    /// can go to another client without a late cancel reaching that client's transaction.
    pub async fn unassign(&self) {
        self.entry.point(None);
        if !self.entry.busy() {
            return;
        }
        let limits = self.guard.map.limits;
        let limit = limits.timeout + limits.spacing;
        if tokio::time::timeout(limit, self.entry.settled())
            .await
            .is_err()
        {
            tracing::warn!("a cancel forward outlived its timeout at unassign");
        }
    }

    /// Unregisters the key, waiting out a forward in flight.
    pub async fn release(self) {
        self.guard.release().await;
    }
}

impl CancelMap {
    /// A map forwarding within `limits`.
    pub fn new(limits: CancelLimits) -> Self {
        Self {
            sessions: Mutex::default(),
            random: rustls::crypto::aws_lc_rs::default_provider().secure_random,
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
            limits,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(i32, i32), Arc<Entry>>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn random_secret(&self) -> i32 {
        let mut b = [0u8; 4];
        if self.random.fill(&mut b).is_err() {
            // The system RNG failing is not recoverable in any useful way; fall back to a
            // per-process random hasher so sessions still get distinct secrets.
            use std::hash::{BuildHasher, RandomState};
            let h = RandomState::new().hash_one(std::time::SystemTime::now());
            b.copy_from_slice(&h.to_le_bytes()[..4]);
        }
        i32::from_le_bytes(b)
    }

    /// Registers a session under the server's pid and a fresh secret of ours.
    pub fn register(self: &Arc<Self>, target: CancelTarget) -> CancelGuard {
        let pid = target.key.pid;
        let mut sessions = self.lock();
        let key = loop {
            let key = (pid, self.random_secret());
            if !sessions.contains_key(&key) {
                break key;
            }
        };
        sessions.insert(key, Arc::new(Entry::new(Some(target))));
        CancelGuard {
            map: self.clone(),
            key,
        }
    }

    /// Transaction mode: registers a client under a pid and secret of ours, pointing at no
    /// server connection until [`ClientCancel::assign`].
    pub fn register_client(self: &Arc<Self>) -> ClientCancel {
        let mut sessions = self.lock();
        let (key, entry) = loop {
            // A positive pid, as PostgreSQL's are.
            let key = (self.random_secret() & i32::MAX, self.random_secret());
            if key.0 != 0 && !sessions.contains_key(&key) {
                break (key, Arc::new(Entry::new(None)));
            }
        };
        sessions.insert(key, entry.clone());
        ClientCancel {
            guard: CancelGuard {
                map: self.clone(),
                key,
            },
            entry,
        }
    }

    fn lookup(&self, request: &CancelRequest) -> Option<Arc<Entry>> {
        let secret = request.secret_key.as_i32()?;
        self.lock().get(&(request.pid, secret)).cloned()
    }
}

#[cfg(test)]
mod tests;
