//! The state machine the agent drives: foca plus the member table, fed packets and
//! timers, handing back effects.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use foca::{Codec, Foca, OwnedNotification, PostcardCodec};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use crate::config::{MAX_INFO_SIZE, MAX_PACKET_SIZE, MembershipConfig};
use crate::error::MembershipError;
use crate::event::{EventItem, EventKey, MAX_EVENT_PAYLOAD};
use crate::identity::{NodeIdentity, Peer};
use crate::lock;
use crate::member::{Member, MemberChange, MemberState};
use crate::table::{InfoHandler, Origin, Table};
use crate::wire::{self, Broadcast, MemberInfo, SyncEntry, SyncMessage};

type Swim = Foca<Peer, PostcardCodec, Xoshiro256PlusPlus, InfoHandler>;

/// Most info requests sent per tick.
const PULLS_PER_TICK: usize = 32;
/// Most seed addresses remembered between a join and foca connecting.
const MAX_SEEDS: usize = 16;

/// What the driver must do. Drain them after every call that takes `&mut self`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send a packet to `to`. Loss is tolerated; a packet larger than a datagram may
    /// travel on a stream.
    Send {
        /// The node's gossip address.
        to: SocketAddr,
        /// At most [`MAX_PACKET_SIZE`] bytes.
        data: Bytes,
    },
    /// Hand `timer` back to [`Membership::handle_timer`] after `after`. Timers must all
    /// be delivered, in the order of their deadlines (ties in the order scheduled).
    Schedule {
        /// The timer.
        timer: MembershipTimer,
        /// Its delay from now.
        after: Duration,
    },
    /// A member changed.
    Changed(MemberChange),
    /// A user event fired by another member arrived for the first time. Each key is
    /// reported once (none below the floor, see [`Membership::set_event_floor`]); the
    /// node that fired an event gets no effect for it. Witness `key.ltime` in the
    /// application's Lamport clock.
    Event {
        /// The event's name.
        key: EventKey,
        /// Its payload, as fired.
        payload: Bytes,
    },
}

/// A timer of [`Membership`]: opaque, handed back as is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipTimer(TimerKind);

#[derive(Clone, Debug, PartialEq, Eq)]
enum TimerKind {
    /// One of foca's.
    Swim(foca::Timer<Peer>),
    /// Once per probe period: suspicion, missing infos, anti-entropy, presets.
    Tick,
    /// Forget a failed or departed member.
    Reap { name: String, epoch: u64 },
    /// The leave intent had time to spread: stop gossiping.
    Leave,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    Leaving,
    Left,
}

/// foca's [`foca::Runtime`]: records what foca asks for, in order.
#[derive(Default)]
struct Outbox {
    events: Vec<RuntimeEvent>,
}

enum RuntimeEvent {
    Send(SocketAddr, Bytes),
    Timer(foca::Timer<Peer>, Duration),
    Notify(OwnedNotification<Peer>),
}

impl foca::Runtime<Peer> for Outbox {
    fn notify(&mut self, notification: foca::Notification<'_, Peer>) {
        self.events
            .push(RuntimeEvent::Notify(notification.to_owned()));
    }

    fn send_to(&mut self, to: Peer, data: &[u8]) {
        let mut packet = BytesMut::with_capacity(data.len() + 1);
        packet.put_u8(wire::KIND_GOSSIP);
        packet.put_slice(data);
        self.events
            .push(RuntimeEvent::Send(to.socket_addr(), packet.freeze()));
    }

    fn submit_after(&mut self, event: foca::Timer<Peer>, after: Duration) {
        self.events.push(RuntimeEvent::Timer(event, after));
    }
}

