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
use crate::config::{parse_gossip_addr, parse_wan_addr};
use crate::gossip::Gossip;

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

/// The pool a request names: the WAN pool with `?wan` (servers only), else the LAN.
/// `None` for `?wan` on a client agent, which is in no WAN pool.
fn pool<'a>(state: &'a ApiState, params: &Params) -> Option<&'a Gossip> {
    if params.flag("wan") {
        state.wan().map(|wan| &wan.gossip)
    } else {
        Some(&state.inner.gossip)
    }
}

/// `GET /v1/agent/members`: every member this agent knows, itself included; with `?wan`
/// the servers of every datacenter in the WAN pool, named `<node>.<dc>` (none on a
/// client agent, as Consul). Its `X-Consul-Index` moves on every membership change;
/// with `?index=` the request blocks until it does (an extension: Consul's endpoint
/// does not block).
pub async fn members(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(query.as_deref());
    let Some(gossip) = pool(&state, &params) else {
        return Ok(json(&Vec::<MemberJson>::new()));
    };
    let view = match params.u64("index")?.filter(|i| *i > 0) {
        Some(index) => {
            let wait = super::blocking_wait(&params)?;
            gossip.wait_members(index, wait).await
        }
        None => gossip.member_view(),
    };
    let body: Vec<MemberJson> = view.members.iter().map(MemberJson::from).collect();
    Ok((super::event::index_header(view.index), json(&body)).into_response())
}

/// `PUT /v1/agent/join/<addr>`: announces this agent to `addr` and waits for an answer;
/// with `?wan`, a server joins the WAN pool (an IP alone means port 8302).
pub async fn join(
    State(state): State<ApiState>,
    Path(addr): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(query.as_deref());
    let wan = params.flag("wan");
    let Some(gossip) = pool(&state, &params) else {
        return Err(ApiError::internal(
            "cannot join the WAN pool from a client agent: only servers are in it",
        ));
    };
    let parse = if wan {
        parse_wan_addr
    } else {
        parse_gossip_addr
    };
    let target = parse(&addr).ok_or_else(|| {
        ApiError::bad_request(format!("Invalid address {addr:?}: want IP or IP:PORT"))
    })?;
    gossip
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
    // A server leaves the WAN pool first, so other datacenters stop sending to it.
    if let Some(wan) = state.wan()
        && let Err(e) = wan.gossip.leave().await
    {
        tracing::warn!("leaving the WAN pool: {e}");
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

/// `PUT /v1/agent/force-leave/<node>`: moves a failed member to left, in the LAN pool
/// and, on a server, in the WAN pool (where it is named `<node>.<dc>`).
pub async fn force_leave(
    State(state): State<ApiState>,
    Path(node): Path<String>,
) -> Result<Response, ApiError> {
    let failed = |e| ApiError::internal(format!("force-leave failed: {e}"));
    let mut known = state
        .inner
        .gossip
        .force_leave(&node)
        .await
        .map_err(failed)?;
    if let Some(wan) = state.wan() {
        known |= wan.gossip.force_leave(&node).await.map_err(failed)?;
    }
    if !known {
        return Err(ApiError::internal(format!(
            "agent: No node found with name '{node}'"
        )));
    }
    Ok(StatusCode::OK.into_response())
}
