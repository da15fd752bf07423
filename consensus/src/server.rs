//! [`RaftServer`]: the facade the application talks to.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use openraft::error::{InitializeError, InstallSnapshotError, RaftError, SnapshotMismatch};
use openraft::raft::{AppendEntriesResponse, InstallSnapshotRequest};
use openraft::{Config, Raft, RaftMetrics, ServerState, SnapshotPolicy, SnapshotSegmentId};
use tokio::sync::watch;

use crate::catalog::CatalogReader;
use crate::error::{Error, ReadError, WriteError};
use crate::lmdb::{DEFAULT_MAP_SIZE, StorageMonitor};
use crate::log_store::{LogMetricsHandle, LogStore, LogStoreMetrics};
use crate::network::{Network, RaftRpcRequest, RaftRpcResponse, RaftTransport};
use crate::proposer::{Limits, Proposer, WriteOutcome};
use crate::read_index::ReadIndexBatcher;
use crate::reader::KvReader;
use crate::sm_db::SmDb;
use crate::state_machine::StateMachine;
use crate::types::{NodeId, Request, Response, ServerNode, TypeConfig};

/// How long `shutdown` waits for the stores to close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the log's size is checked against [`ServerConfig::snapshot_log_bytes`].
const SNAPSHOT_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// How long a size-triggered snapshot may take before it is triggered again.
const SNAPSHOT_RETRIGGER: Duration = Duration::from_secs(30);

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
    /// How long a proposed write may wait for its result; after that its callers get
    /// [`WriteError::Indeterminate`] and its proposal slot is released.
    pub write_timeout: Duration,
    /// Size of the log's LMDB map in bytes: the most the log file may grow to. The file is
    /// sparse and the map is address space only. A larger value given at restart takes
    /// effect for an existing store.
    pub log_map_size: usize,
    /// Size of the state machine's LMDB map in bytes, as for `log_map_size`; it also
    /// bounds the size of a snapshot accepted from a leader. Above 90% use of either map
    /// the leader refuses writes that add data ([`WriteError::StorageFull`]).
    pub sm_map_size: usize,
    /// Build a snapshot (and so let the log be purged) once this many bytes of entries
    /// were appended since the last one, in addition to openraft's entry-count policy
    /// (`raft.snapshot_policy`), which cannot count bytes.
    pub snapshot_log_bytes: u64,
    /// How long [`RaftServer::add_learner`] waits for the new learner to catch up.
    pub learner_catch_up_timeout: Duration,
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
            write_timeout: Duration::from_secs(30),
            log_map_size: DEFAULT_MAP_SIZE,
            sm_map_size: DEFAULT_MAP_SIZE,
            snapshot_log_bytes: 512 << 20,
            learner_catch_up_timeout: Duration::from_secs(60),
        }
    }

    /// Openraft settings for servers sharing a couple of CPU cores with other work:
    /// heartbeat every 150 ms and an election timeout of 500–1000 ms, so a busy scheduler
    /// does not cause spurious elections while a dead leader is replaced within about a
    /// second; up to 512 entries per AppendEntries (entries are batches already, and
    /// oversized requests are split by estimated bytes); a snapshot every 10,000 entries
    /// (the server adds a trigger by bytes, [`ServerConfig::snapshot_log_bytes`]);
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

pub(crate) struct Inner {
    pub(crate) id: NodeId,
    pub(crate) raft: Raft<TypeConfig>,
    pub(crate) learner_catch_up_timeout: Duration,
    kv: KvReader,
    reads: Arc<ReadIndexBatcher>,
    proposer: Proposer,
    storage: Arc<StorageMonitor>,
    log_metrics: LogMetricsHandle,
    last_contact: Mutex<Option<Instant>>,
    closing: Mutex<Vec<heed::EnvClosingEvent>>,
    /// Where the snapshot being received ends so far.
    receiving: Mutex<Option<Received>>,
    max_snapshot_bytes: u64,
    snapshot_task: Mutex<Option<tokio::task::AbortHandle>>,
}

/// The extent of the snapshot being received from a leader.
struct Received {
    snapshot_id: String,
    end: u64,
}

