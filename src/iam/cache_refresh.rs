//! Filling a cache slot: serving a request ([`Inner::acquire`]), signing attempts that run
//! in their own tasks (one per slot at a time, waiters share the outcome), and the background
//! refresher of a confirmed slot: sleep until the token's refresh is due, sign again, back
//! off while that fails (capped low once no valid token is left), and remove the slot once
//! it idles.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use super::{lock, Inner, Slot, SlotState, TokenKey, LAST_USE_SAFETY};
use crate::iam::sign::{sign_token, AuthToken, TokenRequest, TOKEN_LIFETIME};
use crate::iam::TokenError;
use std::sync::atomic::Ordering;

/// Background refreshes of one slot are at least this far apart.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// Whether `token` may still be handed out at `now`.
fn usable(token: &AuthToken, now: SystemTime) -> bool {
    now + LAST_USE_SAFETY < token.valid_until()
}

impl Inner {
    /// A token for `key` from `slot`: the cached one while usable (starting a refresh behind
    /// it once past its refresh point), else the outcome of an attempt, waited for at most
    /// `settings.wait`.
    pub(super) async fn acquire(
        self: &Arc<Self>,
        key: &TokenKey,
        slot: &Arc<Slot>,
    ) -> Result<Arc<AuthToken>, TokenError> {
        let now = self.clock.now();
        let mut done = {
            let mut state = lock(&slot.state);
            state.last_used = now;
            if let Some(token) = state.token.clone().filter(|t| usable(t, now)) {
                let due = now + self.settings.margin >= token.valid_until();
                if due && !state.attempting && !state.refresher {
                    self.start_attempt(key, slot, &mut state);
                }
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(token);
            }
            self.counters.misses.fetch_add(1, Ordering::Relaxed);
            if !state.attempting {
                self.start_attempt(key, slot, &mut state);
            }
            slot.done.subscribe()
        };
        if tokio::time::timeout(self.settings.wait, done.changed())
            .await
            .is_err()
        {
            return Err(TokenError::Timeout(self.settings.wait));
        }
        slot.outcome(self.clock.now())
    }

    /// Starts a signing attempt for `slot` in its own task. Callers hold the slot's lock and
    /// checked that none is in flight.
    fn start_attempt(self: &Arc<Self>, key: &TokenKey, slot: &Arc<Slot>, state: &mut SlotState) {
        state.attempting = true;
        // With no usable token, take credentials that outlive a login rather than wait.
        let cold = !state
            .token
            .as_ref()
            .is_some_and(|t| usable(t, self.clock.now()));
        tokio::spawn(attempt(self.clone(), key.clone(), slot.clone(), cold));
    }

    /// Signs a new token for `key`. `cold`: cached credentials that last only for a login
    /// are good enough (a fetch of new ones then runs behind).
    async fn sign(&self, key: &TokenKey, cold: bool) -> Result<AuthToken, TokenError> {
        let source = self.sources.get(&key.role).ok_or_else(|| {
            TokenError::UnknownRole(key.role.as_ref().map_or("(none)", |r| &r.arn).to_owned())
        })?;
        let now = self.clock.now();
        // Credentials should outlive the token's background refresh point, or the refresh
        // would sign again with the same, soon-expiring credentials.
        let wanted = now + TOKEN_LIFETIME;
        let usable_until = if cold {
            now + 2 * LAST_USE_SAFETY
        } else {
            wanted
        };
        let creds = source.credentials(now, wanted, usable_until).await?;
        let request = TokenRequest {
            host: &key.host,
            port: key.port,
            user: &key.user,
            region: &key.region,
        };
        sign_token(&creds, &request, now).map_err(|e| TokenError::Sign(e.to_string()))
    }
}

