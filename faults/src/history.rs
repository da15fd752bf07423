//! The history model: operations on registers (keys) as clients saw them.
//!
//! An [`Op`] records who did what on which key, when it was invoked, when
//! (if ever) it completed, and what came back. A [`History`] is the list of
//! all operations of a run, in any order. Histories are recorded by a
//! [`Recorder`] while a workload runs and can be saved and loaded as JSON
//! lines (one [`Op`] per line) so that a failing run can be re-checked.
//!
//! Times are nanoseconds since the start of the recording (the
//! [`Recorder`]'s creation). Only their order matters to the checker: an
//! operation's invoke time must be taken before its request is sent and its
//! completion time after its answer is received.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// The consistency mode of a read, as in the agent's KV API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadMode {
    /// The default mode (leader-served, no `?consistent` round).
    Default,
    /// `?consistent`: the leader confirms its leadership before answering.
    Consistent,
    /// `?stale`: any server answers from its own state. Excluded from the
    /// linearizability claim; recorded only for statistics.
    Stale,
}

impl ReadMode {
    /// Every read mode, in a fixed order.
    pub const ALL: [ReadMode; 3] = [ReadMode::Default, ReadMode::Consistent, ReadMode::Stale];

    /// The mode's name as used in the HTTP API and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadMode::Default => "default",
            ReadMode::Consistent => "consistent",
            ReadMode::Stale => "stale",
        }
    }
}

impl fmt::Display for ReadMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an operation does to its register.
///
/// A register's value is an `Option<String>`: `None` is an absent key, the
/// initial state of every register.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// Read the register.
    Read {
        /// The consistency mode the read asked for.
        mode: ReadMode,
    },
    /// Set the register to `value`.
    Write {
        /// The value written. Values written to one key should be unique
        /// (see the [`lost`](crate::lost) check).
        value: String,
    },
    /// Compare-and-set: if the register holds `expected`, set it to `new`.
    Cas {
        /// The value the register must hold for the swap (`None`: absent).
        expected: Option<String>,
        /// The value set when the swap happens.
        new: String,
    },
}

impl OpKind {
    /// `true` for writes and compare-and-sets (operations that may change
    /// the register).
    pub fn is_mutation(&self) -> bool {
        !matches!(self, OpKind::Read { .. })
    }

    /// A short name of the kind: `read`, `write` or `cas`.
    pub fn name(&self) -> &'static str {
        match self {
            OpKind::Read { .. } => "read",
            OpKind::Write { .. } => "write",
            OpKind::Cas { .. } => "cas",
        }
    }
}

/// The result of an operation that completed successfully.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ret {
    /// A read's result: the value read (`None`: the key was absent).
    Read(Option<String>),
    /// A write was acknowledged.
    Write,
    /// A compare-and-set's result: whether it swapped. `false` is a
    /// completed operation that did not apply: the register did not hold
    /// the expected value.
    Cas(bool),
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It completed, with this result.
    Ok(Ret),
    /// It definitely did not take effect (e.g. rejected before reaching the
    /// cluster, or an error the server guarantees is final).
    Fail,
    /// It may or may not have taken effect, at any time after its invoke
    /// (timeout, connection lost, or never completed).
    Unknown,
}

impl Outcome {
    /// `true` for [`Outcome::Ok`].
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok(_))
    }

    /// A short name: `ok`, `fail` or `unknown`.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Ok(_) => "ok",
            Outcome::Fail => "fail",
            Outcome::Unknown => "unknown",
        }
    }
}

/// One operation of one client on one key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Op {
    /// The client (one per agent in the workload) that issued it.
    pub client: u32,
    /// The register's key.
    pub key: String,
    /// What it does.
    pub kind: OpKind,
    /// When it was invoked (ns since the start of the recording).
    pub invoke: u64,
    /// When it completed (ns since the start), `None` if it never did. For
    /// an [`Outcome::Unknown`] operation this is when the client gave up;
    /// the checker treats it as possibly taking effect at any later time.
    pub complete: Option<u64>,
    /// How it ended.
    pub outcome: Outcome,
}

/// Formats a time in nanoseconds since the start as seconds, e.g. `1.203417 s`.
pub fn fmt_time(ns: u64) -> String {
    format!(
        "{}.{:06} s",
        ns / 1_000_000_000,
        (ns % 1_000_000_000) / 1_000
    )
}

/// Formats a register value: the string itself, or `absent`.
pub fn fmt_value(value: Option<&str>) -> String {
    match value {
        Some(v) => v.to_string(),
        None => "absent".to_string(),
    }
}

