//! Recently seen user events, so that an event gossiped many times is delivered once.
//!
//! This is Serf's event buffer (`handleUserEvent` in `serf/serf.go`): a ring of slots
//! indexed by `ltime % size`, each holding the events of one Lamport time. An event is
//! new unless its slot holds the same time and an event with the same ID. An event more
//! than `size` times older than the newest one seen is "too old": its slot may already
//! have been reused, so it can no longer be told apart from one already delivered, and it
//! is dropped. Events below a floor are dropped too: a restarted agent sets the floor to
//! its saved event clock so it does not fire old events again (Serf's `eventMinTime`).
//!
//! Serf measures "too old" from its event clock after witnessing the event; this buffer
//! measures it from the newest time it holds, which is the same as long as every event
//! (local ones included) passes through [`RecentEvents::observe`].
//!
//! The buffer is also what agents exchange in a push-pull ([`RecentEvents::snapshot`],
//! [`RecentEvents::recent_for_sync`], [`RecentEvents::merge`]), as Serf's push-pull
//! carries its event buffer, so an agent that missed a broadcast still gets the event.

use std::num::NonZeroUsize;

use crate::UserEvent;

/// Serf's default number of Lamport times kept (`EventBuffer`).
pub const DEFAULT_BUFFER_SIZE: usize = 512;

/// Most distinct events kept for one Lamport time; further ones are refused
/// ([`Observed::Overflow`]) so that a peer cannot grow the buffer without bound.
pub const MAX_EVENTS_PER_LTIME: usize = 32;

/// What [`RecentEvents::observe`] made of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Observed {
    /// First time seen: deliver it and gossip it on.
    New,
    /// Seen before: drop it.
    Duplicate,
    /// Older than the floor or the buffer's window: drop it.
    TooOld,
    /// Its Lamport time already holds [`MAX_EVENTS_PER_LTIME`] other events: drop it.
    Overflow,
}

#[derive(Debug, Clone)]
struct Slot {
    ltime: u64,
    events: Vec<UserEvent>,
}

/// The buffer of recently seen user events.
#[derive(Debug, Clone)]
pub struct RecentEvents {
    slots: Vec<Option<Slot>>,
    floor: u64,
    newest: Option<u64>,
}

impl RecentEvents {
    /// An empty buffer of [`DEFAULT_BUFFER_SIZE`] times, with no floor.
    pub fn new() -> RecentEvents {
        RecentEvents::with_floor(0)
    }

    /// An empty buffer that treats every event with `ltime < floor` as too old.
    ///
    /// After a restart, pass the saved [`crate::LamportClock::time`] of the event clock:
    /// every event delivered before the restart has a lower time. (Serf saves the last
    /// event's time and uses it plus one, which is the same floor.)
    pub fn with_floor(floor: u64) -> RecentEvents {
        RecentEvents::with_size(
            NonZeroUsize::new(DEFAULT_BUFFER_SIZE).unwrap_or(NonZeroUsize::MIN),
            floor,
        )
    }

    /// An empty buffer of `size` Lamport times with a floor.
    pub fn with_size(size: NonZeroUsize, floor: u64) -> RecentEvents {
        RecentEvents {
            slots: vec![None; size.get()],
            floor,
            newest: None,
        }
    }

    /// The lowest Lamport time accepted.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Raises the floor to `ltime` (never lowers it). Serf does this on a join that should
    /// ignore old events, with the event time of the node it joined through.
    pub fn raise_floor(&mut self, ltime: u64) {
        self.floor = self.floor.max(ltime);
    }

    /// The newest Lamport time in the buffer.
    pub fn newest(&self) -> Option<u64> {
        self.newest
    }

    /// How many events the buffer holds.
    pub fn len(&self) -> usize {
        self.slots.iter().flatten().map(|s| s.events.len()).sum()
    }

    /// Whether the buffer holds no event.
    pub fn is_empty(&self) -> bool {
        self.newest.is_none()
    }

