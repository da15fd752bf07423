//! Replicated KV state for the agent's servers: Raft (openraft 0.9) over LMDB.
//!
//! This crate owns:
//! - the Raft type configuration and the replicated commands ([`TypeConfig`],
//!   [`Request`], [`Response`]);
//! - the Raft log on LMDB, written by one thread with group commit;
//! - the KV state machine with Consul's semantics (indexes, CAS, tombstones) on LMDB, and
//!   its snapshots as files;
//! - a transport-agnostic network adapter: the application implements [`RaftTransport`]
//!   and feeds received RPCs to [`RaftServer::handle_rpc`]; this crate opens no sockets;
//! - Consul's KV transactions ([`TxnOp`], [`TxnOutcome`]), applied atomically;
//! - Consul's service catalog (nodes, services, health checks) in the same state
//!   machine ([`Request::CatalogSync`] and friends, read with [`CatalogReader`]);
//! - blocking-query support ([`KvReader::wait`]) that wakes only the watchers of what
//!   changed;
//! - the [`RaftServer`] facade: open, initialize, write, read, leadership, membership
//!   changes, shutdown.
//!
//! # Layout
//! - `types`: node ids, [`ServerNode`], [`TypeConfig`], [`Request`], [`Response`],
//!   [`KvEntry`], size limits.
//! - `kv`: Consul's KV rules (apply and index queries), independent of storage.
//! - `txn`: Consul's KV transactions.
//! - `catalog`: the service catalog: data model, rules, reads ([`CatalogReader`]).
//! - `watch`: the registry of blocking-query watchers.
//! - `lmdb`: opening LMDB environments, durable directory creation, storage usage.
//! - `log_store`: the Raft log and vote on LMDB, with the group-commit writer thread.
//! - `sm_db`: the state machine's LMDB tables.
//! - `state_machine`: openraft's state machine over `sm_db`.
//! - `snapshot`: snapshot files: format, build, install, the current snapshot on disk.
//! - `reader`: [`KvReader`], concurrent local reads.
//! - `network`: [`RaftTransport`], the RPC messages and their codec, openraft's network.
//! - `proposer`: coalescing concurrent writes into few log entries.
//! - `read_index`: merging concurrent linearizable reads into few leadership rounds.
//! - `server`: [`RaftServer`] and [`ServerConfig`].
//! - `membership`: learners, voters and removals ([`ClusterMembership`]).
//! - `error`: typed errors.
//! - `testing` (feature `testing`): an in-memory transport and cluster helpers.
//!
//! # Data directory
//! `<data_dir>/log` (LMDB: log entries, vote, committed id, purge point), `<data_dir>/sm`
//! (LMDB: KV entries, tombstones, catalog, applied state), `<data_dir>/snapshots` (current
//! snapshot file). The two environments fsync independently, so the log's and the state
//! machine's commits overlap. Their maps are sized by [`ServerConfig`] (64 GiB each by
//! default on 64-bit targets: sparse files and address space only); the leader refuses
//! writes that add data above 90% use ([`WriteError::StorageFull`]).

#![warn(missing_docs)]

mod catalog;
mod error;
mod kv;
mod lmdb;
mod log_store;
mod membership;
mod network;
mod proposer;
mod read_index;
mod reader;
mod server;
mod sm_db;
mod snapshot;
mod state_machine;
mod txn;
mod types;
mod watch;

#[cfg(feature = "testing")]
pub mod testing;

#[cfg(test)]
mod store_tests;

pub use catalog::{
    CatalogChange, CatalogError, CatalogNode, CatalogOutcome, CatalogReader, CatalogRegistration,
    CatalogScope, CatalogService, CheckEntry, CheckState, CheckStatus, HealthCheck,
    MAX_CATALOG_NAME_LEN, MAX_CATALOG_TEXT_LEN, MAX_CHECK_OUTPUT, MAX_CHECKS_PER_NODE,
    MAX_META_KEY_LEN, MAX_META_PAIRS, MAX_META_VALUE_LEN, MAX_SERVICES_PER_NODE, MAX_TAG_LEN,
    MAX_TAGS, NodeRegistration, NodeServices, SERF_HEALTH_CHECK_ID, SERF_HEALTH_CHECK_NAME,
    ServiceEntry, ServiceHealth, ServiceInstance,
};
pub use error::{
    CodecError, Error, InvalidRequest, MembershipError, ReadError, StoreError, TransportError,
    WriteError,
};
pub use log_store::LogStoreMetrics;
pub use membership::ClusterMembership;
pub use network::{Network, NetworkClient, RaftRpcRequest, RaftRpcResponse, RaftTransport};
pub use proposer::WriteOutcome;
pub use reader::KvReader;
pub use server::{InitOutcome, RaftServer, ServerConfig};
pub use txn::{MAX_TXN_BYTES, MAX_TXN_OPS, TxnError, TxnOp, TxnOutcome, TxnResult};
pub use types::{
    KvEntry, MAX_KEY_LEN, MAX_VALUE_LEN, NodeId, ONCE_WINDOW, Request, Response, ServerNode,
    TypeConfig,
};
pub use watch::{CHANGE_FEED_CAPACITY, KvChange, KvChangeKind, WatchScope, WatchStats};
