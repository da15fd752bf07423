//! `bench`: measures the agent mesh on this machine. It starts what it measures in a
//! temporary directory on loopback and stops it when done, also on Ctrl-C or failure.
//!
//! - `bench gossip --agents N`: convergence, failure detection, false alarms and memory
//!   of N agent processes.

mod cluster;
mod gossip;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Benchmarks of the agent mesh.
#[derive(Debug, Parser)]
#[command(name = "bench", about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// N agent processes on 127.0.1.x: time to converge, to detect a kill -9, false
    /// alarms, memory.
    Gossip(gossip::GossipArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Gossip(args) => gossip::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
