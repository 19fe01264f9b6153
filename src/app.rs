//! Start-up wiring: AWS config loaded once, credential sources, the token cache, TLS and
//! listeners for each target; then the server until a signal arrives.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::cancel::{CancelLimits, CancelMap};
use crate::config::{Config, ProxySettings, Target};
use crate::frontend::access::Access;
use crate::frontend::{resolve, unix_socket};
use crate::gate::LoginGate;
use crate::health::Health;
use crate::http::{self, HttpState};
use crate::metrics::Metrics;
use aws_config::SdkConfig;

use crate::iam::{
    load_sdk_config, resolve_region, with_timeouts, CacheSettings, Clock, CredentialSource,
    SystemClock, TokenCache,
};
use crate::server::{self, Listener, RunReport};
use crate::target::{Pooling, TargetContext};
use crate::upstream::connect::Endpoint;
use crate::upstream::tls::client_config;
use crate::upstream::topology::Topology;

/// Start-up failed; the message says what to fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

/// Targets ready to serve.
#[derive(Debug)]
pub struct Prepared {
    /// Bound listeners with their targets.
    pub listeners: Vec<(Listener, Arc<TargetContext>)>,
    /// The shared token cache (for stats).
    pub cache: TokenCache,
    /// Process metrics.
    pub metrics: Arc<Metrics>,
    /// Who may connect (the HTTP endpoint asks it too).
    pub access: Arc<Access>,
}

/// Builds everything the server needs with the environment's AWS configuration.
pub async fn prepare(config: &Config) -> Result<Prepared, StartError> {
    let fallback = config.targets.iter().find_map(|t| t.region.as_deref());
    let sdk = load_sdk_config(fallback, config.proxy.credentials_timeout).await;
    prepare_with(config, &sdk, Arc::new(SystemClock)).await
}

/// The per-target contexts and the shared parts, without listeners.
#[derive(Debug)]
pub struct Contexts {
    /// Each target with its context.
    pub targets: Vec<(Target, Arc<TargetContext>)>,
    /// The shared token cache.
    pub cache: TokenCache,
    /// Process metrics.
    pub metrics: Arc<Metrics>,
    /// Who may connect (the HTTP endpoint asks it too).
    pub access: Arc<Access>,
}

/// Builds credential sources, the token cache, TLS configurations and target contexts.
pub async fn contexts(
    config: &Config,
    sdk: &SdkConfig,
    clock: Arc<dyn Clock>,
) -> Result<Contexts, StartError> {
    let timeout = config.proxy.credentials_timeout;
    let sdk = &with_timeouts(sdk, timeout);
    let chain = CredentialSource::from_sdk(sdk, timeout);
    let mut sources = HashMap::from([(None, Arc::new(chain))]);
    for role in config.targets.iter().filter_map(|t| t.role.clone()) {
        if !sources.contains_key(&Some(role.clone())) {
            let source = CredentialSource::assume_role(sdk, &role, timeout).await;
            sources.insert(Some(role), Arc::new(source));
        }
    }
    let settings = CacheSettings {
        margin: config.proxy.token_refresh_margin,
        wait: timeout + Duration::from_secs(2),
        ..CacheSettings::default()
    };
    let cache = TokenCache::new(sources, settings, clock);
    let cancels = Arc::new(CancelMap::new(CancelLimits {
        timeout: config.proxy.connect_timeout,
        ..CancelLimits::default()
    }));
    let metrics = Arc::new(Metrics::default());
    let access = Arc::new(resolve::access(&config.proxy).map_err(StartError)?);
    let mut targets = Vec::new();
    for target in &config.targets {
        let db_users = resolve::db_user_rule(target).map_err(StartError)?;
        let region = resolve_region(
            target.region.as_deref(),
            sdk.region().map(|r| r.as_ref()),
            &target.host,
        )
        .map_err(|e| StartError(e.to_string()))?;
        let tls = client_config(target.ca_file.as_deref(), target.tls_mode)
            .map_err(|e| StartError(e.to_string()))?;
        let keepalive = config.proxy.tcp_keepalive;
        let endpoint = Endpoint::new(&target.host, target.port, tls, keepalive)
            .map_err(StartError)?
            .routed(&config.proxy.connect_to);
        let topology = Topology::for_target(
            &target.name,
            &endpoint,
            target.instance_host_pattern.as_ref(),
            &config.proxy.connect_to,
            metrics.topology.for_target(&target.name),
        )
        .map(Arc::new);
        let target_metrics = metrics.for_target(&target.name);
        let pool_metrics = metrics.pools.clone();
        let ctx = Arc::new_cyclic(|me| TargetContext {
            name: target.name.clone(),
            endpoint: Arc::new(endpoint),
            region,
            db_user: target.db_user.clone(),
            access: access.clone(),
            db_users,
            role: target.role.clone(),
            cache: cache.clone(),
            cancels: cancels.clone(),
            settings: config.proxy.clone(),
            logins: LoginGate::new(
                config.proxy.max_concurrent_logins,
                config.proxy.login_queue_timeout,
                target_metrics.logins_waiting.clone(),
                target_metrics.logins_active.clone(),
            ),
            metrics: target_metrics,
            pooling: Pooling::new(me, &target.name, &target.pool, pool_metrics),
            topology,
            me: me.clone(),
        });
        targets.push((target.clone(), ctx));
    }
    Ok(Contexts {
        targets,
        cache,
        metrics,
        access,
    })
}

