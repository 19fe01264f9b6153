//! Who is on the other end of a client connection. Unix socket: the peer's credentials from
//! `SO_PEERCRED`. Loopback TCP: the owner of the connecting socket from the kernel's socket
//! table ([`super::sock_diag`], [`super::proc_net`] as a fallback), by the exact address
//! pair. Beyond loopback: a remote client. Netlink and cached user entries are asked on the
//! task; what may block (/proc, the user database) runs on a blocking thread; all of it under
//! [`IDENTIFY_TIMEOUT`], failing which the owner is unknown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::proc_net;
use super::sock_diag::{Found, SockDiag};
use super::users::{self, NameCache, UserEntry};

/// The longest identifying a client may take.
pub const IDENTIFY_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection's addresses as accepted.
#[derive(Debug, Clone, Copy)]
pub enum PeerAddr {
    /// TCP: the client's address and ours.
    Tcp {
        /// The client's address.
        peer: SocketAddr,
        /// Our end's address.
        local: SocketAddr,
    },
    /// Unix socket: the peer's uid and gid (`None`: the kernel would not say).
    Unix(Option<(u32, u32)>),
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp { peer, .. } => write!(f, "{peer}"),
            Self::Unix(_) => f.write_str("unix-socket"),
        }
    }
}

/// Why a local client's owner is not known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    /// No socket with the connection's address pair (another network namespace, gone).
    NotFound,
    /// The kernel could not be asked (neither netlink nor /proc).
    LookupFailed,
    /// The lookup took longer than [`IDENTIFY_TIMEOUT`].
    Timeout,
    /// The process is out of file descriptors (it could not ask).
    NoDescriptors,
}

impl Unknown {
    /// Why, for the client's error message.
    pub fn text(self) -> &'static str {
        match self {
            Self::NotFound => "no socket with its address pair in the kernel's table",
            Self::LookupFailed => "the kernel's socket table could not be read",
            Self::Timeout => "the lookup timed out",
            Self::NoDescriptors => "out of file descriptors",
        }
    }
}

/// What the proxy knows about a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Client {
    /// A local process whose owner the kernel named.
    Local {
        /// Its uid.
        uid: u32,
        /// Its user entry, if the user database has one.
        user: Option<UserEntry>,
        /// Its groups (only when the admission rule needs them).
        groups: Vec<u32>,
    },
    /// A client beyond loopback (a listener allowed with `--allow-remote-clients`), before
    /// it authenticates.
    Remote,
    /// A remote client that proved who it is over TLS.
    Authenticated {
        /// The SCRAM user (the startup packet's user name), or the certificate's CN.
        user: String,
        /// How.
        method: AuthMethod,
    },
    /// A loopback client whose owner could not be established.
    Unknown(Unknown),
}

/// How a remote client authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// SCRAM-SHA-256 against `--client-auth-file`.
    Scram,
    /// A certificate chaining to `--client-ca-file`.
    Certificate,
}

impl AuthMethod {
    /// For messages and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scram => "SCRAM",
            Self::Certificate => "certificate",
        }
    }
}

/// A client and where it connected from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Who.
    pub client: Client,
    /// The client's address (`unix-socket` for the Unix socket).
    pub addr: String,
}

impl Identity {
    /// The name a user map and the default rule match: the OS user name, else the uid.
    pub fn name(&self) -> Option<String> {
        match &self.client {
            Client::Local { user: Some(u), .. } => Some(u.name.clone()),
            Client::Local { uid, .. } => Some(uid.to_string()),
            Client::Authenticated { user, .. } => Some(user.clone()),
            _ => None,
        }
    }

    /// `user "alice" (uid 1001)`, for messages.
    pub fn describe(&self) -> String {
        match &self.client {
            Client::Local {
                uid, user: Some(u), ..
            } => format!("local user \"{}\" (uid {uid})", u.name),
            Client::Local {
                uid, user: None, ..
            } => format!("local uid {uid}"),
            Client::Remote => format!("remote client {}", self.addr),
            Client::Authenticated { user, method } => {
                format!(
                    "remote user \"{user}\" ({}) from {}",
                    method.as_str(),
                    self.addr
                )
            }
            Client::Unknown(_) => format!("client {} of unknown owner", self.addr),
        }
    }
}

