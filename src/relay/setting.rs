//! Transaction mode: session settings a client may change without being pinned. A Query
//! (or an unnamed Parse, bound and executed once) whose whole text is one
//! `SET [SESSION] name {TO | =} value` of a [`TRACKED`] name (a
//! setting that names no database object, as drivers set after connecting: pgjdbc's
//! `SET extra_float_digits = 3` and `SET application_name = '...'`)
//! is a [`Setting`]: the client's transactions later run on connections given its value
//! first (the proxy's `set_config`), as its `application_name` is. It is taken only where
//! it cannot have been rolled back, half applied or not run: every statement of the
//! transaction it is in is such a setting, and the server reported no error (one
//! failed alone changed nothing; otherwise the client is pinned, reason `set`). `value` is
//! one number, word or quoted string (a list or any other form pins, as any other `SET`).
//! `RESET name`, `RESET ALL` and `DISCARD ALL` set the client's value back to its login's
//! ([`super::forget::Forget::settings`]).

use super::pin::statements;

/// The settings whose `SET` is tracked rather than pinned: none names an object of the
/// database, so a value set once is valid on every connection of the pool.
/// (`DateStyle` is not: `SET datestyle TO ymd` keeps the style an earlier SET gave, so its
/// value is not the last SET's.)
/// `standard_conforming_strings` and `client_encoding` only with the values that keep the
/// proxy's own reading of SQL text right ([`allowed`]).
pub const TRACKED: [&str; 11] = [
    "application_name",
    "extra_float_digits",
    "standard_conforming_strings",
    "client_encoding",
    "intervalstyle",
    "timezone",
    "client_min_messages",
    "bytea_output",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
];

/// The [`TRACKED`] names as a bit mask (`1 << index`).
pub const ALL: u16 = (1 << TRACKED.len()) - 1;

/// The index of `name` (lowercase) in [`TRACKED`].
pub fn index(name: &str) -> Option<usize> {
    TRACKED.iter().position(|t| *t == name)
}

/// A client's `SET` of a tracked name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// A [`TRACKED`] name.
    pub name: &'static str,
    /// The value as `set_config` takes it; `None`: `DEFAULT` (the login's value).
    pub value: Option<String>,
}

/// What a transaction's client messages were, for [`Setting`]s: reset when a connection
/// is lent.
#[derive(Debug, Default)]
pub struct Period {
    /// The settings its Queries and unnamed Parses made, in order.
    pub settings: Vec<Setting>,
    /// Its Queries (a setting's or not).
    pub queries: u32,
    /// Its Parse messages (a setting's or not).
    pub parses: u32,
    /// Its Bind messages of the unnamed statement.
    pub binds: u32,
    /// Its Execute messages.
    pub executes: u32,
    /// Its FunctionCall messages, and Bind messages of a named statement (or too long to
    /// look at).
    pub others: u32,
    /// The server sent an ErrorResponse.
    pub failed: bool,
}

/// A client message's kind, for [`Period::saw`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A Query.
    Query,
    /// A Parse.
    Parse,
    /// A Bind of the unnamed statement (what an unnamed Parse's SET runs through).
    BindUnnamed,
    /// An Execute.
    Execute,
    /// A FunctionCall, or a Bind of a named statement (or too long to see which).
    Other,
}

impl Period {
    /// Counts a client message (saturating: a pinned session's relay counts on, unread).
    pub fn saw(&mut self, seen: Seen) {
        let count = match seen {
            Seen::Query => &mut self.queries,
            Seen::Parse => &mut self.parses,
            Seen::BindUnnamed => &mut self.binds,
            Seen::Execute => &mut self.executes,
            Seen::Other => &mut self.others,
        };
        *count = count.saturating_add(1);
    }
}

/// What a finished transaction's [`Period`] means for its settings.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No setting was made, or one failed alone (nothing changed).
    Nothing,
    /// These took effect on the connection, in order.
    Took(Vec<Setting>),
    /// A setting may or may not have taken effect: the client stays on the connection.
    Pin,
}

impl Period {
    /// The verdict on a transaction that ended with the connection idle.
    pub fn verdict(self) -> Verdict {
        if self.settings.is_empty() {
            return Verdict::Nothing;
        }
        // Every statement a setting, each Parse bound and run once (pgjdbc's form: Parse,
        // Bind, Execute, Sync), nothing else.
        let statements = (self.queries + self.parses) as usize;
        let run_once = self.binds == self.parses && self.executes == self.parses;
        let alone = self.others == 0 && statements == self.settings.len() && run_once;
        match (alone, self.failed) {
            (true, false) => Verdict::Took(self.settings),
            (true, true) if statements == 1 => Verdict::Nothing,
            _ => Verdict::Pin,
        }
    }
}

