//! The agent's local state: the services and health checks registered on this host.
//!
//! They come from config files (`services`, each with its `check`/`checks`, and
//! `checks`) and from the HTTP API (`/v1/agent/service/register`, ...). [`LocalState`]
//! holds them, runs the checks and tells others about changes:
//! - [`LocalState::snapshot`] is a consistent copy of everything, with a version;
//! - [`LocalState::subscribe`] is a watch of that version, which moves on every change
//!   (a registration, a deregistration, a check's status or output changing);
//! - every change of a check's status (and every new check) is published on the bus as
//!   [`events::Event::Health`];
//! - [`LocalState::service_tags`] is a watch of the services' names and tags, for the
//!   filters of user events.
//!
//! Anti-entropy (pushing this state to the servers' catalog) is built on `snapshot` and
//! `subscribe`: wait for the version to move (`changed()`), take a snapshot, push it;
//! versions only grow, so a snapshot whose version was pushed needs no second push.
//!
//! # Checks
//! Consul's semantics ([`check`]): a TTL check is set by `update_ttl` and turns critical
//! with the output `TTL expired` when not refreshed within its TTL; HTTP, TCP and script
//! checks run every interval ([`probe`]). Every check runs in a task of its own, tracked
//! by the state's [`TaskTracker`]; it stops when the check is deregistered or replaced,
//! or on shutdown (a running script is then killed with its process group).
//!
//! # Persistence
//! Services and checks registered through the API are saved to `<data-dir>/local.json`
//! ([`store`]) before the call returns, and registered again at start; definitions of
//! config files win over saved ones of the same id. A corrupt file stops the start with
//! an error that names it. Statuses are not saved: a restored check starts over from
//! its initial status.
//!
//! # Limits
//! At most [`MAX_SERVICES`] services and [`MAX_CHECKS`] checks; definitions are bounded
//! ([`service`], [`check`]), and so is every output ([`check::MAX_OUTPUT`]).

pub mod check;
pub mod parse;
pub mod probe;
mod service;
pub mod store;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use events::{Bus, Event, HealthStatus};
use serde::Serialize;
use thiserror::Error;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use check::{CheckDefinition, CheckKind, InvalidCheck};
pub use parse::{Consul, ServiceRegistration};
pub use service::{
    InvalidService, MAX_META_KEY_LEN, MAX_META_PAIRS, MAX_META_VALUE_LEN, MAX_NAME_LEN,
    MAX_TAG_LEN, MAX_TAGS, ServiceDefinition,
};

/// Most services on one agent.
pub const MAX_SERVICES: usize = 1024;
/// Most checks on one agent.
pub const MAX_CHECKS: usize = 1024;

/// The names and tags of the local services, for user event filters.
pub type ServiceTags = Arc<Vec<(String, Vec<String>)>>;

/// What [`LocalState::start`] needs.
#[derive(Debug, Clone, Default)]
pub struct LocalConfig {
    /// This node's name (in health events and `/v1/agent/checks`).
    pub node: String,
    /// Its datacenter.
    pub dc: String,
    /// Where `local.json` is kept.
    pub data_dir: PathBuf,
    /// Services of the config files, checked, with unique ids.
    pub services: Vec<ServiceDefinition>,
    /// Checks of the config files (those of services included), with unique ids.
    pub checks: Vec<CheckDefinition>,
    /// Whether script checks may be registered through the HTTP API (those of config
    /// files always may).
    pub enable_script_checks: bool,
}

/// A consistent copy of the local state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalSnapshot {
    /// The version of the state copied: it moves on every change (see
    /// [`LocalState::subscribe`]).
    pub version: u64,
    /// This node's name.
    pub node: String,
    /// The services, sorted by id.
    pub services: Vec<ServiceDefinition>,
    /// The checks, sorted by id.
    pub checks: Vec<LocalCheck>,
}

/// A check as it stands now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalCheck {
    /// Its id, unique on this agent.
    pub check_id: String,
    /// Its name.
    pub name: String,
    /// Its current status.
    pub status: HealthStatus,
    /// The output of its last run (or update).
    pub output: String,
    /// Its notes.
    pub notes: String,
    /// Its service's id; empty for a check of the node.
    pub service_id: String,
    /// Its service's name; empty for a check of the node.
    pub service_name: String,
    /// Its service's tags.
    pub service_tags: Vec<String>,
    /// `ttl`, `http`, `tcp` or `script`.
    pub kind: &'static str,
}

