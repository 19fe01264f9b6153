//! A session's view of the shutdown drain's cut: whether it fired, checked on every poll of
//! every stage for the price of two atomic operations.
//!
//! Waiting on a [`CancellationToken`] directly costs a lock on the token and one on its
//! waiter list each time a wait is made, polled or dropped, which is several times per
//! transaction in transaction mode. A [`Cut`] waits on the token once per session, with a
//! waker of its own that only raises a flag and wakes the session's task; a poll looks at
//! the token again only when that flag is up.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Raised by the token's wake; wakes the task that last polled the cut.
#[derive(Default)]
struct Flag {
    raised: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.raised.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// One session's cut: fires when its token is cancelled.
pub struct Cut {
    token: CancellationToken,
    flag: Arc<Flag>,
    /// The flag's waker, made once.
    waker: Waker,
    /// The one wait on the token; locked only when the flag is up.
    wait: Mutex<Pin<Box<WaitForCancellationFutureOwned>>>,
}

impl Cut {
    /// The cut of `token`.
    pub fn new(token: CancellationToken) -> Self {
        let flag = Arc::new(Flag::default());
        flag.raised.store(true, Ordering::Relaxed); // the first poll registers the wait
        Self {
            waker: Waker::from(flag.clone()),
            wait: Mutex::new(Box::pin(token.clone().cancelled_owned())),
            token,
            flag,
        }
    }

    /// The token.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Ready once the token is cancelled (and on every poll after).
    pub fn poll_fired(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.flag.task.register(cx.waker());
        if !self.flag.raised.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let mut wait = self.wait.lock().unwrap_or_else(PoisonError::into_inner);
        let fired = wait
            .as_mut()
            .poll(&mut Context::from_waker(&self.waker))
            .is_ready();
        if fired {
            // Stays fired: every later poll looks again and finds it so.
            self.flag.raised.store(true, Ordering::Release);
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Completes once the token is cancelled.
    pub async fn fired(&self) {
        poll_fn(|cx| self.poll_fired(cx)).await;
    }
}

impl std::fmt::Debug for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cut")
            .field("cancelled", &self.token.is_cancelled())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_when_cancelled_and_stays_fired() {
        let token = CancellationToken::new();
        let cut = Cut::new(token.child_token());
        let waiting = async { cut.fired().await };
        tokio::pin!(waiting);
        assert!(futures_poll(waiting.as_mut()).is_pending());
        assert!(futures_poll(waiting.as_mut()).is_pending(), "polled again");
        token.cancel();
        waiting.await;
        cut.fired().await; // fired for good
        assert!(std::future::poll_fn(|cx| Poll::Ready(cut.poll_fired(cx)))
            .await
            .is_ready());
    }

    #[tokio::test]
    async fn a_waiting_task_is_woken() {
        let token = CancellationToken::new();
        let cut = Arc::new(Cut::new(token.clone()));
        let waiter = tokio::spawn({
            let cut = cut.clone();
            async move { cut.fired().await }
        });
        tokio::task::yield_now().await;
        token.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("woken")
            .expect("joined");
    }

    #[tokio::test]
    async fn a_cut_already_fired_is_ready_at_once() {
        let token = CancellationToken::new();
        token.cancel();
        let cut = Cut::new(token);
        assert!(futures_poll(std::pin::pin!(cut.fired())).is_ready());
    }

    /// Polls once with a waker that does nothing.
    fn futures_poll<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(Waker::noop()))
    }
}
