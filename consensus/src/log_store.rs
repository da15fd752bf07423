//! The Raft log on LMDB, written by one thread with group commit.
//!
//! # Layout
//! The environment `<data>/log` holds two tables: `entries` (big-endian log index →
//! postcard-encoded `Entry`) and `meta` (`vote`, `committed`, `purged`). LMDB runs with
//! its default flags, so a commit returns only after the data and the meta page are on
//! disk.
//!
//! # Group commit
//! LMDB allows one write transaction at a time, bound to the thread that opened it. A
//! dedicated writer thread owns all write transactions. Every mutation (append, truncate,
//! purge, save vote) is a request on a channel; the writer takes the first request, then
//! drains every request already queued, applies them in order in ONE transaction, commits
//! once (one fsync for all of them) and only then answers each request. Saving the
//! committed log id is not a request: the latest value waits in a slot that the writer
//! persists with its next transaction (it is only a restart hint, and the state machine
//! is durable on its own), so it never costs an fsync of its own.
//!
//! # Why `append` waits for the commit
//! The storage contract lets `append` return before the entries are durable (they must
//! only be readable) and report durability later through the callback. Openraft 0.9.25
//! does not use that freedom: `RaftCore::append_to_log` awaits the callback right after
//! `append` returns, and the core issues log I/O from a single task. So the log store
//! never sees two appends at once from the core, and returning early would only require
//! an in-memory overlay of unflushed entries without batching anything. `append`
//! therefore waits for the commit, after which the entries are both readable and
//! durable, and then calls the callback.
//!
//! # Purging behind a durable snapshot
//! Openraft purges the log up to a snapshot as soon as it has decided to install it, while
//! the state machine worker is still installing it (`PurgeLog` has no wait condition).
//! Committing that purge at once would leave, after a crash in that window, a state
//! machine at its old applied index and a log that starts after the snapshot: nothing
//! could bring the state machine forward and openraft could not start. So the store
//! reports the purge to openraft at once (`get_log_state`, reads below the purge point
//! return nothing) but deletes entries and records the purge point on disk only up to the
//! last snapshot that is durable, as published by the state machine
//! ([`Durability`]); a snapshot is only published once everything it covers is durably
//! applied. The rest of the purge is carried out with the next append or purge once the
//! snapshot is durable. The entries on disk therefore always start right after the
//! recorded purge point, which never passes the durable snapshot, and a restart after a
//! crash at any point finds either the old state (log entries still there to re-apply)
//! or the installed one.
//!
//! One case must wait: an append that would leave a hole after the entries still on disk
//! (openraft appends right after the snapshot). The append then waits until the
//! snapshot is durable (or its installation failed), so the entries on disk stay
//! contiguous. Purge itself never waits, so the core always sees an install error.
//!
//! Under openraft 0.9 batching comes from above: a follower gets many entries per
//! AppendEntries and writes them in one transaction, and on the leader the server
//! coalesces concurrent client writes into one log entry (see `proposer`). The writer
//! still merges whatever is queued (a vote with an append, a purge with the next append).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use heed::byteorder::BigEndian;
use heed::types::{Bytes, Str, U64};
use heed::{Database, Env, RoTxn, WithoutTls};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, LogState, OptionalSend, RaftLogReader, StorageError, StorageIOError,
    Vote,
};
use tokio::sync::{oneshot, watch};

use crate::error::StoreError;
use crate::lmdb::open_env;
use crate::snapshot::Durability;
use crate::types::{MAX_APPEND_BYTES, NodeId, TypeConfig};

const META_VOTE: &str = "vote";
const META_COMMITTED: &str = "committed";
const META_PURGED: &str = "purged";

/// Most requests merged into one transaction.
const MAX_REQUESTS_PER_COMMIT: usize = 4096;

/// Counters of the log writer, for observing group commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStoreMetrics {
    /// Write transactions committed (each is one durable commit).
    pub commits: u64,
    /// Requests (appends, truncates, purges, vote saves) carried by those commits.
    pub requests: u64,
    /// Log entries appended.
    pub entries: u64,
    /// Encoded bytes of the log entries appended.
    pub bytes: u64,
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    requests: AtomicU64,
    entries: AtomicU64,
    bytes: AtomicU64,
}

/// Reads the writer's counters.
#[derive(Clone, Default)]
pub(crate) struct LogMetricsHandle(Arc<Counters>);

