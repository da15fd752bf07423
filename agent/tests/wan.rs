//! Process tests of federation: two datacenters (three servers and a client agent in
//! dc1, one server in dc2), each agent on a loopback address of its own, linked by one
//! `--join-wan`. A request that names the other datacenter (`?dc=`) is answered there;
//! a server certificate of dc2 cannot take part in dc1's LAN pool.

// Setup helpers outside #[test] functions panic on failure too.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value;
use support::{NodeSpec, Pki, eventually, get_json};

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

async fn send(request: reqwest::RequestBuilder) -> (u16, String) {
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The names of the members `url` lists.
async fn member_names(client: &reqwest::Client, url: String) -> Vec<String> {
    let members: Value = get_json(client, url).await;
    let mut names: Vec<String> = members
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["Status"] == 1)
        .map(|m| m["Name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_datacenters_federate_and_answer_requests_for_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let client = reqwest::Client::new();

    // dc1: three servers and a client agent, joined on the LAN through s1.
    let s1 = NodeSpec::server_in(&pki, "dc1", 3, ip(211), "s1", None, dir.path());
    let seed = Some(s1.lan);
    let specs = [
        NodeSpec::server_in(&pki, "dc1", 3, ip(212), "s2", seed, dir.path()),
        NodeSpec::server_in(&pki, "dc1", 3, ip(213), "s3", seed, dir.path()),
    ];
    let c1 = NodeSpec::client(&pki, ip(214), "c1", seed, dir.path());
    // dc2: one server, joined on the WAN to s1 only; the other dc1 servers are found
    // through s1's LAN pool.
    let t1 = NodeSpec::server_in(&pki, "dc2", 1, ip(215), "t1", None, dir.path())
        .join_wan(s1.wan.unwrap());
    let mut s1_agent = s1.start(dir.path());
    let mut others: Vec<_> = specs.iter().map(|s| s.start(dir.path())).collect();
    let mut c1_agent = c1.start(dir.path());
    let mut t1_agent = t1.start(dir.path());
    s1_agent.wait_ready().await;
    for agent in &mut others {
        agent.wait_ready().await;
    }
    c1_agent.wait_ready().await;
    t1_agent.wait_ready().await;

    // Every server is in the WAN pool, as <node>.<dc>, though only t1 and s1 met.
    let wan = ["s1.dc1", "s2.dc1", "s3.dc1", "t1.dc2"];
    for agent in [&s1_agent, &others[0], &others[1], &t1_agent] {
        eventually(
            "every server in the WAN pool",
            Duration::from_secs(30),
            || async { member_names(&client, agent.url("/v1/agent/members?wan")).await == wan },
        )
        .await;
    }
    // A client agent is in no WAN pool.
    assert_eq!(
        member_names(&client, c1_agent.url("/v1/agent/members?wan")).await,
        Vec::<String>::new()
    );
    // The LAN pools stay apart.
    assert_eq!(
        member_names(&client, t1_agent.url("/v1/agent/members")).await,
        ["t1"]
    );
    let (status, body) = send(client.get(c1_agent.url("/v1/catalog/datacenters"))).await;
    assert_eq!((status, body.as_str()), (200, r#"["dc1","dc2"]"#));
    let (_, body) = send(client.get(t1_agent.url("/v1/catalog/datacenters"))).await;
    assert_eq!(body, r#"["dc2","dc1"]"#);

    // A write through dc1's client agent for dc2 lands in dc2 only.
    let (status, body) = send(
        client
            .put(c1_agent.url("/v1/kv/app/where?dc=dc2"))
            .body("in dc2"),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "true"));
    let (status, body) = send(client.get(t1_agent.url("/v1/kv/app/where?raw"))).await;
    assert_eq!((status, body.as_str()), (200, "in dc2"));
    let (status, body) = send(client.get(c1_agent.url("/v1/kv/app/where?raw&dc=dc2"))).await;
    assert_eq!((status, body.as_str()), (200, "in dc2"));
    let (status, _) = send(client.get(c1_agent.url("/v1/kv/app/where?raw"))).await;
    assert_eq!(status, 404, "the key must be absent from dc1");
    // The CLI names a datacenter too.
    let got = support::cli_with_stdin(
        &c1_agent.http.to_string(),
        &["kv", "get", "--dc", "dc2", "app/where"],
        None,
    );
    assert_eq!(String::from_utf8_lossy(&got.stdout), "in dc2\n");
    // From a follower server of dc1, and a consistent read, and dc2 asking dc1.
    let (status, body) =
        send(client.get(others[0].url("/v1/kv/app/where?raw&consistent&dc=dc2"))).await;
    assert_eq!((status, body.as_str()), (200, "in dc2"));
    let (status, body) = send(
        client
            .put(t1_agent.url("/v1/kv/app/from-dc2?dc=dc1"))
            .body("hello"),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "true"));
    let (status, body) = send(client.get(c1_agent.url("/v1/kv/app/from-dc2?raw"))).await;
    assert_eq!((status, body.as_str()), (200, "hello"));

    // Naming our own datacenter is a local request; an unknown one has no path.
    let (status, _) = send(client.get(c1_agent.url("/v1/kv/app/from-dc2?dc=dc1"))).await;
    assert_eq!(status, 200);
    let (status, body) = send(client.get(c1_agent.url("/v1/kv/app/where?dc=dc9"))).await;
    assert_eq!(status, 500);
    assert!(body.contains("No path to datacenter"), "{body}");

    // Catalog reads and status go across too: dc2's catalog lists its server.
    let nodes: Value = get_json(&client, c1_agent.url("/v1/catalog/nodes?dc=dc2")).await;
    eventually(
        "dc2's catalog through dc1",
        Duration::from_secs(20),
        || async {
            let nodes: Value = get_json(&client, c1_agent.url("/v1/catalog/nodes?dc=dc2")).await;
            nodes.as_array().unwrap().iter().any(|n| n["Node"] == "t1")
        },
    )
    .await;
    drop(nodes);
    let (_, leader) = send(client.get(c1_agent.url("/v1/status/leader?dc=dc2"))).await;
    assert_eq!(leader, format!("\"{}\"", t1.lan));

    // DNS names with a datacenter are answered from that datacenter's catalog.
    if support::have_dig() {
        let answers = support::dig(c1_agent.dns, "t1.node.dc2.consul", "A");
        assert_eq!(answers, ["127.0.0.215"]);
        assert!(support::dig(c1_agent.dns, "t1.node.consul", "A").is_empty());
    }

    // A user event fired from dc1 for dc2 reaches dc2's agents, not dc1's.
    let fired = support::cli_with_stdin(
        &c1_agent.http.to_string(),
        &["event", "--name", "deploy", "--dc", "dc2", "v42"],
        None,
    );
    assert!(
        fired.status.success(),
        "{}",
        String::from_utf8_lossy(&fired.stderr)
    );
    eventually("the event in dc2", Duration::from_secs(10), || async {
        let list: Value = get_json(&client, t1_agent.url("/v1/event/list?name=deploy")).await;
        list.as_array().unwrap().len() == 1
    })
    .await;
    let list: Value = get_json(&client, c1_agent.url("/v1/event/list?name=deploy")).await;
    assert_eq!(
        list,
        serde_json::json!([]),
        "the event must not fire in dc1"
    );

    // A dc2 server certificate cannot join dc1's LAN pool, so it never becomes one of
    // its servers: its join through s1 is never answered.
    let rogue = NodeSpec::server_in(&pki, "dc2", 1, ip(216), "rogue", Some(s1.lan), dir.path());
    let mut rogue_agent = rogue.start(dir.path());
    rogue_agent.wait_http().await;
    let joined = support::cli_with_stdin(
        &rogue_agent.http.to_string(),
        &["join", &s1.lan.to_string()],
        None,
    );
    assert!(!joined.status.success(), "a dc2 server joined dc1's LAN");
    let dc1_lan = member_names(&client, s1_agent.url("/v1/agent/members")).await;
    assert_eq!(dc1_lan, ["c1", "s1", "s2", "s3"]);
    let raft: Value = get_json(&client, c1_agent.url("/v1/operator/raft/configuration")).await;
    let mut servers: Vec<&str> = raft["Servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Node"].as_str().unwrap())
        .collect();
    servers.sort();
    assert_eq!(servers, ["s1", "s2", "s3"]);
}
