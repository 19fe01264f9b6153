//! Who may use the proxy and as which database user. Admission: the proxy's own uid and
//! root, plus `--allow-uid`/`--allow-gid`, or everyone with `--allow-any-local-user`; a
//! local client whose owner is unknown is refused (fail closed). Database user: fixed by
//! `--db-user`, else the `--user-map` rules, else the proxy's own user (and root) any and
//! everyone else only the one named like them. Refusals are 28000 errors naming the
//! identity and the setting that would admit it.

use std::sync::Arc;

use super::auth_file::AuthFile;
use super::peer::{Client, Identity, Lookups, Unknown};
use super::tls::CertStore;
use super::user_map::UserMap;
use crate::error::{sqlstate, ClientError};

/// The admission rule (process-wide).
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// The proxy's own effective uid.
    pub own_uid: u32,
    /// `--allow-uid`, resolved.
    pub uids: Vec<u32>,
    /// `--allow-gid`, resolved.
    pub gids: Vec<u32>,
    /// `--allow-any-local-user`: no check.
    pub any_local: bool,
    /// The kernel's socket table and the user database, asked who a client is.
    pub lookups: Arc<Lookups>,
    /// TLS toward clients (`--client-tls-cert`), if configured.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Its certificate and key (reloaded on SIGHUP).
    pub certs: Option<Arc<CertStore>>,
    /// Remote clients' SCRAM verifiers (`--client-auth-file`), if configured.
    pub auth_file: Option<Arc<AuthFile>>,
    /// Remote clients may authenticate with certificates (`--client-ca-file`).
    pub client_certs: bool,
}

/// Which database users a target's clients may become.
#[derive(Debug, Clone)]
pub enum DbUserRule {
    /// `--db-user`: this one, whatever the client asks.
    Fixed(String),
    /// `--user-map`.
    Map(Arc<UserMap>),
    /// Own user and root: any; others: the one named like them.
    ByName,
}

/// Why a client was refused (the label of `client_refusals_total`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A local user not admitted.
    NotAdmitted(Box<Identity>),
    /// A loopback client whose owner could not be established.
    UnknownOwner(Box<Identity>),
    /// Admitted, but not as this database user.
    DbUser(Box<Identity>, String, Vec<String>),
    /// A remote client without TLS.
    TlsRequired(Box<Identity>),
    /// A remote client whose SCRAM exchange failed (the error says how).
    Password(Box<Identity>, ClientError),
}

impl Refusal {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotAdmitted(_) => "uid",
            Self::UnknownOwner(_) => "unknown_owner",
            Self::DbUser(..) => "db_user",
            Self::TlsRequired(_) => "tls_required",
            Self::Password(..) => "password",
        }
    }

    /// Who was refused.
    pub fn identity(&self) -> &Identity {
        match self {
            Self::NotAdmitted(id)
            | Self::UnknownOwner(id)
            | Self::DbUser(id, ..)
            | Self::TlsRequired(id)
            | Self::Password(id, _) => id,
        }
    }

    /// What the client reads.
    pub fn to_error(&self, access: &Access) -> ClientError {
        match self {
            Self::NotAdmitted(id) => not_admitted(id, access),
            Self::UnknownOwner(id) => {
                let why = match &id.client {
                    Client::Unknown(Unknown::NoDescriptors) => {
                        return crate::fds::exhausted_error()
                    }
                    Client::Unknown(u) => u.text(),
                    _ => "unknown",
                };
                ClientError::new(
                    sqlstate::INVALID_AUTHORIZATION,
                    format!(
                        "pg-iam-proxy: cannot tell which local user connected from {} ({why}); refused",
                        id.addr
                    ),
                )
                .with_hint(
                    "connect from this host's own network namespace or over the Unix socket \
                     (--unix-socket), or start the proxy with --allow-any-local-user",
                )
            }
            Self::DbUser(id, db_user, allowed) => db_user_refused(id, db_user, allowed),
            Self::TlsRequired(id) => ClientError::new(
                sqlstate::INVALID_AUTHORIZATION,
                format!(
                    "pg-iam-proxy: remote client {} must use TLS (connect with sslmode=verify-full) \
                     and authenticate",
                    id.addr
                ),
            ),
            Self::Password(_, e) => e.clone(),
        }
    }
}