/// Membership of one pool (LAN or WAN) for one node.
///
/// Inputs are [`Membership::handle_data`], [`Membership::handle_timer`] and the
/// commands ([`Membership::join`], [`Membership::leave`], [`Membership::force_leave`],
/// [`Membership::set_tags`], [`Membership::broadcast_event`]); after each, drain [`Membership::poll_effect`] and carry the
/// effects out. Getters read the member table. Nothing here reads a clock or the OS's
/// randomness: time passes only through timers, and randomness comes from the seed.
pub struct Membership {
    me: NodeIdentity,
    swim: Swim,
    outbox: Outbox,
    table: Arc<Mutex<Table>>,
    effects: VecDeque<Effect>,
    rng: Xoshiro256PlusPlus,
    config: MembershipConfig,
    /// The cluster size the current foca settings were derived from.
    applied_size: u32,
    info_version: u64,
    phase: Phase,
    ticks: u64,
    /// Addresses joined through, asked for the full state once foca connects.
    seeds: Vec<SocketAddr>,
    /// foca connected since the last look: pull the full state.
    connected: bool,
    /// The tick of the next full-state pull, and the gap after it.
    next_pull: u64,
    pull_gap: u64,
    /// The last full-state reply, valid while the table's revision is unchanged.
    full_reply: Option<(u64, Vec<Bytes>)>,
}

