//! What travels between nodes besides foca's own messages.
//!
//! Every packet starts with a kind byte:
//! - [`KIND_GOSSIP`]: a foca packet follows (postcard, foca's layout).
//! - [`KIND_REQUEST`]: the sender's identity, its own info (when it pushes it), whether
//!   it asks for the full state (every active member with its info), then the names
//!   whose state it asks for.
//! - [`KIND_REPLY`]: the sender's identity, then [`SyncEntry`] items.
//! - [`KIND_EVENTS`]: the sender's identity, then recent user events ([`EventItem`]),
//!   sent along a full-state request and its reply.
//!
//! Requests and replies are split so that each packet stays within
//! [`MAX_PACKET_SIZE`]; a receiver reads items until the packet ends, so a lost packet
//! loses only its own items.
//!
//! Member infos (role, datacenter, tags), leave intents and user events also ride in
//! foca packets, as custom broadcasts encoded as [`Broadcast`].

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::{MAX_PACKET_SIZE, Role};
use crate::error::MembershipError;
use crate::event::EventItem;
use crate::identity::{NodeIdentity, Peer};

/// A foca packet follows.
pub(crate) const KIND_GOSSIP: u8 = 0;
/// A state request follows.
pub(crate) const KIND_REQUEST: u8 = 1;
/// A state reply follows.
pub(crate) const KIND_REPLY: u8 = 2;
/// Recent user events follow.
pub(crate) const KIND_EVENTS: u8 = 3;

/// Largest number of names one request may carry that a node answers.
pub(crate) const MAX_NAMES_PER_REQUEST: usize = 64;

/// Role, datacenter and tags of one generation of a node, versioned by the node itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MemberInfo {
    pub name: String,
    pub generation: u64,
    pub version: u64,
    pub role: Role,
    pub dc: String,
    pub tags: BTreeMap<String, String>,
}

impl MemberInfo {
    pub(crate) fn version(&self) -> InfoVersion {
        InfoVersion {
            generation: self.generation,
            leaving: false,
            version: self.version,
        }
    }

    /// Whether `other` shows the agent something different.
    pub(crate) fn same_content(&self, other: &MemberInfo) -> bool {
        self.role == other.role && self.dc == other.dc && self.tags == other.tags
    }
}

/// How fresh a broadcast about a node is: a later generation beats everything of an
/// earlier one, and a leave intent beats every info of its generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct InfoVersion {
    pub generation: u64,
    pub leaving: bool,
    pub version: u64,
}

/// A custom broadcast: what foca disseminates for us.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Broadcast {
    /// A node's role, datacenter and tags.
    Info(MemberInfo),
    /// Generation `generation` of node `name` is leaving (or was forced to leave).
    Leave { name: String, generation: u64 },
    /// A user event, about no member in particular.
    Event(EventItem),
}

impl Broadcast {
    /// The member it is about; empty for an event.
    pub(crate) fn name(&self) -> &str {
        match self {
            Broadcast::Info(info) => &info.name,
            Broadcast::Leave { name, .. } => name,
            Broadcast::Event(_) => "",
        }
    }

    pub(crate) fn version(&self) -> InfoVersion {
        match self {
            Broadcast::Info(info) => info.version(),
            Broadcast::Leave { generation, .. } => InfoVersion {
                generation: *generation,
                leaving: true,
                version: 0,
            },
            Broadcast::Event(_) => InfoVersion {
                generation: 0,
                leaving: false,
                version: 0,
            },
        }
    }
}

/// One member in a state reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SyncEntry {
    pub name: String,
    /// Its foca state, when the reply carries membership too.
    pub member: Option<foca::Member<Peer>>,
    pub info: Option<MemberInfo>,
    /// The generation a leave intent was seen for.
    pub leave: Option<u64>,
}

