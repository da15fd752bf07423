//! Certificate creation, loading and identity parsing.

// Setup helpers outside #[test] functions panic on failure too.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use agent::tls::{
    self, CA_CERT_FILE, CA_DAYS, CA_KEY_FILE, CaFiles, CertRequest, PeerIdentity, Role, TlsError,
    TlsMaterial,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn first_cert(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).unwrap()
}

/// A temporary directory holding a new CA.
fn with_ca() -> (tempfile::TempDir, CaFiles) {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tls::create_ca(tmp.path(), CA_DAYS).unwrap();
    (tmp, ca)
}

fn identity(role: Role, dc: &str, node: &str) -> PeerIdentity {
    PeerIdentity {
        role,
        dc: dc.into(),
        node: node.into(),
    }
}

/// Certificate parameters with the SANs `sans` and the subject CN `node1`.
fn node1_params(sans: Vec<String>) -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::new(sans).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "node1");
    params
}

#[test]
fn create_ca_and_certs_write_pem_files_with_private_keys_0600() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let ca = tls::create_ca(&dir, CA_DAYS).unwrap();
    assert_eq!(ca.cert, dir.join(CA_CERT_FILE));
    assert_eq!(ca.key, dir.join(CA_KEY_FILE));

    let server = tls::create_cert(
        &dir,
        &CertRequest::new(Role::Server, "dc1", "node1", "node1"),
    )
    .unwrap();
    let client =
        tls::create_cert(&dir, &CertRequest::new(Role::Client, "dc1", "web-7", "web")).unwrap();
    assert_eq!(server.cert, dir.join("node1.pem"));
    assert_eq!(server.key, dir.join("node1-key.pem"));
    assert_eq!(client.cert, dir.join("web.pem"));
    assert_eq!(client.key, dir.join("web-key.pem"));

    for key in [&ca.key, &server.key, &client.key] {
        assert_eq!(mode(key), 0o600, "{}", key.display());
        assert!(fs::read_to_string(key).unwrap().contains("PRIVATE KEY"));
    }
    for cert in [&ca.cert, &server.cert, &client.cert] {
        assert_eq!(mode(cert), 0o644, "{}", cert.display());
        assert!(
            fs::read_to_string(cert)
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
    }

    let ca_der = first_cert(&ca.cert);
    let (_, parsed) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    assert!(parsed.is_ca());
    let cn = parsed
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap();
    assert!(cn.starts_with("Agent mesh CA "), "{cn}");
    let days = (parsed.validity().not_after.timestamp() - parsed.validity().not_before.timestamp())
        / 86_400;
    assert!((1824..=1826).contains(&days), "CA valid for {days} days");

    let leaf_der = first_cert(&server.cert);
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(!leaf.is_ca());
}

#[test]
fn create_refuses_to_overwrite_and_writes_nothing() {
    let (tmp, ca) = with_ca();
    let dir = tmp.path();
    let ca_before = (fs::read(&ca.cert).unwrap(), fs::read(&ca.key).unwrap());

    let again = tls::create_ca(dir, CA_DAYS).unwrap_err();
    assert!(
        matches!(&again, TlsError::Exists { path } if *path == ca.cert),
        "{again}"
    );
    assert!(again.to_string().contains("agent-ca.pem"), "{again}");
    assert_eq!(
        (fs::read(&ca.cert).unwrap(), fs::read(&ca.key).unwrap()),
        ca_before
    );

    let req = CertRequest::new(Role::Server, "dc1", "node1", "node1");
    let files = tls::create_cert(dir, &req).unwrap();
    let before = (
        fs::read(&files.cert).unwrap(),
        fs::read(&files.key).unwrap(),
    );
    let again = tls::create_cert(dir, &req).unwrap_err();
    assert!(
        matches!(&again, TlsError::Exists { path } if *path == files.cert),
        "{again}"
    );
    assert_eq!(
        (
            fs::read(&files.cert).unwrap(),
            fs::read(&files.key).unwrap()
        ),
        before
    );

    // Only the key exists: the certificate must not be written either.
    fs::write(dir.join("lonely-key.pem"), b"keep me").unwrap();
    let err =
        tls::create_cert(dir, &CertRequest::new(Role::Client, "dc1", "n2", "lonely")).unwrap_err();
    assert!(
        matches!(&err, TlsError::Exists { path } if path.ends_with("lonely-key.pem")),
        "{err}"
    );
    assert!(!dir.join("lonely.pem").exists());
    assert_eq!(fs::read(dir.join("lonely-key.pem")).unwrap(), b"keep me");
}

