//! Process test of an agent's local services and checks (`/v1/agent/service*`,
//! `/v1/agent/check*`): a service with a TTL check registered over HTTP, passed, expired,
//! deregistered; errors answered as Consul does; user event filters that see services
//! registered over HTTP; and what was registered over HTTP back after a restart.

// Setup helpers outside #[test] functions panic on failure too.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::IpAddr;
use std::time::Duration;

use serde_json::{Value, json};
use support::{AgentProcess, eventually, get_json};

/// Agents of this test live on 127.0.0.191.
fn ip() -> IpAddr {
    IpAddr::from([127, 0, 0, 191])
}

async fn put(client: &reqwest::Client, url: String, body: Value) -> (u16, String) {
    let response = client.put(url).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

async fn put_empty(client: &reqwest::Client, url: String) -> (u16, String) {
    let response = client.put(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_checks_registered_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut agent = AgentProcess::dev(ip(), &data, dir.path());
    agent.wait_http().await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = |agent: &AgentProcess, path: &str| agent.url(path);

    // A service with a TTL check.
    let (status, text) = put(
        &client,
        url(&agent, "/v1/agent/service/register"),
        json!({"Name": "web", "ID": "web-1", "Tags": ["v1"], "Port": 8080,
               "Meta": {"version": "2"}, "Check": {"TTL": "2s", "Notes": "ping"}}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let services: Value = get_json(&client, url(&agent, "/v1/agent/services")).await;
    assert_eq!(
        services["web-1"],
        json!({"ID": "web-1", "Service": "web", "Tags": ["v1"], "Meta": {"version": "2"},
               "Port": 8080, "Address": "", "Weights": {"Passing": 1, "Warning": 1},
               "EnableTagOverride": false, "Datacenter": "dc1"}),
        "{services}"
    );
    let one: Value = get_json(&client, url(&agent, "/v1/agent/service/web-1")).await;
    assert_eq!(one["Service"], "web");
    let missing = client
        .get(url(&agent, "/v1/agent/service/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 404);

    let checks: Value = get_json(&client, url(&agent, "/v1/agent/checks")).await;
    let check = &checks["service:web-1"];
    assert_eq!(check["Status"], "critical", "{checks}");
    assert_eq!(check["Type"], "ttl");
    assert_eq!(check["ServiceName"], "web");
    assert_eq!(check["ServiceTags"], json!(["v1"]));
    assert_eq!(check["Node"], "dev-node");
    assert_eq!(check["Notes"], "ping");

    // Passed, it shows; not refreshed, it expires.
    let (status, text) = put_empty(
        &client,
        url(&agent, "/v1/agent/check/pass/service:web-1?note=all+good"),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let checks: Value = get_json(&client, url(&agent, "/v1/agent/checks")).await;
    assert_eq!(checks["service:web-1"]["Status"], "passing", "{checks}");
    assert_eq!(checks["service:web-1"]["Output"], "all good");
    eventually("the TTL to expire", Duration::from_secs(10), || async {
        let checks: Value = get_json(&client, url(&agent, "/v1/agent/checks")).await;
        checks["service:web-1"]["Status"] == "critical"
            && checks["service:web-1"]["Output"] == "TTL expired"
    })
    .await;

    // A check of the node, updated with a body.
    let (status, text) = put(
        &client,
        url(&agent, "/v1/agent/check/register"),
        json!({"Name": "node-ttl", "TTL": "10m"}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = put(
        &client,
        url(&agent, "/v1/agent/check/update/node-ttl"),
        json!({"Status": "warning", "Output": "disk 91%"}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let checks: Value = get_json(&client, url(&agent, "/v1/agent/checks")).await;
    assert_eq!(checks["node-ttl"]["Status"], "warning", "{checks}");
    assert_eq!(checks["node-ttl"]["Output"], "disk 91%");
    assert_eq!(checks["node-ttl"]["ServiceID"], "");

    // Errors: unknown ids, bad bodies, a non-TTL check passed, scripts not enabled.
    let (status, text) = put_empty(&client, url(&agent, "/v1/agent/check/pass/nope")).await;
    assert_eq!(status, 404);
    assert!(text.starts_with("Unknown check ID \"nope\""), "{text}");
    let (status, _) = put_empty(&client, url(&agent, "/v1/agent/service/deregister/nope")).await;
    assert_eq!(status, 404);
    let (status, _) = put_empty(&client, url(&agent, "/v1/agent/check/deregister/nope")).await;
    assert_eq!(status, 404);
    for body in [
        json!({"Name": "no-kind"}),
        json!({"TTL": "10s"}),
        json!({"Name": "x", "TTL": "soon"}),
        json!({"Name": "x", "TTL": "1s", "ServiceID": "nope"}),
        json!({"Name": "x", "Args": ["/bin/true"], "Interval": "10s"}),
        json!(["not", "an", "object"]),
    ] {
        let (status, text) = put(
            &client,
            url(&agent, "/v1/agent/check/register"),
            body.clone(),
        )
        .await;
        assert_eq!(status, 400, "{body}: {text}");
    }
    let (status, text) = put(
        &client,
        url(&agent, "/v1/agent/service/register"),
        json!({"Name": "has space"}),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    let (status, _) = put(
        &client,
        url(&agent, "/v1/agent/check/register"),
        json!({"Name": "tcp", "TCP": "127.0.0.191:1", "Interval": "1h"}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, text) = put_empty(&client, url(&agent, "/v1/agent/check/fail/tcp")).await;
    assert_eq!(status, 400, "{text}");
    let (status, text) = put(
        &client,
        url(&agent, "/v1/agent/check/update/node-ttl"),
        json!({"Status": "fine"}),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    let (status, _) = put_empty(&client, url(&agent, "/v1/agent/check/deregister/tcp")).await;
    assert_eq!(status, 200);

    // Deregistering the service removes its check.
    let (status, _) = put_empty(&client, url(&agent, "/v1/agent/service/deregister/web-1")).await;
    assert_eq!(status, 200);
    let services: Value = get_json(&client, url(&agent, "/v1/agent/services")).await;
    assert_eq!(services, json!({}));
    let checks: Value = get_json(&client, url(&agent, "/v1/agent/checks")).await;
    assert_eq!(
        checks.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["node-ttl"]
    );

    // User event filters see services registered over HTTP.
    let (status, _) = put(
        &client,
        url(&agent, "/v1/agent/service/register"),
        json!({"Name": "db", "Tags": ["primary"], "Port": 5432}),
    )
    .await;
    assert_eq!(status, 200);
    for query in [
        "service=db&tag=primary",
        "service=web",
        "service=db&tag=replica",
    ] {
        let (status, text) = put_empty(
            &client,
            url(&agent, &format!("/v1/event/fire/deploy?{query}")),
        )
        .await;
        assert_eq!(status, 200, "{query}: {text}");
    }
    eventually("the matching event", Duration::from_secs(10), || async {
        let events: Value = get_json(&client, url(&agent, "/v1/event/list?name=deploy")).await;
        events.as_array().is_some_and(|e| !e.is_empty())
    })
    .await;
    let events: Value = get_json(&client, url(&agent, "/v1/event/list?name=deploy")).await;
    let filters: Vec<(&str, &str)> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["ServiceFilter"].as_str().unwrap_or(""),
                e["TagFilter"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(filters, [("db", "primary")], "{events}");

    // A restarted agent has what was registered over HTTP; statuses start over.
    agent.kill9();
    let mut agent = AgentProcess::dev(ip(), &data, dir.path());
    agent.wait_http().await;
    let services: Value = get_json(&client, url(&agent, "/v1/agent/services")).await;
    assert_eq!(
        services.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["db"],
        "{services}"
    );
    assert_eq!(services["db"]["Tags"], json!(["primary"]));
    let checks: Value = get_json(&client, url(&agent, "/v1/agent/checks")).await;
    assert_eq!(checks["node-ttl"]["Status"], "critical", "{checks}");
    assert_eq!(checks.as_object().unwrap().len(), 1, "{checks}");
}