fn not_admitted(id: &Identity, access: &Access) -> ClientError {
    let name = id.name().unwrap_or_default();
    let uid = match &id.client {
        Client::Local { uid, .. } => *uid,
        _ => 0,
    };
    let by_name = if name == uid.to_string() {
        String::new()
    } else {
        format!(" or --allow-uid {name}")
    };
    ClientError::new(
        sqlstate::INVALID_AUTHORIZATION,
        format!("pg-iam-proxy: {} may not use this proxy", id.describe()),
    )
    .with_hint(format!(
        "the proxy admits its own user (uid {}) and root; start it with --allow-uid {uid}{by_name} \
         (or --allow-gid GROUP) to admit this user",
        access.own_uid
    ))
}

fn db_user_refused(id: &Identity, db_user: &str, allowed: &[String]) -> ClientError {
    let name = id.name().unwrap_or_else(|| id.addr.clone());
    let allowed = if allowed.is_empty() {
        "none".to_owned()
    } else {
        allowed.join(", ")
    };
    ClientError::new(
        sqlstate::INVALID_AUTHORIZATION,
        format!(
            "pg-iam-proxy: {} may not log in as database user \"{db_user}\"",
            id.describe()
        ),
    )
    .with_hint(format!(
        "allowed database users: {allowed}; a line \"{name} {db_user}\" in the --user-map file \
         would allow it"
    ))
}

impl Access {
    /// Whether `id` may use the proxy at all.
    pub fn admit(&self, id: &Identity) -> Result<(), Refusal> {
        if self.any_local {
            return Ok(());
        }
        match &id.client {
            Client::Remote | Client::Authenticated { .. } => Ok(()),
            Client::Unknown(_) => Err(Refusal::UnknownOwner(Box::new(id.clone()))),
            Client::Local { uid, groups, .. } => {
                let admitted = self.privileged(*uid)
                    || self.uids.contains(uid)
                    || groups.iter().any(|g| self.gids.contains(g));
                if admitted {
                    Ok(())
                } else {
                    Err(Refusal::NotAdmitted(Box::new(id.clone())))
                }
            }
        }
    }

    /// The proxy's own user or root.
    pub fn privileged(&self, uid: u32) -> bool {
        uid == self.own_uid || uid == 0
    }

    /// Identifies the client at `addr` (with its groups when the rule needs them).
    pub async fn identify(&self, addr: super::peer::PeerAddr) -> Identity {
        super::peer::identify(addr, self.needs_groups(), self.lookups.clone()).await
    }

    /// Whether the admission rule needs a client's groups.
    pub fn needs_groups(&self) -> bool {
        !self.any_local && !self.gids.is_empty()
    }
}

impl DbUserRule {
    /// The database user `id` logs in as when it asks for `requested`.
    pub fn decide(
        &self,
        access: &Access,
        id: &Identity,
        requested: &str,
    ) -> Result<String, Refusal> {
        let refuse = |allowed: Vec<String>| {
            Refusal::DbUser(Box::new(id.clone()), requested.to_owned(), allowed)
        };
        match self {
            Self::Fixed(user) => Ok(user.clone()),
            Self::Map(map) => match id.name() {
                Some(name) if map.allows(&name, requested) => Ok(requested.to_owned()),
                Some(name) => Err(refuse(map.allowed_for(&name))),
                None => Err(refuse(Vec::new())),
            },
            Self::ByName => match &id.client {
                // A remote client on a listener the operator opened with --allow-remote-clients.
                Client::Remote => Ok(requested.to_owned()),
                Client::Local { uid, .. } if access.privileged(*uid) => Ok(requested.to_owned()),
                _ => match id.name() {
                    Some(name) if name == requested => Ok(name),
                    Some(name) => Err(refuse(vec![name])),
                    None => Err(refuse(Vec::new())),
                },
            },
        }
    }
}

#[cfg(test)]
mod tests;
