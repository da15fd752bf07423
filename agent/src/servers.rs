//! The servers of this datacenter as gossip knows them, and what a server does with
//! that knowledge: form the Raft cluster once (`--bootstrap-expect`), and, while it
//! leads, keep the Raft configuration in step with gossip (autopilot).
//!
//! Every server carries its node id in the gossip tag `id`; its Raft id is derived from
//! it ([`crate::node_id::raft_id`]) and its RPC address is its gossip address (one QUIC
//! endpoint carries both).
//!
//! Forming the cluster, as Consul does: nothing happens until `N` alive servers are
//! seen; then the server asks each of them over RPC whether it already has Raft state.
//! If one does, a cluster exists and its leader will add this server; if none does,
//! every server initializes Raft with the same configuration (all servers seen, sorted
//! by id), which makes the repeated initialization harmless. A server that already has
//! Raft state (a restart) never initializes again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use consensus::{NodeId, ServerNode};
use membership::{Member, MemberState, Role};
use tokio_util::sync::CancellationToken;

use crate::gossip::Gossip;
use crate::raft::Raft;
use crate::rpc::{RpcKind, frame};
use crate::transport::Transport;

/// Gossip tag holding a node's id.
pub const ID_TAG: &str = "id";

/// How often bootstrap and autopilot look at gossip.
const TICK: Duration = Duration::from_millis(500);

/// Tombstones of deleted keys are kept this long (Consul's default), so that blocking
/// queries see deletes, then reaped by the leader.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(15 * 60);

/// How often the leader notes the applied index, to know which index is old enough to
/// reap up to.
const TOMBSTONE_SAMPLE: Duration = Duration::from_secs(30);

/// How long the question "do you have Raft state?" may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(3);

/// A server seen in gossip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownServer {
    /// Raft id.
    pub id: NodeId,
    /// Node name.
    pub name: String,
    /// RPC (and gossip) address.
    pub addr: SocketAddr,
    /// Its gossip state.
    pub state: MemberState,
}

impl KnownServer {
    /// The Raft membership record of this server.
    pub fn node(&self) -> ServerNode {
        ServerNode {
            name: self.name.clone(),
            addr: self.addr.to_string(),
        }
    }
}

/// The servers of datacenter `dc` among `members`, by Raft id.
pub fn servers_of(members: &[Member], dc: &str) -> BTreeMap<NodeId, KnownServer> {
    members
        .iter()
        .filter(|m| m.role == Role::Server && m.dc == dc)
        .filter_map(|m| {
            let id = m.tags.get(ID_TAG)?.parse::<uuid::Uuid>().ok()?;
            let server = KnownServer {
                id: crate::node_id::raft_id(&id),
                name: m.name.clone(),
                addr: m.addr,
                state: m.state,
            };
            Some((server.id, server))
        })
        .collect()
}

fn is_alive(state: MemberState) -> bool {
    matches!(state, MemberState::Alive | MemberState::Suspect)
}

/// Settings of a server's cluster duties.
#[derive(Debug, Clone)]
pub struct ServerDuties {
    /// Datacenter.
    pub dc: String,
    /// Servers to see before forming the cluster; `None` joins an existing one.
    pub bootstrap_expect: Option<u32>,
    /// A server failed for longer than this is removed from the voters by the leader.
    pub dead_server_cleanup: Duration,
    /// The leader never removes voters below this many (the expected cluster size).
    pub min_voters: usize,
}

/// Runs bootstrap (if asked) and then autopilot until `shutdown`.
pub async fn run(
    duties: ServerDuties,
    raft: Raft,
    gossip: Gossip,
    transport: Transport,
    shutdown: CancellationToken,
) {
    if let Some(expect) = duties.bootstrap_expect {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = bootstrap(&duties.dc, expect, &raft, &gossip, &transport) => {}
        }
    }
    let mut pilot = Autopilot {
        duties,
        raft,
        gossip,
        failed_since: HashMap::new(),
        leading_since: None,
        index_samples: std::collections::VecDeque::new(),
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = pilot.step() => {}
        }
    }
}

