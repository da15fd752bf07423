//! The member table: what foca says about liveness joined with what the broadcasts say
//! about role, datacenter, tags and leave intents, and the changes that follow.
//!
//! A member is listed once both halves are known: foca reported it up, and its info
//! arrived. Its state derives from foca's liveness and the leave intent:
//!
//! | foca    | no leave intent | leave intent for its generation |
//! |---------|-----------------|---------------------------------|
//! | alive   | Alive           | Leaving                         |
//! | suspect | Suspect         | Leaving                         |
//! | down    | Failed          | Left                            |

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::time::Duration;

use foca::{BroadcastHandler, Invalidates};

use crate::config::{DC_TAG, ROLE_TAG};
use crate::error::MembershipError;
use crate::event::{EventItem, EventKey, EventLog, MAX_EVENT_PAYLOAD};
use crate::identity::{NodeIdentity, Peer};
use crate::member::{ChangeKind, Member, MemberChange, MemberState};
use crate::wire::{self, Broadcast, InfoVersion, MemberInfo};

/// Upper bound on the entries the table keeps, whatever the network says.
pub(crate) const MAX_ENTRIES: usize = 1 << 16;

/// Ticks an info may wait for foca to report its member before it is dropped.
const UNCLAIMED_INFO_TICKS: u64 = 120;
/// Ticks a missing info is left to the broadcasts before it is asked for.
const PULL_AFTER_TICKS: u64 = 2;
/// Ticks between two requests for the same missing info.
const PULL_RETRY_TICKS: u64 = 4;

/// Where a broadcast came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Added by this node.
    Local,
    /// Received in a foca packet: accepted items are disseminated further.
    Gossip,
    /// Received in a state reply: accepted items are not disseminated.
    Sync,
}

/// foca's view of a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Liveness {
    Alive,
    Suspect,
    Down,
}

impl From<foca::State> for Liveness {
    fn from(state: foca::State) -> Self {
        match state {
            foca::State::Alive => Liveness::Alive,
            foca::State::Suspect => Liveness::Suspect,
            foca::State::Down => Liveness::Down,
        }
    }
}

struct Entry {
    /// foca's identity of the member and its liveness; `None` until foca reports it.
    foca: Option<(NodeIdentity, Liveness)>,
    info: Option<MemberInfo>,
    /// The generation a leave intent was seen for.
    leave: Option<u64>,
    /// The state last reported; `None` while the member is not listed.
    shown: Option<MemberState>,
    /// Bumped when the member fails or leaves, so that stale reap timers do nothing.
    epoch: u64,
    /// The tick the entry was created or foca last reported the member.
    seen: u64,
    /// The tick its info was last asked for.
    pulled: Option<u64>,
}

impl Entry {
    fn new(tick: u64) -> Self {
        Self {
            foca: None,
            info: None,
            leave: None,
            shown: None,
            epoch: 0,
            seen: tick,
            pulled: None,
        }
    }

    fn known_generation(&self) -> u64 {
        let foca = self.foca.as_ref().map_or(0, |(id, _)| id.generation);
        let info = self.info.as_ref().map_or(0, |info| info.generation);
        foca.max(info)
    }

    fn derived(&self) -> Option<MemberState> {
        let (id, liveness) = self.foca.as_ref()?;
        self.info.as_ref()?;
        let leaving = self.leave.is_some_and(|g| g >= id.generation);
        Some(match (liveness, leaving) {
            (Liveness::Alive, false) => MemberState::Alive,
            (Liveness::Suspect, false) => MemberState::Suspect,
            (Liveness::Alive | Liveness::Suspect, true) => MemberState::Leaving,
            (Liveness::Down, false) => MemberState::Failed,
            (Liveness::Down, true) => MemberState::Left,
        })
    }

    fn member(&self, state: MemberState) -> Option<Member> {
        let (id, _) = self.foca.as_ref()?;
        Some(build_member(id, self.info.as_ref()?, state))
    }

