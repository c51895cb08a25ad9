//! The dispatcher: claims jobs for the agents attached to this replica and
//! pushes them over their sessions. Each pass claims, for every agent with
//! free slots, as many jobs as it has slots, in one transaction per agent
//! and several agents at once; passes repeat while claims succeed.

use std::{collections::HashSet, sync::Arc, time::Duration};

use futures_util::{StreamExt, stream};

use tether::proto::{JobAssign, server_frame};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::lease;
use crate::{
    registry::LiveSession,
    state::{Shared, now_ms},
    store::{StoreError, jobs::Claimant},
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
fn shape(s: &LiveSession) -> Shape {
    (
        s.org_id.clone(),
        s.pool.clone(),
        s.hello.capabilities.clone(),
        s.hello.credential_names.clone(),
    )
}

/// Claims running at once (PostgreSQL commits them together; SQLite takes
/// them one after another).
const CONCURRENT_CLAIMS: usize = 8;

/// What a queue a claim sees: agents of the same shape see the same one.
type Shape = (String, String, Vec<String>, Vec<String>);

/// One dispatch round.
pub async fn round(state: &Shared) {
    let sessions: Vec<Arc<LiveSession>> = state
        .registry
        .matching(|s| s.takes_jobs(state.config.heartbeat_interval));
    // Shapes whose queue ran dry in this round.
    let mut empty: HashSet<Shape> = HashSet::new();
    // Bounded: every pass claims at least one job or ends the round, and a
    // claim takes a slot, of which there are finitely many.
    loop {
        let candidates: Vec<Arc<LiveSession>> = sessions
            .iter()
            .filter(|s| {
                s.free_job_slots() > 0 && !s.connection.is_closed() && !empty.contains(&shape(s))
            })
            .cloned()
            .collect();
        let results: Vec<(Shape, Result<Claimed, StoreError>)> = stream::iter(candidates)
            .map(|s| {
                let state = state.clone();
                async move { (shape(&s), claim_for(&state, &s).await) }
            })
            .buffer_unordered(CONCURRENT_CLAIMS)
            .collect()
            .await;
        let mut claimed = 0;
        for (shape, r) in results {
            match r {
                Ok(c) => {
                    claimed += c.jobs;
                    if c.ran_dry {
                        empty.insert(shape);
                    }
                }
                Err(e) => {
                    warn!(error = %e, "cannot claim jobs; retrying at the next wake-up");
                    return;
                }
            }
        }
        if claimed == 0 {
            return;
        }
    }
}

/// What one claim got.
struct Claimed {
    jobs: usize,
    /// Fewer jobs than free slots: the queue of its shape is empty.
    ran_dry: bool,
}

/// Claims as many jobs as the agent of `s` has free slots, in one
/// transaction, and pushes them over its session.
async fn claim_for(state: &Shared, s: &LiveSession) -> Result<Claimed, StoreError> {
    // Held until the jobs are in the session's table: a heartbeat's
    // renewal in between would not see them.
    let _sync = s.job_sync.lock().await;
    let want = s.free_job_slots();
    if want == 0 {
        return Ok(Claimed {
            jobs: 0,
            ran_dry: false,
        });
    }
    let started = Instant::now();
    let jobs = state
        .store
        .claim_jobs(
            &claimant(state, s),
            now_ms(),
            u32::try_from(want).unwrap_or(u32::MAX),
        )
        .await?;
    let took = started.elapsed().as_secs_f64();
    let claimed = Claimed {
        jobs: jobs.len(),
        ran_dry: jobs.len() < want,
    };
    for job in jobs {
        state
            .metrics
            .job_claimed(took, job.attempts, now_ms() - job.created_ms);
        s.hold_job(&job.job_id, job.lease_token);
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
    Ok(claimed)
}
