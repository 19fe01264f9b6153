//! Transaction mode: what a client sends that cannot be shared between clients, found by
//! light keyword scanning of the SQL text of Query (`Q`) and Parse (`P`) messages, so the
//! client can be pinned to its server connection for the rest of its session.
//!
//! The rule, per statement (the text is split at `;` outside quotes, comments skipped at
//! the start of each statement, keywords compared case-insensitively):
//! - `SET` (not `SET LOCAL`, not `SET TRANSACTION`) -> [`PinReason::Set`]
//! - `LISTEN` -> [`PinReason::Listen`]
//! - `DECLARE ... WITH HOLD` -> [`PinReason::CursorWithHold`]
//! - `CREATE [GLOBAL|LOCAL] TEMP|TEMPORARY ...` -> [`PinReason::TempTable`]
//! - `PREPARE`, `DEALLOCATE` (not `DEALLOCATE ALL`) -> [`PinReason::Prepare`]
//! - `pg_advisory_lock` / `pg_try_advisory_lock` (and their `_shared` forms) anywhere in the
//!   text -> [`PinReason::AdvisoryLock`] (the `_xact_` forms end with the transaction)
//! - `set_config` anywhere in the text (whatever its third argument) -> [`PinReason::Set`]
//!
//! `RESET`, `DEALLOCATE ALL` and `DISCARD` return toward the login state: they do not pin
//! but make the proxy forget what it assumed about the connection ([`super::forget`]).
//!
//! A protocol-level named statement does not pin ([`super::prepared`]), except a Parse
//! the proxy passes on unchanged (over its limits) -> [`PinReason::NamedStatement`].
//!
//! Limits (not pinned; document them): session state changed by other means, e.g. a
//! function or `DO` block that runs `SET`, `LISTEN` or `CREATE TEMP` inside,
//! `SELECT ... INTO TEMP`; and only the first [`SCAN_LIMIT`] bytes of a message are scanned.

use super::forget::{forget_of, Forget};

/// Bytes of one message's text that are scanned.
pub const SCAN_LIMIT: usize = 64 * 1024;

/// Why a client was pinned to its server connection (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PinReason {
    /// Session-level `SET` (or `set_config`).
    Set,
    /// `LISTEN`.
    Listen,
    /// A session advisory lock.
    AdvisoryLock,
    /// `DECLARE ... WITH HOLD`.
    CursorWithHold,
    /// `CREATE TEMP ...`.
    TempTable,
    /// `PREPARE` / `DEALLOCATE` in SQL.
    Prepare,
    /// A protocol-level named prepared statement passed on unchanged (over the limits).
    NamedStatement,
}

impl PinReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Set => "set",
            Self::Listen => "listen",
            Self::AdvisoryLock => "advisory_lock",
            Self::CursorWithHold => "cursor_with_hold",
            Self::TempTable => "temp_table",
            Self::Prepare => "prepare",
            Self::NamedStatement => "named_statement",
        }
    }
}

/// Follows the client's messages by their headers and collects the bodies of Query and
/// Parse (up to [`SCAN_LIMIT`]) to scan them; remembers the first reason found. In the
/// transaction-mode relay it scans only the bodies too long for the rewrite, which judges
/// the others ([`PinScan::long_only`]).
#[derive(Debug, Default)]
pub struct PinScan {
    header: [u8; 5],
    header_len: u8,
    body_left: usize,
    /// The body of the Query / Parse in flight, if one is.
    text: Option<Vec<u8>>,
    /// The first reason found.
    pub pinned: Option<PinReason>,
    /// Only bodies over [`SCAN_LIMIT`] are scanned (their first part): the transaction-mode
    /// relay's [`super::rewrite::Rewrite`] judges the others as it passes them.
    pub only_long: bool,
}

impl PinScan {
    /// A scan of the texts over [`SCAN_LIMIT`] only ([`PinScan::only_long`]).
    pub fn long_only() -> Self {
        Self {
            only_long: true,
            ..Self::default()
        }
    }

