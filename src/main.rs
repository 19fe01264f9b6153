//! pg-iam-proxy: parse the command line, set up logging, run the chosen command.

use std::process::ExitCode;

use clap::Parser;
use pg_iam_proxy::cli::{Cli, Command, SetupCommand};
use pg_iam_proxy::commands;

/// The longest the runtime waits for its remaining tasks and threads at exit.
const RUNTIME_SHUTDOWN: std::time::Duration = std::time::Duration::from_millis(500);

fn main() -> ExitCode {
    let cli = Cli::parse();
    pg_iam_proxy::logging::init(cli.log_format);
    let mut builder = match cli.worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.max(1));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pg-iam-proxy: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Some(Command::Token(args)) => commands::token(args).await,
            Some(Command::Check(args)) => {
                let options = pg_iam_proxy::check::CheckOptions {
                    login: args.login,
                    login_user: args.login_user.clone(),
                    database: args.database.clone(),
                };
                pg_iam_proxy::check::check(&args.run, &options).await
            }
            Some(Command::Setup(SetupCommand::DbUser(args))) => commands::setup_db_user(args).await,
            Some(Command::Setup(SetupCommand::Iam(args))) => commands::setup_iam(args).await,
            Some(Command::Whoami(args)) => commands::whoami(args).await,
            Some(Command::ScramVerifier(args)) => commands::scram_verifier(args),
            Some(Command::Wait(args)) => {
                Ok(pg_iam_proxy::wait::wait(args.http_addr, args.max).await)
            }
            Some(Command::Run(args)) => commands::run(*args).await,
            None => commands::run(cli.run).await,
        }
    });
    // Whatever is still running (a task left behind after the drain's grace, a DNS lookup
    // on a blocking thread) must not keep the process alive.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pg-iam-proxy: {e}");
            ExitCode::from(2)
        }
    }
}
