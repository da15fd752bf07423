//! [`RaftServer`]: the facade the application talks to.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, InitializeError, RaftError};
use openraft::raft::AppendEntriesResponse;
use openraft::{Config, Raft, RaftMetrics, ServerState, SnapshotPolicy};
use tokio::sync::watch;

use crate::error::{Error, ReadError, WriteError};
use crate::log_store::{LogMetricsHandle, LogStore, LogStoreMetrics};
use crate::network::{Network, RaftRpcRequest, RaftRpcResponse, RaftTransport};
use crate::proposer::{Limits, Proposer, WriteOutcome};
use crate::reader::KvReader;
use crate::sm_db::SmDb;
use crate::state_machine::StateMachine;
use crate::types::{NodeId, Request, ServerNode, TypeConfig};

/// How long `shutdown` waits for the stores to close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Configuration of a [`RaftServer`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// This server's Raft id.
    pub id: NodeId,
    /// This server's name and RPC address, as recorded in the membership.
    pub node: ServerNode,
    /// Directory of the stores: `log/`, `sm/` and `snapshots/` are created inside.
    pub data_dir: PathBuf,
    /// Openraft's configuration; see [`ServerConfig::default_raft_config`].
    pub raft: Config,
    /// Writes admitted at once; further writes wait (openraft's queue is unbounded).
    pub max_pending_writes: usize,
    /// Batch entries proposed and not yet applied at once.
    pub max_proposals_in_flight: usize,
    /// Most writes coalesced into one log entry.
    pub max_batch_len: usize,
    /// Byte budget of one coalesced entry (one write may exceed it).
    pub max_batch_bytes: usize,
}

impl ServerConfig {
    /// A configuration with the defaults below.
    pub fn new(id: NodeId, node: ServerNode, data_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            id,
            node,
            data_dir: data_dir.into(),
            raft: Self::default_raft_config(),
            max_pending_writes: 4096,
            max_proposals_in_flight: 4,
            max_batch_len: 1024,
            max_batch_bytes: 1 << 20,
        }
    }

    /// Openraft settings for servers sharing a couple of CPU cores with other work:
    /// heartbeat every 150 ms and an election timeout of 500–1000 ms, so a busy scheduler
    /// does not cause spurious elections while a dead leader is replaced within about a
    /// second; up to 512 entries per AppendEntries (entries are batches already, and
    /// oversized requests are split by estimated bytes); a snapshot every 10,000 entries;
    /// followers more than 20,000 entries behind get a snapshot; purges in steps of 1,000
    /// entries; snapshot chunks of 1 MiB with 5 s to transfer each.
    pub fn default_raft_config() -> Config {
        Config {
            cluster_name: "consensus".into(),
            heartbeat_interval: 150,
            election_timeout_min: 500,
            election_timeout_max: 1000,
            max_payload_entries: 512,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(10_000),
            replication_lag_threshold: 20_000,
            max_in_snapshot_log_to_keep: 1_000,
            purge_batch_size: 1_000,
            snapshot_max_chunk_size: 1 << 20,
            install_snapshot_timeout: 5_000,
            ..Config::default()
        }
    }
}

/// Whether [`RaftServer::initialize`] formed a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitOutcome {
    /// This node was pristine and is now initialized with the given members.
    Initialized,
    /// This node already had Raft state; nothing was changed.
    AlreadyInitialized,
}

struct Inner {
    id: NodeId,
    raft: Raft<TypeConfig>,
    kv: KvReader,
    proposer: Proposer,
    log_metrics: LogMetricsHandle,
    last_contact: Mutex<Option<Instant>>,
    closing: Mutex<Vec<heed::EnvClosingEvent>>,
}

/// A Raft server: storage, state machine and openraft, behind one handle. Cheap to clone.
///
/// Writes go through [`write`](Self::write) on the leader; reads go to [`kv`](Self::kv)
/// on any server. RPCs from peers are handed to [`handle_rpc`](Self::handle_rpc).
#[derive(Clone)]
pub struct RaftServer {
    inner: Arc<Inner>,
}

impl RaftServer {
    /// Opens the stores under `config.data_dir` and starts Raft, sending RPCs through
    /// `transport`. The node is idle until it is initialized or contacted by a leader.
    pub async fn open<T: RaftTransport>(config: ServerConfig, transport: T) -> Result<Self, Error> {
        let raft_config = Arc::new(config.raft.clone().validate()?);
        let dir = &config.data_dir;
        let log = LogStore::open(&dir.join("log"))?;
        let sm_db = SmDb::open(&dir.join("sm"))?;
        let sm = StateMachine::open(sm_db.clone(), &dir.join("snapshots"))?;
        let closing = vec![log.closing_event(), sm_db.env.clone().prepare_for_closing()];
        let log_metrics = log.metrics_handle();

        let network = Network::new(config.id, transport);
        let raft = Raft::new(config.id, raft_config, network, log, sm).await?;
        let proposer = Proposer::start(
            raft.clone(),
            Limits {
                max_pending_writes: config.max_pending_writes,
                max_in_flight: config.max_proposals_in_flight,
                max_batch_len: config.max_batch_len,
                max_batch_bytes: config.max_batch_bytes,
            },
        );
        Ok(RaftServer {
            inner: Arc::new(Inner {
                id: config.id,
                raft,
                kv: KvReader::new(sm_db),
                proposer,
                log_metrics,
                last_contact: Mutex::new(None),
                closing: Mutex::new(closing),
            }),
        })
    }

