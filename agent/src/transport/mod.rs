//! QUIC transport: one endpoint per pool (LAN, WAN), both roles on one UDP socket.
//!
//! A [`Transport`] dials peers and accepts their connections on the same socket, under
//! mutual TLS ([`crate::tls`]). Every connection, dialed or accepted, carries:
//! - datagrams for small unreliable messages (gossip): QUIC datagrams when they fit,
//!   else one unidirectional stream each; all arrive on the [`DatagramReceiver`];
//! - RPC calls on bidirectional streams, one length-prefixed request frame and one reply
//!   frame per stream (see `frame`), served by the [`RpcHandler`].
//!
//! Every message received is tagged with the sender's [`PeerIdentity`], read from its
//! certificate; authorizing the sender for what it asks is the receiver's job.
//!
//! Connections are cached per peer address: concurrent dials to one address share one
//! attempt, dials are bounded by [`TransportConfig::dial_timeout`], an address whose dial
//! failed is not dialed again for [`TransportConfig::dial_backoff`] (calls fail at once
//! meanwhile), and a closed connection is replaced on the next use. Accepted connections
//! are cached under the peer's address too, so replies can reuse them.
//!
//! All tasks (accept loop, handshakes, connection readers, stream handlers) are tracked
//! and end when the shutdown token is cancelled or [`Transport::shutdown`] is called.

mod frame;
mod peers;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use quinn::{RecvStream, SendDatagramError, SendStream, WriteError};
use rustls::pki_types::CertificateDer;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, trace, warn};

use crate::tls::{self, PeerIdentity, TlsError, TlsMaterial};
use frame::{ReadFrameError, ReadUniError, StreamSendError, code};
use peers::{PeerConn, Peers};

/// Default limit of an RPC frame or stream datagram: 16 MiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Settings of one endpoint.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// UDP address to bind (port 0 picks one; see [`Transport::local_addr`]).
    pub bind: SocketAddr,
    /// The pool's ALPN ([`tls::ALPN_LAN`] or [`tls::ALPN_WAN`]); peers must use the same.
    pub alpn: &'static [u8],
    /// Largest RPC request, reply or stream datagram accepted or sent, in bytes
    /// (at most `u32::MAX`).
    pub max_frame_len: usize,
    /// Bound on establishing a connection (QUIC and TLS handshakes) when dialing.
    pub dial_timeout: Duration,
    /// After a failed dial, further sends and calls to that address fail at once for this
    /// long instead of dialing again.
    pub dial_backoff: Duration,
    /// Bound on the handshake of an accepted connection.
    pub handshake_timeout: Duration,
    /// Timeout of [`Transport::call`].
    pub call_timeout: Duration,
    /// Bound on sending one datagram on a stream (when it does not fit a QUIC datagram).
    pub send_timeout: Duration,
    /// Received datagrams queued for the [`DatagramReceiver`]; more are dropped.
    pub datagram_queue: usize,
    /// Open connections above which new incoming connections are refused.
    pub max_connections: usize,
    /// Sends started by [`Transport::send_datagram_detached`] in flight at once; more
    /// are dropped.
    pub max_detached_sends: usize,
}

impl TransportConfig {
    /// Defaults for an endpoint bound to `bind` in the pool named by `alpn`.
    pub fn new(bind: SocketAddr, alpn: &'static [u8]) -> Self {
        Self {
            bind,
            alpn,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            dial_timeout: Duration::from_secs(3),
            dial_backoff: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(5),
            datagram_queue: 4096,
            max_connections: 10_000,
            max_detached_sends: 1024,
        }
    }

    /// Defaults for the LAN pool.
    pub fn lan(bind: SocketAddr) -> Self {
        Self::new(bind, tls::ALPN_LAN)
    }

    /// Defaults for the WAN pool.
    pub fn wan(bind: SocketAddr) -> Self {
        Self::new(bind, tls::ALPN_WAN)
    }
}

/// A datagram received from a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// The sender, as certified by its certificate.
    pub from: PeerIdentity,
    /// The sender's address (its endpoint's socket).
    pub addr: SocketAddr,
    /// The payload.
    pub payload: Bytes,
}

