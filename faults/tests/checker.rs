//! The linearizability checker on hand-written and simulated histories.

mod common;

use std::time::Instant;

use common::*;
use faults::{CheckerConfig, History, ReadMode, Verdict, check};

fn verdict(ops: Vec<faults::Op>) -> Verdict {
    check(&history(ops), &CheckerConfig::default())
        .expect("valid history")
        .verdict
}

fn assert_linearizable(ops: Vec<faults::Op>) {
    let v = verdict(ops);
    assert!(v.is_linearizable(), "expected linearizable, got {v}");
}

/// Asserts a violation and returns it.
fn assert_violation(ops: Vec<faults::Op>) -> faults::Violation {
    match verdict(ops) {
        Verdict::NotLinearizable(v) => {
            eprintln!("{v}");
            *v
        }
        other => panic!("expected a violation, got {other}"),
    }
}

#[test]
fn empty_history_is_linearizable() {
    assert_linearizable(vec![]);
}

#[test]
fn sequential_history_is_linearizable() {
    assert_linearizable(vec![
        r(1, "x", None, 0, 1),
        w(1, "x", "a", 2, 3),
        r(2, "x", Some("a"), 4, 5),
        w(2, "x", "b", 6, 7),
        r(1, "x", Some("b"), 8, 9),
        cas(3, "x", Some("b"), "c", true, 10, 11),
        cas(3, "x", Some("b"), "d", false, 12, 13),
        r(2, "x", Some("c"), 14, 15),
    ]);
}

#[test]
fn concurrent_writes_may_be_read_in_either_order() {
    for (first, second) in [("a", "b"), ("b", "a")] {
        assert_linearizable(vec![
            w(1, "x", "a", 0, 10),
            w(2, "x", "b", 2, 12),
            r(3, "x", Some(first), 3, 11),
            r(3, "x", Some(second), 13, 14),
            r(4, "x", Some(second), 15, 16),
        ]);
    }
}

#[test]
fn reads_concurrent_with_a_write_see_old_or_new() {
    assert_linearizable(vec![
        w(1, "x", "a", 0, 1),
        w(1, "x", "b", 10, 20),
        r(2, "x", Some("a"), 11, 12),
        r(3, "x", Some("b"), 12, 13),
        r(4, "x", Some("b"), 21, 22),
    ]);
    // But not new then old, sequentially.
    let v = assert_violation(vec![
        w(1, "x", "a", 0, 1),
        w(1, "x", "b", 10, 20),
        r(2, "x", Some("b"), 11, 12),
        r(3, "x", Some("a"), 13, 14),
    ]);
    assert_eq!(v.op.client, 3);
}

#[test]
fn stale_read_after_a_completed_write_is_reported() {
    let v = assert_violation(vec![
        w(1, "x", "5", 0, 10),
        w(2, "x", "7", 1_000, 1_010),
        r(3, "x", Some("5"), 1_203, 1_207),
        r(4, "x", Some("7"), 1_300, 1_301),
    ]);
    assert_eq!(v.key, "x");
    assert_eq!(v.op.client, 3);
    assert_eq!(v.op.invoke, 1_203 * MS);
    assert_eq!(v.possible, vec![Some("7".to_string())]);
    assert_eq!(v.prefix_len, 3);
    assert!(v.explanation.contains("client 3"), "{}", v.explanation);
    assert!(
        v.explanation.contains("[1.203000 s, 1.207000 s]"),
        "{}",
        v.explanation
    );
    assert!(v.explanation.contains("it read 5"), "{}", v.explanation);
    assert!(v.explanation.contains("{7}"), "{}", v.explanation);
    assert!(v.ops.contains(&v.op));
}

#[test]
fn read_of_a_value_never_written_is_reported() {
    let v = assert_violation(vec![w(1, "x", "a", 0, 10), r(2, "x", Some("zzz"), 20, 30)]);
    assert_eq!(v.op.client, 2);
    assert!(v.explanation.contains("never written"), "{}", v.explanation);
    // Reading absent after a completed write is also a violation.
    let v = assert_violation(vec![w(1, "x", "a", 0, 10), r(2, "x", None, 20, 30)]);
    assert_eq!(v.possible, vec![Some("a".to_string())]);
}

