//! After login: splice both directions with no per-message parsing until both sides are
//! done (a half-close is passed on), an error occurs, the idle timeout passes, or the proxy
//! cuts the session at the end of a shutdown drain.
//!
//! Unlike `tokio::io::copy_bidirectional`, a direction holds its copy buffer only while
//! data is moving: the buffer is released whenever the reader has nothing more, so an idle
//! session costs no buffer memory (most proxied sessions are idle most of the time). Bytes
//! are counted into a [`Meter`] per direction as they are written, so a long session shows
//! its traffic while it lasts, not only when it ends.
//!
//! Each direction also follows message boundaries by their headers ([`frames`]), so a
//! session the proxy ends itself is ended as PostgreSQL would end it ([`goodbye`]): the
//! client gets `FATAL 57P01` (cut) or `FATAL 57P05` (idle) between two messages, never in
//! the middle of one, and the server gets Terminate and a TLS close.
//!
//! In the pooled mode ([`Mode::Pooled`], [`splice_with`]) the headers' types are watched
//! too ([`track`]): the client's Terminate is not forwarded, and the [`Outcome`] says
//! whether the server connection the client leaves is provably idle, to be reset and reused.
//!
//! Files: [`pipe`] (one direction), [`frames`] (boundaries), [`splice`] (both directions),
//! [`goodbye`] (ending a session the proxy ends), [`track`] (the pooled mode's verdict),
//! [`pin`] and [`prepared`] / [`rewrite`] (transaction mode: pins, named statements),
//! [`forget`] (transaction mode: statements that return a connection toward its login state),
//! [`Cut`] (the shutdown drain's cut, as a session polls it).

mod cut;
pub mod forget;
mod frames;
mod goodbye;
pub mod pin;
mod pipe;
pub mod prepared;
mod rewrite;
pub mod setting;
mod splice;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_pooled;
#[cfg(test)]
mod tests_prepared;
mod track;

pub use cut::Cut;
pub use frames::Frames;
pub use goodbye::{FINISH_MESSAGE, GOODBYE};
pub use pin::PinReason;
pub use splice::{splice, splice_transaction, splice_with, Phase};

/// What the relay follows beyond bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Bytes and boundaries only; the session ends when both sides have closed.
    #[default]
    Plain,
    /// Session pooling: the client's Terminate is not forwarded, the session ends when the
    /// client leaves, and the server connection is judged for reuse.
    Pooled,
}

/// Where one direction's byte count goes as data moves (a metrics counter, in the proxy).
pub trait Meter: Sync {
    /// Counts `bytes` more written.
    fn add(&self, bytes: u64);
}

/// No metering.
impl Meter for () {
    fn add(&self, _: u64) {}
}

/// The meters of both directions.
#[derive(Clone, Copy)]
pub struct Meters<'a> {
    /// Client -> server.
    pub to_server: &'a dyn Meter,
    /// Server -> client.
    pub to_client: &'a dyn Meter,
}

impl Meters<'static> {
    /// Counting nothing beyond the [`Outcome`].
    pub const NONE: Self = Self {
        to_server: &(),
        to_client: &(),
    };
}

/// How a splice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Both directions finished; `client_first` says who closed first.
    Closed {
        /// The client closed before the server did.
        client_first: bool,
    },
    /// An I/O error on one side.
    Failed,
    /// Cut at the end of a shutdown drain.
    Cut,
    /// No traffic either way for the idle timeout.
    Idle,
    /// [`Mode::Pooled`]: the client left, by Terminate (not forwarded) or by closing, while
    /// the server connection was open; it was left open for the caller to reset or close.
    Released {
        /// The client sent Terminate (rather than just closing).
        terminate: bool,
    },
    /// [`splice_transaction`]: the server connection became provably idle outside a
    /// transaction block with the client still there; unless [`Outcome::pinned`], it may go
    /// back to the pool as it is.
    Returned,
}

/// How a splice ended and what it moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Why it ended.
    pub ended: Ended,
    /// Bytes client -> server.
    pub to_server: u64,
    /// Bytes server -> client.
    pub to_client: u64,
    /// For a session the proxy ended (cut, idle): the reason (FATAL 57P01 or 57P05) was
    /// written to the client. False when the server was in the middle of a message that did
    /// not end in time ([`FINISH_MESSAGE`]), or the client did not take it in time.
    pub told: bool,
    /// [`Mode::Pooled`], [`Ended::Released`] only: the server connection is provably idle
    /// (both directions between messages, every Query / Sync / FunctionCall answered by its
    /// ReadyForQuery, nothing sent since, the last status 'I'), so it may be reset and
    /// reused. False means close it.
    pub server_idle: bool,
    /// [`splice_transaction`]: why the client was pinned to its server connection, if it was.
    pub pinned: Option<PinReason>,
    /// [`Ended::Returned`]: what the server sent that the client has yet to get, ending with
    /// the transaction's final ReadyForQuery (empty if it already went). It belongs to the
    /// client, not the server connection, which may go back to the pool first.
    pub tail: Vec<u8>,
}