    fn wants_info(&self) -> Option<&NodeIdentity> {
        let (id, liveness) = self.foca.as_ref()?;
        let missing = self
            .info
            .as_ref()
            .is_none_or(|info| info.generation < id.generation);
        (missing && *liveness != Liveness::Down).then_some(id)
    }
}

fn build_member(id: &NodeIdentity, info: &MemberInfo, state: MemberState) -> Member {
    let mut tags = info.tags.clone();
    tags.insert(ROLE_TAG.to_owned(), info.role.to_string());
    tags.insert(DC_TAG.to_owned(), info.dc.clone());
    Member {
        name: id.name.clone(),
        addr: id.addr,
        generation: id.generation,
        role: info.role,
        dc: info.dc.clone(),
        tags,
        state,
    }
}

fn state_index(state: MemberState) -> usize {
    match state {
        MemberState::Alive => 0,
        MemberState::Suspect => 1,
        MemberState::Leaving => 2,
        MemberState::Left => 3,
        MemberState::Failed => 4,
    }
}

fn change_kind(previous: Option<MemberState>, next: MemberState) -> ChangeKind {
    use MemberState::*;
    match (previous, next) {
        (None | Some(Failed | Left), Alive | Suspect | Leaving) => ChangeKind::Joined,
        (Some(Leaving), Alive | Suspect) => ChangeKind::Joined,
        (_, Alive) => ChangeKind::Alive,
        (_, Suspect) => ChangeKind::Suspect,
        (_, Leaving) => ChangeKind::Leaving,
        (_, Left) => ChangeKind::Left,
        (_, Failed) => ChangeKind::Failed,
    }
}

/// A timer request of the table: reap `name` if it is still in the state of `epoch`.
pub(crate) struct ReapRequest {
    pub name: String,
    pub epoch: u64,
    pub after: Duration,
}

/// The member table. Shared between [`crate::Membership`] and the broadcast handler
/// that foca owns; never locked across a call into foca.
pub(crate) struct Table {
    me: NodeIdentity,
    my_info: MemberInfo,
    my_state: MemberState,
    entries: BTreeMap<String, Entry>,
    /// Names foca holds as suspect, as last seen.
    suspects: BTreeSet<String>,
    /// How many entries are listed in each state.
    counts: [usize; 5],
    /// Changes not yet handed to the driver.
    pub changes: Vec<MemberChange>,
    /// Reap timers not yet handed to the driver.
    pub reaps: Vec<ReapRequest>,
    /// Someone spread a leave intent for this node while it is not leaving.
    pub refute_leave: bool,
    /// Logical time: the number of ticks so far.
    pub tick: u64,
    /// Bumped by every change of what a state reply would carry.
    pub revision: u64,
    /// Where the last round of info requests stopped.
    pull_cursor: Option<String>,
    /// The user events seen.
    pub events: EventLog,
    reap_failed_after: Duration,
    reap_left_after: Duration,
}

impl Table {
    pub(crate) fn new(
        me: NodeIdentity,
        my_info: MemberInfo,
        reap_failed_after: Duration,
        reap_left_after: Duration,
    ) -> Self {
        Self {
            me,
            my_info,
            my_state: MemberState::Alive,
            entries: BTreeMap::new(),
            suspects: BTreeSet::new(),
            counts: [0; 5],
            changes: Vec::new(),
            reaps: Vec::new(),
            refute_leave: false,
            tick: 0,
            revision: 0,
            pull_cursor: None,
            events: EventLog::default(),
            reap_failed_after,
            reap_left_after,
        }
    }

    pub(crate) fn my_info(&self) -> &MemberInfo {
        &self.my_info
    }

    fn my_member(&self) -> Member {
        build_member(&self.me, &self.my_info, self.my_state)
    }

    fn emit(&mut self, kind: ChangeKind, member: Member) {
        self.changes.push(MemberChange { kind, member });
    }

    /// This node's identity changed (it rejoined after being declared down).
    pub(crate) fn set_me(&mut self, me: NodeIdentity) {
        self.revision += 1;
        self.me = me;
        let member = self.my_member();
        self.emit(ChangeKind::Updated, member);
    }

