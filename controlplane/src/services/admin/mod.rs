//! The `Admin` service.
//!
//! Every call needs an API key whose role allows it (viewer reads, operator
//! changes agents, tokens and connections, admin also keys and the audit
//! log) and is scoped to the key's org: objects of other orgs are neither
//! listed nor reachable (NOT_FOUND). Changing calls, commands run on agents
//! and refusals are written to the audit log.

mod agents;
mod connections;
mod diagnostics;
mod drain;
mod events;
mod jobs;
mod keys;
mod pools;
mod tokens;
pub mod validate;

use tether::proto::{
    self, CancelJobRequest, CreateApiKeyRequest, CreateApiKeyResponse, CreateConnectionRequest,
    CreateEnrollmentTokenRequest, CreateEnrollmentTokenResponse, DeleteConnectionRequest,
    DeleteConnectionResponse, DrainAgentRequest, DrainAgentResponse, EnrollmentToken,
    GetAgentConfigRequest, GetAgentLogsRequest, GetAgentRequest, GetJobLogsRequest,
    GetJobLogsResponse, GetJobRequest, GetServerInfoRequest, Job, ListAgentsRequest,
    ListAgentsResponse, ListApiKeysRequest, ListApiKeysResponse, ListAuditEventsRequest,
    ListAuditEventsResponse, ListConnectionsRequest, ListConnectionsResponse,
    ListEnrollmentTokensRequest, ListEnrollmentTokensResponse, ListEventsRequest,
    ListEventsResponse, ListJobsRequest, ListJobsResponse, ListPoolsRequest, ListPoolsResponse,
    LogsResult, Pool, ProbeAgentRequest, ProbeResult, RecyclePoolRequest, RecyclePoolResponse,
    RevokeAgentRequest, RevokeApiKeyRequest, RevokeEnrollmentTokenRequest, ServerInfo,
    SubmitJobRequest, UndrainAgentRequest, UpdatePoolRequest, WatchEventsRequest,
    admin_server::Admin,
};
use tonic::{Request, Response, Status};

use crate::{
    audit,
    auth::{Need, authorize},
    state::Shared,
};

/// The Admin service.
#[derive(Debug, Clone)]
pub struct AdminService {
    state: Shared,
}

