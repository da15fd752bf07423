//! The KV data model and Consul's KV semantics, independent of storage.
//!
//! Applying commands and answering queries are written against two small traits,
//! [`KvView`] (reads) and [`KvTables`] (writes), so the rules can be tested on an
//! in-memory table and run unchanged on LMDB.
//!
//! The rules follow Consul's state store:
//! - The index of a change is the Raft log index of the entry that made it. A new key
//!   gets CreateIndex = ModifyIndex = index and LockIndex 0; an update sets ModifyIndex
//!   and keeps CreateIndex, LockIndex and the session. A write that changes neither the
//!   value nor the flags leaves the entry (and its ModifyIndex) untouched.
//! - CAS with index 0 creates only if absent; otherwise the ModifyIndex must match. A
//!   failed CAS changes nothing.
//! - Deleting a missing key succeeds and changes nothing. A delete-CAS on a missing key
//!   succeeds; on a present key it needs a matching ModifyIndex.
//! - Every delete leaves a tombstone (key → index of the delete; a tree delete leaves one
//!   for its prefix) so the index reported for a prefix rises after a delete. Tombstones
//!   are kept until a replicated reap ([`Request::KvReapTombstones`]) removes those at or
//!   below an index. Reaping changes no entry and no table index; it raises the table's
//!   *reaped floor* to the largest index it removed, and the index reported for a prefix
//!   is never below that floor, so it never goes backwards when a tombstone that raised it
//!   is reaped. (Consul lets it go backwards and tells clients to reset; here the only
//!   effect of a reap is that prefixes whose index was below the floor report the floor.)
//! - The table index is the largest log index that changed any key.
//! - Every change is recorded in a [`Changes`] set, which wakes the blocking queries
//!   watching it once the change commits.

use std::ops::ControlFlow;

use crate::error::StoreError;
use crate::txn;
use crate::types::{KvEntry, Request, Response};
use crate::watch::{Changes, KvChangeKind};

/// Read access to the KV tables.
pub(crate) trait KvView {
    /// The entry stored under `key`.
    fn entry(&self, key: &str) -> Result<Option<KvEntry>, StoreError>;
    /// Visits the entries whose key starts with `prefix`, in key order, until `visit`
    /// breaks.
    fn scan(
        &self,
        prefix: &str,
        visit: &mut dyn FnMut(KvEntry) -> ControlFlow<()>,
    ) -> Result<(), StoreError>;
    /// Visits `(key, modify_index)` of the entries whose key starts with `prefix`, in key
    /// order, without decoding values.
    fn scan_indexes(
        &self,
        prefix: &str,
        visit: &mut dyn FnMut(&str, u64),
    ) -> Result<(), StoreError>;
    /// The largest index among tombstones whose key starts with `prefix` (0 if none).
    fn max_tombstone(&self, prefix: &str) -> Result<u64, StoreError>;
    /// The largest log index that changed any key (0 if none).
    fn table_index(&self) -> Result<u64, StoreError>;
    /// The largest index of a reaped tombstone (0 if none was reaped).
    fn reaped_floor(&self) -> Result<u64, StoreError>;
}

/// A function run by [`KvTables::atomically`]; it returns whether to keep its changes.
pub(crate) type AtomicRun<'r> = dyn FnMut(&mut dyn KvTables) -> Result<bool, StoreError> + 'r;

