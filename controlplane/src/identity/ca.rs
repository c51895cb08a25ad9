//! The certificate authority: who signs agent certificates, and the server
//! certificate agents verify.
//!
//! Embedded mode generates the CA on first start (`ca.pem`, `ca.key` with
//! mode 0600 in the data directory); a supplied CA (e.g. cert-manager)
//! comes from `--ca-cert-file`/`--ca-key-file`. The server certificate is
//! generated at every start for the configured names, or supplied.
//!
//! An agent's certificate takes nothing from its CSR but the public key:
//! subject, names, usages, validity and serial are all chosen here (a CSR
//! asking for `CA:TRUE` or a server name gets neither; research notes §4).

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    string::Ia5String,
};
use rustls_pki_types::{
    CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, pem::PemObject,
};
use tether::tls::Pin;
use time::OffsetDateTime;

use super::secrets;

/// Lifetime of a generated CA.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Lifetime of a generated server certificate (regenerated at each start).
const SERVER_LIFETIME: Duration = Duration::from_secs(90 * 86_400);
/// Certificates start this long in the past, for clocks that run behind.
const BACKDATE: Duration = Duration::from_secs(5 * 60);
/// Largest CSR accepted, bytes.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// What can go wrong with the CA or a certificate.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What the file is.
        what: &'static str,
        /// Which file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// A certificate or key could not be parsed.
    #[error("cannot use {what} {}: {detail}", path.display())]
    Parse {
        /// What the file is.
        what: &'static str,
        /// Which file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// rcgen failed to build a certificate.
    #[error("cannot build a certificate: {0}")]
    Build(#[from] rcgen::Error),
}

/// Why a CSR was refused.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    /// Too large to be a CSR for one key.
    #[error(
        "the CSR is {0} bytes, more than the {MAX_CSR_BYTES} a key needs; send a CSR that names only the key"
    )]
    TooLarge(usize),
    /// Not a parsable, correctly self-signed CSR with supported extensions.
    #[error(
        "the CSR is not valid: {0}; send a PKCS#10 CSR, DER, signed by the new key, without extensions"
    )]
    Invalid(String),
    /// Signing failed.
    #[error("cannot sign the certificate: {0}")]
    Sign(#[from] rcgen::Error),
}

/// A certificate signed for an agent.
#[derive(Clone, Debug)]
pub struct AgentCertificate {
    /// The certificate, PEM.
    pub pem: String,
    /// The serial, hex.
    pub serial: String,
    /// Expiry, Unix milliseconds.
    pub not_after_ms: i64,
}

/// The CA, and the server identity it vouches for.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM (what agents and clients trust).
    pub ca_pem: String,
    /// The CA certificate, DER.
    pub ca_der: CertificateDer<'static>,
    /// SHA-256 of the CA's public key: the pin in join tokens.
    pub pin: Pin,
    /// The server's chain, leaf first, CA last (agents find the pinned CA
    /// in it).
    pub server_chain: Vec<CertificateDer<'static>>,
    /// The server's key.
    pub server_key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("pin", &self.pin)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path, what: &'static str) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|source| CaError::Io {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Writes a file readable by its owner only, atomically (temp + rename).
