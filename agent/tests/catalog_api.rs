//! Process test of the catalog and health endpoints on `agent run --dev`: register, the
//! JSON shapes of every read, `?passing` and `?tag`, the internal sync's replace
//! semantics, a blocking query woken by a status change, and deregistration.

// Setup helpers outside #[test] functions panic on failure too.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{AgentProcess, free_port, free_udp_port};

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

struct Api {
    agent: AgentProcess,
    client: reqwest::Client,
}

impl Api {
    /// `GET path`; in a list, the entries of the agent's own node are left out.
    async fn get(&self, path: &str) -> (u16, u64, Value) {
        let (status, index, mut body) = self.get_all(path).await;
        if let Value::Array(list) = &mut body {
            list.retain(|v| v["Node"] != OWN_NODE && v["Node"]["Node"] != OWN_NODE);
        }
        (status, index, body)
    }

    async fn get_all(&self, path: &str) -> (u16, u64, Value) {
        let response = self.client.get(self.agent.url(path)).send().await.unwrap();
        let status = response.status().as_u16();
        let index = response
            .headers()
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, index, body)
    }

    async fn put(&self, path: &str, body: &Value) -> (u16, String) {
        let response = self
            .client
            .put(self.agent.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    async fn put_ok(&self, path: &str, body: &Value) {
        let (status, text) = self.put(path, body).await;
        assert_eq!((status, text.as_str()), (200, "true"), "PUT {path} {body}");
    }
}

fn register(node: &str, address: &str, id: &str, tags: &[&str], status: &str) -> Value {
    json!({
        "Node": node,
        "Address": address,
        "NodeMeta": {"rack": "r1"},
        "Service": {"ID": id, "Service": "web", "Tags": tags, "Port": 8080,
                    "Meta": {"version": "1"}},
        "Check": {"CheckID": format!("{id}-alive"), "Name": "alive", "Status": status,
                  "ServiceID": id, "Output": "HTTP 200"}
    })
}

/// The agent's own node, which its anti-entropy and the leader's serfHealth upkeep put
/// in the catalog.
const OWN_NODE: &str = "dev-node";

fn names(list: &Value, field: &str) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|v| v.pointer(field).unwrap().as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_and_health_endpoints_behave_like_consul() {
    let dir = tempfile::tempdir().unwrap();
    let http = SocketAddr::new(ip(181), free_port(ip(181)));
    let lan = SocketAddr::new(ip(181), free_udp_port(ip(181)));
    let mut agent = AgentProcess::dev_on(http, lan, &dir.path().join("data"), dir.path());
    agent.wait_ready().await;
    let api = Api {
        agent,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
    };
    // The agent's own node comes first, with its serfHealth check.
    support::eventually("the agent's own node", Duration::from_secs(10), || async {
        let (_, _, checks) = api.get_all(&format!("/v1/health/node/{OWN_NODE}")).await;
        checks[0]["CheckID"] == "serfHealth"
    })
    .await;

    let (status, _, dcs) = api.get("/v1/catalog/datacenters").await;
    assert_eq!((status, dcs), (200, json!(["dc1"])));
    // Empty lists are [], never null.
    let (status, index, body) = api.get("/v1/health/service/web").await;
    assert_eq!((status, body), (200, json!([])));
    assert!(index >= 1);

    api.put_ok(
        "/v1/catalog/register",
        &register("web-1", "10.0.0.1", "web-a", &["v1", "primary"], "passing"),
    )
    .await;
    api.put_ok(
        "/v1/catalog/register",
        &register("web-2", "10.0.0.2", "web-b", &["v2"], "critical"),
    )
    .await;

    // /v1/catalog/nodes
    let (status, index, nodes) = api.get("/v1/catalog/nodes").await;
    assert_eq!(status, 200);
    assert!(index >= 1);
    assert_eq!(names(&nodes, "/Node"), vec!["web-1", "web-2"]);
    let n1 = &nodes[0];
    assert_eq!(n1["Address"], "10.0.0.1");
    assert_eq!(n1["Datacenter"], "dc1");
    assert_eq!(n1["TaggedAddresses"]["lan"], "10.0.0.1");
    assert_eq!(n1["Meta"], json!({"rack": "r1"}));
    assert_eq!(n1["ID"], "");
    assert!(n1["CreateIndex"].as_u64().unwrap() >= 1);
    assert_eq!(n1["CreateIndex"], n1["ModifyIndex"]);

    // /v1/catalog/services
    let (_, _, services) = api.get("/v1/catalog/services").await;
    assert_eq!(services, json!({"web": ["primary", "v1", "v2"]}));

    // /v1/catalog/service/<name> with ?tag
    let (_, _, web) = api.get("/v1/catalog/service/web").await;
    assert_eq!(names(&web, "/Node"), vec!["web-1", "web-2"]);
    let a = &web[0];
    for (field, want) in [
        ("ServiceID", json!("web-a")),
        ("ServiceName", json!("web")),
        ("ServiceTags", json!(["v1", "primary"])),
        ("ServicePort", json!(8080)),
        ("ServiceAddress", json!("")),
        ("ServiceMeta", json!({"version": "1"})),
        ("ServiceKind", json!("")),
        ("ServiceEnableTagOverride", json!(false)),
        ("NodeMeta", json!({"rack": "r1"})),
        ("Address", json!("10.0.0.1")),
        ("Datacenter", json!("dc1")),
    ] {
        assert_eq!(a[field], want, "{field} in {a}");
    }
    let (_, _, tagged) = api.get("/v1/catalog/service/web?tag=v2").await;
    assert_eq!(names(&tagged, "/Node"), vec!["web-2"]);
    let (_, _, none) = api.get("/v1/catalog/service/web?tag=v1&tag=v2").await;
    assert_eq!(none, json!([]));
    let (_, _, none) = api.get("/v1/catalog/service/Web").await;
    assert_eq!(none, json!([]), "names match exactly");

    // /v1/catalog/node/<node>
    let (_, _, node) = api.get("/v1/catalog/node/web-1").await;
    assert_eq!(node["Node"]["Node"], "web-1");
    assert_eq!(node["Services"]["web-a"]["Service"], "web");
    assert_eq!(node["Services"]["web-a"]["Tags"], json!(["v1", "primary"]));
    assert_eq!(node["Services"]["web-a"]["Port"], 8080);
    let (status, _, missing) = api.get("/v1/catalog/node/nope").await;
    assert_eq!((status, missing), (200, Value::Null));

    // /v1/health/service/<name>, ?passing, ?tag
    let (_, web_index, health) = api.get("/v1/health/service/web").await;
    assert_eq!(names(&health, "/Node/Node"), vec!["web-1", "web-2"]);
    let check = &health[0]["Checks"][0];
    for (field, want) in [
        ("Node", json!("web-1")),
        ("CheckID", json!("web-a-alive")),
        ("Name", json!("alive")),
        ("Status", json!("passing")),
        ("Output", json!("HTTP 200")),
        ("ServiceID", json!("web-a")),
        ("ServiceName", json!("web")),
        ("ServiceTags", json!(["v1", "primary"])),
        ("Type", json!("")),
    ] {
        assert_eq!(check[field], want, "{field} in {check}");
    }
    assert_eq!(health[0]["Service"]["ID"], "web-a");
    assert_eq!(health[0]["Node"]["Datacenter"], "dc1");
    let (_, _, passing) = api.get("/v1/health/service/web?passing").await;
    assert_eq!(names(&passing, "/Node/Node"), vec!["web-1"]);
    let (_, _, passing) = api.get("/v1/health/service/web?passing=true&tag=v2").await;
    assert_eq!(passing, json!([]));
    let (_, _, all) = api.get("/v1/health/service/web?passing=false").await;
    assert_eq!(all.as_array().unwrap().len(), 2);
    let (status, _, _) = api.get("/v1/health/service/web?passing=maybe").await;
    assert_eq!(status, 400);

    // /v1/health/{node,checks,state}
    let (_, _, checks) = api.get("/v1/health/node/web-2").await;
    assert_eq!(names(&checks, "/CheckID"), vec!["web-b-alive"]);
    let (_, _, checks) = api.get("/v1/health/checks/web").await;
    assert_eq!(
        names(&checks, "/CheckID"),
        vec!["web-a-alive", "web-b-alive"]
    );
    let (_, _, critical) = api.get("/v1/health/state/critical").await;
    assert_eq!(names(&critical, "/Node"), vec!["web-2"]);
    let (_, _, any) = api.get("/v1/health/state/any").await;
    assert_eq!(any.as_array().unwrap().len(), 2);
    let (status, _, _) = api.get("/v1/health/state/bogus").await;
    assert_eq!(status, 400);

    // A blocking query on web's health is woken by a status change.
    let waiter = {
        let client = api.client.clone();
        let url = api.agent.url(&format!(
            "/v1/health/service/web?passing&index={web_index}&wait=20s"
        ));
        tokio::spawn(async move {
            let started = Instant::now();
            let response = client.get(url).send().await.unwrap();
            let index: u64 = response.headers()["x-consul-index"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            let body: Value = response.json().await.unwrap();
            (started.elapsed(), index, body)
        })
    };
    // A change to another service does not wake it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.put_ok(
        "/v1/catalog/register",
        &json!({"Node": "db-1", "Address": "10.0.0.9",
                "Service": {"Service": "db", "Port": 5432}}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "a change to db woke the web query");
    api.put_ok(
        "/v1/catalog/register",
        &register("web-2", "10.0.0.2", "web-b", &["v2"], "passing"),
    )
    .await;
    let (took, index, body) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the blocking query was not woken")
        .unwrap();
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(index > web_index);
    assert_eq!(names(&body, "/Node/Node"), vec!["web-1", "web-2"]);

    // The internal sync replaces a node's services and checks.
    let sync = |services: Value, checks: Value| {
        json!({"Node": "app-1", "ID": "8a5c4d3e-0000-4000-8000-000000000001",
               "Address": "10.0.1.1", "Meta": {"env": "test"},
               "Services": services, "Checks": checks})
    };
    api.put_ok(
        "/v1/internal/catalog/sync",
        &sync(
            json!([{"ID": "api-1", "Service": "api", "Tags": ["v1"], "Port": 9000},
                   {"Service": "cache", "Port": 6379, "Tags": null}]),
            json!([{"CheckID": "api-ttl", "Name": "api ttl", "Status": "passing",
                    "ServiceID": "api-1", "Type": "ttl"},
                   {"CheckID": "mem", "Name": "memory", "Status": "warning"}]),
        ),
    )
    .await;
    let (_, _, node) = api.get("/v1/catalog/node/app-1").await;
    assert_eq!(node["Node"]["ID"], "8a5c4d3e-0000-4000-8000-000000000001");
    let ids: Vec<&String> = node["Services"].as_object().unwrap().keys().collect();
    assert_eq!(ids, vec!["api-1", "cache"]);
    let second = sync(
        json!([{"ID": "api-1", "Service": "api", "Tags": ["v1"], "Port": 9000}]),
        json!([{"CheckID": "api-ttl", "Name": "api ttl", "Status": "passing",
                "ServiceID": "api-1", "Type": "ttl"}]),
    );
    api.put_ok("/v1/internal/catalog/sync", &second).await;
    let (_, _, node) = api.get("/v1/catalog/node/app-1").await;
    let ids: Vec<&String> = node["Services"].as_object().unwrap().keys().collect();
    assert_eq!(ids, vec!["api-1"]);
    let (_, api_index, checks) = api.get("/v1/health/node/app-1").await;
    assert_eq!(names(&checks, "/CheckID"), vec!["api-ttl"]);
    assert_eq!(checks[0]["Type"], "ttl");
    // An identical sync changes no index.
    api.put_ok("/v1/internal/catalog/sync", &second).await;
    let (_, again, _) = api.get("/v1/health/node/app-1").await;
    assert_eq!(again, api_index);
    // Only the servers set serfHealth.
    let (status, text) = api
        .put(
            "/v1/internal/catalog/sync",
            &sync(
                json!([]),
                json!([{"CheckID": "serfHealth", "Name": "x", "Status": "passing"}]),
            ),
        )
        .await;
    assert_eq!(status, 400, "{text}");

    // Bad input is a 400 with a reason.
    let (status, text) = api.put("/v1/catalog/register", &json!({"Node": "x"})).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("address"), "{text}");
    let (status, _) = api
        .put(
            "/v1/catalog/register",
            &json!({"Node": "x", "Address": "1.2.3.4",
                    "Check": {"CheckID": "c", "ServiceID": "nope"}}),
        )
        .await;
    assert_eq!(status, 400);
    let response = api
        .client
        .put(api.agent.url("/v1/catalog/register"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);

    // Deregistering a service, then a whole node.
    api.put_ok(
        "/v1/catalog/deregister",
        &json!({"Node": "db-1", "ServiceID": "db"}),
    )
    .await;
    let (_, _, services) = api.get("/v1/catalog/services").await;
    assert!(services.get("db").is_none(), "{services}");
    api.put_ok("/v1/catalog/deregister", &json!({"Node": "web-1"}))
        .await;
    let (_, _, nodes) = api.get("/v1/catalog/nodes").await;
    assert_eq!(names(&nodes, "/Node"), vec!["app-1", "db-1", "web-2"]);
    let (_, _, health) = api.get("/v1/health/service/web").await;
    assert_eq!(names(&health, "/Node/Node"), vec!["web-2"]);
    let (_, _, checks) = api.get("/v1/health/node/web-1").await;
    assert_eq!(checks, json!([]));
}
