//! A leader that is paused (SIGSTOP) while the others elect a new one and take writes
//! must not answer reads from its old state when it wakes: the requests that queued up
//! while it slept are answered with the new value, in the default mode as with
//! `?consistent`. Three servers of the built binary on 127.0.0.176-178.

// Setup helpers outside #[test] functions panic on failure too.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::IpAddr;
use std::time::Duration;

use support::{AgentProcess, NodeSpec, Pki, eventually};

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

async fn leader_of(client: &reqwest::Client, agent: &AgentProcess) -> Option<String> {
    let response = client
        .get(agent.url("/v1/status/leader"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    let leader: String = response.json().await.ok()?;
    (!leader.is_empty()).then_some(leader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_woken_from_a_pause_serves_no_stale_reads() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let client = reqwest::Client::new();
    let first = NodeSpec::server(&pki, ip(176), "p1", None, dir.path());
    let seed = Some(first.lan);
    let specs = [
        first,
        NodeSpec::server(&pki, ip(177), "p2", seed, dir.path()),
        NodeSpec::server(&pki, ip(178), "p3", seed, dir.path()),
    ];
    let mut agents: Vec<AgentProcess> = specs.iter().map(|s| s.start(dir.path())).collect();
    for agent in &mut agents {
        agent.wait_ready().await;
    }
    let put = |agent: &AgentProcess, value: &str| {
        client
            .put(agent.url("/v1/kv/register"))
            .body(value.to_string())
            .send()
    };
    assert_eq!(
        put(&agents[0], "old").await.unwrap().text().await.unwrap(),
        "true"
    );

    // Pause the leader until another server leads and has written "new".
    let leader = leader_of(&client, &agents[0]).await.unwrap();
    let paused = specs
        .iter()
        .position(|s| s.lan.to_string() == leader)
        .unwrap();
    agents[paused].signal("STOP");
    let others: Vec<usize> = (0..3).filter(|i| *i != paused).collect();
    eventually("a new leader", Duration::from_secs(30), || async {
        match leader_of(&client, &agents[others[0]]).await {
            Some(new) => new != leader,
            None => false,
        }
    })
    .await;
    eventually(
        "the write of the new value",
        Duration::from_secs(20),
        || async {
            match put(&agents[others[0]], "new").await {
                Ok(response) => response.text().await.unwrap_or_default() == "true",
                Err(_) => false,
            }
        },
    )
    .await;

    // Reads sent to the sleeping old leader wait in its sockets; wake it and see what
    // they get.
    let mut reads = Vec::new();
    for i in 0..20 {
        let mode = if i % 2 == 0 { "" } else { "&consistent" };
        let url = agents[paused].url(&format!("/v1/kv/register?raw{mode}"));
        let request = client.get(url).timeout(Duration::from_secs(20)).send();
        reads.push(tokio::spawn(async move {
            let response = request.await.map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            Ok::<_, String>((status, response.text().await.unwrap_or_default()))
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    agents[paused].signal("CONT");
    // Each is answered with the new value: the old leader finds out it was deposed
    // when it confirms its leadership, and asks the new one.
    for (i, read) in reads.into_iter().enumerate() {
        let answer = read.await.unwrap();
        assert_eq!(
            answer,
            Ok((200, "new".to_string())),
            "read {i} on the woken old leader"
        );
    }
}
