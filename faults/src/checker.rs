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
//! # Outcomes
//!
//! * `Ok` operations must take effect between their invoke and completion.
//! * `Fail` operations definitely did not take effect: they are dropped.
//! * `Unknown` writes and CAS may take effect at any time after their invoke
//!   or never: their return is at +infinity and the search succeeds once
//!   every `Ok` operation is linearized, whether or not they are. An unknown
//!   CAS swaps if the register holds its expected value when it is placed.
//!   `Unknown` reads observed nothing and are dropped.
//! * A read `Ok(v)` needs the register to hold `v`; a CAS `Ok(true)` needs
//!   `expected` and sets `new`; a CAS `Ok(false)` needs a value other than
//!   `expected` and changes nothing.
//!
//! # Cut points
//!
//! A key's history is split where no operation is pending (every operation
//! invoked before the cut completed before every operation after it; an
//! unknown operation is pending forever, so there is no cut after one). Any
//! linearization respects such a cut, but the register's value at the cut
//! is not unique (concurrent writes before it may end in either order), so
//! the checker carries the *set* of possible values across: for a segment it
//! tries each value a last mutation of the segment could leave (a write or
//! swap that no other mutation of the segment started after), by searching
//! the segment followed by a virtual read of that value, from each possible
//! initial value. The last segment is searched from each possible initial
//! value. This is exact, and keeps each search's bitset small.
//!
//! # Violations
//!
//! When a segment cannot be linearized from any possible initial value, the
//! report names the first operation that cannot be placed: the search
//! records the furthest return entry at which it had to backtrack; the
//! history up to that return (operations still pending there being
//! optional) is the smallest prefix with no linearization, and that entry's
//! operation is the one that does not fit. The values the register could
//! hold when the search got stuck there are reported with it.

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

fn prepare<'a>(ops: &[&'a Op], interner: &mut Interner) -> Vec<SOp<'a>> {
    let mut out = Vec::with_capacity(ops.len());
    for &op in ops {
        let (step, required) = match (&op.kind, &op.outcome) {
            (_, Outcome::Fail) | (OpKind::Read { .. }, Outcome::Unknown) => continue,
            (OpKind::Read { .. }, Outcome::Ok(Ret::Read(v))) => {
                (Step::Read(interner.intern(v.as_deref())), true)
            }
            (OpKind::Write { value }, Outcome::Ok(_)) => {
                (Step::Write(interner.intern(Some(value))), true)
            }
            (OpKind::Write { value }, Outcome::Unknown) => {
                (Step::Write(interner.intern(Some(value))), false)
            }
            (OpKind::Cas { expected, new }, outcome) => {
                let exp = interner.intern(expected.as_deref());
                let new = interner.intern(Some(new));
                match outcome {
                    Outcome::Ok(Ret::Cas(true)) => (Step::Swap { exp, new }, true),
                    Outcome::Ok(_) => (Step::NoSwap(exp), true),
                    _ => (Step::MaybeSwap { exp, new }, false),
                }
            }
            // Validated histories have no other combination.
            (OpKind::Read { .. }, Outcome::Ok(_)) => continue,
        };
        out.push(SOp {
            op,
            step,
            required,
            call: op.invoke,
            ret: if required { op.complete } else { None },
        });
    }
    out.sort_by_key(|o| (o.call, o.ret.is_none(), o.ret));
    out
}

