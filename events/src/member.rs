//! Membership changes as events.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Serialize;

/// What happened to a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum MemberEventKind {
    /// First seen alive.
    Join,
    /// Its tags or address changed.
    Update,
    /// Stopped answering probes; not yet declared failed.
    Suspect,
    /// Answered again after being suspect.
    Alive,
    /// Declared failed.
    Failed,
    /// Announced a graceful leave.
    Leaving,
    /// Left gracefully (or was forced out).
    Leave,
    /// Forgotten after the reap time.
    Reap,
}

impl MemberEventKind {
    /// The name handlers and streams use (`member-join`, `member-failed`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            MemberEventKind::Join => "member-join",
            MemberEventKind::Update => "member-update",
            MemberEventKind::Suspect => "member-suspect",
            MemberEventKind::Alive => "member-alive",
            MemberEventKind::Failed => "member-failed",
            MemberEventKind::Leaving => "member-leaving",
            MemberEventKind::Leave => "member-leave",
            MemberEventKind::Reap => "member-reap",
        }
    }
}

/// A change of one member, with the member as it is after the change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MemberEvent {
    /// What happened.
    pub kind: MemberEventKind,
    /// Node name.
    pub name: String,
    /// Gossip address.
    pub addr: SocketAddr,
    /// Datacenter.
    pub dc: String,
    /// `server` or `client`.
    pub role: String,
    /// Tags, including `role`, `dc` and `build`.
    pub tags: BTreeMap<String, String>,
    /// Consul's numeric status: 1 alive, 2 leaving, 3 left, 4 failed.
    pub status: u8,
}