impl AdminService {
    pub fn new(state: Shared) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn get_server_info(
        &self,
        req: Request<GetServerInfoRequest>,
    ) -> Result<Response<ServerInfo>, Status> {
        // Any valid key, dialers included: they need the CA pin too.
        let who = crate::auth::authenticate(&self.state, &req).await?;
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
        let who = authorize(&self.state, &req, Need::Read, "ListAgents").await?;
        agents::list(&self.state, &who, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_agent(
        &self,
        req: Request<GetAgentRequest>,
    ) -> Result<Response<proto::Agent>, Status> {
        let who = authorize(&self.state, &req, Need::Read, "GetAgent").await?;
        let rec = agents::get(&self.state, &who, &req.into_inner().agent_id).await?;
        agents::detail(&self.state, rec).await.map(Response::new)
    }

    async fn drain_agent(
        &self,
        req: Request<DrainAgentRequest>,
    ) -> Result<Response<DrainAgentResponse>, Status> {
        let who = authorize(&self.state, &req, Need::Operate, "DrainAgent").await?;
        let id = req.get_ref().agent_id.clone();
        let result = drain::drain(&self.state, &who, req.into_inner()).await;
        audit::outcome(&self.state, &who, "DrainAgent", &id, result)
            .await
            .map(Response::new)
    }

    async fn undrain_agent(
        &self,
        req: Request<UndrainAgentRequest>,
    ) -> Result<Response<proto::Agent>, Status> {
        let who = authorize(&self.state, &req, Need::Operate, "UndrainAgent").await?;
        let id = req.into_inner().agent_id;
        let result = drain::undrain(&self.state, &who, &id).await;
        audit::outcome(&self.state, &who, "UndrainAgent", &id, result)
            .await
            .map(Response::new)
    }

    async fn revoke_agent(
        &self,
        req: Request<RevokeAgentRequest>,
    ) -> Result<Response<proto::Agent>, Status> {
        let who = authorize(&self.state, &req, Need::Operate, "RevokeAgent").await?;
        let r = req.into_inner();
        if r.reason.len() > 256 {
            return Err(Status::invalid_argument(
                "the reason may be at most 256 bytes",
            ));
        }
        let result = agents::revoke(&self.state, &who, &r.agent_id, &r.reason).await;
        match &result {
            Ok(_) => {
                audit::record(
                    &self.state,
                    &who,
                    "RevokeAgent",
                    &r.agent_id,
                    Ok(()),
                    &r.reason,
                )
                .await
            }
            Err(s) => {
                audit::record(&self.state, &who, "RevokeAgent", &r.agent_id, Err(s), "").await
            }
        }
        result.map(Response::new)
    }

    async fn probe_agent(
        &self,
        req: Request<ProbeAgentRequest>,
    ) -> Result<Response<ProbeResult>, Status> {
        let who = authorize(&self.state, &req, Need::Operate, "ProbeAgent").await?;
        let r = req.into_inner();
        let target = match &r.probe {
            Some(p) => format!("{} {}:{}", r.agent_id, p.host, p.port),
            None => r.agent_id.clone(),
        };
        let result = diagnostics::probe(&self.state, &who, r).await;
        audit::outcome(&self.state, &who, "ProbeAgent", &target, result)
            .await
            .map(Response::new)
    }

    async fn get_agent_logs(
        &self,
        req: Request<GetAgentLogsRequest>,
    ) -> Result<Response<LogsResult>, Status> {
        let who = authorize(&self.state, &req, Need::Operate, "GetAgentLogs").await?;
        let id = req.get_ref().agent_id.clone();
        let result = diagnostics::logs(&self.state, &who, req.into_inner()).await;
        audit::outcome(&self.state, &who, "GetAgentLogs", &id, result)
            .await
            .map(Response::new)
    }

    async fn get_agent_config(
        &self,
        req: Request<GetAgentConfigRequest>,
    ) -> Result<Response<proto::AgentConfig>, Status> {
        let who = authorize(&self.state, &req, Need::Read, "GetAgentConfig").await?;
        diagnostics::config(&self.state, &who, &req.into_inner().agent_id)
            .await
            .map(Response::new)
    }

    async fn list_pools(
        &self,
        req: Request<ListPoolsRequest>,
    ) -> Result<Response<ListPoolsResponse>, Status> {
        let who = authorize(&self.state, &req, Need::Read, "ListPools").await?;
        pools::list(&self.state, &who).await.map(Response::new)
    }

    async fn update_pool(&self, req: Request<UpdatePoolRequest>) -> Result<Response<Pool>, Status> {
        let who = authorize(&self.state, &req, Need::Operate, "UpdatePool").await?;
        let name = req.get_ref().name.clone();
        let result = pools::update(&self.state, &who, req.into_inner()).await;
        audit::outcome(&self.state, &who, "UpdatePool", &name, result)
            .await
            .map(Response::new)
    }

    async fn recycle_pool(
        &self,
        req: Request<RecyclePoolRequest>,
    ) -> Result<Response<RecyclePoolResponse>, Status> {
        let who = authorize(&self.state, &req, Need::Operate, "RecyclePool").await?;
        let pool = req.get_ref().pool.clone();
        let result = drain::recycle(&self.state, &who, req.into_inner()).await;
        audit::outcome(&self.state, &who, "RecyclePool", &pool, result)
            .await
            .map(Response::new)
    }

    async fn create_enrollment_token(
        &self,
        req: Request<CreateEnrollmentTokenRequest>,
    ) -> Result<Response<CreateEnrollmentTokenResponse>, Status> {
        let who = authorize(&self.state, &req, Need::Operate, "CreateEnrollmentToken").await?;
        let pool = req.get_ref().pool.clone();
        let result = tokens::create(&self.state, &who, req.into_inner()).await;
        let target = match &result {
            Ok(r) => r
                .token
                .as_ref()
                .map(|t| format!("token {} pool {pool}", t.token_id))
                .unwrap_or_default(),
            Err(_) => format!("pool {pool}"),
        };
        audit::outcome(&self.state, &who, "CreateEnrollmentToken", &target, result)
            .await
            .map(Response::new)
    }

    async fn list_enrollment_tokens(
        &self,
        req: Request<ListEnrollmentTokensRequest>,
    ) -> Result<Response<ListEnrollmentTokensResponse>, Status> {
        let who = authorize(&self.state, &req, Need::Read, "ListEnrollmentTokens").await?;
        tokens::list(&self.state, &who, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn revoke_enrollment_token(
        &self,
        req: Request<RevokeEnrollmentTokenRequest>,
    ) -> Result<Response<EnrollmentToken>, Status> {
        let who = authorize(&self.state, &req, Need::Operate, "RevokeEnrollmentToken").await?;
        let id = req.into_inner().token_id;
        let result = tokens::revoke(&self.state, &who, &id).await;
        audit::outcome(&self.state, &who, "RevokeEnrollmentToken", &id, result)
            .await
            .map(Response::new)
    }

    async fn create_connection(
        &self,
        req: Request<CreateConnectionRequest>,
    ) -> Result<Response<proto::Connection>, Status> {
        let who = authorize(&self.state, &req, Need::Operate, "CreateConnection").await?;
        let name = req.get_ref().name.clone();
        let result = connections::create(&self.state, &who, req.into_inner()).await;
        audit::outcome(&self.state, &who, "CreateConnection", &name, result)
            .await
            .map(Response::new)
    }

    async fn list_connections(
        &self,
        req: Request<ListConnectionsRequest>,
    ) -> Result<Response<ListConnectionsResponse>, Status> {
        let who = authorize(&self.state, &req, Need::Read, "ListConnections").await?;
        connections::list(&self.state, &who)
            .await
            .map(Response::new)
    }

    async fn delete_connection(
        &self,
        req: Request<DeleteConnectionRequest>,
    ) -> Result<Response<DeleteConnectionResponse>, Status> {
        let who = authorize(&self.state, &req, Need::Operate, "DeleteConnection").await?;
        let name = req.into_inner().name;
        let result = connections::delete(&self.state, &who, &name).await;
        audit::outcome(&self.state, &who, "DeleteConnection", &name, result)
            .await
            .map(|()| Response::new(DeleteConnectionResponse {}))
    }

    async fn create_api_key(
        &self,
        req: Request<CreateApiKeyRequest>,
    ) -> Result<Response<CreateApiKeyResponse>, Status> {
        let who = authorize(&self.state, &req, Need::Admin, "CreateApiKey").await?;
        let result = keys::create(&self.state, &who, req.into_inner()).await;
        let target = match &result {
            Ok(r) => r
                .key
                .as_ref()
                .map(|k| format!("key {} org {}", k.key_id, k.org_id))
                .unwrap_or_default(),
            Err(_) => String::new(),
        };
        audit::outcome(&self.state, &who, "CreateApiKey", &target, result)
            .await
            .map(Response::new)
    }

    async fn list_api_keys(
        &self,
        req: Request<ListApiKeysRequest>,
    ) -> Result<Response<ListApiKeysResponse>, Status> {
        let who = authorize(&self.state, &req, Need::Admin, "ListApiKeys").await?;
        keys::list(&self.state, &who, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn revoke_api_key(
        &self,
        req: Request<RevokeApiKeyRequest>,
    ) -> Result<Response<proto::ApiKey>, Status> {
        let who = authorize(&self.state, &req, Need::Admin, "RevokeApiKey").await?;
        let id = req.into_inner().key_id;
        let result = keys::revoke(&self.state, &who, &id).await;
        audit::outcome(&self.state, &who, "RevokeApiKey", &id, result)
            .await
            .map(Response::new)
    }

    async fn list_audit_events(
        &self,
        req: Request<ListAuditEventsRequest>,
    ) -> Result<Response<ListAuditEventsResponse>, Status> {
        let who = authorize(&self.state, &req, Need::Admin, "ListAuditEvents").await?;
        keys::audit(&self.state, &who, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_events(
        &self,
        req: Request<ListEventsRequest>,
    ) -> Result<Response<ListEventsResponse>, Status> {
        let who = authorize(&self.state, &req, Need::Read, "ListEvents").await?;
        events::list(&self.state, &who, req.into_inner())
            .await
            .map(Response::new)
    }

    type WatchEventsStream = events::EventStream;

    async fn watch_events(
        &self,
        req: Request<WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let who = authorize(&self.state, &req, Need::Read, "WatchEvents").await?;
        events::watch(&self.state, &who, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn submit_job(&self, req: Request<SubmitJobRequest>) -> Result<Response<Job>, Status> {
        let who = authorize(&self.state, &req, Need::Operate, "SubmitJob").await?;
        // Audited inside: a new job and its entry are stored together.
        jobs::submit(&self.state, &who, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_job(&self, req: Request<GetJobRequest>) -> Result<Response<Job>, Status> {
        let who = authorize(&self.state, &req, Need::Read, "GetJob").await?;
        jobs::get(&self.state, &who, &req.into_inner().job_id)
            .await
            .map(Response::new)
    }

    async fn list_jobs(
        &self,
        req: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        let who = authorize(&self.state, &req, Need::Read, "ListJobs").await?;
        jobs::list(&self.state, &who, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn cancel_job(&self, req: Request<CancelJobRequest>) -> Result<Response<Job>, Status> {
        let who = authorize(&self.state, &req, Need::Operate, "CancelJob").await?;
        let id = req.get_ref().job_id.clone();
        let result = jobs::cancel(&self.state, &who, req.into_inner()).await;
        audit::outcome(&self.state, &who, "CancelJob", &id, result)
            .await
            .map(Response::new)
    }

    async fn get_job_logs(
        &self,
        req: Request<GetJobLogsRequest>,
    ) -> Result<Response<GetJobLogsResponse>, Status> {
        let who = authorize(&self.state, &req, Need::Read, "GetJobLogs").await?;
        jobs::logs(&self.state, &who, &req.into_inner().job_id)
            .await
            .map(Response::new)
    }
}
