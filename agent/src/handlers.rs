//! Event handlers: commands run for the events on the bus (`agent run --event-handler`).
//!
//! A handler is given as `[TYPE[:NAME][,TYPE[:NAME]...]=]COMMAND` ([`HandlerSpec`]) and
//! runs `sh -c COMMAND` once for every event it matches, as Serf's agent does.
//!
//! # What a handler receives
//! Every run has `AGENT_NODE` (this node's name) and `AGENT_EVENT` in its environment,
//! and gets the event on stdin:
//! - user events: the raw payload; `AGENT_EVENT=user`, `AGENT_USER_EVENT` (the name),
//!   `AGENT_USER_LTIME` (its Lamport time), `AGENT_EVENT_ID` (its UUID).
//! - member events: one line per member, `name\tip\trole\ttags`, the tags as `k=v,k=v`
//!   sorted by key; `AGENT_EVENT` is the kind (`member-join`, ...).
//! - KV and health events: the event as JSON (as the bus serializes [`Event`]) and a
//!   newline; `AGENT_EVENT=kv` or `health`.
//!
//! # Member events
//! Member events are coalesced with [`MemberCoalescer`] (Serf's periods unless
//! [`EventHandlers::coalesce`] sets others): a burst of changes becomes one run per kind,
//! each member appearing once with its latest state. Handlers see Serf's five kinds:
//! - `member-join`: [`MemberEventKind::Join`]; the membership layer also reports a member
//!   back after it failed or left as a join.
//! - `member-update`, `member-failed`, `member-leave`, `member-reap`: `Update`, `Failed`,
//!   `Leave`, `Reap`.
//! - Not delivered: `Suspect` (not yet failed), `Alive` (a suspicion refuted, so the
//!   member never failed) and `Leaving` (the `Leave` follows). They are dropped before
//!   coalescing, so they never hide a member's pending join or failure.
//!
//! Coalescing delays member events by up to the coalesce period, so a handler may see
//! them after user, KV or health events that happened later.
//!
//! # Running
//! One dispatcher task reads the bus and puts each event into the queue of every handler
//! that matches it. Each handler has its own task and a queue of [`QUEUE_CAPACITY`]
//! events: its runs happen one at a time, in queue order. A full queue, or a dispatcher
//! that fell behind the bus, loses events with a warning that says how many; the bus is
//! never held up.
//!
//! A run still going after the timeout is killed with its whole process group (every
//! handler leads its own group) and reaped. Failures to start, non-zero exits and a
//! handler that does not read its stdin are logged and never stop the next run. The first
//! [`OUTPUT_LIMIT`] bytes of stdout and stderr are logged (at debug level on success,
//! with the warning otherwise). Output is read for at most [`OUTPUT_GRACE`] after the
//! handler exits, so a background process that keeps the pipes open does not hold up the
//! queue; processes a handler leaves behind after exiting are not killed.
//!
//! On shutdown the dispatcher stops, queued events are dropped and a running handler is
//! killed at once (with its process group), so the agent stops promptly.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use events::{
    Bus, CoalesceConfig, Event, MemberCoalescer, MemberEvent, MemberEventKind, Received,
    Subscription, UserEvent,
};
use thiserror::Error;
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::process::{self, End, Finished};

/// Events waiting for one handler before newer ones are dropped.
pub const QUEUE_CAPACITY: usize = 1024;

pub use crate::process::{OUTPUT_GRACE, OUTPUT_LIMIT};

/// The environment variables handlers get; removed from the inherited environment first,
/// so a run never sees another event's values.
const ENV_VARS: [&str; 5] = [
    "AGENT_NODE",
    "AGENT_EVENT",
    "AGENT_USER_EVENT",
    "AGENT_USER_LTIME",
    "AGENT_EVENT_ID",
];

/// Which events a handler runs for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Every event (`*`).
    Any,
    /// User events (`user`), or only those of one name (`user:NAME`).
    User(Option<String>),
    /// Member events of every kind (`member`), or of one kind (`member-join`, ...). Only
    /// Serf's five kinds are parsed: join, leave, failed, update, reap.
    Member(Option<MemberEventKind>),
    /// KV writes (`kv`).
    Kv,
    /// Health check changes (`health`).
    Health,
}

/// One `--event-handler`: which events, and the command to run.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HandlerSpec {
    types: Vec<EventType>,
    command: String,
}

