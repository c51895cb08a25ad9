//! The agent's identity: enrolled once with a join token, kept in the state
//! directory, reused by every later start, and renewed over the live session
//! before it expires.
//!
//! Files (the directory is 0700, keys 0600, every write atomic):
//! - `agent.json`: agent id, org, pool, the control plane, and which
//!   certificate and key files are current. Rewritten last, so a crash in
//!   the middle of a renewal leaves the previous pair in force;
//! - `key-<serial>.pem`: a private key, generated here and never sent;
//! - `cert-<serial>.pem`: the certificate the control plane signed for it;
//! - `ca.pem`: the control plane's CA, learned at enrollment through the pin
//!   in the join token.

use std::{
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use serde::{Deserialize, Serialize};
use tether::{
    client::{self, ControlPlaneAddr},
    join::JoinToken,
    proto::{EnrollRequest, RenewRequest, enrollment_client::EnrollmentClient},
    tls::{self, Identity, Pin, Trust},
};
use tonic::transport::Channel;
use tracing::info;

/// What `agent.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentInfo {
    /// The id the control plane gave this agent.
    pub agent_id: String,
    /// Its org.
    pub org_id: String,
    /// Its pool.
    pub pool: String,
    /// The control plane it enrolled with.
    pub endpoint: String,
    /// Certificate expiry, Unix milliseconds.
    pub not_after_unix_ms: i64,
    /// When this host received the certificate, Unix milliseconds. The
    /// certificate's own start is backdated for clocks that run behind, so
    /// renewal timing counts from here.
    #[serde(default)]
    pub issued_unix_ms: i64,
    /// The current certificate file.
    #[serde(default = "default_cert")]
    pub cert_file: String,
    /// The current key file.
    #[serde(default = "default_key")]
    pub key_file: String,
}

fn default_cert() -> String {
    "cert.pem".into()
}

fn default_key() -> String {
    "key.pem".into()
}

/// How the agent decides it talks to the real control plane.
#[derive(Clone, Debug, Default)]
pub struct TrustSettings {
    /// Extra CA certificates (PEM) to trust, e.g. a TLS-inspection CA.
    pub ca_file: Option<PathBuf>,
    /// Whether the CA is pinned: at enrollment to the join token's pin (or
    /// `ca_pin`), afterwards to the CA learned then. Off only to pass a
    /// TLS-inspecting proxy whose CA is in `ca_file`.
    pub pin: bool,
    /// A pin to require instead of the join token's.
    pub ca_pin: Option<Pin>,
}

impl TrustSettings {
    fn extra(&self) -> Result<Option<Trust>, IdentityError> {
        let Some(path) = &self.ca_file else {
            return Ok(None);
        };
        let pem = std::fs::read(path).map_err(io(path))?;
        Trust::ca_pem(&pem)
            .map(Some)
            .map_err(|e| IdentityError::Corrupt {
                path: path.clone(),
                detail: e.to_string(),
            })
    }

    /// Trust for enrollment.
    fn for_enrollment(&self, token: &JoinToken) -> Result<Trust, IdentityError> {
        if self.pin {
            return Ok(Trust::Pin(self.ca_pin.unwrap_or(token.pin)));
        }
        Ok(self.extra()?.unwrap_or(Trust::System))
    }

    /// Trust for attaching with an identity.
    fn for_session(&self, ca_pem: &[u8]) -> Result<Trust, IdentityError> {
        if self.pin {
            return Trust::ca_pem(ca_pem).map_err(|e| IdentityError::Corrupt {
                path: PathBuf::from("ca.pem"),
                detail: e.to_string(),
            });
        }
        Ok(self.extra()?.unwrap_or(Trust::System))
    }
}

