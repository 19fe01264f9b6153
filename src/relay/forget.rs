//! Transaction mode: statements that return a session toward its login state, found in the
//! SQL text of a client's Query (`Q`) or Parse (`P`) as it passes, at its place in the
//! stream (a Parse's Execute follows it; a named statement of such a text run again later
//! is not noticed). On the
//! client's own backend they would drop its named statements or its settings; through the
//! proxy they reach a server connection that other clients' statements and the proxy's
//! `set_config` of `application_name` live on, so they do not pin (nothing of the client's
//! own is left on the connection for them to reset): the proxy forgets what it assumed.
//!
//! - `DEALLOCATE ALL` (`DEALLOCATE PREPARE ALL`) -> [`Forget::statements`]: the client's
//!   named statements are forgotten, and the connection is known to hold none of the proxy's
//!   (others' statements are prepared again there when used).
//! - `DISCARD ALL` -> [`Forget::statements`] and [`Forget::params`]: it also runs
//!   `RESET ALL` (and drops temporary tables, cursors, LISTENs, advisory locks: none of which
//!   an unpinned client can hold, since each pins).
//! - `RESET ...` (`RESET ALL` too) -> [`Forget::params`]: the connection's settings may be
//!   its login's again, so the client's `application_name` is set again at its next lend;
//!   and [`Forget::settings`]: the client's value of a tracked name reset (all of them for
//!   `RESET ALL` and `DISCARD ALL`) is its login's again ([`super::setting`]).
//! - `DISCARD PLANS`, `DISCARD SEQUENCES`, `DISCARD TEMP`: nothing to forget (cached plans
//!   are re-planned, prepared statements stay).
//!
//! A Query or Parse over [`super::pin::SCAN_LIMIT`] is not looked at. Forgetting is conservative: a statement that then fails (inside a failed transaction
//! block) or is rolled back still forgets.

use super::pin::{may_matter, statements};
use super::setting;

/// What the proxy stops assuming about the server connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Forget {
    /// Every named statement on it (the client's and the proxy's) is gone.
    pub statements: bool,
    /// Its settings may have changed back to its login's.
    pub params: bool,
    /// The client's tracked settings that are its login's again ([`super::setting`]): a
    /// mask over [`super::setting::TRACKED`].
    pub settings: u16,
}

/// What `sql` (bytes up to the first NUL) makes the proxy forget.
pub fn forgets(sql: &[u8]) -> Forget {
    let sql = sql.split(|b| *b == 0).next().unwrap_or_default();
    if !may_matter(sql) {
        return Forget::default(); // the common case: no lowercase copy
    }
    forget_of(&String::from_utf8_lossy(sql).to_ascii_lowercase())
}

/// What `lower` (lowercased SQL) makes the proxy forget.
pub(super) fn forget_of(lower: &str) -> Forget {
    let mut out = Forget::default();
    for statement in statements(lower) {
        let mut words = statement
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty());
        match (words.next(), words.next(), words.next()) {
            (Some("reset"), name, _) => {
                out.params = true;
                out.settings |= match name {
                    Some("all") => setting::ALL,
                    Some(name) => setting::index(name).map_or(0, |i| 1 << i),
                    None => 0,
                };
            }
            (Some("deallocate"), Some("all"), _)
            | (Some("deallocate"), Some("prepare"), Some("all")) => {
                out.statements = true;
            }
            (Some("discard"), Some("all"), _) => {
                out.statements = true;
                out.params = true;
                out.settings = setting::ALL;
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_each_statement_forgets() {
        let f = |statements, params, settings| Forget {
            statements,
            params,
            settings,
        };
        let (none, st, params) = (Forget::default(), f(true, false, 0), f(false, true, 0));
        let both = f(true, true, setting::ALL);
        let app = 1 << setting::index("application_name").expect("tracked");
        for (sql, want) in [
            ("DEALLOCATE ALL", st),
            ("deallocate prepare all", st),
            ("DEALLOCATE p1", none),
            ("DISCARD ALL", both),
            ("discard plans", none),
            ("DISCARD TEMP", none),
            ("RESET ALL", f(false, true, setting::ALL)),
            ("reset application_name", f(false, true, app)),
            ("RESET work_mem", params),
            (
                "SELECT pg_advisory_unlock_all();\nCLOSE ALL;\nUNLISTEN *;\nRESET ALL;",
                f(false, true, setting::ALL),
            ),
            ("SELECT 'DEALLOCATE ALL'", none),
            ("/* c */ DEALLOCATE ALL; SELECT 1", st),
            ("SELECT 1 UNION ALL SELECT 2", none),
        ] {
            assert_eq!(forgets(sql.as_bytes()), want, "{sql}");
        }
    }
}
