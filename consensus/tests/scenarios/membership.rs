//! Membership changes: new servers join as learners (catching up from the log, or from a
//! snapshot after the log was purged), become voters; removed servers stop being
//! members.

use std::collections::BTreeSet;
use std::time::Duration;

use consensus::testing::{node, start_servers_with, wait_until};
use consensus::{MembershipError, ServerConfig};

use crate::util::{TIMEOUT, elect, open_cluster, put};

fn snapshot_often(c: &mut ServerConfig) {
    c.raft.snapshot_policy = openraft::SnapshotPolicy::LogsSinceLast(20);
    c.raft.max_in_snapshot_log_to_keep = 0;
    c.raft.purge_batch_size = 1;
    c.raft.snapshot_max_chunk_size = 4096;
    c.learner_catch_up_timeout = Duration::from_secs(3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_server_joins_by_snapshot_becomes_a_voter_and_a_removed_one_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let (router, servers) = open_cluster(dir.path(), snapshot_often).await;
    assert!(
        servers
            .iter()
            .all(|s| !s.has_state() && !s.is_initialized())
    );
    let leader = elect(&servers).await;
    let leader_id = leader.id();
    assert!(servers.iter().all(|s| s.has_state() && s.is_initialized()));
    let follower = servers
        .iter()
        .find(|s| s.id() != leader_id)
        .unwrap()
        .clone();

    // A learner added while the log is whole catches up from the log.
    let early = put(&leader, "early", "v").await;
    let fifth = start_servers_with(&router, dir.path(), &[5], snapshot_often)
        .await
        .unwrap()
        .remove(0);
    leader.add_learner(5, node(5)).await.unwrap();
    assert!(wait_until(TIMEOUT, || fifth.kv().applied_index().unwrap() >= early).await);
    assert!(fifth.metrics().borrow().snapshot.is_none());
    assert!(fifth.has_state() && fifth.is_initialized());

    let mut last = 0;
    for i in 0..60 {
        last = put(&leader, &format!("bulk/{i:02}"), "v").await;
    }
    assert!(
        wait_until(TIMEOUT, || {
            leader.metrics().borrow().purged.map_or(0, |p| p.index) > 10
        })
        .await,
        "the leader never purged its log"
    );

    // A pristine fourth server has no state.
    let fourth = start_servers_with(&router, dir.path(), &[4], snapshot_often)
        .await
        .unwrap()
        .remove(0);
    assert!(!fourth.has_state() && !fourth.is_initialized());

    // Only the leader changes membership, and a voter must be a learner first.
    assert!(matches!(
        follower.add_learner(4, node(4)).await,
        Err(MembershipError::ForwardToLeader { leader_id: Some(id), .. }) if id == leader_id
    ));
    assert_eq!(
        leader.promote_voters(BTreeSet::from([4])).await,
        Err(MembershipError::LearnerNotFound(4))
    );

    leader.add_learner(4, node(4)).await.unwrap();
    // The leader has replicated everything to it; applying follows.
    let replicated = leader.metrics().borrow().replication.as_ref().unwrap()[&4];
    assert!(replicated.is_some_and(|l| l.index > last), "{replicated:?}");
    assert!(wait_until(TIMEOUT, || fourth.kv().applied_index().unwrap() > last).await);
    assert!(
        fourth.metrics().borrow().snapshot.is_some(),
        "the learner should have caught up from a snapshot"
    );
    assert_eq!(fourth.kv().list("").unwrap(), leader.kv().list("").unwrap());
    assert!(fourth.has_state() && fourth.is_initialized());
    let m = leader.membership();
    assert_eq!(m.voters.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(m.learners.get(&4), Some(&node(4)));
    assert_eq!(m.learners.get(&5), Some(&node(5)));

    // A learner is removed as a voter is.
    leader.remove_server(5).await.unwrap();
    assert!(!leader.membership().learners.contains_key(&5));
    router.stop(5).await;

    leader.promote_voters(BTreeSet::from([4])).await.unwrap();
    let m = leader.membership();
    assert_eq!(m.voters.len(), 4);
    assert!(m.learners.is_empty() && !m.joint);
    let index = put(&leader, "after-join", "v").await;
    assert!(wait_until(TIMEOUT, || fourth.kv().applied_index().unwrap() >= index).await);

    // Remove a follower: it is no longer a member and the rest keep working.
    let removed = follower.id();
    leader.remove_server(removed).await.unwrap();
    let m = leader.membership();
    assert_eq!(m.voters.len(), 3);
    assert!(!m.voters.contains_key(&removed) && !m.learners.contains_key(&removed));
    assert_eq!(
        leader.remove_server(removed).await,
        Err(MembershipError::NotMember(removed))
    );
    router.stop(removed).await;
    let remaining: Vec<_> = router.servers();
    let index = put(&leader, "after-remove", "v").await;
    for s in &remaining {
        assert!(wait_until(TIMEOUT, || s.kv().applied_index().unwrap() >= index).await);
        assert!(!s.membership().voters.contains_key(&removed));
    }

    // Replacing the voters removes those left out; learners stay.
    let dropped = remaining.iter().find(|s| s.id() != leader_id).unwrap().id();
    // No server 6 is running: it is added but never catches up.
    assert_eq!(
        leader.add_learner(6, node(6)).await,
        Err(MembershipError::CatchUpTimeout {
            id: 6,
            timeout: Duration::from_secs(3)
        })
    );
    let voters: BTreeSet<_> = remaining
        .iter()
        .map(|s| s.id())
        .filter(|&id| id != dropped)
        .collect();
    leader.change_voters(voters.clone()).await.unwrap();
    let m = leader.membership();
    assert_eq!(m.voters.keys().copied().collect::<BTreeSet<_>>(), voters);
    assert_eq!(m.learners.keys().copied().collect::<Vec<_>>(), vec![6]);
    assert!(m.log_index > index);
    leader.remove_server(6).await.unwrap();
    assert!(leader.membership().learners.is_empty());
    router.shutdown_all().await;
}
