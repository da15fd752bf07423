//! Coalescing of member events for handlers, as Serf does (`serf/coalesce.go`,
//! `serf/coalesce_member.go`).
//!
//! When many members change at once (a rack boots, a switch flaps), handlers should run
//! once with the final state rather than once per change. The coalescer keeps only the
//! latest event of each member. It flushes when no event arrived for the quiescent period,
//! or at the latest a coalesce period after the first event of the batch. A member whose
//! latest event repeats the last one flushed for it is left out (for updates, only if the
//! member is also unchanged). What is flushed is grouped by kind.
//!
//! Sans-I/O: the caller passes the time in. Feed events with
//! [`MemberCoalescer::push`], sleep until [`MemberCoalescer::next_deadline`], then call
//! [`MemberCoalescer::poll_flush`]; on shutdown, [`MemberCoalescer::flush`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::{MemberEvent, MemberEventKind};

/// The Serf agent's coalesce period for member events.
pub const DEFAULT_COALESCE_PERIOD: Duration = Duration::from_secs(3);

/// The Serf agent's quiescent period for member events.
pub const DEFAULT_QUIESCENT_PERIOD: Duration = Duration::from_secs(1);

/// How long the coalescer holds events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoalesceConfig {
    /// Longest a batch is held, from its first event.
    pub coalesce_period: Duration,
    /// A batch is flushed once no event arrived for this long.
    pub quiescent_period: Duration,
}

impl Default for CoalesceConfig {
    /// Serf agent's values: [`DEFAULT_COALESCE_PERIOD`], [`DEFAULT_QUIESCENT_PERIOD`].
    fn default() -> Self {
        CoalesceConfig {
            coalesce_period: DEFAULT_COALESCE_PERIOD,
            quiescent_period: DEFAULT_QUIESCENT_PERIOD,
        }
    }
}

/// Coalesces member events; see the module documentation.
#[derive(Debug, Clone)]
pub struct MemberCoalescer {
    config: CoalesceConfig,
    /// Latest event of each member in the current batch.
    pending: BTreeMap<String, MemberEvent>,
    /// Last event flushed for each member.
    last: BTreeMap<String, MemberEvent>,
    /// When the current batch must be flushed at the latest.
    quantum: Option<Instant>,
    /// When the current batch is flushed if nothing else arrives.
    quiescent: Option<Instant>,
}

impl MemberCoalescer {
    /// A coalescer with nothing pending.
    pub fn new(config: CoalesceConfig) -> MemberCoalescer {
        MemberCoalescer {
            config,
            pending: BTreeMap::new(),
            last: BTreeMap::new(),
            quantum: None,
            quiescent: None,
        }
    }

    /// Takes in an event received at `now`; it replaces any pending event of the member.
    pub fn push(&mut self, event: MemberEvent, now: Instant) {
        if self.quantum.is_none() {
            self.quantum = Some(now + self.config.coalesce_period);
        }
        self.quiescent = Some(now + self.config.quiescent_period);
        self.pending.insert(event.name.clone(), event);
    }