/// An `--event-handler` that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SpecError {
    /// Nothing (or only blanks) to run.
    #[error("the command is empty")]
    EmptyCommand,
}

impl EventType {
    /// The member kinds handlers see, with their names.
    const MEMBER_KINDS: [MemberEventKind; 5] = [
        MemberEventKind::Join,
        MemberEventKind::Leave,
        MemberEventKind::Failed,
        MemberEventKind::Update,
        MemberEventKind::Reap,
    ];

    fn parse(text: &str) -> Option<EventType> {
        let text = text.trim();
        if let Some(name) = text.strip_prefix("user:") {
            return (!name.is_empty()).then(|| EventType::User(Some(name.to_string())));
        }
        match text {
            "*" => Some(EventType::Any),
            "user" => Some(EventType::User(None)),
            "member" => Some(EventType::Member(None)),
            "kv" => Some(EventType::Kv),
            "health" => Some(EventType::Health),
            _ => EventType::MEMBER_KINDS
                .into_iter()
                .find(|kind| kind.as_str() == text)
                .map(|kind| EventType::Member(Some(kind))),
        }
    }

    fn matches(&self, delivery: &Delivery) -> bool {
        match (self, delivery) {
            (EventType::Any, _) => true,
            (EventType::User(name), Delivery::User(event)) => {
                name.as_ref().is_none_or(|name| *name == event.name)
            }
            (EventType::Member(kind), Delivery::Members { kind: batch, .. }) => {
                kind.is_none_or(|kind| kind == *batch)
            }
            (EventType::Kv, Delivery::Json { name: "kv", .. }) => true,
            (EventType::Health, Delivery::Json { name: "health", .. }) => true,
            _ => false,
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventType::Any => f.write_str("*"),
            EventType::User(None) => f.write_str("user"),
            EventType::User(Some(name)) => write!(f, "user:{name}"),
            EventType::Member(None) => f.write_str("member"),
            EventType::Member(Some(kind)) => f.write_str(kind.as_str()),
            EventType::Kv => f.write_str("kv"),
            EventType::Health => f.write_str("health"),
        }
    }
}

impl HandlerSpec {
    /// Parses `[TYPE[:NAME][,TYPE[:NAME]...]=]COMMAND`. Without an `=`, or when the part
    /// before the first `=` is not a list of known types (as in `FOO=1 cmd`), the whole
    /// text is the command and the handler runs for every event; so does a misspelt type
    /// (`member-jion=notify` runs `member-jion=notify` for every event).
    pub fn parse(text: &str) -> Result<HandlerSpec, SpecError> {
        let typed = text.split_once('=').and_then(|(types, command)| {
            let types: Option<Vec<EventType>> = types.split(',').map(EventType::parse).collect();
            types.map(|types| (types, command))
        });
        let (types, command) = typed.unwrap_or_else(|| (vec![EventType::Any], text));
        if command.trim().is_empty() {
            return Err(SpecError::EmptyCommand);
        }
        Ok(HandlerSpec {
            types,
            command: command.to_string(),
        })
    }

    /// The events it runs for (`[EventType::Any]` when none were named).
    pub fn types(&self) -> &[EventType] {
        &self.types
    }

    /// The command, run with `sh -c`.
    pub fn command(&self) -> &str {
        &self.command
    }

    fn matches(&self, delivery: &Delivery) -> bool {
        self.types.iter().any(|t| t.matches(delivery))
    }

    fn wants_members(&self) -> bool {
        self.types
            .iter()
            .any(|t| matches!(t, EventType::Any | EventType::Member(_)))
    }
}

impl FromStr for HandlerSpec {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<HandlerSpec, SpecError> {
        HandlerSpec::parse(text)
    }
}

impl fmt::Display for HandlerSpec {
    /// `TYPE,TYPE=COMMAND`, which parses back to the same spec.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.types.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{t}")?;
        }
        write!(f, "={}", self.command)
    }
}

/// The event handlers of an agent, ready to [`spawn`](EventHandlers::spawn).
#[derive(Debug, Clone)]
pub struct EventHandlers {
    specs: Vec<HandlerSpec>,
    timeout: Duration,
    node: String,
    coalesce: CoalesceConfig,
}

impl EventHandlers {
    /// Handlers that run `specs`, each run killed after `timeout`, on the node `node`;
    /// member events coalesced with Serf's periods.
    pub fn new(specs: Vec<HandlerSpec>, timeout: Duration, node: impl Into<String>) -> Self {
        EventHandlers {
            specs,
            timeout,
            node: node.into(),
            coalesce: CoalesceConfig::default(),
        }
    }