/// What identifying a client asks: the kernel's socket table and the user database.
#[derive(Debug, Default)]
pub struct Lookups {
    /// The sock_diag socket.
    pub diag: SockDiag,
    /// User entries seen recently.
    pub names: NameCache,
}

impl Lookups {
    /// Opens the sock_diag socket now.
    pub fn new() -> Self {
        Self {
            diag: SockDiag::new(),
            names: NameCache::default(),
        }
    }
}

/// Identifies the client at `addr` with `lookups` within [`IDENTIFY_TIMEOUT`], with its
/// groups if `groups`.
pub async fn identify(addr: PeerAddr, groups: bool, lookups: Arc<Lookups>) -> Identity {
    let client = tokio::time::timeout(IDENTIFY_TIMEOUT, identify_within(addr, groups, lookups))
        .await
        .unwrap_or(Client::Unknown(Unknown::Timeout));
    Identity {
        client,
        addr: addr.to_string(),
    }
}

/// The owner from the Unix peer's credentials or sock_diag (on this task: the kernel answers
/// within the request's system call), its user entry from the cache. A blocking thread only
/// for what may block: the groups, a user entry to read, `/proc/net/tcp` when sock_diag
/// failed (a thread hop costs more than the lookup itself, and it runs on every connect).
async fn identify_within(addr: PeerAddr, groups: bool, lookups: Arc<Lookups>) -> Client {
    let (uid, cred_gid) = match addr {
        PeerAddr::Unix(Some((uid, gid))) => (uid, Some(gid)),
        PeerAddr::Unix(None) => return Client::Unknown(Unknown::LookupFailed),
        PeerAddr::Tcp { peer, local } => {
            let (peer, local) = (canonical(peer), canonical(local));
            if !peer.ip().is_loopback() {
                return Client::Remote;
            }
            match lookups.diag.lookup(peer, local).await {
                Ok(Found::Owner(uid)) => (uid, None),
                Ok(Found::Absent) => return Client::Unknown(Unknown::NotFound),
                Err(e) => {
                    tracing::debug!(error = %e, "sock_diag lookup failed; reading /proc/net/tcp");
                    let from_proc = move |l: &Lookups| match proc_owner(peer, local) {
                        Ok(uid) => local_client(uid, None, groups, l),
                        Err(why) => Client::Unknown(why),
                    };
                    return on_blocking_thread(lookups, from_proc).await;
                }
            }
        }
    };
    if !groups {
        if let Some(user) = lookups.names.cached(uid) {
            let groups = Vec::new();
            return Client::Local { uid, user, groups };
        }
    }
    on_blocking_thread(lookups, move |l| local_client(uid, cred_gid, groups, l)).await
}

async fn on_blocking_thread(
    lookups: Arc<Lookups>,
    work: impl FnOnce(&Lookups) -> Client + Send + 'static,
) -> Client {
    tokio::task::spawn_blocking(move || work(&lookups))
        .await
        .unwrap_or(Client::Unknown(Unknown::LookupFailed))
}

/// The local client `uid` with its user entry, and its groups if `groups` (blocking: the
/// user database).
fn local_client(uid: u32, cred_gid: Option<u32>, groups: bool, lookups: &Lookups) -> Client {
    let user = lookups.names.user(uid);
    let mut all = Vec::new();
    if groups {
        all.extend(cred_gid);
        all.extend(user.as_ref().map(users::groups_of).unwrap_or_default());
    }
    Client::Local {
        uid,
        user,
        groups: all,
    }
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// The owner from `/proc/net/tcp` (blocking).
fn proc_owner(peer: SocketAddr, local: SocketAddr) -> Result<u32, Unknown> {
    let found = proc_net::lookup(peer, local).map_err(|e| {
        if crate::fds::is_exhaustion(&e) {
            return Unknown::NoDescriptors;
        }
        tracing::warn!(error = %e, "cannot read the kernel's TCP socket table");
        Unknown::LookupFailed
    })?;
    match found {
        Found::Owner(uid) => Ok(uid),
        Found::Absent => Err(Unknown::NotFound),
    }
}
