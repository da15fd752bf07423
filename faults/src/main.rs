//! `faults`: runs fault scenarios against a five-agent cluster in network
//! namespaces (root needed) with a recorded workload, and checks every
//! history for linearizability and lost writes.
//!
//! `faults --all --seconds 30` runs every scenario; `--scenario NAME`
//! (repeatable) picks some; `--check FILE` re-checks a saved
//! `history.jsonl`. The last line is
//! `faults: N scenarios, M operations, linearizable: yes|no, lost writes: K`;
//! the exit code is 0 only when linearizable with no lost write.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use faults::run::{Scenario, SuiteConfig, SuiteResult, run_suite};

/// Fault-injection scenarios with a linearizability check.
#[derive(Debug, Parser)]
#[command(name = "faults", about)]
struct Cli {
    /// Run every scenario.
    #[arg(long)]
    all: bool,
    /// A scenario to run (repeatable): partition-leader, majority-minority,
    /// bridge, kill-server, kill-leader, pause-leader, loss-delay,
    /// restart-mid-write.
    #[arg(long = "scenario", value_name = "NAME")]
    scenarios: Vec<Scenario>,
    /// Seconds per scenario (warm-up T/6, fault T/6..4T/6, recovery to T).
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 10)]
    clients: u32,
    /// Keys (registers).
    #[arg(long, default_value_t = 3)]
    keys: usize,
    /// The agent binary (default: next to this one, rebuilt by cargo).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Re-check a saved history (JSON lines) instead of running anything.
    #[arg(long, value_name = "FILE")]
    check: Option<PathBuf>,
    /// Print only the results (no progress on stderr).
    #[arg(long, short)]
    quiet: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(path) = &cli.check {
        return match faults::run::recheck(path) {
            Ok(result) => {
                println!("{}", result.line());
                if result.passed() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("Error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let scenarios = if cli.all {
        Scenario::ALL.to_vec()
    } else if cli.scenarios.is_empty() {
        eprintln!("Error: give --all or --scenario NAME (see --help)");
        return ExitCode::from(2);
    } else {
        cli.scenarios.clone()
    };
    if cli.seconds < 6 {
        eprintln!("Error: --seconds must be at least 6");
        return ExitCode::from(2);
    }
    let config = SuiteConfig {
        scenarios,
        seconds: cli.seconds,
        clients: cli.clients.max(1),
        keys: cli.keys.max(1),
        agent: cli.agent.clone(),
        netns_prefix: "faults".into(),
        verbose: !cli.quiet,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // On Ctrl-C the suite's future is dropped, and with it the running
    // scenario's lab: agents killed, namespaces deleted.
    // SIGTERM (e.g. a CI job's timeout) does the same.
    let result: anyhow::Result<SuiteResult> = runtime.block_on(async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => return Err(anyhow::anyhow!("installing a SIGTERM handler: {e}")),
            };
        tokio::select! {
            result = run_suite(config) => result,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted (SIGINT); everything torn down")),
            _ = term.recv() => Err(anyhow::anyhow!("terminated (SIGTERM); everything torn down")),
        }
    });
    match result {
        Ok(suite) => {
            if let Some(dir) = &suite.kept {
                println!("kept for inspection: {}", dir.display());
            }
            println!("{}", suite.last_line());
            if suite.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