/// Receives the datagrams of every connection of a [`Transport`].
pub type DatagramReceiver = mpsc::Receiver<Datagram>;

/// The reply to [`Transport::call`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcReply {
    /// Who answered, as certified by its certificate.
    pub peer: PeerIdentity,
    /// The reply body.
    pub body: Bytes,
}

/// An error a handler returns; the caller receives its message as
/// [`TransportError::Remote`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RpcError(pub String);

impl RpcError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Serves the RPC requests that peers send to this endpoint.
///
/// Called once per request, concurrently, on the handler given to [`Transport::bind`]
/// (the `Arc` receiver lets the future own a handle to the handler); the future is
/// dropped if the caller gives up or the transport shuts down. Check `from` before
/// acting on the request.
pub trait RpcHandler: Send + Sync + 'static {
    /// Answers `request` from `from`.
    fn handle(
        self: Arc<Self>,
        from: PeerIdentity,
        request: Bytes,
    ) -> BoxFuture<'static, Result<Bytes, RpcError>>;
}

impl<F> RpcHandler for F
where
    F: Fn(PeerIdentity, Bytes) -> BoxFuture<'static, Result<Bytes, RpcError>>
        + Send
        + Sync
        + 'static,
{
    fn handle(
        self: Arc<Self>,
        from: PeerIdentity,
        request: Bytes,
    ) -> BoxFuture<'static, Result<Bytes, RpcError>> {
        (*self)(from, request)
    }
}

/// Errors of the transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The configuration cannot work.
    #[error("invalid transport configuration: {0}")]
    Config(&'static str),
    /// The UDP socket could not be bound.
    #[error("cannot bind QUIC endpoint to {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: io::Error,
    },
    /// The TLS material could not be turned into a QUIC configuration.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Connecting failed (unreachable, refused, handshake or certificate failure).
    #[error("cannot connect to {addr}: {reason}")]
    Dial {
        /// The peer address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// Connecting took longer than [`TransportConfig::dial_timeout`].
    #[error("connecting to {addr} timed out after {after:?}")]
    DialTimeout {
        /// The peer address.
        addr: SocketAddr,
        /// The timeout.
        after: Duration,
    },
    /// A recent dial to this address failed; not dialing again yet.
    #[error("not dialing {addr} for another {remaining:?} after a failed attempt")]
    Backoff {
        /// The peer address.
        addr: SocketAddr,
        /// Time left.
        remaining: Duration,
    },
    /// The peer's certificate carries no usable identity.
    #[error("peer {addr} has no valid agent identity: {source}")]
    BadPeer {
        /// The peer address.
        addr: SocketAddr,
        /// What is wrong.
        source: TlsError,
    },
    /// The connection closed or broke.
    #[error("connection to {addr} lost: {source}")]
    Connection {
        /// The peer address.
        addr: SocketAddr,
        /// The cause.
        source: quinn::ConnectionError,
    },
    /// A stream failed (reset or stopped by the peer).
    #[error("stream to {addr} failed: {reason}")]
    Stream {
        /// The peer address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// A frame exceeds [`TransportConfig::max_frame_len`]; nothing was sent (or the
    /// oversized reply was refused).
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The frame length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The peer refused our frame as larger than its own limit.
    #[error("peer {addr} refused a frame above its size limit")]
    FrameRefused {
        /// The peer address.
        addr: SocketAddr,
    },
    /// The peer answered with something that is not a reply frame.
    #[error("malformed reply from {addr}: {reason}")]
    Protocol {
        /// The peer address.
        addr: SocketAddr,
        /// What is wrong.
        reason: &'static str,
    },
    /// The remote handler returned an error with this message.
    #[error("remote error: {0}")]
    Remote(String),
    /// The call did not complete in time.
    #[error("call to {addr} timed out after {after:?}")]
    Timeout {
        /// The peer address.
        addr: SocketAddr,
        /// The timeout.
        after: Duration,
    },
    /// The transport is shut down.
    #[error("transport is shut down")]
    Shutdown,
}

/// A snapshot of the transport's counters (since bind).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Datagrams sent (either way).
    pub datagrams_sent: u64,
    /// Of those, sent on a stream because they did not fit a QUIC datagram.
    pub datagrams_sent_on_stream: u64,
    /// Datagrams delivered to the [`DatagramReceiver`].
    pub datagrams_received: u64,
    /// Datagrams received but dropped (queue full, oversized stream) or detached sends
    /// dropped for lack of room.
    pub datagrams_dropped: u64,
    /// RPC calls made.
    pub rpc_calls: u64,
    /// RPC requests handed to the handler.
    pub rpc_served: u64,
    /// RPC requests refused as larger than the frame limit.
    pub rpc_refused: u64,
    /// Inbound handshakes that failed or timed out, and peers without a valid identity.
    pub handshake_failures: u64,
    /// Dials that failed or timed out.
    pub dial_failures: u64,
    /// Connections currently cached.
    pub connections: usize,
}