    /// Coalesces member events with `config` instead.
    pub fn coalesce(mut self, config: CoalesceConfig) -> Self {
        self.coalesce = config;
        self
    }

    /// Subscribes to `bus` (so every event published after this returns is seen) and
    /// spawns the dispatcher and one task per handler on `tracker`. They end when
    /// `shutdown` fires or the bus closes. Without handlers, nothing is spawned.
    pub fn spawn(self, bus: &Bus, tracker: &TaskTracker, shutdown: CancellationToken) {
        if self.specs.is_empty() {
            return;
        }
        let subscription = bus.subscribe();
        let runner = Arc::new(Runner {
            timeout: self.timeout,
            node: self.node,
        });
        let wants_members = self.specs.iter().any(HandlerSpec::wants_members);
        let mut queues = Vec::with_capacity(self.specs.len());
        for spec in self.specs {
            let spec = Arc::new(spec);
            let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
            tracker.spawn(work(
                spec.clone(),
                receiver,
                runner.clone(),
                shutdown.clone(),
            ));
            queues.push(Queue {
                spec,
                sender,
                missed: 0,
            });
        }
        let dispatcher = Dispatcher {
            subscription,
            queues,
            coalescer: wants_members.then(|| MemberCoalescer::new(self.coalesce)),
        };
        tracker.spawn(dispatcher.run(shutdown));
    }
}

/// What one run of a handler is for.
#[derive(Debug)]
enum Delivery {
    User(UserEvent),
    /// Coalesced member events, all of one kind.
    Members {
        kind: MemberEventKind,
        members: Vec<MemberEvent>,
    },
    /// A KV (`kv`) or health (`health`) event, handed over as JSON.
    Json {
        name: &'static str,
        event: Event,
    },
}

impl Delivery {
    /// The value of `AGENT_EVENT`.
    fn name(&self) -> &'static str {
        match self {
            Delivery::User(_) => "user",
            Delivery::Members { kind, .. } => kind.as_str(),
            Delivery::Json { name, .. } => name,
        }
    }

    /// The variables besides `AGENT_NODE` and `AGENT_EVENT`.
    fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Delivery::User(event) => vec![
                ("AGENT_USER_EVENT", event.name.clone()),
                ("AGENT_USER_LTIME", event.ltime.to_string()),
                ("AGENT_EVENT_ID", event.id.to_string()),
            ],
            _ => Vec::new(),
        }
    }

    fn stdin(&self) -> Vec<u8> {
        match self {
            Delivery::User(event) => event.payload.clone(),
            Delivery::Members { members, .. } => members
                .iter()
                .map(|m| {
                    let tags: Vec<String> =
                        m.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!(
                        "{}\t{}\t{}\t{}\n",
                        m.name,
                        m.addr.ip(),
                        m.role,
                        tags.join(",")
                    )
                })
                .collect::<String>()
                .into_bytes(),
            Delivery::Json { event, .. } => match serde_json::to_vec(event) {
                Ok(mut json) => {
                    json.push(b'\n');
                    json
                }
                Err(e) => {
                    tracing::warn!("encoding an event for a handler: {e}");
                    Vec::new()
                }
            },
        }
    }

    /// For the log: the event's name and what it is about.
    fn describe(&self) -> String {
        match self {
            Delivery::User(event) => format!("user event {:?} ({})", event.name, event.id),
            Delivery::Members { kind, members } => {
                format!("{} of {} member(s)", kind.as_str(), members.len())
            }
            Delivery::Json {
                event: Event::Kv { key, .. },
                ..
            } => format!("kv {key:?}"),
            Delivery::Json {
                event: Event::Health { node, check, .. },
                ..
            } => format!("health of {check:?} on {node:?}"),
            Delivery::Json { name, .. } => name.to_string(),
        }
    }
}

/// Whether handlers see a member event of this kind (see the module documentation).
fn delivered(kind: MemberEventKind) -> bool {
    match kind {
        MemberEventKind::Join
        | MemberEventKind::Update
        | MemberEventKind::Failed
        | MemberEventKind::Leave
        | MemberEventKind::Reap => true,
        MemberEventKind::Suspect | MemberEventKind::Alive | MemberEventKind::Leaving => false,
    }
}

