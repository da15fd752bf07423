//! The Raft type configuration and the replicated commands.
//!
//! [`Request`] is the payload of every application log entry and [`Response`] what
//! applying it returns. Both are encoded with postcard, which identifies enum variants by
//! their position: new variants go at the end, or logs written earlier decode wrongly.

use std::cell::Cell;

use serde::{Deserialize, Deserializer, Serialize};

use crate::catalog::{self, CatalogOutcome, CatalogRegistration, CheckStatus, NodeRegistration};
use crate::error::InvalidRequest;
use crate::txn::{self, TxnOp, TxnOutcome};

/// Identifier of a Raft server.
pub type NodeId = u64;

/// Longest accepted key, in bytes. LMDB keys are limited to 511 bytes.
pub const MAX_KEY_LEN: usize = 500;

/// Largest accepted value, in bytes.
pub const MAX_VALUE_LEN: usize = 512 * 1024;

/// How long the id of a [`Request::Once`] is remembered, measured between the stamps
/// of log entries: far longer than any retry takes.
pub const ONCE_WINDOW: std::time::Duration = std::time::Duration::from_secs(120);

/// Largest estimated AppendEntries payload: the log reader stops there, and larger
/// requests are split by openraft.
pub(crate) const MAX_APPEND_BYTES: usize = 8 << 20;

/// A Raft server as recorded in the cluster membership.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerNode {
    /// Node name, as known to gossip.
    pub name: String,
    /// `ip:port` of the server's RPC endpoint.
    pub addr: String,
}

openraft::declare_raft_types!(
    /// Openraft type configuration of this crate.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = ServerNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A replicated command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Create or replace `key`.
    KvSet {
        /// The key.
        key: String,
        /// The new value.
        value: Vec<u8>,
        /// Opaque client flags; a write without flags passes 0.
        flags: u64,
    },
    /// Check-and-set: with `index` 0, create `key` only if it is absent; otherwise replace
    /// it only if its ModifyIndex equals `index`.
    KvCas {
        /// The key.
        key: String,
        /// The new value.
        value: Vec<u8>,
        /// Opaque client flags.
        flags: u64,
        /// Expected ModifyIndex, or 0 for "must not exist".
        index: u64,
    },
    /// Delete `key`; deleting a missing key succeeds.
    KvDelete {
        /// The key.
        key: String,
    },
    /// Delete `key` only if its ModifyIndex equals `index`; a missing key succeeds.
    KvDeleteCas {
        /// The key.
        key: String,
        /// Expected ModifyIndex.
        index: u64,
    },
    /// Delete every key starting with `prefix` (all keys when it is empty).
    KvDeleteTree {
        /// The prefix.
        prefix: String,
    },
    /// Independent commands that the server coalesced into one log entry. Each is applied
    /// in order, as if proposed alone, and answered by the matching element of
    /// [`Response::Batch`].
    Batch(#[serde(deserialize_with = "deserialize_flat_batch")] Vec<Request>),
    /// A Consul KV transaction, applied atomically: all operations or none; answered by
    /// [`Response::Txn`]. See [`TxnOp`].
    Txn(Vec<TxnOp>),
    /// Removes the tombstones of deletes at or below log index `up_to_index`; answered by
    /// [`Response::Reaped`]. Proposed periodically by the leader (see
    /// [`RaftServer::reap_tombstones`](crate::RaftServer::reap_tombstones)).
    KvReapTombstones {
        /// Tombstones with this index or a lower one are removed.
        up_to_index: u64,
    },
    /// The whole local state of one node, as its agent's anti-entropy pushes it: creates
    /// or updates the node and replaces its services and checks with exactly these,
    /// except the `serfHealth` check, which is kept (a sync naming it is invalid).
    /// Unchanged entries keep their ModifyIndex. Answered by [`Response::Catalog`].
    CatalogSync(NodeRegistration),
    /// Sets the node's `serfHealth` check (gossip's view of the node), creating the node
    /// with `address` if it is not registered. An unchanged status and output change
    /// nothing. Answered by [`Response::Catalog`].
    CatalogSetNodeHealth {
        /// The node.
        node: String,
        /// Its address, used if the node is created.
        address: String,
        /// The new status.
        status: CheckStatus,
        /// The check's output (truncated to
        /// [`MAX_CHECK_OUTPUT`](crate::MAX_CHECK_OUTPUT) bytes).
        output: String,
    },
    /// Removes a node with all its services and checks; a missing node changes nothing.
    /// Answered by [`Response::Catalog`].
    CatalogDeregisterNode {
        /// The node.
        node: String,
    },
    /// Consul's `PUT /v1/catalog/register`: creates or updates the node and adds or
    /// updates one service and some checks, removing nothing. Answered by
    /// [`Response::Catalog`], or [`Response::Rejected`] when a check names a service the
    /// node does not have.
    CatalogRegister(CatalogRegistration),
    /// Consul's `PUT /v1/catalog/deregister`: removes a service (and its checks), a
    /// check, or the whole node when neither is given. Answered by [`Response::Catalog`].
    CatalogDeregister {
        /// The node.
        node: String,
        /// The service instance to remove.
        service_id: Option<String>,
        /// The check to remove.
        check_id: Option<String>,
    },
    /// A write that its sender may send again when an answer is lost (a client agent
    /// retrying on another server after a failover): applied the first time only; a
    /// later copy with the same `id` gets the first answer and changes nothing. Ids are
    /// remembered for [`ONCE_WINDOW`](crate::ONCE_WINDOW), measured with the `at_ms`
    /// stamps in the log, so every server forgets them at the same entry.
    Once {
        /// Unique id chosen by the sender (a random UUID).
        id: u128,
        /// When the leader proposed it, in milliseconds since the Unix epoch.
        at_ms: u64,
        /// The write; not a batch and not another `Once`.
        request: Box<Request>,
    },
}

/// The result of applying one log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Entries without an application command (blank and membership entries).
    Empty,
    /// Outcome of a KV write: always true for set and delete, the check result for CAS.
    Bool(bool),
    /// The command could not be applied and changed nothing.
    Rejected(String),
    /// One response per command of a [`Request::Batch`], in order.
    Batch(Vec<Response>),
    /// Outcome of a [`Request::Txn`].
    Txn(TxnOutcome),
    /// Number of tombstones a [`Request::KvReapTombstones`] removed.
    Reaped(u64),
    /// What a catalog command changed.
    Catalog(CatalogOutcome),
}

