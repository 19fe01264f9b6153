//! The token cache: the only part of the token side on the connection hot path.
//!
//! One slot per [`TokenKey`]. A request is answered from the slot whenever it holds a token
//! still valid beyond a few seconds of safety (`valid_until` is capped by the signing
//! credentials' expiry), so a login never waits for signing or STS while one exists. Past its
//! refresh point (`valid_until - margin`) a token is still served, and a refresh starts behind
//! it if none is running. Without a valid token the request is a cold miss: it starts an
//! attempt unless one is in flight and waits a bounded time for that attempt's outcome
//! (single flight: every waiter shares it). Attempts run in their own tasks, bounded by the
//! credentials timeout, so a caller that gives up (a client that leaves) cancels nothing.
//!
//! Slots are bounded: a login takes a [`Lease`] on its slot and confirms it once the server
//! accepted the token; a slot nobody confirmed goes away with its last lease (so user names
//! no one may use never keep a slot). Only confirmed slots get a background refresher (see
//! `cache_refresh.rs`), which signs the next token one margin before the refresh point,
//! retries with backoff while refreshing fails, and removes its slot once unused for
//! `idle_after`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::credentials::{CredentialSource, RoleSpec};
use super::sign::AuthToken;
use super::{lock, Clock, TokenError};

/// Tokens closer than this to the end of their validity are never handed out, even while
/// refreshing fails: the server checks the token a few round trips later.
const LAST_USE_SAFETY: Duration = Duration::from_secs(5);

/// What a token is for. Two keys share a token only if all fields are equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenKey {
    /// Endpoint host name as the proxy connects to it.
    pub host: String,
    /// Endpoint port.
    pub port: u16,
    /// Database user.
    pub user: String,
    /// Region to sign for.
    pub region: String,
    /// Role assumed before signing, if any.
    pub role: Option<RoleSpec>,
}

/// Cache tuning. `Default` gives the documented defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    /// A token is replaced this long before it stops being valid (default 60 s).
    pub margin: Duration,
    /// First retry delay after a failed refresh (default 1 s); doubles up to `retry_max`.
    pub retry_min: Duration,
    /// Longest retry delay while a valid token is still served (default 30 s).
    pub retry_max: Duration,
    /// Longest retry delay once no valid token is left (default 2 s).
    pub retry_max_cold: Duration,
    /// A confirmed slot not used for this long is removed (default 1 h).
    pub idle_after: Duration,
    /// Longest wait of a cold miss for its attempt (default 7 s: the credentials timeout
    /// plus slack; the attempt itself is bounded by the credentials timeout).
    pub wait: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            margin: Duration::from_secs(60),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
            retry_max_cold: Duration::from_secs(2),
            idle_after: Duration::from_secs(3600),
            wait: super::DEFAULT_CREDENTIALS_TIMEOUT + Duration::from_secs(2),
        }
    }
}

/// Counters for the metrics endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Requests answered from the cache without waiting.
    pub hits: u64,
    /// Requests that had to wait for a signing attempt.
    pub misses: u64,
    /// Tokens signed (foreground and background).
    pub signings: u64,
    /// Failed signing attempts (credentials, STS).
    pub failures: u64,
    /// Slots in the cache now.
    pub slots: u64,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    signings: AtomicU64,
    failures: AtomicU64,
}

struct SlotState {
    token: Option<Arc<AuthToken>>,
    last_error: Option<TokenError>,
    /// An attempt is in flight.
    attempting: bool,
    last_used: SystemTime,
    /// A login succeeded with this key: the slot stays (until idle) and is kept fresh.
    confirmed: bool,
    refresher: bool,
    /// Live leases.
    leases: usize,
}

struct Slot {
    state: Mutex<SlotState>,
    /// Bumped (under the state lock) each time an attempt ends.
    done: watch::Sender<u64>,
}

struct Inner {
    sources: HashMap<Option<RoleSpec>, Arc<CredentialSource>>,
    slots: Mutex<HashMap<TokenKey, Arc<Slot>>>,
    settings: CacheSettings,
    clock: Arc<dyn Clock>,
    counters: Counters,
}

/// A shareable handle to the token cache.
#[derive(Clone)]
pub struct TokenCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("settings", &self.inner.settings)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    /// A cache that signs with the given credential sources (one per role, `None` = no role).
    pub fn new(
        sources: HashMap<Option<RoleSpec>, Arc<CredentialSource>>,
        settings: CacheSettings,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let inner = Inner {
            sources,
            slots: Mutex::new(HashMap::new()),
            settings,
            clock,
            counters: Counters::default(),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// A lease on `key`'s slot (made if missing) for one login.
    pub fn lease(&self, key: TokenKey) -> Lease {
        let mut slots = lock(&self.inner.slots);
        let slot = slots
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Slot::new(self.inner.clock.now())))
            .clone();
        lock(&slot.state).leases += 1;
        drop(slots);
        Lease {
            cache: self.clone(),
            key,
            slot,
        }
    }

    /// A token for `key` whose slot is kept and refreshed (for callers that need no lease).
    pub async fn token(&self, key: &TokenKey) -> Result<Arc<AuthToken>, TokenError> {
        let lease = self.lease(key.clone());
        let token = lease.token().await?;
        lease.confirm();
        Ok(token)
    }

    /// Forgets the token for `key`, e.g. after the server refused it; the next request signs.
    pub fn invalidate(&self, key: &TokenKey) {
        if let Some(slot) = lock(&self.inner.slots).get(key) {
            lock(&slot.state).token = None;
        }
    }

    /// Counter snapshot.
    pub fn stats(&self) -> CacheStats {
        let c = &self.inner.counters;
        CacheStats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            signings: c.signings.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            slots: self.slot_count() as u64,
        }
    }

    /// How many slots the cache holds now.
    pub fn slot_count(&self) -> usize {
        lock(&self.inner.slots).len()
    }

    /// For each credential source (by role ARN, `None` for the default chain), when its
    /// current credentials expire (`None`: they do not, or none were fetched yet).
    pub fn credential_expiries(&self) -> Vec<(Option<String>, Option<SystemTime>)> {
        self.inner
            .sources
            .values()
            .map(|s| (s.role().map(str::to_owned), s.expiry()))
            .collect()
    }

    /// The credential source used for `role`.
    pub fn source(&self, role: &Option<RoleSpec>) -> Option<Arc<CredentialSource>> {
        self.inner.sources.get(role).cloned()
    }

    /// The clock the cache uses.
    pub fn now(&self) -> SystemTime {
        self.inner.clock.now()
    }
}

impl Slot {
    fn new(now: SystemTime) -> Self {
        Self {
            state: Mutex::new(SlotState {
                token: None,
                last_error: None,
                attempting: false,
                last_used: now,
                confirmed: false,
                refresher: false,
                leases: 0,
            }),
            done: watch::Sender::new(0),
        }
    }

    /// The outcome of the latest attempt: a still-valid token, else its error.
    fn outcome(&self, now: SystemTime) -> Result<Arc<AuthToken>, TokenError> {
        let state = lock(&self.state);
        match state.token.as_ref() {
            Some(t) if now + LAST_USE_SAFETY < t.valid_until() => Ok(t.clone()),
            _ => Err(state.last_error.clone().unwrap_or_else(|| {
                TokenError::Sign("the token expired and no refresh has succeeded".into())
            })),
        }
    }
}

#[path = "cache_lease.rs"]
mod lease;
pub use lease::Lease;

#[path = "cache_refresh.rs"]
mod refresh;

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
