//! User events on the simulated network: each reaches every other member exactly once,
//! through gossip, and through the full-state exchange after a partition; a restarted
//! node with a floor does not report old events again. Every test is deterministic
//! (seeded) and prints the virtual times it measured.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use membership::sim::{NodeId, Sim};
use membership::{
    EventKey, MAX_EVENT_PAYLOAD, MemberState, MembershipConfig, MembershipError, Role,
};

const SECOND: Duration = Duration::from_secs(1);
const CHECK: Duration = Duration::from_millis(50);

/// `n` client nodes named `node-NNN`, joined through the first, all alive everywhere.
fn converged_cluster(seed: u64, n: usize) -> (Sim, Vec<NodeId>) {
    let mut sim = Sim::new(seed);
    let nodes: Vec<NodeId> = (0..n)
        .map(|i| {
            sim.add_node(
                &format!("node-{i:03}"),
                MembershipConfig::lan("dc1", Role::Client),
            )
        })
        .collect();
    for &node in &nodes[1..] {
        sim.join(node, nodes[0]);
    }
    assert!(
        sim.run_until(30 * SECOND, CHECK, |sim| {
            nodes
                .iter()
                .all(|&node| sim.node(node).count(MemberState::Alive) == n)
        }),
        "{n} nodes did not converge"
    );
    (sim, nodes)
}

fn key(ltime: u64, id: u8) -> EventKey {
    EventKey {
        ltime,
        id: [id; 16],
    }
}

/// How many times `node` reported `key`.
fn reported(sim: &Sim, node: NodeId, key: EventKey) -> usize {
    sim.events(node).iter().filter(|e| e.key == key).count()
}

fn fire(sim: &mut Sim, node: NodeId, key: EventKey, payload: &[u8]) {
    let payload = Bytes::copy_from_slice(payload);
    sim.act(node, |m| m.broadcast_event(key, payload)).unwrap();
}

#[test]
fn an_event_reaches_each_of_fifty_nodes_exactly_once() {
    let n = 50;
    let (mut sim, nodes) = converged_cluster(50, n);
    let sender = nodes[17];
    let receivers: Vec<NodeId> = nodes.iter().copied().filter(|&n| n != sender).collect();
    let small = key(42, 1);
    let large = key(43, 2);
    fire(&mut sim, sender, small, b"deploy web v42");
    fire(&mut sim, nodes[3], large, &[0xab; MAX_EVENT_PAYLOAD]);

    let fired_at = sim.now();
    let everywhere = sim.run_until(30 * SECOND, CHECK, |sim| {
        receivers.iter().all(|&r| reported(sim, r, small) == 1)
    });
    let mut delays: Vec<Duration> = receivers
        .iter()
        .filter_map(|&r| sim.events(r).iter().find(|e| e.key == small))
        .map(|e| e.at - fired_at)
        .collect();
    delays.sort();
    let took = delays.last().copied().unwrap_or_default();
    println!(
        "an event reached the {} other nodes after {took:?} (median {:?})",
        n - 1,
        delays.get(delays.len() / 2).copied().unwrap_or_default()
    );
    assert!(everywhere, "not everywhere after 30 s");
    assert!(took <= 5 * SECOND, "took {took:?}");
    assert!(sim.run_until(30 * SECOND, CHECK, |sim| {
        nodes
            .iter()
            .filter(|&&r| r != nodes[3])
            .all(|&r| reported(sim, r, large) == 1)
    }));
    println!(
        "the {MAX_EVENT_PAYLOAD}-byte event reached everyone after {:?}",
        sim.now() - fired_at
    );

    // Re-gossip and several rounds of anti-entropy later, still once each.
    sim.run_for(120 * SECOND);
    for &r in &receivers {
        assert_eq!(reported(&sim, r, small), 1);
        assert_eq!(
            sim.events(r)
                .iter()
                .find(|e| e.key == small)
                .unwrap()
                .payload,
            &b"deploy web v42"[..]
        );
        assert_eq!(sim.node(r).max_event_ltime(), 43);
    }
    assert_eq!(
        reported(&sim, sender, small),
        0,
        "the sender gets no effect"
    );
    assert_eq!(
        reported(&sim, nodes[3], large),
        0,
        "the sender gets no effect"
    );
    for &node in &nodes {
        assert_eq!(
            sim.events(node).len(),
            if node == sender || node == nodes[3] {
                1
            } else {
                2
            }
        );
    }
}

