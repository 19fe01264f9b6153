//! Query cancellation. Each session gets a random BackendKeyData of our own; the map takes
//! it to the upstream address the session actually used (Aurora endpoints move) and the
//! server's real key. A CancelRequest with an unknown key is dropped silently, as
//! PostgreSQL does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::BytesMut;
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::startup::BackendKeyData;
use rustls::crypto::SecureRandom;

use crate::upstream::connect::{connect_addr, Endpoint};
use crate::wire;

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

/// Our keys to the sessions' real ones.
pub struct CancelMap {
    sessions: Mutex<HashMap<(i32, i32), CancelTarget>>,
    random: &'static dyn SecureRandom,
}

impl std::fmt::Debug for CancelMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelMap").finish_non_exhaustive()
    }
}

impl Default for CancelMap {
    fn default() -> Self {
        Self {
            sessions: Mutex::default(),
            random: rustls::crypto::aws_lc_rs::default_provider().secure_random,
        }
    }
}

/// Unregisters a session's key when the session ends.
#[derive(Debug)]
pub struct CancelGuard {
    map: Arc<CancelMap>,
    /// The key given to the client.
    pub key: (i32, i32),
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.map.lock().remove(&self.key);
    }
}

impl CancelMap {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(i32, i32), CancelTarget>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn random_key(&self) -> (i32, i32) {
        let mut b = [0u8; 8];
        if self.random.fill(&mut b).is_err() {
            // The system RNG failing is not recoverable in any useful way; fall back to a
            // per-process random hasher so sessions still get distinct keys.
            use std::hash::{BuildHasher, RandomState};
            b = RandomState::new()
                .hash_one(std::time::SystemTime::now())
                .to_le_bytes();
        }
        let pid = i32::from_le_bytes([b[0], b[1], b[2], b[3]]) & i32::MAX;
        (pid, i32::from_le_bytes([b[4], b[5], b[6], b[7]]))
    }

    /// Gives a session a fresh key of ours.
    pub fn register(self: &Arc<Self>, target: CancelTarget) -> CancelGuard {
        let mut sessions = self.lock();
        let key = loop {
            let key = self.random_key();
            if !sessions.contains_key(&key) {
                break key;
            }
        };
        sessions.insert(key, target);
        CancelGuard {
            map: self.clone(),
            key,
        }
    }

    /// Forwards a client's cancel to the session's server, if the key is ours.
    pub async fn forward(&self, request: &CancelRequest) {
        let Some(secret) = request.secret_key.as_i32() else {
            return;
        };
        let target = self.lock().get(&(request.pid, secret)).cloned();
        let Some(target) = target else {
            tracing::debug!("cancel request with an unknown key ignored");
            return;
        };
        let mut stream = match connect_addr(&target.endpoint, target.addr).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot forward a cancel request");
                return;
            }
        };
        let real = CancelRequest::new(target.key.pid, target.key.secret_key.clone());
        let mut buf = BytesMut::new();
        wire::encode(&real, &mut buf);
        if let Err(e) = wire::send(&mut stream, &buf).await {
            tracing::warn!(error = %e, "cannot forward a cancel request");
        }
        // Wait for the server to close, as libpq does, so the cancel is processed.
        let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut [0u8; 1]).await;
        tracing::debug!(addr = %target.addr, "cancel request forwarded");
    }
}
