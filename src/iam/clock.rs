//! Wall-clock time for signing and token validity, behind a trait so that tests can drive it
//! from tokio's paused clock.

use std::fmt::Debug;
use std::time::SystemTime;

/// A source of wall-clock time.
pub trait Clock: Debug + Send + Sync {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;
}

/// The system's real-time clock. Signing must use real time: a monotonic clock stops while a
/// laptop sleeps, and tokens dated in the past are refused.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}
