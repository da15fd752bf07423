//! Mutual TLS for every QUIC connection of the mesh.
//!
//! One cluster CA signs a certificate for every agent. A certificate names its holder in
//! two places:
//! - exactly one DNS SAN `server.<dc>.agent` or `client.<dc>.agent` gives the role and the
//!   datacenter ([`Role`], [`PeerIdentity::dc`]);
//! - the subject common name gives the node name ([`PeerIdentity::node`]).
//!
//! Every agent is a QUIC server and a QUIC client at once, so every certificate carries
//! both the ServerAuth and ClientAuth extended key usages, and both ends of a connection
//! verify the other's chain against the CA and read its identity during the handshake.
//! Whether that identity may do what it asks (only servers of our datacenter take part in
//! Raft, for example) is for the caller to check against [`PeerIdentity`].
//!
//! Layout:
//! - `create`: minting the CA and node certificates (`agent tls ...`, `agent run --dev`).
//! - `verify`: the rustls verifiers that accept any identity signed by the CA.
//! - this file: identities, [`TlsMaterial`] and the rustls/quinn configurations.

mod create;
mod verify;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use x509_parser::extensions::GeneralName;

pub use create::{
    CA_CERT_FILE, CA_DAYS, CA_KEY_FILE, CaFiles, CertFiles, CertRequest, LEAF_DAYS, create_ca,
    create_cert, dev_material,
};

/// ALPN of the LAN pool (gossip and RPC between the agents of one datacenter).
pub const ALPN_LAN: &[u8] = b"agent-lan/1";
/// ALPN of the WAN pool (gossip and RPC between the servers of all datacenters).
pub const ALPN_WAN: &[u8] = b"agent-wan/1";

/// QUIC idle timeout: a connection without any packet for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// QUIC keep-alive interval, so that cached connections stay up while idle.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Received QUIC datagrams buffered per connection before the oldest are dropped.
pub const DATAGRAM_RECEIVE_BUFFER: usize = 1 << 20;
/// Bidirectional (RPC) streams a peer may have open at once on one connection.
pub const MAX_CONCURRENT_BIDI_STREAMS: u32 = 64;
/// Unidirectional streams (large datagrams) a peer may have open at once on one connection.
pub const MAX_CONCURRENT_UNI_STREAMS: u32 = 32;

/// The TLS server name sent when dialing; peers do not check it (see [`TlsMaterial`]).
pub const SERVER_NAME: &str = "agent";

const SAN_DOMAIN: &str = "agent";
const MAX_DC_LEN: usize = 63;
const MAX_NODE_LEN: usize = 128;

/// Whether an agent is a Raft server or a client of the servers: the same role that the
/// agent gossips, so a certificate and a membership entry name it with one type.
pub use membership::Role;

/// Who is at the other end of a connection, as certified by the cluster CA.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    /// From the SAN `server.<dc>.agent` or `client.<dc>.agent`.
    pub role: Role,
    /// The datacenter from the same SAN.
    pub dc: String,
    /// The subject common name.
    pub node: String,
}

impl PeerIdentity {
    /// True for a Raft server of datacenter `dc`.
    pub fn is_server_of(&self, dc: &str) -> bool {
        self.role == Role::Server && self.dc == dc
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ({})", self.role, self.node, self.dc)
    }
}

