//! Blocking-query support: a registry of watchers that wakes only the watchers of what
//! changed.
//!
//! A watcher watches one [`WatchScope`]: a key, or a prefix; or one
//! [`CatalogScope`](crate::CatalogScope) of the catalog. The registry keeps one slot per
//! watched key, one per watched prefix and one per watched catalog scope; a slot is a `tokio::sync::watch` channel shared
//! by every watcher of that scope, so an idle watcher is a parked task and costs no CPU.
//!
//! After each state machine transaction commits, the state machine hands the registry the
//! [`Changes`] it made; the registry wakes:
//! - the watchers of each changed key, and the watchers of every prefix of it (found by
//!   looking up the key's leading bytes at each length some watched prefix has);
//! - for a tree delete of prefix `P`: the watchers of keys and prefixes that start with
//!   `P`, and of prefixes of `P`;
//! - the watchers of each catalog scope a catalog command changed;
//! - every prefix watcher when the tombstone floor rose (reaping can change any prefix's
//!   index), and everyone after a snapshot install.
//!
//! Registration is race-free: a watcher subscribes to its slot *before* it reads the
//! current index, and the state machine notifies *after* its transaction commits, so a
//! change is either visible to the read or wakes the watcher. A slot is removed when its
//! last watcher is dropped (returned, timed out or cancelled), under the registry's lock,
//! so the registry holds nothing for watchers that are gone.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{broadcast, watch};

use crate::catalog::{CatalogChange, CatalogScope};

/// Changes kept for a slow follower of [`KvReader::changes`](crate::KvReader::changes)
/// before it starts losing the oldest.
pub const CHANGE_FEED_CAPACITY: usize = 1024;

/// One write applied to the KV state, as followers of the change feed see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvChange {
    /// The key written or deleted, or the prefix deleted as a tree.
    pub key: String,
    /// The Raft index of the write (the key's `ModifyIndex` after a set).
    pub modify_index: u64,
    /// What the write did.
    pub kind: KvChangeKind,
}

/// What a [`KvChange`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvChangeKind {
    /// The key was set (put, CAS, lock acquire or release).
    Set,
    /// The key was deleted.
    Delete,
    /// Every key under the prefix was deleted.
    DeleteTree,
}

/// What a blocking query watches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WatchScope {
    /// One key: its index is [`KvReader::index_for_key`](crate::KvReader::index_for_key).
    Key(String),
    /// Every key starting with the prefix: its index is
    /// [`KvReader::index_for_prefix`](crate::KvReader::index_for_prefix).
    Prefix(String),
}

/// Counters of the watch registry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchStats {
    /// Distinct keys watched now.
    pub keys: usize,
    /// Distinct prefixes watched now.
    pub prefixes: usize,
    /// Distinct catalog scopes watched now.
    pub catalog_scopes: usize,
    /// Watchers registered now.
    pub watchers: usize,
    /// Times a waiting watcher was woken by a change, since the server started.
    pub wakeups: u64,
}

/// The keys a committed transaction changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Changes {
    /// Keys written or deleted.
    pub(crate) keys: BTreeSet<String>,
    /// Prefixes deleted as a tree.
    pub(crate) trees: BTreeSet<String>,
    /// Every prefix's index may have changed (the tombstone floor rose).
    pub(crate) all_prefixes: bool,
    /// Everything may have changed (a snapshot was installed).
    pub(crate) all: bool,
    /// The writes, in the order they were applied, for the change feed.
    pub(crate) feed: Vec<KvChange>,
    /// Catalog scopes whose index rose.
    pub(crate) catalog: BTreeSet<CatalogScope>,
    /// The catalog changes, in the order they were applied, for the catalog feed.
    pub(crate) catalog_feed: Vec<CatalogChange>,
}

impl Changes {
    /// Records a write for the change feed (and the watchers of its key or prefix).
    pub(crate) fn record(&mut self, key: &str, modify_index: u64, kind: KvChangeKind) {
        match kind {
            KvChangeKind::Set | KvChangeKind::Delete => self.key(key),
            KvChangeKind::DeleteTree => self.tree(key),
        }
        self.feed.push(KvChange {
            key: key.to_owned(),
            modify_index,
            kind,
        });
    }

