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
    /// IAM role to assume before signing.
    #[arg(long, value_name = "ARN")]
    pub role_arn: Option<String>,
    /// Session name for the assumed role.
    #[arg(long, requires = "role_arn")]
    pub role_session_name: Option<String>,
    /// External ID for the assumed role.
    #[arg(long, requires = "role_arn")]
    pub external_id: Option<String>,
}
