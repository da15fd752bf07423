//! User events: opaque application payloads carried to every member on the gossip.
//!
//! The application names each event by an [`EventKey`] (its Lamport time and a unique
//! id); this crate knows nothing else of it. An event rides in foca packets as a custom
//! broadcast, sent again by every node that sees it for the first time (foca's
//! `max_transmissions`), and the most recent ones also ride along the anti-entropy
//! full-state exchange, so that a node that was partitioned away catches up.
//!
//! Every node remembers the keys it has seen (the last 1024, plus everything
//! ordered below the ones it forgot, like Serf's event buffer) and a floor set by the
//! agent at restart: an event is reported once per node, and never again after a
//! restart if the agent restores the floor from its saved Lamport time.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::config::MAX_PACKET_SIZE;

/// Largest payload of a user event: with its key, the foca header (two identities, with
/// names of up to 128 bytes) and the framing, it fits one packet of [`MAX_PACKET_SIZE`]
/// bytes, and so does a full-state packet carrying it.
pub const MAX_EVENT_PAYLOAD: usize = 1024;

const _: () = assert!(MAX_EVENT_PAYLOAD + 256 < MAX_PACKET_SIZE);

/// How many keys a node remembers one by one. Keys ordered below the ones it forgot
/// count as seen.
pub(crate) const SEEN_KEYS: usize = 1024;
/// How many recent events ride along a full-state exchange.
pub(crate) const RECENT_EVENTS: usize = 64;
/// How many payload bytes the recent events may take in all.
pub(crate) const RECENT_EVENT_BYTES: usize = 16 * 1024;

/// What names a user event: the Lamport time the application fired it at and an id
/// unique among the events of that time. Keys order by time, then id.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
pub struct EventKey {
    /// The application's Lamport time when the event was fired.
    pub ltime: u64,
    /// Unique among the events of the same time (a random UUID, say).
    pub id: [u8; 16],
}

/// A user event as it travels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EventItem {
    pub key: EventKey,
    pub payload: Vec<u8>,
}

/// The events a node has seen.
#[derive(Debug, Default)]
pub(crate) struct EventLog {
    /// The most recent keys seen.
    seen: BTreeSet<EventKey>,
    /// The largest key forgotten from `seen`: every key up to it counts as seen.
    forgotten: Option<EventKey>,
    /// Every key whose time is below it counts as seen.
    floor: u64,
    /// The largest Lamport time of any event received or fired.
    max_ltime: u64,
    /// The most recent events, for the full-state exchange.
    recent: BTreeMap<EventKey, Bytes>,
    recent_bytes: usize,
    /// Events to report to the driver.
    pub fired: Vec<(EventKey, Bytes)>,
}

impl EventLog {
    /// Whether `key` counts as seen.
    pub(crate) fn is_seen(&self, key: &EventKey) -> bool {
        key.ltime < self.floor
            || self.forgotten.is_some_and(|forgotten| *key <= forgotten)
            || self.seen.contains(key)
    }

    /// Records an event. Returns `false` if it counts as seen already; otherwise
    /// remembers it and, when `report`, queues it for the driver.
    pub(crate) fn record(&mut self, key: EventKey, payload: &Bytes, report: bool) -> bool {
        self.max_ltime = self.max_ltime.max(key.ltime);
        if self.is_seen(&key) {
            return false;
        }
        self.seen.insert(key);
        while self.seen.len() > SEEN_KEYS {
            if let Some(oldest) = self.seen.pop_first() {
                self.forgotten = Some(self.forgotten.map_or(oldest, |f| f.max(oldest)));
            }
        }
        self.recent.insert(key, payload.clone());
        self.recent_bytes += payload.len();
        while self.recent.len() > RECENT_EVENTS || self.recent_bytes > RECENT_EVENT_BYTES {
            match self.recent.pop_first() {
                Some((_, dropped)) => self.recent_bytes -= dropped.len(),
                None => break,
            }
        }
        if report {
            self.fired.push((key, payload.clone()));
        }
        true
    }

    /// Events whose time is below `ltime` count as seen from now on.
    pub(crate) fn set_floor(&mut self, ltime: u64) {
        self.floor = self.floor.max(ltime);
        let keep = self.recent.split_off(&EventKey {
            ltime: self.floor,
            id: [0; 16],
        });
        self.recent = keep;
        self.recent_bytes = self.recent.values().map(Bytes::len).sum();
    }

    pub(crate) fn max_ltime(&self) -> u64 {
        self.max_ltime
    }

    /// The most recent events, oldest first.
    pub(crate) fn recent(&self) -> Vec<EventItem> {
        self.recent
            .iter()
            .map(|(key, payload)| EventItem {
                key: *key,
                payload: payload.to_vec(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ltime: u64, id: u8) -> EventKey {
        EventKey {
            ltime,
            id: [id; 16],
        }
    }

    #[test]
    fn each_key_is_recorded_once_and_reported_when_asked() {
        let mut log = EventLog::default();
        let payload = Bytes::from_static(b"deploy");
        assert!(log.record(key(5, 1), &payload, true));
        assert!(!log.record(key(5, 1), &payload, true));
        assert!(log.record(key(5, 2), &payload, false));
        assert_eq!(log.fired, vec![(key(5, 1), payload)]);
        assert_eq!(log.max_ltime(), 5);
    }

    #[test]
    fn forgotten_keys_and_keys_below_the_floor_count_as_seen() {
        let mut log = EventLog::default();
        let payload = Bytes::from_static(b"x");
        for ltime in 0..(SEEN_KEYS as u64 + 10) {
            assert!(log.record(key(ltime + 100, 0), &payload, false));
        }
        assert_eq!(log.seen.len(), SEEN_KEYS);
        assert!(log.is_seen(&key(100, 0)));
        assert!(log.is_seen(&key(3, 9)), "below what was forgotten");
        assert!(!log.is_seen(&key(200_000, 0)));
        assert!(log.recent.len() <= RECENT_EVENTS);

        let mut log = EventLog::default();
        log.record(key(10, 0), &payload, false);
        log.set_floor(50);
        assert!(log.is_seen(&key(49, 7)));
        assert!(!log.is_seen(&key(50, 7)));
        assert!(log.recent().is_empty());
        assert!(!log.record(key(20, 1), &payload, true));
        assert!(log.fired.is_empty());
        assert_eq!(log.max_ltime(), 20, "even a stale time is witnessed");
    }

    #[test]
    fn recent_events_stay_within_their_byte_budget() {
        let mut log = EventLog::default();
        let payload = Bytes::from(vec![0; MAX_EVENT_PAYLOAD]);
        for ltime in 0..40 {
            log.record(key(ltime, 0), &payload, false);
        }
        let recent = log.recent();
        assert!(recent.len() * MAX_EVENT_PAYLOAD <= RECENT_EVENT_BYTES);
        assert_eq!(recent.last().map(|item| item.key), Some(key(39, 0)));
    }
}
