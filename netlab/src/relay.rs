//! The user-space WAN: a relay between two TUN devices that delays, drops
//! and partitions raw IP packets.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::Shared;
use crate::sys;

/// Most packets held per direction; beyond this the link drops, like the
/// tail drop of a full router queue.
pub(crate) const MAX_QUEUED_PACKETS: usize = 10_000;
/// Most bytes held per direction.
pub(crate) const MAX_QUEUED_BYTES: usize = 16 << 20;
/// Longest sleep of the relay thread, so that it notices the lab stopping.
const IDLE_WAKEUP: Duration = Duration::from_millis(100);
/// Most packets read from one side in one go, so that one busy direction
/// cannot starve the other.
const READ_BATCH: usize = 256;

/// A WAN link between two hosts, made by [`crate::Lab::link`].
///
/// The handle is cheap to clone and thread-safe; every setting applies to
/// both directions and takes effect immediately, also for packets already
/// queued where that makes sense (a partition drops queued packets when their
/// time comes; a new delay applies to packets entering the link from then on,
/// without ever reordering packets). Dropping the handle does not remove the
/// link: it lives as long as the [`crate::Lab`].
#[derive(Clone)]
pub struct Link {
    pub(crate) ctl: Arc<LinkCtl>,
}

/// Counters of a [`Link`], both directions added up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Packets written to the far side.
    pub delivered: u64,
    /// Packets dropped: by loss, by a partition, by queue overflow or because
    /// the far TUN device refused them.
    pub dropped: u64,
}

pub(crate) struct LinkCtl {
    pub(crate) a: String,
    pub(crate) b: String,
    pub(crate) dev_a: String,
    pub(crate) dev_b: String,
    delay_ns: AtomicU64,
    loss_bits: AtomicU64,
    partitioned: AtomicBool,
    delivered: AtomicU64,
    dropped: AtomicU64,
}

