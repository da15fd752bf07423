//! The gossip driver: runs the sans-I/O [`membership::Membership`] on a QUIC endpoint,
//! the LAN one of every agent or the WAN one of a server.
//!
//! One task owns the membership state and takes its inputs in turn: gossip packets from
//! the transport (each tagged with the sender's certified identity), timers from a
//! [`DelayQueue`] (every timer is delivered, in deadline order, never dropped), and
//! commands from the rest of the agent ([`Gossip`] is the handle). After each input it
//! carries out the effects: packets go out as QUIC datagrams (a uni stream when too
//! large), timers are queued, changes are published on the event bus and in the member
//! list that the HTTP API reads.
//!
//! Only a peer whose certificate names it a member of our datacenter is heard on the LAN
//! pool, only a server (of any datacenter) on the WAN pool, where members are named
//! `<node>.<dc>` ([`wan_name`]); the membership state checks that a packet's claimed
//! sender is the node of that certificate. Member changes and user events of the LAN
//! pool go on the event bus; the WAN pool only keeps its member list.

pub mod members_file;
pub mod user_events;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use events::{
    Bus, Event, EventFilter, LamportClock, MemberEvent, MemberEventKind, SizeLimit, UserEvent,
    UserEventError,
};
use futures::StreamExt;
use membership::{
    ChangeKind, Effect, EventKey, Member, Membership, MembershipConfig, NodeIdentity, Pool,
};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::time::DelayQueue;

use crate::local::ServiceTags;
use crate::transport::{Datagram, DatagramReceiver, Transport};
use members_file::MembersFile;
use user_events::EventLog;

/// How long a graceful leave keeps gossiping so the news spreads before the agent exits.
pub const LEAVE_PROPAGATE: Duration = Duration::from_secs(2);

/// How long `join` waits for an answer from the address it announced to.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest pause between two rounds of start-up joins.
pub const MAX_JOIN_BACKOFF: Duration = Duration::from_secs(30);

/// How often the member list is saved for rejoin, when it changed: soon after a join,
/// so an agent killed right after joining still knows whom to rejoin.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// Commands waiting in the driver's queue at most.
const COMMAND_QUEUE: usize = 64;