/// One handler's queue, as the dispatcher sees it.
struct Queue {
    spec: Arc<HandlerSpec>,
    sender: mpsc::Sender<Arc<Delivery>>,
    /// Events dropped since the queue was last found with room.
    missed: u64,
}

impl Queue {
    fn offer(&mut self, delivery: &Arc<Delivery>) {
        match self.sender.try_send(delivery.clone()) {
            Ok(()) => self.report_missed(),
            Err(mpsc::error::TrySendError::Full(_)) => {
                if self.missed == 0 {
                    tracing::warn!(
                        command = %self.spec.command,
                        "an event handler's queue is full ({QUEUE_CAPACITY} events); dropping events"
                    );
                }
                self.missed += 1;
            }
            // The handler's task ended: the agent is shutting down.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    fn report_missed(&mut self) {
        if self.missed > 0 {
            tracing::warn!(
                command = %self.spec.command,
                missed = self.missed,
                "an event handler missed {} events: its queue was full",
                self.missed
            );
            self.missed = 0;
        }
    }
}

/// Reads the bus, coalesces member events and fills the handlers' queues.
struct Dispatcher {
    subscription: Subscription,
    queues: Vec<Queue>,
    /// Present when a handler wants member events.
    coalescer: Option<MemberCoalescer>,
}

impl Dispatcher {
    async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let deadline = self.coalescer.as_ref().and_then(|c| c.next_deadline());
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = sleep_until(deadline) => {
                    let flushed = self
                        .coalescer
                        .as_mut()
                        .and_then(|c| c.poll_flush(std::time::Instant::now()));
                    if let Some(members) = flushed {
                        self.dispatch_members(members);
                    }
                }
                received = self.subscription.recv() => match received {
                    Received::Event(event) => self.route(event),
                    Received::Lagged(missed) => tracing::warn!(
                        missed,
                        "event handlers missed {missed} events: they fell behind the bus"
                    ),
                    Received::Closed => {
                        if let Some(coalescer) = &mut self.coalescer {
                            let members = coalescer.flush();
                            self.dispatch_members(members);
                        }
                        break;
                    }
                },
            }
        }
        for queue in &mut self.queues {
            queue.report_missed();
        }
    }

    fn route(&mut self, event: Event) {
        match event {
            Event::Member(member) => {
                if let Some(coalescer) = &mut self.coalescer
                    && delivered(member.kind)
                {
                    coalescer.push(member, std::time::Instant::now());
                }
            }
            Event::User(user) => self.dispatch(Delivery::User(user)),
            event @ Event::Kv { .. } => self.dispatch(Delivery::Json { name: "kv", event }),
            event @ Event::Health { .. } => {
                self.dispatch(Delivery::Json {
                    name: "health",
                    event,
                });
            }
        }
    }

    /// One delivery per kind; the coalescer hands them over grouped by kind.
    fn dispatch_members(&mut self, members: Vec<MemberEvent>) {
        for batch in members.chunk_by(|a, b| a.kind == b.kind) {
            self.dispatch(Delivery::Members {
                kind: batch[0].kind,
                members: batch.to_vec(),
            });
        }
    }

    fn dispatch(&mut self, delivery: Delivery) {
        let delivery = Arc::new(delivery);
        for queue in &mut self.queues {
            if queue.spec.matches(&delivery) {
                queue.offer(&delivery);
            }
        }
    }
}

async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// One handler's task: its runs, one at a time.
async fn work(
    spec: Arc<HandlerSpec>,
    mut queue: mpsc::Receiver<Arc<Delivery>>,
    runner: Arc<Runner>,
    shutdown: CancellationToken,
) {
    loop {
        let delivery = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            delivery = queue.recv() => match delivery {
                Some(delivery) => delivery,
                None => break,
            },
        };
        runner.run(&spec.command, &delivery, &shutdown).await;
    }
}

/// Runs commands for deliveries.
struct Runner {
    timeout: Duration,
    node: String,
}

