//! The DNS interface (Consul's): passing service instances and nodes as A, AAAA and SRV
//! records under a domain (`consul.`), over UDP and TCP on one port.
//!
//! - [`name`]: what a query name asks for (parsing only).
//! - [`catalog`]: where answers come from ([`DnsCatalog`]; [`HttpCatalog`] asks the
//!   agent's own HTTP API).
//! - [`DnsServer::spawn`] binds the port and serves until shutdown with `hickory-server`,
//!   which also truncates UDP answers to the client's size (512 bytes, or its EDNS size)
//!   and sets TC.
//!
//! Answers are authoritative, with TTL 0 and instances in random order. A name under the
//! domain that does not exist is NXDOMAIN with the domain's SOA; a name outside it is
//! REFUSED; a catalog that cannot answer gives SERVFAIL.

pub mod catalog;
pub mod name;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_server::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use rand::seq::SliceRandom;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use catalog::{CatalogError, DnsCatalog, HttpCatalog, Instance};
pub use name::{NameError, QueryName};

/// TTL of every record (Consul's default: answers are not cached).
const TTL: u32 = 0;
/// How long one query may wait for the catalog before it is answered SERVFAIL.
const CATALOG_TIMEOUT: Duration = Duration::from_secs(4);
/// Queries answered at once; more are answered SERVFAIL at once.
const MAX_CONCURRENT_QUERIES: usize = 256;
/// Instances considered per answer (the rest are left out, as if truncated).
const MAX_INSTANCES: usize = 1024;
/// The largest UDP answer, whatever size the client advertises.
const MAX_UDP_PAYLOAD: u16 = 4096;
/// A TCP connection that sends no query for this long is closed.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Answers queued per TCP connection.
const TCP_RESPONSE_QUEUE: usize = 32;

/// Why the DNS interface could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The domain is not a valid DNS name.
    #[error("bad DNS domain {0:?}")]
    Domain(String),
    /// A socket could not be bound.
    #[error("binding DNS on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The DNS server.
pub struct DnsServer;

impl DnsServer {
    /// Serves DNS for names under `domain` (e.g. `consul.`) on UDP and TCP at `addr`
    /// (port 0: one free port for both), answering from `catalog`; names without a
    /// datacenter are of `local_dc`. The server's task belongs to `tracker` and ends
    /// when `shutdown` is cancelled. Returns the bound address. Must be called within a
    /// Tokio runtime.
    pub fn spawn(
        addr: SocketAddr,
        domain: &str,
        local_dc: &str,
        catalog: Arc<dyn DnsCatalog>,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<SocketAddr, DnsError> {
        let handler = DnsHandler::new(domain, local_dc, catalog)?;
        let (udp, tcp) = bind(addr)?;
        let bound = udp
            .local_addr()
            .map_err(|source| DnsError::Bind { addr, source })?;
        let mut server = Server::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_QUEUE);
        tracker.spawn(async move {
            tokio::select! {
                result = server.block_until_done() => {
                    if let Err(e) = result {
                        tracing::warn!("DNS stopped with an error: {e}");
                    }
                    return;
                }
                _ = shutdown.cancelled() => {}
            }
            if let Err(e) = server.shutdown_gracefully().await {
                tracing::debug!("DNS shut down with an error: {e}");
            }
        });
        Ok(bound)
    }
}

/// Binds UDP and TCP on the same address; with port 0, on one port free for both.
fn bind(addr: SocketAddr) -> Result<(tokio::net::UdpSocket, tokio::net::TcpListener), DnsError> {
    let err = |source| DnsError::Bind { addr, source };
    let attempts = if addr.port() == 0 { 16 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let udp = std::net::UdpSocket::bind(addr).map_err(err)?;
        let bound = udp.local_addr().map_err(err)?;
        match std::net::TcpListener::bind(bound) {
            Ok(tcp) => {
                udp.set_nonblocking(true).map_err(err)?;
                tcp.set_nonblocking(true).map_err(err)?;
                let udp = tokio::net::UdpSocket::from_std(udp).map_err(err)?;
                let tcp = tokio::net::TcpListener::from_std(tcp).map_err(err)?;
                return Ok((udp, tcp));
            }
            // Port 0: the port free for UDP is taken for TCP; try another.
            Err(e) => last = Some(e),
        }
    }
    Err(err(last.unwrap_or_else(|| {
        std::io::Error::other("no port free for both UDP and TCP")
    })))
}

/// Answers queries; one per server.
struct DnsHandler {
    /// The domain, as a name (for the SOA) and as lower-case labels (for parsing).
    domain: Name,
    domain_labels: Vec<String>,
    local_dc: String,
    catalog: Arc<dyn DnsCatalog>,
    in_flight: Semaphore,
}