/// A key/value entry with Consul's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// Opaque client flags.
    pub flags: u64,
    /// Log index of the write that created the key.
    pub create_index: u64,
    /// Log index of the last write that changed the key.
    pub modify_index: u64,
    /// Number of times a lock on this key was acquired.
    pub lock_index: u64,
    /// Session holding the lock, if any.
    pub session: Option<String>,
}

impl Request {
    /// Checks limits and form, so that nothing invalid enters the log.
    pub fn validate(&self) -> Result<(), InvalidRequest> {
        match self {
            Request::KvSet { key, value, .. } | Request::KvCas { key, value, .. } => {
                check_key(key)?;
                check_value(value)
            }
            Request::KvDelete { key } | Request::KvDeleteCas { key, .. } => check_key(key),
            Request::KvDeleteTree { prefix } => check_key_len(prefix),
            Request::Batch(requests) => requests.iter().try_for_each(|r| match r {
                Request::Batch(_) => Err(InvalidRequest::NestedBatch),
                other => other.validate(),
            }),
            Request::Txn(ops) => txn::validate(ops),
            Request::KvReapTombstones { .. } => Ok(()),
            Request::Once { request, .. } => match request.as_ref() {
                Request::Batch(_) => Err(InvalidRequest::NestedBatch),
                Request::Once { .. } => Err(InvalidRequest::NestedOnce),
                inner => inner.validate(),
            },
            Request::CatalogSync(reg) => Ok(reg.validate()?),
            Request::CatalogSetNodeHealth {
                node,
                address,
                output,
                ..
            } => {
                catalog::check_node_health(node, address)?;
                if output.len() > 16 * catalog::MAX_CHECK_OUTPUT {
                    return Err(catalog::CatalogError::TooLong {
                        what: "check output",
                        len: output.len(),
                        max: 16 * catalog::MAX_CHECK_OUTPUT,
                    }
                    .into());
                }
                Ok(())
            }
            Request::CatalogDeregisterNode { node } => Ok(catalog::check_node_name(node)?),
            Request::CatalogRegister(reg) => Ok(reg.validate()?),
            Request::CatalogDeregister {
                node,
                service_id,
                check_id,
            } => Ok(catalog::check_deregister(
                node,
                service_id.as_deref(),
                check_id.as_deref(),
            )?),
        }
    }

