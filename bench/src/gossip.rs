//! `bench gossip --agents N`: N client agents on 127.0.1.1 … 127.0.1.N.
//!
//! Measures: the time until every agent sees N alive; after `kill -9` of one, the time
//! until every other agent marks it failed; false alarms (any other member ever marked
//! suspect or failed, read from the agents' logs); resident memory per agent.

use std::io::Write;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;

use crate::cluster::{AgentProc, Cluster, agent_binary};

/// Flags of `bench gossip`.
#[derive(Debug, Args)]
pub struct GossipArgs {
    /// Number of agent processes (at most 250).
    #[arg(long, default_value_t = 50)]
    agents: u8,
    /// Bound on each phase, in seconds.
    #[arg(long, default_value_t = 120)]
    seconds: u64,
    /// Keep the agents' logs and data (the directory is printed at the end).
    #[arg(long)]
    keep_logs: bool,
}

const POLL: Duration = Duration::from_millis(100);

pub async fn run(args: GossipArgs) -> anyhow::Result<()> {
    if !(2..=250).contains(&args.agents) {
        bail!("--agents must be between 2 and 250");
    }
    let mut cluster = Cluster::new(agent_binary()?)?;
    let result = tokio::select! {
        result = measure(&mut cluster, &args) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; agents stopped")),
    };
    if args.keep_logs {
        eprintln!("logs kept in {}", cluster.keep()?.display());
    }
    result
}

async fn measure(cluster: &mut Cluster, args: &GossipArgs) -> anyhow::Result<()> {
    let n = args.agents as usize;
    let limit = Duration::from_secs(args.seconds);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let ip = |i: usize| IpAddr::from([127, 0, 1, i as u8]);

    let first_spawn = Instant::now();
    cluster.start_client("node-001", ip(1), None)?;
    wait_http(&http, &cluster.agents[0], limit).await?;
    let seed = cluster.agents[0].lan;
    for i in 2..=n {
        cluster.start_client(&format!("node-{i:03}"), ip(i), Some(seed))?;
    }
    let all_spawned = Instant::now();

    // Phase 1: convergence.
    loop {
        let views = views(&cluster.agents).await;
        let converged = views
            .iter()
            .filter(|v| v.len() == n && v.iter().all(|(_, s)| *s == 1))
            .count();
        progress(&format!(
            "converging: {converged}/{n} agents see {n} alive ({:.1} s)",
            all_spawned.elapsed().as_secs_f64()
        ));
        if converged == n {
            break;
        }
        if all_spawned.elapsed() > limit {
            bail!("not converged after {limit:?}: {converged}/{n} agents see all alive");
        }
        tokio::time::sleep(POLL).await;
    }
    let converge = all_spawned.elapsed();
    let converge_from_first = first_spawn.elapsed();
    let rss: Vec<u64> = cluster
        .agents
        .iter()
        .filter_map(AgentProc::rss_kib)
        .collect();

    // Phase 2: kill -9 of the last agent, until every other one marks it failed.
    let mut victim = cluster.agents.pop().expect("at least two agents");
    victim.kill9();
    let killed = Instant::now();
    let mut first_seen: Option<Duration> = None;
    loop {
        let views = views(&cluster.agents).await;
        let marked = views
            .iter()
            .filter(|v| v.iter().any(|(name, s)| *name == victim.node && *s == 4))
            .count();
        if marked > 0 && first_seen.is_none() {
            first_seen = Some(killed.elapsed());
        }
        progress(&format!(
            "detecting: {marked}/{} agents mark {} failed ({:.1} s)",
            n - 1,
            victim.node,
            killed.elapsed().as_secs_f64()
        ));
        if marked == n - 1 {
            break;
        }
        if killed.elapsed() > limit {
            bail!(
                "failure not seen everywhere after {limit:?}: {marked}/{}",
                n - 1
            );
        }
        tokio::time::sleep(POLL).await;
    }
    let detect_all = killed.elapsed();
    progress("");

    let (false_suspect, false_failed) = false_alarms(cluster, &victim.node);
    let (rss_median, rss_max) = median_max(rss);
    println!("bench gossip: {n} client agents on 127.0.1.1-{n}, LAN preset of the agent");
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| converge (from last start) | {:.2} s |",
        converge.as_secs_f64()
    );
    println!(
        "| converge (from first start) | {:.2} s |",
        converge_from_first.as_secs_f64()
    );
    println!(
        "| kill -9 to first agent marking it failed | {:.2} s |",
        first_seen.unwrap_or(detect_all).as_secs_f64()
    );
    println!(
        "| kill -9 to all {} agents marking it failed | {:.2} s |",
        n - 1,
        detect_all.as_secs_f64()
    );
    println!("| live members ever marked suspect | {false_suspect} |");
    println!("| live members ever marked failed | {false_failed} |");
    println!(
        "| RSS per client agent, median / max | {:.1} / {:.1} MiB |",
        rss_median as f64 / 1024.0,
        rss_max as f64 / 1024.0
    );
    Ok(())
}

/// What every agent's `/v1/agent/members` says: (name, status) pairs; empty if it did
/// not answer.
async fn views(agents: &[AgentProc]) -> Vec<Vec<(String, u8)>> {
    let requests = agents.iter().map(|agent| async move {
        agent
            .api
            .members(false)
            .await
            .map(|members| members.into_iter().map(|m| (m.name, m.status)).collect())
            .unwrap_or_default()
    });
    futures::future::join_all(requests).await
}

async fn wait_http(
    http: &reqwest::Client,
    agent: &AgentProc,
    limit: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(r) = http
            .get(format!("http://{}/v1/agent/self", agent.http))
            .send()
            .await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
    bail!("{} did not start; see {}", agent.node, agent.log.display())
}

/// Counts (observer, member) pairs where a member other than `victim` was marked
/// suspect or failed, from the agents' logs.
fn false_alarms(cluster: &Cluster, victim: &str) -> (usize, usize) {
    let mut suspect = std::collections::BTreeSet::new();
    let mut failed = std::collections::BTreeSet::new();
    for agent in &cluster.agents {
        let Ok(log) = std::fs::read_to_string(&agent.log) else {
            continue;
        };
        for line in log.lines().filter(|l| l.contains("membership changed")) {
            let Some(member) = field(line, "member") else {
                continue;
            };
            if member == victim {
                continue;
            }
            match field(line, "change") {
                Some("Suspect") => suspect.insert((agent.node.clone(), member.to_string())),
                Some("Failed") => failed.insert((agent.node.clone(), member.to_string())),
                _ => false,
            };
        }
    }
    (suspect.len(), failed.len())
}

/// The value of `name=value` in a log line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    line[start..].split_whitespace().next()
}

fn median_max(mut values: Vec<u64>) -> (u64, u64) {
    values.sort_unstable();
    let median = values.get(values.len() / 2).copied().unwrap_or(0);
    (median, values.last().copied().unwrap_or(0))
}

fn progress(text: &str) {
    let mut err = std::io::stderr();
    let _ = write!(err, "\r\x1b[2K{text}");
    let _ = err.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_fields_are_found() {
        let line = "2026-11-25T18:00:00Z  INFO agent::gossip: membership changed member=node-007 addr=127.0.1.7:8301 change=Suspect";
        assert_eq!(field(line, "member"), Some("node-007"));
        assert_eq!(field(line, "change"), Some("Suspect"));
        assert_eq!(field(line, "nope"), None);
    }

    #[test]
    fn median_and_max() {
        assert_eq!(median_max(vec![5, 1, 3]), (3, 5));
        assert_eq!(median_max(vec![]), (0, 0));
    }
}
