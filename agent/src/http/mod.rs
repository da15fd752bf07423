//! The HTTP API (DESIGN §4), Consul-compatible where the path exists in Consul.
//!
//! [`serve`] takes its listener and its shutdown token, so tests bind `127.0.0.1:0` and
//! stop it at will. Handlers live in one module per area of the API.

mod agent;
pub mod catalog;
mod error;
mod event;
pub mod forward;
mod health;
mod kv;
mod local;
mod operator;
mod params;
mod status;
mod txn;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use consensus::{ReadError, Request, Response as RaftResponse, WriteError};
use futures::StreamExt;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;
pub use params::{Consistency, Params, parse_go_duration};

use crate::gossip::Gossip;
use crate::local::LocalState;
use crate::raft::Raft;
use crate::transport::Transport;
use crate::wan::Wan;

/// Facts about this agent that the API reports.
#[derive(Debug, Clone)]
pub struct SelfInfo {
    /// Node name.
    pub node: String,
    /// Datacenter.
    pub dc: String,
    /// Stable node id (`<data-dir>/node-id`).
    pub node_id: String,
    /// Whether this agent is a Raft server.
    pub server: bool,
    /// Address other agents reach this one at (LAN QUIC).
    pub advertise: std::net::SocketAddr,
}

/// What the handlers serve from. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    inner: Arc<ApiInner>,
}

struct ApiInner {
    info: SelfInfo,
    raft: Option<Raft>,
    gossip: Gossip,
    wan: Option<Wan>,
    bus: events::Bus,
    transport: Transport,
    local: LocalState,
    shutdown: CancellationToken,
    /// Servers that failed a forwarded call, until when they are avoided.
    penalized:
        std::sync::Mutex<std::collections::HashMap<std::net::SocketAddr, std::time::Instant>>,
}