/// A decoded request or reply.
#[derive(Debug)]
pub(crate) enum SyncMessage {
    Request {
        src: NodeIdentity,
        info: Option<MemberInfo>,
        full: bool,
        names: Vec<String>,
    },
    Reply {
        src: NodeIdentity,
        entries: Vec<SyncEntry>,
    },
    Events {
        src: NodeIdentity,
        events: Vec<EventItem>,
    },
}

impl SyncMessage {
    pub(crate) fn src(&self) -> &NodeIdentity {
        match self {
            SyncMessage::Request { src, .. }
            | SyncMessage::Reply { src, .. }
            | SyncMessage::Events { src, .. } => src,
        }
    }
}

pub(crate) fn encode_broadcast(item: &Broadcast) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(item)
}

pub(crate) fn decode_broadcast(data: &[u8]) -> Result<Broadcast, MembershipError> {
    let (item, rest) = postcard::take_from_bytes::<Broadcast>(data)?;
    if rest.is_empty() {
        Ok(item)
    } else {
        Err(MembershipError::TrailingBytes)
    }
}

/// Decodes the body (after the kind byte) of a request or reply.
pub(crate) fn decode_sync(kind: u8, body: &[u8]) -> Result<SyncMessage, MembershipError> {
    let (src, rest) = postcard::take_from_bytes::<NodeIdentity>(body)?;
    match kind {
        KIND_REQUEST => {
            let ((info, full), rest) =
                postcard::take_from_bytes::<(Option<MemberInfo>, bool)>(rest)?;
            Ok(SyncMessage::Request {
                src,
                info,
                full,
                names: decode_items(rest)?,
            })
        }
        KIND_REPLY => Ok(SyncMessage::Reply {
            src,
            entries: decode_items(rest)?,
        }),
        KIND_EVENTS => Ok(SyncMessage::Events {
            src,
            events: decode_items(rest)?,
        }),
        other => Err(MembershipError::UnknownKind(other)),
    }
}

/// Items until the end; each takes at least one byte, so their number is bounded by the
/// packet size.
fn decode_items<T: DeserializeOwned>(mut rest: &[u8]) -> Result<Vec<T>, MembershipError> {
    let mut items = Vec::new();
    while !rest.is_empty() {
        let (item, tail) = postcard::take_from_bytes::<T>(rest)?;
        items.push(item);
        rest = tail;
    }
    Ok(items)
}

/// Encodes a request for the state of `names`, or the full state, pushing the sender's
/// own `info` along.
pub(crate) fn encode_request(
    src: &NodeIdentity,
    info: Option<&MemberInfo>,
    full: bool,
    names: &[String],
) -> Result<Vec<Bytes>, postcard::Error> {
    let header = postcard::to_extend(src, vec![KIND_REQUEST])?;
    let header = postcard::to_extend(&(info, full), header)?;
    encode_packets(header, names, true)
}

/// Encodes a reply carrying `entries`.
pub(crate) fn encode_reply(
    src: &NodeIdentity,
    entries: &[SyncEntry],
) -> Result<Vec<Bytes>, postcard::Error> {
    encode_packets(postcard::to_extend(src, vec![KIND_REPLY])?, entries, false)
}

/// Encodes recent user events.
pub(crate) fn encode_events(
    src: &NodeIdentity,
    events: &[EventItem],
) -> Result<Vec<Bytes>, postcard::Error> {
    encode_packets(postcard::to_extend(src, vec![KIND_EVENTS])?, events, false)
}

