//! Membership changes for the application's autopilot: learners, voters, removals, and
//! what a node knows of its cluster.
//!
//! Every change is proposed on the leader (other servers answer
//! [`MembershipError::ForwardToLeader`]) and returns once committed. Openraft allows one
//! change at a time; a change proposed while another is uncommitted fails with
//! [`MembershipError::InProgress`]. A change of voters goes through a joint configuration,
//! which [`RaftServer`] waits out.

use std::collections::{BTreeMap, BTreeSet};

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, Vote};

use crate::error::MembershipError;
use crate::server::RaftServer;
use crate::types::{NodeId, ServerNode};

/// The cluster configuration as this node knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterMembership {
    /// Voting servers (of the last configuration, during a joint change).
    pub voters: BTreeMap<NodeId, ServerNode>,
    /// Non-voting servers that receive the log.
    pub learners: BTreeMap<NodeId, ServerNode>,
    /// Log index of the entry that made this configuration (0 if none).
    pub log_index: u64,
    /// True while a change of voters is in its joint phase.
    pub joint: bool,
}

type ChangeError = RaftError<NodeId, ClientWriteError<NodeId, ServerNode>>;

fn map_error(e: ChangeError) -> MembershipError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            MembershipError::ForwardToLeader {
                leader_id: f.leader_id,
                leader_node: f.leader_node,
            }
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => match c {
            ChangeMembershipError::InProgress(p) => MembershipError::InProgress(p.to_string()),
            ChangeMembershipError::EmptyMembership(_) => MembershipError::EmptyMembership,
            ChangeMembershipError::LearnerNotFound(l) => {
                MembershipError::LearnerNotFound(l.node_id)
            }
        },
        RaftError::Fatal(f) => MembershipError::Fatal(f.to_string()),
    }
}

impl RaftServer {
    /// Adds server `id` as a learner (a non-voter that receives the log) and waits until
    /// it has replicated the log up to the entry that added it, by log or by snapshot.
    /// Waits at most [`ServerConfig::learner_catch_up_timeout`](crate::ServerConfig);
    /// after that the learner stays added and [`MembershipError::CatchUpTimeout`] is
    /// returned. A server that is already a member keeps its role and address.
    pub async fn add_learner(&self, id: NodeId, node: ServerNode) -> Result<(), MembershipError> {
        let raft = &self.inner.raft;
        let added = raft.add_learner(id, node, false).await.map_err(map_error)?;
        if id == self.inner.id {
            return Ok(());
        }
        let target = added.log_id.index;
        let mut metrics = raft.metrics();
        let caught_up = async {
            loop {
                {
                    let m = metrics.borrow_and_update();
                    if m.running_state.is_err() {
                        return Err(MembershipError::Fatal("raft stopped".into()));
                    }
                    let Some(replication) = m.replication.as_ref() else {
                        return Err(MembershipError::ForwardToLeader {
                            leader_id: m.current_leader,
                            leader_node: m
                                .current_leader
                                .and_then(|l| m.membership_config.membership().get_node(&l))
                                .cloned(),
                        });
                    };
                    let matched = replication.get(&id).copied().flatten();
                    if matched.is_some_and(|l| l.index >= target) {
                        return Ok(());
                    }
                    let config = &m.membership_config;
                    if config.log_id().is_some_and(|l| l.index >= target)
                        && config.membership().get_node(&id).is_none()
                    {
                        return Err(MembershipError::NotMember(id));
                    }
                }
                if metrics.changed().await.is_err() {
                    return Err(MembershipError::Fatal("raft stopped".into()));
                }
            }
        };
        let timeout = self.inner.learner_catch_up_timeout;
        tokio::time::timeout(timeout, caught_up)
            .await
            .unwrap_or(Err(MembershipError::CatchUpTimeout { id, timeout }))
    }

    /// Makes the learners `ids` voters, keeping the other voters.
    pub async fn promote_voters(&self, ids: BTreeSet<NodeId>) -> Result<(), MembershipError> {
        self.change(ChangeMembers::AddVoterIds(ids), true).await
    }

    /// Makes `voters` the exact set of voters. Each must already be a member (voters stay,
    /// learners are promoted); voters left out are removed from the cluster, and learners
    /// left out stay learners.
    pub async fn change_voters(&self, voters: BTreeSet<NodeId>) -> Result<(), MembershipError> {
        self.change(ChangeMembers::ReplaceAllVoters(voters), false)
            .await
    }

    /// Removes server `id` from the cluster, whether voter or learner. Removing the leader
    /// itself makes it step down once the change is committed.
    pub async fn remove_server(&self, id: NodeId) -> Result<(), MembershipError> {
        let current = self.membership();
        let ids = BTreeSet::from([id]);
        if current.voters.contains_key(&id) {
            self.change(ChangeMembers::RemoveVoters(ids), false).await
        } else if current.learners.contains_key(&id) || !self.is_leader() {
            // A follower's view may be stale: let the leader decide.
            self.change(ChangeMembers::RemoveNodes(ids), false).await
        } else {
            Err(MembershipError::NotMember(id))
        }
    }

    async fn change(
        &self,
        change: ChangeMembers<NodeId, ServerNode>,
        retain: bool,
    ) -> Result<(), MembershipError> {
        self.inner
            .raft
            .change_membership(change, retain)
            .await
            .map(|_| ())
            .map_err(map_error)
    }

    /// The latest cluster configuration this node knows (possibly not committed yet).
    pub fn membership(&self) -> ClusterMembership {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        let config = m.membership_config.membership();
        let node = |id: NodeId| config.get_node(&id).map(|n| (id, n.clone()));
        ClusterMembership {
            voters: config.voter_ids().filter_map(node).collect(),
            learners: config.learner_ids().filter_map(node).collect(),
            log_index: m.membership_config.log_id().map_or(0, |l| l.index),
            joint: config.get_joint_config().len() > 1,
        }
    }

    /// True if this node has any Raft state: a vote, log entries, a snapshot or a
    /// membership. A node with state belongs (or belonged) to a cluster and must not
    /// take part in forming a new one.
    pub fn has_state(&self) -> bool {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        m.vote != Vote::default()
            || m.last_log_index.is_some()
            || m.snapshot.is_some()
            || m.purged.is_some()
            || m.membership_config.membership().nodes().next().is_some()
    }

    /// True if this node knows a cluster configuration with at least one voter (it was
    /// initialized, or has received the configuration from a leader).
    pub fn is_initialized(&self) -> bool {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        m.membership_config
            .membership()
            .voter_ids()
            .next()
            .is_some()
    }
}
