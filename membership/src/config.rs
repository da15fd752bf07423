//! Roles, pools and the settings of a [`crate::Membership`], with foca's presets.

use std::collections::BTreeMap;
use std::fmt;
use std::num::{NonZeroU32, NonZeroUsize};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Largest datagram this crate emits or accepts, framing byte included.
pub const MAX_PACKET_SIZE: usize = 1400;

/// Largest encoding of a node's role, datacenter and tags (Serf's limit on tags).
pub const MAX_INFO_SIZE: usize = 512;

/// The tag that carries the node's role.
pub const ROLE_TAG: &str = "role";
/// The tag that carries the node's datacenter.
pub const DC_TAG: &str = "dc";
/// The tag that carries the node's build.
pub const BUILD_TAG: &str = "build";

/// Whether a node takes part in Raft.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs Raft and keeps the replicated state.
    Server,
    /// Forwards to servers.
    Client,
}

impl Role {
    /// `"server"` or `"client"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Client => "client",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is neither `server` nor `client`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: expected \"server\" or \"client\"")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "server" => Ok(Role::Server),
            "client" => Ok(Role::Client),
            other => Err(UnknownRole(other.to_owned())),
        }
    }
}

/// How often the WAN pool announces itself to members it considers down.
pub const WAN_RECONNECT_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Which gossip pool a [`crate::Membership`] runs: it selects foca's presets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pool {
    /// Every agent of one datacenter.
    Lan,
    /// The servers of every datacenter.
    Wan,
}

/// The settings of a [`crate::Membership`]. Start from [`MembershipConfig::lan`] or
/// [`MembershipConfig::wan`] and change fields as needed.
#[derive(Clone, Debug)]
pub struct MembershipConfig {
    /// The pool, which selects the presets.
    pub pool: Pool,
    /// This node's datacenter.
    pub dc: String,
    /// This node's role.
    pub role: Role,
    /// User tags plus [`BUILD_TAG`]. [`ROLE_TAG`] and [`DC_TAG`] are filled in from `role`
    /// and `dc`.
    pub tags: BTreeMap<String, String>,
    /// How long a failed member stays listed before it is reaped (Consul: 24 h).
    pub reap_failed_after: Duration,
    /// How long a member that left stays listed before it is reaped (Consul: 72 h).
    pub reap_left_after: Duration,
    /// How long [`crate::Membership::leave`] spreads the leave intent before this node
    /// stops gossiping (Serf's broadcast timeout).
    pub leave_propagation: Duration,
    /// How often this node pulls the full state of a random member (anti-entropy). It is
    /// scaled up with the cluster size beyond 32 members, like memberlist's push/pull.
    pub push_pull_interval: Duration,
    /// The cluster size the presets start from. They are re-applied as more members are
    /// seen (see [`crate::Membership::set_cluster_size_hint`]).
    pub cluster_size_hint: u32,
    /// foca's settings, from [`MembershipConfig::foca_preset`]. The packet size must stay
    /// below [`MAX_PACKET_SIZE`] and be the same on every node.
    pub foca: foca::Config,
}

impl MembershipConfig {
    /// Settings for the LAN pool.
    pub fn lan(dc: impl Into<String>, role: Role) -> Self {
        Self::new(Pool::Lan, dc.into(), role)
    }

    /// Settings for the WAN pool.
    pub fn wan(dc: impl Into<String>, role: Role) -> Self {
        Self::new(Pool::Wan, dc.into(), role)
    }

    fn new(pool: Pool, dc: String, role: Role) -> Self {
        let cluster_size_hint = 16;
        let reap_failed_after = Duration::from_secs(24 * 60 * 60);
        let mut tags = BTreeMap::new();
        tags.insert(BUILD_TAG.to_owned(), env!("CARGO_PKG_VERSION").to_owned());
        let (leave_propagation, push_pull_interval) = match pool {
            Pool::Lan => (Duration::from_secs(3), Duration::from_secs(30)),
            Pool::Wan => (Duration::from_secs(10), Duration::from_secs(60)),
        };
        let mut foca = Self::foca_preset(pool, cluster_size_hint);
        foca.remove_down_after = Some(reap_failed_after);
        Self {
            pool,
            dc,
            role,
            tags,
            reap_failed_after,
            reap_left_after: Duration::from_secs(72 * 60 * 60),
            leave_propagation,
            push_pull_interval,
            cluster_size_hint,
            foca,
        }
    }