impl Op {
    /// The interval as text, e.g. `[1.203000 s, 1.207000 s]` (`…` when it
    /// never completed).
    pub fn interval(&self) -> String {
        match self.complete {
            Some(c) => format!("[{}, {}]", fmt_time(self.invoke), fmt_time(c)),
            None => format!("[{}, …]", fmt_time(self.invoke)),
        }
    }

    /// Checks that the operation is well formed: a successful operation has
    /// a completion time not before its invoke and a result of its kind.
    pub fn validate(&self) -> Result<(), InvalidOp> {
        if let Some(c) = self.complete
            && c < self.invoke
        {
            return Err(InvalidOp::CompletedBeforeInvoke);
        }
        if let Outcome::Ok(ret) = &self.outcome {
            if self.complete.is_none() {
                return Err(InvalidOp::OkWithoutCompletion);
            }
            let matches = matches!(
                (&self.kind, ret),
                (OpKind::Read { .. }, Ret::Read(_))
                    | (OpKind::Write { .. }, Ret::Write)
                    | (OpKind::Cas { .. }, Ret::Cas(_))
            );
            if !matches {
                return Err(InvalidOp::ResultOfOtherKind);
            }
        }
        Ok(())
    }
}

impl fmt::Display for Op {
    /// E.g. `client 3 read x = 5 (consistent) [1.203000 s, 1.207000 s]`,
    /// `client 1 write x := c1-4 [..] fail`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} ", self.client)?;
        match (&self.kind, &self.outcome) {
            (OpKind::Read { mode }, Outcome::Ok(Ret::Read(v))) => write!(
                f,
                "read {} = {} ({mode})",
                self.key,
                fmt_value(v.as_deref())
            )?,
            (OpKind::Read { mode }, _) => write!(f, "read {} ({mode})", self.key)?,
            (OpKind::Write { value }, _) => write!(f, "write {} := {value}", self.key)?,
            (OpKind::Cas { expected, new }, _) => write!(
                f,
                "cas {} {} -> {new}",
                self.key,
                fmt_value(expected.as_deref())
            )?,
        }
        write!(f, " {}", self.interval())?;
        match &self.outcome {
            Outcome::Ok(Ret::Cas(true)) => f.write_str(" swapped"),
            Outcome::Ok(Ret::Cas(false)) => f.write_str(" not swapped"),
            Outcome::Ok(_) => f.write_str(" ok"),
            Outcome::Fail => f.write_str(" fail"),
            Outcome::Unknown => f.write_str(" unknown"),
        }
    }
}

/// Why an operation is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidOp {
    /// Its completion time is before its invoke time.
    #[error("it completed before it was invoked")]
    CompletedBeforeInvoke,
    /// It is `Ok` but has no completion time.
    #[error("it is ok but has no completion time")]
    OkWithoutCompletion,
    /// Its result is of another kind (e.g. a read with a CAS result).
    #[error("its result is not of its kind")]
    ResultOfOtherKind,
}

/// Errors reading, writing or validating a history.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Reading or writing the file failed.
    #[error("history i/o: {0}")]
    Io(#[from] io::Error),
    /// A line is not a JSON operation.
    #[error("history line {line}: {source}")]
    Parse {
        /// The 1-based line number.
        line: usize,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// Serialising an operation failed.
    #[error("history: serialising an operation: {0}")]
    Serialize(serde_json::Error),
    /// An operation is malformed.
    #[error("history operation {index} ({op}): {reason}")]
    Invalid {
        /// The operation's index in the history.
        index: usize,
        /// The operation, as text.
        op: String,
        /// What is wrong with it.
        reason: InvalidOp,
    },
}

/// All operations of a run, in any order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct History {
    /// The operations.
    pub ops: Vec<Op>,
}

impl From<Vec<Op>> for History {
    fn from(ops: Vec<Op>) -> Self {
        History { ops }
    }
}

impl FromIterator<Op> for History {
    fn from_iter<I: IntoIterator<Item = Op>>(iter: I) -> Self {
        History {
            ops: iter.into_iter().collect(),
        }
    }
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// `true` when there are no operations.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Checks every operation with [`Op::validate`].
    pub fn validate(&self) -> Result<(), HistoryError> {
        for (index, op) in self.ops.iter().enumerate() {
            op.validate().map_err(|reason| HistoryError::Invalid {
                index,
                op: op.to_string(),
                reason,
            })?;
        }
        Ok(())
    }

