//! Transaction mode: protocol-level named prepared statements without pinning. A client's
//! Parse is remembered (client name -> query text and parameter types); on a server
//! connection the statement is prepared under a name of ours (`pgiam_<n>`), one per text
//! and types, kept in a bounded cache per server connection ([`ServerStatements`]).
//!
//! Every client message is replaced by exactly one server message (a Parse the server
//! already has becomes a Close of a name that never exists, whose CloseComplete is
//! turned into the ParseComplete); what the proxy adds in front (a Parse the server
//! lacks, a Close evicting the least recently used statement) has its reply swallowed.
//! So the server itself orders every reply. ParseComplete and CloseComplete come back in
//! the order their Parse and Close were sent ([`Prepared::expected`]); those not answered
//! by the next ReadyForQuery were skipped after an error and are undone.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::forget::Forget;
use super::setting::Period;

/// A statement: the Parse body after its name (query text, NUL, parameter type OIDs).
pub type Text = Arc<[u8]>;

/// Named statements one client may have; beyond, a Parse goes to the server unchanged
/// and pins the client.
pub const CLIENT_LIMIT: usize = 1000;
/// Statements a server connection keeps prepared for whoever uses it next.
pub const SERVER_LIMIT: usize = 250;
/// The name of a statement that never exists (ours have a number).
const NONE: &[u8] = b"pgiam_";

/// The statements prepared on one server connection, by text.
#[derive(Debug, Default)]
pub struct ServerStatements {
    by_text: HashMap<Text, (Vec<u8>, u64)>,
    /// Names given so far (never reused on the connection).
    counter: u64,
    /// The use clock (least recently used goes first).
    clock: u64,
}

impl ServerStatements {
    /// Forgets the statements (the connection was reset), keeping the names unique.
    pub fn cleared(&self) -> Self {
        Self {
            counter: self.counter,
            ..Self::default()
        }
    }

    /// Forgets the statements (the server dropped them), keeping names unique and the clock.
    fn clear(&mut self) {
        self.by_text.clear();
    }

    fn touch(&mut self, text: &Text) -> Option<Vec<u8>> {
        self.clock += 1;
        let clock = self.clock;
        self.by_text.get_mut(text).map(|(name, used)| {
            *used = clock;
            name.clone()
        })
    }

    fn add(&mut self, text: &Text) -> Vec<u8> {
        self.counter += 1;
        self.clock += 1;
        let name = format!("pgiam_{}", self.counter).into_bytes();
        self.by_text
            .insert(text.clone(), (name.clone(), self.clock));
        name
    }

    /// The least recently used statement not used since `since`, when over the limit.
    fn evictable(&mut self, since: u64) -> Option<Vec<u8>> {
        if self.by_text.len() < SERVER_LIMIT {
            return None;
        }
        let (text, _) = self
            .by_text
            .iter()
            .filter(|(_, (_, used))| *used < since)
            .min_by_key(|(_, (_, used))| *used)?;
        let text = text.clone();
        self.by_text.remove(&text).map(|(name, _)| name)
    }
}

/// What to do with a ParseComplete / CloseComplete when it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Pass it on.
    Forward,
    /// Drop it (the proxy's own message).
    Swallow,
    /// Pass it on as a ParseComplete (a CloseComplete standing in for one).
    AsParse,
}

/// Undone when the message was skipped after an error.
#[derive(Debug)]
enum Undo {
    Client(Vec<u8>, Option<Text>),
    Server(Text),
}

#[derive(Debug)]
struct Expect {
    segment: u64,
    reply: Reply,
    undo: Vec<Undo>,
}

/// A client's statements and what its server connection owes; shared by both directions.
#[derive(Debug, Default)]
pub struct Prepared {
    client: HashMap<Vec<u8>, Text>,
    /// The current server connection's statements.
    pub server: ServerStatements,
    parses: VecDeque<Expect>,
    closes: VecDeque<Expect>,
    syncs_sent: u64,
    ready_seen: u64,
    /// The clock when the current server connection was lent (what is used since stays).
    lent_at: u64,
    /// Statements prepared on a server connection for a Bind or Describe (a metric).
    pub reprepared: u64,
    /// A Parse went to the server unchanged ([`CLIENT_LIMIT`]): the client must stay.
    pub pinned: bool,
    /// Until the ReadyForQuery that ends their segment: our statement names an error may
    /// give, and the client's names for them.
    renames: Vec<(u64, Vec<u8>, Vec<u8>)>,
    /// A client's statement may have reset the connection's settings ([`Forget::params`]).
    pub forgot_params: bool,
    /// The client's tracked settings its statements set back to its login's
    /// ([`Forget::settings`]).
    pub reset_settings: u16,
    /// The current transaction's messages, for its settings ([`super::setting`]).
    pub period: Period,
}

/// [`Prepared`] as both directions of a relay hold it.
pub type Shared = Arc<Mutex<Prepared>>;

