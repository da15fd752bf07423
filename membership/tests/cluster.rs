#![allow(clippy::unwrap_used)]
use membership::sim::{NodeId, Sim};
use membership::{MemberState, MembershipConfig, Role};
use std::time::{Duration, Instant};

fn cluster(sim: &mut Sim, n: usize) -> Vec<NodeId> {
    (0..n)
        .map(|i| {
            let role = if i % 10 == 0 {
                Role::Server
            } else {
                Role::Client
            };
            sim.add_node(&format!("node-{i:04}"), MembershipConfig::lan("dc1", role))
        })
        .collect()
}

#[test]
fn experiment() {
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let wall = Instant::now();
    let mut sim = Sim::new(1);
    let nodes = cluster(&mut sim, n);
    for &node in &nodes[1..] {
        sim.join(node, nodes[0]);
    }
    let mut last = 0;
    let ok = sim.run_until(
        Duration::from_secs(120),
        Duration::from_millis(500),
        |sim| {
            let min = nodes
                .iter()
                .map(|&id| sim.node(id).count(MemberState::Alive))
                .min()
                .unwrap();
            let s = (sim.now().as_millis() / 1000) as usize;
            if s != last {
                last = s;
                let worst = nodes
                    .iter()
                    .min_by_key(|&&id| sim.node(id).count(MemberState::Alive))
                    .unwrap();
                let fm: usize = nodes
                    .iter()
                    .map(|&id| sim.node(id).debug_counts().0)
                    .min()
                    .unwrap();
                eprintln!(
                    "t={:?} min_alive={min} worst={:?} min_foca={fm} stats={:?} wall={:?}",
                    sim.now(),
                    sim.node(*worst).debug_counts(),
                    sim.stats(),
                    wall.elapsed()
                );
            }
            min == n
        },
    );
    eprintln!(
        "converged={ok} at {:?} wall={:?} stats={:?}",
        sim.now(),
        wall.elapsed(),
        sim.stats()
    );
}