/// A Raft server: storage, state machine and openraft, behind one handle. Cheap to clone.
///
/// Writes go through [`write`](Self::write) on the leader; reads go to [`kv`](Self::kv)
/// on any server. RPCs from peers are handed to [`handle_rpc`](Self::handle_rpc).
#[derive(Clone)]
pub struct RaftServer {
    pub(crate) inner: Arc<Inner>,
}

impl RaftServer {
    /// Opens the stores under `config.data_dir` and starts Raft, sending RPCs through
    /// `transport`. The node is idle until it is initialized or contacted by a leader.
    pub async fn open<T: RaftTransport>(config: ServerConfig, transport: T) -> Result<Self, Error> {
        let raft_config = Arc::new(config.raft.clone().validate()?);
        let dir = &config.data_dir;
        crate::lmdb::create_dir_durable(dir)?;
        let max_snapshot_bytes = config.sm_map_size as u64;
        let sm_db = SmDb::open(&dir.join("sm"), config.sm_map_size)?;
        let sm = StateMachine::open(sm_db.clone(), &dir.join("snapshots"), max_snapshot_bytes)?;
        let watches = sm.watches();
        let log = LogStore::open(&dir.join("log"), config.log_map_size, sm.durability())?;
        let closing = vec![log.closing_event(), sm_db.env.clone().prepare_for_closing()];
        let log_metrics = log.metrics_handle();
        let storage = Arc::new(StorageMonitor::new(vec![
            ("log", log.env()),
            ("state machine", sm_db.env.clone()),
        ]));

        let network = Network::new(config.id, transport);
        let raft = Raft::new(config.id, raft_config, network, log, sm).await?;
        let proposer = Proposer::start(
            raft.clone(),
            Limits {
                max_pending_writes: config.max_pending_writes,
                max_in_flight: config.max_proposals_in_flight,
                max_batch_len: config.max_batch_len,
                max_batch_bytes: config.max_batch_bytes,
                write_timeout: config.write_timeout,
            },
            storage.clone(),
        );
        let inner = Arc::new(Inner {
            id: config.id,
            reads: ReadIndexBatcher::new(raft.clone()),
            raft,
            learner_catch_up_timeout: config.learner_catch_up_timeout,
            kv: KvReader::new(sm_db, watches),
            proposer,
            storage,
            log_metrics,
            last_contact: Mutex::new(None),
            closing: Mutex::new(closing),
            receiving: Mutex::new(None),
            max_snapshot_bytes,
            snapshot_task: Mutex::new(None),
        });
        let task = tokio::spawn(snapshot_by_log_bytes(
            Arc::downgrade(&inner),
            config.snapshot_log_bytes,
        ));
        *lock(&inner.snapshot_task) = Some(task.abort_handle());
        Ok(RaftServer { inner })
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

    /// Reader of the local catalog (nodes, services, checks).
    pub fn catalog(&self) -> CatalogReader {
        self.inner.kv.catalog()
    }

    /// Confirms with a quorum that this node is the leader and waits until everything
    /// committed before the call is applied locally; a read of [`kv`](Self::kv) after it
    /// is linearizable. Costs one heartbeat round trip, shared by concurrent callers: calls
    /// made while a round is in flight join the next round (which starts after them).
    pub async fn ensure_linearizable(&self) -> Result<(), ReadError> {
        self.inner.reads.ensure_linearizable().await
    }

    /// Leadership confirmation rounds run for [`ensure_linearizable`](Self::ensure_linearizable)
    /// since the server started.
    pub fn linearizable_rounds(&self) -> u64 {
        self.inner.reads.rounds()
    }

    /// Replicates the removal of KV tombstones at or below log index `up_to_index` and
    /// returns how many were removed. Meant for the leader to call periodically with an
    /// index old enough that no client still blocks on it (Consul reaps tombstones older
    /// than 15 minutes: remember [`KvReader::kv_index`] over time and pass the value
    /// observed that long ago). Reported indexes never go backwards because of it.
    pub async fn reap_tombstones(&self, up_to_index: u64) -> Result<u64, WriteError> {
        let outcome = self
            .write(Request::KvReapTombstones { up_to_index })
            .await?;
        match outcome.response {
            Response::Reaped(n) => Ok(n),
            other => Err(WriteError::Indeterminate(format!(
                "unexpected answer to a tombstone reap: {other:?}"
            ))),
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
                if let Err(e) = self.check_chunk(&req) {
                    return RaftRpcResponse::InstallSnapshot(Err(RaftError::APIError(e)));
                }
                let sender_vote = req.vote;
                let (snapshot_id, end, done) = (
                    req.meta.snapshot_id.clone(),
                    req.offset + req.data.len() as u64,
                    req.done,
                );
                let result = raft.install_snapshot(req).await;
                if matches!(&result, Ok(r) if r.vote <= sender_vote) {
                    self.touch_contact();
                    let mut receiving = lock(&self.inner.receiving);
                    match receiving.as_mut() {
                        _ if done => *receiving = None,
                        Some(r) if r.snapshot_id == snapshot_id => r.end = r.end.max(end),
                        _ => *receiving = Some(Received { snapshot_id, end }),
                    }
                }
                RaftRpcResponse::InstallSnapshot(result)
            }
        }
    }

