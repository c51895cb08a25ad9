//! The embedded store: one SQLite file in the data directory (WAL mode,
//! migrations embedded and run on open). Writes that must be atomic run in
//! `BEGIN IMMEDIATE` transactions: a deferred transaction that reads and then
//! writes fails with SQLITE_BUSY on the lock upgrade instead of waiting
//! (research notes §5).

use std::{collections::BTreeMap, path::Path, time::Duration};

use async_trait::async_trait;
use sqlx::{
    Row, SqlitePool,
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
    },
};

use super::{
    AgentRecord, ApiKeyRecord, AuditRecord, ConnectionRecord, EventRecord, HelloRecord, PoolRecord,
    Store, StoreError, TokenRecord,
};

/// Connections in the pool; SQLite serialises writes anyway.
const POOL_SIZE: u32 = 4;

/// The SQLite store.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and migrates it.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(POOL_SIZE)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Self { pool })
    }
}

fn json_map(row: &SqliteRow, col: &'static str) -> Result<BTreeMap<String, String>, StoreError> {
    let text: String = row.try_get(col)?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
        what: col,
        detail: e.to_string(),
    })
}

fn json_list(row: &SqliteRow, col: &'static str) -> Result<Vec<String>, StoreError> {
    let text: String = row.try_get(col)?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
        what: col,
        detail: e.to_string(),
    })
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("maps and lists of strings always serialise")
}

fn u32_col(row: &SqliteRow, col: &'static str) -> Result<u32, StoreError> {
    let v: i64 = row.try_get(col)?;
    u32::try_from(v).map_err(|_| StoreError::Corrupt {
        what: col,
        detail: format!("{v} is out of range"),
    })
}

