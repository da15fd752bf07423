//! The DNS server answering real UDP and TCP queries from a fake catalog.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use hickory_server::proto::op::{Edns, Message, Query, ResponseCode};
use hickory_server::proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::*;

/// Services (with the tags of each instance) and nodes, in memory.
#[derive(Default)]
struct FakeCatalog {
    services: BTreeMap<String, Vec<(Instance, Vec<String>)>>,
    nodes: BTreeMap<String, String>,
}

impl FakeCatalog {
    fn with_service(mut self, service: &str, instances: Vec<(Instance, &[&str])>) -> Self {
        let instances = instances
            .into_iter()
            .map(|(i, tags)| (i, tags.iter().map(|t| t.to_string()).collect()))
            .collect();
        self.services.insert(service.to_string(), instances);
        self
    }

    fn with_node(mut self, node: &str, address: &str) -> Self {
        self.nodes.insert(node.to_string(), address.to_string());
        self
    }
}

impl DnsCatalog for FakeCatalog {
    fn service<'a>(
        &'a self,
        dc: &'a str,
        service: &'a str,
        tag: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<Instance>, CatalogError>> {
        Box::pin(async move {
            if service == "broken" {
                return Err(CatalogError("no leader".to_string()));
            }
            if dc != "dc1" {
                return Ok(Vec::new());
            }
            Ok(self
                .services
                .get(service)
                .into_iter()
                .flatten()
                .filter(|(_, tags)| tag.is_none_or(|tag| tags.iter().any(|t| t == tag)))
                .map(|(instance, _)| instance.clone())
                .collect())
        })
    }

    fn node<'a>(
        &'a self,
        dc: &'a str,
        node: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, CatalogError>> {
        Box::pin(async move {
            if dc != "dc1" {
                return Ok(None);
            }
            Ok(self.nodes.get(node).cloned())
        })
    }
}

fn instance(node: &str, node_address: &str, service_address: &str, port: u16) -> Instance {
    Instance {
        node: node.to_string(),
        node_address: node_address.to_string(),
        service_address: service_address.to_string(),
        port,
    }
}

fn catalog() -> FakeCatalog {
    let many = (0..100)
        .map(|i| {
            (
                instance(&format!("m{i}"), &format!("10.1.0.{i}"), "", 9000),
                &[][..],
            )
        })
        .collect();
    FakeCatalog::default()
        .with_service(
            "web",
            vec![
                (instance("n1", "10.0.0.1", "", 8080), &["v1"]),
                (instance("n2", "10.0.0.2", "10.0.0.2", 8081), &["v2"]),
                (instance("n3", "10.0.0.3", "fd00::3", 8082), &["v1"]),
                (instance("n4", "10.0.0.4", "web.example.com", 8083), &[]),
            ],
        )
        .with_service("many", many)
        .with_node("n1", "10.0.0.1")
        .with_node("n6", "fd00::6")
}

struct Running {
    addr: SocketAddr,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        self.tracker.close();
        tokio::time::timeout(Duration::from_secs(5), self.tracker.wait())
            .await
            .expect("the DNS server stops on shutdown");
    }
}

fn start() -> Running {
    let tracker = TaskTracker::new();
    let shutdown = CancellationToken::new();
    let addr = DnsServer::spawn(
        "127.0.0.1:0".parse().unwrap(),
        "consul.",
        "dc1",
        Arc::new(catalog()),
        &tracker,
        shutdown.clone(),
    )
    .unwrap();
    Running {
        addr,
        shutdown,
        tracker,
    }
}

fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut message = Message::query();
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        message.set_edns(e);
    }
    message.to_vec().unwrap()
}

/// Asks over UDP; returns the answer and its size on the wire.
async fn ask_udp_sized(
    addr: SocketAddr,
    name: &str,
    qtype: RecordType,
    edns: Option<u16>,
) -> (Message, usize) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket
        .send_to(&query(name, qtype, edns), addr)
        .await
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let (len, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
        .await
        .expect("an answer over UDP")
        .unwrap();
    (Message::from_vec(&buf[..len]).unwrap(), len)
}

async fn ask_udp(addr: SocketAddr, name: &str, qtype: RecordType) -> Message {
    ask_udp_sized(addr, name, qtype, None).await.0
}