    /// Follows `bytes`, the next bytes the client sent.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.header_len < 5 {
                let take = (5 - usize::from(self.header_len)).min(bytes.len());
                let at = usize::from(self.header_len);
                self.header[at..at + take].copy_from_slice(&bytes[..take]);
                self.header_len += take as u8;
                bytes = &bytes[take..];
                if self.header_len == 5 {
                    self.start();
                    if self.text.is_some() && bytes.len() >= self.body_left {
                        // The whole body is here: scanned in place, not collected.
                        let (body, rest) = bytes.split_at(self.body_left);
                        self.judge(&body[..body.len().min(SCAN_LIMIT)]);
                        self.text = None;
                        self.body_left = 0;
                        self.header_len = 0;
                        bytes = rest;
                    }
                }
                continue;
            }
            let take = self.body_left.min(bytes.len());
            if let Some(text) = &mut self.text {
                if text.capacity() == 0 {
                    text.reserve_exact(self.body_left.min(SCAN_LIMIT)); // at its first part
                }
                let room = SCAN_LIMIT.saturating_sub(text.len()).min(take);
                text.extend_from_slice(&bytes[..room]);
            }
            self.body_left -= take;
            bytes = &bytes[take..];
            if self.body_left == 0 {
                self.end();
            }
        }
    }

    fn start(&mut self) {
        let h = self.header;
        let length = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
        self.body_left = length.saturating_sub(4) as usize;
        let scanned = self.pinned.is_none()
            && matches!(h[0], b'Q' | b'P')
            && !(self.only_long && self.body_left <= SCAN_LIMIT);
        self.text = scanned.then(Vec::new);
        if self.body_left == 0 {
            self.end();
        }
    }

    fn end(&mut self) {
        self.header_len = 0;
        if let Some(text) = self.text.take() {
            self.judge(&text);
        }
    }

    /// Scans the body (or its first [`SCAN_LIMIT`] bytes) of the Query or Parse in flight.
    fn judge(&mut self, text: &[u8]) {
        self.pinned = match self.header[0] {
            b'P' => {
                let name_end = text.iter().position(|b| *b == 0).unwrap_or(text.len());
                scan_sql(text.get(name_end + 1..).unwrap_or_default())
            }
            _ => scan_sql(text),
        };
    }
}

/// Words one of which any SQL that pins, or makes the proxy forget ([`super::forget`]),
/// contains (`set` is in `reset` and `set_config`, `advisory_lock` in every advisory lock
/// function that pins).
const KEYWORDS: [&[u8]; 8] = [
    b"set",
    b"listen",
    b"prepare",
    b"deallocate",
    b"declare",
    b"create",
    b"advisory_lock",
    b"discard",
];

/// ASCII-lowercases a byte (`| 0x20` lowercases ASCII letters and maps no other byte onto a
/// lowercase letter).
const fn lower(b: u8) -> u8 {
    b | 0x20
}

/// The pairs of bytes a keyword of [`KEYWORDS`] starts with or has second, lowercased: bit
/// `first << 8 | second` (8 KiB, made at compile time). Every keyword (three bytes or
/// more) has one of its two at an even offset, wherever it starts.
const PAIRS: [u64; 1024] = {
    let mut bits = [0u64; 1024];
    let mut i = 0;
    while i < KEYWORDS.len() {
        let w = KEYWORDS[i];
        let first = (w[0] as usize) << 8 | w[1] as usize;
        let second = (w[1] as usize) << 8 | w[2] as usize;
        bits[first >> 6] |= 1 << (first & 63);
        bits[second >> 6] |= 1 << (second & 63);
        i += 1;
    }
    bits
};

/// Whether `sql` contains one of [`KEYWORDS`], ASCII case ignored: most statements contain
/// none, and then need no closer look (one pass, no copy). One table look-up per two bytes
/// (the pair at each even offset); where it hits, a keyword is compared starting there and
/// one byte before.
pub(super) fn may_matter(sql: &[u8]) -> bool {
    sql.chunks_exact(2).enumerate().any(|(half, pair)| {
        let bits = (lower(pair[0]) as usize) << 8 | lower(pair[1]) as usize;
        PAIRS[bits >> 6] >> (bits & 63) & 1 != 0 && {
            let at = 2 * half;
            keyword_at(&sql[at..]) || (at > 0 && keyword_at(&sql[at - 1..]))
        }
    })
}

/// Whether `sql` (at least two bytes) starts with one of [`KEYWORDS`], ASCII case ignored.
#[cold]
fn keyword_at(sql: &[u8]) -> bool {
    let (a, b) = (lower(sql[0]), lower(sql[1]));
    KEYWORDS.iter().any(|word| {
        word[0] == a
            && word[1] == b
            && sql
                .get(2..word.len())
                .is_some_and(|s| s.eq_ignore_ascii_case(&word[2..]))
    })
}