#[test]
fn cas_semantics() {
    // Correct: a swap from the current value, a non-swap from another one.
    assert_linearizable(vec![
        cas(1, "x", None, "a", true, 0, 1),
        cas(2, "x", None, "b", false, 2, 3),
        cas(2, "x", Some("a"), "b", true, 4, 5),
        r(3, "x", Some("b"), 6, 7),
    ]);
    // A swap that should have failed.
    let v = assert_violation(vec![
        w(1, "x", "a", 0, 1),
        cas(2, "x", Some("z"), "b", true, 2, 3),
    ]);
    assert_eq!(v.op.client, 2);
    assert!(v.explanation.contains("it swapped"), "{}", v.explanation);
    // A non-swap that should have swapped.
    let v = assert_violation(vec![
        w(1, "x", "a", 0, 1),
        cas(2, "x", Some("a"), "b", false, 2, 3),
    ]);
    assert!(v.explanation.contains("did not swap"), "{}", v.explanation);
    // A non-swap does not change the register.
    assert_violation(vec![
        w(1, "x", "a", 0, 1),
        cas(2, "x", Some("z"), "b", false, 2, 3),
        r(3, "x", Some("b"), 4, 5),
    ]);
    // Two concurrent swaps from the same value cannot both succeed.
    assert_violation(vec![
        w(1, "x", "a", 0, 1),
        cas(2, "x", Some("a"), "b", true, 2, 10),
        cas(3, "x", Some("a"), "c", true, 3, 9),
    ]);
    // But one may fail because the other swapped first.
    assert_linearizable(vec![
        w(1, "x", "a", 0, 1),
        cas(2, "x", Some("a"), "b", true, 2, 10),
        cas(3, "x", Some("a"), "c", false, 3, 9),
        r(4, "x", Some("b"), 11, 12),
    ]);
}

#[test]
fn unknown_write_seen_later_is_linearizable() {
    assert_linearizable(vec![
        w(1, "x", "a", 0, 1),
        unknown(w(2, "x", "b", 2, 5)),
        r(3, "x", Some("a"), 6, 7),
        // Takes effect long after the client gave up.
        r(3, "x", Some("b"), 100, 101),
        r(4, "x", Some("b"), 102, 103),
    ]);
    // Never completed at all.
    assert_linearizable(vec![
        pending(w(2, "x", "b", 2, 5)),
        r(3, "x", None, 6, 7),
        r(3, "x", Some("b"), 100, 101),
    ]);
}

#[test]
fn unknown_write_never_seen_is_linearizable() {
    assert_linearizable(vec![
        w(1, "x", "a", 0, 1),
        unknown(w(2, "x", "b", 2, 5)),
        pending(w(2, "x", "c", 6, 6)),
        r(3, "x", Some("a"), 6, 7),
        r(3, "x", Some("a"), 100, 101),
    ]);
}

#[test]
fn unobserved_unknown_write_can_explain_a_failed_cas() {
    // Only if the unknown write of z took effect did the CAS find no a.
    assert_linearizable(vec![
        w(1, "x", "a", 0, 1),
        unknown(w(2, "x", "z", 2, 3)),
        cas(3, "x", Some("a"), "b", false, 10, 11),
    ]);
    // But not before it was invoked.
    assert_violation(vec![
        w(1, "x", "a", 0, 1),
        cas(3, "x", Some("a"), "b", false, 2, 3),
        unknown(w(2, "x", "z", 10, 11)),
    ]);
}

#[test]
fn unknown_write_read_before_its_invoke_is_reported() {
    let v = assert_violation(vec![
        w(1, "x", "a", 0, 1),
        r(3, "x", Some("b"), 2, 3),
        unknown(w(2, "x", "b", 10, 15)),
    ]);
    assert_eq!(v.op.client, 3);
    assert!(
        v.explanation.contains("written only after"),
        "{}",
        v.explanation
    );
}

#[test]
fn unknown_write_cannot_flip_back() {
    // Once b is read after a, a cannot come back (a written once).
    assert_violation(vec![
        w(1, "x", "a", 0, 1),
        unknown(w(2, "x", "b", 2, 5)),
        r(3, "x", Some("b"), 6, 7),
        r(3, "x", Some("a"), 8, 9),
    ]);
}