/// Write access to the KV tables.
pub(crate) trait KvTables: KvView {
    /// Stores `entry` under its key.
    fn put(&mut self, entry: &KvEntry) -> Result<(), StoreError>;
    /// Removes `key`; true if it existed.
    fn remove(&mut self, key: &str) -> Result<bool, StoreError>;
    /// Removes every key starting with `prefix`; returns how many were removed.
    fn remove_prefix(&mut self, prefix: &str) -> Result<u64, StoreError>;
    /// Records that `key` was deleted at `index`.
    fn put_tombstone(&mut self, key: &str, index: u64) -> Result<(), StoreError>;
    /// Sets the table index.
    fn set_table_index(&mut self, index: u64) -> Result<(), StoreError>;
    /// Removes the tombstones with an index at or below `up_to`; returns how many were
    /// removed and the largest index among them (0 if none).
    fn reap_tombstones(&mut self, up_to: u64) -> Result<(u64, u64), StoreError>;
    /// Sets the reaped floor.
    fn set_reaped_floor(&mut self, floor: u64) -> Result<(), StoreError>;
    /// Runs `run` on these tables so that its changes are kept only if it returns true
    /// (a nested transaction); returns what `run` returned.
    fn atomically(&mut self, run: &mut AtomicRun<'_>) -> Result<bool, StoreError>;
}

/// Applies `request`, made by the log entry at `index`, and adds what it changed to
/// `changes`.
///
/// A command that is invalid (it cannot be, unless the log was written by a faulty peer)
/// is answered with [`Response::Rejected`] and changes nothing. Errors are storage
/// failures only.
pub(crate) fn apply(
    tables: &mut dyn KvTables,
    index: u64,
    request: &Request,
    changes: &mut Changes,
) -> Result<Response, StoreError> {
    match request {
        Request::Batch(requests) => {
            let mut responses = Vec::with_capacity(requests.len());
            for r in requests {
                let response = match r {
                    Request::Batch(_) => Response::Rejected("nested batch".into()),
                    single => apply_one(tables, index, single, changes)?,
                };
                responses.push(response);
            }
            Ok(Response::Batch(responses))
        }
        single => apply_one(tables, index, single, changes),
    }
}

fn apply_one(
    tables: &mut dyn KvTables,
    index: u64,
    request: &Request,
    changes: &mut Changes,
) -> Result<Response, StoreError> {
    if let Err(e) = request.validate() {
        return Ok(Response::Rejected(e.to_string()));
    }
    let ok = match request {
        Request::KvSet { key, value, flags } => {
            set(tables, index, key, value, *flags, changes)?;
            true
        }
        Request::KvCas {
            key,
            value,
            flags,
            index: expected,
        } => cas(tables, index, key, value, *flags, *expected, changes)?,
        Request::KvDelete { key } => {
            delete(tables, index, key, changes)?;
            true
        }
        Request::KvDeleteCas {
            key,
            index: expected,
        } => delete_cas(tables, index, key, *expected, changes)?,
        Request::KvDeleteTree { prefix } => {
            delete_tree(tables, index, prefix, changes)?;
            true
        }
        Request::Txn(ops) => {
            return Ok(Response::Txn(txn::apply(tables, index, ops, changes)?));
        }
        Request::KvReapTombstones { up_to_index } => {
            return Ok(Response::Reaped(reap(tables, *up_to_index, changes)?));
        }
        Request::Batch(_) => return Ok(Response::Rejected("nested batch".into())),
        Request::CatalogSync(_)
        | Request::CatalogSetNodeHealth { .. }
        | Request::CatalogDeregisterNode { .. }
        | Request::CatalogRegister(_)
        | Request::CatalogDeregister { .. }
        | Request::Once { .. } => {
            return Ok(Response::Rejected("not a KV command".into()));
        }
    };
    Ok(Response::Bool(ok))
}

/// Creates or replaces `key`; a write that changes neither value nor flags changes
/// nothing.
pub(crate) fn set(
    tables: &mut dyn KvTables,
    index: u64,
    key: &str,
    value: &[u8],
    flags: u64,
    changes: &mut Changes,
) -> Result<(), StoreError> {
    let entry = match tables.entry(key)? {
        Some(e) if e.value == value && e.flags == flags => return Ok(()),
        Some(e) => KvEntry {
            value: value.to_vec(),
            flags,
            modify_index: index,
            ..e
        },
        None => KvEntry {
            key: key.to_owned(),
            value: value.to_vec(),
            flags,
            create_index: index,
            modify_index: index,
            lock_index: 0,
            session: None,
        },
    };
    tables.put(&entry)?;
    changes.record(key, index, KvChangeKind::Set);
    bump_table_index(tables, index)
}

/// Check-and-set; true if the check passed and the set was made.
pub(crate) fn cas(
    tables: &mut dyn KvTables,
    index: u64,
    key: &str,
    value: &[u8],
    flags: u64,
    expected: u64,
    changes: &mut Changes,
) -> Result<bool, StoreError> {
    let existing = tables.entry(key)?;
    let matches = match (&existing, expected) {
        (None, 0) => true,
        (Some(_), 0) | (None, _) => false,
        (Some(e), expected) => e.modify_index == expected,
    };
    if matches {
        set(tables, index, key, value, flags, changes)?;
    }
    Ok(matches)
}

/// Deletes `key`, leaving a tombstone; a missing key changes nothing.
pub(crate) fn delete(
    tables: &mut dyn KvTables,
    index: u64,
    key: &str,
    changes: &mut Changes,
) -> Result<(), StoreError> {
    if tables.remove(key)? {
        tables.put_tombstone(key, index)?;
        changes.record(key, index, KvChangeKind::Delete);
        bump_table_index(tables, index)?;
    }
    Ok(())
}

/// Deletes `key` if its ModifyIndex is `expected`; true if deleted or missing.
pub(crate) fn delete_cas(
    tables: &mut dyn KvTables,
    index: u64,
    key: &str,
    expected: u64,
    changes: &mut Changes,
) -> Result<bool, StoreError> {
    Ok(match tables.entry(key)? {
        None => true,
        Some(e) if e.modify_index != expected => false,
        Some(_) => {
            delete(tables, index, key, changes)?;
            true
        }
    })
}

/// Deletes every key under `prefix`, leaving one tombstone for the prefix.
pub(crate) fn delete_tree(
    tables: &mut dyn KvTables,
    index: u64,
    prefix: &str,
    changes: &mut Changes,
) -> Result<(), StoreError> {
    if tables.remove_prefix(prefix)? > 0 {
        // Deleting everything needs no tombstone: the table index covers it.
        if !prefix.is_empty() {
            tables.put_tombstone(prefix, index)?;
        }
        changes.record(prefix, index, KvChangeKind::DeleteTree);
        bump_table_index(tables, index)?;
    }
    Ok(())
}

/// Removes the tombstones at or below `up_to` and raises the reaped floor to the largest
/// index removed; returns how many were removed.
fn reap(tables: &mut dyn KvTables, up_to: u64, changes: &mut Changes) -> Result<u64, StoreError> {
    let (removed, max_index) = tables.reap_tombstones(up_to)?;
    if max_index > tables.reaped_floor()? {
        tables.set_reaped_floor(max_index)?;
        changes.all_prefixes = true;
    }
    Ok(removed)
}

fn bump_table_index(tables: &mut dyn KvTables, index: u64) -> Result<(), StoreError> {
    if index > tables.table_index()? {
        tables.set_table_index(index)?;
    }
    Ok(())
}

/// All entries whose key starts with `prefix`, sorted by key.
pub(crate) fn list(view: &dyn KvView, prefix: &str) -> Result<Vec<KvEntry>, StoreError> {
    let mut out = Vec::new();
    view.scan(prefix, &mut |e| {
        out.push(e);
        ControlFlow::Continue(())
    })?;
    Ok(out)
}

/// Keys starting with `prefix`, sorted; with a separator, every key is cut after the
/// first separator following the prefix and duplicates are dropped (Consul's
/// `?keys&separator=`).
pub(crate) fn keys(
    view: &dyn KvView,
    prefix: &str,
    separator: Option<&str>,
) -> Result<Vec<String>, StoreError> {
    let separator = separator.filter(|s| !s.is_empty());
    let mut out: Vec<String> = Vec::new();
    view.scan_indexes(prefix, &mut |key, _| {
        let rolled = separator.and_then(|sep| {
            let rest = key.get(prefix.len()..)?;
            rest.find(sep)
                .map(|at| &key[..prefix.len() + at + sep.len()])
        });
        let key = rolled.unwrap_or(key);
        if out.last().map(String::as_str) != Some(key) {
            out.push(key.to_owned());
        }
    })?;
    out.dedup();
    Ok(out)
}

/// The index Consul reports for a read of one key: its ModifyIndex when it exists, the
/// table index otherwise. Never 0.
pub(crate) fn index_for_key(view: &dyn KvView, key: &str) -> Result<u64, StoreError> {
    let index = match view.entry(key)? {
        Some(e) => e.modify_index,
        None => view.table_index()?,
    };
    Ok(index.max(1))
}

/// The index Consul reports for a prefix read (`?recurse`, `?keys`): the largest
/// ModifyIndex or tombstone under the prefix, or the table index when there is none or
/// the prefix is empty; never below the reaped floor, and never 0.
pub(crate) fn index_for_prefix(view: &dyn KvView, prefix: &str) -> Result<u64, StoreError> {
    let mut index = 0;
    if !prefix.is_empty() {
        view.scan_indexes(prefix, &mut |_, modify| index = index.max(modify))?;
        index = index.max(view.max_tombstone(prefix)?);
    }
    if index == 0 {
        index = view.table_index()?;
    }
    Ok(index.max(view.reaped_floor()?).max(1))
}

#[cfg(test)]
pub(crate) mod mem {
    //! An in-memory implementation of the KV tables for tests.

