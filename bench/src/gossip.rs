//! `bench gossip --agents N [--servers S]`: N agents on 127.0.1.1 … 127.0.1.N, the first
//! S (default 3) of them servers forming one Raft cluster, the others client agents.
//!
//! Measures: the time until every agent sees N alive; after `kill -9` of one, the time
//! until every other agent marks it failed; false alarms (any other member ever marked
//! suspect or failed, read from the agents' logs); the time for a user event to reach
//! every agent (each agent's `/v1/event/stream` reports when it got it); resident memory
//! per client agent and per server. The agent killed is a client agent.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;

use crate::cluster::{AgentProc, Cluster, agent_binary, progress};

/// Flags of `bench gossip`.
#[derive(Debug, Args)]
pub struct GossipArgs {
    /// Number of agent processes (at most 250).
    #[arg(long, default_value_t = 50)]
    agents: u8,
    /// How many of them are servers (the first ones; at least 2 agents must be clients).
    #[arg(long, default_value_t = 3)]
    servers: u8,
    /// Bound on each phase, in seconds.
    #[arg(long, default_value_t = 120)]
    seconds: u64,
    /// Keep the agents' logs and data (the directory is printed at the end).
    #[arg(long)]
    keep_logs: bool,
}

const POLL: Duration = Duration::from_millis(100);

/// User events fired one after the other to measure how fast they spread.
const EVENTS: usize = 20;

pub async fn run(args: GossipArgs) -> anyhow::Result<()> {
    if !(2..=250).contains(&args.agents) {
        bail!("--agents must be between 2 and 250");
    }
    if args.agents.saturating_sub(args.servers) < 2 {
        bail!("--servers must leave at least 2 client agents");
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

    let servers = args.servers as usize;
    let first_spawn = Instant::now();
    let name = |i: usize| format!("node-{i:03}");
    if servers > 0 {
        cluster.start_server(&name(1), ip(1), None, servers as u32)?;
    } else {
        cluster.start_client(&name(1), ip(1), None)?;
    }
    wait_http(&http, &cluster.agents[0], limit).await?;
    let seed = cluster.agents[0].lan;
    for i in 2..=n {
        if i <= servers {
            cluster.start_server(&name(i), ip(i), Some(seed), servers as u32)?;
        } else {
            cluster.start_client(&name(i), ip(i), Some(seed))?;
        }
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
    let rss = |agents: &[AgentProc]| -> Vec<u64> {
        agents.iter().filter_map(AgentProc::rss_kib).collect()
    };
    let server_rss = rss(&cluster.agents[..servers]);
    let client_rss = rss(&cluster.agents[servers..]);

    // Phase 2: user events, one at a time, each until every agent has it.
    let event_times = event_latencies(&cluster.agents, limit).await?;

    // Phase 3: kill -9 of the last agent, until every other one marks it failed.
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
    let (rss_median, rss_max) = median_max(client_rss);
    println!(
        "bench gossip: {n} agents on 127.0.1.1-{n} ({servers} servers, {} client agents), LAN preset of the agent",
        n - servers
    );
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
    let each: Vec<String> = event_times.iter().map(u64::to_string).collect();
    let (event_median, event_max) = median_max(event_times);
    println!(
        "| user event to all {n} agents, median / max of {EVENTS} | {event_median} / {event_max} ms |"
    );
    println!(
        "| user event to all {n} agents, each (ms) | {} |",
        each.join(" ")
    );
    println!(
        "| RSS per client agent, median / max | {:.1} / {:.1} MiB |",
        rss_median as f64 / 1024.0,
        rss_max as f64 / 1024.0
    );
    if !server_rss.is_empty() {
        let (median, max) = median_max(server_rss);
        println!(
            "| RSS per server, median / max | {:.1} / {:.1} MiB |",
            median as f64 / 1024.0,
            max as f64 / 1024.0
        );
    }
    Ok(())
}

/// Fires [`EVENTS`] user events, each from another agent, and returns for each the
/// milliseconds from the fire request until the last agent's event stream delivered it.
async fn event_latencies(agents: &[AgentProc], limit: Duration) -> anyhow::Result<Vec<u64>> {
    let streams = reqwest::Client::new();
    let (arrived, mut arrivals) = tokio::sync::mpsc::unbounded_channel::<(usize, String)>();
    let mut followers = tokio::task::JoinSet::new();
    for (i, agent) in agents.iter().enumerate() {
        let url = format!("http://{}/v1/event/stream?type=user", agent.http);
        let response = streams.get(url).send().await?.error_for_status()?;
        let arrived = arrived.clone();
        followers.spawn(follow_stream(i, response, arrived));
    }
    let fire = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut times = Vec::with_capacity(EVENTS);
    for e in 0..EVENTS {
        let from = &agents[e * 7 % agents.len()];
        let started = Instant::now();
        let fired: serde_json::Value = fire
            .put(format!("http://{}/v1/event/fire/bench", from.http))
            .body(format!("event {e}"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let id = fired["ID"].as_str().unwrap_or_default().to_string();
        let mut have = vec![false; agents.len()];
        while have.iter().any(|h| !h) {
            let remaining = limit.saturating_sub(started.elapsed());
            match tokio::time::timeout(remaining, arrivals.recv()).await {
                Ok(Some((agent, got))) if got == id => have[agent] = true,
                Ok(Some(_)) => {}
                Ok(None) => bail!("the event streams closed"),
                Err(_) => bail!(
                    "event {e} reached {}/{} agents in {limit:?}",
                    have.iter().filter(|h| **h).count(),
                    agents.len()
                ),
            }
        }
        let took = started.elapsed();
        times.push(took.as_millis() as u64);
        progress(&format!(
            "user events: {}/{EVENTS}, last reached all in {} ms",
            e + 1,
            took.as_millis()
        ));
    }
    followers.abort_all();
    Ok(times)
}

/// Reports `(agent, event ID)` for every user event on one agent's stream.
async fn follow_stream(
    agent: usize,
    mut response: reqwest::Response,
    arrived: tokio::sync::mpsc::UnboundedSender<(usize, String)>,
) {
    let mut pending = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if let Some(id) = stream_event_id(&line) {
                let _ = arrived.send((agent, id));
            }
        }
    }
}

/// The `ID` of a `data:` line of the event stream.
fn stream_event_id(line: &[u8]) -> Option<String> {
    let data = std::str::from_utf8(line).ok()?.strip_prefix("data:")?;
    let event: serde_json::Value = serde_json::from_str(data.trim()).ok()?;
    Some(event["ID"].as_str()?.to_string())
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
    fn event_ids_are_read_from_data_lines() {
        assert_eq!(
            stream_event_id(b"data: {\"ID\":\"abc\",\"Name\":\"bench\"}\n").as_deref(),
            Some("abc")
        );
        assert_eq!(stream_event_id(b"event: user\n"), None);
        assert_eq!(stream_event_id(b": heartbeat\n"), None);
    }

    #[test]
    fn median_and_max() {
        assert_eq!(median_max(vec![5, 1, 3]), (3, 5));
        assert_eq!(median_max(vec![]), (0, 0));
    }
}
