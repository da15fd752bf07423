//! QUIC transport over loopback with real mTLS.

// Setup helpers outside #[test] functions panic on failure too.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::tls::{self, PeerIdentity, Role, TlsMaterial};
use agent::transport::{
    Datagram, DatagramReceiver, RpcError, RpcHandler, Transport, TransportConfig, TransportError,
};
use bytes::Bytes;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use support::{Pki, bounded};

/// Answers `echo:<request>`, fails on `fail`, records who called.
#[derive(Default)]
struct Echo {
    callers: Mutex<Vec<PeerIdentity>>,
}

impl Echo {
    fn callers(&self) -> Vec<PeerIdentity> {
        self.callers.lock().unwrap().clone()
    }
}

impl RpcHandler for Echo {
    fn handle(
        self: Arc<Self>,
        from: PeerIdentity,
        request: Bytes,
    ) -> BoxFuture<'static, Result<Bytes, RpcError>> {
        self.callers.lock().unwrap().push(from);
        Box::pin(async move {
            if request.as_ref() == b"fail" {
                return Err(RpcError::new("handler failed on purpose"));
            }
            Ok(Bytes::from([b"echo:".as_slice(), &request].concat()))
        })
    }
}

struct Node {
    transport: Transport,
    datagrams: DatagramReceiver,
    echo: Arc<Echo>,
    addr: SocketAddr,
}

fn config() -> TransportConfig {
    let mut config = TransportConfig::lan("127.0.0.1:0".parse().unwrap());
    config.dial_timeout = Duration::from_secs(2);
    config.call_timeout = Duration::from_secs(5);
    config
}

fn start(tls: &TlsMaterial) -> Node {
    start_with(config(), tls)
}

fn start_with(config: TransportConfig, tls: &TlsMaterial) -> Node {
    let echo = Arc::new(Echo::default());
    let (transport, datagrams) =
        Transport::bind(config, tls, echo.clone(), CancellationToken::new()).unwrap();
    let addr = transport.local_addr();
    Node {
        transport,
        datagrams,
        echo,
        addr,
    }
}

/// A fresh CA and two servers of dc1 from it, `a` and `b`.
fn two_servers() -> (Pki, Node, Node) {
    let pki = Pki::new();
    let a = start(&pki.issue(Role::Server, "a"));
    let b = start(&pki.issue(Role::Server, "b"));
    (pki, a, b)
}

/// The identity of `node` in dc1.
fn dc1(role: Role, node: &str) -> PeerIdentity {
    PeerIdentity {
        role,
        dc: "dc1".into(),
        node: node.into(),
    }
}

async fn send(from: &Node, to: SocketAddr, payload: Bytes) {
    from.transport.send_datagram(to, payload).await.unwrap();
}

async fn call_err(from: &Node, to: SocketAddr, request: Bytes) -> TransportError {
    from.transport.call(to, request).await.unwrap_err()
}

fn assert_frame_too_large(err: &TransportError, len: usize, max: usize) {
    assert!(
        matches!(err, TransportError::FrameTooLarge { len: l, max: m } if *l == len && *m == max),
        "{err}"
    );
}

async fn next_datagram(rx: &mut DatagramReceiver) -> Datagram {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("no datagram within 5 s")
        .expect("datagram channel closed")
}

async fn echo_ok(from: &Node, to: &Node, body: &'static str) -> PeerIdentity {
    let reply = from
        .transport
        .call(to.addr, Bytes::from_static(body.as_bytes()))
        .await
        .unwrap();
    assert_eq!(reply.body, format!("echo:{body}").as_bytes());
    reply.peer
}

#[tokio::test]
async fn datagrams_flow_both_ways_with_the_senders_identity() {
    bounded(async {
        let (_pki, mut a, mut b) = two_servers();

        send(&a, b.addr, Bytes::from_static(b"ping")).await;
        let got = next_datagram(&mut b.datagrams).await;
        assert_eq!(got.payload, "ping");
        assert_eq!(got.from, dc1(Role::Server, "a"));
        assert_eq!(got.addr, a.addr);

        // The reply goes back over the connection that b done.
        send(&b, got.addr, Bytes::from_static(b"pong")).await;
        let got = next_datagram(&mut a.datagrams).await;
        assert_eq!(got.payload, "pong");
        assert_eq!(got.from.node, "b");
        assert_eq!(b.transport.stats().connections, 1);
        assert_eq!(a.transport.stats().connections, 1);

        // Sent without waiting, on the cached connection.
        a.transport
            .send_datagram_detached(b.addr, Bytes::from_static(b"detached"));
        assert_eq!(next_datagram(&mut b.datagrams).await.payload, "detached");
        assert_eq!(a.transport.stats().datagrams_sent, 2);
        assert_eq!(b.transport.stats().datagrams_received, 2);
        assert_eq!(a.transport.stats().datagrams_sent_on_stream, 0);
    })
    .await;
}