    use std::collections::BTreeMap;
    use std::ops::ControlFlow;

    use super::{AtomicRun, KvTables, KvView};
    use crate::error::StoreError;
    use crate::types::KvEntry;

    /// KV tables in `BTreeMap`s.
    #[derive(Debug, Default, Clone, PartialEq)]
    pub(crate) struct MemTables {
        pub(crate) entries: BTreeMap<String, KvEntry>,
        pub(crate) tombstones: BTreeMap<String, u64>,
        pub(crate) table_index: u64,
        pub(crate) reaped_floor: u64,
    }

    impl KvView for MemTables {
        fn entry(&self, key: &str) -> Result<Option<KvEntry>, StoreError> {
            Ok(self.entries.get(key).cloned())
        }

        fn scan(
            &self,
            prefix: &str,
            visit: &mut dyn FnMut(KvEntry) -> ControlFlow<()>,
        ) -> Result<(), StoreError> {
            for (_, e) in self
                .entries
                .range(prefix.to_owned()..)
                .take_while(|(k, _)| k.starts_with(prefix))
            {
                if visit(e.clone()).is_break() {
                    break;
                }
            }
            Ok(())
        }

        fn scan_indexes(
            &self,
            prefix: &str,
            visit: &mut dyn FnMut(&str, u64),
        ) -> Result<(), StoreError> {
            for (k, e) in self
                .entries
                .range(prefix.to_owned()..)
                .take_while(|(k, _)| k.starts_with(prefix))
            {
                visit(k, e.modify_index);
            }
            Ok(())
        }

