//! Clusters on the simulated network: convergence, failure detection, partitions,
//! restarts, leaves, tags and reaping. Every test is deterministic (seeded) and prints
//! the virtual times it measured.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use membership::sim::{Link, NodeId, Sim};
use membership::{BUILD_TAG, ChangeKind, MemberState, MembershipConfig, MembershipError, Role};

const SECOND: Duration = Duration::from_secs(1);
const CHECK: Duration = Duration::from_millis(100);

fn role_of(index: usize) -> Role {
    if index.is_multiple_of(10) {
        Role::Server
    } else {
        Role::Client
    }
}

fn rack_of(index: usize) -> String {
    format!("r{}", index % 4)
}

/// `n` nodes named `node-NNN` (every tenth a server, with a `rack` tag) in `dc1`.
fn add_nodes(sim: &mut Sim, n: usize, tune: impl Fn(&mut MembershipConfig)) -> Vec<NodeId> {
    (0..n)
        .map(|i| {
            let mut config = MembershipConfig::lan("dc1", role_of(i));
            config.tags.insert("rack".into(), rack_of(i));
            tune(&mut config);
            sim.add_node(&format!("node-{i:03}"), config)
        })
        .collect()
}

/// Every node joins through the first one's address.
fn join_all(sim: &mut Sim, nodes: &[NodeId]) {
    for &node in &nodes[1..] {
        sim.join(node, nodes[0]);
    }
}

fn all_see(sim: &Sim, observers: &[NodeId], state: MemberState, count: usize) -> bool {
    observers.iter().all(|&n| sim.node(n).count(state) == count)
}

/// Starts `n` nodes and waits until every one lists all as alive.
fn converged_cluster(
    seed: u64,
    n: usize,
    tune: impl Fn(&mut MembershipConfig),
) -> (Sim, Vec<NodeId>) {
    let mut sim = Sim::new(seed);
    let nodes = add_nodes(&mut sim, n, tune);
    join_all(&mut sim, &nodes);
    assert!(
        sim.run_until(30 * SECOND, CHECK, |sim| all_see(
            sim,
            &nodes,
            MemberState::Alive,
            n
        )),
        "{n} nodes did not converge"
    );
    (sim, nodes)
}

fn state_seen(sim: &Sim, observer: NodeId, subject: NodeId) -> Option<MemberState> {
    sim.node(observer)
        .member(sim.name(subject))
        .map(|m| m.state)
}

fn others(nodes: &[NodeId], except: &[NodeId]) -> Vec<NodeId> {
    nodes
        .iter()
        .copied()
        .filter(|n| !except.contains(n))
        .collect()
}

/// How many times any node saw a member other than `except` fail or become suspect.
fn false_alarms(sim: &Sim, nodes: &[NodeId], except: &[NodeId]) -> (usize, usize) {
    let names: Vec<&str> = except.iter().map(|&n| sim.name(n)).collect();
    let mut failed = 0;
    let mut suspect = 0;
    for &node in nodes {
        for change in sim.changes(node) {
            if names.contains(&change.name.as_str()) {
                continue;
            }
            match change.kind {
                ChangeKind::Failed => failed += 1,
                ChangeKind::Suspect => suspect += 1,
                _ => {}
            }
        }
    }
    (failed, suspect)
}

#[test]
fn five_hundred_nodes_converge_through_one_seed() {
    let n = 500;
    let mut sim = Sim::new(500);
    let nodes = add_nodes(&mut sim, n, |_| {});
    join_all(&mut sim, &nodes);
    let converged = sim.run_until(30 * SECOND, CHECK, |sim| {
        all_see(sim, &nodes, MemberState::Alive, n)
    });
    assert!(converged, "not converged after 30 s");
    println!(
        "{n} nodes converged in {:?} (virtual), {:?}",
        sim.now(),
        sim.stats()
    );

    // Every node lists every node alive, with its role, datacenter and tags.
    for &observer in &nodes {
        let members = sim.node(observer).members();
        assert_eq!(members.len(), n);
        for (i, member) in members.iter().enumerate() {
            assert_eq!(member.name, format!("node-{i:03}"));
            assert_eq!(member.state, MemberState::Alive);
            assert_eq!(member.role, role_of(i));
            assert_eq!(member.dc, "dc1");
            assert_eq!(member.tags["role"], role_of(i).to_string());
            assert_eq!(member.tags["dc"], "dc1");
            assert_eq!(member.tags["rack"], rack_of(i));
            assert_eq!(member.tags[BUILD_TAG], env!("CARGO_PKG_VERSION"));
            assert_eq!(member.addr, sim.addr(nodes[i]));
        }
    }
    // The presets followed the cluster size.
    let preset = MembershipConfig::foca_preset(membership::Pool::Lan, 500);
    let applied = sim.node(nodes[1]).foca_config();
    assert_eq!(applied.max_transmissions, preset.max_transmissions);
    assert_eq!(applied.suspect_to_down_after, preset.suspect_to_down_after);
}