/// Errors of certificate creation, loading and TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A datacenter name, node name or output name that cannot go into a certificate.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        /// What the value names ("datacenter", "node name", "output name").
        what: &'static str,
        /// The rejected value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A validity period out of range.
    #[error("invalid validity of {days} days: must be between 1 and {max}")]
    InvalidDays {
        /// The rejected number of days.
        days: u32,
        /// The largest accepted number of days.
        max: u32,
    },
    /// An output file exists already; nothing was written.
    #[error("{} already exists; refusing to overwrite it (nothing was written)", path.display())]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// The CA files needed to sign a certificate are missing.
    #[error("CA file {} not found; create the CA first with `agent tls ca create`", path.display())]
    CaMissing {
        /// The missing file.
        path: PathBuf,
    },
    /// Reading or writing a file failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// "read", "write", "create directory" ...
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A file does not hold what it should.
    #[error("{} does not contain a PEM {expected}", path.display())]
    NotPem {
        /// The file.
        path: PathBuf,
        /// What was expected ("certificate", "private key").
        expected: &'static str,
    },
    /// A file holds something unusable.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// The private key is not the key of the certificate.
    #[error("private key {} does not match certificate {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The certificate does not chain to the CA (or is expired, or lacks a usage).
    #[error("certificate {} is not valid under CA {}: {reason}", cert.display(), ca.display())]
    NotSignedByCa {
        /// The certificate file.
        cert: PathBuf,
        /// The CA file.
        ca: PathBuf,
        /// The verifier's reason.
        reason: String,
    },
    /// A certificate lacks a well-formed agent identity.
    #[error("certificate carries no valid agent identity: {0}")]
    Identity(String),
    /// A certificate of the wrong role for the pool (the WAN pool takes servers only).
    #[error("a {expected} certificate is required here, this one is a {found} certificate")]
    WrongRole {
        /// The role the pool requires.
        expected: Role,
        /// The certificate's role.
        found: Role,
    },
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("TLS client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// quinn refused the rustls configuration.
    #[error("QUIC TLS configuration failed: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}

/// Checks a datacenter name: 1 to 63 characters of `[A-Za-z0-9_-]`.
pub fn validate_dc(dc: &str) -> Result<(), TlsError> {
    validate_name(dc, MAX_DC_LEN, |c| {
        c.is_ascii_alphanumeric() || c == '_' || c == '-'
    })
    .map_err(|reason| TlsError::InvalidName {
        what: "datacenter",
        value: dc.to_owned(),
        reason,
    })
}

/// Checks a node name: 1 to 128 characters of `[A-Za-z0-9._-]`.
pub fn validate_node(node: &str) -> Result<(), TlsError> {
    validate_name(node, MAX_NODE_LEN, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
    })
    .map_err(|reason| TlsError::InvalidName {
        what: "node name",
        value: node.to_owned(),
        reason,
    })
}

fn validate_name(
    value: &str,
    max: usize,
    allowed: impl Fn(char) -> bool,
) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("must not be empty");
    }
    if value.len() > max {
        return Err("too long");
    }
    if value.chars().any(char::is_whitespace) {
        return Err("must not contain whitespace");
    }
    if !value.chars().all(allowed) {
        return Err("contains a character outside the allowed set");
    }
    Ok(())
}

/// The SAN that carries the role and datacenter, e.g. `server.dc1.agent`.
pub(crate) fn identity_san(role: Role, dc: &str) -> String {
    format!("{}.{dc}.{SAN_DOMAIN}", role.as_str())
}

/// Parses `server.<dc>.agent` / `client.<dc>.agent`; `None` for any other name.
fn parse_identity_san(name: &str) -> Option<(Role, &str)> {
    let rest = name.strip_suffix(SAN_DOMAIN)?.strip_suffix('.')?;
    let (role, dc) = rest.split_once('.')?;
    let role = match role {
        "server" => Role::Server,
        "client" => Role::Client,
        _ => return None,
    };
    validate_dc(dc).ok()?;
    Some((role, dc))
}

/// Reads the agent identity of a certificate: role and datacenter from its one
/// `server.<dc>.agent` / `client.<dc>.agent` SAN, node name from its subject CN.
///
/// This does not verify the certificate; the handshake (or [`TlsMaterial::load`]) does.
pub fn identity_from_cert(der: &CertificateDer<'_>) -> Result<PeerIdentity, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TlsError::Identity(format!("not an X.509 certificate: {e}")))?;
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::Identity(format!("unreadable subject alternative names: {e}")))?;
    let mut found: Option<(Role, &str)> = None;
    for name in sans.iter().flat_map(|ext| ext.value.general_names.iter()) {
        let GeneralName::DNSName(dns) = name else {
            continue;
        };
        if let Some(parsed) = parse_identity_san(dns) {
            if found.is_some() {
                return Err(TlsError::Identity(
                    "more than one server.<dc>.agent / client.<dc>.agent SAN".into(),
                ));
            }
            found = Some(parsed);
        }
    }
    let (role, dc) = found.ok_or_else(|| {
        TlsError::Identity("no server.<dc>.agent or client.<dc>.agent SAN".into())
    })?;
    let mut common_names = cert.subject().iter_common_name();
    let node = common_names
        .next()
        .ok_or_else(|| TlsError::Identity("no subject common name (node name)".into()))?
        .as_str()
        .map_err(|e| TlsError::Identity(format!("unreadable subject common name: {e}")))?;
    if common_names.next().is_some() {
        return Err(TlsError::Identity(
            "more than one subject common name".into(),
        ));
    }
    validate_node(node).map_err(|e| TlsError::Identity(e.to_string()))?;
    Ok(PeerIdentity {
        role,
        dc: dc.to_owned(),
        node: node.to_owned(),
    })
}

