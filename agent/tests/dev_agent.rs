//! Process tests of `agent run --dev`: the built binary on a loopback address of its own,
//! driven over HTTP and through the CLI, killed with SIGKILL and restarted.

// Setup helpers outside #[test] functions panic on failure too.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{AgentProcess, cli_with_stdin, free_port, free_udp_port, get_json, put_text};

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let http = SocketAddr::new(ip(21), free_port(ip(21)));
    let lan = SocketAddr::new(ip(21), free_udp_port(ip(21)));
    let mut agent = AgentProcess::dev_on(http, lan, &data, dir.path());
    agent.wait_ready().await;

    let client = reqwest::Client::new();
    // One key written before the crash, to compare its indexes after the restart.
    let put = client
        .put(agent.url("/v1/kv/before?flags=7"))
        .body("steady")
        .send()
        .await
        .unwrap();
    assert_eq!(put.text().await.unwrap(), "true");
    let before: serde_json::Value = get_json(&client, agent.url("/v1/kv/before")).await;

    // Writers keep writing distinct keys; every write the agent acknowledged is recorded.
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let mut writers = Vec::new();
    for w in 0..8 {
        let client = client.clone();
        let acked = acked.clone();
        let base = agent.url("/v1/kv/");
        writers.push(tokio::spawn(async move {
            for i in 0..10_000 {
                let key = format!("w{w}/k{i:05}");
                let value = format!("value-{w}-{i}");
                let answer = client
                    .put(format!("{base}{key}"))
                    .body(value.clone())
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                match answer {
                    Ok(response) if response.status().is_success() => {
                        if response.text().await.ok().as_deref() == Some("true") {
                            acked.lock().unwrap().insert(key, value);
                        }
                    }
                    _ => return,
                }
            }
        }));
    }
    // Let writes flow, then kill the agent while they are in flight.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    agent.kill9();
    for writer in writers {
        writer.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 20, "only {} writes acknowledged", acked.len());

    let mut agent = AgentProcess::dev_on(http, lan, &data, dir.path());
    agent.wait_ready().await;
    for (key, value) in &acked {
        let response = client
            .get(agent.url(&format!("/v1/kv/{key}?raw")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "acknowledged key {key} lost");
        assert_eq!(&response.text().await.unwrap(), value, "value of {key}");
    }
    let after: serde_json::Value = get_json(&client, agent.url("/v1/kv/before")).await;
    assert_eq!(before, after, "indexes and flags survive the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_kv_follows_consul() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = AgentProcess::dev(ip(22), &dir.path().join("data"), dir.path());
    agent.wait_ready().await;
    let client = reqwest::Client::new();
    let url = |path: &str| agent.url(path);

    // Missing key: 404 with an index header.
    let missing = client.get(url("/v1/kv/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let index: u64 = missing.headers()["x-consul-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(index >= 1);
    assert_eq!(missing.headers()["x-consul-knownleader"], "true");
    assert!(missing.headers().contains_key("x-consul-lastcontact"));

    // PUT returns true; GET returns a JSON array with base64 and Consul's fields.
    let put = client
        .put(url("/v1/kv/a%20b/c?flags=42"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    assert_eq!(put.text().await.unwrap(), "true");
    let got = client.get(url("/v1/kv/a%20b/c")).send().await.unwrap();
    assert_eq!(got.status(), 200);
    let index: u64 = got.headers()["x-consul-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body: serde_json::Value = got.json().await.unwrap();
    let entry = &body[0];
    assert_eq!(entry["Key"], "a b/c");
    assert_eq!(entry["Value"], "aGVsbG8=");
    assert_eq!(entry["Flags"], 42);
    assert_eq!(entry["LockIndex"], 0);
    assert_eq!(entry["CreateIndex"], entry["ModifyIndex"]);
    assert_eq!(entry["ModifyIndex"].as_u64().unwrap(), index);
    assert!(entry.get("Session").is_none());

    // An update keeps CreateIndex, raises ModifyIndex, resets flags without ?flags.
    put_text(&client, url("/v1/kv/a%20b/c"), "").await;
    let body: serde_json::Value = get_json(&client, url("/v1/kv/a%20b/c")).await;
    assert_eq!(body[0]["CreateIndex"], entry["CreateIndex"]);
    assert!(body[0]["ModifyIndex"].as_u64() > entry["ModifyIndex"].as_u64());
    assert_eq!(body[0]["Flags"], 0);
    assert!(body[0]["Value"].is_null(), "an empty value is null");

    // ?raw gives the bytes.
    put_text(&client, url("/v1/kv/raw"), vec![0u8, 159, 146, 150]).await;
    let raw = client.get(url("/v1/kv/raw?raw")).send().await.unwrap();
    assert_eq!(raw.bytes().await.unwrap().as_ref(), &[0u8, 159, 146, 150]);

    // CAS: 0 creates only if absent; a stale index fails with 200 false.
    let cas = |q: &'static str| client.put(url(&format!("/v1/kv/cas?{q}"))).body("v").send();
    assert_eq!(cas("cas=0").await.unwrap().text().await.unwrap(), "true");
    assert_eq!(cas("cas=0").await.unwrap().text().await.unwrap(), "false");
    assert_eq!(cas("cas=1").await.unwrap().text().await.unwrap(), "false");

    // recurse and keys.
    put_text(&client, url("/v1/kv/tree/x"), "1").await;
    put_text(&client, url("/v1/kv/tree/y/z"), "2").await;
    let listed: serde_json::Value = get_json(&client, url("/v1/kv/tree/?recurse")).await;
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let keys: Vec<String> = get_json(&client, url("/v1/kv/tree/?keys&separator=/")).await;
    assert_eq!(keys, ["tree/x", "tree/y/"]);

    // DELETE: true, also for a missing key; recurse removes the tree.
    let deleted = client.delete(url("/v1/kv/tree/x")).send().await.unwrap();
    assert_eq!(deleted.text().await.unwrap(), "true");
    let deleted = client.delete(url("/v1/kv/never-was")).send().await.unwrap();
    assert_eq!(deleted.text().await.unwrap(), "true");
    client
        .delete(url("/v1/kv/tree?recurse"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        client
            .get(url("/v1/kv/tree/y/z"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // Bad input: 413 over 512 KiB, 400 for an invalid key or parameter.
    let big = client
        .put(url("/v1/kv/big"))
        .body(vec![b'x'; 512 * 1024 + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    let just_fits = client
        .put(url("/v1/kv/fits"))
        .body(vec![b'x'; 512 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(just_fits.status(), 200);
    let long_key = "k".repeat(600);
    let long = client
        .put(url(&format!("/v1/kv/{long_key}")))
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(long.status(), 400);
    let no_key = client.put(url("/v1/kv/")).body("v").send().await.unwrap();
    assert_eq!(no_key.status(), 400);
    assert!(no_key.text().await.unwrap().contains("Missing key name"));
    let bad_flags = client
        .put(url("/v1/kv/k?flags=x"))
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_flags.status(), 400);
    let both = client
        .get(url("/v1/kv/k?stale&consistent"))
        .send()
        .await
        .unwrap();
    assert_eq!(both.status(), 400);

    // Reads in every consistency mode.
    for mode in ["", "?stale", "?consistent"] {
        let r = client
            .get(url(&format!("/v1/kv/fits{mode}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "mode {mode}");
    }

    // Status and self.
    let leader: String = get_json(&client, url("/v1/status/leader")).await;
    assert_eq!(leader, agent.lan.to_string());
    let peers: Vec<String> = get_json(&client, url("/v1/status/peers")).await;
    assert_eq!(peers, [leader]);
    let me: serde_json::Value = get_json(&client, url("/v1/agent/self")).await;
    assert_eq!(me["Config"]["NodeName"], "dev-node");
    assert_eq!(me["Config"]["Datacenter"], "dc1");
    assert_eq!(me["Config"]["Server"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_round_trip_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = AgentProcess::dev(ip(23), &dir.path().join("data"), dir.path());
    agent.wait_ready().await;

    let put = agent.cli(&["kv", "put", "app/color", "blue"]);
    assert!(put.status.success(), "{}", text(&put.stderr));
    assert_eq!(text(&put.stdout), "Success! Data written to: app/color\n");

    let get = agent.cli(&["kv", "get", "app/color"]);
    assert_eq!(get.status.code(), Some(0));
    assert_eq!(text(&get.stdout), "blue\n");

    let from_stdin = cli_with_stdin(
        &agent.http.to_string(),
        &["kv", "put", "app/motd", "-"],
        Some(b"hi there"),
    );
    assert!(from_stdin.status.success());
    assert_eq!(
        text(&agent.cli(&["kv", "get", "app/motd"]).stdout),
        "hi there\n"
    );

    let detailed = agent.cli(&["kv", "get", "--detailed", "app/color"]);
    let out = text(&detailed.stdout);
    assert!(out.contains("Key              app/color"), "{out}");
    assert!(out.contains("Value            blue"), "{out}");
    assert!(out.contains("Session          -"), "{out}");

    let recurse = agent.cli(&["kv", "get", "--recurse", "app/"]);
    assert_eq!(text(&recurse.stdout), "app/color:blue\napp/motd:hi there\n");
    let keys = agent.cli(&["kv", "get", "--keys", ""]);
    assert_eq!(text(&keys.stdout), "app/\n");

    let cas = agent.cli(&[
        "kv",
        "put",
        "--cas",
        "--modify-index",
        "0",
        "app/color",
        "red",
    ]);
    assert_eq!(cas.status.code(), Some(1));
    assert!(text(&cas.stderr).contains("CAS failed"));

    let delete = agent.cli(&["kv", "delete", "app/color"]);
    assert!(delete.status.success());
    assert_eq!(text(&delete.stdout), "Success! Deleted key: app/color\n");

    let missing = agent.cli(&["kv", "get", "app/color"]);
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(
        text(&missing.stderr),
        "Error! No key exists at: app/color\n"
    );

    let usage = agent.cli(&["kv", "put"]);
    assert_eq!(usage.status.code(), Some(2), "bad usage exits 2");

    let unreachable = cli_with_stdin("127.0.0.1:1", &["kv", "get", "x"], None);
    assert_eq!(unreachable.status.code(), Some(1));
    assert!(text(&unreachable.stderr).contains("cannot reach the agent"));
}

#[test]
fn sigterm_shuts_down_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = AgentProcess::dev(ip(24), &dir.path().join("data"), dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(agent.wait_ready());
    agent.signal("TERM");
    let code = agent.wait_exit(Duration::from_secs(15));
    assert_eq!(code, Some(0), "log:\n{}", agent.log_text());
    assert!(agent.log_text().contains("agent stopped"));
}

#[test]
fn tls_commands_make_files_and_never_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let run = |args: &[&str]| cli_with_stdin("127.0.0.1:1", args, None);

    let ca = run(&["tls", "ca", "create", "--dir", d]);
    assert!(ca.status.success(), "{}", text(&ca.stderr));
    let server = run(&[
        "tls", "cert", "create", "--server", "--dc", "dc1", "--node", "s1", "--out", "s1", "--dir",
        d,
    ]);
    assert!(server.status.success(), "{}", text(&server.stderr));
    let client = run(&[
        "tls", "cert", "create", "--client", "--dc", "dc1", "--node", "c1", "--out", "c1", "--dir",
        d,
    ]);
    assert!(client.status.success(), "{}", text(&client.stderr));
    for key in ["agent-ca-key.pem", "s1-key.pem", "c1-key.pem"] {
        let mode = std::fs::metadata(dir.path().join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }

    let ca_before = std::fs::read(dir.path().join("agent-ca.pem")).unwrap();
    let again = run(&["tls", "ca", "create", "--dir", d]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again.stderr).contains("exists"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(
        std::fs::read(dir.path().join("agent-ca.pem")).unwrap(),
        ca_before
    );

    let usage = run(&[
        "tls", "cert", "create", "--server", "--client", "--dc", "dc1", "--out", "x", "--dir", d,
    ]);
    assert_eq!(usage.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_runs_on_certificate_files_and_refuses_the_wrong_ones() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let c = certs.to_str().unwrap();
    let make = |args: &[&str]| {
        let out = cli_with_stdin("127.0.0.1:1", args, None);
        assert!(out.status.success(), "{}", text(&out.stderr));
    };
    make(&["tls", "ca", "create", "--dir", c]);
    make(&[
        "tls", "cert", "create", "--server", "--dc", "dc1", "--node", "s1", "--out", "s1", "--dir",
        c,
    ]);
    make(&[
        "tls", "cert", "create", "--client", "--dc", "dc1", "--node", "c1", "--out", "c1", "--dir",
        c,
    ]);
    let file = |name: &str| certs.join(name).display().to_string();
    let args = |node: &str, cert: &str, data: &str| -> Vec<String> {
        let mut args: Vec<String> = ["--server", "--bootstrap-expect", "1", "--node", node]
            .map(String::from)
            .to_vec();
        args.extend([
            "--data-dir".into(),
            dir.path().join(data).display().to_string(),
        ]);
        args.extend(["--ca-file".into(), file("agent-ca.pem")]);
        args.extend(["--cert-file".into(), file(&format!("{cert}.pem"))]);
        args.extend(["--key-file".into(), file(&format!("{cert}-key.pem"))]);
        args
    };
    let addrs = || {
        let http = SocketAddr::new(ip(25), free_port(ip(25)));
        let lan = SocketAddr::new(ip(25), free_udp_port(ip(25)));
        (http, lan)
    };

    let (http, lan) = addrs();
    let mut server = AgentProcess::start(&args("s1", "s1", "d1"), http, lan, dir.path());
    server.wait_ready().await;
    let put = server.cli(&["kv", "put", "k", "v"]);
    assert!(put.status.success(), "{}", text(&put.stderr));
    assert_eq!(text(&server.cli(&["kv", "get", "k"]).stdout), "v\n");
    drop(server);

    // A client certificate cannot run a server.
    let (http, lan) = addrs();
    let mut posing = AgentProcess::start(&args("c1", "c1", "d2"), http, lan, dir.path());
    assert_eq!(posing.wait_exit(Duration::from_secs(15)), Some(1));
    assert!(
        posing.log_text().contains("needs a server certificate"),
        "{}",
        posing.log_text()
    );

    // A certificate for another node name is refused.
    let (http, lan) = addrs();
    let mut renamed = AgentProcess::start(&args("s2", "s1", "d3"), http, lan, dir.path());
    assert_eq!(renamed.wait_exit(Duration::from_secs(15)), Some(1));
    assert!(
        renamed.log_text().contains("is for node"),
        "{}",
        renamed.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_and_bad_input_follow_consul() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = AgentProcess::dev(ip(26), &dir.path().join("data"), dir.path());
    agent.wait_ready().await;
    let client = reqwest::Client::new();
    let url = |path: &str| agent.url(path);
    let txn = |body: &'static str| client.put(url("/v1/txn")).body(body).send();

    // A committed transaction: results for set (Value null) and get (with value).
    let ok = txn(r#"[{"KV":{"Verb":"set","Key":"t/a","Value":"YQ=="}},
                     {"KV":{"Verb":"set","Key":"t/b","Value":"Yg==","Flags":9}},
                     {"KV":{"Verb":"get","Key":"t/a"}}]"#)
    .await
    .unwrap();
    assert_eq!(ok.status(), 200);
    let body: serde_json::Value = ok.json().await.unwrap();
    assert!(body["Errors"].is_null());
    let results = body["Results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert!(results[0]["KV"]["Value"].is_null());
    assert_eq!(results[1]["KV"]["Flags"], 9);
    assert_eq!(results[2]["KV"]["Value"], "YQ==");
    let index_a = results[0]["KV"]["ModifyIndex"].as_u64().unwrap();

    // A rolled-back transaction: 409, the failing op named, nothing applied.
    let stale = format!(
        r#"[{{"KV":{{"Verb":"set","Key":"t/c","Value":"Yw=="}}}},
            {{"KV":{{"Verb":"check-index","Key":"t/a","Index":{}}}}}]"#,
        index_a + 100
    );
    let rolled = client.put(url("/v1/txn")).body(stale).send().await.unwrap();
    assert_eq!(rolled.status(), 409);
    let body: serde_json::Value = rolled.json().await.unwrap();
    assert!(body["Results"].is_null());
    assert_eq!(body["Errors"][0]["OpIndex"], 1);
    assert_eq!(
        client.get(url("/v1/kv/t/c")).send().await.unwrap().status(),
        404
    );

    // A read-only transaction is answered with an index header.
    let read = txn(r#"[{"KV":{"Verb":"get-tree","Key":"t/"}}]"#)
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    assert!(read.headers().contains_key("x-consul-index"));
    let body: serde_json::Value = read.json().await.unwrap();
    assert_eq!(body["Results"].as_array().unwrap().len(), 2);

    // Bad input of every kind gets a 4xx with a reason and changes nothing.
    let index_of = || async {
        let r = client.get(url("/v1/kv/?keys")).send().await.unwrap();
        let index: u64 = r.headers()["x-consul-index"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        (index, r.text().await.unwrap())
    };
    let before = index_of().await;
    let long_key = format!("/v1/kv/{}", "k".repeat(600));
    let many_ops = format!(
        "[{}]",
        vec![r#"{"KV":{"Verb":"set","Key":"x","Value":""}}"#; 65].join(",")
    );
    let bad: Vec<(reqwest::RequestBuilder, u16)> = vec![
        (client.put(url(&long_key)).body("v"), 400),
        (
            client
                .put(url("/v1/txn"))
                .body("[{\"KV\":{\"Verb\":\"set\""),
            400,
        ),
        (
            client
                .put(url("/v1/txn"))
                .body(r#"[{"KV":{"Verb":"launch","Key":"x"}}]"#),
            400,
        ),
        (client.put(url("/v1/txn")).body(many_ops), 413),
        (
            client.put(url("/v1/kv/big")).body(vec![0u8; 600 * 1024]),
            413,
        ),
        (client.put(url("/v1/kv/x?cas=abc")).body("v"), 400),
        (client.put(url("/v1/kv/x?flags=-1")).body("v"), 400),
        (client.get(url("/v1/kv/t/a?index=abc")), 400),
        (client.get(url("/v1/kv/t/a?index=1&wait=5x")), 400),
        (client.delete(url("/v1/kv/")), 400),
    ];
    for (request, status) in bad {
        let response = request.send().await.unwrap();
        let code = response.status().as_u16();
        let reason = response.text().await.unwrap();
        assert_eq!(code, status, "{reason}");
        assert!(!reason.trim().is_empty(), "a {code} without a reason");
    }
    assert_eq!(index_of().await, before, "bad input changed the store");

    // kv export and import round-trip through the CLI.
    let export = agent.cli(&["kv", "export", "t/"]);
    assert!(export.status.success());
    agent.cli(&["kv", "delete", "--recurse", "t/"]);
    let import = cli_with_stdin(
        &agent.http.to_string(),
        &["kv", "import", "-"],
        Some(&export.stdout),
    );
    assert!(import.status.success(), "{}", text(&import.stderr));
    assert_eq!(text(&agent.cli(&["kv", "get", "t/b"]).stdout), "b\n");
    let detailed = text(&agent.cli(&["kv", "get", "--detailed", "t/b"]).stdout);
    assert!(detailed.contains("Flags            9"), "{detailed}");
    let broken = cli_with_stdin(
        &agent.http.to_string(),
        &["kv", "import", "-"],
        Some(b"[{\"key\":\"z\",\"value\":\"!!\"}]"),
    );
    assert_eq!(broken.status.code(), Some(1));
    assert_eq!(
        agent.cli(&["kv", "get", "z"]).status.code(),
        Some(1),
        "a bad import wrote nothing"
    );
}