#[test]
fn create_cert_without_ca_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let err = tls::create_cert(
        tmp.path(),
        &CertRequest::new(Role::Server, "dc1", "node1", "node1"),
    )
    .unwrap_err();
    assert!(
        matches!(&err, TlsError::CaMissing { path } if path.ends_with(CA_CERT_FILE)),
        "{err}"
    );
    assert!(
        fs::read_dir(tmp.path()).unwrap().next().is_none(),
        "nothing may be written"
    );
}

#[test]
fn create_cert_validates_its_inputs() {
    let (tmp, _ca) = with_ca();
    let bad = [
        CertRequest::new(Role::Server, "dc 1", "node1", "a"),
        CertRequest::new(Role::Server, "", "node1", "b"),
        CertRequest::new(Role::Server, "dc.1", "node1", "c"),
        CertRequest::new(Role::Server, "dc1", "", "d"),
        CertRequest::new(Role::Server, "dc1", "node 1", "e"),
        CertRequest::new(Role::Server, "dc1", "node/1", "f"),
        CertRequest::new(Role::Server, "dc1", "node1", "../escape"),
        CertRequest::new(Role::Server, "dc1", "node1", ""),
    ];
    for req in &bad {
        let err = tls::create_cert(tmp.path(), req).unwrap_err();
        assert!(
            matches!(err, TlsError::InvalidName { .. }),
            "{req:?}: {err}"
        );
    }
    let mut zero_days = CertRequest::new(Role::Server, "dc1", "node1", "g");
    zero_days.days = 0;
    assert!(matches!(
        tls::create_cert(tmp.path(), &zero_days).unwrap_err(),
        TlsError::InvalidDays { days: 0, .. }
    ));
    assert_eq!(
        fs::read_dir(tmp.path()).unwrap().count(),
        2,
        "only the CA files"
    );
}

#[test]
fn identity_is_read_from_server_and_client_certs() {
    let (tmp, ca) = with_ca();
    let dir = tmp.path();
    // A node name that is not a DNS label still works: the CN is the source of truth.
    let server = tls::create_cert(
        dir,
        &CertRequest::new(Role::Server, "eu_west-1", "db_1.prod", "s"),
    )
    .unwrap();
    let client =
        tls::create_cert(dir, &CertRequest::new(Role::Client, "dc2", "web-7", "c")).unwrap();

    let server_id = tls::identity_from_cert(&first_cert(&server.cert)).unwrap();
    assert_eq!(server_id, identity(Role::Server, "eu_west-1", "db_1.prod"));
    assert_eq!(server_id.to_string(), "server db_1.prod (eu_west-1)");
    assert!(server_id.is_server_of("eu_west-1"));
    let client_id = tls::identity_from_cert(&first_cert(&client.cert)).unwrap();
    assert_eq!(client_id, identity(Role::Client, "dc2", "web-7"));
    assert!(!client_id.is_server_of("dc2"));

    let material = TlsMaterial::load(&ca.cert, &client.cert, &client.key).unwrap();
    assert_eq!(material.identity(), &client_id);

    // The CA certificate carries no agent identity.
    let err = tls::identity_from_cert(&first_cert(&ca.cert)).unwrap_err();
    assert!(matches!(err, TlsError::Identity(_)), "{err}");
}

