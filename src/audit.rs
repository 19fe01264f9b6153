//! The audit trail: one line at the start and one at the end of every client session, with
//! tracing target `audit` (so `PG_IAM_PROXY_LOG=audit=info,warn` keeps just these): who
//! (uid and OS user name, or the SCRAM user of a remote client), from where, as which database user, to
//! which database and target, with which IAM role, and at the end for how long and how many
//! bytes each way. JSON with `--log-format json`. No token or secret is among the fields.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;

use crate::frontend::peer::{Client, Identity};
use crate::relay::Meter;

/// One session's bytes each way, counted as the relay writes them.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Client -> server.
    pub to_server: AtomicU64,
    /// Server -> client.
    pub to_client: AtomicU64,
}

/// A relay meter that counts into the target's counter and a session's [`Traffic`].
pub struct Tally<'a> {
    /// The target's counter.
    pub target: &'a Counter,
    /// The session's count.
    pub own: &'a AtomicU64,
}

impl Meter for Tally<'_> {
    fn add(&self, bytes: u64) {
        self.target.inc_by(bytes);
        self.own.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// What a session's audit lines say.
#[derive(Debug)]
pub struct Session<'a> {
    /// The client.
    pub identity: &'a Identity,
    /// The database user it logs in as.
    pub db_user: &'a str,
    /// The database.
    pub database: &'a str,
    /// The target's name.
    pub target: &'a str,
    /// The IAM role assumed for its token, if any.
    pub role_arn: Option<&'a str>,
    /// When it started.
    pub started: Instant,
}

impl Session<'_> {
    fn who(&self) -> (Option<u32>, String) {
        match &self.identity.client {
            Client::Local { uid, user, .. } => (
                Some(*uid),
                user.as_ref().map(|u| u.name.clone()).unwrap_or_default(),
            ),
            _ => (None, String::new()),
        }
    }

    /// The session-start line.
    pub fn start(&self) {
        let (uid, os_user) = self.who();
        let client_user = self.identity.name().unwrap_or_default();
        tracing::info!(target: "audit", event = "session_start", uid, os_user,
            client_user, client_addr = %self.identity.addr, db_user = self.db_user, database = self.database,
            upstream_target = self.target, role_arn = self.role_arn.unwrap_or(""),
            "session start");
    }

    /// The session-end line.
    pub fn end(&self, traffic: &Traffic) {
        let (uid, os_user) = self.who();
        let client_user = self.identity.name().unwrap_or_default();
        tracing::info!(target: "audit", event = "session_end", uid, os_user,
            client_user, client_addr = %self.identity.addr, db_user = self.db_user, database = self.database,
            upstream_target = self.target, role_arn = self.role_arn.unwrap_or(""),
            duration_ms = self.started.elapsed().as_millis() as u64,
            bytes_to_server = traffic.to_server.load(Ordering::Relaxed),
            bytes_to_client = traffic.to_client.load(Ordering::Relaxed),
            "session end");
    }
}
