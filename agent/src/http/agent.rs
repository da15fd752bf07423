//! `/v1/agent/self`.

use axum::extract::State;
use axum::response::Response;
use serde_json::json as object;

use super::error::ApiError;
use super::{ApiState, json};

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
