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
use crate::upstream::connect_to::ConnectTo;
use crate::upstream::topology::HostPattern;
use checks::{check_local_listeners, check_unique_listeners, ids, socket_mode};

mod args;
mod checks;
pub use args::{FileConfig, IdSpec, PoolMode, ProxyArgs, TargetArgs, TlsMode};

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
    /// See [`ProxyArgs::client_tls_cert`].
    pub client_tls_cert: Option<PathBuf>,
    /// See [`ProxyArgs::client_tls_key`].
    pub client_tls_key: Option<PathBuf>,
    /// See [`ProxyArgs::client_auth_file`].
    pub client_auth_file: Option<PathBuf>,
    /// See [`ProxyArgs::client_ca_file`].
    pub client_ca_file: Option<PathBuf>,
    /// See [`ProxyArgs::allow_uid`] (resolved at start-up).
    pub allow_uid: Vec<String>,
    /// See [`ProxyArgs::allow_gid`] (resolved at start-up).
    pub allow_gid: Vec<String>,
    /// See [`ProxyArgs::allow_any_local_user`].
    pub allow_any_local_user: bool,
    /// See [`ProxyArgs::token_refresh_margin`].
    pub token_refresh_margin: Duration,
    /// See [`ProxyArgs::max_connections`]; 0 = unlimited.
    pub max_connections: usize,
    /// See [`ProxyArgs::max_concurrent_logins`]; at least 1.
    pub max_concurrent_logins: usize,
    /// See [`ProxyArgs::login_queue_timeout`].
    pub login_queue_timeout: Duration,
    /// See [`ProxyArgs::connect_to`]: the rules, in order.
    pub connect_to: Vec<ConnectTo>,
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
    /// The Unix socket's permission bits.
    pub unix_socket_mode: u32,
    /// The Unix socket's group, if any (resolved at start-up).
    pub unix_socket_group: Option<String>,
    /// See [`TargetArgs::user_map`].
    pub user_map: Option<PathBuf>,
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
    /// Aurora instance endpoints, when given (else derived from a cluster endpoint).
    pub instance_host_pattern: Option<HostPattern>,
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
        client_tls_cert: c.client_tls_cert.clone().or(f.client_tls_cert.clone()),
        client_tls_key: c.client_tls_key.clone().or(f.client_tls_key.clone()),
        client_auth_file: c.client_auth_file.clone().or(f.client_auth_file.clone()),
        client_ca_file: c.client_ca_file.clone().or(f.client_ca_file.clone()),
        allow_uid: ids(&c.allow_uid, &f.allow_uid),
        allow_gid: ids(&c.allow_gid, &f.allow_gid),
        allow_any_local_user: c
            .allow_any_local_user
            .or(f.allow_any_local_user)
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
        connect_to: connect_to(c, f)?,
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
    if proxy.client_ca_file.is_some() && proxy.client_tls_cert.is_none() {
        return Err(ConfigError::Invalid(
            "--client-ca-file needs --client-tls-cert and --client-tls-key".into(),
        ));
    }
    if proxy.client_tls_cert.is_some() != proxy.client_tls_key.is_some() {
        return Err(ConfigError::Invalid(
            "--client-tls-cert and --client-tls-key go together".into(),
        ));
    }
    check_local_listeners(&targets, &proxy)?;
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

/// The `--connect-to` rules (flags/env replace the file's list), parsed.
fn connect_to(c: &ProxyArgs, f: &ProxyArgs) -> Result<Vec<ConnectTo>, ConfigError> {
    let given = c.connect_to.as_ref().or(f.connect_to.as_ref());
    given
        .into_iter()
        .flatten()
        .map(|r| {
            r.parse()
                .map_err(|e: crate::upstream::connect_to::ConnectToError| {
                    ConfigError::Invalid(e.to_string())
                })
        })
        .collect()
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
    let instance_host_pattern = t
        .instance_host_pattern
        .as_deref()
        .map(HostPattern::parse)
        .transpose()
        .map_err(|e| ConfigError::Invalid(e.to_string()))?;
    let role = t.role_arn.map(|arn| RoleSpec {
        arn,
        session_name: t.role_session_name,
        external_id: t.external_id,
    });
    Ok(Target {
        name: t.name.unwrap_or_else(|| host.clone()),
        listen: t.listen.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 5432))),
        unix_socket_mode: socket_mode(t.unix_socket_mode.as_deref(), &t.unix_socket_group)?,
        unix_socket: t.unix_socket,
        unix_socket_group: t.unix_socket_group,
        user_map: t.user_map,
        port: t.port.unwrap_or(5432),
        host,
        region: t.region,
        ca_file: t.ca_file,
        tls_mode: t.tls_mode.unwrap_or(TlsMode::VerifyFull),
        db_user: t.db_user,
        role,
        pool,
        instance_host_pattern,
    })
}

#[cfg(test)]
mod tests;