    /// True for the catalog's commands.
    pub(crate) fn is_catalog(&self) -> bool {
        matches!(
            self,
            Request::CatalogSync(_)
                | Request::CatalogSetNodeHealth { .. }
                | Request::CatalogDeregisterNode { .. }
                | Request::CatalogRegister(_)
                | Request::CatalogDeregister { .. }
        )
    }

    /// True for commands that may grow the stores (refused while a store is nearly full;
    /// deletes are let through so space can be freed).
    pub(crate) fn adds_data(&self) -> bool {
        match self {
            Request::KvSet { .. }
            | Request::KvCas { .. }
            | Request::CatalogSync(_)
            | Request::CatalogSetNodeHealth { .. }
            | Request::CatalogRegister(_) => true,
            Request::KvDelete { .. }
            | Request::KvDeleteCas { .. }
            | Request::KvDeleteTree { .. }
            | Request::KvReapTombstones { .. }
            | Request::CatalogDeregisterNode { .. }
            | Request::CatalogDeregister { .. } => false,
            Request::Batch(requests) => requests.iter().any(Request::adds_data),
            // Its id is remembered too.
            Request::Once { .. } => true,
            Request::Txn(ops) => ops.iter().any(TxnOp::adds_data),
        }
    }

    /// Approximate encoded size in bytes, used to bound batches and RPC payloads.
    pub fn approx_size(&self) -> usize {
        const OVERHEAD: usize = 24;
        match self {
            Request::KvSet { key, value, .. } | Request::KvCas { key, value, .. } => {
                OVERHEAD + key.len() + value.len()
            }
            Request::KvDelete { key } | Request::KvDeleteCas { key, .. } => OVERHEAD + key.len(),
            Request::KvDeleteTree { prefix } => OVERHEAD + prefix.len(),
            Request::Batch(requests) => {
                OVERHEAD + requests.iter().map(Request::approx_size).sum::<usize>()
            }
            Request::Txn(ops) => OVERHEAD + ops.iter().map(TxnOp::approx_size).sum::<usize>(),
            Request::KvReapTombstones { .. } => OVERHEAD,
            Request::Once { request, .. } => OVERHEAD + request.approx_size(),
            Request::CatalogSync(reg) => OVERHEAD + reg.approx_size(),
            Request::CatalogSetNodeHealth {
                node,
                address,
                output,
                ..
            } => OVERHEAD + node.len() + address.len() + output.len(),
            Request::CatalogDeregisterNode { node } => OVERHEAD + node.len(),
            Request::CatalogRegister(reg) => OVERHEAD + reg.approx_size(),
            Request::CatalogDeregister {
                node,
                service_id,
                check_id,
            } => {
                OVERHEAD
                    + node.len()
                    + service_id.as_ref().map_or(0, String::len)
                    + check_id.as_ref().map_or(0, String::len)
            }
        }
    }
}

fn check_key(key: &str) -> Result<(), InvalidRequest> {
    if key.is_empty() {
        return Err(InvalidRequest::EmptyKey);
    }
    check_key_len(key)
}

