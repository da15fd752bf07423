//! `agent watch` and `agent event` against an imitation of the agent's HTTP API: KV,
//! event fire and list, and members, with blocking queries on `index` and `wait`. The
//! watch runs in the test's process (its handlers are real processes); the event command
//! and the exit codes are tested through the built binary.

// Setup helpers outside #[test] functions panic on failure too.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent::client::ApiClient;
use agent::commands::watch::{self, Target, WatchConfig, WatchPlan};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use base64::Engine;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use support::{agent_bin, bounded, cli_with_stdin, eventually};

/// Longest wait of the watches' blocking queries in these tests.
const WAIT: Duration = Duration::from_millis(200);

// ---------------------------------------------------------------------------------------
// The imitation agent.

/// What the imitation serves, and what it was asked.
#[derive(Default)]
struct Data {
    /// Key → its entry as the KV API returns it.
    kv: BTreeMap<String, Value>,
    /// One index for the whole KV store, so a write to any key wakes every KV query up,
    /// as Consul's table-wide index does.
    kv_index: u64,
    /// Events, oldest first.
    events: Vec<Value>,
    ltime: u64,
    members: Vec<Value>,
    members_index: u64,
    /// Queries answered with 500 before the next is answered normally.
    failures_to_inject: usize,
    /// Status and text to answer the next fire with, instead of firing.
    fire_error: Option<(StatusCode, String)>,
    /// Every GET, as path and query.
    queries: Vec<String>,
    /// Every fire: name, query, body.
    fired: Vec<(String, String, Vec<u8>)>,
}

