//! Transaction mode, both directions of [`super::prepared`]: the client's Parse, Bind,
//! Describe and Close are collected (Bind and Parse only up to their names unless a named
//! Parse needs its text) and rewritten; its Query, and its Parse's text, are collected (up
//! to [`SCAN_LIMIT`]) to find what makes the proxy forget ([`super::forget`]) and, in a
//! transaction, what pins the client ([`super::pin`]); the server's ParseComplete and
//! CloseComplete are passed, dropped or renamed and its ReadyForQuery noted. Everything
//! else is copied by header and length, unparsed.

use super::pin::{judge, PinReason, SCAN_LIMIT};
use super::prepared::{lock, put, Reply, Shared};
use super::setting::{self, Seen};

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
    /// The header in flight ([`State::Between`]): its first `header_len` bytes.
    header: [u8; 5],
    header_len: usize,
    state: State,
    /// The client's Query and Parse texts it collects are also scanned for what pins
    /// ([`super::pin`]), in the same look as for what makes the proxy forget.
    pub judge_pins: bool,
    /// The first reason found that way.
    pub pinned: Option<PinReason>,
}

impl Rewrite {
    pub fn new(shared: Shared, client: bool) -> Self {
        Self {
            shared,
            client,
            header: [0; 5],
            header_len: 0,
            state: State::Between,
            judge_pins: false,
            pinned: None,
        }
    }

    /// The server's side, when all of `input` goes on unchanged: whole messages of kinds
    /// the rewrite passes (none of ParseComplete, CloseComplete, ErrorResponse), with no
    /// header split across reads. Then they are followed (each ReadyForQuery noted, as
    /// [`Rewrite::feed`] would) and `true` says `input` is what goes on; on `false`
    /// nothing was done and `input` goes to [`Rewrite::feed`].
    pub fn skim(&mut self, input: &[u8]) -> bool {
        if self.client || self.header_len > 0 {
            return false;
        }
        let mut at = match self.state {
            State::Between => 0,
            State::Pass(left) => left,
            State::Collect { .. } => return false,
        };
        let mut readies = 0;
        while at < input.len() {
            let Some(h) = input.get(at..at + 5) else {
                return false; // a header split across reads
            };
            let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
            if matches!(h[0], b'1' | b'3' | b'E') || len < 4 {
                return false;
            }
            readies += usize::from(h[0] == b'Z');
            at = at.saturating_add(1 + len);
        }
        if readies > 0 {
            let mut p = lock(&self.shared);
            (0..readies).for_each(|_| p.ready());
        }
        self.state = match at - input.len() {
            0 => State::Between,
            left => State::Pass(left),
        };
        true
    }

    /// Follows `input`, appending what goes on to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            match &mut self.state {
                State::Between => {
                    let take = (5 - self.header_len).min(input.len());
                    self.header[self.header_len..self.header_len + take]
                        .copy_from_slice(&input[..take]);
                    self.header_len += take;
                    input = &input[take..];
                    if self.header_len == 5 {
                        self.header_len = 0;
                        self.start(out);
                        input = self.in_place(input, out);
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
                    if body.capacity() == 0 {
                        body.reserve_exact((*len).min(NAMES_LIMIT)); // at its first part
                    }
                    let take = (*len - body.len()).min(input.len());
                    body.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    self.collected(out);
                }
            }
        }
    }

    /// A message to collect whose body is all in `input` is taken from there, not collected
    /// (the same as collecting all of it); returns what follows.
    fn in_place<'i>(&mut self, input: &'i [u8], out: &mut Vec<u8>) -> &'i [u8] {
        match &self.state {
            State::Collect { tag, len, body, .. } if body.is_empty() && input.len() >= *len => {
                let (tag, len) = (*tag, *len);
                self.state = State::Between;
                let (body, rest) = input.split_at(len);
                self.message(tag, len, body, out);
                rest
            }
            _ => input,
        }
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        let h = self.header;
        let (tag, len) = (h[0], u32::from_be_bytes([h[1], h[2], h[3], h[4]]));
        let len = len.saturating_sub(4) as usize;
        let collect = self.client && matches!(tag, b'P' | b'B' | b'D' | b'C') && len > 0;
        let query = self.client && tag == b'Q' && len <= SCAN_LIMIT;
        let error = !self.client && tag == b'E' && len <= NAMES_LIMIT;
        if (collect && len <= TEXT_LIMIT) || query || (error && lock(&self.shared).renaming()) {
            // A Parse's text is scanned too ([`super::forget`]) up to the Query's limit.
            let whole =
                matches!(tag, b'D' | b'C' | b'Q' | b'E') || (tag == b'P' && len <= SCAN_LIMIT);
            let body = Vec::new(); // reserved at its first part, if it is collected
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
                p.period.saw(Seen::Parse);
                p.parse_passed();
            }
            (true, b'C') => p.close(None),
            (true, b'E') => p.period.saw(Seen::Execute),
            (true, b'B') => p.period.saw(Seen::Other), // too long to see its statement
            (true, b'Q' | b'S' | b'F') => {
                match tag {
                    b'Q' => p.period.saw(Seen::Query), // too long to scan
                    b'F' => p.period.saw(Seen::Other),
                    _ => {}
                }
                p.synced();
            }
            (false, b'E') => p.period.failed = true,

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
            p.period.failed |= tag == b'E';
            return put(out, tag, &[&p.renamed(body)]);
        }
        let (name, after) = cstr(body);
        match tag {
            b'P' => p.period.saw(Seen::Parse),
            b'B' if after.first() == Some(&0) => p.period.saw(Seen::BindUnnamed),
            b'B' => p.period.saw(Seen::Other),
            _ => {}
        }
        let pins = self.judge_pins && self.pinned.is_none();
        if tag == b'P' && len <= SCAN_LIMIT {
            let (mut reason, forget) = judge(after, pins);
            p.forget(forget); // before its own name is remembered
            if reason == Some(PinReason::Set) && name.is_empty() {
                // An unnamed statement's SET (pgjdbc's after connecting) may be tracked; a
                // named one may run again later, unseen.
                if let Some(s) = setting::of_query(after) {
                    p.period.settings.push(s);
                    reason = None;
                }
            }
            self.pinned = self.pinned.or(reason);
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
                p.period.saw(Seen::Query);
                let (mut reason, forget) = judge(body, pins);
                p.forget(forget);
                if reason == Some(PinReason::Set) {
                    if let Some(s) = setting::of_query(body) {
                        p.period.settings.push(s); // tracked, not pinned
                        reason = None;
                    }
                }
                self.pinned = self.pinned.or(reason);
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
