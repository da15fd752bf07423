//! Setup and request helpers shared by the scenarios.

use std::path::Path;
use std::time::Duration;

use consensus::testing::{MemRouter, members, start_servers_with, wait_for_leader};
use consensus::{NodeId, RaftServer, Request, ServerConfig};

/// How long the cluster scenarios wait for an election or a change to show.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The servers of a cluster scenario.
const CLUSTER: [NodeId; 3] = [1, 2, 3];

/// A write of `value` under `key`.
pub fn set(key: &str, value: &(impl AsRef<[u8]> + ?Sized)) -> Request {
    Request::KvSet {
        key: key.into(),
        value: value.as_ref().to_vec(),
        flags: 0,
    }
}

/// Writes `value` under `key` through `server`; returns the write's index.
pub async fn put(server: &RaftServer, key: &str, value: &str) -> u64 {
    server.write(set(key, value)).await.expect("write").index
}

/// The server of `servers` with id `id`.
pub fn by_id(servers: &[RaftServer], id: NodeId) -> RaftServer {
    servers
        .iter()
        .find(|s| s.id() == id)
        .cloned()
        .expect("server with that id")
}

/// Opens server 1 (uninitialized) in `dir` on a new router.
pub async fn open_single(dir: &Path) -> (MemRouter, RaftServer) {
    open_single_with(dir, |_| {}).await
}

/// As [`open_single`], with `adjust` applied to the configuration.
pub async fn open_single_with(
    dir: &Path,
    adjust: impl Fn(&mut ServerConfig),
) -> (MemRouter, RaftServer) {
    let router = MemRouter::new();
    let server = start_servers_with(&router, dir, &[1], adjust)
        .await
        .expect("server opens")
        .remove(0);
    (router, server)
}

/// Opens server 1 in `dir`, initializes it alone and waits (5 s) until it leads.
pub async fn start_single(dir: &Path) -> (MemRouter, RaftServer) {
    start_single_with(dir, |_| {}, Duration::from_secs(5)).await
}

/// As [`start_single`], with `adjust` applied to the configuration and waiting up to
/// `leader_timeout` for the leadership.
pub async fn start_single_with(
    dir: &Path,
    adjust: impl Fn(&mut ServerConfig),
    leader_timeout: Duration,
) -> (MemRouter, RaftServer) {
    let (router, server) = open_single_with(dir, adjust).await;
    server.initialize(members(&[1])).await.expect("initialize");
    assert_eq!(
        wait_for_leader(std::slice::from_ref(&server), leader_timeout).await,
        Some(1)
    );
    (router, server)
}

/// Opens servers 1, 2 and 3 (uninitialized) in subdirectories of `dir` on a new router,
/// with `adjust` applied to each configuration.
pub async fn open_cluster(
    dir: &Path,
    adjust: impl Fn(&mut ServerConfig),
) -> (MemRouter, Vec<RaftServer>) {
    let router = MemRouter::new();
    let servers = start_servers_with(&router, dir, &CLUSTER, adjust)
        .await
        .expect("servers open");
    (router, servers)
}

/// Initializes the cluster of [`open_cluster`] through its first server and returns the
/// leader they agree on within [`TIMEOUT`].
pub async fn elect(servers: &[RaftServer]) -> RaftServer {
    servers[0]
        .initialize(members(&CLUSTER))
        .await
        .expect("initialize");
    let leader_id = wait_for_leader(servers, TIMEOUT).await.expect("a leader");
    by_id(servers, leader_id)
}

/// [`open_cluster`], then [`elect`]: the router, the servers and the leader.
pub async fn start_cluster(
    dir: &Path,
    adjust: impl Fn(&mut ServerConfig),
) -> (MemRouter, Vec<RaftServer>, RaftServer) {
    let (router, servers) = open_cluster(dir, adjust).await;
    let leader = elect(&servers).await;
    (router, servers, leader)
}
