//! `/v1/agent/...`: this agent and its view of the cluster.

use std::collections::BTreeMap;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use membership::Member;
use serde::Serialize;
use serde_json::json as object;

use super::error::ApiError;
use super::params::Params;
use super::{ApiState, json};
use crate::config::parse_gossip_addr;

/// This agent's configuration, its member record and a few statistics.
pub async fn self_(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let info = state.info();
    let role = if info.server { "server" } else { "client" };
    let raft_stats = state.inner.raft.as_ref().map(|raft| {
        let leader = raft.leader();
        object!({
            "state": if raft.is_leader() { "Leader" } else if leader.is_some() { "Follower" } else { "Candidate" },
            "leader_addr": leader.map(|(_, node)| node.addr).unwrap_or_default(),
            "applied_index": raft.kv().applied_index().unwrap_or(0).to_string(),
            "num_peers": raft.voters().len().saturating_sub(1).to_string(),
        })
    });
    let body = object!({
        "Config": {
            "Datacenter": info.dc,
            "NodeName": info.node,
            "NodeID": info.node_id,
            "Server": info.server,
            "Version": env!("CARGO_PKG_VERSION"),
        },
        "Member": {
            "Name": info.node,
            "Addr": info.advertise.ip().to_string(),
            "Port": info.advertise.port(),
            "Tags": {
                "role": role,
                "dc": info.dc,
                "build": env!("CARGO_PKG_VERSION"),
                "id": info.node_id,
            },
            "Status": 1,
        },
        "Stats": {
            "agent": { "server": info.server.to_string() },
            "raft": raft_stats,
        },
    });
    Ok(json(&body))
}

/// A member as Consul's `/v1/agent/members` shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct MemberJson<'a> {
    name: &'a str,
    addr: String,
    port: u16,
    tags: &'a BTreeMap<String, String>,
    status: u8,
    protocol_min: u8,
    protocol_max: u8,
    protocol_cur: u8,
    delegate_min: u8,
    delegate_max: u8,
    delegate_cur: u8,
}

impl<'a> From<&'a Member> for MemberJson<'a> {
    fn from(member: &'a Member) -> Self {
        MemberJson {
            name: &member.name,
            addr: member.addr.ip().to_string(),
            port: member.addr.port(),
            tags: &member.tags,
            status: member.state.consul_status(),
            protocol_min: 1,
            protocol_max: 1,
            protocol_cur: 1,
            delegate_min: 1,
            delegate_max: 1,
            delegate_cur: 1,
        }
    }
}

/// Refuses `?wan` while this agent runs no WAN pool.
fn no_wan(params: &Params) -> Result<(), ApiError> {
    if params.flag("wan") {
        return Err(ApiError::bad_request("this agent runs no WAN pool"));
    }
    Ok(())
}

/// `GET /v1/agent/members`: every member this agent knows, itself included. Its
/// `X-Consul-Index` moves on every membership change; with `?index=` the request blocks
/// until it does (an extension: Consul's endpoint does not block).
pub async fn members(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(query.as_deref());
    no_wan(&params)?;
    let view = match params.u64("index")?.filter(|i| *i > 0) {
        Some(index) => {
            let wait = super::blocking_wait(&params)?;
            state.inner.gossip.wait_members(index, wait).await
        }
        None => state.inner.gossip.member_view(),
    };
    let body: Vec<MemberJson> = view.members.iter().map(MemberJson::from).collect();
    Ok((super::event::index_header(view.index), json(&body)).into_response())
}

/// `PUT /v1/agent/join/<addr>`: announces this agent to `addr` and waits for an answer.
pub async fn join(
    State(state): State<ApiState>,
    Path(addr): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    no_wan(&Params::parse(query.as_deref()))?;
    let target = parse_gossip_addr(&addr).ok_or_else(|| {
        ApiError::bad_request(format!("Invalid address {addr:?}: want IP or IP:PORT"))
    })?;
    state
        .inner
        .gossip
        .join(target)
        .await
        .map_err(|e| ApiError::internal(format!("failed to join {target}: {e}")))?;
    Ok(StatusCode::OK.into_response())
}

/// `PUT /v1/agent/leave`: leaves gracefully, then stops the agent. A server first
/// leaves the Raft configuration, so the others keep their quorum without it.
pub async fn leave(State(state): State<ApiState>) -> Result<Response, ApiError> {
    if let Some(raft) = state.inner.raft.as_ref()
        && let Err(e) = leave_raft(&state, raft).await
    {
        tracing::warn!("leaving the Raft configuration: {e}");
    }
    state
        .inner
        .gossip
        .leave()
        .await
        .map_err(|e| ApiError::internal(format!("leave failed: {e}")))?;
    tracing::info!("left the cluster; stopping");
    state.inner.shutdown.cancel();
    Ok(StatusCode::OK.into_response())
}

/// Asks the leader (this server or another) to remove this server from Raft.
async fn leave_raft(state: &ApiState, raft: &crate::raft::Raft) -> Result<(), ApiError> {
    let me = raft.id();
    let config = raft.membership();
    let is_member = config.voters.contains_key(&me) || config.learners.contains_key(&me);
    if !is_member || config.voters.len() <= 1 && config.voters.contains_key(&me) {
        return Ok(());
    }
    if raft.is_leader() {
        return super::operator::remove(raft, me).await;
    }
    let Some((_, leader)) = raft.leader() else {
        return Err(ApiError::internal("No cluster leader"));
    };
    let addr = leader
        .addr
        .parse()
        .map_err(|_| ApiError::internal(format!("bad leader address {:?}", leader.addr)))?;
    let request = axum::extract::Request::builder()
        .method(axum::http::Method::DELETE)
        .uri(format!("/v1/operator/raft/peer?id={me}"))
        .body(axum::body::Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let response = super::forward::forward(state, addr, request, 1).await?;
    if !response.status().is_success() {
        return Err(ApiError::internal(format!(
            "the leader answered {}",
            response.status()
        )));
    }
    tracing::info!("left the Raft configuration");
    Ok(())
}

/// `PUT /v1/agent/force-leave/<node>`: moves a failed member to left.
pub async fn force_leave(
    State(state): State<ApiState>,
    Path(node): Path<String>,
) -> Result<Response, ApiError> {
    let known = state
        .inner
        .gossip
        .force_leave(&node)
        .await
        .map_err(|e| ApiError::internal(format!("force-leave failed: {e}")))?;
    if !known {
        return Err(ApiError::internal(format!(
            "agent: No node found with name '{node}'"
        )));
    }
    Ok(StatusCode::OK.into_response())
}
