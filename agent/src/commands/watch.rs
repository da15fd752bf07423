//! `agent watch`: a loop of blocking queries that hands every change to a handler, as
//! `consul watch` does.
//!
//! [`WatchState`] is the watch without I/O: it is fed each answer of the agent and says
//! which index to send next and which documents to hand over. [`run`] drives it: it
//! queries, hands over (to the handler or to stdout), backs off while the agent fails,
//! and returns when `shutdown` fires.
//!
//! What a handler gets on stdin, one JSON document per run:
//! - `key`: the key's entry as an object (not the array the KV API returns), or `null`
//!   while the key is absent;
//! - `keyprefix`: the array of entries under the prefix, `[]` when there are none;
//! - `members`: the array of members; `services`: the object of service names to tags;
//! - `event`: one user event object per run, once per event that appeared after the watch
//!   started, with `AGENT_EVENT=user` and `AGENT_USER_EVENT=<name>` in the environment.
//!
//! Every handler also gets `AGENT_INDEX`, the index of the answer (Consul's
//! `CONSUL_INDEX`). The handler runs when the data differs from what was last handed over
//! (and once for the first answer, except for events), never merely because a blocking
//! query timed out.

use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::cli::{WatchArgs, WatchKind};
use crate::client::{ApiClient, BlockingAnswer, ClientError, encode_component, encode_key};

use super::CommandError;

/// How many events `/v1/event/list` returns at most.
const EVENT_LIST_LEN: usize = 256;

/// How many event IDs a watch remembers: a few lists' worth, so an event still listed is
/// always remembered.
const SEEN_EVENTS: usize = 4 * EVENT_LIST_LEN;

/// What a watch queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One key.
    Key(String),
    /// Every key under a prefix.
    KeyPrefix(String),
    /// User events, all or those of one name.
    Event {
        /// Only events of this name.
        name: Option<String>,
    },
    /// The LAN members.
    Members,
    /// The catalog's services.
    Services,
}

impl Target {
    /// The path and query of the blocking query, without `index` and `wait`.
    pub fn path(&self) -> String {
        match self {
            Target::Key(key) => format!("/v1/kv/{}", encode_key(key)),
            Target::KeyPrefix(prefix) => format!("/v1/kv/{}?recurse", encode_key(prefix)),
            Target::Event { name: None } => "/v1/event/list".to_string(),
            Target::Event { name: Some(name) } => {
                format!("/v1/event/list?name={}", encode_component(name))
            }
            Target::Members => "/v1/agent/members".to_string(),
            Target::Services => "/v1/catalog/services".to_string(),
        }
    }

    /// Whether the index only grows while the agent's data lives (KV, members, services),
    /// rather than being a hash compared for equality (events).
    fn index_is_ordered(&self) -> bool {
        !matches!(self, Target::Event { .. })
    }

    /// Whether a 404 means "absent" (KV) rather than an endpoint the agent lacks.
    fn absent_on_404(&self) -> bool {
        matches!(self, Target::Key(_) | Target::KeyPrefix(_))
    }
}

/// Timing of a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchConfig {
    /// Longest wait of one blocking query.
    pub wait: Duration,
    /// Pause after the first failed query, doubled after each further failure...
    pub retry_base: Duration,
    /// ...up to this.
    pub retry_cap: Duration,
    /// A query that returned sooner than this without a change is followed by a pause, so
    /// an agent that answers at once with the same data cannot make the watch spin.
    pub min_interval: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            wait: Duration::from_secs(300),
            retry_base: Duration::from_secs(1),
            retry_cap: Duration::from_secs(30),
            min_interval: Duration::from_millis(100),
        }
    }
}

/// A watch as the command line asked for it, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchPlan {
    /// What to query.
    pub target: Target,
    /// The handler's argv; empty to print each document to stdout instead.
    pub handler: Vec<String>,
    /// Timing.
    pub config: WatchConfig,
}