#[derive(Default)]
struct Counters {
    datagrams_sent: AtomicU64,
    datagrams_sent_on_stream: AtomicU64,
    datagrams_received: AtomicU64,
    datagrams_dropped: AtomicU64,
    rpc_calls: AtomicU64,
    rpc_served: AtomicU64,
    rpc_refused: AtomicU64,
    handshake_failures: AtomicU64,
    dial_failures: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// One QUIC endpoint: the dialer, the listener and the connection cache of one pool.
/// Cheap to clone; all clones share the endpoint.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: quinn::Endpoint,
    config: TransportConfig,
    local_addr: SocketAddr,
    identity: PeerIdentity,
    handler: Arc<dyn RpcHandler>,
    datagrams: mpsc::Sender<Datagram>,
    peers: Peers,
    detached: Arc<Semaphore>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    counters: Counters,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("local_addr", &self.inner.local_addr)
            .field("identity", &self.inner.identity)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Binds the endpoint and starts accepting connections. Must run inside a tokio
    /// runtime. The transport runs until `shutdown` is cancelled or
    /// [`shutdown`](Self::shutdown) is called (which does not cancel `shutdown` itself);
    /// dropping every handle does not stop it.
    pub fn bind(
        config: TransportConfig,
        tls: &TlsMaterial,
        handler: Arc<dyn RpcHandler>,
        shutdown: CancellationToken,
    ) -> Result<(Transport, DatagramReceiver), TransportError> {
        if config.max_frame_len == 0 || u32::try_from(config.max_frame_len).is_err() {
            return Err(TransportError::Config(
                "max_frame_len must be between 1 and u32::MAX",
            ));
        }
        if config.datagram_queue == 0 {
            return Err(TransportError::Config("datagram_queue must be at least 1"));
        }
        let server = tls.quinn_server_config(config.alpn)?;
        let client = tls.quinn_client_config(config.alpn)?;
        let bind_error = |source| TransportError::Bind {
            addr: config.bind,
            source,
        };
        let mut endpoint = quinn::Endpoint::server(server, config.bind).map_err(bind_error)?;
        endpoint.set_default_client_config(client);
        let local_addr = endpoint.local_addr().map_err(bind_error)?;
        let (sender, receiver) = mpsc::channel(config.datagram_queue);
        let transport = Transport {
            inner: Arc::new(Inner {
                endpoint,
                local_addr,
                identity: tls.identity().clone(),
                handler,
                datagrams: sender,
                peers: Peers::default(),
                detached: Arc::new(Semaphore::new(config.max_detached_sends)),
                tasks: TaskTracker::new(),
                shutdown: shutdown.child_token(),
                counters: Counters::default(),
                config,
            }),
        };
        let accepting = transport.clone();
        transport.inner.tasks.spawn(accepting.accept_loop());
        debug!(addr = %local_addr, identity = %transport.inner.identity, "QUIC endpoint bound");
        Ok((transport, receiver))
    }

    /// The bound socket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The identity this endpoint presents.
    pub fn identity(&self) -> &PeerIdentity {
        &self.inner.identity
    }