/// Packs `items` after `header` into as few packets as fit. An item too large for a
/// packet of its own is left out.
fn encode_packets<T: Serialize>(
    header: Vec<u8>,
    items: &[T],
    at_least_one: bool,
) -> Result<Vec<Bytes>, postcard::Error> {
    let mut packets = Vec::new();
    let mut buf = header.clone();
    for item in items {
        let mark = buf.len();
        buf = postcard::to_extend(item, buf)?;
        if buf.len() <= MAX_PACKET_SIZE {
            continue;
        }
        let tail = buf.split_off(mark);
        if mark > header.len() {
            packets.push(Bytes::from(std::mem::replace(&mut buf, header.clone())));
        }
        if header.len() + tail.len() <= MAX_PACKET_SIZE {
            buf.extend_from_slice(&tail);
        }
    }
    if buf.len() > header.len() || (packets.is_empty() && at_least_one) {
        packets.push(Bytes::from(buf));
    }
    Ok(packets)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn node(name: &str) -> NodeIdentity {
        NodeIdentity::new(name, SocketAddr::from(([10, 0, 0, 1], 7946)), 1)
    }

    fn info(name: &str, version: u64) -> MemberInfo {
        MemberInfo {
            name: name.to_owned(),
            generation: 1,
            version,
            role: Role::Client,
            dc: "dc1".to_owned(),
            tags: BTreeMap::from([("build".to_owned(), "1.0.0".to_owned())]),
        }
    }

    #[test]
    fn versions_order_generation_then_leave_then_version() {
        let v = |generation, leaving, version| InfoVersion {
            generation,
            leaving,
            version,
        };
        assert!(v(1, false, 9) < v(1, true, 0));
        assert!(v(1, true, 0) < v(2, false, 1));
        assert!(v(1, false, 2) < v(1, false, 3));
    }

    #[test]
    fn broadcasts_round_trip_and_reject_trailing_bytes() {
        let item = Broadcast::Info(info("a", 3));
        let mut bytes = encode_broadcast(&item).unwrap();
        assert_eq!(decode_broadcast(&bytes).unwrap(), item);
        bytes.push(0);
        assert!(matches!(
            decode_broadcast(&bytes),
            Err(MembershipError::TrailingBytes)
        ));
    }

    #[test]
    fn replies_are_split_into_packets_that_fit() {
        let entries: Vec<SyncEntry> = (0..200)
            .map(|i| {
                let name = format!("node-{i:04}");
                SyncEntry {
                    member: Some(foca::Member::alive(Peer::from(&node(&name)))),
                    info: Some(info(&name, 1)),
                    leave: None,
                    name,
                }
            })
            .collect();
        let packets = encode_reply(&node("me"), &entries).unwrap();
        assert!(packets.len() > 1);
        let mut decoded = Vec::new();
        for packet in &packets {
            assert!(packet.len() <= MAX_PACKET_SIZE);
            assert_eq!(packet[0], KIND_REPLY);
            match decode_sync(packet[0], &packet[1..]).unwrap() {
                SyncMessage::Reply { src, entries } => {
                    assert_eq!(src.name, "me");
                    decoded.extend(entries);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(decoded, entries);
    }

    #[test]
    fn events_are_split_into_packets_that_fit() {
        let events: Vec<EventItem> = (0..64u8)
            .map(|i| EventItem {
                key: crate::EventKey {
                    ltime: u64::from(i),
                    id: [i; 16],
                },
                payload: vec![i; crate::MAX_EVENT_PAYLOAD / 4],
            })
            .collect();
        let packets = encode_events(&node("me"), &events).unwrap();
        assert!(packets.len() > 1);
        let mut decoded = Vec::new();
        for packet in &packets {
            assert!(packet.len() <= MAX_PACKET_SIZE);
            match decode_sync(packet[0], &packet[1..]).unwrap() {
                SyncMessage::Events { src, events } => {
                    assert_eq!(src.name, "me");
                    decoded.extend(events);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(decoded, events);
        let item = Broadcast::Event(events[3].clone());
        assert_eq!(
            decode_broadcast(&encode_broadcast(&item).unwrap()).unwrap(),
            item
        );
    }

    #[test]
    fn an_empty_request_still_makes_a_packet() {
        let mine = info("me", 2);
        let packets = encode_request(&node("me"), Some(&mine), true, &[]).unwrap();
        assert_eq!(packets.len(), 1);
        match decode_sync(packets[0][0], &packets[0][1..]).unwrap() {
            SyncMessage::Request {
                names, info, full, ..
            } => {
                assert!(names.is_empty());
                assert!(full);
                assert_eq!(info, Some(mine));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