/// Nodes join one after another, so that the early ones learn of the later ones
/// through gossip rather than from the seed's full state.
fn staggered_join(n: usize, gap: Duration, seed: u64) {
    let mut sim = Sim::new(seed);
    let nodes = add_nodes(&mut sim, n, |_| {});
    for &node in &nodes[1..] {
        sim.join(node, nodes[0]);
        sim.run_for(gap);
    }
    let last_join = sim.now();
    let converged = sim.run_until(300 * SECOND, CHECK, |sim| {
        all_see(sim, &nodes, MemberState::Alive, n)
    });
    println!(
        "{n} nodes joining every {gap:?} converged {:?} after the last join",
        sim.now() - last_join
    );
    assert!(converged, "not converged");
    for &observer in &nodes {
        for (i, member) in sim.node(observer).members().iter().enumerate() {
            assert_eq!(
                (member.role, &member.tags["rack"]),
                (role_of(i), &rack_of(i))
            );
        }
    }
}

#[test]
fn nodes_joining_one_after_another_converge() {
    staggered_join(100, Duration::from_millis(50), 101);
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "a minute in a debug build: run with --release"
)]
fn five_hundred_nodes_joining_one_after_another_converge() {
    staggered_join(500, Duration::from_millis(10), 501);
}

#[test]
fn crashed_node_is_detected_by_everyone_without_false_alarms() {
    let n = 100;
    let (mut sim, nodes) = converged_cluster(100, n, |_| {});
    // A quiet spell: nothing may be suspected on a loss-free network.
    sim.run_for(20 * SECOND);

    let victim = nodes[37];
    let crashed_at = sim.now();
    sim.crash(victim);
    let watchers = others(&nodes, &[victim]);
    let detected = sim.run_until(60 * SECOND, CHECK, |sim| {
        watchers
            .iter()
            .all(|&w| state_seen(sim, w, victim) == Some(MemberState::Failed))
    });
    let took = sim.now() - crashed_at;
    let config = sim.node(nodes[0]).foca_config().clone();
    // Someone probes it within a couple of periods, the probe fails after one more,
    // the suspicion runs out, and the news spreads in a few gossip rounds.
    let bound = config.probe_period * 3 + config.suspect_to_down_after + 3 * SECOND;
    println!(
        "crash of 1 in {n} detected by all in {took:?} (virtual; bound {bound:?}, suspicion {:?})",
        config.suspect_to_down_after
    );
    assert!(detected, "not every node saw the crash after 60 s");
    assert!(
        took <= bound,
        "detection took {took:?}, more than {bound:?}"
    );
    assert_eq!(false_alarms(&sim, &nodes, &[victim]), (0, 0));
    let victim_name = sim.name(victim).to_owned();
    let suspected_first = watchers.iter().any(|&w| {
        let kinds: Vec<ChangeKind> = sim
            .changes(w)
            .iter()
            .filter(|c| c.name == victim_name)
            .map(|c| c.kind)
            .collect();
        kinds.ends_with(&[ChangeKind::Suspect, ChangeKind::Failed])
    });
    assert!(suspected_first, "nobody reported the suspicion");
    for &w in &watchers {
        assert_eq!(sim.node(w).count(MemberState::Alive), n - 1);
    }
}