#[test]
fn unknown_cas_swaps_only_from_its_expected_value() {
    assert_linearizable(vec![
        w(1, "x", "a", 0, 1),
        unknown(cas(2, "x", Some("a"), "b", false, 2, 5)),
        r(3, "x", Some("b"), 10, 11),
    ]);
    assert_violation(vec![
        w(1, "x", "a", 0, 1),
        unknown(cas(2, "x", Some("z"), "b", false, 2, 5)),
        r(3, "x", Some("b"), 10, 11),
    ]);
}

#[test]
fn failed_write_read_is_reported() {
    let v = assert_violation(vec![
        w(1, "x", "a", 0, 1),
        failed(w(2, "x", "b", 2, 5)),
        r(3, "x", Some("b"), 10, 11),
    ]);
    assert_eq!(v.op.client, 3);
    assert!(v.explanation.contains("failed"), "{}", v.explanation);
    assert!(
        v.ops.iter().any(|o| o.outcome == faults::Outcome::Fail),
        "the failed write is listed"
    );
    // A failed CAS does not swap either.
    assert_violation(vec![
        w(1, "x", "a", 0, 1),
        failed(cas(2, "x", Some("a"), "b", true, 2, 5)),
        r(3, "x", Some("b"), 10, 11),
    ]);
}

#[test]
fn failed_and_unknown_reads_are_dropped() {
    assert_linearizable(vec![
        w(1, "x", "a", 0, 1),
        failed(r(2, "x", Some("nonsense"), 2, 3)),
        unknown(r(2, "x", Some("nonsense"), 4, 5)),
        pending(r(2, "x", None, 6, 6)),
        r(3, "x", Some("a"), 10, 11),
    ]);
}

#[test]
fn quiescent_cuts_carry_the_state() {
    // Sequential operations: a cut at every quiescent point.
    let h = history(vec![
        w(1, "x", "a", 0, 1),
        r(2, "x", Some("a"), 2, 3),
        w(2, "x", "b", 4, 5),
        r(1, "x", Some("b"), 6, 7),
    ]);
    let report = check(&h, &CheckerConfig::default()).unwrap();
    assert!(report.verdict.is_linearizable(), "{}", report.verdict);
    assert_eq!(report.keys[0].segments, 4);
    // A violation in a later segment, against the carried value.
    let v = assert_violation(vec![
        w(1, "x", "a", 0, 1),
        r(2, "x", Some("a"), 2, 3),
        w(2, "x", "b", 4, 5),
        r(1, "x", Some("a"), 6, 7),
    ]);
    assert_eq!((v.op.client, v.prefix_len), (1, 4));
    // Two concurrent writes, a quiescent gap, then reads: either order of the
    // writes may be the last, so the value there is not determined and the
    // history is not cut there.
    for last in ["a", "b"] {
        let h = history(vec![
            w(1, "x", "a", 0, 10),
            w(2, "x", "b", 1, 11),
            r(3, "x", Some(last), 20, 21),
            w(1, "x", "c", 30, 31),
            r(2, "x", Some("c"), 40, 41),
        ]);
        let report = check(&h, &CheckerConfig::default()).unwrap();
        assert!(report.verdict.is_linearizable(), "{}", report.verdict);
        assert_eq!(report.keys[0].segments, 2);
    }
    // A third value is impossible.
    let v = assert_violation(vec![
        w(1, "x", "a", 0, 10),
        w(2, "x", "b", 1, 11),
        r(3, "x", None, 20, 21),
    ]);
    assert_eq!(v.possible, vec![Some("a".into()), Some("b".into())]);
    // The segment with reads decides which write was last.
    assert_violation(vec![
        w(1, "x", "a", 0, 10),
        w(2, "x", "b", 1, 11),
        r(3, "x", Some("a"), 10, 12),
        r(3, "x", Some("b"), 20, 21),
        r(4, "x", Some("a"), 30, 31),
    ]);
    // No mutation in a segment: the state passes through unchanged.
    assert_linearizable(vec![
        w(1, "x", "a", 0, 10),
        w(2, "x", "b", 1, 11),
        r(3, "x", Some("b"), 20, 21),
        r(3, "x", Some("b"), 30, 31),
        cas(4, "x", Some("b"), "c", true, 40, 41),
    ]);
}

