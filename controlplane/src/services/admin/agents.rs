//! Agents as operators see them (state, health, drift), and revocation.

use std::{collections::HashMap, sync::Arc};

use tether::proto::{self, AgentState, HealthSample, ListAgentsRequest, ListAgentsResponse};
use tonic::Status;
use tracing::{info, warn};

use crate::{
    auth::Principal,
    commands::CommandFailed,
    events::{self, Kind, Subject},
    registry::LiveSession,
    state::{Shared, now_ms, store_status},
    store::{AgentRecord, PoolRecord},
};

fn state_of(
    rec: &AgentRecord,
    live: Option<&LiveSession>,
    interval: std::time::Duration,
) -> AgentState {
    if rec.revoked_ms != 0 {
        return AgentState::Revoked;
    }
    match live {
        None => AgentState::Offline,
        Some(s) if s.connection.is_closed() => AgentState::Offline,
        Some(s) if s.is_stale(interval) => AgentState::Stale,
        Some(s) if s.is_draining() => AgentState::Draining,
        Some(_) => AgentState::Connected,
    }
}

/// How the agent differs from its pool's pins, in words (empty: in line).
pub(super) fn drift(version: &str, config_hash: &str, pins: Option<&PoolRecord>) -> Vec<String> {
    let mut out = Vec::new();
    let Some(p) = pins else {
        return out;
    };
    if !p.pinned_version.is_empty() && p.pinned_version != version {
        out.push(format!(
            "version {version:?} differs from the pool's pinned {:?}: upgrade or downgrade the agent",
            p.pinned_version
        ));
    }
    if !p.pinned_config_hash.is_empty() && p.pinned_config_hash != config_hash {
        out.push(format!(
            "configuration hash {config_hash:?} differs from the pool's pinned {:?}: compare `tetherctl agents config` \
             with an agent in line, or pin the new hash with `tetherctl pools pin`",
            p.pinned_config_hash
        ));
    }
    out
}

/// The stored record merged with the live session, if any.
pub(super) fn view(state: &Shared, rec: AgentRecord, pins: Option<&PoolRecord>) -> proto::Agent {
    let live = state.registry.get(&rec.agent_id);
    let agent_state = state_of(&rec, live.as_deref(), state.config.heartbeat_interval);
    let mut a = proto::Agent {
        agent_id: rec.agent_id,
        org_id: rec.org_id,
        pool: rec.pool,
        state: agent_state as i32,
        version: rec.version,
        hostname: rec.hostname,
        capabilities: rec.capabilities,
        credential_names: rec.credential_names,
        labels: rec.labels.into_iter().collect(),
        enrolled_unix_ms: rec.enrolled_ms,
        connected_unix_ms: rec.last_connected_ms,
        last_heartbeat_unix_ms: rec.last_heartbeat_ms,
        rtt_us: rec.rtt_us,
        clock_skew_ms: rec.clock_skew_ms,
        certificate_not_after_unix_ms: rec.cert_not_after_ms,
        ..proto::Agent::default()
    };
    let (version, hash) = (&a.version, &rec.config_hash);
    // Only agents that report count as drifted: an offline agent's record
    // may predate the pin.
    a.drift = !matches!(agent_state, AgentState::Offline | AgentState::Revoked)
        && !drift(version, hash, pins).is_empty();
    a.config_hash = rec.config_hash;
    if let Some(s) =
        live.filter(|_| !matches!(agent_state, AgentState::Offline | AgentState::Revoked))
    {
        let hb = s.heartbeat();
        a.session_id = s.session_id.clone();
        a.replica_id = state.replica_id.clone();
        a.peer_address = s.peer.map(|p| p.to_string()).unwrap_or_default();
        a.open_channels = u32::try_from(s.connection.channel_count()).unwrap_or(u32::MAX);
        a.connected_unix_ms = s.connected_ms;
        if hb.rtt_us > 0 || hb.at_ms > s.connected_ms {
            a.last_heartbeat_unix_ms = hb.at_ms;
            a.rtt_us = hb.rtt_us;
            a.clock_skew_ms = hb.clock_skew_ms;
        }
        a.health = hb.sample.map(Arc::unwrap_or_clone);
    }
    a
}

pub(super) async fn list(
    state: &Shared,
    who: &Principal,
    filter: ListAgentsRequest,
) -> Result<ListAgentsResponse, Status> {
    let records = state
        .store
        .list_agents(&who.org_id)
        .await
        .map_err(|e| store_status("listing agents", e))?;
    let pins = pins_of(state, &who.org_id).await?;
    let agents = records
        .into_iter()
        .filter(|a| filter.pool.is_empty() || a.pool == filter.pool)
        .map(|a| {
            let p = pins.get(&a.pool);
            view(state, a, p)
        })
        .filter(|a| filter.state == 0 || a.state == filter.state)
        .collect();
    Ok(ListAgentsResponse { agents })
}