impl LogMetricsHandle {
    pub(crate) fn get(&self) -> LogStoreMetrics {
        LogStoreMetrics {
            commits: self.0.commits.load(Ordering::Relaxed),
            requests: self.0.requests.load(Ordering::Relaxed),
            entries: self.0.entries.load(Ordering::Relaxed),
            bytes: self.0.bytes.load(Ordering::Relaxed),
        }
    }
}

#[derive(Clone)]
struct LogDb {
    env: Env<WithoutTls>,
    entries: Database<U64<BigEndian>, Bytes>,
    meta: Database<Str, Bytes>,
}

impl LogDb {
    fn open(dir: &Path, map_size: usize) -> Result<Self, StoreError> {
        let env = open_env(dir, 2, map_size)?;
        let mut txn = env.write_txn()?;
        let entries = env.create_database(&mut txn, Some("entries"))?;
        let meta = env.create_database(&mut txn, Some("meta"))?;
        txn.commit()?;
        Ok(LogDb { env, entries, meta })
    }

    fn meta_value<T: serde::de::DeserializeOwned>(
        &self,
        txn: &RoTxn,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        match self.meta.get(txn, key)? {
            Some(bytes) => Ok(Some(postcard::from_bytes(bytes)?)),
            None => Ok(None),
        }
    }

    /// Log id of the last stored entry.
    fn last_log_id(&self) -> Result<Option<LogId<NodeId>>, StoreError> {
        let txn = self.env.read_txn()?;
        match self.entries.last(&txn)? {
            // An entry is encoded as (log_id, payload): its prefix is the log id.
            Some((_, bytes)) => Ok(Some(postcard::take_from_bytes(bytes)?.0)),
            None => Ok(None),
        }
    }

    /// Entries in `range` at or above `floor` (the first index not purged), stopping
    /// before the encoded entries exceed `max_bytes` (at least one entry is returned).
    fn read_range<RB: RangeBounds<u64>>(
        &self,
        range: RB,
        floor: u64,
        max_bytes: usize,
    ) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        let range = above_floor(&range, floor);
        let txn = self.env.read_txn()?;
        let mut out = Vec::new();
        let mut total = 0usize;
        for item in self.entries.range(&txn, &range)? {
            let (_, bytes) = item?;
            total = total.saturating_add(bytes.len());
            if !out.is_empty() && total > max_bytes {
                break;
            }
            out.push(postcard::from_bytes(bytes)?);
        }
        Ok(out)
    }
}

/// `range` without the indexes below `floor`.
fn above_floor<RB: RangeBounds<u64>>(range: &RB, floor: u64) -> (Bound<u64>, Bound<u64>) {
    let start = match range.start_bound() {
        Bound::Included(&s) => Bound::Included(s.max(floor)),
        Bound::Excluded(&s) if s >= floor => Bound::Excluded(s),
        Bound::Excluded(_) | Bound::Unbounded => Bound::Included(floor),
    };
    (start, range.end_bound().cloned())
}

type Reply = oneshot::Sender<Result<(), String>>;

/// A mutation for the writer thread.
enum Op {
    Append {
        entries: Vec<(u64, Vec<u8>)>,
        reply: Reply,
    },
    Truncate {
        since: u64,
        reply: Reply,
    },
    Purge {
        upto: u64,
        encoded_id: Vec<u8>,
        reply: Reply,
    },
    SaveVote {
        encoded: Vec<u8>,
        reply: Reply,
    },
}

impl Op {
    fn into_reply(self) -> Reply {
        match self {
            Op::Append { reply, .. }
            | Op::Truncate { reply, .. }
            | Op::Purge { reply, .. }
            | Op::SaveVote { reply, .. } => reply,
        }
    }
}

/// The latest committed log id, waiting to be written with the next transaction.
type CommittedSlot = Arc<Mutex<Option<Vec<u8>>>>;

