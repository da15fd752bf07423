//! A deterministic in-memory network for [`Membership`] nodes.
//!
//! One virtual clock and one queue of deliveries (timers and packets) ordered by
//! `(time, sequence)`: the earliest first, and in the order scheduled at equal times, so
//! every node gets its timers in order. Packet loss and latency jitter come from a
//! seeded RNG, per-link settings override the defaults, partitions split the nodes into
//! groups that cannot talk, and a node can crash (nothing more is delivered to or from
//! it and its timers are dropped) and restart with a bumped generation on the same
//! address. The same seed and the same calls give the same run, which
//! [`Sim::trace_hash`] summarises.
//!
//! ```
//! use membership::sim::Sim;
//! use membership::{MemberState, MembershipConfig, Role};
//! use std::time::Duration;
//!
//! let mut sim = Sim::new(7);
//! let nodes: Vec<_> = (0..5)
//!     .map(|i| sim.add_node(&format!("n{i}"), MembershipConfig::lan("dc1", Role::Client)))
//!     .collect();
//! for &node in &nodes[1..] {
//!     sim.join(node, nodes[0]);
//! }
//! let converged = sim.run_until(Duration::from_secs(30), Duration::from_millis(100), |sim| {
//!     nodes.iter().all(|&n| sim.node(n).count(MemberState::Alive) == 5)
//! });
//! assert!(converged);
//! ```

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use crate::member::{ChangeKind, MemberState};
use crate::membership::{Effect, Membership, MembershipTimer};
use crate::{EventKey, MembershipConfig, MembershipError, NodeIdentity};

/// A node of the simulation (its index, in the order added).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub usize);

/// Loss and delay of the packets from one node to another.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Link {
    /// Probability in `[0, 1]` that a packet is lost.
    pub loss: f64,
    /// Fixed delay of every packet.
    pub delay: Duration,
    /// Extra delay drawn uniformly from `[0, jitter]`.
    pub jitter: Duration,
}

impl Default for Link {
    fn default() -> Self {
        Self {
            loss: 0.0,
            delay: Duration::from_millis(1),
            jitter: Duration::from_millis(2),
        }
    }
}

/// One change seen by one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeRecord {
    /// Virtual time of the change.
    pub at: Duration,
    /// What happened.
    pub kind: ChangeKind,
    /// To whom.
    pub name: String,
    /// Its generation.
    pub generation: u64,
    /// Its state after the change.
    pub state: MemberState,
}

/// One user event reported by one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRecord {
    /// Virtual time of the report.
    pub at: Duration,
    /// The event's name.
    pub key: EventKey,
    /// Its payload.
    pub payload: Bytes,
}

/// Counters of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Packets handed to the network.
    pub sent: u64,
    /// Bytes handed to the network.
    pub bytes: u64,
    /// Packets lost, partitioned away, or addressed to a crashed node.
    pub dropped: u64,
    /// Packets a node rejected with an error.
    pub packet_errors: u64,
    /// Timers a node handled with an error.
    pub timer_errors: u64,
    /// Timers and packets processed.
    pub events: u64,
}

struct SimNode {
    name: Arc<str>,
    addr: SocketAddr,
    config: MembershipConfig,
    membership: Membership,
    up: bool,
    /// Bumped at every crash so that deliveries of an earlier run are dropped.
    run: u32,
    group: u32,
    changes: Vec<ChangeRecord>,
    events: Vec<EventRecord>,
}

enum Event {
    Timer {
        node: usize,
        run: u32,
        timer: MembershipTimer,
    },
    Packet {
        from: usize,
        run: u32,
        to: SocketAddr,
        data: Bytes,
    },
}