/// Builds everything the server needs from a loaded AWS configuration and a clock, and
/// binds the listeners.
pub async fn prepare_with(
    config: &Config,
    sdk: &SdkConfig,
    clock: Arc<dyn Clock>,
) -> Result<Prepared, StartError> {
    let built = contexts(config, sdk, clock).await?;
    let mut listeners = Vec::new();
    for (target, ctx) in &built.targets {
        for listener in bind(target).await? {
            listeners.push((listener, ctx.clone()));
        }
    }
    Ok(Prepared {
        listeners,
        cache: built.cache,
        metrics: built.metrics,
        access: built.access,
    })
}

async fn bind(target: &Target) -> Result<Vec<Listener>, StartError> {
    let tcp = TcpListener::bind(target.listen)
        .await
        .map_err(|e| StartError(format!("cannot listen on {}: {e}", target.listen)))?;
    let local = tcp.local_addr().unwrap_or(target.listen);
    if !local.ip().to_canonical().is_loopback() {
        tracing::warn!(target = %target.name, listen = %local,
            "listening beyond loopback (--allow-remote-clients): remote clients need TLS and a \
             SCRAM password from --client-auth-file");
    }
    tracing::info!(target = %target.name, listen = %local,
        upstream = %format!("{}:{}", target.host, target.port), "listening");
    let mut listeners = vec![Listener::Tcp(tcp)];
    if let Some(dir) = &target.unix_socket {
        let path = dir.join(format!(".s.PGSQL.{}", local.port()));
        remove_stale_socket(&path)?;
        let gid = match &target.unix_socket_group {
            Some(g) => Some(resolve::gid(g, "--unix-socket-group").map_err(StartError)?),
            None => None,
        };
        let unix = unix_socket::bind(&path, target.unix_socket_mode, gid)
            .map_err(|e| StartError(format!("cannot listen on {}: {e}", path.display())))?;
        tracing::info!(target = %target.name, socket = %path.display(),
            mode = %format!("{:04o}", target.unix_socket_mode), "listening");
        listeners.push(Listener::Unix(unix, path));
    }
    Ok(listeners)
}

/// A socket file left by a process that is gone is removed; a live one is an error.
fn remove_stale_socket(path: &Path) -> Result<(), StartError> {
    if !path.exists() {
        return Ok(());
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(StartError(format!(
            "{} is in use by another process",
            path.display()
        )));
    }
    std::fs::remove_file(path)
        .map_err(|e| StartError(format!("cannot remove stale {}: {e}", path.display())))
}

