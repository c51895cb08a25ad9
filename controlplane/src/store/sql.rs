//! The store on SQL, one code path for both backends through sqlx's `Any`
//! driver: SQLite (one file in the data directory, WAL mode; the embedded
//! default) and PostgreSQL (several replicas). The SQL text is the same on
//! both (`$N` placeholders, integer milliseconds, TEXT and BLOB/BYTEA); the
//! few dialect differences are explicit ([`Backend`]). Migrations are
//! embedded per backend and run on open (PostgreSQL's take an advisory
//! lock, so replicas starting together are safe).
//!
//! Transactions that write start with `BEGIN IMMEDIATE` on SQLite: a
//! deferred transaction that reads and then writes fails with SQLITE_BUSY
//! on the lock upgrade instead of waiting (research notes §5).

use std::{collections::BTreeMap, path::Path, time::Duration};

use async_trait::async_trait;
use sqlx::{
    Any, AnyPool, Executor, Row, Transaction,
    any::{AnyArguments, AnyPoolOptions, AnyRow},
    query::Query,
};

use super::{
    AgentRecord, ApiKeyRecord, AuditRecord, ConnectionRecord, EventRecord, HeartbeatRecord,
    HelloRecord, PoolRecord, Store, StoreError, TokenRecord,
};

/// Which database is behind the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The SQL store.
#[derive(Clone, Debug)]
pub struct SqlStore {
    pub(super) pool: AnyPool,
    pub(super) backend: Backend,
}

impl SqlStore {
    /// Opens (creating if needed) the SQLite file and migrates it.
    pub async fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let pool = AnyPoolOptions::new()
            // SQLite serialises writes anyway.
            .max_connections(4)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(
                        "PRAGMA busy_timeout = 5000; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
                    )
                    .await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        // Persistent in the file; set once.
        pool.execute("PRAGMA journal_mode = WAL").await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Self {
            pool,
            backend: Backend::Sqlite,
        })
    }

    /// Connects to PostgreSQL (`postgres://user:password@host:port/db`,
    /// `?sslmode=require` and the other libpq parameters work) and
    /// migrates it.
    pub async fn open_postgres(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Self {
            pool,
            backend: Backend::Postgres,
        })
    }

    /// A transaction that will write. Its error is sqlx's own, so that a
    /// caller can still tell a unique violation from other failures.
    pub(super) async fn begin_write(&self) -> Result<Transaction<'static, Any>, sqlx::Error> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }
}

fn json_map(row: &AnyRow, col: &'static str) -> Result<BTreeMap<String, String>, StoreError> {
    let text: String = row.try_get(col)?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
        what: col,
        detail: e.to_string(),
    })
}

pub(super) fn json_list(row: &AnyRow, col: &'static str) -> Result<Vec<String>, StoreError> {
    let text: String = row.try_get(col)?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
        what: col,
        detail: e.to_string(),
    })
}

/// The columns of an audit entry, in the order [`bind_audit`] binds them.
macro_rules! audit_columns {
    () => {
        "(org_id, time_ms, key_id, role, action, target, peer, result, detail)"
    };
}
pub(super) use audit_columns;

pub(super) const INSERT_AUDIT: &str = concat!(
    "INSERT INTO audit_events ",
    audit_columns!(),
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
);

/// Binds an audit entry's values after whatever `q` has bound already.
pub(super) fn bind_audit<'q>(
    q: Query<'q, Any, AnyArguments>,
    e: &'q AuditRecord,
) -> Query<'q, Any, AnyArguments> {
    q.bind(&e.org_id)
        .bind(e.time_ms)
        .bind(&e.key_id)
        .bind(&e.role)
        .bind(&e.action)
        .bind(&e.target)
        .bind(&e.peer)
        .bind(&e.result)
        .bind(&e.detail)
}

pub(super) fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("maps and lists of strings always serialise")
}

fn u32_col(row: &AnyRow, col: &'static str) -> Result<u32, StoreError> {
    let v: i64 = row.try_get(col)?;
    u32::try_from(v).map_err(|_| StoreError::Corrupt {
        what: col,
        detail: format!("{v} is out of range"),
    })
}