/// Splits operations sorted by call time at quiescent points.
fn segments<'s, 'a>(ops: &'s [SOp<'a>]) -> Vec<&'s [SOp<'a>]> {
    let mut segs = Vec::new();
    let mut start = 0;
    let mut max_ret = 0u64;
    for (i, o) in ops.iter().enumerate() {
        if i > start && o.call > max_ret {
            segs.push(&ops[start..i]);
            start = i;
        }
        max_ret = max_ret.max(o.ret.unwrap_or(u64::MAX));
    }
    if start < ops.len() {
        segs.push(&ops[start..]);
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

impl Memo {
    fn new(words: &[u64], state: u32) -> Self {
        let full = words.iter().take_while(|&&w| w == u64::MAX).count();
        let end = words.iter().rposition(|&w| w != 0).map_or(0, |p| p + 1);
        let rest = if end > full {
            words[full..end].into()
        } else {
            Box::default()
        };
        Memo {
            state,
            full: u32::try_from(full).unwrap_or(u32::MAX),
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
    Stuck {
        pos: usize,
        op: usize,
        states: BTreeSet<u32>,
    },
    /// The budget ran out.
    Budget,
}

struct Budget {
    used: u64,
    max: u64,
}

/// One search of a segment (plus an optional virtual final read) from one
/// initial state.
fn search(
    ops: &[SOp<'_>],
    init: u32,
    final_read: Option<u32>,
    budget: &mut Budget,
) -> SearchResult {
    let mut steps: Vec<(Step, bool)> = ops.iter().map(|o| (o.step, o.required)).collect();
    // (infinite, time, is_return, op) orders calls before returns at equal times.
    let mut keys: Vec<(bool, u64, bool, usize)> = Vec::with_capacity(2 * ops.len() + 2);
    for (i, o) in ops.iter().enumerate() {
        keys.push((false, o.call, false, i));
        keys.push((o.ret.is_none(), o.ret.unwrap_or(u64::MAX), true, i));
    }
    keys.sort_unstable();
    if let Some(v) = final_read {
        // After every finite return (segments with a final read have no
        // infinite ones).
        let i = steps.len();
        steps.push((Step::Read(v), true));
        keys.push((false, u64::MAX, false, i));
        keys.push((false, u64::MAX, true, i));
    }
    let n_ops = steps.len();
    let n = keys.len();
    let mut call_of = vec![0usize; n_ops];
    let mut ret_of = vec![0usize; n_ops];
    for (pos, &(_, _, is_ret, op)) in keys.iter().enumerate() {
        if is_ret {
            ret_of[op] = pos;
        } else {
            call_of[op] = pos;
        }
    }
    let entries: Vec<Entry> = keys
        .iter()
        .map(|&(_, _, is_ret, op)| Entry {
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
    next[n] = 0;
    prev[n] = n.saturating_sub(1);
    if n == 0 {
        next[n] = head;
        prev[n] = head;
    } else {
        next[n - 1] = head;
    }

    let mut remaining = steps.iter().filter(|s| s.1).count();
    if remaining == 0 {
        return SearchResult::Linearized;
    }
    let mut words = vec![0u64; n_ops.div_ceil(64)];
    let mut memo: HashSet<Memo> = HashSet::new();
    let mut stack: Vec<(usize, u32)> = Vec::new();
    let mut state = init;
    let mut stuck: Option<(usize, BTreeSet<u32>)> = None;
    let mut entry = next[head];
    loop {
        if entry == head {
            // Unreachable: an unlinearized required operation's return
            // always stops the walk first.
            return SearchResult::Linearized;
        }
        let e = entries[entry];
        if e.is_call {
            let (step, required) = steps[e.op];
            if let Some(new_state) = step.apply(state) {
                words[e.op / 64] |= 1 << (e.op % 64);
                if memo.insert(Memo::new(&words, new_state)) {
                    budget.used += 1;
                    if budget.used > budget.max {
                        return SearchResult::Budget;
                    }
                    stack.push((entry, state));
                    state = new_state;
                    // Lift the call and its return out of the list.
                    let r = e.partner;
                    next[prev[entry]] = next[entry];
                    prev[next[entry]] = prev[entry];
                    next[prev[r]] = next[r];
                    prev[next[r]] = prev[r];
                    if required {
                        remaining -= 1;
                        if remaining == 0 {
                            return SearchResult::Linearized;
                        }
                    }
                    entry = next[head];
                    continue;
                }
                words[e.op / 64] &= !(1 << (e.op % 64));
            }
            entry = next[entry];
        } else {
            // Its operation returned without being linearized: backtrack.
            match &mut stuck {
                Some((pos, states)) if *pos == entry => {
                    states.insert(state);
                }
                Some((pos, _)) if *pos > entry => {}
                _ => stuck = Some((entry, BTreeSet::from([state]))),
            }
            let Some((call, old_state)) = stack.pop() else {
                let (pos, states) = stuck.unwrap_or_default();
                return SearchResult::Stuck {
                    pos,
                    op: entries.get(pos).map_or(0, |e| e.op),
                    states,
                };
            };
            let c = entries[call];
            words[c.op / 64] &= !(1 << (c.op % 64));
            state = old_state;
            if steps[c.op].1 {
                remaining += 1;
            }
            // Relink the return, then the call.
            let r = c.partner;
            next[prev[r]] = r;
            prev[next[r]] = r;
            next[prev[call]] = call;
            prev[next[call]] = call;
            entry = next[call];
        }
    }
}

/// Checks the (unfiltered) operations of one key.
fn check_key_ops(key: &str, ops: &[&Op], config: &CheckerConfig) -> KeyReport {
    let started = Instant::now();
    let mut interner = Interner::new();
    let sops = prepare(ops, &mut interner);
    let segs = segments(&sops);
    let mut budget = Budget {
        used: 0,
        max: config.max_states,
    };
    let verdict = check_segments(key, ops, &sops, &segs, &interner, config, &mut budget);
    KeyReport {
        key: key.to_string(),
        verdict,
        ops: sops.len(),
        segments: segs.len(),
        states: budget.used,
        elapsed: started.elapsed(),
    }
}

fn budget_exceeded(key: &str, budget: &Budget, seg: &[SOp<'_>]) -> Verdict {
    let from = seg.first().map_or(0, |o| o.call);
    Verdict::Unknown {
        reason: format!(
            "key {key}: search budget of {} configurations exceeded in the {} operations from {}",
            budget.max,
            seg.len(),
            fmt_time(from)
        ),
    }
}

fn check_segments(
    key: &str,
    all_ops: &[&Op],
    sops: &[SOp<'_>],
    segs: &[&[SOp<'_>]],
    interner: &Interner,
    config: &CheckerConfig,
    budget: &mut Budget,
) -> Verdict {
    // Possible register values at the start of the current segment.
    let mut initial: BTreeSet<u32> = BTreeSet::from([0]);
    for (si, seg) in segs.iter().enumerate() {
        if si + 1 < segs.len() {
            // Values a last mutation of the segment may leave, or (no
            // mutation) the initial values.
            let max_mut_call = seg
                .iter()
                .filter(|o| o.step.written().is_some())
                .map(|o| o.call)
                .max();
            let candidates: BTreeSet<u32> = match max_mut_call {
                Some(m) => seg
                    .iter()
                    .filter(|o| o.ret.is_none_or(|r| r >= m))
                    .filter_map(|o| o.step.written())
                    .collect(),
                None => initial.clone(),
            };
            let mut reachable = BTreeSet::new();
            for &v in &candidates {
                for &s in &initial {
                    match search(seg, s, Some(v), budget) {
                        SearchResult::Linearized => {
                            reachable.insert(v);
                            break;
                        }
                        SearchResult::Budget => return budget_exceeded(key, budget, seg),
                        SearchResult::Stuck { .. } => {}
                    }
                }
            }
            if !reachable.is_empty() {
                initial = reachable;
                continue;
            }
        }
        // The last segment, or one that cannot end in any value: search it
        // alone from every possible initial value.
        let mut worst: Option<(usize, usize, BTreeSet<u32>)> = None;
        for &s in &initial {
            match search(seg, s, None, budget) {
                SearchResult::Linearized => {
                    if si + 1 == segs.len() {
                        return Verdict::Linearizable;
                    }
                    return Verdict::Unknown {
                        reason: format!(
                            "key {key}: internal error: the segment from {} is linearizable \
                             but ends in no value a last mutation leaves",
                            seg.first().map_or(String::new(), |o| fmt_time(o.call))
                        ),
                    };
                }
                SearchResult::Budget => return budget_exceeded(key, budget, seg),
                SearchResult::Stuck { pos, op, states } => match &mut worst {
                    Some((p, _, st)) if *p == pos => st.extend(states),
                    Some((p, _, _)) if *p > pos => {}
                    _ => worst = Some((pos, op, states)),
                },
            }
        }
        let Some((_, op, states)) = worst else {
            return Verdict::Unknown {
                reason: format!("key {key}: no initial value to search from"),
            };
        };
        let Some(failed) = seg.get(op) else {
            return Verdict::Unknown {
                reason: format!("key {key}: internal error: stuck at no operation"),
            };
        };
        return Verdict::NotLinearizable(Box::new(violation(
            key, all_ops, sops, failed, &states, interner, config,
        )));
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
    let end = op.complete.unwrap_or(u64::MAX);
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
        explanation,
    }
}