    /// The settings this endpoint runs with.
    pub fn config(&self) -> &TransportConfig {
        &self.inner.config
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> TransportStats {
        let c = &self.inner.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        TransportStats {
            datagrams_sent: load(&c.datagrams_sent),
            datagrams_sent_on_stream: load(&c.datagrams_sent_on_stream),
            datagrams_received: load(&c.datagrams_received),
            datagrams_dropped: load(&c.datagrams_dropped),
            rpc_calls: load(&c.rpc_calls),
            rpc_served: load(&c.rpc_served),
            rpc_refused: load(&c.rpc_refused),
            handshake_failures: load(&c.handshake_failures),
            dial_failures: load(&c.dial_failures),
            connections: self.inner.peers.count(),
        }
    }

    /// Connects to `to` (or reuses the cached connection) and returns who is there.
    pub async fn connect(&self, to: SocketAddr) -> Result<PeerIdentity, TransportError> {
        Ok(self.connection(to).await?.identity)
    }

    /// The identity of the peer at `to`, if a live connection to it is cached.
    pub fn peer_identity(&self, to: SocketAddr) -> Option<PeerIdentity> {
        self.inner.peers.live(to).map(|peer| peer.identity)
    }

    /// QUIC's smoothed estimate of the round-trip time to `to` (from the acknowledgements
    /// of everything sent, gossip probes included), if a live connection to it is cached.
    pub fn rtt(&self, to: SocketAddr) -> Option<Duration> {
        self.inner.peers.live(to).map(|peer| peer.conn.rtt())
    }

    /// Closes and forgets every connection to `to`; the next send or call dials again.
    pub fn disconnect(&self, to: SocketAddr) {
        for peer in self.inner.peers.remove_all(to) {
            peer.conn.close(code::CLOSED, b"disconnect");
        }
    }

    /// Sends `payload` to `to`: as a QUIC datagram when it fits the connection's current
    /// datagram size, else on a unidirectional stream. Dials if needed (bounded by
    /// [`TransportConfig::dial_timeout`]). Delivery is not guaranteed.
    pub async fn send_datagram(
        &self,
        to: SocketAddr,
        payload: Bytes,
    ) -> Result<(), TransportError> {
        self.check_frame_len(payload.len())?;
        let send = async {
            let mut retried = false;
            loop {
                let peer = self.connection(to).await?;
                match self.send_datagram_on(&peer, payload.clone()).await {
                    // A connection found closed is replaced once, before anything was sent.
                    Err(TransportError::Connection { .. }) if !retried => retried = true,
                    result => return result,
                }
            }
        };
        self.unless_shut_down(send).await
    }

    /// Like [`send_datagram`](Self::send_datagram) without waiting: sends at once on a
    /// cached connection when the payload fits a QUIC datagram, else in a background
    /// task (at most [`TransportConfig::max_detached_sends`] at once; beyond that the
    /// datagram is dropped). Failures are only logged and counted.
    pub fn send_datagram_detached(&self, to: SocketAddr, payload: Bytes) {
        if let Some(peer) = self.inner.peers.live(to)
            && peer
                .conn
                .max_datagram_size()
                .is_some_and(|max| payload.len() <= max)
            && peer.conn.send_datagram(payload.clone()).is_ok()
        {
            bump(&self.inner.counters.datagrams_sent);
            return;
        }
        let Ok(permit) = self.inner.detached.clone().try_acquire_owned() else {
            bump(&self.inner.counters.datagrams_dropped);
            trace!(%to, "too many detached sends in flight; datagram dropped");
            return;
        };
        let this = self.clone();
        self.inner.tasks.spawn(async move {
            let _permit = permit;
            if let Err(error) = this.send_datagram(to, payload).await {
                trace!(%to, %error, "detached datagram not sent");
            }
        });
    }

    /// Calls the RPC handler of the peer at `to` with [`TransportConfig::call_timeout`].
    pub async fn call(&self, to: SocketAddr, request: Bytes) -> Result<RpcReply, TransportError> {
        self.call_with_timeout(to, request, self.inner.config.call_timeout)
            .await
    }

    /// Calls the RPC handler of the peer at `to`; the whole call (dial included) is
    /// bounded by `timeout`. A handler error arrives as [`TransportError::Remote`].
    pub async fn call_with_timeout(
        &self,
        to: SocketAddr,
        request: Bytes,
        timeout: Duration,
    ) -> Result<RpcReply, TransportError> {
        self.check_frame_len(request.len())?;
        bump(&self.inner.counters.rpc_calls);
        self.unless_shut_down(async {
            tokio::time::timeout(timeout, self.call_once(to, request))
                .await
                .unwrap_or(Err(TransportError::Timeout {
                    addr: to,
                    after: timeout,
                }))
        })
        .await
    }

    /// Stops accepting, closes every connection (peers are told), and waits for all
    /// tasks to end and, briefly, for the close to reach the peers.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner.shutdown.cancel();
        inner.endpoint.close(code::CLOSED, b"shutdown");
        inner.tasks.close();
        inner.tasks.wait().await;
        drop(inner.peers.clear());
        let _ = tokio::time::timeout(Duration::from_secs(1), inner.endpoint.wait_idle()).await;
        debug!(addr = %inner.local_addr, "QUIC endpoint shut down");
    }