/// An answer before it is encoded.
#[derive(Default)]
struct Answer {
    code: ResponseCode,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
}

impl DnsHandler {
    fn new(
        domain: &str,
        local_dc: &str,
        catalog: Arc<dyn DnsCatalog>,
    ) -> Result<DnsHandler, DnsError> {
        let domain_labels: Vec<String> = name::text_labels(domain)
            .iter()
            .map(|label| label.to_ascii_lowercase())
            .collect();
        let bad = || DnsError::Domain(domain.to_string());
        if domain_labels.is_empty() {
            return Err(bad());
        }
        let domain =
            Name::from_labels(domain_labels.iter().map(String::as_bytes)).map_err(|_| bad())?;
        Ok(DnsHandler {
            domain,
            domain_labels,
            local_dc: local_dc.to_string(),
            catalog,
            in_flight: Semaphore::new(MAX_CONCURRENT_QUERIES),
        })
    }

    /// The answer to one query.
    async fn answer(&self, qname: &Name, qtype: RecordType, qclass: DNSClass) -> Answer {
        if !matches!(qclass, DNSClass::IN | DNSClass::ANY) {
            return Answer::code(ResponseCode::Refused);
        }
        let labels: Vec<&[u8]> = qname.iter().collect();
        let parsed = match QueryName::parse(&labels, &self.domain_labels) {
            Ok(parsed) => parsed,
            Err(NameError::OutsideDomain) => return Answer::code(ResponseCode::Refused),
            Err(NameError::Invalid) => return self.nxdomain(),
        };
        let Ok(_permit) = self.in_flight.try_acquire() else {
            tracing::debug!("DNS: too many queries at once; answering SERVFAIL");
            return Answer::code(ResponseCode::ServFail);
        };
        let lookup = self.lookup(qname, qtype, parsed);
        match tokio::time::timeout(CATALOG_TIMEOUT, lookup).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                tracing::warn!("DNS {qname} {qtype}: {e}");
                Answer::code(ResponseCode::ServFail)
            }
            Err(_) => {
                tracing::warn!("DNS {qname} {qtype}: the catalog did not answer in time");
                Answer::code(ResponseCode::ServFail)
            }
        }
    }

    async fn lookup(
        &self,
        qname: &Name,
        qtype: RecordType,
        parsed: QueryName,
    ) -> Result<Answer, CatalogError> {
        match parsed {
            QueryName::Apex => Ok(if matches!(qtype, RecordType::SOA | RecordType::ANY) {
                Answer {
                    answers: vec![self.soa()],
                    ..Answer::default()
                }
            } else {
                self.no_data()
            }),
            QueryName::Addr { ip, .. } => Ok(self.addresses(qname, qtype, [ip])),
            QueryName::Node { dc, node } => {
                let dc = dc.unwrap_or_else(|| self.local_dc.clone());
                match self.catalog.node(&dc, &node).await? {
                    None => Ok(self.nxdomain()),
                    Some(address) => {
                        Ok(self.addresses(qname, qtype, address.parse::<IpAddr>().ok()))
                    }
                }
            }
            QueryName::Service { dc, service, tag } => {
                let dc = dc.unwrap_or_else(|| self.local_dc.clone());
                let mut instances = self.catalog.service(&dc, &service, tag.as_deref()).await?;
                if instances.is_empty() {
                    return Ok(self.nxdomain());
                }
                instances.truncate(MAX_INSTANCES);
                instances.shuffle(&mut rand::rng());
                Ok(if qtype == RecordType::SRV {
                    self.srv(qname, &dc, &instances)
                } else {
                    let ips = instances
                        .iter()
                        .filter_map(|i| i.address().parse::<IpAddr>().ok());
                    self.addresses(qname, qtype, ips)
                })
            }
        }
    }

    /// A, AAAA (or both for ANY) records of `ips` under `qname`, without repeats.
    fn addresses(
        &self,
        qname: &Name,
        qtype: RecordType,
        ips: impl IntoIterator<Item = IpAddr>,
    ) -> Answer {
        let mut seen = HashSet::new();
        let answers: Vec<Record> = ips
            .into_iter()
            .filter(|ip| seen.insert(*ip))
            .filter_map(|ip| address_record(qname.clone(), qtype, ip))
            .collect();
        if answers.is_empty() {
            return self.no_data();
        }
        Answer {
            answers,
            ..Answer::default()
        }
    }

    /// SRV records of `instances`, with the targets' addresses as additional records.
    /// The target is the node's name when the instance uses the node's address, else
    /// the hex spelling of its own address (`<hex>.addr.<dc>.<domain>`), or its host
    /// name when it has one instead of an address.
    fn srv(&self, qname: &Name, dc: &str, instances: &[Instance]) -> Answer {
        let mut answer = Answer::default();
        let mut targets = HashSet::new();
        for instance in instances {
            let own_ip = instance.service_address.parse::<IpAddr>().ok();
            let node_ip = instance.node_address.parse::<IpAddr>().ok();
            let (target, ip) = match (instance.service_address.is_empty(), own_ip) {
                (true, _) => (self.name_in_dc(&instance.node, "node", dc), node_ip),
                (false, Some(ip)) if Some(ip) == node_ip => {
                    (self.name_in_dc(&instance.node, "node", dc), Some(ip))
                }
                (false, Some(ip)) => (self.name_in_dc(&name::hex_ip(ip), "addr", dc), Some(ip)),
                (false, None) => (
                    Name::from_ascii(format!("{}.", instance.service_address))
                        .map_err(|e| e.to_string()),
                    None,
                ),
            };
            let Ok(target) = target else {
                continue;
            };
            if let Some(ip) = ip
                && targets.insert((target.clone(), ip))
                && let Some(record) = address_record(target.clone(), RecordType::ANY, ip)
            {
                answer.additionals.push(record);
            }
            let srv = SRV::new(1, 1, instance.port, target);
            answer
                .answers
                .push(Record::from_rdata(qname.clone(), TTL, RData::SRV(srv)));
        }
        if answer.answers.is_empty() {
            return self.no_data();
        }
        answer
    }

    /// `<label>.<kind>.<dc>.<domain>.`
    fn name_in_dc(&self, label: &str, kind: &str, dc: &str) -> Result<Name, String> {
        Name::from_labels([label.as_bytes(), kind.as_bytes(), dc.as_bytes()])
            .and_then(|name| name.append_domain(&self.domain))
            .map_err(|e| e.to_string())
    }

    /// The domain's SOA record.
    fn soa(&self) -> Record {
        let serial = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(0);
        let under = |label: &str| {
            Name::from_labels([label.as_bytes()])
                .and_then(|name| name.append_domain(&self.domain))
                .unwrap_or_else(|_| self.domain.clone())
        };
        let soa = SOA::new(
            under("ns"),
            under("hostmaster"),
            serial,
            3600,
            600,
            86400,
            0,
        );
        Record::from_rdata(self.domain.clone(), TTL, RData::SOA(soa))
    }

    fn nxdomain(&self) -> Answer {
        Answer {
            code: ResponseCode::NXDomain,
            authorities: vec![self.soa()],
            ..Answer::default()
        }
    }

    /// The name exists but has no records of the type asked.
    fn no_data(&self) -> Answer {
        Answer {
            authorities: vec![self.soa()],
            ..Answer::default()
        }
    }
}

