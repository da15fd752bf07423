//! The state machine driven by hand: join by address, authentication of packets,
//! garbage, stale broadcasts.

use std::collections::BTreeMap;

use bytes::BufMut;
use rand::RngExt;

use super::*;
use crate::config::Role;
use crate::event::EventItem;
use crate::member::ChangeKind;

fn addr(host: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, host], 7946))
}

fn node(name: &str, host: u8) -> Membership {
    let mut config = MembershipConfig::lan("dc1", Role::Client);
    config.tags.insert("rack".into(), format!("r{host}"));
    Membership::new(
        NodeIdentity::new(name, addr(host), 1),
        config,
        u64::from(host),
    )
    .unwrap()
}

/// Delivers packets between `nodes` until none is left (timers are dropped: nothing
/// here needs them), returning the changes each saw. Every packet must be accepted.
fn pump(nodes: &mut [&mut Membership]) -> Vec<Vec<MemberChange>> {
    let mut changes = vec![Vec::new(); nodes.len()];
    loop {
        let mut packets = Vec::new();
        for (i, node) in nodes.iter_mut().enumerate() {
            let sender = node.me().name.clone();
            for effect in node.drain_effects() {
                match effect {
                    Effect::Send { to, data } => packets.push((to, sender.clone(), data)),
                    Effect::Changed(change) => changes[i].push(change),
                    Effect::Schedule { .. } | Effect::Event { .. } => {}
                }
            }
        }
        if packets.is_empty() {
            return changes;
        }
        for (to, sender, data) in packets {
            if let Some(node) = nodes.iter_mut().find(|n| n.me().addr == to) {
                node.handle_data(&data, &sender).unwrap();
            }
        }
    }
}

/// A gossip packet from `src` to `dst` carrying `items` as custom broadcasts.
fn gossip_packet(src: &NodeIdentity, dst: &NodeIdentity, items: &[Broadcast]) -> Vec<u8> {
    let header = foca::Header {
        src: Peer::from(src),
        src_incarnation: 0,
        dst: Peer::from(dst),
        message: foca::Message::Gossip,
    };
    let mut packet = vec![wire::KIND_GOSSIP];
    PostcardCodec.encode_header(&header, &mut packet).unwrap();
    packet.put_u16(0);
    for item in items {
        let bytes = wire::encode_broadcast(item).unwrap();
        packet.put_u16(u16::try_from(bytes.len()).unwrap());
        packet.extend_from_slice(&bytes);
    }
    packet
}

/// A gossip packet from `src` to `dst` carrying `items`, already encoded, as custom
/// broadcasts.
fn raw_gossip_packet(src: &NodeIdentity, dst: &NodeIdentity, items: &[&[u8]]) -> Vec<u8> {
    let mut packet = gossip_packet(src, dst, &[]);
    for item in items {
        packet.put_u16(u16::try_from(item.len()).unwrap());
        packet.extend_from_slice(item);
    }
    packet
}

fn event_key(ltime: u64, id: u8) -> EventKey {
    EventKey {
        ltime,
        id: [id; 16],
    }
}

fn events_of(node: &mut Membership) -> Vec<(EventKey, Bytes)> {
    node.drain_effects()
        .filter_map(|effect| match effect {
            Effect::Event { key, payload } => Some((key, payload)),
            _ => None,
        })
        .collect()
}

fn joined_pair() -> (Membership, Membership) {
    let mut a = node("a", 1);
    let mut b = node("b", 2);
    b.join(a.me().addr).unwrap();
    pump(&mut [&mut a, &mut b]);
    (a, b)
}

#[test]
fn starts_by_scheduling_its_tick() {
    let mut a = node("a", 1);
    assert!(matches!(
        a.poll_effect(),
        Some(Effect::Schedule {
            timer: MembershipTimer(TimerKind::Tick),
            ..
        })
    ));
    assert_eq!(a.poll_effect(), None);
    assert_eq!(a.members().len(), 1);
    assert_eq!(a.member("a").unwrap().state, MemberState::Alive);
}

#[test]
fn joins_a_seed_known_only_by_address() {
    let (a, b) = joined_pair();
    for (observer, other, rack) in [(&a, "b", "r2"), (&b, "a", "r1")] {
        let member = observer.member(other).unwrap();
        assert_eq!(member.state, MemberState::Alive);
        assert_eq!(member.role, Role::Client);
        assert_eq!(member.tags["rack"], rack);
        assert_eq!(member.tags["dc"], "dc1");
        assert_eq!(observer.members().len(), 2);
    }
    assert_eq!(b.rejoin_list(), [a.me().addr]);
}

