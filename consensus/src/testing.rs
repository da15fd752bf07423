//! Test support: an in-memory transport and quick cluster settings.
//!
//! [`MemRouter`] connects [`RaftServer`]s of one process. Every message goes through the
//! real wire codec, and nodes can be cut off and reconnected to simulate partitions.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::TransportError;
use crate::network::{RaftRpcRequest, RaftRpcResponse, RaftTransport};
use crate::server::{RaftServer, ServerConfig};
use crate::types::{NodeId, ServerNode};

#[derive(Default)]
struct RouterState {
    servers: BTreeMap<NodeId, RaftServer>,
    isolated: BTreeSet<NodeId>,
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
        let response = server.handle_rpc(request).await;
        // A partition that started meanwhile loses the answer.
        self.router.route(self.from, target)?;
        RaftRpcResponse::from_bytes(&response.to_bytes().map_err(codec_error)?).map_err(codec_error)
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
