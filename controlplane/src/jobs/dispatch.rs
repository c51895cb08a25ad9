//! The dispatcher: claims jobs for the agents attached to this replica and
//! pushes them over their sessions, round-robin, one job per agent per pass,
//! while claims succeed and slots are free.

use std::{collections::HashSet, sync::Arc, time::Duration};

use tether::proto::{JobAssign, server_frame};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::lease;
use crate::{
    registry::LiveSession,
    state::{Shared, now_ms},
    store::jobs::Claimant,
};

/// The safety-net poll (a lost NOTIFY, a retry whose time came).
const POLL: Duration = Duration::from_secs(1);

/// Runs until shutdown.
pub async fn run(state: Shared) {
    loop {
        tokio::select! {
            () = state.jobs.woken() => {}
            () = tokio::time::sleep(POLL) => {}
            () = state.cancel.cancelled() => return,
        }
        round(&state).await;
    }
}

fn claimant(state: &Shared, s: &LiveSession) -> Claimant {
    Claimant {
        org_id: s.org_id.clone(),
        pool: s.pool.clone(),
        agent_id: s.agent_id.clone(),
        session_id: s.session_id.clone(),
        capabilities: s.hello.capabilities.clone(),
        credential_names: s.hello.credential_names.clone(),
        lease_ms: i64::try_from(lease(state).as_millis()).unwrap_or(i64::MAX),
    }
}

/// What a claim can match: agents of the same shape see the same queue.
fn shape(s: &LiveSession) -> (String, String, Vec<String>, Vec<String>) {
    (
        s.org_id.clone(),
        s.pool.clone(),
        s.hello.capabilities.clone(),
        s.hello.credential_names.clone(),
    )
}

/// One dispatch round.
pub async fn round(state: &Shared) {
    let sessions: Vec<Arc<LiveSession>> = state
        .registry
        .all()
        .into_iter()
        .filter(|s| s.takes_jobs(state.config.heartbeat_interval))
        .collect();
    // Shapes whose queue came up empty in this round.
    let mut empty = HashSet::new();
    // Bounded: every pass claims at least one job or ends the round, and a
    // claim takes a slot, of which there are finitely many.
    loop {
        let mut claimed = false;
        for s in &sessions {
            if s.free_job_slots() == 0 || s.connection.is_closed() || empty.contains(&shape(s)) {
                continue;
            }
            // Held until the job is in the session's table: a heartbeat's
            // renewal in between would not see it.
            let sync = s.job_sync.lock().await;
            let started = Instant::now();
            let job = match state.store.claim_job(&claimant(state, s), now_ms()).await {
                Ok(Some(j)) => j,
                Ok(None) => {
                    empty.insert(shape(s));
                    continue;
                }
                Err(e) => {
                    warn!(error = %e, "cannot claim jobs; retrying at the next wake-up");
                    return;
                }
            };
            state.metrics.job_claimed(
                started.elapsed().as_secs_f64(),
                job.attempts,
                now_ms() - job.created_ms,
            );
            claimed = true;
            s.hold_job(&job.job_id, job.lease_token);
            drop(sync);
            debug!(job_id = %job.job_id, agent_id = %s.agent_id, token = job.lease_token, "job assigned");
            let assign = JobAssign {
                job_id: job.job_id,
                lease_token: job.lease_token,
                job_type: job.job_type,
                payload: job.payload.into(),
                credential_names: job.credential_names,
                deadline_unix_ms: job.attempt_deadline_ms,
                attempt: job.attempts,
                lease_expires_unix_ms: job.lease_expires_ms,
            };
            // If it cannot go out (the session is ending), the lease lapses
            // and the sweep gives the job to another agent.
            if s.connection
                .send_control(server_frame::Kind::JobAssign(assign))
                .is_err()
            {
                debug!(agent_id = %s.agent_id, "job not sent: the session is ending; its lease will lapse");
            }
        }
        if !claimed {
            return;
        }
    }
}