    /// The distinct keys, sorted.
    pub fn keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self.ops.iter().map(|o| o.key.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// The operations grouped by key (each group in history order).
    pub fn by_key(&self) -> BTreeMap<&str, Vec<&Op>> {
        let mut map: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
        for op in &self.ops {
            map.entry(op.key.as_str()).or_default().push(op);
        }
        map
    }

    /// The operations on one key.
    pub fn for_key(&self, key: &str) -> History {
        self.ops.iter().filter(|o| o.key == key).cloned().collect()
    }

    /// Every write and CAS, and the reads of the given modes only: the
    /// history to check for a linearizability claim about those modes
    /// (e.g. `&[ReadMode::Consistent]`; `Stale` reads are never claimed).
    pub fn with_reads(&self, modes: &[ReadMode]) -> History {
        self.ops
            .iter()
            .filter(|o| match &o.kind {
                OpKind::Read { mode } => modes.contains(mode),
                _ => true,
            })
            .cloned()
            .collect()
    }

    /// Writes the history as JSON lines, one operation per line.
    pub fn write_json_lines<W: Write>(&self, mut w: W) -> Result<(), HistoryError> {
        for op in &self.ops {
            serde_json::to_writer(&mut w, op).map_err(HistoryError::Serialize)?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
        Ok(())
    }

    /// Reads a history written by [`History::write_json_lines`]. Blank lines
    /// are skipped; a malformed line is an error naming its line number.
    pub fn read_json_lines<R: BufRead>(r: R) -> Result<History, HistoryError> {
        let mut ops = Vec::new();
        for (i, line) in r.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let op = serde_json::from_str(&line).map_err(|source| HistoryError::Parse {
                line: i + 1,
                source,
            })?;
            ops.push(op);
        }
        Ok(History { ops })
    }

    /// Saves the history to a file as JSON lines.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), HistoryError> {
        self.write_json_lines(BufWriter::new(File::create(path)?))
    }

    /// Loads a history saved by [`History::save`].
    pub fn load(path: impl AsRef<Path>) -> Result<History, HistoryError> {
        History::read_json_lines(BufReader::new(File::open(path)?))
    }
}

/// Records a history while a workload runs. Cheap to clone (shared state);
/// safe to use from many threads or tasks.
///
/// Call [`Recorder::invoke`] just before sending a request and
/// [`Recorder::complete`] just after its answer (or failure) arrived. An
/// operation whose ticket is dropped without completion stays in the history
/// as [`Outcome::Unknown`] with no completion time.
#[derive(Debug, Clone)]
pub struct Recorder {
    inner: Arc<RecorderInner>,
}

#[derive(Debug)]
struct RecorderInner {
    start: Instant,
    ops: Mutex<Vec<Op>>,
}

/// An invoked operation awaiting completion; pass it to
/// [`Recorder::complete`].
#[derive(Debug)]
#[must_use = "complete the operation with Recorder::complete, or it stays unknown"]
pub struct Ticket {
    index: usize,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// A recorder whose time zero is now.
    pub fn new() -> Self {
        Recorder {
            inner: Arc::new(RecorderInner {
                start: Instant::now(),
                ops: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Nanoseconds since the recorder was created.
    pub fn now(&self) -> u64 {
        u64::try_from(self.inner.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn ops(&self) -> MutexGuard<'_, Vec<Op>> {
        // A panic while holding the lock cannot leave the Vec inconsistent.
        self.inner.ops.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the invocation of an operation, timestamped now.
    pub fn invoke(&self, client: u32, key: impl Into<String>, kind: OpKind) -> Ticket {
        let key = key.into();
        let mut ops = self.ops();
        let invoke = self.now();
        ops.push(Op {
            client,
            key,
            kind,
            invoke,
            complete: None,
            outcome: Outcome::Unknown,
        });
        Ticket {
            index: ops.len() - 1,
        }
    }

    /// Records the completion of an operation, timestamped now.
    pub fn complete(&self, ticket: Ticket, outcome: Outcome) {
        let complete = self.now();
        let mut ops = self.ops();
        if let Some(op) = ops.get_mut(ticket.index) {
            op.complete = Some(complete.max(op.invoke));
            op.outcome = outcome;
        }
    }

    /// A copy of the history recorded so far (operations still pending are
    /// [`Outcome::Unknown`] without completion time).
    pub fn history(&self) -> History {
        History {
            ops: self.ops().clone(),
        }
    }
}
