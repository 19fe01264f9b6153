//! The subcommands behind the CLI: `run` and `token`.

use std::process::ExitCode;
use std::time::SystemTime;

use crate::cli::{DbUserArgs, IamArgs, RunArgs, TokenArgs, WhoamiArgs};
use crate::config::{self, FileConfig};
use crate::iam::{
    load_sdk_config, resolve_region, sign_token, CredentialSource, TokenRequest,
    DEFAULT_CREDENTIALS_TIMEOUT, TOKEN_LIFETIME,
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
    let sdk = load_sdk_config(args.region.as_deref(), DEFAULT_CREDENTIALS_TIMEOUT).await;
    let region = resolve_region(
        args.region.as_deref(),
        sdk.region().map(|r| r.as_ref()),
        &args.host,
    )?;
    let source = match args.role.spec() {
        Some(role) => CredentialSource::assume_role(&sdk, &role, DEFAULT_CREDENTIALS_TIMEOUT).await,
        None => CredentialSource::from_sdk(&sdk, DEFAULT_CREDENTIALS_TIMEOUT),
    };
    let now = SystemTime::now();
    let creds = source.credentials(now, now + TOKEN_LIFETIME, now).await?;
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

/// `setup db-user`.
pub async fn setup_db_user(args: DbUserArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let master_password = match std::env::var("PGPASSWORD") {
        Ok(p) => p,
        Err(_) => rpassword::prompt_password(format!("Password for {}: ", args.master_user))
            .map_err(|e| {
                format!("no master password: set PGPASSWORD or run in a terminal ({e})")
            })?,
    };
    let spec = crate::setup::db_user::DbUserSpec {
        host: args.host,
        port: args.port,
        master_user: args.master_user,
        master_password,
        user: args.user,
        database: args.database,
        ca_file: args.ca_file,
        tls_mode: args.tls_mode,
    };
    let report = if args.drop {
        crate::setup::db_user::drop(&spec).await?
    } else {
        crate::setup::db_user::create(&spec).await?
    };
    for line in report {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `setup iam`.
#[cfg(feature = "setup-iam")]
pub async fn setup_iam(args: IamArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    use crate::setup::iam;
    let sdk = load_sdk_config(args.region.as_deref(), DEFAULT_CREDENTIALS_TIMEOUT).await;
    let region = args
        .region
        .clone()
        .or_else(|| sdk.region().map(|r| r.to_string()))
        .ok_or("no AWS region: pass --region or set AWS_REGION")?;
    let spec = iam::IamSpec {
        account: args.account,
        resource_id: args.resource_id,
        user: args.user,
        region,
        role_name: args.role_name,
        policy_name: args.policy_name,
        trust: args.trust,
    };
    if args.print {
        let documents = serde_json::json!({
            "policy_arn": spec.policy_arn(),
            "policy_document": spec.policy_document(),
            "role_arn": spec.role_arn(),
            "trust_policy_document": spec.trust_document(),
        });
        println!("{}", serde_json::to_string_pretty(&documents)?);
        return Ok(ExitCode::SUCCESS);
    }
    let report = if args.delete {
        iam::delete(&sdk, &spec).await?
    } else {
        iam::create(&sdk, &spec).await?
    };
    for line in report {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `setup iam` without the `setup-iam` feature.
#[cfg(not(feature = "setup-iam"))]
pub async fn setup_iam(_args: IamArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    Err("this build has no `setup iam`: rebuild with the default `setup-iam` feature".into())
}

/// `whoami`.
pub async fn whoami(args: WhoamiArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let sdk = load_sdk_config(args.region.as_deref(), DEFAULT_CREDENTIALS_TIMEOUT).await;
    let provider = match args.role.spec() {
        Some(role) => CredentialSource::assume_role(&sdk, &role, DEFAULT_CREDENTIALS_TIMEOUT)
            .await
            .provider(),
        None => None,
    };
    let who = crate::setup::whoami::caller_identity(&sdk, provider).await?;
    println!("account: {}", who.account);
    println!("arn:     {}", who.arn);
    println!("user id: {}", who.user_id);
    Ok(ExitCode::SUCCESS)
}

/// `scram-verifier`: the auth file line for a password typed twice (or read from stdin).
pub fn scram_verifier(
    args: crate::cli::ScramVerifierArgs,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let password = if args.password_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    } else {
        let first = rpassword::prompt_password(format!("Password for {}: ", args.user))?;
        let again = rpassword::prompt_password("Again: ")?;
        if first != again {
            return Err("the passwords differ".into());
        }
        first
    };
    if password.is_empty() {
        return Err("empty password".into());
    }
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    let quoted = args.user.replace('"', "\"\"");
    println!("\"{quoted}\" \"{verifier}\"");
    Ok(ExitCode::SUCCESS)
}
