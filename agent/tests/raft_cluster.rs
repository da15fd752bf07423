//! Process tests of the Raft KV across servers: three agents of the built binary with
//! `--bootstrap-expect 3`, each on a loopback address of its own.

// Setup helpers outside #[test] functions panic on failure too.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{AgentProcess, NodeSpec, Pki, eventually, get_json, put_text};

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// A server of this test's cluster: snapshots and dead-server cleanup come early, so
/// the test sees them.
fn server_spec(pki: &Pki, last: u8, node: &str, join: Option<SocketAddr>, dir: &Path) -> NodeSpec {
    let mut spec = NodeSpec::server(pki, ip(last), node, join, dir);
    spec.args.extend(
        [
            "--raft-snapshot-threshold",
            "64",
            "--raft-trailing-logs",
            "16",
            "--dead-server-cleanup",
            "2s",
        ]
        .map(String::from),
    );
    spec
}

fn start(spec: &NodeSpec, dir: &Path) -> AgentProcess {
    spec.start(dir)
}

async fn leader_of(client: &reqwest::Client, agent: &AgentProcess) -> Option<String> {
    let response = client
        .get(agent.url("/v1/status/leader"))
        .send()
        .await
        .ok()?;
    let leader: String = response.json().await.ok()?;
    (!leader.is_empty()).then_some(leader)
}