/// Runs the proxy until SIGTERM/SIGINT, then drains; a second signal cuts at once.
pub async fn run(config: Config) -> Result<RunReport, StartError> {
    crate::fds::raise_and_log();
    let prepared = prepare(&config).await?;
    let shutdown = Shutdown::default();
    tokio::spawn(signal_shutdown(shutdown.clone()));
    if let Some(certs) = prepared.access.certs.clone() {
        tokio::spawn(crate::frontend::tls::reload_on_hangup(certs));
    }
    let report = serve_until(prepared, &config.proxy, shutdown).await?;
    tracing::info!(cut_sessions = report.cut_sessions, "stopped");
    Ok(report)
}

/// What ends a run.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Start the graceful shutdown (a signal, `POST /quitquitquit`).
    pub graceful: CancellationToken,
    /// Cut open sessions now, without waiting for the rest of the delays (a second signal).
    pub now: CancellationToken,
}

/// [`serve_until`] with a graceful `shutdown` only.
pub async fn serve(
    prepared: Prepared,
    settings: &ProxySettings,
    shutdown: CancellationToken,
) -> Result<RunReport, StartError> {
    let shutdown = Shutdown {
        graceful: shutdown,
        now: CancellationToken::new(),
    };
    serve_until(prepared, settings, shutdown).await
}

/// Serves prepared targets (and the HTTP endpoint, if configured) until `shutdown` fires,
/// then: readiness turns 503 at once, listeners keep accepting for `min_shutdown_delay`, and
/// open sessions get at most `max_shutdown_delay` to finish; `shutdown.now` skips what is
/// left of both delays and cuts.
pub async fn serve_until(
    prepared: Prepared,
    settings: &ProxySettings,
    shutdown: Shutdown,
) -> Result<RunReport, StartError> {
    let limit =
        (settings.max_connections > 0).then(|| Arc::new(Semaphore::new(settings.max_connections)));
    let health = Arc::new(Health::new(limit.clone()));
    let stop_http = CancellationToken::new();
    if let Some(addr) = settings.http_addr {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| StartError(format!("cannot listen on {addr} (--http-addr): {e}")))?;
        let local = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tracing::info!(http = %local, quitquitquit = settings.quitquitquit, "http endpoint listening");
        let state = Arc::new(HttpState {
            health: health.clone(),
            registry: prepared.metrics.registry(prepared.cache.clone()),
            quit: settings.quitquitquit.then(|| shutdown.graceful.clone()),
            access: prepared.access.clone(),
        });
        tokio::spawn(http::serve(listener, state, stop_http.clone()));
    }
    let stop = server::Stop {
        accepting: CancellationToken::new(),
        now: shutdown.now.clone(),
        drain: settings.max_shutdown_delay,
    };
    tokio::spawn(begin_shutdown(
        shutdown,
        health.clone(),
        settings.min_shutdown_delay,
        stop.accepting.clone(),
    ));
    health.set_started();
    tracing::info!("ready");
    let report = server::run(prepared.listeners, limit, stop).await;
    stop_http.cancel();
    Ok(report)
}

async fn begin_shutdown(
    shutdown: Shutdown,
    health: Arc<Health>,
    min_delay: Duration,
    stop_accepting: CancellationToken,
) {
    shutdown.graceful.cancelled().await;
    health.set_draining();
    if !min_delay.is_zero() {
        tracing::info!(
            ?min_delay,
            "shutting down: still accepting for the minimum delay"
        );
        tokio::select! {
            () = tokio::time::sleep(min_delay) => {}
            () = shutdown.now.cancelled() => {}
        }
    }
    tracing::info!("shutting down: no longer accepting");
    stop_accepting.cancel();
}

/// The first SIGTERM/SIGINT starts the graceful shutdown (unless `/quitquitquit` already
/// did); the next one cuts at once.
async fn signal_shutdown(shutdown: Shutdown) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        if shutdown.graceful.is_cancelled() {
            tracing::warn!("{name} again: cutting open sessions now");
            shutdown.now.cancel();
            return;
        }
        tracing::info!("{name}: shutting down");
        shutdown.graceful.cancel();
    }
}
