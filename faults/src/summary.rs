//! Counts of a history's operations per kind and outcome.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::history::{History, OpKind, Outcome, ReadMode, Ret};

/// Operations of one kind, per outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Completed successfully.
    pub ok: usize,
    /// Definitely not applied.
    pub fail: usize,
    /// Possibly applied.
    pub unknown: usize,
}

impl Counts {
    /// All of them.
    pub fn total(&self) -> usize {
        self.ok + self.fail + self.unknown
    }

    fn add(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Ok(_) => self.ok += 1,
            Outcome::Fail => self.fail += 1,
            Outcome::Unknown => self.unknown += 1,
        }
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({} ok, {} fail, {} unknown)",
            self.total(),
            self.ok,
            self.fail,
            self.unknown
        )
    }
}

/// Counts of a history's operations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// All operations.
    pub total: usize,
    /// Distinct keys.
    pub keys: usize,
    /// Distinct clients.
    pub clients: usize,
    /// Reads per mode.
    pub reads: BTreeMap<ReadMode, Counts>,
    /// Writes.
    pub writes: Counts,
    /// Compare-and-sets.
    pub cas: Counts,
    /// Of the `ok` compare-and-sets, those that swapped.
    pub cas_swapped: usize,
    /// Operations that never completed (no completion time).
    pub never_completed: usize,
    /// Per outcome, over all kinds.
    pub all: Counts,
}

impl Summary {
    /// Counts the operations of a history.
    pub fn of(history: &History) -> Summary {
        let mut s = Summary {
            total: history.len(),
            keys: history.keys().len(),
            clients: history
                .ops
                .iter()
                .map(|o| o.client)
                .collect::<BTreeSet<_>>()
                .len(),
            ..Summary::default()
        };
        for op in &history.ops {
            s.all.add(&op.outcome);
            if op.complete.is_none() {
                s.never_completed += 1;
            }
            match &op.kind {
                OpKind::Read { mode } => s.reads.entry(*mode).or_default().add(&op.outcome),
                OpKind::Write { .. } => s.writes.add(&op.outcome),
                OpKind::Cas { .. } => {
                    s.cas.add(&op.outcome);
                    if op.outcome == Outcome::Ok(Ret::Cas(true)) {
                        s.cas_swapped += 1;
                    }
                }
            }
        }
        s
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} operations by {} clients on {} keys: {}",
            self.total, self.clients, self.keys, self.all
        )?;
        for (mode, c) in &self.reads {
            writeln!(f, "  {mode} reads: {c}")?;
        }
        writeln!(f, "  writes: {}", self.writes)?;
        writeln!(f, "  cas: {}, {} swapped", self.cas, self.cas_swapped)?;
        if self.never_completed > 0 {
            writeln!(f, "  never completed: {}", self.never_completed)?;
        }
        Ok(())
    }
}
