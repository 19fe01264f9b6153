//! [`Checkout`]: a server connection lent to one client. Check it in (after the caller reset
//! it) to return it to the idle list; close it, or just drop it, and it is closed. Either way
//! its permit is freed, after the connection is back on the idle list.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::metrics::CloseReason;
use super::pool_core::{Core, Entry, Slot};
use super::{Conn, PoolKey};

/// A checked-out server connection. Dropping it without [`Checkout::check_in`] closes the
/// connection (reason `dropped`).
pub struct Checkout<T: Conn> {
    core: Arc<Core<T>>,
    /// `Some` until check-in, close or drop.
    entry: Option<Slot<T>>,
    /// Freed after the connection went back (field order: dropped after `entry`'s owner is
    /// done with it, as `Drop::drop` runs before the fields are dropped).
    _permit: OwnedSemaphorePermit,
    reused: bool,
}

impl<T: Conn> std::fmt::Debug for Checkout<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkout")
            .field("key", &self.core.key)
            .field("reused", &self.reused)
            .finish_non_exhaustive()
    }
}

impl<T: Conn> Checkout<T> {
    pub(crate) fn new(
        core: Arc<Core<T>>,
        entry: Slot<T>,
        permit: OwnedSemaphorePermit,
        reused: bool,
    ) -> Self {
        Self {
            core,
            entry: Some(entry),
            _permit: permit,
            reused,
        }
    }

    fn entry(&self) -> &Entry<T> {
        self.entry
            .as_ref()
            .expect("a Checkout holds its connection until it is consumed or dropped")
    }

    /// The server connection.
    pub fn conn_mut(&mut self) -> &mut T {
        &mut self
            .entry
            .as_mut()
            .expect("a Checkout holds its connection until it is consumed or dropped")
            .conn
    }

    /// Whether the connection was idle in the pool (false: opened for this checkout).
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// How long ago the connection was opened.
    pub fn age(&self) -> Duration {
        self.entry().created.elapsed()
    }

    /// The pool's key.
    pub fn key(&self) -> &PoolKey {
        &self.core.key
    }

    /// Returns the connection. `conn_is_reset`: the caller ran the reset and the connection
    /// is idle at ReadyForQuery('I'): it goes back to the idle list (unless past its
    /// lifetime or the pools are shut down). Otherwise it is closed (reason `not_idle`).
    pub fn check_in(mut self, conn_is_reset: bool) {
        let Some(entry) = self.entry.take() else {
            return;
        };
        if conn_is_reset {
            self.core.series.resets.inc();
            self.core.check_in(entry, Instant::now());
        } else {
            self.core.discard(entry.conn, CloseReason::NotIdle);
        }
    }

    /// Transaction mode: returns a connection that is idle at ReadyForQuery('I') after a
    /// transaction, without a reset (counted as a transaction, not a reset).
    pub fn return_idle(mut self) {
        if let Some(entry) = self.entry.take() {
            self.core.series.transactions.inc();
            self.core.check_in(entry, Instant::now());
        }
    }

    /// Puts a connection that was opened for a client who left before receiving it on the
    /// idle list (it is fresh: nothing to reset).
    pub(crate) fn park(mut self) {
        if let Some(entry) = self.entry.take() {
            self.core.check_in(entry, Instant::now());
        }
    }

    /// Closes the connection for `reason` (e.g. [`CloseReason::ResetFailed`]).
    pub fn close(mut self, reason: CloseReason) {
        if let Some(entry) = self.entry.take() {
            self.core.discard(entry.conn, reason);
        }
    }
}

impl<T: Conn> Drop for Checkout<T> {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            self.core.discard(entry.conn, CloseReason::Dropped);
        }
    }
}