    /// Refuses a snapshot chunk that would leave a hole in the file being received (its
    /// offset is past what was received so far) or make it larger than a snapshot may
    /// be: openraft writes a chunk at whatever offset it names. The leader restarts the
    /// transfer from the beginning on this error.
    fn check_chunk(
        &self,
        req: &InstallSnapshotRequest<TypeConfig>,
    ) -> Result<(), InstallSnapshotError> {
        let received = lock(&self.inner.receiving)
            .as_ref()
            .filter(|r| r.snapshot_id == req.meta.snapshot_id)
            .map_or(0, |r| r.end);
        let end = req.offset.saturating_add(req.data.len() as u64);
        if req.offset <= received && end <= self.inner.max_snapshot_bytes {
            return Ok(());
        }
        tracing::warn!(
            offset = req.offset,
            len = req.data.len(),
            received,
            limit = self.inner.max_snapshot_bytes,
            "refusing a snapshot chunk"
        );
        Err(InstallSnapshotError::SnapshotMismatch(SnapshotMismatch {
            expect: SnapshotSegmentId {
                id: req.meta.snapshot_id.clone(),
                offset: received,
            },
            got: SnapshotSegmentId {
                id: req.meta.snapshot_id.clone(),
                offset: req.offset,
            },
        }))
    }

    fn touch_contact(&self) {
        *lock(&self.inner.last_contact) = Some(Instant::now());
    }

    /// Stops Raft, refuses further writes and reads, and waits (up to 10 s) until both
    /// LMDB environments are closed, so the same directory can be opened again.
    pub async fn shutdown(&self) -> Result<(), Error> {
        self.inner.proposer.close();
        if let Some(task) = lock(&self.inner.snapshot_task).take() {
            task.abort();
        }
        let stopped = self.inner.raft.shutdown().await;
        self.inner.kv.close();
        self.inner.storage.close();
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

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Triggers a snapshot whenever `threshold` bytes of log entries were appended since the
/// last one, so the log is purged by size as well as by openraft's entry count. Ends when
/// the server is dropped or shut down.
async fn snapshot_by_log_bytes(server: Weak<Inner>, threshold: u64) {
    let mut last_snapshot = None;
    let mut baseline = 0;
    let mut triggered: Option<Instant> = None;
    loop {
        tokio::time::sleep(SNAPSHOT_CHECK_INTERVAL).await;
        let Some(inner) = server.upgrade() else {
            return;
        };
        let (snapshot, applied) = {
            let metrics = inner.raft.metrics();
            let m = metrics.borrow();
            if m.running_state.is_err() {
                return;
            }
            (m.snapshot, m.last_applied)
        };
        let appended = inner.log_metrics.get().bytes;
        if snapshot != last_snapshot {
            last_snapshot = snapshot;
            baseline = appended;
            triggered = None;
        }
        let due = appended.saturating_sub(baseline) >= threshold
            && applied > snapshot
            && triggered.is_none_or(|at| at.elapsed() >= SNAPSHOT_RETRIGGER);
        if due {
            tracing::info!(
                bytes = appended - baseline,
                "log grew past the snapshot threshold; building a snapshot"
            );
            triggered = Some(Instant::now());
            if inner.raft.trigger().snapshot().await.is_err() {
                return;
            }
        }
    }
}