/// The setting `sql` (a whole Query text, bytes up to its NUL) makes, if it is one tracked
/// `SET` and nothing else.
pub fn of_query(sql: &[u8]) -> Option<Setting> {
    let sql = std::str::from_utf8(sql.split(|b| *b == 0).next()?).ok()?;
    let mut parts = statements(sql).filter(|s| !s.trim().is_empty());
    let statement = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    parse(statement)
}

/// `SET [SESSION] name {TO | =} value` with nothing after but whitespace.
fn parse(statement: &str) -> Option<Setting> {
    let mut rest = word(statement, "set")?;
    if let Some(after) = word(rest, "session") {
        rest = after;
    }
    let (name, after) = identifier(rest)?;
    let name = TRACKED[index(&name)?];
    let after = after.trim_start();
    let after = match after.strip_prefix('=') {
        Some(a) => a,
        None => word(after, "to")?,
    };
    let (value, tail) = value(after.trim_start())?;
    let taken = tail.trim().is_empty() && value.as_deref().is_none_or(|v| allowed(name, v));
    taken.then_some(Setting { name, value })
}

/// Whether `value` of `name` may be tracked: the pin scan reads quotes as standard strings
/// and SQL as ASCII-compatible bytes, so only `standard_conforming_strings` on and a UTF-8
/// `client_encoding` (what Rails and libpq's `PQsetClientEncoding` send) are; any other
/// value pins, as before.
fn allowed(name: &str, value: &str) -> bool {
    match name {
        "standard_conforming_strings" => {
            matches!(value.to_ascii_lowercase().as_str(), "on" | "true")
        }
        "client_encoding" => {
            // The server's own folding of encoding names: case and punctuation ignored.
            let folded: String = value
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .map(|c| c.to_ascii_lowercase())
                .collect();
            matches!(folded.as_str(), "utf8" | "unicode")
        }
        _ => true,
    }
}

/// `s` after the keyword `kw` (ASCII case ignored) and the whitespace before it, if it
/// starts with it as a whole word.
fn word<'a>(s: &'a str, kw: &str) -> Option<&'a str> {
    let s = s.trim_start();
    let head = s.get(..kw.len())?;
    let rest = &s[kw.len()..];
    let whole = !rest.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
    (head.eq_ignore_ascii_case(kw) && whole).then_some(rest)
}

/// An unquoted identifier at the start of `s` (after whitespace), lowercased, and the rest.
fn identifier(s: &str) -> Option<(String, &str)> {
    let s = s.trim_start();
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    let first = s.chars().next()?;
    (end > 0 && (first.is_ascii_alphabetic() || first == '_'))
        .then(|| (s[..end].to_ascii_lowercase(), &s[end..]))
}