/// The first reason in `sql` (bytes up to the first NUL) to pin its client.
pub fn scan_sql(sql: &[u8]) -> Option<PinReason> {
    let sql = sql.split(|b| *b == 0).next().unwrap_or_default();
    if !may_matter(sql) {
        return None;
    }
    pin_reason(&String::from_utf8_lossy(sql).to_ascii_lowercase())
}

/// [`scan_sql`] and [`super::forget::forgets`] of the same `sql` with one look: what pins
/// its client (when `pins`), and what it makes the proxy forget.
pub(super) fn judge(sql: &[u8], pins: bool) -> (Option<PinReason>, Forget) {
    let sql = sql.split(|b| *b == 0).next().unwrap_or_default();
    if !may_matter(sql) {
        return (None, Forget::default());
    }
    let lower = String::from_utf8_lossy(sql).to_ascii_lowercase();
    let reason = if pins { pin_reason(&lower) } else { None };
    (reason, forget_of(&lower))
}

/// The first reason in `lower` (lowercased SQL) to pin its client.
fn pin_reason(lower: &str) -> Option<PinReason> {
    if lower.contains("pg_advisory_lock") || lower.contains("pg_try_advisory_lock") {
        return Some(PinReason::AdvisoryLock);
    }
    if lower.contains("set_config") {
        return Some(PinReason::Set);
    }
    statements(lower).find_map(classify)
}

/// The statement's reason, from its leading words.
fn classify(statement: &str) -> Option<PinReason> {
    let mut words = statement
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty());
    let first = words.next()?;
    let second = words.next().unwrap_or_default();
    match first {
        "set" if !matches!(second, "local" | "transaction") => Some(PinReason::Set),
        "listen" => Some(PinReason::Listen),
        "prepare" => Some(PinReason::Prepare),
        "deallocate" => {
            let third = words.next().unwrap_or_default();
            let all = second == "all" || (second == "prepare" && third == "all");
            (!all).then_some(PinReason::Prepare)
        }
        "declare" if statement.contains("with hold") => Some(PinReason::CursorWithHold),
        "create" => {
            let third = words.next().unwrap_or_default();
            let temp = |w: &str| matches!(w, "temp" | "temporary");
            let scoped = matches!(second, "global" | "local") && temp(third);
            (temp(second) || scoped).then_some(PinReason::TempTable)
        }
        _ => None,
    }
}

/// The statements of `sql` (split at `;` outside quotes and comments), each with its
/// leading comments and whitespace removed.
pub(super) fn statements(sql: &str) -> impl Iterator<Item = &str> {
    let bytes = sql.as_bytes();
    let mut parts = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'\'' | b'"' => i = skip_past(bytes, i + 1, &bytes[i..i + 1]),
            b'-' if bytes.get(i + 1) == Some(&b'-') => i = skip_past(bytes, i, b"\n"),
            b'/' if bytes.get(i + 1) == Some(&b'*') => i = skip_past(bytes, i + 2, b"*/"),
            b'$' if bytes.get(i + 1) == Some(&b'$') => i = skip_past(bytes, i + 2, b"$$"),
            b';' => {
                parts.push(&sql[start..i]);
                start = i + 1;
                i += 1;
            }
            _ => i += 1,
        }
    }
    parts.push(&sql[start..]);
    parts.into_iter().map(strip_leading)
}

/// The index after the next `end` at or after `from` (the end of `bytes` if none).
fn skip_past(bytes: &[u8], from: usize, end: &[u8]) -> usize {
    bytes
        .get(from..)
        .and_then(|rest| rest.windows(end.len()).position(|w| w == end))
        .map_or(bytes.len(), |at| from + at + end.len())
}

