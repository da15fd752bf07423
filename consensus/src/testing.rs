//! Test support: an in-memory transport and quick cluster settings.
//!
//! [`MemRouter`] connects [`RaftServer`]s of one process. Every message goes through the
//! real wire codec, and nodes can be cut off and reconnected to simulate partitions.
//!
//! With [`Faults`] set, the router also loses requests and responses with given
//! probabilities and delays every message by a random time, so messages overtake each
//! other; a delivery goes on even after its sender gave up waiting, as on a real network.
//! The decisions come from a seeded generator ([`SimRng`]), so a seed names a fault
//! pattern (the interleaving with the runtime's scheduling is not reproduced exactly).
//! [`MemRouter::stop`] and [`restart_server`] crash and restart a node on its data
//! directory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::TransportError;
use crate::network::{RaftRpcRequest, RaftRpcResponse, RaftTransport};
use crate::server::{RaftServer, ServerConfig};
use crate::types::{NodeId, ServerNode};

/// A small deterministic pseudo-random generator (SplitMix64) for fault schedules.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SimRng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// A duration in `0..=max`, in microseconds.
    pub fn duration(&mut self, max: Duration) -> Duration {
        let micros = max.as_micros().min(u64::MAX as u128) as u64;
        Duration::from_micros(self.below(micros.saturating_add(1)))
    }
}

/// Message faults applied by a [`MemRouter`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Faults {
    /// Seed of the fault decisions.
    pub seed: u64,
    /// Probability that a request is lost before it reaches its target.
    pub drop_request: f64,
    /// Probability that a response is lost after the target handled the request.
    pub drop_response: f64,
    /// Each request and each response is delayed by a random time up to this.
    pub max_delay: Duration,
}

/// What happens to one call.
struct Plan {
    request_delay: Duration,
    drop_request: bool,
    response_delay: Duration,
    drop_response: bool,
}

#[derive(Default)]
struct RouterState {
    servers: BTreeMap<NodeId, RaftServer>,
    isolated: BTreeSet<NodeId>,
    faults: Option<(Faults, SimRng)>,
    lost: u64,
}

/// Routes RPCs between in-process servers. Cheap to clone.
#[derive(Clone, Default)]
pub struct MemRouter {
    state: Arc<Mutex<RouterState>>,
}

impl MemRouter {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RouterState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The transport for server `from`.
    pub fn transport(&self, from: NodeId) -> MemTransport {
        MemTransport {
            from,
            router: self.clone(),
        }
    }

    /// Makes `server` reachable under its id.
    pub fn add(&self, server: RaftServer) {
        self.lock().servers.insert(server.id(), server);
    }

    /// Makes server `id` unreachable and returns it.
    pub fn remove(&self, id: NodeId) -> Option<RaftServer> {
        self.lock().servers.remove(&id)
    }

    /// The server registered under `id`.
    pub fn server(&self, id: NodeId) -> Option<RaftServer> {
        self.lock().servers.get(&id).cloned()
    }

    /// Every registered server, by id.
    pub fn servers(&self) -> Vec<RaftServer> {
        self.lock().servers.values().cloned().collect()
    }

    /// Drops every message from and to `id`.
    pub fn isolate(&self, id: NodeId) {
        self.lock().isolated.insert(id);
    }

    /// Undoes [`isolate`](Self::isolate).
    pub fn heal(&self, id: NodeId) {
        self.lock().isolated.remove(&id);
    }

    /// Undoes every [`isolate`](Self::isolate).
    pub fn heal_all(&self) {
        self.lock().isolated.clear();
    }

    /// Starts losing, delaying and reordering messages as `faults` says (`None`: deliver
    /// every message at once again).
    pub fn set_faults(&self, faults: Option<Faults>) {
        self.lock().faults = faults.map(|f| (f, SimRng::new(f.seed)));
    }

    /// Messages lost to [`Faults`] so far (requests and responses).
    pub fn lost_messages(&self) -> u64 {
        self.lock().lost
    }

    /// Crashes server `id`: it becomes unreachable and is stopped, keeping what its stores
    /// made durable. Restart it with [`restart_server`]. False if it was not running.
    pub async fn stop(&self, id: NodeId) -> bool {
        let Some(server) = self.remove(id) else {
            return false;
        };
        if let Err(e) = server.shutdown().await {
            tracing::warn!(error = %e, "shutdown failed");
        }
        true
    }

    fn plan(&self) -> Option<Plan> {
        let mut state = self.lock();
        let (faults, rng) = state.faults.as_mut()?;
        let plan = Plan {
            request_delay: rng.duration(faults.max_delay),
            drop_request: rng.chance(faults.drop_request),
            response_delay: rng.duration(faults.max_delay),
            drop_response: rng.chance(faults.drop_response),
        };
        if plan.drop_request || plan.drop_response {
            state.lost += 1;
        }
        Some(plan)
    }

    fn route(&self, from: NodeId, to: NodeId) -> Result<RaftServer, TransportError> {
        let state = self.lock();
        if state.isolated.contains(&from) || state.isolated.contains(&to) {
            return Err(TransportError::Unreachable(format!(
                "{from} -> {to} is cut"
            )));
        }
        state
            .servers
            .get(&to)
            .cloned()
            .ok_or_else(|| TransportError::Unreachable(format!("no server {to}")))
    }