fn token(row: &AnyRow) -> Result<TokenRecord, StoreError> {
    Ok(TokenRecord {
        token_id: row.try_get("token_id")?,
        org_id: row.try_get("org_id")?,
        pool: row.try_get("pool")?,
        secret_hash: row.try_get("secret_hash")?,
        created_ms: row.try_get("created_ms")?,
        expires_ms: row.try_get("expires_ms")?,
        max_uses: u32_col(row, "max_uses")?,
        uses: u32_col(row, "uses")?,
        last_used_ms: row.try_get("last_used_ms")?,
        revoked_ms: row.try_get("revoked_ms")?,
        labels: json_map(row, "labels_json")?,
        description: row.try_get("description")?,
    })
}

fn agent(row: &AnyRow) -> Result<AgentRecord, StoreError> {
    let rtt: i64 = row.try_get("rtt_us")?;
    Ok(AgentRecord {
        agent_id: row.try_get("agent_id")?,
        org_id: row.try_get("org_id")?,
        pool: row.try_get("pool")?,
        token_id: row.try_get("token_id")?,
        enrolled_ms: row.try_get("enrolled_ms")?,
        cert_serial: row.try_get("cert_serial")?,
        cert_not_after_ms: row.try_get("cert_not_after_ms")?,
        hostname: row.try_get("hostname")?,
        version: row.try_get("version")?,
        labels: json_map(row, "labels_json")?,
        capabilities: json_list(row, "capabilities_json")?,
        credential_names: json_list(row, "credentials_json")?,
        config_hash: row.try_get("config_hash")?,
        last_connected_ms: row.try_get("last_connected_ms")?,
        last_heartbeat_ms: row.try_get("last_heartbeat_ms")?,
        rtt_us: u64::try_from(rtt).unwrap_or(0),
        clock_skew_ms: row.try_get("clock_skew_ms")?,
        revoked_ms: row.try_get("revoked_ms")?,
        drained_ms: row.try_get("drained_ms")?,
    })
}

fn pool(row: &AnyRow) -> Result<PoolRecord, StoreError> {
    Ok(PoolRecord {
        org_id: row.try_get("org_id")?,
        name: row.try_get("name")?,
        pinned_version: row.try_get("pinned_version")?,
        pinned_config_hash: row.try_get("pinned_config_hash")?,
        updated_ms: row.try_get("updated_ms")?,
    })
}

fn event(row: &AnyRow) -> Result<EventRecord, StoreError> {
    let id: i64 = row.try_get("id")?;
    Ok(EventRecord {
        id: u64::try_from(id).map_err(|_| StoreError::Corrupt {
            what: "agent_events.id",
            detail: format!("{id} is negative"),
        })?,
        org_id: row.try_get("org_id")?,
        agent_id: row.try_get("agent_id")?,
        pool: row.try_get("pool")?,
        time_ms: row.try_get("time_ms")?,
        kind: row.try_get("kind")?,
        detail: row.try_get("detail")?,
        alert: row.try_get::<i64, _>("alert")? != 0,
    })
}

fn connection(row: &AnyRow) -> Result<ConnectionRecord, StoreError> {
    let port: i64 = row.try_get("target_port")?;
    Ok(ConnectionRecord {
        org_id: row.try_get("org_id")?,
        name: row.try_get("name")?,
        pool: row.try_get("pool")?,
        target_host: row.try_get("target_host")?,
        target_port: u16::try_from(port).map_err(|_| StoreError::Corrupt {
            what: "target_port",
            detail: format!("{port} is out of range"),
        })?,
        gateway_listen: row.try_get("gateway_listen")?,
        created_ms: row.try_get("created_ms")?,
    })
}

fn api_key(row: &AnyRow) -> Result<ApiKeyRecord, StoreError> {
    Ok(ApiKeyRecord {
        key_id: row.try_get("key_id")?,
        org_id: row.try_get("org_id")?,
        role: row.try_get("role")?,
        secret_hash: row.try_get("secret_hash")?,
        created_ms: row.try_get("created_ms")?,
        description: row.try_get("description")?,
        revoked_ms: row.try_get("revoked_ms")?,
        connections: json_list(row, "connections_json")?,
        pools: json_list(row, "pools_json")?,
        last_used_ms: row.try_get("last_used_ms")?,
    })
}

