//! Tests of the LMDB stores against openraft's contract: its storage conformance suite,
//! and snapshot build/install round trips.

use std::collections::BTreeSet;
use std::path::Path;

use openraft::storage::RaftStateMachine;
use openraft::testing::{StoreBuilder, Suite, log_id};
use openraft::{
    AnyError, Entry, EntryPayload, Membership, RaftLogReader, RaftSnapshotBuilder, StorageError,
    StorageIOError,
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

const MAP_SIZE: usize = 64 << 20;

fn open_sm(dir: &Path) -> Result<(SmDb, StateMachine), StoreError> {
    let db = SmDb::open(&dir.join("sm"), MAP_SIZE)?;
    let sm = StateMachine::open(db.clone(), &dir.join("snapshots"), MAP_SIZE as u64)?;
    Ok((db, sm))
}

struct HeedStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for HeedStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().map_err(|e| storage_error(e.into()))?;
        let (_, sm) = open_sm(dir.path()).map_err(storage_error)?;
        // Paired as in a server: purges beyond the durable snapshot are deferred on disk.
        let log = LogStore::open(&dir.path().join("log"), MAP_SIZE, sm.durability())
            .map_err(storage_error)?;
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
    reaped_floor: u64,
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
        reaped_floor: db.reaped_floor(&txn).unwrap(),
        applied: db.applied(&txn).unwrap(),
        membership: db.membership(&txn).unwrap(),
    }
}

/// Builds a snapshot of what `sm` applied.
async fn build(sm: &mut StateMachine) -> openraft::Snapshot<TypeConfig> {
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap()
}

/// Streams `data` into a snapshot file received by `sm`, as openraft does.
async fn receive(sm: &mut StateMachine, mut data: Box<tokio::fs::File>) -> Box<tokio::fs::File> {
    let mut received = sm.begin_receiving_snapshot().await.unwrap();
    tokio::io::copy(&mut *data, &mut *received).await.unwrap();
    received.shutdown().await.unwrap();
    received
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
            entry(
                7,
                EntryPayload::Normal(Request::KvDelete { key: "b".into() }),
            ),
            entry(
                8,
                EntryPayload::Normal(Request::KvReapTombstones { up_to_index: 5 }),
            ),
        ])
        .await
        .unwrap();
    assert_eq!(responses.len(), 8);
    (dir, db, sm)
}

#[tokio::test]
async fn snapshot_install_reproduces_state() {
    let (_dir_a, db_a, mut sm_a) = populated().await;
    let snapshot = build(&mut sm_a).await;
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 1, 8)));

    // Stream the data into a fresh node as openraft does: into a received file.
    let dir_b = tempfile::tempdir().unwrap();
    let (db_b, mut sm_b) = open_sm(dir_b.path()).unwrap();
    {
        // Existing state on the receiver must be replaced, not merged.
        sm_b.apply(vec![entry(1, set("stale", "s"))]).await.unwrap();
    }
    let received = receive(&mut sm_b, snapshot.snapshot).await;
    sm_b.install_snapshot(&snapshot.meta, received)
        .await
        .unwrap();

    assert_eq!(dump(&db_b), dump(&db_a));
    assert_eq!(dump(&db_b).reaped_floor, 5);
    assert_eq!(dump(&db_b).tombstones, vec![("b".to_string(), 7)]);
    let txn = db_b.read_txn().unwrap();
    // a/2's tombstone was reaped; the floor keeps the prefix's index where it was.
    assert_eq!(kv::index_for_prefix(&db_b.view(&txn), "a/").unwrap(), 5);
    drop(txn);
    let current = sm_b.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snapshot.meta);

    // The current snapshot survives a restart.
    drop(sm_b);
    drop(db_b);
    let sm_dir = dir_b.path().join("sm");
    let snap_dir = dir_b.path().join("snapshots");
    let reopened_db = retry_open(|| SmDb::open(&sm_dir, MAP_SIZE)).await;
    let mut reopened = StateMachine::open(reopened_db.clone(), &snap_dir, MAP_SIZE as u64).unwrap();
    let current = reopened.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snapshot.meta);
    assert_eq!(dump(&reopened_db), dump(&db_a));
}