fn writer_loop(
    db: LogDb,
    ops: mpsc::Receiver<Op>,
    committed: CommittedSlot,
    counters: Arc<Counters>,
) {
    while let Ok(first) = ops.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_REQUESTS_PER_COMMIT {
            match ops.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let pending_committed = take_slot(&committed);
        let result = commit_batch(&db, &batch, pending_committed.as_deref());
        match &result {
            Ok((appended, bytes)) => {
                counters.commits.fetch_add(1, Ordering::Relaxed);
                counters
                    .requests
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                counters.entries.fetch_add(*appended, Ordering::Relaxed);
                counters.bytes.fetch_add(*bytes, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!(error = %e, "log write transaction failed");
                // Keep the committed id for the next attempt unless a newer one arrived.
                if let Some(bytes) = pending_committed {
                    let mut slot = committed.lock().unwrap_or_else(|p| p.into_inner());
                    slot.get_or_insert(bytes);
                }
            }
        }
        let result = result.map(|_| ()).map_err(|e| e.to_string());
        for op in batch {
            // The requester may have gone away; nothing is waiting for the answer then.
            let _ = op.into_reply().send(result.clone());
        }
    }
    // Every sender is gone: persist the last committed id before the thread ends.
    if let Some(bytes) = take_slot(&committed)
        && let Err(e) = commit_batch(&db, &[], Some(&bytes))
    {
        tracing::warn!(error = %e, "could not save the committed log id at shutdown");
    }
}

fn take_slot(slot: &CommittedSlot) -> Option<Vec<u8>> {
    slot.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// Applies `batch` in one write transaction and commits; returns the number of entries
/// appended and their encoded size.
fn commit_batch(
    db: &LogDb,
    batch: &[Op],
    committed: Option<&[u8]>,
) -> Result<(u64, u64), StoreError> {
    let mut txn = db.env.write_txn()?;
    let (mut appended, mut appended_bytes) = (0, 0);
    for op in batch {
        match op {
            Op::Append { entries, .. } => {
                for (index, bytes) in entries {
                    db.entries.put(&mut txn, index, bytes)?;
                    appended_bytes += bytes.len() as u64;
                }
                appended += entries.len() as u64;
            }
            Op::Truncate { since, .. } => {
                db.entries.delete_range(&mut txn, &(*since..))?;
            }
            Op::Purge {
                upto, encoded_id, ..
            } => {
                db.entries.delete_range(&mut txn, &(..=*upto))?;
                db.meta.put(&mut txn, META_PURGED, encoded_id)?;
            }
            Op::SaveVote { encoded, .. } => {
                db.meta.put(&mut txn, META_VOTE, encoded)?;
            }
        }
    }
    if let Some(bytes) = committed {
        db.meta.put(&mut txn, META_COMMITTED, bytes)?;
    }
    txn.commit()?;
    Ok((appended, appended_bytes))
}

/// Reads log entries; handed to openraft's replication tasks. Cheap to clone.
#[derive(Clone)]
pub(crate) struct LogReader {
    db: LogDb,
    /// First index that reads may return (the one after the purge point).
    floor: Arc<AtomicU64>,
}

impl LogReader {
    /// The entries in `range` that are not purged, stopping before they exceed
    /// `max_bytes` (at least one entry).
    fn entries<RB: RangeBounds<u64>>(
        &self,
        range: RB,
        max_bytes: usize,
    ) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        let floor = self.floor.load(Ordering::Acquire);
        self.db.read_range(range, floor, max_bytes)
    }
}

/// The Raft log store. Owned by openraft's core task.
pub(crate) struct LogStore {
    /// The log and the floor of reads, shared with the [`LogReader`]s handed out.
    reader: LogReader,
    ops: mpsc::Sender<Op>,
    committed_slot: CommittedSlot,
    counters: Arc<Counters>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    /// The purge point as openraft knows it.
    last_purged: Option<LogId<NodeId>>,
    /// The purge point recorded on disk: entries up to it are deleted, and no further.
    durable_purged: Option<LogId<NodeId>>,
    /// The last entry on disk.
    last_entry: Option<LogId<NodeId>>,
    durability: watch::Receiver<Durability>,
}

impl LogStore {
    /// Opens (creating if needed) the log in `dir`, with a map of `map_size` bytes, and
    /// starts its writer thread. `durability` follows the state machine's durable
    /// snapshot, which bounds how far purges go on disk.
    pub(crate) fn open(
        dir: &Path,
        map_size: usize,
        durability: watch::Receiver<Durability>,
    ) -> Result<Self, StoreError> {
        let db = LogDb::open(dir, map_size)?;
        let (vote, committed, last_purged) = {
            let txn = db.env.read_txn()?;
            (
                db.meta_value::<Vote<NodeId>>(&txn, META_VOTE)?,
                db.meta_value::<LogId<NodeId>>(&txn, META_COMMITTED)?,
                db.meta_value::<LogId<NodeId>>(&txn, META_PURGED)?,
            )
        };
        let last_entry = db.last_log_id()?;

        let (ops, rx) = mpsc::channel();
        let committed_slot = CommittedSlot::default();
        let counters = Arc::new(Counters::default());
        {
            let db = db.clone();
            let slot = committed_slot.clone();
            let counters = counters.clone();
            std::thread::Builder::new()
                .name("raft-log-writer".into())
                .spawn(move || writer_loop(db, rx, slot, counters))?;
        }
        Ok(LogStore {
            reader: LogReader {
                db,
                floor: Arc::new(AtomicU64::new(next_index(last_purged))),
            },
            ops,
            committed_slot,
            counters,
            vote,
            committed,
            last_purged,
            durable_purged: last_purged,
            last_entry,
            durability,
        })
    }

    /// An event that fires once every handle on the log environment is dropped.
    pub(crate) fn closing_event(&self) -> heed::EnvClosingEvent {
        self.reader.db.env.clone().prepare_for_closing()
    }

    /// A handle on the log environment, for watching its usage.
    pub(crate) fn env(&self) -> Env<WithoutTls> {
        self.reader.db.env.clone()
    }

    pub(crate) fn metrics_handle(&self) -> LogMetricsHandle {
        LogMetricsHandle(self.counters.clone())
    }

    /// Sends a request to the writer and waits until its transaction is committed.
    async fn submit(&self, make: impl FnOnce(Reply) -> Op) -> Result<(), io::Error> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(make(tx))
            .map_err(|_| io::Error::other("the log writer has stopped"))?;
        match rx.await {
            Ok(result) => result.map_err(io::Error::other),
            Err(_) => Err(io::Error::other("the log writer has stopped")),
        }
    }

    /// Rereads the last entry on disk after entries were removed.
    fn refresh_last_entry(&mut self) -> Result<(), StoreError> {
        self.last_entry = self.reader.db.last_log_id()?;
        Ok(())
    }

    /// True when a snapshot covering `index` is durable.
    fn snapshot_durable(&self, index: u64) -> bool {
        self.durability.borrow().snapshot >= Some(index)
    }

    /// Deletes the entries up to `upto` and records it as the purge point, durably.
    async fn purge_on_disk(&mut self, upto: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let encoded_id = postcard::to_allocvec(&upto).map_err(write_logs_error)?;
        self.submit(|reply| Op::Purge {
            upto: upto.index,
            encoded_id,
            reply,
        })
        .await
        .map_err(write_logs_error)?;
        self.durable_purged = Some(upto);
        self.refresh_last_entry().map_err(read_logs_error)
    }

    /// Carries out a deferred purge before appending entries from `first`: at once if its
    /// snapshot is durable now; otherwise only if the append would leave a hole after the
    /// entries on disk, after waiting for the snapshot.
    async fn settle_purge(&mut self, first: u64) -> Result<(), StorageError<NodeId>> {
        let Some(target) = self.last_purged.filter(|p| Some(*p) > self.durable_purged) else {
            return Ok(());
        };
        if !self.snapshot_durable(target.index) {
            let end = self
                .last_entry
                .or(self.durable_purged)
                .map_or(0, |id| id.index);
            if first <= end + 1 {
                return Ok(());
            }
            tracing::info!(
                purge = %target,
                first,
                "waiting for the snapshot to be durable before appending after it"
            );
            let wait = self.durability.wait_for(|d| {
                d.snapshot >= Some(target.index) || d.failed_install >= Some(target.index)
            });
            let failed = match wait.await {
                Ok(d) => d.snapshot < Some(target.index),
                Err(_) => true,
            };
            if failed {
                return Err(write_logs_error(io::Error::other(format!(
                    "the snapshot up to {target} was not installed; cannot append after it"
                ))));
            }
        }
        self.purge_on_disk(target).await
    }
}

