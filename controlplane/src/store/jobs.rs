//! The job queue's records and operations.
//!
//! States: `pending` → `assigned` (claimed and pushed) → `running` →
//! `succeeded` / `failed` / `cancelled`; `unschedulable` when no agent of
//! the pool declares the type or a credential. A claim increments the
//! job's `lease_token` (the fencing token); every later change names the
//! token it holds and changes nothing when it is stale (invariant 4).

use async_trait::async_trait;

use super::StoreError;

/// A job as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobRecord {
    pub job_id: String,
    pub org_id: String,
    pub pool: String,
    pub job_type: String,
    pub payload: Vec<u8>,
    pub credential_names: Vec<String>,
    pub priority: i32,
    pub state: String,
    pub run_at_ms: i64,
    pub attempt_timeout_ms: i64,
    pub attempts: u32,
    pub max_attempts: u32,
    pub lease_token: u64,
    pub lease_agent: String,
    pub lease_session: String,
    pub lease_expires_ms: i64,
    pub attempt_deadline_ms: i64,
    pub created_ms: i64,
    pub started_ms: i64,
    pub finished_ms: i64,
    pub result: Vec<u8>,
    pub error: String,
    pub idempotency_key: String,
}

/// States a job can be in (the stored text).
pub mod state {
    pub const PENDING: &str = "pending";
    pub const ASSIGNED: &str = "assigned";
    pub const RUNNING: &str = "running";
    pub const SUCCEEDED: &str = "succeeded";
    pub const FAILED: &str = "failed";
    pub const CANCELLED: &str = "cancelled";
    pub const UNSCHEDULABLE: &str = "unschedulable";
}

/// One lease of a job: who held it, when, and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptRecord {
    pub job_id: String,
    pub lease_token: u64,
    pub agent_id: String,
    pub session_id: String,
    pub started_ms: i64,
    /// 0 while the lease is live.
    pub ended_ms: i64,
    pub outcome: String,
}

/// Who claims: an agent's session and what it can run.
#[derive(Clone, Debug)]
pub struct Claimant {
    pub org_id: String,
    pub pool: String,
    pub agent_id: String,
    pub session_id: String,
    pub capabilities: Vec<String>,
    pub credential_names: Vec<String>,
    /// How long the lease lasts unless heartbeats renew it.
    pub lease_ms: i64,
}

/// How an attempt ended, as the agent (or a sweep) reports it.
#[derive(Clone, Debug)]
pub enum Outcome {
    Succeeded(Vec<u8>),
    /// Failed; retried at `retry_at_ms` when attempts remain and it is
    /// retryable.
    Failed {
        error: String,
        retry_at_ms: Option<i64>,
    },
}

/// What a submission did.
#[derive(Clone, Debug)]
pub enum Submitted {
    /// A new job.
    New(JobRecord),
    /// The idempotency key was used before: the job it created.
    Existing(JobRecord),
}

/// A job returned to the queue (or failed) by a sweep, with the lease it
/// lost, so that the replica holding that session can stop the handler.
#[derive(Clone, Debug)]
pub struct Released {
    pub job: JobRecord,
    pub lost_token: u64,
    pub lost_session: String,
}

