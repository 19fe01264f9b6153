//! Logging to stderr: the level from `PG_IAM_PROXY_LOG` (tracing's filter syntax, default
//! `info`), text or JSON, and a cap no filter can lift on the AWS SDK and HTTP crates.
//! At TRACE they log what must never be logged: aws-sigv4 its canonical request (for a
//! token presign that includes `X-Amz-Security-Token`), the smithy runtime and hyper the
//! requests and responses of STS (AssumeRole's answer holds the role's secret key and
//! session token). Their DEBUG output carries no secret and stays available.

use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
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
    let level =
        EnvFilter::try_from_env("PG_IAM_PROXY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let filter = level.and(secret_guard());
    let layer = fmt::layer().with_writer(std::io::stderr);
    let layer = match format {
        LogFormat::Text => layer.with_filter(filter).boxed(),
        LogFormat::Json => layer.json().with_filter(filter).boxed(),
    };
    tracing_subscriber::registry().with(layer).init();
}