#[tokio::test]
async fn rpc_works_both_ways_and_the_handler_sees_the_caller() {
    bounded(async {
        let (_pki, a, b) = two_servers();

        assert_eq!(echo_ok(&a, &b, "hello").await.node, "b");
        assert_eq!(echo_ok(&b, &a, "hi back").await.node, "a");
        assert_eq!(b.echo.callers(), vec![dc1(Role::Server, "a")]);
        assert_eq!(a.echo.callers().len(), 1);
        assert_eq!(a.echo.callers()[0].node, "b");

        // Empty request and concurrent calls on one connection.
        let calls = (0..32).map(|i| {
            let t = a.transport.clone();
            let to = b.addr;
            async move { t.call(to, Bytes::from(format!("{i}"))).await }
        });
        for (i, reply) in futures::future::join_all(calls)
            .await
            .into_iter()
            .enumerate()
        {
            assert_eq!(reply.unwrap().body, format!("echo:{i}").as_bytes());
        }
        let empty = a.transport.call(b.addr, Bytes::new()).await.unwrap();
        assert_eq!(empty.body, "echo:");
        assert_eq!(a.transport.stats().rpc_calls, 34);
        assert_eq!(b.transport.stats().rpc_served, 34);
    })
    .await;
}

#[tokio::test]
async fn a_closure_can_serve_rpc() {
    bounded(async {
        let pki = Pki::new();
        let handler: Arc<dyn RpcHandler> = Arc::new(
            |from: PeerIdentity, request: Bytes| -> BoxFuture<'static, Result<Bytes, RpcError>> {
                Box::pin(async move { Ok(Bytes::from(format!("{}:{}", from.node, request.len()))) })
            },
        );
        let (server, _rx) = Transport::bind(
            config(),
            &pki.issue(Role::Server, "s"),
            handler,
            CancellationToken::new(),
        )
        .unwrap();
        let caller = start(&pki.issue(Role::Client, "c"));
        let reply = caller
            .transport
            .call(server.local_addr(), Bytes::from_static(b"xyz"))
            .await
            .unwrap();
        assert_eq!(reply.body, "c:3");
    })
    .await;
}

