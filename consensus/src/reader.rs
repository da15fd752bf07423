//! Local reads of the KV state: [`KvReader`].

use std::sync::{Arc, RwLock};

use crate::error::ReadError;
use crate::kv;
use crate::sm_db::SmDb;
use crate::types::KvEntry;

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
}

impl KvReader {
    pub(crate) fn new(db: SmDb) -> Self {
        KvReader {
            db: Arc::new(RwLock::new(Some(db))),
        }
    }

    /// Drops this reader's handle on the environment; later reads return
    /// [`ReadError::Closed`].
    pub(crate) fn close(&self) {
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        *slot = None;
    }

    fn with_view<T>(
        &self,
        read: impl FnOnce(&crate::sm_db::View<'_, '_>) -> Result<T, crate::StoreError>,
    ) -> Result<T, ReadError> {
        let db = {
            let slot = self.db.read().unwrap_or_else(|e| e.into_inner());
            slot.clone().ok_or(ReadError::Closed)?
        };
        let txn = db.read_txn()?;
        let view = db.view(&txn);
        Ok(read(&view)?)
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
