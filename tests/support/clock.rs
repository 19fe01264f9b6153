//! A clock for the token cache that tests can move.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

/// Wall-clock time shifted by an adjustable number of seconds.
#[derive(Debug, Default)]
pub struct ShiftedClock(pub AtomicI64);

impl ShiftedClock {
    /// Shifts the clock to `seconds` from the wall clock.
    pub fn set(&self, seconds: i64) {
        self.0.store(seconds, Ordering::SeqCst);
    }
}

impl pg_iam_proxy::iam::Clock for ShiftedClock {
    fn now(&self) -> SystemTime {
        let shift = self.0.load(Ordering::SeqCst);
        let now = SystemTime::now();
        match shift < 0 {
            true => now - Duration::from_secs(shift.unsigned_abs()),
            false => now + Duration::from_secs(shift as u64),
        }
    }
}
