//! The `Admin` service: agents, pools, enrollment tokens, connections.
//!
//! Every call needs an API key and is scoped to the key's org: objects of
//! other orgs are neither listed nor reachable (NOT_FOUND). Calls that belong
//! to later work (jobs, diagnostics, drain, revocation) answer UNIMPLEMENTED
//! with a message saying so, rather than pretending.

use std::{collections::BTreeMap, net::SocketAddr};

use secrecy::SecretString;
use tether::{
    join::JoinToken,
    proto::{
        self, AgentState, CancelJobRequest, CreateConnectionRequest, CreateEnrollmentTokenRequest,
        CreateEnrollmentTokenResponse, DeleteConnectionRequest, DeleteConnectionResponse,
        DrainAgentRequest, DrainAgentResponse, EnrollmentToken, GetAgentConfigRequest,
        GetAgentLogsRequest, GetAgentRequest, GetJobLogsRequest, GetJobLogsResponse, GetJobRequest,
        GetServerInfoRequest, Job, ListAgentsRequest, ListAgentsResponse, ListConnectionsRequest,
        ListConnectionsResponse, ListEnrollmentTokensRequest, ListEnrollmentTokensResponse,
        ListJobsRequest, ListJobsResponse, ListPoolsRequest, ListPoolsResponse, LogsResult, Pool,
        ProbeAgentRequest, ProbeResult, RecyclePoolRequest, RecyclePoolResponse,
        RevokeAgentRequest, RevokeEnrollmentTokenRequest, ServerInfo, SubmitJobRequest,
        UndrainAgentRequest, UpdatePoolRequest, admin_server::Admin,
    },
};
use tonic::{Request, Response, Status};
use tracing::info;

use crate::{
    auth::{Principal, authenticate},
    identity::secrets,
    registry::LiveSession,
    state::{Shared, now_ms, store_status},
    store::{AgentRecord, ConnectionRecord, StoreError, TokenRecord},
};

/// Default token lifetime.
const DEFAULT_TTL_SECONDS: u32 = 86_400;
/// Most uses a token may allow.
const MAX_TOKEN_USES: u32 = 10_000;
/// Most labels on a token.
const MAX_LABELS: usize = 64;

/// The Admin service.
#[derive(Debug, Clone)]
pub struct AdminService {
    state: Shared,
}

impl AdminService {
    pub fn new(state: Shared) -> Self {
        Self { state }
    }

    async fn auth<T>(&self, req: &Request<T>) -> Result<Principal, Status> {
        authenticate(self.state.store.as_ref(), req).await
    }
}

fn later(what: &str) -> Status {
    Status::unimplemented(format!(
        "{what} is not available in this version of Tether yet"
    ))
}

/// Pool names: letters, digits, '.', '-' and '_', 1-63 characters.
pub fn check_pool(pool: &str) -> Result<(), Status> {
    let ok = !pool.is_empty()
        && pool.len() <= 63
        && pool
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "pool {pool:?} is not a valid name: use 1-63 letters, digits, '.', '-' or '_'"
        )))
    }
}

fn check_connection_name(name: &str) -> Result<(), Status> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "connection name {name:?} is not valid: use 1-63 letters, digits, '-' or '_'"
        )))
    }
}

/// A target host and port as a client gave them.
pub fn check_target(host: &str, port: u32) -> Result<u16, Status> {
    if host.is_empty()
        || host.len() > 253
        || host.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Status::invalid_argument(format!(
            "target host {host:?} is not valid: give a host name or IP address"
        )));
    }
    u16::try_from(port).ok().filter(|p| *p != 0).ok_or_else(|| {
        Status::invalid_argument(format!("target port {port} is not valid: use 1-65535"))
    })
}

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