async fn ask_tcp(addr: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let bytes = query(name, qtype, None);
    stream
        .write_all(&(bytes.len() as u16).to_be_bytes())
        .await
        .unwrap();
    stream.write_all(&bytes).await.unwrap();
    let read = async {
        let len = stream.read_u16().await.unwrap();
        let mut buf = vec![0u8; len as usize];
        stream.read_exact(&mut buf).await.unwrap();
        buf
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("an answer over TCP");
    Message::from_vec(&buf).unwrap()
}

fn ips(message: &Message) -> HashSet<IpAddr> {
    message
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect()
}

fn set(addresses: &[&str]) -> HashSet<IpAddr> {
    addresses.iter().map(|a| a.parse().unwrap()).collect()
}

fn assert_nxdomain_with_soa(message: &Message) {
    assert_eq!(message.metadata.response_code, ResponseCode::NXDomain);
    assert!(message.metadata.authoritative);
    assert!(message.answers.is_empty());
    let [soa] = &message.authorities[..] else {
        panic!("one SOA in the authority section: {message:?}");
    };
    let RData::SOA(soa_data) = &soa.data else {
        panic!("not an SOA: {soa:?}");
    };
    assert_eq!(soa.name.to_ascii(), "consul.");
    assert_eq!(soa_data.mname.to_ascii(), "ns.consul.");
    assert_eq!(soa_data.rname.to_ascii(), "hostmaster.consul.");
    assert_eq!(
        (
            soa_data.refresh,
            soa_data.retry,
            soa_data.expire,
            soa_data.minimum
        ),
        (3600, 600, 86400, 0)
    );
    assert!(soa_data.serial > 1_700_000_000);
}

#[tokio::test]
async fn a_and_aaaa_give_passing_instance_addresses() {
    let dns = start();
    let answer = ask_udp(dns.addr, "web.service.consul.", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(answer.metadata.authoritative);
    assert_eq!(ips(&answer), set(&["10.0.0.1", "10.0.0.2"]));
    for record in &answer.answers {
        assert_eq!(record.ttl, 0);
        assert_eq!(record.name.to_ascii(), "web.service.consul.");
    }

    let answer = ask_udp(dns.addr, "web.service.dc1.consul", RecordType::AAAA).await;
    assert_eq!(ips(&answer), set(&["fd00::3"]));

    let answer = ask_udp(dns.addr, "WEB.Service.Consul", RecordType::ANY).await;
    assert_eq!(ips(&answer), set(&["10.0.0.1", "10.0.0.2", "fd00::3"]));
    // The answer keeps the case of the question.
    assert_eq!(answer.answers[0].name.to_ascii(), "WEB.Service.Consul.");
    dns.stop().await;
}

#[tokio::test]
async fn srv_gives_ports_and_targets_with_their_addresses() {
    let dns = start();
    let answer = ask_udp(dns.addr, "web.service.consul", RecordType::SRV).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    let mut srv: Vec<(u16, u16, u16, String)> = answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((s.priority, s.weight, s.port, s.target.to_ascii())),
            _ => None,
        })
        .collect();
    srv.sort();
    assert_eq!(
        srv,
        vec![
            (1, 1, 8080, "n1.node.dc1.consul.".to_string()),
            (1, 1, 8081, "n2.node.dc1.consul.".to_string()),
            (
                1,
                1,
                8082,
                "fd000000000000000000000000000003.addr.dc1.consul.".to_string()
            ),
            (1, 1, 8083, "web.example.com.".to_string()),
        ]
    );
    let mut additional: Vec<(String, IpAddr)> = answer
        .additionals
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some((r.name.to_ascii(), IpAddr::V4(a.0))),
            RData::AAAA(a) => Some((r.name.to_ascii(), IpAddr::V6(a.0))),
            _ => None,
        })
        .collect();
    additional.sort();
    assert_eq!(
        additional,
        vec![
            (
                "fd000000000000000000000000000003.addr.dc1.consul.".to_string(),
                "fd00::3".parse().unwrap()
            ),
            (
                "n1.node.dc1.consul.".to_string(),
                "10.0.0.1".parse().unwrap()
            ),
            (
                "n2.node.dc1.consul.".to_string(),
                "10.0.0.2".parse().unwrap()
            ),
        ]
    );

    // The targets resolve.
    let target = ask_udp(
        dns.addr,
        "fd000000000000000000000000000003.addr.dc1.consul",
        RecordType::AAAA,
    )
    .await;
    assert_eq!(ips(&target), set(&["fd00::3"]));
    let target = ask_udp(dns.addr, "n1.node.dc1.consul.", RecordType::A).await;
    assert_eq!(ips(&target), set(&["10.0.0.1"]));
    dns.stop().await;
}