/// One signing attempt for `slot`: stores the token or the error and wakes the waiters.
async fn attempt(inner: Arc<Inner>, key: TokenKey, slot: Arc<Slot>, cold: bool) {
    let result = inner.sign(&key, cold).await;
    let mut state = lock(&slot.state);
    state.attempting = false;
    match result {
        Ok(token) => {
            inner.counters.signings.fetch_add(1, Ordering::Relaxed);
            state.token = Some(Arc::new(token));
            state.last_error = None;
        }
        Err(e) => {
            inner.counters.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(host = %key.host, port = key.port, user = %key.user,
                error = %e, "IAM token refresh failed");
            state.last_error = Some(e);
        }
    }
    slot.done.send_modify(|n| *n += 1);
}

impl Inner {
    /// How long until the background refresh of `slot` is due.
    fn until_refresh(&self, slot: &Slot, now: SystemTime) -> Duration {
        let state = lock(&slot.state);
        let due = state
            .token
            .as_ref()
            .and_then(|t| t.valid_until().checked_sub(2 * self.settings.margin))
            .unwrap_or(now);
        due.duration_since(now)
            .unwrap_or_default()
            .max(MIN_REFRESH_INTERVAL)
    }

    /// Removes `slot` from the map when nobody used it for `idle_after` and no login holds
    /// it; true when removed.
    fn remove_if_idle(&self, key: &TokenKey, slot: &Arc<Slot>, now: SystemTime) -> bool {
        let mut slots = lock(&self.slots);
        let idle = {
            let state = lock(&slot.state);
            let unused = now.duration_since(state.last_used).unwrap_or_default();
            unused > self.settings.idle_after && state.leases == 0
        };
        if idle && slots.get(key).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            slots.remove(key);
        }
        idle
    }

    /// Runs an attempt (or joins the one in flight) and waits for it; true on success.
    async fn refresh_now(self: &Arc<Self>, key: &TokenKey, slot: &Arc<Slot>) -> bool {
        let mut done = {
            let mut state = lock(&slot.state);
            if !state.attempting {
                self.start_attempt(key, slot, &mut state);
            }
            slot.done.subscribe()
        };
        let _ = tokio::time::timeout(self.settings.wait, done.changed()).await;
        let state = lock(&slot.state);
        !state.attempting && state.last_error.is_none()
    }

    /// How much longer `slot`'s token may be handed out (zero: none).
    fn usable_for(&self, slot: &Slot) -> Duration {
        let now = self.clock.now();
        lock(&slot.state)
            .token
            .as_ref()
            .and_then(|t| (t.valid_until() - LAST_USE_SAFETY).duration_since(now).ok())
            .unwrap_or_default()
    }

    /// The next retry delay after `delay`: no later than the token stops being usable, and
    /// capped low once none is.
    fn retry_delay(&self, slot: &Slot, delay: Duration) -> Duration {
        match self.usable_for(slot) {
            Duration::ZERO => delay.min(self.settings.retry_max_cold),
            left => delay.min(self.settings.retry_max).min(left),
        }
    }
}

/// Keeps one confirmed slot's token fresh until the cache or the slot goes away, or the
/// slot idles (then it is removed from the cache).
pub(super) async fn refresh_loop(inner: Weak<Inner>, key: TokenKey, slot: Weak<Slot>) {
    let mut backoff = None::<Duration>;
    loop {
        let wait = match (inner.upgrade(), slot.upgrade()) {
            (Some(inner), Some(slot)) => match backoff {
                Some(delay) => inner.retry_delay(&slot, delay),
                None => inner.until_refresh(&slot, inner.clock.now()),
            },
            _ => return,
        };
        tokio::time::sleep(wait).await;
        let (Some(inner), Some(slot)) = (inner.upgrade(), slot.upgrade()) else {
            return;
        };
        if inner.remove_if_idle(&key, &slot, inner.clock.now()) {
            tracing::debug!(user = %key.user, "idle token cache slot removed");
            return;
        }
        let s = inner.settings;
        backoff = if inner.refresh_now(&key, &slot).await {
            None
        } else {
            Some(backoff.map_or(s.retry_min, |d| (d * 2).min(s.retry_max)))
        };
    }
}
