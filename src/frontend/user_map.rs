//! Which database users a client identity may become, from a map file in the spirit of
//! PostgreSQL's `pg_ident.conf`: one rule a line, `client-identity  db-user`. The identity
//! is an OS user name (or a uid for a user without a name), `*` for every identity, or
//! `/regex` (matched as `pg_ident` matches it: anchor it with `^...$` for a whole name).
//! The database user is a name or `*` (any). `#` starts a comment.

use std::path::Path;

/// A rule's identity side.
#[derive(Debug)]
enum Who {
    Name(String),
    Any,
    Pattern(regex_lite::Regex),
}

/// One rule.
#[derive(Debug)]
struct Rule {
    who: Who,
    /// `None` = any database user.
    db_user: Option<String>,
}

/// A parsed map.
#[derive(Debug)]
pub struct UserMap {
    rules: Vec<Rule>,
}

/// A map file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// Unreadable.
    #[error("cannot read user map {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A bad line.
    #[error("user map {path} line {line}: {why}")]
    Line {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: String,
    },
}

impl UserMap {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, MapError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| MapError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|(line, why)| MapError::Line {
            path: shown,
            line,
            why,
        })
    }

    /// Parses map text; an error carries the line number and what is wrong.
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [who, db_user] = fields[..] else {
                return Err((i + 1, "expected two fields: client-identity db-user".into()));
            };
            let who = match who {
                "*" => Who::Any,
                _ if who.starts_with('/') => regex_lite::Regex::new(&who[1..])
                    .map(Who::Pattern)
                    .map_err(|e| (i + 1, format!("invalid regular expression: {e}")))?,
                _ => Who::Name(who.to_owned()),
            };
            let db_user = (db_user != "*").then(|| db_user.to_owned());
            rules.push(Rule { who, db_user });
        }
        Ok(Self { rules })
    }

    /// Whether `identity` may log in as `db_user`.
    pub fn allows(&self, identity: &str, db_user: &str) -> bool {
        self.rules.iter().any(|r| {
            let who = match &r.who {
                Who::Any => true,
                Who::Name(n) => n == identity,
                Who::Pattern(p) => p.is_match(identity),
            };
            who && r.db_user.as_deref().is_none_or(|u| u == db_user)
        })
    }

    /// The database users `identity` may use, for a refusal's hint (`*` for any).
    pub fn allowed_for(&self, identity: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in &self.rules {
            let who = match &r.who {
                Who::Any => true,
                Who::Name(n) => n == identity,
                Who::Pattern(p) => p.is_match(identity),
            };
            let name = r.db_user.clone().unwrap_or_else(|| "*".into());
            if who && !out.contains(&name) {
                out.push(name);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_wildcards_and_patterns() {
        let map = UserMap::parse(
            "# comment\nalice  iam_dbuser\n\n/^app-.*$ app_rw   # apps\n*  readonly\nops *\n",
        )
        .expect("parses");
        assert!(map.allows("alice", "iam_dbuser"));
        assert!(!map.allows("alice", "admin"));
        assert!(map.allows("app-orders", "app_rw"));
        assert!(!map.allows("xapp-orders", "app_rw"));
        assert!(map.allows("bob", "readonly"));
        assert!(map.allows("ops", "anything"));
        assert_eq!(map.allowed_for("alice"), ["iam_dbuser", "readonly"]);
    }

    #[test]
    fn bad_lines_name_their_number() {
        let err = UserMap::parse("alice iam_dbuser\nbob\n").expect_err("one field");
        assert_eq!(err.0, 2);
        let err = UserMap::parse("/(unclosed x\n").expect_err("bad regex");
        assert!(err.1.contains("regular expression"), "{}", err.1);
    }
}