fn audit(row: &AnyRow) -> Result<AuditRecord, StoreError> {
    Ok(AuditRecord {
        org_id: row.try_get("org_id")?,
        time_ms: row.try_get("time_ms")?,
        key_id: row.try_get("key_id")?,
        role: row.try_get("role")?,
        action: row.try_get("action")?,
        target: row.try_get("target")?,
        peer: row.try_get("peer")?,
        result: row.try_get("result")?,
        detail: row.try_get("detail")?,
    })
}

pub(super) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

#[async_trait]
impl Store for SqlStore {
    fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn insert_token(&self, t: &TokenRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO enrollment_tokens (token_id, org_id, pool, secret_hash, created_ms, expires_ms, \
             max_uses, uses, last_used_ms, revoked_ms, labels_json, description) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&t.token_id)
        .bind(&t.org_id)
        .bind(&t.pool)
        .bind(&t.secret_hash)
        .bind(t.created_ms)
        .bind(t.expires_ms)
        .bind(i64::from(t.max_uses))
        .bind(i64::from(t.uses))
        .bind(t.last_used_ms)
        .bind(t.revoked_ms)
        .bind(to_json(&t.labels))
        .bind(&t.description)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_token(&self, token_id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM enrollment_tokens WHERE token_id = $1")
            .bind(token_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(token).transpose()
    }

    async fn list_tokens(&self, org_id: &str) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM enrollment_tokens WHERE org_id = $1 ORDER BY created_ms DESC, token_id",
        )
        .bind(org_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(token).collect()
    }

    async fn revoke_token(
        &self,
        org_id: &str,
        token_id: &str,
        now_ms: i64,
    ) -> Result<Option<TokenRecord>, StoreError> {
        sqlx::query(
            "UPDATE enrollment_tokens SET revoked_ms = $1 WHERE org_id = $2 AND token_id = $3 AND revoked_ms = 0",
        )
        .bind(now_ms)
        .bind(org_id)
        .bind(token_id)
        .execute(&self.pool)
        .await?;
        let t = self.get_token(token_id).await?;
        Ok(t.filter(|t| t.org_id == org_id))
    }

    async fn enroll(
        &self,
        token_id: &str,
        now_ms: i64,
        a: &AgentRecord,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let used = sqlx::query(
            "UPDATE enrollment_tokens SET uses = uses + 1, last_used_ms = $1 \
             WHERE token_id = $2 AND revoked_ms = 0 AND expires_ms > $3 AND uses < max_uses",
        )
        .bind(now_ms)
        .bind(token_id)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        if used.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO agents (agent_id, org_id, pool, token_id, enrolled_ms, cert_serial, cert_not_after_ms, \
             hostname, version, labels_json) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&a.agent_id)
        .bind(&a.org_id)
        .bind(&a.pool)
        .bind(&a.token_id)
        .bind(a.enrolled_ms)
        .bind(&a.cert_serial)
        .bind(a.cert_not_after_ms)
        .bind(&a.hostname)
        .bind(&a.version)
        .bind(to_json(&a.labels))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn get_agent(&self, agent_id: &str) -> Result<Option<AgentRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM agents WHERE agent_id = $1")
            .bind(agent_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(agent).transpose()
    }

    async fn list_agents(&self, org_id: &str) -> Result<Vec<AgentRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM agents WHERE org_id = $1 ORDER BY pool, agent_id")
            .bind(org_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(agent).collect()
    }

