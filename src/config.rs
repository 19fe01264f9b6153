//! Configuration: one set of settings read from flags, `PG_IAM_PROXY_*` environment variables
//! and a TOML file, in that order of precedence, validated into a [`Config`].
//!
//! The file has three optional parts: `[proxy]` (process-wide settings), `[defaults]` (target
//! settings every target inherits) and `[[targets]]` (one listener each). Without targets
//! the flags and `[defaults]` describe a single target. Unknown keys are errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::iam::RoleSpec;

/// How the upstream certificate is checked. There is no mode without TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Chain to the CA and host name must match (default).
    VerifyFull,
    /// Chain to the CA only.
    VerifyCa,
}

impl std::fmt::Display for TlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::VerifyFull => "verify-full",
            Self::VerifyCa => "verify-ca",
        })
    }
}

/// Settings of one target (a listener and the database behind it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct TargetArgs {
    /// Name used in logs and metrics (file only; default: the upstream host).
    #[arg(skip)]
    pub name: Option<String>,
    /// Local TCP address to listen on [default: 127.0.0.1:5432].
    #[arg(long, env = "PG_IAM_PROXY_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Also listen on DIR/.s.PGSQL.<listen port>, so `psql -h DIR` works.
    #[arg(long, env = "PG_IAM_PROXY_UNIX_SOCKET", value_name = "DIR")]
    pub unix_socket: Option<PathBuf>,
    /// Database endpoint host name (cluster, reader or instance endpoint).
    #[arg(long, env = "PG_IAM_PROXY_HOST")]
    pub host: Option<String>,
    /// Database port [default: 5432].
    #[arg(long, env = "PG_IAM_PROXY_PORT")]
    pub port: Option<u16>,
    /// AWS region of the database [default: AWS config/env region, else inferred from host].
    #[arg(long, env = "PG_IAM_PROXY_REGION")]
    pub region: Option<String>,
    /// PEM file with the CA certificates that sign the server's certificate (for RDS: the
    /// regional or global bundle) [default: the system trust store].
    #[arg(long, env = "PG_IAM_PROXY_CA_FILE", value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Upstream certificate check [default: verify-full].
    #[arg(long, env = "PG_IAM_PROXY_TLS_MODE", value_enum)]
    pub tls_mode: Option<TlsMode>,
    /// Upstream database user for every client [default: the user the client sent].
    #[arg(long, env = "PG_IAM_PROXY_DB_USER", value_name = "USER")]
    pub db_user: Option<String>,
    /// IAM role to assume (STS) before signing.
    #[arg(long, env = "PG_IAM_PROXY_ROLE_ARN", value_name = "ARN")]
    pub role_arn: Option<String>,
    /// Session name for the assumed role.
    #[arg(long, env = "PG_IAM_PROXY_ROLE_SESSION_NAME", value_name = "NAME")]
    pub role_session_name: Option<String>,
    /// External ID required by the role's trust policy.
    #[arg(long, env = "PG_IAM_PROXY_EXTERNAL_ID", value_name = "ID")]
    pub external_id: Option<String>,
}

impl TargetArgs {
    /// Field-wise: `self` where set, else `other`.
    fn or(&self, other: &TargetArgs) -> TargetArgs {
        let o = other.clone();
        let s = self.clone();
        TargetArgs {
            name: s.name.or(o.name),
            listen: s.listen.or(o.listen),
            unix_socket: s.unix_socket.or(o.unix_socket),
            host: s.host.or(o.host),
            port: s.port.or(o.port),
            region: s.region.or(o.region),
            ca_file: s.ca_file.or(o.ca_file),
            tls_mode: s.tls_mode.or(o.tls_mode),
            db_user: s.db_user.or(o.db_user),
            role_arn: s.role_arn.or(o.role_arn),
            role_session_name: s.role_session_name.or(o.role_session_name),
            external_id: s.external_id.or(o.external_id),
        }
    }
}

/// Process-wide settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ProxyArgs {
    /// Time a client has to complete the startup handshake [default: 10s].
    #[arg(long, env = "PG_IAM_PROXY_HANDSHAKE_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub handshake_timeout: Option<Duration>,
    /// Time allowed to connect and log in upstream (DNS, TCP, TLS, auth) [default: 15s].
    #[arg(long, env = "PG_IAM_PROXY_CONNECT_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    /// On SIGTERM/SIGINT, keep accepting for this long (readiness is already 503) so load
    /// balancers catch up [default: 0s].
    #[arg(long, env = "PG_IAM_PROXY_MIN_SHUTDOWN_DELAY", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub min_shutdown_delay: Option<Duration>,
    /// Then let open sessions finish for at most this long before they are cut [default: 30s].
    #[arg(long, env = "PG_IAM_PROXY_MAX_SHUTDOWN_DELAY", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub max_shutdown_delay: Option<Duration>,
    /// Close sessions with no traffic either way for this long [default: never].
    #[arg(long, env = "PG_IAM_PROXY_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// TCP keepalive idle time on client and upstream sockets; 0s turns it off [default: 60s].
    #[arg(long, env = "PG_IAM_PROXY_TCP_KEEPALIVE", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub tcp_keepalive: Option<Duration>,
    /// Serve /startup, /liveness, /readiness and /metrics on this address [default: off].
    #[arg(long, env = "PG_IAM_PROXY_HTTP_ADDR", value_name = "ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Enable `POST /quitquitquit` on the HTTP address to start a graceful shutdown.
    #[arg(long, env = "PG_IAM_PROXY_QUITQUITQUIT", num_args = 0..=1, default_missing_value = "true")]
    pub quitquitquit: Option<bool>,
    /// Tokens are replaced this long before they expire [default: 60s].
    #[arg(long, env = "PG_IAM_PROXY_TOKEN_REFRESH_MARGIN", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub token_refresh_margin: Option<Duration>,
    /// Maximum concurrent client connections over all targets; 0 = unlimited [default: 0].
    #[arg(long, env = "PG_IAM_PROXY_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
}

/// The TOML file's shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Process-wide settings.
    #[serde(default)]
    pub proxy: ProxyArgs,
    /// Settings every target inherits.
    #[serde(default)]
    pub defaults: TargetArgs,
    /// The targets; none means one target from flags and `[defaults]`.
    #[serde(default)]
    pub targets: Vec<TargetArgs>,
}

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
    /// See [`ProxyArgs::token_refresh_margin`].
    pub token_refresh_margin: Duration,
    /// See [`ProxyArgs::max_connections`]; 0 = unlimited.
    pub max_connections: usize,
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
    let proxy = ProxySettings {
        handshake_timeout: c
            .handshake_timeout
            .or(f.handshake_timeout)
            .unwrap_or(secs(10)),
        connect_timeout: c.connect_timeout.or(f.connect_timeout).unwrap_or(secs(15)),
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
        token_refresh_margin: c
            .token_refresh_margin
            .or(f.token_refresh_margin)
            .unwrap_or(secs(60)),
        max_connections: c.max_connections.or(f.max_connections).unwrap_or(0),
    };
    if proxy.quitquitquit && proxy.http_addr.is_none() {
        return Err(ConfigError::Invalid(
            "--quitquitquit needs --http-addr".into(),
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
    Ok(Config { proxy, targets })
}

fn target(t: TargetArgs) -> Result<Target, ConfigError> {
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

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
