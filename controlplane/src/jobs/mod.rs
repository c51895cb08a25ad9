//! Durable jobs: dispatch to agents, their updates, sweeps and the
//! schedulability check. The queue itself is in the store
//! ([`crate::store::jobs`]); this module moves jobs between it and the
//! agents attached to this replica.
//!
//! Jobs are pushed, not polled: a submission (here, or on another replica
//! through PostgreSQL NOTIFY), a finished job (a free slot), an attaching
//! agent or a sweep wakes the dispatcher, which claims for the local agents
//! at once. A slow poll catches anything a lost notification missed.

pub mod dispatch;
pub mod listen;
pub mod schedulable;
pub mod sweep;
pub mod updates;

use std::time::Duration;

use tether::proto::{JobCancel, server_frame};
use tokio::sync::Notify;
use tracing::debug;

use crate::{registry::LiveSession, state::State};

/// Largest payload or result.
pub const MAX_PAYLOAD: usize = 1024 * 1024;
/// Log lines kept per job.
pub const MAX_LOG_LINES: u32 = 10_000;

/// What the rest of the control plane tells the dispatcher.
#[derive(Debug, Default)]
pub struct Jobs {
    wake: Notify,
}

impl Jobs {
    /// Asks the dispatcher for a round (wake-ups coalesce).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub(crate) async fn woken(&self) {
        self.wake.notified().await;
    }
}

/// The shortest lease, whatever the heartbeat interval: a control plane
/// or store busy for a moment must not take jobs from agents that are
/// fine (a lapsed lease costs an attempt).
const MIN_LEASE: Duration = Duration::from_secs(5);

/// How long a lease lasts without a heartbeat renewing it: three heartbeat
/// intervals, like staleness, and at least [`MIN_LEASE`].
pub fn lease(state: &State) -> Duration {
    (state.config.heartbeat_interval * 3).max(MIN_LEASE)
}

/// Tells an agent to stop a job (cancelled, lost its lease, stale token).
pub fn stop_on_agent(live: &LiveSession, job_id: &str, token: u64, reason: &str) {
    live.release_job(job_id, token);
    let cancel = JobCancel {
        job_id: job_id.to_owned(),
        lease_token: token,
        reason: reason.to_owned(),
    };
    if live
        .connection
        .send_control(server_frame::Kind::JobCancel(cancel))
        .is_err()
    {
        debug!(%job_id, "job cancel not queued: the session is ending");
    }
}
