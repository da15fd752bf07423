//! Tests of the LMDB stores against openraft's contract: its storage conformance suite,
//! and snapshot build/install round trips.

use std::collections::BTreeSet;
use std::path::Path;

use openraft::storage::RaftStateMachine;
use openraft::testing::{StoreBuilder, Suite, log_id};
use openraft::{
    AnyError, Entry, EntryPayload, Membership, RaftSnapshotBuilder, StorageError, StorageIOError,
};
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;

use crate::error::StoreError;
use crate::kv;
use crate::log_store::LogStore;
use crate::sm_db::SmDb;
use crate::state_machine::StateMachine;
use crate::types::{KvEntry, NodeId, Request, TypeConfig};

fn storage_error(e: StoreError) -> StorageError<NodeId> {
    StorageIOError::write(AnyError::new(&e)).into()
}

fn open_sm(dir: &Path) -> Result<(SmDb, StateMachine), StoreError> {
    let db = SmDb::open(&dir.join("sm"))?;
    let sm = StateMachine::open(db.clone(), &dir.join("snapshots"))?;
    Ok((db, sm))
}

struct HeedStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for HeedStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().map_err(|e| storage_error(e.into()))?;
        let log = LogStore::open(&dir.path().join("log")).map_err(storage_error)?;
        let (_, sm) = open_sm(dir.path()).map_err(storage_error)?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_conformance_suite() {
    Suite::test_all(HeedStoreBuilder).unwrap();
}

fn entry(index: u64, payload: EntryPayload<TypeConfig>) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(1, 1, index),
        payload,
    }
}

fn set(key: &str, value: &str) -> EntryPayload<TypeConfig> {
    EntryPayload::Normal(Request::KvSet {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        flags: 9,
    })
}

/// Everything the state machine holds, for comparing two of them.
#[derive(Debug, PartialEq)]
struct Dump {
    entries: Vec<KvEntry>,
    tombstones: Vec<(String, u64)>,
    kv_index: u64,
    applied: Option<openraft::LogId<NodeId>>,
    membership: openraft::StoredMembership<NodeId, crate::ServerNode>,
}

fn dump(db: &SmDb) -> Dump {
    let txn = db.read_txn().unwrap();
    let mut tombstones = Vec::new();
    db.for_each_tombstone(&txn, &mut |k, i| {
        tombstones.push((k.to_owned(), i));
        Ok(())
    })
    .unwrap();
    Dump {
        entries: kv::list(&db.view(&txn), "").unwrap(),
        tombstones,
        kv_index: db.kv_index(&txn).unwrap(),
        applied: db.applied(&txn).unwrap(),
        membership: db.membership(&txn).unwrap(),
    }
}

async fn populated() -> (TempDir, SmDb, StateMachine) {
    let dir = tempfile::tempdir().unwrap();
    let (db, mut sm) = open_sm(dir.path()).unwrap();
    let members: BTreeSet<NodeId> = [1, 2, 3].into();
    let responses = sm
        .apply(vec![
            entry(
                1,
                EntryPayload::Membership(Membership::new(vec![members], ())),
            ),
            entry(2, set("a/1", "x")),
            entry(3, set("a/2", "y")),
            entry(4, set("b", &"z".repeat(10_000))),
            entry(
                5,
                EntryPayload::Normal(Request::KvDelete { key: "a/2".into() }),
            ),
            entry(6, EntryPayload::Blank),
        ])
        .await
        .unwrap();
    assert_eq!(responses.len(), 6);
    (dir, db, sm)
}

#[tokio::test]
async fn snapshot_install_reproduces_state() {
    let (_dir_a, db_a, mut sm_a) = populated().await;
    let snapshot = sm_a
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 1, 6)));

    // Stream the data into a fresh node as openraft does: into a received file.
    let dir_b = tempfile::tempdir().unwrap();
    let (db_b, mut sm_b) = open_sm(dir_b.path()).unwrap();
    {
        // Existing state on the receiver must be replaced, not merged.
        sm_b.apply(vec![entry(1, set("stale", "s"))]).await.unwrap();
    }
    let mut received = sm_b.begin_receiving_snapshot().await.unwrap();
    let mut data = snapshot.snapshot;
    tokio::io::copy(&mut *data, &mut *received).await.unwrap();
    received.shutdown().await.unwrap();
    sm_b.install_snapshot(&snapshot.meta, received)
        .await
        .unwrap();

    assert_eq!(dump(&db_b), dump(&db_a));
    let txn = db_b.read_txn().unwrap();
    assert_eq!(kv::index_for_prefix(&db_b.view(&txn), "a/").unwrap(), 5);
    drop(txn);
    let current = sm_b.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snapshot.meta);

    // The current snapshot survives a restart.
    drop(sm_b);
    drop(db_b);
    let sm_dir = dir_b.path().join("sm");
    let snap_dir = dir_b.path().join("snapshots");
    let reopened_db = reopen(&sm_dir).await;
    let mut reopened = StateMachine::open(reopened_db.clone(), &snap_dir).unwrap();
    let current = reopened.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snapshot.meta);
    assert_eq!(dump(&reopened_db), dump(&db_a));
}

/// Reopens an environment whose handles were just dropped.
async fn reopen(dir: &Path) -> SmDb {
    for _ in 0..100 {
        match SmDb::open(dir) {
            Ok(db) => return db,
            Err(StoreError::Lmdb(heed::Error::EnvAlreadyOpened)) => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("reopen failed: {e}"),
        }
    }
    panic!("environment never closed");
}

#[tokio::test]
async fn truncated_snapshot_is_rejected_and_changes_nothing() {
    let (_dir_a, _db_a, mut sm_a) = populated().await;
    let snapshot = sm_a
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();

    let dir_b = tempfile::tempdir().unwrap();
    let (db_b, mut sm_b) = open_sm(dir_b.path()).unwrap();
    sm_b.apply(vec![entry(1, set("keep", "me"))]).await.unwrap();
    let before = dump(&db_b);

    let mut full = Vec::new();
    let mut data = snapshot.snapshot;
    tokio::io::AsyncReadExt::read_to_end(&mut *data, &mut full)
        .await
        .unwrap();
    let mut received = sm_b.begin_receiving_snapshot().await.unwrap();
    received.write_all(&full[..full.len() - 3]).await.unwrap();
    received.shutdown().await.unwrap();
    assert!(
        sm_b.install_snapshot(&snapshot.meta, received)
            .await
            .is_err()
    );
    assert_eq!(dump(&db_b), before);
    assert!(sm_b.get_current_snapshot().await.unwrap().is_none());
}
