//! What the pool needs of a server connection ([`Conn`]) and of whatever opens one
//! ([`Connector`]). The real ones are the upstream login's `ServerConn` and a connector that
//! logs in through the target's login gate; the tests use fakes.

use std::future::Future;

use super::error::ToClient;
use super::PoolKey;

/// A server connection as the pool sees it.
pub trait Conn: Send + Sized + 'static {
    /// Whether the connection is unusable right now, without blocking: poll the socket once;
    /// bytes waiting (an idle server connection has nothing to say; a server going away sends
    /// an ErrorResponse) or EOF mean broken. Called on idle connections at checkout.
    fn is_broken(&mut self) -> bool;

    /// Closes the connection politely (Terminate, TLS close_notify). The pool runs it in a
    /// task of its own, bounded by a few seconds.
    fn close(self) -> impl Future<Output = ()> + Send;
}

/// Opens server connections of a pool. Cloned into the tasks that open (and into the pool's
/// maintenance task for warm-ups), so it should be cheap to clone and must not hold the
/// `Pools` (that would keep it alive).
pub trait Connector: Clone + Send + Sync + 'static {
    /// The connection it opens.
    type Conn: Conn;
    /// Why opening failed; passed through to the client.
    type Error: ToClient + std::fmt::Display + std::fmt::Debug + Send + 'static;

    /// Opens (connects and logs in) a new server connection for `key`. It must bound its own
    /// time (connect and login timeouts): the pool does not cancel an open that has begun.
    fn open(&self, key: &PoolKey) -> impl Future<Output = Result<Self::Conn, Self::Error>> + Send;

    /// Whether `conn` still goes to the right server (after an Aurora failover, one to the
    /// old writer does not). A stale connection is never handed out: it is closed at
    /// checkout, at check-in and by the maintenance task. Cheap and non-blocking.
    fn is_current(&self, _conn: &Self::Conn) -> bool {
        true
    }
}
