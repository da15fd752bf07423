//! What a query name under the DNS domain asks for: parsing only, no I/O.
//!
//! Names are compared case-insensitively; the trailing dot is optional. Forms (with the
//! domain `consul.`):
//! - `<service>.service[.<dc>].consul`, `<tag>.<service>.service[.<dc>].consul`
//! - RFC 2782: `_<service>._<tag>.service[.<dc>].consul` (`_tcp`: any tag)
//! - `<node>.node[.<dc>].consul`
//! - `<hex address>.addr[.<dc>].consul` (the targets of SRV answers whose service has an
//!   address of its own): 8 hex digits for IPv4, 32 for IPv6
//! - `consul.` itself, the apex

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The longest label DNS allows.
const MAX_LABEL: usize = 63;

/// A name under the domain, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryName {
    /// The domain itself.
    Apex,
    /// Passing instances of a service, optionally only those with a tag.
    Service {
        /// The datacenter named in the query, if any.
        dc: Option<String>,
        /// The service name (lower case).
        service: String,
        /// The tag the instances must carry (lower case).
        tag: Option<String>,
    },
    /// A node's address.
    Node {
        /// The datacenter named in the query, if any.
        dc: Option<String>,
        /// The node name (lower case).
        node: String,
    },
    /// An address spelled in hex.
    Addr {
        /// The datacenter named in the query, if any (not checked).
        dc: Option<String>,
        /// The address.
        ip: IpAddr,
    },
}

/// Why a name is not one we answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    /// The name is not under our domain (answered REFUSED).
    OutsideDomain,
    /// Under our domain but none of the forms above (answered NXDOMAIN).
    Invalid,
}

impl QueryName {
    /// Parses the labels of a query name (in order, without the root) against the
    /// labels of the domain (lower case). Labels are raw bytes, as they come off the wire.
    pub fn parse<L: AsRef<[u8]>>(labels: &[L], domain: &[String]) -> Result<QueryName, NameError> {
        if labels.len() < domain.len() {
            return Err(NameError::OutsideDomain);
        }
        let (prefix, suffix) = labels.split_at(labels.len() - domain.len());
        let under_domain = suffix
            .iter()
            .zip(domain)
            .all(|(label, ours)| label.as_ref().eq_ignore_ascii_case(ours.as_bytes()));
        if !under_domain {
            return Err(NameError::OutsideDomain);
        }
        let prefix: Vec<String> = prefix
            .iter()
            .map(|label| label_text(label.as_ref()))
            .collect::<Option<_>>()
            .ok_or(NameError::Invalid)?;
        parse_prefix(&prefix)
    }

    /// Parses a name written as text (`web.service.consul.`) against a domain written
    /// the same way (`consul.`).
    pub fn parse_text(name: &str, domain: &str) -> Result<QueryName, NameError> {
        let labels = text_labels(name);
        let domain: Vec<String> = text_labels(domain)
            .iter()
            .map(|label| label.to_ascii_lowercase())
            .collect();
        QueryName::parse(&labels, &domain)
    }
}

/// The labels of a dotted name, without the empty root label.
pub(crate) fn text_labels(name: &str) -> Vec<&str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Vec::new();
    }
    name.split('.').collect()
}

/// A label as lower-case text, if it is one we accept: 1–63 letters, digits, `-`, `_`.
fn label_text(label: &[u8]) -> Option<String> {
    let valid = !label.is_empty()
        && label.len() <= MAX_LABEL
        && label
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_');
    valid.then(|| String::from_utf8_lossy(label).to_ascii_lowercase())
}

/// Parses what comes before the domain.
fn parse_prefix(labels: &[String]) -> Result<QueryName, NameError> {
    if labels.is_empty() {
        return Ok(QueryName::Apex);
    }
    // The kind is the last label, or the one before it when a datacenter follows.
    let n = labels.len();
    let (kind_at, dc) = if is_kind(&labels[n - 1]) {
        (n - 1, None)
    } else if n >= 2 && is_kind(&labels[n - 2]) {
        (n - 2, Some(labels[n - 1].clone()))
    } else {
        return Err(NameError::Invalid);
    };
    let before = &labels[..kind_at];
    match labels[kind_at].as_str() {
        "service" => parse_service(before, dc),
        "node" => match before {
            [node] => Ok(QueryName::Node {
                dc,
                node: node.clone(),
            }),
            _ => Err(NameError::Invalid),
        },
        "addr" => match before {
            [hex] => parse_hex_ip(hex)
                .map(|ip| QueryName::Addr { dc, ip })
                .ok_or(NameError::Invalid),
            _ => Err(NameError::Invalid),
        },
        _ => Err(NameError::Invalid),
    }
}

fn is_kind(label: &str) -> bool {
    matches!(label, "service" | "node" | "addr")
}

fn parse_service(before: &[String], dc: Option<String>) -> Result<QueryName, NameError> {
    let (service, tag) = match before {
        [service] => (service.clone(), None),
        [first, second] => match (first.strip_prefix('_'), second.strip_prefix('_')) {
            // RFC 2782: _service._proto, where the "protocol" is the tag (`tcp`: any).
            (Some(service), Some(tag)) => {
                let tag = (tag != "tcp").then(|| tag.to_string());
                (service.to_string(), tag)
            }
            _ => (second.clone(), Some(first.clone())),
        },
        _ => return Err(NameError::Invalid),
    };
    if service.is_empty() || tag.as_ref().is_some_and(|t| t.is_empty()) {
        return Err(NameError::Invalid);
    }
    Ok(QueryName::Service { dc, service, tag })
}