struct Shared {
    data: Mutex<Data>,
    /// Bumped after every change, to wake blocking queries.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    fn change(&self, edit: impl FnOnce(&mut Data)) {
        edit(&mut self.data.lock().unwrap());
        self.changes.send_modify(|n| *n += 1);
    }

    /// Records the query; the 500 to answer with if a failure is due.
    fn record(&self, uri: &Uri) -> Option<Response> {
        let mut data = self.data.lock().unwrap();
        data.queries.push(uri.to_string());
        if data.failures_to_inject > 0 {
            data.failures_to_inject -= 1;
            return Some((StatusCode::INTERNAL_SERVER_ERROR, "injected failure").into_response());
        }
        None
    }

    /// Blocks a query that sent `?index=` until `index_of(data)` differs from it (is
    /// greater, when `ordered`) or `?wait=` passes.
    async fn block(
        &self,
        params: &HashMap<String, String>,
        ordered: bool,
        index_of: impl Fn(&Data) -> u64,
    ) {
        let Some(index) = params.get("index").and_then(|i| i.parse::<u64>().ok()) else {
            return;
        };
        if index == 0 {
            return;
        }
        let wait = params
            .get("wait")
            .and_then(|w| agent::http::parse_go_duration(w))
            .unwrap_or(Duration::from_secs(300));
        let deadline = tokio::time::Instant::now() + wait;
        let mut changes = self.changes.subscribe();
        loop {
            let now = index_of(&self.data.lock().unwrap());
            if (ordered && now > index) || (!ordered && now != index) {
                return;
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// Consul's index of an event list: from the newest event's ID, 1 when there is none.
fn event_list_index(events: &[Value]) -> u64 {
    let Some(last) = events.last() else {
        return 1;
    };
    let id = uuid::Uuid::parse_str(last["ID"].as_str().unwrap()).unwrap();
    let bytes = id.as_bytes();
    let high = u64::from_be_bytes(bytes[..8].try_into().unwrap());
    let low = u64::from_be_bytes(bytes[8..].try_into().unwrap());
    high ^ low
}

fn with_index(index: u64, status: StatusCode, body: Option<Value>) -> Response {
    let headers = [("X-Consul-Index", index.to_string())];
    match body {
        Some(body) => (status, headers, axum::Json(body)).into_response(),
        None => (status, headers).into_response(),
    }
}

async fn kv_get(
    State(shared): State<Arc<Shared>>,
    UrlPath(key): UrlPath<String>,
    Query(params): Query<HashMap<String, String>>,
    uri: Uri,
) -> Response {
    if let Some(failure) = shared.record(&uri) {
        return failure;
    }
    shared.block(&params, true, |data| data.kv_index).await;
    let data = shared.data.lock().unwrap();
    let entries: Vec<Value> = if params.contains_key("recurse") {
        data.kv
            .range(key.clone()..)
            .take_while(|(k, _)| k.starts_with(&key))
            .map(|(_, v)| v.clone())
            .collect()
    } else {
        data.kv.get(&key).cloned().into_iter().collect()
    };
    let index = data.kv_index.max(1);
    if entries.is_empty() {
        with_index(index, StatusCode::NOT_FOUND, None)
    } else {
        with_index(index, StatusCode::OK, Some(Value::Array(entries)))
    }
}

async fn event_list(
    State(shared): State<Arc<Shared>>,
    Query(params): Query<HashMap<String, String>>,
    uri: Uri,
) -> Response {
    if let Some(failure) = shared.record(&uri) {
        return failure;
    }
    let name = params.get("name").cloned();
    let matching = move |data: &Data| -> Vec<Value> {
        let events = data
            .events
            .iter()
            .filter(|e| name.as_deref().is_none_or(|n| e["Name"] == n));
        let mut events: Vec<Value> = events.cloned().collect();
        let oldest_kept = events.len().saturating_sub(256);
        events.drain(..oldest_kept);
        events
    };
    let index_of = |data: &Data| event_list_index(&matching(data));
    shared.block(&params, false, index_of).await;
    let data = shared.data.lock().unwrap();
    let events = matching(&data);
    let index = event_list_index(&events);
    with_index(index, StatusCode::OK, Some(Value::Array(events)))
}

async fn event_fire(
    State(shared): State<Arc<Shared>>,
    UrlPath(name): UrlPath<String>,
    uri: Uri,
    body: Bytes,
) -> Response {
    if let Some((status, text)) = shared.data.lock().unwrap().fire_error.take() {
        return (status, text).into_response();
    }
    let query = uri.query().unwrap_or_default().to_string();
    let params: HashMap<String, String> = Query::try_from_uri(&uri).unwrap().0;
    let filter = |name: &str| params.get(name).cloned().unwrap_or_default();
    let mut event = Value::Null;
    shared.change(|data| {
        data.fired.push((name.clone(), query, body.to_vec()));
        event = fire(data, &name, &body);
        event["NodeFilter"] = json!(filter("node"));
        event["ServiceFilter"] = json!(filter("service"));
        event["TagFilter"] = json!(filter("tag"));
        *data.events.last_mut().unwrap() = event.clone();
    });
    axum::Json(event).into_response()
}

/// Adds an event to the list and returns it.
fn fire(data: &mut Data, name: &str, payload: &[u8]) -> Value {
    data.ltime += 1;
    let payload = if payload.is_empty() {
        Value::Null
    } else {
        json!(base64::engine::general_purpose::STANDARD.encode(payload))
    };
    let event = json!({
        "ID": uuid::Uuid::new_v4().to_string(),
        "Name": name,
        "Payload": payload,
        "NodeFilter": "",
        "ServiceFilter": "",
        "TagFilter": "",
        "Version": 1,
        "LTime": data.ltime,
    });
    data.events.push(event.clone());
    event
}

async fn members(
    State(shared): State<Arc<Shared>>,
    Query(params): Query<HashMap<String, String>>,
    uri: Uri,
) -> Response {
    if let Some(failure) = shared.record(&uri) {
        return failure;
    }
    shared.block(&params, true, |data| data.members_index).await;
    let data = shared.data.lock().unwrap();
    with_index(
        data.members_index.max(1),
        StatusCode::OK,
        Some(Value::Array(data.members.clone())),
    )
}

/// An imitation agent on `127.0.0.1:<free port>`, stopped with the test's runtime.
struct FakeAgent {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl FakeAgent {
    async fn start() -> FakeAgent {
        let shared = Arc::new(Shared {
            data: Mutex::new(Data {
                kv_index: 1,
                members_index: 1,
                ..Data::default()
            }),
            changes: tokio::sync::watch::channel(0).0,
        });
        let router = Router::new()
            .route("/v1/kv/{*key}", get(kv_get))
            .route("/v1/event/list", get(event_list))
            .route("/v1/event/fire/{name}", put(event_fire))
            .route("/v1/agent/members", get(members))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        FakeAgent { addr, shared }
    }

    fn client(&self) -> ApiClient {
        ApiClient::new(&self.addr.to_string()).unwrap()
    }

    fn put(&self, key: &str, value: &str) {
        self.shared.change(|data| {
            data.kv_index += 1;
            let index = data.kv_index;
            let created = data
                .kv
                .get(key)
                .map_or(index, |e| e["CreateIndex"].as_u64().unwrap());
            let value = base64::engine::general_purpose::STANDARD.encode(value);
            data.kv.insert(
                key.to_string(),
                json!({"Key": key, "Value": value, "Flags": 0, "CreateIndex": created,
                       "ModifyIndex": index, "LockIndex": 0}),
            );
        });
    }

    fn delete(&self, key: &str) {
        self.shared.change(|data| {
            data.kv_index += 1;
            data.kv.remove(key);
        });
    }

    fn fire(&self, name: &str, payload: &str) -> String {
        let mut id = String::new();
        self.shared.change(|data| {
            id = fire(data, name, payload.as_bytes())["ID"]
                .as_str()
                .unwrap()
                .to_string();
        });
        id
    }

    fn set_members(&self, names: &[&str]) {
        self.shared.change(|data| {
            data.members_index += 1;
            data.members = names
                .iter()
                .map(|name| {
                    json!({"Name": name, "Addr": "127.0.0.1", "Port": 8301,
                                   "Tags": {"role": "node"}, "Status": 1})
                })
                .collect();
        });
    }

    /// A change of the members' index that leaves the members as they are.
    fn touch_members(&self) {
        self.shared.change(|data| data.members_index += 1);
    }

    fn inject_failures(&self, count: usize) {
        self.shared.change(|data| data.failures_to_inject += count);
    }

    /// How many GETs were made on paths starting with `prefix`.
    fn queries(&self, prefix: &str) -> usize {
        let data = self.shared.data.lock().unwrap();
        data.queries
            .iter()
            .filter(|q| q.starts_with(prefix))
            .count()
    }

    /// Waits until `count` more queries on `prefix` than now have arrived: with the
    /// data unchanged, each blocks for the whole wait, so this lets timeouts go by.
    async fn let_queries_pass(&self, prefix: &str, count: usize) {
        let target = self.queries(prefix) + count;
        let what = format!("{count} more queries on {prefix}");
        eventually(&what, Duration::from_secs(10), || async {
            self.queries(prefix) >= target
        })
        .await;
    }
}

// ---------------------------------------------------------------------------------------
// Running a watch in the test.

/// A writer whose bytes the test reads while the watch writes.
#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl SharedBuf {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for SharedBuf {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn plan(target: Target, handler: Vec<String>) -> WatchPlan {
    WatchPlan {
        target,
        handler,
        config: WatchConfig {
            wait: WAIT,
            retry_base: Duration::from_millis(20),
            retry_cap: Duration::from_millis(100),
            min_interval: Duration::from_millis(10),
        },
    }
}

/// A handler that appends its stdin (one line of JSON) to `log`, after `prefix` (shell
/// words, e.g. the environment); `then` runs last.
fn logging_handler(log: &Path, prefix: &str, then: &str) -> Vec<String> {
    let script = format!("printf '%s' \"{prefix}\" >> \"$0\"; cat >> \"$0\"; {then}");
    vec!["sh".into(), "-c".into(), script, log.display().to_string()]
}

/// The complete lines of `log` (a run still writing its line is not counted).
fn lines(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_string).collect();
    if lines.last().is_some_and(|l| !l.ends_with('\n')) {
        lines.pop();
    }
    lines
        .into_iter()
        .map(|l| l.trim_end().to_string())
        .collect()
}

async fn lines_become(log: &Path, count: usize) {
    eventually(
        &format!("{count} handler runs"),
        Duration::from_secs(10),
        || async { lines(log).len() >= count },
    )
    .await;
    assert_eq!(lines(log).len(), count, "handler runs: {:?}", lines(log));
}

/// Runs `plan` against `agent` while `script` runs, then stops the watch; the watch's
/// result, its stdout and its stderr.
async fn watching<F: std::future::Future<Output = ()>>(
    agent: &FakeAgent,
    plan: &WatchPlan,
    script: impl FnOnce(SharedBuf, SharedBuf) -> F,
) -> (Result<(), agent::commands::CommandError>, String, String) {
    let client = agent.client();
    let (out, err) = (SharedBuf::default(), SharedBuf::default());
    let shutdown = CancellationToken::new();
    let (mut out_writer, mut err_writer) = (out.clone(), err.clone());
    let run = watch::run(&client, plan, &mut out_writer, &mut err_writer, &shutdown);
    let driver = async {
        script(out.clone(), err.clone()).await;
        shutdown.cancel();
    };
    let (result, ()) = tokio::join!(run, driver);
    (result, out.text(), err.text())
}

fn decoded_value(line: &str) -> Option<String> {
    let entry: Value = serde_json::from_str(line).unwrap();
    entry["Value"].as_str().map(|v| {
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(v).unwrap()).unwrap()
    })
}

// ---------------------------------------------------------------------------------------
// Watches.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_watch_runs_the_handler_on_the_first_value_and_on_changes_only() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let log = &dir.path().join("runs");
        let agent = &FakeAgent::start().await;
        agent.put("app/config", "v1");
        let plan = plan(
            Target::Key("app/config".into()),
            logging_handler(log, "$AGENT_INDEX ", "true"),
        );
        let (result, out, err) = watching(agent, &plan, |_, _| async {
            lines_become(log, 1).await;
            // Blocking queries time out with the same data: no run.
            agent.let_queries_pass("/v1/kv/", 3).await;
            // Another key's write wakes the query up; this key is the same: no run.
            agent.put("app/other", "x");
            agent.let_queries_pass("/v1/kv/", 2).await;
            assert_eq!(lines(log).len(), 1, "{:?}", lines(log));

            agent.put("app/config", "v2");
            lines_become(log, 2).await;
            agent.delete("app/config");
            lines_become(log, 3).await;
            agent.let_queries_pass("/v1/kv/", 3).await;
            assert_eq!(lines(log).len(), 3, "{:?}", lines(log));
        })
        .await;
        result.unwrap();
        assert_eq!(out, "", "the handler gets the documents, not stdout");
        assert_eq!(err, "");

        let runs = lines(log);
        let (index, first) = runs[0].split_once(' ').unwrap();
        assert_eq!(index, "2", "AGENT_INDEX is the answer's index");
        assert_eq!(decoded_value(first).as_deref(), Some("v1"));
        let second = runs[1].split_once(' ').unwrap().1;
        let second: Value = serde_json::from_str(second).unwrap();
        assert!(second.is_object(), "one entry, not the array: {second}");
        assert_eq!(second["Key"], "app/config");
        assert_eq!(decoded_value(&second.to_string()).as_deref(), Some("v2"));
        assert_eq!(runs[2].split_once(' ').unwrap().1, "null");

        // Every query but the first sent the index it last got.
        let data = agent.shared.data.lock().unwrap();
        assert!(!data.queries[0].contains("index="), "{}", data.queries[0]);
        assert!(
            data.queries[1].contains("index=2&wait=200ms"),
            "{}",
            data.queries[1]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_watch_runs_the_handler_once_per_new_event() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let log = &dir.path().join("runs");
        let agent = &FakeAgent::start().await;
        agent.fire("deploy", "old-1");
        agent.fire("deploy", "old-2");
        let plan = plan(
            Target::Event { name: None },
            logging_handler(log, "$AGENT_EVENT $AGENT_USER_EVENT ", "true"),
        );
        let mut fired = Vec::new();
        let (result, _, err) = watching(agent, &plan, |_, _| async {
            // Two queries: the first lists the old events, the second blocks. A handler
            // run for an old event would have ended before the second was sent.
            eventually("the watch to block", Duration::from_secs(10), || async {
                agent.queries("/v1/event/list") >= 2
            })
            .await;
            assert_eq!(lines(log), Vec::<String>::new());

            fired.push(agent.fire("restart", "now"));
            lines_become(log, 1).await;
            fired.push(agent.fire("deploy", "v42"));
            fired.push(agent.fire("deploy", "v43"));
            lines_become(log, 3).await;
            agent.let_queries_pass("/v1/event/list", 3).await;
            assert_eq!(lines(log).len(), 3, "{:?}", lines(log));
        })
        .await;
        result.unwrap();
        assert_eq!(err, "");

        let runs = lines(log);
        let names = ["restart", "deploy", "deploy"];
        for ((run, id), name) in runs.iter().zip(&fired).zip(names) {
            let json = run
                .strip_prefix(&format!("user {name} "))
                .unwrap_or_else(|| panic!("environment missing in {run:?}"));
            let event: Value = serde_json::from_str(json).unwrap();
            assert_eq!(event["ID"], id.as_str(), "{runs:?}");
            assert_eq!(event["Name"], name);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_event_watch_sees_only_that_name() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let log = &dir.path().join("runs");
        let agent = &FakeAgent::start().await;
        let plan = plan(
            Target::Event {
                name: Some("deploy".into()),
            },
            logging_handler(log, "$AGENT_USER_EVENT ", "true"),
        );
        let (result, _, _) = watching(agent, &plan, |_, _| async {
            agent.let_queries_pass("/v1/event/list", 2).await;
            agent.fire("restart", "");
            let deploy = agent.fire("deploy", "");
            lines_become(log, 1).await;
            assert!(lines(log)[0].contains(&deploy), "{:?}", lines(log));
            agent.let_queries_pass("/v1/event/list", 2).await;
            assert_eq!(lines(log).len(), 1);
        })
        .await;
        result.unwrap();
        let data = agent.shared.data.lock().unwrap();
        assert!(
            data.queries.iter().all(|q| q.contains("name=deploy")),
            "{:?}",
            data.queries
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_handler_does_not_stop_the_watch() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let log = &dir.path().join("runs");
        let agent = &FakeAgent::start().await;
        agent.put("k", "1");
        let plan = plan(Target::Key("k".into()), logging_handler(log, "", "exit 3"));
        let (result, _, err) = watching(agent, &plan, |_, err| async move {
            lines_become(log, 1).await;
            agent.put("k", "2");
            lines_become(log, 2).await;
            agent.let_queries_pass("/v1/kv/", 2).await;
            assert_eq!(err.text().matches("Warning: handler").count(), 2);
        })
        .await;
        result.unwrap();
        assert!(err.contains("exit status: 3"), "{err}");

        // A handler that cannot even start.
        let plan = WatchPlan {
            handler: vec![dir.path().join("missing").display().to_string()],
            ..plan
        };
        let (result, _, err) = watching(agent, &plan, |_, err| async move {
            let warned = |n: usize| {
                let err = err.clone();
                async move { err.text().matches("could not be started").count() >= n }
            };
            eventually("a warning", Duration::from_secs(10), || warned(1)).await;
            agent.put("k", "3");
            eventually("a second warning", Duration::from_secs(10), || warned(2)).await;
        })
        .await;
        result.unwrap();
        assert_eq!(err.matches("Warning: handler").count(), 2, "{err}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_errors_are_retried_and_do_not_repeat_the_handler() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let log = &dir.path().join("runs");
        let agent = &FakeAgent::start().await;
        agent.put("k", "1");
        agent.inject_failures(3);
        let plan = plan(Target::Key("k".into()), logging_handler(log, "", "true"));
        let (result, _, err) = watching(agent, &plan, |_, err| async move {
            lines_become(log, 1).await;
            assert_eq!(err.text().matches("retrying in").count(), 3);
            // Failures after the first value: the watch starts over with a query that
            // does not block, and the unchanged value is not handed over again.
            agent.inject_failures(2);
            agent.let_queries_pass("/v1/kv/", 5).await;
            assert_eq!(err.text().matches("retrying in").count(), 5);
            assert_eq!(lines(log).len(), 1, "{:?}", lines(log));
            agent.put("k", "2");
            lines_become(log, 2).await;
        })
        .await;
        result.unwrap();
        assert!(err.contains("500"), "{err}");
        assert!(err.contains("injected failure"), "{err}");
        // After each failure the next query asked for the data at once: the first four
        // (three failed), then two after the failure of a blocking one.
        let data = agent.shared.data.lock().unwrap();
        let at_once: Vec<usize> = (data.queries.iter().enumerate())
            .filter(|(_, q)| !q.contains("index="))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(at_once.len(), 6, "{:?}", data.queries);
        assert_eq!(at_once[..4], [0, 1, 2, 3]);
        assert_eq!(at_once[5], at_once[4] + 1, "{:?}", data.queries);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_handler_each_change_is_printed_as_one_line() {
    bounded(async {
        let agent = &FakeAgent::start().await;
        agent.set_members(&["a"]);
        let plan = plan(Target::Members, Vec::new());
        let (result, out, err) = watching(agent, &plan, |out, _| async move {
            let printed = |n: usize| {
                let out = out.clone();
                async move { out.text().lines().count() >= n }
            };
            eventually("the members", Duration::from_secs(10), || printed(1)).await;
            agent.touch_members();
            agent.let_queries_pass("/v1/agent/members", 2).await;
            agent.set_members(&["a", "b"]);
            eventually("the new members", Duration::from_secs(10), || printed(2)).await;
        })
        .await;
        result.unwrap();
        assert_eq!(err, "");
        let documents: Vec<Value> = out
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let names = |doc: &Value| -> Vec<String> {
            doc.as_array()
                .unwrap()
                .iter()
                .map(|m| m["Name"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(documents.len(), 2, "{out}");
        assert_eq!(names(&documents[0]), ["a"]);
        assert_eq!(names(&documents[1]), ["a", "b"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyprefix_watch_prints_the_array_and_an_empty_one() {
    bounded(async {
        let agent = &FakeAgent::start().await;
        let plan = plan(Target::KeyPrefix("web/".into()), Vec::new());
        let (result, out, _) = watching(agent, &plan, |out, _| async move {
            let printed = |n: usize| {
                let out = out.clone();
                async move { out.text().lines().count() >= n }
            };
            eventually("the empty prefix", Duration::from_secs(10), || printed(1)).await;
            agent.put("web/a", "1");
            agent.put("other", "x");
            eventually("the key", Duration::from_secs(10), || printed(2)).await;
        })
        .await;
        result.unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "[]");
        let entries: Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(entries.as_array().unwrap().len(), 1, "{out}");
        assert_eq!(entries[0]["Key"], "web/a");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_of_an_endpoint_the_agent_lacks_ends_with_an_error() {
    bounded(async {
        // The imitation has no /v1/catalog/services: a 404 there is no "absent" answer.
        let agent = &FakeAgent::start().await;
        let plan = plan(Target::Services, Vec::new());
        let client = agent.client();
        let mut out = Vec::new();
        let mut err = Vec::new();
        let shutdown = CancellationToken::new();
        let error = watch::run(&client, &plan, &mut out, &mut err, &shutdown)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("404"), "{error}");
        assert!(out.is_empty());
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// The binary: `agent event`, exit codes, Ctrl-C.

/// Runs `agent <args>` against `agent` off the async threads.
async fn cli(agent: &FakeAgent, args: &[&str], stdin: Option<Vec<u8>>) -> std::process::Output {
    let addr = agent.addr.to_string();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli_with_stdin(&addr, &args, stdin.as_deref())
    })
    .await
    .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_fires_through_the_agent_and_prints_its_id() {
    bounded(async {
        let agent = &FakeAgent::start().await;
        let args = [
            "event",
            "--name",
            "deploy",
            "--node",
            "^web-[0-9]+$",
            "--service",
            "api",
            "--tag",
            "v1",
            "v42",
        ];
        let output = cli(agent, &args, None).await;
        assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
        let id = {
            let data = agent.shared.data.lock().unwrap();
            let (name, query, body) = &data.fired[0];
            assert_eq!(name, "deploy");
            assert_eq!(query, "node=%5Eweb-%5B0-9%5D%2B%24&service=api&tag=v1");
            assert_eq!(body, b"v42");
            data.events[0]["ID"].as_str().unwrap().to_string()
        };
        assert_eq!(text(&output.stdout), format!("Event ID: {id}\n"));

        // The payload from stdin, and a name that needs encoding in the path.
        let output = cli(
            agent,
            &["event", "--name", "a/b c", "-"],
            Some(b"x\ny".to_vec()),
        )
        .await;
        assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
        let data = agent.shared.data.lock().unwrap();
        assert_eq!(data.fired[1].0, "a/b c");
        assert_eq!(data.fired[1].2, b"x\ny");
        assert_eq!(data.fired[1].1, "", "no filter, no query");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_reports_the_agents_refusal_and_refuses_a_huge_stdin() {
    bounded(async {
        let agent = &FakeAgent::start().await;
        agent.shared.data.lock().unwrap().fire_error = Some((
            StatusCode::PAYLOAD_TOO_LARGE,
            "Event name and payload too large (2000 > 512 bytes)".into(),
        ));
        let output = cli(agent, &["event", "--name", "big", "payload"], None).await;
        assert_eq!(output.status.code(), Some(1));
        let stderr = text(&output.stderr);
        assert!(stderr.contains("413"), "{stderr}");
        assert!(stderr.contains("too large (2000 > 512 bytes)"), "{stderr}");
        assert_eq!(text(&output.stdout), "");

        let huge = vec![b'x'; 64 * 1024 + 1];
        let output = cli(agent, &["event", "--name", "big", "-"], Some(huge)).await;
        assert_eq!(output.status.code(), Some(1));
        assert!(
            text(&output.stderr).contains("64 KiB"),
            "{}",
            text(&output.stderr)
        );
        assert!(agent.shared.data.lock().unwrap().fired.is_empty());

        // 64 KiB exactly is read and sent: the agent decides.
        let output = cli(
            agent,
            &["event", "--name", "big", "-"],
            Some(vec![b'x'; 64 * 1024]),
        )
        .await;
        assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
        assert_eq!(
            agent.shared.data.lock().unwrap().fired[0].2.len(),
            64 * 1024
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_usage_exits_with_2() {
    bounded(async {
        let agent = &FakeAgent::start().await;
        for args in [
            &["event", "--name", "x", "--tag", "v1"][..],
            &["event", "--name", "", "p"],
            &["event"],
            &["watch", "--type", "key"],
            &["watch", "--type", "keyprefix", "--key", "k"],
            &["watch", "--type", "members", "--name", "x"],
            &["watch", "--type", "nodes"],
        ] {
            let output = cli(agent, args, None).await;
            assert_eq!(
                output.status.code(),
                Some(2),
                "{args:?}: {}",
                text(&output.stderr)
            );
            assert!(!output.stderr.is_empty(), "{args:?}");
        }
        let data = agent.shared.data.lock().unwrap();
        assert!(data.fired.is_empty() && data.queries.is_empty());
    })
    .await;
}

/// Reads the first line of `child`'s stdout off the async threads.
async fn first_line(stdout: std::process::ChildStdout) -> String {
    tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_ends_a_watch_cleanly() {
    bounded(async {
        let agent = &FakeAgent::start().await;
        agent.put("k", "v");
        let mut child = Command::new(agent_bin())
            .args(["watch", "--type", "key", "--key", "k", "--wait", "10s"])
            .env("AGENT_HTTP_ADDR", agent.addr.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let line = first_line(child.stdout.take().unwrap()).await;
        assert_eq!(decoded_value(line.trim()).as_deref(), Some("v"), "{line}");
        // The watch now blocks in a query of up to 10 s; Ctrl-C ends it at once.
        eventually("the blocking query", Duration::from_secs(10), || async {
            agent.queries("/v1/kv/k") >= 2
        })
        .await;
        let status = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let started = Instant::now();
        let code = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap();
        assert_eq!(code.status.code(), Some(0), "{}", text(&code.stderr));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    })
    .await;
}