impl LinkCtl {
    pub(crate) fn new(a: String, b: String, dev_a: String, dev_b: String) -> LinkCtl {
        LinkCtl {
            a,
            b,
            dev_a,
            dev_b,
            delay_ns: AtomicU64::new(0),
            loss_bits: AtomicU64::new(0f64.to_bits()),
            partitioned: AtomicBool::new(false),
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    fn delay(&self) -> Duration {
        Duration::from_nanos(self.delay_ns.load(Ordering::Relaxed))
    }

    fn loss(&self) -> f64 {
        f64::from_bits(self.loss_bits.load(Ordering::Relaxed))
    }

    fn partitioned(&self) -> bool {
        self.partitioned.load(Ordering::Relaxed)
    }

    fn drop_one(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

impl Link {
    /// Sets the one-way delay of both directions (the round trip over the
    /// link takes twice this). Packets already queued keep their release
    /// time; a packet never overtakes an earlier one.
    pub fn set_delay(&self, delay: Duration) {
        let ns = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.ctl.delay_ns.store(ns, Ordering::Relaxed);
    }

    /// The current one-way delay.
    pub fn delay(&self) -> Duration {
        self.ctl.delay()
    }

    /// Sets the probability (clamped to `0.0..=1.0`; NaN counts as 0) that a
    /// packet entering the link is dropped, independently per packet and per
    /// direction.
    pub fn set_loss(&self, probability: f64) {
        let p = if probability.is_nan() {
            0.0
        } else {
            probability.clamp(0.0, 1.0)
        };
        self.ctl.loss_bits.store(p.to_bits(), Ordering::Relaxed);
    }

    /// The current loss probability.
    pub fn loss(&self) -> f64 {
        self.ctl.loss()
    }

    /// Cuts the link: from now on every packet is dropped in both
    /// directions, including packets still queued, until [`Link::heal`].
    pub fn partition(&self) {
        self.ctl.partitioned.store(true, Ordering::Relaxed);
    }

    /// Ends a [`Link::partition`]; delay and loss settings stay as they were.
    pub fn heal(&self) {
        self.ctl.partitioned.store(false, Ordering::Relaxed);
    }

    /// Whether the link is partitioned.
    pub fn is_partitioned(&self) -> bool {
        self.ctl.partitioned()
    }

    /// Packets delivered and dropped so far.
    pub fn stats(&self) -> LinkStats {
        LinkStats {
            delivered: self.ctl.delivered.load(Ordering::Relaxed),
            dropped: self.ctl.dropped.load(Ordering::Relaxed),
        }
    }
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("a", &format_args!("{}/{}", self.ctl.a, self.ctl.dev_a))
            .field("b", &format_args!("{}/{}", self.ctl.b, self.ctl.dev_b))
            .field("delay", &self.delay())
            .field("loss", &self.loss())
            .field("partitioned", &self.is_partitioned())
            .finish()
    }
}

/// One direction of a link: a FIFO of packets with release times.
struct Queue {
    packets: VecDeque<(Instant, Vec<u8>)>,
    bytes: usize,
    last_release: Option<Instant>,
}

impl Queue {
    fn new() -> Queue {
        Queue {
            packets: VecDeque::new(),
            bytes: 0,
            last_release: None,
        }
    }

    /// Takes a packet that just came out of a TUN device.
    fn push(&mut self, ctl: &LinkCtl, packet: &[u8], now: Instant) {
        if ctl.partitioned() {
            return ctl.drop_one();
        }
        let loss = ctl.loss();
        if loss > 0.0 && rand::random::<f64>() < loss {
            return ctl.drop_one();
        }
        if self.packets.len() >= MAX_QUEUED_PACKETS || self.bytes + packet.len() > MAX_QUEUED_BYTES
        {
            return ctl.drop_one();
        }
        // Never before the packet ahead of it: a shorter delay must not
        // reorder.
        let mut release = now + ctl.delay();
        if let Some(last) = self.last_release {
            release = release.max(last);
        }
        self.last_release = Some(release);
        self.bytes += packet.len();
        self.packets.push_back((release, packet.to_vec()));
    }

    /// Writes every packet whose time has come to `out`.
    fn release(&mut self, ctl: &LinkCtl, out: RawFd, now: Instant) {
        while self.packets.front().is_some_and(|(at, _)| *at <= now) {
            let Some((_, packet)) = self.packets.pop_front() else {
                break;
            };
            self.bytes -= packet.len();
            if ctl.partitioned() {
                ctl.drop_one();
                continue;
            }
            match sys::write_fd(out, &packet) {
                Ok(_) => {
                    ctl.delivered.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => ctl.drop_one(),
            }
        }
    }

    fn next_release(&self) -> Option<Instant> {
        self.packets.front().map(|(at, _)| *at)
    }
}

/// Reads what `fd` has (up to a batch) into `queue`. Returns false when the
/// descriptor is broken (its device is gone).
fn drain(fd: RawFd, queue: &mut Queue, ctl: &LinkCtl, buf: &mut [u8]) -> bool {
    for _ in 0..READ_BATCH {
        match sys::read_fd(fd, buf) {
            Ok(0) => return true,
            Ok(n) => queue.push(ctl, &buf[..n], Instant::now()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    true
}

/// The relay thread of one link: both directions, until the lab stops.
pub(crate) fn run(fd_a: OwnedFd, fd_b: OwnedFd, ctl: Arc<LinkCtl>, shared: Arc<Shared>) {
    let (a, b) = (fd_a.as_raw_fd(), fd_b.as_raw_fd());
    let mut a_to_b = Queue::new();
    let mut b_to_a = Queue::new();
    // Larger than any MTU a TUN device can have.
    let mut buf = vec![0u8; 65_536];
    while !shared.stopping() {
        let now = Instant::now();
        a_to_b.release(&ctl, b, now);
        b_to_a.release(&ctl, a, now);
        let next = match (a_to_b.next_release(), b_to_a.next_release()) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        };
        let timeout = next
            .map(|at| at.saturating_duration_since(now))
            .unwrap_or(IDLE_WAKEUP)
            .min(IDLE_WAKEUP);
        let Ok([ra, rb]) = sys::poll_read([a, b], timeout) else {
            break;
        };
        let bad = libc::POLLERR | libc::POLLNVAL;
        if (ra | rb) & bad != 0 {
            break;
        }
        if ra & libc::POLLIN != 0 && !drain(a, &mut a_to_b, &ctl, &mut buf) {
            break;
        }
        if rb & libc::POLLIN != 0 && !drain(b, &mut b_to_a, &ctl, &mut buf) {
            break;
        }
    }
}