#[tokio::test]
async fn a_datagram_larger_than_a_quic_datagram_goes_on_a_stream() {
    bounded(async {
        let (_pki, a, mut b) = two_servers();

        let big: Bytes = (0..20_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>()
            .into();
        send(&a, b.addr, big.clone()).await;
        let got = next_datagram(&mut b.datagrams).await;
        assert_eq!(got.payload, big);
        assert_eq!(got.from.node, "a");
        assert_eq!(a.transport.stats().datagrams_sent_on_stream, 1);

        send(&a, b.addr, Bytes::from_static(b"small")).await;
        assert_eq!(next_datagram(&mut b.datagrams).await.payload, "small");
        assert_eq!(a.transport.stats().datagrams_sent_on_stream, 1);
        assert_eq!(a.transport.stats().datagrams_sent, 2);
    })
    .await;
}

#[tokio::test]
async fn a_peer_with_another_cas_certificate_is_refused() {
    bounded(async {
        let pki = Pki::new();
        let other = Pki::new();
        let mut good = start(&pki.issue(Role::Server, "good"));
        let rogue = start(&other.issue(Role::Server, "rogue"));

        // Neither side trusts the other.
        for (from, to) in [(&rogue, &good), (&good, &rogue)] {
            let err = call_err(from, to.addr, Bytes::from_static(b"x")).await;
            assert!(matches!(err, TransportError::Dial { .. }), "{err}");
        }

        // The rogue trusts our CA too, so only our side's check of its client
        // certificate can stop it.
        let both = other.dir.path().join("both-cas.pem");
        let ca_pem = [
            std::fs::read(pki.ca_file()).unwrap(),
            std::fs::read(other.ca_file()).unwrap(),
        ]
        .concat();
        std::fs::write(&both, ca_pem).unwrap();
        let sneaky = start(&other.issue_trusting(Role::Server, "dc1", "sneaky", &both));
        let err = call_err(&sneaky, good.addr, Bytes::from_static(b"x")).await;
        assert!(
            matches!(
                err,
                TransportError::Dial { .. } | TransportError::Connection { .. }
            ),
            "{err}"
        );
        let _ = sneaky
            .transport
            .send_datagram(good.addr, Bytes::from_static(b"gossip"))
            .await;

        assert!(good.echo.callers().is_empty(), "the handler must never run");
        assert!(good.transport.stats().handshake_failures >= 2);

        // The good endpoint still works.
        let friend = start(&pki.issue(Role::Server, "friend"));
        assert_eq!(echo_ok(&friend, &good, "still here").await.node, "good");
        send(&friend, good.addr, Bytes::from_static(b"hello")).await;
        let got = next_datagram(&mut good.datagrams).await;
        assert_eq!(
            (got.from.node.as_str(), got.payload.as_ref()),
            ("friend", b"hello".as_slice())
        );
        assert_eq!(good.echo.callers().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_client_certificate_is_seen_as_a_client() {
    bounded(async {
        let pki = Pki::new();
        let mut server = start(&pki.issue(Role::Server, "srv"));
        let client = start(&pki.issue(Role::Client, "cli"));

        let peer = echo_ok(&client, &server, "who am i").await;
        assert_eq!(peer, dc1(Role::Server, "srv"));
        let callers = server.echo.callers();
        assert_eq!(callers, vec![dc1(Role::Client, "cli")]);
        assert!(!callers[0].is_server_of("dc1"));

        send(&client, server.addr, Bytes::from_static(b"g")).await;
        assert_eq!(
            next_datagram(&mut server.datagrams).await.from.role,
            Role::Client
        );
        assert_eq!(
            server
                .transport
                .peer_identity(client.addr)
                .map(|id| id.role),
            Some(Role::Client)
        );
        assert_eq!(
            client.transport.connect(server.addr).await.unwrap().role,
            Role::Server
        );
    })
    .await;
}

#[tokio::test]
async fn the_wan_endpoint_admits_servers_of_every_datacenter_and_no_client() {
    bounded(async {
        let pki = Pki::new();
        let wan = |tls: &TlsMaterial| {
            let mut config = config();
            config.alpn = tls::ALPN_WAN;
            start_with(config, tls)
        };
        let dc1 = wan(&pki.issue_in(Role::Server, "dc1", "s1"));
        let dc2 = wan(&pki.issue_in(Role::Server, "dc2", "t1"));

        // Servers of two datacenters of one CA talk both ways, and each side has a
        // round-trip estimate of the other once connected.
        let peer = echo_ok(&dc2, &dc1, "across").await;
        assert_eq!((peer.role, peer.dc.as_str()), (Role::Server, "dc1"));
        assert_eq!(dc1.echo.callers()[0].dc, "dc2");
        let rtt = dc2.transport.rtt(dc1.addr).unwrap();
        assert!(rtt < Duration::from_secs(1), "{rtt:?}");
        assert_eq!(dc2.transport.rtt("127.0.0.1:9".parse().unwrap()), None);

        // A client certificate finishes no handshake on the WAN, in either direction.
        let client = wan(&pki.issue_in(Role::Client, "dc1", "c1"));
        let err = call_err(&client, dc1.addr, Bytes::from_static(b"x")).await;
        assert!(
            matches!(
                err,
                TransportError::Dial { .. } | TransportError::Connection { .. }
            ),
            "{err}"
        );
        let err = call_err(&dc1, client.addr, Bytes::from_static(b"x")).await;
        assert!(matches!(err, TransportError::Dial { .. }), "{err}");
        assert!(client.echo.callers().is_empty());
        assert_eq!(
            dc1.echo.callers().len(),
            1,
            "only the dc2 server got through"
        );

        // The pools are apart: a LAN endpoint does not speak to a WAN one.
        let lan = start(&pki.issue_in(Role::Server, "dc1", "s2"));
        let err = call_err(&lan, dc1.addr, Bytes::from_static(b"x")).await;
        assert!(matches!(err, TransportError::Dial { .. }), "{err}");
    })
    .await;
}

#[tokio::test]
async fn oversized_frames_are_refused_by_the_sender() {
    bounded(async {
        let pki = Pki::new();
        let mut small = config();
        small.max_frame_len = 1024;
        let a = start_with(small, &pki.issue(Role::Server, "a"));
        let b = start(&pki.issue(Role::Server, "b"));

        let err = call_err(&a, b.addr, Bytes::from(vec![0u8; 1025])).await;
        assert_frame_too_large(&err, 1025, 1024);
        let err = a
            .transport
            .send_datagram(b.addr, Bytes::from(vec![0u8; 2000]))
            .await
            .unwrap_err();
        assert_frame_too_large(&err, 2000, 1024);
        assert_eq!(a.transport.stats().connections, 0, "nothing was sent");

        // A reply above the caller's limit is refused by the caller.
        let err = call_err(&a, b.addr, Bytes::from(vec![7u8; 1020])).await;
        assert_frame_too_large(&err, 1026, 1024);
        assert_eq!(echo_ok(&a, &b, "fits").await.node, "b");
    })
    .await;
}

#[tokio::test]
async fn oversized_frames_are_refused_by_the_receiver() {
    bounded(async {
        let pki = Pki::new();
        let mut small = config();
        small.max_frame_len = 1024;
        let mut b = start_with(small, &pki.issue(Role::Server, "b"));
        let a = start(&pki.issue(Role::Server, "a"));

        let err = call_err(&a, b.addr, Bytes::from(vec![0u8; 4096])).await;
        assert!(
            matches!(err, TransportError::FrameRefused { addr } if addr == b.addr),
            "{err}"
        );
        assert_eq!(b.transport.stats().rpc_refused, 1);
        assert!(b.echo.callers().is_empty());

        // A stream datagram above the receiver's limit is dropped, not delivered.
        send(&a, b.addr, Bytes::from(vec![1u8; 4096])).await;
        send(&a, b.addr, Bytes::from_static(b"after")).await;
        assert_eq!(next_datagram(&mut b.datagrams).await.payload, "after");

        // Same connection, still serving.
        assert_eq!(echo_ok(&a, &b, "small").await.node, "b");
        assert_eq!(a.transport.stats().connections, 1);
    })
    .await;
}

#[tokio::test]
async fn a_raw_client_announcing_a_huge_frame_gets_its_stream_reset() {
    bounded(async {
        let pki = Pki::new();
        let server = start(&pki.issue(Role::Server, "srv"));
        let raw_tls = pki.issue(Role::Client, "raw");

        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(raw_tls.quinn_client_config(tls::ALPN_LAN).unwrap());
        let conn = endpoint.connect(server.addr, "agent").unwrap().await.unwrap();

        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let mut byte = [0u8; 1];
        let err = recv.read_exact(&mut byte).await.unwrap_err();
        assert!(
            matches!(err, quinn::ReadExactError::ReadError(quinn::ReadError::Reset(code)) if code == quinn::VarInt::from_u32(0x10)),
            "{err:?}"
        );
        let stopped = send.stopped().await.unwrap();
        assert_eq!(stopped, Some(quinn::VarInt::from_u32(0x10)));
        assert_eq!(server.transport.stats().rpc_refused, 1);
        assert!(server.echo.callers().is_empty());

        // The same connection can still make a well-formed call: frame out, status + body back.
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&5u32.to_be_bytes()).await.unwrap();
        send.write_all(b"hello").await.unwrap();
        send.finish().unwrap();
        let reply = recv.read_to_end(1024).await.unwrap();
        assert_eq!(reply, [&11u32.to_be_bytes()[..], &[0], b"echo:hello"].concat());

        // And the endpoint serves others.
        let other = start(&pki.issue(Role::Server, "other"));
        assert_eq!(echo_ok(&other, &server, "fine").await.node, "srv");
        endpoint.close(quinn::VarInt::from_u32(0), b"done");
    })
    .await;
}

#[tokio::test]
async fn a_closed_connection_is_reestablished_on_the_next_call() {
    bounded(async {
        let pki = Pki::new();
        let a = start(&pki.issue(Role::Server, "a"));
        let b_tls = pki.issue(Role::Server, "b");
        let b = start(&b_tls);
        let b_addr = b.addr;

        echo_ok(&a, &b, "one").await;
        a.transport.disconnect(b_addr);
        assert_eq!(a.transport.stats().connections, 0);
        echo_ok(&a, &b, "two").await;
        assert_eq!(a.transport.stats().connections, 1);

        // Restart b on the same port: its shutdown closes the connection, and a's next
        // call dials the new b.
        b.transport.shutdown().await;
        assert!(matches!(
            b.transport.call(a.addr, Bytes::new()).await,
            Err(TransportError::Shutdown)
        ));
        drop(b);
        wait_until(|| a.transport.peer_identity(b_addr).is_none()).await;
        let mut again = config();
        again.bind = b_addr;
        let b2 = loop {
            // The old socket is released once quinn's endpoint driver has stopped.
            match Transport::bind(
                again.clone(),
                &b_tls,
                Arc::new(Echo::default()),
                CancellationToken::new(),
            ) {
                Ok((transport, _rx)) => break transport,
                Err(TransportError::Bind { .. }) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(other) => panic!("{other}"),
            }
        };
        let reply = a
            .transport
            .call(b_addr, Bytes::from_static(b"three"))
            .await
            .unwrap();
        assert_eq!(reply.body, "echo:three");
        assert_eq!(reply.peer.node, "b");
        b2.shutdown().await;
    })
    .await;
}

async fn wait_until(mut condition: impl FnMut() -> bool) {
    while !condition() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_remote_handler_error_surfaces_as_remote() {
    bounded(async {
        let (_pki, a, b) = two_servers();
        let err = call_err(&a, b.addr, Bytes::from_static(b"fail")).await;
        assert!(
            matches!(&err, TransportError::Remote(m) if m == "handler failed on purpose"),
            "{err}"
        );
        echo_ok(&a, &b, "next").await;
    })
    .await;
}

#[tokio::test]
async fn a_failed_dial_backs_off_and_fails_fast() {
    bounded(async {
        let pki = Pki::new();
        let mut fast = config();
        fast.dial_timeout = Duration::from_millis(300);
        fast.dial_backoff = Duration::from_secs(30);
        let a = start_with(fast, &pki.issue(Role::Server, "a"));
        // A port with nobody behind it.
        let dead = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();

        let started = tokio::time::Instant::now();
        let err = a
            .transport
            .send_datagram(dead, Bytes::from_static(b"x"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                TransportError::DialTimeout { .. } | TransportError::Dial { .. }
            ),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));

        let started = tokio::time::Instant::now();
        let err = call_err(&a, dead, Bytes::from_static(b"x")).await;
        assert!(
            matches!(err, TransportError::Backoff { addr, .. } if addr == dead),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_millis(50));
        assert_eq!(a.transport.stats().dial_failures, 1);
    })
    .await;
}

#[tokio::test]
async fn concurrent_first_calls_share_one_connection() {
    bounded(async {
        let (_pki, a, b) = two_servers();
        let done = Arc::new(AtomicUsize::new(0));
        let calls = (0..16).map(|_| {
            let t = a.transport.clone();
            let done = done.clone();
            let to = b.addr;
            async move {
                t.call(to, Bytes::from_static(b"x")).await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
        futures::future::join_all(calls).await;
        assert_eq!(done.load(Ordering::Relaxed), 16);
        assert_eq!(a.transport.stats().connections, 1);
        assert_eq!(b.transport.stats().connections, 1);
    })
    .await;
}

#[tokio::test]
async fn shutdown_ends_the_transport() {
    bounded(async {
        let pki = Pki::new();
        let token = CancellationToken::new();
        let (a, mut a_rx) = Transport::bind(
            config(),
            &pki.issue(Role::Server, "a"),
            Arc::new(Echo::default()),
            token.clone(),
        )
        .unwrap();
        let b = start(&pki.issue(Role::Server, "b"));
        a.call(b.addr, Bytes::from_static(b"x")).await.unwrap();

        // Cancelling the caller's token stops everything; shutdown() then returns promptly.
        token.cancel();
        a.shutdown().await;
        assert!(matches!(
            a.call(b.addr, Bytes::new()).await,
            Err(TransportError::Shutdown)
        ));
        assert!(matches!(
            a.send_datagram(b.addr, Bytes::from_static(b"x")).await,
            Err(TransportError::Shutdown)
        ));
        drop(a);
        // Every sender of the datagram channel is gone with the tasks.
        assert!(a_rx.recv().await.is_none());
    })
    .await;
}
