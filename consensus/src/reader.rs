//! Local reads of the KV state: [`KvReader`].

use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::error::{InvalidRequest, ReadError};
use crate::kv;
use crate::sm_db::SmDb;
use crate::txn::{self, TxnOp, TxnOutcome};
use crate::types::KvEntry;
use crate::watch::{WatchRegistry, WatchScope, WatchStats};

/// Reads the KV state of the local state machine. Cheap to clone.
///
/// Every call runs one short LMDB read transaction, so calls from many tokio tasks run
/// concurrently and never wait for the writer. Reads are as fresh as this node's applied
/// state; call [`RaftServer::ensure_linearizable`](crate::RaftServer::ensure_linearizable)
/// first for a linearizable read. After the server shuts down, every call returns
/// [`ReadError::Closed`].
#[derive(Clone)]
pub struct KvReader {
    db: Arc<RwLock<Option<SmDb>>>,
    watches: Arc<WatchRegistry>,
}

impl KvReader {
    pub(crate) fn new(db: SmDb, watches: Arc<WatchRegistry>) -> Self {
        KvReader {
            db: Arc::new(RwLock::new(Some(db))),
            watches,
        }
    }

    /// Drops this reader's handle on the environment and releases every waiting blocking
    /// query; later reads return [`ReadError::Closed`].
    pub(crate) fn close(&self) {
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        *slot = None;
        self.watches.close();
    }

    fn with_view<T>(
        &self,
        read: impl FnOnce(&crate::sm_db::View<'_, '_>) -> Result<T, crate::StoreError>,
    ) -> Result<T, ReadError> {
        read_view(&self.db, read)
    }

    /// A reader of the catalog sharing this reader's handle on the environment, so that
    /// closing this one closes it too.
    pub(crate) fn catalog(&self) -> crate::catalog::CatalogReader {
        crate::catalog::CatalogReader::new(self.db.clone(), self.watches.clone())
    }

    /// Follows the writes this server applies from now on, in order: sets, deletes and
    /// tree deletes with their Raft index. A follower that falls more than
    /// [`CHANGE_FEED_CAPACITY`](crate::CHANGE_FEED_CAPACITY) behind loses the oldest and
    /// is told how many. A snapshot install replaces the state without reporting
    /// individual writes.
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<crate::KvChange> {
        self.watches.subscribe_changes()
    }

    /// The entry stored under `key`.
    pub fn get(&self, key: &str) -> Result<Option<KvEntry>, ReadError> {
        self.with_view(|v| kv::KvView::entry(v, key))
    }

    /// The entry stored under `key` and the index to report for it, read atomically.
    pub fn get_with_index(&self, key: &str) -> Result<(Option<KvEntry>, u64), ReadError> {
        self.with_view(|v| Ok((kv::KvView::entry(v, key)?, kv::index_for_key(v, key)?)))
    }

    /// Entries whose key starts with `prefix`, sorted by key.
    pub fn list(&self, prefix: &str) -> Result<Vec<KvEntry>, ReadError> {
        self.with_view(|v| kv::list(v, prefix))
    }

    /// Entries under `prefix` and the index to report for them, read atomically.
    pub fn list_with_index(&self, prefix: &str) -> Result<(Vec<KvEntry>, u64), ReadError> {
        self.with_view(|v| Ok((kv::list(v, prefix)?, kv::index_for_prefix(v, prefix)?)))
    }

    /// Keys starting with `prefix`, sorted; with a separator, each key is cut after the
    /// first separator that follows the prefix and duplicates are dropped (Consul's
    /// `?keys&separator=`).
    pub fn keys(&self, prefix: &str, separator: Option<&str>) -> Result<Vec<String>, ReadError> {
        self.with_view(|v| kv::keys(v, prefix, separator))
    }

    /// Keys under `prefix` (as [`keys`](Self::keys)) and the index to report for them,
    /// read atomically.
    pub fn keys_with_index(
        &self,
        prefix: &str,
        separator: Option<&str>,
    ) -> Result<(Vec<String>, u64), ReadError> {
        self.with_view(|v| {
            Ok((
                kv::keys(v, prefix, separator)?,
                kv::index_for_prefix(v, prefix)?,
            ))
        })
    }

