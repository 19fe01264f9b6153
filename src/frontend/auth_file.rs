//! Remote clients' SCRAM-SHA-256 verifiers, from a file in PgBouncer's `auth_file` format:
//! one `"user" "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>"` a line (a `""`
//! inside quotes is a literal quote; other lines starting with `;` or `#` are comments).
//! Only SCRAM verifiers are accepted: no plain-text or MD5 password ever sits in the file.

use std::collections::HashMap;
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// A SCRAM-SHA-256 verifier, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// Salt.
    pub salt: Vec<u8>,
    /// SHA-256(ClientKey).
    pub stored_key: Vec<u8>,
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: Vec<u8>,
}

impl Verifier {
    /// Parses `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn parse(text: &str) -> Option<Self> {
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let v = Self {
            iterations: iterations.parse().ok().filter(|n| *n > 0)?,
            salt: STANDARD.decode(salt).ok()?,
            stored_key: STANDARD.decode(stored).ok()?,
            server_key: STANDARD.decode(server).ok()?,
        };
        (v.stored_key.len() == 32 && v.server_key.len() == 32).then_some(v)
    }
}

/// The users and their verifiers.
#[derive(Debug, Default)]
pub struct AuthFile {
    users: HashMap<String, Verifier>,
}

/// Reads the quoted fields of a line.
fn quoted_fields(line: &str) -> Option<Vec<String>> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            None => return Some(fields),
            Some('"') => {}
            Some(_) => return None,
        }
        let mut field = String::new();
        loop {
            match chars.next()? {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => break,
                c => field.push(c),
            }
        }
        fields.push(field);
    }
}

impl AuthFile {
    /// Reads and parses `path`; the error names the file and line.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read --client-auth-file {}: {e}", path.display()))?;
        Self::parse(&text)
            .map_err(|(n, why)| format!("--client-auth-file {} line {n}: {why}", path.display()))
    }

    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let t = line.trim();
            if t.is_empty() || t.starts_with(';') || t.starts_with('#') {
                continue;
            }
            let bad = |why: &str| Err((i + 1, why.to_owned()));
            let Some(fields) = quoted_fields(t) else {
                return bad("expected \"user\" \"SCRAM-SHA-256$...\"");
            };
            let [user, secret] = &fields[..] else {
                return bad("expected two quoted fields: \"user\" \"SCRAM-SHA-256$...\"");
            };
            let Some(verifier) = Verifier::parse(secret) else {
                return bad("not a SCRAM-SHA-256 verifier (plain-text and MD5 passwords are not accepted; `pg-iam-proxy scram-verifier` prints one)");
            };
            users.insert(user.clone(), verifier);
        }
        Ok(Self { users })
    }

    /// The verifier of `user`.
    pub fn get(&self, user: &str) -> Option<&Verifier> {
        self.users.get(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pgbouncer_lines_and_refuses_plain_passwords() {
        let v = postgres_protocol::password::scram_sha_256(b"secret");
        let file = AuthFile::parse(&format!(
            "; comment\n\"alice\" \"{v}\"\n\"o\"\"q\" \"{v}\"\n"
        ))
        .expect("parses");
        let alice = file.get("alice").expect("alice");
        assert_eq!(alice.iterations, 4096);
        assert!(file.get("o\"q").is_some(), "a doubled quote is a quote");
        let err = AuthFile::parse("\"bob\" \"secret\"\n").expect_err("plain text");
        assert_eq!(err.0, 1);
        assert!(err.1.contains("plain-text"), "{}", err.1);
        assert!(AuthFile::parse("bob secret\n").is_err());
    }
}
