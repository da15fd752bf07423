//! The lost-write check: every acknowledged write must be accounted for.
//!
//! An *acknowledged* write is a write with outcome `Ok` or a CAS with
//! `Ok(true)`. Each is classified per key as:
//!
//! * **observed**: a read invoked after the write completed returned its
//!   value, or a CAS invoked after it swapped from its value (this includes
//!   the final reads of a workload);
//! * **overwritten**: another mutation that evidently took effect could be
//!   ordered after it: an acknowledged write or swap that did not complete
//!   before it was invoked, or an unknown write or CAS whose value some read
//!   returned, observed (so applied) after this write was invoked;
//! * **lost**: neither, although some read was invoked after it completed
//!   (and returned something else);
//! * **unverified**: neither, and no read was invoked after it completed
//!   (the workload should end with a read of every key).
//!
//! # Requirement: unique values
//!
//! The check identifies a write by its value, so every value written to a
//! key (by a write or as a CAS's new value) must be unique for that key
//! (e.g. `c3-17`: client 3's 17th write). With repeated values a lost write
//! may be reported as observed.
//!
//! Reads of every mode in the history are used; filter with
//! [`History::with_reads`] to exclude `?stale` reads.

use std::collections::HashMap;
use std::fmt;

use crate::history::{History, Op, OpKind, Outcome, Ret};

/// An acknowledged write that no later read observed and nothing could have
/// overwritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostWrite {
    /// The write (or swapping CAS).
    pub write: Op,
    /// The first reads invoked after it completed (up to three), which
    /// returned other values.
    pub later_reads: Vec<Op>,
}

/// The result of the lost-write check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LostReport {
    /// Acknowledged writes (Ok writes and swapping CAS).
    pub acknowledged: usize,
    /// Of those, observed by a later read or CAS.
    pub observed: usize,
    /// Of those, not observed but possibly overwritten.
    pub overwritten: usize,
    /// Of those, lost.
    pub lost: Vec<LostWrite>,
    /// Of those, not observed, not overwritten, and with no later read.
    pub unverified: Vec<Op>,
}

impl LostReport {
    /// `true` when no acknowledged write was lost.
    pub fn ok(&self) -> bool {
        self.lost.is_empty()
    }
}

impl fmt::Display for LostReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} acknowledged writes: {} observed later, {} overwritten, {} lost, {} unverified",
            self.acknowledged,
            self.observed,
            self.overwritten,
            self.lost.len(),
            self.unverified.len()
        )?;
        for l in &self.lost {
            writeln!(f, "lost: {}", l.write)?;
            for r in &l.later_reads {
                writeln!(f, "   later: {r}")?;
            }
        }
        for u in &self.unverified {
            writeln!(f, "unverified (no later read): {u}")?;
        }
        Ok(())
    }
}

/// The value an op leaves in the register if it is a mutation.
fn written(op: &Op) -> Option<&str> {
    match &op.kind {
        OpKind::Write { value } => Some(value),
        OpKind::Cas { new, .. } => Some(new),
        OpKind::Read { .. } => None,
    }
}

fn acknowledged(op: &Op) -> bool {
    matches!(
        (&op.kind, &op.outcome),
        (OpKind::Write { .. }, Outcome::Ok(_)) | (OpKind::Cas { .. }, Outcome::Ok(Ret::Cas(true)))
    )
}

/// The value an op shows the register held, with the op: a read's result or
/// a swapping CAS's expected value.
fn observes(op: &Op) -> Option<Option<&str>> {
    match (&op.kind, &op.outcome) {
        (OpKind::Read { .. }, Outcome::Ok(Ret::Read(v))) => Some(v.as_deref()),
        (OpKind::Cas { expected, .. }, Outcome::Ok(Ret::Cas(true))) => Some(expected.as_deref()),
        _ => None,
    }
}

/// Runs the lost-write check on every key of the history.
pub fn check_lost_writes(history: &History) -> LostReport {
    let mut report = LostReport::default();
    for ops in history.by_key().values() {
        check_key(ops, &mut report);
    }
    report
}

fn check_key(ops: &[&Op], report: &mut LostReport) {
    // Per observed value: the latest invoke and the earliest completion of
    // an operation observing it.
    let mut latest_obs: HashMap<&str, u64> = HashMap::new();
    let mut earliest_obs_end: HashMap<&str, u64> = HashMap::new();
    let mut latest_read = None::<u64>;
    for op in ops {
        if let Some(v) = observes(op) {
            if matches!(op.kind, OpKind::Read { .. }) {
                latest_read = latest_read.max(Some(op.invoke));
            }
            if let Some(v) = v {
                let l = latest_obs.entry(v).or_insert(op.invoke);
                *l = (*l).max(op.invoke);
                if let Some(c) = op.complete {
                    let e = earliest_obs_end.entry(v).or_insert(c);
                    *e = (*e).min(c);
                }
            }
        }
    }
    // Mutations that evidently took effect, with the latest time they could
    // have: an acknowledged one by its completion, an unknown one whose value
    // was observed by the first observation's completion. The two latest are
    // kept so that a write can be compared with the others.
    let mut top: [Option<(u64, usize)>; 2] = [None, None];
    for (i, op) in ops.iter().enumerate() {
        let effective = if acknowledged(op) {
            op.complete
        } else if op.outcome == Outcome::Unknown {
            written(op).and_then(|v| earliest_obs_end.get(v).copied())
        } else {
            None
        };
        if let Some(t) = effective {
            let cand = Some((t, i));
            if cand > top[0] {
                top[1] = top[0];
                top[0] = cand;
            } else if cand > top[1] {
                top[1] = cand;
            }
        }
    }
    for (i, op) in ops.iter().enumerate() {
        if !acknowledged(op) {
            continue;
        }
        let (Some(v), Some(done)) = (written(op), op.complete) else {
            continue;
        };
        report.acknowledged += 1;
        if latest_obs.get(v).is_some_and(|&t| t > done) {
            report.observed += 1;
            continue;
        }
        let other = top.iter().flatten().find(|(_, j)| *j != i);
        if other.is_some_and(|&(t, _)| t > op.invoke) {
            report.overwritten += 1;
            continue;
        }
        if latest_read.is_some_and(|t| t > done) {
            let mut later_reads: Vec<Op> = ops
                .iter()
                .filter(|o| matches!(o.kind, OpKind::Read { .. }) && o.outcome.is_ok())
                .filter(|o| o.invoke > done)
                .map(|o| (*o).clone())
                .collect();
            later_reads.sort_by_key(|o| o.invoke);
            later_reads.truncate(3);
            report.lost.push(LostWrite {
                write: (*op).clone(),
                later_reads,
            });
        } else {
            report.unverified.push((*op).clone());
        }
    }
}