/// A request the local state refuses (or could not complete).
#[derive(Debug, Error)]
pub enum LocalError {
    /// No service of this id.
    #[error(
        "Unknown service ID {0:?}. Ensure that the service ID is passed, not the service name."
    )]
    UnknownService(String),
    /// No check of this id.
    #[error("Unknown check ID {0:?}. Ensure that the check ID is passed, not the check name.")]
    UnknownCheck(String),
    /// A check names a service that is not registered.
    #[error("ServiceID {0:?} does not exist")]
    NoSuchService(String),
    /// A service definition that cannot be used.
    #[error("Invalid service: {0}")]
    InvalidService(#[from] InvalidService),
    /// A check definition that cannot be used.
    #[error("Invalid check: {0}")]
    InvalidCheck(#[from] InvalidCheck),
    /// Only TTL checks are updated from outside.
    #[error("CheckID {0:?} does not have associated TTL")]
    NotTtl(String),
    /// A script check through the API while they are disabled.
    #[error(
        "Scripts are disabled on this agent; to enable, configure 'enable_script_checks' to true"
    )]
    ScriptsDisabled,
    /// More services or checks than allowed.
    #[error("this agent holds at most {max} {what}")]
    TooMany {
        /// `services` or `checks`.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// The change was made but could not be saved.
    #[error("saving the local services and checks: {0}")]
    Save(String),
    /// The agent is stopping.
    #[error("the agent is shutting down")]
    ShuttingDown,
}

impl LocalError {
    /// Whether the request was at fault (rather than the agent).
    pub fn is_bad_request(&self) -> bool {
        matches!(
            self,
            LocalError::NoSuchService(_)
                | LocalError::InvalidService(_)
                | LocalError::InvalidCheck(_)
                | LocalError::NotTtl(_)
                | LocalError::ScriptsDisabled
                | LocalError::TooMany { .. }
        )
    }

    /// Whether an id was not found.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            LocalError::UnknownService(_) | LocalError::UnknownCheck(_)
        )
    }
}

/// The services and checks of this agent. Cheap to clone; see the module documentation.
#[derive(Clone)]
pub struct LocalState {
    inner: Arc<Shared>,
}

struct Shared {
    node: String,
    file: PathBuf,
    bus: Bus,
    /// The checks' tasks.
    tasks: TaskTracker,
    shutdown: CancellationToken,
    scripts_from_api: bool,
    http: reqwest::Client,
    state: Mutex<State>,
    version: watch::Sender<u64>,
    service_tags: watch::Sender<ServiceTags>,
    /// Held while `local.json` is written, so the last write holds the last state.
    saving: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    version: u64,
    /// Tells a check's task from the task of a check it replaced.
    next_serial: u64,
    services: BTreeMap<String, LocalService>,
    checks: BTreeMap<String, RunningCheck>,
}

struct LocalService {
    def: ServiceDefinition,
    from_api: bool,
}

struct RunningCheck {
    def: CheckDefinition,
    from_api: bool,
    status: HealthStatus,
    output: String,
    serial: u64,
    /// Stops its task.
    stop: CancellationToken,
    /// Restarts a TTL check's timer.
    refresh: Arc<Notify>,
}

impl Drop for RunningCheck {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl LocalState {
    /// Registers the services and checks of `config`, then those saved in
    /// `<data-dir>/local.json` (unless the config defines the same id), and starts the
    /// checks. Their tasks end when `shutdown` fires; a task on `tracker` waits for them,
    /// so waiting for `tracker` waits for every check. Fails when `local.json` cannot be
    /// read or holds a definition that cannot be used.
    pub fn start(
        config: LocalConfig,
        bus: Bus,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> anyhow::Result<LocalState> {
        let file = config.data_dir.join(store::FILE);
        let saved = store::load(&file)?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|e| anyhow::anyhow!("making the HTTP client of health checks: {e}"))?;
        let local = LocalState {
            inner: Arc::new(Shared {
                node: config.node,
                file: file.clone(),
                bus,
                tasks: TaskTracker::new(),
                shutdown: shutdown.clone(),
                scripts_from_api: config.enable_script_checks,
                http,
                state: Mutex::new(State::default()),
                version: watch::channel(0).0,
                service_tags: watch::channel(ServiceTags::default()).0,
                saving: tokio::sync::Mutex::new(()),
            }),
        };
        if let Err(e) = local.register_at_start(config.services, config.checks, saved) {
            // Stops the checks started before the error.
            local.inner.lock().checks.clear();
            return Err(e);
        }
        let tasks = local.inner.tasks.clone();
        tracker.spawn(async move {
            shutdown.cancelled().await;
            tasks.close();
            tasks.wait().await;
        });
        Ok(local)
    }

