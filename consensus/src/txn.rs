//! Consul's KV transactions (`/v1/txn`): their operations, outcomes and rules.
//!
//! A transaction is one log entry ([`Request::Txn`](crate::Request::Txn)) and is applied
//! atomically: its operations run in order, each seeing the effects of the earlier ones,
//! inside a nested write transaction of the state machine. If any operation fails, the
//! nested transaction is aborted and nothing of the transaction is applied: no entry,
//! ModifyIndex, table index or tombstone changes. As in Consul, every operation is run and
//! every failure reported, not only the first.
//!
//! Read-only transactions (only `Get`, `GetTree`, `CheckIndex`, `CheckNotExists`) are
//! served from local state without Raft: [`KvReader::read_txn`](crate::KvReader::read_txn).
//!
//! Results follow Consul: set, cas, get and check-index add one result each, get-tree one
//! per key; set, cas and check-index report the entry without its value (Consul's `Value`
//! null); delete, delete-tree, delete-cas and check-not-exists add none. Error messages are
//! Consul's.

use serde::{Deserialize, Serialize};

use crate::error::{InvalidRequest, StoreError};
use crate::kv::{self, KvTables, KvView};
use crate::types::{KvEntry, MAX_KEY_LEN, MAX_VALUE_LEN};
use crate::watch::Changes;

/// Most operations in one transaction (Consul's limit).
pub const MAX_TXN_OPS: usize = 64;

/// Largest total size of a transaction's keys and values, in bytes.
pub const MAX_TXN_BYTES: usize = 1 << 20;

/// One KV operation of a transaction. Encoded by position: new operations go at the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    /// Create or replace `key`.
    Set {
        /// The key.
        key: String,
        /// The new value.
        value: Vec<u8>,
        /// Opaque client flags.
        flags: u64,
    },
    /// Set `key` only if its ModifyIndex is `index` (with 0: only if it does not exist).
    Cas {
        /// The key.
        key: String,
        /// The new value.
        value: Vec<u8>,
        /// Opaque client flags.
        flags: u64,
        /// Expected ModifyIndex, or 0 for "must not exist".
        index: u64,
    },
    /// Read `key`; fails if it does not exist.
    Get {
        /// The key.
        key: String,
    },
    /// Read every key starting with `prefix`.
    GetTree {
        /// The prefix.
        prefix: String,
    },
    /// Fail unless `key` exists with ModifyIndex `index`.
    CheckIndex {
        /// The key.
        key: String,
        /// Expected ModifyIndex.
        index: u64,
    },
    /// Fail if `key` exists.
    CheckNotExists {
        /// The key.
        key: String,
    },
    /// Delete `key` (a missing key is not an error).
    Delete {
        /// The key.
        key: String,
    },
    /// Delete every key starting with `prefix`.
    DeleteTree {
        /// The prefix.
        prefix: String,
    },
    /// Delete `key` only if its ModifyIndex is `index` (a missing key is not an error).
    DeleteCas {
        /// The key.
        key: String,
        /// Expected ModifyIndex.
        index: u64,
    },
}

/// One result of a committed transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResult {
    /// The entry as stored after the operation; its value is empty when
    /// `value_omitted`.
    pub entry: KvEntry,
    /// True for the results of set, cas and check-index, whose `Value` Consul reports as
    /// null.
    pub value_omitted: bool,
}

/// Why a transaction was rolled back: the failing operation and Consul's message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnError {
    /// Position of the failed operation in the transaction.
    pub op_index: usize,
    /// What went wrong, worded as Consul words it.
    pub what: String,
}

/// The outcome of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOutcome {
    /// Every operation succeeded and the transaction was applied; the results in order.
    Committed(Vec<TxnResult>),
    /// At least one operation failed; nothing was applied (HTTP 409 in Consul).
    RolledBack(Vec<TxnError>),
}

