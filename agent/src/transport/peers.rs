//! The connection cache: live connections by peer address, dial locks, dial back-off.
//!
//! An address may briefly have two live connections (both agents dialed each other at
//! once); both are kept and used until they close, and each connection's reader task
//! removes it when it ends, so nothing lingers unused.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::tls::PeerIdentity;

/// A connection whose peer certificate was verified, with the identity it certifies.
#[derive(Clone, Debug)]
pub(super) struct PeerConn {
    pub(super) conn: quinn::Connection,
    pub(super) identity: PeerIdentity,
    /// The cache key: the address dialed, or the remote address of an accepted connection.
    pub(super) addr: SocketAddr,
}

impl PeerConn {
    fn is_live(&self) -> bool {
        self.conn.close_reason().is_none()
    }
}

pub(super) type DialLock = Arc<tokio::sync::Mutex<()>>;

#[derive(Default)]
pub(super) struct Peers {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    conns: HashMap<SocketAddr, Vec<PeerConn>>,
    dials: HashMap<SocketAddr, DialLock>,
    /// Until when not to dial an address again after a failed dial.
    backoff: HashMap<SocketAddr, Instant>,
}

impl State {
    /// Keeps the connections to `addr` for which `keep` holds; an address left without
    /// any is dropped from the map.
    fn retain(&mut self, addr: SocketAddr, keep: impl FnMut(&PeerConn) -> bool) {
        if let Some(conns) = self.conns.get_mut(&addr) {
            conns.retain(keep);
            if conns.is_empty() {
                self.conns.remove(&addr);
            }
        }
    }
}

impl Peers {
    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic (no multi-step updates), so a
        // poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A live connection to `addr`, dropping closed ones from the cache.
    pub(super) fn live(&self, addr: SocketAddr) -> Option<PeerConn> {
        let mut state = self.state();
        state.retain(addr, PeerConn::is_live);
        state.conns.get(&addr)?.first().cloned()
    }

    pub(super) fn insert(&self, peer: PeerConn) {
        let mut state = self.state();
        state.backoff.remove(&peer.addr);
        state.conns.entry(peer.addr).or_default().push(peer);
    }

    /// Forgets one connection (by its stable id).
    pub(super) fn remove(&self, peer: &PeerConn) {
        let id = peer.conn.stable_id();
        self.state().retain(peer.addr, |c| c.conn.stable_id() != id);
    }

    /// Forgets every connection to `addr` and returns them.
    pub(super) fn remove_all(&self, addr: SocketAddr) -> Vec<PeerConn> {
        self.state().conns.remove(&addr).unwrap_or_default()
    }

    /// Forgets every connection and returns them.
    pub(super) fn clear(&self) -> Vec<PeerConn> {
        let mut state = self.state();
        state.dials.clear();
        state.backoff.clear();
        state.conns.drain().flat_map(|(_, conns)| conns).collect()
    }

    pub(super) fn count(&self) -> usize {
        self.state().conns.values().map(Vec::len).sum()
    }

    /// How long dialing `addr` stays suspended, if it is.
    pub(super) fn backoff_remaining(&self, addr: SocketAddr, now: Instant) -> Option<Duration> {
        let mut state = self.state();
        let until = *state.backoff.get(&addr)?;
        if until <= now {
            state.backoff.remove(&addr);
            return None;
        }
        Some(until - now)
    }

    pub(super) fn record_failure(&self, addr: SocketAddr, now: Instant, backoff: Duration) {
        let mut state = self.state();
        state.backoff.retain(|_, until| *until > now);
        state.backoff.insert(addr, now + backoff);
    }

    /// The lock that serializes dials to `addr`.
    pub(super) fn dial_lock(&self, addr: SocketAddr) -> DialLock {
        self.state().dials.entry(addr).or_default().clone()
    }

    /// Drops the dial lock of `addr` from the map once nobody else holds or awaits it.
    /// `lock` is the caller's handle, whose guard must already be released.
    pub(super) fn release_dial_lock(&self, addr: SocketAddr, lock: DialLock) {
        let mut state = self.state();
        // Handles are cloned only under this mutex: the map's and the caller's are the
        // only two left when no other task is waiting.
        if Arc::strong_count(&lock) == 2
            && state
                .dials
                .get(&addr)
                .is_some_and(|l| Arc::ptr_eq(l, &lock))
        {
            state.dials.remove(&addr);
        }
    }
}