pub fn write_private(path: &Path, contents: &[u8], what: &'static str) -> Result<(), CaError> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let io = |source| CaError::Io {
        what,
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(contents).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn offset(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

fn serial() -> SerialNumber {
    // 16 random bytes with the top bit clear: positive, ≥ 64 bits of entropy.
    let mut b = secrets::random_bytes::<16>();
    b[0] &= 0x7f;
    SerialNumber::from_slice(&b)
}

impl Authority {
    /// Loads the supplied CA, or the embedded one from `data_dir` (creating
    /// it on first start), then builds or loads the server identity.
    pub fn load(
        data_dir: &Path,
        ca_files: Option<&(PathBuf, PathBuf)>,
        tls_files: Option<&(PathBuf, PathBuf)>,
        tls_names: &[String],
    ) -> Result<Self, CaError> {
        let (ca_cert_path, ca_key_path) = match ca_files {
            Some((c, k)) => (c.clone(), k.clone()),
            None => {
                let c = data_dir.join("ca.pem");
                let k = data_dir.join("ca.key");
                if !c.exists() {
                    generate_ca(&c, &k)?;
                }
                (c, k)
            }
        };
        let ca_pem = read(&ca_cert_path, "CA certificate")?;
        let parse = |what, detail: String| CaError::Parse {
            what,
            path: ca_cert_path.clone(),
            detail,
        };
        let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(|e| parse("CA certificate", e.to_string()))?;
        let key_pem = read(&ca_key_path, "CA key")?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CaError::Parse {
            what: "CA key",
            path: ca_key_path.clone(),
            detail: e.to_string(),
        })?;
        let pin =
            Pin::of_certificate(&ca_der).map_err(|e| parse("CA certificate", e.to_string()))?;
        let issuer = Issuer::from_ca_cert_der(&ca_der, key)
            .map_err(|e| parse("CA certificate", e.to_string()))?;
        let (server_chain, server_key) = match tls_files {
            Some((cert, key)) => load_server(cert, key, &ca_der)?,
            None => generate_server(&issuer, &ca_der, tls_names)?,
        };
        Ok(Self {
            issuer,
            ca_pem,
            ca_der,
            pin,
            server_chain,
            server_key,
        })
    }

    /// Signs a client certificate for an agent from its CSR. Only the
    /// public key is taken from the CSR.
    pub fn sign_agent(
        &self,
        csr_der: &[u8],
        agent_id: &str,
        org_id: &str,
        lifetime: Duration,
    ) -> Result<AgentCertificate, CsrError> {
        if csr_der.len() > MAX_CSR_BYTES {
            return Err(CsrError::TooLarge(csr_der.len()));
        }
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(|e| CsrError::Invalid(e.to_string()))?;
        let now = SystemTime::now();
        let not_after = now + lifetime;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, agent_id);
        dn.push(DnType::OrganizationName, org_id);
        params.distinguished_name = dn;
        let uri = Ia5String::try_from(format!("spiffe://tether/org/{org_id}/agent/{agent_id}"))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = offset(now - BACKDATE);
        params.not_after = offset(not_after);
        let serial = serial();
        let serial_hex = hex::encode(serial.to_bytes());
        params.serial_number = Some(serial);
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok(AgentCertificate {
            pem: cert.pem(),
            serial: serial_hex,
            not_after_ms: unix_ms(not_after),
        })
    }
}

/// The SubjectPublicKeyInfo (DER) a CSR carries, after checking its
/// signature.
pub fn csr_public_key(csr_der: &[u8]) -> Result<Vec<u8>, CsrError> {
    if csr_der.len() > MAX_CSR_BYTES {
        return Err(CsrError::TooLarge(csr_der.len()));
    }
    let csr =
        CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
            .map_err(|e| CsrError::Invalid(e.to_string()))?;
    Ok(rcgen::PublicKeyData::subject_public_key_info(
        &csr.public_key,
    ))
}

/// The agent id (common name) and public key of a client certificate.
pub fn agent_of_certificate(der: &[u8]) -> Option<(String, Vec<u8>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    Some((cn, cert.tbs_certificate.subject_pki.raw.to_vec()))
}

/// Unix milliseconds of a time (0 before 1970).
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn generate_ca(cert_path: &Path, key_path: &Path) -> Result<(), CaError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("Tether CA {}", secrets::random_hex(4)),
    );
    dn.push(DnType::OrganizationName, "Tether");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = SystemTime::now();
    params.not_before = offset(now - BACKDATE);
    params.not_after = offset(now + CA_LIFETIME);
    params.serial_number = Some(serial());
    let cert = params.self_signed(&key)?;
    write_private(key_path, key.serialize_pem().as_bytes(), "CA key")?;
    std::fs::write(cert_path, cert.pem()).map_err(|source| CaError::Io {
        what: "CA certificate",
        path: cert_path.to_owned(),
        source,
    })?;
    tracing::info!(path = %cert_path.display(), "generated a new CA");
    Ok(())
}

