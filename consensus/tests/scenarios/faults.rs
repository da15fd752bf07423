//! Linearizable KV semantics under a faulty network: lost, delayed and reordered
//! messages, partitions, and crashed and restarted servers, with a seeded fault schedule.
//!
//! Clients write through whichever server is leader and record what was acknowledged,
//! refused, or left unknown (no answer in time, or the server stopped). At the end the
//! faults stop, the servers converge, and a checker compares the history with the final
//! state:
//! - each writer owns a key and writes 1, 2, 3, ... in order: the final value is at least
//!   the last acknowledged one and at most the last attempted one;
//! - a counter incremented by transactions `[cas ctr n→n+1, set hist/<n+1> = tag]` ends at
//!   N with exactly `hist/1..=N` present, each holding the tag of a distinct increment that
//!   was acknowledged (at that position) or unknown, never one that was refused, and every
//!   acknowledged increment present;
//! - a counter incremented by plain CAS ends between its acknowledged increments and
//!   those plus the unknown ones;
//! - a linearizable read (`ensure_linearizable`, then a local read on that server) sees
//!   every write acknowledged before it began;
//! - every server holds the same entries and indexes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use consensus::testing::{
    Faults, MemRouter, SimRng, members, restart_server, start_servers_with, wait_for_leader,
    wait_until,
};
use consensus::{
    KvEntry, Request, Response, ServerConfig, TxnOp, TxnOutcome, WriteError, WriteOutcome,
};
use tokio::sync::Mutex;

const IDS: [u64; 3] = [1, 2, 3];
const WRITERS: u64 = 3;
const INCREMENTERS: u64 = 3;

fn tune(c: &mut ServerConfig) {
    // Unanswered proposals become "unknown" quickly.
    c.write_timeout = Duration::from_secs(2);
    // Snapshots and purges happen during the run, so some catch-ups go by snapshot.
    c.raft.snapshot_policy = openraft::SnapshotPolicy::LogsSinceLast(100);
    c.raft.max_in_snapshot_log_to_keep = 20;
    c.raft.purge_batch_size = 10;
}

/// How a write ended, as far as the client knows.
#[derive(Debug, Clone, PartialEq)]
enum Known {
    Applied(Response),
    NotApplied,
    Unknown,
}

