//! `/v1/status/leader` and `/v1/status/peers`.

use axum::extract::State;
use axum::response::Response;

use super::error::ApiError;
use super::{ApiState, json};

/// The leader's Raft address as a JSON string (`""` when there is none).
pub async fn leader(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let raft = state.raft()?;
    let addr = raft.leader().map(|(_, node)| node.addr).unwrap_or_default();
    Ok(json(&addr))
}

/// The Raft addresses of the voting servers.
pub async fn peers(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let raft = state.raft()?;
    let addrs: Vec<String> = raft
        .voters()
        .into_iter()
        .map(|(_, node)| node.addr)
        .collect();
    Ok(json(&addrs))
}
