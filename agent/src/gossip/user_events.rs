//! The user events this agent received, as `/v1/event/list` serves them.
//!
//! The gossip driver pushes every user event that passed this agent's filters (fired
//! here or received) into an [`EventLog`]; HTTP handlers list it and wait on it. The log
//! is the last 256 events ([`events::EventRing`]); its blocking-query index is Consul's,
//! derived from the newest listed event's ID. That index is a hash, not a counter, so a
//! blocking list waits until the index is *different* from the one it was given.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use events::{EventRing, UserEvent};
use tokio::sync::watch;

/// The last user events of this agent. Shared between the gossip driver and the API.
#[derive(Debug)]
pub struct EventLog {
    ring: Mutex<EventRing>,
    generation: watch::Sender<u64>,
}

/// A list of events and its blocking-query index (never 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventList {
    /// Oldest first.
    pub events: Vec<UserEvent>,
    /// Consul's index of this list: from the newest event's ID, 1 when there is none.
    pub index: u64,
}

impl EventLog {
    /// An empty log.
    pub fn new() -> Arc<EventLog> {
        Arc::new(EventLog {
            ring: Mutex::new(EventRing::new()),
            generation: watch::Sender::new(0),
        })
    }

    /// Adds the newest event and wakes the blocking lists.
    pub fn push(&self, event: UserEvent) {
        let generation = self.ring().push(event);
        self.generation.send_replace(generation);
    }

    /// The events called `name` (all if `None`), oldest first.
    pub fn list(&self, name: Option<&str>) -> EventList {
        let ring = self.ring();
        EventList {
            events: ring.list(name),
            index: ring.index_for(name).max(1),
        }
    }

    /// Like [`EventLog::list`], but first waits (at most `wait`) until the list's index
    /// differs from `index`.
    pub async fn wait(&self, name: Option<&str>, index: u64, wait: Duration) -> EventList {
        // Subscribed before the first look, so a push in between wakes us.
        let mut changes = self.generation.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let list = self.list(name);
            if list.index != index {
                return list;
            }
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return list;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return list,
            }
        }
    }

    fn ring(&self) -> MutexGuard<'_, EventRing> {
        // The ring is consistent after every statement; a panic elsewhere cannot break it.
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u8, name: &str) -> UserEvent {
        let mut random = [0; 16];
        random[15] = n;
        UserEvent::new(UserEvent::new_id(random), name, vec![n], n.into(), "node-a")
    }

    #[test]
    fn lists_with_consul_indexes() {
        let log = EventLog::new();
        assert_eq!(log.list(None).index, 1);
        let a = event(1, "deploy");
        log.push(a.clone());
        log.push(event(2, "restart"));
        let deploys = log.list(Some("deploy"));
        assert_eq!(deploys.events, vec![a.clone()]);
        assert_eq!(deploys.index, a.index());
        assert_eq!(log.list(None).events.len(), 2);
        assert_eq!(log.list(Some("none")).index, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_returns_on_a_new_event_or_at_the_deadline() {
        let log = EventLog::new();
        let first = log.list(None);
        // Nothing new: returns the same list at the deadline.
        let same = log.wait(None, first.index, Duration::from_secs(5)).await;
        assert_eq!(same, first);

        let waiter = {
            let log = log.clone();
            tokio::spawn(async move { log.wait(None, 1, Duration::from_secs(60)).await })
        };
        tokio::task::yield_now().await;
        log.push(event(3, "deploy"));
        let woken = waiter.await.unwrap();
        assert_eq!(woken.events.len(), 1);
        assert_ne!(woken.index, 1);

        // An index that is not the current one returns at once.
        let at_once = tokio::time::timeout(
            Duration::from_millis(1),
            log.wait(None, 12345, Duration::from_secs(60)),
        )
        .await;
        assert!(at_once.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_name_filtered_wait_ignores_other_names() {
        let log = EventLog::new();
        let waiter = {
            let log = log.clone();
            tokio::spawn(async move { log.wait(Some("deploy"), 1, Duration::from_secs(30)).await })
        };
        tokio::task::yield_now().await;
        log.push(event(4, "restart"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished());
        log.push(event(5, "deploy"));
        assert_eq!(waiter.await.unwrap().events.len(), 1);
    }
}
