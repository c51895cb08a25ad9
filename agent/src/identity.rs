//! The agent's identity: enrolled once with a join token, then kept in the
//! state directory and reused by every later start.
//!
//! Files (the directory is 0700, secrets 0600, written atomically):
//! - `agent.json`: agent id, org, pool, and the control plane it belongs to;
//! - `key.pem`: the private key, generated here and never sent anywhere;
//! - `cert.pem`: the certificate the control plane signed;
//! - `ca.pem`: the control plane's CA, learned at enrollment through the
//!   pin in the join token.

use std::{
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use serde::{Deserialize, Serialize};
use tether::{
    client::{self, ControlPlaneAddr},
    join::JoinToken,
    proto::{EnrollRequest, enrollment_client::EnrollmentClient},
    tls::{self, Identity, Trust},
};
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
}

/// A loaded identity.
#[derive(Debug)]
pub struct Enrolled {
    pub info: AgentInfo,
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl Enrolled {
    /// The TLS trust and client identity for attaching.
    pub fn tls(&self) -> Result<rustls::ClientConfig, tls::TlsError> {
        let trust = Trust::ca_pem(&self.ca_pem)?;
        let identity = Identity::from_pem(&self.cert_pem, &self.key_pem)?;
        tls::client_config(&trust, Some(identity))
    }
}

/// Why enrollment or loading the identity failed.
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
    /// The control plane refused the token.
    #[error("enrollment refused: {0}")]
    Refused(String),
    /// The control plane could not be reached (retryable).
    #[error("cannot reach the control plane to enroll: {0}")]
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
        info,
        ca_pem: read("ca.pem")?,
        cert_pem: read("cert.pem")?,
        key_pem: read("key.pem")?,
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

/// Enrolls with the join token and stores the identity in `dir`.
pub async fn enroll(
    dir: &Path,
    endpoint: &ControlPlaneAddr,
    token: &JoinToken,
    hostname: &str,
) -> Result<Enrolled, IdentityError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    let key = KeyPair::generate().map_err(|e| IdentityError::Crypto(e.to_string()))?;
    // A bare CSR: the control plane chooses every field itself.
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| IdentityError::Crypto(e.to_string()))?;
    // First contact: trust only the CA whose key the join token pins.
    let tls = tls::client_config(&Trust::Pin(token.pin), None)
        .map_err(|e| IdentityError::Crypto(e.to_string()))?;
    let channel =
        client::channel(endpoint, tls).map_err(|e| IdentityError::Unreachable(e.to_string()))?;
    let request = EnrollRequest {
        token: secrecy::ExposeSecret::expose_secret(&token.enroll_credential()).to_owned(),
        csr_der: csr.der().to_vec(),
        hostname: hostname.to_owned(),
        agent_version: tether::VERSION.into(),
    };
    let response = EnrollmentClient::new(channel)
        .enroll(request)
        .await
        .map_err(|s| match s.code() {
            _ if tls::find_pin_mismatch(&s).is_some() => {
                IdentityError::Refused(client::describe_error(&s))
            }
            tonic::Code::Unauthenticated
            | tonic::Code::InvalidArgument
            | tonic::Code::PermissionDenied => IdentityError::Refused(s.message().to_owned()),
            _ => IdentityError::Unreachable(client::describe_error(&s)),
        })?
        .into_inner();
    let info = AgentInfo {
        agent_id: response.agent_id,
        org_id: response.org_id,
        pool: response.pool,
        endpoint: endpoint.to_string(),
        not_after_unix_ms: response.not_after_unix_ms,
    };
    let key_pem = key.serialize_pem().into_bytes();
    write(dir, "key.pem", &key_pem, 0o600)?;
    write(
        dir,
        "cert.pem",
        response.certificate_chain_pem.as_bytes(),
        0o644,
    )?;
    write(dir, "ca.pem", response.ca_certificate_pem.as_bytes(), 0o644)?;
    let json =
        serde_json::to_vec_pretty(&info).expect("plain strings and numbers always serialise");
    // Written last: its presence means the identity is complete.
    write(dir, "agent.json", &json, 0o600)?;
    info!(agent_id = %info.agent_id, pool = %info.pool, "enrolled");
    Ok(Enrolled {
        info,
        ca_pem: response.ca_certificate_pem.into_bytes(),
        cert_pem: response.certificate_chain_pem.into_bytes(),
        key_pem,
    })
}