    /// When [`MemberCoalescer::poll_flush`] has something to do, if anything is pending.
    pub fn next_deadline(&self) -> Option<Instant> {
        match (self.quantum, self.quiescent) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The coalesced events if a deadline has passed at `now` and any is left after
    /// dropping repeats; grouped by kind (in [`MemberEventKind`] order), then by name.
    pub fn poll_flush(&mut self, now: Instant) -> Option<Vec<MemberEvent>> {
        let due = self.next_deadline().is_some_and(|deadline| now >= deadline);
        if !due {
            return None;
        }
        Some(self.flush()).filter(|events| !events.is_empty())
    }

    /// Flushes whatever is pending now, whatever the deadlines (on shutdown, as Serf does).
    pub fn flush(&mut self) -> Vec<MemberEvent> {
        self.quantum = None;
        self.quiescent = None;
        let mut out = Vec::with_capacity(self.pending.len());
        for (name, event) in std::mem::take(&mut self.pending) {
            if self
                .last
                .get(&name)
                .is_some_and(|last| repeats(&event, last))
            {
                continue;
            }
            if event.kind == MemberEventKind::Reap {
                // A reaped member is forgotten; nothing is left to compare with.
                self.last.remove(&name);
            } else {
                self.last.insert(name, event.clone());
            }
            out.push(event);
        }
        // Stable: names stay sorted within a kind.
        out.sort_by_key(|event| kind_order(event.kind));
        out
    }

    /// Whether events are waiting for a deadline.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

/// Serf's `nodeEvent.Equal`: the same kind, and for an update also the same member.
fn repeats(event: &MemberEvent, last: &MemberEvent) -> bool {
    event.kind == last.kind && (event.kind != MemberEventKind::Update || event == last)
}

fn kind_order(kind: MemberEventKind) -> u8 {
    match kind {
        MemberEventKind::Join => 0,
        MemberEventKind::Update => 1,
        MemberEventKind::Suspect => 2,
        MemberEventKind::Alive => 3,
        MemberEventKind::Failed => 4,
        MemberEventKind::Leaving => 5,
        MemberEventKind::Leave => 6,
        MemberEventKind::Reap => 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn member(kind: MemberEventKind, name: &str) -> MemberEvent {
        MemberEvent {
            kind,
            name: name.into(),
            addr: "10.0.0.1:8301".parse().unwrap(),
            dc: "dc1".into(),
            role: "client".into(),
            tags: Default::default(),
            status: 1,
        }
    }

    fn names(events: &[MemberEvent]) -> Vec<(MemberEventKind, &str)> {
        events.iter().map(|e| (e.kind, e.name.as_str())).collect()
    }

    fn coalescer() -> MemberCoalescer {
        MemberCoalescer::new(CoalesceConfig::default())
    }

    #[test]
    fn defaults_are_the_serf_agents() {
        let config = CoalesceConfig::default();
        assert_eq!(config.coalesce_period, Duration::from_secs(3));
        assert_eq!(config.quiescent_period, Duration::from_secs(1));
    }

    #[test]
    fn nothing_pending_means_no_deadline_and_no_flush() {
        let mut c = coalescer();
        let t0 = Instant::now();
        assert_eq!(c.next_deadline(), None);
        assert_eq!(c.poll_flush(t0 + Duration::from_secs(60)), None);
        assert!(!c.has_pending());
    }

    #[test]
    fn flushes_after_the_quiescent_period() {
        let mut c = coalescer();
        let t0 = Instant::now();
        c.push(member(MemberEventKind::Join, "a"), t0);
        c.push(member(MemberEventKind::Join, "b"), t0 + 400 * MS);
        assert_eq!(c.next_deadline(), Some(t0 + 1400 * MS));
        assert_eq!(c.poll_flush(t0 + 1399 * MS), None);
        let out = c.poll_flush(t0 + 1400 * MS).unwrap();
        assert_eq!(
            names(&out),
            vec![(MemberEventKind::Join, "a"), (MemberEventKind::Join, "b")]
        );
        assert_eq!(c.next_deadline(), None);
    }

    #[test]
    fn a_steady_stream_is_flushed_by_the_coalesce_period() {
        let mut c = coalescer();
        let t0 = Instant::now();
        for i in 0..10u32 {
            c.push(
                member(MemberEventKind::Join, &format!("n{i}")),
                t0 + i * 500 * MS,
            );
            let now = t0 + i * 500 * MS;
            if now < t0 + Duration::from_secs(3) {
                assert_eq!(c.poll_flush(now), None, "at {i}");
            }
        }
        // Events up to 4.5 s arrived, the quiescent deadline keeps moving; the quantum
        // started at t0 and expired at 3 s.
        assert_eq!(c.next_deadline(), Some(t0 + Duration::from_secs(3)));
        let out = c.poll_flush(t0 + 4500 * MS).unwrap();
        assert_eq!(out.len(), 10);
        // The next batch starts a new quantum.
        c.push(member(MemberEventKind::Failed, "n1"), t0 + 5000 * MS);
        assert_eq!(c.next_deadline(), Some(t0 + 6000 * MS));
    }

    #[test]
    fn keeps_only_the_latest_event_per_member_grouped_by_kind() {
        let mut c = coalescer();
        let t0 = Instant::now();
        c.push(member(MemberEventKind::Join, "c"), t0);
        c.push(member(MemberEventKind::Join, "a"), t0);
        c.push(member(MemberEventKind::Join, "b"), t0);
        c.push(member(MemberEventKind::Suspect, "a"), t0);
        c.push(member(MemberEventKind::Failed, "a"), t0);
        c.push(member(MemberEventKind::Leave, "b"), t0);
        let out = c.flush();
        assert_eq!(
            names(&out),
            vec![
                (MemberEventKind::Join, "c"),
                (MemberEventKind::Failed, "a"),
                (MemberEventKind::Leave, "b"),
            ]
        );
    }

    #[test]
    fn a_repeat_of_the_last_flushed_event_is_dropped() {
        let mut c = coalescer();
        let t0 = Instant::now();
        c.push(member(MemberEventKind::Join, "a"), t0);
        assert_eq!(c.flush().len(), 1);
        // Flapped (failed, then joined again) within one batch: nothing to report.
        c.push(member(MemberEventKind::Failed, "a"), t0 + 2 * MS);
        c.push(member(MemberEventKind::Join, "a"), t0 + 3 * MS);
        assert_eq!(c.poll_flush(t0 + Duration::from_secs(2)), None);
        assert_eq!(c.next_deadline(), None, "the batch was flushed, empty");
        // A failure that sticks is reported.
        c.push(
            member(MemberEventKind::Failed, "a"),
            t0 + Duration::from_secs(3),
        );
        let out = c.poll_flush(t0 + Duration::from_secs(5)).unwrap();
        assert_eq!(names(&out), vec![(MemberEventKind::Failed, "a")]);
    }

    #[test]
    fn an_update_repeats_only_if_the_member_is_unchanged() {
        let mut c = coalescer();
        let t0 = Instant::now();
        let mut update = member(MemberEventKind::Update, "a");
        c.push(update.clone(), t0);
        assert_eq!(c.flush().len(), 1);
        c.push(update.clone(), t0);
        assert!(c.flush().is_empty());
        update.tags.insert("version".into(), "2".into());
        c.push(update.clone(), t0);
        assert_eq!(c.flush(), vec![update]);
    }

    #[test]
    fn a_reaped_member_is_forgotten() {
        let mut c = coalescer();
        let t0 = Instant::now();
        c.push(member(MemberEventKind::Reap, "a"), t0);
        assert_eq!(c.flush().len(), 1);
        c.push(member(MemberEventKind::Join, "a"), t0);
        assert_eq!(c.flush().len(), 1);
        c.push(member(MemberEventKind::Reap, "a"), t0);
        assert_eq!(c.flush().len(), 1);
        assert!(c.last.is_empty());
    }
}
