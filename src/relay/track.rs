//! The pooled relay's view of a session, from message headers alone: whether the server
//! connection is provably idle when the client leaves, so it can be reset and reused.
//!
//! Client -> server ([`ClientWatch`], followed as bytes are read, before they are written):
//! Terminate (`X`) is stopped in front of, never forwarded; every message that elicits a
//! ReadyForQuery (Query `Q`, Sync `S`, FunctionCall `F`) is counted, and any other message
//! marks the server as owing more than the last such one answered. CopyData / CopyDone /
//! CopyFail and Flush do not: outside COPY the server ignores the copy messages and Flush
//! only flushes (postgres.c), and inside COPY the ReadyForQuery count is still short.
//!
//! Server -> client ([`ServerWatch`], followed as bytes are read, since what the server
//! connection owes depends on what it sent, not on what the client took yet): ReadyForQuery
//! (`Z`) is counted and its status byte (its one body byte, which may come in a later chunk
//! than its header) kept.
//!
//! Provably idle ([`idle`]): the client's bytes all written and both directions between
//! messages as read, as many ReadyForQuery as requests for one, nothing sent since the last
//! request, and the last status `I`. A session that never sent anything stands at the
//! greeting's `Z('I')`. Bytes the server sent that the client has not taken yet do not
//! count: transaction mode gives the connection back before it writes the final
//! ReadyForQuery to the client.

use super::frames::{Frames, Step, Watch};

/// ReadyForQuery's status: idle, not in a transaction block.
const IDLE: u8 = b'I';

/// Client -> server: requests for ReadyForQuery, and what came after the last one.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct ClientWatch {
    /// Query, Sync and FunctionCall messages forwarded.
    pub requests: u64,
    /// A message other than those (and the harmless ones) was forwarded after the last.
    pub since: bool,
    /// The client sent Terminate (stopped in front of).
    pub terminate: bool,
}

impl Watch for ClientWatch {
    fn start(&mut self, tag: u8) -> Step {
        match tag {
            b'X' => {
                self.terminate = true;
                return Step::Stop;
            }
            b'Q' | b'S' | b'F' => {
                self.requests += 1;
                self.since = false;
            }
            b'd' | b'c' | b'f' | b'H' => {}
            _ => self.since = true,
        }
        Step::Skip
    }

    fn first(&mut self, _: u8) {}
}

/// Server -> client: ReadyForQuery messages and the last one's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ServerWatch {
    /// ReadyForQuery messages written to the client.
    pub ready: u64,
    /// The last one's status byte (0 until its body byte arrives).
    pub status: u8,
}

impl Default for ServerWatch {
    /// As after the greeting, which ended in ReadyForQuery('I').
    fn default() -> Self {
        Self {
            ready: 0,
            status: IDLE,
        }
    }
}

impl ServerWatch {
    /// The last ReadyForQuery said idle, outside a transaction block.
    pub fn is_idle(&self) -> bool {
        self.status == IDLE
    }
}

impl Watch for ServerWatch {
    fn start(&mut self, tag: u8) -> Step {
        if tag != b'Z' {
            return Step::Skip;
        }
        self.ready += 1;
        self.status = 0;
        Step::First
    }

    fn first(&mut self, byte: u8) {
        self.status = byte;
    }
}

/// One direction as the verdict needs it: its messages and boundaries, as read.
#[derive(Debug, Clone, Copy)]
pub(super) struct Side<'a, W> {
    /// The messages seen.
    pub watch: &'a W,
    /// Where the stream stands, as read.
    pub frames: &'a Frames,
}

/// True if the server connection provably owes nothing and stands outside a transaction
/// (whatever of its answer the client has yet to take), the client's bytes read so far all
/// written to it (the caller's part: the verdict sees what was read).
pub(super) fn idle(client: Side<'_, ClientWatch>, server: Side<'_, ServerWatch>) -> bool {
    client.frames.at_boundary()
        && server.frames.at_boundary()
        && client.watch.requests == server.watch.ready
        && !client.watch.since
        && server.watch.status == IDLE
}
