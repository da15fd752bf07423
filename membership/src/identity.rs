//! Who a node is to foca: a name, where to reach it, and which run of it this is.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A node as foca knows it.
///
/// It travels in every gossip packet, so it stays small: role, datacenter and tags travel
/// separately (see the crate documentation). The name is unique within a pool: the node
/// name on the LAN, `<node>.<dc>` on the WAN. It must not be empty: the empty name is
/// reserved for a seed known only by its address (see [`crate::Membership::join`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// The node's name, bound to its certificate.
    pub name: String,
    /// The address other nodes send gossip to.
    pub addr: SocketAddr,
    /// Which run of the node this is. It grows on every restart (the agent persists it)
    /// and whenever the cluster declared this node down and it rejoins.
    pub generation: u64,
}

impl NodeIdentity {
    /// An identity from its parts.
    pub fn new(name: impl Into<String>, addr: SocketAddr, generation: u64) -> Self {
        Self {
            name: name.into(),
            addr,
            generation,
        }
    }

    /// The stand-in for a seed whose name we do not know yet.
    pub(crate) fn seed(addr: SocketAddr) -> Self {
        Self {
            name: String::new(),
            addr,
            generation: 0,
        }
    }

    /// Whether this is the stand-in for a seed known only by address.
    pub(crate) fn is_seed(&self) -> bool {
        self.name.is_empty()
    }

    /// The order in which identities sharing a name replace each other: the larger
    /// generation wins, and the address breaks a tie so that every node picks the same.
    fn rank(&self) -> (u64, SocketAddr) {
        (self.generation, self.addr)
    }
}

impl fmt::Display for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}#{}", self.name, self.addr, self.generation)
    }
}

/// What foca de-duplicates members by: the node name.
///
/// Two identities with the same name are the same member, and the one with the larger
/// generation replaces the other. The seed stand-in (empty name) matches whichever node
/// listens on its socket address, which is how a seed known only by address accepts our
/// `Announce`: foca accepts an announce when its destination's key equals its own.
///
/// foca compares keys for every member on every update it applies, so the key holds a
/// 64-bit hash of the name rather than a copy of it. Two names with the same hash would
/// be taken for one member; by accident that is a 2^-64 event per pair, and crafting
/// such names takes certificates from the cluster's CA, whose holders can already gossip
/// any member down.
#[derive(Clone, Copy, Debug)]
pub struct NodeKey {
    name: u64,
    seed: bool,
    addr: SocketAddr,
}

impl PartialEq for NodeKey {
    fn eq(&self, other: &Self) -> bool {
        if self.seed || other.seed {
            self.addr == other.addr
        } else {
            self.name == other.name
        }
    }
}

/// FNV-1a: fast on short names, and stable.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl foca::Identity for NodeIdentity {
    type Addr = NodeKey;

    fn renew(&self) -> Option<Self> {
        let generation = self.generation.checked_add(1)?;
        Some(Self {
            generation,
            ..self.clone()
        })
    }

    fn addr(&self) -> NodeKey {
        NodeKey {
            name: name_hash(&self.name),
            seed: self.is_seed(),
            addr: self.addr,
        }
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.rank() > adversary.rank()
    }
}

#[cfg(test)]
mod tests {
    use foca::Identity;

    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn key_is_the_name() {
        let a = NodeIdentity::new("a", addr(1), 1);
        let a_moved = NodeIdentity::new("a", addr(2), 3);
        let b_same_socket = NodeIdentity::new("b", addr(1), 1);
        assert!(a.addr() == a_moved.addr());
        assert!(a.addr() != b_same_socket.addr());
    }

    #[test]
    fn seed_matches_by_socket_address() {
        let seed = NodeIdentity::seed(addr(1));
        assert!(seed.addr() == NodeIdentity::new("a", addr(1), 7).addr());
        assert!(seed.addr() != NodeIdentity::new("a", addr(2), 7).addr());
    }

    #[test]
    fn renewed_identity_wins() {
        let a = NodeIdentity::new("a", addr(1), 4);
        let renewed = a.renew().unwrap();
        assert_eq!(renewed.generation, 5);
        assert!(renewed.win_addr_conflict(&a));
        assert!(!a.win_addr_conflict(&renewed));
        assert!(NodeIdentity::new("a", addr(1), u64::MAX).renew().is_none());
    }

    #[test]
    fn ties_are_broken_the_same_way_everywhere() {
        let x = NodeIdentity::new("a", addr(1), 4);
        let y = NodeIdentity::new("a", addr(2), 4);
        assert!(y.win_addr_conflict(&x));
        assert!(!x.win_addr_conflict(&y));
    }
}
