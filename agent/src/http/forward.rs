//! Forwarding: a request that this agent cannot answer itself is carried, whole, to an
//! agent that can, and the answer comes back unchanged.
//!
//! One mechanism serves every case: a follower server forwards writes and default or
//! `?consistent` reads to the leader; a client agent forwards every server-bound request
//! to a server of its datacenter. The request travels as an RPC of kind
//! [`RpcKind::Http`] over the mTLS QUIC endpoint and is answered by the receiver's own
//! router. A hop counter in [`FORWARDED_HEADER`] bounds the chain, so two servers that
//! disagree about who leads cannot bounce a request forever.
//!
//! Like Consul's RPC layer, forwarding rides out short outages within
//! [`HOLD_TIMEOUT`]: while no leader is known it waits for one to be elected; a server
//! that cannot be dialed, or gives no answer in time, is skipped for another. Reads may
//! simply be asked again. A forwarded write carries a random id in
//! [`REQUEST_ID_HEADER`], the same on every attempt, and the server that finally
//! proposes it proposes it once-only ([`consensus::Request::Once`]): a write that
//! reached a server that then died is applied once even if it is sent again, so it
//! too is retried. A server that failed a call is avoided by client agents for
//! [`SERVER_PENALTY`].
//!
//! A request that names another datacenter (`?dc=`) goes to a server of ours (from a
//! client agent), which carries it over the WAN endpoint to a live server of that
//! datacenter, chosen from the WAN pool; there it is answered like a request from one of
//! its own client agents (forwarded to its leader if need be), and the answer comes back
//! unchanged. A datacenter without a live server in the WAN pool gets Consul's
//! `No path to datacenter`. A server refuses a request from the WAN that names a
//! datacenter other than its own, so a request crosses the WAN at most once.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, NotLeader};
use super::params::Params;
use super::{ApiState, read_body};
use crate::rpc::{RpcKind, frame};
use crate::transport::TransportError;

/// Header carrying how many times a request was forwarded.
pub const FORWARDED_HEADER: &str = "x-agent-forwarded";

/// Header carrying the id of a forwarded write, the same on every attempt.
pub const REQUEST_ID_HEADER: &str = "x-agent-request-id";

/// A request is forwarded at most this many times (client → server → leader).
pub const MAX_HOPS: u8 = 2;

/// Largest request body carried to another agent.
pub const MAX_FORWARD_BODY: usize = 8 * 1024 * 1024;

/// Time allowed beyond a blocking query's wait for the answer to come back.
const FORWARD_GRACE: Duration = Duration::from_secs(10);

/// How long a forwarded request may wait for a leader to be elected, or retry on other
/// servers, before it fails (Consul's `rpc_hold_timeout`).
pub const HOLD_TIMEOUT: Duration = Duration::from_secs(7);

/// One attempt of a request that is not a blocking query, before another server is
/// asked.
const ATTEMPT: Duration = Duration::from_secs(3);

/// How long a client agent avoids a server that failed a call.
pub const SERVER_PENALTY: Duration = Duration::from_secs(30);

/// First pause while waiting for a leader; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_millis(800);

/// Said of a write that reached a server which did not answer.
const MAYBE_APPLIED: &str = "; the request may or may not have been applied";

/// Headers of a request worth carrying (the rest are connection details).
const CARRIED_REQUEST_HEADERS: &[&str] = &["content-type", "x-consul-token", REQUEST_ID_HEADER];

/// An HTTP request on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireRequest {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// Path and query string.
    pub uri: String,
    /// Carried headers.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// Hops so far, this one included.
    pub hops: u8,
}

/// An HTTP response on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireResponse {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

/// Where a request that needs the leader goes from here.
enum Route {
    Local,
    Forward(SocketAddr, Via),
    /// Nowhere yet (no leader elected, no server known); may change soon.
    Wait(ApiError),
    /// Nowhere.
    Refuse(ApiError),
}

/// Which endpoint a forwarded request leaves by.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Via {
    /// To an agent of our datacenter.
    Lan,
    /// To a server of another datacenter.
    Wan,
}