#[tokio::test]
async fn truncated_snapshot_is_rejected_and_changes_nothing() {
    let (_dir_a, _db_a, mut sm_a) = populated().await;
    let snapshot = build(&mut sm_a).await;

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

/// Opens a store whose previous instance was just dropped, retrying while LMDB still
/// holds the environment.
pub(crate) async fn retry_open<T>(mut open: impl FnMut() -> Result<T, StoreError>) -> T {
    for _ in 0..100 {
        match open() {
            Ok(store) => return store,
            Err(StoreError::Lmdb(heed::Error::EnvAlreadyOpened)) => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("reopen failed: {e}"),
        }
    }
    panic!("environment never closed");
}

/// Reopens the state machine and the log of `dir`, paired as in a server.
async fn reopen_pair(dir: &Path) -> (SmDb, StateMachine, LogStore) {
    let (db, sm) = retry_open(|| open_sm(dir)).await;
    let log = retry_open(|| LogStore::open(&dir.join("log"), MAP_SIZE, sm.durability())).await;
    (db, sm, log)
}

fn sets(range: std::ops::RangeInclusive<u64>) -> Vec<Entry<TypeConfig>> {
    range
        .map(|i| entry(i, set(&format!("k/{i:02}"), "v")))
        .collect()
}

/// A node whose log holds entries 1..=20 (committed up to 15, purged up to 5), whose state
/// machine applied 1..=10, with a snapshot up to 10.
async fn follower_before_install(dir: &Path) -> (SmDb, StateMachine, LogStore) {
    use openraft::storage::{RaftLogStorage, RaftLogStorageExt};

    let (db, mut sm) = open_sm(dir).unwrap();
    let mut log = LogStore::open(&dir.join("log"), MAP_SIZE, sm.durability()).unwrap();
    log.blocking_append(sets(1..=15)).await.unwrap();
    log.save_committed(Some(log_id(1, 1, 15))).await.unwrap();
    // Persists the committed id too.
    log.blocking_append(sets(16..=20)).await.unwrap();
    sm.apply(sets(1..=10)).await.unwrap();
    build(&mut sm).await;
    log.purge(log_id(1, 1, 5)).await.unwrap();
    (db, sm, log)
}

/// A snapshot of a state machine that applied 1..=`last`, as received from a leader.
async fn leader_snapshot(last: u64) -> (TempDir, openraft::Snapshot<TypeConfig>) {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut sm) = open_sm(dir.path()).unwrap();
    sm.apply(sets(1..=last)).await.unwrap();
    let snapshot = build(&mut sm).await;
    (dir, snapshot)
}

/// Openraft purges the log up to a snapshot while the state machine is still installing
/// it. A crash in that window must leave a node that starts: the purge may not reach the
/// disk before the snapshot does.
#[tokio::test]
async fn crash_while_installing_a_snapshot_leaves_a_startable_node() {
    use openraft::storage::{RaftLogStorage, StorageHelper};

    let dir = tempfile::tempdir().unwrap();
    {
        let (_db, _sm, mut log) = follower_before_install(dir.path()).await;
        // A snapshot up to 30 is being installed: openraft purges the log at once.
        log.purge(log_id(1, 1, 30)).await.unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 30)));
        assert_eq!(state.last_log_id, Some(log_id(1, 1, 30)));
        assert!(log.try_get_log_entries(0..100).await.unwrap().is_empty());
        // The process dies here: the install never commits.
    }

    let (db, mut sm, mut log) = reopen_pair(dir.path()).await;
    let state = StorageHelper::new(&mut log, &mut sm)
        .get_initial_state()
        .await
        .expect("the node starts after the crash");
    // The committed entries were re-applied from the log that is still there.
    assert_eq!(state.committed, Some(log_id(1, 1, 15)));
    assert_eq!(dump(&db).applied, Some(log_id(1, 1, 15)));
    let log_state = log.get_log_state().await.unwrap();
    assert_eq!(log_state.last_purged_log_id, Some(log_id(1, 1, 5)));
    assert_eq!(log_state.last_log_id, Some(log_id(1, 1, 20)));
}

