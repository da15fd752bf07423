//! The LMDB environment of the state machine: KV entries, tombstones and metadata.
//!
//! Tables (named LMDB databases):
//! - `kv`: key → [`StoredEntry`] (postcard),
//! - `tombstones`: key → log index of its delete (big-endian u64),
//! - `cat_nodes`, `cat_services`, `cat_checks`, `cat_by_service`, `cat_indexes`: the
//!   catalog's tables (see `catalog::tables`),
//! - `meta`: `applied` (last applied log id), `membership` (last applied membership),
//!   `kv_index` (the KV table index), `kv_reaped` (the largest index of a reaped
//!   tombstone), `installed_snapshot` (last log id of the last snapshot installed from a
//!   leader, written in the install's transaction).
//!
//! The environment is opened without thread-local read transactions, so short read
//! transactions can be taken from any tokio task.

use std::ops::ControlFlow;
use std::path::Path;

use heed::byteorder::BigEndian;
use heed::types::{Bytes, Str, U64};
use heed::{Database, Env, RoTxn, RwTxn, WithoutTls};
use openraft::{LogId, StoredMembership};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::catalog::tables::{CatalogTable, CatalogTables, CatalogView, RowVisit};
use crate::error::StoreError;
use crate::kv::{AtomicRun, KvTables, KvView};
use crate::lmdb::open_env;
use crate::types::{KvEntry, NodeId, ONCE_WINDOW, Response, ServerNode};

const META_APPLIED: &str = "applied";
const META_MEMBERSHIP: &str = "membership";
const META_KV_INDEX: &str = "kv_index";
const META_INSTALLED: &str = "installed_snapshot";
const META_REAPED: &str = "kv_reaped";

/// LMDB's limit on key length in bytes.
const MAX_LMDB_KEY: usize = 511;

/// Visitor of raw `(key, stored bytes)` pairs.
type RawVisit<'a> = dyn FnMut(&str, &[u8]) -> Result<ControlFlow<()>, StoreError> + 'a;

/// The stored form of a KV entry; the key is the LMDB key. `modify_index` comes first so
/// that it can be decoded without the value.
#[derive(Serialize, Deserialize)]
struct StoredEntry {
    modify_index: u64,
    create_index: u64,
    lock_index: u64,
    flags: u64,
    session: Option<String>,
    value: Vec<u8>,
}

/// Handles to the state machine's environment and tables. Cheap to clone.
#[derive(Clone)]
pub(crate) struct SmDb {
    pub(crate) env: Env<WithoutTls>,
    kv: Database<Str, Bytes>,
    tombstones: Database<Str, U64<BigEndian>>,
    meta: Database<Str, Bytes>,
    catalog: [Database<Str, Bytes>; 5],
    /// Ids of once-only writes: id (16 bytes, big-endian) → [`OnceRecord`].
    once: Database<Bytes, Bytes>,
    /// The same ids by time: `at_ms` (8 bytes) then id (16 bytes), big-endian.
    once_by_time: Database<Bytes, Bytes>,
}

/// What is remembered of an applied once-only write.
#[derive(Serialize, Deserialize)]
pub(crate) struct OnceRecord {
    pub(crate) at_ms: u64,
    pub(crate) response: Response,
}

fn time_key(at_ms: u64, id: u128) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..8].copy_from_slice(&at_ms.to_be_bytes());
    key[8..].copy_from_slice(&id.to_be_bytes());
    key
}