/// The crypto provider of every configuration: ring, and nothing process-global.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The CA roots, this agent's certificate chain and key, and the identity they certify.
///
/// Peers are verified against the CA only; no host name is checked, since a dialer does
/// not know the node name of the agent at an address. The identity of the peer (role,
/// datacenter, node) is read from its certificate after the handshake, and it is up to
/// the caller to check that it fits the purpose.
pub struct TlsMaterial {
    roots: Arc<RootCertStore>,
    ca_certs: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    identity: PeerIdentity,
}

impl Clone for TlsMaterial {
    fn clone(&self) -> Self {
        Self {
            roots: self.roots.clone(),
            ca_certs: self.ca_certs.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            identity: self.identity.clone(),
        }
    }
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("identity", &self.identity)
            .field("ca_certs", &self.ca_certs.len())
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// Where the parts of a [`TlsMaterial`] came from, for error messages.
pub(crate) struct Sources<'a> {
    pub(crate) ca: &'a Path,
    pub(crate) cert: &'a Path,
    pub(crate) key: &'a Path,
}

impl TlsMaterial {
    /// Loads and checks the CA certificate(s), this agent's certificate (chain) and key.
    ///
    /// Fails with a clear error when a file is missing or not PEM, when the key is not the
    /// certificate's, when the certificate is not valid under the CA (or expired), or when
    /// it lacks an agent identity. Every certificate in `ca_file` is trusted, which allows
    /// rolling to a new CA.
    pub fn load(ca_file: &Path, cert_file: &Path, key_file: &Path) -> Result<Self, TlsError> {
        let ca_certs = read_certs(ca_file)?;
        let chain = read_certs(cert_file)?;
        let key_pem = read_file(key_file)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| pem_error(key_file, "private key", e))?;
        Self::from_parts(
            ca_certs,
            chain,
            key,
            &Sources {
                ca: ca_file,
                cert: cert_file,
                key: key_file,
            },
        )
    }

    pub(crate) fn from_parts(
        ca_certs: Vec<CertificateDer<'static>>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        sources: &Sources<'_>,
    ) -> Result<Self, TlsError> {
        let provider = provider();
        let mut roots = RootCertStore::empty();
        for ca in &ca_certs {
            roots.add(ca.clone()).map_err(|e| TlsError::Invalid {
                path: sources.ca.to_owned(),
                reason: format!("not a usable CA certificate: {e}"),
            })?;
        }
        let Some(end_entity) = chain.first() else {
            return Err(TlsError::NotPem {
                path: sources.cert.to_owned(),
                expected: "certificate",
            });
        };
        match rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider) {
            Ok(_) => {}
            Err(rustls::Error::InconsistentKeys(_)) => {
                return Err(TlsError::KeyMismatch {
                    cert: sources.cert.to_owned(),
                    key: sources.key.to_owned(),
                });
            }
            Err(e) => {
                return Err(TlsError::Invalid {
                    path: sources.key.to_owned(),
                    reason: format!("unusable private key: {e}"),
                });
            }
        }
        let not_valid = |reason: String| TlsError::NotSignedByCa {
            cert: sources.cert.to_owned(),
            ca: sources.ca.to_owned(),
            reason,
        };
        let parsed =
            ParsedCertificate::try_from(end_entity).map_err(|e| not_valid(e.to_string()))?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            &chain[1..],
            UnixTime::now(),
            provider.signature_verification_algorithms.all,
        )
        .map_err(|e| not_valid(describe_cert_error(&e)))?;
        check_client_usage(end_entity).map_err(not_valid)?;
        let identity = identity_from_cert(end_entity).map_err(|e| TlsError::Invalid {
            path: sources.cert.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            roots: Arc::new(roots),
            ca_certs,
            chain,
            key,
            identity,
        })
    }

    /// The identity this agent presents to its peers.
    pub fn identity(&self) -> &PeerIdentity {
        &self.identity
    }

    /// The trusted CA certificates.
    pub fn ca_certs(&self) -> &[CertificateDer<'static>] {
        &self.ca_certs
    }

    /// This agent's certificate chain, end entity first.
    pub fn cert_chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The rustls server configuration: TLS 1.3, a client certificate from the CA with
    /// an agent identity required (of a server on the WAN pool), one ALPN, no session resumption or early data.
    pub fn rustls_server_config(&self, alpn: &[u8]) -> Result<rustls::ServerConfig, TlsError> {
        let provider = provider();
        let webpki =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider.clone())
                .build()?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(verify::AgentClientVerifier::new(
                webpki,
                required_role(alpn),
            )))
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![alpn.to_vec()];
        config.max_early_data_size = 0;
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        Ok(config)
    }

    /// The rustls client configuration: TLS 1.3, the peer's chain verified against the CA
    /// and required to carry an agent identity (any node or datacenter; the server role on
    /// the WAN pool), our
    /// certificate offered for client authentication, one ALPN, no resumption.
    pub fn rustls_client_config(&self, alpn: &[u8]) -> Result<rustls::ClientConfig, TlsError> {
        let provider = provider();
        let verifier = verify::AgentServerVerifier::new(
            self.roots.clone(),
            provider.signature_verification_algorithms,
            required_role(alpn),
        );
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![alpn.to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        config.enable_early_data = false;
        Ok(config)
    }

    /// The quinn server configuration for one pool (see [`quic_transport_config`]).
    pub fn quinn_server_config(&self, alpn: &[u8]) -> Result<quinn::ServerConfig, TlsError> {
        let crypto =
            quinn::crypto::rustls::QuicServerConfig::try_from(self.rustls_server_config(alpn)?)?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(Arc::new(quic_transport_config()));
        // Peers are keyed by address; an agent does not move.
        config.migration(false);
        Ok(config)
    }

    /// The quinn client configuration for one pool (see [`quic_transport_config`]).
    pub fn quinn_client_config(&self, alpn: &[u8]) -> Result<quinn::ClientConfig, TlsError> {
        let crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(self.rustls_client_config(alpn)?)?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(quic_transport_config()));
        Ok(config)
    }
}

