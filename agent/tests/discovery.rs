//! Process tests of service discovery through client agents: three servers and two
//! client agents of the built binary, each on a loopback address of its own. Programs
//! talk only to their local (client) agent; DNS is asked with `dig`, the tool.

// Setup helpers outside #[test] functions panic on failure too.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{AgentProcess, NodeSpec, Pki, dig, eventually, get_json, have_dig};

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// The service IDs that `/v1/health/service/<name>?passing` lists on `agent`, with the
/// node of each.
async fn passing(client: &reqwest::Client, agent: &AgentProcess, name: &str) -> Vec<String> {
    let entries: Value = get_json(
        client,
        agent.url(&format!("/v1/health/service/{name}?passing")),
    )
    .await;
    entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{}@{}", e["Service"]["ID"], e["Node"]["Node"]).replace('"', ""))
        .collect()
}

async fn put(client: &reqwest::Client, url: String, body: &str) -> (u16, String) {
    let response = client.put(url).body(body.to_string()).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_on_one_client_are_found_from_another_over_http_and_dns() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let s1 = NodeSpec::server(&pki, ip(161), "s1", None, dir.path());
    let seed = Some(s1.lan);
    let specs = [
        s1,
        NodeSpec::server(&pki, ip(162), "s2", seed, dir.path()),
        NodeSpec::server(&pki, ip(163), "s3", seed, dir.path()),
    ];
    let mut servers: Vec<Option<AgentProcess>> =
        specs.iter().map(|s| Some(s.start(dir.path()))).collect();
    let mut c1 = NodeSpec::client(&pki, ip(164), "c1", seed, dir.path()).start(dir.path());
    let mut c2 = NodeSpec::client(&pki, ip(165), "c2", seed, dir.path()).start(dir.path());
    // Client agents answer `/v1/status/leader` by asking a server.
    c1.wait_ready().await;
    c2.wait_ready().await;

    // KV written through one client agent is read through the other.
    let (status, body) = put(&client, c1.url("/v1/kv/shared/greeting"), "hello").await;
    assert_eq!((status, body.as_str()), (200, "true"));
    let read = client
        .get(c2.url("/v1/kv/shared/greeting?raw"))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(read.text().await.unwrap(), "hello");

    // Every agent's node is in the catalog, with a passing serfHealth check.
    eventually(
        "five nodes in the catalog",
        Duration::from_secs(20),
        || async {
            let nodes: Value = get_json(&client, c2.url("/v1/catalog/nodes")).await;
            nodes.as_array().unwrap().len() == 5
        },
    )
    .await;
    eventually(
        "c1's serfHealth passing",
        Duration::from_secs(10),
        || async {
            let checks: Value = get_json(&client, c2.url("/v1/health/node/c1")).await;
            checks[0]["CheckID"] == "serfHealth" && checks[0]["Status"] == "passing"
        },
    )
    .await;

    // A service with a TTL check on c1, passing: listed from c2 over HTTP and DNS.
    let registration = r#"{"Name": "web", "ID": "web-1", "Port": 8080, "Tags": ["v1"],
        "Check": {"TTL": "5s"}}"#;
    let (status, body) = put(&client, c1.url("/v1/agent/service/register"), registration).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = put(&client, c1.url("/v1/agent/check/pass/service:web-1"), "").await;
    assert_eq!(status, 200, "{body}");
    eventually(
        "web passing, seen from c2",
        Duration::from_secs(10),
        || async { passing(&client, &c2, "web").await == ["web-1@c1"] },
    )
    .await;
    let instances: Value = get_json(&client, c2.url("/v1/catalog/service/web?tag=v1")).await;
    assert_eq!(instances[0]["ServicePort"], 8080, "{instances}");
    assert_eq!(instances[0]["Address"], "127.0.0.164", "{instances}");
    let dns = have_dig();
    if dns {
        let srv = dig(c2.dns, "web.service.consul", "SRV");
        assert_eq!(srv, ["1 1 8080 c1.node.dc1.consul."]);
        assert_eq!(dig(c2.dns, "v1.web.service.consul", "A"), ["127.0.0.164"]);
        assert_eq!(dig(c2.dns, "c1.node.consul", "A"), ["127.0.0.164"]);
    }

    // Failing: gone from both within the check's TTL.
    let failed_at = Instant::now();
    let (status, body) = put(&client, c1.url("/v1/agent/check/fail/service:web-1"), "").await;
    assert_eq!(status, 200, "{body}");
    eventually("web no longer passing", Duration::from_secs(5), || async {
        passing(&client, &c2, "web").await.is_empty()
            && (!dns || dig(c2.dns, "web.service.consul", "SRV").is_empty())
    })
    .await;
    eprintln!(
        "a failing check left HTTP and DNS answers after {:?}",
        failed_at.elapsed()
    );

    // Passing again, then c1 dies: serfHealth makes its services critical.
    let (status, _) = put(&client, c1.url("/v1/agent/check/pass/service:web-1"), "").await;
    assert_eq!(status, 200);
    eventually("web passing again", Duration::from_secs(5), || async {
        !passing(&client, &c2, "web").await.is_empty()
    })
    .await;
    c1.kill9();
    let killed_at = Instant::now();
    eventually(
        "c1's serfHealth critical",
        Duration::from_secs(40),
        || async {
            let checks: Value = get_json(&client, c2.url("/v1/health/service/web")).await;
            checks[0]["Checks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["CheckID"] == "serfHealth" && c["Status"] == "critical")
        },
    )
    .await;
    assert!(passing(&client, &c2, "web").await.is_empty());
    if dns {
        assert!(dig(c2.dns, "web.service.consul", "SRV").is_empty());
    }
    eprintln!(
        "serfHealth critical {:?} after kill -9",
        killed_at.elapsed()
    );

    // c2 has talked to the servers; kill -9 of the leader does not fail its next
    // requests, a read and a write.
    for _ in 0..6 {
        let (status, _) = put(&client, c2.url("/v1/kv/shared/warm"), "x").await;
        assert_eq!(status, 200);
    }
    let leader: String = get_json(&client, c2.url("/v1/status/leader")).await;
    let leader_index = specs
        .iter()
        .position(|s| s.lan.to_string() == leader)
        .unwrap();
    servers[leader_index].take().unwrap().kill9();
    let read = client
        .get(c2.url("/v1/kv/shared/greeting?raw"))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200, "{:?}", read.text().await);
    let (status, body) = put(&client, c2.url("/v1/kv/shared/after"), "failover").await;
    assert_eq!((status, body.as_str()), (200, "true"));
    drop(servers);
}

/// `agent watch --type services` prints the catalog's services on start and on every
/// change: here, a service registered on the agent.
#[test]
fn a_services_watch_sees_a_new_service() {
    use std::io::{BufRead, BufReader};

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut agent = AgentProcess::dev(ip(167), &dir.path().join("data"), dir.path());
    runtime.block_on(agent.wait_ready());
    let mut watch = Command::new(support::agent_bin())
        .args(["watch", "--type", "services"])
        .env("AGENT_HTTP_ADDR", agent.http.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    // The first answer: no service yet.
    let first = lines.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(first, "{}");
    let client = reqwest::Client::new();
    let (status, body) = runtime.block_on(put(
        &client,
        agent.url("/v1/agent/service/register"),
        r#"{"Name": "web", "Tags": ["v3"], "Port": 80}"#,
    ));
    assert_eq!(status, 200, "{body}");
    let next = lines.recv_timeout(Duration::from_secs(20)).unwrap();
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(next, r#"{"web":["v3"]}"#);
}