#[tokio::test]
async fn tags_filter_instances_in_both_spellings() {
    let dns = start();
    let answer = ask_udp(dns.addr, "v1.web.service.consul", RecordType::ANY).await;
    assert_eq!(ips(&answer), set(&["10.0.0.1", "fd00::3"]));
    let answer = ask_udp(dns.addr, "_web._v2.service.dc1.consul", RecordType::SRV).await;
    assert_eq!(answer.answers.len(), 1);
    let answer = ask_udp(dns.addr, "_web._tcp.service.consul", RecordType::SRV).await;
    assert_eq!(answer.answers.len(), 4);
    let answer = ask_udp(dns.addr, "v9.web.service.consul", RecordType::A).await;
    assert_nxdomain_with_soa(&answer);
    dns.stop().await;
}

#[tokio::test]
async fn nodes_resolve_to_their_address() {
    let dns = start();
    let answer = ask_udp(dns.addr, "n1.node.consul", RecordType::A).await;
    assert_eq!(ips(&answer), set(&["10.0.0.1"]));
    let answer = ask_udp(dns.addr, "N6.node.dc1.consul.", RecordType::AAAA).await;
    assert_eq!(ips(&answer), set(&["fd00::6"]));
    // The node exists but has no IPv4 address: no data, not NXDOMAIN.
    let answer = ask_udp(dns.addr, "n6.node.consul", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(answer.answers.is_empty());
    assert_eq!(answer.authorities.len(), 1);
    assert_nxdomain_with_soa(&ask_udp(dns.addr, "n9.node.consul", RecordType::A).await);
    assert_nxdomain_with_soa(&ask_udp(dns.addr, "n1.node.dc2.consul", RecordType::A).await);
    dns.stop().await;
}

#[tokio::test]
async fn unknown_and_bad_names_are_nxdomain_with_soa() {
    let dns = start();
    for name in [
        "nope.service.consul",
        "web.service.dc9.consul",
        "web.consul",
        "a.b.web.service.consul",
        "service.consul",
        "x.y.z.consul",
    ] {
        let answer = ask_udp(dns.addr, name, RecordType::A).await;
        assert_nxdomain_with_soa(&answer);
    }
    let apex = ask_udp(dns.addr, "consul.", RecordType::SOA).await;
    assert_eq!(apex.metadata.response_code, ResponseCode::NoError);
    assert_eq!(apex.answers.len(), 1);
    dns.stop().await;
}

#[tokio::test]
async fn names_outside_the_domain_are_refused() {
    let dns = start();
    for name in ["example.com.", "web.service.consul.example.", "."] {
        let answer = ask_udp(dns.addr, name, RecordType::A).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::Refused,
            "{name}"
        );
        assert!(answer.answers.is_empty());
    }
    dns.stop().await;
}