async fn voters(client: &reqwest::Client, agent: &AgentProcess) -> usize {
    let Ok(response) = client
        .get(agent.url("/v1/operator/raft/configuration"))
        .send()
        .await
    else {
        return 0;
    };
    let Ok(config) = response.json::<serde_json::Value>().await else {
        return 0;
    };
    config["Servers"]
        .as_array()
        .map(|s| s.iter().filter(|s| s["Voter"] == true).count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_form_one_cluster_survive_the_leader_and_grow() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let first = server_spec(&pki, 141, "s1", None, dir.path());
    let specs = vec![
        server_spec(&pki, 142, "s2", Some(first.lan), dir.path()),
        server_spec(&pki, 143, "s3", Some(first.lan), dir.path()),
    ];
    let specs: Vec<NodeSpec> = std::iter::once(first).chain(specs).collect();
    let mut servers: Vec<Option<AgentProcess>> =
        specs.iter().map(|s| Some(start(s, dir.path()))).collect();
    for server in servers.iter_mut().flatten() {
        server.wait_http().await;
    }

    // One leader, the same for all, and three voters.
    eventually(
        "one leader known to all three",
        Duration::from_secs(30),
        || async {
            let mut leaders = Vec::new();
            for server in servers.iter().flatten() {
                leaders.push(leader_of(&client, server).await);
            }
            leaders.iter().all(|l| l.is_some()) && leaders.windows(2).all(|w| w[0] == w[1])
        },
    )
    .await;
    eventually("three voters", Duration::from_secs(10), || async {
        voters(&client, servers[0].as_ref().unwrap()).await == 3
    })
    .await;

    // 300 concurrent PUTs spread over the three servers (followers forward them).
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let mut writers = Vec::new();
    for i in 0..300 {
        let server = servers[i % 3]
            .as_ref()
            .unwrap()
            .url(&format!("/v1/kv/load/k{i:03}"));
        let client = client.clone();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            let response = client
                .put(server)
                .body(format!("v{i}"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{:?}", response.text().await);
            assert_eq!(response.text().await.unwrap(), "true");
            acked
                .lock()
                .unwrap()
                .insert(format!("load/k{i:03}"), format!("v{i}"));
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), 300);
    for (i, (key, value)) in acked.iter().enumerate() {
        let server = servers[i % 3].as_ref().unwrap();
        let got = client
            .get(server.url(&format!("/v1/kv/{key}?consistent&raw")))
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), 200, "{key}");
        assert_eq!(&got.text().await.unwrap(), value);
    }

    // CAS through a follower follows Consul's rules.
    let leader_addr = leader_of(&client, servers[0].as_ref().unwrap())
        .await
        .unwrap();
    let follower = servers
        .iter()
        .flatten()
        .find(|s| s.lan.to_string() != leader_addr)
        .unwrap();
    let put = |q: String| {
        client
            .put(follower.url(&format!("/v1/kv/cas-key?{q}")))
            .body("x")
            .send()
    };
    assert_eq!(
        put("cas=0".into()).await.unwrap().text().await.unwrap(),
        "true"
    );
    assert_eq!(
        put("cas=0".into()).await.unwrap().text().await.unwrap(),
        "false"
    );
    let entry: serde_json::Value = get_json(&client, follower.url("/v1/kv/cas-key")).await;
    let index = entry[0]["ModifyIndex"].as_u64().unwrap();
    assert_eq!(
        put(format!("cas={}", index + 1000))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "false"
    );
    assert_eq!(
        put(format!("cas={index}"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "true"
    );

    // A blocking query wakes for its key, within 1 s, and not for another key.
    let watched = client
        .get(follower.url("/v1/kv/watched"))
        .send()
        .await
        .unwrap();
    let index: u64 = watched.headers()["x-consul-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let url = follower.url(&format!("/v1/kv/watched?index={index}&wait=20s"));
    let blocked = tokio::spawn({
        let client = client.clone();
        async move {
            let response = client.get(url).send().await.unwrap();
            (Instant::now(), response.status())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    put_text(&client, follower.url("/v1/kv/not-watched"), "1").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !blocked.is_finished(),
        "a write to another key woke the query"
    );
    let written = Instant::now();
    put_text(&client, follower.url("/v1/kv/watched"), "now").await;
    let (woke, status) = blocked.await.unwrap();
    assert_eq!(status, 200);
    assert!(
        woke.duration_since(written) < Duration::from_secs(1),
        "woke after {:?}",
        woke.duration_since(written)
    );

    // kill -9 of the leader: a new leader serves within 10 s, nothing acknowledged is lost.
    let leader_index = servers
        .iter()
        .position(|s| s.as_ref().is_some_and(|s| s.lan.to_string() == leader_addr))
        .unwrap();
    servers[leader_index].take().unwrap().kill9();
    let killed = Instant::now();
    let survivor = servers.iter().flatten().next().unwrap();
    // A read sent at once is held until a new leader answers it, not failed.
    let (key, value) = acked.iter().next().unwrap();
    let held = client
        .get(survivor.url(&format!("/v1/kv/{key}?raw")))
        .send()
        .await
        .unwrap();
    assert_eq!(held.status(), 200, "a read right after the leader died");
    assert_eq!(&held.text().await.unwrap(), value);
    eprintln!("read held across the failover: {:?}", killed.elapsed());
    eventually("a new leader", Duration::from_secs(10), || async {
        leader_of(&client, survivor)
            .await
            .is_some_and(|l| l != leader_addr)
    })
    .await;
    eventually("writes served again", Duration::from_secs(10), || async {
        let r = client
            .put(survivor.url("/v1/kv/after-failover"))
            .body("1")
            .send()
            .await;
        r.is_ok_and(|r| r.status() == 200)
    })
    .await;
    eprintln!("new leader serving {:?} after kill -9", killed.elapsed());
    for (key, value) in &acked {
        let got = client
            .get(survivor.url(&format!("/v1/kv/{key}?consistent&raw")))
            .send()
            .await
            .unwrap();
        assert_eq!(&got.text().await.unwrap(), value, "{key} after failover");
    }

    // Enough writes that the restarted server's missing log is purged behind a snapshot.
    for i in 0..150 {
        let r = client
            .put(survivor.url(&format!("/v1/kv/later/k{i:03}")))
            .body("z")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let mut restarted = start(&specs[leader_index], dir.path());
    restarted.wait_http().await;
    eventually(
        "the restarted server caught up",
        Duration::from_secs(30),
        || async {
            let r = client
                .get(restarted.url("/v1/kv/later/k149?stale&raw"))
                .send()
                .await;
            match r {
                Ok(r) if r.status() == 200 => r.text().await.is_ok_and(|t| t == "z"),
                _ => false,
            }
        },
    )
    .await;
    servers[leader_index] = Some(restarted);

    // A fourth server joins as a learner, then becomes a voter.
    let fourth_spec = server_spec(&pki, 144, "s4", Some(specs[0].lan), dir.path());
    let mut fourth = start(&fourth_spec, dir.path());
    fourth.wait_http().await;
    eventually("four voters", Duration::from_secs(30), || async {
        voters(&client, servers[0].as_ref().unwrap()).await == 4
    })
    .await;
    let got = client
        .get(fourth.url("/v1/kv/load/k000?stale&raw"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.text().await.unwrap(), "v0");

    // A server that leaves gracefully takes itself out of the Raft configuration.
    let out = fourth.cli(&["leave"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fourth.wait_exit(Duration::from_secs(15)),
        Some(0),
        "{}",
        fourth.log_text()
    );
    eventually(
        "three voters after the leave",
        Duration::from_secs(15),
        || async { voters(&client, servers[0].as_ref().unwrap()).await == 3 },
    )
    .await;

    // A fifth server that dies is removed once it has been failed for longer than
    // --dead-server-cleanup, but never below the three expected voters.
    let fifth_spec = server_spec(&pki, 145, "s5", Some(specs[0].lan), dir.path());
    let mut fifth = start(&fifth_spec, dir.path());
    fifth.wait_http().await;
    eventually(
        "four voters with the fifth",
        Duration::from_secs(30),
        || async { voters(&client, servers[0].as_ref().unwrap()).await == 4 },
    )
    .await;
    fifth.kill9();
    eventually(
        "the dead fifth removed",
        Duration::from_secs(40),
        || async { voters(&client, servers[0].as_ref().unwrap()).await == 3 },
    )
    .await;
    // Three voters is the floor: a further dead server stays a voter.
    let first_lan = specs[0].lan;
    let second = servers
        .iter_mut()
        .flatten()
        .find(|s| s.lan != first_lan)
        .unwrap();
    second.kill9();
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(voters(&client, servers[0].as_ref().unwrap()).await, 3);
}