    /// Registers the definitions of the config files, then the saved ones.
    fn register_at_start(
        &self,
        services: Vec<ServiceDefinition>,
        checks: Vec<CheckDefinition>,
        saved: store::Saved,
    ) -> anyhow::Result<()> {
        let shared = &self.inner;
        let file = &shared.file;
        let mut state = shared.lock();
        for service in services {
            service.check()?;
            state.insert_service(service, false);
        }
        for check in checks {
            shared.admit_check(&state, &check, false)?;
            shared.insert_check(&mut state, check, false);
        }
        for service in saved.services {
            if state.services.contains_key(&service.id) {
                continue;
            }
            service.check().map_err(|e| {
                anyhow::anyhow!("{}: service {:?}: {e}", file.display(), service.id)
            })?;
            if state.services.len() >= MAX_SERVICES {
                anyhow::bail!("{}: more than {MAX_SERVICES} services", file.display());
            }
            state.insert_service(service, true);
        }
        for check in saved.checks {
            if state.checks.get(&check.id).is_some_and(|c| !c.from_api) {
                continue;
            }
            match shared.admit_check(&state, &check, true) {
                Ok(()) => shared.insert_check(&mut state, check, true),
                // Its service was in a config file that no longer defines it, or
                // scripts were disabled since.
                Err(e @ (LocalError::NoSuchService(_) | LocalError::ScriptsDisabled)) => {
                    tracing::warn!(check = %check.id, "not restoring a saved check: {e}");
                }
                Err(e) => anyhow::bail!("{}: check {:?}: {e}", file.display(), check.id),
            }
        }
        shared.changed(&mut state, true);
        Ok(())
    }

    /// Registers (or replaces) a service and its checks, as the HTTP API does. Checks
    /// the service had and `registration` does not name are kept, or deregistered when
    /// `replace_existing_checks`. Saved before it returns.
    pub async fn register_service(
        &self,
        registration: ServiceRegistration,
        replace_existing_checks: bool,
    ) -> Result<(), LocalError> {
        let shared = &self.inner;
        let ServiceRegistration { service, checks } = registration;
        service.check()?;
        {
            let mut state = shared.lock_open()?;
            if !state.services.contains_key(&service.id) && state.services.len() >= MAX_SERVICES {
                return Err(LocalError::TooMany {
                    what: "services",
                    max: MAX_SERVICES,
                });
            }
            let mut checks = checks;
            for check in &mut checks {
                check.service_id = service.id.clone();
                check.check()?;
                if matches!(check.kind, CheckKind::Script { .. }) && !shared.scripts_from_api {
                    return Err(LocalError::ScriptsDisabled);
                }
            }
            let added = checks
                .iter()
                .filter(|c| !state.checks.contains_key(&c.id))
                .count();
            if state.checks.len() + added > MAX_CHECKS {
                return Err(LocalError::TooMany {
                    what: "checks",
                    max: MAX_CHECKS,
                });
            }
            let id = service.id.clone();
            state.insert_service(service, true);
            if replace_existing_checks {
                state.checks.retain(|check_id, c| {
                    c.def.service_id != id || checks.iter().any(|n| n.id == *check_id)
                });
            }
            for check in checks {
                shared.insert_check(&mut state, check, true);
            }
            shared.changed(&mut state, true);
        }
        self.save().await
    }

    /// Deregisters a service and its checks. Saved before it returns.
    pub async fn deregister_service(&self, id: &str) -> Result<(), LocalError> {
        let shared = &self.inner;
        {
            let mut state = shared.lock_open()?;
            if state.services.remove(id).is_none() {
                return Err(LocalError::UnknownService(id.to_string()));
            }
            state.checks.retain(|_, c| c.def.service_id != id);
            shared.changed(&mut state, true);
        }
        self.save().await
    }