/// Writes through the current leader, retrying while no write was proposed; gives up
/// (NotApplied) after `patience`.
async fn submit(router: &MemRouter, request: Request, patience: Duration) -> Known {
    let deadline = Instant::now() + patience;
    loop {
        let leader = router.servers().into_iter().find(|s| s.is_leader());
        if let Some(leader) = leader {
            match leader.write(request.clone()).await {
                Ok(WriteOutcome { response, .. }) => return Known::Applied(response),
                // Not proposed, or truncated from the log: not applied.
                Err(WriteError::ForwardToLeader { .. } | WriteError::Unavailable(_)) => {}
                Err(WriteError::Indeterminate(_) | WriteError::Fatal(_)) => return Known::Unknown,
                Err(e) => panic!("unexpected write error: {e}"),
            }
        }
        if Instant::now() >= deadline {
            return Known::NotApplied;
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}

/// What the clients observed.
#[derive(Debug, Default, Clone)]
struct History {
    /// Per writer key: (last acknowledged value, last attempted value).
    writes: BTreeMap<String, (u64, u64)>,
    /// Transactional increments: tag → position, acknowledged.
    inc_acked: BTreeMap<String, u64>,
    inc_unknown: BTreeSet<String>,
    inc_refused: BTreeSet<String>,
    /// Plain CAS increments.
    cas_acked: u64,
    cas_unknown: u64,
    /// Linearizable reads that succeeded, and those that saw too old a value.
    reads: u64,
    stale_reads: Vec<String>,
}

fn number(entry: Option<&KvEntry>) -> u64 {
    entry.map_or(0, |e| {
        String::from_utf8_lossy(&e.value).parse().expect("a number")
    })
}

/// Checks the final state against the history; returns the violations found.
fn check(history: &History, state: &[KvEntry]) -> Vec<String> {
    let mut bad = Vec::new();
    let by_key: BTreeMap<&str, &KvEntry> = state.iter().map(|e| (e.key.as_str(), e)).collect();
    for (key, &(acked, attempted)) in &history.writes {
        let value = number(by_key.get(key.as_str()).copied());
        if value < acked || value > attempted {
            bad.push(format!(
                "{key} = {value}, acknowledged {acked}, attempted up to {attempted}"
            ));
        }
    }

    let n = number(by_key.get("ctr").copied());
    let hist: Vec<(&str, String)> = state
        .iter()
        .filter_map(|e| {
            let pos = e.key.strip_prefix("hist/")?;
            Some((pos, String::from_utf8_lossy(&e.value).into_owned()))
        })
        .collect();
    let positions: Vec<u64> = hist.iter().map(|(p, _)| p.parse().unwrap_or(0)).collect();
    if positions != (1..=n).collect::<Vec<_>>() {
        bad.push(format!(
            "counter is {n} but history holds positions {positions:?}"
        ));
    }
    let mut tags = BTreeSet::new();
    for ((pos, tag), position) in hist.iter().zip(&positions) {
        if !tags.insert(tag.clone()) {
            bad.push(format!("increment {tag} applied twice"));
        }
        if history.inc_refused.contains(tag) {
            bad.push(format!("refused increment {tag} was applied at {pos}"));
        } else if let Some(&acked_at) = history.inc_acked.get(tag) {
            if acked_at != *position {
                bad.push(format!(
                    "increment {tag} acknowledged at {acked_at} but stored at {pos}"
                ));
            }
        } else if !history.inc_unknown.contains(tag) {
            bad.push(format!("increment {tag} at {pos} was never attempted"));
        }
    }
    for tag in history.inc_acked.keys() {
        if !tags.contains(tag) {
            bad.push(format!("acknowledged increment {tag} is missing"));
        }
    }

    bad.extend(history.stale_reads.iter().cloned());

    let c2 = number(by_key.get("ctr2").copied());
    if c2 < history.cas_acked || c2 > history.cas_acked + history.cas_unknown {
        bad.push(format!(
            "CAS counter is {c2}: {} acknowledged, {} unknown",
            history.cas_acked, history.cas_unknown
        ));
    }
    bad
}

fn entry(key: &str, value: &str) -> KvEntry {
    KvEntry {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        flags: 0,
        create_index: 1,
        modify_index: 1,
        lock_index: 0,
        session: None,
    }
}

#[test]
fn checker_catches_bad_histories() {
    let history = History {
        writes: BTreeMap::from([("w/0".to_string(), (3, 4))]),
        inc_acked: BTreeMap::from([("a".to_string(), 1)]),
        inc_unknown: BTreeSet::from(["u".to_string()]),
        inc_refused: BTreeSet::from(["r".to_string()]),
        cas_acked: 2,
        cas_unknown: 1,
        ..History::default()
    };
    let good = vec![
        entry("ctr", "2"),
        entry("ctr2", "3"),
        entry("hist/000001", "a"),
        entry("hist/000002", "u"),
        entry("w/0", "4"),
    ];
    assert_eq!(check(&history, &good), Vec::<String>::new());

    let mutate = |key: &str, value: Option<&str>| {
        let mut state: Vec<KvEntry> = good.iter().filter(|e| e.key != key).cloned().collect();
        if let Some(v) = value {
            state.push(entry(key, v));
            state.sort_by(|a, b| a.key.cmp(&b.key));
        }
        state
    };
    for (what, state) in [
        ("lost write", mutate("w/0", Some("2"))),
        ("write from nowhere", mutate("w/0", Some("5"))),
        (
            "lost acknowledged increment",
            mutate("hist/000001", Some("u")),
        ),
        (
            "refused increment applied",
            mutate("hist/000002", Some("r")),
        ),
        ("counter ahead of history", mutate("ctr", Some("3"))),
        ("history hole", mutate("hist/000001", None)),
        ("CAS counter too high", mutate("ctr2", Some("4"))),
        ("CAS counter too low", mutate("ctr2", Some("1"))),
    ] {
        assert!(!check(&history, &state).is_empty(), "{what} went unnoticed");
    }
    let mut stale = history.clone();
    stale.stale_reads.push("read 1 after 2".into());
    assert!(
        !check(&stale, &good).is_empty(),
        "a stale read went unnoticed"
    );
}

async fn leader_entry(router: &MemRouter, key: &str) -> Option<KvEntry> {
    let leader = router.servers().into_iter().find(|s| s.is_leader())?;
    leader.kv().get(key).ok()?
}

async fn writer(router: MemRouter, id: u64, stop: Arc<AtomicBool>, history: Arc<Mutex<History>>) {
    let key = format!("w/{id}");
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let request = Request::KvSet {
            key: key.clone(),
            value: n.to_string().into_bytes(),
            flags: 0,
        };
        let known = submit(&router, request, Duration::from_secs(1)).await;
        let mut h = history.lock().await;
        let slot = h.writes.entry(key.clone()).or_default();
        match known {
            Known::Applied(_) => *slot = (n, n),
            Known::Unknown => slot.1 = n,
            // Never proposed: the next write reuses the number.
            Known::NotApplied => n -= 1,
        }
    }
}

async fn incrementer(
    router: MemRouter,
    id: u64,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<History>>,
) {
    let mut op = 0;
    while !stop.load(Ordering::SeqCst) {
        op += 1;
        // A transactional increment with a history record.
        if let Some(current) = leader_entry(&router, "ctr").await {
            let n = number(Some(&current)) + 1;
            let tag = format!("c{id}-{op}");
            let request = Request::Txn(vec![
                TxnOp::Cas {
                    key: "ctr".into(),
                    value: n.to_string().into_bytes(),
                    flags: 0,
                    index: current.modify_index,
                },
                TxnOp::Set {
                    key: format!("hist/{n:06}"),
                    value: tag.clone().into_bytes(),
                    flags: 0,
                },
            ]);
            let known = submit(&router, request, Duration::from_secs(1)).await;
            let mut h = history.lock().await;
            match known {
                Known::Applied(Response::Txn(TxnOutcome::Committed(_))) => {
                    h.inc_acked.insert(tag, n);
                }
                Known::Applied(Response::Txn(TxnOutcome::RolledBack(_))) | Known::NotApplied => {
                    h.inc_refused.insert(tag);
                }
                Known::Unknown => {
                    h.inc_unknown.insert(tag);
                }
                Known::Applied(other) => panic!("unexpected txn answer {other:?}"),
            }
        }
        // A plain CAS increment.
        if let Some(current) = leader_entry(&router, "ctr2").await {
            let request = Request::KvCas {
                key: "ctr2".into(),
                value: (number(Some(&current)) + 1).to_string().into_bytes(),
                flags: 0,
                index: current.modify_index,
            };
            let known = submit(&router, request, Duration::from_secs(1)).await;
            let mut h = history.lock().await;
            match known {
                Known::Applied(Response::Bool(true)) => h.cas_acked += 1,
                Known::Applied(Response::Bool(false)) | Known::NotApplied => {}
                Known::Unknown => h.cas_unknown += 1,
                Known::Applied(other) => panic!("unexpected CAS answer {other:?}"),
            }
        }
        if leader_entry(&router, "ctr").await.is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Linearizable reads of writer 0's key, checked against what was acknowledged before
/// each read began.
async fn reader(router: MemRouter, stop: Arc<AtomicBool>, history: Arc<Mutex<History>>) {
    while !stop.load(Ordering::SeqCst) {
        let floor = history.lock().await.writes.get("w/0").map_or(0, |w| w.0);
        let Some(leader) = router.servers().into_iter().find(|s| s.is_leader()) else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if leader.ensure_linearizable().await.is_err() {
            continue;
        }
        let Ok(entry) = leader.kv().get("w/0") else {
            continue;
        };
        let seen = number(entry.as_ref());
        let mut h = history.lock().await;
        h.reads += 1;
        if seen < floor {
            h.stale_reads.push(format!(
                "server {} read w/0 = {seen} after {floor} was acknowledged",
                leader.id()
            ));
        }
    }
}

/// Partitions and crashes, one server at a time, on a seeded schedule.
async fn chaos(router: MemRouter, root: &Path, seed: u64, until: Instant) -> (u32, u32) {
    let mut rng = SimRng::new(seed ^ 0x5eed);
    let (mut cuts, mut crashes) = (0, 0);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(150 + rng.below(150))).await;
        let victim = IDS[rng.below(IDS.len() as u64) as usize];
        let leader_first = rng.chance(0.5);
        let victim = if leader_first {
            router
                .servers()
                .into_iter()
                .find(|s| s.is_leader())
                .map_or(victim, |s| s.id())
        } else {
            victim
        };
        let outage = Duration::from_millis(200 + rng.below(300));
        match rng.below(3) {
            0 => {
                cuts += 1;
                router.isolate(victim);
                tokio::time::sleep(outage).await;
                router.heal(victim);
            }
            1 => {
                crashes += 1;
                router.stop(victim).await;
                tokio::time::sleep(outage).await;
                restart_server(&router, root, victim, tune)
                    .await
                    .expect("restart");
            }
            _ => {}
        }
    }
    (cuts, crashes)
}

async fn run_seed(seed: u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let router = MemRouter::new();
    let servers = start_servers_with(&router, root, &IDS, tune)
        .await
        .expect("servers open");
    servers[0]
        .initialize(members(&IDS))
        .await
        .expect("initialize");
    assert!(
        wait_for_leader(&servers, Duration::from_secs(10))
            .await
            .is_some()
    );
    drop(servers);
    for key in ["ctr", "ctr2"] {
        let set = Request::KvSet {
            key: key.into(),
            value: b"0".to_vec(),
            flags: 0,
        };
        assert!(matches!(
            submit(&router, set, Duration::from_secs(5)).await,
            Known::Applied(_)
        ));
    }

    router.set_faults(Some(Faults {
        seed,
        drop_request: 0.05,
        drop_response: 0.05,
        max_delay: Duration::from_millis(8),
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(Mutex::new(History::default()));
    let mut clients = Vec::new();
    for id in 0..WRITERS {
        clients.push(tokio::spawn(writer(
            router.clone(),
            id,
            stop.clone(),
            history.clone(),
        )));
    }
    for id in 0..INCREMENTERS {
        clients.push(tokio::spawn(incrementer(
            router.clone(),
            id,
            stop.clone(),
            history.clone(),
        )));
    }
    clients.push(tokio::spawn(reader(
        router.clone(),
        stop.clone(),
        history.clone(),
    )));
    let (cuts, crashes) = chaos(
        router.clone(),
        root,
        seed,
        Instant::now() + Duration::from_millis(2500),
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.expect("client task");
    }

    // Stop the faults and let every server converge.
    router.set_faults(None);
    router.heal_all();
    let servers = router.servers();
    assert_eq!(
        servers.len(),
        IDS.len(),
        "a crashed server was not restarted"
    );
    let leader = wait_for_leader(&servers, Duration::from_secs(10))
        .await
        .expect("a leader after the faults");
    let barrier = servers
        .iter()
        .find(|s| s.id() == leader)
        .expect("the leader")
        .write(Request::KvSet {
            key: "barrier".into(),
            value: vec![],
            flags: 0,
        })
        .await
        .expect("barrier write")
        .index;
    for s in &servers {
        assert!(
            wait_until(Duration::from_secs(10), || s
                .kv()
                .applied_index()
                .expect("local read")
                >= barrier)
            .await,
            "server {} did not catch up",
            s.id()
        );
    }
    let state = servers[0].kv().list("").expect("local read");
    for s in &servers[1..] {
        assert_eq!(
            s.kv().list("").expect("local read"),
            state,
            "server {} diverged",
            s.id()
        );
        assert_eq!(
            s.kv().kv_index().expect("local read"),
            servers[0].kv().kv_index().expect("local read")
        );
        for prefix in ["", "hist/", "w/"] {
            assert_eq!(
                s.kv().index_for_prefix(prefix).expect("local read"),
                servers[0]
                    .kv()
                    .index_for_prefix(prefix)
                    .expect("local read")
            );
        }
    }

    let history = history.lock().await.clone();
    let violations = check(&history, &state);
    assert!(
        violations.is_empty(),
        "seed {seed}: {violations:#?}\nhistory: {history:#?}"
    );
    let acked: u64 = history.writes.values().map(|(a, _)| a).sum();
    assert!(
        acked > 0 && !history.inc_acked.is_empty() && history.cas_acked > 0 && history.reads > 0,
        "seed {seed}: too little progress: {history:?}"
    );
    eprintln!(
        "seed {seed}: {acked} writes, {} + {} increments acknowledged ({} + {} unknown), \
         {} linearizable reads, {cuts} partitions, {crashes} crashes, {} messages lost",
        history.inc_acked.len(),
        history.cas_acked,
        history.inc_unknown.len(),
        history.cas_unknown,
        history.reads,
        router.lost_messages()
    );
    router.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_stays_linearizable_under_loss_reordering_partitions_and_crashes() {
    let seeds: Vec<u64> = match std::env::var("CONSENSUS_FAULT_SEED") {
        Ok(s) => vec![s.parse().expect("a numeric seed")],
        Err(_) => vec![7, 1234],
    };
    for seed in seeds {
        run_seed(seed).await;
    }
}