    pub(crate) fn key(&mut self, key: &str) {
        if !self.keys.contains(key) {
            self.keys.insert(key.to_owned());
        }
    }

    pub(crate) fn tree(&mut self, prefix: &str) {
        if !self.trees.contains(prefix) {
            self.trees.insert(prefix.to_owned());
        }
    }

    /// Records that the index of a catalog scope rose.
    pub(crate) fn catalog_scope(&mut self, scope: CatalogScope) {
        self.catalog.insert(scope);
    }

    pub(crate) fn merge(&mut self, other: Changes) {
        self.keys.extend(other.keys);
        self.trees.extend(other.trees);
        self.all_prefixes |= other.all_prefixes;
        self.all |= other.all;
        self.feed.extend(other.feed);
        self.catalog.extend(other.catalog);
        self.catalog_feed.extend(other.catalog_feed);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty()
            && self.trees.is_empty()
            && !self.all_prefixes
            && !self.all
            && self.catalog.is_empty()
            && self.catalog_feed.is_empty()
    }
}

#[derive(Default)]
struct Slots {
    keys: BTreeMap<String, watch::Sender<()>>,
    prefixes: BTreeMap<String, watch::Sender<()>>,
    catalog: BTreeMap<CatalogScope, watch::Sender<()>>,
    /// How many watched prefixes have each length, so that the prefixes of a changed key
    /// are found with one lookup per length in use.
    prefix_lens: BTreeMap<usize, usize>,
    closed: bool,
}

impl Slots {
    fn map(&mut self, prefix: bool) -> &mut BTreeMap<String, watch::Sender<()>> {
        if prefix {
            &mut self.prefixes
        } else {
            &mut self.keys
        }
    }

    /// Wakes the watchers of every prefix of `key` (including `key` itself).
    fn wake_prefixes_of(&self, key: &str) {
        for &len in self.prefix_lens.range(..=key.len()).map(|(len, _)| len) {
            if key.is_char_boundary(len)
                && let Some(slot) = self.prefixes.get(&key[..len])
            {
                slot.send_replace(());
            }
        }
    }

    fn wake_under(map: &BTreeMap<String, watch::Sender<()>>, prefix: &str) {
        for (_, slot) in map
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
        {
            slot.send_replace(());
        }
    }
}

/// The watchers of one server, shared by its state machine and its readers, and the
/// feed of applied writes.
pub(crate) struct WatchRegistry {
    slots: Mutex<Slots>,
    wakeups: AtomicU64,
    feed: broadcast::Sender<KvChange>,
    catalog_feed: broadcast::Sender<CatalogChange>,
}

impl Default for WatchRegistry {
    fn default() -> Self {
        WatchRegistry {
            slots: Mutex::default(),
            wakeups: AtomicU64::default(),
            feed: broadcast::Sender::new(CHANGE_FEED_CAPACITY),
            catalog_feed: broadcast::Sender::new(CHANGE_FEED_CAPACITY),
        }
    }
}