/// Who answers a request.
#[derive(Clone, PartialEq, Eq)]
enum Target {
    /// The leader (writes, default and `?consistent` reads), or any server for `?stale`.
    Leader,
    /// Any server (`/v1/status/...`).
    AnyServer,
    /// A server of another datacenter (`?dc=`), reached over the WAN.
    Datacenter(String),
}

/// Where the request came from, for [`serve`].
#[derive(Clone, Copy, Debug)]
pub enum Origin<'a> {
    /// An agent of our datacenter, over the LAN endpoint.
    Lan,
    /// A server of another datacenter, over the WAN endpoint; the `&str` is our
    /// datacenter, the only one such a request may name.
    Wan(&'a str),
}

/// Middleware on server-bound routes: answers locally when this agent can, otherwise
/// forwards the request to an agent that can.
pub async fn to_server(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    dispatch(&state, Target::Leader, request, next).await
}

/// Middleware on routes any server answers from its own state (`/v1/status/...`, as
/// Consul does): a server answers itself, a client agent forwards to a server.
pub async fn to_any_server(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    dispatch(&state, Target::AnyServer, request, next).await
}

/// Middleware on routes this agent answers itself unless they name another datacenter
/// (`PUT /v1/event/fire?dc=`): those go to a server of that datacenter.
pub async fn to_datacenter(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    let params = Params::parse(request.uri().query());
    match remote_target(&state, &params) {
        None => run_here(request, next).await,
        Some(target) => dispatch(&state, target, request, next).await,
    }
}

/// The target of a request that names a datacenter other than ours: a server of it
/// (from a server), or any server of ours, which carries it on (from a client agent).
fn remote_target(state: &ApiState, params: &Params) -> Option<Target> {
    let dc = params.get("dc").filter(|dc| !dc.is_empty())?;
    if dc == state.info().dc {
        return None;
    }
    Some(if state.inner.raft.is_some() {
        Target::Datacenter(dc.to_string())
    } else {
        Target::AnyServer
    })
}

async fn dispatch(state: &ApiState, target: Target, request: Request, next: Next) -> Response {
    let hops = hops_of(request.headers());
    let is_read = matches!(*request.method(), Method::GET | Method::HEAD);
    let params = Params::parse(request.uri().query());
    let target = remote_target(state, &params).unwrap_or(target);
    let stale = params.flag("stale");
    let first = route_for(state, &target, is_read && stale, hops, &HashSet::new());
    match first {
        // A read this server answers as the leader may find, when it confirms its
        // leadership, that it was deposed (say it was paused while another took over):
        // it is then asked of the new leader, like a read that came to a follower.
        Route::Local if is_read && !stale && target == Target::Leader => {
            let (parts, body) = request.into_parts();
            let again = Request::from_parts(parts.clone(), Body::empty());
            let response = run_here(Request::from_parts(parts, body), next.clone()).await;
            if response.extensions().get::<NotLeader>().is_none() {
                return response;
            }
            // The leadership metrics may not show the change yet: wait for them (within
            // the hold) rather than answer here again.
            let until = tokio::time::Instant::now() + HOLD_TIMEOUT;
            let route = loop {
                match route_for(state, &target, false, hops, &HashSet::new()) {
                    Route::Local if tokio::time::Instant::now() < until => {
                        tokio::time::sleep(FIRST_PAUSE).await;
                    }
                    route => break route,
                }
            };
            match forward_held(state, target, again, next, route, hops).await {
                Ok(response) => response,
                Err(error) => error.into_response(),
            }
        }
        Route::Local => run_here(request, next).await,
        first => match forward_held(state, target, request, next, first, hops).await {
            Ok(response) => response,
            Err(error) => error.into_response(),
        },
    }
}

