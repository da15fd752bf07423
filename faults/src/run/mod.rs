//! The fault-injection runner: a five-agent cluster in network namespaces, a
//! recorded workload, a fault per scenario, and the checks.
//!
//! Per scenario (fresh data directories each time), for `T` seconds:
//!
//! 1. the cluster starts ([`cluster`]) and must accept writes through every
//!    agent;
//! 2. the workload's clients start ([`workload`]); after a warm-up of `T/6`
//!    the fault is applied from `T/6` to `4T/6` ([`scenarios`]), then
//!    everything is healed and the workload goes on until `T`;
//! 3. the clients stop, a final consistent read of every key is recorded
//!    (so the lost-write check can see the last writes), and the lab is torn
//!    down;
//! 4. the history is checked: linearizability with default-mode reads and
//!    with consistent reads (each with every write and CAS), and lost
//!    writes.
//!
//! The lab (namespaces, links, agent processes) is owned by the scenario's
//! [`cluster::Cluster`] and dropped on every path out of a scenario,
//! including errors and a cancelled future (Ctrl-C in the binary).

pub mod cluster;
pub mod report;
pub mod scenarios;
pub mod workload;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::time::{Instant, sleep, sleep_until};

pub use report::{ScenarioResult, SuiteResult};
pub use scenarios::Scenario;

use crate::{History, OpKind, Outcome, ReadMode, Recorder, Ret};
use cluster::{Cluster, HOSTS, Pki, SERVERS};

/// What to run.
#[derive(Debug, Clone)]
pub struct SuiteConfig {
    /// The scenarios, in order.
    pub scenarios: Vec<Scenario>,
    /// Length of each scenario (the workload runs all of it).
    pub seconds: u64,
    /// Concurrent clients (client `c` uses agent `c mod 5`).
    pub clients: u32,
    /// Keys (registers).
    pub keys: usize,
    /// The agent binary; `None`: [`agent_binary`].
    pub agent: Option<PathBuf>,
    /// Prefix of the network namespaces (1 to 16 letters, digits or `_`).
    pub netns_prefix: String,
    /// Print progress (what each fault does) to stderr.
    pub verbose: bool,
}

impl Default for SuiteConfig {
    fn default() -> Self {
        SuiteConfig {
            scenarios: Scenario::ALL.to_vec(),
            seconds: 30,
            clients: 10,
            keys: 3,
            agent: None,
            netns_prefix: "faults".into(),
            verbose: true,
        }
    }
}

/// How long a fresh cluster may take to accept writes through every agent.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the final reads may keep trying.
const FINAL_READ_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs the scenarios one after the other and checks each one's history.
///
/// Needs root (network namespaces). Each scenario's directory (data, logs,
/// `history.jsonl`) is under one temporary directory that is kept (and named
/// in the result) when any scenario fails or is not proven linearizable,
/// and removed otherwise.
pub async fn run_suite(config: SuiteConfig) -> anyhow::Result<SuiteResult> {
    let agent = match &config.agent {
        Some(path) => path.clone(),
        None => tokio::task::spawn_blocking(agent_binary).await??,
    };
    netlab::available().context("network namespaces are needed (run as root)")?;
    let dir = tempfile::Builder::new().prefix("faults-").tempdir()?;
    let pki = Pki::create(&agent, &dir.path().join("certs"))?;
    let mut results = Vec::new();
    for (n, scenario) in config.scenarios.iter().enumerate() {
        let sdir = dir.path().join(format!("{}-{}", n + 1, scenario.name()));
        let result = match run_scenario(*scenario, &config, &agent, &pki, &sdir).await {
            Ok(result) => result,
            Err(e) => ScenarioResult::error(*scenario, format!("{e:#}"), sdir.clone()),
        };
        println!("{}", result.line());
        results.push(result);
    }
    let mut suite = SuiteResult {
        scenarios: results,
        kept: None,
    };
    if !suite.passed() {
        suite.kept = Some(dir.keep());
    }
    Ok(suite)
}