    /// Refuses a request or datagram above [`TransportConfig::max_frame_len`] before
    /// anything is sent.
    fn check_frame_len(&self, len: usize) -> Result<(), TransportError> {
        let max = self.inner.config.max_frame_len;
        if len > max {
            return Err(TransportError::FrameTooLarge { len, max });
        }
        Ok(())
    }

    /// Runs `operation` unless the transport is (or gets) shut down first.
    async fn unless_shut_down<T>(
        &self,
        operation: impl Future<Output = Result<T, TransportError>>,
    ) -> Result<T, TransportError> {
        tokio::select! {
            biased;
            () = self.inner.shutdown.cancelled() => Err(TransportError::Shutdown),
            result = operation => result,
        }
    }

    async fn call_once(&self, to: SocketAddr, request: Bytes) -> Result<RpcReply, TransportError> {
        let (peer, mut send, mut recv) = self.open_bi(to).await?;
        let max = self.inner.config.max_frame_len;
        if let Err(error) = frame::write_frame(&mut send, vec![request]).await {
            return Err(self.write_error(&peer, error));
        }
        let reply = match frame::read_frame(&mut recv, max).await {
            Ok(reply) => reply,
            Err(ReadFrameError::TooLarge { len }) => {
                let _ = recv.stop(code::FRAME_TOO_LARGE);
                return Err(TransportError::FrameTooLarge { len, max });
            }
            Err(ReadFrameError::Malformed(reason)) => {
                let _ = recv.stop(code::PROTOCOL);
                return Err(TransportError::Protocol { addr: to, reason });
            }
            Err(ReadFrameError::Read(error)) => return Err(self.read_error(&peer, error)),
        };
        match frame::parse_reply(reply) {
            Ok(Ok(body)) => Ok(RpcReply {
                peer: peer.identity,
                body,
            }),
            Ok(Err(message)) => Err(TransportError::Remote(message)),
            Err(reason) => Err(TransportError::Protocol { addr: to, reason }),
        }
    }

    /// Opens a stream on the cached connection, replacing it once if it turns out closed.
    async fn open_bi(
        &self,
        to: SocketAddr,
    ) -> Result<(PeerConn, SendStream, RecvStream), TransportError> {
        let mut retried = false;
        loop {
            let peer = self.connection(to).await?;
            match peer.conn.open_bi().await {
                Ok((send, recv)) => return Ok((peer, send, recv)),
                Err(source) => {
                    self.inner.peers.remove(&peer);
                    if retried {
                        return Err(TransportError::Connection { addr: to, source });
                    }
                    retried = true;
                }
            }
        }
    }

    /// Forgets a connection found lost and reports it.
    fn connection_lost(&self, peer: &PeerConn, source: quinn::ConnectionError) -> TransportError {
        self.inner.peers.remove(peer);
        TransportError::Connection {
            addr: peer.addr,
            source,
        }
    }

