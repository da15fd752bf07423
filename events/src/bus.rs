//! The in-process bus: every component publishes what happened, any number of
//! subscribers receive it.
//!
//! Delivery is a bounded broadcast: a subscriber that falls more than the capacity
//! behind loses the oldest events and is told how many ([`Received::Lagged`]), so a slow
//! subscriber can never hold up the publishers or grow memory without bound.

use tokio::sync::broadcast;

use crate::Event;

/// Events kept for a slow subscriber before it starts losing the oldest.
pub const DEFAULT_CAPACITY: usize = 4096;

/// The bus. Cheap to clone; every clone publishes to the same subscribers.
#[derive(Debug, Clone)]
pub struct Bus {
    sender: broadcast::Sender<Event>,
}

/// A subscriber's end of the bus.
#[derive(Debug)]
pub struct Subscription {
    receiver: broadcast::Receiver<Event>,
}

/// What a subscriber gets from [`Subscription::recv`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// The next event.
    Event(Event),
    /// The subscriber fell behind and this many events were lost.
    Lagged(u64),
    /// Every publisher is gone.
    Closed,
}

impl Bus {
    /// A bus that keeps [`DEFAULT_CAPACITY`] events for each subscriber.
    pub fn new() -> Bus {
        Bus::with_capacity(DEFAULT_CAPACITY)
    }

    /// A bus that keeps `capacity` events (at least 1) for each subscriber.
    pub fn with_capacity(capacity: usize) -> Bus {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Bus { sender }
    }

    /// Publishes `event` to every current subscriber; returns how many there were.
    pub fn publish(&self, event: Event) -> usize {
        self.sender.send(event).unwrap_or(0)
    }

    /// A new subscription that receives every event published from now on.
    pub fn subscribe(&self) -> Subscription {
        Subscription {
            receiver: self.sender.subscribe(),
        }
    }
}

impl Default for Bus {
    fn default() -> Self {
        Bus::new()
    }
}

impl Subscription {
    /// Waits for the next event.
    pub async fn recv(&mut self) -> Received {
        match self.receiver.recv().await {
            Ok(event) => Received::Event(event),
            Err(broadcast::error::RecvError::Lagged(n)) => Received::Lagged(n),
            Err(broadcast::error::RecvError::Closed) => Received::Closed,
        }
    }

    /// The next event if one is waiting, without blocking.
    pub fn try_recv(&mut self) -> Option<Received> {
        match self.receiver.try_recv() {
            Ok(event) => Some(Received::Event(event)),
            Err(broadcast::error::TryRecvError::Lagged(n)) => Some(Received::Lagged(n)),
            Err(broadcast::error::TryRecvError::Closed) => Some(Received::Closed),
            Err(broadcast::error::TryRecvError::Empty) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemberEvent, MemberEventKind};

    fn event(name: &str) -> Event {
        Event::Member(MemberEvent {
            kind: MemberEventKind::Join,
            name: name.into(),
            addr: "127.0.0.1:8301".parse().unwrap(),
            dc: "dc1".into(),
            role: "client".into(),
            tags: Default::default(),
            status: 1,
        })
    }

    #[tokio::test]
    async fn every_subscriber_gets_every_event_in_order() {
        let bus = Bus::new();
        let mut a = bus.subscribe();
        let mut b = bus.subscribe();
        assert_eq!(bus.publish(event("n1")), 2);
        bus.publish(event("n2"));
        for sub in [&mut a, &mut b] {
            assert_eq!(sub.recv().await, Received::Event(event("n1")));
            assert_eq!(sub.recv().await, Received::Event(event("n2")));
            assert_eq!(sub.try_recv(), None);
        }
    }

    #[test]
    fn a_late_subscriber_sees_only_later_events() {
        let bus = Bus::new();
        assert_eq!(bus.publish(event("before")), 0);
        let mut sub = bus.subscribe();
        bus.publish(event("after"));
        assert_eq!(sub.try_recv(), Some(Received::Event(event("after"))));
    }

    #[test]
    fn a_slow_subscriber_loses_the_oldest_and_is_told() {
        let bus = Bus::with_capacity(2);
        let mut sub = bus.subscribe();
        for name in ["a", "b", "c", "d"] {
            bus.publish(event(name));
        }
        assert_eq!(sub.try_recv(), Some(Received::Lagged(2)));
        assert_eq!(sub.try_recv(), Some(Received::Event(event("c"))));
        assert_eq!(sub.try_recv(), Some(Received::Event(event("d"))));
    }

    #[test]
    fn closed_when_every_publisher_is_gone() {
        let bus = Bus::new();
        let mut sub = bus.subscribe();
        drop(bus);
        assert_eq!(sub.try_recv(), Some(Received::Closed));
    }
}