impl ApiState {
    /// The state of an agent; `raft` and `wan` are `Some` on servers; `bus` is what
    /// `/v1/event/stream` follows; `local` holds the services and checks of
    /// `/v1/agent/service*` and `/v1/agent/check*`. `shutdown` stops the agent (after
    /// `/v1/agent/leave`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        info: SelfInfo,
        raft: Option<Raft>,
        gossip: Gossip,
        wan: Option<Wan>,
        bus: events::Bus,
        transport: Transport,
        local: LocalState,
        shutdown: CancellationToken,
    ) -> ApiState {
        ApiState {
            inner: Arc::new(ApiInner {
                info,
                raft,
                gossip,
                wan,
                bus,
                transport,
                local,
                shutdown,
                penalized: Default::default(),
            }),
        }
    }

    /// The LAN endpoint, for forwarding.
    fn transport(&self) -> &Transport {
        &self.inner.transport
    }

    /// This server's WAN side (`None` on client agents).
    pub(crate) fn wan(&self) -> Option<&Wan> {
        self.inner.wan.as_ref()
    }

    /// A live server of this datacenter other than this agent and those in `avoid`,
    /// chosen at random; one that failed a call recently only if there is no other.
    fn pick_server(
        &self,
        avoid: &std::collections::HashSet<std::net::SocketAddr>,
    ) -> Option<std::net::SocketAddr> {
        let info = &self.inner.info;
        let members = self.inner.gossip.members();
        let servers: Vec<std::net::SocketAddr> = members
            .iter()
            .filter(|m| {
                m.name != info.node
                    && m.dc == info.dc
                    && m.role == membership::Role::Server
                    && m.state.consul_status() == 1
                    && !avoid.contains(&m.addr)
            })
            .map(|m| m.addr)
            .collect();
        self.pick_healthy(&servers)
    }

    /// A live server of datacenter `dc` from the WAN pool, other than those in `avoid`,
    /// chosen like [`ApiState::pick_server`].
    fn pick_wan_server(
        &self,
        dc: &str,
        avoid: &std::collections::HashSet<std::net::SocketAddr>,
    ) -> Option<std::net::SocketAddr> {
        let members = self.wan()?.gossip.members();
        let servers: Vec<std::net::SocketAddr> = members
            .iter()
            .filter(|m| {
                m.dc == dc
                    && m.role == membership::Role::Server
                    && m.state.consul_status() == 1
                    && !avoid.contains(&m.addr)
            })
            .map(|m| m.addr)
            .collect();
        self.pick_healthy(&servers)
    }

    /// One of `servers` at random, preferring those that did not fail a call recently.
    fn pick_healthy(&self, servers: &[std::net::SocketAddr]) -> Option<std::net::SocketAddr> {
        use rand::seq::IndexedRandom;

        let now = std::time::Instant::now();
        let healthy: Vec<std::net::SocketAddr> = {
            let mut penalized = self.penalized();
            penalized.retain(|_, until| *until > now);
            servers
                .iter()
                .copied()
                .filter(|addr| !penalized.contains_key(addr))
                .collect()
        };
        let pool = if healthy.is_empty() {
            servers
        } else {
            &healthy
        };
        pool.choose(&mut rand::rng()).copied()
    }

    /// Avoids `addr` for [`forward::SERVER_PENALTY`] when picking a server.
    fn penalize_server(&self, addr: std::net::SocketAddr) {
        let until = std::time::Instant::now() + forward::SERVER_PENALTY;
        self.penalized().insert(addr, until);
    }

    fn penalized(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::HashMap<std::net::SocketAddr, std::time::Instant>,
    > {
        // The map is valid after every statement; a panic elsewhere cannot break it.
        self.inner
            .penalized
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// This agent's facts.
    pub fn info(&self) -> &SelfInfo {
        &self.inner.info
    }

    /// The local Raft server, or the answer a client agent gives while it cannot
    /// reach one.
    fn raft(&self) -> Result<&Raft, ApiError> {
        self.inner
            .raft
            .as_ref()
            .ok_or_else(|| ApiError::internal("No known Consul servers"))
    }
}

/// The routes of the API.
pub fn router(state: ApiState) -> Router {
    // Routes whose answer comes from the servers: forwarded when this agent cannot
    // answer them itself (see `forward`).
    let server_bound = Router::new()
        .route("/v1/kv/", get(kv::get).put(kv::put).delete(kv::delete))
        .route(
            "/v1/kv/{*key}",
            get(kv::get).put(kv::put).delete(kv::delete),
        )
        .route("/v1/txn", put(txn::txn))
        .route("/v1/catalog/nodes", get(catalog::nodes))
        .route("/v1/catalog/services", get(catalog::services))
        .route("/v1/catalog/service/{name}", get(catalog::service))
        .route("/v1/catalog/node/{node}", get(catalog::node))
        .route("/v1/catalog/register", put(catalog::register))
        .route("/v1/catalog/deregister", put(catalog::deregister))
        .route("/v1/internal/catalog/sync", put(catalog::sync))
        .route("/v1/health/service/{name}", get(health::service))
        .route("/v1/health/node/{node}", get(health::node))
        .route("/v1/health/checks/{name}", get(health::checks))
        .route("/v1/health/state/{state}", get(health::state))
        .route(
            "/v1/operator/raft/configuration",
            get(operator::configuration),
        )
        .route(
            "/v1/operator/raft/peer",
            axum::routing::delete(operator::remove_peer),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            forward::to_server,
        ));
    // Routes any server answers from its own state; client agents forward them. The
    // datacenters are known from the WAN pool, which only servers are in.
    let any_server = Router::new()
        .route("/v1/status/leader", get(status::leader))
        .route("/v1/status/peers", get(status::peers))
        .route("/v1/catalog/datacenters", get(catalog::datacenters))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            forward::to_any_server,
        ));
    Router::new()
        .merge(server_bound)
        .merge(any_server)
        .route("/v1/agent/self", get(agent::self_))
        .route("/v1/agent/members", get(agent::members))
        .route("/v1/agent/join/{*addr}", put(agent::join))
        .route("/v1/agent/leave", put(agent::leave))
        .route("/v1/agent/force-leave/{*node}", put(agent::force_leave))
        .route("/v1/agent/services", get(local::services))
        .route("/v1/agent/service/register", put(local::register_service))
        .route(
            "/v1/agent/service/deregister/{id}",
            put(local::deregister_service),
        )
        .route("/v1/agent/service/{id}", get(local::service))
        .route("/v1/agent/checks", get(local::checks))
        .route("/v1/agent/check/register", put(local::register_check))
        .route(
            "/v1/agent/check/deregister/{id}",
            put(local::deregister_check),
        )
        .route("/v1/agent/check/pass/{id}", put(local::pass))
        .route("/v1/agent/check/warn/{id}", put(local::warn))
        .route("/v1/agent/check/fail/{id}", put(local::fail))
        .route("/v1/agent/check/update/{id}", put(local::update))
        .merge(
            // A user event for another datacenter is fired by one of its servers.
            Router::new()
                .route("/v1/event/fire/", put(event::fire))
                .route("/v1/event/fire/{*name}", put(event::fire))
                .route_layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    forward::to_datacenter,
                )),
        )
        .route("/v1/event/list", get(event::list))
        .route("/v1/event/stream", get(event::stream))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "Not Found")
}

