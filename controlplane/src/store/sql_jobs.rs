//! The job queue on SQL (both backends). The claim is one UPDATE of the
//! chosen pending row, which repeats `state = 'pending'` in its own WHERE
//! and, on PostgreSQL, picks the row `FOR UPDATE SKIP LOCKED`: without
//! both, concurrent claimers hand the same job out twice (research notes
//! §5, measured). SQLite serialises claims in `BEGIN IMMEDIATE`.

use async_trait::async_trait;
use sqlx::{Row, any::AnyRow};

use sqlx::{Any, any::AnyArguments, query::Query};

use super::{
    AuditRecord, StoreError,
    jobs::{AttemptRecord, Claimant, JobRecord, JobStore, Outcome, Released, Submitted, state},
    sql::{
        Backend, INSERT_AUDIT, SqlStore, audit_columns, bind_audit, is_unique_violation, json_list,
        to_json,
    },
};

fn u32_of(row: &AnyRow, col: &'static str) -> Result<u32, StoreError> {
    let v: i64 = row.try_get(col)?;
    u32::try_from(v).map_err(|_| StoreError::Corrupt {
        what: col,
        detail: format!("{v} is out of range"),
    })
}

fn u64_of(row: &AnyRow, col: &'static str) -> Result<u64, StoreError> {
    let v: i64 = row.try_get(col)?;
    u64::try_from(v).map_err(|_| StoreError::Corrupt {
        what: col,
        detail: format!("{v} is negative"),
    })
}

fn job(row: &AnyRow) -> Result<JobRecord, StoreError> {
    let priority: i64 = row.try_get("priority")?;
    Ok(JobRecord {
        job_id: row.try_get("job_id")?,
        org_id: row.try_get("org_id")?,
        pool: row.try_get("pool")?,
        job_type: row.try_get("job_type")?,
        payload: row.try_get("payload")?,
        credential_names: json_list(row, "credentials_json")?,
        priority: i32::try_from(priority).map_err(|_| StoreError::Corrupt {
            what: "priority",
            detail: format!("{priority} is out of range"),
        })?,
        state: row.try_get("state")?,
        run_at_ms: row.try_get("run_at_ms")?,
        attempt_timeout_ms: row.try_get("attempt_timeout_ms")?,
        attempts: u32_of(row, "attempts")?,
        max_attempts: u32_of(row, "max_attempts")?,
        lease_token: u64_of(row, "lease_token")?,
        lease_agent: row.try_get("lease_agent")?,
        lease_session: row.try_get("lease_session")?,
        lease_expires_ms: row.try_get("lease_expires_ms")?,
        attempt_deadline_ms: row.try_get("attempt_deadline_ms")?,
        created_ms: row.try_get("created_ms")?,
        started_ms: row.try_get("started_ms")?,
        finished_ms: row.try_get("finished_ms")?,
        result: row.try_get("result")?,
        error: row.try_get("error")?,
        idempotency_key: row.try_get("idempotency_key")?,
    })
}

/// The end of a successful attempt: $1 job, $2 token, $3 result, $4 now,
/// $5 agent. A macro, so the PostgreSQL form below can `concat!` it.
macro_rules! succeed_sql {
    () => {
        "UPDATE jobs SET state = 'succeeded', result = $3, error = '', finished_ms = $4, \
         lease_session = '', lease_expires_ms = 0 \
         WHERE job_id = $1 AND lease_token = $2 AND lease_agent = $5 \
         AND state IN ('assigned', 'running') RETURNING *"
    };
}

/// The end of a failed attempt, back to pending if attempts remain and it
/// may be retried: $1 job, $2 token, $3 error, $4 now, $5 retry time or
/// -1 for none, $6 agent.
macro_rules! fail_sql {
    () => {
        "UPDATE jobs SET \
         state = CASE WHEN attempts < max_attempts AND $5 >= 0 THEN 'pending' ELSE 'failed' END, \
         finished_ms = CASE WHEN attempts < max_attempts AND $5 >= 0 THEN 0 ELSE $4 END, \
         run_at_ms = CASE WHEN $5 >= 0 THEN $5 ELSE run_at_ms END, \
         error = $3, lease_session = '', lease_expires_ms = 0, attempt_deadline_ms = 0 \
         WHERE job_id = $1 AND lease_token = $2 AND lease_agent = $6 \
         AND state IN ('assigned', 'running') RETURNING *"
    };
}

