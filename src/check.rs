//! `pg-iam-proxy check`: validates the configuration and walks every step a connection will
//! take, stopping at the first failure with what to fix: config, credentials (STS
//! GetCallerIdentity: account and ARN, never secrets), region, DNS, TLS with certificate
//! verification, what the pool settings mean, and optionally a real login with the pool's
//! reset query run on it and, on an Aurora cluster endpoint, the topology it sees.

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use aws_config::SdkConfig;
use tokio::io::AsyncWriteExt;
use tokio::time::timeout;

use crate::app::{self, Contexts};
use crate::config::{self, Config, FileConfig, PoolConfig, PoolMode};
use crate::iam::{load_sdk_config, SystemClock, TokenCache};
use crate::setup::whoami::caller_identity;
use crate::target::TargetContext;
use crate::upstream::connect::connect;
use crate::upstream::login::{check as login_check, reset, ServerConn};

/// What to check besides the configuration.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Also log in, as this user (default: the target's db_user).
    pub login: bool,
    /// Login user when the target has no db_user.
    pub login_user: Option<String>,
    /// Database for the login.
    pub database: String,
}

struct Failed(String);

fn ok(what: &str) {
    println!("ok    {what}");
}

/// Runs the checks; exit code 0 when all pass, 1 at the first failure.
pub async fn check(
    run: &crate::cli::RunArgs,
    options: &CheckOptions,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match steps(run, options).await {
        Ok(()) => {
            println!("all checks passed");
            Ok(ExitCode::SUCCESS)
        }
        Err(Failed(message)) => {
            println!("FAIL  {message}");
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn steps(run: &crate::cli::RunArgs, options: &CheckOptions) -> Result<(), Failed> {
    let file = match &run.config {
        Some(path) => config::read_file(path).map_err(|e| Failed(format!("config: {e}")))?,
        None => FileConfig::default(),
    };
    let config = config::build(&run.proxy, &run.target, &file)
        .map_err(|e| Failed(format!("config: {e}")))?;
    ok(&format!("config: {} target(s)", config.targets.len()));
    let fallback = config.targets.iter().find_map(|t| t.region.as_deref());
    let sdk = load_sdk_config(fallback, config.proxy.credentials_timeout).await;
    let built = app::contexts(&config, &sdk, Arc::new(SystemClock))
        .await
        .map_err(|e| Failed(format!("setup: {e}")))?;
    identities(&config, &sdk, &built.cache).await?;
    targets(&built, options).await
}

async fn identities(config: &Config, sdk: &SdkConfig, cache: &TokenCache) -> Result<(), Failed> {
    let roles: HashSet<_> = config.targets.iter().map(|t| t.role.clone()).collect();
    for role in roles {
        let label = role
            .as_ref()
            .map_or("default credential chain".to_owned(), |r| {
                format!("role {}", r.arn)
            });
        let provider = cache
            .source(&role)
            .and_then(|s| s.provider())
            .ok_or_else(|| {
                Failed(format!(
                    "credentials ({label}): none found; set AWS_PROFILE, run `aws sso login`, \
                 or provide AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
                ))
            })?;
        let who = caller_identity(sdk, Some(provider))
            .await
            .map_err(|e| Failed(format!("credentials ({label}): {e}")))?;
        ok(&format!(
            "credentials ({label}): account {}, {}",
            who.account, who.arn
        ));
    }
    Ok(())
}

async fn targets(built: &Contexts, options: &CheckOptions) -> Result<(), Failed> {
    for (target, ctx) in &built.targets {
        let name = &ctx.name;
        ok(&format!("{name}: region {}", ctx.region));
        let (dial_host, dial_port) = &ctx.endpoint.dial;
        let addrs: Vec<_> = tokio::net::lookup_host((dial_host.as_str(), *dial_port))
            .await
            .map_err(|e| Failed(format!("{name}: cannot resolve {dial_host}: {e}")))?
            .map(|a| a.ip().to_string())
            .collect();
        let via = if dial_host != &target.host || *dial_port != target.port {
            format!(
                " (--connect-to {}:{} -> {dial_host}:{dial_port})",
                target.host, target.port
            )
        } else {
            String::new()
        };
        ok(&format!(
            "{name}: DNS {dial_host} -> {}{via}",
            addrs.join(", ")
        ));
        let (_stream, addr) = connect(&ctx.endpoint).await.map_err(|e| {
            Failed(format!(
                "{name}: {e} (check --ca-file, --tls-mode and that the port is reachable)"
            ))
        })?;
        ok(&format!("{name}: TLS {} to {addr}", target.tls_mode));
        ok(&format!("{name}: {}", pool_line(&target.pool)));
        if options.login {
            login(ctx, &target.pool, options).await?;
        }
    }
    Ok(())
}

/// What the pool settings mean, in one line.
fn pool_line(pool: &PoolConfig) -> String {
    let d = |d: Duration| humantime::format_duration(d).to_string();
    match pool.mode {
        PoolMode::None => "pool none: every client gets its own IAM login".to_owned(),
        PoolMode::Session | PoolMode::Transaction => {
            let (mode, reset) = if pool.mode == PoolMode::Session {
                ("session", format!("reset with {}", pool.reset_query))
            } else {
                let reset = format!(
                    "given back after each transaction without a reset \
                     (a pinned client's: reset with {})",
                    pool.reset_query
                );
                ("transaction", reset)
            };
            format!(
                "pool {mode}: up to {} server connections per (user, database, options), {} kept \
                 idle, idle ones closed after {}, none older than {}, {reset}, clients wait up to {}",
                pool.size,
                pool.min_idle,
                d(pool.idle_timeout),
                d(pool.lifetime),
                d(pool.timeout),
            )
        }
    }
}

async fn login(
    ctx: &TargetContext,
    pool: &PoolConfig,
    options: &CheckOptions,
) -> Result<(), Failed> {
    let name = &ctx.name;
    let user = ctx
        .db_user
        .clone()
        .or_else(|| options.login_user.clone())
        .ok_or_else(|| Failed(format!("{name}: --login needs --login-user (or --db-user)")))?;
    let mut conn = login_check(ctx, &user, &options.database)
        .await
        .map_err(|e| Failed(format!("{name}: login as {user} failed: {e}")))?;
    ok(&format!("{name}: login as {user} to {}", options.database));
    if let Some(topo) = &ctx.topology {
        let line = crate::upstream::topology::describe(topo, &mut conn).await;
        ok(&format!("{name}: {line}"));
    }
    let reset = match pool.mode {
        PoolMode::None => Ok(()),
        PoolMode::Session | PoolMode::Transaction => reset_check(ctx, &mut conn, pool).await,
    };
    let _ = conn.stream.shutdown().await;
    reset
}

/// Runs the reset query on the logged-in connection, as a release back to the pool would.
async fn reset_check(
    ctx: &TargetContext,
    conn: &mut ServerConn,
    pool: &PoolConfig,
) -> Result<(), Failed> {
    let (name, query) = (&ctx.name, &pool.reset_query);
    let limit = ctx.settings.connect_timeout;
    match timeout(limit, reset(conn, query)).await {
        Ok(Ok(())) => {
            ok(&format!(
                "{name}: reset query {query} runs on the logged-in connection"
            ));
            Ok(())
        }
        Ok(Err(e)) => Err(Failed(format!(
            "{name}: --server-reset-query {query:?} failed on the logged-in connection: {e}"
        ))),
        Err(_) => Err(Failed(format!(
            "{name}: --server-reset-query {query:?} did not finish within {limit:?}"
        ))),
    }
}