#[test]
fn partition_heals_and_everyone_is_alive_again() {
    let n = 16;
    let (mut sim, nodes) = converged_cluster(16, n, |_| {});
    let (left, right) = nodes.split_at(n / 2);
    sim.partition(&[left, right]);
    let split_at = sim.now();
    let split = sim.run_until(120 * SECOND, CHECK, |sim| {
        all_see(sim, &nodes, MemberState::Failed, n / 2)
            && all_see(sim, &nodes, MemberState::Alive, n / 2)
    });
    assert!(split, "the halves did not see each other fail");
    println!(
        "halves saw each other failed after {:?}",
        sim.now() - split_at
    );
    // Let every pending suspicion run out, so that healing owes nothing to the
    // courtesy messages sent when a member is declared down.
    sim.run_for(30 * SECOND);

    sim.heal();
    let healed_at = sim.now();
    let healed = sim.run_until(600 * SECOND, CHECK, |sim| {
        all_see(sim, &nodes, MemberState::Alive, n)
    });
    println!(
        "healed: all {n} alive everywhere {:?} after the partition ended",
        sim.now() - healed_at
    );
    assert!(healed, "not healed after 600 s");
    for &node in &nodes {
        let members = sim.node(node).members();
        assert_eq!(members.len(), n);
        assert!(
            members
                .iter()
                .all(|m| m.role == role_of(m.name[5..].parse().unwrap()))
        );
    }
}

#[test]
fn restarted_node_replaces_its_old_entry() {
    let n = 30;
    let (mut sim, nodes) = converged_cluster(30, n, |_| {});
    let watchers = others(&nodes, &[nodes[7], nodes[8]]);

    // Restarted after everyone saw it fail.
    let slow = nodes[7];
    sim.crash(slow);
    assert!(sim.run_until(60 * SECOND, CHECK, |sim| {
        watchers
            .iter()
            .all(|&w| state_seen(sim, w, slow) == Some(MemberState::Failed))
    }));
    sim.restart(slow);
    sim.join(slow, nodes[0]);

    // Restarted at once, before anyone noticed.
    let fast = nodes[8];
    sim.crash(fast);
    sim.restart(fast);
    sim.join(fast, nodes[0]);

    let restarted_at = sim.now();
    let replaced = sim.run_until(60 * SECOND, CHECK, |sim| {
        nodes.iter().all(|&w| {
            [slow, fast].iter().all(|&s| {
                sim.node(w)
                    .member(sim.name(s))
                    .is_some_and(|m| m.state == MemberState::Alive && m.generation == 2)
            })
        }) && all_see(sim, &nodes, MemberState::Alive, n)
    });
    println!(
        "restarted nodes replaced everywhere after {:?}",
        sim.now() - restarted_at
    );
    assert!(replaced);
    for &w in &nodes {
        let members = sim.node(w).members();
        assert_eq!(members.len(), n, "a duplicate or a missing member");
        let mut names: Vec<_> = members.iter().map(|m| m.name.clone()).collect();
        names.dedup();
        assert_eq!(names.len(), n);
    }
    // The fast restart was never reported as a failure.
    let fast_name = sim.name(fast).to_owned();
    for &w in &watchers {
        assert!(
            !sim.changes(w)
                .iter()
                .any(|c| c.name == fast_name && c.kind == ChangeKind::Failed)
        );
    }
}

#[test]
fn graceful_leave_is_left_not_failed() {
    let n = 30;
    let (mut sim, nodes) = converged_cluster(31, n, |_| {});
    let leaver = nodes[5];
    let name = sim.name(leaver).to_owned();
    sim.act(leaver, |m| m.leave()).unwrap();
    let watchers = others(&nodes, &[leaver]);
    let left = sim.run_until(30 * SECOND, CHECK, |sim| {
        watchers
            .iter()
            .all(|&w| state_seen(sim, w, leaver) == Some(MemberState::Left))
    });
    println!("a leave was seen by all after {:?}", sim.now());
    assert!(left);
    assert_eq!(
        sim.node(leaver).member(&name).unwrap().state,
        MemberState::Left
    );
    assert_eq!(
        sim.changes(leaver)
            .last()
            .map(|c| (c.kind, c.name.as_str())),
        Some((ChangeKind::Left, name.as_str()))
    );
    for &w in &watchers {
        let kinds: Vec<ChangeKind> = sim
            .changes(w)
            .iter()
            .filter(|c| c.name == name)
            .map(|c| c.kind)
            .collect();
        assert_eq!(
            kinds[kinds.len() - 2..],
            [ChangeKind::Leaving, ChangeKind::Left]
        );
        assert!(!kinds.contains(&ChangeKind::Failed));
        assert_eq!(sim.node(w).count(MemberState::Alive), n - 1);
    }
    // Leaving is final for this instance.
    assert!(matches!(
        sim.act(leaver, |m| m.join(sim_addr(0))),
        Err(MembershipError::Left)
    ));
}

fn sim_addr(index: u8) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([10, 0, 0, index + 1], 7946))
}

