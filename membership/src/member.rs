//! Members as the agent sees them, and the changes it is told about.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use crate::config::Role;

/// Where a member stands, in Serf's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemberState {
    /// Answers probes.
    Alive,
    /// Missed a probe; declared failed unless it refutes in time.
    Suspect,
    /// Announced that it is leaving and still gossips.
    Leaving,
    /// Left gracefully (or was forced out while failed).
    Left,
    /// Stopped answering and did not announce it.
    Failed,
}

impl MemberState {
    /// The `Status` number of Consul's `/v1/agent/members`.
    pub fn consul_status(self) -> u8 {
        match self {
            MemberState::Alive | MemberState::Suspect => 1,
            MemberState::Leaving => 2,
            MemberState::Left => 3,
            MemberState::Failed => 4,
        }
    }

    /// `"alive"`, `"suspect"`, `"leaving"`, `"left"` or `"failed"`.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Leaving => "leaving",
            MemberState::Left => "left",
            MemberState::Failed => "failed",
        }
    }

    /// Alive, suspect or leaving: the member still takes part in gossip.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            MemberState::Alive | MemberState::Suspect | MemberState::Leaving
        )
    }
}

impl fmt::Display for MemberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A member of the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Unique within the pool.
    pub name: String,
    /// Where it gossips.
    pub addr: SocketAddr,
    /// Which run of the node this is.
    pub generation: u64,
    /// Its role.
    pub role: Role,
    /// Its datacenter.
    pub dc: String,
    /// Its tags, including `role`, `dc` and `build`.
    pub tags: BTreeMap<String, String>,
    /// Where it stands.
    pub state: MemberState,
}

/// What happened to a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// First seen with its tags, or back after it failed or left.
    Joined,
    /// New tags, address or generation, in the same state.
    Updated,
    /// Missed a probe.
    Suspect,
    /// Refuted a suspicion.
    Alive,
    /// Declared down without having announced a leave.
    Failed,
    /// Announced that it is leaving.
    Leaving,
    /// Left (or was forced out).
    Left,
    /// Forgotten after `reap_failed_after` or `reap_left_after`.
    Reaped,
}

/// A change of one member, with the member as it is now (as it was last, for
/// [`ChangeKind::Reaped`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberChange {
    /// What happened.
    pub kind: ChangeKind,
    /// The member after the change.
    pub member: Member,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consul_status_numbers() {
        assert_eq!(MemberState::Alive.consul_status(), 1);
        assert_eq!(MemberState::Suspect.consul_status(), 1);
        assert_eq!(MemberState::Leaving.consul_status(), 2);
        assert_eq!(MemberState::Left.consul_status(), 3);
        assert_eq!(MemberState::Failed.consul_status(), 4);
    }
}
