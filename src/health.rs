//! Process state for the health endpoints: started, draining, and room under the connection
//! limit. Readiness never dials the database: a database blip must not restart every pod.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;

/// Shared health flags.
#[derive(Debug, Default)]
pub struct Health {
    started: AtomicBool,
    draining: AtomicBool,
    limit: Option<Arc<Semaphore>>,
}

impl Health {
    /// Health for a process with an optional connection limit.
    pub fn new(limit: Option<Arc<Semaphore>>) -> Self {
        Self {
            limit,
            ..Self::default()
        }
    }

    /// The connection limit, if any.
    pub fn limit(&self) -> Option<Arc<Semaphore>> {
        self.limit.clone()
    }

    /// Every listener is serving.
    pub fn set_started(&self) {
        self.started.store(true, Ordering::SeqCst);
    }

    /// Shutdown has begun.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// `/startup`: every listener is serving (stays true during shutdown).
    pub fn started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    /// `/readiness`: started, not draining, and below the connection limit.
    pub fn ready(&self) -> bool {
        self.started()
            && !self.draining.load(Ordering::SeqCst)
            && self
                .limit
                .as_ref()
                .is_none_or(|s| s.available_permits() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_start_limit_and_drain() {
        let limit = Arc::new(Semaphore::new(1));
        let health = Health::new(Some(limit.clone()));
        assert!(!health.started() && !health.ready(), "not before start-up");
        health.set_started();
        assert!(health.started() && health.ready());
        let permit = limit.clone().try_acquire_owned().expect("permit");
        assert!(!health.ready(), "not at the connection limit");
        drop(permit);
        assert!(health.ready());
        health.set_draining();
        assert!(!health.ready(), "not while draining");
        assert!(health.started(), "startup stays true");
    }
}