#[test]
fn identity_requires_exactly_one_identity_san() {
    let make = |sans: Vec<String>| {
        let key = rcgen::KeyPair::generate().unwrap();
        node1_params(sans).self_signed(&key).unwrap().der().clone()
    };
    assert!(tls::identity_from_cert(&make(vec!["server.dc1.agent".into()])).is_ok());
    for sans in [
        vec!["example.com".to_owned()],
        vec!["server.dc1.agent".into(), "client.dc1.agent".into()],
        vec!["admin.dc1.agent".into()],
        vec!["server.dc1.agent.example.com".into()],
    ] {
        let err = tls::identity_from_cert(&make(sans.clone())).unwrap_err();
        assert!(matches!(err, TlsError::Identity(_)), "{sans:?}: {err}");
    }
}

#[test]
fn load_rejects_a_cert_from_another_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let (ours, theirs) = (tmp.path().join("ours"), tmp.path().join("theirs"));
    let ca = tls::create_ca(&ours, CA_DAYS).unwrap();
    tls::create_ca(&theirs, CA_DAYS).unwrap();
    let foreign = tls::create_cert(
        &theirs,
        &CertRequest::new(Role::Server, "dc1", "node1", "node1"),
    )
    .unwrap();

    let err = TlsMaterial::load(&ca.cert, &foreign.cert, &foreign.key).unwrap_err();
    assert!(matches!(err, TlsError::NotSignedByCa { .. }), "{err}");
    assert!(err.to_string().contains("not signed by this CA"), "{err}");
}

#[test]
fn load_rejects_a_cert_without_an_identity_san() {
    let (tmp, ca) = with_ca();
    let dir = tmp.path();
    let ca_key = rcgen::KeyPair::from_pem(&fs::read_to_string(&ca.key).unwrap()).unwrap();
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&fs::read_to_string(&ca.cert).unwrap(), ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = node1_params(vec!["node1.example.com".to_owned()]);
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &issuer).unwrap();
    let (cert_file, key_file) = (dir.join("plain.pem"), dir.join("plain-key.pem"));
    fs::write(&cert_file, cert.pem()).unwrap();
    fs::write(&key_file, key.serialize_pem()).unwrap();

    let err = TlsMaterial::load(&ca.cert, &cert_file, &key_file).unwrap_err();
    assert!(matches!(err, TlsError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("server.<dc>.agent"), "{err}");
}

#[test]
fn load_rejects_a_key_that_does_not_match_the_cert() {
    let (tmp, ca) = with_ca();
    let dir = tmp.path();
    let a = tls::create_cert(dir, &CertRequest::new(Role::Server, "dc1", "a", "a")).unwrap();
    let b = tls::create_cert(dir, &CertRequest::new(Role::Server, "dc1", "b", "b")).unwrap();

    let err = TlsMaterial::load(&ca.cert, &a.cert, &b.key).unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    assert!(TlsMaterial::load(&ca.cert, &a.cert, &a.key).is_ok());
}

#[test]
fn load_reports_missing_and_non_pem_files() {
    let (tmp, ca) = with_ca();
    let dir = tmp.path();
    let node = tls::create_cert(dir, &CertRequest::new(Role::Server, "dc1", "n", "n")).unwrap();

    let missing = dir.join("missing.pem");
    let err = TlsMaterial::load(&ca.cert, &missing, &node.key).unwrap_err();
    assert!(
        matches!(&err, TlsError::Io { path, source, .. } if *path == missing && source.kind() == std::io::ErrorKind::NotFound),
        "{err}"
    );

    let garbage = dir.join("garbage.pem");
    fs::write(&garbage, "not a certificate\n").unwrap();
    let err = TlsMaterial::load(&garbage, &node.cert, &node.key).unwrap_err();
    assert!(matches!(err, TlsError::NotPem { .. }), "{err}");
    let err = TlsMaterial::load(&ca.cert, &node.cert, &garbage).unwrap_err();
    assert!(matches!(err, TlsError::NotPem { .. }), "{err}");
}

#[test]
fn dev_material_is_a_usable_server_identity() {
    let material = tls::dev_material("dc1", "dev-node").unwrap();
    assert_eq!(
        material.identity(),
        &identity(Role::Server, "dc1", "dev-node")
    );
    material.quinn_server_config(tls::ALPN_LAN).unwrap();
    material.quinn_client_config(tls::ALPN_LAN).unwrap();
    assert!(tls::dev_material("dc 1", "dev-node").is_err());
}