    /// Records `event` if it is new; events are the same if they have the same Lamport
    /// time and ID.
    pub fn observe(&mut self, event: &UserEvent) -> Observed {
        let ltime = event.ltime;
        if ltime < self.floor || self.outside_window(ltime) {
            return Observed::TooOld;
        }
        let size = self.slots.len() as u64;
        // The remainder is below `slots.len()`, so it fits in a usize.
        let index = (ltime % size) as usize;
        let slot = &mut self.slots[index];
        match slot {
            Some(slot) if slot.ltime == ltime => {
                if slot.events.iter().any(|seen| seen.id == event.id) {
                    return Observed::Duplicate;
                }
                if slot.events.len() >= MAX_EVENTS_PER_LTIME {
                    return Observed::Overflow;
                }
                slot.events.push(event.clone());
            }
            // A slot holding a newer time cannot happen inside the window; be safe anyway.
            Some(slot) if slot.ltime > ltime => return Observed::TooOld,
            _ => {
                *slot = Some(Slot {
                    ltime,
                    events: vec![event.clone()],
                });
            }
        }
        self.newest = Some(self.newest.map_or(ltime, |n| n.max(ltime)));
        Observed::New
    }

    /// Every event in the buffer, oldest first (by Lamport time, then ID).
    pub fn snapshot(&self) -> Vec<UserEvent> {
        let mut events: Vec<UserEvent> = self
            .slots
            .iter()
            .flatten()
            .flat_map(|slot| slot.events.iter().cloned())
            .collect();
        events.sort_by_key(|e| (e.ltime, e.id));
        events
    }

    /// At most the `max` newest events, oldest first: what to send a peer in a push-pull.
    pub fn recent_for_sync(&self, max: usize) -> Vec<UserEvent> {
        let mut events = self.snapshot();
        let skip = events.len().saturating_sub(max);
        events.drain(..skip);
        events
    }

    /// Observes a peer's events (from its [`RecentEvents::recent_for_sync`]), oldest
    /// first, and returns those that were new here, in that order.
    pub fn merge(&mut self, events: impl IntoIterator<Item = UserEvent>) -> Vec<UserEvent> {
        let mut events: Vec<UserEvent> = events.into_iter().collect();
        events.sort_by_key(|e| (e.ltime, e.id));
        events.retain(|e| self.observe(e) == Observed::New);
        events
    }

    /// Whether `ltime` is so far behind the newest time that its slot may have been
    /// reused: Serf's `ltime < clock - size` with the clock one past the newest time.
    fn outside_window(&self, ltime: u64) -> bool {
        let size = self.slots.len() as u64;
        let clock = self
            .newest
            .map_or(0, |n| n.saturating_add(1))
            .max(ltime.saturating_add(1));
        clock > size && ltime < clock - size
    }
}

impl Default for RecentEvents {
    fn default() -> Self {
        RecentEvents::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ltime: u64, n: u8) -> UserEvent {
        UserEvent::new(
            UserEvent::new_id([n; 16]),
            "deploy",
            vec![n],
            ltime,
            "node-a",
        )
    }

    fn small(size: usize) -> RecentEvents {
        RecentEvents::with_size(NonZeroUsize::new(size).unwrap(), 0)
    }

    #[test]
    fn an_event_is_new_exactly_once() {
        let mut recent = RecentEvents::new();
        let e = event(10, 1);
        assert_eq!(recent.observe(&e), Observed::New);
        for _ in 0..5 {
            assert_eq!(recent.observe(&e), Observed::Duplicate);
        }
        assert_eq!(recent.len(), 1);
    }

    #[test]
    fn distinct_events_at_the_same_time_are_both_new() {
        let mut recent = RecentEvents::new();
        assert_eq!(recent.observe(&event(10, 1)), Observed::New);
        assert_eq!(recent.observe(&event(10, 2)), Observed::New);
        assert_eq!(recent.observe(&event(10, 1)), Observed::Duplicate);
        assert_eq!(recent.observe(&event(10, 2)), Observed::Duplicate);
        // The same ID at another time is another event (Serf keys by time too).
        assert_eq!(recent.observe(&event(11, 1)), Observed::New);
        assert_eq!(recent.len(), 3);
    }