/// One agent of the caller's org; NOT_FOUND for other orgs' agents too, so
/// that ids cannot be probed.
pub(super) async fn get(state: &Shared, who: &Principal, id: &str) -> Result<AgentRecord, Status> {
    state
        .store
        .get_agent(id)
        .await
        .map_err(|e| store_status("reading the agent", e))?
        .filter(|a| a.org_id == who.org_id)
        .ok_or_else(|| {
            Status::not_found(format!(
                "no agent {id:?}; list them with `tetherctl agents list`"
            ))
        })
}

/// The org's pool pins by pool name.
pub(super) async fn pins_of(
    state: &Shared,
    org_id: &str,
) -> Result<HashMap<String, PoolRecord>, Status> {
    Ok(state
        .store
        .list_pools(org_id)
        .await
        .map_err(|e| store_status("reading pool pins", e))?
        .into_iter()
        .map(|p| (p.name.clone(), p))
        .collect())
}

/// One pool's pins, if any.
pub(super) async fn pins_for(
    state: &Shared,
    org_id: &str,
    pool: &str,
) -> Result<Option<PoolRecord>, Status> {
    state
        .store
        .get_pool(org_id, pool)
        .await
        .map_err(|e| store_status("reading pool pins", e))
}

/// An agent with its recent health history (GetAgent).
pub(super) async fn detail(state: &Shared, rec: AgentRecord) -> Result<proto::Agent, Status> {
    let pins = pins_for(state, &rec.org_id, &rec.pool).await?;
    let samples = state
        .store
        .list_health_samples(&rec.agent_id, state.config.health_history_samples)
        .await
        .map_err(|e| store_status("reading the health history", e))?;
    let mut a = view(state, rec, pins.as_ref());
    a.history = samples
        .into_iter()
        .filter_map(|(_, bytes)| prost::Message::decode(bytes.as_slice()).ok())
        .collect::<Vec<HealthSample>>();
    if a.health.is_none() {
        a.health = a.history.last().cloned();
    }
    Ok(a)
}

/// The agent's live session, or a FAILED_PRECONDITION that says it is
/// offline and since when.
pub(super) fn live(state: &Shared, rec: &AgentRecord) -> Result<Arc<LiveSession>, Status> {
    if rec.revoked_ms != 0 {
        return Err(Status::failed_precondition(format!(
            "agent {} is revoked; it has no session",
            rec.agent_id
        )));
    }
    state
        .registry
        .get(&rec.agent_id)
        .filter(|s| !s.connection.is_closed())
        .ok_or_else(|| {
            let seen = if rec.last_heartbeat_ms > 0 {
                format!(
                    "last heartbeat {} s ago",
                    now_ms().saturating_sub(rec.last_heartbeat_ms) / 1000
                )
            } else {
                "never connected".to_owned()
            };
            Status::failed_precondition(format!(
                "agent {} is offline ({seen}); commands run on the agent, so start it (or pick another: \
                 `tetherctl agents list --pool {}`)",
                rec.agent_id, rec.pool
            ))
        })
}

/// A failed command as a status the caller can act on.
pub(super) fn command_status(agent_id: &str, e: CommandFailed) -> Status {
    let msg = format!("agent {agent_id}: {e}");
    match e {
        CommandFailed::Busy => Status::resource_exhausted(msg),
        CommandFailed::NotSent | CommandFailed::SessionEnded => Status::unavailable(msg),
        CommandFailed::Timeout(_) => Status::deadline_exceeded(msg),
        CommandFailed::Agent { ref code, .. } if code == "unsupported" => {
            Status::unimplemented(msg)
        }
        CommandFailed::Agent { .. } => Status::failed_precondition(msg),
    }
}

/// Revokes an agent: stored first (so that it survives a restart and a
/// reattach is refused), then its live session is cut.
pub(super) async fn revoke(
    state: &Shared,
    who: &Principal,
    id: &str,
    reason: &str,
) -> Result<proto::Agent, Status> {
    get(state, who, id).await?;
    let rec = state
        .store
        .revoke_agent(&who.org_id, id, now_ms())
        .await
        .map_err(|e| store_status("revoking the agent", e))?
        .ok_or_else(|| Status::not_found(format!("no agent {id:?}")))?;
    if let Some(live) = state.registry.get(id) {
        live.connection
            .close(format!("the agent was revoked: {reason}"));
        live.cancel.cancel();
        info!(agent_id = %id, session_id = %live.session_id, "revoked agent's session cut");
    }
    warn!(agent_id = %id, key_id = %who.key_id, %reason, "agent revoked");
    let subject = Subject {
        org_id: rec.org_id.clone(),
        agent_id: rec.agent_id.clone(),
        pool: rec.pool.clone(),
    };
    let detail = if reason.is_empty() {
        format!("revoked by key {}", who.key_id)
    } else {
        format!("revoked by key {}: {reason}", who.key_id)
    };
    events::emit(state, &subject, Kind::Revoked, detail).await;
    Ok(view(state, rec, None))
}
