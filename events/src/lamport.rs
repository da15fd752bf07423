//! Lamport clocks: a logical time that orders user events across the mesh.
//!
//! The rules are Serf's (`serf/lamport.go`): a node stamps what it sends with its current
//! time and then increments; on receiving a time `t` it advances to `t + 1` unless it is
//! already past `t`.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A thread-safe Lamport clock.
///
/// Persist [`LamportClock::time`] and restore it with [`LamportClock::new`] so that a
/// restarted agent neither reuses old times nor fires old events again (see
/// [`crate::RecentEvents::with_floor`]). It serializes as its bare `u64` time.
///
/// Times saturate at `u64::MAX` instead of wrapping, so a peer that sends a huge time can
/// stall the clock but never send it back to zero.
#[derive(Debug, Default)]
pub struct LamportClock {
    counter: AtomicU64,
}

impl LamportClock {
    /// A clock that starts at `time` (0 for a new node, the saved time after a restart).
    pub fn new(time: u64) -> LamportClock {
        LamportClock {
            counter: AtomicU64::new(time),
        }
    }

    /// The current time.
    pub fn time(&self) -> u64 {
        self.counter.load(Ordering::SeqCst)
    }

    /// Advances the clock by one and returns the new time.
    pub fn increment(&self) -> u64 {
        let previous = self
            .counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add(1))
            })
            // The closure always returns `Some`, so the update cannot fail.
            .unwrap_or_else(|t| t);
        previous.saturating_add(1)
    }

    /// Takes note of a time seen from another node: if `other` is not older than the
    /// current time, the clock moves to `other + 1`; otherwise nothing changes.
    pub fn witness(&self, other: u64) {
        self.counter
            .fetch_max(other.saturating_add(1), Ordering::SeqCst);
    }
}

impl Clone for LamportClock {
    fn clone(&self) -> Self {
        LamportClock::new(self.time())
    }
}

impl Serialize for LamportClock {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.time().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for LamportClock {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        u64::deserialize(deserializer).map(LamportClock::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn increment_returns_the_new_time() {
        let clock = LamportClock::default();
        assert_eq!(clock.time(), 0);
        assert_eq!(clock.increment(), 1);
        assert_eq!(clock.increment(), 2);
        assert_eq!(clock.time(), 2);
    }

    #[test]
    fn witness_moves_one_past_a_time_not_older_than_ours() {
        let clock = LamportClock::new(5);
        clock.witness(3);
        assert_eq!(clock.time(), 5, "an older time changes nothing");
        clock.witness(5);
        assert_eq!(clock.time(), 6, "an equal time moves one past it");
        clock.witness(41);
        assert_eq!(clock.time(), 42);
    }

    #[test]
    fn a_huge_time_saturates_instead_of_wrapping() {
        let clock = LamportClock::default();
        clock.witness(u64::MAX);
        assert_eq!(clock.time(), u64::MAX);
        assert_eq!(clock.increment(), u64::MAX);
        assert_eq!(clock.time(), u64::MAX);
    }

    #[test]
    fn persists_as_its_time() {
        let clock = LamportClock::new(17);
        let saved = postcard::to_allocvec(&clock).unwrap();
        let restored: LamportClock = postcard::from_bytes(&saved).unwrap();
        assert_eq!(restored.time(), 17);
        assert_eq!(serde_json::to_string(&clock).unwrap(), "17");
    }

    #[test]
    fn concurrent_increments_are_not_lost() {
        let clock = std::sync::Arc::new(LamportClock::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let clock = clock.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        clock.increment();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(clock.time(), 4000);
    }
}