#[test]
fn force_leave_turns_a_failed_member_into_left_everywhere() {
    let n = 20;
    let (mut sim, nodes) = converged_cluster(20, n, |_| {});
    let victim = nodes[3];
    let name = sim.name(victim).to_owned();
    sim.crash(victim);
    let watchers = others(&nodes, &[victim]);
    assert!(sim.run_until(60 * SECOND, CHECK, |sim| {
        watchers
            .iter()
            .all(|&w| state_seen(sim, w, victim) == Some(MemberState::Failed))
    }));

    assert!(!sim.act(nodes[0], |m| m.force_leave("nobody")).unwrap());
    let alive = sim.name(nodes[1]).to_owned();
    assert!(matches!(
        sim.act(nodes[0], |m| m.force_leave(&alive)),
        Err(MembershipError::NotFailed { .. })
    ));
    assert!(sim.act(nodes[0], |m| m.force_leave(&name)).unwrap());
    assert_eq!(state_seen(&sim, nodes[0], victim), Some(MemberState::Left));
    let spread = sim.run_until(30 * SECOND, CHECK, |sim| {
        watchers
            .iter()
            .all(|&w| state_seen(sim, w, victim) == Some(MemberState::Left))
    });
    assert!(spread, "the forced leave did not reach everyone");
}

#[test]
fn tag_changes_reach_everyone_and_stale_ones_lose() {
    let n = 50;
    let (mut sim, nodes) = converged_cluster(50, n, |_| {});
    let owner = nodes[9];
    let name = sim.name(owner).to_owned();
    for version in ["v2", "v3"] {
        let tags = BTreeMap::from([
            ("rack".to_owned(), rack_of(9)),
            ("version".to_owned(), version.to_owned()),
        ]);
        sim.act(owner, |m| m.set_tags(tags)).unwrap();
        sim.run_for(Duration::from_millis(50));
    }
    let changed_at = sim.now();
    let sees_v3 = |sim: &Sim| {
        nodes.iter().all(|&w| {
            sim.node(w)
                .member(&name)
                .is_some_and(|m| m.tags.get("version").map(String::as_str) == Some("v3"))
        })
    };
    assert!(sim.run_until(30 * SECOND, CHECK, sees_v3));
    println!(
        "a tag change reached all {n} after {:?}",
        sim.now() - changed_at
    );
    sim.run_for(30 * SECOND);
    assert!(sees_v3(&sim), "a stale tag broadcast won somewhere");
    let member = sim.node(nodes[0]).member(&name).unwrap();
    assert_eq!(member.tags["role"], "client");
    assert_eq!(member.tags["rack"], rack_of(9));
    assert!(
        !member.tags.contains_key(BUILD_TAG),
        "set_tags replaces the tags"
    );

    let too_big = BTreeMap::from([("blob".to_owned(), "x".repeat(600))]);
    assert!(matches!(
        sim.act(owner, |m| m.set_tags(too_big)),
        Err(MembershipError::TagsTooLarge { .. })
    ));
}

#[test]
fn failed_and_departed_members_are_reaped() {
    let n = 10;
    let (mut sim, nodes) = converged_cluster(10, n, |config| {
        config.reap_failed_after = 20 * SECOND;
        config.reap_left_after = 40 * SECOND;
    });
    let crashed = nodes[2];
    let leaver = nodes[3];
    let watchers = others(&nodes, &[crashed, leaver]);
    sim.crash(crashed);
    sim.act(leaver, |m| m.leave()).unwrap();
    assert!(sim.run_until(60 * SECOND, CHECK, |sim| {
        watchers.iter().all(|&w| {
            state_seen(sim, w, crashed) == Some(MemberState::Failed)
                && state_seen(sim, w, leaver) == Some(MemberState::Left)
        })
    }));

    let failed_name = sim.name(crashed).to_owned();
    let left_name = sim.name(leaver).to_owned();
    let since = |sim: &Sim, w: NodeId, name: &str, kind: ChangeKind| {
        sim.changes(w)
            .iter()
            .rev()
            .find(|c| c.name == name && c.kind == kind)
            .map(|c| sim.now() - c.at)
    };
    assert!(sim.run_until(60 * SECOND, CHECK, |sim| {
        watchers
            .iter()
            .all(|&w| sim.node(w).member(sim.name(crashed)).is_none())
    }));
    for &w in &watchers {
        let reaped = since(&sim, w, &failed_name, ChangeKind::Reaped).unwrap();
        let failed = since(&sim, w, &failed_name, ChangeKind::Failed).unwrap();
        assert_eq!(
            failed - reaped,
            20 * SECOND,
            "reaped exactly 20 s after it failed"
        );
        assert!(
            sim.node(w).member(&left_name).is_some(),
            "left members stay longer"
        );
    }
    assert!(sim.run_until(60 * SECOND, CHECK, |sim| {
        watchers
            .iter()
            .all(|&w| sim.node(w).member(sim.name(leaver)).is_none())
    }));
    for &w in &watchers {
        let reaped = since(&sim, w, &left_name, ChangeKind::Reaped).unwrap();
        let left = since(&sim, w, &left_name, ChangeKind::Left).unwrap();
        assert_eq!(left - reaped, 40 * SECOND);
        assert_eq!(sim.node(w).members().len(), n - 2);
    }
}

