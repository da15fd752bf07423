//! The LMDB environment of the state machine: KV entries, tombstones and metadata.
//!
//! Tables (named LMDB databases):
//! - `kv`: key → [`StoredEntry`] (postcard),
//! - `tombstones`: key → log index of its delete (big-endian u64),
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

use crate::error::StoreError;
use crate::kv::{AtomicRun, KvTables, KvView};
use crate::lmdb::open_env;
use crate::types::{KvEntry, NodeId, ServerNode};

const META_APPLIED: &str = "applied";
const META_MEMBERSHIP: &str = "membership";
const META_KV_INDEX: &str = "kv_index";
const META_INSTALLED: &str = "installed_snapshot";
const META_REAPED: &str = "kv_reaped";

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
}

impl SmDb {
    /// Opens (creating if needed) the environment in `dir` with a map of `map_size` bytes.
    pub(crate) fn open(dir: &Path, map_size: usize) -> Result<Self, StoreError> {
        let env = open_env(dir, 4, map_size)?;
        let mut txn = env.write_txn()?;
        let kv = env.create_database(&mut txn, Some("kv"))?;
        let tombstones = env.create_database(&mut txn, Some("tombstones"))?;
        let meta = env.create_database(&mut txn, Some("meta"))?;
        txn.commit()?;
        Ok(SmDb {
            env,
            kv,
            tombstones,
            meta,
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
