//! Process tests of user events: ten agents of the built binary, each on a loopback
//! address of its own with a handler that records what it was given; events fired on
//! one are listed on all, run each handler once, respect node, service and tag filters,
//! and do not run again on an agent that restarts.

// Setup helpers outside #[test] functions panic on failure too.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent::tls::Role;
use serde_json::Value;
use support::{AgentProcess, Pki, eventually, free_port, free_udp_port};

const AGENTS: usize = 10;
/// Agents live on 127.0.0.151 and up.
const FIRST_IP: u8 = 151;

fn ip(n: usize) -> IpAddr {
    IpAddr::from([127, 0, 0, FIRST_IP + n as u8])
}

fn node(n: usize) -> String {
    format!("ev-{n}")
}

/// Where agent `n`'s handler appends the payloads it is given, one per line.
fn handled_file(dir: &Path, n: usize) -> PathBuf {
    dir.join(format!("{}.handled", node(n)))
}

/// Agents 0–2 run `web` tagged `canary`, 3–5 `web` tagged `stable`, the others nothing.
fn services(n: usize) -> Value {
    match n {
        0..=2 => serde_json::json!([{ "name": "web", "tags": ["canary"] }]),
        3..=5 => serde_json::json!([{ "name": "web", "tags": ["stable"] }]),
        _ => serde_json::json!([]),
    }
}

struct Cluster {
    pki: Pki,
    dir: tempfile::TempDir,
    agents: Vec<AgentProcess>,
}

impl Cluster {
    fn args(&self, n: usize, join: Option<SocketAddr>) -> Vec<String> {
        let dir = self.dir.path();
        let config = dir.join(format!("{}.json", node(n)));
        std::fs::write(
            &config,
            serde_json::json!({ "services": services(n) }).to_string(),
        )
        .unwrap();
        let handled = handled_file(dir, n).display().to_string();
        let mut args: Vec<String> = vec![
            "--node".into(),
            node(n),
            "--data-dir".into(),
            dir.join(node(n)).display().to_string(),
            "--config".into(),
            config.display().to_string(),
            "--event-handler".into(),
            format!("user:deploy=cat >> {handled}; echo >> {handled}"),
        ];
        // A restarted agent keeps its certificate.
        let cert = self.pki.dir.path().join(format!("{}.dc1.pem", node(n)));
        if cert.exists() {
            args.extend(self.pki.existing_files("dc1", &node(n)));
        } else {
            args.extend(self.pki.files(Role::Client, "dc1", &node(n)));
        }
        if let Some(seed) = join {
            args.extend(["--join".into(), seed.to_string()]);
        }
        args
    }

    fn start(&self, n: usize, http: SocketAddr, lan: SocketAddr) -> AgentProcess {
        let join = (n > 0).then(|| self.agents[0].lan);
        AgentProcess::start(&self.args(n, join), http, lan, self.dir.path())
    }