impl WatchPlan {
    /// Checks that the flags fit the type (`--key` for `key`, and so on) and nothing
    /// else is given; the error is a usage message.
    pub fn from_args(args: &WatchArgs) -> Result<WatchPlan, String> {
        let flags = [
            ("--key", args.key.is_some(), WatchKind::Key),
            ("--prefix", args.prefix.is_some(), WatchKind::Keyprefix),
            ("--name", args.name.is_some(), WatchKind::Event),
        ];
        let type_name = |kind: WatchKind| match kind {
            WatchKind::Key => "key",
            WatchKind::Keyprefix => "keyprefix",
            WatchKind::Event => "event",
            WatchKind::Members => "members",
            WatchKind::Services => "services",
        };
        for (flag, given, kind) in flags {
            if given && kind != args.kind {
                return Err(format!(
                    "{flag} does not apply to --type {}",
                    type_name(args.kind)
                ));
            }
        }
        let target = match args.kind {
            WatchKind::Key => match args.key.as_deref() {
                None | Some("") => return Err("--type key needs a non-empty --key".into()),
                Some(key) => Target::Key(key.to_string()),
            },
            WatchKind::Keyprefix => match &args.prefix {
                None => return Err("--type keyprefix needs --prefix".into()),
                Some(prefix) => Target::KeyPrefix(prefix.clone()),
            },
            WatchKind::Event => match args.name.as_deref() {
                Some("") => return Err("--name must not be empty".into()),
                name => Target::Event {
                    name: name.map(str::to_string),
                },
            },
            WatchKind::Members => Target::Members,
            WatchKind::Services => Target::Services,
        };
        if args.wait.is_zero() {
            return Err("--wait must be longer than 0".into());
        }
        Ok(WatchPlan {
            target,
            handler: args.handler.clone(),
            config: WatchConfig {
                wait: args.wait,
                ..WatchConfig::default()
            },
        })
    }
}

/// The index to send with the next query, after an answer with index `returned` to a
/// query that sent `previous`.
///
/// An ordered index that went back (the agent restored a snapshot, or is another agent
/// now) starts over at 0, which asks for the current data without blocking, as Consul's
/// watch does. A 0 from the agent becomes 1: sent back as 0 it would ask for an answer at
/// once, every time.
pub fn next_index(previous: u64, returned: u64, ordered: bool) -> u64 {
    if ordered && returned < previous {
        return 0;
    }
    returned.max(1)
}

/// The pause before the next query after `failures` failed queries in a row (at least 1).
pub fn retry_delay(failures: u32, base: Duration, cap: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    base.saturating_mul(1 << doublings).min(cap)
}

/// One document to hand over.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The JSON the handler gets on stdin.
    pub document: Value,
    /// For a user event, its name.
    pub user_event: Option<String>,
}

/// IDs of the user events a watch has seen, the oldest forgotten first.
#[derive(Debug, Default)]
struct SeenEvents {
    order: VecDeque<String>,
    ids: HashSet<String>,
}

impl SeenEvents {
    /// Remembers `id`; false if it was known already.
    fn insert(&mut self, id: &str) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        if self.order.len() == SEEN_EVENTS
            && let Some(oldest) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
        self.order.push_back(id.to_string());
        self.ids.insert(id.to_string());
        true
    }
}

/// A watch between queries: the index to send and what was handed over. No I/O.
#[derive(Debug)]
pub struct WatchState {
    target: Target,
    index: u64,
    /// The last document handed over (all targets but events); `None` before the first.
    last: Option<Value>,
    /// Events seen; `None` before the first answer, whose events are not new.
    seen: Option<SeenEvents>,
}

impl WatchState {
    /// A watch that has not queried yet.
    pub fn new(target: Target) -> WatchState {
        WatchState {
            target,
            index: 0,
            last: None,
            seen: None,
        }
    }

    /// The index to send with the next query (0: answer at once).
    pub fn index(&self) -> u64 {
        self.index
    }