#[test]
fn rejects_bad_identities_and_configurations() {
    let config = MembershipConfig::lan("dc1", Role::Client);
    assert!(matches!(
        Membership::new(NodeIdentity::new("", addr(1), 1), config.clone(), 0),
        Err(MembershipError::InvalidIdentity(_))
    ));
    let mut big = config.clone();
    big.foca.max_packet_size = std::num::NonZeroUsize::new(MAX_PACKET_SIZE).unwrap();
    assert!(matches!(
        Membership::new(NodeIdentity::new("a", addr(1), 1), big, 0),
        Err(MembershipError::InvalidConfig(_))
    ));
    let mut a = node("a", 1);
    assert!(matches!(a.join(addr(1)), Err(MembershipError::JoinSelf)));
}

#[test]
fn spoofed_packets_are_dropped_before_anything_is_applied() {
    let (mut a, mut b) = joined_pair();
    let mut c = node("c", 3);
    let before = a.members();

    // c announces itself to a, but the connection is b's.
    c.join(a.me().addr).unwrap();
    let packets: Vec<Bytes> = c
        .drain_effects()
        .filter_map(|effect| match effect {
            Effect::Send { data, .. } => Some(data),
            _ => None,
        })
        .collect();
    assert_eq!(packets.len(), 2, "an announce and a push of its tags");
    for packet in &packets {
        assert!(matches!(
            a.handle_data(packet, "b"),
            Err(MembershipError::Spoofed { ref claimed, ref sender }) if claimed == "c" && sender == "b"
        ));
    }
    // b's own packet naming c as the source of a tag broadcast is fine (gossip relays
    // others' broadcasts), but one claiming to come from c is not.
    let forged = gossip_packet(c.me(), a.me(), &[]);
    assert!(matches!(
        a.handle_data(&forged, "b"),
        Err(MembershipError::Spoofed { .. })
    ));
    assert_eq!(a.poll_effect(), None);
    assert_eq!(a.members(), before);
    assert!(a.member("c").is_none());

    // Delivered as c's, the same packets are accepted.
    for packet in &packets {
        a.handle_data(packet, "c").unwrap();
    }
    pump(&mut [&mut a, &mut b, &mut c]);
    assert_eq!(a.member("c").unwrap().state, MemberState::Alive);
}

#[test]
fn garbage_is_an_error_never_a_panic() {
    let (mut a, mut b) = joined_pair();
    assert!(matches!(
        a.handle_data(&[], "b"),
        Err(MembershipError::Empty)
    ));
    assert!(matches!(
        a.handle_data(&vec![0; MAX_PACKET_SIZE + 1], "b"),
        Err(MembershipError::TooLarge { .. })
    ));
    assert!(matches!(
        a.handle_data(&[9, 1, 2], "b"),
        Err(MembershipError::UnknownKind(9))
    ));

    // Real packets from b to a, to mutate.
    b.set_tags(BTreeMap::from([("k".to_owned(), "v".to_owned())]))
        .unwrap();
    b.handle_timer(MembershipTimer(TimerKind::Tick)).unwrap();
    let mut samples: Vec<Vec<u8>> = b
        .drain_effects()
        .filter_map(|effect| match effect {
            Effect::Send { data, .. } => Some(data.to_vec()),
            _ => None,
        })
        .collect();
    samples.push(gossip_packet(
        b.me(),
        a.me(),
        &[Broadcast::Leave {
            name: "a".into(),
            generation: 1,
        }],
    ));

    let mut rng = Xoshiro256PlusPlus::seed_from_u64(42);
    let mut errors = 0;
    for round in 0..20_000 {
        let packet: Vec<u8> = if round % 2 == 0 {
            let len = rng.random_range(0..=MAX_PACKET_SIZE + 8);
            let mut packet: Vec<u8> = (0..len).map(|_| rng.random::<u8>()).collect();
            if let Some(kind) = packet.first_mut() {
                *kind = rng.random_range(0..4);
            }
            packet
        } else {
            let mut packet = samples[rng.random_range(0..samples.len())].clone();
            match rng.random_range(0..3) {
                0 => {
                    let at = rng.random_range(0..packet.len());
                    packet[at] ^= 1 << rng.random_range(0..8);
                }
                1 => packet.truncate(rng.random_range(0..packet.len())),
                _ => packet.extend((0..rng.random_range(1..16)).map(|_| rng.random::<u8>())),
            }
            packet
        };
        // Claimed sender as in the packet whenever it decodes, so that the mutations
        // reach foca and the table rather than stopping at the authentication.
        if a.handle_data(&packet, "b").is_err() {
            errors += 1;
        }
        a.drain_effects().for_each(drop);
    }
    assert!(errors > 10_000, "only {errors} of 20000 rejected");
    // Still a working member.
    assert_eq!(a.member("a").unwrap().state, MemberState::Alive);
    b.gossip_to(&mut a);
    assert_eq!(a.member("b").unwrap().tags["k"], "v");
}