impl SmDb {
    /// Opens (creating if needed) the environment in `dir` with a map of `map_size` bytes.
    pub(crate) fn open(dir: &Path, map_size: usize) -> Result<Self, StoreError> {
        let env = open_env(dir, 12, map_size)?;
        let mut txn = env.write_txn()?;
        let kv = env.create_database(&mut txn, Some("kv"))?;
        let tombstones = env.create_database(&mut txn, Some("tombstones"))?;
        let meta = env.create_database(&mut txn, Some("meta"))?;
        let catalog = [
            env.create_database(&mut txn, Some("cat_nodes"))?,
            env.create_database(&mut txn, Some("cat_services"))?,
            env.create_database(&mut txn, Some("cat_checks"))?,
            env.create_database(&mut txn, Some("cat_by_service"))?,
            env.create_database(&mut txn, Some("cat_indexes"))?,
        ];
        let once = env.create_database(&mut txn, Some("once"))?;
        let once_by_time = env.create_database(&mut txn, Some("once_by_time"))?;
        txn.commit()?;
        Ok(SmDb {
            env,
            kv,
            tombstones,
            meta,
            catalog,
            once,
            once_by_time,
        })
    }

    pub(crate) fn read_txn(&self) -> Result<RoTxn<'_, WithoutTls>, StoreError> {
        Ok(self.env.read_txn()?)
    }

    pub(crate) fn view<'a, 'e>(&'a self, txn: &'a RoTxn<'e>) -> View<'a, 'e> {
        View { db: self, txn }
    }

    pub(crate) fn tables<'a, 'e>(&'a self, txn: &'a mut RwTxn<'e>) -> Tables<'a, 'e> {
        Tables { db: self, txn }
    }

    /// The value stored under the meta key `key`, or the type's default when there is
    /// none.
    fn meta_value<T: DeserializeOwned + Default>(
        &self,
        txn: &RoTxn,
        key: &str,
    ) -> Result<T, StoreError> {
        match self.meta.get(txn, key)? {
            Some(bytes) => Ok(postcard::from_bytes(bytes)?),
            None => Ok(T::default()),
        }
    }

    /// Stores `value` under the meta key `key`.
    fn put_meta_value<T: Serialize + ?Sized>(
        &self,
        txn: &mut RwTxn,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = postcard::to_allocvec(value)?;
        self.meta.put(txn, key, &bytes)?;
        Ok(())
    }

    pub(crate) fn applied(&self, txn: &RoTxn) -> Result<Option<LogId<NodeId>>, StoreError> {
        self.meta_value(txn, META_APPLIED)
    }

    /// Last log id of the last snapshot installed into this state machine.
    pub(crate) fn installed_snapshot(
        &self,
        txn: &RoTxn,
    ) -> Result<Option<LogId<NodeId>>, StoreError> {
        self.meta_value(txn, META_INSTALLED)
    }

    pub(crate) fn set_installed_snapshot(
        &self,
        txn: &mut RwTxn,
        last_log_id: &Option<LogId<NodeId>>,
    ) -> Result<(), StoreError> {
        self.put_meta_value(txn, META_INSTALLED, last_log_id)
    }

    pub(crate) fn membership(
        &self,
        txn: &RoTxn,
    ) -> Result<StoredMembership<NodeId, ServerNode>, StoreError> {
        self.meta_value(txn, META_MEMBERSHIP)
    }

    pub(crate) fn set_applied(
        &self,
        txn: &mut RwTxn,
        applied: &Option<LogId<NodeId>>,
    ) -> Result<(), StoreError> {
        self.put_meta_value(txn, META_APPLIED, applied)
    }

    pub(crate) fn set_membership(
        &self,
        txn: &mut RwTxn,
        membership: &StoredMembership<NodeId, ServerNode>,
    ) -> Result<(), StoreError> {
        self.put_meta_value(txn, META_MEMBERSHIP, membership)
    }

    /// Empties every table, for installing a snapshot.
    pub(crate) fn clear(&self, txn: &mut RwTxn) -> Result<(), StoreError> {
        self.kv.clear(txn)?;
        self.tombstones.clear(txn)?;
        self.meta.clear(txn)?;
        for table in &self.catalog {
            table.clear(txn)?;
        }
        self.once.clear(txn)?;
        self.once_by_time.clear(txn)?;
        Ok(())
    }

    /// The remembered answer of the once-only write `id`.
    pub(crate) fn once_get(&self, txn: &RoTxn, id: u128) -> Result<Option<OnceRecord>, StoreError> {
        match self.once.get(txn, &id.to_be_bytes())? {
            Some(bytes) => Ok(Some(postcard::from_bytes(bytes)?)),
            None => Ok(None),
        }
    }

    /// Remembers the answer of the once-only write `id`.
    pub(crate) fn once_put(
        &self,
        txn: &mut RwTxn,
        id: u128,
        record: &OnceRecord,
    ) -> Result<(), StoreError> {
        self.once
            .put(txn, &id.to_be_bytes(), &postcard::to_allocvec(record)?)?;
        self.once_by_time
            .put(txn, &time_key(record.at_ms, id), &[])?;
        Ok(())
    }

    /// Forgets the once-only writes stamped before `cutoff_ms`; returns how many.
    pub(crate) fn once_forget_before(
        &self,
        txn: &mut RwTxn,
        cutoff_ms: u64,
    ) -> Result<u64, StoreError> {
        let mut doomed = Vec::new();
        for item in self.once_by_time.iter(txn)? {
            let (key, _) = item?;
            let (Some(at), Some(id)) = (key.get(..8), key.get(8..24)) else {
                return Err(StoreError::Corrupt(
                    "a once-only write key is too short".into(),
                ));
            };
            let at = u64::from_be_bytes(at.try_into().unwrap_or_default());
            if at >= cutoff_ms {
                break;
            }
            doomed.push((key.to_vec(), id.to_vec()));
        }
        for (time, id) in &doomed {
            self.once_by_time.delete(txn, time)?;
            self.once.delete(txn, id)?;
        }
        Ok(doomed.len() as u64)
    }

    /// Visits every remembered once-only write (for snapshots).
    pub(crate) fn for_each_once(
        &self,
        txn: &RoTxn,
        visit: &mut dyn FnMut(u128, OnceRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for item in self.once.iter(txn)? {
            let (key, bytes) = item?;
            let id: [u8; 16] = key
                .try_into()
                .map_err(|_| StoreError::Corrupt("a once-only write id is not 16 bytes".into()))?;
            visit(u128::from_be_bytes(id), postcard::from_bytes(bytes)?)?;
        }
        Ok(())
    }

    fn catalog_db(&self, table: CatalogTable) -> Database<Str, Bytes> {
        self.catalog[table as usize]
    }

    fn catalog_get(
        &self,
        txn: &RoTxn,
        table: CatalogTable,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        // No stored key is empty or longer than LMDB allows; a read may ask for one.
        if key.is_empty() || key.len() > MAX_LMDB_KEY {
            return Ok(None);
        }
        Ok(self.catalog_db(table).get(txn, key)?.map(<[u8]>::to_vec))
    }

    /// Visits the rows of a catalog table whose key starts with `prefix`, in key order.
    pub(crate) fn catalog_scan(
        &self,
        txn: &RoTxn,
        table: CatalogTable,
        prefix: &str,
        visit: &mut RowVisit<'_>,
    ) -> Result<(), StoreError> {
        let db = self.catalog_db(table);
        if prefix.len() > MAX_LMDB_KEY {
            return Ok(());
        }
        if prefix.is_empty() {
            for item in db.iter(txn)? {
                let (key, bytes) = item?;
                if visit(key, bytes)?.is_break() {
                    break;
                }
            }
        } else {
            for item in db.prefix_iter(txn, prefix)? {
                let (key, bytes) = item?;
                if visit(key, bytes)?.is_break() {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Stores a raw catalog row (also used to load snapshots).
    pub(crate) fn catalog_put(
        &self,
        txn: &mut RwTxn,
        table: CatalogTable,
        key: &str,
        value: &[u8],
    ) -> Result<(), StoreError> {
        if key.is_empty() || key.len() > MAX_LMDB_KEY {
            return Err(StoreError::Corrupt(format!(
                "catalog key of {} bytes cannot be stored",
                key.len()
            )));
        }
        self.catalog_db(table).put(txn, key, value)?;
        Ok(())
    }

    /// Visits every tombstone in key order.
    pub(crate) fn for_each_tombstone(
        &self,
        txn: &RoTxn,
        visit: &mut dyn FnMut(&str, u64) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for item in self.tombstones.iter(txn)? {
            let (key, index) = item?;
            visit(key, index)?;
        }
        Ok(())
    }

    fn entry(&self, txn: &RoTxn, key: &str) -> Result<Option<KvEntry>, StoreError> {
        if key.is_empty() {
            // LMDB rejects empty keys; no entry can have one.
            return Ok(None);
        }
        match self.kv.get(txn, key)? {
            Some(bytes) => Ok(Some(decode_entry(key, bytes)?)),
            None => Ok(None),
        }
    }

    fn scan(&self, txn: &RoTxn, prefix: &str, visit: &mut RawVisit<'_>) -> Result<(), StoreError> {
        if prefix.is_empty() {
            for item in self.kv.iter(txn)? {
                let (key, bytes) = item?;
                if visit(key, bytes)?.is_break() {
                    break;
                }
            }
        } else {
            for item in self.kv.prefix_iter(txn, prefix)? {
                let (key, bytes) = item?;
                if visit(key, bytes)?.is_break() {
                    break;
                }
            }
        }
        Ok(())
    }

    fn max_tombstone(&self, txn: &RoTxn, prefix: &str) -> Result<u64, StoreError> {
        let mut max = 0;
        if prefix.is_empty() {
            for item in self.tombstones.iter(txn)? {
                max = max.max(item?.1);
            }
        } else {
            for item in self.tombstones.prefix_iter(txn, prefix)? {
                max = max.max(item?.1);
            }
        }
        Ok(max)
    }

    pub(crate) fn kv_index(&self, txn: &RoTxn) -> Result<u64, StoreError> {
        self.meta_value(txn, META_KV_INDEX)
    }

    pub(crate) fn set_kv_index(&self, txn: &mut RwTxn, index: u64) -> Result<(), StoreError> {
        self.put_meta_value(txn, META_KV_INDEX, &index)
    }

    /// The largest index of a reaped tombstone (0 if none).
    pub(crate) fn reaped_floor(&self, txn: &RoTxn) -> Result<u64, StoreError> {
        self.meta_value(txn, META_REAPED)
    }

    pub(crate) fn set_reaped_floor(&self, txn: &mut RwTxn, floor: u64) -> Result<(), StoreError> {
        self.put_meta_value(txn, META_REAPED, &floor)
    }

    fn reap_tombstones(&self, txn: &mut RwTxn, up_to: u64) -> Result<(u64, u64), StoreError> {
        let mut doomed = Vec::new();
        for item in self.tombstones.iter(txn)? {
            let (key, index) = item?;
            if index <= up_to {
                doomed.push((key.to_owned(), index));
            }
        }
        let mut max = 0;
        for (key, index) in &doomed {
            self.tombstones.delete(txn, key)?;
            max = max.max(*index);
        }
        Ok((doomed.len() as u64, max))
    }

    pub(crate) fn put_entry(&self, txn: &mut RwTxn, entry: &KvEntry) -> Result<(), StoreError> {
        if entry.key.is_empty() || entry.key.len() > crate::MAX_KEY_LEN {
            return Err(StoreError::Corrupt(format!(
                "key of {} bytes cannot be stored",
                entry.key.len()
            )));
        }
        let stored = StoredEntry {
            modify_index: entry.modify_index,
            create_index: entry.create_index,
            lock_index: entry.lock_index,
            flags: entry.flags,
            session: entry.session.clone(),
            value: entry.value.clone(),
        };
        let bytes = postcard::to_allocvec(&stored)?;
        self.kv.put(txn, &entry.key, &bytes)?;
        Ok(())
    }

    pub(crate) fn put_tombstone(
        &self,
        txn: &mut RwTxn,
        key: &str,
        index: u64,
    ) -> Result<(), StoreError> {
        if key.is_empty() || key.len() > crate::MAX_KEY_LEN {
            return Err(StoreError::Corrupt(format!(
                "tombstone key of {} bytes cannot be stored",
                key.len()
            )));
        }
        self.tombstones.put(txn, key, &index)?;
        Ok(())
    }

    /// Visits every KV entry in key order.
    pub(crate) fn for_each_entry(
        &self,
        txn: &RoTxn,
        visit: &mut dyn FnMut(KvEntry) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.scan(txn, "", &mut |key, bytes| {
            visit(decode_entry(key, bytes)?)?;
            Ok(ControlFlow::Continue(()))
        })
    }
}

fn decode_entry(key: &str, bytes: &[u8]) -> Result<KvEntry, StoreError> {
    let s: StoredEntry = postcard::from_bytes(bytes)?;
    Ok(KvEntry {
        key: key.to_owned(),
        value: s.value,
        flags: s.flags,
        create_index: s.create_index,
        modify_index: s.modify_index,
        lock_index: s.lock_index,
        session: s.session,
    })
}

fn decode_modify_index(bytes: &[u8]) -> Result<u64, StoreError> {
    let (index, _) = postcard::take_from_bytes::<u64>(bytes)?;
    Ok(index)
}

/// Read access to the KV tables within one read transaction.
pub(crate) struct View<'a, 'e> {
    db: &'a SmDb,
    txn: &'a RoTxn<'e>,
}

/// Read and write access to the KV tables within one write transaction.
pub(crate) struct Tables<'a, 'e> {
    db: &'a SmDb,
    txn: &'a mut RwTxn<'e>,
}

fn view_scan(
    db: &SmDb,
    txn: &RoTxn,
    prefix: &str,
    visit: &mut dyn FnMut(KvEntry) -> ControlFlow<()>,
) -> Result<(), StoreError> {
    db.scan(txn, prefix, &mut |key, bytes| {
        Ok(visit(decode_entry(key, bytes)?))
    })
}

fn view_scan_indexes(
    db: &SmDb,
    txn: &RoTxn,
    prefix: &str,
    visit: &mut dyn FnMut(&str, u64),
) -> Result<(), StoreError> {
    db.scan(txn, prefix, &mut |key, bytes| {
        visit(key, decode_modify_index(bytes)?);
        Ok(ControlFlow::Continue(()))
    })
}

/// Implements [`KvView`] for a type with the fields `db: &SmDb` and `txn` (a read or a
/// write transaction): [`View`] and [`Tables`] read the tables the same way.
macro_rules! impl_kv_view {
    ($ty:ty) => {
        impl KvView for $ty {
            fn entry(&self, key: &str) -> Result<Option<KvEntry>, StoreError> {
                self.db.entry(self.txn, key)
            }

            fn scan(
                &self,
                prefix: &str,
                visit: &mut dyn FnMut(KvEntry) -> ControlFlow<()>,
            ) -> Result<(), StoreError> {
                view_scan(self.db, self.txn, prefix, visit)
            }

            fn scan_indexes(
                &self,
                prefix: &str,
                visit: &mut dyn FnMut(&str, u64),
            ) -> Result<(), StoreError> {
                view_scan_indexes(self.db, self.txn, prefix, visit)
            }

            fn max_tombstone(&self, prefix: &str) -> Result<u64, StoreError> {
                self.db.max_tombstone(self.txn, prefix)
            }

            fn table_index(&self) -> Result<u64, StoreError> {
                self.db.kv_index(self.txn)
            }

            fn reaped_floor(&self) -> Result<u64, StoreError> {
                self.db.reaped_floor(self.txn)
            }
        }
    };
}

impl_kv_view!(View<'_, '_>);
impl_kv_view!(Tables<'_, '_>);

impl Tables<'_, '_> {
    /// Applies the once-only write `id`, stamped `at_ms`, with `run`, unless it was
    /// applied before: then its first answer is returned and nothing changes. Ids
    /// stamped more than [`ONCE_WINDOW`] before `at_ms` are forgotten first.
    pub(crate) fn once(
        &mut self,
        id: u128,
        at_ms: u64,
        run: impl FnOnce(&mut Self) -> Result<Response, StoreError>,
    ) -> Result<Response, StoreError> {
        let window = ONCE_WINDOW.as_millis() as u64;
        self.db
            .once_forget_before(self.txn, at_ms.saturating_sub(window))?;
        if let Some(first) = self.db.once_get(self.txn, id)? {
            return Ok(first.response);
        }
        let response = run(self)?;
        let record = OnceRecord {
            at_ms,
            response: response.clone(),
        };
        self.db.once_put(self.txn, id, &record)?;
        Ok(response)
    }
}

/// Implements [`CatalogView`] for [`View`] and [`Tables`], as `impl_kv_view` does.
macro_rules! impl_catalog_view {
    ($ty:ty) => {
        impl CatalogView for $ty {
            fn get_row(
                &self,
                table: CatalogTable,
                key: &str,
            ) -> Result<Option<Vec<u8>>, StoreError> {
                self.db.catalog_get(self.txn, table, key)
            }

            fn scan_rows(
                &self,
                table: CatalogTable,
                prefix: &str,
                visit: &mut RowVisit<'_>,
            ) -> Result<(), StoreError> {
                self.db.catalog_scan(self.txn, table, prefix, visit)
            }
        }
    };
}

impl_catalog_view!(View<'_, '_>);
impl_catalog_view!(Tables<'_, '_>);

impl CatalogTables for Tables<'_, '_> {
    fn put_row(&mut self, table: CatalogTable, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.db.catalog_put(self.txn, table, key, value)
    }

    fn delete_row(&mut self, table: CatalogTable, key: &str) -> Result<bool, StoreError> {
        if key.is_empty() || key.len() > MAX_LMDB_KEY {
            return Ok(false);
        }
        Ok(self.db.catalog_db(table).delete(self.txn, key)?)
    }
}

impl KvTables for Tables<'_, '_> {
    fn put(&mut self, entry: &KvEntry) -> Result<(), StoreError> {
        self.db.put_entry(self.txn, entry)
    }

    fn remove(&mut self, key: &str) -> Result<bool, StoreError> {
        if key.is_empty() {
            return Ok(false);
        }
        Ok(self.db.kv.delete(self.txn, key)?)
    }

    fn remove_prefix(&mut self, prefix: &str) -> Result<u64, StoreError> {
        let mut keys = Vec::new();
        view_scan_indexes(self.db, self.txn, prefix, &mut |key, _| {
            keys.push(key.to_owned())
        })?;
        for key in &keys {
            self.db.kv.delete(self.txn, key)?;
        }
        Ok(keys.len() as u64)
    }

    fn put_tombstone(&mut self, key: &str, index: u64) -> Result<(), StoreError> {
        self.db.put_tombstone(self.txn, key, index)
    }

    fn set_table_index(&mut self, index: u64) -> Result<(), StoreError> {
        self.db.set_kv_index(self.txn, index)
    }

    fn reap_tombstones(&mut self, up_to: u64) -> Result<(u64, u64), StoreError> {
        self.db.reap_tombstones(self.txn, up_to)
    }

    fn set_reaped_floor(&mut self, floor: u64) -> Result<(), StoreError> {
        self.db.set_reaped_floor(self.txn, floor)
    }

    fn atomically(&mut self, run: &mut AtomicRun<'_>) -> Result<bool, StoreError> {
        let mut child = self.db.env.nested_write_txn(self.txn)?;
        let keep = run(&mut Tables {
            db: self.db,
            txn: &mut child,
        })?;
        if keep {
            child.commit()?;
        } else {
            child.abort();
        }
        Ok(keep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv;
    use crate::txn::{TxnOp, TxnOutcome};
    use crate::types::{Request, Response};
    use crate::watch::Changes;

    #[test]
    fn lmdb_tables_follow_the_same_rules_as_memory() {
        let dir = tempfile::tempdir().unwrap();
        let db = SmDb::open(dir.path(), 64 << 20).unwrap();
        let mut mem = crate::kv::mem::MemTables::default();
        let requests = [
            Request::KvSet {
                key: "a/1".into(),
                value: b"x".to_vec(),
                flags: 1,
            },
            Request::KvSet {
                key: "a/2".into(),
                value: b"y".to_vec(),
                flags: 0,
            },
            Request::KvCas {
                key: "a/1".into(),
                value: b"z".to_vec(),
                flags: 0,
                index: 1,
            },
            Request::KvDelete { key: "a/2".into() },
            Request::KvSet {
                key: "b".into(),
                value: vec![],
                flags: 0,
            },
            Request::KvDeleteTree { prefix: "b".into() },
            // Committed, then rolled back after changing everything it could.
            Request::Txn(vec![
                TxnOp::Set {
                    key: "t/1".into(),
                    value: b"1".to_vec(),
                    flags: 0,
                },
                TxnOp::Delete { key: "a/1".into() },
                TxnOp::Get { key: "t/1".into() },
            ]),
            Request::Txn(vec![
                TxnOp::DeleteTree { prefix: "".into() },
                TxnOp::Set {
                    key: "t/2".into(),
                    value: b"2".to_vec(),
                    flags: 0,
                },
                TxnOp::CheckNotExists { key: "x".into() },
                TxnOp::Get { key: "t/1".into() },
            ]),
            Request::KvSet {
                key: "c/1".into(),
                value: b"c".to_vec(),
                flags: 0,
            },
            Request::KvReapTombstones { up_to_index: 4 },
        ];
        let mut responses = Vec::new();
        for (i, r) in requests.iter().enumerate() {
            let index = i as u64 + 1;
            let mut txn = db.env.write_txn().unwrap();
            let mut got_changes = Changes::default();
            let got = kv::apply(&mut db.tables(&mut txn), index, r, &mut got_changes).unwrap();
            txn.commit().unwrap();
            let mut want_changes = Changes::default();
            let want = kv::apply(&mut mem, index, r, &mut want_changes).unwrap();
            assert_eq!(got, want, "request {i}");
            assert_eq!(got_changes, want_changes, "request {i}");
            responses.push(got);
        }
        assert!(matches!(
            &responses[6],
            Response::Txn(TxnOutcome::Committed(r)) if r.len() == 2
        ));
        assert!(matches!(
            &responses[7],
            Response::Txn(TxnOutcome::RolledBack(e)) if e.len() == 1 && e[0].op_index == 3
        ));
        assert_eq!(responses[9], Response::Reaped(1));
        let txn = db.read_txn().unwrap();
        let view = db.view(&txn);
        assert_eq!(kv::list(&view, "").unwrap(), kv::list(&mem, "").unwrap());
        for prefix in ["", "a", "a/", "b", "c", "t/", "zz"] {
            assert_eq!(
                kv::index_for_prefix(&view, prefix).unwrap(),
                kv::index_for_prefix(&mem, prefix).unwrap(),
                "prefix {prefix:?}"
            );
        }
        assert_eq!(view.table_index().unwrap(), 9);
        // The tombstone of a/2 (index 4) was reaped; a/1's (index 7) stays.
        assert_eq!(view.max_tombstone("a").unwrap(), 7);
        assert_eq!(view.reaped_floor().unwrap(), 4);
        assert_eq!(mem.reaped_floor, 4);
    }
}
