//! Minting the cluster CA and node certificates (ECDSA P-256).
//!
//! Files are created, never replaced: every target is checked before anything is
//! written, each is opened with `create_new`, and a failure half-way removes what this
//! call created. Private keys are written with mode 0600.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

use super::{
    Role, Sources, TlsError, TlsMaterial, identity_san, read_certs, read_file, validate_dc,
    validate_node,
};

/// Default validity of the CA: five years.
pub const CA_DAYS: u32 = 1825;
/// Default validity of a node certificate: one year.
pub const LEAF_DAYS: u32 = 365;
/// File name of the CA certificate in the CA directory.
pub const CA_CERT_FILE: &str = "agent-ca.pem";
/// File name of the CA private key in the CA directory.
pub const CA_KEY_FILE: &str = "agent-ca-key.pem";

/// Longest validity accepted, in days (100 years).
const MAX_DAYS: u32 = 36_500;
/// Certificates start slightly in the past, to tolerate clock skew between hosts.
const BACKDATE: Duration = Duration::minutes(5);
const PRIVATE_MODE: u32 = 0o600;
const PUBLIC_MODE: u32 = 0o644;

/// The files written by [`create_ca`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaFiles {
    /// `agent-ca.pem`
    pub cert: PathBuf,
    /// `agent-ca-key.pem` (mode 0600)
    pub key: PathBuf,
}

/// The files written by [`create_cert`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    /// `<out>.pem`
    pub cert: PathBuf,
    /// `<out>-key.pem` (mode 0600)
    pub key: PathBuf,
}

/// What [`create_cert`] should issue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertRequest {
    /// Server or client certificate.
    pub role: Role,
    /// Datacenter: `[A-Za-z0-9_-]`, at most 63 characters.
    pub dc: String,
    /// Node name, the subject CN: `[A-Za-z0-9._-]`, at most 128 characters.
    pub node: String,
    /// Output base name: writes `<out>.pem` and `<out>-key.pem`; no path separators.
    pub out: String,
    /// Validity in days.
    pub days: u32,
}

impl CertRequest {
    /// A request with the default validity ([`LEAF_DAYS`]).
    pub fn new(
        role: Role,
        dc: impl Into<String>,
        node: impl Into<String>,
        out: impl Into<String>,
    ) -> Self {
        Self {
            role,
            dc: dc.into(),
            node: node.into(),
            out: out.into(),
            days: LEAF_DAYS,
        }
    }
}

/// Creates a new cluster CA in `dir` (created if missing): `agent-ca.pem` and
/// `agent-ca-key.pem`, valid for `days` days. Refuses if either file exists.
pub fn create_ca(dir: &Path, days: u32) -> Result<CaFiles, TlsError> {
    validate_days(days)?;
    let files = CaFiles {
        cert: dir.join(CA_CERT_FILE),
        key: dir.join(CA_KEY_FILE),
    };
    refuse_existing(&[&files.cert, &files.key])?;
    let key = new_key()?;
    let cert = ca_params(days)?.self_signed(&key)?;
    create_dir(dir)?;
    write_cert_and_key(&files.cert, &cert, &files.key, &key)?;
    Ok(files)
}

/// Issues a node certificate signed by the CA in `dir`: writes `<out>.pem` and
/// `<out>-key.pem` there. Refuses if either file exists or the CA is missing.
///
/// SANs: `server.<dc>.agent`, `localhost` and `127.0.0.1` for a server;
/// `client.<dc>.agent` for a client; plus `<node>.<role>.<dc>.agent` when the node name
/// is a DNS label. The subject CN is the node name. Both ServerAuth and ClientAuth.
pub fn create_cert(dir: &Path, req: &CertRequest) -> Result<CertFiles, TlsError> {
    validate_dc(&req.dc)?;
    validate_node(&req.node)?;
    validate_out(&req.out)?;
    validate_days(req.days)?;
    let files = CertFiles {
        cert: dir.join(format!("{}.pem", req.out)),
        key: dir.join(format!("{}-key.pem", req.out)),
    };
    let issuer = load_issuer(dir)?;
    refuse_existing(&[&files.cert, &files.key])?;
    let key = new_key()?;
    let cert = leaf_params(req.role, &req.dc, &req.node, req.days)?.signed_by(&key, &issuer)?;
    write_cert_and_key(&files.cert, &cert, &files.key, &key)?;
    Ok(files)
}

/// A throw-away CA and a server certificate for `node` in `dc`, made in memory
/// (`agent run --dev`). Nothing else can join an agent that uses it.
pub fn dev_material(dc: &str, node: &str) -> Result<TlsMaterial, TlsError> {
    validate_dc(dc)?;
    validate_node(node)?;
    let ca_key = new_key()?;
    let ca_params = ca_params(CA_DAYS)?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = new_key()?;
    let cert = leaf_params(Role::Server, dc, node, LEAF_DAYS)?.signed_by(&key, &issuer)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let memory = Path::new("<dev certificate in memory>");
    TlsMaterial::from_parts(
        vec![ca_cert.der().clone()],
        vec![cert.der().clone()],
        key,
        &Sources {
            ca: memory,
            cert: memory,
            key: memory,
        },
    )
}

fn validate_days(days: u32) -> Result<(), TlsError> {
    if days == 0 || days > MAX_DAYS {
        return Err(TlsError::InvalidDays {
            days,
            max: MAX_DAYS,
        });
    }
    Ok(())
}