impl Runner {
    /// Runs `command` for `delivery`; logs whatever goes wrong.
    async fn run(&self, command: &str, delivery: &Delivery, shutdown: &CancellationToken) {
        let event = delivery.describe();
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(command);
        for name in ENV_VARS {
            cmd.env_remove(name);
        }
        cmd.env("AGENT_NODE", &self.node)
            .env("AGENT_EVENT", delivery.name());
        for (name, value) in delivery.env() {
            cmd.env(name, value);
        }
        let Finished {
            end,
            stdout,
            stderr,
        } = match process::run(cmd, delivery.stdin(), self.timeout, shutdown).await {
            Ok(finished) => finished,
            Err(e) => {
                tracing::warn!(command, event, "could not start an event handler: {e}");
                return;
            }
        };

        let (stdout, stderr) = (stdout.text(), stderr.text());
        match end {
            End::Exited(Ok(status)) if status.success() => {
                tracing::debug!(command, event, stdout, stderr, "event handler done");
            }
            End::Exited(Ok(status)) => {
                tracing::warn!(command, event, %status, stdout, stderr, "event handler failed");
            }
            End::Exited(Err(e)) => {
                tracing::warn!(command, event, "waiting for an event handler: {e}");
            }
            End::TimedOut => tracing::warn!(
                command,
                event,
                timeout = ?self.timeout,
                stdout,
                stderr,
                "event handler timed out; killed it"
            ),
            End::Shutdown => tracing::info!(
                command,
                event,
                "event handler killed: the agent is shutting down"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::{Path, PathBuf};

    use events::HealthStatus;

    // Tests fail after this long rather than hang.
    const PATIENCE: Duration = Duration::from_secs(10);

    fn spec(text: &str) -> HandlerSpec {
        text.parse().unwrap()
    }

    fn types(text: &str) -> Vec<EventType> {
        spec(text).types().to_vec()
    }

    #[test]
    fn a_spec_names_types_and_a_command() {
        let s = spec("user:deploy=/usr/local/bin/deploy --now");
        assert_eq!(s.types(), [EventType::User(Some("deploy".into()))]);
        assert_eq!(s.command(), "/usr/local/bin/deploy --now");

        assert_eq!(types("user=x"), [EventType::User(None)]);
        assert_eq!(types("member=x"), [EventType::Member(None)]);
        assert_eq!(types("kv=x"), [EventType::Kv]);
        assert_eq!(types("health=x"), [EventType::Health]);
        assert_eq!(types("*=x"), [EventType::Any]);
        for (text, kind) in [
            ("member-join", MemberEventKind::Join),
            ("member-leave", MemberEventKind::Leave),
            ("member-failed", MemberEventKind::Failed),
            ("member-update", MemberEventKind::Update),
            ("member-reap", MemberEventKind::Reap),
        ] {
            assert_eq!(types(&format!("{text}=x")), [EventType::Member(Some(kind))]);
        }
        assert_eq!(
            types("member-join, member-leave,user:a:b=notify"),
            [
                EventType::Member(Some(MemberEventKind::Join)),
                EventType::Member(Some(MemberEventKind::Leave)),
                EventType::User(Some("a:b".into())),
            ]
        );
        // Only the first `=` separates.
        assert_eq!(spec("kv=env X=1 cmd").command(), "env X=1 cmd");
    }

    #[test]
    fn without_known_types_the_whole_text_is_the_command() {
        for text in [
            "/usr/local/bin/handle",
            "FOO=1 cmd",
            "user,FOO=1 cmd",
            "member-suspect=cmd",
            "user:=cmd",
            "=cmd",
            "echo a=b",
        ] {
            let s = spec(text);
            assert_eq!(s.types(), [EventType::Any], "{text}");
            assert_eq!(s.command(), text);
        }
    }

    #[test]
    fn an_empty_command_is_refused() {
        for text in ["", "  ", "user=", "kv,health= ", "user:deploy="] {
            assert_eq!(
                text.parse::<HandlerSpec>(),
                Err(SpecError::EmptyCommand),
                "{text:?}"
            );
        }
    }

    #[test]
    fn a_spec_displays_as_it_parses() {
        for text in ["user:deploy,member=run it", "FOO=1 cmd", "kv=a=b"] {
            let s = spec(text);
            assert_eq!(spec(&s.to_string()), s, "{text}");
        }
        assert_eq!(spec("member-failed,kv=x").to_string(), "member-failed,kv=x");
    }

    /// Handlers running against their own bus; member events coalesced within 100 ms.
    struct Harness {
        bus: Bus,
        tracker: TaskTracker,
        shutdown: CancellationToken,
        dir: tempfile::TempDir,
    }

    impl Harness {
        /// `specs` may use `{dir}` for the test's directory.
        fn start(specs: &[&str], timeout: Duration) -> Harness {
            let dir = tempfile::tempdir().unwrap();
            let specs = specs
                .iter()
                .map(|s| spec(&s.replace("{dir}", &dir.path().display().to_string())))
                .collect();
            let bus = Bus::new();
            let tracker = TaskTracker::new();
            let shutdown = CancellationToken::new();
            EventHandlers::new(specs, timeout, "node-1")
                .coalesce(CoalesceConfig {
                    coalesce_period: Duration::from_millis(500),
                    quiescent_period: Duration::from_millis(100),
                })
                .spawn(&bus, &tracker, shutdown.clone());
            tracker.close();
            Harness {
                bus,
                tracker,
                shutdown,
                dir,
            }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn user(&self, name: &str, payload: &[u8]) -> UserEvent {
            let event = UserEvent::new(uuid::Uuid::new_v4(), name, payload.to_vec(), 7, "node-2");
            self.bus.publish(Event::User(event.clone()));
            event
        }

        fn member(&self, kind: MemberEventKind, name: &str, tags: &[(&str, &str)]) {
            self.bus.publish(Event::Member(MemberEvent {
                kind,
                name: name.into(),
                addr: "10.0.0.9:8301".parse().unwrap(),
                dc: "dc1".into(),
                role: "client".into(),
                tags: tags
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                status: 1,
            }));
        }

        /// Stops the handlers; they must end within the test's patience.
        async fn stop(self) {
            self.shutdown.cancel();
            tokio::time::timeout(PATIENCE, self.tracker.wait())
                .await
                .expect("the handler tasks end on shutdown");
        }
    }

    /// The file's content once `done` holds for it; panics with it after the patience.
    async fn wait_for(path: &Path, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if done(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "gave up waiting on {}; it holds {text:?}",
                path.display()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether the process `pid` is gone (or a zombie nobody reaped yet).
    fn is_dead(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            // The state follows the command name in parentheses.
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        }
    }

    #[tokio::test]
    async fn a_user_handler_gets_the_payload_and_the_environment() {
        let h = Harness::start(
            &[
                "user=cat > '{dir}/payload'; env | grep -E '^AGENT_(EVENT|EVENT_ID|NODE|USER_EVENT|USER_LTIME)=' | sort > '{dir}/env'; echo ok > '{dir}/done'",
            ],
            PATIENCE,
        );
        let event = h.user("deploy", b"web v42\n\x00binary");
        wait_for(&h.path("done"), |t| t == "ok\n").await;
        assert_eq!(
            std::fs::read(h.path("payload")).unwrap(),
            b"web v42\n\x00binary"
        );
        let expected = format!(
            "AGENT_EVENT=user\nAGENT_EVENT_ID={}\nAGENT_NODE=node-1\nAGENT_USER_EVENT=deploy\nAGENT_USER_LTIME=7\n",
            event.id
        );
        assert_eq!(std::fs::read_to_string(h.path("env")).unwrap(), expected);
        h.stop().await;
    }

    #[tokio::test]
    async fn a_named_user_handler_runs_only_for_its_name() {
        let h = Harness::start(
            &["user:deploy=echo \"$AGENT_USER_EVENT\" >> '{dir}/out'"],
            PATIENCE,
        );
        h.user("restart", b"");
        h.user("deploy", b"");
        // Runs are in order: had `restart` run, it would be first.
        let out = wait_for(&h.path("out"), |t| t.contains("deploy")).await;
        assert_eq!(out, "deploy\n");
        h.stop().await;
    }

    #[tokio::test]
    async fn kv_and_health_handlers_get_json() {
        let h = Harness::start(
            &[
                "kv=cat >> '{dir}/kv'",
                "health=echo \"$AGENT_EVENT\" >> '{dir}/health'; cat >> '{dir}/health'",
            ],
            PATIENCE,
        );
        // Were it delivered, it would come first.
        h.user("ignored", b"user payload\n");
        h.bus.publish(Event::Health {
            node: "n1".into(),
            check: "web".into(),
            status: HealthStatus::Critical,
        });
        h.bus.publish(Event::Kv {
            key: "app/config".into(),
            modify_index: 12,
            deleted: false,
            recurse: false,
        });
        let kv = wait_for(&h.path("kv"), |t| t.ends_with('\n')).await;
        assert_eq!(
            kv,
            "{\"Type\":\"Kv\",\"Key\":\"app/config\",\"ModifyIndex\":12,\"Deleted\":false,\"Recurse\":false}\n"
        );
        let health = wait_for(&h.path("health"), |t| t.lines().count() == 2).await;
        assert_eq!(
            health,
            "health\n{\"Type\":\"Health\",\"Node\":\"n1\",\"Check\":\"web\",\"Status\":\"critical\"}\n"
        );
        h.stop().await;
    }

    #[tokio::test]
    async fn a_handler_that_runs_too_long_is_killed_with_its_group() {
        let h = Harness::start(
            &["user=echo \"start $AGENT_USER_EVENT\" >> '{dir}/out'; \
               if [ \"$AGENT_USER_EVENT\" = slow ]; then sleep 30 & echo $! > '{dir}/pid'; wait; fi; \
               echo \"end $AGENT_USER_EVENT\" >> '{dir}/out'"],
            Duration::from_millis(300),
        );
        let started = Instant::now();
        h.user("slow", b"");
        h.user("fast", b"");
        let out = wait_for(&h.path("out"), |t| t.contains("end fast")).await;
        assert_eq!(out, "start slow\nstart fast\nend fast\n");
        assert!(started.elapsed() < Duration::from_secs(5));
        let pid: u32 = std::fs::read_to_string(h.path("pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The background `sleep` was in the handler's group: killed too.
        let deadline = Instant::now() + PATIENCE;
        while !is_dead(pid) {
            assert!(Instant::now() < deadline, "sleep {pid} still runs");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        h.stop().await;
    }

    #[tokio::test]
    async fn a_failing_handler_does_not_stop_the_next_runs() {
        let h = Harness::start(
            &["user=echo \"$AGENT_USER_EVENT\" >> '{dir}/out'; exit 3"],
            PATIENCE,
        );
        for name in ["a", "b", "c"] {
            h.user(name, b"");
        }
        let out = wait_for(&h.path("out"), |t| t.contains('c')).await;
        assert_eq!(out, "a\nb\nc\n");
        h.stop().await;
    }

    #[tokio::test]
    async fn a_handler_may_ignore_a_large_stdin() {
        let h = Harness::start(
            &["user=echo \"$AGENT_USER_EVENT\" >> '{dir}/out'"],
            PATIENCE,
        );
        // Far more than a pipe holds.
        let payload = vec![b'x'; 4 << 20];
        h.user("first", &payload);
        h.user("second", &payload);
        let out = wait_for(&h.path("out"), |t| t.contains("second")).await;
        assert_eq!(out, "first\nsecond\n");
        h.stop().await;
    }

    #[tokio::test]
    async fn member_events_are_coalesced_into_one_run_per_kind() {
        let h = Harness::start(
            &[
                "member={ echo \"== $AGENT_EVENT\"; cat; } >> '{dir}/member'",
                "member-failed=echo \"$AGENT_EVENT\" >> '{dir}/failed'",
            ],
            PATIENCE,
        );
        h.member(
            MemberEventKind::Join,
            "b",
            &[("role", "client"), ("az", "1")],
        );
        h.member(MemberEventKind::Join, "a", &[]);
        h.member(MemberEventKind::Join, "c", &[]);
        // Not delivered, and does not hide c's join.
        h.member(MemberEventKind::Suspect, "c", &[]);
        h.member(MemberEventKind::Join, "d", &[]);
        h.member(MemberEventKind::Failed, "d", &[]);
        let expected = "== member-join\n\
                        a\t10.0.0.9\tclient\t\n\
                        b\t10.0.0.9\tclient\taz=1,role=client\n\
                        c\t10.0.0.9\tclient\t\n\
                        == member-failed\n\
                        d\t10.0.0.9\tclient\t\n";
        let out = wait_for(&h.path("member"), |t| t.len() >= expected.len()).await;
        assert_eq!(out, expected);
        let failed = wait_for(&h.path("failed"), |t| !t.is_empty()).await;
        assert_eq!(failed, "member-failed\n");
        h.stop().await;
    }

    #[tokio::test]
    async fn shutdown_kills_a_running_handler() {
        let h = Harness::start(
            &["user=sleep 30 & echo $! > '{dir}/pid'; wait"],
            PATIENCE * 10,
        );
        h.user("slow", b"");
        let pid = wait_for(&h.path("pid"), |t| t.ends_with('\n')).await;
        let pid: u32 = pid.trim().parse().unwrap();
        h.stop().await;
        let deadline = Instant::now() + PATIENCE;
        while !is_dead(pid) {
            assert!(Instant::now() < deadline, "sleep {pid} still runs");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