/// Serves the API on `listener` until `shutdown` fires, then finishes the requests in
/// flight and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Longest wait of a blocking query (Consul's).
pub const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(600);
/// Wait of a blocking query without `?wait`.
pub const DEFAULT_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// How long a blocking query waits: `?wait` (default 5 min, at most 10 min) plus up to
/// 1/16 of it at random, so that many watchers do not all return at once.
fn blocking_wait(params: &Params) -> Result<std::time::Duration, ApiError> {
    let wait = params.wait()?.unwrap_or(DEFAULT_WAIT).min(MAX_WAIT);
    let jitter_ms = (wait.as_millis() / 16) as u64;
    let jitter = if jitter_ms == 0 {
        0
    } else {
        rand::random_range(0..=jitter_ms)
    };
    Ok(wait + std::time::Duration::from_millis(jitter))
}

/// A JSON response body.
fn json<T: Serialize + ?Sized>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => ApiError::internal(format!("encoding the response: {e}")).into_response(),
    }
}

/// The headers of every read: `X-Consul-Index` (never 0), `X-Consul-KnownLeader`,
/// `X-Consul-LastContact` (milliseconds).
fn read_headers(raft: &Raft, index: u64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let mut put = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    put("x-consul-index", index.max(1).to_string());
    put("x-consul-knownleader", raft.leader().is_some().to_string());
    put(
        "x-consul-lastcontact",
        raft.last_contact()
            .unwrap_or_default()
            .as_millis()
            .to_string(),
    );
    headers
}

/// Makes sure a read in `mode` may be answered from this server's state.
///
/// The default mode is confirmed like `?consistent` (a heartbeat round to a quorum,
/// shared by the reads that arrive together), not by the leader's belief alone: a
/// leader that was paused (or cut off) while the others elected a new one and took
/// writes still believes it leads when it wakes, and the reads queued in its sockets
/// would get its old state. Only `?stale` reads answer without asking anyone.
async fn prepare_read(raft: &Raft, mode: Consistency) -> Result<(), ApiError> {
    match mode {
        Consistency::Stale => Ok(()),
        Consistency::Default | Consistency::Consistent => {
            raft.ensure_linearizable().await.map_err(read_error)
        }
    }
}

tokio::task_local! {
    /// The id of the forwarded write whose handler runs in this task
    /// (see [`forward::REQUEST_ID_HEADER`]).
    static REQUEST_ID: u128;
}

/// Proposes `request`. A write forwarded with an id is proposed once-only, so that the
/// agent that sent it may send it again after losing the answer.
async fn propose(raft: &Raft, request: Request) -> Result<consensus::WriteOutcome, ApiError> {
    let request = match REQUEST_ID.try_with(|id| *id) {
        Ok(id) => Request::Once {
            id,
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            request: Box::new(request),
        },
        Err(_) => request,
    };
    raft.write(request).await.map_err(write_error)
}

/// Proposes a command whose answer is a boolean (KV set, CAS, delete).
async fn write_bool(raft: &Raft, request: Request) -> Result<bool, ApiError> {
    let outcome = propose(raft, request).await?;
    match outcome.response {
        RaftResponse::Bool(applied) => Ok(applied),
        RaftResponse::Rejected(reason) => Err(ApiError::internal(format!(
            "the state machine rejected the write: {reason}"
        ))),
        other => Err(ApiError::internal(format!(
            "unexpected answer from the state machine: {other:?}"
        ))),
    }
}

fn write_error(error: WriteError) -> ApiError {
    match error {
        WriteError::Invalid(reason) if reason.is_too_large() => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, reason.to_string())
        }
        WriteError::Invalid(reason) => ApiError::bad_request(reason.to_string()),
        WriteError::ForwardToLeader { leader_node, .. } => leader_elsewhere(leader_node),
        other => ApiError::internal(other.to_string()),
    }
}

fn read_error(error: ReadError) -> ApiError {
    match error {
        ReadError::ForwardToLeader { leader_node, .. } => leader_elsewhere(leader_node),
        other => ApiError::internal(other.to_string()),
    }
}

/// The answer while requests cannot be forwarded to the leader on another server.
fn leader_elsewhere(leader: Option<consensus::ServerNode>) -> ApiError {
    match leader {
        None => ApiError::not_leader("No cluster leader"),
        Some(node) => ApiError::not_leader(format!(
            "this server is not the leader; the leader is {} ({})",
            node.name, node.addr
        )),
    }
}

/// Reads a request body of at most `limit` bytes; a larger one is answered 413 with
/// `message(limit)` as soon as the limit is crossed.
async fn read_body(
    body: Body,
    limit: usize,
    message: impl Fn(usize) -> String,
) -> Result<Vec<u8>, ApiError> {
    let mut stream = body.into_data_stream();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
        if out.len() + chunk.len() > limit {
            return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, message(limit)));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
