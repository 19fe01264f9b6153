//! Transaction pooling: the client is greeted without a server connection (the pool's
//! baseline ParameterStatus values and a cancel key of ours), and holds one only from its
//! first message of a transaction (or a lone statement) until the server's ReadyForQuery
//! says idle with everything answered; the connection then goes back to the pool as it is
//! (no reset between transactions). The client's `application_name` is set on the
//! connection it is lent when the connection's value differs. A client that does what
//! cannot be shared ([`crate::relay::pin`]) keeps its connection for the rest of its
//! session, which then ends as a session-mode one does (reset, or closed). Its named
//! prepared statements follow it from connection to connection ([`relay::prepared`]). The
//! greeting is in [`greet`].

use crate::relay::Cut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

mod greet;

use super::pooled::{checkout_failure, release, split};
use super::{meters, or_cut, refuse, tallies};
use crate::audit::Traffic;
use crate::cancel::{CancelTarget, ClientCancel};
use crate::client::{self, StartupInfo};
use crate::error::{sqlstate, ClientError};
use crate::pool::{Checkout, CloseReason, Pool};
use crate::relay::pin::PinReason;
use crate::relay::prepared::{lock as statements, Shared};
use crate::relay::setting::{self, Verdict};
use crate::relay::{self, Ended, Phase};
use crate::target::{Pooling, TargetContext};
use crate::upstream::params;
use crate::upstream::pooled::{PooledServer, ServerConnector};
use crate::wire;
use std::sync::Mutex;

/// A client's settings for its transactions.
struct Client<'a> {
    ctx: &'a TargetContext,
    pooling: &'a Pooling,
    /// Its pool, held for the session: no look-up per transaction.
    pool: Pool<ServerConnector>,
    connector: ServerConnector,
    /// Startup parameters set on whichever connection it is lent (`application_name`).
    settable: Vec<(String, String)>,
    /// What the connections it is lent are given: `settable`, with the values of its
    /// tracked `SET`s ([`relay::setting`]) since.
    desired: Mutex<Vec<(String, String)>>,
    cancel: ClientCancel,
    cut: Cut,
    /// The session's byte counts (audit).
    traffic: &'a Traffic,
    /// Its named prepared statements ([`relay::prepared`]).
    prepared: Shared,
}

/// Serves the client, lending it a server connection of `user`'s pool per transaction.
pub(super) async fn session<S>(
    ctx: &TargetContext,
    pooling: &Pooling,
    mut client: S,
    user: String,
    info: StartupInfo,
    cut: Cut,
    traffic: &Traffic,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (key, settable) = split(user, &info);
    drop(info);
    let connector = pooling.connector.for_client(&settable);
    // Boxed stage: an idle client's future holds none of the first checkout's state.
    let greeted = Box::pin(greet::greet(
        ctx,
        pooling,
        &key,
        &connector,
        &settable,
        &mut client,
        &cut,
    ));
    let Some(cancel) = greeted.await else {
        return;
    };
    let me = Client {
        ctx,
        pooling,
        pool: pooling.pools.pool(&key, &connector),
        connector,
        desired: Mutex::new(settable.clone()),
        settable,
        cancel,
        cut,
        traffic,
        prepared: Shared::default(),
    };
    me.serve(&mut client).await;
}

/// Bytes of a transaction's first read, in place: most lone statements (a simple query, a
/// Bind/Execute/Sync of a prepared one) fit; the relay reads whatever more there is.
const FIRST_READ: usize = 256;

/// What the client did while it held no server connection.
enum Waited {
    /// It sent these bytes: a transaction starts.
    Sent(Vec<u8>),
    /// It left (closed, or sent Terminate first).
    Left,
    /// The proxy's shutdown drain ended.
    Cut,
    /// Nothing for the idle timeout.
    Idle,
}