    /// Stops every server and forgets them.
    pub async fn shutdown_all(&self) {
        let servers: Vec<_> = std::mem::take(&mut self.lock().servers)
            .into_values()
            .collect();
        for server in servers {
            if let Err(e) = server.shutdown().await {
                tracing::warn!(error = %e, "shutdown failed");
            }
        }
    }
}

/// The [`RaftTransport`] of one server on a [`MemRouter`].
#[derive(Clone)]
pub struct MemTransport {
    from: NodeId,
    router: MemRouter,
}

fn codec_error(e: crate::CodecError) -> TransportError {
    TransportError::Network(e.to_string())
}

impl RaftTransport for MemTransport {
    async fn call(
        &self,
        target: NodeId,
        _node: &ServerNode,
        request: RaftRpcRequest,
    ) -> Result<RaftRpcResponse, TransportError> {
        let server = self.router.route(self.from, target)?;
        let request = RaftRpcRequest::from_bytes(&request.to_bytes().map_err(codec_error)?)
            .map_err(codec_error)?;
        let Some(plan) = self.router.plan() else {
            let response = server.handle_rpc(request).await;
            // A partition that started meanwhile loses the answer.
            self.router.route(self.from, target)?;
            return RaftRpcResponse::from_bytes(&response.to_bytes().map_err(codec_error)?)
                .map_err(codec_error);
        };
        drop(server);
        // The message travels on its own: it arrives even if the sender stops waiting.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (router, from) = (self.router.clone(), self.from);
        tokio::spawn(async move {
            tokio::time::sleep(plan.request_delay).await;
            if plan.drop_request {
                return;
            }
            let Ok(server) = router.route(from, target) else {
                return;
            };
            let response = server.handle_rpc(request).await;
            drop(server);
            tokio::time::sleep(plan.response_delay).await;
            if plan.drop_response || router.route(from, target).is_err() {
                return;
            }
            let _ = tx.send(response.to_bytes());
        });
        match rx.await {
            Ok(bytes) => {
                RaftRpcResponse::from_bytes(&bytes.map_err(codec_error)?).map_err(codec_error)
            }
            Err(_) => Err(TransportError::Network(format!(
                "message {} -> {target} lost",
                self.from
            ))),
        }
    }
}

/// The membership record of test server `id`.
pub fn node(id: NodeId) -> ServerNode {
    ServerNode {
        name: format!("server-{id}"),
        addr: format!("127.0.0.{id}:8300"),
    }
}

/// A server configuration with short timeouts for tests: heartbeat 50 ms, election
/// timeout 300–600 ms.
pub fn fast_config(id: NodeId, data_dir: &Path) -> ServerConfig {
    let mut config = ServerConfig::new(id, node(id), data_dir);
    config.raft.heartbeat_interval = 50;
    config.raft.election_timeout_min = 300;
    config.raft.election_timeout_max = 600;
    config
}

/// Opens servers `ids` on `router`, each in its own subdirectory of `root` with
/// [`fast_config`], and registers them.
pub async fn start_servers(
    router: &MemRouter,
    root: &Path,
    ids: &[NodeId],
) -> Result<Vec<RaftServer>, crate::Error> {
    start_servers_with(router, root, ids, |_| {}).await
}

/// As [`start_servers`], with `adjust` applied to each configuration.
pub async fn start_servers_with(
    router: &MemRouter,
    root: &Path,
    ids: &[NodeId],
    adjust: impl Fn(&mut ServerConfig),
) -> Result<Vec<RaftServer>, crate::Error> {
    let mut servers = Vec::new();
    for &id in ids {
        let mut config = fast_config(id, &root.join(format!("node-{id}")));
        adjust(&mut config);
        let server = RaftServer::open(config, router.transport(id)).await?;
        router.add(server.clone());
        servers.push(server);
    }
    Ok(servers)
}

/// Reopens server `id` from its directory under `root` (as [`start_servers_with`] made
/// it) after a [`MemRouter::stop`], and registers it again.
pub async fn restart_server(
    router: &MemRouter,
    root: &Path,
    id: NodeId,
    adjust: impl Fn(&mut ServerConfig),
) -> Result<RaftServer, crate::Error> {
    // The stopped instance may still be releasing its stores.
    for _ in 0..100 {
        match start_servers_with(router, root, &[id], &adjust).await {
            Ok(mut servers) => return Ok(servers.remove(0)),
            Err(crate::Error::Store(crate::StoreError::Lmdb(heed::Error::EnvAlreadyOpened))) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e),
        }
    }
    Err(crate::Error::Shutdown(format!(
        "the stores of server {id} were never released"
    )))
}

/// The membership of test servers `ids`.
pub fn members(ids: &[NodeId]) -> BTreeMap<NodeId, ServerNode> {
    ids.iter().map(|&id| (id, node(id))).collect()
}

/// Waits until every server in `servers` agrees on one leader among them, and returns it.
pub async fn wait_for_leader(servers: &[RaftServer], timeout: Duration) -> Option<NodeId> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let leaders: BTreeSet<Option<NodeId>> = servers
            .iter()
            .map(|s| s.leader().map(|(id, _)| id))
            .collect();
        if let Some(Some(id)) = leaders.iter().next().filter(|_| leaders.len() == 1)
            && servers.iter().any(|s| s.id() == *id && s.is_leader())
        {
            return Some(*id);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Waits until `check` holds, polling every 20 ms; false on timeout.
pub async fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
