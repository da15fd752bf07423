//! A linearizability checker for registers with read, write and
//! compare-and-set.
//!
//! # Algorithm
//!
//! Keys are independent registers, so each key's operations are checked on
//! their own (keys in parallel, on [`CheckerConfig::threads`] threads).
//!
//! For one key, the search is Wing & Gong's, with Lowe's just-in-time
//! linearization and memoisation (as in Porcupine and Knossos' `linear`
//! algorithm): the operations become call and return entries sorted by time
//! (a call before a return at the same instant, so touching operations are
//! concurrent) in a doubly linked list. Walking the list from its head, a
//! call whose operation the register model accepts in the current state is
//! *linearized*: it is pushed on a stack with the previous state and its call
//! and return entries are unlinked, and the walk restarts at the head.
//! Reaching a return entry means that operation was not linearized before it
//! returned: the search backtracks (pops the last linearized operation,
//! relinks it and tries the next entry after its call). The pair (set of
//! linearized operations as a bitset, register state) is memoised; a
//! configuration seen before is not explored again, which keeps the search
//! polynomial in practice. The search is bounded by
//! [`CheckerConfig::max_states`]; past it the verdict is [`Verdict::Unknown`].
//!
//! Two rules keep the search small without losing completeness:
//!
//! * A required read (or non-swapping CAS) that can take effect in the
//!   current state is linearized at once and no alternative is tried for it:
//!   any linearization from that configuration can be changed into one where
//!   it comes first (it changes nothing, and everything that had to precede
//!   it already has). When the search backtracks over it, it backtracks over
//!   the choice before it too.
//! * The checker first searches without the unknown mutations nobody
//!   observed (their value was never read nor expected by a swapping CAS).
//!   Leaving them out is the same as them never taking effect, so success is
//!   final; otherwise the search is repeated with them.
//!
//! # Outcomes
//!
//! * `Ok` operations must take effect between their invoke and completion.
//! * `Fail` operations definitely did not take effect: they are dropped.
//! * `Unknown` writes and CAS may take effect at any time after their invoke
//!   or never: their return is at +infinity and the search succeeds once
//!   every `Ok` operation is linearized, whether or not they are. An unknown
//!   CAS swaps if the register holds its expected value when it is placed.
//!   If an unknown mutation is the only operation (not failed) that may write
//!   its value and that value was observed, it certainly took effect before
//!   the first observation completed: it becomes required, with that
//!   completion as its deadline (a CAS so observed swapped).
//! * `Unknown` reads observed nothing and are dropped.
//! * A read `Ok(v)` needs the register to hold `v`; a CAS `Ok(true)` needs
//!   `expected` and sets `new`; a CAS `Ok(false)` needs a value other than
//!   `expected` and changes nothing.
//!
//! # Cut points
//!
//! A key's history is split into segments searched one after the other
//! where no operation spans the cut (every operation invoked before it
//! completed before every operation after it; an unknown operation is
//! pending forever, so there is no cut after one) *and* the register's
//! value there is determined: at most one mutation of the segment may be
//! its last, i.e. no other mutation of the segment started after it
//! completed (with two concurrent last writes, either may be the value at
//! the cut, so the segment continues). Any linearization respects such a
//! cut, and the next segment starts from that mutation's value (or, with no
//! mutation, from the value the segment started with). Besides the cuts, the
//! memoised bitset drops its leading all-linearized words, so the memo stays
//! small even in long segments.
//!
//! # Violations
//!
//! When a segment cannot be linearized, the report names the first
//! operation that cannot be placed: the search records the furthest return
//! entry at which it had to backtrack; the history up to that return
//! (operations still pending there being optional) is the smallest prefix
//! with no linearization, and that entry's operation is the one that does
//! not fit. The values the register could hold when the search got stuck
//! there are reported with it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::history::{History, HistoryError, Op, OpKind, Outcome, Ret, fmt_time, fmt_value};