#[test]
fn stale_tag_broadcasts_change_nothing_and_are_not_passed_on() {
    let (mut a, mut b) = joined_pair();
    let mut old = lock(&b.table).my_info().clone();
    b.set_tags(BTreeMap::from([("k".to_owned(), "new".to_owned())]))
        .unwrap();
    b.gossip_to(&mut a);
    assert_eq!(a.member("b").unwrap().tags["k"], "new");

    old.tags.insert("k".into(), "old".into());
    a.drain_effects().for_each(drop);
    let backlog = a.swim.custom_broadcast_backlog();
    let stale = gossip_packet(b.me(), a.me(), &[Broadcast::Info(old)]);
    a.handle_data(&stale, "b").unwrap();
    assert_eq!(a.member("b").unwrap().tags["k"], "new");
    assert_eq!(
        a.swim.custom_broadcast_backlog(),
        backlog,
        "a stale item is not queued"
    );
    assert!(
        !a.drain_effects().any(|e| matches!(e, Effect::Changed(_))),
        "no change reported"
    );
}

impl Membership {
    /// Sends this node's pending updates and broadcasts to `other` (its only member).
    fn gossip_to(&mut self, other: &mut Membership) {
        self.swim.gossip(&mut self.outbox).unwrap();
        self.after_swim();
        let sender = self.me.name.clone();
        for effect in self.drain_effects().collect::<Vec<_>>() {
            if let Effect::Send { data, .. } = effect {
                // Errors are fine: the peer may hold junk left by a fuzzing round.
                let _ = other.handle_data(&data, &sender);
            }
        }
    }
}

