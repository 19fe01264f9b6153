//! The monitor of one target: one connection, to the writer, asked for the topology every
//! [`POLL`]; a fault (reported by a login, the connection closing or saying something while
//! idle, a poll that disagrees) starts a switch: every known instance is probed in parallel
//! (a fresh login each, [`PROBE_TIMEOUT`]) every [`FAST`] until exactly one says it is the
//! writer (the rest answering within [`GRACE`] after it), for at most [`SWITCH_LIMIT`]. Tokens for every instance are kept warm, so a
//! failover never waits on signing. It ends when the target is dropped or turns out not to
//! be Aurora.

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};

use super::probe::{ask, ProbeError, Report};
use super::Topology;
use crate::client::StartupInfo;
use crate::iam::TokenKey;
use crate::target::TargetContext;
use crate::upstream::connect::Endpoint;
use crate::upstream::login::{open_at, ServerConn};

/// How often the topology is read while all is well.
pub const POLL: Duration = Duration::from_secs(2);
/// How often the instances are probed during a switch.
pub const FAST: Duration = Duration::from_millis(100);
/// One probe's bound (login and query).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the other probes of a round may still answer once one instance said it is the
/// writer.
pub const GRACE: Duration = Duration::from_millis(250);
/// How long a switch may look for a single writer before new logins stop waiting for it.
pub const SWITCH_LIMIT: Duration = Duration::from_secs(60);

/// Who the monitor logs in as.
#[derive(Debug, Clone)]
struct Who {
    user: String,
    info: StartupInfo,
}

/// Starts the monitor of `topo`, logging in as `user` to `database`.
pub fn spawn(ctx: Weak<TargetContext>, topo: Arc<Topology>, user: String, database: String) {
    let info = StartupInfo {
        user: user.clone(),
        database,
        params: vec![("application_name".into(), "pg-iam-proxy topology".into())],
    };
    tokio::spawn(run(ctx, topo, Who { user, info }));
}

async fn run(ctx: Weak<TargetContext>, topo: Arc<Topology>, who: Who) {
    let mut conn: Option<ServerConn> = None;
    loop {
        let Some(target) = ctx.upgrade() else { return };
        if topo.switching() {
            close(conn.take()).await;
            switch(&target, &topo, &who, Vec::new()).await;
        } else {
            match poll(&target, &topo, &who, &mut conn).await {
                Ok(()) => {}
                Err(ProbeError::NotAurora) => {
                    tracing::info!(target = %topo.target, "not Aurora: the endpoint is used as it is");
                    topo.set_not_aurora();
                    return close(conn).await;
                }
                Err(e) => {
                    tracing::info!(target = %topo.target, error = %e, "topology poll failed");
                    close(conn.take()).await;
                    topo.fault("poll");
                }
            }
            warm(&target, &topo, &who).await;
        }
        drop(target);
        let spoke = tokio::select! {
            () = tokio::time::sleep(POLL) => false,
            () = topo.faulted() => false,
            () = stirred(&mut conn) => true,
        };
        if spoke {
            tracing::info!(target = %topo.target, "the writer spoke on or closed the idle monitor connection");
            close(conn.take()).await;
            topo.fault("monitor connection");
        }
    }
}

/// One poll on the kept connection (opened to the writer, else the target's endpoint).
async fn poll(
    ctx: &Arc<TargetContext>,
    topo: &Arc<Topology>,
    who: &Who,
    conn: &mut Option<ServerConn>,
) -> Result<(), ProbeError> {
    if conn.is_none() {
        let ep = match topo.writer() {
            Some(id) => topo.endpoint(&id),
            None => None,
        };
        let ep = ep.unwrap_or_else(|| ctx.endpoint.clone());
        *conn = Some(login(ctx, ep, who).await?);
    }
    let Some(c) = conn.as_mut() else {
        return Err(ProbeError::Shape);
    };
    let report = timeout(PROBE_TIMEOUT, ask(c))
        .await
        .map_err(|_| ProbeError::Timeout)??;
    if agrees(&report) {
        topo.set(&report.instance, &report.members);
        return Ok(());
    }
    // Not the writer (a stale cluster endpoint, or a failover under way): find it.
    tracing::info!(target = %topo.target, instance = %report.instance, "polled instance is not the writer");
    close(conn.take()).await;
    topo.mark_aurora();
    topo.fault("poll");
    let seed = report.members.iter().map(|m| m.id.clone()).collect();
    switch(ctx, topo, who, seed).await;
    Ok(())
}

