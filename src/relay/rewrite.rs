//! Transaction mode, both directions of [`super::prepared`]: the client's Parse, Bind,
//! Describe and Close are collected (Bind and Parse only up to their names unless a named
//! Parse needs its text) and rewritten; its Query, and its Parse's text, are collected (up
//! to [`SCAN_LIMIT`]) to find what makes the proxy forget ([`super::forget`]); the server's ParseComplete and
//! CloseComplete are passed, dropped or renamed and its ReadyForQuery noted. Everything
//! else is copied by header and length, unparsed.

use super::forget::forgets;
use super::pin::SCAN_LIMIT;
use super::prepared::{lock, put, Reply, Shared};

/// A named Parse longer than this goes to the server unchanged (and pins its client).
const TEXT_LIMIT: usize = 1 << 20;
/// Bytes of a Bind / Parse collected to find its names.
const NAMES_LIMIT: usize = 4096;

#[derive(Debug, Default)]
enum State {
    /// Between messages (header bytes so far).
    #[default]
    Between,
    /// Copying this many more body bytes.
    Pass(usize),
    /// Collecting a body of `len` bytes; `whole`: all of it, else up to its names.
    Collect {
        tag: u8,
        len: usize,
        body: Vec<u8>,
        whole: bool,
    },
}

/// Follows one direction's messages, rewriting as [`super::prepared`] says.
#[derive(Debug)]
pub(super) struct Rewrite {
    shared: Shared,
    /// The client's messages (else the server's).
    client: bool,
    header: Vec<u8>,
    state: State,
}

impl Rewrite {
    pub fn new(shared: Shared, client: bool) -> Self {
        Self {
            shared,
            client,
            header: Vec::with_capacity(5),
            state: State::Between,
        }
    }

    /// Follows `input`, appending what goes on to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            match &mut self.state {
                State::Between => {
                    let take = (5 - self.header.len()).min(input.len());
                    self.header.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if self.header.len() == 5 {
                        self.start(out);
                    }
                }
                State::Pass(left) => {
                    let take = (*left).min(input.len());
                    out.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    *left -= take;
                    if *left == 0 {
                        self.state = State::Between;
                    }
                }
                State::Collect { len, body, .. } => {
                    let take = (*len - body.len()).min(input.len());
                    body.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    self.collected(out);
                }
            }
        }
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        let h = std::mem::take(&mut self.header);
        let (tag, len) = (h[0], u32::from_be_bytes([h[1], h[2], h[3], h[4]]));
        let len = len.saturating_sub(4) as usize;
        self.header = h;
        self.header.clear();
        let collect = self.client && matches!(tag, b'P' | b'B' | b'D' | b'C') && len > 0;
        let query = self.client && tag == b'Q' && len <= SCAN_LIMIT;
        let error = !self.client && tag == b'E' && len <= NAMES_LIMIT;
        if (collect && len <= TEXT_LIMIT) || query || (error && lock(&self.shared).renaming()) {
            // A Parse's text is scanned too ([`super::forget`]) up to the Query's limit.
            let whole =
                matches!(tag, b'D' | b'C' | b'Q' | b'E') || (tag == b'P' && len <= SCAN_LIMIT);
            let body = Vec::with_capacity(len.min(NAMES_LIMIT));
            self.state = State::Collect {
                tag,
                len,
                body,
                whole,
            };
            return;
        }
        let mut p = lock(&self.shared);
        match (self.client, tag) {
            (true, b'P') => {
                // Too long to collect: unchanged, and if named, a statement of the client's.
                p.pinned |= collect;
                p.parse_passed();
            }
            (true, b'C') => p.close(None),
            (true, b'Q' | b'S' | b'F') => p.synced(), // a Query too long to scan

            (false, b'1' | b'3') if len == 0 => match p.expected(tag) {
                Reply::Forward => {}
                Reply::Swallow => return self.state = State::Between,
                Reply::AsParse => return put(out, b'1', &[]),
            },
            (false, b'Z') => p.ready(),
            _ => {}
        }
        put_header(out, tag, len);
        self.state = if len > 0 {
            State::Pass(len)
        } else {
            State::Between
        };
    }

    /// More body bytes arrived: acts once enough is collected.
    fn collected(&mut self, out: &mut Vec<u8>) {
        let State::Collect {
            tag,
            len,
            body,
            whole,
        } = &mut self.state
        else {
            return;
        };
        let (tag, len) = (*tag, *len);
        let complete = body.len() == len;
        if !*whole && !complete {
            let nuls = body.iter().filter(|b| **b == 0).count();
            let wanted = if tag == b'B' { 2 } else { 1 };
            if nuls < wanted && body.len() < NAMES_LIMIT {
                return;
            }
            if tag == b'P' && body.first() != Some(&0) && nuls >= 1 {
                *whole = true; // a named Parse: its text is needed
                return;
            }
        } else if !complete {
            return;
        }
        let body = std::mem::take(body);
        self.state = State::Between;
        let rest = len - body.len();
        self.message(tag, len, &body, out);
        if rest > 0 {
            self.state = State::Pass(rest);
        }
    }

    /// A collected client message (all of it, or its first part of a `len`-byte body), or
    /// the server's ErrorResponse that may name our statement.
    fn message(&mut self, tag: u8, len: usize, body: &[u8], out: &mut Vec<u8>) {
        let mut p = lock(&self.shared);
        if !self.client {
            return put(out, tag, &[&p.renamed(body)]);
        }
        let (name, after) = cstr(body);
        if tag == b'P' && len <= SCAN_LIMIT {
            p.forget(forgets(after)); // before its own name is remembered
        }
        match tag {
            b'P' if !name.is_empty() && body.len() == len => {
                return p.parse(name, after, out);
            }
            b'P' => p.parse_passed(),
            b'B' if after.contains(&0) => {
                let (stmt, rest) = cstr(after);
                if let Some(server) = p.server_name(stmt, out).filter(|_| !stmt.is_empty()) {
                    let left = len - body.len();
                    let new = name.len() + 1 + server.len() + 1 + rest.len() + left;
                    put_header(out, b'B', new);
                    for part in [name, b"\0", &server, b"\0", rest] {
                        out.extend_from_slice(part);
                    }
                    return;
                }
            }
            b'D' if name.first() == Some(&b'S') => {
                if let Some(server) = p.server_name(&name[1..], out).filter(|s| !s.is_empty()) {
                    return put(out, b'D', &[b"S", &server, b"\0"]);
                }
            }
            b'C' => p.close((name.first() == Some(&b'S')).then(|| &name[1..])),
            b'Q' => {
                p.synced();
                p.forget(forgets(body));
            }
            _ => {}
        }
        put_header(out, tag, len);
        out.extend_from_slice(body);
    }
}

/// The NUL-terminated string at the start of `bytes`, and what follows its NUL.
fn cstr(bytes: &[u8]) -> (&[u8], &[u8]) {
    match bytes.iter().position(|b| *b == 0) {
        Some(at) => (&bytes[..at], &bytes[at + 1..]),
        None => (bytes, &[]),
    }
}

fn put_header(out: &mut Vec<u8>, tag: u8, len: usize) {
    out.push(tag);
    out.extend_from_slice(&u32::try_from(len + 4).unwrap_or(u32::MAX).to_be_bytes());
}