/// PostgreSQL ends the attempt's record in the same statement (one round
/// trip, one implicit transaction); SQLite does it next, in the same
/// `BEGIN IMMEDIATE`.
macro_rules! and_end_attempt {
    ($update:expr, $outcome:literal) => {
        concat!(
            "WITH done AS (",
            $update,
            "), attempt AS (UPDATE job_attempts SET ended_ms = $4, outcome = '",
            $outcome,
            "' FROM done WHERE job_attempts.job_id = done.job_id \
             AND job_attempts.lease_token = done.lease_token AND job_attempts.ended_ms = 0) \
             SELECT * FROM done"
        )
    };
}

/// A new job: $1 … $14 in the column order below.
macro_rules! submit_sql {
    () => {
        "INSERT INTO jobs (job_id, org_id, pool, job_type, payload, credentials_json, priority, state, \
         run_at_ms, attempt_timeout_ms, max_attempts, created_ms, idempotency_key, error) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING *"
    };
}

const SUBMIT: &str = submit_sql!();
/// On PostgreSQL one statement stores the job and its audit entry ($15 …
/// $23) and, when the job is pending, wakes the other replicas'
/// dispatchers (NOTIFY is sent at commit). Each part used to be a
/// statement and a commit of its own. The count makes PostgreSQL evaluate
/// `woken` (a SELECT in a CTE that nothing reads is skipped; an INSERT in
/// one always runs).
const SUBMIT_POSTGRES: &str = concat!(
    "WITH inserted AS (",
    submit_sql!(),
    "), audited AS (INSERT INTO audit_events ",
    audit_columns!(),
    " SELECT $15, $16, $17, $18, $19, $20, $21, $22, $23 FROM inserted), \
     woken AS (SELECT pg_notify('tether_jobs', '') FROM inserted WHERE state = 'pending') \
     SELECT inserted.*, (SELECT COUNT(*) FROM woken) AS woken FROM inserted"
);

impl SqlStore {
    /// SQLite stores the job and its audit entry in one transaction.
    async fn submit_sqlite<'q>(
        &self,
        insert_job: Query<'q, Any, AnyArguments>,
        a: &'q AuditRecord,
    ) -> Result<AnyRow, sqlx::Error> {
        let mut tx = self.begin_write().await?;
        let row = insert_job.fetch_one(&mut *tx).await?;
        bind_audit(sqlx::query(INSERT_AUDIT), a)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(row)
    }
}

const SUCCEED: &str = succeed_sql!();
const SUCCEED_POSTGRES: &str = and_end_attempt!(succeed_sql!(), "succeeded");
const FAIL: &str = fail_sql!();
const FAIL_POSTGRES: &str = and_end_attempt!(fail_sql!(), "failed");