    fn write_error(&self, peer: &PeerConn, error: WriteError) -> TransportError {
        let addr = peer.addr;
        match error {
            WriteError::Stopped(error_code) => stream_refused(addr, error_code),
            WriteError::ConnectionLost(source) => self.connection_lost(peer, source),
            other => TransportError::Stream {
                addr,
                reason: other.to_string(),
            },
        }
    }

    fn read_error(&self, peer: &PeerConn, error: quinn::ReadError) -> TransportError {
        let addr = peer.addr;
        match error {
            quinn::ReadError::Reset(error_code) => stream_refused(addr, error_code),
            quinn::ReadError::ConnectionLost(source) => self.connection_lost(peer, source),
            other => TransportError::Stream {
                addr,
                reason: other.to_string(),
            },
        }
    }

    async fn send_datagram_on(
        &self,
        peer: &PeerConn,
        payload: Bytes,
    ) -> Result<(), TransportError> {
        let conn = &peer.conn;
        let addr = peer.addr;
        if conn
            .max_datagram_size()
            .is_some_and(|max| payload.len() <= max)
        {
            match conn.send_datagram(payload.clone()) {
                Ok(()) => {
                    bump(&self.inner.counters.datagrams_sent);
                    return Ok(());
                }
                Err(SendDatagramError::ConnectionLost(source)) => {
                    return Err(self.connection_lost(peer, source));
                }
                // The path MTU shrank, or datagrams are off: use a stream.
                Err(_) => {}
            }
        }
        let timeout = self.inner.config.send_timeout;
        match tokio::time::timeout(timeout, frame::write_uni_datagram(conn, payload)).await {
            Ok(Ok(())) => {
                bump(&self.inner.counters.datagrams_sent);
                bump(&self.inner.counters.datagrams_sent_on_stream);
                Ok(())
            }
            Ok(Err(StreamSendError::Connection(source))) => Err(self.connection_lost(peer, source)),
            Ok(Err(StreamSendError::Write(error))) => Err(self.write_error(peer, error)),
            Err(_) => Err(TransportError::Stream {
                addr,
                reason: format!("sending a datagram on a stream took more than {timeout:?}"),
            }),
        }
    }

    /// The cached live connection to `to`, or a new one. Concurrent callers for one
    /// address share a single dial.
    async fn connection(&self, to: SocketAddr) -> Result<PeerConn, TransportError> {
        let peers = &self.inner.peers;
        if let Some(peer) = peers.live(to) {
            return Ok(peer);
        }
        self.check_backoff(to)?;
        let lock = peers.dial_lock(to);
        let guard = lock.clone().lock_owned().await;
        let result = match peers.live(to) {
            Some(peer) => Ok(peer),
            None => match self.check_backoff(to) {
                Ok(()) => self.dial(to).await,
                Err(error) => Err(error),
            },
        };
        drop(guard);
        peers.release_dial_lock(to, lock);
        result
    }

    fn check_backoff(&self, to: SocketAddr) -> Result<(), TransportError> {
        match self.inner.peers.backoff_remaining(to, Instant::now()) {
            Some(remaining) => Err(TransportError::Backoff {
                addr: to,
                remaining,
            }),
            None => Ok(()),
        }
    }

    async fn dial(&self, to: SocketAddr) -> Result<PeerConn, TransportError> {
        let inner = &self.inner;
        let peer = self
            .handshake(to)
            .await
            .map_err(|error| self.dial_failed(to, error))?;
        debug!(%to, peer = %peer.identity, "connected");
        inner.peers.insert(peer.clone());
        inner
            .tasks
            .spawn(self.clone().serve_connection(peer.clone()));
        Ok(peer)
    }

    /// Connects to `to` within [`TransportConfig::dial_timeout`] and reads who answered.
    async fn handshake(&self, to: SocketAddr) -> Result<PeerConn, TransportError> {
        let dial_error = |error: &dyn fmt::Display| TransportError::Dial {
            addr: to,
            reason: error.to_string(),
        };
        let connecting = self
            .inner
            .endpoint
            .connect(to, tls::SERVER_NAME)
            .map_err(|error| dial_error(&error))?;
        let after = self.inner.config.dial_timeout;
        let conn = tokio::time::timeout(after, connecting)
            .await
            .map_err(|_| TransportError::DialTimeout { addr: to, after })?
            .map_err(|error| dial_error(&error))?;
        identify(conn, to)
    }