#[test]
fn keys_are_independent_and_the_violating_key_is_named() {
    let h = history(vec![
        w(1, "x", "a", 0, 1),
        w(1, "y", "a", 0, 1),
        r(2, "x", Some("a"), 2, 3),
        r(2, "y", None, 2, 3),
        r(2, "z", None, 2, 3),
    ]);
    let report = check(&h, &CheckerConfig::default()).unwrap();
    let v = report.verdict.violation().expect("a violation");
    assert_eq!(v.key, "y");
    assert_eq!(report.keys.len(), 3);
    assert!(report.keys[0].verdict.is_linearizable());
    assert!(!report.keys[1].verdict.is_linearizable());
    assert!(report.keys[2].verdict.is_linearizable());
}

#[test]
fn read_modes_are_checked_separately() {
    let h = history(vec![
        w(1, "x", "a", 0, 1),
        w(1, "x", "b", 2, 3),
        mode(r(2, "x", Some("a"), 4, 5), ReadMode::Stale),
        mode(r(3, "x", Some("b"), 4, 5), ReadMode::Consistent),
        r(4, "x", Some("b"), 6, 7),
    ]);
    let config = CheckerConfig::default();
    assert!(!check(&h, &config).unwrap().verdict.is_linearizable());
    for m in [ReadMode::Default, ReadMode::Consistent] {
        let v = check(&h.with_reads(&[m]), &config).unwrap().verdict;
        assert!(v.is_linearizable(), "{m}: {v}");
    }
}

#[test]
fn budget_exceeded_is_unknown() {
    let h = simulate(&Sim {
        clients: 5,
        ops_per_client: 50,
        keys: 1,
        unknown_pct: 10,
        fail_pct: 5,
        seed: 7,
    });
    let config = CheckerConfig {
        max_states: 10,
        ..CheckerConfig::default()
    };
    let v = check(&h, &config).unwrap().verdict;
    assert!(matches!(v, Verdict::Unknown { .. }), "{v}");
}

#[test]
fn invalid_histories_are_errors() {
    let mut bad = r(1, "x", None, 5, 6);
    bad.complete = Some(MS);
    assert!(check(&history(vec![bad]), &CheckerConfig::default()).is_err());
    let mut bad = w(1, "x", "a", 5, 6);
    bad.outcome = faults::Outcome::Ok(faults::Ret::Cas(true));
    assert!(check(&history(vec![bad]), &CheckerConfig::default()).is_err());
    let mut bad = w(1, "x", "a", 5, 6);
    bad.complete = None;
    assert!(check(&history(vec![bad]), &CheckerConfig::default()).is_err());
}

fn sim(seed: u64, clients: u32, ops: usize, keys: usize) -> History {
    simulate(&Sim {
        clients,
        ops_per_client: ops,
        keys,
        unknown_pct: 10,
        fail_pct: 5,
        seed,
    })
}

#[test]
fn simulated_linearizable_registers_are_accepted() {
    for seed in 0..40 {
        let h = sim(seed, 10, 60, 3);
        let report = check(&h, &CheckerConfig::default()).unwrap();
        assert!(
            report.verdict.is_linearizable(),
            "seed {seed}: {}",
            report.verdict
        );
    }
}

#[test]
fn simulated_registers_with_one_stale_read_are_rejected() {
    let mut injected = 0;
    for seed in 0..40 {
        let mut h = sim(seed, 10, 60, 3);
        let mut rng = Rng::new(seed ^ 0xdead_beef);
        let Some(stale) = inject_stale_read(&mut h, &mut rng) else {
            continue;
        };
        injected += 1;
        let report = check(&h, &CheckerConfig::default()).unwrap();
        let v = report
            .verdict
            .violation()
            .unwrap_or_else(|| panic!("seed {seed}: {}", report.verdict));
        assert_eq!(v.op, stale, "seed {seed}: the stale read is reported\n{v}");
    }
    assert!(injected > 30, "only {injected} histories had a stale read");
}

