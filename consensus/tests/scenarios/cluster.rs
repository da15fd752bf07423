//! Three servers on the in-memory transport.

use std::time::Duration;

use consensus::testing::{members, node, wait_for_leader, wait_until};
use consensus::{InitOutcome, RaftServer, ReadError, Request, Response, WriteError};

use crate::util::{TIMEOUT, by_id, open_cluster, set, start_cluster};

fn value_of(server: &RaftServer, key: &str) -> Option<Vec<u8>> {
    server.kv().get(key).expect("local read").map(|e| e.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_elect_replicate_forward_and_fail_over() {
    let dir = tempfile::tempdir().unwrap();
    let (router, servers) = open_cluster(dir.path(), |_| {}).await;

    // Every server initializes with the same members, concurrently.
    let inits: Vec<_> = servers
        .iter()
        .map(|s| {
            let s = s.clone();
            tokio::spawn(async move { s.initialize(members(&[1, 2, 3])).await })
        })
        .collect();
    let mut initialized = 0;
    for i in inits {
        if i.await.unwrap().unwrap() == InitOutcome::Initialized {
            initialized += 1;
        }
    }
    assert!(initialized >= 1);

    let leader_id = wait_for_leader(&servers, TIMEOUT).await.expect("a leader");
    let leader = by_id(&servers, leader_id);
    let followers: Vec<_> = servers
        .iter()
        .filter(|s| s.id() != leader_id)
        .cloned()
        .collect();
    assert_eq!(leader.voters().len(), 3);
    assert_eq!(leader.last_contact(), Some(Duration::ZERO));

    // Write through the leader, read on the followers once applied.
    let written = leader.write(set("svc/a", "1")).await.unwrap();
    assert_eq!(written.response, Response::Bool(true));
    for f in &followers {
        assert!(
            wait_until(TIMEOUT, || f.kv().applied_index().unwrap() >= written.index).await,
            "follower {} did not apply",
            f.id()
        );
        let entry = f.kv().get("svc/a").unwrap().unwrap();
        assert_eq!(
            (entry.value.as_slice(), entry.modify_index),
            (&b"1"[..], written.index)
        );
        assert!(f.last_contact().unwrap() < Duration::from_secs(2));
    }

    // A follower refuses writes and linearizable reads, naming the leader.
    let err = followers[0].write(set("svc/b", "2")).await.unwrap_err();
    assert_eq!(
        err,
        WriteError::ForwardToLeader {
            leader_id: Some(leader_id),
            leader_node: Some(node(leader_id)),
        }
    );
    assert!(matches!(
        followers[0].ensure_linearizable().await,
        Err(ReadError::ForwardToLeader { leader_id: Some(id), .. }) if id == leader_id
    ));
    leader.ensure_linearizable().await.unwrap();
    assert_eq!(followers[0].leader(), Some((leader_id, node(leader_id))));

    // Cut the leader off: the others elect a new leader and keep accepting writes.
    router.isolate(leader_id);
    let new_leader_id = wait_for_leader(&followers, TIMEOUT)
        .await
        .expect("a new leader");
    assert_ne!(new_leader_id, leader_id);
    let new_leader = by_id(&servers, new_leader_id);
    let after = new_leader.write(set("svc/c", "3")).await.unwrap();
    assert!(after.index > written.index);
    new_leader.ensure_linearizable().await.unwrap();
    assert_eq!(value_of(&new_leader, "svc/c"), Some(b"3".to_vec()));
    assert_eq!(
        value_of(&leader, "svc/c"),
        None,
        "the cut-off node saw nothing"
    );

    // Reconnect: the old leader steps down and catches up.
    router.heal(leader_id);
    assert!(
        wait_until(TIMEOUT, || value_of(&leader, "svc/c").is_some()).await,
        "old leader did not catch up"
    );
    assert!(!leader.is_leader() || leader_id == new_leader_id);
    assert_eq!(
        wait_for_leader(&servers, TIMEOUT).await,
        Some(new_leader_id)
    );
    router.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_follower_catches_up_from_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (router, servers, leader) = start_cluster(dir.path(), |c| {
        c.raft.snapshot_policy = openraft::SnapshotPolicy::LogsSinceLast(20);
        c.raft.max_in_snapshot_log_to_keep = 0;
        c.raft.purge_batch_size = 1;
        c.raft.snapshot_max_chunk_size = 512;
    })
    .await;
    let leader_id = leader.id();
    let lagging = servers
        .iter()
        .find(|s| s.id() != leader_id)
        .cloned()
        .unwrap();

    router.isolate(lagging.id());
    let mut last = 0;
    for i in 0..60 {
        last = leader
            .write(set(&format!("bulk/{i:02}"), &"x".repeat(100)))
            .await
            .unwrap()
            .index;
    }
    leader
        .write(Request::KvDelete {
            key: "bulk/00".into(),
        })
        .await
        .unwrap();
    // The leader has snapshotted and purged what the lagging node is missing.
    assert!(
        wait_until(TIMEOUT, || {
            leader
                .metrics()
                .borrow()
                .purged
                .map(|p| p.index)
                .unwrap_or(0)
                > 10
        })
        .await,
        "leader never purged its log"
    );

    router.heal(lagging.id());
    assert!(
        wait_until(TIMEOUT, || lagging.kv().applied_index().unwrap() > last).await,
        "lagging node did not catch up"
    );
    assert!(
        lagging.metrics().borrow().snapshot.is_some(),
        "no snapshot was installed"
    );
    assert_eq!(
        lagging.kv().list("").unwrap(),
        leader.kv().list("").unwrap()
    );
    assert_eq!(
        lagging.kv().index_for_prefix("bulk/").unwrap(),
        leader.kv().index_for_prefix("bulk/").unwrap()
    );
    router.shutdown_all().await;
}