impl Client<'_> {
    /// Transaction after transaction until the client leaves or is pinned and done.
    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(self, client: &mut S) {
        loop {
            let early = match self.wait(client).await {
                Waited::Sent(early) => early,
                Waited::Left => break,
                Waited::Cut => {
                    client::reject(client, &ClientError::admin_shutdown()).await;
                    break;
                }
                Waited::Idle => {
                    tracing::info!(timeout = ?self.ctx.settings.idle_timeout, "idle session closed");
                    client::reject(client, &ClientError::idle_session_timeout()).await;
                    break;
                }
            };
            // A boxed stage: an idle client's future holds only the wait.
            if !Box::pin(self.one(client, early)).await {
                break;
            }
        }
        self.cancel.release().await;
    }

    /// Waits for the client's next bytes, at most the idle timeout. The first read is
    /// small and in place, so an idle client holds no buffer; the relay reads the rest.
    async fn wait<S: AsyncRead + Unpin>(&self, client: &mut S) -> Waited {
        let mut first = [0u8; FIRST_READ];
        let read = client.read(&mut first);
        let limited = async {
            match self.ctx.settings.idle_timeout {
                Some(limit) => tokio::time::timeout(limit, read).await.ok(),
                None => Some(read.await),
            }
        };
        match or_cut(&self.cut, limited).await {
            None => Waited::Cut,
            Some(None) => Waited::Idle,
            Some(Some(Ok(n))) if n > 0 && first[0] != b'X' => Waited::Sent(first[..n].to_vec()),
            Some(Some(_)) => Waited::Left,
        }
    }

    /// One transaction from `early` on a connection lent for it; true if the connection
    /// went back and the client is still there for the next one.
    async fn one<S>(&self, client: &mut S, early: Vec<u8>) -> bool
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match self.lend(client).await {
            Some(lent) => self.transaction(client, lent, early).await,
            None => false,
        }
    }

    /// A server connection for the next transaction, with the client's settable parameters
    /// applied; `None` when there is none (the client was told why).
    async fn lend<S>(&self, client: &mut S) -> Option<Checkout<PooledServer>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let checkout = self.pool.checkout(&self.connector);
        let mut lent = match or_cut(&self.cut, checkout).await {
            None => {
                client::reject(client, &ClientError::admin_shutdown()).await;
                return None;
            }
            Some(Ok(lent)) => lent,
            Some(Err(e)) => {
                refuse(self.ctx, client, checkout_failure(e)).await;
                return None;
            }
        };
        let server = lent.conn_mut();
        let changes = server.changes_for(&lock(&self.desired));
        if changes.is_empty() {
            return Some(lent);
        }
        let limit = self.ctx.settings.connect_timeout;
        let applied = params::change(&mut server.conn.stream, &changes, limit);
        match applied.await {
            Ok(()) => {
                server.changed(&changes);
                Some(lent)
            }
            Err(e) => {
                lent.close(CloseReason::Broken);
                let msg = format!("pg-iam-proxy: {e}");
                client::reject(client, &ClientError::new(sqlstate::CONNECTION_FAILURE, msg)).await;
                None
            }
        }
    }

    /// Relays one transaction on `lent`, starting with `early`; true if the connection went
    /// back and the client is still there for the next one.
    async fn transaction<S>(
        &self,
        client: &mut S,
        mut lent: Checkout<PooledServer>,
        early: Vec<u8>,
    ) -> bool
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let server = lent.conn_mut();
        self.cancel.assign(CancelTarget {
            endpoint: server.conn.endpoint.clone(),
            addr: server.conn.addr,
            key: server.key.clone(),
        });
        statements(&self.prepared).lend(std::mem::take(&mut server.statements));
        let stream = &mut server.conn.stream;
        let idle = self.ctx.settings.idle_timeout;
        let tallies = tallies(self.ctx, self.traffic);
        let meters = meters(&tallies);
        let p = &self.prepared;
        let mut outcome = relay::splice_transaction(
            client,
            stream,
            Phase::Transaction { early },
            &self.cut,
            idle,
            meters,
            p,
        )
        .await;
        self.count_reprepared();
        self.forget_params(&mut lent);
        let settled = match outcome.ended {
            Ended::Returned => self.settle(lent.conn_mut()),
            _ => None,
        };
        match (outcome.ended, outcome.pinned.or(settled)) {
            (Ended::Returned, None) => {
                // Back before the client reads the ReadyForQuery that ends its transaction,
                // so whatever it does next finds the connection in the pool.
                self.cancel.unassign().await;
                lent.conn_mut().statements = std::mem::take(&mut statements(&self.prepared).server);
                lent.return_idle();
                return self.deliver(client, &outcome.tail, meters).await;
            }
            (Ended::Returned, Some(reason)) => {
                // Settled and idle: the rest of the session is relayed as session mode does.
                tracing::debug!(
                    reason = reason.as_str(),
                    "client pinned to its server connection"
                );
                let pools = &self.pooling.pools;
                pools.metrics().pinned(pools.target(), reason.as_str());
                if !self.deliver(client, &outcome.tail, meters).await {
                    self.end_session(lent, true).await;
                    return false;
                }
                let stream = &mut lent.conn_mut().conn.stream;
                let rest = relay::splice_transaction(
                    client,
                    stream,
                    Phase::Pinned,
                    &self.cut,
                    idle,
                    meters,
                    p,
                );
                outcome = rest.await;
                self.count_reprepared();
                self.forget_params(&mut lent);
            }
            _ => {}
        }
        if outcome.ended == Ended::Idle {
            tracing::info!(timeout = ?idle, "idle session closed");
        }
        let reusable = matches!(outcome.ended, Ended::Released { .. }) && outcome.server_idle;
        if !reusable {
            tracing::debug!(ended = ?outcome.ended, "server connection not provably idle; closed");
        }
        self.end_session(lent, reusable).await;
        false
    }

    /// The session ends on `lent` (pinned, or not between transactions): the connection is
    /// reset if `reusable`, else closed. Its statements are gone (their names stay unique),
    /// and the reset query may have reset its settings.
    async fn end_session(&self, mut lent: Checkout<PooledServer>, reusable: bool) {
        self.cancel.unassign().await;
        let server = lent.conn_mut();
        server.statements = statements(&self.prepared).server.cleared();
        server.forget_params();
        release(lent, reusable, &self.pooling.config.reset_query).await;
    }

    /// Writes the end of a transaction's answer that the relay left for after the connection
    /// went back (see [`relay::Outcome::tail`]), within the idle timeout and until the proxy
    /// cuts; false if the client did not take it.
    async fn deliver<S: AsyncWrite + Unpin>(
        &self,
        client: &mut S,
        tail: &[u8],
        meters: relay::Meters<'_>,
    ) -> bool {
        if tail.is_empty() {
            return true;
        }
        let write = wire::send(client, tail);
        let limited = async {
            match self.ctx.settings.idle_timeout {
                Some(limit) => tokio::time::timeout(limit, write).await.ok(),
                None => Some(write.await),
            }
        };
        match or_cut(&self.cut, limited).await {
            Some(Some(Ok(()))) => {
                meters.to_client.add(tail.len() as u64);
                true
            }
            _ => {
                tracing::debug!("client did not take the end of its transaction's answer");
                false
            }
        }
    }

    /// After the client's `RESET` or `DISCARD ALL` ([`relay::forget`]), stops assuming what
    /// its settings on `lent` are.
    fn forget_params(&self, lent: &mut Checkout<PooledServer>) {
        if std::mem::take(&mut statements(&self.prepared).forgot_params) {
            lent.conn_mut().forget_params();
        }
    }

    /// After a transaction that left `server` idle: the client's tracked settings take what
    /// its statements did ([`relay::setting`]), on it and on `server`; `Some` if the client
    /// must stay on `server` instead.
    fn settle(&self, server: &mut PooledServer) -> Option<PinReason> {
        let (period, resets) = {
            let mut p = statements(&self.prepared);
            (
                std::mem::take(&mut p.period),
                std::mem::take(&mut p.reset_settings),
            )
        };
        let mut desired = lock(&self.desired);
        for (i, name) in setting::TRACKED.iter().enumerate() {
            if resets & 1 << i != 0 {
                self.to_login_value(&mut desired, name);
            }
        }
        match period.verdict() {
            Verdict::Nothing => None,
            Verdict::Pin => Some(PinReason::Set),
            Verdict::Took(settings) => {
                for s in settings {
                    match s.value {
                        Some(v) => {
                            server.since_login.set(s.name.to_owned(), v.clone());
                            upsert(&mut desired, s.name, v);
                        }
                        None => {
                            // DEFAULT: the connection's login value; the client's is its own.
                            server.since_login.remove(s.name);
                            self.to_login_value(&mut desired, s.name);
                        }
                    }
                }
                None
            }
        }
    }

    /// The client's value of `name` is its login's again: its startup's, or the server's.
    fn to_login_value(&self, desired: &mut Vec<(String, String)>, name: &str) {
        match self.settable.iter().find(|(n, _)| n == name) {
            Some((_, v)) => upsert(desired, name, v.clone()),
            None => desired.retain(|(n, _)| n != name),
        }
    }

    /// Counts the statements prepared again on a server connection since the last count.
    fn count_reprepared(&self) {
        let n = std::mem::take(&mut statements(&self.prepared).reprepared);
        if n > 0 {
            let pools = &self.pooling.pools;
            pools.metrics().reprepared(pools.target(), n);
        }
    }
}

/// Sets `name` to `value` in `list`, or appends it.
fn upsert(list: &mut Vec<(String, String)>, name: &str, value: String) {
    match list.iter_mut().find(|(n, _)| n == name) {
        Some((_, v)) => *v = value,
        None => list.push((name.to_owned(), value)),
    }
}

/// Locks `m` (a poisoned lock is still consistent: every change is one step).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