fn next_index(id: Option<LogId<NodeId>>) -> u64 {
    id.map_or(0, |id| id.index + 1)
}

fn read_logs_error(e: StoreError) -> StorageError<NodeId> {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn write_logs_error(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        self.entries(range, usize::MAX).map_err(read_logs_error)
    }

    /// Stops before the entries exceed [`MAX_APPEND_BYTES`] (at least one entry), so
    /// replication never loads more than one AppendEntries can carry.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        self.entries(start..end, MAX_APPEND_BYTES)
            .map_err(read_logs_error)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        self.reader.try_get_log_entries(range).await
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        self.reader.limited_get_log_entries(start, end).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        Ok(LogState {
            last_purged_log_id: self.last_purged,
            last_log_id: self.last_entry.max(self.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.reader.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let encoded = postcard::to_allocvec(vote)
            .map_err(|e| StorageError::from(StorageIOError::write_vote(AnyError::new(&e))))?;
        self.submit(|reply| Op::SaveVote { encoded, reply })
            .await
            .map_err(|e| StorageError::from(StorageIOError::write_vote(AnyError::new(&e))))?;
        self.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Committed ids only grow; there is nothing to persist for `None`.
        if let Some(id) = &committed {
            let encoded = postcard::to_allocvec(id).map_err(write_logs_error)?;
            *self
                .committed_slot
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(encoded);
        }
        self.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        let mut last = None;
        for entry in entries {
            let bytes = postcard::to_allocvec(&entry).map_err(write_logs_error)?;
            encoded.push((entry.log_id.index, bytes));
            last = Some(entry.log_id);
        }
        let Some(last) = last else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        let first = encoded[0].0;
        if let Err(e) = self.settle_purge(first).await {
            callback.log_io_completed(Err(io::Error::other(e.to_string())));
            return Err(e);
        }
        match self
            .submit(|reply| Op::Append {
                entries: encoded,
                reply,
            })
            .await
        {
            Ok(()) => {
                self.last_entry = Some(last);
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let err = write_logs_error(io::Error::other(e.to_string()));
                callback.log_io_completed(Err(e));
                Err(err)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.submit(|reply| Op::Truncate {
            since: log_id.index,
            reply,
        })
        .await
        .map_err(write_logs_error)?;
        self.refresh_last_entry().map_err(read_logs_error)
    }

    /// Purges up to `log_id` as far as openraft can tell at once; on disk only once a
    /// durable snapshot covers it (see the module documentation). Never waits for the
    /// state machine.
    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        if Some(log_id) <= self.last_purged {
            return Ok(());
        }
        self.last_purged = Some(log_id);
        self.reader.floor.store(log_id.index + 1, Ordering::Release);
        if self.snapshot_durable(log_id.index) {
            self.purge_on_disk(log_id).await
        } else {
            tracing::info!(
                purge = %log_id,
                "deferring the purge on disk until a snapshot covering it is durable"
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::log_id;
    use openraft::{EntryPayload, Membership};

    use super::*;
    use crate::types::{Request, ServerNode};

    const TEST_MAP_SIZE: usize = 64 << 20;

    #[test]
    fn entries_round_trip_through_postcard() {
        let nodes = std::collections::BTreeMap::from([(
            1,
            ServerNode {
                name: "a".into(),
                addr: "127.0.0.1:1".into(),
            },
        )]);
        let entries: Vec<Entry<TypeConfig>> = vec![
            Entry {
                log_id: log_id(3, 1, 7),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: log_id(3, 1, 8),
                payload: EntryPayload::Normal(Request::KvSet {
                    key: "k".into(),
                    value: vec![0, 255, 7],
                    flags: u64::MAX,
                }),
            },
            Entry {
                log_id: log_id(4, 2, 9),
                payload: EntryPayload::Membership(Membership::new(
                    vec![[1u64].into_iter().collect()],
                    nodes,
                )),
            },
        ];
        for e in entries {
            let bytes = postcard::to_allocvec(&e).unwrap();
            let back: Entry<TypeConfig> = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(back, e);
            let (id, _) = postcard::take_from_bytes::<LogId<NodeId>>(&bytes).unwrap();
            assert_eq!(id, e.log_id);
        }
        let vote = Vote::new_committed(5, 2);
        let bytes = postcard::to_allocvec(&vote).unwrap();
        assert_eq!(postcard::from_bytes::<Vote<NodeId>>(&bytes).unwrap(), vote);
    }

    #[tokio::test]
    async fn writer_merges_queued_requests_into_one_commit() {
        let dir = tempfile::tempdir().unwrap();
        let db = LogDb::open(dir.path(), TEST_MAP_SIZE).unwrap();
        let (tx, rx) = mpsc::channel();
        let mut replies = Vec::new();
        for i in 1..=50u64 {
            let entry: Entry<TypeConfig> = Entry {
                log_id: log_id(1, 1, i),
                payload: EntryPayload::Blank,
            };
            let (reply, answer) = oneshot::channel();
            let entries = vec![(i, postcard::to_allocvec(&entry).unwrap())];
            tx.send(Op::Append { entries, reply }).unwrap();
            replies.push(answer);
        }
        let (reply, answer) = oneshot::channel();
        let encoded = postcard::to_allocvec(&Vote::new(1, 1u64)).unwrap();
        tx.send(Op::SaveVote { encoded, reply }).unwrap();
        replies.push(answer);
        let slot = CommittedSlot::default();
        *slot.lock().unwrap() = Some(postcard::to_allocvec(&log_id::<NodeId>(1, 1, 50)).unwrap());
        drop(tx);

        // Everything is queued before the writer starts: one transaction takes it all.
        let counters = Arc::new(Counters::default());
        let writer = {
            let (db, counters) = (db.clone(), counters.clone());
            std::thread::spawn(move || writer_loop(db, rx, slot, counters))
        };
        for answer in replies {
            answer.await.unwrap().unwrap();
        }
        writer.join().unwrap();
        let metrics = LogMetricsHandle(counters).get();
        assert_eq!(
            metrics,
            LogStoreMetrics {
                commits: 1,
                requests: 51,
                entries: 50,
                bytes: metrics.bytes,
            }
        );
        assert_eq!(db.read_range(.., 0, usize::MAX).unwrap().len(), 50);
        assert_eq!(db.last_log_id().unwrap(), Some(log_id(1, 1, 50)));
        let txn = db.env.read_txn().unwrap();
        let committed: Option<LogId<NodeId>> = db.meta_value(&txn, META_COMMITTED).unwrap();
        assert_eq!(committed, Some(log_id(1, 1, 50)));
    }

    fn blank(index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: log_id(2, 1, index),
            payload: EntryPayload::Blank,
        }
    }

    /// Opens the log in `dir`, waiting for a previous instance's writer to let go.
    async fn reopen(dir: &Path) -> LogStore {
        crate::store_tests::retry_open(|| {
            LogStore::open(dir, TEST_MAP_SIZE, Durability::unbounded())
        })
        .await
    }

    #[tokio::test]
    async fn state_survives_reopen() {
        use openraft::storage::RaftLogStorageExt;

        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path(), TEST_MAP_SIZE, Durability::unbounded()).unwrap();
        store.blocking_append((1..=20).map(blank)).await.unwrap();
        store.purge(log_id(2, 1, 5)).await.unwrap();
        store.truncate(log_id(2, 1, 18)).await.unwrap();
        store.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
        store.save_committed(Some(log_id(2, 1, 12))).await.unwrap();
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(2, 1, 5)));
        assert_eq!(state.last_log_id, Some(log_id(2, 1, 17)));
        drop(store);

        let mut store = reopen(dir.path()).await;
        assert_eq!(store.get_log_state().await.unwrap(), state);
        assert_eq!(
            store.read_vote().await.unwrap(),
            Some(Vote::new_committed(2, 1))
        );
        assert_eq!(
            store.read_committed().await.unwrap(),
            Some(log_id(2, 1, 12))
        );
        let entries = store.try_get_log_entries(0..100).await.unwrap();
        let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, (6..=17).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn limited_reads_stop_at_the_append_budget() {
        use openraft::storage::RaftLogStorageExt;

        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path(), TEST_MAP_SIZE, Durability::unbounded()).unwrap();
        let big = |index: u64| Entry {
            log_id: log_id(2, 1, index),
            payload: EntryPayload::Normal(Request::KvSet {
                key: format!("k{index}"),
                value: vec![1; crate::MAX_VALUE_LEN],
                flags: 0,
            }),
        };
        store.blocking_append((1..=20).map(big)).await.unwrap();
        let mut reader = store.get_log_reader().await;

        let limited = reader.limited_get_log_entries(1, 21).await.unwrap();
        assert!(
            (1..20).contains(&limited.len()),
            "{} entries",
            limited.len()
        );
        assert_eq!(limited[0].log_id.index, 1);
        let bytes: usize = limited
            .iter()
            .map(|e| postcard::to_allocvec(e).unwrap().len())
            .sum();
        assert!(bytes <= MAX_APPEND_BYTES, "{bytes} bytes");
        // The rest follows from where the first read stopped.
        let next = limited.len() as u64 + 1;
        let rest = reader.limited_get_log_entries(next, 21).await.unwrap();
        assert_eq!(rest[0].log_id.index, next);
        // One entry is returned even when it alone exceeds the budget.
        let db = store.reader.db.clone();
        assert_eq!(db.read_range(1..21, 0, 10).unwrap().len(), 1);
        assert_eq!(reader.try_get_log_entries(1..21).await.unwrap().len(), 20);
    }
}