    /// foca's preset for `pool` and a cluster of `cluster_size` members
    /// ([`foca::Config::new_lan`] or [`foca::Config::new_wan`]), with the packet size
    /// lowered by the one framing byte this crate adds.
    ///
    /// LAN: probe every 1 s with a 500 ms round trip, 3 indirect probes, suspect for
    /// `4 × max(1, log10 n)` s, gossip every 200 ms to 3 members, announce to 1 member
    /// every 30 s and to 2 down members every 65 s. WAN: probe every 5 s with a 3 s
    /// round trip, suspect for `30 × max(1, log10 n)` s, gossip every 500 ms to 4,
    /// announce to 2 every 60 s and to 3 down members every 30 s (foca: 125 s). Both send
    /// each update [`max_transmissions`] times and tell a member declared down about it.
    pub fn foca_preset(pool: Pool, cluster_size: u32) -> foca::Config {
        let size = NonZeroU32::new(cluster_size).unwrap_or(NonZeroU32::MIN);
        let mut config = match pool {
            Pool::Lan => foca::Config::new_lan(size),
            Pool::Wan => foca::Config::new_wan(size),
        };
        config.max_packet_size =
            NonZeroUsize::new(MAX_PACKET_SIZE - 1).unwrap_or(NonZeroUsize::MIN);
        config.max_transmissions = max_transmissions(size);
        if pool == Pool::Wan
            && let Some(down) = config.periodic_announce_to_down_members.as_mut()
        {
            // Try the servers declared down every 30 s (Serf's WAN reconnect interval)
            // rather than foca's 125 s, so datacenters find each other again soon after
            // a long WAN partition heals.
            down.frequency = WAN_RECONNECT_EVERY;
        }
        config
    }

    /// The tags other members see: the configured ones plus role and datacenter.
    pub(crate) fn announced_tags(&self) -> BTreeMap<String, String> {
        let mut tags = self.tags.clone();
        tags.remove(ROLE_TAG);
        tags.remove(DC_TAG);
        tags
    }
}

/// How many times each member sends an update or a user event on:
/// `6 × ⌈log10(n + 1)⌉` (12 for 10 to 99 members, 18 up to 999).
///
/// foca's presets use `⌊4 × log10(n + 1)⌋` (6 for 50 members). Every member that gets an
/// item sends it that many times to random members, so a given member is missed by all
/// of them with a probability of about `e^-sends`: at 6, one user event in five left one
/// of 50 agents waiting for the next anti-entropy exchange (up to a minute) in
/// `bench gossip`. At 12 that is about one in three thousand, for a few more packets
/// while an item spreads.
pub fn max_transmissions(cluster_size: NonZeroU32) -> std::num::NonZeroU8 {
    let rounds = f64::from(cluster_size.get().saturating_add(1))
        .log10()
        .ceil();
    let sends = (6.0 * rounds).clamp(6.0, f64::from(u8::MAX));
    std::num::NonZeroU8::new(sends as u8).unwrap_or(std::num::NonZeroU8::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transmissions_grow_with_the_cluster() {
        let tx = |n: u32| max_transmissions(NonZeroU32::new(n).unwrap()).get();
        assert_eq!(
            (tx(1), tx(9), tx(10), tx(50), tx(98), tx(99), tx(500)),
            (6, 6, 12, 12, 12, 12, 18)
        );
        assert_eq!(tx(u32::MAX), 60);
    }

    #[test]
    fn presets_match_foca() {
        let lan = MembershipConfig::lan("dc1", Role::Client);
        assert_eq!(lan.foca.probe_period, Duration::from_secs(1));
        assert_eq!(lan.foca.max_packet_size.get(), MAX_PACKET_SIZE - 1);
        assert_eq!(lan.foca.remove_down_after, Some(lan.reap_failed_after));
        assert!(lan.foca.periodic_gossip.is_some());
        assert!(lan.foca.periodic_announce_to_down_members.is_some());
        assert_eq!(
            lan.tags.get(BUILD_TAG).map(String::as_str),
            Some(env!("CARGO_PKG_VERSION"))
        );

        let wan = MembershipConfig::wan("dc1", Role::Server);
        assert_eq!(wan.foca.probe_period, Duration::from_secs(5));
        assert_eq!(wan.foca.probe_rtt, Duration::from_secs(3));
        assert_eq!(
            wan.foca
                .periodic_announce_to_down_members
                .map(|p| p.frequency),
            Some(WAN_RECONNECT_EVERY)
        );
    }

    #[test]
    fn role_round_trips_as_text() {
        for role in [Role::Server, Role::Client] {
            assert_eq!(role.to_string().parse::<Role>(), Ok(role));
        }
        assert!("leader".parse::<Role>().is_err());
    }
}
