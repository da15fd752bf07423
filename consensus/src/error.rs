//! Typed errors of the consensus layer.
//!
//! Each public operation has its own error type, so a caller can match exactly the
//! failures that operation can produce:
//!
//! - [`Error`]: opening and initializing a [`RaftServer`](crate::RaftServer).
//! - [`InvalidRequest`]: a command rejected before it is proposed.
//! - [`WriteError`]: a replicated write.
//! - [`ReadError`]: a local read, a blocking wait or a linearizability check.
//! - [`MembershipError`]: a change of the cluster's voters and learners.
//! - [`TransportError`]: what a [`RaftTransport`](crate::RaftTransport) reports.
//! - [`CodecError`]: decoding bytes received from a peer.
//! - [`StoreError`]: the on-disk stores (LMDB, snapshot files, encoding).

use std::time::Duration;

use crate::types::{NodeId, ServerNode};

/// A failure of the on-disk stores.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// LMDB reported an error.
    #[error("lmdb: {0}")]
    Lmdb(#[from] heed::Error),
    /// A file operation failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A stored record could not be encoded or decoded.
    #[error("codec: {0}")]
    Codec(#[from] postcard::Error),
    /// Stored data violates an invariant of the format.
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// A blocking storage task could not run to completion.
    #[error("storage task failed: {0}")]
    Task(String),
}

/// Why a command was rejected before it entered the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRequest {
    /// The key is empty where a key is required.
    #[error("missing key name")]
    EmptyKey,
    /// The key is longer than [`MAX_KEY_LEN`](crate::MAX_KEY_LEN) bytes.
    #[error("key is {len} bytes, the limit is {max}")]
    KeyTooLong {
        /// Length of the key in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The value is larger than [`MAX_VALUE_LEN`](crate::MAX_VALUE_LEN) bytes.
    #[error("value is {len} bytes, the limit is {max}")]
    ValueTooLarge {
        /// Length of the value in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// A batch contains another batch.
    #[error("a batch may not contain a batch")]
    NestedBatch,
    /// A [`Request::Once`](crate::Request::Once) inside another.
    #[error("a once-only write cannot contain another")]
    NestedOnce,
    /// Batches are formed by the server from concurrent writes, not by callers.
    #[error("batches are formed by the server")]
    BatchNotAllowed,
    /// A transaction has more than [`MAX_TXN_OPS`](crate::MAX_TXN_OPS) operations.
    #[error("Transaction contains too many operations ({count} > {max})")]
    TooManyTxnOps {
        /// Operations in the transaction.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A transaction's keys and values exceed [`MAX_TXN_BYTES`](crate::MAX_TXN_BYTES).
    #[error("transaction is {len} bytes, the limit is {max}")]
    TxnTooLarge {
        /// Total size of keys and values in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// A catalog command is malformed or over a limit.
    #[error("{0}")]
    Catalog(#[from] crate::catalog::CatalogError),
    /// A transaction given to a read-only path contains an operation that writes.
    #[error("operation {op_index} of a read-only transaction writes")]
    NotReadOnly {
        /// Position of the first writing operation.
        op_index: usize,
    },
}

impl InvalidRequest {
    /// True when the request was rejected for its size (HTTP 413) rather than its form
    /// (HTTP 400).
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            InvalidRequest::ValueTooLarge { .. }
                | InvalidRequest::TooManyTxnOps { .. }
                | InvalidRequest::TxnTooLarge { .. }
        )
    }
}

/// Failure to open or initialize a [`RaftServer`](crate::RaftServer).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The stores could not be opened or read.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The Raft configuration is invalid.
    #[error("raft config: {0}")]
    Config(#[from] openraft::ConfigError),
    /// Openraft stopped or could not start.
    #[error("raft: {0}")]
    Raft(#[from] openraft::error::Fatal<NodeId>),
    /// `initialize` was given members that do not include this node.
    #[error("this node is not among the initial members: {0}")]
    NotInMembers(String),
    /// Raft's task ended abnormally while shutting down.
    #[error("shutdown: {0}")]
    Shutdown(String),
}

/// Failure of a replicated write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The request is invalid and was not proposed.
    #[error("invalid request: {0}")]
    Invalid(#[from] InvalidRequest),
    /// This node is not the leader; the leader is given when known.
    #[error("not the leader; leader is {leader_id:?}")]
    ForwardToLeader {
        /// Id of the current leader, if known.
        leader_id: Option<NodeId>,
        /// Address information of the current leader, if known.
        leader_node: Option<ServerNode>,
    },
    /// The write was not proposed (the server is shutting down, for example); retrying
    /// it is safe.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The Raft node has stopped because of an unrecoverable error.
    #[error("fatal: {0}")]
    Fatal(String),
    /// The write was proposed but its outcome is unknown: it may or may not have been
    /// applied (no result before the write timeout, or Raft stopped meanwhile). Retry
    /// only if the write is idempotent, or read the state first.
    #[error("outcome unknown: {0}")]
    Indeterminate(String),
    /// This server's storage is nearly full, so writes that add data are refused; the
    /// write was not proposed. Deletes are still accepted. Free space or raise the map
    /// sizes in [`ServerConfig`](crate::ServerConfig) and restart.
    #[error("storage full: {0}")]
    StorageFull(String),
}

/// Failure of a read or of a linearizability check.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The local store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The server has been shut down.
    #[error("the server is shut down")]
    Closed,
    /// This node is not the leader; the leader is given when known.
    #[error("not the leader; leader is {leader_id:?}")]
    ForwardToLeader {
        /// Id of the current leader, if known.
        leader_id: Option<NodeId>,
        /// Address information of the current leader, if known.
        leader_node: Option<ServerNode>,
    },
    /// Leadership could not be confirmed by a quorum.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The Raft node has stopped because of an unrecoverable error.
    #[error("fatal: {0}")]
    Fatal(String),
    /// The request is invalid (a read-only transaction that writes, or one over the
    /// limits).
    #[error("invalid request: {0}")]
    Invalid(#[from] InvalidRequest),
}

impl From<heed::Error> for ReadError {
    fn from(e: heed::Error) -> Self {
        ReadError::Store(StoreError::Lmdb(e))
    }
}

/// Failure of a membership change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// This node is not the leader; the leader is given when known.
    #[error("not the leader; leader is {leader_id:?}")]
    ForwardToLeader {
        /// Id of the current leader, if known.
        leader_id: Option<NodeId>,
        /// Address information of the current leader, if known.
        leader_node: Option<ServerNode>,
    },
    /// Another membership change is not committed yet; retry later.
    #[error("a membership change is in progress: {0}")]
    InProgress(String),
    /// A node to make a voter is not a learner (add it with
    /// [`add_learner`](crate::RaftServer::add_learner) first).
    #[error("node {0} is not a learner; add it as a learner first")]
    LearnerNotFound(NodeId),
    /// The change would leave no voter.
    #[error("the change would leave no voter")]
    EmptyMembership,
    /// The node to remove is not a member.
    #[error("node {0} is not a member")]
    NotMember(NodeId),
    /// The learner was added but had not caught up with the leader within the configured
    /// time ([`ServerConfig::learner_catch_up_timeout`](crate::ServerConfig)); it stays a
    /// learner and keeps catching up.
    #[error("learner {id} did not catch up within {timeout:?}")]
    CatchUpTimeout {
        /// The learner.
        id: NodeId,
        /// How long was waited.
        timeout: Duration,
    },
    /// The Raft node has stopped, or stopped being able to serve the change.
    #[error("fatal: {0}")]
    Fatal(String),
}

/// What a [`RaftTransport`](crate::RaftTransport) reports when a call fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The peer cannot be reached (no connection); Raft backs off before retrying.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The call failed in flight; Raft may retry at once.
    #[error("network: {0}")]
    Network(String),
    /// No answer arrived in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// Bytes that are not a valid encoded RPC, or an RPC that cannot be encoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The bytes do not decode (or the value does not encode).
    #[error("rpc codec: {0}")]
    Postcard(#[from] postcard::Error),
    /// A valid message was followed by extra bytes.
    #[error("rpc codec: {0} unexpected trailing bytes")]
    TrailingBytes(usize),
}
