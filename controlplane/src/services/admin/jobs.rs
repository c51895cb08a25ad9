//! Jobs through the Admin API: submit, get, list, cancel, logs.

use std::time::Duration;

use tether::proto::{
    CancelJobRequest, GetJobLogsResponse, Job, JobState, ListJobsRequest, ListJobsResponse,
    SubmitJobRequest,
};
use tonic::Status;
use tracing::info;

use super::validate;
use crate::{
    audit,
    auth::Principal,
    identity::secrets,
    jobs::{MAX_LOG_LINES, MAX_PAYLOAD, schedulable, stop_on_agent},
    state::{Shared, now_ms, store_status},
    store::jobs::{JobRecord, Submitted, state},
};

/// Default and largest time per attempt.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);
const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 86_400);
/// Default and largest attempts.
const DEFAULT_ATTEMPTS: u32 = 3;
const MAX_ATTEMPTS: u32 = 100;
/// Most credential names a job may need.
const MAX_CREDENTIALS: usize = 16;

fn state_of(s: &str) -> JobState {
    match s {
        state::PENDING => JobState::Pending,
        state::ASSIGNED => JobState::Assigned,
        state::RUNNING => JobState::Running,
        state::SUCCEEDED => JobState::Succeeded,
        state::FAILED => JobState::Failed,
        state::CANCELLED => JobState::Cancelled,
        state::UNSCHEDULABLE => JobState::Unschedulable,
        _ => JobState::Unspecified,
    }
}

fn state_name(s: JobState) -> Option<&'static str> {
    Some(match s {
        JobState::Unspecified => return None,
        JobState::Pending => state::PENDING,
        JobState::Assigned => state::ASSIGNED,
        JobState::Running => state::RUNNING,
        JobState::Succeeded => state::SUCCEEDED,
        JobState::Failed => state::FAILED,
        JobState::Cancelled => state::CANCELLED,
        JobState::Unschedulable => state::UNSCHEDULABLE,
    })
}

pub(super) fn view(j: JobRecord) -> Job {
    Job {
        job_id: j.job_id,
        org_id: j.org_id,
        pool: j.pool,
        job_type: j.job_type,
        state: state_of(&j.state) as i32,
        priority: j.priority,
        credential_names: j.credential_names,
        attempts: j.attempts,
        max_attempts: j.max_attempts,
        agent_id: j.lease_agent,
        created_unix_ms: j.created_ms,
        started_unix_ms: j.started_ms,
        finished_unix_ms: j.finished_ms,
        result: j.result,
        error: j.error,
        idempotency_key: j.idempotency_key,
        payload: j.payload,
    }
}

/// Submits a job and writes its audit entry: with the job in one
/// statement when it is new, on its own otherwise (a refusal, or the job an
/// idempotency key made earlier).
pub(super) async fn submit(
    state: &Shared,
    who: &Principal,
    r: SubmitJobRequest,
) -> Result<Job, Status> {
    const ACTION: &str = "SubmitJob";
    let pool = r.pool.clone();
    let audited = |j: &JobRecord| format!("job {} pool {}", j.job_id, j.pool);
    let job = match new_job(state, who, r).await {
        Ok(job) => job,
        Err(e) => {
            audit::record(state, who, ACTION, &format!("pool {pool}"), Err(&e), "").await;
            return Err(e);
        }
    };
    let entry = audit::entry(who, ACTION, &audited(&job), Ok(()), "");
    match state.store.submit_job(&job, &entry).await {
        Ok(Submitted::New(j)) => {
            info!(job_id = %j.job_id, pool = %j.pool, job_type = %j.job_type, state = %j.state, "job submitted");
            // The store told the other replicas with the insert.
            if j.state == state::PENDING {
                state.jobs.wake();
            }
            Ok(view(j))
        }
        Ok(Submitted::Existing(j)) => {
            // The job the key made earlier, in the pool it was made for.
            audit::record(state, who, ACTION, &audited(&j), Ok(()), "").await;
            Ok(view(j))
        }
        Err(e) => {
            let e = store_status("submitting the job", e);
            audit::record(state, who, ACTION, &format!("pool {pool}"), Err(&e), "").await;
            Err(e)
        }
    }
}