impl TxnOp {
    /// The key or prefix the operation names.
    pub fn key(&self) -> &str {
        match self {
            TxnOp::Set { key, .. }
            | TxnOp::Cas { key, .. }
            | TxnOp::Get { key }
            | TxnOp::CheckIndex { key, .. }
            | TxnOp::CheckNotExists { key }
            | TxnOp::Delete { key }
            | TxnOp::DeleteCas { key, .. } => key,
            TxnOp::GetTree { prefix } | TxnOp::DeleteTree { prefix } => prefix,
        }
    }

    /// True if the operation may change state.
    pub fn is_write(&self) -> bool {
        match self {
            TxnOp::Set { .. }
            | TxnOp::Cas { .. }
            | TxnOp::Delete { .. }
            | TxnOp::DeleteTree { .. }
            | TxnOp::DeleteCas { .. } => true,
            TxnOp::Get { .. }
            | TxnOp::GetTree { .. }
            | TxnOp::CheckIndex { .. }
            | TxnOp::CheckNotExists { .. } => false,
        }
    }

    /// True if the operation may store data (used to refuse writes on a full store).
    pub(crate) fn adds_data(&self) -> bool {
        matches!(self, TxnOp::Set { .. } | TxnOp::Cas { .. })
    }

    fn value(&self) -> &[u8] {
        match self {
            TxnOp::Set { value, .. } | TxnOp::Cas { value, .. } => value,
            _ => &[],
        }
    }

    pub(crate) fn approx_size(&self) -> usize {
        16 + self.key().len() + self.value().len()
    }
}

/// Checks the limits of a transaction: at most [`MAX_TXN_OPS`] operations, keys and values
/// within [`MAX_KEY_LEN`] and [`MAX_VALUE_LEN`], at most [`MAX_TXN_BYTES`] in all. An empty
/// key is not refused here: as in Consul, it fails the transaction ("Must provide key").
pub(crate) fn validate(ops: &[TxnOp]) -> Result<(), InvalidRequest> {
    if ops.len() > MAX_TXN_OPS {
        return Err(InvalidRequest::TooManyTxnOps {
            count: ops.len(),
            max: MAX_TXN_OPS,
        });
    }
    let mut total = 0usize;
    for op in ops {
        let (key, value) = (op.key(), op.value());
        if key.len() > MAX_KEY_LEN {
            return Err(InvalidRequest::KeyTooLong {
                len: key.len(),
                max: MAX_KEY_LEN,
            });
        }
        if value.len() > MAX_VALUE_LEN {
            return Err(InvalidRequest::ValueTooLarge {
                len: value.len(),
                max: MAX_VALUE_LEN,
            });
        }
        total = total.saturating_add(key.len() + value.len());
    }
    if total > MAX_TXN_BYTES {
        return Err(InvalidRequest::TxnTooLarge {
            len: total,
            max: MAX_TXN_BYTES,
        });
    }
    Ok(())
}

/// Consul's checks before a transaction runs: every operation but a tree delete needs a
/// key.
fn precheck(ops: &[TxnOp]) -> Vec<TxnError> {
    ops.iter()
        .enumerate()
        .filter(|(_, op)| op.key().is_empty() && !matches!(op, TxnOp::DeleteTree { .. }))
        .map(|(op_index, _)| TxnError {
            op_index,
            what: "Must provide key".into(),
        })
        .collect()
}

/// Applies a transaction made by the log entry at `index`: all of it or, if an operation
/// fails, nothing. The keys it changed are added to `changes` only if it commits. Errors
/// are storage failures only.
pub(crate) fn apply(
    tables: &mut dyn KvTables,
    index: u64,
    ops: &[TxnOp],
    changes: &mut Changes,
) -> Result<TxnOutcome, StoreError> {
    let errors = precheck(ops);
    if !errors.is_empty() {
        return Ok(TxnOutcome::RolledBack(errors));
    }
    let mut results = Vec::new();
    let mut errors = Vec::new();
    let mut changed = Changes::default();
    let committed = tables.atomically(&mut |t| {
        for (op_index, op) in ops.iter().enumerate() {
            match run_write(t, index, op, &mut changed)? {
                Ok(mut r) => results.append(&mut r),
                Err(what) => errors.push(TxnError { op_index, what }),
            }
        }
        Ok(errors.is_empty())
    })?;
    if committed {
        changes.merge(changed);
        Ok(TxnOutcome::Committed(results))
    } else {
        Ok(TxnOutcome::RolledBack(errors))
    }
}