fn token(row: &SqliteRow) -> Result<TokenRecord, StoreError> {
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

fn agent(row: &SqliteRow) -> Result<AgentRecord, StoreError> {
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

fn pool(row: &SqliteRow) -> Result<PoolRecord, StoreError> {
    Ok(PoolRecord {
        org_id: row.try_get("org_id")?,
        name: row.try_get("name")?,
        pinned_version: row.try_get("pinned_version")?,
        pinned_config_hash: row.try_get("pinned_config_hash")?,
        updated_ms: row.try_get("updated_ms")?,
    })
}

fn event(row: &SqliteRow) -> Result<EventRecord, StoreError> {
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

fn connection(row: &SqliteRow) -> Result<ConnectionRecord, StoreError> {
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

fn api_key(row: &SqliteRow) -> Result<ApiKeyRecord, StoreError> {
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

fn audit(row: &SqliteRow) -> Result<AuditRecord, StoreError> {
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

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn insert_token(&self, t: &TokenRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO enrollment_tokens (token_id, org_id, pool, secret_hash, created_ms, expires_ms, \
             max_uses, uses, last_used_ms, revoked_ms, labels_json, description) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        let row = sqlx::query("SELECT * FROM enrollment_tokens WHERE token_id = ?")
            .bind(token_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(token).transpose()
    }

    async fn list_tokens(&self, org_id: &str) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM enrollment_tokens WHERE org_id = ? ORDER BY created_ms DESC, token_id",
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
            "UPDATE enrollment_tokens SET revoked_ms = ? WHERE org_id = ? AND token_id = ? AND revoked_ms = 0",
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let used = sqlx::query(
            "UPDATE enrollment_tokens SET uses = uses + 1, last_used_ms = ? \
             WHERE token_id = ? AND revoked_ms = 0 AND expires_ms > ? AND uses < max_uses",
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
             hostname, version, labels_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        let row = sqlx::query("SELECT * FROM agents WHERE agent_id = ?")
            .bind(agent_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(agent).transpose()
    }

    async fn list_agents(&self, org_id: &str) -> Result<Vec<AgentRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM agents WHERE org_id = ? ORDER BY pool, agent_id")
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
            "SELECT org_id, pool, SUM(revoked_ms = 0 AND last_heartbeat_ms < ?) AS offline, \
             SUM(revoked_ms != 0) AS revoked FROM agents GROUP BY org_id, pool ORDER BY org_id, pool",
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
            "UPDATE agents SET hostname = ?, version = ?, labels_json = ?, capabilities_json = ?, \
             credentials_json = ?, config_hash = ?, last_connected_ms = ? WHERE agent_id = ?",
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

    async fn record_heartbeat(
        &self,
        agent_id: &str,
        now_ms: i64,
        rtt_us: u64,
        clock_skew_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE agents SET last_heartbeat_ms = ?, rtt_us = ?, clock_skew_ms = ? WHERE agent_id = ?",
        )
        .bind(now_ms)
        .bind(i64::try_from(rtt_us).unwrap_or(i64::MAX))
        .bind(clock_skew_ms)
        .bind(agent_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn insert_connection(&self, c: &ConnectionRecord) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO connections (org_id, name, pool, target_host, target_port, gateway_listen, created_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
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
        let row = sqlx::query("SELECT * FROM connections WHERE org_id = ? AND name = ?")
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
                sqlx::query("SELECT * FROM connections WHERE org_id = ? ORDER BY name")
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
        let r = sqlx::query("DELETE FROM connections WHERE org_id = ? AND name = ?")
            .bind(org_id)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn insert_api_key(&self, k: &ApiKeyRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_keys (key_id, org_id, role, secret_hash, created_ms, description, revoked_ms, \
             connections_json, pools_json, last_used_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        let row = sqlx::query("SELECT * FROM api_keys WHERE key_id = ?")
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
        let rows =
            sqlx::query("SELECT * FROM api_keys WHERE org_id = ? ORDER BY created_ms DESC, key_id")
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
            "UPDATE api_keys SET revoked_ms = ? WHERE org_id = ? AND key_id = ? AND revoked_ms = 0",
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
        sqlx::query("UPDATE api_keys SET last_used_ms = ? WHERE key_id = ?")
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
            "UPDATE agents SET revoked_ms = ? WHERE org_id = ? AND agent_id = ? AND revoked_ms = 0",
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
        sqlx::query("UPDATE agents SET cert_serial = ?, cert_not_after_ms = ? WHERE agent_id = ?")
            .bind(cert_serial)
            .bind(cert_not_after_ms)
            .bind(agent_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn insert_audit(&self, e: &AuditRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_events (org_id, time_ms, key_id, role, action, target, peer, result, detail) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&e.org_id)
        .bind(e.time_ms)
        .bind(&e.key_id)
        .bind(&e.role)
        .bind(&e.action)
        .bind(&e.target)
        .bind(&e.peer)
        .bind(&e.result)
        .bind(&e.detail)
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
            "SELECT * FROM audit_events WHERE org_id = ? AND time_ms < ? ORDER BY time_ms DESC, id DESC LIMIT ?",
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
            "UPDATE agents SET drained_ms = ? WHERE org_id = ? AND agent_id = ? RETURNING *",
        )
        .bind(drained_ms)
        .bind(org_id)
        .bind(agent_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(agent).transpose()
    }

    async fn get_pool(&self, org_id: &str, name: &str) -> Result<Option<PoolRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM pools WHERE org_id = ? AND name = ?")
            .bind(org_id)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(pool).transpose()
    }

    async fn list_pools(&self, org_id: &str) -> Result<Vec<PoolRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM pools WHERE org_id = ? ORDER BY name")
            .bind(org_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(pool).collect()
    }

    async fn upsert_pool(&self, p: &PoolRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO pools (org_id, name, pinned_version, pinned_config_hash, updated_ms) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (org_id, name) DO UPDATE SET \
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

    async fn insert_health_sample(
        &self,
        agent_id: &str,
        time_ms: i64,
        sample: &[u8],
        keep: u32,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("INSERT INTO health_samples (agent_id, time_ms, sample) VALUES (?, ?, ?)")
            .bind(agent_id)
            .bind(time_ms)
            .bind(sample)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "DELETE FROM health_samples WHERE agent_id = ? AND rowid NOT IN \
             (SELECT rowid FROM health_samples WHERE agent_id = ? ORDER BY time_ms DESC, rowid DESC LIMIT ?)",
        )
        .bind(agent_id)
        .bind(agent_id)
        .bind(i64::from(keep))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_health_samples(
        &self,
        agent_id: &str,
        limit: u32,
    ) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT time_ms, sample FROM health_samples WHERE agent_id = ? \
             ORDER BY time_ms DESC, rowid DESC LIMIT ?",
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
             VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
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
    ) -> Result<Vec<EventRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM agent_events WHERE org_id = ? AND id > ? AND (? IS NULL OR agent_id = ?) \
             ORDER BY id LIMIT ?",
        )
        .bind(org_id)
        .bind(i64::try_from(after_id).unwrap_or(i64::MAX))
        .bind(agent_id)
        .bind(agent_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event).collect()
    }

    async fn last_event_id(&self, org_id: &str) -> Result<u64, StoreError> {
        let row =
            sqlx::query("SELECT COALESCE(MAX(id), 0) AS id FROM agent_events WHERE org_id = ?")
                .bind(org_id)
                .fetch_one(&self.pool)
                .await?;
        let id: i64 = row.try_get("id")?;
        Ok(u64::try_from(id).unwrap_or(0))
    }

    async fn prune_events(&self, before_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM agent_events WHERE time_ms < ?")
            .bind(before_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("t.db")).await.unwrap();
        (dir, s)
    }

    fn tok(id: &str, max_uses: u32) -> TokenRecord {
        TokenRecord {
            token_id: id.into(),
            org_id: "default".into(),
            pool: "p".into(),
            secret_hash: vec![1; 32],
            created_ms: 1,
            expires_ms: 1_000,
            max_uses,
            uses: 0,
            last_used_ms: 0,
            revoked_ms: 0,
            labels: BTreeMap::from([("zone".into(), "a".into())]),
            description: String::new(),
        }
    }

    fn agent_rec(id: &str) -> AgentRecord {
        AgentRecord {
            agent_id: id.into(),
            org_id: "default".into(),
            pool: "p".into(),
            token_id: "t1".into(),
            ..AgentRecord::default()
        }
    }

    #[tokio::test]
    async fn a_single_use_token_enrolls_exactly_once() {
        let (_d, s) = store().await;
        s.insert_token(&tok("t1", 1)).await.unwrap();
        assert!(s.enroll("t1", 10, &agent_rec("a1")).await.unwrap());
        assert!(!s.enroll("t1", 11, &agent_rec("a2")).await.unwrap());
        assert!(
            s.get_agent("a2").await.unwrap().is_none(),
            "a refused enrollment leaves no agent"
        );
        let t = s.get_token("t1").await.unwrap().unwrap();
        assert_eq!((t.uses, t.last_used_ms), (1, 10));
        assert_eq!(t.labels["zone"], "a");
    }

    #[tokio::test]
    async fn expired_or_revoked_tokens_do_not_enroll() {
        let (_d, s) = store().await;
        s.insert_token(&tok("t1", 5)).await.unwrap();
        assert!(
            !s.enroll("t1", 1_000, &agent_rec("a1")).await.unwrap(),
            "expired"
        );
        assert!(
            s.revoke_token("other-org", "t1", 5)
                .await
                .unwrap()
                .is_none()
        );
        assert!(s.revoke_token("default", "t1", 5).await.unwrap().is_some());
        assert!(
            !s.enroll("t1", 6, &agent_rec("a1")).await.unwrap(),
            "revoked"
        );
    }

    #[tokio::test]
    async fn connection_names_are_unique_per_org() {
        let (_d, s) = store().await;
        let c = ConnectionRecord {
            org_id: "default".into(),
            name: "pg".into(),
            pool: "p".into(),
            target_host: "127.0.0.1".into(),
            target_port: 5432,
            gateway_listen: "127.0.0.1:0".into(),
            created_ms: 1,
        };
        s.insert_connection(&c).await.unwrap();
        assert!(matches!(
            s.insert_connection(&c).await,
            Err(StoreError::AlreadyExists)
        ));
        assert_eq!(
            s.list_connections(Some("default")).await.unwrap(),
            vec![c.clone()]
        );
        assert!(s.list_connections(Some("other")).await.unwrap().is_empty());
        assert!(s.delete_connection("default", "pg").await.unwrap());
        assert!(!s.delete_connection("default", "pg").await.unwrap());
    }

    #[tokio::test]
    async fn hello_and_heartbeat_update_the_agent() {
        let (_d, s) = store().await;
        s.insert_token(&tok("t1", 1)).await.unwrap();
        s.enroll("t1", 10, &agent_rec("a1")).await.unwrap();
        let hello = HelloRecord {
            hostname: "h".into(),
            version: "0.1.0".into(),
            capabilities: vec!["probe".into()],
            ..HelloRecord::default()
        };
        s.record_hello("a1", &hello, 20).await.unwrap();
        s.record_heartbeat("a1", 30, 1500, -4).await.unwrap();
        let a = s.get_agent("a1").await.unwrap().unwrap();
        assert_eq!(a.hostname, "h");
        assert_eq!(a.capabilities, ["probe"]);
        assert_eq!(
            (
                a.last_connected_ms,
                a.last_heartbeat_ms,
                a.rtt_us,
                a.clock_skew_ms
            ),
            (20, 30, 1500, -4)
        );
    }
}

#[cfg(test)]
mod day2_tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("t.db")).await.unwrap();
        (dir, s)
    }

    #[tokio::test]
    async fn health_history_keeps_only_the_newest() {
        let (_d, s) = store().await;
        for t in 1..=10 {
            s.insert_health_sample("a1", t, &[u8::try_from(t).unwrap()], 3)
                .await
                .unwrap();
        }
        s.insert_health_sample("a2", 5, &[99], 3).await.unwrap();
        let kept = s.list_health_samples("a1", 100).await.unwrap();
        assert_eq!(kept, vec![(8, vec![8]), (9, vec![9]), (10, vec![10])]);
        assert_eq!(s.list_health_samples("a2", 100).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn events_page_by_id_and_org_and_prune_by_age() {
        let (_d, s) = store().await;
        let ev = |org: &str, agent: &str, t: i64| EventRecord {
            org_id: org.into(),
            agent_id: agent.into(),
            pool: "p".into(),
            time_ms: t,
            kind: "stale".into(),
            detail: String::new(),
            alert: true,
            id: 0,
        };
        let a = s.insert_event(&ev("o1", "a1", 10)).await.unwrap();
        let b = s.insert_event(&ev("o2", "a9", 20)).await.unwrap();
        let c = s.insert_event(&ev("o1", "a2", 30)).await.unwrap();
        assert!(a < b && b < c);
        let all = s.list_events("o1", 0, None, 10).await.unwrap();
        assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), [a, c]);
        assert!(all[0].alert);
        let after = s.list_events("o1", a, None, 10).await.unwrap();
        assert_eq!(after.len(), 1);
        let one = s.list_events("o1", 0, Some("a2"), 10).await.unwrap();
        assert_eq!(one[0].agent_id, "a2");
        assert_eq!(s.prune_events(25).await.unwrap(), 2);
        assert_eq!(s.list_events("o1", 0, None, 10).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn pool_pins_upsert() {
        let (_d, s) = store().await;
        assert_eq!(s.get_pool("o", "p").await.unwrap(), None);
        let mut p = PoolRecord {
            org_id: "o".into(),
            name: "p".into(),
            pinned_version: "1.0".into(),
            pinned_config_hash: String::new(),
            updated_ms: 1,
        };
        s.upsert_pool(&p).await.unwrap();
        p.pinned_config_hash = "abc".into();
        s.upsert_pool(&p).await.unwrap();
        assert_eq!(s.get_pool("o", "p").await.unwrap(), Some(p.clone()));
        assert_eq!(s.list_pools("o").await.unwrap(), vec![p]);
    }
}
