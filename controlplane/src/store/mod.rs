//! The control plane's durable state behind one trait, on two backends:
//! SQLite (the embedded default, zero setup) and PostgreSQL (several
//! replicas). Times are integer Unix milliseconds, 0 means "never"; secrets
//! are stored only as SHA-256 hashes (invariant 6).

pub mod jobs;
mod sql;
mod sql_heartbeats;
mod sql_jobs;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use async_trait::async_trait;

pub use self::sql::{Backend, SqlStore};

/// An enrollment token (the secret only as its hash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    pub token_id: String,
    pub org_id: String,
    pub pool: String,
    pub secret_hash: Vec<u8>,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub max_uses: u32,
    pub uses: u32,
    pub last_used_ms: i64,
    pub revoked_ms: i64,
    pub labels: BTreeMap<String, String>,
    pub description: String,
}

impl TokenRecord {
    /// Whether an agent may still enroll with it at `now`.
    pub fn is_usable(&self, now_ms: i64) -> bool {
        self.revoked_ms == 0 && self.expires_ms > now_ms && self.uses < self.max_uses
    }
}

/// An enrolled agent and what it last reported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentRecord {
    pub agent_id: String,
    pub org_id: String,
    pub pool: String,
    pub token_id: String,
    pub enrolled_ms: i64,
    pub cert_serial: String,
    pub cert_not_after_ms: i64,
    pub hostname: String,
    pub version: String,
    pub labels: BTreeMap<String, String>,
    pub capabilities: Vec<String>,
    pub credential_names: Vec<String>,
    pub config_hash: String,
    pub last_connected_ms: i64,
    pub last_heartbeat_ms: i64,
    pub rtt_us: u64,
    pub clock_skew_ms: i64,
    pub revoked_ms: i64,
    /// When an operator drained it (0 = not drained); survives reconnects.
    pub drained_ms: i64,
}

/// What an agent's Hello tells the store.
#[derive(Clone, Debug, Default)]
pub struct HelloRecord {
    pub hostname: String,
    pub version: String,
    pub labels: BTreeMap<String, String>,
    pub capabilities: Vec<String>,
    pub credential_names: Vec<String>,
    pub config_hash: String,
}

/// An agent's heartbeat, as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatRecord {
    pub agent_id: String,
    pub at_ms: i64,
    pub rtt_us: u64,
    pub clock_skew_ms: i64,
    /// A health sample (encoded) for the agent's history, when one is due.
    pub history_sample: Option<Vec<u8>>,
}

/// A named route: pool + target, maybe with a gateway listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionRecord {
    pub org_id: String,
    pub name: String,
    pub pool: String,
    pub target_host: String,
    pub target_port: u16,
    pub gateway_listen: String,
    pub created_ms: i64,
}

/// An API key (the secret only as its hash).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub key_id: String,
    pub org_id: String,
    /// "admin", "operator", "viewer" or "dialer".
    pub role: String,
    pub secret_hash: Vec<u8>,
    pub created_ms: i64,
    pub description: String,
    pub revoked_ms: i64,
    /// Connections a dialer key may dial.
    pub connections: Vec<String>,
    /// Pools a dialer key may dial any target of.
    pub pools: Vec<String>,
    pub last_used_ms: i64,
}

/// One admin action, as the audit log keeps it. Never holds a secret.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditRecord {
    pub org_id: String,
    pub time_ms: i64,
    pub key_id: String,
    pub role: String,
    pub action: String,
    pub target: String,
    pub peer: String,
    pub result: String,
    pub detail: String,
}

/// A pool's pins: what its agents should run (drift detection).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolRecord {
    pub org_id: String,
    pub name: String,
    pub pinned_version: String,
    pub pinned_config_hash: String,
    pub updated_ms: i64,
}

/// Something that happened to an agent (state change or alert).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventRecord {
    /// Assigned by the store, increasing.
    pub id: u64,
    pub org_id: String,
    pub agent_id: String,
    pub pool: String,
    pub time_ms: i64,
    pub kind: String,
    pub detail: String,
    pub alert: bool,
}

/// A store failure. The detail goes to the log; callers show an opaque
/// message (no SQL or paths in a gRPC status).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row exists already (a unique name).
    #[error("already exists")]
    AlreadyExists,
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The schema could not be brought up to date.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value could not be read back.
    #[error("corrupt stored value in {what}: {detail}")]
    Corrupt {
        /// Which column.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
}

