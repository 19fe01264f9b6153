//! Configuration: one set of settings read from flags, `PG_IAM_PROXY_*` environment variables
//! and a TOML file, in that order of precedence, validated into a [`Config`].
//!
//! The file has three optional parts: `[proxy]` (process-wide settings), `[defaults]` (target
//! settings every target inherits) and `[[targets]]` (one listener each). Without targets
//! the flags and `[defaults]` describe a single target. Unknown keys are errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::iam::RoleSpec;

mod args;
pub use args::{FileConfig, PoolMode, ProxyArgs, TargetArgs, TlsMode};

/// Invalid configuration, with what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown keys included).
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// A semantic problem.
    #[error("{0}")]
    Invalid(String),
}

/// Process-wide settings, defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySettings {
    /// See [`ProxyArgs::handshake_timeout`].
    pub handshake_timeout: Duration,
    /// See [`ProxyArgs::connect_timeout`].
    pub connect_timeout: Duration,
    /// See [`ProxyArgs::credentials_timeout`].
    pub credentials_timeout: Duration,
    /// See [`ProxyArgs::min_shutdown_delay`].
    pub min_shutdown_delay: Duration,
    /// See [`ProxyArgs::max_shutdown_delay`].
    pub max_shutdown_delay: Duration,
    /// See [`ProxyArgs::idle_timeout`].
    pub idle_timeout: Option<Duration>,
    /// See [`ProxyArgs::tcp_keepalive`]; `None` = off.
    pub tcp_keepalive: Option<Duration>,
    /// See [`ProxyArgs::http_addr`].
    pub http_addr: Option<SocketAddr>,
    /// See [`ProxyArgs::quitquitquit`].
    pub quitquitquit: bool,
    /// See [`ProxyArgs::allow_remote_clients`].
    pub allow_remote_clients: bool,
    /// See [`ProxyArgs::token_refresh_margin`].
    pub token_refresh_margin: Duration,
    /// See [`ProxyArgs::max_connections`]; 0 = unlimited.
    pub max_connections: usize,
    /// See [`ProxyArgs::max_concurrent_logins`]; at least 1.
    pub max_concurrent_logins: usize,
    /// See [`ProxyArgs::login_queue_timeout`].
    pub login_queue_timeout: Duration,
}

/// One validated target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Name for logs.
    pub name: String,
    /// TCP listen address.
    pub listen: SocketAddr,
    /// Unix socket directory, if any.
    pub unix_socket: Option<PathBuf>,
    /// Upstream host.
    pub host: String,
    /// Upstream port.
    pub port: u16,
    /// Region given explicitly (resolution against the SDK happens at start-up).
    pub region: Option<String>,
    /// CA file, or `None` for the system trust store.
    pub ca_file: Option<PathBuf>,
    /// Certificate check.
    pub tls_mode: TlsMode,
    /// Fixed upstream user, or `None` to use the client's.
    pub db_user: Option<String>,
    /// Role to assume.
    pub role: Option<RoleSpec>,
    /// Server connection pooling.
    pub pool: PoolConfig,
}

/// A target's pool settings, defaults applied (PgBouncer's meanings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// See [`TargetArgs::pool_mode`].
    pub mode: PoolMode,
    /// See [`TargetArgs::pool_size`]; at least 1.
    pub size: usize,
    /// See [`TargetArgs::pool_min_idle`]; at most `size`.
    pub min_idle: usize,
    /// See [`TargetArgs::server_idle_timeout`].
    pub idle_timeout: Duration,
    /// See [`TargetArgs::server_lifetime`].
    pub lifetime: Duration,
    /// See [`TargetArgs::server_reset_query`].
    pub reset_query: String,
    /// See [`TargetArgs::pool_timeout`].
    pub timeout: Duration,
}

