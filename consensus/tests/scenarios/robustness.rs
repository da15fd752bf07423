//! Writes that cannot complete, full stores, log growth by bytes, bad snapshot chunks.

use std::time::Duration;

use consensus::testing::{wait_for_leader, wait_until};
use consensus::{RaftRpcRequest, RaftRpcResponse, Request, WriteError};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::InstallSnapshotRequest;
use openraft::testing::log_id;
use openraft::{SnapshotMeta, Vote};

use crate::util::{
    TIMEOUT, by_id, open_single, open_single_with, set, start_cluster, start_single_with,
};

/// A leader cut off from the others never learns what became of its proposals: the
/// writers get an "outcome unknown" error after the write timeout, and the proposal slot
/// is released for the next write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_an_isolated_leader_end_with_an_unknown_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let (router, servers, leader) = start_cluster(dir.path(), |c| {
        c.write_timeout = Duration::from_millis(500);
        c.max_proposals_in_flight = 1;
    })
    .await;
    let leader_id = leader.id();
    leader.write(set("before", b"1")).await.unwrap();

    router.isolate(leader_id);
    for key in ["lost/1", "lost/2"] {
        let result = tokio::time::timeout(TIMEOUT, leader.write(set(key, b"x")))
            .await
            .expect("the write never returned");
        assert!(
            matches!(result, Err(WriteError::Indeterminate(_))),
            "{result:?}"
        );
    }

    // Healed, the cluster accepts writes again (leadership may move around meanwhile).
    router.heal(leader_id);
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let leader_id = wait_for_leader(&servers, TIMEOUT).await.expect("a leader");
        match by_id(&servers, leader_id).write(set("after", b"1")).await {
            Ok(_) => break,
            Err(e) => assert!(std::time::Instant::now() < deadline, "{e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    router.shutdown_all().await;
}

/// Near the end of its map the leader refuses writes that add data instead of failing
/// to apply them (which would stop every server for good); deletes still go through, and
/// a larger map at restart makes room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_store_refuses_writes_and_grows_at_restart() {
    let dir = tempfile::tempdir().unwrap();
    let small = |c: &mut consensus::ServerConfig| {
        c.log_map_size = 4 << 20;
        c.sm_map_size = 4 << 20;
    };
    let (router, server) = start_single_with(dir.path(), small, TIMEOUT).await;

    let value = vec![7u8; 32 << 10];
    let mut written = 0;
    let full = loop {
        match server
            .write(set(&format!("big/{written:03}"), &value))
            .await
        {
            Ok(_) => written += 1,
            Err(e) => break e,
        }
        assert!(written < 200, "the store never filled up");
    };
    assert!(matches!(full, WriteError::StorageFull(_)), "{full:?}");
    assert!(written > 10, "refused after {written} writes");

    // Still serving: reads, deletes, and still refusing sets.
    assert_eq!(server.kv().keys("big/", None).unwrap().len(), written);
    server
        .write(Request::KvDelete {
            key: "big/000".into(),
        })
        .await
        .unwrap();
    assert!(matches!(
        server.write(set("more", &value)).await,
        Err(WriteError::StorageFull(_))
    ));
    assert!(server.is_leader());
    server.shutdown().await.unwrap();
    router.remove(1);
    drop(server);

    let (router, server) = open_single_with(dir.path(), |c| {
        c.log_map_size = 64 << 20;
        c.sm_map_size = 64 << 20;
    })
    .await;
    wait_for_leader(std::slice::from_ref(&server), TIMEOUT)
        .await
        .expect("a leader after restart");
    server.write(set("more", &value)).await.unwrap();
    assert_eq!(server.kv().keys("big/", None).unwrap().len(), written - 1);
    router.shutdown_all().await;
}

/// Openraft counts entries only; the server also snapshots when the log grows by bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_growth_in_bytes_triggers_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (router, server) = start_single_with(
        dir.path(),
        |c| {
            c.raft.snapshot_policy = openraft::SnapshotPolicy::LogsSinceLast(1_000_000);
            c.snapshot_log_bytes = 64 << 10;
        },
        TIMEOUT,
    )
    .await;
    for i in 0..20 {
        server
            .write(set(&format!("k/{i}"), &[1; 8 << 10]))
            .await
            .unwrap();
    }
    assert!(
        wait_until(TIMEOUT, || server.metrics().borrow().snapshot.is_some()).await,
        "no snapshot was built"
    );
    router.shutdown_all().await;
}

/// A snapshot chunk past the end of what was received is refused, rather than written at
/// its offset (which makes a huge sparse file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_chunk_past_the_received_data_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (router, server) = open_single(dir.path()).await;
    let chunk = |offset: u64| {
        RaftRpcRequest::InstallSnapshot(InstallSnapshotRequest {
            vote: Vote::new_committed(1, 2),
            meta: SnapshotMeta {
                last_log_id: Some(log_id(1, 2, 10)),
                last_membership: Default::default(),
                snapshot_id: "s-1".into(),
            },
            offset,
            data: vec![1; 100],
            done: false,
        })
    };
    let RaftRpcResponse::InstallSnapshot(first) = server.handle_rpc(chunk(0)).await else {
        panic!("wrong response kind")
    };
    first.expect("first chunk accepted");
    let RaftRpcResponse::InstallSnapshot(far) = server.handle_rpc(chunk(1 << 30)).await else {
        panic!("wrong response kind")
    };
    assert!(
        matches!(
            far,
            Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(
                _
            )))
        ),
        "{far:?}"
    );
    let RaftRpcResponse::InstallSnapshot(next) = server.handle_rpc(chunk(100)).await else {
        panic!("wrong response kind")
    };
    next.expect("contiguous chunk accepted");

    let snapshots = dir.path().join("node-1").join("snapshots");
    for item in std::fs::read_dir(&snapshots).unwrap() {
        let len = item.unwrap().metadata().unwrap().len();
        assert!(len <= 200, "a snapshot file of {len} bytes");
    }
    router.shutdown_all().await;
}
