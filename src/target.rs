//! One target's shared context: its settings, the upstream endpoint, the token cache and
//! cancel map (shared by all targets), its login gate and its metrics. Built once at start-up
//! (`app`), borrowed by every connection of the target.

use std::sync::Arc;

use crate::cancel::CancelMap;
use crate::config::ProxySettings;
use crate::gate::LoginGate;
use crate::iam::{RoleSpec, TokenCache};
use crate::metrics::TargetMetrics;
use crate::upstream::connect::Endpoint;

/// Everything a session of one target needs, shared by its connections.
#[derive(Debug)]
pub struct TargetContext {
    /// Name for logs.
    pub name: String,
    /// The database endpoint.
    pub endpoint: Arc<Endpoint>,
    /// Region to sign for.
    pub region: String,
    /// Fixed upstream user, if any.
    pub db_user: Option<String>,
    /// Role to assume, if any.
    pub role: Option<RoleSpec>,
    /// Shared token cache.
    pub cache: TokenCache,
    /// Shared cancel map.
    pub cancels: Arc<CancelMap>,
    /// Timeouts.
    pub settings: ProxySettings,
    /// Bounds concurrent upstream logins; the other clients wait in order.
    pub logins: LoginGate,
    /// This target's metrics.
    pub metrics: TargetMetrics,
}