/// Limits and parallelism of a check.
#[derive(Debug, Clone)]
pub struct CheckerConfig {
    /// The most search configurations explored per key before giving up
    /// with [`Verdict::Unknown`].
    pub max_states: u64,
    /// Threads checking keys in parallel; 0 means the available parallelism.
    pub threads: usize,
    /// How many operations completed before the violating one are listed in
    /// a violation report (besides those concurrent with it).
    pub context_ops: usize,
}

impl Default for CheckerConfig {
    fn default() -> Self {
        CheckerConfig {
            max_states: 5_000_000,
            threads: 0,
            context_ops: 8,
        }
    }
}

/// The result of checking a history (or one key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every key's history has a linearization.
    Linearizable,
    /// A key's history has none.
    NotLinearizable(Box<Violation>),
    /// The search gave up (budget exceeded, or an internal inconsistency).
    Unknown {
        /// Why.
        reason: String,
    },
}

impl Verdict {
    /// `true` for [`Verdict::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }

    /// The violation, for [`Verdict::NotLinearizable`].
    pub fn violation(&self) -> Option<&Violation> {
        match self {
            Verdict::NotLinearizable(v) => Some(v),
            _ => None,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable => f.write_str("linearizable"),
            Verdict::NotLinearizable(v) => write!(f, "NOT linearizable: {v}"),
            Verdict::Unknown { reason } => write!(f, "unknown: {reason}"),
        }
    }
}

/// The first place where a key's history cannot be linearized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The key.
    pub key: String,
    /// The first operation that cannot be placed: the history of the key up
    /// to its completion has no linearization.
    pub op: Op,
    /// The operations around it, by invoke time: those concurrent with it,
    /// the last mutations completed before it, and any operation writing
    /// the value it read or expected (including failed ones).
    pub ops: Vec<Op>,
    /// The values the register could hold when the search got stuck at the
    /// operation's completion (`None`: absent).
    pub possible: Vec<Option<String>>,
    /// How many operations of the key (not counting dropped ones) were
    /// invoked up to the operation's completion: the size of the smallest
    /// prefix that has no linearization.
    pub prefix_len: usize,
    /// When the operation had to take effect by (ns since the start): its
    /// completion, or for an unknown mutation whose value was observed, the
    /// completion of the first operation observing it.
    pub deadline: u64,
    /// A readable explanation (one paragraph; [`fmt::Display`] adds the
    /// operations around it).
    pub explanation: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.explanation)?;
        writeln!(f, "operations around it on key {}:", self.key)?;
        for op in &self.ops {
            let mark = if *op == self.op { "=> " } else { "   " };
            writeln!(f, "  {mark}{op}")?;
        }
        Ok(())
    }
}

/// The check of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyReport {
    /// The key.
    pub key: String,
    /// Its verdict.
    pub verdict: Verdict,
    /// Operations searched (failed operations and unknown reads are dropped).
    pub ops: usize,
    /// Segments the history was cut into at quiescent points.
    pub segments: usize,
    /// Search configurations explored.
    pub states: u64,
    /// Time spent.
    pub elapsed: Duration,
}

/// The check of a whole history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The overall verdict: the violation completing first if any key has
    /// one, else unknown if any key is unknown, else linearizable.
    pub verdict: Verdict,
    /// Per key, sorted by key.
    pub keys: Vec<KeyReport>,
}

/// Checks every key of a history (validated first). Reads of every mode in
/// the history are checked: filter with [`History::with_reads`] to check a
/// claim about some modes only.
pub fn check(history: &History, config: &CheckerConfig) -> Result<Report, HistoryError> {
    history.validate()?;
    let by_key: Vec<(&str, Vec<&Op>)> = history.by_key().into_iter().collect();
    let threads = match config.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .min(by_key.len())
    .max(1);
    let next = AtomicUsize::new(0);
    let mut keys: Vec<KeyReport> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((key, ops)) = by_key.get(i) else {
                            break;
                        };
                        done.push(check_key_ops(key, ops, config));
                    }
                    done
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    keys.sort_by(|a, b| a.key.cmp(&b.key));
    let verdict = overall(&keys);
    Ok(Report { verdict, keys })
}