    /// The KV table index: the largest log index that changed any key (0 if none).
    pub fn kv_index(&self) -> Result<u64, ReadError> {
        self.with_view(|v| kv::KvView::table_index(v))
    }

    /// The index Consul reports for a read of `key` (`X-Consul-Index`): its ModifyIndex
    /// when it exists, else the table index. Never 0.
    pub fn index_for_key(&self, key: &str) -> Result<u64, ReadError> {
        self.with_view(|v| kv::index_for_key(v, key))
    }

    /// The index Consul reports for a prefix read: the largest ModifyIndex or tombstone
    /// under `prefix`, else the table index. Never 0.
    pub fn index_for_prefix(&self, prefix: &str) -> Result<u64, ReadError> {
        self.with_view(|v| kv::index_for_prefix(v, prefix))
    }

    /// Runs a read-only transaction (only `Get`, `GetTree`, `CheckIndex` and
    /// `CheckNotExists`) on the local state, in one read transaction and without Raft, as
    /// Consul serves read-only `/v1/txn` requests. As fresh as the local state: call
    /// [`RaftServer::ensure_linearizable`](crate::RaftServer::ensure_linearizable) first
    /// for a consistent read. An operation that writes, or a transaction over the limits,
    /// is refused with [`ReadError::Invalid`].
    pub fn read_txn(&self, ops: &[TxnOp]) -> Result<TxnOutcome, ReadError> {
        txn::validate(ops)?;
        if let Some(op_index) = ops.iter().position(TxnOp::is_write) {
            return Err(InvalidRequest::NotReadOnly { op_index }.into());
        }
        self.with_view(|v| txn::read(v, ops))
    }

    /// The index Consul reports for `scope`: [`index_for_key`](Self::index_for_key) or
    /// [`index_for_prefix`](Self::index_for_prefix).
    pub fn index_for(&self, scope: &WatchScope) -> Result<u64, ReadError> {
        match scope {
            WatchScope::Key(key) => self.index_for_key(key),
            WatchScope::Prefix(prefix) => self.index_for_prefix(prefix),
        }
    }

    /// Blocking-query wait: returns the index for `scope` (see [`index_for`](Self::index_for))
    /// as soon as it is greater than `after_index`, or after `timeout` whatever it is then.
    ///
    /// Only changes to the watched key (or to keys under the watched prefix, or a tree
    /// delete covering them) wake the wait, so an idle wait costs nothing. The index of a
    /// missing key or of an empty prefix is the table index, which rises with writes
    /// elsewhere: such a wait returns early only if that had happened before it was
    /// called, and otherwise at the timeout with the then current index, as a Consul
    /// blocking query does when nothing it watches changed. Returns
    /// [`ReadError::Closed`] when the server shuts down.
    pub async fn wait(
        &self,
        scope: WatchScope,
        after_index: u64,
        timeout: Duration,
    ) -> Result<u64, ReadError> {
        // Register before reading, so a change committed after the read wakes us.
        self.watches
            .register(&scope)
            .wait_past(after_index, timeout, || self.index_for(&scope))
            .await
    }

    /// Counters of the blocking-query watchers of this server.
    pub fn watch_stats(&self) -> WatchStats {
        self.watches.stats()
    }

    /// Log index of the last entry applied to the local state machine (0 if none).
    pub fn applied_index(&self) -> Result<u64, ReadError> {
        let db = {
            let slot = self.db.read().unwrap_or_else(|e| e.into_inner());
            slot.clone().ok_or(ReadError::Closed)?
        };
        let txn = db.read_txn()?;
        Ok(db.applied(&txn)?.map(|id| id.index).unwrap_or(0))
    }
}

/// Runs `read` on one read transaction of the state machine in `slot`;
/// [`ReadError::Closed`] once the server has shut down (the slot is empty).
pub(crate) fn read_view<T>(
    slot: &RwLock<Option<SmDb>>,
    read: impl FnOnce(&crate::sm_db::View<'_, '_>) -> Result<T, crate::StoreError>,
) -> Result<T, ReadError> {
    let db = {
        let slot = slot.read().unwrap_or_else(|e| e.into_inner());
        slot.clone().ok_or(ReadError::Closed)?
    };
    let txn = db.read_txn()?;
    let view = db.view(&txn);
    Ok(read(&view)?)
}
