//! Blocking queries: only the watchers of what changed wake, promptly; registration is
//! race-free; nothing leaks; tombstone reaping keeps indexes from going backwards.

use std::time::{Duration, Instant};

use consensus::testing::wait_until;
use consensus::{ReadError, Request, WatchScope};

use crate::util::{open_single, put, start_single};

const LONG: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_wakes_only_the_watchers_of_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let (router, server) = start_single(dir.path()).await;
    let kv = server.kv();
    let a = put(&server, "a", "1").await;
    let table = kv.kv_index().unwrap();

    // Thousands of watchers of other keys and prefixes, and one of "a".
    const KEYS: usize = 3000;
    const PREFIXES: usize = 500;
    let mut others = Vec::new();
    for i in 0..KEYS {
        let kv = kv.clone();
        others.push(tokio::spawn(async move {
            kv.wait(WatchScope::Key(format!("other/{i}")), table, LONG)
                .await
        }));
    }
    for i in 0..PREFIXES {
        let kv = kv.clone();
        others.push(tokio::spawn(async move {
            kv.wait(WatchScope::Prefix(format!("other/{i}/")), table, LONG)
                .await
        }));
    }
    let watcher = {
        let kv = kv.clone();
        tokio::spawn(async move { kv.wait(WatchScope::Key("a".into()), a, LONG).await })
    };
    assert!(
        wait_until(Duration::from_secs(10), || kv.watch_stats().watchers
            == KEYS + PREFIXES + 1)
        .await,
        "watchers did not register: {:?}",
        kv.watch_stats()
    );
    let stats = kv.watch_stats();
    assert_eq!((stats.keys, stats.prefixes), (KEYS + 1, PREFIXES));

    let wrote_at = Instant::now();
    let a2 = put(&server, "a", "2").await;
    let woke = tokio::time::timeout(Duration::from_secs(2), watcher)
        .await
        .expect("the watcher of \"a\" was not woken within 2 s")
        .unwrap()
        .unwrap();
    assert_eq!(woke, a2);
    assert!(wrote_at.elapsed() < Duration::from_secs(2));

    // Give wrongly woken watchers time to show up in the counter.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = kv.watch_stats();
    assert_eq!(stats.wakeups, 1, "watchers of other keys were woken");
    assert_eq!(stats.watchers, KEYS + PREFIXES);
    assert!(others.iter().all(|t| !t.is_finished()));

    // A write to one of the other keys wakes its key watcher only.
    let o7 = put(&server, "other/7", "x").await;
    assert!(wait_until(Duration::from_secs(2), || others[7].is_finished()).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(kv.watch_stats().wakeups, 2);
    let seven = others.remove(7);
    assert_eq!(seven.await.unwrap().unwrap(), o7);

    // Cancelled watchers leave nothing behind.
    for t in &others {
        t.abort();
    }
    for t in others {
        let _ = t.await;
    }
    let stats = kv.watch_stats();
    assert_eq!((stats.keys, stats.prefixes, stats.watchers), (0, 0, 0));
    router.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_see_every_change_and_end_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (router, server) = start_single(dir.path()).await;
    let kv = server.kv();

    // A change racing with the registration is never missed.
    for i in 0..40 {
        let key = format!("race/{}", i % 4);
        let scope = if i % 2 == 0 {
            WatchScope::Key(key.clone())
        } else {
            WatchScope::Prefix("race/".into())
        };
        let seen = kv.index_for(&scope).unwrap();
        let writer = {
            let server = server.clone();
            tokio::spawn(async move { put(&server, &key, &i.to_string()).await })
        };
        let started = Instant::now();
        let got = kv.wait(scope, seen, Duration::from_secs(10)).await.unwrap();
        assert!(got > seen);
        assert!(started.elapsed() < Duration::from_secs(5), "iteration {i}");
        writer.await.unwrap();
    }

    // A tree delete wakes the watchers of keys and prefixes under it.
    put(&server, "dir/sub/x", "1").await;
    let seen = kv.index_for_prefix("dir/sub/").unwrap();
    let under = {
        let kv = kv.clone();
        tokio::spawn(async move {
            kv.wait(WatchScope::Prefix("dir/sub/".into()), seen, LONG)
                .await
        })
    };
    assert!(wait_until(Duration::from_secs(5), || kv.watch_stats().watchers == 1).await);
    let deleted = server
        .write(Request::KvDeleteTree {
            prefix: "dir/".into(),
        })
        .await
        .unwrap()
        .index;
    let got = tokio::time::timeout(Duration::from_secs(2), under)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got, deleted);

    // A wait that times out returns the current index and unregisters.
    let now = kv.index_for_key("quiet").unwrap();
    let started = Instant::now();
    let got = kv
        .wait(
            WatchScope::Key("quiet".into()),
            now,
            Duration::from_millis(100),
        )
        .await
        .unwrap();
    assert_eq!(got, now);
    assert!(started.elapsed() >= Duration::from_millis(100));
    // An index already passed returns at once.
    assert_eq!(
        kv.wait(WatchScope::Key("quiet".into()), now - 1, LONG)
            .await
            .unwrap(),
        now
    );
    assert_eq!(kv.watch_stats().watchers, 0);

    // Shutting down releases waiting queries.
    let pending = {
        let kv = kv.clone();
        tokio::spawn(async move {
            kv.wait(WatchScope::Prefix("p".into()), u64::MAX - 1, Duration::MAX)
                .await
        })
    };
    assert!(wait_until(Duration::from_secs(5), || kv.watch_stats().watchers == 1).await);
    router.shutdown_all().await;
    let result = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(result, Err(ReadError::Closed)), "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaped_tombstones_never_move_an_index_backwards() {
    let dir = tempfile::tempdir().unwrap();
    let (router, server) = start_single(dir.path()).await;
    let kv = server.kv();
    put(&server, "p/a", "1").await;
    put(&server, "p/b", "1").await;
    put(&server, "q", "1").await;
    let deleted = server
        .write(Request::KvDelete { key: "p/b".into() })
        .await
        .unwrap()
        .index;
    let table = kv.kv_index().unwrap();
    assert_eq!(kv.index_for_prefix("p/").unwrap(), deleted);

    // A watcher of p/ that saw the delete's index is not woken into seeing less.
    let watcher = {
        let kv = kv.clone();
        tokio::spawn(async move {
            kv.wait(
                WatchScope::Prefix("p/".into()),
                deleted,
                Duration::from_millis(500),
            )
            .await
        })
    };
    assert_eq!(server.reap_tombstones(deleted).await.unwrap(), 1);
    assert!(watcher.await.unwrap().unwrap() >= deleted);
    assert_eq!(kv.index_for_prefix("p/").unwrap(), deleted);
    assert_eq!(
        kv.kv_index().unwrap(),
        table,
        "reaping bumps no table index"
    );
    assert_eq!(server.reap_tombstones(deleted).await.unwrap(), 0);

    // Restart: the floor is durable.
    router.shutdown_all().await;
    drop((server, kv));
    let (router, server) = open_single(dir.path()).await;
    assert_eq!(server.kv().index_for_prefix("p/").unwrap(), deleted);
    router.shutdown_all().await;
}
