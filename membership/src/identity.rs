//! Who a node is: a name, where to reach it, and which run of it this is.

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A node as the pool knows it.
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
}

impl fmt::Display for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}#{}", self.name, self.addr, self.generation)
    }
}

/// The identity foca runs with: a [`NodeIdentity`] (and encoded exactly like one) whose
/// name is shared rather than copied and whose key is computed once. foca clones
/// identities and computes and compares their keys for every member on every update it
/// applies, so both must be cheap.
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    name: Arc<str>,
    addr: SocketAddr,
    generation: u64,
    key: PeerKey,
}

impl Peer {
    pub(crate) fn new(name: &str, addr: SocketAddr, generation: u64) -> Self {
        Self {
            key: PeerKey::new(name, addr),
            name: Arc::from(name),
            addr,
            generation,
        }
    }

    /// The stand-in for a seed whose name we do not know yet.
    pub(crate) fn seed(addr: SocketAddr) -> Self {
        Self::new("", addr, 0)
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn socket_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether `id` is this very identity.
    pub(crate) fn is(&self, id: &NodeIdentity) -> bool {
        *self.name == *id.name && self.addr == id.addr && self.generation == id.generation
    }

    pub(crate) fn to_identity(&self) -> NodeIdentity {
        NodeIdentity::new(&*self.name, self.addr, self.generation)
    }

    /// The order in which identities sharing a name replace each other: the larger
    /// generation wins, and the address breaks a tie so that every node picks the same.
    fn rank(&self) -> (u64, SocketAddr) {
        (self.generation, self.addr)
    }
}

impl PartialEq for Peer {
    fn eq(&self, other: &Self) -> bool {
        // The key derives from the other fields.
        self.generation == other.generation && self.addr == other.addr && self.name == other.name
    }
}

impl Eq for Peer {}

impl From<&NodeIdentity> for Peer {
    fn from(id: &NodeIdentity) -> Self {
        Peer::new(&id.name, id.addr, id.generation)
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}#{}", self.name, self.addr, self.generation)
    }
}

/// The encoding of a [`Peer`], the same as a [`NodeIdentity`]'s.
#[derive(Serialize, Deserialize)]
struct PeerWire<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    addr: SocketAddr,
    generation: u64,
}

impl Serialize for Peer {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        PeerWire {
            name: Cow::Borrowed(&self.name),
            addr: self.addr,
            generation: self.generation,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Peer {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = PeerWire::deserialize(deserializer)?;
        Ok(Peer::new(&wire.name, wire.addr, wire.generation))
    }
}

/// What foca de-duplicates members by: the node name.
///
/// Two identities with the same name are the same member, and the one with the larger
/// generation replaces the other. The seed stand-in (empty name) matches whichever node
/// listens on its socket address, which is how a seed known only by address accepts our
/// `Announce`: foca accepts an announce when its destination's key equals its own.
///
/// A key holds 64-bit hashes of the name and of the socket address rather than the
/// name, so that foca can copy and compare it for free. Two names whose hashes collide
/// would be taken for one member: by accident a 2^-64 event per pair of names; on
/// purpose it takes certificates from the cluster's CA, whose holders can gossip any
/// member down anyway.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PeerKey {
    /// [`PeerKey::SEED`] for the seed stand-in.
    name: u64,
    socket: u64,
}

impl PeerKey {
    const SEED: u64 = 0;

    fn new(name: &str, addr: SocketAddr) -> Self {
        let name = if name.is_empty() {
            Self::SEED
        } else {
            let hash = fnv1a(
                fnv1a(FNV_OFFSET, &name.len().to_le_bytes()),
                name.as_bytes(),
            );
            hash.max(1)
        };
        let socket = match addr {
            SocketAddr::V4(v4) => fnv1a(
                fnv1a(FNV_OFFSET, &v4.ip().octets()),
                &v4.port().to_le_bytes(),
            ),
            SocketAddr::V6(v6) => fnv1a(
                fnv1a(FNV_OFFSET, &v6.ip().octets()),
                &v6.port().to_le_bytes(),
            ),
        };
        Self { name, socket }
    }
}

impl PartialEq for PeerKey {
    fn eq(&self, other: &Self) -> bool {
        if self.name == Self::SEED || other.name == Self::SEED {
            self.socket == other.socket
        } else {
            self.name == other.name
        }
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

impl foca::Identity for Peer {
    type Addr = PeerKey;

    fn renew(&self) -> Option<Self> {
        let generation = self.generation.checked_add(1)?;
        Some(Self {
            generation,
            ..self.clone()
        })
    }

    fn addr(&self) -> PeerKey {
        self.key
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
        let a = Peer::new("a", addr(1), 1);
        let a_moved = Peer::new("a", addr(2), 3);
        let b_same_socket = Peer::new("b", addr(1), 1);
        assert!(Identity::addr(&a) == Identity::addr(&a_moved));
        assert!(Identity::addr(&a) != Identity::addr(&b_same_socket));
        let key = |name: &str, port| Identity::addr(&Peer::new(name, addr(port), 1));
        assert!(key("ab", 1) != key("ab\0", 1));
        assert!(key("node-1", 1) != key("node-2", 1));
    }

    #[test]
    fn seed_matches_by_socket_address() {
        let seed = Peer::seed(addr(1));
        assert!(Identity::addr(&seed) == Identity::addr(&Peer::new("a", addr(1), 7)));
        assert!(Identity::addr(&seed) != Identity::addr(&Peer::new("a", addr(2), 7)));
    }

    #[test]
    fn renewed_identity_wins() {
        let a = Peer::new("a", addr(1), 4);
        let renewed = a.renew().unwrap();
        assert_eq!(renewed.generation, 5);
        assert!(renewed.win_addr_conflict(&a));
        assert!(!a.win_addr_conflict(&renewed));
        assert!(Peer::new("a", addr(1), u64::MAX).renew().is_none());
    }

    #[test]
    fn ties_are_broken_the_same_way_everywhere() {
        let x = Peer::new("a", addr(1), 4);
        let y = Peer::new("a", addr(2), 4);
        assert!(y.win_addr_conflict(&x));
        assert!(!x.win_addr_conflict(&y));
    }

    #[test]
    fn encoded_like_a_node_identity() {
        let id = NodeIdentity::new("node-1", addr(9), 3);
        let peer = Peer::from(&id);
        let bytes = postcard::to_allocvec(&peer).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&id).unwrap());
        assert_eq!(postcard::from_bytes::<Peer>(&bytes).unwrap(), peer);
        assert!(peer.is(&id));
        assert_eq!(peer.to_identity(), id);
    }
}