fn pool_config(t: &TargetArgs) -> Result<PoolConfig, ConfigError> {
    let secs = Duration::from_secs;
    let pool = PoolConfig {
        mode: t.pool_mode.unwrap_or(PoolMode::Session),
        size: t.pool_size.unwrap_or(50),
        min_idle: t.pool_min_idle.unwrap_or(0),
        idle_timeout: t.server_idle_timeout.unwrap_or(secs(600)),
        lifetime: t.server_lifetime.unwrap_or(secs(3600)),
        reset_query: t
            .server_reset_query
            .clone()
            .unwrap_or_else(|| "DISCARD ALL".into()),
        timeout: t.pool_timeout.unwrap_or(secs(60)),
    };
    let invalid = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
    if pool.size == 0 {
        return invalid("pool_size must be at least 1");
    }
    if pool.min_idle > pool.size {
        return invalid("pool_min_idle cannot exceed pool_size");
    }
    if pool.reset_query.trim().is_empty() {
        return invalid("server_reset_query cannot be empty (DISCARD ALL is the default)");
    }
    if pool.lifetime.is_zero() || pool.timeout.is_zero() {
        return invalid("server_lifetime and pool_timeout must be more than 0s");
    }
    Ok(pool)
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Process-wide settings.
    pub proxy: ProxySettings,
    /// At least one target.
    pub targets: Vec<Target>,
}

/// Reads and parses a config file.
pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

/// Merges flags/env (`cli_*`) over the file and validates.
pub fn build(
    cli_proxy: &ProxyArgs,
    cli_target: &TargetArgs,
    file: &FileConfig,
) -> Result<Config, ConfigError> {
    let (c, f) = (cli_proxy, &file.proxy);
    let secs = Duration::from_secs;
    let connect_timeout = c.connect_timeout.or(f.connect_timeout).unwrap_or(secs(15));
    let proxy = ProxySettings {
        handshake_timeout: c
            .handshake_timeout
            .or(f.handshake_timeout)
            .unwrap_or(secs(10)),
        connect_timeout,
        credentials_timeout: credentials_timeout(c, f, connect_timeout)?,
        min_shutdown_delay: c
            .min_shutdown_delay
            .or(f.min_shutdown_delay)
            .unwrap_or_default(),
        max_shutdown_delay: c
            .max_shutdown_delay
            .or(f.max_shutdown_delay)
            .unwrap_or(secs(30)),
        idle_timeout: c.idle_timeout.or(f.idle_timeout).filter(|d| !d.is_zero()),
        tcp_keepalive: Some(c.tcp_keepalive.or(f.tcp_keepalive).unwrap_or(secs(60)))
            .filter(|d| !d.is_zero()),
        http_addr: c.http_addr.or(f.http_addr),
        quitquitquit: c.quitquitquit.or(f.quitquitquit).unwrap_or(false),
        allow_remote_clients: c
            .allow_remote_clients
            .or(f.allow_remote_clients)
            .unwrap_or(false),
        token_refresh_margin: c
            .token_refresh_margin
            .or(f.token_refresh_margin)
            .unwrap_or(secs(60)),
        max_connections: c.max_connections.or(f.max_connections).unwrap_or(0),
        max_concurrent_logins: c
            .max_concurrent_logins
            .or(f.max_concurrent_logins)
            .unwrap_or(16),
        login_queue_timeout: c
            .login_queue_timeout
            .or(f.login_queue_timeout)
            .unwrap_or(secs(60)),
    };
    if proxy.quitquitquit && proxy.http_addr.is_none() {
        return Err(ConfigError::Invalid(
            "--quitquitquit needs --http-addr".into(),
        ));
    }
    if proxy.max_concurrent_logins == 0 {
        return Err(ConfigError::Invalid(
            "max_concurrent_logins must be at least 1".into(),
        ));
    }
    if proxy.token_refresh_margin >= Duration::from_secs(400) {
        return Err(ConfigError::Invalid(
            "token_refresh_margin must be under 400s (tokens live 900s)".into(),
        ));
    }
    let file_targets = if file.targets.is_empty() {
        vec![TargetArgs::default()]
    } else {
        file.targets.clone()
    };
    let single = [
        &cli_target.listen.is_some(),
        &cli_target.unix_socket.is_some(),
        &cli_target.host.is_some(),
    ];
    if file_targets.len() > 1 && single.iter().any(|b| **b) {
        return Err(ConfigError::Invalid(format!(
            "--listen, --unix-socket and --host describe one target, but the config file declares {}",
            file_targets.len()
        )));
    }
    let targets = file_targets
        .iter()
        .map(|t| target(cli_target.or(t).or(&file.defaults)))
        .collect::<Result<Vec<_>, _>>()?;
    check_unique_listeners(&targets)?;
    if !proxy.allow_remote_clients {
        check_local_listeners(&targets)?;
    }
    Ok(Config { proxy, targets })
}