#[tokio::test]
async fn catalog_errors_are_servfail() {
    let dns = start();
    let answer = ask_udp(dns.addr, "broken.service.consul", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    assert!(!answer.metadata.authoritative);
    // The server keeps answering.
    let answer = ask_udp(dns.addr, "web.service.consul", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    dns.stop().await;
}

#[tokio::test]
async fn tcp_carries_queries_and_whole_answers() {
    let dns = start();
    let answer = ask_tcp(dns.addr, "web.service.consul", RecordType::A).await;
    assert_eq!(ips(&answer), set(&["10.0.0.1", "10.0.0.2"]));

    let answer = ask_tcp(dns.addr, "many.service.consul", RecordType::SRV).await;
    assert!(!answer.metadata.truncation);
    assert_eq!(answer.answers.len(), 100);
    assert_eq!(answer.additionals.len(), 100);
    dns.stop().await;
}

#[tokio::test]
async fn udp_answers_are_truncated_to_fit() {
    let dns = start();
    let (answer, len) = ask_udp_sized(dns.addr, "many.service.consul", RecordType::A, None).await;
    assert!(len <= 512, "{len} bytes");
    assert!(answer.metadata.truncation, "TC is set");
    assert!(!answer.answers.is_empty() && answer.answers.len() < 100);

    // A client with a larger EDNS buffer gets more in one answer.
    let (bigger, len) =
        ask_udp_sized(dns.addr, "many.service.consul", RecordType::A, Some(4096)).await;
    assert!(len > 512 && len <= 4096, "{len} bytes");
    assert!(!bigger.metadata.truncation);
    assert_eq!(bigger.answers.len(), 100);
    dns.stop().await;
}

#[tokio::test]
async fn instances_come_in_random_order() {
    let dns = start();
    let mut orders = HashSet::new();
    for _ in 0..20 {
        let answer = ask_udp(dns.addr, "many.service.consul", RecordType::A).await;
        let order: Vec<String> = answer.answers.iter().map(|r| r.data.to_string()).collect();
        orders.insert(order);
    }
    assert!(orders.len() > 1, "the order changes between answers");
    dns.stop().await;
}

#[tokio::test]
async fn garbage_does_not_stop_the_server() {
    let dns = start();
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for junk in [&b""[..], b"\x00", &[0xff; 11], &[0xab; 40], &[0u8; 600]] {
        socket.send_to(junk, dns.addr).await.unwrap();
    }
    let answer = ask_udp(dns.addr, "web.service.consul", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    dns.stop().await;
}

#[tokio::test]
async fn binding_a_taken_port_fails() {
    let dns = start();
    let tracker = TaskTracker::new();
    let result = DnsServer::spawn(
        dns.addr,
        "consul.",
        "dc1",
        Arc::new(FakeCatalog::default()),
        &tracker,
        CancellationToken::new(),
    );
    assert!(matches!(result, Err(DnsError::Bind { .. })));
    let result = DnsServer::spawn(
        "127.0.0.1:0".parse().unwrap(),
        ".",
        "dc1",
        Arc::new(FakeCatalog::default()),
        &tracker,
        CancellationToken::new(),
    );
    assert!(matches!(result, Err(DnsError::Domain(_))));
    dns.stop().await;
}

#[tokio::test]
async fn answers_come_from_the_http_api() {
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let router = super::catalog::tests::fake_api(asked.clone());
    let tracker = TaskTracker::new();
    let shutdown = CancellationToken::new();
    let addr = DnsServer::spawn(
        "127.0.0.1:0".parse().unwrap(),
        "consul",
        "dc1",
        Arc::new(HttpCatalog::new(router, "dc1".to_string())),
        &tracker,
        shutdown.clone(),
    )
    .unwrap();
    let dns = Running {
        addr,
        shutdown,
        tracker,
    };
    let answer = ask_udp(dns.addr, "web.service.consul", RecordType::ANY).await;
    assert_eq!(ips(&answer), set(&["10.0.0.1", "fd00::2"]));
    let answer = ask_tcp(dns.addr, "v1.web.service.dc2.consul", RecordType::SRV).await;
    assert_eq!(answer.answers.len(), 1);
    let answer = ask_udp(dns.addr, "n1.node.consul", RecordType::A).await;
    assert_eq!(ips(&answer), set(&["10.0.0.1"]));
    assert_nxdomain_with_soa(&ask_udp(dns.addr, "n2.node.consul", RecordType::A).await);
    assert_nxdomain_with_soa(&ask_udp(dns.addr, "db.service.consul", RecordType::A).await);
    let answer = ask_udp(dns.addr, "broken.service.consul", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(
        asked.lock().unwrap().clone(),
        vec![
            "web?passing&stale",
            "web?passing&stale&tag=v1&dc=dc2",
            "node n1?stale",
            "node n2?stale",
            "db?passing&stale",
            "broken?passing&stale",
        ]
    );
    dns.stop().await;
}

/// `dig`, as an operator would ask (CI installs it).
#[tokio::test]
async fn dig_reads_srv_answers() {
    if std::process::Command::new("dig")
        .arg("-v")
        .output()
        .is_err()
    {
        eprintln!(
            "skipping dig_reads_srv_answers: dig is not installed (apt-get install dnsutils)"
        );
        return;
    }
    let dns = start();
    let output = tokio::process::Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &dns.addr.port().to_string(),
            "web.service.consul",
            "SRV",
            "+short",
            "+tries=1",
            "+time=5",
        ])
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        vec![
            "1 1 8080 n1.node.dc1.consul.",
            "1 1 8081 n2.node.dc1.consul.",
            "1 1 8082 fd000000000000000000000000000003.addr.dc1.consul.",
            "1 1 8083 web.example.com.",
        ]
    );
    dns.stop().await;
}