/// Runs a read-only transaction against `view`; an operation that writes fails it.
pub(crate) fn read(view: &dyn KvView, ops: &[TxnOp]) -> Result<TxnOutcome, StoreError> {
    let errors = precheck(ops);
    if !errors.is_empty() {
        return Ok(TxnOutcome::RolledBack(errors));
    }
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for (op_index, op) in ops.iter().enumerate() {
        match run_read(view, op)? {
            Ok(mut r) => results.append(&mut r),
            Err(what) => errors.push(TxnError { op_index, what }),
        }
    }
    Ok(if errors.is_empty() {
        TxnOutcome::Committed(results)
    } else {
        TxnOutcome::RolledBack(errors)
    })
}

/// The result of one operation: its results, or Consul's message for its failure.
type OpResult = Result<Vec<TxnResult>, String>;

fn without_value(mut entry: KvEntry) -> Vec<TxnResult> {
    entry.value = Vec::new();
    vec![TxnResult {
        entry,
        value_omitted: true,
    }]
}

fn with_value(entry: KvEntry) -> TxnResult {
    TxnResult {
        entry,
        value_omitted: false,
    }
}

fn stored(tables: &dyn KvView, key: &str) -> Result<KvEntry, StoreError> {
    tables
        .entry(key)?
        .ok_or_else(|| StoreError::Corrupt(format!("key {key:?} vanished after being written")))
}

fn run_write(
    t: &mut dyn KvTables,
    index: u64,
    op: &TxnOp,
    changes: &mut Changes,
) -> Result<OpResult, StoreError> {
    Ok(match op {
        TxnOp::Set { key, value, flags } => {
            kv::set(t, index, key, value, *flags, changes)?;
            Ok(without_value(stored(t, key)?))
        }
        TxnOp::Cas {
            key,
            value,
            flags,
            index: expected,
        } => {
            if kv::cas(t, index, key, value, *flags, *expected, changes)? {
                Ok(without_value(stored(t, key)?))
            } else {
                Err(format!("failed to set key {}, index is stale", quote(key)))
            }
        }
        TxnOp::Delete { key } => {
            kv::delete(t, index, key, changes)?;
            Ok(Vec::new())
        }
        TxnOp::DeleteTree { prefix } => {
            kv::delete_tree(t, index, prefix, changes)?;
            Ok(Vec::new())
        }
        TxnOp::DeleteCas {
            key,
            index: expected,
        } => {
            if kv::delete_cas(t, index, key, *expected, changes)? {
                Ok(Vec::new())
            } else {
                Err(format!(
                    "failed to delete key {}, index is stale",
                    quote(key)
                ))
            }
        }
        read_op => return run_read(&*t, read_op),
    })
}

fn run_read(view: &dyn KvView, op: &TxnOp) -> Result<OpResult, StoreError> {
    Ok(match op {
        TxnOp::Get { key } => match view.entry(key)? {
            Some(e) => Ok(vec![with_value(e)]),
            None => Err(format!("key {} doesn't exist", quote(key))),
        },
        TxnOp::GetTree { prefix } => Ok(kv::list(view, prefix)?
            .into_iter()
            .map(with_value)
            .collect()),
        TxnOp::CheckIndex { key, index } => match view.entry(key)? {
            None => Err(format!(
                "failed to check index, key {} doesn't exist",
                quote(key)
            )),
            Some(e) if e.modify_index != *index => Err(format!(
                "failed index check for key {}, current modify index {} != {}",
                quote(key),
                e.modify_index,
                index
            )),
            Some(e) => Ok(without_value(e)),
        },
        TxnOp::CheckNotExists { key } => match view.entry(key)? {
            Some(_) => Err(format!("key {} exists", quote(key))),
            None => Ok(Vec::new()),
        },
        write => Err(format!(
            "operation on key {} is not allowed in a read-only transaction",
            quote(write.key())
        )),
    })
}