/// Why a gossip command failed.
#[derive(Debug, Error)]
pub enum GossipError {
    /// Nobody at the address answered in time.
    #[error("no answer from {0} within {1:?}")]
    NoAnswer(SocketAddr, Duration),
    /// The membership state refused the command.
    #[error("{0}")]
    Membership(#[from] membership::MembershipError),
    /// A user event that may not be fired.
    #[error("{0}")]
    Event(#[from] UserEventError),
    /// A user event that could not be encoded.
    #[error("encoding the user event: {0}")]
    Encode(events::user::CodecError),
    /// The gossip task has stopped (the agent is shutting down).
    #[error("gossip is not running")]
    Stopped,
    /// User events are fired in a datacenter's LAN pool, not on the WAN.
    #[error("user events are not fired on the WAN pool")]
    NotOnWan,
}

impl GossipError {
    /// Whether a user event was refused for its size (HTTP 413).
    pub fn is_too_large(&self) -> bool {
        match self {
            GossipError::Event(e) => e.is_too_large(),
            GossipError::Membership(membership::MembershipError::EventTooLarge { .. }) => true,
            _ => false,
        }
    }
}

/// The name of a server in the WAN pool: `<node>.<dc>` (datacenter names have no dots).
pub fn wan_name(node: &str, dc: &str) -> String {
    format!("{node}.{dc}")
}

/// Settings of the gossip of one agent in one pool.
pub struct GossipConfig {
    /// This node's gossip identity.
    pub me: NodeIdentity,
    /// The membership settings (pool, datacenter, role, tags, timings).
    pub membership: MembershipConfig,
    /// Addresses to join at start, retried with backoff until one answers
    /// (`--join` and the members saved before a restart).
    pub join: Vec<SocketAddr>,
    /// Where the member list is saved (see [`members_file`]).
    pub members_file: PathBuf,
    /// Seed of the membership's randomness.
    pub seed: u64,
    /// The user event clock saved at the last run: events below it do not fire again.
    pub event_ltime: u64,
    /// Limit on the name plus payload of the user events fired here.
    pub event_size_limit: SizeLimit,
    /// The names and tags of this agent's services as they are now, for the service and
    /// tag filters of user events ([`crate::local::LocalState::service_tags`]).
    pub services: watch::Receiver<ServiceTags>,
}

/// A user event to fire: what the operator chose. The agent adds the ID, the Lamport
/// time and itself as the origin.
#[derive(Debug, Clone, Default)]
pub struct FireRequest {
    /// The event's name.
    pub name: String,
    /// Its payload.
    pub payload: Vec<u8>,
    /// Which agents should process it.
    pub filter: EventFilter,
}

/// The members as the driver last published them, with a counter of changes (the
/// blocking-query index of `/v1/agent/members`).
#[derive(Debug, Clone)]
pub struct MemberView {
    /// Moves on every membership change; starts at 1.
    pub index: u64,
    /// Everyone known, this node included, sorted by name.
    pub members: Arc<Vec<Member>>,
}

enum Command {
    Join(SocketAddr, oneshot::Sender<Result<(), GossipError>>),
    Leave(oneshot::Sender<Result<(), GossipError>>),
    ForceLeave(String, oneshot::Sender<Result<bool, GossipError>>),
    Fire(FireRequest, oneshot::Sender<Result<UserEvent, GossipError>>),
}

/// A handle on the gossip task. Cheap to clone.
#[derive(Clone)]
pub struct Gossip {
    commands: mpsc::Sender<Command>,
    members: watch::Receiver<MemberView>,
    events: Arc<EventLog>,
}

impl Gossip {
    /// Starts gossip on `transport`, reading `datagrams`, until `shutdown` fires.
    pub fn spawn(
        config: GossipConfig,
        transport: Transport,
        datagrams: DatagramReceiver,
        bus: Bus,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Gossip, GossipError> {
        let dc = config.membership.dc.clone();
        let pool = config.membership.pool;
        let mut membership = Membership::new(config.me.clone(), config.membership, config.seed)?;
        // Events below the saved clock were handled (or missed) before the restart.
        membership.set_event_floor(config.event_ltime);
        let (members_tx, members) = watch::channel(MemberView {
            index: 1,
            members: Arc::new(membership.members()),
        });
        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let events = EventLog::new();
        let driver = Driver {
            clock: LamportClock::new(config.event_ltime),
            event_size_limit: config.event_size_limit,
            services: config.services,
            events: events.clone(),
            events_dirty: false,
            membership,
            transport,
            dc,
            pool,
            bus,
            timers: DelayQueue::new(),
            members: members_tx,
            members_file: config.members_file,
            pending_joins: Vec::new(),
            leaving: None,
            dirty: true,
        };
        tracker.spawn(driver.run(datagrams, command_rx, shutdown.clone()));
        let gossip = Gossip {
            commands,
            members,
            events,
        };
        gossip.join_in_background(config.join, tracker, shutdown);
        Ok(gossip)
    }

    /// Joins through `addrs` in a tracked task, retrying with backoff until one of them
    /// answers (nothing to do when `addrs` is empty).
    pub fn join_in_background(
        &self,
        addrs: Vec<SocketAddr>,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) {
        if !addrs.is_empty() {
            tracker.spawn(join_at_start(self.clone(), addrs, shutdown));
        }
    }

    /// Everyone known, this node included, sorted by name.
    pub fn members(&self) -> Arc<Vec<Member>> {
        self.members.borrow().members.clone()
    }

    /// The members and the index of that view.
    pub fn member_view(&self) -> MemberView {
        self.members.borrow().clone()
    }

    /// Waits (at most `wait`) until the members' index differs from `index`, then
    /// returns the view; at the deadline, returns the current one.
    pub async fn wait_members(&self, index: u64, wait: Duration) -> MemberView {
        let mut members = self.members.clone();
        let deadline = Instant::now() + wait;
        loop {
            let view = members.borrow_and_update().clone();
            if view.index != index {
                return view;
            }
            tokio::select! {
                changed = members.changed() => {
                    if changed.is_err() {
                        return view;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return view,
            }
        }
    }

    /// The user events this agent received or fired that passed its filters.
    pub fn events(&self) -> &Arc<EventLog> {
        &self.events
    }

    /// Fires a user event: stamps it with the event clock, gossips it to every member
    /// and handles it here too. Returns the event as fired.
    pub async fn fire(&self, request: FireRequest) -> Result<UserEvent, GossipError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Fire(request, reply)).await?;
        answer.await.map_err(|_| GossipError::Stopped)?
    }

    /// Announces this node to `addr` and waits until a member at that address is alive
    /// in our view (at most [`JOIN_TIMEOUT`]).
    pub async fn join(&self, addr: SocketAddr) -> Result<(), GossipError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Join(addr, reply)).await?;
        match tokio::time::timeout(JOIN_TIMEOUT, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(GossipError::Stopped),
            Err(_) => Err(GossipError::NoAnswer(addr, JOIN_TIMEOUT)),
        }
    }

    /// Leaves gracefully: announces the leave, keeps gossiping for
    /// [`LEAVE_PROPAGATE`] so it spreads, then returns.
    pub async fn leave(&self) -> Result<(), GossipError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Leave(reply)).await?;
        answer.await.map_err(|_| GossipError::Stopped)?
    }

    /// Moves a failed member to left; `false` if no such member is known.
    pub async fn force_leave(&self, name: &str) -> Result<bool, GossipError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::ForceLeave(name.to_string(), reply))
            .await?;
        answer.await.map_err(|_| GossipError::Stopped)?
    }

    async fn send(&self, command: Command) -> Result<(), GossipError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| GossipError::Stopped)
    }
}

