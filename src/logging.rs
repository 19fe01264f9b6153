//! Logging to stderr: the level from `PG_IAM_PROXY_LOG` (tracing's filter syntax, default
//! `info`), text or JSON, and a cap no filter can lift on the AWS SDK and HTTP crates.
//! At TRACE they log what must never be logged: aws-sigv4 its canonical request (for a
//! token presign that includes `X-Amz-Security-Token`), the smithy runtime and hyper the
//! requests and responses of STS (AssumeRole's answer holds the role's secret key and
//! session token). Their DEBUG output carries no secret and stays available.

use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

use crate::cli::LogFormat;

/// Crates whose TRACE output may contain secrets; they are capped at DEBUG.
pub const CAPPED: &[&str] = &[
    "aws_sigv4",
    "aws_smithy_runtime",
    "aws_smithy_runtime_api",
    "aws_smithy_http",
    "aws_smithy_http_client",
    "aws_smithy_types",
    "aws_smithy_json",
    "aws_smithy_xml",
    "aws_smithy_query",
    "aws_runtime",
    "aws_config",
    "aws_credential_types",
    "aws_sdk_sts",
    "aws_sdk_sso",
    "aws_sdk_ssooidc",
    "aws_sdk_iam",
    "hyper",
    "hyper_util",
    "h2",
    "rustls",
];

/// The cap: everything else passes (the level filter decides).
pub fn secret_guard() -> Targets {
    CAPPED
        .iter()
        .fold(Targets::new().with_default(LevelFilter::TRACE), |t, c| {
            t.with_target(*c, LevelFilter::DEBUG)
        })
}

/// Installs the process's subscriber (call once, first thing).
pub fn init(format: LogFormat) {
    let spec = std::env::var("PG_IAM_PROXY_LOG").ok();
    match static_levels(spec.as_deref()) {
        // Global filters, stacked (both must pass), that decide by target and level alone:
        // nothing to do when a span is entered, which happens on every poll of a session.
        Some(levels) => tracing_subscriber::registry()
            .with(secret_guard())
            .with(levels)
            .with(fmt_layer(format))
            .init(),
        // Span and field directives need EnvFilter, which takes a lock on every span entry.
        None => {
            let level = spec
                .as_deref()
                .and_then(|s| EnvFilter::try_new(s).ok())
                .unwrap_or_else(|| EnvFilter::new("info"));
            let filter = level.and(secret_guard());
            tracing_subscriber::registry()
                .with(fmt_layer(format).with_filter(filter))
                .init()
        }
    }
}

/// Events to stderr, as text or JSON.
fn fmt_layer<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let layer = fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => layer.boxed(),
        LogFormat::Json => layer.json().boxed(),
    }
}

/// `PG_IAM_PROXY_LOG` as levels by target (`info`, `pg_iam_proxy=debug,warn`), unset meaning
/// `info`; `None` when it needs EnvFilter: span or field directives, empty parts, or
/// anything [`Targets`] does not read the way EnvFilter does.
fn static_levels(spec: Option<&str>) -> Option<Targets> {
    let Some(spec) = spec else {
        return Some(Targets::new().with_default(LevelFilter::INFO));
    };
    let plain = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '=' | '-'))
    };
    if !spec.split(',').all(plain) {
        return None;
    }
    spec.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn plain_levels_are_static_and_mean_what_env_filter_means() {
        let unset = static_levels(None).expect("static");
        assert!(unset.would_enable("pg_iam_proxy::session", &Level::INFO));
        assert!(!unset.would_enable("pg_iam_proxy::session", &Level::DEBUG));
        let mixed = static_levels(Some("warn,pg_iam_proxy::relay=debug")).expect("static");
        assert!(mixed.would_enable("pg_iam_proxy::relay::splice", &Level::DEBUG));
        assert!(!mixed.would_enable("pg_iam_proxy::session", &Level::INFO));
        assert!(mixed.would_enable("pg_iam_proxy::session", &Level::WARN));
        let bare = static_levels(Some("TRACE")).expect("static");
        assert!(bare.would_enable("anything", &Level::TRACE));
    }

    #[test]
    fn span_field_and_odd_directives_go_to_env_filter() {
        for spec in [
            "conn[user]=debug",
            "x[{a}]=info",
            "",
            "info,",
            "info, debug",
            "a=b=c",
        ] {
            assert!(static_levels(Some(spec)).is_none(), "{spec:?}");
        }
    }
}