/// The job a request asks for, checked; not stored yet.
async fn new_job(
    state: &Shared,
    who: &Principal,
    r: SubmitJobRequest,
) -> Result<JobRecord, Status> {
    validate::check_pool(&r.pool)?;
    validate::check_job_name("job type", &r.job_type)?;
    if r.payload.len() > MAX_PAYLOAD {
        return Err(Status::invalid_argument(format!(
            "the payload is {} bytes, over the limit of {MAX_PAYLOAD}; pass a reference (a path, a URL) instead",
            r.payload.len()
        )));
    }
    if r.credential_names.len() > MAX_CREDENTIALS {
        return Err(Status::invalid_argument(format!(
            "a job may need at most {MAX_CREDENTIALS} credentials"
        )));
    }
    for c in &r.credential_names {
        validate::check_job_name("credential name", c)?;
    }
    if r.idempotency_key.len() > 128 {
        return Err(Status::invalid_argument(
            "the idempotency key may be at most 128 bytes",
        ));
    }
    if r.max_attempts > MAX_ATTEMPTS {
        return Err(Status::invalid_argument(format!(
            "max_attempts may be at most {MAX_ATTEMPTS}"
        )));
    }
    let timeout = match r.deadline_ms {
        0 => DEFAULT_TIMEOUT,
        ms => Duration::from_millis(u64::from(ms)),
    };
    if timeout > MAX_TIMEOUT {
        return Err(Status::invalid_argument(
            "deadline_ms may be at most 7 days",
        ));
    }
    let mut creds = r.credential_names;
    creds.sort();
    creds.dedup();
    // An attached agent that can run it answers the question without a
    // read of the store (the common case); otherwise every enrolled agent
    // counts, offline ones too, and the reason names what is missing.
    // A revoked agent's session is closed at once (and leaves the registry
    // soon after): a closed one does not count.
    let runnable_by_a_live_agent = state.registry.any(|s| {
        !s.connection.is_closed()
            && s.org_id == who.org_id
            && s.pool == r.pool
            && s.hello.capabilities.contains(&r.job_type)
            && creds.iter().all(|c| s.hello.credential_names.contains(c))
    });
    let unschedulable = if runnable_by_a_live_agent {
        None
    } else {
        let agents = state
            .store
            .list_agents(&who.org_id)
            .await
            .map_err(|e| store_status("reading agents", e))?;
        schedulable::why_not(&agents, &r.pool, &r.job_type, &creds)
    };
    let now = now_ms();
    let job = JobRecord {
        job_id: format!("job-{}", secrets::random_hex(8)),
        org_id: who.org_id.clone(),
        pool: r.pool,
        job_type: r.job_type,
        payload: r.payload,
        credential_names: creds,
        priority: r.priority,
        state: if unschedulable.is_some() {
            state::UNSCHEDULABLE.into()
        } else {
            state::PENDING.into()
        },
        run_at_ms: now,
        attempt_timeout_ms: i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX),
        max_attempts: if r.max_attempts == 0 {
            DEFAULT_ATTEMPTS
        } else {
            r.max_attempts
        },
        created_ms: now,
        error: unschedulable.unwrap_or_default(),
        idempotency_key: r.idempotency_key,
        ..JobRecord::default()
    };
    Ok(job)
}

pub(super) async fn get(state: &Shared, who: &Principal, id: &str) -> Result<Job, Status> {
    state
        .store
        .get_job(&who.org_id, id)
        .await
        .map_err(|e| store_status("reading the job", e))?
        .map(view)
        .ok_or_else(|| {
            Status::not_found(format!(
                "no job {id:?}; list them with `tetherctl jobs list`"
            ))
        })
}

pub(super) async fn list(
    state: &Shared,
    who: &Principal,
    r: ListJobsRequest,
) -> Result<ListJobsResponse, Status> {
    let limit = match r.limit {
        0 => 100,
        n => n.min(1000),
    };
    let st = JobState::try_from(r.state)
        .map_err(|_| Status::invalid_argument(format!("unknown job state {}", r.state)))?;
    let jobs = state
        .store
        .list_jobs(
            &who.org_id,
            (!r.pool.is_empty()).then_some(r.pool.as_str()),
            state_name(st),
            limit,
        )
        .await
        .map_err(|e| store_status("listing jobs", e))?;
    Ok(ListJobsResponse {
        jobs: jobs.into_iter().map(view).collect(),
    })
}

pub(super) async fn cancel(
    state: &Shared,
    who: &Principal,
    r: CancelJobRequest,
) -> Result<Job, Status> {
    if r.reason.len() > 256 {
        return Err(Status::invalid_argument(
            "the reason may be at most 256 bytes",
        ));
    }
    let reason = if r.reason.is_empty() {
        format!("cancelled by key {}", who.key_id)
    } else {
        format!("cancelled by key {}: {}", who.key_id, r.reason)
    };
    let Some(job) = state
        .store
        .cancel_job(&who.org_id, &r.job_id, &reason, now_ms())
        .await
        .map_err(|e| store_status("cancelling the job", e))?
    else {
        let current = get(state, who, &r.job_id).await?;
        return Err(Status::failed_precondition(format!(
            "job {} has already ended ({}); nothing to cancel",
            r.job_id,
            JobState::try_from(current.state)
                .map(|s| s
                    .as_str_name()
                    .trim_start_matches("JOB_STATE_")
                    .to_lowercase())
                .unwrap_or_default()
        )));
    };
    // The holder's handler is stopped now if its session is here; on
    // another replica, at the agent's next heartbeat (its lease renewal no
    // longer includes the job).
    if let Some(live) = state.registry.get(&job.lease_agent) {
        stop_on_agent(&live, &job.job_id, job.lease_token, &reason);
    }
    state.metrics.job_finished(&job.pool, &job.state);
    Ok(view(job))
}

pub(super) async fn logs(
    state: &Shared,
    who: &Principal,
    id: &str,
) -> Result<GetJobLogsResponse, Status> {
    get(state, who, id).await?;
    let lines = state
        .store
        .job_logs(id, MAX_LOG_LINES)
        .await
        .map_err(|e| store_status("reading the job's logs", e))?;
    Ok(GetJobLogsResponse { lines })
}