fn token(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

/// Leases renewed per statement (two parameters each; SQLite allows
/// 32,766, PostgreSQL 65,535).
const RENEW_CHUNK: usize = 200;

/// SQLite evaluates the IN subquery once (the batch-claim test checks it),
/// inside `BEGIN IMMEDIATE`: no other writer can interleave.
const CLAIM_SQLITE: &str = "UPDATE jobs SET state = 'assigned', lease_token = lease_token + 1, \
    lease_agent = $1, lease_session = $2, lease_expires_ms = $3, attempts = attempts + 1, \
    started_ms = $4, attempt_deadline_ms = $4 + attempt_timeout_ms \
    WHERE job_id IN (SELECT job_id FROM jobs WHERE org_id = $5 AND pool = $6 AND state = 'pending' \
      AND run_at_ms <= $4 AND job_type IN (SELECT value FROM json_each($7)) \
      AND NOT EXISTS (SELECT 1 FROM json_each(jobs.credentials_json) AS need \
                      WHERE need.value NOT IN (SELECT value FROM json_each($8))) \
      ORDER BY priority DESC, created_ms, job_id LIMIT $9) \
    AND state = 'pending' RETURNING *";

/// The candidates are picked in a CTE, which PostgreSQL evaluates once: as
/// `job_id IN (SELECT … LIMIT n FOR UPDATE SKIP LOCKED)` the subquery is
/// evaluated again as rows change and one claim takes more than `n` jobs
/// (measured; the batch-claim test catches it). The credential check calls
/// `jsonb_contained` (what `<@` runs) as a function: the planner guesses a
/// function matches a third of the rows but the operator a thousandth, and
/// with that guess the generic plan read and sorted every pending job
/// instead of walking `jobs_claim` in order (a store test checks the plan).
/// The attempts are recorded
/// by the same statement (a data-modifying CTE reads what the UPDATE
/// returned): one round trip and one implicit transaction per claim.
pub(super) const CLAIM_POSTGRES: &str = "WITH picked AS (SELECT job_id FROM jobs WHERE org_id = $5 AND pool = $6 \
      AND state = 'pending' AND run_at_ms <= $4 AND jsonb_exists($7::jsonb, job_type) \
      AND jsonb_contained(credentials_json::jsonb, $8::jsonb) \
      ORDER BY priority DESC, created_ms, job_id LIMIT $9 FOR UPDATE SKIP LOCKED), \
    claimed AS (UPDATE jobs SET state = 'assigned', lease_token = jobs.lease_token + 1, \
    lease_agent = $1, lease_session = $2, lease_expires_ms = $3, attempts = jobs.attempts + 1, \
    started_ms = $4, attempt_deadline_ms = $4 + jobs.attempt_timeout_ms \
    FROM picked WHERE jobs.job_id = picked.job_id AND jobs.state = 'pending' RETURNING jobs.*), \
    attempt AS (INSERT INTO job_attempts (job_id, lease_token, agent_id, session_id, started_ms) \
    SELECT job_id, lease_token, $1, $2, $4 FROM claimed) \
    SELECT * FROM claimed";

#[async_trait]
impl JobStore for SqlStore {
    async fn submit_job(&self, j: &JobRecord, a: &AuditRecord) -> Result<Submitted, StoreError> {
        let postgres = self.backend == Backend::Postgres;
        let query = sqlx::query(if postgres { SUBMIT_POSTGRES } else { SUBMIT })
            .bind(&j.job_id)
            .bind(&j.org_id)
            .bind(&j.pool)
            .bind(&j.job_type)
            .bind(&j.payload)
            .bind(to_json(&j.credential_names))
            .bind(i64::from(j.priority))
            .bind(&j.state)
            .bind(j.run_at_ms)
            .bind(j.attempt_timeout_ms)
            .bind(i64::from(j.max_attempts))
            .bind(j.created_ms)
            .bind(&j.idempotency_key)
            .bind(&j.error);
        let inserted = if postgres {
            // The audit entry is $15 … $23 of the same statement.
            bind_audit(query, a).fetch_one(&self.pool).await
        } else {
            self.submit_sqlite(query, a).await
        };
        match inserted {
            Ok(row) => Ok(Submitted::New(job(&row)?)),
            Err(e) if is_unique_violation(&e) && !j.idempotency_key.is_empty() => {
                let row =
                    sqlx::query("SELECT * FROM jobs WHERE org_id = $1 AND idempotency_key = $2")
                        .bind(&j.org_id)
                        .bind(&j.idempotency_key)
                        .fetch_one(&self.pool)
                        .await?;
                Ok(Submitted::Existing(job(&row)?))
            }
            Err(e) if is_unique_violation(&e) => Err(StoreError::AlreadyExists),
            Err(e) => Err(e.into()),
        }
    }

    async fn get_job(&self, org_id: &str, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM jobs WHERE org_id = $1 AND job_id = $2")
            .bind(org_id)
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(job).transpose()
    }

    async fn list_jobs(
        &self,
        org_id: &str,
        pool: Option<&str>,
        state: Option<&str>,
        limit: u32,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM jobs WHERE org_id = $1 AND ($2 = '' OR pool = $2) AND ($3 = '' OR state = $3) \
             ORDER BY created_ms DESC, job_id DESC LIMIT $4",
        )
        .bind(org_id)
        .bind(pool.unwrap_or(""))
        .bind(state.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job).collect()
    }

    async fn claim_jobs(
        &self,
        c: &Claimant,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<JobRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let query = |sql| {
            sqlx::query(sql)
                .bind(&c.agent_id)
                .bind(&c.session_id)
                .bind(now_ms.saturating_add(c.lease_ms))
                .bind(now_ms)
                .bind(&c.org_id)
                .bind(&c.pool)
                .bind(to_json(&c.capabilities))
                .bind(to_json(&c.credential_names))
                .bind(i64::from(limit))
        };
        // RETURNING keeps no order: the queue's order again.
        let in_order = |rows: Vec<AnyRow>| {
            let mut claimed = rows.iter().map(job).collect::<Result<Vec<_>, _>>()?;
            claimed.sort_by(|a, b| {
                (b.priority, a.created_ms, &a.job_id).cmp(&(a.priority, b.created_ms, &b.job_id))
            });
            Ok::<_, StoreError>(claimed)
        };
        if self.backend == Backend::Postgres {
            return in_order(query(CLAIM_POSTGRES).fetch_all(&self.pool).await?);
        }
        let mut tx = self.begin_write().await?;
        let rows = query(CLAIM_SQLITE).fetch_all(&mut *tx).await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        let claimed = in_order(rows)?;
        for j in &claimed {
            sqlx::query(
                "INSERT INTO job_attempts (job_id, lease_token, agent_id, session_id, started_ms) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&j.job_id)
            .bind(token(j.lease_token))
            .bind(&c.agent_id)
            .bind(&c.session_id)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(claimed)
    }

    async fn job_started(&self, job_id: &str, agent_id: &str, t: u64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE jobs SET state = 'running' WHERE job_id = $1 AND lease_token = $2 \
             AND lease_agent = $3 AND state IN ('assigned', 'running')",
        )
        .bind(job_id)
        .bind(token(t))
        .bind(agent_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn finish_job(
        &self,
        job_id: &str,
        agent_id: &str,
        t: u64,
        outcome: Outcome,
        now_ms: i64,
    ) -> Result<Option<JobRecord>, StoreError> {
        let postgres = self.backend == Backend::Postgres;
        let (sqlite, on_postgres, label) = match &outcome {
            Outcome::Succeeded(_) => (SUCCEED, SUCCEED_POSTGRES, state::SUCCEEDED),
            Outcome::Failed { .. } => (FAIL, FAIL_POSTGRES, state::FAILED),
        };
        let sql = if postgres { on_postgres } else { sqlite };
        let query = match outcome {
            Outcome::Succeeded(result) => sqlx::query(sql)
                .bind(job_id)
                .bind(token(t))
                .bind(result)
                .bind(now_ms)
                .bind(agent_id),
            Outcome::Failed { error, retry_at_ms } => sqlx::query(sql)
                .bind(job_id)
                .bind(token(t))
                .bind(error)
                .bind(now_ms)
                .bind(retry_at_ms.unwrap_or(-1))
                .bind(agent_id),
        };
        if postgres {
            return query
                .fetch_optional(&self.pool)
                .await?
                .as_ref()
                .map(job)
                .transpose();
        }
        let mut tx = self.begin_write().await?;
        let row = query.fetch_optional(&mut *tx).await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(None);
        };
        sqlx::query(
            "UPDATE job_attempts SET ended_ms = $3, outcome = $4 \
             WHERE job_id = $1 AND lease_token = $2 AND ended_ms = 0",
        )
        .bind(job_id)
        .bind(token(t))
        .bind(now_ms)
        .bind(label)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        job(&row).map(Some)
    }

    async fn append_job_logs(
        &self,
        job_id: &str,
        agent_id: &str,
        t: u64,
        lines: &[String],
        now_ms: i64,
        max_lines: u32,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "UPDATE jobs SET log_lines = log_lines + $3 WHERE job_id = $1 AND lease_token = $2 \
             AND lease_agent = $4 AND state IN ('assigned', 'running') RETURNING log_lines",
        )
        .bind(job_id)
        .bind(token(t))
        .bind(i64::try_from(lines.len()).unwrap_or(i64::MAX))
        .bind(agent_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(false);
        };
        let total: i64 = row.try_get("log_lines")?;
        let before = total - i64::try_from(lines.len()).unwrap_or(0);
        let room = usize::try_from(i64::from(max_lines) - before).unwrap_or(0);
        for line in lines.iter().take(room) {
            sqlx::query("INSERT INTO job_logs (job_id, time_ms, line) VALUES ($1, $2, $3)")
                .bind(job_id)
                .bind(now_ms)
                .bind(line)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn job_logs(&self, job_id: &str, limit: u32) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT line FROM job_logs WHERE job_id = $1 ORDER BY id LIMIT $2")
            .bind(job_id)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.try_get("line").map_err(StoreError::from))
            .collect()
    }

    async fn cancel_job(
        &self,
        org_id: &str,
        job_id: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<Option<JobRecord>, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "UPDATE jobs SET state = 'cancelled', error = $3, finished_ms = $4, lease_expires_ms = 0 \
             WHERE org_id = $1 AND job_id = $2 \
             AND state IN ('pending', 'assigned', 'running', 'unschedulable') RETURNING *",
        )
        .bind(org_id)
        .bind(job_id)
        .bind(reason)
        .bind(now_ms)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(None);
        };
        let cancelled = job(&row)?;
        sqlx::query(
            "UPDATE job_attempts SET ended_ms = $3, outcome = 'cancelled' \
             WHERE job_id = $1 AND lease_token = $2 AND ended_ms = 0",
        )
        .bind(job_id)
        .bind(token(cancelled.lease_token))
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(cancelled))
    }

    async fn renew_leases(
        &self,
        agent_id: &str,
        held: &[(String, u64)],
        expires_ms: i64,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        // One statement for all of them: (job_id = $n AND lease_token = $n+1)
        // OR … — bounded by the agent's job limit.
        for chunk in held.chunks(RENEW_CHUNK) {
            let mut sql = String::from(
                "UPDATE jobs SET lease_expires_ms = $2 WHERE lease_agent = $1 \
                 AND state IN ('assigned', 'running') AND (",
            );
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(" OR ");
                }
                let n = 3 + 2 * i;
                sql.push_str(&format!("(job_id = ${n} AND lease_token = ${})", n + 1));
            }
            sql.push(')');
            // Safe: only placeholders are generated; every value is bound.
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(agent_id)
                .bind(expires_ms);
            for (job_id, lease_token) in chunk {
                q = q.bind(job_id.as_str()).bind(token(*lease_token));
            }
            q.execute(&self.pool).await?;
        }
        let rows = sqlx::query(
            "SELECT job_id, lease_token FROM jobs WHERE lease_agent = $1 \
             AND state IN ('assigned', 'running')",
        )
        .bind(agent_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("job_id")?, u64_of(r, "lease_token")?)))
            .collect()
    }

    async fn sweep_jobs(&self, now_ms: i64) -> Result<Vec<Released>, StoreError> {
        let mut tx = self.begin_write().await?;
        // lease_session and lease_token stay as they were: the caller stops
        // the handler that lost the job; the next claim overwrites them.
        let rows = sqlx::query(
            "UPDATE jobs SET \
             state = CASE WHEN attempts < max_attempts THEN 'pending' ELSE 'failed' END, \
             finished_ms = CASE WHEN attempts < max_attempts THEN 0 ELSE $1 END, \
             error = CASE WHEN lease_expires_ms < $1 \
               THEN 'agent ' || lease_agent || ' stopped answering (its lease expired) during attempt ' || attempts \
               ELSE 'attempt ' || attempts || ' ran past its deadline of ' || attempt_timeout_ms || ' ms' END, \
             run_at_ms = $1, lease_expires_ms = 0, attempt_deadline_ms = 0 \
             WHERE state IN ('assigned', 'running') \
             AND (lease_expires_ms < $1 OR (attempt_deadline_ms > 0 AND attempt_deadline_ms < $1)) \
             RETURNING *",
        )
        .bind(now_ms)
        .fetch_all(&mut *tx)
        .await?;
        let mut released = Vec::with_capacity(rows.len());
        for row in &rows {
            let j = job(row)?;
            let outcome = if j.error.contains("lease expired") {
                "lease_expired"
            } else {
                "deadline"
            };
            sqlx::query(
                "UPDATE job_attempts SET ended_ms = $3, outcome = $4 \
                 WHERE job_id = $1 AND lease_token = $2 AND ended_ms = 0",
            )
            .bind(&j.job_id)
            .bind(token(j.lease_token))
            .bind(now_ms)
            .bind(outcome)
            .execute(&mut *tx)
            .await?;
            released.push(Released {
                lost_token: j.lease_token,
                lost_session: j.lease_session.clone(),
                job: j,
            });
        }
        tx.commit().await?;
        Ok(released)
    }

    async fn waiting_job_shapes(
        &self,
    ) -> Result<Vec<(String, String, String, Vec<String>)>, StoreError> {
        // One part per state, so each reads its own partial index.
        let rows = sqlx::query(
            "SELECT org_id, pool, job_type, credentials_json FROM jobs WHERE state = 'pending' \
             UNION SELECT org_id, pool, job_type, credentials_json FROM jobs \
             WHERE state = 'unschedulable'",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("org_id")?,
                    r.try_get("pool")?,
                    r.try_get("job_type")?,
                    json_list(r, "credentials_json")?,
                ))
            })
            .collect()
    }

    async fn set_schedulable(
        &self,
        shape: &(String, String, String, Vec<String>),
        reason: Option<&str>,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let (org, pool, job_type, creds) = shape;
        let q = match reason {
            Some(why) => sqlx::query(
                "UPDATE jobs SET state = 'unschedulable', error = $5 WHERE org_id = $1 AND pool = $2 \
                 AND job_type = $3 AND credentials_json = $4 AND state = 'pending'",
            )
            .bind(org)
            .bind(pool)
            .bind(job_type)
            .bind(to_json(creds))
            .bind(why.to_owned()),
            None => sqlx::query(
                "UPDATE jobs SET state = 'pending', error = '', run_at_ms = $5 WHERE org_id = $1 \
                 AND pool = $2 AND job_type = $3 AND credentials_json = $4 AND state = 'unschedulable'",
            )
            .bind(org)
            .bind(pool)
            .bind(job_type)
            .bind(to_json(creds))
            .bind(now_ms),
        };
        Ok(q.execute(&self.pool).await?.rows_affected())
    }

    async fn job_counts(&self) -> Result<Vec<(String, String, String, u64)>, StoreError> {
        // One part per partial index (migration 0006): a condition on all
        // four states together would read the whole table, history too.
        let rows = sqlx::query(
            "SELECT org_id, pool, state, COUNT(*) AS n FROM jobs WHERE state = 'pending' \
             GROUP BY org_id, pool, state \
             UNION ALL SELECT org_id, pool, state, COUNT(*) AS n FROM jobs \
             WHERE state IN ('assigned', 'running') GROUP BY org_id, pool, state \
             UNION ALL SELECT org_id, pool, state, COUNT(*) AS n FROM jobs \
             WHERE state = 'unschedulable' GROUP BY org_id, pool, state \
             ORDER BY org_id, pool, state",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("org_id")?,
                    r.try_get("pool")?,
                    r.try_get("state")?,
                    u64_of(r, "n")?,
                ))
            })
            .collect()
    }

    async fn job_attempts(&self, job_id: &str) -> Result<Vec<AttemptRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM job_attempts WHERE job_id = $1 ORDER BY lease_token")
            .bind(job_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AttemptRecord {
                    job_id: r.try_get("job_id")?,
                    lease_token: u64_of(r, "lease_token")?,
                    agent_id: r.try_get("agent_id")?,
                    session_id: r.try_get("session_id")?,
                    started_ms: r.try_get("started_ms")?,
                    ended_ms: r.try_get("ended_ms")?,
                    outcome: r.try_get("outcome")?,
                })
            })
            .collect()
    }

    async fn prune_jobs(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        for table in [
            "DELETE FROM job_logs WHERE job_id IN \
             (SELECT job_id FROM jobs WHERE finished_ms > 0 AND finished_ms < $1)",
            "DELETE FROM job_attempts WHERE job_id IN \
             (SELECT job_id FROM jobs WHERE finished_ms > 0 AND finished_ms < $1)",
        ] {
            sqlx::query(table).bind(before_ms).execute(&mut *tx).await?;
        }
        let done = sqlx::query("DELETE FROM jobs WHERE finished_ms > 0 AND finished_ms < $1")
            .bind(before_ms)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    async fn notify_jobs(&self) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify('tether_jobs', '')")
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }
}