/// A loaded identity.
#[derive(Clone, Debug)]
pub struct Enrolled {
    pub info: AgentInfo,
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl Enrolled {
    /// The TLS configuration for attaching.
    pub fn tls(&self, trust: &TrustSettings) -> Result<rustls::ClientConfig, IdentityError> {
        let trust = trust.for_session(&self.ca_pem)?;
        let identity = Identity::from_pem(&self.cert_pem, &self.key_pem).map_err(|e| {
            IdentityError::Corrupt {
                path: PathBuf::from(&self.info.cert_file),
                detail: e.to_string(),
            }
        })?;
        tls::client_config(&trust, Some(identity)).map_err(|e| IdentityError::Crypto(e.to_string()))
    }

    /// The certificate's validity, Unix milliseconds (from its own fields).
    pub fn validity(&self) -> Option<(i64, i64)> {
        let der = CertificateDer::from_pem_slice(&self.cert_pem).ok()?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
        let v = cert.validity();
        Some((
            v.not_before.timestamp() * 1000,
            v.not_after.timestamp() * 1000,
        ))
    }

    /// When to renew: at two thirds of the time between receiving the
    /// certificate and its expiry.
    pub fn renew_at(&self) -> SystemTime {
        let to = self.info.not_after_unix_ms;
        let from = if self.info.issued_unix_ms > 0 {
            self.info.issued_unix_ms
        } else {
            self.validity().map_or(to, |(from, _)| from)
        };
        let at = from + (to - from) * 2 / 3;
        UNIX_EPOCH + Duration::from_millis(u64::try_from(at).unwrap_or(0))
    }
}

/// Why enrollment, renewal or loading the identity failed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The state directory could not be read or written.
    #[error("state directory {}: {source}; check --state-dir and its permissions", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// A state file is damaged.
    #[error("{} is damaged ({detail}); move the state directory away and enroll again with a new join token", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// Not enrolled and no join token given.
    #[error(
        "this agent is not enrolled yet and has no join token: set TETHER_JOIN_TOKEN or --join-token-file \
         (create one with `tetherctl tokens create --pool <pool>`)"
    )]
    NoToken,
    /// The control plane refused the token or the renewal.
    #[error("{what} refused: {why}")]
    Refused {
        /// Enrollment or renewal.
        what: &'static str,
        /// The control plane's answer.
        why: String,
    },
    /// The control plane could not be reached (retryable).
    #[error("cannot reach the control plane: {0}")]
    Unreachable(String),
    /// Local crypto failed.
    #[error("cannot create a key or CSR: {0}")]
    Crypto(String),
}

impl IdentityError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, IdentityError::Unreachable(_))
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Loads the identity from `dir`, if the agent enrolled before.
pub fn load(dir: &Path) -> Result<Option<Enrolled>, IdentityError> {
    let info_path = dir.join("agent.json");
    if !info_path.exists() {
        return Ok(None);
    }
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read(&p).map_err(io(&p))
    };
    let info: AgentInfo =
        serde_json::from_slice(&read("agent.json")?).map_err(|e| IdentityError::Corrupt {
            path: info_path.clone(),
            detail: e.to_string(),
        })?;
    Ok(Some(Enrolled {
        ca_pem: read("ca.pem")?,
        cert_pem: read(&info.cert_file)?,
        key_pem: read(&info.key_file)?,
        info,
    }))
}

/// Writes a file atomically with `mode`.
fn write(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<(), IdentityError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(contents).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))
}

fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A new key and a bare CSR for it: the control plane chooses every field
/// of the certificate itself.
fn key_and_csr() -> Result<(KeyPair, Vec<u8>), IdentityError> {
    let key = KeyPair::generate().map_err(|e| IdentityError::Crypto(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| IdentityError::Crypto(e.to_string()))?;
    Ok((key, csr.der().to_vec()))
}

/// Stores a certificate and its key under new names, then points
/// `agent.json` at them (the last, atomic step), then removes the old pair.
fn store_pair(
    dir: &Path,
    info: &mut AgentInfo,
    cert_pem: &[u8],
    key_pem: &[u8],
    not_after: i64,
) -> Result<(), IdentityError> {
    let tag = format!("{not_after}");
    let (old_cert, old_key) = (info.cert_file.clone(), info.key_file.clone());
    let cert_file = format!("cert-{tag}.pem");
    let key_file = format!("key-{tag}.pem");
    write(dir, &key_file, key_pem, 0o600)?;
    write(dir, &cert_file, cert_pem, 0o644)?;
    info.cert_file = cert_file;
    info.key_file = key_file;
    info.not_after_unix_ms = not_after;
    info.issued_unix_ms = unix_ms_now();
    let json =
        serde_json::to_vec_pretty(&info).expect("plain strings and numbers always serialise");
    write(dir, "agent.json", &json, 0o600)?;
    for old in [old_cert, old_key] {
        if old != info.cert_file && old != info.key_file {
            let _ = std::fs::remove_file(dir.join(old));
        }
    }
    Ok(())
}

/// Enrolls with the join token and stores the identity in `dir`.
pub async fn enroll(
    dir: &Path,
    endpoint: &ControlPlaneAddr,
    token: &JoinToken,
    trust: &TrustSettings,
    hostname: &str,
) -> Result<Enrolled, IdentityError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    let (key, csr_der) = key_and_csr()?;
    let tls = tls::client_config(&trust.for_enrollment(token)?, None)
        .map_err(|e| IdentityError::Crypto(e.to_string()))?;
    let channel =
        client::channel(endpoint, tls).map_err(|e| IdentityError::Unreachable(e.to_string()))?;
    let request = EnrollRequest {
        token: secrecy::ExposeSecret::expose_secret(&token.enroll_credential()).to_owned(),
        csr_der,
        hostname: hostname.to_owned(),
        agent_version: tether::VERSION.into(),
    };
    let response = EnrollmentClient::new(channel)
        .enroll(request)
        .await
        .map_err(|s| refusal("enrollment", &s))?
        .into_inner();
    write(dir, "ca.pem", response.ca_certificate_pem.as_bytes(), 0o644)?;
    let mut info = AgentInfo {
        agent_id: response.agent_id,
        org_id: response.org_id,
        pool: response.pool,
        endpoint: endpoint.to_string(),
        not_after_unix_ms: response.not_after_unix_ms,
        issued_unix_ms: 0,
        cert_file: default_cert(),
        key_file: default_key(),
    };
    let key_pem = key.serialize_pem().into_bytes();
    store_pair(
        dir,
        &mut info,
        response.certificate_chain_pem.as_bytes(),
        &key_pem,
        response.not_after_unix_ms,
    )?;
    info!(agent_id = %info.agent_id, pool = %info.pool, "enrolled");
    Ok(Enrolled {
        info,
        ca_pem: response.ca_certificate_pem.into_bytes(),
        cert_pem: response.certificate_chain_pem.into_bytes(),
        key_pem,
    })
}

/// Renews the certificate with a new key over `channel` (the session's own
/// mTLS connection) and stores it; `identity` is updated for the next
/// session. The current session keeps running on the old certificate.
pub async fn renew(
    dir: &Path,
    channel: Channel,
    mut identity: Enrolled,
) -> Result<Enrolled, IdentityError> {
    let (key, csr_der) = key_and_csr()?;
    let response = EnrollmentClient::new(channel)
        .renew(RenewRequest { csr_der })
        .await
        .map_err(|s| refusal("renewal", &s))?
        .into_inner();
    let key_pem = key.serialize_pem().into_bytes();
    let mut info = identity.info.clone();
    store_pair(
        dir,
        &mut info,
        response.certificate_chain_pem.as_bytes(),
        &key_pem,
        response.not_after_unix_ms,
    )?;
    identity.info = info;
    identity.cert_pem = response.certificate_chain_pem.into_bytes();
    identity.key_pem = key_pem;
    info!(
        not_after_unix_ms = response.not_after_unix_ms,
        "certificate renewed"
    );
    Ok(identity)
}

fn refusal(what: &'static str, s: &tonic::Status) -> IdentityError {
    if tls::find_pin_mismatch(s).is_some() || tls::clock_hint(s).is_some() {
        return IdentityError::Refused {
            what,
            why: client::describe_error(s),
        };
    }
    match s.code() {
        tonic::Code::Unauthenticated
        | tonic::Code::InvalidArgument
        | tonic::Code::PermissionDenied => IdentityError::Refused {
            what,
            why: s.message().to_owned(),
        },
        _ => IdentityError::Unreachable(client::describe_error(s)),
    }
}