    fn dial_failed(&self, to: SocketAddr, error: TransportError) -> TransportError {
        bump(&self.inner.counters.dial_failures);
        self.inner
            .peers
            .record_failure(to, Instant::now(), self.inner.config.dial_backoff);
        debug!(%to, %error, "dial failed");
        error
    }

    async fn accept_loop(self) {
        let inner = &self.inner;
        loop {
            let incoming = tokio::select! {
                () = inner.shutdown.cancelled() => break,
                incoming = inner.endpoint.accept() => match incoming {
                    Some(incoming) => incoming,
                    None => break,
                },
            };
            if inner.endpoint.open_connections() >= inner.config.max_connections {
                warn!(from = %incoming.remote_address(), "connection limit reached; refusing");
                incoming.refuse();
                continue;
            }
            inner.tasks.spawn(self.clone().accept_connection(incoming));
        }
        inner.endpoint.close(code::CLOSED, b"shutdown");
    }

    async fn accept_connection(self, incoming: quinn::Incoming) {
        let inner = &self.inner;
        let from = incoming.remote_address();
        let handshake = tokio::select! {
            () = inner.shutdown.cancelled() => return,
            result = tokio::time::timeout(inner.config.handshake_timeout, incoming) => result,
        };
        let conn = match handshake {
            Ok(Ok(conn)) => conn,
            Ok(Err(error)) => {
                bump(&inner.counters.handshake_failures);
                debug!(%from, %error, "inbound handshake failed");
                return;
            }
            Err(_) => {
                bump(&inner.counters.handshake_failures);
                debug!(%from, "inbound handshake timed out");
                return;
            }
        };
        let peer = match identify(conn, from) {
            Ok(peer) => peer,
            Err(error) => {
                bump(&inner.counters.handshake_failures);
                debug!(%from, %error, "inbound peer refused");
                return;
            }
        };
        debug!(%from, peer = %peer.identity, "accepted");
        inner.peers.insert(peer.clone());
        self.serve_connection(peer).await;
    }

    /// Reads a connection until it closes: datagrams, datagram streams, RPC streams.
    async fn serve_connection(self, peer: PeerConn) {
        let inner = &self.inner;
        let conn = peer.conn.clone();
        let reason = loop {
            tokio::select! {
                () = inner.shutdown.cancelled() => break None,
                datagram = conn.read_datagram() => match datagram {
                    Ok(payload) => self.deliver(&peer, payload),
                    Err(error) => break Some(error),
                },
                stream = conn.accept_uni() => match stream {
                    Ok(recv) => {
                        inner.tasks.spawn(self.clone().receive_uni(peer.clone(), recv));
                    }
                    Err(error) => break Some(error),
                },
                stream = conn.accept_bi() => match stream {
                    Ok((send, recv)) => {
                        inner.tasks.spawn(self.clone().serve_rpc(peer.clone(), send, recv));
                    }
                    Err(error) => break Some(error),
                },
            }
        };
        inner.peers.remove(&peer);
        if let Some(reason) = reason {
            debug!(addr = %peer.addr, peer = %peer.identity, %reason, "connection closed");
        }
    }

    fn deliver(&self, peer: &PeerConn, payload: Bytes) {
        let datagram = Datagram {
            from: peer.identity.clone(),
            addr: peer.addr,
            payload,
        };
        let counters = &self.inner.counters;
        match self.inner.datagrams.try_send(datagram) {
            Ok(()) => bump(&counters.datagrams_received),
            Err(_) => {
                bump(&counters.datagrams_dropped);
                trace!(from = %peer.addr, "datagram queue full or closed; dropped");
            }
        }
    }

