//! Heartbeat batches on SQL (both backends): a few statements per batch,
//! not a few per heartbeat. Each statement is a round trip to the
//! database (on SQLite a hand-off to sqlx's worker thread and back), which
//! at 10,000 agents cost more than the writes themselves.

use std::collections::HashMap;

use sqlx::AssertSqlSafe;

use super::{HeartbeatRecord, StoreError, sql::SqlStore};

// The statements below are built only from fixed text and generated
// placeholders; every value is bound, hence `AssertSqlSafe`.

/// Rows per statement: far below both backends' limit on bound
/// parameters (SQLite 32,766, PostgreSQL 65,535), and small enough that
/// binding stays cheap (sqlx looks up each `$N` of a SQLite statement by
/// name, so a statement's binding costs grow with the square of its
/// parameters).
const ROWS_PER_STATEMENT: usize = 100;

/// `(CAST($1 AS T1), …), (…)` for `rows` rows of `casts.len()` columns,
/// numbered from `$first`; an empty cast leaves the parameter bare. The
/// casts type the VALUES columns, which PostgreSQL cannot infer in an
/// UPDATE's FROM.
fn values(rows: usize, casts: &[&str], first: usize) -> String {
    let mut n = first;
    let mut out = Vec::with_capacity(rows);
    for _ in 0..rows {
        let cols: Vec<String> = casts
            .iter()
            .map(|t| {
                let p = if t.is_empty() {
                    format!("${n}")
                } else {
                    format!("CAST(${n} AS {t})")
                };
                n += 1;
                p
            })
            .collect();
        out.push(format!("({})", cols.join(", ")));
    }
    out.join(", ")
}

impl SqlStore {
    pub(super) async fn write_heartbeats(
        &self,
        beats: &[HeartbeatRecord],
        keep_samples: u32,
    ) -> Result<(), StoreError> {
        if beats.is_empty() {
            return Ok(());
        }
        // One row per agent in an UPDATE … FROM (which row of several would
        // win is undefined): the newest of the batch.
        let mut latest: HashMap<&str, &HeartbeatRecord> = HashMap::with_capacity(beats.len());
        for b in beats {
            if latest
                .get(b.agent_id.as_str())
                .is_none_or(|old| old.at_ms <= b.at_ms)
            {
                latest.insert(&b.agent_id, b);
            }
        }
        let latest: Vec<&HeartbeatRecord> = latest.into_values().collect();
        let samples: Vec<&HeartbeatRecord> = beats
            .iter()
            .filter(|b| b.history_sample.is_some())
            .collect();

        let mut tx = self.begin_write().await?;
        for chunk in latest.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "UPDATE agents SET last_heartbeat_ms = v.column2, rtt_us = v.column3, \
                 clock_skew_ms = v.column4 FROM (VALUES {}) AS v \
                 WHERE agents.agent_id = v.column1",
                values(chunk.len(), &["TEXT", "BIGINT", "BIGINT", "BIGINT"], 1)
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for b in chunk {
                q = q
                    .bind(b.agent_id.as_str())
                    .bind(b.at_ms)
                    .bind(i64::try_from(b.rtt_us).unwrap_or(i64::MAX))
                    .bind(b.clock_skew_ms);
            }
            q.execute(&mut *tx).await?;
        }
        for chunk in samples.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO health_samples (agent_id, time_ms, sample) VALUES {}",
                values(chunk.len(), &["", "", ""], 1)
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for b in chunk {
                q = q
                    .bind(b.agent_id.as_str())
                    .bind(b.at_ms)
                    .bind(b.history_sample.as_deref().unwrap_or_default());
            }
            q.execute(&mut *tx).await?;
            // Keep each sampled agent's newest `keep_samples`.
            let ids: Vec<String> = (2..chunk.len() + 2).map(|n| format!("${n}")).collect();
            let sql = format!(
                "DELETE FROM health_samples WHERE agent_id IN ({}) AND id NOT IN \
                 (SELECT h.id FROM health_samples h WHERE h.agent_id = health_samples.agent_id \
                 ORDER BY h.time_ms DESC, h.id DESC LIMIT $1)",
                ids.join(", ")
            );
            let mut q = sqlx::query(AssertSqlSafe(sql)).bind(i64::from(keep_samples));
            for b in chunk {
                q = q.bind(b.agent_id.as_str());
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
