//! The topology in one line, as `pg-iam-proxy check --login` prints it.

use super::{monitor, probe, Role, Topology};
use crate::upstream::login::ServerConn;

/// The topology as `check` prints it, read on `conn`.
pub async fn describe(topo: &Topology, conn: &mut ServerConn) -> String {
    match tokio::time::timeout(monitor::PROBE_TIMEOUT, probe::ask(conn)).await {
        Ok(Ok(report)) => {
            let list = |writer: bool| {
                report
                    .members
                    .iter()
                    .filter(|m| m.writer == writer)
                    .map(|m| format!("{} ({})", m.id, topo.pattern.host(&m.id)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            format!(
                "Aurora topology (logged in on {}): writer {}; readers {}; new connections go to {}",
                report.instance,
                list(true),
                Some(list(false)).filter(|r| !r.is_empty()).unwrap_or_else(|| "none".into()),
                match topo.role {
                    Role::Writer => "the writer",
                    Role::Reader => "the readers in turn",
                }
            )
        }
        Ok(Err(probe::ProbeError::NotAurora)) => {
            "not Aurora (no aurora_replica_status()): the endpoint is used as it is".to_owned()
        }
        Ok(Err(e)) => format!("topology unknown: {e}"),
        Err(_) => "topology unknown: no answer in time".to_owned(),
    }
}