/// Joins the start-up addresses, retrying with backoff until one of them answers.
async fn join_at_start(gossip: Gossip, addrs: Vec<SocketAddr>, shutdown: CancellationToken) {
    let mut backoff = Duration::from_secs(1);
    loop {
        for addr in &addrs {
            match gossip.join(*addr).await {
                Ok(()) => {
                    tracing::info!(%addr, "joined the cluster");
                    return;
                }
                Err(GossipError::Stopped) => return,
                Err(e) => tracing::warn!(%addr, "join failed: {e}"),
            }
        }
        tracing::info!("retrying join in {backoff:?}");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_JOIN_BACKOFF);
    }
}

struct Driver {
    membership: Membership,
    /// The user event clock.
    clock: LamportClock,
    event_size_limit: SizeLimit,
    services: watch::Receiver<ServiceTags>,
    events: Arc<EventLog>,
    /// An event was handled since the clock was last saved.
    events_dirty: bool,
    transport: Transport,
    dc: String,
    pool: Pool,
    bus: Bus,
    timers: DelayQueue<membership::MembershipTimer>,
    members: watch::Sender<MemberView>,
    members_file: PathBuf,
    pending_joins: Vec<(SocketAddr, oneshot::Sender<Result<(), GossipError>>)>,
    leaving: Option<(Instant, oneshot::Sender<Result<(), GossipError>>)>,
    dirty: bool,
}

