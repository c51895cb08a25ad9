//! Job updates from agents: started, log lines, succeeded, failed,
//! rejected. Each names its lease token; the store refuses a stale one (or
//! one held by another agent) and the agent is told to stop the job.

use std::time::Duration;

use tether::proto::{JobAck, JobUpdate, job_update, server_frame};
use tracing::{debug, info, warn};

use super::{MAX_LOG_LINES, MAX_PAYLOAD, stop_on_agent};
use crate::{
    registry::LiveSession,
    state::{State, now_ms},
    store::jobs::Outcome,
};

/// Longest log line kept; longer ones are cut.
const MAX_LINE: usize = 8 * 1024;
/// Most lines one update may carry.
const MAX_LINES_PER_UPDATE: usize = 100;
/// First retry delay; doubles per attempt up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// When attempt `attempts` (1-based) failed, the next may start.
pub fn retry_at(now_ms: i64, attempts: u32) -> i64 {
    let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(16));
    let delay = (FIRST_BACKOFF * factor).min(MAX_BACKOFF);
    now_ms.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX))
}

fn cut(mut line: String) -> String {
    if line.len() > MAX_LINE {
        let mut at = MAX_LINE;
        while !line.is_char_boundary(at) {
            at -= 1;
        }
        line.truncate(at);
        line.push_str(" [cut]");
    }
    line
}

/// Handles one update from the agent of `live`.
pub async fn handle(state: &State, live: &LiveSession, u: JobUpdate) {
    let (id, token, agent) = (u.job_id.as_str(), u.lease_token, live.agent_id.as_str());
    let Some(kind) = u.kind else {
        debug!(job_id = %id, "job update without a kind; ignored");
        return;
    };
    let is_final = !matches!(
        kind,
        job_update::Kind::Started(_) | job_update::Kind::Log(_)
    );
    let accepted = match kind {
        job_update::Kind::Started(_) => state
            .store
            .job_started(id, agent, token)
            .await
            .map(|ok| ok.then_some(())),
        job_update::Kind::Log(l) => {
            let lines: Vec<String> = l
                .lines
                .into_iter()
                .take(MAX_LINES_PER_UPDATE)
                .map(cut)
                .collect();
            state
                .store
                .append_job_logs(id, agent, token, &lines, now_ms(), MAX_LOG_LINES)
                .await
                .map(|ok| ok.then_some(()))
        }
        job_update::Kind::Succeeded(s) => {
            let outcome = if s.result.len() > MAX_PAYLOAD {
                Outcome::Failed {
                    error: format!(
                        "the result is {} bytes, over the limit of {MAX_PAYLOAD}",
                        s.result.len()
                    ),
                    retry_at_ms: None,
                }
            } else {
                Outcome::Succeeded(s.result.to_vec())
            };
            finish(state, live, id, token, outcome).await
        }
        job_update::Kind::Failed(f) => {
            let error = format!("agent {agent}: {}", f.error);
            let retry = f.retryable;
            finish_failed(state, live, id, token, error, retry).await
        }
        job_update::Kind::Rejected(r) => {
            let error = format!("agent {agent} rejected it: {}", r.reason);
            finish_failed(state, live, id, token, error, true).await
        }
    };
    match accepted {
        Ok(Some(())) => {}
        Ok(None) if is_final && already_recorded(state, live, id, token).await => {
            debug!(job_id = %id, token, "a final job update sent again; it was recorded before");
        }
        Ok(None) => {
            warn!(job_id = %id, token, "refused a job update: stale lease (the job was reassigned, cancelled or finished)");
            stop_on_agent(
                live,
                id,
                token,
                "stale lease: this job was reassigned, cancelled or has finished",
            );
        }
        // Not acknowledged: the agent sends it again.
        Err(e) => {
            warn!(job_id = %id, error = %e, "could not record a job update");
            return;
        }
    }
    if is_final {
        acknowledge(live, id, token);
    }
}

/// Whether the attempt of `token` already ended with this agent's own
/// final update (a resend after a lost session, or a lost JobAck).
async fn already_recorded(state: &State, live: &LiveSession, id: &str, token: u64) -> bool {
    state.store.job_attempts(id).await.is_ok_and(|attempts| {
        attempts.iter().any(|a| {
            a.lease_token == token
                && a.agent_id == live.agent_id
                && matches!(a.outcome.as_str(), "succeeded" | "failed")
        })
    })
}

/// Tells the agent it may forget a final update.
fn acknowledge(live: &LiveSession, id: &str, token: u64) {
    let ack = JobAck {
        job_id: id.to_owned(),
        lease_token: token,
    };
    if live
        .connection
        .send_control(server_frame::Kind::JobAck(ack))
        .is_err()
    {
        // The agent sends it again on its next session.
        debug!(job_id = %id, "job ack not queued: the session is ending");
    }
}

async fn finish_failed(
    state: &State,
    live: &LiveSession,
    id: &str,
    token: u64,
    error: String,
    retryable: bool,
) -> Result<Option<()>, crate::store::StoreError> {
    // The attempt number is the token's job's; a failed read means no retry.
    let attempts = match state.store.get_job(&live.org_id, id).await? {
        Some(j) => j.attempts,
        None => u32::MAX,
    };
    let outcome = Outcome::Failed {
        error,
        retry_at_ms: retryable.then(|| retry_at(now_ms(), attempts)),
    };
    finish(state, live, id, token, outcome).await
}

async fn finish(
    state: &State,
    live: &LiveSession,
    id: &str,
    token: u64,
    outcome: Outcome,
) -> Result<Option<()>, crate::store::StoreError> {
    let Some(job) = state
        .store
        .finish_job(id, &live.agent_id, token, outcome, now_ms())
        .await?
    else {
        return Ok(None);
    };
    live.release_job(id, token);
    info!(job_id = %id, state = %job.state, attempts = job.attempts, "job attempt ended");
    state.metrics.job_finished(&job.pool, &job.state);
    // A slot is free; a retry may be due later (the poll takes it).
    state.jobs.wake();
    if job.state == crate::store::jobs::state::PENDING {
        let _ = state.store.notify_jobs().await;
    }
    Ok(Some(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_with_a_cap() {
        assert_eq!(retry_at(0, 1), 1_000);
        assert_eq!(retry_at(0, 2), 2_000);
        assert_eq!(retry_at(0, 4), 8_000);
        assert_eq!(retry_at(0, 30), 300_000);
    }
}