/// Quotes `s` as Go's `%q` does for the strings keys are made of.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::mem::MemTables;
    use crate::types::{Request, Response};

    fn set(key: &str, value: &str) -> TxnOp {
        TxnOp::Set {
            key: key.into(),
            value: value.into(),
            flags: 0,
        }
    }

    fn run(t: &mut MemTables, index: u64, ops: Vec<TxnOp>) -> (TxnOutcome, Changes) {
        let mut changes = Changes::default();
        let r = kv::apply(t, index, &Request::Txn(ops), &mut changes).unwrap();
        let Response::Txn(outcome) = r else {
            panic!("expected a txn response, got {r:?}")
        };
        (outcome, changes)
    }

    fn committed(outcome: TxnOutcome) -> Vec<TxnResult> {
        match outcome {
            TxnOutcome::Committed(r) => r,
            other => panic!("expected a commit, got {other:?}"),
        }
    }

    #[test]
    fn results_follow_consul() {
        let mut t = MemTables::default();
        kv::apply(
            &mut t,
            2,
            &Request::KvSet {
                key: "tree/a".into(),
                value: b"1".to_vec(),
                flags: 3,
            },
            &mut Changes::default(),
        )
        .unwrap();
        let (outcome, changes) = run(
            &mut t,
            5,
            vec![
                set("k", "v"),
                TxnOp::Get { key: "k".into() },
                TxnOp::CheckIndex {
                    key: "k".into(),
                    index: 5,
                },
                TxnOp::GetTree {
                    prefix: "tree/".into(),
                },
                TxnOp::CheckNotExists { key: "nope".into() },
                TxnOp::Cas {
                    key: "tree/a".into(),
                    value: b"2".to_vec(),
                    flags: 0,
                    index: 2,
                },
                TxnOp::Delete { key: "k".into() },
                TxnOp::DeleteCas {
                    key: "missing".into(),
                    index: 77,
                },
            ],
        );
        let results = committed(outcome);
        let shape: Vec<(&str, &[u8], bool, u64)> = results
            .iter()
            .map(|r| {
                (
                    r.entry.key.as_str(),
                    r.entry.value.as_slice(),
                    r.value_omitted,
                    r.entry.modify_index,
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                ("k", &b""[..], true, 5),
                ("k", &b"v"[..], false, 5),
                ("k", &b""[..], true, 5),
                ("tree/a", &b"1"[..], false, 2),
                ("tree/a", &b""[..], true, 5),
            ]
        );
        assert_eq!(results[4].entry.create_index, 2);
        assert_eq!(t.entries.len(), 1);
        assert_eq!(t.tombstones.get("k"), Some(&5));
        assert_eq!(t.table_index, 5);
        assert_eq!(
            changes.keys.into_iter().collect::<Vec<_>>(),
            vec!["k".to_string(), "tree/a".to_string()]
        );
    }

    #[test]
    fn a_failed_op_rolls_back_everything_and_reports_every_failure() {
        let mut t = MemTables::default();
        let mut c = Changes::default();
        kv::apply(
            &mut t,
            3,
            &Request::KvSet {
                key: "x".into(),
                value: b"1".to_vec(),
                flags: 0,
            },
            &mut c,
        )
        .unwrap();
        kv::apply(&mut t, 4, &Request::KvDelete { key: "x".into() }, &mut c).unwrap();
        kv::apply(
            &mut t,
            5,
            &Request::KvSet {
                key: "y".into(),
                value: b"1".to_vec(),
                flags: 0,
            },
            &mut c,
        )
        .unwrap();
        let before = t.clone();
        let (outcome, changes) = run(
            &mut t,
            9,
            vec![
                set("new", "v"),
                TxnOp::DeleteTree { prefix: "".into() },
                TxnOp::Get { key: "y".into() },
                TxnOp::Cas {
                    key: "z".into(),
                    value: vec![],
                    flags: 0,
                    index: 1,
                },
                TxnOp::CheckIndex {
                    key: "gone".into(),
                    index: 1,
                },
                set("y", "after"),
                TxnOp::CheckIndex {
                    key: "y".into(),
                    index: 5,
                },
                TxnOp::CheckNotExists { key: "y".into() },
                TxnOp::DeleteCas {
                    key: "y".into(),
                    index: 4,
                },
                TxnOp::Get {
                    key: "a\"b\n".into(),
                },
            ],
        );
        let TxnOutcome::RolledBack(errors) = outcome else {
            panic!("expected a rollback, got {outcome:?}")
        };
        let want = [
            (2, "key \"y\" doesn't exist"),
            (3, "failed to set key \"z\", index is stale"),
            (4, "failed to check index, key \"gone\" doesn't exist"),
            (
                6,
                "failed index check for key \"y\", current modify index 9 != 5",
            ),
            (7, "key \"y\" exists"),
            (8, "failed to delete key \"y\", index is stale"),
            (9, "key \"a\\\"b\\n\" doesn't exist"),
        ];
        let got: Vec<(usize, &str)> = errors
            .iter()
            .map(|e| (e.op_index, e.what.as_str()))
            .collect();
        assert_eq!(got, want);
        assert_eq!(t, before, "a rolled-back txn changes nothing");
        assert!(changes.is_empty(), "and wakes nobody");
    }

    #[test]
    fn missing_keys_fail_before_anything_runs() {
        let mut t = MemTables::default();
        let (outcome, _) = run(
            &mut t,
            2,
            vec![
                set("", "v"),
                TxnOp::DeleteTree { prefix: "".into() },
                TxnOp::GetTree { prefix: "".into() },
                set("ok", "v"),
            ],
        );
        assert_eq!(
            outcome,
            TxnOutcome::RolledBack(vec![
                TxnError {
                    op_index: 0,
                    what: "Must provide key".into()
                },
                TxnError {
                    op_index: 2,
                    what: "Must provide key".into()
                },
            ])
        );
        assert_eq!(t, MemTables::default());
    }

    #[test]
    fn reads_refuse_writes_and_see_state() {
        let mut t = MemTables::default();
        run(&mut t, 2, vec![set("a", "1"), set("b", "2")]);
        let outcome = read(
            &t,
            &[
                TxnOp::Get { key: "a".into() },
                TxnOp::CheckNotExists { key: "c".into() },
            ],
        )
        .unwrap();
        assert_eq!(committed(outcome).len(), 1);
        let outcome = read(&t, &[TxnOp::Delete { key: "a".into() }]).unwrap();
        assert!(matches!(outcome, TxnOutcome::RolledBack(e) if e[0].op_index == 0));
        assert_eq!(t.entries.len(), 2);
    }

    #[test]
    fn limits() {
        let many = vec![TxnOp::Get { key: "k".into() }; MAX_TXN_OPS + 1];
        assert_eq!(
            validate(&many),
            Err(InvalidRequest::TooManyTxnOps {
                count: MAX_TXN_OPS + 1,
                max: MAX_TXN_OPS
            })
        );
        assert_eq!(validate(&many[..MAX_TXN_OPS]), Ok(()));
        let big = |n| TxnOp::Set {
            key: format!("k{n}"),
            value: vec![0; MAX_VALUE_LEN],
            flags: 0,
        };
        assert_eq!(validate(&[big(1)]), Ok(()));
        let err = validate(&[big(1), big(2), big(3)]).unwrap_err();
        assert!(matches!(err, InvalidRequest::TxnTooLarge { .. }));
        assert!(err.is_too_large());
        let long = TxnOp::Get {
            key: "k".repeat(MAX_KEY_LEN + 1),
        };
        assert!(matches!(
            validate(&[long]),
            Err(InvalidRequest::KeyTooLong { .. })
        ));
        let huge = TxnOp::Cas {
            key: "k".into(),
            value: vec![0; MAX_VALUE_LEN + 1],
            flags: 0,
            index: 0,
        };
        assert!(validate(&[huge]).unwrap_err().is_too_large());
        assert_eq!(validate(&[]), Ok(()));
    }
}