    /// Registers (or replaces) a check, as the HTTP API does. Saved before it returns.
    pub async fn register_check(&self, check: CheckDefinition) -> Result<(), LocalError> {
        let shared = &self.inner;
        {
            let mut state = shared.lock_open()?;
            shared.admit_check(&state, &check, true)?;
            shared.insert_check(&mut state, check, true);
            shared.changed(&mut state, false);
        }
        self.save().await
    }

    /// Deregisters a check. Saved before it returns.
    pub async fn deregister_check(&self, id: &str) -> Result<(), LocalError> {
        let shared = &self.inner;
        {
            let mut state = shared.lock_open()?;
            if state.checks.remove(id).is_none() {
                return Err(LocalError::UnknownCheck(id.to_string()));
            }
            shared.changed(&mut state, false);
        }
        self.save().await
    }

    /// Sets the status and output of a TTL check and restarts its TTL. The output is cut
    /// to [`check::MAX_OUTPUT`] bytes.
    pub fn update_ttl(
        &self,
        id: &str,
        status: HealthStatus,
        output: impl Into<String>,
    ) -> Result<(), LocalError> {
        let shared = &self.inner;
        let mut state = shared.lock_open()?;
        let check = state
            .checks
            .get(id)
            .ok_or_else(|| LocalError::UnknownCheck(id.to_string()))?;
        if !matches!(check.def.kind, CheckKind::Ttl { .. }) {
            return Err(LocalError::NotTtl(id.to_string()));
        }
        check.refresh.notify_one();
        let serial = check.serial;
        shared.set_result(
            &mut state,
            id,
            serial,
            status,
            check::bound_output(output.into()),
        );
        Ok(())
    }

    /// A consistent copy of every service and check, with the version it has.
    pub fn snapshot(&self) -> LocalSnapshot {
        let state = self.inner.lock();
        LocalSnapshot {
            version: state.version,
            node: self.inner.node.clone(),
            services: state.services.values().map(|s| s.def.clone()).collect(),
            checks: state
                .checks
                .values()
                .map(|c| {
                    let service = state.services.get(&c.def.service_id).map(|s| &s.def);
                    LocalCheck {
                        check_id: c.def.id.clone(),
                        name: c.def.name.clone(),
                        status: c.status,
                        output: c.output.clone(),
                        notes: c.def.notes.clone(),
                        service_id: c.def.service_id.clone(),
                        service_name: service.map(|s| s.service.clone()).unwrap_or_default(),
                        service_tags: service.map(|s| s.tags.clone()).unwrap_or_default(),
                        kind: c.def.kind.name(),
                    }
                })
                .collect(),
        }
    }

    /// A watch of the version of the state: it moves (only up) on every registration,
    /// deregistration and change of a check's status or output. The version a snapshot
    /// reports is the one its content has.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.version.subscribe()
    }