/// Checks one key of a history (validated first).
pub fn check_key(
    history: &History,
    key: &str,
    config: &CheckerConfig,
) -> Result<KeyReport, HistoryError> {
    history.validate()?;
    let ops: Vec<&Op> = history.ops.iter().filter(|o| o.key == key).collect();
    Ok(check_key_ops(key, &ops, config))
}

fn overall(keys: &[KeyReport]) -> Verdict {
    let first_violation = keys
        .iter()
        .filter_map(|k| k.verdict.violation())
        .min_by_key(|v| (v.op.complete, v.op.invoke));
    if let Some(v) = first_violation {
        return Verdict::NotLinearizable(Box::new(v.clone()));
    }
    let reasons: Vec<String> = keys
        .iter()
        .filter_map(|k| match &k.verdict {
            Verdict::Unknown { reason } => Some(format!("key {}: {reason}", k.key)),
            _ => None,
        })
        .collect();
    if reasons.is_empty() {
        Verdict::Linearizable
    } else {
        Verdict::Unknown {
            reason: reasons.join("; "),
        }
    }
}

/// Register values interned per key; id 0 is the absent value.
struct Interner {
    ids: HashMap<Option<String>, u32>,
    values: Vec<Option<String>>,
}

impl Interner {
    fn new() -> Self {
        let mut i = Interner {
            ids: HashMap::new(),
            values: Vec::new(),
        };
        i.intern(None);
        i
    }

    fn intern(&mut self, v: Option<&str>) -> u32 {
        let key = v.map(str::to_string);
        if let Some(&id) = self.ids.get(&key) {
            return id;
        }
        let id = u32::try_from(self.values.len()).unwrap_or(u32::MAX);
        self.values.push(key.clone());
        self.ids.insert(key, id);
        id
    }

    fn value(&self, id: u32) -> Option<String> {
        self.values.get(id as usize).cloned().flatten()
    }
}

/// The register model's view of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Read `Ok(v)`: the state must be `v`.
    Read(u32),
    /// Write (ok or unknown): the state becomes `v`.
    Write(u32),
    /// CAS `Ok(true)`: the state must be `exp`, becomes `new`.
    Swap { exp: u32, new: u32 },
    /// CAS `Ok(false)`: the state must not be `exp`.
    NoSwap(u32),
    /// Unknown CAS: swaps if the state is `exp`.
    MaybeSwap { exp: u32, new: u32 },
}

impl Step {
    fn apply(self, state: u32) -> Option<u32> {
        match self {
            Step::Read(v) => (state == v).then_some(state),
            Step::Write(v) => Some(v),
            Step::Swap { exp, new } => (state == exp).then_some(new),
            Step::NoSwap(exp) => (state != exp).then_some(state),
            Step::MaybeSwap { exp, new } => Some(if state == exp { new } else { state }),
        }
    }

    /// The value the register holds after a mutation, if it is one.
    fn written(self) -> Option<u32> {
        match self {
            Step::Write(v) | Step::Swap { new: v, .. } => Some(v),
            _ => None,
        }
    }
}

/// An operation prepared for the search.
#[derive(Debug, Clone, Copy)]
struct SOp<'a> {
    op: &'a Op,
    step: Step,
    /// `false` for unknown operations, which need not be linearized.
    required: bool,
    call: u64,
    /// `None`: never returns (+infinity).
    ret: Option<u64>,
}