impl Answer {
    fn code(code: ResponseCode) -> Answer {
        Answer {
            code,
            ..Answer::default()
        }
    }
}

/// An A or AAAA record of `ip` if `qtype` asks for its family (ANY asks for both).
fn address_record(name: Name, qtype: RecordType, ip: IpAddr) -> Option<Record> {
    let rdata = match (qtype, ip) {
        (RecordType::A | RecordType::ANY, IpAddr::V4(v4)) => RData::A(A(v4)),
        (RecordType::AAAA | RecordType::ANY, IpAddr::V6(v6)) => RData::AAAA(AAAA(v6)),
        _ => return None,
    };
    Some(Record::from_rdata(name, TTL, rdata))
}

#[async_trait::async_trait]
impl RequestHandler for DnsHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        let answer = if request.metadata.message_type != MessageType::Query
            || request.metadata.op_code != OpCode::Query
        {
            Answer::code(ResponseCode::NotImp)
        } else {
            match request.request_info() {
                Ok(info) => {
                    metadata.authoritative = true;
                    let query = info.query.original();
                    self.answer(query.name(), query.query_type(), query.query_class())
                        .await
                }
                Err(_) => Answer::code(ResponseCode::FormErr),
            }
        };
        // Authoritative for what exists and what does not; not for refusals and failures.
        if !matches!(answer.code, ResponseCode::NoError | ResponseCode::NXDomain) {
            metadata.authoritative = false;
        }
        metadata.response_code = answer.code;

        let response_edns = request.edns.as_ref().map(|edns| {
            let mut ours = Edns::new();
            ours.set_max_payload(edns.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            ours
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = &response_edns {
            builder.edns(edns);
        }
        let response = builder.build(
            metadata,
            answer.answers.iter(),
            answer.authorities.iter(),
            std::iter::empty(),
            answer.additionals.iter(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!("DNS: sending an answer to {}: {e}", request.src());
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests;
