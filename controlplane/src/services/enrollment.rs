//! `Enrollment.Enroll`: a join token and a CSR in, an agent certificate out.
//!
//! The token is checked by hash in constant time; its use is counted in the
//! same transaction that creates the agent. An agent never learns which
//! check failed (no oracle for guessing tokens); the operator's log says.

use tether::{
    join,
    proto::{
        EnrollRequest, EnrollResponse, RenewRequest, RenewResponse, enrollment_server::Enrollment,
    },
};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::agent_auth;
use crate::{
    identity::{CsrError, ca, secrets},
    state::{Shared, now_ms, store_status},
    store::AgentRecord,
};

/// Longest host name or version string accepted from an agent.
const MAX_TEXT: usize = 256;

/// The Enrollment service.
#[derive(Debug, Clone)]
pub struct EnrollmentService {
    state: Shared,
}

impl EnrollmentService {
    pub fn new(state: Shared) -> Self {
        Self { state }
    }
}

fn not_valid() -> Status {
    Status::unauthenticated(
        "the join token is not valid (unknown, expired, used up or revoked); ask the operator for a new one \
         (tetherctl tokens create --pool <pool>)",
    )
}

#[tonic::async_trait]
impl Enrollment for EnrollmentService {
    async fn enroll(
        &self,
        req: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let peer = req.remote_addr();
        let req = req.into_inner();
        if req.hostname.len() > MAX_TEXT || req.agent_version.len() > MAX_TEXT {
            return Err(Status::invalid_argument(format!(
                "hostname and agent_version must be at most {MAX_TEXT} bytes"
            )));
        }
        let Ok((token_id, secret)) = join::split_enroll_credential(&req.token) else {
            warn!(?peer, "enrollment refused: malformed token");
            return Err(not_valid());
        };
        let state = &self.state;
        let token = state
            .store
            .get_token(token_id)
            .await
            .map_err(|e| store_status("looking up the join token", e))?;
        let Some(token) = token else {
            warn!(?peer, %token_id, "enrollment refused: unknown token");
            return Err(not_valid());
        };
        if !secrets::matches(secret, &token.secret_hash) {
            warn!(?peer, %token_id, "enrollment refused: wrong secret for the token");
            return Err(not_valid());
        }
        let now = now_ms();
        if !token.is_usable(now) {
            let why = if token.revoked_ms != 0 {
                "revoked"
            } else if token.expires_ms <= now {
                "expired"
            } else {
                "used up"
            };
            warn!(?peer, %token_id, reason = why, "enrollment refused");
            return Err(not_valid());
        }
        let agent_id = format!("agent-{}", secrets::random_hex(6));
        let cert = state
            .authority
            .sign_agent(&req.csr_der, &agent_id, &token.org_id, state.config.agent_cert_lifetime)
            .map_err(|e| match e {
                CsrError::Sign(e) => {
                    tracing::error!(error = %e, "signing an agent certificate failed");
                    Status::internal("signing the certificate failed inside the control plane; its log has the detail")
                }
                other => Status::invalid_argument(other.to_string()),
            })?;
        let record = AgentRecord {
            agent_id: agent_id.clone(),
            org_id: token.org_id.clone(),
            pool: token.pool.clone(),
            token_id: token.token_id.clone(),
            enrolled_ms: now,
            cert_serial: cert.serial.clone(),
            cert_not_after_ms: cert.not_after_ms,
            hostname: req.hostname.clone(),
            version: req.agent_version.clone(),
            labels: token.labels.clone(),
            ..AgentRecord::default()
        };
        let enrolled = state
            .store
            .enroll(&token.token_id, now, &record)
            .await
            .map_err(|e| store_status("enrolling the agent", e))?;
        if !enrolled {
            warn!(?peer, %token_id, "enrollment refused: the token was used up meanwhile");
            return Err(not_valid());
        }
        info!(%agent_id, pool = %token.pool, %token_id, hostname = %req.hostname, "agent enrolled");
        Ok(Response::new(EnrollResponse {
            agent_id,
            org_id: token.org_id,
            pool: token.pool,
            certificate_chain_pem: cert.pem,
            ca_certificate_pem: state.authority.ca_pem.clone(),
            not_after_unix_ms: cert.not_after_ms,
            labels: token.labels.into_iter().collect(),
        }))
    }

    /// A fresh certificate for a new key, over the agent's mTLS connection.
    /// The old certificate stays valid until it expires: channels on the
    /// live session keep running, and the next session uses the new one.
    async fn renew(&self, req: Request<RenewRequest>) -> Result<Response<RenewResponse>, Status> {
        let state = &self.state;
        let (record, current_key) = agent_auth::caller(state, &req, "Enrollment.Renew").await?;
        let csr = req.into_inner().csr_der;
        let new_key =
            ca::csr_public_key(&csr).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if new_key == current_key {
            return Err(Status::invalid_argument(
                "the CSR carries the key of the current certificate; generate a new key for every renewal",
            ));
        }
        let cert = state
            .authority
            .sign_agent(&csr, &record.agent_id, &record.org_id, state.config.agent_cert_lifetime)
            .map_err(|e| match e {
                CsrError::Sign(e) => {
                    tracing::error!(error = %e, "signing an agent certificate failed");
                    Status::internal("signing the certificate failed inside the control plane; its log has the detail")
                }
                other => Status::invalid_argument(other.to_string()),
            })?;
        state
            .store
            .renew_agent(&record.agent_id, &cert.serial, cert.not_after_ms)
            .await
            .map_err(|e| store_status("recording the renewed certificate", e))?;
        info!(agent_id = %record.agent_id, serial = %cert.serial, not_after_ms = cert.not_after_ms, "agent certificate renewed");
        Ok(Response::new(RenewResponse {
            certificate_chain_pem: cert.pem,
            not_after_unix_ms: cert.not_after_ms,
        }))
    }
}