/// Locks `shared` (a poisoned lock is still consistent: every change is one step).
pub fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Prepared> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Prepared {
    /// A server connection is lent with `server`'s statements.
    pub fn lend(&mut self, server: ServerStatements) {
        self.server = server;
        self.lent_at = self.server.clock + 1;
    }

    /// A Query, Sync or FunctionCall went to the server.
    pub fn synced(&mut self) {
        self.syncs_sent += 1;
    }

    fn expect(&mut self, close: bool, reply: Reply, undo: Vec<Undo>) {
        let e = Expect {
            segment: self.syncs_sent,
            reply,
            undo,
        };
        if close {
            self.closes.push_back(e);
        } else {
            self.parses.push_back(e);
        }
    }

    /// The server's ParseComplete (`b'1'`) or CloseComplete (`b'3'`) arrived.
    pub fn expected(&mut self, tag: u8) -> Reply {
        let queue = if tag == b'1' {
            &mut self.parses
        } else {
            &mut self.closes
        };
        queue.pop_front().map_or(Reply::Forward, |e| e.reply)
    }

    /// The server's ReadyForQuery arrived: what was not answered before it was skipped.
    pub fn ready(&mut self) {
        self.ready_seen += 1;
        let seen = self.ready_seen;
        self.renames.retain(|(segment, ..)| *segment >= seen);
        let mut skipped = Vec::new();
        for queue in [&mut self.parses, &mut self.closes] {
            while queue.front().is_some_and(|e| e.segment < seen) {
                skipped.extend(queue.pop_front().into_iter().flat_map(|e| e.undo));
            }
        }
        for undo in skipped.into_iter().rev() {
            match undo {
                Undo::Client(name, Some(text)) => _ = self.client.insert(name, text),
                Undo::Client(name, None) => _ = self.client.remove(&name),
                Undo::Server(text) => _ = self.server.by_text.remove(&text),
            }
        }
    }

    /// An error may name one of our statements for the client's.
    pub fn renaming(&self) -> bool {
        !self.renames.is_empty()
    }

    /// The server's ErrorResponse body `body` with our statement names the client's, as
    /// PostgreSQL quotes them in a message (`"name"`).
    pub fn renamed(&self, body: &[u8]) -> Vec<u8> {
        let mut body = body.to_vec();
        for (_, ours, theirs) in &self.renames {
            let quoted = |n: &[u8]| [b"\"", n, b"\""].concat();
            body = replace(&body, &quoted(ours), &quoted(theirs));
        }
        body
    }

    /// The server name of the client's statement `name`, prepared first if needed
    /// (messages appended to `out`); `None` for a name the client has not prepared.
    pub fn server_name(&mut self, name: &[u8], out: &mut Vec<u8>) -> Option<Vec<u8>> {
        let text = self.client.get(name)?.clone();
        if let Some(server) = self.server.touch(&text) {
            return Some(server);
        }
        self.reprepared += 1;
        let server = self.prepare(&text, out);
        self.expect(false, Reply::Swallow, vec![Undo::Server(text)]);
        Some(server)
    }

    /// Appends a Parse of `text` under a new name (after evicting one if full).
    fn prepare(&mut self, text: &Text, out: &mut Vec<u8>) -> Vec<u8> {
        if let Some(old) = self.server.evictable(self.lent_at) {
            put(out, b'C', &[b"S", &old, b"\0"]);
            self.expect(true, Reply::Swallow, Vec::new());
        }
        let server = self.server.add(text);
        put(out, b'P', &[&server, b"\0", text]);
        server
    }

    /// The client's Parse of `text` as `name` (not empty): what goes to the server.
    pub fn parse(&mut self, name: &[u8], text: &[u8], out: &mut Vec<u8>) {
        if self.client.contains_key(name) {
            // As the server would: 42P05, whose message names our statement: renamed back
            // on its way to the client ([`Prepared::renamed`]).
            let old = self.server_name(name, out).unwrap_or_default();
            self.renames
                .push((self.syncs_sent, old.clone(), name.to_vec()));
            let text = self
                .client
                .get(name)
                .cloned()
                .unwrap_or_else(|| Arc::from(text));
            put(out, b'P', &[&old, b"\0", &text]);
            return self.expect(false, Reply::Forward, Vec::new());
        }
        if self.client.len() >= CLIENT_LIMIT {
            self.pinned = true;
            put(out, b'P', &[name, b"\0", text]);
            return self.expect(false, Reply::Forward, Vec::new());
        }
        let text: Text = Arc::from(text);
        self.client.insert(name.to_vec(), text.clone());
        let undo = Undo::Client(name.to_vec(), None);
        if self.server.touch(&text).is_some() {
            put(out, b'C', &[b"S", NONE, b"\0"]);
            return self.expect(true, Reply::AsParse, vec![undo]);
        }
        self.prepare(&text, out);
        self.expect(false, Reply::Forward, vec![undo, Undo::Server(text)]);
    }

    /// The client's Query or Parse (whose statement it runs) went to the server, making the
    /// proxy forget `forget`: with [`Forget::statements`] the server drops every named
    /// statement when it runs it, so the client's names are forgotten (as its own backend
    /// would) and the connection's cache is known empty (what was skipped before it is not
    /// undone).
    pub fn forget(&mut self, forget: Forget) {
        if forget.statements {
            self.client.clear();
            self.server.clear();
            for e in self.parses.iter_mut().chain(self.closes.iter_mut()) {
                e.undo.clear();
            }
        }
        self.forgot_params |= forget.params;
        self.reset_settings |= forget.settings;
    }

    /// Any other Parse (unnamed, or passed on unchanged) went to the server.
    pub fn parse_passed(&mut self) {
        self.expect(false, Reply::Forward, Vec::new());
    }

    /// The client's Close of statement `name` (`None`: a portal or unknown statement);
    /// the Close itself goes on unchanged (our statements stay cached).
    pub fn close(&mut self, name: Option<&[u8]>) {
        let undo = name
            .and_then(|n| self.client.remove_entry(n))
            .map(|(n, text)| Undo::Client(n, Some(text)));
        self.expect(true, Reply::Forward, undo.into_iter().collect());
    }
}

/// Appends a message of `tag` whose body is `parts`.
pub fn put(out: &mut Vec<u8>, tag: u8, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out.push(tag);
    out.extend_from_slice(&u32::try_from(len + 4).unwrap_or(u32::MAX).to_be_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
}

/// `haystack` with every `from` replaced by `to`.
fn replace(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while !rest.is_empty() {
        if rest.starts_with(from) {
            out.extend_from_slice(to);
            rest = &rest[from.len()..];
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    out
}
