//! The transport-agnostic network adapter.
//!
//! This crate opens no sockets. The embedding application implements [`RaftTransport`]
//! (one request, one response, to a given server) and this module turns it into
//! openraft's `RaftNetworkFactory`. On the receiving side the application decodes a
//! [`RaftRpcRequest`] and hands it to
//! [`RaftServer::handle_rpc`](crate::RaftServer::handle_rpc).
//!
//! Messages are encoded with postcard through [`RaftRpcRequest::to_bytes`] /
//! [`RaftRpcRequest::from_bytes`] and the same methods of [`RaftRpcResponse`], so the
//! transport never needs to know the codec.

use std::future::Future;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{EntryPayload, RPCTypes, RaftNetwork, RaftNetworkFactory};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{CodecError, TransportError};
use crate::types::{MAX_APPEND_BYTES, NodeId, ServerNode, TypeConfig};

/// Sends one Raft RPC to another server and returns its answer.
///
/// Implemented by the application over its own transport. A call must not assume a
/// connection exists: connect lazily, reuse connections, and report a peer that cannot be
/// reached as [`TransportError::Unreachable`] so Raft backs off.
pub trait RaftTransport: Clone + Send + Sync + 'static {
    /// Delivers `request` to server `target` (reachable at `node.addr`) and returns the
    /// response it produced with [`RaftServer::handle_rpc`](crate::RaftServer::handle_rpc).
    fn call(
        &self,
        target: NodeId,
        node: &ServerNode,
        request: RaftRpcRequest,
    ) -> impl Future<Output = Result<RaftRpcResponse, TransportError>> + Send;
}

/// A Raft RPC request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RaftRpcRequest {
    /// Log replication and heartbeats.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// Leader election.
    Vote(VoteRequest<NodeId>),
    /// One chunk of a snapshot.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
}

/// The callee's result for a [`RaftRpcRequest`], including openraft's errors so the caller
/// can act on them.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRpcResponse {
    /// Result of [`RaftRpcRequest::AppendEntries`].
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// Result of [`RaftRpcRequest::Vote`].
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// Result of [`RaftRpcRequest::InstallSnapshot`].
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(postcard::to_allocvec(value)?)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, rest) = postcard::take_from_bytes(bytes)?;
    if !rest.is_empty() {
        return Err(CodecError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

impl RaftRpcRequest {
    /// Encodes the request for the wire.
    pub fn to_bytes(&self) -> Result<Vec<u8>, CodecError> {
        encode(self)
    }

    /// Decodes a request received from the wire.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
        decode(bytes)
    }
}

impl RaftRpcResponse {
    /// Encodes the response for the wire.
    pub fn to_bytes(&self) -> Result<Vec<u8>, CodecError> {
        encode(self)
    }

    /// Decodes a response received from the wire.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
        decode(bytes)
    }
}

/// Openraft's network factory over a [`RaftTransport`].
pub struct Network<T> {
    id: NodeId,
    transport: T,
}

impl<T: RaftTransport> Network<T> {
    /// A factory for the server `id`, sending through `transport`.
    pub fn new(id: NodeId, transport: T) -> Self {
        Network { id, transport }
    }
}

/// A client for one target server. Creating it does not connect.
pub struct NetworkClient<T> {
    id: NodeId,
    target: NodeId,
    node: ServerNode,
    transport: T,
}

impl<T: RaftTransport> RaftNetworkFactory<TypeConfig> for Network<T> {
    type Network = NetworkClient<T>;

