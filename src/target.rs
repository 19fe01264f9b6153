//! One target's shared context: its settings, the upstream endpoint, the token cache and
//! cancel map (shared by all targets), its login gate and its metrics. Built once at start-up
//! (`app`), borrowed by every connection of the target. In the pool modes it owns the
//! target's pools, whose connector holds the target weakly. On an Aurora cluster endpoint
//! it holds the topology, which decides where new connections go.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use crate::cancel::CancelMap;
use crate::config::{PoolConfig, PoolMode, ProxySettings};
use crate::frontend::access::{Access, DbUserRule};
use crate::gate::LoginGate;
use crate::iam::{RoleSpec, TokenCache};
use crate::metrics::TargetMetrics;
use crate::pool::{PoolKey, PoolMetrics, Pools, Settings};
use crate::upstream::connect::Endpoint;
use crate::upstream::params::ServerParams;
use crate::upstream::pooled::ServerConnector;
use crate::upstream::topology::Topology;

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
    /// Who may connect (process-wide).
    pub access: Arc<Access>,
    /// Which database users they may become.
    pub db_users: DbUserRule,
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
    /// Server connection pools (session mode), or `None` for a login per client.
    pub pooling: Option<Pooling>,
    /// The Aurora topology, for a target on a cluster or reader endpoint.
    pub topology: Option<Arc<Topology>>,
    /// This context, weakly (for the tasks it starts, such as the topology monitor).
    pub me: Weak<TargetContext>,
}

/// A target's pools and how they open connections.
#[derive(Debug)]
pub struct Pooling {
    /// The pools, one per (user, database, options).
    pub pools: Pools<ServerConnector>,
    /// Opens their connections (holds the target weakly).
    pub connector: ServerConnector,
    /// The settings (the reset query among them).
    pub config: PoolConfig,
    /// Transaction mode: each pool's ParameterStatus values from its first login, the
    /// greeting of clients that get no server connection of their own.
    pub baselines: Mutex<HashMap<PoolKey, ServerParams>>,
}

impl Pooling {
    /// The pools of target `ctx` (which `ctx` will point to once built) for `config`, or
    /// `None` in pool mode `none`.
    pub fn new(
        ctx: &Weak<TargetContext>,
        name: &str,
        config: &PoolConfig,
        metrics: Arc<PoolMetrics>,
    ) -> Option<Self> {
        if config.mode == PoolMode::None {
            return None;
        }
        let settings = Settings {
            size: config.size,
            min_idle: config.min_idle,
            idle_timeout: config.idle_timeout,
            lifetime: config.lifetime,
            wait_timeout: config.timeout,
            ..Settings::default()
        };
        Some(Self {
            pools: Pools::new(name, settings, metrics),
            connector: ServerConnector::new(ctx.clone()),
            config: config.clone(),
            baselines: Mutex::default(),
        })
    }
}
