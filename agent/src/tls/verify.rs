//! Certificate verifiers: a chain from the cluster CA plus a well-formed agent identity.
//!
//! Neither side checks a host name. The dialer does not know which node answers at an
//! address, and every agent (server or client role) accepts connections, so a name
//! check cannot express the policy. Instead both verifiers require the identity SAN
//! (`server.<dc>.agent` / `client.<dc>.agent`) and a node CN, and the transport hands the
//! parsed [`PeerIdentity`](super::PeerIdentity) to the code that decides what the peer
//! may do. The WAN pool is for servers only: there both verifiers also require the
//! server role, so a client certificate cannot even finish a handshake on it.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    SignatureScheme,
};

use super::{Role, TlsError, identity_from_cert};

/// Rejects a certificate whose agent identity is missing or malformed, or not of `role`
/// when one is required.
fn require_identity(
    end_entity: &CertificateDer<'_>,
    role: Option<Role>,
) -> Result<(), rustls::Error> {
    let refuse = |e: TlsError| {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
    };
    let identity = identity_from_cert(end_entity).map_err(refuse)?;
    match role {
        Some(role) if identity.role != role => Err(refuse(TlsError::WrongRole {
            expected: role,
            found: identity.role,
        })),
        _ => Ok(()),
    }
}

/// Verifies the certificate of the agent we dial: chain to the CA roots (with the
/// ServerAuth usage, validity dates), then an agent identity. The server name is ignored.
#[derive(Debug)]
pub(crate) struct AgentServerVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
    role: Option<Role>,
}

impl AgentServerVerifier {
    /// Verifies the chain and the identity, and the `role` when one is given.
    pub(crate) fn new(
        roots: Arc<RootCertStore>,
        algorithms: WebPkiSupportedAlgorithms,
        role: Option<Role>,
    ) -> Self {
        Self {
            roots,
            algorithms,
            role,
        }
    }
}

impl ServerCertVerifier for AgentServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        require_identity(end_entity, self.role)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Verifies the certificate of an agent that dials us: rustls's webpki client verifier
/// (chain to the CA, ClientAuth usage, a certificate is mandatory), then an agent identity.
#[derive(Debug)]
pub(crate) struct AgentClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    role: Option<Role>,
}

impl AgentClientVerifier {
    /// Verifies with `inner` (the chain), then the identity, and the `role` when one is
    /// given.
    pub(crate) fn new(inner: Arc<dyn ClientCertVerifier>, role: Option<Role>) -> Self {
        Self { inner, role }
    }
}

impl ClientCertVerifier for AgentClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        require_identity(end_entity, self.role)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