/// After a deferred purge, an append right after the snapshot would leave a hole on disk;
/// it waits until the snapshot is durable, and then the purge reaches the disk with it.
#[tokio::test]
async fn append_after_a_deferred_purge_waits_for_the_snapshot() {
    use openraft::storage::{RaftLogStorage, RaftLogStorageExt};

    let dir = tempfile::tempdir().unwrap();
    let (_leader_dir, snapshot) = leader_snapshot(30).await;
    {
        let (_db, mut sm, mut log) = follower_before_install(dir.path()).await;
        log.purge(log_id(1, 1, 30)).await.unwrap();
        let append = tokio::spawn(async move {
            log.blocking_append(sets(31..=32)).await.unwrap();
            log
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!append.is_finished(), "appended past a hole on disk");

        let received = receive(&mut sm, snapshot.snapshot).await;
        sm.install_snapshot(&snapshot.meta, received).await.unwrap();

        let mut log = tokio::time::timeout(std::time::Duration::from_secs(5), append)
            .await
            .expect("the append resumes once the snapshot is durable")
            .unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 30)));
        assert_eq!(state.last_log_id, Some(log_id(1, 1, 32)));
    }

    let (db, _sm, mut log) = reopen_pair(dir.path()).await;
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 30)));
    assert_eq!(state.last_log_id, Some(log_id(1, 1, 32)));
    let indexes: Vec<u64> = log
        .try_get_log_entries(0..100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.log_id.index)
        .collect();
    assert_eq!(indexes, vec![31, 32]);
    assert_eq!(dump(&db).applied, Some(log_id(1, 1, 30)));
}

/// A crash between the install's commit and the rename of its file leaves an older
/// current snapshot; it is rebuilt at open, so it covers what openraft purged.
#[tokio::test]
async fn snapshot_older_than_the_installed_state_is_rebuilt_at_open() {
    let (_leader_dir, snapshot) = leader_snapshot(6).await;
    let dir = tempfile::tempdir().unwrap();
    {
        let (db, mut sm) = open_sm(dir.path()).unwrap();
        sm.apply(sets(1..=1)).await.unwrap();
        build(&mut sm).await;
        // The install's transaction commits; the process dies before the rename.
        let mut file = (*snapshot.snapshot).into_std().await;
        std::io::Seek::rewind(&mut file).unwrap();
        crate::snapshot::load_into(&db, &mut std::io::BufReader::new(file), &snapshot.meta)
            .unwrap();
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta.last_log_id, Some(log_id(1, 1, 1)));
    }
    let (db, mut sm) = retry_open(|| open_sm(dir.path())).await;
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta.last_log_id, Some(log_id(1, 1, 6)));
    assert_eq!(dump(&db).applied, Some(log_id(1, 1, 6)));
}

/// A received snapshot larger than the state machine's map is refused before it is
/// copied (a bad chunk offset makes a huge sparse file).
#[tokio::test]
async fn oversized_snapshot_is_refused_before_copying() {
    let (_leader_dir, snapshot) = leader_snapshot(3).await;
    let dir = tempfile::tempdir().unwrap();
    let (db, mut sm) = open_sm(dir.path()).unwrap();
    sm.apply(sets(1..=1)).await.unwrap();
    let before = dump(&db);

    let received = receive(&mut sm, snapshot.snapshot).await;
    // A valid snapshot followed by a hole up to past the limit.
    received.set_len(MAP_SIZE as u64 + 1).await.unwrap();
    let err = sm
        .install_snapshot(&snapshot.meta, received)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("exceeds the limit"), "{err}");
    assert_eq!(dump(&db), before);

    // Data announced as another snapshot is refused too.
    let (_other_dir, other) = leader_snapshot(4).await;
    let received = receive(&mut sm, other.snapshot).await;
    assert!(sm.install_snapshot(&snapshot.meta, received).await.is_err());
    assert_eq!(dump(&db), before);
}

/// Every row of every catalog table.
fn catalog_rows(db: &SmDb) -> Vec<(crate::catalog::tables::CatalogTable, String, Vec<u8>)> {
    use crate::catalog::tables::CatalogTable;
    let txn = db.read_txn().unwrap();
    let mut rows = Vec::new();
    for table in CatalogTable::ALL {
        db.catalog_scan(&txn, table, "", &mut |key, value| {
            rows.push((table, key.to_owned(), value.to_vec()));
            Ok(std::ops::ControlFlow::Continue(()))
        })
        .unwrap();
    }
    rows
}

