//! `/v1/operator/raft/...`: the Raft configuration, and removing a server from it.

use std::collections::BTreeSet;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use consensus::NodeId;
use serde::Serialize;

use super::error::ApiError;
use super::params::Params;
use super::{ApiState, json};
use crate::raft::Raft;

/// A server of the configuration as Consul shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ServerJson {
    #[serde(rename = "ID")]
    id: String,
    node: String,
    address: String,
    leader: bool,
    voter: bool,
    protocol_version: &'static str,
}

/// `GET /v1/operator/raft/configuration`.
pub async fn configuration(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let raft = state.raft()?;
    let leader = raft.leader().map(|(id, _)| id);
    let config = raft.membership();
    let voters = config.voters.iter().map(|(id, node)| (id, node, true));
    let learners = config.learners.iter().map(|(id, node)| (id, node, false));
    let servers: Vec<ServerJson> = voters
        .chain(learners)
        .map(|(id, node, voter)| ServerJson {
            id: id.to_string(),
            node: node.name.clone(),
            address: node.addr.clone(),
            leader: Some(*id) == leader,
            voter,
            protocol_version: "3",
        })
        .collect();
    let index = config.log_index.max(1);
    let mut response = json(&serde_json::json!({ "Servers": servers, "Index": index }));
    response
        .headers_mut()
        .extend(super::read_headers(raft, index));
    Ok(response)
}

/// `DELETE /v1/operator/raft/peer?id=<id>` or `?address=<ip:port>`: removes a server
/// from the Raft configuration (on the leader; others forward).
pub async fn remove_peer(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let raft = state.raft()?;
    let params = Params::parse(query.as_deref());
    let config = raft.membership();
    let all = config.voters.iter().chain(config.learners.iter());
    let target: Option<NodeId> = match (params.get("id"), params.get("address")) {
        (Some(id), _) => {
            let id: NodeId = id
                .parse()
                .map_err(|_| ApiError::bad_request(format!("Invalid id {id:?}")))?;
            all.map(|(i, _)| *i).find(|i| *i == id)
        }
        (None, Some(addr)) => all.filter(|(_, n)| n.addr == addr).map(|(i, _)| *i).next(),
        (None, None) => return Err(ApiError::bad_request("Must specify ?id or ?address")),
    };
    let Some(id) = target else {
        return Err(ApiError::bad_request(
            "the server is not in the Raft configuration",
        ));
    };
    remove(raft, id).await?;
    Ok(StatusCode::OK.into_response())
}

/// Removes `id` from the voters and learners (this server must lead).
pub(super) async fn remove(raft: &Raft, id: NodeId) -> Result<(), ApiError> {
    let config = raft.membership();
    if config.voters.contains_key(&id) {
        let voters: BTreeSet<NodeId> = config.voters.keys().copied().filter(|v| *v != id).collect();
        if voters.is_empty() {
            return Err(ApiError::bad_request("cannot remove the last voter"));
        }
        raft.change_voters(voters)
            .await
            .map_err(|e| ApiError::internal(format!("removing the server: {e}")))?;
    }
    if raft.membership().learners.contains_key(&id) {
        raft.remove_server(id)
            .await
            .map_err(|e| ApiError::internal(format!("removing the learner: {e}")))?;
    }
    Ok(())
}