fn route_for(
    state: &ApiState,
    target: &Target,
    stale_read: bool,
    hops: u8,
    avoid: &HashSet<SocketAddr>,
) -> Route {
    match (target, state.inner.raft.is_some()) {
        (Target::Datacenter(dc), _) => wan_route(state, dc, avoid),
        (Target::AnyServer, true) => Route::Local,
        (Target::Leader, true) => route(state, stale_read, hops),
        (_, false) => client_route(state, hops, avoid),
    }
}

/// Forwards a request along `first`, then, within [`HOLD_TIMEOUT`], along new routes
/// while no leader is known or a server cannot answer, as far as that is safe.
async fn forward_held(
    state: &ApiState,
    target: Target,
    request: Request,
    next: Next,
    first: Route,
    hops: u8,
) -> Result<Response, ApiError> {
    let started = tokio::time::Instant::now();
    let is_read = matches!(*request.method(), Method::GET | Method::HEAD);
    let params = Params::parse(request.uri().query());
    let stale_read = is_read && params.flag("stale");
    let blocking = params.get("index").is_some();
    let wait = if blocking {
        super::blocking_wait(&params)?
    } else {
        Duration::ZERO
    };
    let mut request = request;
    if !is_read && !request.headers().contains_key(REQUEST_ID_HEADER) {
        let id = uuid::Uuid::new_v4().simple().to_string();
        if let Ok(value) = HeaderValue::from_str(&id) {
            request.headers_mut().insert(REQUEST_ID_HEADER, value);
        }
    }
    let once = request.headers().contains_key(REQUEST_ID_HEADER);
    let (wire, rebuild) = to_wire(request, hops + 1).await?;
    let bytes = postcard::to_allocvec(&wire)
        .map_err(|e| ApiError::internal(format!("encoding the forwarded request: {e}")))?;
    let mut avoid = HashSet::new();
    // Why the last attempt failed: the answer if no server is left to try.
    let mut failure: Option<ApiError> = None;
    // Whether a write reached a server that did not answer: it may have been applied
    // (once only, by its id), and every way this ends in an error must say so.
    let mut maybe_applied = false;
    let give_up = |error: ApiError, maybe_applied: bool| {
        if maybe_applied {
            ApiError::new(error.status, format!("{}{MAYBE_APPLIED}", error.message))
        } else {
            error
        }
    };
    let mut route = first;
    let mut pause = FIRST_PAUSE;
    loop {
        let held = started.elapsed();
        let last_chance = held >= HOLD_TIMEOUT;
        match route {
            // This server became the leader while the request waited.
            Route::Local => return Ok(run_here(rebuild()?, next).await),
            Route::Refuse(error) => return Err(give_up(failure.unwrap_or(error), maybe_applied)),
            Route::Wait(error) if last_chance => {
                return Err(give_up(failure.unwrap_or(error), maybe_applied));
            }
            Route::Wait(_) => {
                tokio::time::sleep(pause.min(HOLD_TIMEOUT - held)).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
            Route::Forward(addr, via) => {
                // A request that may go again gets a short attempt, so that a server
                // that died with its connection still open costs seconds, not the idle
                // timeout.
                let attempt = if (is_read || once) && !blocking {
                    ATTEMPT
                } else {
                    wait + FORWARD_GRACE
                };
                let called = tokio::select! {
                    called = call(state, via, addr, &bytes, attempt) => called,
                    new = leader_moved_from(state, via, addr) => Err(TransportError::Remote(
                        format!("the leadership moved to {new} while the request was in flight"),
                    )),
                };
                match called {
                    Ok(response) => return Ok(response),
                    Err(error) => {
                        state.penalize_server(addr);
                        // Nothing reached the server if it could not be dialed.
                        let unsent = matches!(
                            error,
                            TransportError::Dial { .. }
                                | TransportError::DialTimeout { .. }
                                | TransportError::Backoff { .. }
                        );
                        maybe_applied |= !(unsent || is_read);
                        let error = ApiError::internal(format!("forwarding to {addr}: {error}"));
                        if last_chance || !(unsent || is_read || once) {
                            return Err(give_up(error, maybe_applied));
                        }
                        tracing::debug!(%addr, "forwarded request failed, trying again: {}", error.message);
                        failure = Some(error);
                        avoid.insert(addr);
                    }
                }
            }
        }
        route = route_for(state, &target, stale_read, hops, &avoid);
    }
}

/// Runs `request` on this agent; a write that carries an id is proposed once-only
/// (see [`super::propose`]).
async fn run_here(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| uuid::Uuid::parse_str(v).ok());
    match id {
        Some(id) => {
            super::REQUEST_ID
                .scope(id.as_u128(), next.run(request))
                .await
        }
        None => next.run(request).await,
    }
}

