//! `--connect-to HOST1:PORT1:HOST2:PORT2` (curl's convention): a connection the proxy would
//! open to HOST1:PORT1 goes to HOST2:PORT2 instead, while the IAM token is still signed for,
//! and the certificate still verified against, HOST1:PORT1. For SSH tunnels and bastion port
//! forwards (signing for "localhost" is a known trap) and for tests that stand in for DNS.
//!
//! As in curl, an empty HOST1 or PORT1 matches any host or port, and an empty HOST2 or PORT2
//! keeps the original one. An IPv6 address is written in brackets (`[::1]`). The first rule
//! that matches wins.

use std::fmt;
use std::str::FromStr;

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectTo {
    /// The host name to match (`None`: any), lower-cased.
    pub from_host: Option<String>,
    /// The port to match (`None`: any).
    pub from_port: Option<u16>,
    /// Where to connect instead (`None`: the original host).
    pub to_host: Option<String>,
    /// Which port (`None`: the original port).
    pub to_port: Option<u16>,
}

/// A rule that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid --connect-to {text:?}: {reason} (expected HOST1:PORT1:HOST2:PORT2)")]
pub struct ConnectToError {
    /// The rule as written.
    pub text: String,
    /// What is wrong.
    pub reason: &'static str,
}

/// Splits `text` at colons outside brackets.
fn fields(text: &str) -> Option<Vec<&str>> {
    let mut out = Vec::new();
    let (mut start, mut depth) = (0, 0u8);
    for (i, c) in text.char_indices() {
        match c {
            '[' if depth == 0 => depth = 1,
            ']' if depth == 1 => depth = 0,
            '[' | ']' => return None,
            ':' if depth == 0 => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    (depth == 0).then(|| {
        out.push(&text[start..]);
        out
    })
}

fn host(field: &str) -> Option<String> {
    let bare = field
        .strip_prefix('[')
        .and_then(|f| f.strip_suffix(']'))
        .unwrap_or(field);
    (!bare.is_empty()).then(|| bare.to_ascii_lowercase())
}

fn port(field: &str) -> Result<Option<u16>, &'static str> {
    if field.is_empty() {
        return Ok(None);
    }
    match field.parse::<u16>() {
        Ok(0) | Err(_) => Err("a port must be a number from 1 to 65535"),
        Ok(p) => Ok(Some(p)),
    }
}

impl FromStr for ConnectTo {
    type Err = ConnectToError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = |reason| ConnectToError {
            text: text.to_owned(),
            reason,
        };
        let parts = fields(text).ok_or_else(|| fail("unbalanced brackets"))?;
        let [h1, p1, h2, p2] = parts[..] else {
            return Err(fail("it needs exactly four fields separated by ':'"));
        };
        if [h1, h2].iter().any(|h| h.chars().any(char::is_whitespace)) {
            return Err(fail("a host name cannot contain spaces"));
        }
        Ok(Self {
            from_host: host(h1),
            from_port: port(p1).map_err(fail)?,
            to_host: host(h2),
            to_port: port(p2).map_err(fail)?,
        })
    }
}

impl fmt::Display for ConnectTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = |h: &Option<String>| match h {
            Some(h) if h.contains(':') => format!("[{h}]"),
            Some(h) => h.clone(),
            None => String::new(),
        };
        let p = |p: Option<u16>| p.map(|p| p.to_string()).unwrap_or_default();
        write!(
            f,
            "{}:{}:{}:{}",
            h(&self.from_host),
            p(self.from_port),
            h(&self.to_host),
            p(self.to_port)
        )
    }
}

impl ConnectTo {
    fn matches(&self, host: &str, port: u16) -> bool {
        self.from_host
            .as_deref()
            .is_none_or(|h| h.eq_ignore_ascii_case(host))
            && self.from_port.is_none_or(|p| p == port)
    }
}

/// Where a connection to `host:port` really goes: the first matching rule's destination, or
/// `host:port` itself.
pub fn route(rules: &[ConnectTo], host: &str, port: u16) -> (String, u16) {
    match rules.iter().find(|r| r.matches(host, port)) {
        Some(r) => (
            r.to_host.clone().unwrap_or_else(|| host.to_owned()),
            r.to_port.unwrap_or(port),
        ),
        None => (host.to_owned(), port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> ConnectTo {
        s.parse().expect("parses")
    }

    #[test]
    fn routes_a_matching_host_and_port_only() {
        let rules = [rule("db.example.com:5432:127.0.0.1:15432")];
        assert_eq!(
            route(&rules, "DB.example.com", 5432),
            ("127.0.0.1".into(), 15432)
        );
        assert_eq!(route(&rules, "db.example.com", 5433).1, 5433);
        assert_eq!(route(&rules, "other", 5432).0, "other");
    }

    #[test]
    fn empty_fields_are_wildcards_or_keep_the_original() {
        let rules = [rule("::localhost:"), rule("a:1::2")];
        assert_eq!(route(&rules, "x", 7), ("localhost".into(), 7));
        let rules = [rule("a:1::2")];
        assert_eq!(route(&rules, "a", 1), ("a".into(), 2));
    }

    #[test]
    fn ipv6_in_brackets_and_display_round_trips() {
        let r = rule("h:5432:[::1]:6000");
        assert_eq!(r.to_host.as_deref(), Some("::1"));
        assert_eq!(r.to_string(), "h:5432:[::1]:6000");
        assert_eq!(rule(&r.to_string()), r);
    }

    #[test]
    fn refuses_what_does_not_parse() {
        for bad in [
            "a:1:b",
            "a:1:b:2:3",
            "a:x:b:2",
            "a:1:b:0",
            "a:1:[::1:2",
            "a b:1:c:2",
        ] {
            let e = bad.parse::<ConnectTo>().expect_err(bad);
            assert!(e.to_string().contains(bad), "{e}");
        }
    }
}
