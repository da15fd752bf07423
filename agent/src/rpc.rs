//! The RPC routers: every request that arrives on an endpoint starts with a one-byte
//! kind that says which component answers it.
//!
//! The routers also enforce who may ask what: only a peer whose certificate names it a
//! server of our datacenter may send Raft RPC (DESIGN §5). The WAN endpoint
//! ([`WanRpcRouter`]) answers nothing but forwarded HTTP requests from servers of other
//! datacenters: Raft never crosses it.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::http::forward::Origin;
use crate::raft::Raft;
use crate::tls::PeerIdentity;
use crate::transport::{RpcError, RpcHandler};

/// The kinds of RPC, the first byte of every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RpcKind {
    /// Raft append entries, vote, install snapshot.
    Raft = 1,
    /// An HTTP API request forwarded by another agent of our datacenter.
    Http = 2,
    /// "Do you have Raft state?", asked by servers before they form a cluster; the
    /// answer is one byte, 1 or 0.
    RaftStatus = 3,
}

impl RpcKind {
    fn from_byte(byte: u8) -> Option<RpcKind> {
        match byte {
            1 => Some(RpcKind::Raft),
            2 => Some(RpcKind::Http),
            3 => Some(RpcKind::RaftStatus),
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
    http: OnceLock<axum::Router>,
}

impl RpcRouter {
    /// A router for an agent of datacenter `dc`, with no components yet.
    pub fn new(dc: String) -> RpcRouter {
        RpcRouter {
            dc,
            raft: OnceLock::new(),
            http: OnceLock::new(),
        }
    }

    /// Attaches the Raft server (servers only; set once, after the endpoint exists
    /// because Raft sends through it).
    pub fn set_raft(&self, raft: Raft) {
        if self.raft.set(raft).is_err() {
            tracing::warn!("the Raft server was attached twice; keeping the first");
        }
    }

    /// Attaches the HTTP API's router, which answers forwarded requests.
    pub fn set_http(&self, router: axum::Router) {
        if self.http.set(router).is_err() {
            tracing::warn!("the HTTP router was attached twice; keeping the first");
        }
    }

    async fn handle_http(&self, from: &PeerIdentity, body: &[u8]) -> Result<Bytes, RpcError> {
        if from.dc != self.dc {
            return Err(RpcError::new(format!(
                "permission denied: {from} is not of datacenter {}",
                self.dc
            )));
        }
        let Some(router) = self.http.get() else {
            return Err(RpcError::new("this agent's HTTP API is not running yet"));
        };
        crate::http::forward::serve(router.clone(), body, Origin::Lan)
            .await
            .map_err(RpcError::new)
    }

    fn handle_raft_status(&self, from: &PeerIdentity) -> Result<Bytes, RpcError> {
        if !from.is_server_of(&self.dc) {
            return Err(RpcError::new(format!(
                "permission denied: {from} is not a server of {}",
                self.dc
            )));
        }
        let Some(raft) = self.raft.get() else {
            return Err(RpcError::new("this agent is not a Raft server"));
        };
        Ok(Bytes::from_static(if raft.has_state() {
            &[1]
        } else {
            &[0]
        }))
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

/// Dispatches RPC that arrives on a server's WAN endpoint: HTTP requests forwarded by
/// servers of other datacenters (`?dc=`), for our datacenter.
pub struct WanRpcRouter {
    dc: String,
    http: OnceLock<axum::Router>,
}

impl WanRpcRouter {
    /// A router for a server of datacenter `dc`, with no HTTP router yet.
    pub fn new(dc: String) -> WanRpcRouter {
        WanRpcRouter {
            dc,
            http: OnceLock::new(),
        }
    }

    /// Attaches the HTTP API's router, which answers forwarded requests.
    pub fn set_http(&self, router: axum::Router) {
        if self.http.set(router).is_err() {
            tracing::warn!("the HTTP router was attached twice to the WAN; keeping the first");
        }
    }
}

impl RpcHandler for WanRpcRouter {
    fn handle(
        self: Arc<Self>,
        from: PeerIdentity,
        request: Bytes,
    ) -> BoxFuture<'static, Result<Bytes, RpcError>> {
        Box::pin(async move {
            let Some((&kind, body)) = request.split_first() else {
                return Err(RpcError::new("empty request"));
            };
            if RpcKind::from_byte(kind) != Some(RpcKind::Http) {
                return Err(RpcError::new(format!(
                    "permission denied: the WAN endpoint answers forwarded requests only (kind {kind})"
                )));
            }
            // The handshake admits only server certificates on the WAN; checked again
            // here, where the permission is given.
            if from.role != membership::Role::Server {
                return Err(RpcError::new(format!(
                    "permission denied: {from} is not a server"
                )));
            }
            let Some(router) = self.http.get() else {
                return Err(RpcError::new("this agent's HTTP API is not running yet"));
            };
            crate::http::forward::serve(router.clone(), body, Origin::Wan(&self.dc))
                .await
                .map_err(RpcError::new)
        })
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
                Some(RpcKind::Http) => self.handle_http(&from, body).await,
                Some(RpcKind::RaftStatus) => self.handle_raft_status(&from),
                None => Err(RpcError::new(format!("unknown RPC kind {kind}"))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::forward::WireRequest;
    use axum::routing::get;

    fn server(dc: &str) -> PeerIdentity {
        PeerIdentity {
            role: membership::Role::Server,
            dc: dc.into(),
            node: "s".into(),
        }
    }

    fn request(uri: &str) -> Bytes {
        let wire = WireRequest {
            method: "GET".into(),
            uri: uri.into(),
            headers: vec![],
            body: vec![],
            hops: 0,
        };
        frame(RpcKind::Http, &postcard::to_allocvec(&wire).unwrap())
    }

    /// A WAN router of dc1 whose HTTP API answers `/hops` with the hop count it sees.
    fn wan_router() -> Arc<WanRpcRouter> {
        let router = Arc::new(WanRpcRouter::new("dc1".into()));
        router.set_http(axum::Router::new().route(
            "/hops",
            get(|headers: axum::http::HeaderMap| async move {
                headers
                    .get(crate::http::forward::FORWARDED_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none")
                    .to_string()
            }),
        ));
        router
    }

    #[tokio::test]
    async fn the_wan_router_answers_forwarded_requests_for_its_datacenter_only() {
        let router = wan_router();
        let answer = router
            .clone()
            .handle(server("dc2"), request("/hops?dc=dc1"))
            .await
            .unwrap();
        let answer: crate::http::forward::WireResponse = postcard::from_bytes(&answer).unwrap();
        // Handled as if a client agent of ours had forwarded it: one hop.
        assert_eq!(
            (answer.status, answer.body.as_slice()),
            (200, b"1".as_slice())
        );

        // A request naming a third datacenter does not cross the WAN again.
        let err = router
            .clone()
            .handle(server("dc2"), request("/hops?dc=dc3"))
            .await
            .unwrap_err();
        assert!(err.0.contains("cross the WAN once"), "{}", err.0);

        // Raft never crosses the WAN, even from a server of our own datacenter.
        let err = router
            .clone()
            .handle(server("dc1"), frame(RpcKind::Raft, b"x"))
            .await
            .unwrap_err();
        assert!(err.0.contains("permission denied"), "{}", err.0);

        // Nor does anything from a client certificate.
        let client = PeerIdentity {
            role: membership::Role::Client,
            ..server("dc2")
        };
        let err = router.handle(client, request("/hops")).await.unwrap_err();
        assert!(err.0.contains("not a server"), "{}", err.0);
    }
}
