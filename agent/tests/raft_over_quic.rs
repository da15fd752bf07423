//! Raft between three servers over the real QUIC transport with mTLS: the agent's
//! `QuicRaftTransport` and RPC router, in one process on loopback.

// Setup helpers outside #[test] functions panic on failure too.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use agent::raft::{QuicRaftTransport, Raft};
use agent::rpc::{RpcKind, RpcRouter, frame};
use agent::tls::{self, Role, TlsMaterial};
use agent::transport::{Transport, TransportConfig, TransportError};
use consensus::{RaftRpcRequest, RaftServer, Request, ServerConfig, ServerNode};
use openraft::{Vote, raft::VoteRequest};
use tokio_util::sync::CancellationToken;

use support::{Pki, bounded};

struct Server {
    raft: Raft,
    transport: Transport,
    _dir: tempfile::TempDir,
}

/// A transport bound to a fresh loopback port, answering RPC through a router of dc1.
fn endpoint(tls: &TlsMaterial, router: Arc<RpcRouter>) -> Transport {
    let config = TransportConfig::new("127.0.0.1:0".parse().unwrap(), tls::ALPN_LAN);
    let (transport, _datagrams) =
        Transport::bind(config, tls, router, CancellationToken::new()).unwrap();
    transport
}

async fn start_server(pki: &Pki, id: u64) -> Server {
    let tls = pki.issue(Role::Server, &format!("s{id}"));
    let router = Arc::new(RpcRouter::new("dc1".into()));
    let transport = endpoint(&tls, router.clone());
    let dir = tempfile::tempdir().unwrap();
    let node = ServerNode {
        name: format!("s{id}"),
        addr: transport.local_addr().to_string(),
    };
    let raft = RaftServer::open(
        ServerConfig::new(id, node, dir.path()),
        QuicRaftTransport::new(transport.clone(), "dc1".into()),
    )
    .await
    .unwrap();
    router.set_raft(raft.clone());
    Server {
        raft,
        transport,
        _dir: dir,
    }
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..400 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_replicate_over_mtls_quic() {
    bounded(async {
        let pki = Pki::new();
        let mut servers = Vec::new();
        for id in 1..=3 {
            servers.push(start_server(&pki, id).await);
        }
        let members: BTreeMap<_, _> = servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let node = ServerNode {
                    name: format!("s{}", i + 1),
                    addr: s.transport.local_addr().to_string(),
                };
                (i as u64 + 1, node)
            })
            .collect();
        servers[0].raft.initialize(members).await.unwrap();
        wait_for("a leader known to all", || {
            servers.iter().all(|s| s.raft.leader().is_some())
        })
        .await;
        let leader = servers.iter().find(|s| s.raft.is_leader()).unwrap();
        let outcome = leader
            .raft
            .write(Request::KvSet {
                key: "color".into(),
                value: b"blue".to_vec(),
                flags: 3,
            })
            .await
            .unwrap();
        wait_for("every server to apply the write", || {
            servers.iter().all(|s| {
                matches!(s.raft.kv().get("color"), Ok(Some(e)) if e.modify_index == outcome.index)
            })
        })
        .await;
        for server in &servers {
            let entry = server.raft.kv().get("color").unwrap().unwrap();
            assert_eq!(entry.value, b"blue");
            assert_eq!(entry.flags, 3);
        }
        assert_eq!(leader.raft.voters().len(), 3);
        for server in &servers {
            server.raft.shutdown().await.unwrap();
            server.transport.shutdown().await;
        }
    })
    .await;
}

/// What a peer gets when it sends a Raft vote request to `server` with its own
/// certificate.
async fn vote_from(server: &Server, tls: &TlsMaterial) -> Result<bytes::Bytes, TransportError> {
    let router = Arc::new(RpcRouter::new("dc1".into()));
    let caller = endpoint(tls, router);
    let request = RaftRpcRequest::Vote(VoteRequest::new(Vote::new(99, 7), None));
    let body = frame(RpcKind::Raft, &request.to_bytes().unwrap());
    let answer = caller
        .call(server.transport.local_addr(), body)
        .await
        .map(|reply| reply.body);
    caller.shutdown().await;
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_servers_of_our_datacenter_may_send_raft_rpc() {
    bounded(async {
        let pki = Pki::new();
        let server = start_server(&pki, 1).await;
        let term_before = server.raft.metrics().borrow().current_term;

        let client = pki.issue(Role::Client, "c1");
        match vote_from(&server, &client).await {
            Err(TransportError::Remote(message)) => {
                assert!(message.contains("permission denied"), "{message}")
            }
            other => panic!("a client certificate got {other:?}"),
        }
        let other_dc = pki.issue_in(Role::Server, "dc2", "s9");
        match vote_from(&server, &other_dc).await {
            Err(TransportError::Remote(message)) => {
                assert!(message.contains("permission denied"), "{message}")
            }
            other => panic!("a dc2 server certificate got {other:?}"),
        }
        // Neither request reached Raft: the term did not move to the caller's.
        assert_eq!(server.raft.metrics().borrow().current_term, term_before);

        // A server of dc1 is answered (here: a vote response from Raft).
        let peer = pki.issue(Role::Server, "s2");
        let answer = vote_from(&server, &peer).await.unwrap();
        let response = consensus::RaftRpcResponse::from_bytes(&answer).unwrap();
        assert!(matches!(response, consensus::RaftRpcResponse::Vote(_)));
        assert_eq!(server.raft.metrics().borrow().current_term, 99);

        server.raft.shutdown().await.unwrap();
        server.transport.shutdown().await;
    })
    .await;
}