/// One value: a quoted string (`''` inside for a quote; not `E'...'`), a number (an
/// optional sign, digits, one point), or a word (lowercased, as the server folds it;
/// `DEFAULT` is `None`); and the rest of `s`.
fn value(s: &str) -> Option<(Option<String>, &str)> {
    if let Some(body) = s.strip_prefix('\'') {
        let mut out = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            if c != '\'' {
                out.push(c);
            } else if body[i + 1..].starts_with('\'') {
                out.push('\'');
                chars.next();
            } else {
                return Some((Some(out), &body[i + 1..]));
            }
        }
        return None; // unterminated
    }
    let number_end = s
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || c == '.' || (i == 0 && (c == '-' || c == '+'))))
        .map_or(s.len(), |(i, _)| i);
    let number = &s[..number_end];
    if number.chars().any(|c| c.is_ascii_digit()) && number.matches('.').count() <= 1 {
        let rest = &s[number_end..];
        if rest.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            return None; // `5s` unquoted is not one token the server takes here
        }
        return Some((Some(number.trim_start_matches('+').to_owned()), rest));
    }
    let (w, rest) = identifier(s)?;
    Some(((w != "default").then_some(w), rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &'static str, value: Option<&str>) -> Option<Setting> {
        Some(Setting {
            name,
            value: value.map(str::to_owned),
        })
    }

    #[test]
    fn what_a_tracked_set_is() {
        for (sql, want) in [
            (
                "SET extra_float_digits = 3",
                set("extra_float_digits", Some("3")),
            ),
            (
                "set extra_float_digits to 3;",
                set("extra_float_digits", Some("3")),
            ),
            (
                "SET SESSION extra_float_digits = -3",
                set("extra_float_digits", Some("-3")),
            ),
            (
                "SET application_name = 'It''s Mine'",
                set("application_name", Some("It's Mine")),
            ),
            (
                "/* c */ SET IntervalStyle TO ISO_8601",
                set("intervalstyle", Some("iso_8601")),
            ),
            ("SET DateStyle TO ISO", None),
            (
                "SET standard_conforming_strings = on",
                set("standard_conforming_strings", Some("on")),
            ),
            ("SET standard_conforming_strings = off", None),
            (
                "set client_encoding to 'UTF-8'",
                set("client_encoding", Some("UTF-8")),
            ),
            ("SET client_encoding = 'SJIS'", None),
            (
                "SET client_encoding TO DEFAULT",
                set("client_encoding", None),
            ),
            (
                "SET TimeZone = 'Europe/Paris'",
                set("timezone", Some("Europe/Paris")),
            ),
            (
                "SET statement_timeout = '5s'",
                set("statement_timeout", Some("5s")),
            ),
            (
                "SET statement_timeout = 1.5",
                set("statement_timeout", Some("1.5")),
            ),
            (
                "SET client_min_messages TO DEFAULT",
                set("client_min_messages", None),
            ),
            (
                "SET extra_float_digits = 3 ; ",
                set("extra_float_digits", Some("3")),
            ),
            // Not one tracked SET: these pin, as any other SET does.
            ("SET LOCAL extra_float_digits = 3", None),
            ("SET work_mem = '1MB'", None),
            ("SET search_path = a, b", None),
            ("SET client_min_messages = notice, warning", None),
            ("SET extra_float_digits = 3; SELECT 1", None),
            ("SET extra_float_digits = 3; SET datestyle = iso", None),
            ("SET statement_timeout = 5s", None),
            ("SET TIME ZONE 'UTC'", None),
            ("SET application_name = E'x'", None),
            ("SET application_name = 'open", None),
            ("SET \"extra_float_digits\" = 3", None),
            ("SET extra_float_digits", None),
            ("SET extra_float_digits = 1.2.3", None),
            ("SETextra_float_digits = 3", None),
            ("SELECT 1", None),
        ] {
            assert_eq!(of_query(sql.as_bytes()), want, "{sql}");
        }
    }

    #[test]
    fn a_setting_is_taken_only_where_it_cannot_have_been_undone() {
        let s = || set("extra_float_digits", Some("3")).expect("a setting");
        // (settings, queries, parses, binds, executes, others, failed)
        let period = |settings: Vec<Setting>, q, p, b, e, others, failed| Period {
            settings,
            queries: q,
            parses: p,
            binds: b,
            executes: e,
            others,
            failed,
        };
        assert_eq!(
            period(vec![], 3, 1, 1, 1, 2, true).verdict(),
            Verdict::Nothing
        );
        let took = Verdict::Took(vec![s()]);
        assert_eq!(period(vec![s()], 1, 0, 0, 0, 0, false).verdict(), took);
        assert_eq!(period(vec![s()], 0, 1, 1, 1, 0, false).verdict(), took);
        let two = Verdict::Took(vec![s(), s()]);
        assert_eq!(period(vec![s(), s()], 2, 0, 0, 0, 0, false).verdict(), two);
        assert_eq!(period(vec![s(), s()], 1, 1, 1, 1, 0, false).verdict(), two);
        // It failed alone: nothing changed.
        assert_eq!(
            period(vec![s()], 1, 0, 0, 0, 0, true).verdict(),
            Verdict::Nothing
        );
        assert_eq!(
            period(vec![s()], 0, 1, 1, 1, 0, true).verdict(),
            Verdict::Nothing
        );
        // With other statements (a BEGIN before it, a ROLLBACK after), an error somewhere,
        // a Parse not run (or run twice), a Bind of an earlier statement, a FunctionCall.
        for pinned in [
            period(vec![s()], 2, 0, 0, 0, 0, false),
            period(vec![s()], 1, 1, 1, 1, 0, false),
            period(vec![s(), s()], 2, 0, 0, 0, 0, true),
            period(vec![s()], 0, 1, 1, 0, 0, false),
            period(vec![s()], 0, 1, 0, 0, 0, false),
            period(vec![s()], 0, 1, 1, 2, 0, false),
            period(vec![s()], 1, 0, 1, 1, 0, false),
            period(vec![s()], 1, 0, 0, 0, 1, false),
        ] {
            let shown = format!("{pinned:?}");
            assert_eq!(pinned.verdict(), Verdict::Pin, "{shown}");
        }
    }
}