/// Prepares a key's operations for the search, sorted by call time.
///
/// Failed operations and unknown reads are dropped. An unknown mutation
/// whose value was observed (read, or expected by a swapping CAS), if it is
/// the only operation that may write that value, certainly took effect
/// before the first observation completed: it becomes required with that
/// completion as its return (an unknown CAS so observed swapped). With
/// `drop_unobserved`, the other unknown mutations are left out: a
/// linearization without them is one with them never applied, so a
/// linearizable result is final (a violation must be confirmed with them).
fn prepare<'a>(ops: &[&'a Op], interner: &mut Interner, drop_unobserved: bool) -> Vec<SOp<'a>> {
    // Per value: how many operations may write it, and the earliest
    // completion of an operation observing it.
    let mut writers: HashMap<&str, usize> = HashMap::new();
    let mut first_observed: HashMap<&str, u64> = HashMap::new();
    for op in ops {
        let written = match (&op.kind, &op.outcome) {
            (_, Outcome::Fail) | (OpKind::Cas { .. }, Outcome::Ok(Ret::Cas(false))) => None,
            (OpKind::Write { value }, _) => Some(value),
            (OpKind::Cas { new, .. }, _) => Some(new),
            (OpKind::Read { .. }, _) => None,
        };
        if let Some(v) = written {
            *writers.entry(v).or_default() += 1;
        }
        let observed = match (&op.kind, &op.outcome) {
            (OpKind::Read { .. }, Outcome::Ok(Ret::Read(Some(v)))) => Some(v),
            (
                OpKind::Cas {
                    expected: Some(v), ..
                },
                Outcome::Ok(Ret::Cas(true)),
            ) => Some(v),
            _ => None,
        };
        if let (Some(v), Some(c)) = (observed, op.complete) {
            let t = first_observed.entry(v).or_insert(c);
            *t = (*t).min(c);
        }
    }
    // For an unknown mutation of `value`: Some(deadline) when it must have
    // taken effect by then, None when it is unobserved.
    let observed_by = |op: &Op, value: &str| -> Option<Option<u64>> {
        match first_observed.get(value) {
            Some(&t) if writers.get(value) == Some(&1) && t >= op.invoke => Some(Some(t)),
            Some(_) => Some(None),
            None => None,
        }
    };
    let mut out = Vec::with_capacity(ops.len());
    for &op in ops {
        let (step, ret) = match (&op.kind, &op.outcome) {
            (_, Outcome::Fail) | (OpKind::Read { .. }, Outcome::Unknown) => continue,
            (OpKind::Read { .. }, Outcome::Ok(Ret::Read(v))) => {
                (Step::Read(interner.intern(v.as_deref())), op.complete)
            }
            (OpKind::Write { value }, Outcome::Ok(_)) => {
                (Step::Write(interner.intern(Some(value))), op.complete)
            }
            (OpKind::Write { value }, Outcome::Unknown) => {
                let ret = match observed_by(op, value) {
                    None if drop_unobserved => continue,
                    None => None,
                    Some(deadline) => deadline,
                };
                (Step::Write(interner.intern(Some(value))), ret)
            }
            (OpKind::Cas { expected, new }, outcome) => {
                let exp = interner.intern(expected.as_deref());
                let new_id = interner.intern(Some(new));
                match outcome {
                    Outcome::Ok(Ret::Cas(true)) => (Step::Swap { exp, new: new_id }, op.complete),
                    Outcome::Ok(_) => (Step::NoSwap(exp), op.complete),
                    _ => match observed_by(op, new) {
                        None if drop_unobserved => continue,
                        None => (Step::MaybeSwap { exp, new: new_id }, None),
                        Some(None) => (Step::MaybeSwap { exp, new: new_id }, None),
                        Some(Some(t)) => (Step::Swap { exp, new: new_id }, Some(t)),
                    },
                }
            }
            // Validated histories have no other combination.
            (OpKind::Read { .. }, Outcome::Ok(_)) => continue,
        };
        out.push(SOp {
            op,
            step,
            required: ret.is_some(),
            call: op.invoke,
            ret,
        });
    }
    out.sort_by_key(|o| (o.call, o.ret.is_none(), o.ret));
    out
}

/// A segment of a key's history and the register's value at its end (if
/// it is linearizable).
struct Segment<'s, 'a> {
    ops: &'s [SOp<'a>],
    /// The value its last mutation leaves; `None`: it has no mutation (the
    /// value passes through).
    end: Option<u32>,
}

