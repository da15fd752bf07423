//! Fault-injection tooling for the agent mesh.
//!
//! The checking part is pure (no I/O besides saving and loading histories):
//!
//! * [`history`]: the operations a workload's clients did on registers
//!   (keys) — reads of each consistency mode, writes, compare-and-sets —
//!   with invoke and completion times and outcomes (`ok`, `fail`: definitely
//!   not applied, `unknown`: maybe applied); a thread-safe [`Recorder`]; JSON
//!   lines so a run's history can be saved and re-checked.
//! * [`checker`]: a linearizability checker for such registers (Wing & Gong
//!   search with just-in-time linearization and memoisation, per key, with
//!   quiescent cut points), reporting the first operation that cannot be
//!   placed.
//! * [`lost`]: the lost-write check (every acknowledged write is observed or
//!   overwritten later).
//! * [`summary`]: counts per kind and outcome.
//!
//! [`run`] is the runner: a five-agent cluster in network namespaces, a
//! recorded workload and fault scenarios (the `faults` binary; needs root).
//!
//! A typical use after a run:
//!
//! ```
//! use faults::{History, ReadMode, CheckerConfig, check, check_lost_writes};
//! # fn main() -> Result<(), faults::HistoryError> {
//! let history = History::new(); // recorded by a faults::Recorder
//! for mode in [ReadMode::Default, ReadMode::Consistent] {
//!     let report = check(&history.with_reads(&[mode]), &CheckerConfig::default())?;
//!     assert!(report.verdict.is_linearizable(), "{mode} reads: {}", report.verdict);
//! }
//! assert!(check_lost_writes(&history.with_reads(&[ReadMode::Default, ReadMode::Consistent])).ok());
//! # Ok(())
//! # }
//! ```

pub mod checker;
pub mod history;
pub mod lost;
pub mod run;
pub mod summary;

pub use checker::{CheckerConfig, KeyReport, Report, Verdict, Violation, check, check_key};
pub use history::{
    History, HistoryError, InvalidOp, Op, OpKind, Outcome, ReadMode, Recorder, Ret, Ticket,
};
pub use lost::{LostReport, LostWrite, check_lost_writes};
pub use summary::{Counts, Summary};
