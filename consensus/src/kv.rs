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
//!   are kept until a later reaper removes them.
//! - The table index is the largest log index that changed any key.

use std::ops::ControlFlow;

use crate::error::StoreError;
use crate::types::{KvEntry, Request, Response};

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
}

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
}

/// Applies `request`, made by the log entry at `index`.
///
/// A command that is invalid (it cannot be, unless the log was written by a faulty peer)
/// is answered with [`Response::Rejected`] and changes nothing. Errors are storage
/// failures only.
pub(crate) fn apply(
    tables: &mut dyn KvTables,
    index: u64,
    request: &Request,
) -> Result<Response, StoreError> {
    match request {
        Request::Batch(requests) => {
            let mut responses = Vec::with_capacity(requests.len());
            for r in requests {
                let response = match r {
                    Request::Batch(_) => Response::Rejected("nested batch".into()),
                    single => apply_one(tables, index, single)?,
                };
                responses.push(response);
            }
            Ok(Response::Batch(responses))
        }
        single => apply_one(tables, index, single),
    }
}

fn apply_one(
    tables: &mut dyn KvTables,
    index: u64,
    request: &Request,
) -> Result<Response, StoreError> {
    if let Err(e) = request.validate() {
        return Ok(Response::Rejected(e.to_string()));
    }
    let ok = match request {
        Request::KvSet { key, value, flags } => {
            set(tables, index, key, value, *flags)?;
            true
        }
        Request::KvCas {
            key,
            value,
            flags,
            index: expected,
        } => {
            let existing = tables.entry(key)?;
            let matches = match (&existing, *expected) {
                (None, 0) => true,
                (Some(_), 0) | (None, _) => false,
                (Some(e), expected) => e.modify_index == expected,
            };
            if matches {
                set(tables, index, key, value, *flags)?;
            }
            matches
        }
        Request::KvDelete { key } => {
            delete(tables, index, key)?;
            true
        }
        Request::KvDeleteCas {
            key,
            index: expected,
        } => match tables.entry(key)? {
            None => true,
            Some(e) if e.modify_index != *expected => false,
            Some(_) => {
                delete(tables, index, key)?;
                true
            }
        },
        Request::KvDeleteTree { prefix } => {
            if tables.remove_prefix(prefix)? > 0 {
                // Deleting everything needs no tombstone: the table index covers it.
                if !prefix.is_empty() {
                    tables.put_tombstone(prefix, index)?;
                }
                bump_table_index(tables, index)?;
            }
            true
        }
        Request::Batch(_) => return Ok(Response::Rejected("nested batch".into())),
    };
    Ok(Response::Bool(ok))
}

fn set(
    tables: &mut dyn KvTables,
    index: u64,
    key: &str,
    value: &[u8],
    flags: u64,
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
    bump_table_index(tables, index)
}

fn delete(tables: &mut dyn KvTables, index: u64, key: &str) -> Result<(), StoreError> {
    if tables.remove(key)? {
        tables.put_tombstone(key, index)?;
        bump_table_index(tables, index)?;
    }
    Ok(())
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
/// the prefix is empty. Never 0.
pub(crate) fn index_for_prefix(view: &dyn KvView, prefix: &str) -> Result<u64, StoreError> {
    let mut index = 0;
    if !prefix.is_empty() {
        view.scan_indexes(prefix, &mut |_, modify| index = index.max(modify))?;
        index = index.max(view.max_tombstone(prefix)?);
    }
    if index == 0 {
        index = view.table_index()?;
    }
    Ok(index.max(1))
}

#[cfg(test)]
pub(crate) mod mem {
    //! An in-memory implementation of the KV tables for tests.

    use std::collections::BTreeMap;
    use std::ops::ControlFlow;

    use super::{KvTables, KvView};
    use crate::error::StoreError;
    use crate::types::KvEntry;

    /// KV tables in `BTreeMap`s.
    #[derive(Debug, Default, Clone, PartialEq)]
    pub(crate) struct MemTables {
        pub(crate) entries: BTreeMap<String, KvEntry>,
        pub(crate) tombstones: BTreeMap<String, u64>,
        pub(crate) table_index: u64,
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
        apply(t, index, &r).unwrap()
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