    /// This node finished leaving.
    pub(crate) fn set_left(&mut self) {
        self.revision += 1;
        self.my_state = MemberState::Left;
        let member = self.my_member();
        self.emit(ChangeKind::Left, member);
    }

    /// Applies a broadcast if it is newer than what the table knows. Returns its key
    /// when it was applied, so that foca disseminates it.
    pub(crate) fn apply_broadcast(
        &mut self,
        item: Broadcast,
        origin: Origin,
    ) -> Option<BroadcastKey> {
        if let Broadcast::Event(event) = item {
            return self.apply_event(event, origin);
        }
        let version = item.version();
        let name = item.name().to_owned();
        if name.is_empty() {
            return None;
        }
        if name == self.me.name {
            return self.apply_own(item, origin);
        }
        let tick = self.tick;
        let room = self.entries.len() < MAX_ENTRIES;
        let entry = match self.entries.get_mut(&name) {
            Some(entry) => entry,
            None if room && matches!(item, Broadcast::Info(_)) => self
                .entries
                .entry(name.clone())
                .or_insert_with(|| Entry::new(tick)),
            None => return None,
        };
        let updated = match item {
            Broadcast::Event(_) => return None,
            Broadcast::Info(info) => {
                if entry
                    .info
                    .as_ref()
                    .is_some_and(|known| known.version() >= version)
                {
                    return None;
                }
                let updated = entry
                    .info
                    .as_ref()
                    .is_none_or(|known| !known.same_content(&info));
                entry.info = Some(info);
                updated
            }
            Broadcast::Leave { generation, .. } => {
                if entry.leave.is_some_and(|known| known >= generation)
                    || generation < entry.known_generation()
                {
                    return None;
                }
                entry.leave = Some(generation);
                false
            }
        };
        self.refresh(&name, updated);
        Some(BroadcastKey::Member { name, version })
    }

    /// A user event. One added by this node was recorded before (see
    /// [`crate::Membership::broadcast_event`]); one received is reported and spread if
    /// it is new.
    fn apply_event(&mut self, event: EventItem, origin: Origin) -> Option<BroadcastKey> {
        if event.payload.len() > MAX_EVENT_PAYLOAD {
            return None;
        }
        match origin {
            Origin::Local => Some(BroadcastKey::Event(event.key)),
            Origin::Gossip | Origin::Sync => {
                let payload = bytes::Bytes::from(event.payload);
                self.events
                    .record(event.key, &payload, true)
                    .then_some(BroadcastKey::Event(event.key))
            }
        }
    }

    fn apply_own(&mut self, item: Broadcast, origin: Origin) -> Option<BroadcastKey> {
        let version = item.version();
        self.revision += 1;
        match (item, origin) {
            (Broadcast::Info(info), Origin::Local) => {
                let updated = !info.same_content(&self.my_info);
                self.my_info = info;
                if updated {
                    let member = self.my_member();
                    self.emit(ChangeKind::Updated, member);
                }
            }
            (Broadcast::Leave { .. }, Origin::Local) => {
                if self.my_state == MemberState::Alive {
                    self.my_state = MemberState::Leaving;
                    let member = self.my_member();
                    self.emit(ChangeKind::Leaving, member);
                }
            }
            (Broadcast::Leave { generation, .. }, Origin::Gossip | Origin::Sync) => {
                if generation >= self.me.generation && self.my_state == MemberState::Alive {
                    self.refute_leave = true;
                }
                return None;
            }
            (Broadcast::Info(_), Origin::Gossip | Origin::Sync) | (Broadcast::Event(_), _) => {
                return None;
            }
        }
        Some(BroadcastKey::Member {
            name: self.me.name.clone(),
            version,
        })
    }

    /// foca reports `id` up.
    pub(crate) fn member_up(&mut self, id: &NodeIdentity) {
        self.set_liveness(id, Liveness::Alive, true);
    }