struct Scheduled {
    at: Duration,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    /// Reversed, so that the max-heap yields the earliest delivery first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// A simulated network of [`Membership`] nodes. See the module documentation.
pub struct Sim {
    now: Duration,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    nodes: Vec<SimNode>,
    by_addr: HashMap<SocketAddr, usize>,
    rng: Xoshiro256PlusPlus,
    default_link: Link,
    links: HashMap<(usize, usize), Link>,
    stats: SimStats,
    trace: u64,
}

impl Sim {
    /// An empty network whose randomness all derives from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            now: Duration::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes: Vec::new(),
            by_addr: HashMap::new(),
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            default_link: Link::default(),
            links: HashMap::new(),
            stats: SimStats::default(),
            trace: FNV_OFFSET,
        }
    }

    /// The link settings of every pair without its own.
    pub fn set_default_link(&mut self, link: Link) {
        self.default_link = checked(link);
    }

    /// The settings of the packets from `from` to `to`.
    pub fn set_link(&mut self, from: NodeId, to: NodeId, link: Link) {
        self.links.insert((from.0, to.0), checked(link));
    }

    /// Adds a node named `name` (generation 1) at an address of its own; it knows no one.
    pub fn add_node(&mut self, name: &str, config: MembershipConfig) -> NodeId {
        let index = self.nodes.len();
        let host = u32::try_from(index + 1).unwrap_or(u32::MAX);
        let ip = Ipv4Addr::from(0x0a00_0000 | (host & 0x00ff_ffff));
        let addr = SocketAddr::from((ip, 7946));
        let membership = self.build(NodeIdentity::new(name, addr, 1), config.clone());
        self.nodes.push(SimNode {
            name: Arc::from(name),
            addr,
            config,
            membership,
            up: true,
            run: 0,
            group: 0,
            changes: Vec::new(),
            events: Vec::new(),
        });
        self.by_addr.insert(addr, index);
        self.drain(index);
        NodeId(index)
    }

    fn build(&mut self, me: NodeIdentity, config: MembershipConfig) -> Membership {
        let seed = self.rng.random::<u64>();
        match Membership::new(me, config, seed) {
            Ok(membership) => membership,
            Err(err) => panic!("a simulated node must start: {err}"),
        }
    }

    /// Every node, in the order added.
    pub fn ids(&self) -> impl Iterator<Item = NodeId> + use<> {
        (0..self.nodes.len()).map(NodeId)
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there is no node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// A node's state machine, to read.
    pub fn node(&self, id: NodeId) -> &Membership {
        &self.nodes[id.0].membership
    }

    /// A node's name.
    pub fn name(&self, id: NodeId) -> &str {
        &self.nodes[id.0].name
    }

    /// A node's address.
    pub fn addr(&self, id: NodeId) -> SocketAddr {
        self.nodes[id.0].addr
    }

    /// Whether a node runs (it has not crashed, or restarted since).
    pub fn is_up(&self, id: NodeId) -> bool {
        self.nodes[id.0].up
    }

    /// The changes a node has seen, in order.
    pub fn changes(&self, id: NodeId) -> &[ChangeRecord] {
        &self.nodes[id.0].changes
    }

    /// The user events a node has reported, in order (across restarts).
    pub fn events(&self, id: NodeId) -> &[EventRecord] {
        &self.nodes[id.0].events
    }

    /// Virtual time since the start.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Counters so far.
    pub fn stats(&self) -> SimStats {
        self.stats
    }

    /// A hash of every change every node saw (when, who, what) and of the counters: two
    /// runs with the same seed and calls give the same value.
    pub fn trace_hash(&self) -> u64 {
        let mut hash = self.trace;
        for value in [
            self.stats.sent,
            self.stats.bytes,
            self.stats.dropped,
            self.stats.events,
        ] {
            hash = fnv(hash, &value.to_le_bytes());
        }
        hash
    }

    /// Runs `command` on a node, then carries out its effects.
    pub fn act<T>(&mut self, id: NodeId, command: impl FnOnce(&mut Membership) -> T) -> T {
        let result = command(&mut self.nodes[id.0].membership);
        self.drain(id.0);
        result
    }

    /// `node` joins through `seed`'s address.
    pub fn join(&mut self, node: NodeId, seed: NodeId) {
        let addr = self.addr(seed);
        if let Err(err) = self.act(node, |m| m.join(addr)) {
            panic!("join failed: {err}");
        }
    }

    /// Stops a node: nothing more is delivered to or from it and its timers are
    /// dropped. Its last state stays readable.
    pub fn crash(&mut self, id: NodeId) {
        let node = &mut self.nodes[id.0];
        node.up = false;
        node.run += 1;
    }

    /// Starts a crashed (or running) node again, same name and address, with the next
    /// generation. It knows no one: join it to a seed.
    pub fn restart(&mut self, id: NodeId) {
        let node = &self.nodes[id.0];
        let me = NodeIdentity::new(&*node.name, node.addr, node.membership.me().generation + 1);
        let config = node.config.clone();
        let membership = self.build(me, config);
        let node = &mut self.nodes[id.0];
        node.membership = membership;
        node.up = true;
        node.run += 1;
        self.drain(id.0);
    }

    /// Splits the network: nodes in different groups cannot talk. Nodes not listed
    /// form one more group.
    pub fn partition(&mut self, groups: &[&[NodeId]]) {
        for node in &mut self.nodes {
            node.group = 0;
        }
        for (index, group) in groups.iter().enumerate() {
            let number = u32::try_from(index + 1).unwrap_or(u32::MAX);
            for id in *group {
                self.nodes[id.0].group = number;
            }
        }
    }

    /// Ends any partition.
    pub fn heal(&mut self) {
        for node in &mut self.nodes {
            node.group = 0;
        }
    }

    /// Runs for `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        self.run_to(end);
        self.now = end;
    }

    /// Runs until `done` holds, checking it every `every` of virtual time, for at most
    /// `limit` from now. Returns whether `done` held; the clock stops at that check.
    pub fn run_until(
        &mut self,
        limit: Duration,
        every: Duration,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> bool {
        let end = self.now + limit;
        loop {
            if done(self) {
                return true;
            }
            if self.now >= end {
                return false;
            }
            let next = (self.now + every).min(end);
            self.run_to(next);
            self.now = next;
        }
    }

    /// Processes every delivery due until `end`, included.
    fn run_to(&mut self, end: Duration) {
        while self.queue.peek().is_some_and(|next| next.at <= end) {
            if let Some(next) = self.queue.pop() {
                self.now = next.at;
                self.deliver(next.event);
            }
        }
    }

    fn deliver(&mut self, event: Event) {
        self.stats.events += 1;
        match event {
            Event::Timer { node, run, timer } => {
                let target = &mut self.nodes[node];
                if !target.up || target.run != run {
                    return;
                }
                if let Err(err) = target.membership.handle_timer(timer) {
                    self.stats.timer_errors += 1;
                    tracing::debug!(node = %target.name, %err, "timer error");
                }
                self.drain(node);
            }
            Event::Packet {
                from,
                run,
                to,
                data,
            } => {
                let Some(&dst) = self.by_addr.get(&to) else {
                    self.stats.dropped += 1;
                    return;
                };
                let source = &self.nodes[from];
                let target = &self.nodes[dst];
                if !source.up || source.run != run || !target.up || source.group != target.group {
                    self.stats.dropped += 1;
                    return;
                }
                let sender = Arc::clone(&source.name);
                let result: Result<(), MembershipError> =
                    self.nodes[dst].membership.handle_data(&data, &sender);
                if let Err(err) = result {
                    self.stats.packet_errors += 1;
                    tracing::debug!(node = %self.nodes[dst].name, %err, "packet error");
                }
                self.drain(dst);
            }
        }
    }

    /// Carries out a node's effects.
    fn drain(&mut self, index: usize) {
        while let Some(effect) = self.nodes[index].membership.poll_effect() {
            match effect {
                Effect::Send { to, data } => self.transmit(index, to, data),
                Effect::Schedule { timer, after } => {
                    let run = self.nodes[index].run;
                    self.push(
                        after,
                        Event::Timer {
                            node: index,
                            run,
                            timer,
                        },
                    );
                }
                Effect::Changed(change) => {
                    let record = ChangeRecord {
                        at: self.now,
                        kind: change.kind,
                        name: change.member.name,
                        generation: change.member.generation,
                        state: change.member.state,
                    };
                    let mut hash = fnv(self.trace, &(self.now.as_nanos() as u64).to_le_bytes());
                    hash = fnv(hash, &(index as u64).to_le_bytes());
                    hash = fnv(hash, format!("{:?}", record.kind).as_bytes());
                    hash = fnv(hash, record.name.as_bytes());
                    hash = fnv(hash, &record.generation.to_le_bytes());
                    self.trace = fnv(hash, record.state.as_str().as_bytes());
                    self.nodes[index].changes.push(record);
                }
                Effect::Event { key, payload } => {
                    let mut hash = fnv(self.trace, &(self.now.as_nanos() as u64).to_le_bytes());
                    hash = fnv(hash, &(index as u64).to_le_bytes());
                    hash = fnv(hash, &key.ltime.to_le_bytes());
                    self.trace = fnv(hash, &key.id);
                    self.nodes[index].events.push(EventRecord {
                        at: self.now,
                        key,
                        payload,
                    });
                }
            }
        }
    }

    fn transmit(&mut self, from: usize, to: SocketAddr, data: Bytes) {
        self.stats.sent += 1;
        self.stats.bytes += data.len() as u64;
        let link = self
            .by_addr
            .get(&to)
            .and_then(|&dst| self.links.get(&(from, dst)))
            .copied()
            .unwrap_or(self.default_link);
        if link.loss > 0.0 && self.rng.random_bool(link.loss) {
            self.stats.dropped += 1;
            return;
        }
        let jitter = u64::try_from(link.jitter.as_nanos()).unwrap_or(u64::MAX);
        let extra = if jitter == 0 {
            0
        } else {
            self.rng.random_range(0..=jitter)
        };
        let run = self.nodes[from].run;
        self.push(
            link.delay + Duration::from_nanos(extra),
            Event::Packet {
                from,
                run,
                to,
                data,
            },
        );
    }

    fn push(&mut self, after: Duration, event: Event) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at: self.now + after,
            seq: self.seq,
            event,
        });
    }
}

