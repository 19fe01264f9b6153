//! The settings as written: flags and environment variables (clap) and the TOML file
//! (serde), all optional; [`super::build`] merges and validates them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

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
    /// The Unix socket's permission bits, in octal; it is created with them, never wider
    /// [default: 0600, or 0660 with --unix-socket-group].
    #[arg(long, env = "PG_IAM_PROXY_UNIX_SOCKET_MODE", value_name = "OCTAL")]
    pub unix_socket_mode: Option<String>,
    /// Group (name or gid) that owns the Unix socket, so its members can connect.
    #[arg(long, env = "PG_IAM_PROXY_UNIX_SOCKET_GROUP", value_name = "GROUP")]
    pub unix_socket_group: Option<String>,
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
    /// Which database users each client may become: lines `client-identity db-user`
    /// (pg_ident style; `*` and `/regex` identities, `*` for any db user) [default: the
    /// proxy's own OS user and root any, everyone else the one named like their OS user].
    #[arg(long, env = "PG_IAM_PROXY_USER_MAP", value_name = "FILE")]
    pub user_map: Option<PathBuf>,
    /// IAM role to assume (STS) before signing.
    #[arg(long, env = "PG_IAM_PROXY_ROLE_ARN", value_name = "ARN")]
    pub role_arn: Option<String>,
    /// Session name for the assumed role.
    #[arg(long, env = "PG_IAM_PROXY_ROLE_SESSION_NAME", value_name = "NAME")]
    pub role_session_name: Option<String>,
    /// External ID required by the role's trust policy.
    #[arg(long, env = "PG_IAM_PROXY_EXTERNAL_ID", value_name = "ID")]
    pub external_id: Option<String>,
    /// Server connections: `session` reuses them across client sessions, `none` logs in
    /// anew for every client [default: session].
    #[arg(long, env = "PG_IAM_PROXY_POOL_MODE", value_enum)]
    pub pool_mode: Option<PoolMode>,
    /// Server connections per pool (target, user, database, options) [default: 50].
    #[arg(long, env = "PG_IAM_PROXY_POOL_SIZE", value_name = "N")]
    pub pool_size: Option<usize>,
    /// Server connections per pool kept open and idle, ready for the next client [default: 0].
    #[arg(long, env = "PG_IAM_PROXY_POOL_MIN_IDLE", value_name = "N")]
    pub pool_min_idle: Option<usize>,
    /// Idle server connections beyond the minimum are closed after this long [default: 600s].
    #[arg(long, env = "PG_IAM_PROXY_SERVER_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub server_idle_timeout: Option<Duration>,
    /// No server connection older than this is handed out; it is closed instead [default: 3600s].
    #[arg(long, env = "PG_IAM_PROXY_SERVER_LIFETIME", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub server_lifetime: Option<Duration>,
    /// Run on a server connection before the next client gets it [default: DISCARD ALL].
    #[arg(long, env = "PG_IAM_PROXY_SERVER_RESET_QUERY", value_name = "SQL")]
    pub server_reset_query: Option<String>,
    /// How long a client waits for a server connection of a full pool before it gets
    /// SQLSTATE 53300 [default: 60s].
    #[arg(long, env = "PG_IAM_PROXY_POOL_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub pool_timeout: Option<Duration>,
    /// Aurora instance endpoints: `?` stands for the instance identifier. Given, it turns
    /// topology routing on for any host; by default a cluster endpoint
    /// `NAME.cluster-ID.REGION.rds.amazonaws.com` gives `?.ID.REGION.rds.amazonaws.com`.
    #[arg(
        long,
        env = "PG_IAM_PROXY_INSTANCE_HOST_PATTERN",
        value_name = "PATTERN"
    )]
    pub instance_host_pattern: Option<String>,
}

/// How server connections are shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PoolMode {
    /// A fresh upstream login for every client session.
    None,
    /// A server connection serves one client session at a time, then is reset and reused.
    Session,
    /// A server connection serves one transaction at a time, then goes back (no reset).
    Transaction,
}

