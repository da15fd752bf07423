//! Linearizable reads: concurrent calls share leadership rounds, see every write
//! acknowledged before they started, and fail on a deposed leader.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use consensus::testing::wait_for_leader;
use consensus::{RaftServer, ReadError, Request};

use crate::util::{TIMEOUT, by_id, start_cluster};

fn counter(server: &RaftServer) -> u64 {
    server
        .kv()
        .get("ctr")
        .expect("local read")
        .map(|e| String::from_utf8_lossy(&e.value).parse().expect("a number"))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_share_rounds_and_see_acknowledged_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (router, servers, leader) = start_cluster(dir.path(), |_| {}).await;
    let leader_id = leader.id();
    leader.ensure_linearizable().await.unwrap();

    // N concurrent calls take far fewer than N rounds.
    const CALLS: usize = 200;
    let start = Arc::new(tokio::sync::Barrier::new(CALLS + 1));
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            let (leader, start) = (leader.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                leader.ensure_linearizable().await
            })
        })
        .collect();
    let before = leader.linearizable_rounds();
    start.wait().await;
    let mut confirmed = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(()) => confirmed += 1,
            // A quorum too slow to answer (a loaded machine) fails a round; never a
            // wrong answer.
            Err(ReadError::Unavailable(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(confirmed > 0);
    let rounds = leader.linearizable_rounds() - before;
    assert!(
        (1..=CALLS as u64 / 10).contains(&rounds),
        "{CALLS} concurrent calls took {rounds} rounds"
    );

    // Reads racing with writes: a read sees every write acknowledged before it began.
    let acked = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (leader, acked, done) = (leader.clone(), acked.clone(), done.clone());
        tokio::spawn(async move {
            for n in 1..=150u64 {
                leader
                    .write(Request::KvSet {
                        key: "ctr".into(),
                        value: n.to_string().into_bytes(),
                        flags: 0,
                    })
                    .await
                    .unwrap();
                acked.store(n, Ordering::SeqCst);
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let (leader, acked, done) = (leader.clone(), acked.clone(), done.clone());
            tokio::spawn(async move {
                let mut reads = 0;
                while !done.load(Ordering::SeqCst) {
                    let floor = acked.load(Ordering::SeqCst);
                    match leader.ensure_linearizable().await {
                        Ok(()) => {}
                        Err(ReadError::Unavailable(_)) => continue,
                        Err(e) => panic!("{e}"),
                    }
                    let seen = counter(&leader);
                    assert!(
                        seen >= floor,
                        "read {seen} after write {floor} was acknowledged"
                    );
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    writer.await.unwrap();
    let mut reads = 0;
    for r in readers {
        reads += r.await.unwrap();
    }
    assert!(reads > 0);

    // A deposed leader cannot serve a linearizable read of state it has not seen.
    router.isolate(leader_id);
    let others: Vec<_> = servers
        .iter()
        .filter(|s| s.id() != leader_id)
        .cloned()
        .collect();
    let new_leader = by_id(&others, wait_for_leader(&others, TIMEOUT).await.unwrap());
    new_leader
        .write(Request::KvSet {
            key: "ctr".into(),
            value: b"1000".to_vec(),
            flags: 0,
        })
        .await
        .unwrap();
    let stale = tokio::time::timeout(TIMEOUT, leader.ensure_linearizable())
        .await
        .expect("the check must end");
    assert!(
        stale.is_err(),
        "a deposed leader confirmed a linearizable read"
    );
    router.heal(leader_id);
    router.shutdown_all().await;
}
