//! `agent`: parse the command line, run the command, own the exit code
//! (0 success, 1 an error reported on stderr, 2 bad usage).

use std::process::ExitCode;

use agent::cli::{Cli, Command};
use agent::client::ApiClient;
use agent::commands::watch::WatchPlan;
use agent::commands::{self, CommandError};
use agent::config::{Config, ConfigFile};
use clap::Parser;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse(); // exits with 2 on bad usage
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let host = agent::host_name();
    let result: anyhow::Result<()> = runtime.block_on(async {
        let stdout = &mut std::io::stdout().lock();
        match cli.command {
            Command::Run(args) => {
                let config = match ConfigFile::read_all(&args.config) {
                    Ok(files) => Config::build(&args, &files, &host).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                let config = match config {
                    Ok(config) => config,
                    Err(e) => {
                        eprintln!("Error: {e}");
                        return Err(UsageError.into());
                    }
                };
                agent::logging::init(&config.log_level);
                let shutdown = CancellationToken::new();
                agent::signals::cancel_on_signal(shutdown.clone())?;
                agent::run::run(config, shutdown).await
            }
            Command::Kv(args) => {
                let client = ApiClient::new(&args.http.http_addr)?.in_datacenter(args.dc);
                let stdin = &mut std::io::stdin().lock();
                Ok(commands::kv::run(&client, args.command, stdin, stdout).await?)
            }
            Command::Tls(args) => Ok(commands::tls::run(args.command, &host, stdout)?),
            Command::Info(args) => {
                let client = ApiClient::new(&args.http_addr)?;
                Ok(commands::info::run(&client, stdout).await?)
            }
            Command::Join(args) => {
                let client = ApiClient::new(&args.http.http_addr)?;
                Ok(commands::members::join(&client, &args, stdout).await?)
            }
            Command::Leave(args) => {
                let client = ApiClient::new(&args.http_addr)?;
                Ok(commands::members::leave(&client, stdout).await?)
            }
            Command::Members(args) => {
                let client = ApiClient::new(&args.http.http_addr)?;
                Ok(commands::members::members(&client, &args, stdout).await?)
            }
            Command::Operator(args) => {
                let client = ApiClient::new(&args.http.http_addr)?;
                Ok(commands::operator::run(&client, args.command, stdout).await?)
            }
            Command::Event(args) => {
                let client = ApiClient::new(&args.http.http_addr)?;
                let stdin = &mut std::io::stdin().lock();
                Ok(commands::event::fire(&client, &args, stdin, stdout).await?)
            }
            Command::Watch(args) => {
                let plan = match WatchPlan::from_args(&args) {
                    Ok(plan) => plan,
                    Err(e) => {
                        eprintln!("Error: {e}");
                        return Err(UsageError.into());
                    }
                };
                let client = ApiClient::new(&args.http.http_addr)?;
                let shutdown = CancellationToken::new();
                agent::signals::cancel_on_signal(shutdown.clone())?;
                let stderr = &mut std::io::stderr();
                Ok(commands::watch::run(&client, &plan, stdout, stderr, &shutdown).await?)
            }
            Command::ForceLeave(args) => {
                let client = ApiClient::new(&args.http.http_addr)?;
                Ok(commands::members::force_leave(&client, &args, stdout).await?)
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<UsageError>() => ExitCode::from(2),
        Err(e) => {
            match e.downcast_ref::<CommandError>() {
                // Consul-style messages already say "Error!".
                Some(CommandError::Failed(message)) => eprintln!("{message}"),
                _ => eprintln!("Error: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

/// A usage error already reported on stderr.
#[derive(Debug, thiserror::Error)]
#[error("bad usage")]
struct UsageError;