/// Waits for `expect` servers and forms the cluster once (see the module doc).
async fn bootstrap(dc: &str, expect: u32, raft: &Raft, gossip: &Gossip, transport: &Transport) {
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        if raft.has_state() {
            tracing::info!("Raft state found: not bootstrapping");
            return;
        }
        let servers: Vec<KnownServer> = servers_of(&gossip.members(), dc)
            .into_values()
            .filter(|s| is_alive(s.state))
            .collect();
        if servers.len() < expect as usize {
            tracing::debug!(seen = servers.len(), expect, "waiting for servers");
            continue;
        }
        match others_have_state(raft.id(), &servers, transport).await {
            Err(e) => {
                tracing::info!("bootstrap: {e}; asking again");
                continue;
            }
            Ok(true) => {
                tracing::info!("a Raft cluster exists: waiting for its leader to add this server");
                return;
            }
            Ok(false) => {}
        }
        let members: BTreeMap<NodeId, ServerNode> =
            servers.iter().map(|s| (s.id, s.node())).collect();
        let names: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
        match raft.initialize(members).await {
            Ok(outcome) => {
                tracing::info!(servers = ?names, ?outcome, "Raft cluster bootstrapped");
                return;
            }
            Err(e) => tracing::warn!("bootstrap failed: {e}; retrying"),
        }
    }
}

/// Whether any server other than `me` already has Raft state.
async fn others_have_state(
    me: NodeId,
    servers: &[KnownServer],
    transport: &Transport,
) -> Result<bool, String> {
    for server in servers.iter().filter(|s| s.id != me) {
        let reply = transport
            .call_with_timeout(server.addr, frame(RpcKind::RaftStatus, &[]), STATUS_TIMEOUT)
            .await
            .map_err(|e| format!("{} did not answer: {e}", server.name))?;
        match reply.body.first() {
            Some(1) => return Ok(true),
            Some(0) => {}
            _ => return Err(format!("{} gave a malformed answer", server.name)),
        }
    }
    Ok(false)
}

/// The leader's upkeep of the Raft configuration.
struct Autopilot {
    duties: ServerDuties,
    raft: Raft,
    gossip: Gossip,
    failed_since: HashMap<NodeId, Instant>,
    /// Since when this server leads, as far as autopilot has seen.
    leading_since: Option<Instant>,
    /// (when, applied index) noted while leading, oldest first.
    index_samples: std::collections::VecDeque<(Instant, u64)>,
}

