//! Forwarding: a request that this agent cannot answer itself is carried, whole, to an
//! agent that can, and the answer comes back unchanged.
//!
//! One mechanism serves every case: a follower server forwards writes and default or
//! `?consistent` reads to the leader; a client agent forwards every server-bound request
//! to a server of its datacenter. The request travels as an RPC of kind
//! [`RpcKind::Http`] over the mTLS QUIC endpoint and is answered by the receiver's own
//! router. A hop counter in [`FORWARDED_HEADER`] bounds the chain, so two servers that
//! disagree about who leads cannot bounce a request forever.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::params::Params;
use super::{ApiState, read_body};
use crate::rpc::{RpcKind, frame};

/// Header carrying how many times a request was forwarded.
pub const FORWARDED_HEADER: &str = "x-agent-forwarded";

/// A request is forwarded at most this many times (client → server → leader).
pub const MAX_HOPS: u8 = 2;

/// Largest request body carried to another agent.
pub const MAX_FORWARD_BODY: usize = 8 * 1024 * 1024;

/// Time allowed beyond a blocking query's wait for the answer to come back.
const FORWARD_GRACE: Duration = Duration::from_secs(10);

/// Headers of a request worth carrying (the rest are connection details).
const CARRIED_REQUEST_HEADERS: &[&str] = &["content-type", "x-consul-token"];

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
    Forward(SocketAddr),
    Refuse(ApiError),
}

/// Middleware on server-bound routes: answers locally when this agent can, otherwise
/// forwards the request to an agent that can.
pub async fn to_server(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let hops = hops_of(request.headers());
    let route = route(&state, &request, hops);
    dispatch(&state, route, request, next, hops).await
}

/// Middleware on routes any server answers from its own state (`/v1/status/...`, as
/// Consul does): a server answers itself, a client agent forwards to a server.
pub async fn to_any_server(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    let hops = hops_of(request.headers());
    let route = if state.inner.raft.is_some() {
        Route::Local
    } else {
        client_route(&state, hops)
    };
    dispatch(&state, route, request, next, hops).await
}

async fn dispatch(
    state: &ApiState,
    route: Route,
    request: Request,
    next: Next,
    hops: u8,
) -> Response {
    match route {
        Route::Local => next.run(request).await,
        Route::Refuse(error) => error.into_response(),
        Route::Forward(addr) => match forward(state, addr, request, hops + 1).await {
            Ok(response) => response,
            Err(error) => error.into_response(),
        },
    }
}

fn hops_of(headers: &HeaderMap) -> u8 {
    headers
        .get(FORWARDED_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn route(state: &ApiState, request: &Request, hops: u8) -> Route {
    let params = Params::parse(request.uri().query());
    let is_read = matches!(*request.method(), Method::GET | Method::HEAD);
    match state.inner.raft.as_ref() {
        Some(raft) => {
            // A stale read is any server's to answer; the leader answers the rest.
            if (is_read && params.flag("stale")) || raft.is_leader() {
                return Route::Local;
            }
            if hops >= MAX_HOPS {
                return Route::Refuse(ApiError::internal(
                    "No cluster leader: the request was forwarded too many times",
                ));
            }
            match raft.leader() {
                None => Route::Refuse(ApiError::internal("No cluster leader")),
                Some((_, node)) => match node.addr.parse() {
                    Ok(addr) => Route::Forward(addr),
                    Err(_) => Route::Refuse(ApiError::internal(format!(
                        "the leader's address {:?} is not valid",
                        node.addr
                    ))),
                },
            }
        }
        None => client_route(state, hops),
    }
}

/// A client agent sends server-bound requests to a live server it knows from gossip.
fn client_route(state: &ApiState, hops: u8) -> Route {
    if hops >= MAX_HOPS {
        return Route::Refuse(ApiError::internal("No known Consul servers"));
    }
    match state.pick_server() {
        Some(addr) => Route::Forward(addr),
        None => Route::Refuse(ApiError::internal("No known Consul servers")),
    }
}

/// Carries `request` to `addr` and returns its answer.
pub(super) async fn forward(
    state: &ApiState,
    addr: SocketAddr,
    request: Request,
    hops: u8,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let params = Params::parse(parts.uri.query());
    let wait = if params.get("index").is_some() {
        super::blocking_wait(&params)?
    } else {
        Duration::ZERO
    };
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
        body,
        hops,
    };
    let bytes = postcard::to_allocvec(&wire)
        .map_err(|e| ApiError::internal(format!("encoding the forwarded request: {e}")))?;
    let reply = state
        .transport()
        .call_with_timeout(addr, frame(RpcKind::Http, &bytes), wait + FORWARD_GRACE)
        .await
        .map_err(|e| ApiError::internal(format!("forwarding to {addr}: {e}")))?;
    let answer: WireResponse = postcard::from_bytes(&reply.body)
        .map_err(|e| ApiError::internal(format!("the answer from {addr} is not valid: {e}")))?;
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

/// Answers a forwarded request with this agent's router.
pub async fn serve(router: axum::Router, bytes: &[u8]) -> Result<Bytes, String> {
    use tower::ServiceExt;

    let wire: WireRequest =
        postcard::from_bytes(bytes).map_err(|e| format!("bad forwarded request: {e}"))?;
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