/// Runs one scenario.
async fn run_scenario(
    scenario: Scenario,
    config: &SuiteConfig,
    agent: &Path,
    pki: &Pki,
    dir: &Path,
) -> anyhow::Result<ScenarioResult> {
    let progress = |text: String| {
        if config.verbose {
            eprintln!("[{scenario}] {text}");
        }
    };
    let lab = netlab::Lab::new(&config.netns_prefix)?;
    let mut cluster = Cluster::start(lab, agent, pki, dir)?;
    let http = workload::http_client(Duration::from_secs(2));
    progress("cluster starting".into());
    cluster.wait_ready(&http, READY_TIMEOUT).await?;
    progress("cluster ready; workload starting".into());

    let total = Duration::from_secs(config.seconds);
    let recorder = Recorder::new();
    let stop = Arc::new(AtomicBool::new(false));
    let keys = workload::keys(config.keys);
    let clients: Vec<_> = (0..config.clients)
        .map(|id| {
            let client = workload::Client {
                id,
                agent: cluster.agents[id as usize % HOSTS].http,
                keys: keys.clone(),
                recorder: recorder.clone(),
                stop: stop.clone(),
            };
            tokio::spawn(client.run())
        })
        .collect();
    // Stop the clients on every way out of this function.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop_guard = StopOnDrop(stop.clone());

    let start = Instant::now();
    sleep_until(start + total / 6).await;
    let fault_start = recorder.now();
    progress("fault on".into());
    let fault_end_at = start + total * 4 / 6;
    let log = scenarios::drive(scenario, &mut cluster, &http, fault_end_at, config.seconds).await?;
    for line in &log {
        progress(line.clone());
    }
    scenarios::heal(&mut cluster)?;
    let fault_end = recorder.now();
    progress("healed; recovering".into());
    sleep_until(start + total).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let _ = client.await;
    }
    final_reads(&cluster, &recorder, config.clients, &keys).await;
    progress("workload done; tearing down".into());
    let keep = cluster.dir.clone();
    tokio::task::spawn_blocking(move || drop(cluster)).await?;

    let history = recorder.history();
    history.save(dir.join("history.jsonl"))?;
    let checked = tokio::task::spawn_blocking(move || {
        let scenario = Some(scenario);
        report::check_history(scenario, &history, fault_start, fault_end)
    })
    .await?;
    let mut result = checked?;
    result.fault_log = log;
    result.dir = keep;
    result.save_violations()?;
    Ok(result)
}

/// A consistent read of every key through the servers (retried until it
/// succeeds or [`FINAL_READ_TIMEOUT`]), recorded as client `id`.
async fn final_reads(cluster: &Cluster, recorder: &Recorder, id: u32, keys: &[String]) {
    let http = workload::http_client(workload::OP_TIMEOUT);
    let deadline = Instant::now() + FINAL_READ_TIMEOUT;
    for key in keys {
        let mut server = 0;
        while Instant::now() < deadline {
            let kind = OpKind::Read {
                mode: ReadMode::Consistent,
            };
            let ticket = recorder.invoke(id, key, kind);
            let base = format!("http://{}", cluster.agents[server].http);
            match workload::read(&http, &base, key, ReadMode::Consistent).await {
                Ok((value, _)) => {
                    recorder.complete(ticket, Outcome::Ok(Ret::Read(value)));
                    break;
                }
                Err(_) => {
                    recorder.complete(ticket, Outcome::Fail);
                    server = (server + 1) % SERVERS;
                    sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// Re-checks a saved history (e.g. `history.jsonl` of a kept run).
pub fn recheck(path: &Path) -> anyhow::Result<ScenarioResult> {
    let history = History::load(path)?;
    let mut r = report::check_history(None, &history, 0, 0)?;
    r.dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok(r)
}

/// The agent binary: a sibling of the running executable (for a test,
/// of its `deps` directory) in the cargo target directory, (re)built with
/// `cargo build -p agent` in the same profile when run under cargo (so that
/// it is never older than the source); without cargo, the one that is there.
/// `bench` uses it too.
pub fn agent_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("locating the running executable")?;
    let mut dir = me.parent().context("the executable has no directory")?;
    if dir.ends_with("deps") {
        dir = dir.parent().context("deps has no parent")?;
    }
    let agent = dir.join("agent");
    if std::env::var_os("CARGO").is_none() && agent.exists() {
        return Ok(agent);
    }
    let profile_name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_string();
    let profile = match profile_name.as_str() {
        "release" => "--release".to_string(),
        "debug" => "--profile=dev".to_string(),
        other => format!("--profile={other}"),
    };
    eprintln!("building the agent ({profile}) if it changed...");
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // `cargo run`/`cargo test` describe this package in the environment; build
    // scripts watching those variables (ring's) would rebuild on every run.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_TARGET_TMPDIR",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix))
            || name == "CARGO_PRIMARY_PACKAGE"
        {
            cargo.env_remove(name.as_ref());
        }
    }
    let status = cargo
        .args(["build", &profile, "-p", "agent"])
        .status()
        .context("running cargo build -p agent")?;
    if !status.success() || !agent.exists() {
        bail!("could not build the agent binary at {}", agent.display());
    }
    Ok(agent)
}
