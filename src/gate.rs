//! The login gate: at most N upstream connects + logins of one target run at once; the other
//! clients wait in arrival order (tokio's semaphore is fair), each for at most its own
//! deadline, and a client that leaves gives its place up (dropping the wait leaves the queue).
//!
//! Without it a storm of clients starts every login at once: the server (and Aurora's IAM
//! check, throttled at 200 new connections per second) serves them all slowly, so most time
//! out although the server had room. With it, logins run at the server's pace and in order.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{sqlstate, ClientError};

/// Bounds one target's concurrent upstream logins.
#[derive(Debug)]
pub struct LoginGate {
    slots: Arc<Semaphore>,
    limit: usize,
    wait: Duration,
    waiting: Gauge,
    active: Gauge,
}

/// A place among the running logins; dropping it lets the next waiting client in.
#[derive(Debug)]
pub struct LoginSlot {
    _permit: OwnedSemaphorePermit,
    active: Gauge,
}

impl Drop for LoginSlot {
    fn drop(&mut self) {
        self.active.dec();
    }
}

/// Counts a waiting client for as long as it waits, however the wait ends.
struct Waiting(Gauge);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// No login slot became free within the wait.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "waited {wait:?} for one of the {limit} upstream login slots (--max-concurrent-logins); \
         the server is slow to accept logins"
)]
pub struct GateTimeout {
    /// How long the client waited.
    pub wait: Duration,
    /// The number of concurrent logins allowed.
    pub limit: usize,
}

impl GateTimeout {
    /// What the client is told.
    pub fn to_client(&self) -> ClientError {
        ClientError::new(
            sqlstate::TOO_MANY_CONNECTIONS,
            format!("pg-iam-proxy: too many logins in progress: {self}"),
        )
        .with_hint(
            "raise --max-concurrent-logins or --login-queue-timeout, or connect less at once",
        )
    }
}

impl LoginGate {
    /// A gate letting `limit` logins run at once (at least one), each waiter waiting at most
    /// `wait`; `waiting` and `active` are this target's gauges.
    pub fn new(limit: usize, wait: Duration, waiting: Gauge, active: Gauge) -> Self {
        let limit = limit.max(1);
        Self {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            wait,
            waiting,
            active,
        }
    }

    /// Waits in line for a login slot, at most the gate's wait.
    pub async fn enter(&self) -> Result<LoginSlot, GateTimeout> {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                self.waiting.inc();
                let _waiting = Waiting(self.waiting.clone());
                let acquire = self.slots.clone().acquire_owned();
                match tokio::time::timeout(self.wait, acquire).await {
                    Ok(Ok(permit)) => permit,
                    // The semaphore is never closed; treat it like a timeout all the same.
                    Ok(Err(_)) | Err(_) => {
                        return Err(GateTimeout {
                            wait: self.wait,
                            limit: self.limit,
                        })
                    }
                }
            }
        };
        self.active.inc();
        Ok(LoginSlot {
            _permit: permit,
            active: self.active.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(limit: usize, wait: Duration) -> LoginGate {
        LoginGate::new(limit, wait, Gauge::default(), Gauge::default())
    }

    #[tokio::test(start_paused = true)]
    async fn logins_beyond_the_limit_wait_in_arrival_order() {
        let gate = Arc::new(gate(2, Duration::from_secs(60)));
        let first = gate.enter().await.expect("slot 1");
        let _second = gate.enter().await.expect("slot 2");
        assert_eq!(gate.active.get(), 2);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..3 {
            let (gate, tx) = (gate.clone(), tx.clone());
            tokio::spawn(async move {
                let slot = gate.enter().await.expect("slot");
                tx.send(i).expect("send");
                std::future::pending::<()>().await;
                drop(slot);
            });
            tokio::task::yield_now().await;
        }
        assert_eq!(gate.waiting.get(), 3);
        assert!(
            rx.try_recv().is_err(),
            "nobody passes while both slots are held"
        );
        drop(first);
        assert_eq!(rx.recv().await, Some(0), "the first waiter goes first");
        assert_eq!(gate.waiting.get(), 2);
        assert_eq!(gate.active.get(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gives_up_at_its_deadline_and_says_why() {
        let gate = gate(1, Duration::from_secs(5));
        let _held = gate.enter().await.expect("slot");
        let err = gate.enter().await.expect_err("times out");
        assert_eq!(err.limit, 1);
        let client = err.to_client();
        assert_eq!(client.code, sqlstate::TOO_MANY_CONNECTIONS);
        assert!(
            client.message.contains("--max-concurrent-logins"),
            "{client}"
        );
        assert_eq!(
            gate.waiting.get(),
            0,
            "a timed-out waiter is no longer counted"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_leaves_the_queue_gives_its_place_up() {
        let gate = Arc::new(gate(1, Duration::from_secs(60)));
        let held = gate.enter().await.expect("slot");
        let leaver = tokio::spawn({
            let gate = gate.clone();
            async move { gate.enter().await.map(drop) }
        });
        tokio::task::yield_now().await;
        assert_eq!(gate.waiting.get(), 1);
        leaver.abort();
        let _ = leaver.await;
        assert_eq!(gate.waiting.get(), 0);
        drop(held);
        let _next = gate
            .enter()
            .await
            .expect("the slot is free for the next client");
        assert_eq!(gate.active.get(), 1);
    }
}