    async fn list(&self, n: usize) -> Vec<Value> {
        let url = self.agents[n].url("/v1/event/list?name=deploy");
        let client = reqwest::Client::new();
        match client.get(url).send().await {
            Ok(response) => response.json().await.unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    async fn lists(&self, n: usize, id: &str) -> bool {
        self.list(n).await.iter().any(|e| e["ID"] == id)
    }

    async fn fire(&self, n: usize, payload: &str, query: &str) -> String {
        let url = self.agents[n].url(&format!("/v1/event/fire/deploy{query}"));
        let response = reqwest::Client::new()
            .put(url)
            .body(payload.to_string())
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "fire {payload}: {response:?}"
        );
        let event: Value = response.json().await.unwrap();
        event["ID"].as_str().unwrap().to_string()
    }

    fn handled(&self, n: usize) -> String {
        std::fs::read_to_string(handled_file(self.dir.path(), n)).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_events_reach_every_agent_once_and_respect_filters_and_restarts() {
    let mut cluster = Cluster {
        pki: Pki::new(),
        dir: tempfile::tempdir().unwrap(),
        agents: Vec::new(),
    };
    for n in 0..AGENTS {
        let http = SocketAddr::new(ip(n), free_port(ip(n)));
        let lan = SocketAddr::new(ip(n), free_udp_port(ip(n)));
        let mut agent = cluster.start(n, http, lan);
        agent.wait_http().await;
        cluster.agents.push(agent);
    }
    eventually(
        "all agents see all agents alive",
        Duration::from_secs(60),
        || async {
            for agent in &cluster.agents {
                let members = agent.members().await;
                if members.len() != AGENTS || members.iter().any(|(_, status)| *status != 1) {
                    return false;
                }
            }
            true
        },
    )
    .await;

    // Fired on one agent: listed on all ten within 2 s, each handler run once.
    let fired = Instant::now();
    let id = cluster.fire(5, "v42", "").await;
    eventually(
        "the event is listed on all agents",
        Duration::from_secs(2),
        || async {
            for n in 0..AGENTS {
                if !cluster.lists(n, &id).await {
                    return false;
                }
            }
            true
        },
    )
    .await;
    eprintln!("listed on all {AGENTS} agents after {:?}", fired.elapsed());
    eventually("every handler ran", Duration::from_secs(10), || async {
        (0..AGENTS).all(|n| !cluster.handled(n).is_empty())
    })
    .await;
    // Gossip carries the event more than once; give the repeats time to arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for n in 0..AGENTS {
        assert_eq!(cluster.handled(n), "v42\n", "handler of {}", node(n));
    }

    // Filters: a node regex, then a service and tag regex; a last unfiltered event
    // tells when everyone has had the chance to see the filtered ones.
    cluster.fire(9, "v43", "?node=%5Eev-%5B0-4%5D%24").await;
    cluster
        .fire(9, "v44", "?service=%5Eweb%24&tag=%5Ecanary%24")
        .await;
    let last = cluster.fire(9, "v45", "").await;
    eventually(
        "the last event is listed everywhere",
        Duration::from_secs(10),
        || async {
            for n in 0..AGENTS {
                if !cluster.lists(n, &last).await {
                    return false;
                }
            }
            true
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for n in 0..AGENTS {
        let mut want = vec!["v42"];
        if n <= 4 {
            want.push("v43");
        }
        if n <= 2 {
            want.push("v44");
        }
        want.push("v45");
        let mut got: Vec<String> = cluster.handled(n).lines().map(String::from).collect();
        got.sort();
        assert_eq!(got, want, "handler of {}", node(n));
        let listed: Vec<String> = cluster
            .list(n)
            .await
            .iter()
            .map(|e| e["LTime"].to_string())
            .collect();
        assert_eq!(listed.len(), want.len(), "events listed on {}", node(n));
    }

    // Too large: refused with 413, nothing fired.
    let response = reqwest::Client::new()
        .put(cluster.agents[0].url("/v1/event/fire/deploy"))
        .body("x".repeat(600))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::PAYLOAD_TOO_LARGE);

    // A restarted agent does not run old events again, however they come back to it,
    // and does run new ones.
    let (http, lan) = (cluster.agents[7].http, cluster.agents[7].lan);
    cluster.agents[7].kill9();
    let mut restarted = cluster.start(7, http, lan);
    restarted.wait_http().await;
    cluster.agents[7] = restarted;
    eventually(
        "the restarted agent sees everyone alive",
        Duration::from_secs(30),
        || async {
            let members = cluster.agents[7].members().await;
            members.len() == AGENTS && members.iter().all(|(_, status)| *status == 1)
        },
    )
    .await;
    // Long enough for full-state exchanges, which carry the recent events.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = cluster.fire(0, "v46", "").await;
    eventually(
        "the restarted agent lists the new event",
        Duration::from_secs(10),
        || async { cluster.lists(7, &after).await },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let listed = cluster.list(7).await;
    assert_eq!(listed.len(), 1, "only the new event is listed: {listed:?}");
    let mut got: Vec<String> = cluster.handled(7).lines().map(String::from).collect();
    got.sort();
    assert_eq!(got, ["v42", "v45", "v46"], "handler of the restarted agent");
}