    /// foca reports `id` down.
    pub(crate) fn member_down(&mut self, id: &NodeIdentity) {
        let Some(entry) = self.entries.get_mut(&id.name) else {
            return;
        };
        match &mut entry.foca {
            Some((known, liveness)) if known == id => *liveness = Liveness::Down,
            _ => return,
        }
        self.suspects.remove(&id.name);
        self.revision += 1;
        if entry.shown.is_none() && entry.info.is_none() {
            self.entries.remove(&id.name);
        } else {
            self.refresh(&id.name, false);
        }
    }

    /// foca replaced `old` by `new`, a later identity of the same node.
    pub(crate) fn renamed(&mut self, old: &NodeIdentity, new: &NodeIdentity) {
        if old.name != new.name {
            return;
        }
        let Some(entry) = self.entries.get_mut(&new.name) else {
            return;
        };
        self.revision += 1;
        if let Some((known, liveness)) = &mut entry.foca {
            *known = new.clone();
            // A change of liveness follows as its own notification; without one the
            // member stays as it is, under its new identity.
            if *liveness != Liveness::Down {
                self.refresh(&new.name, true);
            }
        }
    }

    /// Reads suspicion from foca's member list, which it does not notify: members that
    /// became suspect, and suspects that refuted (up and down are notified).
    pub(crate) fn reconcile<'a>(&mut self, members: impl Iterator<Item = &'a foca::Member<Peer>>) {
        let suspects: Vec<&Peer> = members
            .filter(|member| member.state() == foca::State::Suspect)
            .map(foca::Member::id)
            .collect();
        let refuted: Vec<String> = self
            .suspects
            .iter()
            .filter(|name| !suspects.iter().any(|id| id.name() == name.as_str()))
            .cloned()
            .collect();
        for name in refuted {
            self.suspects.remove(&name);
            let Some(entry) = self.entries.get_mut(&name) else {
                continue;
            };
            if let Some((_, liveness @ Liveness::Suspect)) = &mut entry.foca {
                *liveness = Liveness::Alive;
                self.refresh(&name, false);
            }
        }
        for id in suspects {
            let Some(entry) = self.entries.get_mut(id.name()) else {
                continue;
            };
            match &mut entry.foca {
                Some((known, liveness)) if id.is(known) && *liveness == Liveness::Alive => {
                    *liveness = Liveness::Suspect;
                }
                _ => continue,
            }
            self.suspects.insert(id.name().to_owned());
            self.refresh(id.name(), false);
        }
    }

    fn set_liveness(&mut self, id: &NodeIdentity, liveness: Liveness, create: bool) {
        if id.name.is_empty() || id.name == self.me.name {
            return;
        }
        let tick = self.tick;
        let room = self.entries.len() < MAX_ENTRIES;
        let entry = match self.entries.get_mut(&id.name) {
            Some(entry) => entry,
            None if create && room => self
                .entries
                .entry(id.name.clone())
                .or_insert_with(|| Entry::new(tick)),
            None => return,
        };
        let updated = entry.foca.as_ref().is_some_and(|(known, _)| known != id);
        entry.foca = Some((id.clone(), liveness));
        entry.seen = tick;
        if liveness != Liveness::Suspect {
            self.suspects.remove(&id.name);
        }
        self.refresh(&id.name, updated);
    }

    /// Reports what changed about `name`; `updated` says its identity or info did.
    fn refresh(&mut self, name: &str, updated: bool) {
        self.revision += 1;
        let Some(entry) = self.entries.get_mut(name) else {
            return;
        };
        let previous = entry.shown;
        let Some(next) = entry.derived() else {
            return;
        };
        if previous.is_none() && !next.is_active() {
            // Never listed and already gone: nothing to tell.
            return;
        }
        if previous == Some(next) {
            if updated && let Some(member) = entry.member(next) {
                self.emit(ChangeKind::Updated, member);
            }
            return;
        }
        entry.shown = Some(next);
        if let Some(previous) = previous {
            self.counts[state_index(previous)] -= 1;
        }
        self.counts[state_index(next)] += 1;
        let reap_after = match next {
            MemberState::Failed => Some(self.reap_failed_after),
            MemberState::Left => Some(self.reap_left_after),
            _ => None,
        };
        if let Some(after) = reap_after {
            entry.epoch += 1;
            self.reaps.push(ReapRequest {
                name: name.to_owned(),
                epoch: entry.epoch,
                after,
            });
        }
        if let Some(member) = entry.member(next) {
            self.emit(change_kind(previous, next), member);
        }
    }

    /// A reap timer fired.
    pub(crate) fn reap(&mut self, name: &str, epoch: u64) {
        let Some(entry) = self.entries.get(name) else {
            return;
        };
        let Some(state) = entry.shown else {
            return;
        };
        if entry.epoch != epoch || state.is_active() {
            return;
        }
        let member = entry.member(state);
        self.entries.remove(name);
        self.revision += 1;
        self.counts[state_index(state)] -= 1;
        if let Some(member) = member {
            self.emit(ChangeKind::Reaped, member);
        }
    }

    /// Forgets infos whose member foca never reported.
    pub(crate) fn expire_unclaimed(&mut self) {
        let tick = self.tick;
        let before = self.entries.len();
        self.entries.retain(|_, entry| {
            entry.foca.is_some() || tick.saturating_sub(entry.seen) < UNCLAIMED_INFO_TICKS
        });
        if self.entries.len() != before {
            self.revision += 1;
        }
    }

    /// Up to `max` active members whose info is missing (or of an older generation) and
    /// due to be asked for, taking turns across calls.
    pub(crate) fn due_pulls(&mut self, max: usize) -> Vec<NodeIdentity> {
        let tick = self.tick;
        let cursor = self.pull_cursor.take();
        let after = match cursor.as_deref() {
            Some(c) => self
                .entries
                .range::<str, _>((Bound::Excluded(c), Bound::Unbounded)),
            None => self.entries.range::<str, _>(..),
        };
        let before = cursor.as_deref().map(|c| {
            self.entries
                .range::<str, _>((Bound::Unbounded, Bound::Included(c)))
        });
        let mut due = Vec::new();
        for (_, entry) in after.chain(before.into_iter().flatten()) {
            if due.len() == max {
                break;
            }
            let Some(id) = entry.wants_info() else {
                continue;
            };
            let waited = tick.saturating_sub(entry.seen) >= PULL_AFTER_TICKS;
            let rested = entry
                .pulled
                .is_none_or(|at| tick.saturating_sub(at) >= PULL_RETRY_TICKS);
            if waited && rested {
                due.push(id.clone());
            }
        }
        for id in &due {
            if let Some(entry) = self.entries.get_mut(&id.name) {
                entry.pulled = Some(tick);
            }
        }
        if due.len() == max {
            self.pull_cursor = due.last().map(|id| id.name.clone());
        }
        due
    }

    /// Whether foca already reported `member` as it is (same identity, same liveness).
    pub(crate) fn knows(&self, member: &foca::Member<Peer>) -> bool {
        let id = member.id();
        if id.name() == self.me.name {
            return id.is(&self.me) && member.state() == foca::State::Alive;
        }
        self.entries.get(id.name()).is_some_and(|entry| {
            entry.foca.as_ref().is_some_and(|(known, liveness)| {
                id.is(known) && *liveness == Liveness::from(member.state())
            })
        })
    }

    /// The info and leave intent known for `name`, this node included.
    pub(crate) fn sync_view(&self, name: &str) -> Option<(Option<MemberInfo>, Option<u64>)> {
        if name == self.me.name {
            let leave = (self.my_state != MemberState::Alive).then_some(self.me.generation);
            return Some((Some(self.my_info.clone()), leave));
        }
        let entry = self.entries.get(name)?;
        Some((entry.info.clone(), entry.leave))
    }

    /// Every listed member, this node included, sorted by name.
    pub(crate) fn members(&self) -> Vec<Member> {
        let mut members: Vec<Member> = self
            .entries
            .values()
            .filter_map(|entry| entry.member(entry.shown?))
            .collect();
        let mine = self.my_member();
        let at = members.partition_point(|m| m.name < mine.name);
        members.insert(at, mine);
        members
    }

    pub(crate) fn member(&self, name: &str) -> Option<Member> {
        if name == self.me.name {
            return Some(self.my_member());
        }
        let entry = self.entries.get(name)?;
        entry.member(entry.shown?)
    }

    /// The listed state of `name` and its generation.
    pub(crate) fn state_of(&self, name: &str) -> Option<(MemberState, u64)> {
        if name == self.me.name {
            return Some((self.my_state, self.me.generation));
        }
        let entry = self.entries.get(name)?;
        let (id, _) = entry.foca.as_ref()?;
        Some((entry.shown?, id.generation))
    }

    /// How many listed members are in `state`, this node included.
    pub(crate) fn count(&self, state: MemberState) -> usize {
        self.counts[state_index(state)] + usize::from(self.my_state == state)
    }

    /// Addresses of the listed members that failed.
    pub(crate) fn failed_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.entries
            .values()
            .filter(|entry| entry.shown == Some(MemberState::Failed))
            .filter_map(|entry| entry.foca.as_ref().map(|(id, _)| id.addr))
            .collect()
    }

    /// Addresses of the listed members that are alive or suspect.
    pub(crate) fn live_addrs(&self) -> Vec<std::net::SocketAddr> {
        let mut addrs: Vec<_> = self
            .entries
            .values()
            .filter(|entry| matches!(entry.shown, Some(MemberState::Alive | MemberState::Suspect)))
            .filter_map(|entry| entry.foca.as_ref().map(|(id, _)| id.addr))
            .filter(|addr| *addr != self.me.addr)
            .collect();
        addrs.sort_unstable();
        addrs.dedup();
        addrs
    }
}