    async fn agent_counts(
        &self,
        offline_before_ms: i64,
    ) -> Result<Vec<(String, String, u64, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT org_id, pool, \
             SUM(CASE WHEN revoked_ms = 0 AND last_heartbeat_ms < $1 THEN 1 ELSE 0 END) AS offline, \
             SUM(CASE WHEN revoked_ms != 0 THEN 1 ELSE 0 END) AS revoked FROM agents GROUP BY org_id, pool ORDER BY org_id, pool",
        )
        .bind(offline_before_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let n = |c: &str| -> Result<u64, sqlx::Error> {
                    Ok(u64::try_from(r.try_get::<i64, _>(c)?).unwrap_or(0))
                };
                Ok((
                    r.try_get("org_id")?,
                    r.try_get("pool")?,
                    n("offline")?,
                    n("revoked")?,
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    async fn record_hello(
        &self,
        agent_id: &str,
        h: &HelloRecord,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE agents SET hostname = $1, version = $2, labels_json = $3, capabilities_json = $4, \
             credentials_json = $5, config_hash = $6, last_connected_ms = $7 WHERE agent_id = $8",
        )
        .bind(&h.hostname)
        .bind(&h.version)
        .bind(to_json(&h.labels))
        .bind(to_json(&h.capabilities))
        .bind(to_json(&h.credential_names))
        .bind(&h.config_hash)
        .bind(now_ms)
        .bind(agent_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn record_heartbeats(
        &self,
        beats: &[HeartbeatRecord],
        keep_samples: u32,
    ) -> Result<(), StoreError> {
        self.write_heartbeats(beats, keep_samples).await
    }

    async fn insert_connection(&self, c: &ConnectionRecord) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO connections (org_id, name, pool, target_host, target_port, gateway_listen, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&c.org_id)
        .bind(&c.name)
        .bind(&c.pool)
        .bind(&c.target_host)
        .bind(i64::from(c.target_port))
        .bind(&c.gateway_listen)
        .bind(c.created_ms)
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::AlreadyExists),
            Err(e) => Err(e.into()),
        }
    }

    async fn get_connection(
        &self,
        org_id: &str,
        name: &str,
    ) -> Result<Option<ConnectionRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM connections WHERE org_id = $1 AND name = $2")
            .bind(org_id)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(connection).transpose()
    }