fn validate_out(out: &str) -> Result<(), TlsError> {
    let invalid = |reason| TlsError::InvalidName {
        what: "output name",
        value: out.to_owned(),
        reason,
    };
    if out.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if out.contains(['/', '\\', '\0']) {
        return Err(invalid("must be a plain file name without path separators"));
    }
    if out == "." || out == ".." {
        return Err(invalid("must be a plain file name"));
    }
    Ok(())
}

fn validity(days: u32) -> Result<(OffsetDateTime, OffsetDateTime), TlsError> {
    let now = OffsetDateTime::now_utc();
    let not_after =
        now.checked_add(Duration::days(i64::from(days)))
            .ok_or(TlsError::InvalidDays {
                days,
                max: MAX_DAYS,
            })?;
    Ok((now - BACKDATE, not_after))
}

/// A new key pair: every key of the mesh is ECDSA P-256.
fn new_key() -> Result<KeyPair, TlsError> {
    Ok(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?)
}

/// Parameters with the SANs `names`, the subject CN `common_name`, valid for `days` days
/// (see [`validity`]); the caller adds what makes it a CA or a node certificate.
fn named_params(
    names: Vec<String>,
    common_name: impl Into<String>,
    days: u32,
) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(names)?;
    let (not_before, not_after) = validity(days)?;
    params.not_before = not_before;
    params.not_after = not_after;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name.into());
    params.distinguished_name = name;
    Ok(params)
}

fn ca_params(days: u32) -> Result<CertificateParams, TlsError> {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let mut params = named_params(Vec::new(), format!("Agent mesh CA {}", &suffix[..8]), days)?;
    // The CA signs node certificates only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn leaf_params(role: Role, dc: &str, node: &str, days: u32) -> Result<CertificateParams, TlsError> {
    let mut names = vec![identity_san(role, dc)];
    if is_dns_label(node) {
        names.push(format!("{node}.{}", identity_san(role, dc)));
    }
    if role == Role::Server {
        names.push("localhost".into());
        names.push("127.0.0.1".into());
    }
    let mut params = named_params(names, node, days)?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// A DNS label: letters, digits and inner hyphens, at most 63 characters.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Loads the CA certificate and key from `dir` and checks that they belong together.
fn load_issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>, TlsError> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    for path in [&cert_path, &key_path] {
        match fs::symlink_metadata(path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(TlsError::CaMissing { path: path.clone() });
            }
            Err(source) => {
                return Err(TlsError::Io {
                    action: "read",
                    path: path.clone(),
                    source,
                });
            }
        }
    }
    let ca_cert: CertificateDer<'static> = read_certs(&cert_path)?.swap_remove(0);
    let key_pem = read_file(&key_path)?;
    let key_pem = String::from_utf8(key_pem).map_err(|_| TlsError::NotPem {
        path: key_path.clone(),
        expected: "private key",
    })?;
    let key = KeyPair::from_pem(&key_pem).map_err(|e| TlsError::Invalid {
        path: key_path.clone(),
        reason: format!("unusable CA private key: {e}"),
    })?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(&ca_cert).map_err(|e| TlsError::Invalid {
            path: cert_path.clone(),
            reason: format!("not an X.509 certificate: {e}"),
        })?;
    if !parsed.is_ca() {
        return Err(TlsError::Invalid {
            path: cert_path,
            reason: "not a CA certificate".into(),
        });
    }
    if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(TlsError::KeyMismatch {
            cert: cert_path,
            key: key_path,
        });
    }
    Issuer::from_ca_cert_der(&ca_cert, key).map_err(|e| TlsError::Invalid {
        path: cert_path,
        reason: format!("unusable CA certificate: {e}"),
    })
}

fn create_dir(dir: &Path) -> Result<(), TlsError> {
    fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        action: "create directory",
        path: dir.to_owned(),
        source,
    })
}

/// Fails with [`TlsError::Exists`] naming the first path that exists (even as a
/// dangling symlink).
fn refuse_existing(paths: &[&Path]) -> Result<(), TlsError> {
    for path in paths {
        match fs::symlink_metadata(path) {
            Ok(_) => {
                return Err(TlsError::Exists {
                    path: path.to_path_buf(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(TlsError::Io {
                    action: "inspect",
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Writes a new certificate (mode 0644) and its private key (mode 0600), all or nothing.
fn write_cert_and_key(
    cert_path: &Path,
    cert: &rcgen::Certificate,
    key_path: &Path,
    key: &KeyPair,
) -> Result<(), TlsError> {
    write_new_files(&[
        (cert_path, cert.pem(), PUBLIC_MODE),
        (key_path, key.serialize_pem(), PRIVATE_MODE),
    ])
}

/// Writes each `(path, contents, mode)` to a new file; on any failure removes the files
/// this call created and returns the error.
fn write_new_files(files: &[(&Path, String, u32)]) -> Result<(), TlsError> {
    let mut created: Vec<&Path> = Vec::with_capacity(files.len());
    for (path, contents, mode) in files {
        let result = write_new_file(path, contents.as_bytes(), *mode, &mut created);
        if let Err(error) = result {
            for path in &created {
                // Best effort: the error below is what the operator needs to see.
                let _ = fs::remove_file(path);
            }
            return Err(error);
        }
    }
    Ok(())
}

fn write_new_file<'a>(
    path: &'a Path,
    contents: &[u8],
    mode: u32,
    created: &mut Vec<&'a Path>,
) -> Result<(), TlsError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| {
            if source.kind() == io::ErrorKind::AlreadyExists {
                TlsError::Exists {
                    path: path.to_owned(),
                }
            } else {
                TlsError::Io {
                    action: "create",
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
    created.push(path);
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|source| TlsError::Io {
            action: "write",
            path: path.to_owned(),
            source,
        })
}