/// Carries `request` to `addr` and returns its answer (one attempt, no retry).
pub(super) async fn forward(
    state: &ApiState,
    addr: SocketAddr,
    request: Request,
    hops: u8,
) -> Result<Response, ApiError> {
    let params = Params::parse(request.uri().query());
    let wait = if params.get("index").is_some() {
        super::blocking_wait(&params)?
    } else {
        Duration::ZERO
    };
    let (wire, _) = to_wire(request, hops).await?;
    let bytes = postcard::to_allocvec(&wire)
        .map_err(|e| ApiError::internal(format!("encoding the forwarded request: {e}")))?;
    call(state, Via::Lan, addr, &bytes, wait + FORWARD_GRACE)
        .await
        .map_err(|e| ApiError::internal(format!("forwarding to {addr}: {e}")))
}

fn hops_of(headers: &HeaderMap) -> u8 {
    headers
        .get(FORWARDED_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn route(state: &ApiState, stale_read: bool, hops: u8) -> Route {
    let Some(raft) = state.inner.raft.as_ref() else {
        return Route::Refuse(ApiError::internal("No known Consul servers"));
    };
    // A stale read is any server's to answer; the leader answers the rest.
    if stale_read || raft.is_leader() {
        return Route::Local;
    }
    if hops >= MAX_HOPS {
        return Route::Refuse(ApiError::internal(
            "No cluster leader: the request was forwarded too many times",
        ));
    }
    match raft.leader() {
        None => Route::Wait(ApiError::internal("No cluster leader")),
        Some((_, node)) => match node.addr.parse() {
            Ok(addr) => Route::Forward(addr, Via::Lan),
            Err(_) => Route::Refuse(ApiError::internal(format!(
                "the leader's address {:?} is not valid",
                node.addr
            ))),
        },
    }
}

/// A client agent sends server-bound requests to a live server it knows from gossip,
/// other than those in `avoid`.
fn client_route(state: &ApiState, hops: u8, avoid: &HashSet<SocketAddr>) -> Route {
    if hops >= MAX_HOPS {
        return Route::Refuse(ApiError::internal("No known Consul servers"));
    }
    match state.pick_server(avoid) {
        Some(addr) => Route::Forward(addr, Via::Lan),
        None => Route::Wait(ApiError::internal("No known Consul servers")),
    }
}

/// A server sends a request for datacenter `dc` to a live server of it in the WAN pool,
/// other than those in `avoid`. A datacenter with no live server left has no path;
/// while a request is being retried, that ends the retries.
fn wan_route(state: &ApiState, dc: &str, avoid: &HashSet<SocketAddr>) -> Route {
    match state.pick_wan_server(dc, avoid) {
        Some(addr) => Route::Forward(addr, Via::Wan),
        None => Route::Refuse(ApiError::internal("No path to datacenter")),
    }
}

/// Reads the whole request into its wire form; also returns how to make it a request
/// again, to answer it here after all.
async fn to_wire(
    request: Request,
    hops: u8,
) -> Result<(WireRequest, impl FnOnce() -> Result<Request, ApiError>), ApiError> {
    let (parts, body) = request.into_parts();
    let body = read_body(body, MAX_FORWARD_BODY, |limit| {
        format!("Request body too large, max size: {limit} bytes")
    })
    .await?;
    let headers = CARRIED_REQUEST_HEADERS
        .iter()
        .filter_map(|name| {
            let value = parts.headers.get(*name)?.to_str().ok()?;
            Some((name.to_string(), value.to_string()))
        })
        .collect();
    let wire = WireRequest {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers,
        body: body.clone(),
        hops,
    };
    let rebuild = move || Ok(Request::from_parts(parts, Body::from(body)));
    Ok((wire, rebuild))
}

/// Returns (only) when this server knows of a leader other than `addr`: a request in
/// flight to `addr` as the leader will not be answered by a leader any more.
async fn leader_moved_from(state: &ApiState, via: Via, addr: SocketAddr) -> String {
    let Some(raft) = state.inner.raft.as_ref().filter(|_| via == Via::Lan) else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some((_, node)) = raft.leader()
            && node.addr != addr.to_string()
        {
            return node.addr;
        }
    }
}

/// One call of an encoded request to `addr`, through the endpoint `via`.
async fn call(
    state: &ApiState,
    via: Via,
    addr: SocketAddr,
    request: &[u8],
    timeout: Duration,
) -> Result<Response, TransportError> {
    let transport = match (via, state.wan()) {
        (Via::Lan, _) => state.transport(),
        (Via::Wan, Some(wan)) => &wan.transport,
        (Via::Wan, None) => {
            return Err(TransportError::Remote(
                "this agent has no WAN endpoint".to_string(),
            ));
        }
    };
    let reply = transport
        .call_with_timeout(addr, frame(RpcKind::Http, request), timeout)
        .await?;
    let answer: WireResponse = postcard::from_bytes(&reply.body)
        .map_err(|e| TransportError::Remote(format!("the answer from {addr} is not valid: {e}")))?;
    Ok(into_response(answer))
}

fn into_response(wire: WireResponse) -> Response {
    let status = StatusCode::from_u16(wire.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = (status, Body::from(wire.body)).into_response();
    let headers = response.headers_mut();
    for (name, value) in wire.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            headers.append(name, value);
        }
    }
    response
}