/// Splits operations sorted by call time at quiescent points where the
/// register's value is determined: every operation before the cut completed
/// before every operation after it, and only one mutation of the segment
/// may be its last (none started after it completed).
fn segments<'s, 'a>(ops: &'s [SOp<'a>]) -> Vec<Segment<'s, 'a>> {
    let mut segs = Vec::new();
    let mut start = 0;
    let mut max_ret = 0u64;
    // Mutations of the current segment that no later mutation started after.
    let mut last_mutations: Vec<(u64, u32)> = Vec::new();
    for (i, o) in ops.iter().enumerate() {
        if i > start && o.call > max_ret && last_mutations.len() <= 1 {
            segs.push(Segment {
                ops: &ops[start..i],
                end: last_mutations.first().map(|m| m.1),
            });
            start = i;
            last_mutations.clear();
        }
        max_ret = max_ret.max(o.ret.unwrap_or(u64::MAX));
        if let Some(v) = o.step.written() {
            last_mutations.retain(|m| m.0 >= o.call);
            last_mutations.push((o.ret.unwrap_or(u64::MAX), v));
        } else if matches!(o.step, Step::MaybeSwap { .. }) {
            // Never cut after it (its return is infinite anyway).
            last_mutations.push((u64::MAX, 0));
        }
    }
    if start < ops.len() {
        segs.push(Segment {
            ops: &ops[start..],
            end: None,
        });
    }
    segs
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    op: usize,
    is_call: bool,
    /// The index of the matching call or return entry.
    partner: usize,
}

/// Memoised configuration: the linearized set (leading all-ones words
/// counted, trailing zero words dropped) and the register state.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Memo {
    state: u32,
    full: u32,
    rest: Box<[u64]>,
}

/// The set of linearized operations, tracking its leading full words and
/// an upper bound of its last non-zero word, for cheap memo keys.
struct Bits {
    words: Vec<u64>,
    /// Index of the first word that is not all ones.
    lo: usize,
    /// One past the highest word ever set.
    hi: usize,
}

impl Bits {
    fn new(n: usize) -> Self {
        Bits {
            words: vec![0; n.div_ceil(64)],
            lo: 0,
            hi: 0,
        }
    }

    fn set(&mut self, i: usize) {
        let w = i / 64;
        self.words[w] |= 1 << (i % 64);
        self.hi = self.hi.max(w + 1);
        while self.lo < self.words.len() && self.words[self.lo] == u64::MAX {
            self.lo += 1;
        }
    }

    fn clear(&mut self, i: usize) {
        let w = i / 64;
        self.words[w] &= !(1 << (i % 64));
        self.lo = self.lo.min(w);
    }

    fn memo(&mut self, state: u32) -> Memo {
        while self.hi > self.lo && self.words[self.hi - 1] == 0 {
            self.hi -= 1;
        }
        let rest = if self.hi > self.lo {
            self.words[self.lo..self.hi].into()
        } else {
            Box::default()
        };
        Memo {
            state,
            full: u32::try_from(self.lo).unwrap_or(u32::MAX),
            rest,
        }
    }
}

enum SearchResult {
    /// A linearization exists.
    Linearized,
    /// None exists. `op`: the operation whose return is the furthest entry
    /// at which the search had to backtrack; `states`: the register states
    /// there.
    Stuck { op: usize, states: BTreeSet<u32> },
    /// The budget ran out.
    Budget,
}

struct Budget {
    used: u64,
    max: u64,
}

