//! Anti-entropy: the agent keeps its entry in the servers' catalog equal to its local
//! state (Consul's "sync").
//!
//! Whenever the local services or checks change (a registration, a check's new status
//! or output), and every [`FULL_SYNC`] besides, the agent sends its whole local state
//! (node, address, services, checks) to the servers as one `PUT
//! /v1/internal/catalog/sync`. The servers replace the node's services and checks with
//! it in one Raft write, keeping the `serfHealth` check that they own; entries that did
//! not change keep their indexes, so a periodic sync wakes no blocking query. The
//! periodic sync repairs drift: an entry removed or changed on the servers by hand
//! comes back. The request goes through this agent's own HTTP router, so it is
//! forwarded to a server exactly like any other write (and retried there while the
//! servers elect a leader); a failed sync is tried again with a growing pause.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::http::catalog::{CheckBody, NodeSyncJson, ServiceBody};
use crate::local::{LocalSnapshot, LocalState};

/// How often the whole local state is sent even when nothing changed (Consul's
/// anti-entropy interval for small clusters), plus up to a tenth of it at random.
pub const FULL_SYNC: Duration = Duration::from_secs(60);

/// First pause after a failed sync; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// The path the servers take a node's whole state on.
pub const SYNC_PATH: &str = "/v1/internal/catalog/sync";

/// Facts about this node that its catalog entry carries.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    /// Node name.
    pub node: String,
    /// Stable node id (a UUID).
    pub id: String,
    /// The address other hosts reach this node's services at (the advertised IP).
    pub address: String,
}

/// Sends the local state to the catalog on every change and every [`FULL_SYNC`], until
/// `shutdown`. `router` is this agent's HTTP API.
pub async fn run(
    facts: NodeFacts,
    local: LocalState,
    router: axum::Router,
    shutdown: CancellationToken,
) {
    let mut changes = local.subscribe();
    let mut synced: Option<u64> = None;
    let mut next_full = tokio::time::Instant::now();
    let mut retry = FIRST_RETRY;
    loop {
        let snapshot = local.snapshot();
        let now = tokio::time::Instant::now();
        if synced != Some(snapshot.version) || now >= next_full {
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return,
                outcome = push(&router, &facts, &snapshot) => outcome,
            };
            match outcome {
                Ok(()) => {
                    tracing::debug!(
                        version = snapshot.version,
                        "local state synced to the catalog"
                    );
                    synced = Some(snapshot.version);
                    next_full = now + FULL_SYNC + jitter(FULL_SYNC / 10);
                    retry = FIRST_RETRY;
                }
                Err(e) => {
                    tracing::warn!("syncing the local state to the catalog: {e}");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(MAX_RETRY);
                    continue;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = changes.changed() => {
                if changed.is_err() {
                    // The local state is gone: the agent is stopping.
                    return;
                }
            }
            _ = tokio::time::sleep_until(next_full) => {}
        }
    }
}

fn jitter(max: Duration) -> Duration {
    let ms = max.as_millis() as u64;
    Duration::from_millis(if ms == 0 {
        0
    } else {
        rand::random_range(0..ms)
    })
}

fn body(facts: &NodeFacts, snapshot: &LocalSnapshot) -> NodeSyncJson {
    NodeSyncJson {
        node: facts.node.clone(),
        id: facts.id.clone(),
        address: facts.address.clone(),
        meta: Default::default(),
        services: snapshot
            .services
            .iter()
            .map(|s| ServiceBody {
                id: s.id.clone(),
                service: s.service.clone(),
                tags: s.tags.clone(),
                address: s.address.clone(),
                port: s.port,
                meta: s.meta.clone(),
            })
            .collect(),
        checks: snapshot
            .checks
            .iter()
            .map(|c| CheckBody {
                check_id: c.check_id.clone(),
                name: c.name.clone(),
                status: c.status.as_str().to_string(),
                notes: c.notes.clone(),
                output: c.output.clone(),
                service_id: c.service_id.clone(),
                kind: c.kind.to_string(),
            })
            .collect(),
    }
}

/// One sync through the agent's router.
async fn push(
    router: &axum::Router,
    facts: &NodeFacts,
    snapshot: &LocalSnapshot,
) -> Result<(), String> {
    let bytes = serde_json::to_vec(&body(facts, snapshot)).map_err(|e| e.to_string())?;
    let request = Request::builder()
        .method(Method::PUT)
        .uri(SYNC_PATH)
        .header("content-type", "application/json")
        .body(Body::from(bytes))
        .map_err(|e| e.to_string())?;
    let response = match router.clone().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let status = response.status();
    if status == StatusCode::OK {
        return Ok(());
    }
    let text = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    Err(format!("{status}: {}", text.trim()))
}
