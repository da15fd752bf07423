//! One server: restart durability, group commit, input validation, initialization.

use std::time::Duration;

use consensus::testing::{members, wait_for_leader};
use consensus::{
    InitOutcome, InvalidRequest, MAX_KEY_LEN, MAX_VALUE_LEN, Request, Response, WriteError,
};

use crate::util::{open_single, set, start_single};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_data_and_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let (router, server) = start_single(dir.path()).await;

    let a = server.write(set("app/a", "1")).await.unwrap();
    let b = server.write(set("app/b", "2")).await.unwrap();
    let del = server
        .write(Request::KvDelete {
            key: "app/b".into(),
        })
        .await
        .unwrap();
    let cas = server
        .write(Request::KvCas {
            key: "app/a".into(),
            value: b"3".to_vec(),
            flags: 5,
            index: a.index,
        })
        .await
        .unwrap();
    assert_eq!(cas.response, Response::Bool(true));
    assert!(a.index < b.index && b.index < del.index && del.index < cas.index);

    let kv = server.kv();
    let before_entry = kv.get("app/a").unwrap().unwrap();
    assert_eq!(
        (
            before_entry.create_index,
            before_entry.modify_index,
            before_entry.flags
        ),
        (a.index, cas.index, 5)
    );
    let before_prefix = kv.index_for_prefix("app/").unwrap();
    let before_table = kv.kv_index().unwrap();
    assert_eq!(before_prefix, cas.index);
    assert_eq!(before_table, cas.index);
    let before_commits = server.log_metrics().commits;
    assert!(before_commits > 0);

    server.shutdown().await.unwrap();
    assert!(matches!(kv.get("app/a"), Err(consensus::ReadError::Closed)));
    assert!(server.write(set("x", "y")).await.is_err());
    router.remove(1);
    drop(server);

    // Reopen from the same directory.
    let (router, server) = open_single(dir.path()).await;
    let kv = server.kv();
    assert_eq!(kv.get("app/a").unwrap(), Some(before_entry));
    assert_eq!(kv.get("app/b").unwrap(), None);
    assert_eq!(kv.index_for_prefix("app/").unwrap(), before_prefix);
    assert_eq!(kv.kv_index().unwrap(), before_table);
    assert!(kv.applied_index().unwrap() >= cas.index);

    assert_eq!(
        server.initialize(members(&[1])).await.unwrap(),
        InitOutcome::AlreadyInitialized
    );
    assert_eq!(
        wait_for_leader(std::slice::from_ref(&server), Duration::from_secs(5)).await,
        Some(1)
    );
    let after = server.write(set("app/c", "4")).await.unwrap();
    assert!(after.index > cas.index);
    assert!(kv.index_for_prefix("app/").unwrap() >= after.index);
    router.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_log_commits() {
    let dir = tempfile::tempdir().unwrap();
    let (router, server) = start_single(dir.path()).await;
    // Settle the leader's own entries first.
    server.write(set("warm-up", "v")).await.unwrap();
    let before = server.log_metrics();

    const WRITES: usize = 300;
    let tasks: Vec<_> = (0..WRITES)
        .map(|i| {
            let server = server.clone();
            tokio::spawn(async move { server.write(set(&format!("k/{i:04}"), "v")).await })
        })
        .collect();
    let mut indexes = std::collections::BTreeSet::new();
    for t in tasks {
        let outcome = t.await.unwrap().unwrap();
        assert_eq!(outcome.response, Response::Bool(true));
        indexes.insert(outcome.index);
    }
    let after = server.log_metrics();
    let commits = after.commits - before.commits;
    let entries = after.entries - before.entries;
    assert_eq!(server.kv().keys("k/", None).unwrap().len(), WRITES);
    assert!(
        commits < WRITES as u64 / 4,
        "{WRITES} writes took {commits} log commits"
    );
    assert_eq!(entries, indexes.len() as u64, "one log entry per batch");
    // Every write landed at the index its outcome reported.
    for i in 0..WRITES {
        let e = server.kv().get(&format!("k/{i:04}")).unwrap().unwrap();
        assert!(indexes.contains(&e.modify_index));
    }
    router.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_writes_are_rejected_before_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (router, server) = start_single(dir.path()).await;
    let before = server.log_metrics();

    let long_key = "k".repeat(MAX_KEY_LEN + 1);
    let err = server.write(set(&long_key, "v")).await.unwrap_err();
    assert!(
        matches!(err, WriteError::Invalid(InvalidRequest::KeyTooLong { .. })),
        "{err:?}"
    );

    let err = server
        .write(Request::KvSet {
            key: "big".into(),
            value: vec![0; MAX_VALUE_LEN + 1],
            flags: 0,
        })
        .await
        .unwrap_err();
    let WriteError::Invalid(reason) = err else {
        panic!("expected Invalid, got {err:?}")
    };
    assert!(reason.is_too_large());

    let err = server
        .write(Request::KvDelete { key: String::new() })
        .await
        .unwrap_err();
    assert_eq!(err, WriteError::Invalid(InvalidRequest::EmptyKey));
    let err = server
        .write(Request::Batch(vec![set("a", "b")]))
        .await
        .unwrap_err();
    assert_eq!(err, WriteError::Invalid(InvalidRequest::BatchNotAllowed));

    assert_eq!(
        server.log_metrics().entries,
        before.entries,
        "nothing was appended"
    );

    // The limits themselves are accepted.
    let max = server
        .write(Request::KvSet {
            key: "k".repeat(MAX_KEY_LEN),
            value: vec![1; MAX_VALUE_LEN],
            flags: 0,
        })
        .await
        .unwrap();
    assert_eq!(max.response, Response::Bool(true));
    assert_eq!(
        server
            .kv()
            .get(&"k".repeat(MAX_KEY_LEN))
            .unwrap()
            .unwrap()
            .value
            .len(),
        MAX_VALUE_LEN
    );
    router.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninitialized_server_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (router, server) = open_single(dir.path()).await;
    let err = server.write(set("a", "b")).await.unwrap_err();
    assert!(
        matches!(
            err,
            WriteError::ForwardToLeader {
                leader_id: None,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(server.last_contact(), None);
    assert!(matches!(
        server.initialize(members(&[2, 3])).await,
        Err(consensus::Error::NotInMembers(_))
    ));
    router.shutdown_all().await;
}
