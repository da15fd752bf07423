//! The errors of this crate.

use crate::member::MemberState;

/// Why an input to [`crate::Membership`] was rejected or failed.
///
/// Errors caused by a packet mean the packet was dropped; the driver logs them and goes
/// on. None of them leaves the membership in a broken state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// The packet names a sender other than the node the connection is authenticated as.
    /// Nothing of it was applied.
    #[error("packet claims to come from {claimed:?} but the connection belongs to {sender:?}")]
    Spoofed {
        /// The name in the packet.
        claimed: String,
        /// The name bound to the connection.
        sender: String,
    },
    /// The packet is larger than [`crate::MAX_PACKET_SIZE`].
    #[error("packet of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The packet is empty.
    #[error("empty packet")]
    Empty,
    /// The packet starts with an unknown kind byte.
    #[error("unknown packet kind {0:#04x}")]
    UnknownKind(u8),
    /// The packet does not decode.
    #[error("malformed packet: {0}")]
    Malformed(#[from] postcard::Error),
    /// A packet could not be encoded.
    #[error("cannot encode: {0}")]
    Encode(#[source] postcard::Error),
    /// A synchronisation packet carries more than its header promises.
    #[error("malformed packet: trailing bytes")]
    TrailingBytes,
    /// foca rejected an input or failed to act on it.
    #[error("gossip: {0}")]
    Gossip(#[from] foca::Error),
    /// The identity given to [`crate::Membership::new`] is unusable.
    #[error("invalid identity: {0}")]
    InvalidIdentity(&'static str),
    /// The configuration given to [`crate::Membership::new`] is unusable.
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
    /// Role, datacenter and tags together encode to more than [`crate::MAX_INFO_SIZE`].
    #[error("tags too large: {len} bytes encoded, the limit is {max}")]
    TagsTooLarge {
        /// Their encoded size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A user event's payload is larger than [`crate::MAX_EVENT_PAYLOAD`].
    #[error("event payload of {len} bytes exceeds the limit of {max}")]
    EventTooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// [`crate::Membership::join`] was given this node's own address.
    #[error("cannot join our own address")]
    JoinSelf,
    /// [`crate::Membership::force_leave`] targets a member that has not failed.
    #[error("{name} is {state}: only a failed member can be forced to leave")]
    NotFailed {
        /// The member.
        name: String,
        /// Its state.
        state: MemberState,
    },
    /// This node has left the pool; build a new [`crate::Membership`] to rejoin.
    #[error("this node has left the pool")]
    Left,
}