    /// After a failed query: the next one asks for the current data at once, since the
    /// agent may have restarted with other indexes. What was handed over is kept, so
    /// nothing is handed over twice.
    pub fn query_failed(&mut self) {
        self.index = 0;
    }

    /// Takes an answer: updates the index and returns what to hand over, in order. An
    /// answer of the wrong shape changes nothing and is an error.
    pub fn observe(&mut self, answer: BlockingAnswer) -> Result<Vec<Delivery>, ClientError> {
        let deliveries = match &self.target {
            Target::Event { .. } => self.new_events(answer.body)?,
            target => {
                let document = document(target, answer.body)?;
                if self.last.as_ref() == Some(&document) {
                    Vec::new()
                } else {
                    self.last = Some(document.clone());
                    vec![Delivery {
                        document,
                        user_event: None,
                    }]
                }
            }
        };
        self.index = next_index(self.index, answer.index, self.target.index_is_ordered());
        Ok(deliveries)
    }

    /// The events of a list not seen before, oldest first; none from the first list.
    fn new_events(&mut self, body: Option<Value>) -> Result<Vec<Delivery>, ClientError> {
        let events = match body {
            None => Vec::new(),
            Some(Value::Array(events)) => events,
            Some(other) => return Err(unexpected("an array of events", &other)),
        };
        let mut listed = Vec::with_capacity(events.len());
        for event in events {
            let id = match event.get("ID") {
                Some(Value::String(id)) => id.clone(),
                _ => return Err(unexpected("an event with an ID", &event)),
            };
            listed.push((id, event));
        }
        let first = self.seen.is_none();
        let seen = self.seen.get_or_insert_with(SeenEvents::default);
        let mut deliveries = Vec::new();
        for (id, event) in listed {
            if seen.insert(&id) && !first {
                let name = event
                    .get("Name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                deliveries.push(Delivery {
                    document: event,
                    user_event: Some(name),
                });
            }
        }
        Ok(deliveries)
    }
}

/// The document handed over for a non-event answer; `None` is a 404.
fn document(target: &Target, body: Option<Value>) -> Result<Value, ClientError> {
    match (target, body) {
        (Target::Key(_), None) => Ok(Value::Null),
        (Target::Key(_), Some(Value::Array(mut entries))) => {
            if entries.is_empty() {
                Ok(Value::Null)
            } else {
                Ok(entries.swap_remove(0))
            }
        }
        (Target::KeyPrefix(_), None) => Ok(Value::Array(Vec::new())),
        (Target::KeyPrefix(_) | Target::Members, Some(body @ Value::Array(_))) => Ok(body),
        (Target::Services, Some(body @ Value::Object(_))) => Ok(body),
        (Target::Services, _) => Err(unexpected_body("an object of services")),
        (_, Some(other)) => Err(unexpected("an array", &other)),
        (_, None) => Err(unexpected_body("an array")),
    }
}

