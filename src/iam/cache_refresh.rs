//! The background refresh of one cache slot: sleep until the token's refresh is due, sign
//! again, back off exponentially on failure, and stop when the slot idles or goes away.

use std::sync::Weak;
use std::time::{Duration, SystemTime};

use super::{lock, Inner, Slot, TokenKey, MIN_REFRESH_INTERVAL};

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

    fn is_idle(&self, slot: &Slot, now: SystemTime) -> bool {
        let mut state = lock(&slot.state);
        let idle = state
            .last_used
            .is_none_or(|t| now.duration_since(t).unwrap_or_default() > self.settings.idle_after);
        if idle {
            state.refresher = false;
        }
        idle
    }
}

/// Keeps one slot's token fresh until the cache or the slot goes away, or the slot idles.
pub(super) async fn refresh_loop(inner: Weak<Inner>, key: TokenKey, slot: Weak<Slot>) {
    let mut backoff = None::<Duration>;
    loop {
        let wait = match (inner.upgrade(), slot.upgrade()) {
            (Some(inner), Some(slot)) => match backoff {
                Some(delay) => delay,
                None => inner.until_refresh(&slot, inner.clock.now()),
            },
            _ => return,
        };
        tokio::time::sleep(wait).await;
        let (Some(inner), Some(slot)) = (inner.upgrade(), slot.upgrade()) else {
            return;
        };
        if inner.is_idle(&slot, inner.clock.now()) {
            return;
        }
        let _fill = slot.fill.lock().await;
        let settings = inner.settings;
        backoff = match inner.refresh(&key, &slot).await {
            Ok(_) => None,
            Err(_) => Some(backoff.map_or(settings.retry_min, |d| (d * 2).min(settings.retry_max))),
        };
    }
}