impl Driver {
    async fn run(
        mut self,
        mut datagrams: DatagramReceiver,
        mut commands: mpsc::Receiver<Command>,
        shutdown: CancellationToken,
    ) {
        let mut save = tokio::time::interval(SAVE_EVERY);
        save.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.drain();
        loop {
            let leave_deadline = self.leaving.as_ref().map(|(at, _)| *at);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(command) = commands.recv() => self.command(command),
                Some(datagram) = datagrams.recv() => self.datagram(datagram),
                Some(expired) = self.timers.next() => {
                    if let Err(e) = self.membership.handle_timer(expired.into_inner()) {
                        tracing::debug!("gossip timer: {e}");
                    }
                }
                _ = sleep_until(leave_deadline) => {
                    if let Some((_, reply)) = self.leaving.take() {
                        let _ = reply.send(Ok(()));
                    }
                }
                _ = save.tick() => self.save(),
            }
            self.drain();
        }
        self.save();
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Join(addr, reply) => match self.membership.join(addr) {
                Ok(()) => self.pending_joins.push((addr, reply)),
                Err(e) => {
                    let _ = reply.send(Err(e.into()));
                }
            },
            Command::Leave(reply) => match self.membership.leave() {
                Ok(()) => self.leaving = Some((Instant::now() + LEAVE_PROPAGATE, reply)),
                Err(e) => {
                    let _ = reply.send(Err(e.into()));
                }
            },
            Command::ForceLeave(name, reply) => {
                let _ = reply.send(self.membership.force_leave(&name).map_err(Into::into));
            }
            Command::Fire(request, reply) => {
                let _ = reply.send(self.fire(request));
            }
        }
    }

    /// Stamps, checks and gossips a user event fired here, then handles it as received.
    fn fire(&mut self, request: FireRequest) -> Result<UserEvent, GossipError> {
        if self.pool == Pool::Wan {
            return Err(GossipError::NotOnWan);
        }
        let mut event = UserEvent::new(
            UserEvent::new_id(rand::random()),
            request.name,
            request.payload,
            self.clock.time(),
            self.membership.me().name.clone(),
        );
        event.filter = request.filter;
        event.validate(self.event_size_limit)?;
        let bytes = event.encode().map_err(GossipError::Encode)?;
        let key = EventKey {
            ltime: event.ltime,
            id: *event.id.as_bytes(),
        };
        self.membership.broadcast_event(key, Bytes::from(bytes))?;
        // Only a fired event moves the clock on; a refused one leaves it as it was.
        self.clock.increment();
        self.accept(event.clone());
        // Saved before the caller hears of it (and before local handlers run), so a
        // restart does not fire it again.
        self.save_events();
        Ok(event)
    }

    /// Keeps a user event that passed this agent's filters and publishes it.
    fn accept(&mut self, event: UserEvent) {
        self.events_dirty = true;
        let matched = {
            let services = self.services.borrow();
            event.filter.matches(
                &self.membership.me().name,
                services
                    .iter()
                    .map(|(name, tags)| (name.as_str(), tags.as_slice())),
            )
        };
        match matched {
            Ok(true) => {
                tracing::info!(
                    name = %event.name,
                    id = %event.id,
                    ltime = event.ltime,
                    origin = %event.origin,
                    "user event"
                );
                self.events.push(event.clone());
                self.bus.publish(Event::User(event));
            }
            Ok(false) => {
                tracing::debug!(name = %event.name, id = %event.id, "user event not for this agent")
            }
            Err(e) => {
                tracing::debug!(name = %event.name, id = %event.id, "user event dropped: {e}")
            }
        }
    }

    fn datagram(&mut self, datagram: Datagram) {
        let from = &datagram.from;
        let sender = match self.pool {
            // The LAN pool is one datacenter: anyone else is not heard, whatever it claims.
            Pool::Lan if from.dc != self.dc => {
                tracing::debug!(%from, "gossip from another datacenter dropped");
                return;
            }
            Pool::Lan => from.node.clone(),
            // The WAN pool is the servers of every datacenter (the handshake already
            // refuses other certificates; this keeps the rule in one visible place too).
            Pool::Wan if from.role != membership::Role::Server => {
                tracing::debug!(%from, "WAN gossip from a non-server dropped");
                return;
            }
            Pool::Wan => wan_name(&from.node, &from.dc),
        };
        if let Err(e) = self.membership.handle_data(&datagram.payload, &sender) {
            tracing::debug!(from = %datagram.from, "gossip packet refused: {e}");
        }
    }

    /// Carries out every effect the membership state asked for.
    fn drain(&mut self) {
        let mut changed = false;
        let mut received = Vec::new();
        while let Some(effect) = self.membership.poll_effect() {
            match effect {
                Effect::Send { to, data } => self.transport.send_datagram_detached(to, data),
                Effect::Schedule { timer, after } => {
                    self.timers.insert(timer, after);
                }
                // User events belong to a datacenter's LAN pool.
                Effect::Event { .. } if self.pool == Pool::Wan => {}
                Effect::Event { key, payload } => match UserEvent::decode(&payload) {
                    Ok(event) if event.ltime == key.ltime && *event.id.as_bytes() == key.id => {
                        received.push(event);
                    }
                    Ok(event) => tracing::debug!(
                        ltime = event.ltime,
                        key_ltime = key.ltime,
                        "user event dropped: it does not match its gossip key"
                    ),
                    Err(e) => tracing::debug!("user event dropped: {e}"),
                },
                Effect::Changed(change) => {
                    changed = true;
                    tracing::info!(
                        member = %change.member.name,
                        addr = %change.member.addr,
                        change = ?change.kind,
                        pool = ?self.pool,
                        "membership changed"
                    );
                    if self.pool == Pool::Lan {
                        self.bus
                            .publish(Event::Member(member_event(change.kind, &change.member)));
                    }
                }
            }
        }
        // Every event time seen, handled or stale, moves the clock past it.
        let newest = self.membership.max_event_ltime();
        if newest >= self.clock.time() {
            self.clock.witness(newest);
            self.events_dirty = true;
        }
        if !received.is_empty() {
            // The clock is saved before the events are handled, so that an agent killed
            // right after does not handle them again when it restarts.
            self.save_events();
            for event in received {
                self.accept(event);
            }
        }
        if changed {
            self.dirty = true;
            let members = self.membership.members();
            self.answer_joins(&members);
            let index = self.members.borrow().index + 1;
            self.members.send_replace(MemberView {
                index,
                members: Arc::new(members),
            });
        }
        // Callers that gave up no longer need an answer.
        self.pending_joins.retain(|(_, reply)| !reply.is_closed());
    }

    fn answer_joins(&mut self, members: &[Member]) {
        let me = self.membership.me().name.clone();
        let alive_at = |addr: &SocketAddr| {
            members
                .iter()
                .any(|m| m.name != me && m.addr == *addr && m.state.consul_status() == 1)
        };
        let (answered, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending_joins)
            .into_iter()
            .partition(|(addr, _)| alive_at(addr));
        for (_, reply) in answered {
            let _ = reply.send(Ok(()));
        }
        self.pending_joins = waiting;
    }

    /// Saves the member list and the event clock now, if the clock moved.
    fn save_events(&mut self) {
        if self.events_dirty {
            self.dirty = true;
            self.save();
        }
    }

    /// Saves the generation, the addresses of live members and the event clock, if
    /// they changed.
    fn save(&mut self) {
        if !self.dirty && !self.events_dirty {
            return;
        }
        let me = self.membership.me().name.clone();
        let peers: Vec<SocketAddr> = self
            .membership
            .members()
            .iter()
            .filter(|m| m.name != me && m.state.consul_status() == 1)
            .map(|m| m.addr)
            .collect();
        // The generation rises when this node rejoins after being declared down; the
        // next start must begin above it.
        let file = MembersFile {
            generation: self.membership.me().generation,
            peers,
            event_ltime: self.clock.time(),
        };
        match file.save_to(&self.members_file) {
            Ok(()) => {
                self.dirty = false;
                self.events_dirty = false;
            }
            Err(e) => tracing::warn!("saving the member list: {e:#}"),
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The bus's view of a membership change.
pub fn member_event(kind: ChangeKind, member: &Member) -> MemberEvent {
    let kind = match kind {
        ChangeKind::Joined => MemberEventKind::Join,
        ChangeKind::Updated => MemberEventKind::Update,
        ChangeKind::Suspect => MemberEventKind::Suspect,
        ChangeKind::Alive => MemberEventKind::Alive,
        ChangeKind::Failed => MemberEventKind::Failed,
        ChangeKind::Leaving => MemberEventKind::Leaving,
        ChangeKind::Left => MemberEventKind::Leave,
        ChangeKind::Reaped => MemberEventKind::Reap,
    };
    MemberEvent {
        kind,
        name: member.name.clone(),
        addr: member.addr,
        dc: member.dc.clone(),
        role: member.role.to_string(),
        tags: member.tags.clone(),
        status: member.state.consul_status(),
    }
}

/// The tags every agent carries: its node id, role, datacenter and build, plus the
/// user's.
pub fn standard_tags(
    role: &str,
    dc: &str,
    id: &uuid::Uuid,
    user: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut tags = user.clone();
    tags.insert(crate::servers::ID_TAG.into(), id.to_string());
    tags.insert("role".into(), role.into());
    tags.insert("dc".into(), dc.into());
    tags.insert("build".into(), env!("CARGO_PKG_VERSION").into());
    tags
}
