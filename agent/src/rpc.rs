//! The RPC router: every request that arrives on the LAN endpoint starts with a one-byte
//! kind that says which component answers it.
//!
//! The router also enforces who may ask what: only a peer whose certificate names it a
//! server of our datacenter may send Raft RPC (DESIGN §5).

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::raft::Raft;
use crate::tls::PeerIdentity;
use crate::transport::{RpcError, RpcHandler};

/// The kinds of RPC, the first byte of every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RpcKind {
    /// Raft append entries, vote, install snapshot.
    Raft = 1,
}

impl RpcKind {
    fn from_byte(byte: u8) -> Option<RpcKind> {
        match byte {
            1 => Some(RpcKind::Raft),
            _ => None,
        }
    }
}

/// Prefixes `body` with its kind.
pub fn frame(kind: RpcKind, body: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(body.len() + 1);
    out.push(kind as u8);
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// Dispatches incoming RPC to the component that answers it.
pub struct RpcRouter {
    dc: String,
    raft: OnceLock<Raft>,
}

impl RpcRouter {
    /// A router for an agent of datacenter `dc`, with no components yet.
    pub fn new(dc: String) -> RpcRouter {
        RpcRouter {
            dc,
            raft: OnceLock::new(),
        }
    }

    /// Attaches the Raft server (servers only; set once, after the endpoint exists
    /// because Raft sends through it).
    pub fn set_raft(&self, raft: Raft) {
        if self.raft.set(raft).is_err() {
            tracing::warn!("the Raft server was attached twice; keeping the first");
        }
    }

    async fn handle_raft(&self, from: &PeerIdentity, body: &[u8]) -> Result<Bytes, RpcError> {
        if !from.is_server_of(&self.dc) {
            return Err(RpcError::new(format!(
                "permission denied: Raft RPC needs a server certificate of {}, {from} has none",
                self.dc
            )));
        }
        let Some(raft) = self.raft.get() else {
            return Err(RpcError::new("this agent is not a Raft server"));
        };
        let request = consensus::RaftRpcRequest::from_bytes(body)
            .map_err(|e| RpcError::new(format!("bad Raft request: {e}")))?;
        let response = raft.handle_rpc(request).await;
        let bytes = response
            .to_bytes()
            .map_err(|e| RpcError::new(format!("encoding the Raft response: {e}")))?;
        Ok(Bytes::from(bytes))
    }
}

impl RpcHandler for RpcRouter {
    fn handle(
        self: Arc<Self>,
        from: PeerIdentity,
        request: Bytes,
    ) -> BoxFuture<'static, Result<Bytes, RpcError>> {
        Box::pin(async move {
            let Some((&kind, body)) = request.split_first() else {
                return Err(RpcError::new("empty request"));
            };
            match RpcKind::from_byte(kind) {
                Some(RpcKind::Raft) => self.handle_raft(&from, body).await,
                None => Err(RpcError::new(format!("unknown RPC kind {kind}"))),
            }
        })
    }
}