fn check_key_len(key: &str) -> Result<(), InvalidRequest> {
    if key.len() > MAX_KEY_LEN {
        return Err(InvalidRequest::KeyTooLong {
            len: key.len(),
            max: MAX_KEY_LEN,
        });
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), InvalidRequest> {
    if value.len() > MAX_VALUE_LEN {
        return Err(InvalidRequest::ValueTooLarge {
            len: value.len(),
            max: MAX_VALUE_LEN,
        });
    }
    Ok(())
}

thread_local! {
    static DECODING_BATCH: Cell<bool> = const { Cell::new(false) };
}

/// Decodes the elements of a batch, refusing a batch inside a batch so that bytes from
/// a peer cannot drive the decoder into deep recursion.
fn deserialize_flat_batch<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Request>, D::Error> {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            DECODING_BATCH.set(false);
        }
    }

    if DECODING_BATCH.get() {
        return Err(serde::de::Error::custom("a batch may not contain a batch"));
    }
    DECODING_BATCH.set(true);
    let _reset = Reset;
    Vec::<Request>::deserialize(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_enforced() {
        let long_key = "k".repeat(MAX_KEY_LEN + 1);
        let set = Request::KvSet {
            key: long_key.clone(),
            value: vec![],
            flags: 0,
        };
        assert!(matches!(
            set.validate(),
            Err(InvalidRequest::KeyTooLong { len, max }) if len == MAX_KEY_LEN + 1 && max == MAX_KEY_LEN
        ));
        let big = Request::KvCas {
            key: "a".into(),
            value: vec![0; MAX_VALUE_LEN + 1],
            flags: 0,
            index: 0,
        };
        let err = big.validate().unwrap_err();
        assert!(err.is_too_large());
        let ok = Request::KvSet {
            key: "k".repeat(MAX_KEY_LEN),
            value: vec![0; MAX_VALUE_LEN],
            flags: 0,
        };
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(
            Request::KvDelete { key: String::new() }.validate(),
            Err(InvalidRequest::EmptyKey)
        );
        assert_eq!(
            Request::KvDeleteTree {
                prefix: String::new()
            }
            .validate(),
            Ok(())
        );
        let nested = Request::Batch(vec![Request::Batch(vec![])]);
        assert_eq!(nested.validate(), Err(InvalidRequest::NestedBatch));
    }

    #[test]
    fn encodings_of_existing_variants_are_unchanged() {
        // Variant positions are part of the log format: these bytes were written before
        // transactions and reaping existed and must decode to the same commands.
        let set = Request::KvSet {
            key: "k".into(),
            value: b"v".to_vec(),
            flags: 1,
        };
        assert_eq!(
            postcard::to_allocvec(&set).unwrap(),
            [0, 1, b'k', 1, b'v', 1]
        );
        let tree = Request::KvDeleteTree { prefix: "p".into() };
        assert_eq!(postcard::to_allocvec(&tree).unwrap(), [4, 1, b'p']);
        let batch = Request::Batch(vec![]);
        assert_eq!(postcard::to_allocvec(&batch).unwrap(), [5, 0]);
        assert_eq!(
            postcard::to_allocvec(&Response::Bool(true)).unwrap(),
            [1, 1]
        );
        // The new variants come after them.
        let txn = Request::Txn(vec![TxnOp::Get { key: "k".into() }]);
        let bytes = postcard::to_allocvec(&txn).unwrap();
        assert_eq!(bytes[0], 6);
        assert_eq!(postcard::from_bytes::<Request>(&bytes).unwrap(), txn);
        let reap = Request::KvReapTombstones { up_to_index: 3 };
        assert_eq!(postcard::to_allocvec(&reap).unwrap(), [7, 3]);
        assert_eq!(postcard::to_allocvec(&Response::Reaped(2)).unwrap(), [5, 2]);
    }

    #[test]
    fn nested_batch_does_not_decode() {
        let flat = Request::Batch(vec![Request::KvDelete { key: "a".into() }]);
        let bytes = postcard::to_allocvec(&flat).unwrap();
        assert_eq!(postcard::from_bytes::<Request>(&bytes).unwrap(), flat);

        let nested = Request::Batch(vec![flat.clone()]);
        let bytes = postcard::to_allocvec(&nested).unwrap();
        assert!(postcard::from_bytes::<Request>(&bytes).is_err());
        // The guard is reset after a failure.
        let bytes = postcard::to_allocvec(&flat).unwrap();
        assert_eq!(postcard::from_bytes::<Request>(&bytes).unwrap(), flat);
    }
}