impl TargetArgs {
    /// Field-wise: `self` where set, else `other`.
    pub(super) fn or(&self, other: &TargetArgs) -> TargetArgs {
        let o = other.clone();
        let s = self.clone();
        TargetArgs {
            name: s.name.or(o.name),
            listen: s.listen.or(o.listen),
            unix_socket: s.unix_socket.or(o.unix_socket),
            unix_socket_mode: s.unix_socket_mode.or(o.unix_socket_mode),
            unix_socket_group: s.unix_socket_group.or(o.unix_socket_group),
            user_map: s.user_map.or(o.user_map),
            host: s.host.or(o.host),
            port: s.port.or(o.port),
            region: s.region.or(o.region),
            ca_file: s.ca_file.or(o.ca_file),
            tls_mode: s.tls_mode.or(o.tls_mode),
            db_user: s.db_user.or(o.db_user),
            role_arn: s.role_arn.or(o.role_arn),
            role_session_name: s.role_session_name.or(o.role_session_name),
            external_id: s.external_id.or(o.external_id),
            pool_mode: s.pool_mode.or(o.pool_mode),
            pool_size: s.pool_size.or(o.pool_size),
            pool_min_idle: s.pool_min_idle.or(o.pool_min_idle),
            server_idle_timeout: s.server_idle_timeout.or(o.server_idle_timeout),
            server_lifetime: s.server_lifetime.or(o.server_lifetime),
            server_reset_query: s.server_reset_query.or(o.server_reset_query),
            pool_timeout: s.pool_timeout.or(o.pool_timeout),
            instance_host_pattern: s.instance_host_pattern.or(o.instance_host_pattern),
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
    /// Time one credential fetch (STS AssumeRole, the credential chain) may take; a login
    /// that needs one fails with SQLSTATE 28000 after it. Must be under connect-timeout
    /// [default: 5s, at most half of connect-timeout].
    #[arg(long, env = "PG_IAM_PROXY_CREDENTIALS_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub credentials_timeout: Option<Duration>,
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
    /// Allow listening on a non-loopback address. Whoever can reach it connects as the IAM
    /// database user with no password [default: off: loopback and Unix sockets only].
    #[arg(long, env = "PG_IAM_PROXY_ALLOW_REMOTE_CLIENTS", num_args = 0..=1, default_missing_value = "true")]
    pub allow_remote_clients: Option<bool>,
    /// Certificate chain (PEM) the proxy shows clients that ask for TLS; required, with a
    /// client authentication, for a listener beyond loopback.
    #[arg(long, env = "PG_IAM_PROXY_CLIENT_TLS_CERT", value_name = "PEM")]
    pub client_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --client-tls-cert.
    #[arg(long, env = "PG_IAM_PROXY_CLIENT_TLS_KEY", value_name = "PEM")]
    pub client_tls_key: Option<PathBuf>,
    /// Remote clients authenticate with SCRAM-SHA-256 against this file, in PgBouncer's
    /// auth_file format: `"user" "SCRAM-SHA-256$..."` (`pg-iam-proxy scram-verifier` prints one).
    #[arg(long, env = "PG_IAM_PROXY_CLIENT_AUTH_FILE", value_name = "FILE")]
    pub client_auth_file: Option<PathBuf>,
    /// Remote clients may authenticate with a certificate signed by a CA in this PEM file;
    /// its subject's CN is the client identity.
    #[arg(long, env = "PG_IAM_PROXY_CLIENT_CA_FILE", value_name = "PEM")]
    pub client_ca_file: Option<PathBuf>,
    /// Also admit this local user (uid or name; repeatable). By default only the proxy's own
    /// OS user and root may connect.
    #[arg(
        long,
        env = "PG_IAM_PROXY_ALLOW_UID",
        value_name = "UID|NAME",
        value_delimiter = ','
    )]
    pub allow_uid: Option<Vec<IdSpec>>,
    /// Also admit local users in this group (gid or name; repeatable).
    #[arg(
        long,
        env = "PG_IAM_PROXY_ALLOW_GID",
        value_name = "GID|NAME",
        value_delimiter = ','
    )]
    pub allow_gid: Option<Vec<IdSpec>>,
    /// Admit every local user, without asking the kernel who connected.
    #[arg(long, env = "PG_IAM_PROXY_ALLOW_ANY_LOCAL_USER", num_args = 0..=1, default_missing_value = "true")]
    pub allow_any_local_user: Option<bool>,
    /// Tokens are replaced this long before they expire [default: 60s].
    #[arg(long, env = "PG_IAM_PROXY_TOKEN_REFRESH_MARGIN", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub token_refresh_margin: Option<Duration>,
    /// Maximum concurrent client connections over all targets; 0 = unlimited [default: 0].
    #[arg(long, env = "PG_IAM_PROXY_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Upstream connects + logins of one target running at once; more clients wait in
    /// arrival order [default: 16].
    #[arg(long, env = "PG_IAM_PROXY_MAX_CONCURRENT_LOGINS", value_name = "N")]
    pub max_concurrent_logins: Option<usize>,
    /// How long a client waits for a login slot before it is told the server is busy
    /// (SQLSTATE 53300) [default: 60s].
    #[arg(long, env = "PG_IAM_PROXY_LOGIN_QUEUE_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub login_queue_timeout: Option<Duration>,
    /// Connect to HOST2:PORT2 whenever the proxy would connect to HOST1:PORT1, while the IAM
    /// token is still signed for and the certificate verified against HOST1 (an SSH tunnel or
    /// bastion port forward). Repeatable; in the environment, comma-separated.
    #[arg(
        long,
        env = "PG_IAM_PROXY_CONNECT_TO",
        value_name = "HOST1:PORT1:HOST2:PORT2",
        value_delimiter = ','
    )]
    pub connect_to: Option<Vec<String>>,
}

/// A user or group by number or name: a flag's text, or in the file a string or an integer
/// (`allow_uid = [1000, "alice"]`). Resolved at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdSpec(pub String);

impl std::str::FromStr for IdSpec {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl From<&str> for IdSpec {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl<'de> Deserialize<'de> for IdSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Id(u32),
            Name(String),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::Id(n) => Self(n.to_string()),
            Raw::Name(s) => Self(s),
        })
    }
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