/// What foca keys our broadcasts by: a newer broadcast about a node replaces the older
/// ones still waiting to be sent; an event replaces only itself.
#[derive(Clone, Debug)]
pub(crate) enum BroadcastKey {
    Member { name: String, version: InfoVersion },
    Event(EventKey),
}

impl Invalidates for BroadcastKey {
    fn invalidates(&self, other: &Self) -> bool {
        match (self, other) {
            (
                BroadcastKey::Member { name, version },
                BroadcastKey::Member {
                    name: other_name,
                    version: other_version,
                },
            ) => name == other_name && version >= other_version,
            (BroadcastKey::Event(key), BroadcastKey::Event(other)) => key == other,
            _ => false,
        }
    }
}

/// The [`BroadcastHandler`] foca owns: decodes infos, leave intents and user events and
/// applies them to the shared table. It answers `None` for anything not newer than what the table
/// knows, which is what stops foca from disseminating an item forever.
pub(crate) struct InfoHandler {
    pub table: std::sync::Arc<std::sync::Mutex<Table>>,
}

impl BroadcastHandler<Peer> for InfoHandler {
    type Key = BroadcastKey;
    type Error = MembershipError;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&Peer>,
    ) -> Result<Option<BroadcastKey>, MembershipError> {
        let item = wire::decode_broadcast(data)?;
        if let Broadcast::Event(event) = &item
            && event.payload.len() > MAX_EVENT_PAYLOAD
        {
            return Err(MembershipError::EventTooLarge {
                len: event.payload.len(),
                max: MAX_EVENT_PAYLOAD,
            });
        }
        let origin = if sender.is_some() {
            Origin::Gossip
        } else {
            Origin::Local
        };
        Ok(crate::lock(&self.table).apply_broadcast(item, origin))
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::config::Role;

    fn id(name: &str, generation: u64) -> NodeIdentity {
        NodeIdentity::new(name, SocketAddr::from(([10, 0, 0, 1], 7946)), generation)
    }

    fn info(name: &str, generation: u64, version: u64, tag: &str) -> MemberInfo {
        MemberInfo {
            name: name.to_owned(),
            generation,
            version,
            role: Role::Server,
            dc: "dc1".to_owned(),
            tags: BTreeMap::from([("t".to_owned(), tag.to_owned())]),
        }
    }

    fn table() -> Table {
        Table::new(
            id("me", 1),
            info("me", 1, 1, "mine"),
            Duration::from_secs(10),
            Duration::from_secs(20),
        )
    }

    fn kinds(table: &mut Table) -> Vec<(ChangeKind, String, MemberState)> {
        table
            .changes
            .drain(..)
            .map(|c| (c.kind, c.member.name, c.member.state))
            .collect()
    }

    #[test]
    fn listed_once_foca_and_info_both_arrived() {
        let mut t = table();
        t.member_up(&id("a", 1));
        assert!(kinds(&mut t).is_empty());
        assert!(t.member("a").is_none());
        assert!(
            t.apply_broadcast(Broadcast::Info(info("a", 1, 1, "x")), Origin::Gossip)
                .is_some()
        );
        assert_eq!(
            kinds(&mut t),
            [(ChangeKind::Joined, "a".into(), MemberState::Alive)]
        );
        let a = t.member("a").unwrap();
        assert_eq!(a.tags.get("role").map(String::as_str), Some("server"));
        assert_eq!(a.tags.get("dc").map(String::as_str), Some("dc1"));
    }

    #[test]
    fn stale_infos_are_refused_and_not_disseminated() {
        let mut t = table();
        t.member_up(&id("a", 1));
        t.apply_broadcast(Broadcast::Info(info("a", 1, 5, "new")), Origin::Gossip);
        kinds(&mut t);
        for stale in [info("a", 1, 4, "old"), info("a", 1, 5, "new")] {
            assert!(
                t.apply_broadcast(Broadcast::Info(stale), Origin::Gossip)
                    .is_none()
            );
        }
        assert_eq!(t.member("a").unwrap().tags["t"], "new");
        assert!(kinds(&mut t).is_empty());
    }

    #[test]
    fn leave_intent_then_down_is_left_and_reaped() {
        let mut t = table();
        t.member_up(&id("a", 1));
        t.apply_broadcast(Broadcast::Info(info("a", 1, 1, "x")), Origin::Gossip);
        let leave = Broadcast::Leave {
            name: "a".into(),
            generation: 1,
        };
        assert!(t.apply_broadcast(leave.clone(), Origin::Gossip).is_some());
        assert!(t.apply_broadcast(leave, Origin::Gossip).is_none());
        t.member_down(&id("a", 1));
        assert_eq!(
            kinds(&mut t)[1..],
            [
                (ChangeKind::Leaving, "a".into(), MemberState::Leaving),
                (ChangeKind::Left, "a".into(), MemberState::Left)
            ]
        );
        let reap = t.reaps.pop().unwrap();
        assert_eq!(reap.after, Duration::from_secs(20));
        t.reap("a", reap.epoch - 1);
        assert!(t.member("a").is_some());
        t.reap("a", reap.epoch);
        assert!(t.member("a").is_none());
        assert_eq!(
            kinds(&mut t),
            [(ChangeKind::Reaped, "a".into(), MemberState::Left)]
        );
    }

    #[test]
    fn a_leave_intent_about_this_node_is_refuted() {
        let mut t = table();
        let leave = Broadcast::Leave {
            name: "me".into(),
            generation: 1,
        };
        assert!(t.apply_broadcast(leave, Origin::Gossip).is_none());
        assert!(t.refute_leave);
    }

    #[test]
    fn later_generation_renames_in_place() {
        let mut t = table();
        t.member_up(&id("a", 1));
        t.apply_broadcast(Broadcast::Info(info("a", 1, 1, "x")), Origin::Gossip);
        t.member_down(&id("a", 1));
        t.renamed(&id("a", 1), &id("a", 2));
        t.member_up(&id("a", 2));
        assert_eq!(
            kinds(&mut t),
            [
                (ChangeKind::Joined, "a".into(), MemberState::Alive),
                (ChangeKind::Failed, "a".into(), MemberState::Failed),
                (ChangeKind::Joined, "a".into(), MemberState::Alive),
            ]
        );
        assert_eq!(t.member("a").unwrap().generation, 2);
        assert_eq!(t.members().len(), 2);
        // Its info is of generation 1: ask for the new one.
        t.tick += PULL_AFTER_TICKS;
        assert_eq!(t.due_pulls(8), [id("a", 2)]);
        assert!(t.due_pulls(8).is_empty());
    }
}