/// Answers a forwarded request with this agent's router. A request from the WAN must be
/// for our datacenter; it is then handled as if a client agent of ours had forwarded it.
pub async fn serve(
    router: axum::Router,
    bytes: &[u8],
    origin: Origin<'_>,
) -> Result<Bytes, String> {
    use tower::ServiceExt;

    let mut wire: WireRequest =
        postcard::from_bytes(bytes).map_err(|e| format!("bad forwarded request: {e}"))?;
    if let Origin::Wan(our_dc) = origin {
        let query = wire.uri.split_once('?').map(|(_, query)| query);
        if let Some(dc) = Params::parse(query).get("dc").filter(|dc| !dc.is_empty())
            && dc != our_dc
        {
            return Err(format!(
                "a request for datacenter {dc:?} reached datacenter {our_dc:?}; requests cross the WAN once"
            ));
        }
        wire.hops = 1;
    }
    let method = Method::from_bytes(wire.method.as_bytes())
        .map_err(|_| format!("bad method {:?}", wire.method))?;
    let uri: Uri = wire
        .uri
        .parse()
        .map_err(|_| format!("bad path {:?}", wire.uri))?;
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in &wire.headers {
        if CARRIED_REQUEST_HEADERS.contains(&name.as_str()) {
            request = request.header(name.as_str(), value.as_str());
        }
    }
    let request = request
        .header(FORWARDED_HEADER, wire.hops.to_string())
        .body(Body::from(wire.body))
        .map_err(|e| format!("bad forwarded request: {e}"))?;
    let response = match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, MAX_FORWARD_BODY * 8)
        .await
        .map_err(|e| format!("reading the local answer: {e}"))?;
    let headers = parts
        .headers
        .iter()
        .filter(|(name, _)| *name != "content-length" && *name != "date")
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_string())))
        .collect();
    let wire = WireResponse {
        status: parts.status.as_u16(),
        headers,
        body: body.to_vec(),
    };
    postcard::to_allocvec(&wire)
        .map(Bytes::from)
        .map_err(|e| format!("encoding the answer: {e}"))
}
