//! A login through the topology: to the endpoint [`Topology::route`] picks (the writer's
//! instance endpoint, a reader's, or the target's own endpoint while the topology is not
//! known), with a token signed for that name. A login that fails like an instance going away
//! (refused, reset, 57P01/57P02/57P03) reports a fault and, once the switch is done, is tried
//! again on the new route, within the same connect timeout: clients that arrive during a
//! failover wait instead of failing. The first successful login starts the monitor.

use std::sync::Arc;
use tokio::time::Instant;

use super::{monitor, Detected, Topology};
use crate::client::StartupInfo;
use crate::target::TargetContext;
use crate::upstream::exchange::server_error;
use crate::upstream::login::{open_at, Failure, ServerConn};

/// Logins tried per client: the first, and after up to two switches.
const ATTEMPTS: usize = 3;

/// Whether a failed login looks like its instance went away (rather than, say, a refused
/// token or a missing database).
pub fn is_fault(f: &Failure) -> bool {
    match f {
        Failure::Client(_, reason) => {
            matches!(*reason, "connect" | "dns" | "tls" | "protocol" | "timeout")
        }
        Failure::Server(frame, _) => server_error(frame.clone())
            .is_ok_and(|e| matches!(e.code.as_str(), "57P01" | "57P02" | "57P03")),
    }
}

/// Logs in as `user` through the topology of `ctx`.
pub async fn open(
    ctx: &TargetContext,
    topo: &Arc<Topology>,
    user: String,
    info: &StartupInfo,
) -> Result<ServerConn, Failure> {
    let deadline = Instant::now() + ctx.settings.connect_timeout;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let ep = topo
            .route(deadline)
            .await
            .unwrap_or_else(|| ctx.endpoint.clone());
        match open_at(ctx, ep.clone(), user.clone(), info).await {
            Ok(conn) => {
                if topo.claim_monitor() {
                    monitor::spawn(ctx.me.clone(), topo.clone(), user, info.database.clone());
                }
                return Ok(conn);
            }
            Err(f) if attempt < ATTEMPTS && is_fault(&f) && topo.detected() == Detected::Aurora => {
                tracing::info!(endpoint = %ep.describe(), error = %f, "login failed like a failover; waiting for the switch");
                topo.fault("login");
            }
            Err(f) => return Err(f),
        }
    }
}
