//! Heartbeats: answered at once on the session task (the agent measures
//! round trips and judges the session by the answers); what they change in
//! the store — the agent's last heartbeat, its health history, its job
//! leases — goes to the batched writer (`crate::heartbeats`), through the
//! session's worker when the agent runs jobs (leases are renewed in order
//! with its job updates).

use std::time::Duration;

use tether::proto::{Heartbeat, HeartbeatAck, HeldJob, server_frame};
use tracing::{debug, warn};

use super::MAX_JOBS_PER_AGENT;
use crate::{
    registry::{self, LiveSession},
    state::{Shared, now_ms},
    store::HeartbeatRecord,
};

/// What a heartbeat leaves for the store.
#[derive(Debug)]
pub(super) struct Persist {
    record: HeartbeatRecord,
    held_jobs: Vec<HeldJob>,
}

/// Answers a heartbeat and records it in memory (staleness, metrics, the
/// watcher's view); returns the store's share.
pub(super) fn answer(state: &Shared, live: &LiveSession, hb: Heartbeat) -> Persist {
    let now = now_ms();
    let rtt_us = hb.last_rtt_us;
    // The agent stamped the heartbeat half a round trip ago.
    let half_rtt_ms = i64::try_from(rtt_us / 2000).unwrap_or(0);
    let clock_skew_ms = if hb.agent_time_unix_ms > 0 {
        hb.agent_time_unix_ms
            .saturating_add(half_rtt_ms)
            .saturating_sub(now)
    } else {
        0
    };
    // A skew over the limit becomes an event (and an alert) in the watcher.
    let ack = HeartbeatAck {
        sequence: hb.sequence,
        agent_time_unix_ms: hb.agent_time_unix_ms,
        server_time_unix_ms: now,
    };
    if live
        .connection
        .send_control(server_frame::Kind::HeartbeatAck(ack))
        .is_err()
    {
        debug!("heartbeat ack not queued: the session is ending or its control lane is full");
    }
    let history_sample = hb
        .sample
        .as_ref()
        .filter(|_| live.history_due(now, state.config.health_history_interval))
        .map(prost::Message::encode_to_vec);
    live.record_heartbeat(registry::Heartbeat {
        at: tokio::time::Instant::now(),
        at_ms: now,
        rtt_us,
        clock_skew_ms,
        sample: hb.sample.map(std::sync::Arc::new),
    });
    let rtt = (rtt_us > 0).then(|| Duration::from_micros(rtt_us).as_secs_f64());
    state.metrics.heartbeat(rtt);
    Persist {
        record: HeartbeatRecord {
            agent_id: live.agent_id.clone(),
            at_ms: now,
            rtt_us,
            clock_skew_ms,
            history_sample,
        },
        held_jobs: hb.held_jobs,
    }
}

/// Hands the heartbeat's record to the batched writer from the session
/// task, when nothing else of it needs the store: the agent runs no jobs,
/// so no leases to renew in order with its job updates. Saves a wake-up
/// of the session's worker per heartbeat. Gives the heartbeat back when it
/// must go through the worker.
pub(super) fn record_without_worker(
    state: &Shared,
    live: &LiveSession,
    p: Persist,
) -> Result<(), Persist> {
    if !live.hello.capabilities.is_empty() {
        return Err(p);
    }
    let held_jobs = p.held_jobs;
    state.heartbeats.try_record(p.record).map_err(|r| Persist {
        record: r,
        held_jobs,
    })
}

/// Records a heartbeat in the store (on the session's worker).
pub(super) async fn persist(state: &Shared, live: &LiveSession, p: Persist) {
    renew_job_leases(state, live, p.held_jobs).await;
    // Batched with other agents' (crate::heartbeats).
    state.heartbeats.record(state, p.record).await;
}

/// Every heartbeat renews the leases of the jobs the agent says it holds
/// (whichever session claimed them). A job it names that is no longer its
/// (cancelled, swept, reassigned) is stopped on the agent; one the store
/// gave it that it does not name (an assignment lost on the way) is left to
/// lapse, and the sweep puts it back in the queue. Agents that run no jobs
/// cost nothing here. The lease runs from now, not from when the agent
/// sent the heartbeat: a backlog in the store never shortens it.
async fn renew_job_leases(state: &Shared, live: &LiveSession, held: Vec<HeldJob>) {
    if live.hello.capabilities.is_empty() {
        return;
    }
    let held: Vec<(String, u64)> = held
        .into_iter()
        .take(usize::try_from(MAX_JOBS_PER_AGENT).unwrap_or(usize::MAX) * 2)
        .map(|h| (h.job_id, h.lease_token))
        .collect();
    let lease = i64::try_from(crate::jobs::lease(state).as_millis()).unwrap_or(i64::MAX);
    let _sync = live.job_sync.lock().await;
    match state
        .store
        .renew_leases(&live.agent_id, &held, now_ms().saturating_add(lease))
        .await
    {
        Ok(assigned) => {
            for (job_id, token) in held.iter().filter(|h| !assigned.contains(h)) {
                crate::jobs::stop_on_agent(
                    live,
                    job_id,
                    *token,
                    "the job is no longer this agent's (cancelled, or its lease lapsed)",
                );
            }
            live.set_held_jobs(assigned);
        }
        Err(e) => warn!(error = %e, "could not renew the agent's job leases"),
    }
}