#[test]
fn json_round_trip_keeps_the_verdict() {
    let mut h = sim(3, 5, 40, 2);
    let mut buf = Vec::new();
    h.write_json_lines(&mut buf).unwrap();
    let back = History::read_json_lines(&buf[..]).unwrap();
    assert_eq!(back, h);
    let mut rng = Rng::new(1);
    inject_stale_read(&mut h, &mut rng).expect("a stale read");
    let mut buf = Vec::new();
    h.write_json_lines(&mut buf).unwrap();
    let back = History::read_json_lines(&buf[..]).unwrap();
    assert!(
        !check(&back, &CheckerConfig::default())
            .unwrap()
            .verdict
            .is_linearizable()
    );
}

fn perf(clients: u32, ops: usize) -> std::time::Duration {
    let h = simulate(&Sim {
        clients,
        ops_per_client: ops,
        keys: 1,
        unknown_pct: 2,
        fail_pct: 2,
        seed: 42,
    });
    let started = Instant::now();
    let report = check(&h, &CheckerConfig::default()).expect("valid history");
    let elapsed = started.elapsed();
    let k = &report.keys[0];
    eprintln!(
        "{clients} clients x {ops} ops on one key: {} ops searched, {} segments, {} states, {:?}",
        k.ops, k.segments, k.states, elapsed
    );
    assert!(report.verdict.is_linearizable(), "{}", report.verdict);
    elapsed
}

#[test]
fn performance_small() {
    let elapsed = perf(10, 200);
    assert!(elapsed.as_secs_f64() < 2.0, "{elapsed:?}");
}

/// 10 clients x 2,000 operations on one key (about 20,000 searched).
#[test]
fn performance_10_clients_2000_ops() {
    let elapsed = perf(10, 2_000);
    assert!(elapsed.as_secs_f64() < 2.0, "{elapsed:?}");
}

/// Exhaustive reference: is there an order of all `Ok` operations and some
/// unknown mutations, respecting real time, that the register accepts?
fn brute_force(ops: &[faults::Op]) -> bool {
    brute_force_with(ops, |_| false)
}

/// As [`brute_force`], with the `Ok` operations for which `optional` holds
/// treated as pending (same effect, but they need not take effect).
fn brute_force_with(ops: &[faults::Op], optional: impl Fn(&faults::Op) -> bool) -> bool {
    use faults::{OpKind, Outcome, Ret};
    struct B {
        kind: OpKind,
        outcome: Outcome,
        call: u64,
        /// None: optional, never returns.
        ret: Option<u64>,
    }
    let bs: Vec<B> = ops
        .iter()
        .filter(|o| {
            !matches!(
                (&o.kind, &o.outcome),
                (_, Outcome::Fail) | (OpKind::Read { .. }, Outcome::Unknown)
            )
        })
        .map(|o| B {
            kind: o.kind.clone(),
            outcome: o.outcome.clone(),
            call: o.invoke,
            ret: if o.outcome.is_ok() && !optional(o) {
                o.complete
            } else {
                None
            },
        })
        .collect();
    fn step(b: &B, state: &Option<String>) -> Option<Option<String>> {
        match (&b.kind, &b.outcome) {
            (OpKind::Read { .. }, Outcome::Ok(Ret::Read(v))) => (v == state).then(|| state.clone()),
            (OpKind::Write { value }, _) => Some(Some(value.clone())),
            (OpKind::Cas { expected, new }, Outcome::Ok(Ret::Cas(true))) => {
                (expected == state).then(|| Some(new.clone()))
            }
            (OpKind::Cas { expected, .. }, Outcome::Ok(_)) => {
                (expected != state).then(|| state.clone())
            }
            (OpKind::Cas { expected, new }, _) => Some(if expected == state {
                Some(new.clone())
            } else {
                state.clone()
            }),
            _ => None,
        }
    }
    fn go(bs: &[B], done: &mut Vec<bool>, state: Option<String>) -> bool {
        if bs
            .iter()
            .zip(done.iter())
            .all(|(b, d)| *d || b.ret.is_none())
        {
            return true;
        }
        for i in 0..bs.len() {
            if done[i] {
                continue;
            }
            let blocked = bs
                .iter()
                .zip(done.iter())
                .any(|(p, d)| !*d && p.ret.is_some_and(|r| r < bs[i].call));
            if blocked {
                continue;
            }
            if let Some(s) = step(&bs[i], &state) {
                done[i] = true;
                if go(bs, done, s) {
                    return true;
                }
                done[i] = false;
            }
        }
        false
    }
    go(&bs, &mut vec![false; bs.len()], None)
}

