//! `bench`: measures the agent mesh on this machine. It starts what it measures in a
//! temporary directory on loopback and stops it when done, also on Ctrl-C or failure.
//!
//! - `bench gossip --agents N`: convergence, failure detection, false alarms and memory
//!   of N agent processes.
//! - `bench kv --against etcd`: the key/value store of 3 agent servers against a
//!   3-member etcd cluster: writes, reads, watch fan-out.

mod cluster;
mod etcd;
mod gossip;
mod kv;
mod stats;

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
    /// 3 agent servers on 127.0.0.221-223 against 3 etcd members on 127.0.0.231-233:
    /// sequential and concurrent writes, linearizable and stale reads, watch fan-out.
    Kv(kv::KvArgs),
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
            Command::Kv(args) => kv::run(args).await,
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
