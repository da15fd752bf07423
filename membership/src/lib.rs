//! SWIM membership for the agent mesh.
//!
//! This crate owns who is in the cluster: foca driven by a transport-agnostic runtime,
//! node identities (name, address, datacenter, role, generation), member tags, the LAN
//! and WAN pools, and the discovery of servers from gossip. It opens no sockets and reads
//! no clock: the agent feeds it packets and timer events and carries out what it asks
//! for, so that hundreds of simulated nodes can run deterministically in one test.
//!
//! # Layout
//!
//! - [`identity`]: [`NodeIdentity`] (name, address, generation), what foca knows a node
//!   by. foca itself runs on a private twin that shares the name and caches its key:
//!   members are de-duplicated by name, and a later generation replaces an earlier one.
//! - [`config`]: [`Role`], [`Pool`], [`MembershipConfig`] and foca's presets.
//! - [`member`]: [`Member`], [`MemberState`] and the [`MemberChange`]s reported.
//! - [`event`]: [`EventKey`], which names the user events carried on the gossip.
//! - `wire` (private): the kind byte in front of every packet, the broadcasts that carry
//!   role, datacenter and tags, and the state requests and replies.
//! - `table` (private): the member table, joining foca's liveness with those broadcasts.
//! - [`membership`]: [`Membership`], the state machine the agent drives, with its
//!   [`Effect`]s and [`MembershipTimer`]s.
//! - [`sim`] (feature `sim`): a deterministic in-memory network with a virtual clock for
//!   hundreds of nodes.
//!
//! # How it works
//!
//! The foca identity stays small (name, address, generation) because it travels in
//! every packet. Role, datacenter and tags travel as foca custom broadcasts versioned by
//! the node itself, `(generation, version)`: a newer one replaces an older one in every
//! queue, and stale ones are neither applied nor passed on. A member is listed once foca
//! reported it up and its tags arrived.
//!
//! Joining a seed known only by its address announces to a stand-in identity with no
//! name, which the seed accepts because keys without a name compare by socket address.
//! The joiner also pushes its tags to the seed, repeats both every tick until foca
//! connects, then pulls the seed's full state (active members with their tags, like
//! memberlist's push/pull at join). It pulls the full state of a random member again
//! after 1, 2, 4... ticks and then every push/pull interval (anti-entropy), and asks a
//! member directly for its tags when foca reported it but they are still missing two
//! ticks later.
//!
//! A graceful leave spreads a leave intent first (others list the node as leaving),
//! then declares the node down through foca (others list it as left, not failed). An
//! intent spread about a live node is refuted by moving to the next generation. Failed
//! and departed members are reaped after `reap_failed_after` and `reap_left_after`.
//!
//! User events (opaque payloads named by an [`EventKey`]) ride in foca packets too, and
//! the most recent ones along the full-state exchange: every other member reports each
//! one once ([`Effect::Event`]).
//!
//! Every packet names its sender; [`Membership::handle_data`] drops a packet whose
//! sender differs from the node the connection is authenticated as.
#![warn(missing_docs)]

pub mod config;
pub mod error;
pub mod event;
pub mod identity;
pub mod member;
pub mod membership;
#[cfg(feature = "sim")]
pub mod sim;
mod table;
mod wire;

pub use config::{
    BUILD_TAG, DC_TAG, MAX_INFO_SIZE, MAX_PACKET_SIZE, MembershipConfig, Pool, ROLE_TAG, Role,
};
pub use error::MembershipError;
pub use event::{EventKey, MAX_EVENT_PAYLOAD};
pub use identity::NodeIdentity;
pub use member::{ChangeKind, Member, MemberChange, MemberState};
pub use membership::{Effect, Membership, MembershipTimer};

/// Locks the member table. A panic while it was held cannot leave it half-updated in a
/// way that matters more than losing the node, so a poisoned lock is taken over.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
