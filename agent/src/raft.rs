//! Raft over the LAN QUIC endpoint: the agent's implementation of
//! [`consensus::RaftTransport`].
//!
//! A call dials (or reuses) the connection to the target server's advertised address,
//! sends the request as an RPC of kind [`RpcKind::Raft`], and refuses an answer from a
//! peer whose certificate does not name it a server of our datacenter.

use std::net::SocketAddr;

use consensus::{NodeId, RaftRpcRequest, RaftRpcResponse, ServerNode, TransportError};

use crate::rpc::{RpcKind, frame};
use crate::transport::Transport;

/// The Raft server of an agent.
pub type Raft = consensus::RaftServer;

/// Sends Raft RPC over QUIC with mTLS.
#[derive(Clone)]
pub struct QuicRaftTransport {
    transport: Transport,
    dc: String,
}

impl QuicRaftTransport {
    /// Raft RPC of datacenter `dc` over `transport`.
    pub fn new(transport: Transport, dc: String) -> QuicRaftTransport {
        QuicRaftTransport { transport, dc }
    }
}

impl consensus::RaftTransport for QuicRaftTransport {
    async fn call(
        &self,
        target: NodeId,
        node: &ServerNode,
        request: RaftRpcRequest,
    ) -> Result<RaftRpcResponse, TransportError> {
        let addr: SocketAddr = node.addr.parse().map_err(|_| {
            TransportError::Unreachable(format!(
                "server {target} has no valid address: {:?}",
                node.addr
            ))
        })?;
        let body = request
            .to_bytes()
            .map_err(|e| TransportError::Network(format!("encoding: {e}")))?;
        let reply = self
            .transport
            .call(addr, frame(RpcKind::Raft, &body))
            .await
            .map_err(|e| match e {
                crate::transport::TransportError::Dial { .. }
                | crate::transport::TransportError::DialTimeout { .. }
                | crate::transport::TransportError::Backoff { .. } => {
                    TransportError::Unreachable(e.to_string())
                }
                other => TransportError::Network(other.to_string()),
            })?;
        if !reply.peer.is_server_of(&self.dc) {
            return Err(TransportError::Network(format!(
                "{addr} answered as {}, not as a server of {}",
                reply.peer, self.dc
            )));
        }
        RaftRpcResponse::from_bytes(&reply.body)
            .map_err(|e| TransportError::Network(format!("decoding the answer of {addr}: {e}")))
    }
}

/// Publishes the KV changes this server applies on the bus, until `shutdown`.
pub async fn publish_kv_changes(
    changes: tokio::sync::broadcast::Receiver<consensus::KvChange>,
    bus: events::Bus,
    shutdown: tokio_util::sync::CancellationToken,
) {
    publish_changes("KV", changes, bus, shutdown, |change| {
        Some(events::Event::Kv {
            key: change.key,
            modify_index: change.modify_index,
            deleted: change.kind != consensus::KvChangeKind::Set,
            recurse: change.kind == consensus::KvChangeKind::DeleteTree,
        })
    })
    .await
}

/// Publishes the check status changes this server applies to the catalog on the bus,
/// until `shutdown`; those of `local_node`, whose local state already publishes them
/// first-hand, only for `serfHealth`.
pub async fn publish_health_changes(
    changes: tokio::sync::broadcast::Receiver<consensus::CatalogChange>,
    local_node: String,
    bus: events::Bus,
    shutdown: tokio_util::sync::CancellationToken,
) {
    publish_changes("health", changes, bus, shutdown, |change| match change {
        consensus::CatalogChange::CheckStatus {
            node,
            check_id,
            status,
            ..
        } if node != local_node || check_id == consensus::SERF_HEALTH_CHECK_ID => {
            Some(events::Event::Health {
                node,
                check: check_id,
                status: match status {
                    consensus::CheckStatus::Passing => events::HealthStatus::Passing,
                    consensus::CheckStatus::Warning => events::HealthStatus::Warning,
                    consensus::CheckStatus::Critical => events::HealthStatus::Critical,
                },
            })
        }
        _ => None,
    })
    .await
}

/// Publishes `changes`, turned into events by `event`, on the bus until `shutdown`.
async fn publish_changes<T: Clone>(
    what: &'static str,
    mut changes: tokio::sync::broadcast::Receiver<T>,
    bus: events::Bus,
    shutdown: tokio_util::sync::CancellationToken,
    event: impl Fn(T) -> Option<events::Event>,
) {
    use tokio::sync::broadcast::error::RecvError;

    loop {
        let change = tokio::select! {
            _ = shutdown.cancelled() => return,
            change = changes.recv() => change,
        };
        match change {
            Ok(change) => {
                if let Some(event) = event(change) {
                    bus.publish(event);
                }
            }
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "{what} changes not published: the bus fell behind");
            }
            Err(RecvError::Closed) => return,
        }
    }
}