/// The control plane's durable state (with the job queue).
#[async_trait]
pub trait Store: jobs::JobStore + Send + Sync + 'static {
    /// "sqlite" or "postgres".
    fn backend(&self) -> &'static str;
    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Stores a new token.
    async fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError>;
    /// One token by id, in any org (enrollment looks tokens up before it
    /// knows the org).
    async fn get_token(&self, token_id: &str) -> Result<Option<TokenRecord>, StoreError>;
    /// Tokens of an org, newest first.
    async fn list_tokens(&self, org_id: &str) -> Result<Vec<TokenRecord>, StoreError>;
    /// Marks a token revoked; `None` if the org has no such token.
    async fn revoke_token(
        &self,
        org_id: &str,
        token_id: &str,
        now_ms: i64,
    ) -> Result<Option<TokenRecord>, StoreError>;
    /// In one transaction: counts a use of the token if it is still usable
    /// at `now_ms`, and inserts the agent. Returns false (and changes
    /// nothing) if the token was used up, expired or revoked meanwhile.
    async fn enroll(
        &self,
        token_id: &str,
        now_ms: i64,
        agent: &AgentRecord,
    ) -> Result<bool, StoreError>;

    /// One agent.
    async fn get_agent(&self, agent_id: &str) -> Result<Option<AgentRecord>, StoreError>;
    /// Agents of an org, by pool and id.
    async fn list_agents(&self, org_id: &str) -> Result<Vec<AgentRecord>, StoreError>;
    /// Per org and pool: agents not revoked whose last heartbeat is older
    /// than `offline_before_ms` (offline on every replica), and revoked
    /// agents (metrics).
    async fn agent_counts(
        &self,
        offline_before_ms: i64,
    ) -> Result<Vec<(String, String, u64, u64)>, StoreError>;
    /// Records what a new session's Hello said.
    async fn record_hello(
        &self,
        agent_id: &str,
        hello: &HelloRecord,
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// Records heartbeats, many agents' in one transaction (see
    /// `crate::heartbeats`): each agent's newest of the batch, and each
    /// health sample, keeping the newest `keep_samples` per agent.
    async fn record_heartbeats(
        &self,
        beats: &[HeartbeatRecord],
        keep_samples: u32,
    ) -> Result<(), StoreError>;

    /// Stores a new connection; [`StoreError::AlreadyExists`] if the name is
    /// taken in the org.
    async fn insert_connection(&self, conn: &ConnectionRecord) -> Result<(), StoreError>;
    /// One connection of an org.
    async fn get_connection(
        &self,
        org_id: &str,
        name: &str,
    ) -> Result<Option<ConnectionRecord>, StoreError>;
    /// Connections of an org (all orgs with `None`), by name.
    async fn list_connections(
        &self,
        org_id: Option<&str>,
    ) -> Result<Vec<ConnectionRecord>, StoreError>;
    /// Removes a connection; false if there was none.
    async fn delete_connection(&self, org_id: &str, name: &str) -> Result<bool, StoreError>;

    /// Stores a new API key.
    async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;
    /// One API key by id.
    async fn get_api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// How many API keys exist (the bootstrap key is made when none does).
    async fn count_api_keys(&self) -> Result<u64, StoreError>;
    /// Keys of an org, newest first.
    async fn list_api_keys(&self, org_id: &str) -> Result<Vec<ApiKeyRecord>, StoreError>;
    /// Marks a key revoked; `None` if the org has no such key.
    async fn revoke_api_key(
        &self,
        org_id: &str,
        key_id: &str,
        now_ms: i64,
    ) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// Records that a key was used.
    async fn touch_api_key(&self, key_id: &str, now_ms: i64) -> Result<(), StoreError>;

    /// Marks an agent revoked; `None` if the org has no such agent.
    async fn revoke_agent(
        &self,
        org_id: &str,
        agent_id: &str,
        now_ms: i64,
    ) -> Result<Option<AgentRecord>, StoreError>;
    /// Records a renewed certificate.
    async fn renew_agent(
        &self,
        agent_id: &str,
        cert_serial: &str,
        cert_not_after_ms: i64,
    ) -> Result<(), StoreError>;

    /// Sets or clears an agent's drain mark (`drained_ms` 0 clears);
    /// `None` if the org has no such agent.
    async fn set_agent_drained(
        &self,
        org_id: &str,
        agent_id: &str,
        drained_ms: i64,
    ) -> Result<Option<AgentRecord>, StoreError>;

    /// A pool's pins, if it has any.
    async fn get_pool(&self, org_id: &str, name: &str) -> Result<Option<PoolRecord>, StoreError>;
    /// Pins of every pool of an org that has some.
    async fn list_pools(&self, org_id: &str) -> Result<Vec<PoolRecord>, StoreError>;
    /// Creates or replaces a pool's pins.
    async fn upsert_pool(&self, pool: &PoolRecord) -> Result<(), StoreError>;

    /// The agent's newest `limit` samples, oldest first.
    async fn list_health_samples(
        &self,
        agent_id: &str,
        limit: u32,
    ) -> Result<Vec<(i64, Vec<u8>)>, StoreError>;

    /// Appends an event; returns its id.
    async fn insert_event(&self, event: &EventRecord) -> Result<u64, StoreError>;
    /// An org's events with an id above `after_id`, optionally of one
    /// agent: the oldest `limit` of them, or with `newest` the newest; in
    /// both cases oldest first.
    async fn list_events(
        &self,
        org_id: &str,
        after_id: u64,
        agent_id: Option<&str>,
        limit: u32,
        newest: bool,
    ) -> Result<Vec<EventRecord>, StoreError>;
    /// The id of the org's newest event (0 = none).
    async fn last_event_id(&self, org_id: &str) -> Result<u64, StoreError>;
    /// Deletes events older than `before_ms`; returns how many.
    async fn prune_events(&self, before_ms: i64) -> Result<u64, StoreError>;

    /// Appends to the audit log.
    async fn insert_audit(&self, event: &AuditRecord) -> Result<(), StoreError>;
    /// An org's audit log before `before_ms`, newest first.
    async fn list_audit(
        &self,
        org_id: &str,
        before_ms: i64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError>;
}