impl Autopilot {
    /// Reaps the tombstones older than [`TOMBSTONE_TTL`]: the leader notes its applied
    /// index every [`TOMBSTONE_SAMPLE`] and reaps up to the newest index noted at least
    /// a TTL ago.
    async fn reap_tombstones(&mut self) {
        let now = Instant::now();
        if self
            .index_samples
            .back()
            .is_none_or(|(at, _)| now.duration_since(*at) >= TOMBSTONE_SAMPLE)
            && let Ok(index) = self.raft.kv().applied_index()
        {
            self.index_samples.push_back((now, index));
        }
        let mut up_to = None;
        while let Some((at, index)) = self.index_samples.front() {
            if now.duration_since(*at) < TOMBSTONE_TTL {
                break;
            }
            up_to = Some(*index);
            self.index_samples.pop_front();
        }
        if let Some(index) = up_to {
            match self.raft.reap_tombstones(index).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(reaped = n, up_to = index, "tombstones reaped"),
                Err(e) => tracing::warn!("reaping tombstones: {e}"),
            }
        }
    }

    async fn step(&mut self) {
        let servers = servers_of(&self.gossip.members(), &self.duties.dc);
        let now = Instant::now();
        self.failed_since.retain(|id, _| {
            servers
                .get(id)
                .is_some_and(|s| s.state == MemberState::Failed)
        });
        for server in servers.values().filter(|s| s.state == MemberState::Failed) {
            self.failed_since.entry(server.id).or_insert(now);
        }
        if !self.raft.is_leader() {
            self.index_samples.clear();
            self.leading_since = None;
            return;
        }
        let leading_since = *self.leading_since.get_or_insert(now);
        self.reap_tombstones().await;
        let members = self.gossip.members();
        crate::reconcile::step(
            &self.raft,
            &members,
            &self.duties.dc,
            leading_since.elapsed() >= crate::reconcile::UNKNOWN_NODE_GRACE,
        )
        .await;
        let config = self.raft.membership();
        let mut voters: BTreeSet<NodeId> = config.voters.keys().copied().collect();

        // New alive servers join as learners, then become voters once caught up.
        for server in servers.values().filter(|s| is_alive(s.state)) {
            if voters.contains(&server.id) {
                continue;
            }
            if !config.learners.contains_key(&server.id) {
                tracing::info!(server = %server.name, "adding server as a learner");
                if let Err(e) = self.raft.add_learner(server.id, server.node()).await {
                    tracing::warn!(server = %server.name, "adding learner: {e}");
                    continue;
                }
            }
            let mut next = voters.clone();
            next.insert(server.id);
            match self.raft.change_voters(next.clone()).await {
                Ok(()) => {
                    tracing::info!(server = %server.name, "server promoted to voter");
                    voters = next;
                }
                Err(e) => tracing::warn!(server = %server.name, "promoting: {e}"),
            }
        }

        // Servers that left, or failed long ago, are removed, never below the floor.
        for (id, server) in &servers {
            if !voters.contains(id) || *id == self.raft.id() {
                continue;
            }
            let gone = match server.state {
                MemberState::Left => true,
                MemberState::Failed => self
                    .failed_since
                    .get(id)
                    .is_some_and(|since| since.elapsed() >= self.duties.dead_server_cleanup),
                _ => false,
            };
            if !gone || voters.len() <= self.duties.min_voters {
                continue;
            }
            let mut next = voters.clone();
            next.remove(id);
            match self.raft.change_voters(next.clone()).await {
                Ok(()) => {
                    tracing::info!(server = %server.name, state = ?server.state, "server removed from Raft");
                    voters = next;
                }
                Err(e) => tracing::warn!(server = %server.name, "removing: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(
        name: &str,
        role: Role,
        dc: &str,
        id: Option<uuid::Uuid>,
        state: MemberState,
    ) -> Member {
        let mut tags = BTreeMap::new();
        if let Some(id) = id {
            tags.insert(ID_TAG.to_string(), id.to_string());
        }
        Member {
            name: name.into(),
            addr: "127.0.0.1:8301".parse().unwrap(),
            generation: 1,
            role,
            dc: dc.into(),
            tags,
            state,
        }
    }

    #[test]
    fn servers_are_the_servers_of_our_dc_with_an_id() {
        let a = uuid::Uuid::new_v4();
        let members = vec![
            member("s1", Role::Server, "dc1", Some(a), MemberState::Alive),
            member(
                "s2",
                Role::Server,
                "dc2",
                Some(uuid::Uuid::new_v4()),
                MemberState::Alive,
            ),
            member(
                "c1",
                Role::Client,
                "dc1",
                Some(uuid::Uuid::new_v4()),
                MemberState::Alive,
            ),
            member("s3", Role::Server, "dc1", None, MemberState::Alive),
        ];
        let servers = servers_of(&members, "dc1");
        assert_eq!(servers.len(), 1);
        let s1 = &servers[&crate::node_id::raft_id(&a)];
        assert_eq!(s1.name, "s1");
        assert_eq!(s1.node().addr, "127.0.0.1:8301");
    }
}