    async fn list_connections(
        &self,
        org_id: Option<&str>,
    ) -> Result<Vec<ConnectionRecord>, StoreError> {
        let rows = match org_id {
            Some(org) => {
                sqlx::query("SELECT * FROM connections WHERE org_id = $1 ORDER BY name")
                    .bind(org)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("SELECT * FROM connections ORDER BY org_id, name")
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(connection).collect()
    }

    async fn delete_connection(&self, org_id: &str, name: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM connections WHERE org_id = $1 AND name = $2")
            .bind(org_id)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn insert_api_key(&self, k: &ApiKeyRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_keys (key_id, org_id, role, secret_hash, created_ms, description, revoked_ms, \
             connections_json, pools_json, last_used_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&k.key_id)
        .bind(&k.org_id)
        .bind(&k.role)
        .bind(&k.secret_hash)
        .bind(k.created_ms)
        .bind(&k.description)
        .bind(k.revoked_ms)
        .bind(to_json(&k.connections))
        .bind(to_json(&k.pools))
        .bind(k.last_used_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM api_keys WHERE key_id = $1")
            .bind(key_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(api_key).transpose()
    }

    async fn count_api_keys(&self) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM api_keys")
            .fetch_one(&self.pool)
            .await?;
        let n: i64 = row.try_get("n")?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn list_api_keys(&self, org_id: &str) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM api_keys WHERE org_id = $1 ORDER BY created_ms DESC, key_id",
        )
        .bind(org_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(api_key).collect()
    }

    async fn revoke_api_key(
        &self,
        org_id: &str,
        key_id: &str,
        now_ms: i64,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        sqlx::query(
            "UPDATE api_keys SET revoked_ms = $1 WHERE org_id = $2 AND key_id = $3 AND revoked_ms = 0",
        )
        .bind(now_ms)
        .bind(org_id)
        .bind(key_id)
        .execute(&self.pool)
        .await?;
        Ok(self
            .get_api_key(key_id)
            .await?
            .filter(|k| k.org_id == org_id))
    }

    async fn touch_api_key(&self, key_id: &str, now_ms: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE api_keys SET last_used_ms = $1 WHERE key_id = $2")
            .bind(now_ms)
            .bind(key_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn revoke_agent(
        &self,
        org_id: &str,
        agent_id: &str,
        now_ms: i64,
    ) -> Result<Option<AgentRecord>, StoreError> {
        sqlx::query(
            "UPDATE agents SET revoked_ms = $1 WHERE org_id = $2 AND agent_id = $3 AND revoked_ms = 0",
        )
        .bind(now_ms)
        .bind(org_id)
        .bind(agent_id)
        .execute(&self.pool)
        .await?;
        Ok(self
            .get_agent(agent_id)
            .await?
            .filter(|a| a.org_id == org_id))
    }

    async fn renew_agent(
        &self,
        agent_id: &str,
        cert_serial: &str,
        cert_not_after_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE agents SET cert_serial = $1, cert_not_after_ms = $2 WHERE agent_id = $3",
        )
        .bind(cert_serial)
        .bind(cert_not_after_ms)
        .bind(agent_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn insert_audit(&self, e: &AuditRecord) -> Result<(), StoreError> {
        bind_audit(sqlx::query(INSERT_AUDIT), e)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn list_audit(
        &self,
        org_id: &str,
        before_ms: i64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM audit_events WHERE org_id = $1 AND time_ms < $2 ORDER BY time_ms DESC, id DESC LIMIT $3",
        )
        .bind(org_id)
        .bind(before_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(audit).collect()
    }

    async fn set_agent_drained(
        &self,
        org_id: &str,
        agent_id: &str,
        drained_ms: i64,
    ) -> Result<Option<AgentRecord>, StoreError> {
        let row = sqlx::query(
            "UPDATE agents SET drained_ms = $1 WHERE org_id = $2 AND agent_id = $3 RETURNING *",
        )
        .bind(drained_ms)
        .bind(org_id)
        .bind(agent_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(agent).transpose()
    }

    async fn get_pool(&self, org_id: &str, name: &str) -> Result<Option<PoolRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM pools WHERE org_id = $1 AND name = $2")
            .bind(org_id)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(pool).transpose()
    }

    async fn list_pools(&self, org_id: &str) -> Result<Vec<PoolRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM pools WHERE org_id = $1 ORDER BY name")
            .bind(org_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(pool).collect()
    }

    async fn upsert_pool(&self, p: &PoolRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO pools (org_id, name, pinned_version, pinned_config_hash, updated_ms) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (org_id, name) DO UPDATE SET \
             pinned_version = excluded.pinned_version, pinned_config_hash = excluded.pinned_config_hash, \
             updated_ms = excluded.updated_ms",
        )
        .bind(&p.org_id)
        .bind(&p.name)
        .bind(&p.pinned_version)
        .bind(&p.pinned_config_hash)
        .bind(p.updated_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_health_samples(
        &self,
        agent_id: &str,
        limit: u32,
    ) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT time_ms, sample FROM health_samples WHERE agent_id = $1 \
             ORDER BY time_ms DESC, id DESC LIMIT $2",
        )
        .bind(agent_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut out = rows
            .iter()
            .map(|r| Ok((r.try_get("time_ms")?, r.try_get("sample")?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        out.reverse();
        Ok(out)
    }

    async fn insert_event(&self, e: &EventRecord) -> Result<u64, StoreError> {
        let row = sqlx::query(
            "INSERT INTO agent_events (org_id, agent_id, pool, time_ms, kind, detail, alert) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(&e.org_id)
        .bind(&e.agent_id)
        .bind(&e.pool)
        .bind(e.time_ms)
        .bind(&e.kind)
        .bind(&e.detail)
        .bind(i64::from(e.alert))
        .fetch_one(&self.pool)
        .await?;
        let id: i64 = row.try_get("id")?;
        u64::try_from(id).map_err(|_| StoreError::Corrupt {
            what: "agent_events.id",
            detail: format!("{id} is negative"),
        })
    }

    async fn list_events(
        &self,
        org_id: &str,
        after_id: u64,
        agent_id: Option<&str>,
        limit: u32,
        newest: bool,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let query = if newest {
            "SELECT * FROM (SELECT * FROM agent_events WHERE org_id = $1 AND id > $2 \
             AND ($3 = '' OR agent_id = $3) ORDER BY id DESC LIMIT $4) AS newest ORDER BY id"
        } else {
            "SELECT * FROM agent_events WHERE org_id = $1 AND id > $2 AND ($3 = '' OR agent_id = $3) \
             ORDER BY id LIMIT $4"
        };
        let rows = sqlx::query(query)
            .bind(org_id)
            .bind(i64::try_from(after_id).unwrap_or(i64::MAX))
            .bind(agent_id.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(event).collect()
    }

    async fn last_event_id(&self, org_id: &str) -> Result<u64, StoreError> {
        let row =
            sqlx::query("SELECT COALESCE(MAX(id), 0) AS id FROM agent_events WHERE org_id = $1")
                .bind(org_id)
                .fetch_one(&self.pool)
                .await?;
        let id: i64 = row.try_get("id")?;
        Ok(u64::try_from(id).unwrap_or(0))
    }

    async fn prune_events(&self, before_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM agent_events WHERE time_ms < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
