//! The lost-write check.

mod common;

use common::*;
use faults::{ReadMode, check_lost_writes};

#[test]
fn observed_writes_are_not_lost() {
    let report = check_lost_writes(&history(vec![
        w(1, "x", "a", 0, 1),
        r(2, "x", Some("a"), 2, 3),
        cas(1, "x", Some("a"), "b", true, 4, 5),
        // A CAS from b observes b.
        cas(2, "x", Some("b"), "c", true, 6, 7),
        r(3, "x", Some("c"), 8, 9),
    ]));
    assert!(report.ok(), "{report}");
    assert_eq!((report.acknowledged, report.observed), (3, 3));
}

#[test]
fn overwritten_writes_are_not_lost() {
    // a is overwritten by b which started after it; b by the concurrent c.
    let report = check_lost_writes(&history(vec![
        w(1, "x", "a", 0, 1),
        w(2, "x", "b", 2, 10),
        w(3, "x", "c", 3, 11),
        r(4, "x", Some("c"), 20, 21),
    ]));
    assert!(report.ok(), "{report}");
    assert_eq!((report.observed, report.overwritten), (1, 2));
}

#[test]
fn a_write_not_read_later_is_lost() {
    let report = check_lost_writes(&history(vec![
        w(1, "x", "a", 0, 1),
        r(2, "x", Some("a"), 2, 3),
        w(1, "x", "b", 4, 5),
        // Reads after b completed still see a: b was lost.
        r(2, "x", Some("a"), 6, 7),
        r(3, "x", Some("a"), 8, 9),
    ]));
    assert!(!report.ok());
    assert_eq!(report.lost.len(), 1, "{report}");
    let lost = &report.lost[0];
    assert_eq!(lost.write, w(1, "x", "b", 4, 5));
    assert_eq!(lost.later_reads.len(), 2);
    assert!(
        report.to_string().contains("lost: client 1 write x := b"),
        "{report}"
    );
}

#[test]
fn a_read_concurrent_with_the_write_does_not_verify_it() {
    let report = check_lost_writes(&history(vec![
        w(1, "x", "a", 0, 10),
        r(2, "x", Some("a"), 5, 6),
        r(2, "x", None, 11, 12),
    ]));
    assert_eq!(report.lost.len(), 1, "{report}");
}

#[test]
fn unknown_and_failed_writes() {
    // An unknown write whose value was read may overwrite an acknowledged one.
    let report = check_lost_writes(&history(vec![
        w(1, "x", "a", 0, 1),
        unknown(w(2, "x", "b", 2, 3)),
        r(3, "x", Some("b"), 10, 11),
    ]));
    assert!(report.ok(), "{report}");
    assert_eq!(report.acknowledged, 1);
    // An unknown write never read, or a failed one, explains nothing.
    for other in [unknown(w(2, "x", "b", 2, 3)), failed(w(2, "x", "b", 2, 3))] {
        let report = check_lost_writes(&history(vec![
            w(1, "x", "a", 0, 1),
            other,
            r(3, "x", None, 10, 11),
        ]));
        assert_eq!(report.lost.len(), 1, "{report}");
    }
}

#[test]
fn writes_without_later_reads_are_unverified() {
    let report = check_lost_writes(&history(vec![w(1, "x", "a", 0, 1), r(2, "y", None, 2, 3)]));
    assert!(report.ok());
    assert_eq!(report.unverified.len(), 1, "{report}");
}

#[test]
fn stale_reads_can_be_excluded() {
    let h = history(vec![
        w(1, "x", "a", 0, 1),
        mode(r(2, "x", None, 2, 3), ReadMode::Stale),
        r(3, "x", Some("a"), 4, 5),
    ]);
    assert!(check_lost_writes(&h).ok());
    let only_stale = history(vec![
        w(1, "x", "a", 0, 1),
        mode(r(2, "x", None, 2, 3), ReadMode::Stale),
    ]);
    assert!(!check_lost_writes(&only_stale).ok());
    let report = check_lost_writes(&only_stale.with_reads(&[ReadMode::Default]));
    assert!(report.ok());
    assert_eq!(report.unverified.len(), 1);
}

#[test]
fn simulated_histories_lose_nothing() {
    for seed in 0..20 {
        let h = simulate(&Sim {
            clients: 10,
            ops_per_client: 60,
            keys: 3,
            unknown_pct: 10,
            fail_pct: 5,
            seed,
        });
        let report = check_lost_writes(&h);
        assert!(report.ok(), "seed {seed}: {report}");
        assert!(report.observed > 0);
    }
}