    /// A watch of the names and tags of the local services.
    pub fn service_tags(&self) -> watch::Receiver<ServiceTags> {
        self.inner.service_tags.subscribe()
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Writes the services and checks registered through the API to `local.json`.
    async fn save(&self) -> Result<(), LocalError> {
        let shared = &self.inner;
        let _one_at_a_time = shared.saving.lock().await;
        let bytes = {
            let state = shared.lock();
            store::encode(
                state
                    .services
                    .values()
                    .filter(|s| s.from_api)
                    .map(|s| &s.def),
                state.checks.values().filter(|c| c.from_api).map(|c| &c.def),
            )
        }
        .map_err(|e| LocalError::Save(format!("{e:#}")))?;
        let file = shared.file.clone();
        tokio::task::spawn_blocking(move || crate::data_file::write_atomic(&file, &bytes))
            .await
            .map_err(|e| LocalError::Save(e.to_string()))?
            .map_err(|e| LocalError::Save(format!("{e:#}")))
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change leaves the state whole; a panic elsewhere cannot break it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state, unless the agent is stopping (no check task may start then).
    fn lock_open(&self) -> Result<MutexGuard<'_, State>, LocalError> {
        if self.shutdown.is_cancelled() {
            return Err(LocalError::ShuttingDown);
        }
        Ok(self.lock())
    }

    /// Whether `check` may be registered now.
    fn admit_check(
        &self,
        state: &State,
        check: &CheckDefinition,
        from_api: bool,
    ) -> Result<(), LocalError> {
        check.check()?;
        if from_api && !self.scripts_from_api && matches!(check.kind, CheckKind::Script { .. }) {
            return Err(LocalError::ScriptsDisabled);
        }
        if !check.service_id.is_empty() && !state.services.contains_key(&check.service_id) {
            return Err(LocalError::NoSuchService(check.service_id.clone()));
        }
        if !state.checks.contains_key(&check.id) && state.checks.len() >= MAX_CHECKS {
            return Err(LocalError::TooMany {
                what: "checks",
                max: MAX_CHECKS,
            });
        }
        Ok(())
    }

    /// Registers `def`, replacing a check of the same id, and starts its task; an
    /// identical check already running is left as it is.
    fn insert_check(self: &Arc<Self>, state: &mut State, def: CheckDefinition, from_api: bool) {
        if let Some(running) = state.checks.get_mut(&def.id)
            && running.def == def
        {
            running.from_api = from_api;
            return;
        }
        state.next_serial += 1;
        let serial = state.next_serial;
        let stop = self.shutdown.child_token();
        let refresh = Arc::new(Notify::new());
        let status = def.initial_status();
        let id = def.id.clone();
        match &def.kind {
            CheckKind::Ttl { ttl } => {
                self.tasks.spawn(ttl_timer(
                    self.clone(),
                    id.clone(),
                    serial,
                    *ttl,
                    refresh.clone(),
                    stop.clone(),
                ));
            }
            _ => {
                self.tasks
                    .spawn(run_check(self.clone(), def.clone(), serial, stop.clone()));
            }
        }
        // Dropping the replaced check stops its task.
        state.checks.insert(
            id.clone(),
            RunningCheck {
                def,
                from_api,
                status,
                output: String::new(),
                serial,
                stop,
                refresh,
            },
        );
        self.bus.publish(Event::Health {
            node: self.node.clone(),
            check: id,
            status,
        });
    }

    /// Records a run's result for the check `id` if it is still the one of `serial`.
    fn set_result(
        &self,
        state: &mut State,
        id: &str,
        serial: u64,
        status: HealthStatus,
        output: String,
    ) {
        let Some(check) = state.checks.get_mut(id).filter(|c| c.serial == serial) else {
            return;
        };
        if check.status == status && check.output == output {
            return;
        }
        let was = std::mem::replace(&mut check.status, status);
        check.output = output;
        if was != status {
            tracing::info!(check = id, from = %was, to = %status, "check status changed");
            self.bus.publish(Event::Health {
                node: self.node.clone(),
                check: id.to_string(),
                status,
            });
        }
        self.changed(state, false);
    }

    /// Moves the version on (and the service tags, when `services` changed).
    fn changed(&self, state: &mut State, services: bool) {
        state.version += 1;
        self.version.send_replace(state.version);
        if services {
            let tags: Vec<(String, Vec<String>)> = state
                .services
                .values()
                .map(|s| (s.def.service.clone(), s.def.tags.clone()))
                .collect();
            self.service_tags.send_replace(Arc::new(tags));
        }
    }
}

impl State {
    fn insert_service(&mut self, def: ServiceDefinition, from_api: bool) {
        self.services
            .insert(def.id.clone(), LocalService { def, from_api });
    }
}

/// A TTL check's timer: critical with `TTL expired` when not refreshed within `ttl`.
async fn ttl_timer(
    shared: Arc<Shared>,
    id: String,
    serial: u64,
    ttl: std::time::Duration,
    refresh: Arc<Notify>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = refresh.notified() => continue,
            () = tokio::time::sleep(ttl) => {}
        }
        {
            let mut state = shared.lock();
            shared.set_result(
                &mut state,
                &id,
                serial,
                HealthStatus::Critical,
                "TTL expired".into(),
            );
        }
        // Expired: nothing more until the next update.
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = refresh.notified() => {}
        }
    }
}

/// Runs an HTTP, TCP or script check now and then every interval.
async fn run_check(
    shared: Arc<Shared>,
    def: CheckDefinition,
    serial: u64,
    stop: CancellationToken,
) {
    let mut every = tokio::time::interval(def.interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let Some(result) = probe::run(&shared.http, &def.kind, def.timeout, &stop).await else {
            return;
        };
        let mut state = shared.lock();
        shared.set_result(&mut state, &def.id, serial, result.status, result.output);
    }
}

#[cfg(test)]
mod tests;
