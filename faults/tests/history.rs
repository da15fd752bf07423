//! The history model: recorder, JSON lines, filters, summary.

mod common;

use common::*;
use faults::{History, HistoryError, InvalidOp, OpKind, Outcome, ReadMode, Recorder, Ret, Summary};

#[test]
fn recorder_records_invocations_and_completions() {
    let rec = Recorder::new();
    let t1 = rec.invoke(
        1,
        "x",
        OpKind::Write {
            value: "c1-1".into(),
        },
    );
    let t2 = rec.invoke(
        2,
        "x",
        OpKind::Read {
            mode: ReadMode::Consistent,
        },
    );
    rec.complete(t1, Outcome::Ok(Ret::Write));
    rec.complete(t2, Outcome::Ok(Ret::Read(Some("c1-1".into()))));
    // Never completed: stays unknown.
    let _lost = rec.invoke(
        3,
        "y",
        OpKind::Write {
            value: "c3-1".into(),
        },
    );
    let h = rec.history();
    assert_eq!(h.len(), 3);
    assert!(h.ops[0].complete.is_some_and(|c| c >= h.ops[0].invoke));
    assert_eq!(
        h.ops[1].outcome,
        Outcome::Ok(Ret::Read(Some("c1-1".into())))
    );
    assert_eq!(
        (h.ops[2].complete, &h.ops[2].outcome),
        (None, &Outcome::Unknown)
    );
    h.validate().unwrap();
}

#[test]
fn recorder_is_shared_across_threads() {
    let rec = Recorder::new();
    std::thread::scope(|s| {
        for client in 0..4u32 {
            let rec = rec.clone();
            s.spawn(move || {
                for i in 0..100 {
                    let t = rec.invoke(
                        client,
                        "k",
                        OpKind::Write {
                            value: format!("c{client}-{i}"),
                        },
                    );
                    rec.complete(t, Outcome::Ok(Ret::Write));
                }
            });
        }
    });
    let h = rec.history();
    assert_eq!(h.len(), 400);
    h.validate().unwrap();
    let report = faults::check(&h, &faults::CheckerConfig::default()).unwrap();
    assert!(report.verdict.is_linearizable());
}

#[test]
fn json_lines_round_trip_and_file() {
    let h = history(vec![
        w(1, "x", "a", 0, 1),
        unknown(cas(2, "x", None, "b", false, 2, 3)),
        pending(r(3, "y", None, 4, 4)),
        failed(w(4, "x", "c", 5, 6)),
        mode(r(5, "x", Some("a"), 7, 8), ReadMode::Stale),
    ]);
    let mut buf = Vec::new();
    h.write_json_lines(&mut buf).unwrap();
    let text = String::from_utf8(buf.clone()).unwrap();
    assert_eq!(text.lines().count(), 5);
    assert!(text.lines().all(|l| l.starts_with('{')));
    assert_eq!(History::read_json_lines(&buf[..]).unwrap(), h);

    let dir = std::env::temp_dir().join(format!("faults-history-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("history.jsonl");
    h.save(&path).unwrap();
    assert_eq!(History::load(&path).unwrap(), h);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn malformed_json_is_a_typed_error_with_its_line() {
    let mut buf = Vec::new();
    history(vec![w(1, "x", "a", 0, 1)])
        .write_json_lines(&mut buf)
        .unwrap();
    buf.extend_from_slice(b"\n{\"client\": 1, \"key\": \n");
    match History::read_json_lines(&buf[..]) {
        Err(HistoryError::Parse { line, .. }) => assert_eq!(line, 3),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        History::load("/nonexistent/faults/history.jsonl"),
        Err(HistoryError::Io(_))
    ));
}

#[test]
fn validation_names_the_operation() {
    let mut bad = r(1, "x", None, 5, 6);
    bad.outcome = Outcome::Ok(Ret::Write);
    let h = history(vec![w(1, "x", "a", 0, 1), bad]);
    match h.validate() {
        Err(HistoryError::Invalid { index, reason, .. }) => {
            assert_eq!((index, reason), (1, InvalidOp::ResultOfOtherKind));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn filters() {
    let h = history(vec![
        w(1, "x", "a", 0, 1),
        w(1, "y", "a", 0, 1),
        mode(r(2, "x", Some("a"), 2, 3), ReadMode::Stale),
        mode(r(2, "x", Some("a"), 2, 3), ReadMode::Consistent),
        r(2, "y", Some("a"), 2, 3),
    ]);
    assert_eq!(h.keys(), vec!["x", "y"]);
    assert_eq!(h.by_key()["x"].len(), 3);
    assert_eq!(h.for_key("y").len(), 2);
    assert_eq!(h.with_reads(&[ReadMode::Consistent]).len(), 3);
    assert_eq!(
        h.with_reads(&[ReadMode::Default, ReadMode::Consistent])
            .len(),
        4
    );
    assert_eq!(h.with_reads(&[]).len(), 2);
}

#[test]
fn summary_counts() {
    let h = history(vec![
        w(1, "x", "a", 0, 1),
        unknown(w(1, "x", "b", 0, 1)),
        failed(w(2, "x", "c", 0, 1)),
        cas(3, "x", Some("a"), "d", true, 2, 3),
        cas(3, "x", Some("a"), "e", false, 4, 5),
        pending(cas(3, "y", Some("a"), "f", false, 6, 6)),
        r(4, "x", Some("d"), 7, 8),
        mode(r(4, "x", Some("d"), 7, 8), ReadMode::Stale),
    ]);
    let s = Summary::of(&h);
    assert_eq!((s.total, s.keys, s.clients), (8, 2, 4));
    assert_eq!((s.writes.ok, s.writes.fail, s.writes.unknown), (1, 1, 1));
    assert_eq!((s.cas.ok, s.cas.unknown, s.cas_swapped), (2, 1, 1));
    assert_eq!(s.reads[&ReadMode::Default].ok, 1);
    assert_eq!(s.reads[&ReadMode::Stale].ok, 1);
    assert_eq!(s.never_completed, 1);
    assert_eq!((s.all.ok, s.all.fail, s.all.unknown), (5, 1, 2));
    let text = s.to_string();
    assert!(
        text.contains("8 operations by 4 clients on 2 keys"),
        "{text}"
    );
}