#[tokio::test]
async fn snapshots_carry_the_catalog() {
    use crate::catalog::{CheckEntry, CheckStatus, NodeRegistration, ServiceEntry};

    let dir_a = tempfile::tempdir().unwrap();
    let (db_a, mut sm_a) = open_sm(dir_a.path()).unwrap();
    let sync = Request::CatalogSync(NodeRegistration {
        node: "n1".into(),
        address: "10.0.0.1".into(),
        services: vec![ServiceEntry {
            service: "web".into(),
            tags: vec!["v1".into()],
            port: 80,
            ..ServiceEntry::default()
        }],
        checks: vec![CheckEntry {
            check_id: "web-ok".into(),
            name: "web".into(),
            status: CheckStatus::Passing,
            notes: String::new(),
            output: "ok".into(),
            service_id: "web".into(),
            kind: "ttl".into(),
        }],
        ..NodeRegistration::default()
    });
    sm_a.apply(vec![
        entry(1, set("k", "v")),
        entry(2, EntryPayload::Normal(sync)),
        entry(
            3,
            EntryPayload::Normal(Request::CatalogSetNodeHealth {
                node: "n2".into(),
                address: "10.0.0.2".into(),
                status: CheckStatus::Critical,
                output: "dead".into(),
            }),
        ),
    ])
    .await
    .unwrap();
    let rows = catalog_rows(&db_a);
    assert!(rows.len() > 5, "{rows:?}");
    let snapshot = build(&mut sm_a).await;

    let dir_b = tempfile::tempdir().unwrap();
    let (db_b, mut sm_b) = open_sm(dir_b.path()).unwrap();
    sm_b.apply(vec![entry(
        1,
        EntryPayload::Normal(Request::CatalogDeregisterNode { node: "x".into() }),
    )])
    .await
    .unwrap();
    let received = receive(&mut sm_b, snapshot.snapshot).await;
    sm_b.install_snapshot(&snapshot.meta, received)
        .await
        .unwrap();
    assert_eq!(catalog_rows(&db_b), rows);
    assert_eq!(dump(&db_b), dump(&db_a));
}

fn once(id: u128, at_ms: u64, request: EntryPayload<TypeConfig>) -> EntryPayload<TypeConfig> {
    let EntryPayload::Normal(request) = request else {
        unreachable!("only commands are wrapped")
    };
    EntryPayload::Normal(Request::Once {
        id,
        at_ms,
        request: Box::new(request),
    })
}

fn cas(key: &str, value: &str, index: u64) -> EntryPayload<TypeConfig> {
    EntryPayload::Normal(Request::KvCas {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        flags: 0,
        index,
    })
}

#[tokio::test]
async fn a_once_only_write_sent_again_is_applied_once_and_gets_the_first_answer() {
    use crate::types::Response;

    let window = crate::ONCE_WINDOW.as_millis() as u64;
    let dir = tempfile::tempdir().unwrap();
    let (db, mut sm) = open_sm(dir.path()).unwrap();
    // A CAS that creates the key, its copy (which as a second CAS would fail), and
    // another write in between that a re-applied copy would overwrite.
    let responses = sm
        .apply(vec![
            entry(1, once(7, 1_000, cas("k", "first", 0))),
            entry(2, set("k", "other")),
            entry(3, once(7, 2_000, cas("k", "first", 0))),
            entry(4, once(8, 2_000, cas("k", "second", 0))),
        ])
        .await
        .unwrap();
    assert_eq!(
        responses,
        [
            Response::Bool(true),
            Response::Bool(true),
            Response::Bool(true),
            Response::Bool(false),
        ]
    );
    let entry_k = |db: &SmDb| {
        let txn = db.read_txn().unwrap();
        let value = kv::KvView::entry(&db.view(&txn), "k").unwrap().unwrap();
        (String::from_utf8(value.value).unwrap(), value.modify_index)
    };
    assert_eq!(entry_k(&db), ("other".to_string(), 2));

    // Snapshots carry the remembered ids.
    let snapshot = build(&mut sm).await;
    let dir_b = tempfile::tempdir().unwrap();
    let (db_b, mut sm_b) = open_sm(dir_b.path()).unwrap();
    let received = receive(&mut sm_b, snapshot.snapshot).await;
    sm_b.install_snapshot(&snapshot.meta, received)
        .await
        .unwrap();
    let again = sm_b
        .apply(vec![entry(5, once(7, 3_000, cas("k", "first", 0)))])
        .await
        .unwrap();
    assert_eq!(again, [Response::Bool(true)]);
    assert_eq!(entry_k(&db_b), ("other".to_string(), 2));

    // Past the window the id is forgotten: the copy is a new write (a failing CAS).
    let late = sm_b
        .apply(vec![entry(
            6,
            once(7, 1_000 + window + 1, cas("k", "first", 0)),
        )])
        .await
        .unwrap();
    assert_eq!(late, [Response::Bool(false)]);
}
