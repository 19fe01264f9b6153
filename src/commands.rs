//! The subcommands behind the CLI: `run` and `token`.

use std::process::ExitCode;
use std::time::SystemTime;

use crate::cli::{RunArgs, TokenArgs};
use crate::config::{self, FileConfig};
use crate::iam::{
    load_sdk_config, resolve_region, sign_token, CredentialSource, RoleSpec, TokenRequest,
    TOKEN_LIFETIME,
};

/// Exit code when sessions had to be cut at the end of the shutdown drain.
pub const EXIT_SESSIONS_CUT: u8 = 1;

/// `run`: the proxy. Exit 0 after a clean drain, 1 when sessions were cut.
pub async fn run(args: RunArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let file = match &args.config {
        Some(path) => config::read_file(path)?,
        None => FileConfig::default(),
    };
    let config = config::build(&args.proxy, &args.target, &file)?;
    let report = crate::app::run(config).await?;
    Ok(if report.cut_sessions == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_SESSIONS_CUT)
    })
}

/// `token`: one token on stdout, nothing else.
pub async fn token(args: TokenArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let sdk = load_sdk_config(args.region.as_deref()).await;
    let region = resolve_region(
        args.region.as_deref(),
        sdk.region().map(|r| r.as_ref()),
        &args.host,
    )?;
    let source = match args.role_arn {
        Some(arn) => {
            let role = RoleSpec {
                arn,
                session_name: args.role_session_name,
                external_id: args.external_id,
            };
            CredentialSource::assume_role(&sdk, &role).await
        }
        None => CredentialSource::from_sdk(&sdk),
    };
    let now = SystemTime::now();
    let creds = source.credentials(now, now + TOKEN_LIFETIME).await?;
    let request = TokenRequest {
        host: &args.host,
        port: args.port,
        user: &args.user,
        region: &region,
    };
    let token = sign_token(&creds, &request, now)?;
    println!("{}", token.expose());
    Ok(ExitCode::SUCCESS)
}