/// The role a peer must have in the pool named by `alpn`: the WAN pool is for servers.
fn required_role(alpn: &[u8]) -> Option<Role> {
    (alpn == ALPN_WAN).then_some(Role::Server)
}

/// The QUIC transport settings of both directions: [`IDLE_TIMEOUT`],
/// [`KEEP_ALIVE_INTERVAL`], a bounded datagram receive buffer and bounded stream counts.
pub fn quic_transport_config() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    // 15 s fits in a VarInt of milliseconds, so the conversion cannot fail.
    transport.max_idle_timeout(quinn::IdleTimeout::try_from(IDLE_TIMEOUT).ok());
    transport.keep_alive_interval(Some(KEEP_ALIVE_INTERVAL));
    transport.datagram_receive_buffer_size(Some(DATAGRAM_RECEIVE_BUFFER));
    transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(MAX_CONCURRENT_BIDI_STREAMS));
    transport.max_concurrent_uni_streams(quinn::VarInt::from_u32(MAX_CONCURRENT_UNI_STREAMS));
    transport
}

/// Certificates of the mesh must also work as TLS clients (every agent dials).
fn check_client_usage(der: &CertificateDer<'_>) -> Result<(), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    match cert.extended_key_usage() {
        Ok(Some(eku)) if eku.value.any || eku.value.client_auth => Ok(()),
        Ok(None) => Ok(()),
        Ok(Some(_)) => Err("lacks the ClientAuth extended key usage".into()),
        Err(e) => Err(format!("unreadable extended key usage: {e}")),
    }
}

fn describe_cert_error(error: &rustls::Error) -> String {
    use rustls::CertificateError as E;
    match error {
        rustls::Error::InvalidCertificate(E::UnknownIssuer) => "not signed by this CA".into(),
        rustls::Error::InvalidCertificate(E::BadSignature) => "bad signature from the CA".into(),
        rustls::Error::InvalidCertificate(E::Expired | E::ExpiredContext { .. }) => {
            "certificate expired".into()
        }
        rustls::Error::InvalidCertificate(E::NotValidYet | E::NotValidYetContext { .. }) => {
            "certificate not valid yet".into()
        }
        other => other.to_string(),
    }
}

pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })
}

fn pem_error(
    path: &Path,
    expected: &'static str,
    error: rustls::pki_types::pem::Error,
) -> TlsError {
    match error {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NotPem {
            path: path.to_owned(),
            expected,
        },
        other => TlsError::Invalid {
            path: path.to_owned(),
            reason: format!("malformed PEM {expected}: {other}"),
        },
    }
}

/// All certificates of a PEM file, in order; at least one.
pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, "certificate", e))?;
    if certs.is_empty() {
        return Err(TlsError::NotPem {
            path: path.to_owned(),
            expected: "certificate",
        });
    }
    Ok(certs)
}