fn checked(link: Link) -> Link {
    assert!(
        (0.0..=1.0).contains(&link.loss),
        "loss must be a probability"
    );
    link
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_come_earliest_first_then_in_the_order_scheduled() {
        let mut queue = BinaryHeap::new();
        let at = |ms| Duration::from_millis(ms);
        for (seq, ms) in [(1, 30), (2, 10), (3, 30), (4, 10), (5, 20)] {
            queue.push(Scheduled {
                at: at(ms),
                seq,
                event: Event::Packet {
                    from: 0,
                    run: 0,
                    to: SocketAddr::from(([10, 0, 0, 1], 1)),
                    data: Bytes::new(),
                },
            });
        }
        let order: Vec<u64> = std::iter::from_fn(|| queue.pop().map(|s| s.seq)).collect();
        assert_eq!(order, [2, 4, 5, 1, 3]);
    }

    #[test]
    fn partitions_and_crashes_stop_packets() {
        let config = || MembershipConfig::lan("dc1", crate::Role::Client);
        let mut sim = Sim::new(1);
        let a = sim.add_node("a", config());
        let b = sim.add_node("b", config());
        let c = sim.add_node("c", config());
        sim.partition(&[&[a], &[b, c]]);
        sim.join(b, a);
        sim.join(c, b);
        sim.run_for(Duration::from_secs(5));
        assert_eq!(sim.node(a).members().len(), 1);
        assert_eq!(sim.node(b).members().len(), 2);
        assert!(sim.stats().dropped > 0);

        sim.heal();
        sim.crash(c);
        sim.join(a, b);
        sim.run_for(Duration::from_secs(2));
        assert_eq!(
            sim.node(a).member("b").map(|m| m.state),
            Some(MemberState::Alive)
        );
        assert!(!sim.is_up(c));
        let dropped = sim.stats().dropped;
        sim.run_for(Duration::from_secs(2));
        assert!(
            sim.stats().dropped > dropped,
            "packets to the crashed node are dropped"
        );
    }
}