impl WatchRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a watcher of `scope`. Call before reading the state it depends on.
    pub(crate) fn register(self: &Arc<Self>, scope: &WatchScope) -> Watcher {
        let (name, prefix) = match scope {
            WatchScope::Key(k) => (k.as_str(), false),
            WatchScope::Prefix(p) => (p.as_str(), true),
        };
        let mut slots = self.lock();
        let rx = if slots.closed {
            // A channel whose sender is gone: the watcher sees the registry closed.
            watch::channel(()).1
        } else if let Some(slot) = slots.map(prefix).get(name) {
            slot.subscribe()
        } else {
            let (tx, rx) = watch::channel(());
            slots.map(prefix).insert(name.to_owned(), tx);
            if prefix {
                *slots.prefix_lens.entry(name.len()).or_default() += 1;
            }
            rx
        };
        Watcher {
            registry: self.clone(),
            slot: SlotName::Kv {
                name: name.to_owned(),
                prefix,
            },
            rx: Some(rx),
        }
    }

    /// Registers a watcher of a catalog scope. Call before reading the state it depends
    /// on.
    pub(crate) fn register_catalog(self: &Arc<Self>, scope: &CatalogScope) -> Watcher {
        let mut slots = self.lock();
        let rx = if slots.closed {
            watch::channel(()).1
        } else if let Some(slot) = slots.catalog.get(scope) {
            slot.subscribe()
        } else {
            let (tx, rx) = watch::channel(());
            slots.catalog.insert(scope.clone(), tx);
            rx
        };
        Watcher {
            registry: self.clone(),
            slot: SlotName::Catalog(scope.clone()),
            rx: Some(rx),
        }
    }

    /// Follows the catalog changes applied from now on.
    pub(crate) fn subscribe_catalog_changes(&self) -> broadcast::Receiver<CatalogChange> {
        self.catalog_feed.subscribe()
    }

    /// Follows the writes applied from now on.
    pub(crate) fn subscribe_changes(&self) -> broadcast::Receiver<KvChange> {
        self.feed.subscribe()
    }

    /// Wakes the watchers of what `changes` touched and passes its writes to the change
    /// feed. Call after the change committed.
    pub(crate) fn notify(&self, changes: &Changes) {
        if changes.is_empty() {
            return;
        }
        if self.feed.receiver_count() > 0 {
            for change in &changes.feed {
                let _ = self.feed.send(change.clone());
            }
        }
        if self.catalog_feed.receiver_count() > 0 {
            for change in &changes.catalog_feed {
                let _ = self.catalog_feed.send(change.clone());
            }
        }
        let slots = self.lock();
        if changes.all {
            slots
                .keys
                .values()
                .chain(slots.prefixes.values())
                .chain(slots.catalog.values())
                .for_each(|s| {
                    s.send_replace(());
                });
            return;
        }
        for scope in &changes.catalog {
            if let Some(slot) = slots.catalog.get(scope) {
                slot.send_replace(());
            }
        }
        if changes.all_prefixes {
            slots.prefixes.values().for_each(|s| {
                s.send_replace(());
            });
        }
        for key in &changes.keys {
            if let Some(slot) = slots.keys.get(key) {
                slot.send_replace(());
            }
            if !changes.all_prefixes {
                slots.wake_prefixes_of(key);
            }
        }
        for tree in &changes.trees {
            Slots::wake_under(&slots.keys, tree);
            if !changes.all_prefixes {
                Slots::wake_under(&slots.prefixes, tree);
                slots.wake_prefixes_of(tree);
            }
        }
    }

    /// Wakes everyone (a snapshot replaced the state).
    pub(crate) fn notify_all(&self) {
        self.notify(&Changes {
            all: true,
            ..Changes::default()
        });
    }

    /// Drops every slot: waiting watchers see the registry closed, and later watchers
    /// too.
    pub(crate) fn close(&self) {
        let mut slots = self.lock();
        slots.closed = true;
        slots.keys.clear();
        slots.prefixes.clear();
        slots.catalog.clear();
        slots.prefix_lens.clear();
    }

    pub(crate) fn stats(&self) -> WatchStats {
        let slots = self.lock();
        let watchers = slots
            .keys
            .values()
            .chain(slots.prefixes.values())
            .chain(slots.catalog.values())
            .map(|s| s.receiver_count())
            .sum();
        WatchStats {
            keys: slots.keys.len(),
            prefixes: slots.prefixes.len(),
            catalog_scopes: slots.catalog.len(),
            watchers,
            wakeups: self.wakeups.load(Ordering::Relaxed),
        }
    }

    fn unregister(&self, slot: &SlotName, rx: watch::Receiver<()>) {
        let mut slots = self.lock();
        drop(rx);
        let (name, prefix) = match slot {
            SlotName::Kv { name, prefix } => (name.as_str(), *prefix),
            SlotName::Catalog(scope) => {
                if slots
                    .catalog
                    .get(scope)
                    .is_some_and(|s| s.receiver_count() == 0)
                {
                    slots.catalog.remove(scope);
                }
                return;
            }
        };
        let map = slots.map(prefix);
        if map.get(name).is_some_and(|s| s.receiver_count() == 0) {
            map.remove(name);
            if prefix && let Some(n) = slots.prefix_lens.get_mut(&name.len()) {
                *n -= 1;
                if *n == 0 {
                    slots.prefix_lens.remove(&name.len());
                }
            }
        }
    }
}