fn agent_view(state: &Shared, rec: AgentRecord) -> proto::Agent {
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
    if let Some(s) = live.filter(|_| agent_state != AgentState::Offline) {
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

fn token_view(t: TokenRecord) -> EnrollmentToken {
    EnrollmentToken {
        token_id: t.token_id,
        org_id: t.org_id,
        pool: t.pool,
        created_unix_ms: t.created_ms,
        expires_unix_ms: t.expires_ms,
        max_uses: t.max_uses,
        uses: t.uses,
        last_used_unix_ms: t.last_used_ms,
        revoked_unix_ms: t.revoked_ms,
        labels: t.labels.into_iter().collect(),
        description: t.description,
    }
}

fn connection_view(state: &Shared, c: ConnectionRecord) -> proto::Connection {
    let address = state
        .gateways
        .address(&c.org_id, &c.name)
        .map(|a| a.to_string())
        .unwrap_or_default();
    let open = state.gateways.open_channels(&c.org_id, &c.name);
    proto::Connection {
        name: c.name,
        org_id: c.org_id,
        pool: c.pool,
        target_host: c.target_host,
        target_port: u32::from(c.target_port),
        gateway_listen: c.gateway_listen,
        gateway_address: address,
        created_unix_ms: c.created_ms,
        open_channels: open,
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn get_server_info(
        &self,
        req: Request<GetServerInfoRequest>,
    ) -> Result<Response<ServerInfo>, Status> {
        let who = self.auth(&req).await?;
        let s = &self.state;
        Ok(Response::new(ServerInfo {
            version: tether::VERSION.into(),
            replica_id: s.replica_id.clone(),
            ca_pin: s.authority.pin.to_string(),
            org_id: who.org_id,
            store: s.store.backend().into(),
            public_endpoint: s.public_endpoint.clone(),
        }))
    }

    async fn list_agents(
        &self,
        req: Request<ListAgentsRequest>,
    ) -> Result<Response<ListAgentsResponse>, Status> {
        let who = self.auth(&req).await?;
        let filter = req.into_inner();
        let records = self
            .state
            .store
            .list_agents(&who.org_id)
            .await
            .map_err(|e| store_status("listing agents", e))?;
        let agents = records
            .into_iter()
            .filter(|a| filter.pool.is_empty() || a.pool == filter.pool)
            .map(|a| agent_view(&self.state, a))
            .filter(|a| filter.state == 0 || a.state == filter.state)
            .collect();
        Ok(Response::new(ListAgentsResponse { agents }))
    }

    async fn get_agent(
        &self,
        req: Request<GetAgentRequest>,
    ) -> Result<Response<proto::Agent>, Status> {
        let who = self.auth(&req).await?;
        let id = req.into_inner().agent_id;
        let rec = self
            .state
            .store
            .get_agent(&id)
            .await
            .map_err(|e| store_status("reading the agent", e))?
            .filter(|a| a.org_id == who.org_id)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no agent {id:?}; list them with `tetherctl agents list`"
                ))
            })?;
        Ok(Response::new(agent_view(&self.state, rec)))
    }

    async fn drain_agent(
        &self,
        req: Request<DrainAgentRequest>,
    ) -> Result<Response<DrainAgentResponse>, Status> {
        self.auth(&req).await?;
        Err(later("draining an agent"))
    }

    async fn undrain_agent(
        &self,
        req: Request<UndrainAgentRequest>,
    ) -> Result<Response<proto::Agent>, Status> {
        self.auth(&req).await?;
        Err(later("undraining an agent"))
    }

    async fn revoke_agent(
        &self,
        req: Request<RevokeAgentRequest>,
    ) -> Result<Response<proto::Agent>, Status> {
        self.auth(&req).await?;
        Err(later("revoking an agent"))
    }

    async fn probe_agent(
        &self,
        req: Request<ProbeAgentRequest>,
    ) -> Result<Response<ProbeResult>, Status> {
        self.auth(&req).await?;
        Err(later("probing from an agent"))
    }

    async fn get_agent_logs(
        &self,
        req: Request<GetAgentLogsRequest>,
    ) -> Result<Response<LogsResult>, Status> {
        self.auth(&req).await?;
        Err(later("fetching agent logs"))
    }

    async fn get_agent_config(
        &self,
        req: Request<GetAgentConfigRequest>,
    ) -> Result<Response<proto::AgentConfig>, Status> {
        self.auth(&req).await?;
        Err(later("fetching an agent's configuration"))
    }

    async fn list_pools(
        &self,
        req: Request<ListPoolsRequest>,
    ) -> Result<Response<ListPoolsResponse>, Status> {
        let who = self.auth(&req).await?;
        let records = self
            .state
            .store
            .list_agents(&who.org_id)
            .await
            .map_err(|e| store_status("listing agents", e))?;
        let mut pools: BTreeMap<String, (u32, u32)> = BTreeMap::new();
        for rec in records {
            let view = agent_view(&self.state, rec);
            let entry = pools.entry(view.pool).or_default();
            entry.0 += 1;
            if view.state == AgentState::Connected as i32 {
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
        Ok(Response::new(ListPoolsResponse { pools }))
    }

    async fn update_pool(&self, req: Request<UpdatePoolRequest>) -> Result<Response<Pool>, Status> {
        self.auth(&req).await?;
        Err(later("pinning a pool's version and configuration"))
    }

    async fn recycle_pool(
        &self,
        req: Request<RecyclePoolRequest>,
    ) -> Result<Response<RecyclePoolResponse>, Status> {
        self.auth(&req).await?;
        Err(later("recycling a pool"))
    }

    async fn create_enrollment_token(
        &self,
        req: Request<CreateEnrollmentTokenRequest>,
    ) -> Result<Response<CreateEnrollmentTokenResponse>, Status> {
        let who = self.auth(&req).await?;
        let r = req.into_inner();
        check_pool(&r.pool)?;
        if r.max_uses > MAX_TOKEN_USES {
            return Err(Status::invalid_argument(format!(
                "max_uses must be at most {MAX_TOKEN_USES}"
            )));
        }
        if r.labels.len() > MAX_LABELS || r.description.len() > 256 {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_LABELS} labels and a description of at most 256 bytes"
            )));
        }
        let ttl = if r.ttl_seconds == 0 {
            DEFAULT_TTL_SECONDS
        } else {
            r.ttl_seconds
        };
        let now = now_ms();
        let token_id = secrets::random_hex(8);
        let secret = secrets::random_hex(32);
        let record = TokenRecord {
            token_id: token_id.clone(),
            org_id: who.org_id.clone(),
            pool: r.pool.clone(),
            secret_hash: secrets::hash(&secret),
            created_ms: now,
            expires_ms: now.saturating_add(i64::from(ttl) * 1000),
            max_uses: r.max_uses.max(1),
            uses: 0,
            last_used_ms: 0,
            revoked_ms: 0,
            labels: r.labels.into_iter().collect(),
            description: r.description,
        };
        self.state
            .store
            .insert_token(&record)
            .await
            .map_err(|e| store_status("storing the token", e))?;
        let join = JoinToken {
            token_id: token_id.clone(),
            secret: SecretString::from(secret),
            pin: self.state.authority.pin,
        };
        info!(key_id = %who.key_id, %token_id, pool = %record.pool, "enrollment token created");
        Ok(Response::new(CreateEnrollmentTokenResponse {
            token: Some(token_view(record)),
            join_token: join.expose(),
        }))
    }

    async fn list_enrollment_tokens(
        &self,
        req: Request<ListEnrollmentTokensRequest>,
    ) -> Result<Response<ListEnrollmentTokensResponse>, Status> {
        let who = self.auth(&req).await?;
        let r = req.into_inner();
        let now = now_ms();
        let tokens = self
            .state
            .store
            .list_tokens(&who.org_id)
            .await
            .map_err(|e| store_status("listing tokens", e))?
            .into_iter()
            .filter(|t| r.pool.is_empty() || t.pool == r.pool)
            .filter(|t| r.include_inactive || t.is_usable(now))
            .map(token_view)
            .collect();
        Ok(Response::new(ListEnrollmentTokensResponse { tokens }))
    }

    async fn revoke_enrollment_token(
        &self,
        req: Request<RevokeEnrollmentTokenRequest>,
    ) -> Result<Response<EnrollmentToken>, Status> {
        let who = self.auth(&req).await?;
        let id = req.into_inner().token_id;
        let t = self
            .state
            .store
            .revoke_token(&who.org_id, &id, now_ms())
            .await
            .map_err(|e| store_status("revoking the token", e))?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no token {id:?}; list them with `tetherctl tokens list --all`"
                ))
            })?;
        info!(key_id = %who.key_id, token_id = %id, "enrollment token revoked");
        Ok(Response::new(token_view(t)))
    }

    async fn create_connection(
        &self,
        req: Request<CreateConnectionRequest>,
    ) -> Result<Response<proto::Connection>, Status> {
        let who = self.auth(&req).await?;
        let r = req.into_inner();
        check_connection_name(&r.name)?;
        check_pool(&r.pool)?;
        let port = check_target(&r.target_host, r.target_port)?;
        let s = &self.state;
        let listen = if r.gateway_listen.is_empty() {
            None
        } else {
            let addr: SocketAddr = r.gateway_listen.parse().map_err(|_| {
                Status::invalid_argument(format!(
                    "gateway_listen {:?} is not ip:port; e.g. 127.0.0.1:15432, or 127.0.0.1:0 for a free port",
                    r.gateway_listen
                ))
            })?;
            if !addr.ip().is_loopback() && !s.config.gateway_allow_external {
                return Err(Status::invalid_argument(format!(
                    "gateway_listen {addr} is not a loopback address; gateways bind 127.0.0.1 unless the control plane \
                     runs with gateway_allow_external: true (--gateway-allow-external true)"
                )));
            }
            Some(addr)
        };
        let exists = s
            .store
            .get_connection(&who.org_id, &r.name)
            .await
            .map_err(|e| store_status("reading connections", e))?;
        if exists.is_some() {
            return Err(Status::already_exists(format!(
                "a connection named {:?} exists; remove it first (tetherctl connections remove {})",
                r.name, r.name
            )));
        }
        let record = ConnectionRecord {
            org_id: who.org_id.clone(),
            name: r.name.clone(),
            pool: r.pool,
            target_host: r.target_host,
            target_port: port,
            gateway_listen: r.gateway_listen,
            created_ms: now_ms(),
        };
        if let Some(addr) = listen {
            s.gateways
                .start(s, &record, addr)
                .await
                .map_err(|e| Status::failed_precondition(format!("cannot open the gateway on {addr}: {e}; pick another port, or 127.0.0.1:0 for a free one")))?;
        }
        match s.store.insert_connection(&record).await {
            Ok(()) => {}
            Err(e) => {
                s.gateways.stop(&record.org_id, &record.name);
                return Err(match e {
                    StoreError::AlreadyExists => Status::already_exists(format!(
                        "a connection named {:?} exists",
                        record.name
                    )),
                    other => store_status("storing the connection", other),
                });
            }
        }
        info!(key_id = %who.key_id, connection = %record.name, pool = %record.pool, "connection created");
        Ok(Response::new(connection_view(s, record)))
    }

    async fn list_connections(
        &self,
        req: Request<ListConnectionsRequest>,
    ) -> Result<Response<ListConnectionsResponse>, Status> {
        let who = self.auth(&req).await?;
        let connections = self
            .state
            .store
            .list_connections(Some(&who.org_id))
            .await
            .map_err(|e| store_status("listing connections", e))?
            .into_iter()
            .map(|c| connection_view(&self.state, c))
            .collect();
        Ok(Response::new(ListConnectionsResponse { connections }))
    }

    async fn delete_connection(
        &self,
        req: Request<DeleteConnectionRequest>,
    ) -> Result<Response<DeleteConnectionResponse>, Status> {
        let who = self.auth(&req).await?;
        let name = req.into_inner().name;
        let removed = self
            .state
            .store
            .delete_connection(&who.org_id, &name)
            .await
            .map_err(|e| store_status("removing the connection", e))?;
        if !removed {
            return Err(Status::not_found(format!(
                "no connection {name:?}; list them with `tetherctl connections list`"
            )));
        }
        self.state.gateways.stop(&who.org_id, &name);
        info!(key_id = %who.key_id, connection = %name, "connection removed");
        Ok(Response::new(DeleteConnectionResponse {}))
    }

    async fn submit_job(&self, req: Request<SubmitJobRequest>) -> Result<Response<Job>, Status> {
        self.auth(&req).await?;
        Err(later("jobs"))
    }

    async fn get_job(&self, req: Request<GetJobRequest>) -> Result<Response<Job>, Status> {
        self.auth(&req).await?;
        Err(later("jobs"))
    }

    async fn list_jobs(
        &self,
        req: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        self.auth(&req).await?;
        Err(later("jobs"))
    }

    async fn cancel_job(&self, req: Request<CancelJobRequest>) -> Result<Response<Job>, Status> {
        self.auth(&req).await?;
        Err(later("jobs"))
    }

    async fn get_job_logs(
        &self,
        req: Request<GetJobLogsRequest>,
    ) -> Result<Response<GetJobLogsResponse>, Status> {
        self.auth(&req).await?;
        Err(later("jobs"))
    }
}