fn unexpected(expected: &str, got: &Value) -> ClientError {
    let mut text = got.to_string();
    if text.len() > 200 {
        let mut end = 200;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    ClientError::Decode(format!("expected {expected}, got {text}"))
}

fn unexpected_body(expected: &str) -> ClientError {
    ClientError::Decode(format!("expected {expected}, got no body"))
}

/// `": <innermost source>"` of an error that has sources (a refused connection says why
/// only there), else nothing.
fn root_cause(error: &dyn std::error::Error) -> String {
    let mut source = error.source();
    let mut root = None;
    while let Some(cause) = source {
        root = Some(cause);
        source = cause.source();
    }
    root.map(|cause| format!(": {cause}")).unwrap_or_default()
}

/// Whether an error will not go away by asking again: a 4xx other than 408 and 429.
fn is_permanent(error: &ClientError) -> bool {
    matches!(error, ClientError::Status { status, .. }
        if (400..500).contains(status) && *status != 408 && *status != 429)
}

/// Runs the watch until `shutdown` fires (or stdout is closed): `Ok` then. Errors of the
/// agent are retried with backoff and reported on `err`, as are failed handlers; only an
/// answer that asking again cannot change (a 4xx) ends the watch with an error.
pub async fn run(
    client: &ApiClient,
    plan: &WatchPlan,
    out: &mut dyn Write,
    err: &mut dyn Write,
    shutdown: &CancellationToken,
) -> Result<(), CommandError> {
    let path = plan.target.path();
    let config = &plan.config;
    let mut state = WatchState::new(plan.target.clone());
    let mut failures = 0u32;
    loop {
        let sent = state.index();
        let started = Instant::now();
        let answer = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            answer = client.get_blocking(&path, sent, config.wait) => answer,
        };
        let deliveries = answer.and_then(|answer| {
            if answer.body.is_none() && !plan.target.absent_on_404() {
                return Err(ClientError::Status {
                    status: 404,
                    message: format!("no {path} on this agent"),
                });
            }
            let index = answer.index;
            state.observe(answer).map(|deliveries| (index, deliveries))
        });
        let (index, deliveries) = match deliveries {
            Ok(answered) => answered,
            Err(error) if is_permanent(&error) => return Err(error.into()),
            Err(error) => {
                failures = failures.saturating_add(1);
                state.query_failed();
                let delay = retry_delay(failures, config.retry_base, config.retry_cap);
                let cause = root_cause(&error);
                let _ = writeln!(
                    err,
                    "Error watching {path}: {error}{cause}; retrying in {delay:?}"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        };
        failures = 0;
        if deliveries.is_empty() && sent != 0 {
            let pause = config.min_interval.saturating_sub(started.elapsed());
            if !pause.is_zero() {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
        for delivery in deliveries {
            if plan.handler.is_empty() {
                if !print(&delivery.document, out)? {
                    return Ok(()); // whoever read stdout is gone
                }
            } else if let Err(failure) = run_handler(&plan.handler, &delivery, index).await {
                let _ = writeln!(err, "Warning: handler {failure}; the watch goes on");
            }
            if shutdown.is_cancelled() {
                return Ok(());
            }
        }
    }
}

/// Writes `document` as one line; false if the reader of `out` has gone.
fn print(document: &Value, out: &mut dyn Write) -> Result<bool, CommandError> {
    let mut line = document.to_string();
    line.push('\n');
    match out.write_all(line.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Runs the handler with the document on stdin and waits for it; the error says why it
/// failed.
async fn run_handler(argv: &[String], delivery: &Delivery, index: u64) -> Result<(), String> {
    let (program, args) = argv.split_first().ok_or_else(|| "none given".to_string())?;
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .stdin(Stdio::piped())
        .env("AGENT_INDEX", index.to_string());
    if let Some(name) = &delivery.user_event {
        command
            .env("AGENT_EVENT", "user")
            .env("AGENT_USER_EVENT", name);
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("{program:?} could not be started: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let mut input = delivery.document.to_string();
        input.push('\n');
        // A handler that does not read its stdin may exit first: not a failure.
        match stdin.write_all(input.as_bytes()).await {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(format!("{program:?}: writing its stdin failed: {e}"));
            }
            _ => {}
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| format!("{program:?}: waiting for it failed: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{program:?} failed: {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::json;

    fn answer(index: u64, body: Option<Value>) -> BlockingAnswer {
        BlockingAnswer { index, body }
    }

    fn event(id: &str, name: &str) -> Value {
        json!({"ID": id, "Name": name, "Payload": null, "LTime": 1, "Version": 1})
    }

    fn documents(deliveries: Vec<Delivery>) -> Vec<Value> {
        deliveries.into_iter().map(|d| d.document).collect()
    }

    fn plan(args: &[&str]) -> Result<WatchPlan, String> {
        let cli = crate::cli::Cli::try_parse_from(["agent", "watch"].iter().chain(args).copied())
            .map_err(|e| e.to_string())?;
        match cli.command {
            crate::cli::Command::Watch(args) => WatchPlan::from_args(&args),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn an_ordered_index_that_goes_back_starts_over_and_zeros_become_one() {
        assert_eq!(next_index(0, 7, true), 7);
        assert_eq!(next_index(7, 7, true), 7);
        assert_eq!(next_index(7, 9, true), 9);
        assert_eq!(next_index(9, 3, true), 0);
        assert_eq!(next_index(0, 0, true), 1);
        assert_eq!(next_index(5, 0, true), 0);
        // Event indexes are hashes: a smaller one is just another one.
        assert_eq!(next_index(9, 3, false), 3);
        assert_eq!(next_index(9, 0, false), 1);
    }

    #[test]
    fn retries_back_off_doubling_up_to_the_cap() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(30);
        let delays: Vec<u64> = (1..=7)
            .map(|n| retry_delay(n, base, cap).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(retry_delay(u32::MAX, base, cap), cap);
    }

    #[test]
    fn a_key_is_handed_over_first_and_then_only_when_it_changes() {
        let mut state = WatchState::new(Target::Key("k".into()));
        assert_eq!(state.index(), 0);
        // Absent at first: handed over as null.
        assert_eq!(
            documents(state.observe(answer(4, None)).unwrap()),
            [Value::Null]
        );
        assert_eq!(state.index(), 4);
        // The blocking query timed out: same answer, nothing to do.
        assert!(state.observe(answer(4, None)).unwrap().is_empty());
        let entry = json!({"Key": "k", "Value": "djE=", "ModifyIndex": 5});
        let changed = state
            .observe(answer(5, Some(json!([entry.clone()]))))
            .unwrap();
        assert_eq!(documents(changed), std::slice::from_ref(&entry));
        // Another key's write woke the query up but this one is the same.
        assert!(
            state
                .observe(answer(6, Some(json!([entry.clone()]))))
                .unwrap()
                .is_empty()
        );
        assert_eq!(state.index(), 6);
        // An index that went back: start over at 0, and hand over nothing unchanged.
        assert!(
            state
                .observe(answer(2, Some(json!([entry]))))
                .unwrap()
                .is_empty()
        );
        assert_eq!(state.index(), 0);
        assert_eq!(
            documents(state.observe(answer(2, None)).unwrap()),
            [Value::Null]
        );
        // A failed query: start over at 0, still without handing over the same again.
        assert_eq!(state.index(), 2);
        state.query_failed();
        assert_eq!(state.index(), 0);
        assert!(state.observe(answer(2, None)).unwrap().is_empty());
        assert_eq!(state.index(), 2);
    }

    #[test]
    fn prefixes_members_and_services_are_handed_over_whole() {
        let mut prefix = WatchState::new(Target::KeyPrefix("p/".into()));
        assert_eq!(
            documents(prefix.observe(answer(1, None)).unwrap()),
            [json!([])]
        );
        assert!(
            prefix
                .observe(answer(1, Some(json!([]))))
                .unwrap()
                .is_empty()
        );

        let mut members = WatchState::new(Target::Members);
        let one = json!([{"Name": "a", "Status": 1}]);
        assert_eq!(
            documents(members.observe(answer(3, Some(one.clone()))).unwrap()),
            std::slice::from_ref(&one)
        );
        assert!(members.observe(answer(3, Some(one))).unwrap().is_empty());

        let mut services = WatchState::new(Target::Services);
        let web = json!({"web": ["v1"]});
        assert_eq!(
            documents(services.observe(answer(2, Some(web.clone()))).unwrap()),
            [web]
        );
        // The wrong shape is an error and changes nothing.
        assert!(services.observe(answer(9, Some(json!([])))).is_err());
        assert_eq!(services.index(), 2);
    }

    #[test]
    fn events_listed_at_the_start_are_not_new_and_each_new_one_is_handed_over_once() {
        let mut state = WatchState::new(Target::Event { name: None });
        let (a, b, c, d) = (
            event("a", "deploy"),
            event("b", "deploy"),
            event("c", "restart"),
            event("d", "deploy"),
        );
        assert!(
            state
                .observe(answer(11, Some(json!([a.clone(), b.clone()]))))
                .unwrap()
                .is_empty()
        );
        let new = state
            .observe(answer(12, Some(json!([a.clone(), b.clone(), c.clone()]))))
            .unwrap();
        assert_eq!(
            new,
            [Delivery {
                document: c.clone(),
                user_event: Some("restart".into())
            }]
        );
        // The same list again (a timeout), then one with the oldest gone and one more.
        assert!(
            state
                .observe(answer(12, Some(json!([a, b.clone(), c.clone()]))))
                .unwrap()
                .is_empty()
        );
        let new = state
            .observe(answer(3, Some(json!([b, c, d.clone()]))))
            .unwrap();
        assert_eq!(documents(new), [d]);
        assert_eq!(state.index(), 3, "an event index is never reset");
        assert!(
            state
                .observe(answer(1, Some(json!([{"Name": "no id"}]))))
                .is_err()
        );
    }

    #[test]
    fn an_empty_first_event_list_makes_every_later_event_new() {
        let mut state = WatchState::new(Target::Event {
            name: Some("deploy".into()),
        });
        assert!(
            state
                .observe(answer(1, Some(json!([]))))
                .unwrap()
                .is_empty()
        );
        let (a, b) = (event("a", "deploy"), event("b", "deploy"));
        let new = state
            .observe(answer(7, Some(json!([a.clone(), b.clone()]))))
            .unwrap();
        assert_eq!(documents(new), [a, b]);
    }

    #[test]
    fn seen_events_are_bounded_and_forget_the_oldest() {
        let mut seen = SeenEvents::default();
        for i in 0..SEEN_EVENTS + 10 {
            assert!(seen.insert(&i.to_string()));
        }
        assert_eq!(seen.ids.len(), SEEN_EVENTS);
        assert_eq!(seen.order.len(), SEEN_EVENTS);
        assert!(!seen.insert(&(SEEN_EVENTS + 9).to_string()));
        assert!(!seen.insert("10"));
        assert!(seen.insert("0"), "the oldest was forgotten");
    }

    #[test]
    fn flags_must_fit_the_type() {
        let key = plan(&["--type", "key", "--key", "a/b", "--", "h", "-x"]).unwrap();
        assert_eq!(key.target, Target::Key("a/b".into()));
        assert_eq!(key.handler, ["h", "-x"]);
        assert_eq!(key.config.wait, Duration::from_secs(300));
        let prefix = plan(&["--type", "keyprefix", "--prefix", "", "--wait", "2s"]).unwrap();
        assert_eq!(prefix.target, Target::KeyPrefix(String::new()));
        assert!(prefix.handler.is_empty());
        assert_eq!(prefix.config.wait, Duration::from_secs(2));
        assert_eq!(
            plan(&["--type", "event"]).unwrap().target,
            Target::Event { name: None }
        );
        assert_eq!(
            plan(&["--type", "services"]).unwrap().target,
            Target::Services
        );

        for bad in [
            &["--type", "key"][..],
            &["--type", "key", "--key", ""],
            &["--type", "keyprefix"],
            &["--type", "members", "--key", "k"],
            &["--type", "key", "--key", "k", "--prefix", "p"],
            &["--type", "event", "--name", ""],
            &["--type", "services", "--name", "x"],
            &["--type", "members", "--wait", "0"],
            &["--type", "nodes"],
        ] {
            assert!(plan(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn paths_encode_what_they_carry() {
        assert_eq!(Target::Key("a b/c".into()).path(), "/v1/kv/a%20b/c");
        assert_eq!(Target::KeyPrefix("p/".into()).path(), "/v1/kv/p/?recurse");
        assert_eq!(
            Target::Event {
                name: Some("a&b".into())
            }
            .path(),
            "/v1/event/list?name=a%26b"
        );
    }
}