        fn max_tombstone(&self, prefix: &str) -> Result<u64, StoreError> {
            Ok(self
                .tombstones
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(_, i)| *i)
                .max()
                .unwrap_or(0))
        }

        fn table_index(&self) -> Result<u64, StoreError> {
            Ok(self.table_index)
        }

        fn reaped_floor(&self) -> Result<u64, StoreError> {
            Ok(self.reaped_floor)
        }
    }

    impl KvTables for MemTables {
        fn put(&mut self, entry: &KvEntry) -> Result<(), StoreError> {
            self.entries.insert(entry.key.clone(), entry.clone());
            Ok(())
        }

        fn remove(&mut self, key: &str) -> Result<bool, StoreError> {
            Ok(self.entries.remove(key).is_some())
        }

        fn remove_prefix(&mut self, prefix: &str) -> Result<u64, StoreError> {
            let before = self.entries.len();
            self.entries.retain(|k, _| !k.starts_with(prefix));
            Ok((before - self.entries.len()) as u64)
        }

        fn put_tombstone(&mut self, key: &str, index: u64) -> Result<(), StoreError> {
            self.tombstones.insert(key.to_owned(), index);
            Ok(())
        }

        fn set_table_index(&mut self, index: u64) -> Result<(), StoreError> {
            self.table_index = index;
            Ok(())
        }

        fn reap_tombstones(&mut self, up_to: u64) -> Result<(u64, u64), StoreError> {
            let (mut removed, mut max) = (0, 0);
            self.tombstones.retain(|_, index| {
                if *index <= up_to {
                    removed += 1;
                    max = max.max(*index);
                    false
                } else {
                    true
                }
            });
            Ok((removed, max))
        }

        fn set_reaped_floor(&mut self, floor: u64) -> Result<(), StoreError> {
            self.reaped_floor = floor;
            Ok(())
        }