/// The credentials timeout: given, or 5 s but at most half the connect timeout; it must
/// end before the connect timeout so a login that waits for STS hears why it failed.
fn credentials_timeout(
    c: &ProxyArgs,
    f: &ProxyArgs,
    connect_timeout: Duration,
) -> Result<Duration, ConfigError> {
    let Some(given) = c.credentials_timeout.or(f.credentials_timeout) else {
        return Ok(crate::iam::DEFAULT_CREDENTIALS_TIMEOUT.min(connect_timeout / 2));
    };
    if given.is_zero() || given >= connect_timeout {
        return Err(ConfigError::Invalid(format!(
            "credentials_timeout ({}) must be above 0 and under connect_timeout ({})",
            humantime::format_duration(given),
            humantime::format_duration(connect_timeout)
        )));
    }
    Ok(given)
}

fn target(t: TargetArgs) -> Result<Target, ConfigError> {
    let pool = pool_config(&t)?;
    let host = t.host.filter(|h| !h.is_empty()).ok_or_else(|| {
        ConfigError::Invalid("no database host: pass --host (or host in the config file)".into())
    })?;
    if t.role_arn.is_none() && (t.role_session_name.is_some() || t.external_id.is_some()) {
        return Err(ConfigError::Invalid(
            "--role-session-name and --external-id need --role-arn".into(),
        ));
    }
    let role = t.role_arn.map(|arn| RoleSpec {
        arn,
        session_name: t.role_session_name,
        external_id: t.external_id,
    });
    Ok(Target {
        name: t.name.unwrap_or_else(|| host.clone()),
        listen: t.listen.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 5432))),
        unix_socket: t.unix_socket,
        port: t.port.unwrap_or(5432),
        host,
        region: t.region,
        ca_file: t.ca_file,
        tls_mode: t.tls_mode.unwrap_or(TlsMode::VerifyFull),
        db_user: t.db_user,
        role,
        pool,
    })
}

fn check_unique_listeners(targets: &[Target]) -> Result<(), ConfigError> {
    for (i, a) in targets.iter().enumerate() {
        for b in &targets[i + 1..] {
            if a.listen == b.listen && a.listen.port() != 0 {
                return Err(ConfigError::Invalid(format!(
                    "targets {} and {} both listen on {}",
                    a.name, b.name, a.listen
                )));
            }
        }
    }
    Ok(())
}

/// Every client of a target logs in as its IAM database user without a password, so a
/// listener the network can reach needs the user's explicit consent.
fn check_local_listeners(targets: &[Target]) -> Result<(), ConfigError> {
    match targets
        .iter()
        .find(|t| !t.listen.ip().to_canonical().is_loopback())
    {
        Some(t) => Err(ConfigError::Invalid(format!(
            "target {} listens on {}, which clients on the network can reach, and they would use \
             the database as its IAM user with no password. Listen on 127.0.0.1 (or a Unix \
             socket), or add --allow-remote-clients if every host that can reach it may",
            t.name, t.listen
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests;