#[test]
fn leaving_alone_is_immediate() {
    let mut a = node("a", 1);
    a.drain_effects().for_each(drop);
    a.leave().unwrap();
    let kinds: Vec<ChangeKind> = a
        .drain_effects()
        .filter_map(|e| match e {
            Effect::Changed(change) => Some(change.kind),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, [ChangeKind::Leaving, ChangeKind::Left]);
    assert_eq!(a.member("a").unwrap().state, MemberState::Left);
    assert!(matches!(
        a.set_tags(BTreeMap::new()),
        Err(MembershipError::Left)
    ));
}

#[test]
fn a_forced_leave_of_a_live_node_is_refuted_with_a_new_generation() {
    let (mut a, mut b) = joined_pair();
    // b believes a left (say, it was forced out while partitioned away).
    let intent = gossip_packet(
        b.me(),
        a.me(),
        &[Broadcast::Leave {
            name: "a".into(),
            generation: 1,
        }],
    );
    a.handle_data(&intent, "b").unwrap();
    assert_eq!(a.me().generation, 2);
    pump(&mut [&mut a, &mut b]);
    let seen = b.member("a").unwrap();
    assert_eq!((seen.state, seen.generation), (MemberState::Alive, 2));
}

#[test]
fn an_event_is_reported_once_by_the_others_and_never_by_its_sender() {
    let (mut a, mut b) = joined_pair();
    let key = event_key(7, 1);
    let payload = Bytes::from_static(b"deploy web v42");
    b.broadcast_event(key, payload.clone()).unwrap();
    assert!(events_of(&mut b).is_empty(), "the sender gets no effect");
    b.gossip_to(&mut a);
    assert_eq!(events_of(&mut a), vec![(key, payload.clone())]);
    assert_eq!(a.max_event_ltime(), 7);
    assert_eq!(b.max_event_ltime(), 7);

    // The same item again, by gossip or by the full-state exchange: nothing.
    let backlog = a.swim.custom_broadcast_backlog();
    let again = gossip_packet(
        b.me(),
        a.me(),
        &[Broadcast::Event(EventItem {
            key,
            payload: payload.to_vec(),
        })],
    );
    a.handle_data(&again, "b").unwrap();
    assert_eq!(
        a.swim.custom_broadcast_backlog(),
        backlog,
        "not queued again"
    );
    let recent = lock(&b.table).events.recent();
    for packet in wire::encode_events(b.me(), &recent).unwrap() {
        a.handle_data(&packet, "b").unwrap();
    }
    b.broadcast_event(key, payload).unwrap();
    b.gossip_to(&mut a);
    assert!(events_of(&mut a).is_empty());
}

#[test]
fn oversized_events_are_refused() {
    let (mut a, mut b) = joined_pair();
    let big = Bytes::from(vec![7; MAX_EVENT_PAYLOAD + 1]);
    assert!(matches!(
        b.broadcast_event(event_key(1, 1), big.clone()),
        Err(MembershipError::EventTooLarge { len, max })
            if len == MAX_EVENT_PAYLOAD + 1 && max == MAX_EVENT_PAYLOAD
    ));
    // Even if someone else sends one.
    let item = wire::encode_broadcast(&Broadcast::Event(EventItem {
        key: event_key(1, 1),
        payload: big.to_vec(),
    }))
    .unwrap();
    assert!(
        a.handle_data(&raw_gossip_packet(b.me(), a.me(), &[&item]), "b")
            .is_err()
    );
    assert!(events_of(&mut a).is_empty());

    // The largest payload fits a packet with its headers.
    let largest = Bytes::from(vec![7; MAX_EVENT_PAYLOAD]);
    b.broadcast_event(event_key(2, 2), largest.clone()).unwrap();
    b.gossip_to(&mut a);
    assert_eq!(events_of(&mut a), vec![(event_key(2, 2), largest)]);
    let recent = lock(&b.table).events.recent();
    let packets = wire::encode_events(b.me(), &recent).unwrap();
    assert_eq!(packets.len(), 1);
    assert!(packets[0].len() <= MAX_PACKET_SIZE);
}

#[test]
fn garbage_event_items_are_refused_without_panic() {
    let (mut a, mut b) = joined_pair();
    let good = wire::encode_broadcast(&Broadcast::Event(EventItem {
        key: event_key(3, 3),
        payload: b"hello".to_vec(),
    }))
    .unwrap();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
    for round in 0..5_000 {
        let mut item = good.clone();
        match round % 3 {
            0 => item.truncate(rng.random_range(1..item.len())),
            1 => {
                let at = rng.random_range(0..item.len());
                item[at] = rng.random::<u8>();
            }
            _ => item.push(rng.random::<u8>()),
        }
        let _ = a.handle_data(&raw_gossip_packet(b.me(), a.me(), &[&item]), "b");
        let mut events = vec![wire::KIND_EVENTS];
        events = postcard::to_extend(b.me(), events).unwrap();
        events.extend_from_slice(&item[1..]);
        let _ = a.handle_data(&events, "b");
        a.drain_effects().for_each(drop);
    }
    // A truncated item and trailing bytes are errors.
    assert!(
        a.handle_data(
            &raw_gossip_packet(b.me(), a.me(), &[&good[..good.len() - 1]]),
            "b"
        )
        .is_err()
    );
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(
        a.handle_data(&raw_gossip_packet(b.me(), a.me(), &[&trailing]), "b")
            .is_err()
    );
    // Still working: a real event arrives.
    b.broadcast_event(event_key(u64::MAX, 9), Bytes::from_static(b"x"))
        .unwrap();
    b.gossip_to(&mut a);
    assert!(
        events_of(&mut a)
            .iter()
            .any(|(key, _)| *key == event_key(u64::MAX, 9))
    );
}

#[test]
fn events_below_the_floor_are_neither_reported_nor_passed_on() {
    let (mut a, mut b) = joined_pair();
    a.set_event_floor(10);
    b.broadcast_event(event_key(9, 1), Bytes::from_static(b"old"))
        .unwrap();
    b.broadcast_event(event_key(10, 1), Bytes::from_static(b"new"))
        .unwrap();
    b.gossip_to(&mut a);
    let keys: Vec<EventKey> = events_of(&mut a).into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec![event_key(10, 1)]);
    assert_eq!(a.max_event_ltime(), 10);
}