#[test]
fn a_partitioned_node_reports_the_event_once_after_the_heal() {
    let n = 12;
    let (mut sim, nodes) = converged_cluster(12, n);
    let away = nodes[5];
    let rest: Vec<NodeId> = nodes.iter().copied().filter(|&n| n != away).collect();
    sim.partition(&[&[away]]);
    let event = key(7, 7);
    fire(&mut sim, nodes[0], event, b"restart db");

    // The rest hear of it, and declare the lone node failed; the gossip is over.
    assert!(sim.run_until(120 * SECOND, CHECK, |sim| {
        rest[1..].iter().all(|&r| reported(sim, r, event) == 1)
            && rest.iter().all(|&r| {
                sim.node(r)
                    .member(sim.name(away))
                    .is_some_and(|m| m.state == MemberState::Failed)
            })
    }));
    sim.run_for(10 * SECOND);
    assert_eq!(reported(&sim, away, event), 0);

    sim.heal();
    let healed_at = sim.now();
    let caught_up = sim.run_until(300 * SECOND, CHECK, |sim| reported(sim, away, event) == 1);
    println!(
        "the partitioned node reported the event {:?} after the heal",
        sim.now() - healed_at
    );
    assert!(caught_up, "not caught up 300 s after the heal");
    sim.run_for(120 * SECOND);
    for &node in &nodes {
        assert_eq!(reported(&sim, node, event), usize::from(node != nodes[0]));
    }
}

#[test]
fn an_event_fired_on_the_lone_side_reaches_the_rest_after_the_heal() {
    let n = 12;
    let (mut sim, nodes) = converged_cluster(13, n);
    let away = nodes[5];
    let rest: Vec<NodeId> = nodes.iter().copied().filter(|&n| n != away).collect();
    sim.partition(&[&[away]]);
    sim.run_for(SECOND);
    let event = key(9, 9);
    fire(&mut sim, away, event, b"from the island");
    sim.run_for(60 * SECOND);
    assert!(rest.iter().all(|&r| reported(&sim, r, event) == 0));

    sim.heal();
    let healed_at = sim.now();
    let caught_up = sim.run_until(300 * SECOND, CHECK, |sim| {
        rest.iter().all(|&r| reported(sim, r, event) == 1)
    });
    println!(
        "the rest reported the lone node's event {:?} after the heal",
        sim.now() - healed_at
    );
    assert!(caught_up);
    sim.run_for(60 * SECOND);
    assert!(rest.iter().all(|&r| reported(&sim, r, event) == 1));
    assert_eq!(reported(&sim, away, event), 0);
}

#[test]
fn a_restarted_node_with_a_floor_does_not_report_old_events() {
    let n = 8;
    let (mut sim, nodes) = converged_cluster(8, n);
    let event = key(10, 1);
    fire(&mut sim, nodes[0], event, b"old news");
    assert!(sim.run_until(10 * SECOND, CHECK, |sim| {
        nodes[1..].iter().all(|&r| reported(sim, r, event) == 1)
    }));

    // One restarts with the floor its agent saved, one without (a control: the
    // full-state exchange does hand it the event again).
    let (floored, bare) = (nodes[3], nodes[4]);
    for node in [floored, bare] {
        sim.crash(node);
        sim.restart(node);
    }
    sim.act(floored, |m| m.set_event_floor(11));
    sim.join(floored, nodes[0]);
    sim.join(bare, nodes[0]);
    let restarted_at = sim.now();
    assert!(sim.run_until(120 * SECOND, CHECK, |sim| reported(sim, bare, event) == 2));
    println!(
        "without a floor the restarted node got the event again after {:?}",
        sim.now() - restarted_at
    );
    sim.run_for(120 * SECOND);
    assert_eq!(
        reported(&sim, floored, event),
        1,
        "reported before the restart only"
    );
    assert_eq!(sim.node(floored).max_event_ltime(), 10);

    // A new event above the floor still reaches it.
    let fresh = key(11, 2);
    fire(&mut sim, nodes[1], fresh, b"new");
    assert!(sim.run_until(10 * SECOND, CHECK, |sim| reported(sim, floored, fresh) == 1));
}

#[test]
fn oversized_payloads_are_an_error() {
    let mut sim = Sim::new(1);
    let a = sim.add_node("a", MembershipConfig::lan("dc1", Role::Client));
    let result = sim.act(a, |m| {
        m.broadcast_event(key(1, 1), Bytes::from(vec![0; MAX_EVENT_PAYLOAD + 1]))
    });
    assert!(matches!(
        result,
        Err(MembershipError::EventTooLarge { len, max }) if len == MAX_EVENT_PAYLOAD + 1 && max == MAX_EVENT_PAYLOAD
    ));
    sim.act(a, |m| {
        m.broadcast_event(key(1, 1), Bytes::from(vec![0; MAX_EVENT_PAYLOAD]))
    })
    .unwrap();
}
