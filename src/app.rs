//! Start-up wiring: AWS config loaded once, credential sources, the token cache, TLS and
//! listeners for each target; then the server until a signal arrives.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

use crate::cancel::CancelMap;
use crate::config::{Config, Target};
use aws_config::SdkConfig;

use crate::iam::{
    load_sdk_config, resolve_region, CacheSettings, Clock, CredentialSource, SystemClock,
    TokenCache,
};
use crate::server::{self, Listener, RunReport};
use crate::session::TargetContext;
use crate::upstream::connect::Endpoint;
use crate::upstream::tls::client_config;

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
}

/// Builds everything the server needs with the environment's AWS configuration.
pub async fn prepare(config: &Config) -> Result<Prepared, StartError> {
    let fallback = config.targets.iter().find_map(|t| t.region.as_deref());
    let sdk = load_sdk_config(fallback).await;
    prepare_with(config, &sdk, Arc::new(SystemClock)).await
}

/// Builds everything the server needs from a loaded AWS configuration and a clock, and
/// binds the listeners.
pub async fn prepare_with(
    config: &Config,
    sdk: &SdkConfig,
    clock: Arc<dyn Clock>,
) -> Result<Prepared, StartError> {
    let sdk = sdk.clone();
    let mut sources = HashMap::from([(None, Arc::new(CredentialSource::from_sdk(&sdk)))]);
    for role in config.targets.iter().filter_map(|t| t.role.clone()) {
        if !sources.contains_key(&Some(role.clone())) {
            let source = CredentialSource::assume_role(&sdk, &role).await;
            sources.insert(Some(role), Arc::new(source));
        }
    }
    let settings = CacheSettings {
        margin: config.proxy.token_refresh_margin,
        ..CacheSettings::default()
    };
    let cache = TokenCache::new(sources, settings, clock);
    let cancels = Arc::new(CancelMap::default());
    let mut listeners = Vec::new();
    for target in &config.targets {
        let region = resolve_region(
            target.region.as_deref(),
            sdk.region().map(|r| r.as_ref()),
            &target.host,
        )
        .map_err(|e| StartError(e.to_string()))?;
        let tls = client_config(target.ca_file.as_deref(), target.tls_mode)
            .map_err(|e| StartError(e.to_string()))?;
        let endpoint = Endpoint::new(&target.host, target.port, tls).map_err(StartError)?;
        let ctx = Arc::new(TargetContext {
            name: target.name.clone(),
            endpoint: Arc::new(endpoint),
            region,
            db_user: target.db_user.clone(),
            role: target.role.clone(),
            cache: cache.clone(),
            cancels: cancels.clone(),
            settings: config.proxy.clone(),
        });
        for listener in bind(target).await? {
            listeners.push((listener, ctx.clone()));
        }
    }
    Ok(Prepared { listeners, cache })
}

async fn bind(target: &Target) -> Result<Vec<Listener>, StartError> {
    let tcp = TcpListener::bind(target.listen)
        .await
        .map_err(|e| StartError(format!("cannot listen on {}: {e}", target.listen)))?;
    let port = tcp
        .local_addr()
        .map(|a| a.port())
        .unwrap_or(target.listen.port());
    tracing::info!(target = %target.name, listen = %tcp.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        upstream = %format!("{}:{}", target.host, target.port), "listening");
    let mut listeners = vec![Listener::Tcp(tcp)];
    if let Some(dir) = &target.unix_socket {
        let path = dir.join(format!(".s.PGSQL.{port}"));
        remove_stale_socket(&path)?;
        let unix = UnixListener::bind(&path)
            .map_err(|e| StartError(format!("cannot listen on {}: {e}", path.display())))?;
        tracing::info!(target = %target.name, socket = %path.display(), "listening");
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

/// Runs the proxy until SIGTERM/SIGINT, then drains.
pub async fn run(config: Config) -> Result<RunReport, StartError> {
    let prepared = prepare(&config).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));
    let report = server::run(
        prepared.listeners,
        config.proxy.max_connections,
        shutdown,
        config.proxy.shutdown_timeout,
    )
    .await;
    tracing::info!(cut_sessions = report.cut_sessions, "stopped");
    Ok(report)
}

async fn signal_shutdown(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    shutdown.cancel();
}