/// One search of a segment from an initial state.
fn search(ops: &[SOp<'_>], init: u32, budget: &mut Budget) -> SearchResult {
    // (infinite, time, is_return, is_deadline, op) orders calls before
    // returns at equal times, and the deadlines of observed unknown
    // mutations after true returns (so that an observer is reported rather
    // than the unknown mutation it observed).
    let mut keys: Vec<(bool, u64, bool, bool, usize)> = Vec::with_capacity(2 * ops.len());
    for (i, o) in ops.iter().enumerate() {
        keys.push((false, o.call, false, false, i));
        let deadline = !o.op.outcome.is_ok();
        keys.push((
            o.ret.is_none(),
            o.ret.unwrap_or(u64::MAX),
            true,
            deadline,
            i,
        ));
    }
    keys.sort_unstable();
    let n = keys.len();
    let mut call_of = vec![0usize; ops.len()];
    let mut ret_of = vec![0usize; ops.len()];
    for (pos, &(_, _, is_ret, _, op)) in keys.iter().enumerate() {
        if is_ret {
            ret_of[op] = pos;
        } else {
            call_of[op] = pos;
        }
    }
    let entries: Vec<Entry> = keys
        .iter()
        .map(|&(_, _, is_ret, _, op)| Entry {
            op,
            is_call: !is_ret,
            partner: if is_ret { call_of[op] } else { ret_of[op] },
        })
        .collect();

    // Doubly linked list; index n is the head sentinel.
    let head = n;
    let mut next: Vec<usize> = (1..=n + 1).collect();
    let mut prev: Vec<usize> = Vec::with_capacity(n + 1);
    prev.push(head);
    prev.extend(0..n);
    if n == 0 {
        next[head] = head;
        prev[head] = head;
    } else {
        next[head] = 0;
        prev[head] = n - 1;
        next[n - 1] = head;
    }

    let mut remaining = ops.iter().filter(|o| o.required).count();
    if remaining == 0 {
        return SearchResult::Linearized;
    }
    let mut bits = Bits::new(ops.len());
    let mut memo: HashSet<Memo> = HashSet::new();
    // (call entry, state before it, forced)
    let mut stack: Vec<(usize, u32, bool)> = Vec::new();
    let mut state = init;
    let mut stuck: Option<(usize, BTreeSet<u32>)> = None;
    let mut entry = head;
    // Whether to look for a forced observation before walking from `entry`.
    let mut fresh = true;
    loop {
        let mut forced = false;
        if fresh {
            // A required read (or non-swapping CAS) that can take effect
            // now is linearized first, without trying alternatives: any
            // linearization from here can be changed into one where it comes
            // first, as it changes nothing and every operation that had to
            // precede it is already linearized.
            fresh = false;
            let mut e = next[head];
            while e != head && entries[e].is_call {
                let o = &ops[entries[e].op];
                if o.required
                    && matches!(o.step, Step::Read(_) | Step::NoSwap(_))
                    && o.step.apply(state).is_some()
                {
                    forced = true;
                    break;
                }
                e = next[e];
            }
            entry = if forced { e } else { next[head] };
        }
        if entry == head {
            // Unreachable: an unlinearized required operation's return
            // always stops the walk first.
            return SearchResult::Linearized;
        }
        let e = entries[entry];
        let mut backtrack = !e.is_call;
        if e.is_call {
            let o = &ops[e.op];
            if let Some(new_state) = o.step.apply(state) {
                bits.set(e.op);
                if memo.insert(bits.memo(new_state)) {
                    budget.used += 1;
                    if budget.used > budget.max {
                        return SearchResult::Budget;
                    }
                    stack.push((entry, state, forced));
                    state = new_state;
                    // Lift the call and its return out of the list.
                    let r = e.partner;
                    next[prev[entry]] = next[entry];
                    prev[next[entry]] = prev[entry];
                    next[prev[r]] = next[r];
                    prev[next[r]] = prev[r];
                    if o.required {
                        remaining -= 1;
                        if remaining == 0 {
                            return SearchResult::Linearized;
                        }
                    }
                    fresh = true;
                    continue;
                }
                bits.clear(e.op);
            }
            // A forced observation already explored from here: this
            // configuration fails.
            backtrack = forced;
            entry = next[entry];
        } else {
            // Its operation returned without being linearized.
            match &mut stuck {
                Some((pos, states)) if *pos == entry => {
                    states.insert(state);
                }
                Some((pos, _)) if *pos > entry => {}
                _ => stuck = Some((entry, BTreeSet::from([state]))),
            }
        }
        if !backtrack {
            continue;
        }
        // Undo the last choice; after a forced one, the one before it too.
        loop {
            let Some((call, old_state, was_forced)) = stack.pop() else {
                let (pos, states) = stuck.unwrap_or_default();
                return SearchResult::Stuck {
                    op: entries.get(pos).map_or(0, |e| e.op),
                    states,
                };
            };
            let c = entries[call];
            bits.clear(c.op);
            state = old_state;
            if ops[c.op].required {
                remaining += 1;
            }
            // Relink the return, then the call.
            let r = c.partner;
            next[prev[r]] = r;
            prev[next[r]] = r;
            next[prev[call]] = call;
            prev[next[call]] = call;
            entry = next[call];
            if !was_forced {
                break;
            }
        }
    }
}

/// Checks the (unfiltered) operations of one key.
fn check_key_ops(key: &str, ops: &[&Op], config: &CheckerConfig) -> KeyReport {
    let started = Instant::now();
    let mut interner = Interner::new();
    let mut budget = Budget {
        used: 0,
        max: config.max_states,
    };
    // First without the unobserved unknown mutations (a linearization
    // without them is final); if that fails, with them.
    let sops = prepare(ops, &mut interner, true);
    let mut segs = segments(&sops);
    let mut verdict = check_segments(key, ops, &sops, &segs, &interner, config, &mut budget);
    let mut searched = (sops.len(), segs.len());
    let all;
    if !verdict.is_linearizable() {
        all = prepare(ops, &mut interner, false);
        if all.len() > sops.len() {
            segs = segments(&all);
            budget.max = budget.used.saturating_add(config.max_states);
            verdict = check_segments(key, ops, &all, &segs, &interner, config, &mut budget);
            searched = (all.len(), segs.len());
        }
    }
    KeyReport {
        key: key.to_string(),
        verdict,
        ops: searched.0,
        segments: searched.1,
        states: budget.used,
        elapsed: started.elapsed(),
    }
}

fn budget_exceeded(key: &str, config: &CheckerConfig, seg: &[SOp<'_>]) -> Verdict {
    let from = seg.first().map_or(0, |o| o.call);
    Verdict::Unknown {
        reason: format!(
            "key {key}: search budget of {} configurations exceeded in the {} operations from {}",
            config.max_states,
            seg.len(),
            fmt_time(from)
        ),
    }
}

fn check_segments(
    key: &str,
    all_ops: &[&Op],
    sops: &[SOp<'_>],
    segs: &[Segment<'_, '_>],
    interner: &Interner,
    config: &CheckerConfig,
    budget: &mut Budget,
) -> Verdict {
    // The register's value at the start of the current segment.
    let mut state = 0;
    for seg in segs {
        match search(seg.ops, state, budget) {
            SearchResult::Linearized => {
                if let Some(end) = seg.end {
                    state = end;
                }
            }
            SearchResult::Budget => return budget_exceeded(key, config, seg.ops),
            SearchResult::Stuck { op, states } => {
                let Some(failed) = seg.ops.get(op) else {
                    return Verdict::Unknown {
                        reason: format!("key {key}: internal error: stuck at no operation"),
                    };
                };
                return Verdict::NotLinearizable(Box::new(violation(
                    key, all_ops, sops, failed, &states, interner, config,
                )));
            }
        }
    }
    Verdict::Linearizable
}

fn fmt_set(values: &[Option<String>]) -> String {
    let items: Vec<String> = values.iter().map(|v| fmt_value(v.as_deref())).collect();
    format!("{{{}}}", items.join(", "))
}

fn violation(
    key: &str,
    all_ops: &[&Op],
    sops: &[SOp<'_>],
    failed: &SOp<'_>,
    states: &BTreeSet<u32>,
    interner: &Interner,
    config: &CheckerConfig,
) -> Violation {
    let op = failed.op.clone();
    // When it had to take effect by: its completion, or for an unknown
    // mutation whose value was observed, that observation's completion.
    let end = failed.ret.or(op.complete).unwrap_or(u64::MAX);
    let possible: Vec<Option<String>> = states.iter().map(|&s| interner.value(s)).collect();
    let prefix_len = sops.iter().filter(|o| o.call <= end).count();
    let set = fmt_set(&possible);

    // The value the operation observed, for a read or CAS.
    let observed: Option<Option<String>> = match (&op.kind, &op.outcome) {
        (_, Outcome::Ok(Ret::Read(v))) => Some(v.clone()),
        (OpKind::Cas { expected, .. }, _) => Some(expected.clone()),
        _ => None,
    };
    let writes = |v: &Option<String>, o: &Op| match (&o.kind, v) {
        (OpKind::Write { value }, Some(v)) => value == v,
        (OpKind::Cas { new, .. }, Some(v)) => new == v,
        _ => false,
    };
    let what = match (&op.kind, &op.outcome) {
        (OpKind::Read { .. }, _) => {
            let v = observed.clone().flatten();
            let writers: Vec<&&Op> = all_ops.iter().filter(|o| writes(&v, o)).collect();
            let why = if v.is_some() && writers.is_empty() {
                " (and that value was never written)".to_string()
            } else if v.is_some() && writers.iter().all(|o| o.outcome == Outcome::Fail) {
                " (and that value was only written by a write that failed)".to_string()
            } else if v.is_some() && writers.iter().all(|o| o.invoke > end) {
                " (and that value was written only after the read completed)".to_string()
            } else {
                String::new()
            };
            format!(
                "it read {}{why}, but the only values possible by then were {set}",
                fmt_value(v.as_deref())
            )
        }
        (OpKind::Cas { expected, .. }, Outcome::Unknown) => format!(
            "its outcome is unknown but its new value was observed by {}, so it swapped by then \
             and the register held {}, but the only values possible by then were {set}",
            fmt_time(end),
            fmt_value(expected.as_deref())
        ),
        (OpKind::Write { .. }, Outcome::Unknown) => format!(
            "its outcome is unknown but its value was observed by {}, so it took effect by then, \
             yet it cannot be ordered with the operations around it; the only values possible \
             by then were {set}",
            fmt_time(end)
        ),
        (OpKind::Cas { expected, .. }, Outcome::Ok(Ret::Cas(true))) => format!(
            "it swapped, so the register held {}, but the only values possible by then were {set}",
            fmt_value(expected.as_deref())
        ),
        (OpKind::Cas { expected, .. }, _) => format!(
            "it did not swap, so the register did not hold {}, but the only values possible by then were {set}",
            fmt_value(expected.as_deref())
        ),
        (OpKind::Write { .. }, _) => format!(
            "it cannot be ordered with the operations around it; the only values possible by its completion were {set}"
        ),
    };
    let explanation = format!(
        "key {key}: the {prefix_len} operations invoked up to {} have no linearization; \
         the first that does not fit is client {} {} at {}: {what}",
        fmt_time(end),
        op.client,
        match &op.kind {
            OpKind::Read { mode } => format!("{mode} read"),
            OpKind::Write { value } => format!("write of {value}"),
            OpKind::Cas { expected, new } =>
                format!("cas {} -> {new}", fmt_value(expected.as_deref())),
        },
        op.interval(),
    );

    // Context: concurrent operations, the last mutations before it, and the
    // writers of the value it observed.
    let mut context: Vec<&Op> = all_ops
        .iter()
        .copied()
        .filter(|o| o.invoke <= end && o.complete.is_none_or(|c| c >= op.invoke))
        .collect();
    let mut before: Vec<&Op> = all_ops
        .iter()
        .copied()
        .filter(|o| o.kind.is_mutation() && o.complete.is_some_and(|c| c < op.invoke))
        .collect();
    before.sort_by_key(|o| o.complete);
    context.extend(before.iter().rev().take(config.context_ops));
    if let Some(v) = &observed {
        context.extend(all_ops.iter().copied().filter(|o| writes(v, o)));
    }
    context.sort_by_key(|o| {
        (
            o.invoke,
            o.complete,
            o.client,
            std::ptr::from_ref(*o) as usize,
        )
    });
    context.dedup_by(|a, b| std::ptr::eq(*a, *b));
    let ops = context.into_iter().cloned().collect();
    Violation {
        key: key.to_string(),
        op,
        ops,
        possible,
        prefix_len,
        deadline: end,
        explanation,
    }
}