/// The slot a watcher is registered in.
enum SlotName {
    Kv { name: String, prefix: bool },
    Catalog(CatalogScope),
}

/// One registered watcher; unregisters when dropped.
pub(crate) struct Watcher {
    registry: Arc<WatchRegistry>,
    slot: SlotName,
    rx: Option<watch::Receiver<()>>,
}

impl Watcher {
    /// Waits for a change notified after registration (or after the previous return).
    /// False if the registry was closed.
    pub(crate) async fn changed(&mut self) -> bool {
        let Some(rx) = self.rx.as_mut() else {
            return false;
        };
        let woken = rx.changed().await.is_ok();
        if woken {
            self.registry.wakeups.fetch_add(1, Ordering::Relaxed);
        }
        woken
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Some(rx) = self.rx.take() {
            self.registry.unregister(&self.slot, rx);
        }
    }
}

impl Watcher {
    /// A blocking-query wait on this (already registered) watcher: returns the index
    /// `index_now` reads as soon as it is greater than `after_index`, or after `timeout`
    /// whatever it is then; [`ReadError::Closed`] when the server shuts down. A timeout
    /// too large to represent waits "forever" (a year).
    pub(crate) async fn wait_past(
        mut self,
        after_index: u64,
        timeout: std::time::Duration,
        index_now: impl Fn() -> Result<u64, crate::ReadError>,
    ) -> Result<u64, crate::ReadError> {
        let now = tokio::time::Instant::now();
        let deadline = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + std::time::Duration::from_secs(365 * 24 * 3600));
        loop {
            let index = index_now()?;
            if index > after_index {
                return Ok(index);
            }
            match tokio::time::timeout_at(deadline, self.changed()).await {
                Ok(true) => continue,
                Ok(false) => return Err(crate::ReadError::Closed),
                Err(_) => return index_now(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn changes(keys: &[&str], trees: &[&str]) -> Changes {
        let mut c = Changes::default();
        keys.iter().for_each(|k| c.key(k));
        trees.iter().for_each(|t| c.tree(t));
        c
    }

    #[test]
    fn the_change_feed_reports_writes_in_order_to_its_followers() {
        let registry = WatchRegistry::default();
        let mut before = Changes::default();
        before.record("a", 5, KvChangeKind::Set);
        // Nobody follows yet: nothing is kept for later followers.
        registry.notify(&before);
        let mut feed = registry.subscribe_changes();

        let mut c = Changes::default();
        c.record("a", 6, KvChangeKind::Set);
        c.record("b", 6, KvChangeKind::Delete);
        c.record("p/", 7, KvChangeKind::DeleteTree);
        assert!(c.keys.contains("a") && c.keys.contains("b") && c.trees.contains("p/"));
        registry.notify(&c);
        let got: Vec<(String, u64, KvChangeKind)> = std::iter::from_fn(|| feed.try_recv().ok())
            .map(|c| (c.key, c.modify_index, c.kind))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a".into(), 6, KvChangeKind::Set),
                ("b".into(), 6, KvChangeKind::Delete),
                ("p/".into(), 7, KvChangeKind::DeleteTree),
            ]
        );
    }

    /// Registers one watcher per scope and returns which of them `changes` wakes.
    async fn woken(scopes: &[WatchScope], changes: &Changes) -> Vec<WatchScope> {
        let registry = Arc::new(WatchRegistry::default());
        let mut watchers: Vec<_> = scopes.iter().map(|s| registry.register(s)).collect();
        registry.notify(changes);
        let mut out = Vec::new();
        for (scope, w) in scopes.iter().zip(watchers.iter_mut()) {
            if tokio::time::timeout(Duration::ZERO, w.changed()).await == Ok(true) {
                out.push(scope.clone());
            }
        }
        out
    }

    fn key(k: &str) -> WatchScope {
        WatchScope::Key(k.into())
    }

    fn prefix(p: &str) -> WatchScope {
        WatchScope::Prefix(p.into())
    }

    #[tokio::test]
    async fn a_write_wakes_its_key_and_its_prefixes_only() {
        let scopes = [
            key("a/b"),
            key("a/bc"),
            key("a"),
            prefix("a/"),
            prefix("a/b"),
            prefix(""),
            prefix("a/b/"),
            prefix("b"),
            prefix("a/bc"),
        ];
        let got = woken(&scopes, &changes(&["a/b"], &[])).await;
        assert_eq!(
            got,
            vec![key("a/b"), prefix("a/"), prefix("a/b"), prefix("")]
        );
    }

    #[tokio::test]
    async fn a_tree_delete_wakes_under_and_above_it() {
        let scopes = [
            key("a/b/c"),
            key("a/x"),
            key("a/b"),
            prefix("a/b/c/"),
            prefix("a/"),
            prefix("a/c"),
            prefix("b/"),
        ];
        let got = woken(&scopes, &changes(&[], &["a/b"])).await;
        assert_eq!(
            got,
            vec![key("a/b/c"), key("a/b"), prefix("a/b/c/"), prefix("a/")]
        );
    }

    #[tokio::test]
    async fn floor_changes_wake_prefixes_and_installs_wake_all() {
        let scopes = [key("k"), prefix("p/"), prefix("")];
        let floor = Changes {
            all_prefixes: true,
            ..Changes::default()
        };
        assert_eq!(woken(&scopes, &floor).await, vec![prefix("p/"), prefix("")]);
        let all = Changes {
            all: true,
            ..Changes::default()
        };
        assert_eq!(woken(&scopes, &all).await, scopes.to_vec());
        assert!(woken(&scopes, &Changes::default()).await.is_empty());
    }

    #[tokio::test]
    async fn slots_are_removed_with_their_last_watcher() {
        let registry = Arc::new(WatchRegistry::default());
        let a1 = registry.register(&key("a"));
        let a2 = registry.register(&key("a"));
        let p = registry.register(&prefix("a"));
        assert_eq!(
            registry.stats(),
            WatchStats {
                keys: 1,
                prefixes: 1,
                catalog_scopes: 0,
                watchers: 3,
                wakeups: 0
            }
        );
        drop(a1);
        assert_eq!(registry.stats().keys, 1);
        drop(a2);
        drop(p);
        assert_eq!(registry.stats(), WatchStats::default());
        assert!(registry.lock().prefix_lens.is_empty());

        // A cancelled wait unregisters too.
        let mut w = registry.register(&key("b"));
        let _ = tokio::time::timeout(Duration::from_millis(5), w.changed()).await;
        drop(w);
        assert_eq!(registry.stats().keys, 0);
    }

    #[tokio::test]
    async fn a_change_before_the_wait_is_not_lost() {
        let registry = Arc::new(WatchRegistry::default());
        let mut w = registry.register(&key("a"));
        // The change commits between registration and the wait.
        registry.notify(&changes(&["a"], &[]));
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), w.changed()).await,
            Ok(true)
        );
        assert_eq!(registry.stats().wakeups, 1);
    }

    #[tokio::test]
    async fn closing_releases_waiters() {
        let registry = Arc::new(WatchRegistry::default());
        let mut w = registry.register(&prefix("x"));
        registry.close();
        assert!(!w.changed().await);
        let mut late = registry.register(&key("y"));
        assert!(!late.changed().await);
        drop((w, late));
        assert_eq!(registry.stats().keys + registry.stats().prefixes, 0);
    }
}
