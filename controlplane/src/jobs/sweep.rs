//! The sweeper: jobs whose agent stopped heart-beating (their lease
//! lapsed) or that ran past their deadline go back to pending (or fail on
//! their last attempt); the handler that lost its job is told to stop when
//! its session is here. It also re-checks schedulability and removes old
//! finished jobs. Every replica sweeps; the updates are guarded by state,
//! so they never conflict.

use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use super::{schedulable, stop_on_agent};
use crate::state::{Shared, now_ms};

/// How often schedulability is re-checked at most.
const RECHECK_EVERY: Duration = Duration::from_secs(1);
/// How often old finished jobs are removed.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Runs until shutdown.
pub async fn run(state: Shared) {
    let every = state
        .config
        .heartbeat_interval
        .clamp(Duration::from_millis(100), Duration::from_secs(10));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut next_recheck = Instant::now();
    let mut next_prune = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = state.cancel.cancelled() => return,
        }
        sweep(&state).await;
        if Instant::now() >= next_recheck {
            next_recheck = Instant::now() + RECHECK_EVERY;
            match schedulable::recheck(&state).await {
                Ok(true) => {
                    state.jobs.wake();
                    let _ = state.store.notify_jobs().await;
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "cannot re-check which jobs are schedulable"),
            }
        }
        if Instant::now() >= next_prune {
            next_prune = Instant::now() + PRUNE_EVERY;
            let before = now_ms().saturating_sub(
                i64::try_from(state.config.job_retention.as_millis()).unwrap_or(i64::MAX),
            );
            match state.store.prune_jobs(before).await {
                Ok(n) if n > 0 => debug!(removed = n, "old finished jobs removed"),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "cannot remove old finished jobs"),
            }
        }
    }
}

async fn sweep(state: &Shared) {
    let released = match state.store.sweep_jobs(now_ms()).await {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "cannot sweep jobs");
            return;
        }
    };
    if released.is_empty() {
        return;
    }
    for r in &released {
        info!(job_id = %r.job.job_id, state = %r.job.state, reason = %r.job.error, "job released by the sweep");
        state.metrics.job_finished(&r.job.pool, &r.job.state);
        if let Some(live) = state
            .registry
            .all()
            .into_iter()
            .find(|s| s.session_id == r.lost_session || s.agent_id == r.job.lease_agent)
        {
            stop_on_agent(&live, &r.job.job_id, r.lost_token, &r.job.error);
        }
    }
    state.jobs.wake();
    let _ = state.store.notify_jobs().await;
}