/// `7f000001` → 127.0.0.1; 32 hex digits → an IPv6 address.
fn parse_hex_ip(hex: &str) -> Option<IpAddr> {
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    match hex.len() {
        8 => u32::from_str_radix(hex, 16)
            .ok()
            .map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        32 => u128::from_str_radix(hex, 16)
            .ok()
            .map(|v| IpAddr::V6(Ipv6Addr::from(v))),
        _ => None,
    }
}

/// The hex spelling of an address, for `<hex>.addr.<dc>.<domain>` names.
pub(crate) fn hex_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{:08x}", u32::from(v4)),
        IpAddr::V6(v6) => format!("{:032x}", u128::from(v6)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(dc: Option<&str>, service: &str, tag: Option<&str>) -> QueryName {
        QueryName::Service {
            dc: dc.map(str::to_string),
            service: service.to_string(),
            tag: tag.map(str::to_string),
        }
    }

    fn node(dc: Option<&str>, name: &str) -> QueryName {
        QueryName::Node {
            dc: dc.map(str::to_string),
            node: name.to_string(),
        }
    }

    #[test]
    fn names_parse_into_what_they_ask_for() {
        let table: Vec<(&str, Result<QueryName, NameError>)> = vec![
            ("web.service.consul", Ok(service(None, "web", None))),
            ("web.service.consul.", Ok(service(None, "web", None))),
            ("WEB.Service.CONSUL.", Ok(service(None, "web", None))),
            (
                "web.service.dc2.consul",
                Ok(service(Some("dc2"), "web", None)),
            ),
            (
                "v1.web.service.consul",
                Ok(service(None, "web", Some("v1"))),
            ),
            (
                "v1.web.service.dc2.consul.",
                Ok(service(Some("dc2"), "web", Some("v1"))),
            ),
            ("_web._tcp.service.consul", Ok(service(None, "web", None))),
            (
                "_web._v1.service.consul",
                Ok(service(None, "web", Some("v1"))),
            ),
            (
                "_web._tcp.service.dc2.consul",
                Ok(service(Some("dc2"), "web", None)),
            ),
            (
                "_Web._V1.service.DC2.consul",
                Ok(service(Some("dc2"), "web", Some("v1"))),
            ),
            (
                "my-api_2.service.consul",
                Ok(service(None, "my-api_2", None)),
            ),
            ("db1.node.consul", Ok(node(None, "db1"))),
            ("DB1.node.consul.", Ok(node(None, "db1"))),
            ("db1.node.dc2.consul", Ok(node(Some("dc2"), "db1"))),
            (
                "7f000001.addr.dc1.consul",
                Ok(QueryName::Addr {
                    dc: Some("dc1".to_string()),
                    ip: "127.0.0.1".parse().unwrap(),
                }),
            ),
            (
                "fd000000000000000000000000000001.addr.consul",
                Ok(QueryName::Addr {
                    dc: None,
                    ip: "fd00::1".parse().unwrap(),
                }),
            ),
            ("consul", Ok(QueryName::Apex)),
            ("consul.", Ok(QueryName::Apex)),
            // Under the domain but not a form we know.
            ("service.consul", Err(NameError::Invalid)),
            ("node.consul", Err(NameError::Invalid)),
            ("web.consul", Err(NameError::Invalid)),
            ("web.dc1.consul", Err(NameError::Invalid)),
            ("a.b.web.service.consul", Err(NameError::Invalid)),
            ("a.db1.node.consul", Err(NameError::Invalid)),
            ("web.service.dc1.extra.consul", Err(NameError::Invalid)),
            ("_._tcp.service.consul", Err(NameError::Invalid)),
            ("_web._.service.consul", Err(NameError::Invalid)),
            ("we b.service.consul", Err(NameError::Invalid)),
            ("web..service.consul", Err(NameError::Invalid)),
            ("xyz.addr.consul", Err(NameError::Invalid)),
            ("7f0000.addr.consul", Err(NameError::Invalid)),
            // Outside the domain.
            ("web.service.example.com", Err(NameError::OutsideDomain)),
            ("example.com.", Err(NameError::OutsideDomain)),
            ("consul.com", Err(NameError::OutsideDomain)),
            (".", Err(NameError::OutsideDomain)),
            ("", Err(NameError::OutsideDomain)),
        ];
        for (name, expected) in table {
            assert_eq!(
                QueryName::parse_text(name, "consul."),
                expected,
                "parsing {name:?}"
            );
        }
    }

    #[test]
    fn a_longer_domain_is_matched_whole() {
        assert_eq!(
            QueryName::parse_text("web.service.dc1.mesh.example.", "Mesh.Example"),
            Ok(service(Some("dc1"), "web", None))
        );
        assert_eq!(
            QueryName::parse_text("web.service.example.", "mesh.example."),
            Err(NameError::OutsideDomain)
        );
    }

    #[test]
    fn labels_from_the_wire_may_be_any_bytes() {
        let domain = vec!["consul".to_string()];
        let labels: Vec<&[u8]> = vec![b"w\xffb", b"service", b"consul"];
        assert_eq!(QueryName::parse(&labels, &domain), Err(NameError::Invalid));
        let long = vec![b'a'; 64];
        let labels: Vec<&[u8]> = vec![&long, b"service", b"consul"];
        assert_eq!(QueryName::parse(&labels, &domain), Err(NameError::Invalid));
    }

    #[test]
    fn hex_addresses_round_trip() {
        for ip in ["10.1.2.3", "0.0.0.1", "2001:db8::42", "::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(parse_hex_ip(&hex_ip(ip)), Some(ip));
        }
    }
}
