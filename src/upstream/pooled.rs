//! Server connections as the pool holds them ([`PooledServer`]: a logged-in [`ServerConn`]
//! with the parameters the server reported at login, the baseline a reset returns to), and
//! the connector that opens one for a pool key: a login for no client in particular (the
//! key's user, database and startup parameters), through the target's login gate.

use std::future::Future;
use std::sync::{Arc, Weak};

use bytes::BytesMut;
use pgwire::messages::response::ErrorResponse;
use pgwire::messages::startup::BackendKeyData;
use tokio::io::AsyncWriteExt;

use crate::client::StartupInfo;
use crate::error::{sqlstate, ClientError};
use crate::pool::{Conn, Connector, PoolKey, ToClient};
use crate::target::TargetContext;
use crate::upstream::login::{open_gated, Failure, ServerConn};
use crate::upstream::params::ServerParams;
use crate::upstream::reset::tls_has_pending_input;
use crate::wire;

/// The Terminate message.
const TERMINATE: [u8; 5] = [b'X', 0, 0, 0, 4];

/// A pooled server connection.
#[derive(Debug)]
pub struct PooledServer {
    /// The connection.
    pub conn: ServerConn,
    /// ParameterStatus values of the login: what every client starts from.
    pub baseline: ServerParams,
    /// The server's cancel key, shared with the cancel map while a client holds it.
    pub key: Arc<BackendKeyData>,
    /// Transaction mode: the values set with `set_config` since login (no reset runs
    /// between transactions), which override `baseline`.
    pub since_login: ServerParams,
    /// Transaction mode: a client's `RESET` or `DISCARD ALL` may have changed the settings
    /// back to the login's (or not, if rolled back): the next client's are set whatever
    /// they are ([`PooledServer::forget_params`]).
    pub params_unknown: bool,
    /// Transaction mode: the named statements prepared on it for clients.
    pub statements: crate::relay::prepared::ServerStatements,
}

impl PooledServer {
    /// What to set for the session to have `desired`'s values (names not in it, its
    /// login's): a value for each name whose value differs (or may, after
    /// [`PooledServer::forget_params`]), `None` (reset) for each name set since login that
    /// `desired` lacks; empty (no allocation) when it has them all.
    pub fn changes_for(&self, desired: &[(String, String)]) -> Vec<(String, Option<String>)> {
        let mut out = Vec::new();
        for (name, value) in desired {
            let now = self
                .since_login
                .get(name)
                .or_else(|| self.baseline.get(name));
            if self.params_unknown || now != Some(value.as_str()) {
                out.push((name.clone(), Some(value.clone())));
            }
        }
        for (name, _) in self.since_login.iter() {
            if !desired.iter().any(|(n, _)| n == name) {
                out.push((name.to_owned(), None));
            }
        }
        out
    }

    /// Records that `changes` took effect ([`PooledServer::changes_for`]): every value the
    /// session has is known again.
    pub fn changed(&mut self, changes: &[(String, Option<String>)]) {
        for (name, value) in changes {
            match value {
                Some(v) => self.since_login.set(name.clone(), v.clone()),
                None => self.since_login.remove(name),
            }
        }
        self.params_unknown = false;
    }

    /// Stops assuming what the values set since login are now (which names were set is
    /// kept: those not wanted next are reset).
    pub fn forget_params(&mut self) {
        self.params_unknown = true;
    }
}

impl Conn for PooledServer {
    fn is_broken(&mut self) -> bool {
        tls_has_pending_input(&mut self.conn.stream)
    }

    fn close(self) -> impl Future<Output = ()> + Send {
        let mut stream = self.conn.stream;
        async move {
            let _ = stream.write_all(&TERMINATE).await;
            let _ = stream.shutdown().await;
        }
    }
}

/// Opens pooled server connections of one target. It holds the target weakly: the target
/// owns the pools, and the pools hold a connector.
#[derive(Debug, Clone)]
pub struct ServerConnector {
    target: Weak<TargetContext>,
    /// Parameters outside the pool key that a new login carries anyway: those of the client
    /// it is opened for (see [`ServerConnector::for_client`]).
    carried: Vec<(String, String)>,
}

impl ServerConnector {
    /// A connector for the target `target` will point to.
    pub fn new(target: Weak<TargetContext>) -> Self {
        Self {
            target,
            carried: Vec::new(),
        }
    }

    /// This connector for a client whose settable parameters (`application_name`) are
    /// `params`: a login it opens carries them, so the connection's own value (the one a
    /// reset returns to) is that client's, and the clients after it with the same value,
    /// usually every client of an app, need no `set_config` round trip at checkout.
    pub fn for_client(&self, params: &[(String, String)]) -> Self {
        Self {
            target: self.target.clone(),
            carried: params.to_vec(),
        }
    }
}

impl Connector for ServerConnector {
    type Conn = PooledServer;
    type Error = Failure;

    fn open(&self, key: &PoolKey) -> impl Future<Output = Result<PooledServer, Failure>> + Send {
        let (target, key) = (self.target.clone(), key.clone());
        let carried = self.carried.clone();
        async move {
            let ctx = target
                .upgrade()
                .ok_or_else(|| Failure::Client(ClientError::admin_shutdown(), "shutdown"))?;
            let mut params = key.startup;
            params.extend(carried);
            let info = StartupInfo {
                user: key.user.clone(),
                database: key.database,
                params,
            };
            let (conn, started) = open_gated(&ctx, key.user, &info).await?;
            ctx.metrics
                .connect_seconds
                .observe(started.elapsed().as_secs_f64());
            let baseline = ServerParams::from_login(&conn.login.server_params).map_err(|e| {
                let e = ClientError::new(
                    sqlstate::CONNECTION_FAILURE,
                    format!("pg-iam-proxy: the server's login answer does not parse: {e}"),
                );
                Failure::Client(e, "protocol")
            })?;
            // The raw frames served direct greetings; the baseline replaces them here.
            let mut conn = conn;
            conn.login.server_params = BytesMut::new();
            let real = &conn.login.key;
            let key = Arc::new(BackendKeyData::new(real.pid, real.secret_key.clone()));
            Ok(PooledServer {
                conn,
                baseline,
                key,
                since_login: ServerParams::default(),
                params_unknown: false,
                statements: Default::default(),
            })
        }
    }

    fn is_current(&self, conn: &PooledServer) -> bool {
        let Some(ctx) = self.target.upgrade() else {
            return true;
        };
        ctx.topology
            .as_ref()
            .is_none_or(|t| t.is_current(&conn.conn.endpoint.host))
    }
}

impl ToClient for Failure {
    fn to_client(&self) -> ClientError {
        match self {
            Failure::Client(e, _) => e.clone(),
            Failure::Server(frame, _) => server_error(frame),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.to_client().fmt(f)
    }
}

/// A server's ErrorResponse as our error type (code and message), for callers that cannot
/// relay the frame itself.
fn server_error(frame: &BytesMut) -> ClientError {
    match wire::decode::<ErrorResponse>(frame.clone(), "ErrorResponse") {
        Ok(e) => {
            let field = |t: u8| e.fields.iter().find(|(k, _)| *k == t).map(|(_, v)| v);
            let code = match field(b'C').map(String::as_str) {
                Some("28000") | Some("28P01") => sqlstate::INVALID_AUTHORIZATION,
                _ => sqlstate::CONNECTION_FAILURE,
            };
            ClientError::new(code, field(b'M').cloned().unwrap_or_default())
        }
        Err(_) => ClientError::new(
            sqlstate::CONNECTION_FAILURE,
            "pg-iam-proxy: the server refused the login",
        ),
    }
}