        fn atomically(&mut self, run: &mut AtomicRun<'_>) -> Result<bool, StoreError> {
            let saved = self.clone();
            let keep = run(self)?;
            if !keep {
                *self = saved;
            }
            Ok(keep)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::mem::MemTables;
    use super::*;

    fn set(key: &str, value: &str, flags: u64) -> Request {
        Request::KvSet {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            flags,
        }
    }

    fn cas(key: &str, value: &str, index: u64) -> Request {
        Request::KvCas {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            flags: 0,
            index,
        }
    }

    fn run(t: &mut MemTables, index: u64, r: Request) -> Response {
        apply(t, index, &r, &mut Changes::default()).unwrap()
    }

    fn get(t: &MemTables, key: &str) -> KvEntry {
        t.entry(key).unwrap().unwrap()
    }

    #[test]
    fn create_then_update_sets_indexes() {
        let mut t = MemTables::default();
        assert_eq!(run(&mut t, 5, set("a", "1", 7)), Response::Bool(true));
        let e = get(&t, "a");
        assert_eq!(
            (e.create_index, e.modify_index, e.lock_index, e.flags),
            (5, 5, 0, 7)
        );
        assert_eq!(e.value, b"1");
        assert_eq!(e.session, None);

        // Simulate a lock holder to check that an update keeps LockIndex and session.
        let mut locked = e.clone();
        locked.lock_index = 2;
        locked.session = Some("s".into());
        t.put(&locked).unwrap();

        assert_eq!(run(&mut t, 9, set("a", "2", 0)), Response::Bool(true));
        let e = get(&t, "a");
        assert_eq!((e.create_index, e.modify_index, e.lock_index), (5, 9, 2));
        assert_eq!(e.flags, 0, "a write without flags resets them");
        assert_eq!(e.session.as_deref(), Some("s"));
        assert_eq!(t.table_index, 9);
    }

    #[test]
    fn identical_write_keeps_modify_index() {
        let mut t = MemTables::default();
        run(&mut t, 3, set("a", "1", 1));
        assert_eq!(run(&mut t, 4, set("a", "1", 1)), Response::Bool(true));
        assert_eq!(get(&t, "a").modify_index, 3);
        assert_eq!(t.table_index, 3);
        // Only flags differ: that is a change.
        run(&mut t, 6, set("a", "1", 2));
        assert_eq!(get(&t, "a").modify_index, 6);
    }

    #[test]
    fn cas_zero_creates_only_when_absent() {
        let mut t = MemTables::default();
        assert_eq!(run(&mut t, 2, cas("a", "x", 0)), Response::Bool(true));
        assert_eq!(get(&t, "a").create_index, 2);
        let before = t.clone();
        assert_eq!(run(&mut t, 3, cas("a", "y", 0)), Response::Bool(false));
        assert_eq!(t, before, "a failed CAS changes nothing");
    }

    #[test]
    fn cas_needs_matching_modify_index() {
        let mut t = MemTables::default();
        run(&mut t, 2, set("a", "x", 0));
        let before = t.clone();
        assert_eq!(run(&mut t, 3, cas("a", "y", 1)), Response::Bool(false));
        assert_eq!(
            run(&mut t, 4, cas("missing", "y", 2)),
            Response::Bool(false)
        );
        assert_eq!(t, before, "a failed CAS changes nothing");
        assert_eq!(run(&mut t, 5, cas("a", "y", 2)), Response::Bool(true));
        let e = get(&t, "a");
        assert_eq!((e.create_index, e.modify_index), (2, 5));
        assert_eq!(e.value, b"y");
    }

    #[test]
    fn delete_missing_key_succeeds_without_change() {
        let mut t = MemTables::default();
        run(&mut t, 2, set("a", "x", 0));
        let before = t.clone();
        assert_eq!(
            run(&mut t, 3, Request::KvDelete { key: "b".into() }),
            Response::Bool(true)
        );
        assert_eq!(t, before);
        assert_eq!(
            run(&mut t, 4, Request::KvDelete { key: "a".into() }),
            Response::Bool(true)
        );
        assert!(t.entry("a").unwrap().is_none());
        assert_eq!(t.tombstones.get("a"), Some(&4));
        assert_eq!(t.table_index, 4);
    }

    #[test]
    fn delete_cas_follows_consul() {
        let mut t = MemTables::default();
        run(&mut t, 2, set("a", "x", 0));
        let del = |index| Request::KvDeleteCas {
            key: "a".into(),
            index,
        };
        assert_eq!(run(&mut t, 3, del(1)), Response::Bool(false));
        assert!(t.entry("a").unwrap().is_some());
        assert_eq!(run(&mut t, 4, del(2)), Response::Bool(true));
        assert!(t.entry("a").unwrap().is_none());
        // Missing key: true whatever the index, nothing changes.
        let before = t.clone();
        assert_eq!(run(&mut t, 5, del(99)), Response::Bool(true));
        assert_eq!(t, before);
    }

    #[test]
    fn delete_tree_removes_prefix_and_leaves_one_tombstone() {
        let mut t = MemTables::default();
        for (i, k) in ["a/1", "a/2", "a/b/3", "b"].iter().enumerate() {
            run(&mut t, i as u64 + 1, set(k, "v", 0));
        }
        let tree = |p: &str| Request::KvDeleteTree { prefix: p.into() };
        assert_eq!(run(&mut t, 10, tree("a/")), Response::Bool(true));
        assert_eq!(keys(&t, "", None).unwrap(), vec!["b".to_string()]);
        assert_eq!(t.tombstones.get("a/"), Some(&10));
        assert_eq!(t.tombstones.len(), 1);
        assert_eq!(t.table_index, 10);
        // Nothing under the prefix: no change at all.
        let before = t.clone();
        run(&mut t, 11, tree("zzz"));
        assert_eq!(t, before);
        // Empty prefix deletes everything without a tombstone.
        run(&mut t, 12, tree(""));
        assert!(t.entries.is_empty());
        assert_eq!(t.tombstones.len(), 1);
        assert_eq!(t.table_index, 12);
    }

    #[test]
    fn keys_roll_up_at_separator() {
        let mut t = MemTables::default();
        for k in [
            "foo/a", "foo/b/c", "foo/b/d", "foo/bar", "foo/", "foo.x", "fop",
        ] {
            run(&mut t, 1, set(k, "v", 0));
        }
        assert_eq!(
            keys(&t, "foo/", Some("/")).unwrap(),
            vec!["foo/", "foo/a", "foo/b/", "foo/bar"]
        );
        assert_eq!(
            keys(&t, "", Some("/")).unwrap(),
            vec!["foo.x", "foo/", "fop"]
        );
        assert_eq!(
            keys(&t, "foo", None).unwrap(),
            vec!["foo.x", "foo/", "foo/a", "foo/b/c", "foo/b/d", "foo/bar"]
        );
        // An empty separator means no separator.
        assert_eq!(keys(&t, "foo/b", Some("")).unwrap().len(), 3);
        let listed: Vec<String> = list(&t, "foo/b")
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(listed, vec!["foo/b/c", "foo/b/d", "foo/bar"]);
    }

    #[test]
    fn tombstone_raises_prefix_index() {
        let mut t = MemTables::default();
        run(&mut t, 3, set("p/a", "v", 0));
        run(&mut t, 4, set("p/b", "v", 0));
        run(&mut t, 5, set("q", "v", 0));
        assert_eq!(index_for_prefix(&t, "p/").unwrap(), 4);
        run(&mut t, 8, Request::KvDelete { key: "p/b".into() });
        assert_eq!(index_for_prefix(&t, "p/").unwrap(), 8);
        assert_eq!(index_for_prefix(&t, "q").unwrap(), 5);
        // Nothing under the prefix: the table index.
        assert_eq!(index_for_prefix(&t, "zz").unwrap(), 8);
        assert_eq!(index_for_prefix(&t, "").unwrap(), 8);
        // A key reports its ModifyIndex; a missing key the table index.
        assert_eq!(index_for_key(&t, "p/a").unwrap(), 3);
        assert_eq!(index_for_key(&t, "p/b").unwrap(), 8);
        // Never 0.
        let empty = MemTables::default();
        assert_eq!(index_for_prefix(&empty, "x").unwrap(), 1);
        assert_eq!(index_for_key(&empty, "x").unwrap(), 1);
    }

    #[test]
    fn reaping_keeps_prefix_indexes_from_going_backwards() {
        let mut t = MemTables::default();
        run(&mut t, 3, set("p/a", "v", 0));
        run(&mut t, 4, set("p/b", "v", 0));
        run(&mut t, 5, set("q/a", "v", 0));
        run(&mut t, 8, Request::KvDelete { key: "p/b".into() });
        run(&mut t, 9, set("r", "v", 0));
        run(&mut t, 10, Request::KvDelete { key: "r".into() });
        assert_eq!(index_for_prefix(&t, "p/").unwrap(), 8);
        let reap = |up_to_index| Request::KvReapTombstones { up_to_index };

        let mut changes = Changes::default();
        let r = apply(&mut t, 11, &reap(8), &mut changes).unwrap();
        assert_eq!(r, Response::Reaped(1));
        assert_eq!(t.tombstones.keys().collect::<Vec<_>>(), vec!["r"]);
        assert_eq!(t.reaped_floor, 8);
        assert_eq!(t.table_index, 10, "a reap changes no table index");
        assert!(changes.all_prefixes && changes.keys.is_empty());
        // Without the floor p/ would report 3 now: it must stay at 8.
        assert_eq!(index_for_prefix(&t, "p/").unwrap(), 8);
        // Prefixes below the floor report it; higher ones are unaffected.
        assert_eq!(index_for_prefix(&t, "q/").unwrap(), 8);
        assert_eq!(index_for_prefix(&t, "r").unwrap(), 10);
        assert_eq!(index_for_prefix(&t, "").unwrap(), 10);
        assert_eq!(index_for_key(&t, "p/a").unwrap(), 3, "keys are unaffected");

        // Nothing left at or below 9: no change, no wake-up, the floor stays.
        let mut changes = Changes::default();
        assert_eq!(
            apply(&mut t, 12, &reap(9), &mut changes).unwrap(),
            Response::Reaped(0)
        );
        assert!(changes.is_empty());
        assert_eq!(t.reaped_floor, 8);
        run(&mut t, 13, reap(100));
        assert_eq!((t.reaped_floor, t.tombstones.len()), (10, 0));
        assert_eq!(index_for_prefix(&t, "r").unwrap(), 10);
    }

    #[test]
    fn changes_name_what_changed() {
        let mut t = MemTables::default();
        let record = |t: &mut MemTables, index, r: Request| {
            let mut c = Changes::default();
            apply(t, index, &r, &mut c).unwrap();
            c
        };
        let c = record(&mut t, 1, set("a/1", "v", 0));
        assert_eq!(c.keys.iter().collect::<Vec<_>>(), vec!["a/1"]);
        assert!(
            record(&mut t, 2, set("a/1", "v", 0)).is_empty(),
            "identical write"
        );
        assert!(
            record(&mut t, 3, cas("a/1", "w", 9)).is_empty(),
            "failed CAS"
        );
        assert!(
            record(&mut t, 4, Request::KvDelete { key: "zz".into() }).is_empty(),
            "missing key"
        );
        let c = record(
            &mut t,
            5,
            Request::KvDeleteTree {
                prefix: "a/".into(),
            },
        );
        assert_eq!(c.trees.iter().collect::<Vec<_>>(), vec!["a/"]);
        assert!(c.keys.is_empty());
        let c = record(
            &mut t,
            6,
            Request::Batch(vec![set("x", "1", 0), set("y", "1", 0)]),
        );
        assert_eq!(c.keys.len(), 2);
    }

    #[test]
    fn invalid_commands_are_rejected_not_applied() {
        let mut t = MemTables::default();
        let long = "k".repeat(crate::MAX_KEY_LEN + 1);
        let r = run(&mut t, 1, set(&long, "v", 0));
        assert!(matches!(r, Response::Rejected(_)));
        let batch = Request::Batch(vec![
            set("ok", "v", 0),
            Request::Batch(vec![]),
            set("", "v", 0),
            cas("ok", "w", 1),
        ]);
        let r = run(&mut t, 2, batch);
        let Response::Batch(rs) = r else {
            panic!("expected a batch response, got {r:?}")
        };
        assert_eq!(rs[0], Response::Bool(true));
        assert!(matches!(rs[1], Response::Rejected(_)));
        assert!(matches!(rs[2], Response::Rejected(_)));
        assert_eq!(rs[3], Response::Bool(false), "ok was modified at index 2");
        assert_eq!(t.entries.len(), 1);
    }
}
