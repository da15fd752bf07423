//! Consul KV transactions through Raft: atomic commit and rollback, read-only
//! transactions, limits, and transactions coalesced with other writes.

use consensus::{
    InvalidRequest, MAX_TXN_OPS, RaftServer, ReadError, Request, Response, TxnOp, TxnOutcome,
    WriteError,
};

use crate::util::start_single;

fn set(key: &str, value: &str) -> TxnOp {
    TxnOp::Set {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        flags: 0,
    }
}

async fn txn(server: &RaftServer, ops: Vec<TxnOp>) -> (u64, TxnOutcome) {
    let outcome = server.write(Request::Txn(ops)).await.expect("txn write");
    match outcome.response {
        Response::Txn(t) => (outcome.index, t),
        other => panic!("expected a txn outcome, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_applies_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (router, server) = start_single(dir.path()).await;
    let kv = server.kv();

    let (first, outcome) = txn(&server, vec![set("app/a", "1"), set("app/b", "2")]).await;
    let TxnOutcome::Committed(results) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(results.len(), 2);
    assert!(
        results
            .iter()
            .all(|r| r.value_omitted && r.entry.value.is_empty())
    );
    assert!(results.iter().all(|r| r.entry.modify_index == first));

    let (second, outcome) = txn(
        &server,
        vec![
            TxnOp::Cas {
                key: "app/a".into(),
                value: b"3".to_vec(),
                flags: 4,
                index: first,
            },
            TxnOp::Delete {
                key: "app/b".into(),
            },
            TxnOp::Get {
                key: "app/a".into(),
            },
        ],
    )
    .await;
    let TxnOutcome::Committed(results) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(results[1].entry.value, b"3");
    assert_eq!(
        (results[1].entry.create_index, results[1].entry.modify_index),
        (first, second)
    );
    assert!(kv.get("app/b").unwrap().is_none());

    // A failing operation at the end undoes the writes before it.
    let before = (
        kv.list("").unwrap(),
        kv.kv_index().unwrap(),
        kv.index_for_prefix("app/").unwrap(),
        kv.index_for_prefix("new/").unwrap(),
    );
    let (_, outcome) = txn(
        &server,
        vec![
            set("new/x", "1"),
            TxnOp::CheckIndex {
                key: "app/a".into(),
                index: first,
            },
            TxnOp::DeleteTree {
                prefix: "app/".into(),
            },
        ],
    )
    .await;
    let TxnOutcome::RolledBack(errors) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].op_index, 1);
    assert_eq!(
        errors[0].what,
        format!("failed index check for key \"app/a\", current modify index {second} != {first}")
    );
    let after = (
        kv.list("").unwrap(),
        kv.kv_index().unwrap(),
        kv.index_for_prefix("app/").unwrap(),
        kv.index_for_prefix("new/").unwrap(),
    );
    assert_eq!(after, before, "a rolled-back txn changes no entry or index");

    // Read-only transactions are served locally.
    let outcome = kv
        .read_txn(&[
            TxnOp::GetTree {
                prefix: "app/".into(),
            },
            TxnOp::CheckNotExists {
                key: "new/x".into(),
            },
        ])
        .unwrap();
    let TxnOutcome::Committed(results) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(results.len(), 1);
    assert!(!results[0].value_omitted);
    let outcome = kv.read_txn(&[TxnOp::Get { key: "nope".into() }]).unwrap();
    assert!(
        matches!(&outcome, TxnOutcome::RolledBack(e) if e[0].what == "key \"nope\" doesn't exist")
    );
    assert!(matches!(
        kv.read_txn(&[TxnOp::Get { key: "a".into() }, set("a", "b")]),
        Err(ReadError::Invalid(InvalidRequest::NotReadOnly {
            op_index: 1
        }))
    ));

    // Limits are checked before anything is proposed.
    let applied = kv.applied_index().unwrap();
    let too_many = vec![TxnOp::Get { key: "k".into() }; MAX_TXN_OPS + 1];
    let err = server.write(Request::Txn(too_many)).await.unwrap_err();
    assert!(matches!(
        err,
        WriteError::Invalid(ref e @ InvalidRequest::TooManyTxnOps { .. }) if e.is_too_large()
    ));
    assert_eq!(kv.applied_index().unwrap(), applied);
    router.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txns_share_batches_with_other_writes_and_keep_their_own_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let (router, server) = start_single(dir.path()).await;
    server
        .write(Request::KvSet {
            key: "warm-up".into(),
            value: vec![],
            flags: 0,
        })
        .await
        .unwrap();

    const WRITES: usize = 300;
    let tasks: Vec<_> = (0..WRITES)
        .map(|i| {
            let server = server.clone();
            tokio::spawn(async move {
                let request = match i % 3 {
                    // Commits.
                    0 => Request::Txn(vec![
                        set(&format!("ok/{i}"), "v"),
                        TxnOp::CheckNotExists {
                            key: format!("bad/{i}"),
                        },
                    ]),
                    // Rolls back: its set must not appear.
                    1 => Request::Txn(vec![
                        set(&format!("bad/{i}"), "v"),
                        TxnOp::Get {
                            key: "missing".into(),
                        },
                    ]),
                    _ => Request::KvSet {
                        key: format!("plain/{i}"),
                        value: b"v".to_vec(),
                        flags: 0,
                    },
                };
                (i, server.write(request).await.unwrap())
            })
        })
        .collect();
    let mut indexes = std::collections::BTreeSet::new();
    for task in tasks {
        let (i, outcome) = task.await.unwrap();
        indexes.insert(outcome.index);
        match (i % 3, &outcome.response) {
            (0, Response::Txn(TxnOutcome::Committed(r))) => assert_eq!(r.len(), 1),
            (1, Response::Txn(TxnOutcome::RolledBack(e))) => {
                assert_eq!(e.len(), 1);
                assert_eq!(e[0].op_index, 1);
            }
            (2, Response::Bool(true)) => {}
            (kind, other) => panic!("write {i} of kind {kind} got {other:?}"),
        }
    }
    assert!(
        indexes.len() < WRITES / 2,
        "{} log entries for {WRITES} writes: transactions were not batched",
        indexes.len()
    );
    let kv = server.kv();
    assert_eq!(kv.keys("ok/", None).unwrap().len(), WRITES / 3);
    assert_eq!(kv.keys("plain/", None).unwrap().len(), WRITES / 3);
    assert!(kv.keys("bad/", None).unwrap().is_empty());
    router.shutdown_all().await;
}
