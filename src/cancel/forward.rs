//! Forwarding a CancelRequest, bounded: a new TLS connection to the server per forward, so
//! a client holding a valid key must not be able to make the proxy open them without limit.
//! Per session key at most one forward runs at a time; cancels arriving meanwhile are
//! coalesced into one follow-up forward started after it (so a cancel is never lost to a
//! forward that began before it arrived). Forwards of one key start at least `spacing`
//! apart. At most `max_in_flight` forwards run process-wide; excess requests are dropped.
//! Each forward (connect, TLS, send, wait for the server to close) has a deadline.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use pgwire::messages::cancel::CancelRequest;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use super::{CancelMap, CancelTarget};
use crate::upstream::connect::{connect_addr, ConnectError};
use crate::wire::{self, EncodeError};

/// Bounds on forwarding cancels.
#[derive(Debug, Clone, Copy)]
pub struct CancelLimits {
    /// Minimum time between two forwards of one session key. 100 ms: far above a double
    /// press or a driver's retry, far below a person re-running a query and cancelling it
    /// again; it caps one key at 10 upstream connections a second.
    pub spacing: Duration,
    /// Forwards running at once, process-wide.
    pub max_in_flight: usize,
    /// Deadline for one forward: connect, TLS, send, and the server closing.
    pub timeout: Duration,
}

impl Default for CancelLimits {
    fn default() -> Self {
        Self {
            spacing: Duration::from_millis(100),
            max_in_flight: 64,
            timeout: Duration::from_secs(5),
        }
    }
}

/// What became of a cancel request (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CancelOutcome {
    /// Sent to the server (counted per upstream forward).
    Forwarded,
    /// Merged into a forward of the same key that is running or about to run.
    Coalesced,
    /// Refused: too many forwards running process-wide.
    Dropped,
    /// Not a key of ours (or its session has ended).
    UnknownKey,
    /// The forward failed or timed out.
    Failed,
}

impl CancelOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forwarded => "forwarded",
            Self::Coalesced => "coalesced",
            Self::Dropped => "dropped",
            Self::UnknownKey => "unknown_key",
            Self::Failed => "failed",
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// A forward runs or waits for its turn.
    busy: bool,
    /// A cancel arrived after the running forward started.
    again: bool,
    /// The session ended.
    closed: bool,
    /// When the last forward started.
    last: Option<Instant>,
    /// Where a cancel goes now; `None` in transaction mode between transactions.
    target: Option<CancelTarget>,
}

/// One session's cancel target and forwarding state.
#[derive(Debug)]
pub(super) struct Entry {
    state: Mutex<State>,
    /// Woken whenever a forward of this key stops running.
    settled: tokio::sync::Notify,
}

impl Entry {
    pub(super) fn new(target: Option<CancelTarget>) -> Self {
        Self {
            state: Mutex::new(State {
                target,
                ..State::default()
            }),
            settled: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn close(&self) {
        self.lock().closed = true;
    }

    /// Points the key at `target` (a transaction's server connection) or at nothing.
    pub(super) fn point(&self, target: Option<CancelTarget>) {
        self.lock().target = target;
    }

    /// Whether a forward runs or waits for its turn.
    pub(super) fn busy(&self) -> bool {
        self.lock().busy
    }

    /// Takes the forwarding turn, or marks a follow-up for the holder of it.
    fn claim(&self) -> bool {
        let mut s = self.lock();
        if s.busy {
            s.again = true;
            return false;
        }
        s.busy = true;
        true
    }

    /// Starts a forward now, to where the key points, unless the session ended or the key
    /// points nowhere; cancels so far are covered by it.
    fn start(&self) -> Option<CancelTarget> {
        let mut s = self.lock();
        let target = s.target.clone().filter(|_| !s.closed);
        if target.is_none() {
            s.busy = false;
            drop(s);
            self.settled.notify_waiters();
            return None;
        }
        s.again = false;
        s.last = Some(Instant::now());
        target
    }

    /// After a forward: keep the turn if a follow-up is owed, else give it up.
    fn finish(&self) -> bool {
        let mut s = self.lock();
        let again = s.again && !s.closed;
        s.busy = again;
        s.again = false;
        drop(s);
        if !again {
            self.settled.notify_waiters();
        }
        again
    }

    /// Gives up the turn without forwarding.
    fn release(&self) {
        let mut s = self.lock();
        s.busy = false;
        s.again = false;
        drop(s);
        self.settled.notify_waiters();
    }

    /// Waits until no forward of this key is running (the caller closed the entry first, so
    /// none starts after).
    pub(super) async fn settled(&self) {
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.lock().busy {
                return;
            }
            notified.await;
        }
    }

    fn earliest_start(&self, spacing: Duration) -> Option<Instant> {
        self.lock().last.map(|t| t + spacing)
    }
}

/// Why a forward failed.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("{0}")]
    Connect(#[from] ConnectError),
    #[error("{0}")]
    Encode(#[from] EncodeError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl CancelMap {
    /// Forwards a client's cancel to the session's server if the key is ours, within the
    /// limits; `record` is told each outcome (one per upstream forward, or one for the
    /// request when nothing is sent).
    pub async fn forward(&self, request: &CancelRequest, record: impl Fn(CancelOutcome)) {
        let Some(entry) = self.lookup(request) else {
            tracing::debug!("cancel request with an unknown key ignored");
            return record(CancelOutcome::UnknownKey);
        };
        if !entry.claim() {
            tracing::debug!("cancel request coalesced with one in flight");
            return record(CancelOutcome::Coalesced);
        }
        let Ok(_permit) = self.in_flight.try_acquire() else {
            entry.release();
            tracing::debug!(
                max = self.limits.max_in_flight,
                "too many cancel forwards; dropped"
            );
            return record(CancelOutcome::Dropped);
        };
        for first in std::iter::once(true).chain(std::iter::repeat(false)) {
            if let Some(at) = entry.earliest_start(self.limits.spacing) {
                tokio::time::sleep_until(at).await;
            }
            let Some(target) = entry.start() else {
                if first {
                    // The session ended meanwhile, or (transaction mode) runs no transaction.
                    record(CancelOutcome::UnknownKey);
                }
                return;
            };
            match send(&target, self.limits.timeout).await {
                Ok(()) => {
                    tracing::debug!(addr = %target.addr, "cancel request forwarded");
                    record(CancelOutcome::Forwarded);
                }
                Err(e) => {
                    tracing::warn!(error = %e, addr = %target.addr, "cannot forward a cancel request");
                    record(CancelOutcome::Failed);
                }
            }
            if !entry.finish() {
                return;
            }
        }
    }
}

/// Connects, sends the server's real key and waits for the server to close, as libpq does,
/// so the cancel is processed; all within `limit`.
async fn send(target: &CancelTarget, limit: Duration) -> Result<(), SendError> {
    let exchange = async {
        let mut stream = connect_addr(&target.endpoint, target.addr).await?;
        let real = CancelRequest::new(target.key.pid, target.key.secret_key.clone());
        let mut buf = BytesMut::new();
        wire::encode(&real, "CancelRequest", &mut buf)?;
        wire::send(&mut stream, &buf).await?;
        let _ = stream.read(&mut [0u8; 1]).await;
        Ok(())
    };
    tokio::time::timeout(limit, exchange)
        .await
        .unwrap_or(Err(SendError::Timeout(limit)))
}
