//! A login's lease on its cache slot: the slot lives while a login holds it, and stays
//! after the login only once confirmed (the server accepted the token); then it gets a
//! background refresher. Drop is the guard: a failed login, or one whose future was dropped
//! (a connect timeout, a client that left), frees an unconfirmed slot.

use std::sync::Arc;

use super::refresh::refresh_loop;
use super::{lock, AuthToken, Slot, TokenCache, TokenError, TokenKey};

/// One login's hold on a cache slot. [`Lease::confirm`] after the server accepted the token
/// keeps the slot; dropping an unconfirmed last lease (a failed or abandoned login) removes
/// the slot.
pub struct Lease {
    pub(super) cache: TokenCache,
    pub(super) key: TokenKey,
    pub(super) slot: Arc<Slot>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("key", &self.key).finish()
    }
}

impl Lease {
    /// A token for the lease's key: cached when valid, else signed now (bounded wait).
    pub async fn token(&self) -> Result<Arc<AuthToken>, TokenError> {
        self.cache.inner.acquire(&self.key, &self.slot).await
    }

    /// Forgets the slot's token (the server refused it); the next request signs again.
    pub fn invalidate(&self) {
        lock(&self.slot.state).token = None;
    }

    /// The server accepted the token: keep the slot and refresh it in the background.
    pub fn confirm(&self) {
        let start = {
            let mut state = lock(&self.slot.state);
            state.confirmed = true;
            !std::mem::replace(&mut state.refresher, true)
        };
        if start {
            let inner = Arc::downgrade(&self.cache.inner);
            let slot = Arc::downgrade(&self.slot);
            tokio::spawn(refresh_loop(inner, self.key.clone(), slot));
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut slots = lock(&self.cache.inner.slots);
        let remove = {
            let mut state = lock(&self.slot.state);
            state.leases = state.leases.saturating_sub(1);
            state.leases == 0 && !state.confirmed
        };
        if remove
            && slots
                .get(&self.key)
                .is_some_and(|s| Arc::ptr_eq(s, &self.slot))
        {
            slots.remove(&self.key);
        }
    }
}