#[test]
fn wan_pool_converges_and_detects_a_failure() {
    let mut sim = Sim::new(5);
    let nodes: Vec<NodeId> = (0..6)
        .map(|i| {
            let dc = format!("dc{}", i % 3);
            let config = MembershipConfig::wan(&dc, Role::Server);
            sim.add_node(&format!("server-{i}.{dc}"), config)
        })
        .collect();
    sim.set_default_link(Link {
        delay: Duration::from_millis(40),
        jitter: Duration::from_millis(20),
        ..Link::default()
    });
    join_all(&mut sim, &nodes);
    assert!(sim.run_until(30 * SECOND, CHECK, |sim| all_see(
        sim,
        &nodes,
        MemberState::Alive,
        6
    )));
    let member = sim.node(nodes[0]).member("server-4.dc1").unwrap();
    assert_eq!((member.dc.as_str(), member.role), ("dc1", Role::Server));

    sim.crash(nodes[5]);
    let crashed_at = sim.now();
    let watchers = &nodes[..5];
    assert!(sim.run_until(300 * SECOND, SECOND, |sim| {
        all_see(sim, watchers, MemberState::Failed, 1)
    }));
    let took = sim.now() - crashed_at;
    let config = sim.node(nodes[0]).foca_config();
    println!(
        "WAN: crash detected by all in {took:?} (suspicion {:?})",
        config.suspect_to_down_after
    );
    assert!(took <= config.probe_period * 4 + config.suspect_to_down_after + 10 * SECOND);
}

/// A run with 5% loss, jitter, a crash, a restart, a leave and a tag change; checks
/// that every node ends with the right view, and returns the trace.
fn eventful_run(seed: u64) -> u64 {
    let n = 40;
    let mut sim = Sim::new(seed);
    sim.set_default_link(Link {
        loss: 0.05,
        delay: Duration::from_millis(2),
        jitter: Duration::from_millis(8),
    });
    let nodes = add_nodes(&mut sim, n, |_| {});
    join_all(&mut sim, &nodes);
    assert!(sim.run_until(30 * SECOND, CHECK, |sim| all_see(
        sim,
        &nodes,
        MemberState::Alive,
        n
    )));
    let (crashed, leaver, tagged) = (nodes[4], nodes[5], nodes[6]);
    sim.crash(crashed);
    sim.act(leaver, |m| m.leave()).unwrap();
    let tags = BTreeMap::from([("rack".to_owned(), "moved".to_owned())]);
    sim.act(tagged, |m| m.set_tags(tags)).unwrap();
    sim.run_for(20 * SECOND);
    sim.restart(crashed);
    sim.join(crashed, nodes[0]);
    let running = others(&nodes, &[leaver]);
    let settled = sim.run_until(60 * SECOND, CHECK, |sim| {
        running.iter().all(|&w| {
            let node = sim.node(w);
            let restarted = node.member(sim.name(crashed));
            // The restarted node came back after the leave: it never knew the leaver.
            let leaver_seen = if w == crashed {
                None
            } else {
                Some(MemberState::Left)
            };
            node.count(MemberState::Alive) == n - 1
                && node.member(sim.name(leaver)).map(|m| m.state) == leaver_seen
                && node.member(sim.name(tagged)).unwrap().tags["rack"] == "moved"
                && restarted.is_some_and(|m| m.generation == 2)
        })
    });
    assert!(settled, "with 5% loss the views did not settle");
    sim.trace_hash()
}

#[test]
fn same_seed_same_run() {
    let first = eventful_run(77);
    assert_eq!(first, eventful_run(77));
    assert_ne!(first, eventful_run(78));
}