type ServerIdentity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn generate_server(
    issuer: &Issuer<'static, KeyPair>,
    ca_der: &CertificateDer<'static>,
    names: &[String],
) -> Result<ServerIdentity, CaError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.first().map_or("tether", String::as_str),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = SystemTime::now();
    params.not_before = offset(now - BACKDATE);
    params.not_after = offset(now + SERVER_LIFETIME);
    params.serial_number = Some(serial());
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, issuer)?;
    let key_der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    Ok((vec![cert.der().clone(), ca_der.clone()], key_der))
}

fn load_server(
    cert_path: &Path,
    key_path: &Path,
    ca_der: &CertificateDer<'static>,
) -> Result<ServerIdentity, CaError> {
    let pem = read(cert_path, "TLS certificate")?;
    let mut chain = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaError::Parse {
            what: "TLS certificate",
            path: cert_path.to_owned(),
            detail: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(CaError::Parse {
            what: "TLS certificate",
            path: cert_path.to_owned(),
            detail: "no CERTIFICATE block".into(),
        });
    }
    // Agents find the pinned CA in the chain: make sure it is there.
    if !chain.contains(ca_der) {
        chain.push(ca_der.clone());
    }
    let key_pem = read(key_path, "TLS key")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| CaError::Parse {
        what: "TLS key",
        path: key_path.to_owned(),
        detail: e.to_string(),
    })?;
    Ok((chain, key))
}

#[cfg(test)]
mod tests {
    use x509_parser::prelude::*;

    use super::*;

    fn authority() -> (tempfile::TempDir, Authority) {
        let dir = tempfile::tempdir().unwrap();
        let a = Authority::load(
            dir.path(),
            None,
            None,
            &["localhost".into(), "127.0.0.1".into()],
        )
        .unwrap();
        (dir, a)
    }

    #[test]
    fn the_embedded_ca_is_created_once_with_a_private_key_file() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, a) = authority();
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Authority::load(dir.path(), None, None, &["localhost".into()]).unwrap();
        assert_eq!(a.pin, again.pin, "the CA must survive a restart");
        assert_eq!(a.server_chain.last(), Some(&a.ca_der));
    }

    #[test]
    fn a_hostile_csr_gets_only_a_client_certificate_for_the_agent() {
        let (_dir, a) = authority();
        // The agent asks for a CA certificate with the control plane's name.
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "evil.example".to_owned()])
                .unwrap();
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let csr = params.serialize_request(&key).unwrap();
        let signed = a
            .sign_agent(csr.der(), "agent-1", "default", Duration::from_secs(3600))
            .unwrap();
        let der = CertificateDer::from_pem_slice(signed.pem.as_bytes()).unwrap();
        let (_, cert) = parse_x509_certificate(&der).unwrap();
        assert!(!cert.is_ca());
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap();
        assert_eq!(cn, "agent-1");
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let names: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|n| format!("{n:?}"))
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(
            names[0].contains("spiffe://tether/org/default/agent/agent-1"),
            "{names:?}"
        );
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert_eq!(
            cert.public_key().raw,
            rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
        );
        assert!(signed.not_after_ms > unix_ms(SystemTime::now()));
    }

    #[test]
    fn serials_differ_for_the_same_key() {
        let (_dir, a) = authority();
        let key = KeyPair::generate().unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .unwrap();
        let one = a
            .sign_agent(csr.der(), "a", "o", Duration::from_secs(60))
            .unwrap();
        let two = a
            .sign_agent(csr.der(), "a", "o", Duration::from_secs(60))
            .unwrap();
        assert_ne!(one.serial, two.serial);
    }

    #[test]
    fn garbage_and_oversize_csrs_are_refused_with_the_fix() {
        let (_dir, a) = authority();
        let err = a
            .sign_agent(b"garbage", "a", "o", Duration::from_secs(60))
            .unwrap_err();
        assert!(err.to_string().contains("send a PKCS#10 CSR"), "{err}");
        let err = a
            .sign_agent(
                &vec![0u8; MAX_CSR_BYTES + 1],
                "a",
                "o",
                Duration::from_secs(60),
            )
            .unwrap_err();
        assert!(matches!(err, CsrError::TooLarge(_)));
    }
}