/// The job queue.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Stores a new job with its audit entry (both or neither), or returns
    /// the one its idempotency key made (then nothing is written: the
    /// caller audits that). A new pending job wakes the dispatchers of the
    /// other replicas, in the same statement (see [`JobStore::notify_jobs`]).
    async fn submit_job(
        &self,
        job: &JobRecord,
        audit: &super::AuditRecord,
    ) -> Result<Submitted, StoreError>;
    /// One job of an org.
    async fn get_job(&self, org_id: &str, job_id: &str) -> Result<Option<JobRecord>, StoreError>;
    /// Jobs of an org, newest first, optionally of one pool and state.
    async fn list_jobs(
        &self,
        org_id: &str,
        pool: Option<&str>,
        state: Option<&str>,
        limit: u32,
    ) -> Result<Vec<JobRecord>, StoreError>;
    /// Atomically claims up to `limit` due pending jobs that the claimant
    /// can run, highest priority first, oldest first within a priority;
    /// fewer (or none) if there are fewer (or other claimers won them). One
    /// transaction: the commit, not the row, is what a claim costs.
    async fn claim_jobs(
        &self,
        c: &Claimant,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<JobRecord>, StoreError>;
    /// Claims one job, as [`JobStore::claim_jobs`].
    async fn claim_job(&self, c: &Claimant, now_ms: i64) -> Result<Option<JobRecord>, StoreError> {
        Ok(self.claim_jobs(c, now_ms, 1).await?.pop())
    }
    /// assigned → running; false if the token is stale or `agent_id` does
    /// not hold the lease.
    async fn job_started(
        &self,
        job_id: &str,
        agent_id: &str,
        token: u64,
    ) -> Result<bool, StoreError>;
    /// Ends an attempt; `None` if the token is stale or `agent_id` does not
    /// hold the lease (nothing changed).
    async fn finish_job(
        &self,
        job_id: &str,
        agent_id: &str,
        token: u64,
        outcome: Outcome,
        now_ms: i64,
    ) -> Result<Option<JobRecord>, StoreError>;
    /// Appends log lines of the current attempt, up to `max_lines` per job;
    /// false if the token is stale.
    async fn append_job_logs(
        &self,
        job_id: &str,
        agent_id: &str,
        token: u64,
        lines: &[String],
        now_ms: i64,
        max_lines: u32,
    ) -> Result<bool, StoreError>;
    /// A job's log lines, in order.
    async fn job_logs(&self, job_id: &str, limit: u32) -> Result<Vec<String>, StoreError>;
    /// Cancels a job that has not finished; `None` if it has (or is not the
    /// org's). The record keeps the lease that was live.
    async fn cancel_job(
        &self,
        org_id: &str,
        job_id: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<Option<JobRecord>, StoreError>;
    /// Extends the leases the agent says it holds (`held`: job and token,
    /// whichever of its sessions claimed them) while they are still its;
    /// returns every (job, token) the store has assigned to the agent,
    /// renewed or not (an assignment still on its way, or one it lost).
    async fn renew_leases(
        &self,
        agent_id: &str,
        held: &[(String, u64)],
        expires_ms: i64,
    ) -> Result<Vec<(String, u64)>, StoreError>;
    /// Jobs whose lease expired (their agent stopped heart-beating) or
    /// whose attempt ran past its deadline: back to pending, or failed
    /// when no attempt is left.
    async fn sweep_jobs(&self, now_ms: i64) -> Result<Vec<Released>, StoreError>;
    /// Distinct (org, pool, type, credentials) of jobs that are pending or
    /// unschedulable, to check against the agents.
    async fn waiting_job_shapes(
        &self,
    ) -> Result<Vec<(String, String, String, Vec<String>)>, StoreError>;
    /// Moves the waiting jobs of one shape to unschedulable with `reason`,
    /// or (reason `None`) back to pending; returns how many changed.
    async fn set_schedulable(
        &self,
        shape: &(String, String, String, Vec<String>),
        reason: Option<&str>,
        now_ms: i64,
    ) -> Result<u64, StoreError>;
    /// Jobs per (org, pool, state), for metrics.
    async fn job_counts(&self) -> Result<Vec<(String, String, String, u64)>, StoreError>;
    /// Every lease a job had, in order.
    async fn job_attempts(&self, job_id: &str) -> Result<Vec<AttemptRecord>, StoreError>;
    /// Deletes jobs that finished before `before_ms`, with their logs and
    /// attempts; returns how many jobs.
    async fn prune_jobs(&self, before_ms: i64) -> Result<u64, StoreError>;
    /// Wakes the dispatchers of every replica (PostgreSQL NOTIFY; nothing
    /// on SQLite, which has one replica).
    async fn notify_jobs(&self) -> Result<(), StoreError>;
}