/// Probes every known instance until exactly one says it is the writer.
async fn switch(ctx: &Arc<TargetContext>, topo: &Arc<Topology>, who: &Who, seed: Vec<String>) {
    let started = Instant::now();
    let mut ids: BTreeSet<String> = topo.instances().into_iter().chain(seed).collect();
    while started.elapsed() < SWITCH_LIMIT {
        let round = Instant::now();
        let (writer, reports) = probe_all(ctx, topo, who, &ids).await;
        if let Some(writer) = writer {
            topo.set(&writer.instance, &writer.members);
            return;
        }
        ids.extend(
            reports
                .iter()
                .flat_map(|r| r.members.iter().map(|m| m.id.clone())),
        );
        tokio::time::sleep_until(round + FAST).await;
    }
    tracing::warn!(target = %topo.target, "no single writer found in {SWITCH_LIMIT:?}; routing as before");
    topo.give_up_switch();
}

/// Asks every instance in `ids` at once. The writer, when exactly one instance said it is
/// one (and its topology agrees), and every answer that came. Once a writer answered, the
/// others get [`GRACE`] more to contradict it: an instance that does not answer (down,
/// restarting) does not hold the switch back for the whole probe timeout.
async fn probe_all(
    ctx: &Arc<TargetContext>,
    topo: &Arc<Topology>,
    who: &Who,
    ids: &BTreeSet<String>,
) -> (Option<Report>, Vec<Report>) {
    let mut set = JoinSet::new();
    for ep in ids.iter().filter_map(|id| topo.endpoint(id)) {
        let (ctx, who) = (ctx.clone(), who.clone());
        set.spawn(async move {
            let mut conn = login(&ctx, ep, &who).await?;
            let report = timeout(PROBE_TIMEOUT, ask(&mut conn)).await;
            close(Some(conn)).await;
            report.map_err(|_| ProbeError::Timeout)?
        });
    }
    let mut reports: Vec<Report> = Vec::new();
    let mut until: Option<Instant> = None;
    loop {
        let next = match until {
            Some(t) => match tokio::time::timeout_at(t, set.join_next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
            None => set.join_next().await,
        };
        let Some(done) = next else { break };
        if let Ok(Ok(report)) = done {
            if agrees(&report) && until.is_none() {
                until = Some(Instant::now() + GRACE);
            }
            reports.push(report);
        }
    }
    let mut writers = reports.iter().filter(|r| r.writer);
    let writer = match (writers.next(), writers.next()) {
        (Some(w), None) if agrees(w) => Some(w.clone()),
        _ => None,
    };
    (writer, reports)
}

/// The instance says it is the writer and its topology names it so.
fn agrees(report: &Report) -> bool {
    report.writer
        && report
            .members
            .iter()
            .any(|m| m.writer && m.id == report.instance)
}

async fn login(
    ctx: &TargetContext,
    ep: Arc<Endpoint>,
    who: &Who,
) -> Result<ServerConn, ProbeError> {
    match timeout(PROBE_TIMEOUT, open_at(ctx, ep, who.user.clone(), &who.info)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(f)) => Err(ProbeError::Login(f.to_string())),
        Err(_) => Err(ProbeError::Timeout),
    }
}

/// Keeps a token for every instance in the cache (signed once, then refreshed there).
async fn warm(ctx: &TargetContext, topo: &Topology, who: &Who) {
    for id in topo.instances() {
        let Some(ep) = topo.endpoint(&id) else {
            continue;
        };
        let key = TokenKey {
            host: ep.host.clone(),
            port: ep.port,
            user: who.user.clone(),
            region: ctx.region.clone(),
            role: ctx.role.clone(),
        };
        if let Err(e) = ctx.cache.token(&key).await {
            tracing::debug!(instance = %id, error = %e, "no token for an instance endpoint yet");
        }
    }
}

/// Resolves when the idle connection has something to say (through TLS: an ErrorResponse
/// before the server goes away, or the end); never without a connection. What it read is
/// lost: the caller closes the connection.
async fn stirred(conn: &mut Option<ServerConn>) {
    match conn {
        Some(c) => {
            let mut byte = [0u8; 1];
            let read = c.stream.read(&mut byte).await;
            tracing::debug!(?read, byte = byte[0], "idle monitor connection stirred");
        }
        None => std::future::pending().await,
    }
}

/// Terminate, then close (bounded).
async fn close(conn: Option<ServerConn>) {
    if let Some(mut c) = conn {
        let bye = async {
            let _ = c.stream.write_all(&[b'X', 0, 0, 0, 4]).await;
            let _ = c.stream.shutdown().await;
        };
        let _ = timeout(Duration::from_secs(2), bye).await;
    }
}
