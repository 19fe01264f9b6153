//! The token cache: the only part of the token side on the connection hot path.
//!
//! One slot per [`TokenKey`]. A token is handed out until its refresh point
//! (`valid_until - margin`, where `valid_until` is capped by the signing credentials' expiry).
//! A background task per slot signs the next token one margin before that point, so after
//! warm-up a connection never waits for signing or STS. A cold miss is single-flight: callers
//! that queued behind an attempt take its outcome instead of trying again. When refreshing
//! fails the current token is served while it is still valid, refreshes are retried with
//! exponential backoff, and the failure is logged and counted. Slots unused for `idle_after`
//! stop refreshing (the next request is a cold miss again).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use super::credentials::{CredentialSource, RoleSpec};
use super::sign::{sign_token, AuthToken, TokenRequest, TOKEN_LIFETIME};
use super::{Clock, TokenError};

/// Tokens closer than this to the end of their validity are never handed out, even while
/// refreshing fails: the server checks the token a few round trips later.
const LAST_USE_SAFETY: Duration = Duration::from_secs(5);

/// Background refreshes of one slot are at least this far apart.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(5);

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
    /// Longest retry delay (default 30 s).
    pub retry_max: Duration,
    /// A slot not used for this long stops refreshing in the background (default 1 h).
    pub idle_after: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            margin: Duration::from_secs(60),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
            idle_after: Duration::from_secs(3600),
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
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    signings: AtomicU64,
    failures: AtomicU64,
}

#[derive(Default)]
struct SlotState {
    token: Option<Arc<AuthToken>>,
    last_error: Option<TokenError>,
    attempts: u64,
    last_used: Option<SystemTime>,
    refresher: bool,
}

#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    fill: tokio::sync::Mutex<()>,
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave the data half-updated (plain stores).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Slot {
    /// The token if it may be handed out without refreshing.
    fn fresh(&self, now: SystemTime, margin: Duration) -> Option<Arc<AuthToken>> {
        let mut state = lock(&self.state);
        state.last_used = Some(now);
        state
            .token
            .as_ref()
            .filter(|t| now + margin < t.valid_until())
            .cloned()
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

    fn attempts(&self) -> u64 {
        lock(&self.state).attempts
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

    /// A token for `key`: from the cache when fresh, else signed now (single-flight).
    pub async fn token(&self, key: &TokenKey) -> Result<Arc<AuthToken>, TokenError> {
        let inner = &self.inner;
        let slot = inner.slot(key);
        if let Some(token) = slot.fresh(inner.clock.now(), inner.settings.margin) {
            inner.counters.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(token);
        }
        inner.counters.misses.fetch_add(1, Ordering::Relaxed);
        let seen = slot.attempts();
        let _fill = slot.fill.lock().await;
        let now = inner.clock.now();
        if let Some(token) = slot.fresh(now, inner.settings.margin) {
            return Ok(token);
        }
        if slot.attempts() != seen {
            // Someone else attempted while we queued: share its outcome.
            return slot.outcome(now);
        }
        let result = inner.refresh(key, &slot).await;
        if result.is_ok() {
            self.ensure_refresher(key, &slot);
        }
        result.or_else(|_| slot.outcome(inner.clock.now()))
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
        }
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

    fn ensure_refresher(&self, key: &TokenKey, slot: &Arc<Slot>) {
        {
            let mut state = lock(&slot.state);
            if state.refresher {
                return;
            }
            state.refresher = true;
        }
        let inner = Arc::downgrade(&self.inner);
        let weak_slot = Arc::downgrade(slot);
        tokio::spawn(refresh_loop(inner, key.clone(), weak_slot));
    }
}

impl Inner {
    fn slot(&self, key: &TokenKey) -> Arc<Slot> {
        let mut slots = lock(&self.slots);
        if let Some(slot) = slots.get(key) {
            return slot.clone();
        }
        slots.entry(key.clone()).or_default().clone()
    }

    /// Signs a new token for `key` and stores it (or the error) in `slot`.
    /// Callers hold `slot.fill`.
    async fn refresh(&self, key: &TokenKey, slot: &Slot) -> Result<Arc<AuthToken>, TokenError> {
        let result = self.sign(key).await.map(Arc::new);
        let mut state = lock(&slot.state);
        state.attempts += 1;
        match &result {
            Ok(token) => {
                self.counters.signings.fetch_add(1, Ordering::Relaxed);
                state.token = Some(token.clone());
                state.last_error = None;
            }
            Err(e) => {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(host = %key.host, port = key.port, user = %key.user,
                    error = %e, "IAM token refresh failed");
                state.last_error = Some(e.clone());
            }
        }
        result
    }

    async fn sign(&self, key: &TokenKey) -> Result<AuthToken, TokenError> {
        let source = self.sources.get(&key.role).ok_or_else(|| {
            TokenError::UnknownRole(key.role.as_ref().map_or("(none)", |r| &r.arn).to_owned())
        })?;
        let now = self.clock.now();
        // Credentials must outlive the token's background refresh point, or the refresh
        // would sign again with the same, soon-expiring credentials.
        let needed_until = now + TOKEN_LIFETIME;
        let creds = source.credentials(now, needed_until).await?;
        let request = TokenRequest {
            host: &key.host,
            port: key.port,
            user: &key.user,
            region: &key.region,
        };
        sign_token(&creds, &request, now).map_err(|e| TokenError::Sign(e.to_string()))
    }
}

#[path = "cache_refresh.rs"]
mod refresh;
use refresh::refresh_loop;

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
