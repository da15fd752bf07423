//! The replicated state machine on LMDB (openraft's `RaftStateMachine`).
//!
//! Each `apply` call writes its whole batch of entries in one write transaction and
//! commits once, so the state machine is durable when `apply` returns and the KV state,
//! the last applied log id and the membership always move together. LMDB work runs on
//! tokio's blocking pool. Snapshots are handled by [`crate::snapshot`].
//!
//! Once a transaction commits, the keys it changed are handed to the [`WatchRegistry`],
//! which wakes the blocking queries watching them; installing a snapshot wakes all.

use std::path::Path;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot,
    StorageError, StorageIOError, StoredMembership,
};
use tokio::sync::watch;

use crate::catalog;
use crate::error::StoreError;
use crate::kv;
use crate::sm_db::{SmDb, Tables};
use crate::snapshot::{Durability, Meta, SnapshotDir};
use crate::types::{NodeId, Request, Response, ServerNode, TypeConfig};
use crate::watch::{Changes, WatchRegistry};

/// The state machine; owned by openraft's state machine worker.
pub(crate) struct StateMachine {
    db: SmDb,
    snapshots: Arc<SnapshotDir>,
    watches: Arc<WatchRegistry>,
}

/// Builds a snapshot from a consistent read transaction of the state machine.
pub(crate) struct SnapshotBuilder {
    db: SmDb,
    snapshots: Arc<SnapshotDir>,
}

impl StateMachine {
    /// Opens the state machine over `db`, keeping snapshots in `snapshot_dir` and
    /// refusing to install snapshots larger than `max_snapshot_bytes`.
    ///
    /// If the current snapshot file is older than the last snapshot installed into the
    /// state machine (a crash between the install's commit and the file's rename), a
    /// snapshot is rebuilt from the state machine first: openraft purges the log up to
    /// the installed snapshot, so an older snapshot would leave entries that no snapshot
    /// and no log holds, and a leader would send that stale snapshot forever.
    pub(crate) fn open(
        db: SmDb,
        snapshot_dir: &Path,
        max_snapshot_bytes: u64,
    ) -> Result<Self, StoreError> {
        let snapshots = SnapshotDir::open(snapshot_dir, max_snapshot_bytes)?;
        let installed = {
            let txn = db.read_txn()?;
            db.installed_snapshot(&txn)?
        };
        let current = snapshots.current_meta().and_then(|m| m.last_log_id);
        if installed.is_some() && current < installed {
            tracing::warn!(
                ?installed,
                ?current,
                "the current snapshot is older than the installed one; rebuilding it"
            );
            snapshots.build(&db)?;
        }
        Ok(StateMachine {
            db,
            snapshots: Arc::new(snapshots),
            watches: Arc::new(WatchRegistry::default()),
        })
    }

    /// The registry of blocking-query watchers this state machine wakes.
    pub(crate) fn watches(&self) -> Arc<WatchRegistry> {
        self.watches.clone()
    }

    /// Follows what this state machine has made durable (see [`Durability`]).
    pub(crate) fn durability(&self) -> watch::Receiver<Durability> {
        self.snapshots.durability()
    }
}

/// Applies `entries` in one write transaction; one response per entry, in order. Wakes
/// the watchers of the changed keys once the transaction has committed.
fn apply_batch(
    db: &SmDb,
    watches: &WatchRegistry,
    entries: &[Entry<TypeConfig>],
) -> Result<Vec<Response>, StoreError> {
    let Some(last) = entries.last() else {
        return Ok(Vec::new());
    };
    let mut txn = db.env.write_txn()?;
    let mut responses = Vec::with_capacity(entries.len());
    let mut changes = Changes::default();
    for entry in entries {
        let response = match &entry.payload {
            EntryPayload::Blank => Response::Empty,
            EntryPayload::Normal(request) => apply_request(
                &mut db.tables(&mut txn),
                entry.log_id.index,
                request,
                &mut changes,
            )?,
            EntryPayload::Membership(membership) => {
                let stored = StoredMembership::new(Some(entry.log_id), membership.clone());
                db.set_membership(&mut txn, &stored)?;
                Response::Empty
            }
        };
        responses.push(response);
    }
    db.set_applied(&mut txn, &Some(last.log_id))?;
    txn.commit()?;
    watches.notify(&changes);
    Ok(responses)
}

/// Applies one command (KV or catalog; a batch element by element), made by the log
/// entry at `index`.
fn apply_request(
    tables: &mut Tables<'_, '_>,
    index: u64,
    request: &Request,
    changes: &mut Changes,
) -> Result<Response, StoreError> {
    match request {
        Request::Batch(requests) => {
            let mut responses = Vec::with_capacity(requests.len());
            for r in requests {
                responses.push(match r {
                    Request::Batch(_) => Response::Rejected("nested batch".into()),
                    single => apply_request(tables, index, single, changes)?,
                });
            }
            Ok(Response::Batch(responses))
        }
        Request::Once { id, at_ms, request } => match request.as_ref() {
            Request::Batch(_) | Request::Once { .. } => Ok(Response::Rejected(
                "a once-only write holds a batch or another".into(),
            )),
            single => tables.once(*id, *at_ms, |tables| {
                apply_request(tables, index, single, changes)
            }),
        },
        single if single.is_catalog() => catalog::apply(tables, index, single, changes),
        single => kv::apply(tables, index, single, changes),
    }
}

/// Runs blocking LMDB or file work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

fn sm_read_error(e: StoreError) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(AnyError::new(&e)).into()
}

fn sm_write_error(e: StoreError) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}

fn snapshot_read_error(meta: Option<&Meta>, e: StoreError) -> StorageError<NodeId> {
    StorageIOError::read_snapshot(meta.map(Meta::signature), AnyError::new(&e)).into()
}

fn snapshot_write_error(meta: Option<&Meta>, e: StoreError) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(meta.map(Meta::signature), AnyError::new(&e)).into()
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let (db, snapshots) = (self.db.clone(), self.snapshots.clone());
        let (meta, file) = blocking(move || snapshots.build(&db))
            .await
            .map_err(|e| snapshot_write_error(None, e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, ServerNode>), StorageError<NodeId>>
    {
        let read = || -> Result<_, StoreError> {
            let txn = self.db.read_txn()?;
            Ok((self.db.applied(&txn)?, self.db.membership(&txn)?))
        };
        read().map_err(sm_read_error)
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let (db, watches) = (self.db.clone(), self.watches.clone());
        blocking(move || apply_batch(&db, &watches, &entries))
            .await
            .map_err(sm_write_error)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<tokio::fs::File>, StorageError<NodeId>> {
        let path = self
            .snapshots
            .receive_path()
            .map_err(|e| snapshot_write_error(None, e))?;
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| snapshot_write_error(None, e.into()))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError<NodeId>> {
        let mut file = (*snapshot).into_std().await;
        let (db, snapshots, owned_meta) = (self.db.clone(), self.snapshots.clone(), meta.clone());
        let result = blocking(move || snapshots.install(&db, &mut file, &owned_meta))
            .await
            .map_err(|e| snapshot_write_error(Some(meta), e));
        // Even a failed install may have committed the new state before failing.
        self.watches.notify_all();
        result
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let current = self
            .snapshots
            .current()
            .map_err(|e| snapshot_read_error(None, e))?;
        Ok(current.map(|(meta, file)| Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        }))
    }
}