/// `s` without leading whitespace, parentheses and comments.
fn strip_leading(mut s: &str) -> &str {
    loop {
        s = s.trim_start_matches(|c: char| c.is_whitespace() || c == '(');
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(rest) = s.strip_prefix("/*") {
            s = rest.split_once("*/").map_or("", |(_, after)| after);
        } else {
            return s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(sql: &str) -> Option<PinReason> {
        scan_sql(sql.as_bytes())
    }

    #[test]
    fn the_rule_per_statement() {
        use PinReason::*;
        for (sql, want) in [
            ("SET search_path = a", Some(Set)),
            ("set session timezone to 'UTC'", Some(Set)),
            ("SET LOCAL work_mem = '1MB'", None),
            ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", None),
            ("RESET ALL", None),
            ("reset search_path", None),
            (
                "SELECT pg_catalog.set_config('search_path', ' ', false)",
                Some(Set),
            ),
            ("select 1; /* c */ listen chan", Some(Listen)),
            ("SELECT pg_advisory_lock(1)", Some(AdvisoryLock)),
            ("SELECT pg_try_advisory_lock_shared(1)", Some(AdvisoryLock)),
            ("SELECT pg_advisory_xact_lock(1)", None),
            (
                "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
                Some(CursorWithHold),
            ),
            ("DECLARE c CURSOR FOR SELECT 1", None),
            ("create temp table t (a int)", Some(TempTable)),
            ("CREATE GLOBAL TEMPORARY TABLE t (a int)", Some(TempTable)),
            ("CREATE TABLE temp (a int)", None),
            ("-- x\nPREPARE p AS SELECT 1", Some(Prepare)),
            ("DEALLOCATE p", Some(Prepare)),
            ("DEALLOCATE PREPARE p", Some(Prepare)),
            ("DEALLOCATE ALL", None),
            ("deallocate prepare all", None),
            ("DISCARD ALL", None),
            ("SELECT 'set x; listen y'", None),
            ("SELECT 1 -- ; set x = 1", None),
            ("BEGIN; UPDATE t SET a = 1; COMMIT", None),
        ] {
            assert_eq!(pin(sql), want, "{sql}");
        }
    }

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn only_sql_with_a_keyword_is_looked_at_closely() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 7;",
            "",
            "COMMIT",
        ] {
            assert!(!may_matter(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "sEt x = 1",
            "RESET ALL",
            "x pg_advisory_lock(",
            "UNLISTEN *",
            "Discard",
        ] {
            assert!(may_matter(sql.as_bytes()), "{sql}");
        }
        // A keyword as the last bytes, and a lowercase byte lookalike that is no letter.
        assert!(may_matter(b"1;listen"));
        assert!(!may_matter(b"\xd3\xc5\xd4")); // "SET" with the high bit set
        assert!(!may_matter(b"S\xc5T"));
        // Every keyword, in any case, anywhere; and none cut short.
        for word in KEYWORDS {
            let word = std::str::from_utf8(word).expect("ascii");
            for sql in [
                word.to_string(),
                format!("x{}y", word.to_uppercase()),
                format!("{word} "),
            ] {
                assert!(may_matter(sql.as_bytes()), "{sql}");
            }
            assert!(!may_matter(&word.as_bytes()[..word.len() - 1]), "{word}");
        }
    }

    #[test]
    fn the_pre_check_finds_what_a_plain_search_finds() {
        let naive = |sql: &[u8]| {
            let lower = sql.to_ascii_lowercase();
            KEYWORDS
                .iter()
                .any(|w| lower.windows(w.len()).any(|at| at == *w))
        };
        // Keywords and near misses at every offset, among bytes that look like them.
        let parts: [&[u8]; 9] = [
            b"SeT", b"se", b"x", b" ", b"LISTEN", b"dis", b"card", b"_", b"\xd3",
        ];
        let mut seed = 1u32;
        for _ in 0..20_000 {
            let mut sql = Vec::new();
            for _ in 0..(seed % 7) {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                sql.extend_from_slice(parts[(seed >> 16) as usize % parts.len()]);
            }
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            assert_eq!(
                may_matter(&sql),
                naive(&sql),
                "{:?}",
                String::from_utf8_lossy(&sql)
            );
        }
        for word in KEYWORDS {
            for pad in 0..4 {
                let mut sql = b"y".repeat(pad);
                sql.extend_from_slice(word);
                assert!(may_matter(&sql), "{pad} {word:?}");
            }
        }
    }

    #[test]
    fn messages_are_followed_across_chunks() {
        let mut stream = message(b'P', b"\0SELECT 1\0\0\0");
        stream.extend(message(b'B', b"\0\0\0\0\0\0\0\0"));
        stream.extend(message(b'S', b""));
        stream.extend(message(b'Q', b"SET x = 1\0"));
        for split in 0..stream.len() {
            let mut scan = PinScan::default();
            scan.feed(&stream[..split]);
            assert_eq!(scan.pinned, None, "{split}");
            scan.feed(&stream[split..]);
            assert_eq!(scan.pinned, Some(PinReason::Set), "{split}");
        }
        let mut scan = PinScan::default();
        scan.feed(&message(b'P', b"s1\0SELECT 1\0\0\0"));
        assert_eq!(
            scan.pinned, None,
            "named statements are rewritten, not pinned"
        );
    }
}