    async fn receive_uni(self, peer: PeerConn, mut recv: RecvStream) {
        let max = self.inner.config.max_frame_len;
        let result = tokio::select! {
            () = self.inner.shutdown.cancelled() => return,
            result = frame::read_uni_datagram(&mut recv, max) => result,
        };
        match result {
            Ok(payload) => self.deliver(&peer, payload),
            Err(ReadUniError::TooLarge) => {
                bump(&self.inner.counters.datagrams_dropped);
                debug!(from = %peer.addr, max, "datagram stream above the frame limit; refused");
                let _ = recv.stop(code::FRAME_TOO_LARGE);
            }
            Err(ReadUniError::UnknownType(kind)) => {
                debug!(from = %peer.addr, kind, "unknown stream type; refused");
                let _ = recv.stop(code::UNKNOWN_STREAM);
            }
            Err(ReadUniError::Malformed | ReadUniError::Read) => {}
        }
    }

    async fn serve_rpc(self, peer: PeerConn, mut send: SendStream, mut recv: RecvStream) {
        let inner = &self.inner;
        let max = inner.config.max_frame_len;
        let request = tokio::select! {
            () = inner.shutdown.cancelled() => {
                let _ = send.reset(code::SHUTTING_DOWN);
                return;
            }
            request = frame::read_frame(&mut recv, max) => request,
        };
        let request = match request {
            Ok(request) => request,
            Err(ReadFrameError::TooLarge { len }) => {
                bump(&inner.counters.rpc_refused);
                debug!(from = %peer.addr, len, max, "RPC request above the frame limit; refused");
                let _ = recv.stop(code::FRAME_TOO_LARGE);
                let _ = send.reset(code::FRAME_TOO_LARGE);
                return;
            }
            Err(ReadFrameError::Malformed(reason)) => {
                debug!(from = %peer.addr, reason, "malformed RPC request; refused");
                let _ = recv.stop(code::PROTOCOL);
                let _ = send.reset(code::PROTOCOL);
                return;
            }
            Err(ReadFrameError::Read(_)) => {
                let _ = send.reset(code::PROTOCOL);
                return;
            }
        };
        drop(recv);
        bump(&inner.counters.rpc_served);
        let caller_gone = send.stopped();
        let reply = tokio::select! {
            () = inner.shutdown.cancelled() => {
                let _ = send.reset(code::SHUTTING_DOWN);
                return;
            }
            _ = caller_gone => return,
            reply = inner.handler.clone().handle(peer.identity.clone(), request) => reply,
        };
        let parts = frame::reply_parts(reply, max);
        tokio::select! {
            () = inner.shutdown.cancelled() => {
                let _ = send.reset(code::SHUTTING_DOWN);
            }
            written = frame::write_frame(&mut send, parts) => {
                if let Err(error) = written {
                    debug!(to = %peer.addr, %error, "RPC reply not delivered");
                }
            }
        }
    }
}

/// Reads the verified identity of a connection's peer; closes the connection without one.
fn identify(conn: quinn::Connection, addr: SocketAddr) -> Result<PeerConn, TransportError> {
    let identity = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or_else(|| TlsError::Identity("peer presented no certificate".into()))
        .and_then(|certs| match certs.first() {
            Some(end_entity) => tls::identity_from_cert(end_entity),
            None => Err(TlsError::Identity("peer presented no certificate".into())),
        });
    match identity {
        Ok(identity) => Ok(PeerConn {
            conn,
            identity,
            addr,
        }),
        Err(source) => {
            conn.close(code::BAD_IDENTITY, b"no valid agent identity");
            Err(TransportError::BadPeer { addr, source })
        }
    }
}

/// The error for a stream the peer stopped or reset with `code`.
fn stream_refused(addr: SocketAddr, error_code: quinn::VarInt) -> TransportError {
    if error_code == code::FRAME_TOO_LARGE {
        return TransportError::FrameRefused { addr };
    }
    let reason = if error_code == code::SHUTTING_DOWN {
        "peer is shutting down".to_owned()
    } else if error_code == code::PROTOCOL {
        "peer refused a malformed frame".to_owned()
    } else {
        format!("reset by peer with code {error_code}")
    };
    TransportError::Stream { addr, reason }
}