    async fn new_client(&mut self, target: NodeId, node: &ServerNode) -> Self::Network {
        NetworkClient {
            id: self.id,
            target,
            node: node.clone(),
            transport: self.transport.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

impl<T: RaftTransport> NetworkClient<T> {
    async fn send<E: std::error::Error>(
        &self,
        request: RaftRpcRequest,
        action: RPCTypes,
    ) -> Result<RaftRpcResponse, RPCError<NodeId, ServerNode, E>> {
        self.transport
            .call(self.target, &self.node, request)
            .await
            .map_err(|e| match e {
                TransportError::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&e)),
                TransportError::Network(_) => RPCError::Network(NetworkError::new(&e)),
                TransportError::Timeout(timeout) => RPCError::Timeout(Timeout {
                    action,
                    id: self.id,
                    target: self.target,
                    timeout,
                }),
            })
    }

    fn remote<E: std::error::Error>(
        &self,
        e: RaftError<NodeId, E>,
    ) -> RPCError<NodeId, ServerNode, RaftError<NodeId, E>> {
        RPCError::RemoteError(RemoteError::new_with_node(
            self.target,
            self.node.clone(),
            e,
        ))
    }
}

fn mismatched<E: std::error::Error>(got: &RaftRpcResponse) -> RPCError<NodeId, ServerNode, E> {
    let kind = match got {
        RaftRpcResponse::AppendEntries(_) => "AppendEntries",
        RaftRpcResponse::Vote(_) => "Vote",
        RaftRpcResponse::InstallSnapshot(_) => "InstallSnapshot",
    };
    RPCError::Network(NetworkError::new(&Message(format!(
        "peer answered with a {kind} response"
    ))))
}

/// Estimated size of an entry on the wire.
fn entry_size(payload: &EntryPayload<TypeConfig>) -> usize {
    match payload {
        EntryPayload::Blank => 32,
        EntryPayload::Normal(request) => 32 + request.approx_size(),
        EntryPayload::Membership(m) => {
            64 + m
                .nodes()
                .map(|(_, n)| 32 + n.name.len() + n.addr.len())
                .sum::<usize>()
        }
    }
}

/// When the entries are estimated above [`MAX_APPEND_BYTES`], how many leading entries
/// fit (at least one).
fn split_hint(request: &AppendEntriesRequest<TypeConfig>) -> Option<u64> {
    if request.entries.len() < 2 {
        return None;
    }
    let mut total = 0;
    for (fitting, entry) in request.entries.iter().enumerate() {
        total += entry_size(&entry.payload);
        if total > MAX_APPEND_BYTES {
            return Some((fitting as u64).max(1));
        }
    }
    None
}

impl<T: RaftTransport> RaftNetwork<TypeConfig> for NetworkClient<T> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, ServerNode, RaftError<NodeId>>>
    {
        if let Some(hint) = split_hint(&rpc) {
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(hint),
            ));
        }
        match self
            .send(RaftRpcRequest::AppendEntries(rpc), RPCTypes::AppendEntries)
            .await?
        {
            RaftRpcResponse::AppendEntries(result) => result.map_err(|e| self.remote(e)),
            other => Err(mismatched(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, ServerNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self
            .send(
                RaftRpcRequest::InstallSnapshot(rpc),
                RPCTypes::InstallSnapshot,
            )
            .await?
        {
            RaftRpcResponse::InstallSnapshot(result) => result.map_err(|e| self.remote(e)),
            other => Err(mismatched(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, ServerNode, RaftError<NodeId>>> {
        match self.send(RaftRpcRequest::Vote(rpc), RPCTypes::Vote).await? {
            RaftRpcResponse::Vote(result) => result.map_err(|e| self.remote(e)),
            other => Err(mismatched(&other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::error::Fatal;
    use openraft::testing::log_id;
    use openraft::{Entry, Vote};

    use super::*;
    use crate::types::Request;

    fn append(entries: Vec<Entry<TypeConfig>>) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(2, 1),
            prev_log_id: Some(log_id(1, 1, 4)),
            entries,
            leader_commit: Some(log_id(1, 1, 3)),
        }
    }

    fn set_entry(index: u64, len: usize) -> Entry<TypeConfig> {
        Entry {
            log_id: log_id(2, 1, index),
            payload: EntryPayload::Normal(Request::KvSet {
                key: format!("k{index}"),
                value: vec![7; len],
                flags: 3,
            }),
        }
    }

    #[test]
    fn rpc_round_trips() {
        let req = RaftRpcRequest::AppendEntries(append(vec![set_entry(5, 10)]));
        let back = RaftRpcRequest::from_bytes(&req.to_bytes().unwrap()).unwrap();
        let RaftRpcRequest::AppendEntries(back) = back else {
            panic!("wrong variant")
        };
        assert_eq!(back.entries, vec![set_entry(5, 10)]);
        assert_eq!(back.prev_log_id, Some(log_id(1, 1, 4)));

        let responses = [
            RaftRpcResponse::AppendEntries(Ok(AppendEntriesResponse::Success)),
            RaftRpcResponse::AppendEntries(Err(RaftError::Fatal(Fatal::Stopped))),
            RaftRpcResponse::Vote(Ok(VoteResponse::new(Vote::new(3, 2), None, true))),
        ];
        for r in responses {
            let back = RaftRpcResponse::from_bytes(&r.to_bytes().unwrap()).unwrap();
            assert_eq!(format!("{back:?}"), format!("{r:?}"));
        }
    }

    #[test]
    fn garbage_does_not_decode() {
        for bytes in [
            &b""[..],
            b"\xff\xff\xff\xff\xff\xff",
            b"\x00\x01\x02",
            &[0x09; 64],
        ] {
            assert!(RaftRpcRequest::from_bytes(bytes).is_err(), "{bytes:?}");
            assert!(RaftRpcResponse::from_bytes(bytes).is_err(), "{bytes:?}");
        }
        let good = RaftRpcRequest::Vote(VoteRequest::new(Vote::new(1, 1), None))
            .to_bytes()
            .unwrap();
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(matches!(
            RaftRpcRequest::from_bytes(&trailing),
            Err(CodecError::TrailingBytes(1))
        ));
        for cut in 0..good.len() {
            assert!(RaftRpcRequest::from_bytes(&good[..cut]).is_err());
        }
    }

    #[test]
    fn oversized_append_is_split() {
        let small = append((1..=10).map(|i| set_entry(i, 100)).collect());
        assert_eq!(split_hint(&small), None);
        let big = append((1..=40).map(|i| set_entry(i, 512 * 1024)).collect());
        let hint = split_hint(&big).unwrap();
        assert!((1..40).contains(&hint), "{hint}");
        let one = append(vec![set_entry(1, 16 << 20)]);
        assert_eq!(split_hint(&one), None, "a single entry is always sent");
    }
}
