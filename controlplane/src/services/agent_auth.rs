//! How an agent proves who it is on `Tunnel.Attach` and `Enrollment.Renew`:
//! its client certificate (checked against the CA by the TLS layer) names
//! an agent that is enrolled here and not revoked.

use tonic::{Request, Status};
use tracing::warn;

use crate::{
    identity::ca::agent_of_certificate,
    state::{State, store_status},
    store::AgentRecord,
};

/// The message an agent gets once revoked; the agent logs it as is.
pub const REVOKED: &str = "revoked: re-enroll with a new token";

/// The enrolled, unrevoked agent behind the request's client certificate,
/// and the certificate's public key (DER SubjectPublicKeyInfo).
pub async fn caller<T>(
    state: &State,
    req: &Request<T>,
    call: &str,
) -> Result<(AgentRecord, Vec<u8>), Status> {
    let certs = req.peer_certs().ok_or_else(|| {
        Status::unauthenticated(format!(
            "{call} needs the agent's client certificate; enroll first (tether-agent does this with a join token)"
        ))
    })?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("the client certificate chain is empty"))?;
    let (agent_id, spki) = agent_of_certificate(leaf)
        .ok_or_else(|| Status::unauthenticated("the client certificate names no agent"))?;
    let record = state
        .store
        .get_agent(&agent_id)
        .await
        .map_err(|e| store_status("looking up the agent", e))?
        .ok_or_else(|| {
            warn!(%agent_id, peer = ?req.remote_addr(), call, "refused: the certificate's agent is not enrolled here");
            Status::unauthenticated("this agent is not enrolled at this control plane; re-enroll with a new join token")
        })?;
    if record.revoked_ms != 0 {
        warn!(%agent_id, peer = ?req.remote_addr(), call, "refused: the agent is revoked");
        return Err(Status::unauthenticated(REVOKED));
    }
    Ok((record, spki))
}
