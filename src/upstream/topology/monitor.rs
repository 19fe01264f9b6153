//! The monitor of one target: one connection, to the writer, asked for the topology every
//! [`POLL`]; a fault (reported by a login, the connection closing or saying something while
//! idle, a poll that disagrees) starts a switch: every known instance is probed in parallel
//! (a fresh login each, [`PROBE_TIMEOUT`]) every [`FAST`] until exactly one says it is the
//! writer, for at most [`SWITCH_LIMIT`]. Tokens for every instance are kept warm, so a
//! failover never waits on signing. It ends when the target is dropped or turns out not to
//! be Aurora.

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
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
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = topo.faulted() => {}
            () = stirred(&conn) => {
                tracing::info!(target = %topo.target, "the writer closed the monitor's connection");
                close(conn.take()).await;
                topo.fault("monitor connection");
            }
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
    let agreed = report.writer
        && report
            .members
            .iter()
            .any(|m| m.writer && m.id == report.instance);
    if agreed {
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
        let reports = probe_all(ctx, topo, who, &ids).await;
        let writers: Vec<&Report> = reports.iter().filter(|r| r.writer).collect();
        if let [writer] = writers[..] {
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

/// Asks every instance in `ids` at once; the answers that came.
async fn probe_all(
    ctx: &Arc<TargetContext>,
    topo: &Arc<Topology>,
    who: &Who,
    ids: &BTreeSet<String>,
) -> Vec<Report> {
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
    let mut reports = Vec::new();
    while let Some(done) = set.join_next().await {
        if let Ok(Ok(report)) = done {
            reports.push(report);
        }
    }
    reports
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

/// Resolves when the idle connection has something to read (an error before the server
/// goes away, or EOF); never without one.
async fn stirred(conn: &Option<ServerConn>) {
    match conn {
        Some(c) => {
            let _ = c.stream.get_ref().0.readable().await;
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