fn random_small_history(rng: &mut Rng) -> Vec<faults::Op> {
    let n = rng.range(1, 8);
    let values = ["a", "b", "c"];
    let mut ops = Vec::new();
    for i in 0..n {
        let invoke = rng.range(0, 20);
        let complete = invoke + rng.range(0, 8);
        let v = values[rng.range(0, 3) as usize];
        let client = i as u32;
        let mut op = match rng.range(0, 3) {
            0 => r(
                client,
                "x",
                if rng.pct(25) { None } else { Some(v) },
                invoke,
                complete,
            ),
            1 => w(client, "x", v, invoke, complete),
            _ => cas(
                client,
                "x",
                if rng.pct(25) {
                    None
                } else {
                    Some(values[rng.range(0, 3) as usize])
                },
                v,
                rng.pct(50),
                invoke,
                complete,
            ),
        };
        match rng.range(0, 10) {
            0 => op = failed(op),
            1 | 2 => op = unknown(op),
            3 => op = pending(op),
            _ => {}
        }
        ops.push(op);
    }
    ops
}

#[test]
fn small_random_histories_agree_with_brute_force() {
    // FAULTS_CASES=100000 for a longer run.
    let cases = std::env::var("FAULTS_CASES").map_or(4_000, |v| v.parse().unwrap_or(4_000));
    let mut rng = Rng::new(2024);
    let (mut yes, mut no) = (0, 0);
    for case in 0..cases {
        let ops = random_small_history(&mut rng);
        let expected = brute_force(&ops);
        let verdict = check(&history(ops.clone()), &CheckerConfig::default())
            .unwrap()
            .verdict;
        let shown: Vec<String> = ops.iter().map(|o| o.to_string()).collect();
        match (&verdict, expected) {
            (Verdict::Linearizable, true) => yes += 1,
            (Verdict::NotLinearizable(v), false) => {
                no += 1;
                // The reported operation ends the smallest failing prefix:
                // up to its completion (it required) there is no
                // linearization; before it (it optional) there is one.
                let end = v.deadline;
                let prefix: Vec<faults::Op> =
                    ops.iter().filter(|o| o.invoke <= end).cloned().collect();
                let with_it = brute_force_with(&prefix, |o| o.complete.is_none_or(|c| c > end));
                assert!(!with_it, "case {case}: {shown:#?}\n{v}");
                let before = brute_force_with(&prefix, |o| o.complete.is_none_or(|c| c >= end));
                assert!(before, "case {case}: {shown:#?}\n{v}");
            }
            _ => panic!("case {case}: brute force says {expected}, checker {verdict}\n{shown:#?}"),
        }
    }
    eprintln!("{yes} linearizable, {no} not");
    assert!(yes > 500 && no > 500, "{yes} linearizable, {no} not");
}

/// Proving a violation explores more than finding a linearization: a stale
/// read injected into 10 clients x 1,000 operations on one key.
#[test]
fn performance_violation_in_a_large_history() {
    let mut h = simulate(&Sim {
        clients: 10,
        ops_per_client: 1_000,
        keys: 1,
        unknown_pct: 2,
        fail_pct: 2,
        seed: 9,
    });
    let mut rng = Rng::new(5);
    let stale = inject_stale_read(&mut h, &mut rng).expect("a stale read");
    let started = Instant::now();
    let report = check(&h, &CheckerConfig::default()).expect("valid history");
    let elapsed = started.elapsed();
    let k = &report.keys[0];
    eprintln!(
        "violation in 10 clients x 1000 ops: {} states, {:?}",
        k.states, elapsed
    );
    let v = report.verdict.violation().expect("a violation");
    assert_eq!(v.op, stale);
    let limit = if cfg!(debug_assertions) { 20.0 } else { 5.0 };
    assert!(elapsed.as_secs_f64() < limit, "{elapsed:?}");
}
