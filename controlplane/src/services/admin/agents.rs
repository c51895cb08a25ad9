//! Agents and pools as operators see them, and revocation.

use std::collections::BTreeMap;

use tether::proto::{
    self, AgentState, ListAgentsRequest, ListAgentsResponse, ListPoolsResponse, Pool,
};
use tonic::Status;
use tracing::{info, warn};

use crate::{
    auth::Principal,
    registry::LiveSession,
    state::{Shared, now_ms, store_status},
    store::AgentRecord,
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
        Some(s) if s.is_draining() => AgentState::Draining,
        Some(s) if s.is_stale(interval) => AgentState::Stale,
        Some(_) => AgentState::Connected,
    }
}

/// The stored record merged with the live session, if any.
pub(super) fn view(state: &Shared, rec: AgentRecord) -> proto::Agent {
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
        config_hash: rec.config_hash,
        ..proto::Agent::default()
    };
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
        a.health = hb.sample;
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
    let agents = records
        .into_iter()
        .filter(|a| filter.pool.is_empty() || a.pool == filter.pool)
        .map(|a| view(state, a))
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

pub(super) async fn pools(state: &Shared, who: &Principal) -> Result<ListPoolsResponse, Status> {
    let records = state
        .store
        .list_agents(&who.org_id)
        .await
        .map_err(|e| store_status("listing agents", e))?;
    let mut pools: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    for rec in records {
        let v = view(state, rec);
        let entry = pools.entry(v.pool).or_default();
        entry.0 += 1;
        if v.state == AgentState::Connected as i32 {
            entry.1 += 1;
        }
    }
    let pools = pools
        .into_iter()
        .map(|(name, (agents, ready))| Pool {
            name,
            agents,
            ready_agents: ready,
            ..Pool::default()
        })
        .collect();
    Ok(ListPoolsResponse { pools })
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
    Ok(view(state, rec))
}