    /// This server's id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// Forms a cluster of `members` (which must include this node) if this node has no
    /// Raft state yet. Every server of a new cluster may call it with the same members;
    /// a node that already has state is left as it is. Calling it with different members
    /// on different pristine nodes would split the cluster.
    pub async fn initialize(
        &self,
        members: BTreeMap<NodeId, ServerNode>,
    ) -> Result<InitOutcome, Error> {
        if !members.contains_key(&self.inner.id) {
            return Err(Error::NotInMembers(format!(
                "node {} is not in {:?}",
                self.inner.id,
                members.keys().collect::<Vec<_>>()
            )));
        }
        if self.inner.raft.is_initialized().await? {
            return Ok(InitOutcome::AlreadyInitialized);
        }
        match self.inner.raft.initialize(members).await {
            Ok(()) => Ok(InitOutcome::Initialized),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                Ok(InitOutcome::AlreadyInitialized)
            }
            Err(RaftError::APIError(InitializeError::NotInMembers(e))) => {
                Err(Error::NotInMembers(e.to_string()))
            }
            Err(RaftError::Fatal(f)) => Err(Error::Raft(f)),
        }
    }

    /// Replicates `request` and returns once it is committed and applied here, with the
    /// log index that carried it. Concurrent writes may share a log entry (and index).
    pub async fn write(&self, request: Request) -> Result<WriteOutcome, WriteError> {
        self.inner.proposer.write(request).await
    }

    /// Reader of the local KV state.
    pub fn kv(&self) -> KvReader {
        self.inner.kv.clone()
    }

    /// Confirms with a quorum that this node is the leader and waits until everything
    /// committed before the call is applied locally; a read of [`kv`](Self::kv) after it
    /// is linearizable. Costs one heartbeat round trip.
    pub async fn ensure_linearizable(&self) -> Result<(), ReadError> {
        match self.inner.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(ReadError::ForwardToLeader {
                    leader_id: f.leader_id,
                    leader_node: f.leader_node,
                })
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
                Err(ReadError::Unavailable(e.to_string()))
            }
            Err(RaftError::Fatal(f)) => Err(ReadError::Fatal(f.to_string())),
        }
    }

    /// The current leader as known locally, if any.
    pub fn leader(&self) -> Option<(NodeId, ServerNode)> {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }

    /// True if this node believes it is the leader.
    pub fn is_leader(&self) -> bool {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.inner.id)
    }

    /// The voters of the current membership configuration.
    pub fn voters(&self) -> Vec<(NodeId, ServerNode)> {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        membership
            .voter_ids()
            .filter_map(|id| membership.get_node(&id).map(|n| (id, n.clone())))
            .collect()
    }

    /// Openraft's metrics.
    pub fn metrics(&self) -> watch::Receiver<RaftMetrics<NodeId, ServerNode>> {
        self.inner.raft.metrics()
    }

    /// Counters of the log writer (commits, requests, entries).
    pub fn log_metrics(&self) -> LogStoreMetrics {
        self.inner.log_metrics.get()
    }

    /// Time since the last contact with the leader (Consul's `X-Consul-LastContact`):
    /// zero on the leader, the time since the leader's last accepted AppendEntries or
    /// snapshot chunk on a follower, `None` if this node has never heard from a leader.
    pub fn last_contact(&self) -> Option<Duration> {
        if self.is_leader() {
            return Some(Duration::ZERO);
        }
        let last = *self
            .inner
            .last_contact
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        last.map(|at| at.elapsed())
    }

    /// The underlying openraft handle, for membership changes and diagnostics.
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.inner.raft
    }

    /// Handles an RPC from a peer and returns the response to send back.
    pub async fn handle_rpc(&self, request: RaftRpcRequest) -> RaftRpcResponse {
        let raft = &self.inner.raft;
        match request {
            RaftRpcRequest::AppendEntries(req) => {
                let result = raft.append_entries(req).await;
                if matches!(&result, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
                    self.touch_contact();
                }
                RaftRpcResponse::AppendEntries(result)
            }
            RaftRpcRequest::Vote(req) => RaftRpcResponse::Vote(raft.vote(req).await),
            RaftRpcRequest::InstallSnapshot(req) => {
                let sender_vote = req.vote;
                let result = raft.install_snapshot(req).await;
                if matches!(&result, Ok(r) if r.vote <= sender_vote) {
                    self.touch_contact();
                }
                RaftRpcResponse::InstallSnapshot(result)
            }
        }
    }

    fn touch_contact(&self) {
        *self
            .inner
            .last_contact
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// Stops Raft, refuses further writes and reads, and waits (up to 10 s) until both
    /// LMDB environments are closed, so the same directory can be opened again.
    pub async fn shutdown(&self) -> Result<(), Error> {
        self.inner.proposer.close();
        let stopped = self.inner.raft.shutdown().await;
        self.inner.kv.close();
        let closing: Vec<_> =
            std::mem::take(&mut *self.inner.closing.lock().unwrap_or_else(|p| p.into_inner()));
        let all_closed = tokio::task::spawn_blocking(move || {
            closing
                .iter()
                .all(|event| event.wait_timeout(CLOSE_TIMEOUT))
        })
        .await
        .unwrap_or(false);
        if !all_closed {
            tracing::warn!("stores still open after shutdown");
        }
        stopped.map_err(|e| Error::Shutdown(e.to_string()))
    }
}