impl Membership {
    /// A node that knows no one yet. The first effect schedules the periodic tick;
    /// foca starts probing once [`Membership::join`] (or an incoming announce) connects
    /// it.
    pub fn new(
        me: NodeIdentity,
        config: MembershipConfig,
        seed: u64,
    ) -> Result<Self, MembershipError> {
        if me.name.is_empty() {
            return Err(MembershipError::InvalidIdentity("the name is empty"));
        }
        if config.foca.max_packet_size.get() >= MAX_PACKET_SIZE {
            return Err(MembershipError::InvalidConfig(
                "foca's max_packet_size must leave room for the kind byte",
            ));
        }
        let info = MemberInfo {
            name: me.name.clone(),
            generation: me.generation,
            version: 1,
            role: config.role,
            dc: config.dc.clone(),
            tags: config.announced_tags(),
        };
        let info_bytes = encode_info(&info)?;
        let table = Arc::new(Mutex::new(Table::new(
            me.clone(),
            info,
            config.reap_failed_after,
            config.reap_left_after,
        )));
        let handler = InfoHandler {
            table: Arc::clone(&table),
        };
        let mut swim = Foca::with_custom_broadcast(
            Peer::from(&me),
            config.foca.clone(),
            Xoshiro256PlusPlus::seed_from_u64(seed),
            PostcardCodec,
            handler,
        );
        swim.add_broadcast(&info_bytes)?;
        let mut membership = Self {
            me,
            swim,
            outbox: Outbox::default(),
            table,
            effects: VecDeque::new(),
            rng: Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15),
            applied_size: 0,
            config,
            info_version: 1,
            phase: Phase::Running,
            ticks: 0,
            seeds: Vec::new(),
            connected: false,
            next_pull: 0,
            pull_gap: 1,
            full_reply: None,
        };
        membership.schedule(TimerKind::Tick, membership.config.foca.probe_period);
        membership.rescale();
        Ok(membership)
    }

    // ----- getters -----

    /// This node's identity (its generation grows when it rejoins after being declared
    /// down: persist it).
    pub fn me(&self) -> &NodeIdentity {
        &self.me
    }

    /// Every listed member, this node included, sorted by name. A member is listed once
    /// its role, datacenter and tags have arrived.
    pub fn members(&self) -> Vec<Member> {
        lock(&self.table).members()
    }

    /// One member by name (this node included).
    pub fn member(&self, name: &str) -> Option<Member> {
        lock(&self.table).member(name)
    }

    /// How many listed members are in `state`, this node included.
    pub fn count(&self, state: MemberState) -> usize {
        lock(&self.table).count(state)
    }

    /// Addresses to save (in `<data-dir>/members`) and to join again at restart: every
    /// member alive or suspect, this node excluded.
    pub fn rejoin_list(&self) -> Vec<SocketAddr> {
        lock(&self.table).live_addrs()
    }

    /// The foca settings in force (they follow the cluster size).
    pub fn foca_config(&self) -> &foca::Config {
        &self.config.foca
    }

    /// The largest Lamport time of any user event received or fired, stale or not (0
    /// if none): the application's clock should witness it.
    pub fn max_event_ltime(&self) -> u64 {
        lock(&self.table).events.max_ltime()
    }

    // ----- outputs -----

    /// The next effect, in order.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// All pending effects, in order.
    pub fn drain_effects(&mut self) -> impl Iterator<Item = Effect> + '_ {
        self.effects.drain(..)
    }

    // ----- inputs -----

    /// A packet from the node the connection is authenticated as (`sender`: its node
    /// name on the LAN, `<node>.<dc>` on the WAN). A packet whose claimed sender is
    /// someone else is dropped with [`MembershipError::Spoofed`] before anything of it
    /// is applied.
    pub fn handle_data(&mut self, data: &[u8], sender: &str) -> Result<(), MembershipError> {
        let (&kind, body) = data.split_first().ok_or(MembershipError::Empty)?;
        if data.len() > MAX_PACKET_SIZE {
            return Err(MembershipError::TooLarge {
                len: data.len(),
                max: MAX_PACKET_SIZE,
            });
        }
        if self.phase == Phase::Left {
            return Ok(());
        }
        match kind {
            wire::KIND_GOSSIP => {
                let header: foca::Header<Peer> = PostcardCodec
                    .decode_header(body)
                    .map_err(MembershipError::Malformed)?;
                check_sender(header.src.name(), sender)?;
                let result = self.swim.handle_data(body, &mut self.outbox);
                self.after_swim();
                Ok(result?)
            }
            wire::KIND_REQUEST | wire::KIND_REPLY | wire::KIND_EVENTS => {
                let message = wire::decode_sync(kind, body)?;
                check_sender(&message.src().name, sender)?;
                self.handle_sync(message)
            }
            other => Err(MembershipError::UnknownKind(other)),
        }
    }

    /// A timer scheduled through [`Effect::Schedule`] is due.
    pub fn handle_timer(&mut self, timer: MembershipTimer) -> Result<(), MembershipError> {
        if self.phase == Phase::Left {
            return Ok(());
        }
        match timer.0 {
            TimerKind::Swim(timer) => {
                let result = self.swim.handle_timer(timer, &mut self.outbox);
                self.after_swim();
                Ok(result?)
            }
            TimerKind::Tick => self.tick(),
            TimerKind::Reap { name, epoch } => {
                lock(&self.table).reap(&name, epoch);
                self.flush_table();
                Ok(())
            }
            TimerKind::Leave => self.finish_leave(),
        }
    }

    // ----- commands -----

    /// Joins the pool through a node known only by its address: announces to it (again
    /// every tick until foca connects), and once it answers asks it for the full state
    /// (members with their tags), pushing this node's tags along. Joining again, or
    /// through several seeds, is harmless.
    pub fn join(&mut self, seed: SocketAddr) -> Result<(), MembershipError> {
        if self.phase != Phase::Running {
            return Err(MembershipError::Left);
        }
        if seed == self.me.addr {
            return Err(MembershipError::JoinSelf);
        }
        if !self.seeds.contains(&seed) && self.seeds.len() < MAX_SEEDS {
            self.seeds.push(seed);
        }
        self.announce_to(seed)
    }

    /// Announces to `seed` and pushes this node's info to it: the seed learns our tags
    /// now, so that the full state it hands to the nodes joining with us includes them.
    fn announce_to(&mut self, seed: SocketAddr) -> Result<(), MembershipError> {
        let result = self.swim.announce(Peer::seed(seed), &mut self.outbox);
        self.after_swim();
        result?;
        self.request(seed, Request::Push)
    }

    /// Not connected yet: the announces may have been lost, try again.
    fn announce_to_seeds(&mut self) -> Result<(), MembershipError> {
        for seed in self.seeds.clone() {
            self.announce_to(seed)?;
        }
        Ok(())
    }

    /// Leaves gracefully: spreads a leave intent (others list this node as leaving),
    /// then after `leave_propagation` declares itself down (others list it as left) and
    /// stops. The last effect is a [`crate::ChangeKind::Left`] about this node.
    pub fn leave(&mut self) -> Result<(), MembershipError> {
        if self.phase != Phase::Running {
            return Ok(());
        }
        let me = self.me.clone();
        let intent = wire::encode_broadcast(&Broadcast::Leave {
            name: me.name,
            generation: me.generation,
        })
        .map_err(MembershipError::Encode)?;
        self.swim.add_broadcast(&intent)?;
        self.phase = Phase::Leaving;
        self.flush_table();
        if self.swim.num_members() == 0 {
            return self.finish_leave();
        }
        let result = self.swim.gossip(&mut self.outbox);
        self.after_swim();
        self.schedule(TimerKind::Leave, self.config.leave_propagation);
        Ok(result?)
    }

    /// Consul's force-leave: moves a failed member to left here and spreads its leave
    /// so that every node does the same. `Ok(false)` if the member is unknown; an error
    /// if it is not failed (an alive node would only refute it).
    pub fn force_leave(&mut self, name: &str) -> Result<bool, MembershipError> {
        let state = lock(&self.table).state_of(name);
        let Some((state, generation)) = state else {
            return Ok(false);
        };
        match state {
            MemberState::Left => return Ok(true),
            MemberState::Failed if name != self.me.name => {}
            state => {
                return Err(MembershipError::NotFailed {
                    name: name.to_owned(),
                    state,
                });
            }
        }
        let intent = wire::encode_broadcast(&Broadcast::Leave {
            name: name.to_owned(),
            generation,
        })
        .map_err(MembershipError::Encode)?;
        self.swim.add_broadcast(&intent)?;
        self.flush_table();
        Ok(true)
    }

    /// Replaces this node's tags (user tags and `build`; `role` and `dc` come from the
    /// configuration) and spreads them to every member.
    pub fn set_tags(
        &mut self,
        tags: std::collections::BTreeMap<String, String>,
    ) -> Result<(), MembershipError> {
        if self.phase != Phase::Running {
            return Err(MembershipError::Left);
        }
        let mut config = self.config.clone();
        config.tags = tags;
        let info = MemberInfo {
            version: self.info_version + 1,
            tags: config.announced_tags(),
            ..lock(&self.table).my_info().clone()
        };
        let bytes = encode_info(&info)?;
        self.config = config;
        self.info_version += 1;
        self.swim.add_broadcast(&bytes)?;
        self.flush_table();
        Ok(())
    }

    /// Fires a user event: spreads `payload` under `key` to every member, each of which
    /// reports it once as [`Effect::Event`]. This node gets no effect for it: the
    /// application handles its own events itself. A key already seen, or below the
    /// floor, is not sent again. The payload is at most [`MAX_EVENT_PAYLOAD`] bytes.
    pub fn broadcast_event(
        &mut self,
        key: EventKey,
        payload: Bytes,
    ) -> Result<(), MembershipError> {
        if self.phase != Phase::Running {
            return Err(MembershipError::Left);
        }
        if payload.len() > MAX_EVENT_PAYLOAD {
            return Err(MembershipError::EventTooLarge {
                len: payload.len(),
                max: MAX_EVENT_PAYLOAD,
            });
        }
        if !lock(&self.table).events.record(key, &payload, false) {
            return Ok(());
        }
        self.spread_event(EventItem {
            key,
            payload: payload.to_vec(),
        })
    }

    /// User events whose Lamport time is below `ltime` count as seen: they are neither
    /// reported nor passed on. At restart, set it from the saved Lamport time before
    /// joining so that old events do not fire again. It never goes down.
    pub fn set_event_floor(&mut self, ltime: u64) {
        lock(&self.table).events.set_floor(ltime);
    }

    /// The expected cluster size: foca's settings that scale with it (how many times an
    /// update is sent, how long a suspect has to refute) are re-derived from the larger
    /// of this hint and the members seen. They never shrink. The probe period and round
    /// trip cannot change at run time.
    pub fn set_cluster_size_hint(&mut self, size: u32) {
        self.config.cluster_size_hint = size;
        self.rescale();
    }

    // ----- internals -----

    /// Hands a recorded event to foca, which piggybacks it on its packets.
    fn spread_event(&mut self, event: EventItem) -> Result<(), MembershipError> {
        let bytes =
            wire::encode_broadcast(&Broadcast::Event(event)).map_err(MembershipError::Encode)?;
        self.swim.add_broadcast(&bytes)?;
        Ok(())
    }

    /// Sends the recent user events to `to`, if any.
    fn send_events(&mut self, to: SocketAddr) -> Result<(), MembershipError> {
        let events = lock(&self.table).events.recent();
        if events.is_empty() {
            return Ok(());
        }
        let packets = wire::encode_events(&self.me, &events).map_err(MembershipError::Encode)?;
        for packet in packets {
            self.send(to, packet);
        }
        Ok(())
    }

    fn schedule(&mut self, kind: TimerKind, after: Duration) {
        self.effects.push_back(Effect::Schedule {
            timer: MembershipTimer(kind),
            after,
        });
    }

    fn send(&mut self, to: SocketAddr, data: Bytes) {
        self.effects.push_back(Effect::Send { to, data });
    }

    /// Turns what foca asked for into effects and feeds its notifications to the table.
    fn after_swim(&mut self) {
        loop {
            self.flush_table();
            let events = std::mem::take(&mut self.outbox.events);
            for event in events {
                match event {
                    // foca keeps this node's previous identity as a down member after
                    // a renewal, and may announce to it: to ourselves.
                    RuntimeEvent::Send(to, _) if to == self.me.addr => {}
                    RuntimeEvent::Send(to, data) => self.send(to, data),
                    RuntimeEvent::Timer(timer, after) => {
                        self.schedule(TimerKind::Swim(timer), after)
                    }
                    RuntimeEvent::Notify(notification) => self.on_notification(notification),
                }
            }
            self.flush_table();
            self.rescale();
            if std::mem::take(&mut self.connected) {
                self.pull_after_connect();
            }
            let refute = std::mem::take(&mut lock(&self.table).refute_leave);
            if !refute || self.phase != Phase::Running {
                return;
            }
            // Someone spread a leave intent for this generation of ours: only a new
            // generation can outrank it.
            tracing::info!(me = %self.me, "refuting a leave intent with a new generation");
            let Some(renewed) = foca::Identity::renew(self.swim.identity()) else {
                return;
            };
            if let Err(err) = self.swim.change_identity(renewed.clone(), &mut self.outbox) {
                tracing::warn!(%err, "could not renew the identity");
                return;
            }
            self.renewed(renewed);
        }
    }

    fn on_notification(&mut self, notification: OwnedNotification<Peer>) {
        match notification {
            OwnedNotification::MemberUp(id) => lock(&self.table).member_up(&id.to_identity()),
            OwnedNotification::MemberDown(id) => {
                lock(&self.table).member_down(&id.to_identity());
            }
            OwnedNotification::Rename(old, new) => {
                lock(&self.table).renamed(&old.to_identity(), &new.to_identity());
            }
            OwnedNotification::Rejoin(id) => {
                tracing::info!(me = %id, "declared down by the cluster: rejoined as a new generation");
                self.renewed(id);
            }
            OwnedNotification::Active => {
                tracing::debug!(me = %self.me, "connected");
                self.connected = true;
            }
            OwnedNotification::Idle => tracing::debug!(me = %self.me, "no active member left"),
            OwnedNotification::Defunct => tracing::debug!(me = %self.me, "declared down"),
        }
    }

    /// This node now runs as `id` (a later generation): spread its info again.
    fn renewed(&mut self, id: Peer) {
        let id = id.to_identity();
        self.me = id.clone();
        let info = {
            let mut table = lock(&self.table);
            table.set_me(id.clone());
            MemberInfo {
                generation: id.generation,
                ..table.my_info().clone()
            }
        };
        match encode_info(&info) {
            Ok(bytes) => {
                if let Err(err) = self.swim.add_broadcast(&bytes) {
                    tracing::warn!(%err, "could not spread the info of the new generation");
                }
            }
            Err(err) => tracing::warn!(%err, "could not encode the info of the new generation"),
        }
    }

    /// Hands the table's changes and reap timers to the driver.
    fn flush_table(&mut self) {
        let (changes, reaps) = {
            let mut table = lock(&self.table);
            (
                std::mem::take(&mut table.changes),
                std::mem::take(&mut table.reaps),
            )
        };
        let events = std::mem::take(&mut lock(&self.table).events.fired);
        self.effects
            .extend(changes.into_iter().map(Effect::Changed));
        self.effects.extend(
            events
                .into_iter()
                .map(|(key, payload)| Effect::Event { key, payload }),
        );
        for reap in reaps {
            self.schedule(
                TimerKind::Reap {
                    name: reap.name,
                    epoch: reap.epoch,
                },
                reap.after,
            );
        }
    }

    fn tick(&mut self) -> Result<(), MembershipError> {
        self.ticks += 1;
        self.schedule(TimerKind::Tick, self.config.foca.probe_period);
        let due = {
            let mut table = lock(&self.table);
            table.tick = self.ticks;
            table.reconcile(self.swim.iter_membership_state());
            table.expire_unclaimed();
            table.due_pulls(PULLS_PER_TICK)
        };
        self.flush_table();
        for id in due {
            self.request(id.addr, Request::Names(std::slice::from_ref(&id.name)))?;
        }
        if self.ticks >= self.next_pull {
            self.pull_gap = (self.pull_gap * 2).min(self.push_pull_ticks());
            self.next_pull = self.ticks + self.pull_gap;
            if let Some(peer) = self.random_member() {
                self.request(peer, Request::Full)?;
            }
        }
        if self.swim.num_members() == 0 {
            if !self.seeds.is_empty() {
                self.announce_to_seeds()?;
            } else if self.ticks.is_multiple_of(self.push_pull_ticks()) {
                self.reconnect()?;
            }
        }
        Ok(())
    }

    /// With no active member foca stops announcing to members it holds down, so the
    /// node would stay alone after a partition if the other side did not reach out:
    /// announce to one failed member (by address, as on a join) once per push/pull
    /// interval.
    fn reconnect(&mut self) -> Result<(), MembershipError> {
        let failed = lock(&self.table).failed_addrs();
        if failed.is_empty() || self.phase != Phase::Running {
            return Ok(());
        }
        let addr = failed[self.rng.random_range(0..failed.len())];
        let result = self.swim.announce(Peer::seed(addr), &mut self.outbox);
        self.after_swim();
        Ok(result?)
    }

    /// foca connected (joined, or back from having no active member): pull the full
    /// state from the seed joined through (or any member), and again at growing
    /// intervals (1, 2, 4... ticks up to the push/pull interval), so that a node that
    /// joined while the cluster was still forming catches up quickly.
    fn pull_after_connect(&mut self) {
        let peer = match self.seeds.first() {
            Some(&seed) => Some(seed),
            None => self.random_member(),
        };
        self.seeds.clear();
        self.pull_gap = 1;
        self.next_pull = self.ticks + 1;
        if let Some(peer) = peer
            && let Err(err) = self.request(peer, Request::Full)
        {
            tracing::warn!(%err, "could not ask for the full state");
        }
    }

    fn random_member(&mut self) -> Option<SocketAddr> {
        let active = self.swim.num_members();
        if active == 0 {
            return None;
        }
        let pick = self.rng.random_range(0..active);
        self.swim
            .iter_members()
            .nth(pick)
            .map(|m| m.id().socket_addr())
    }

    /// Ticks between two full-state pulls: the interval, scaled up like memberlist's
    /// push/pull beyond 32 members.
    fn push_pull_ticks(&self) -> u64 {
        let members = self.swim.num_members() as f64 + 1.0;
        let scale = if members <= 32.0 {
            1.0
        } else {
            (members.log2() - 32f64.log2()).ceil() + 1.0
        };
        let period = self.config.foca.probe_period.as_secs_f64().max(0.001);
        let ticks = self.config.push_pull_interval.as_secs_f64() * scale / period;
        (ticks.round() as u64).max(1)
    }

    /// Re-derives the size-dependent foca settings when the cluster grew.
    fn rescale(&mut self) {
        let seen = u32::try_from(self.swim.num_members() + 1).unwrap_or(u32::MAX);
        let size = seen.max(self.config.cluster_size_hint);
        if size <= self.applied_size {
            return;
        }
        self.applied_size = size;
        let preset = MembershipConfig::foca_preset(self.config.pool, self.applied_size);
        let mut next = self.config.foca.clone();
        next.max_transmissions = next.max_transmissions.max(preset.max_transmissions);
        next.suspect_to_down_after = next.suspect_to_down_after.max(preset.suspect_to_down_after);
        if next.max_transmissions == self.config.foca.max_transmissions
            && next.suspect_to_down_after == self.config.foca.suspect_to_down_after
        {
            return;
        }
        match self.swim.set_config(next.clone()) {
            Ok(()) => {
                tracing::debug!(
                    size,
                    max_transmissions = next.max_transmissions.get(),
                    suspect_to_down_after = ?next.suspect_to_down_after,
                    "foca settings follow the cluster size"
                );
                self.config.foca = next;
            }
            Err(err) => tracing::warn!(%err, "could not apply foca settings"),
        }
    }

    fn finish_leave(&mut self) -> Result<(), MembershipError> {
        let result = self.swim.leave_cluster(&mut self.outbox);
        self.after_swim();
        self.phase = Phase::Left;
        lock(&self.table).set_left();
        self.flush_table();
        Ok(result?)
    }

    fn request(&mut self, to: SocketAddr, request: Request<'_>) -> Result<(), MembershipError> {
        let (full, names) = match request {
            Request::Push => (false, &[][..]),
            Request::Full => (true, &[][..]),
            Request::Names(names) => (false, names),
        };
        let info = names
            .is_empty()
            .then(|| lock(&self.table).my_info().clone());
        let packets = wire::encode_request(&self.me, info.as_ref(), full, names)
            .map_err(MembershipError::Encode)?;
        for packet in packets {
            self.send(to, packet);
        }
        if full {
            self.send_events(to)?;
        }
        Ok(())
    }

    fn handle_sync(&mut self, message: SyncMessage) -> Result<(), MembershipError> {
        match message {
            SyncMessage::Request {
                src,
                info,
                full,
                names,
            } => {
                if let Some(info) = info.filter(|info| info.name == src.name) {
                    lock(&self.table).apply_broadcast(Broadcast::Info(info), Origin::Sync);
                    self.flush_table();
                }
                let packets = if full {
                    self.full_reply()?
                } else if names.is_empty() {
                    Vec::new()
                } else {
                    let entries = self.named_state(&names);
                    wire::encode_reply(&self.me, &entries).map_err(MembershipError::Encode)?
                };
                for packet in packets {
                    self.send(src.addr, packet);
                }
                if full {
                    self.send_events(src.addr)?;
                }
                Ok(())
            }
            SyncMessage::Events { events, .. } => {
                let mut fresh = Vec::new();
                {
                    let mut table = lock(&self.table);
                    for event in events {
                        let key = event.key;
                        if table
                            .apply_broadcast(Broadcast::Event(event.clone()), Origin::Sync)
                            .is_some()
                        {
                            tracing::debug!(me = %self.me, ltime = key.ltime, "caught up on an event");
                            fresh.push(event);
                        }
                    }
                }
                self.flush_table();
                // Others may have missed it too: spread it like one received by gossip.
                for event in fresh {
                    self.spread_event(event)?;
                }
                Ok(())
            }
            SyncMessage::Reply { entries, .. } => {
                let mut members = Vec::new();
                {
                    let mut table = lock(&self.table);
                    for entry in entries {
                        if let Some(info) = entry.info.filter(|info| info.name == entry.name) {
                            table.apply_broadcast(Broadcast::Info(info), Origin::Sync);
                        }
                        if let Some(generation) = entry.leave {
                            let leave = Broadcast::Leave {
                                name: entry.name.clone(),
                                generation,
                            };
                            table.apply_broadcast(leave, Origin::Sync);
                        }
                        members.extend(
                            entry
                                .member
                                .filter(|m| m.id().name() == entry.name && !table.knows(m)),
                        );
                    }
                }
                let result = self
                    .swim
                    .apply_many(members.into_iter(), false, &mut self.outbox);
                self.after_swim();
                Ok(result?)
            }
        }
    }

    /// Every active member foca knows, with what the table knows of it, and this node,
    /// encoded. Reused while the table is unchanged: a seed answers many joiners at once.
    fn full_reply(&mut self) -> Result<Vec<Bytes>, MembershipError> {
        let revision = lock(&self.table).revision;
        if let Some((cached, packets)) = &self.full_reply
            && *cached == revision
        {
            return Ok(packets.clone());
        }
        let entries = {
            let table = lock(&self.table);
            let mut entries = Vec::with_capacity(self.swim.num_members() + 1);
            let (info, leave) = table.sync_view(&self.me.name).unwrap_or_default();
            entries.push(SyncEntry {
                name: self.me.name.clone(),
                member: Some(foca::Member::alive(self.swim.identity().clone())),
                info,
                leave,
            });
            for member in self.swim.iter_members() {
                let name = member.id().name();
                let (info, leave) = table.sync_view(name).unwrap_or_default();
                entries.push(SyncEntry {
                    name: name.to_owned(),
                    member: Some(member.clone()),
                    info,
                    leave,
                });
            }
            entries
        };
        let packets = wire::encode_reply(&self.me, &entries).map_err(MembershipError::Encode)?;
        self.full_reply = Some((revision, packets.clone()));
        Ok(packets)
    }

    /// The infos and leave intents of `names`.
    fn named_state(&self, names: &[String]) -> Vec<SyncEntry> {
        let table = lock(&self.table);
        names
            .iter()
            .take(wire::MAX_NAMES_PER_REQUEST)
            .filter_map(|name| {
                let (info, leave) = table.sync_view(name)?;
                Some(SyncEntry {
                    name: name.clone(),
                    member: None,
                    info,
                    leave,
                })
            })
            .collect()
    }
}

/// What a state request asks for.
#[derive(Clone, Copy)]
enum Request<'a> {
    /// Nothing: it only pushes this node's info.
    Push,
    /// The full state (and pushes this node's info).
    Full,
    /// The infos of these members.
    Names(&'a [String]),
}

fn check_sender(claimed: &str, sender: &str) -> Result<(), MembershipError> {
    if claimed == sender {
        Ok(())
    } else {
        Err(MembershipError::Spoofed {
            claimed: claimed.to_owned(),
            sender: sender.to_owned(),
        })
    }
}

fn encode_info(info: &MemberInfo) -> Result<Vec<u8>, MembershipError> {
    let bytes =
        wire::encode_broadcast(&Broadcast::Info(info.clone())).map_err(MembershipError::Encode)?;
    if bytes.len() > MAX_INFO_SIZE {
        return Err(MembershipError::TagsTooLarge {
            len: bytes.len(),
            max: MAX_INFO_SIZE,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests;