    #[test]
    fn events_out_of_the_window_are_too_old() {
        let mut recent = small(4);
        assert_eq!(recent.observe(&event(10, 1)), Observed::New);
        // Window with newest 10 and size 4: 7..=10.
        assert_eq!(recent.observe(&event(7, 2)), Observed::New);
        assert_eq!(recent.observe(&event(6, 3)), Observed::TooOld);
        // A newer event moves the window and reuses the slot of 7.
        assert_eq!(recent.observe(&event(11, 4)), Observed::New);
        assert_eq!(recent.observe(&event(7, 2)), Observed::TooOld);
        assert_eq!(recent.observe(&event(8, 5)), Observed::New);
    }

    #[test]
    fn a_reused_slot_forgets_the_old_time() {
        let mut recent = small(4);
        recent.observe(&event(1, 1));
        assert_eq!(recent.observe(&event(5, 2)), Observed::New);
        assert_eq!(recent.len(), 1);
        assert_eq!(recent.snapshot(), vec![event(5, 2)]);
    }

    #[test]
    fn the_floor_drops_events_fired_before_a_restart() {
        let mut recent = RecentEvents::with_floor(100);
        assert_eq!(recent.observe(&event(99, 1)), Observed::TooOld);
        assert_eq!(recent.observe(&event(100, 2)), Observed::New);
        recent.raise_floor(150);
        recent.raise_floor(120);
        assert_eq!(recent.floor(), 150);
        assert_eq!(recent.observe(&event(149, 3)), Observed::TooOld);
    }

    #[test]
    fn one_time_holds_a_bounded_number_of_events() {
        let mut recent = RecentEvents::new();
        for n in 0..MAX_EVENTS_PER_LTIME {
            assert_eq!(recent.observe(&event(1, n as u8)), Observed::New);
        }
        assert_eq!(recent.observe(&event(1, 200)), Observed::Overflow);
        assert_eq!(recent.observe(&event(1, 0)), Observed::Duplicate);
        assert_eq!(recent.observe(&event(2, 200)), Observed::New);
    }

    #[test]
    fn snapshot_is_oldest_first_and_sync_takes_the_newest() {
        let mut recent = RecentEvents::new();
        for (ltime, n) in [(5, 1), (3, 2), (9, 3), (3, 1)] {
            recent.observe(&event(ltime, n));
        }
        let times: Vec<(u64, u8)> = recent
            .snapshot()
            .iter()
            .map(|e| (e.ltime, e.payload[0]))
            .collect();
        assert_eq!(times, vec![(3, 1), (3, 2), (5, 1), (9, 3)]);
        let sync: Vec<u64> = recent.recent_for_sync(2).iter().map(|e| e.ltime).collect();
        assert_eq!(sync, vec![5, 9]);
        assert_eq!(recent.recent_for_sync(100).len(), 4);
        assert_eq!(recent.newest(), Some(9));
    }

    #[test]
    fn merge_delivers_what_a_peer_saw_and_we_missed() {
        let mut ours = RecentEvents::new();
        let mut theirs = RecentEvents::new();
        for e in [event(1, 1), event(2, 2)] {
            ours.observe(&e);
            theirs.observe(&e);
        }
        theirs.observe(&event(4, 4));
        theirs.observe(&event(3, 3));
        let new = ours.merge(theirs.recent_for_sync(DEFAULT_BUFFER_SIZE));
        assert_eq!(new, vec![event(3, 3), event(4, 4)]);
        assert!(
            ours.merge(theirs.snapshot()).is_empty(),
            "merging twice adds nothing"
        );
        assert_eq!(ours.snapshot(), theirs.snapshot());
    }

    #[test]
    fn regossip_in_any_order_delivers_each_event_once() {
        // The same ten events arrive three times, each time in another order.
        let events: Vec<UserEvent> = (0..10).map(|n| event(n / 2, n as u8)).collect();
        let mut delivered = 0;
        let mut recent = RecentEvents::new();
        for round in 0..3u64 {
            for i in 0..events.len() as u64 {
                let e = &events[((i * 7 + round * 3) % events.len() as u64) as usize];
                if recent.observe(e) == Observed::New {
                    delivered += 1;
                }
            }
        }
        assert_eq!(delivered, events.len());
    }
}
