//! The last user events an agent received, for `/v1/event/list`.
//!
//! Consul's agent keeps the last 256 events that passed its filters
//! (`agent/user_event.go`, `ingestUserEvent`) and serves them oldest first; the blocking
//! query index is derived from the ID of the newest listed event (`uuidToUint64` in
//! `agent/event_endpoint.go`), see [`UserEvent::index`].
//!
//! Waiting for a change: the ring counts its changes ([`EventRing::generation`]) and
//! [`EventRing::push`] returns the new count. The ring does no I/O; the agent that owns it
//! publishes that count (on a `tokio::sync::watch` channel, say) and a blocking list waits
//! for it to move past the count it listed at, or for its timeout.

use std::collections::VecDeque;

use crate::UserEvent;

/// Events kept: Consul's 256.
pub const EVENT_RING_CAPACITY: usize = 256;

/// The last [`EVENT_RING_CAPACITY`] (or a chosen number of) user events, oldest first.
#[derive(Debug, Clone)]
pub struct EventRing {
    events: VecDeque<UserEvent>,
    capacity: usize,
    generation: u64,
}

impl EventRing {
    /// An empty ring of [`EVENT_RING_CAPACITY`] events.
    pub fn new() -> EventRing {
        EventRing::with_capacity(EVENT_RING_CAPACITY)
    }

    /// An empty ring of `capacity` events (at least 1).
    pub fn with_capacity(capacity: usize) -> EventRing {
        let capacity = capacity.max(1);
        EventRing {
            events: VecDeque::with_capacity(capacity),
            capacity,
            generation: 0,
        }
    }

    /// Adds the newest event, forgetting the oldest if the ring is full; returns the new
    /// [`EventRing::generation`].
    pub fn push(&mut self, event: UserEvent) -> u64 {
        if self.events.len() == self.capacity {
            self.events.pop_front();
        }
        self.events.push_back(event);
        self.generation += 1;
        self.generation
    }

    /// The events, oldest first; only those called `name` if given.
    pub fn list(&self, name: Option<&str>) -> Vec<UserEvent> {
        self.events
            .iter()
            .filter(|e| name.is_none_or(|name| e.name == name))
            .cloned()
            .collect()
    }

    /// The index of the newest event ([`UserEvent::index`]), 0 if there is none (the HTTP
    /// layer reports at least 1).
    pub fn index(&self) -> u64 {
        self.index_for(None)
    }

    /// The index of the newest event called `name` (any name if `None`), 0 if there is
    /// none: Consul derives the index from the last event of the filtered list.
    pub fn index_for(&self, name: Option<&str>) -> u64 {
        self.events
            .iter()
            .rev()
            .find(|e| name.is_none_or(|name| e.name == name))
            .map_or(0, UserEvent::index)
    }

    /// The newest event.
    pub fn last(&self) -> Option<&UserEvent> {
        self.events.back()
    }

    /// How many times an event was pushed: it changes exactly when the ring does.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// How many events the ring holds.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether the ring holds no event.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

impl Default for EventRing {
    fn default() -> Self {
        EventRing::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u8, name: &str) -> UserEvent {
        let mut random = [0; 16];
        random[0] = n;
        UserEvent::new(
            UserEvent::new_id(random),
            name,
            vec![n],
            u64::from(n),
            "node-a",
        )
    }

    #[test]
    fn lists_oldest_first_and_filters_by_name() {
        let mut ring = EventRing::new();
        ring.push(event(1, "deploy"));
        ring.push(event(2, "restart"));
        ring.push(event(3, "deploy"));
        let all: Vec<u8> = ring.list(None).iter().map(|e| e.payload[0]).collect();
        assert_eq!(all, vec![1, 2, 3]);
        let deploys: Vec<u8> = ring
            .list(Some("deploy"))
            .iter()
            .map(|e| e.payload[0])
            .collect();
        assert_eq!(deploys, vec![1, 3]);
        assert!(ring.list(Some("other")).is_empty());
    }

    #[test]
    fn keeps_the_last_256() {
        let mut ring = EventRing::new();
        for n in 0..300u32 {
            let mut e = event(0, "deploy");
            e.ltime = u64::from(n);
            ring.push(e);
        }
        let list = ring.list(None);
        assert_eq!(list.len(), EVENT_RING_CAPACITY);
        assert_eq!(list.first().map(|e| e.ltime), Some(44));
        assert_eq!(list.last().map(|e| e.ltime), Some(299));
    }

    #[test]
    fn index_comes_from_the_newest_event_and_is_zero_when_empty() {
        let mut ring = EventRing::with_capacity(2);
        assert_eq!(ring.index(), 0);
        let a = event(1, "deploy");
        let b = event(2, "restart");
        ring.push(a.clone());
        assert_eq!(ring.index(), a.index());
        ring.push(b.clone());
        assert_eq!(ring.index(), b.index());
        assert_ne!(a.index(), b.index());
        assert_eq!(ring.index_for(Some("deploy")), a.index());
        assert_eq!(ring.index_for(Some("other")), 0);
    }

    #[test]
    fn generation_moves_on_every_push() {
        let mut ring = EventRing::with_capacity(1);
        assert_eq!(ring.generation(), 0);
        assert_eq!(ring.push(event(1, "a")), 1);
        assert_eq!(ring.push(event(2, "a")), 2);
        assert_eq!(ring.generation(), 2);
        assert_eq!(ring.len(), 1);
        assert_eq!(ring.last(), Some(&event(2, "a")));
    }
}
