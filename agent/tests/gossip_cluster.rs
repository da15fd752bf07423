//! Process tests of LAN gossip: agents of the built binary, each on a loopback address of
//! its own, joining, failing, leaving, and a stranger with another CA's certificate.

// Setup helpers outside #[test] functions panic on failure too.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use agent::tls::Role;
use support::{AgentProcess, Pki, eventually, free_port, free_udp_port};

const AGENTS: u8 = 15;

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// Starts a client agent `node` on `127.0.0.<last>` with new certificates of `pki`.
fn start_client(
    pki: &Pki,
    last: u8,
    node: &str,
    join: Option<SocketAddr>,
    dir: &Path,
) -> AgentProcess {
    let http = SocketAddr::new(ip(last), free_port(ip(last)));
    let lan = SocketAddr::new(ip(last), free_udp_port(ip(last)));
    let tls = pki.files(Role::Client, "dc1", node);
    start_client_on(tls, http, lan, node, join, dir)
}

/// Starts a client agent `node` on the given addresses with the given TLS arguments,
/// its data in `dir/<node>` (so a restart keeps its state).
fn start_client_on(
    tls: Vec<String>,
    http: SocketAddr,
    lan: SocketAddr,
    node: &str,
    join: Option<SocketAddr>,
    dir: &Path,
) -> AgentProcess {
    let mut args: Vec<String> = vec!["--node".into(), node.into(), "--data-dir".into()];
    args.push(dir.join(node).display().to_string());
    args.extend(tls);
    if let Some(seed) = join {
        args.extend(["--join".into(), seed.to_string()]);
    }
    AgentProcess::start(&args, http, lan, dir)
}

/// Kills `agent` and starts it again as itself, without `--join`.
fn restart_client(pki: &Pki, agent: AgentProcess, node: &str, dir: &Path) -> AgentProcess {
    let (http, lan) = (agent.http, agent.lan);
    drop(agent);
    start_client_on(pki.existing_files("dc1", node), http, lan, node, None, dir)
}

/// Starts agents `a` (on `127.0.0.<last>`) and `b` (on the next address, joining `a`)
/// and waits until they see each other.
async fn start_pair(pki: &Pki, last: u8, dir: &Path) -> (AgentProcess, AgentProcess) {
    let mut a = start_client(pki, last, "a", None, dir);
    a.wait_http().await;
    let mut b = start_client(pki, last + 1, "b", Some(a.lan), dir);
    b.wait_http().await;
    eventually(
        "a and b see each other",
        Duration::from_secs(30),
        || async { a.members().await.len() == 2 && b.members().await.len() == 2 },
    )
    .await;
    (a, b)
}

async fn status_everywhere(agents: &[&AgentProcess], node: &str, status: u8) -> bool {
    for agent in agents {
        let members = agent.members().await;
        if !members.iter().any(|(name, s)| name == node && *s == status) {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifteen_agents_converge_see_a_failure_and_a_leave() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let name = |i: u8| format!("node-{i:02}");

    let mut agents = vec![start_client(&pki, 101, &name(1), None, dir.path())];
    agents[0].wait_http().await;
    let seed = agents[0].lan;
    for i in 2..=AGENTS {
        agents.push(start_client(
            &pki,
            100 + i,
            &name(i),
            Some(seed),
            dir.path(),
        ));
    }
    for agent in &mut agents {
        agent.wait_http().await;
    }

    let started = Instant::now();
    eventually(
        "15 alive members everywhere",
        Duration::from_secs(60),
        || async {
            for agent in &agents {
                let members = agent.members().await;
                if members.len() != AGENTS as usize || members.iter().any(|(_, s)| *s != 1) {
                    return false;
                }
            }
            true
        },
    )
    .await;
    eprintln!("15 agents converged in {:?}", started.elapsed());

    // A stranger whose certificate comes from another CA never gets in.
    let other_ca = Pki::new();
    let stranger = start_client(&other_ca, 120, "stranger", Some(seed), dir.path());
    tokio::time::sleep(Duration::from_secs(4)).await;
    for agent in &agents {
        assert!(
            agent
                .members()
                .await
                .iter()
                .all(|(name, _)| name != "stranger"),
            "the stranger appeared"
        );
    }
    drop(stranger);

    // kill -9 of one agent: everyone else marks it failed (4).
    let mut victim = agents.pop().unwrap();
    victim.kill9();
    let started = Instant::now();
    let living: Vec<&AgentProcess> = agents.iter().collect();
    let victim_name = name(AGENTS);
    eventually(
        "the killed agent failed everywhere",
        Duration::from_secs(45),
        || status_everywhere(&living, &victim_name, 4),
    )
    .await;
    eprintln!("failure seen everywhere after {:?}", started.elapsed());

    // A graceful leave: everyone else marks it left (3), and the agent exits 0.
    let mut leaver = agents.pop().unwrap();
    let out = leaver.cli(&["leave"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        leaver.wait_exit(Duration::from_secs(15)),
        Some(0),
        "{}",
        leaver.log_text()
    );
    let living: Vec<&AgentProcess> = agents.iter().collect();
    let leaver_name = name(AGENTS - 1);
    eventually(
        "the leaver left everywhere",
        Duration::from_secs(30),
        || status_everywhere(&living, &leaver_name, 3),
    )
    .await;

    // The members table of the CLI.
    let table = agents[0].cli(&["members", "--status", "alive"]);
    let text = String::from_utf8_lossy(&table.stdout).to_string();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["Node", "Address", "Status", "Type", "DC", "Build"]);
    assert_eq!(lines.count(), AGENTS as usize - 2, "{text}");
    assert!(text.contains("node-01") && text.contains("client") && text.contains("dc1"));
    let failed = agents[0].cli(&["members", "--status", "failed"]);
    assert!(String::from_utf8_lossy(&failed.stdout).contains(&name(AGENTS)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_rejoins_without_join_and_supersedes_itself() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let (a, b) = start_pair(&pki, 131, dir.path()).await;
    // Let b save its member list (within 1 s), then kill it and start it again without
    // --join.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut b = restart_client(&pki, b, "b", dir.path());
    b.wait_http().await;
    eventually(
        "b rejoined a without --join",
        Duration::from_secs(30),
        || async {
            let seen_by_b = b.members().await;
            let seen_by_a = a.members().await;
            seen_by_b.iter().any(|(n, s)| n == "a" && *s == 1)
                && seen_by_a.iter().filter(|(n, _)| n == "b").count() == 1
                && seen_by_a.iter().any(|(n, s)| n == "b" && *s == 1)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_declared_failed_is_alive_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let (a, mut b) = start_pair(&pki, 133, dir.path()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    b.kill9();
    let agents = [&a];
    eventually("a marks b failed", Duration::from_secs(30), || {
        status_everywhere(&agents, "b", 4)
    })
    .await;
    // Restart a while after the failure was declared, as an operator would.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut b = restart_client(&pki, b, "b", dir.path());
    b.wait_http().await;
    eventually("b alive again in a's view", Duration::from_secs(30), || {
        status_everywhere(&agents, "b", 1)
    })
    .await;
    eventually("a alive in b's view", Duration::from_secs(10), || async {
        b.members().await.iter().any(|(n, s)| n == "a" && *s == 1)
    })
    .await;
}
