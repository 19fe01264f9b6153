//! Command line: `run` (the default: plain `pg-iam-proxy --host ...` works too) and `token`.
//! Every `run` flag also reads `PG_IAM_PROXY_<FLAG>`; flags beat the environment, which
//! beats the config file.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{ProxyArgs, TargetArgs};

/// Top-level command line.
#[derive(Debug, Parser)]
#[command(
    name = "pg-iam-proxy",
    version,
    about = "Postgres proxy that logs in to AWS Aurora/RDS with IAM database authentication",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `run`'s flags, accepted without the subcommand.
    #[command(flatten)]
    pub run: RunArgs,
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "PG_IAM_PROXY_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// Runtime threads; 1 runs everything on one thread [default: one per CPU core].
    #[arg(
        long,
        global = true,
        env = "PG_IAM_PROXY_WORKER_THREADS",
        value_name = "N"
    )]
    pub worker_threads: Option<usize>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable text.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    Run(Box<RunArgs>),
    /// Print one IAM auth token on stdout (like `aws rds generate-db-auth-token`).
    Token(TokenArgs),
    /// Check the configuration, credentials, DNS, TLS (and optionally a login); exit 1 on
    /// the first failure.
    Check(Box<CheckArgs>),
    /// Exit 0 once a running proxy's /startup answers 200 (start-up ordering).
    Wait(WaitArgs),
    /// Set up (or tear down) IAM database authentication: the database user, the IAM role.
    #[command(subcommand)]
    Setup(SetupCommand),
    /// Show the AWS identity (account, ARN) whose credentials the proxy would use.
    Whoami(WhoamiArgs),
    /// Print a `--client-auth-file` line (`"user" "SCRAM-SHA-256$..."`) for a password read
    /// from the terminal, never from the command line.
    ScramVerifier(ScramVerifierArgs),
}

/// `scram-verifier` arguments.
#[derive(Debug, Clone, Args)]
pub struct ScramVerifierArgs {
    /// The remote client's user name.
    pub user: String,
    /// Read the password from the first line of standard input instead of the terminal
    /// (for scripts).
    #[arg(long)]
    pub password_stdin: bool,
}

/// `setup` subcommands.
#[derive(Debug, Subcommand)]
pub enum SetupCommand {
    /// Create the IAM database user (CREATE ROLE ... WITH LOGIN; GRANT rds_iam), or --drop it.
    DbUser(DbUserArgs),
    /// Create the IAM policy (rds-db:connect) and a role carrying it, or --delete them.
    Iam(IamArgs),
}

/// `setup db-user` flags. The master password comes from PGPASSWORD or a prompt.
#[derive(Debug, Clone, Args)]
pub struct DbUserArgs {
    /// Database endpoint.
    #[arg(long)]
    pub host: String,
    /// Database port.
    #[arg(long, default_value_t = 5432)]
    pub port: u16,
    /// Master (admin) user to connect as.
    #[arg(long, value_name = "USER")]
    pub master_user: String,
    /// The IAM database user to create.
    #[arg(long, default_value = "iam_dbuser")]
    pub user: String,
    /// Also GRANT CONNECT on this database (and connect to it).
    #[arg(long)]
    pub database: Option<String>,
    /// CA certificates for the server certificate [default: the system trust store].
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Certificate check.
    #[arg(long, value_enum, default_value = "verify-full")]
    pub tls_mode: crate::config::TlsMode,
    /// Drop the user instead (refused while it owns objects).
    #[arg(long)]
    pub drop: bool,
}

/// `setup iam` flags.
#[derive(Debug, Clone, Args)]
pub struct IamArgs {
    /// AWS account ID of the database.
    #[arg(long)]
    pub account: String,
    /// The cluster's resource ID (cluster-XXXX; `aws rds describe-db-clusters`).
    #[arg(long)]
    pub resource_id: String,
    /// Database user the policy allows.
    #[arg(long, default_value = "iam_dbuser")]
    pub user: String,
    /// Region of the database [default: AWS config/env region].
    #[arg(long)]
    pub region: Option<String>,
    /// Role name.
    #[arg(long, default_value = "rdsa-iam-dbuser-role")]
    pub role_name: String,
    /// Policy name.
    #[arg(long, default_value = "rdsa-iam-dbuser-policy")]
    pub policy_name: String,
    /// Principal ARN allowed to assume the role [default: the account root].
    #[arg(long, value_name = "ARN")]
    pub trust: Option<String>,
    /// Print the policy and trust documents; call nothing.
    #[arg(long, conflicts_with = "delete")]
    pub print: bool,
    /// Detach and delete the role and the policy.
    #[arg(long)]
    pub delete: bool,
}

/// `whoami` flags.
#[derive(Debug, Clone, Args)]
pub struct WhoamiArgs {
    /// Show the identity after assuming a role.
    #[command(flatten)]
    pub role: RoleArgs,
    /// Region for STS [default: AWS config/env region].
    #[arg(long)]
    pub region: Option<String>,
}

/// `check` flags: every `run` flag, plus the login check.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// The configuration to check (same flags as `run`).
    #[command(flatten)]
    pub run: RunArgs,
    /// Also log in to each target.
    #[arg(long)]
    pub login: bool,
    /// User for --login when the target has no --db-user.
    #[arg(long, value_name = "USER")]
    pub login_user: Option<String>,
    /// Database for --login.
    #[arg(long, default_value = "postgres")]
    pub database: String,
}

/// `wait` flags.
#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// Give up after this long.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub max: std::time::Duration,
    /// The proxy's --http-addr.
    #[arg(long, env = "PG_IAM_PROXY_HTTP_ADDR", default_value = "127.0.0.1:9090")]
    pub http_addr: std::net::SocketAddr,
}

/// `run` flags.
#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    /// TOML config file (see config/).
    #[arg(long, env = "PG_IAM_PROXY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Process-wide settings.
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// Target settings.
    #[command(flatten)]
    pub target: TargetArgs,
}

/// `token` flags.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// Database endpoint host name, exactly as clients connect to it.
    #[arg(long, visible_alias = "hostname")]
    pub host: String,
    /// Database port.
    #[arg(long, default_value_t = 5432)]
    pub port: u16,
    /// Database user.
    #[arg(long, visible_alias = "username")]
    pub user: String,
    /// Region [default: AWS config/env region, else inferred from the host].
    #[arg(long)]
    pub region: Option<String>,
    /// The role to assume, if any.
    #[command(flatten)]
    pub role: RoleArgs,
}

/// Assume-role flags of `token` and `whoami`.
#[derive(Debug, Clone, Args)]
pub struct RoleArgs {
    /// IAM role to assume first.
    #[arg(long, value_name = "ARN")]
    pub role_arn: Option<String>,
    /// Session name for the assumed role.
    #[arg(long, requires = "role_arn")]
    pub role_session_name: Option<String>,
    /// External ID for the assumed role.
    #[arg(long, requires = "role_arn")]
    pub external_id: Option<String>,
}

impl RoleArgs {
    /// The role, when `--role-arn` was given.
    pub fn spec(&self) -> Option<crate::iam::RoleSpec> {
        self.role_arn.as_ref().map(|arn| crate::iam::RoleSpec {
            arn: arn.clone(),
            session_name: self.role_session_name.clone(),
            external_id: self.external_id.clone(),
        })
    }
}
