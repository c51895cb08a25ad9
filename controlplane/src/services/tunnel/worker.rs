//! A session's store worker: job updates and the heartbeats that renew job
//! leases, in the order the agent sent them, off the session task. A busy
//! store (SQLite's single writer under a burst of submissions) then delays
//! bookkeeping, never the heartbeat answers the agent judges the session
//! by. The worker ends when the session has ended and everything it queued
//! is recorded: an update that arrived is never dropped with its session.

use std::sync::Arc;

use tether::proto::{JobUpdate, job_update};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::heartbeat::{self, Persist};
use crate::{registry::LiveSession, state::Shared};

/// Work items queued per session; a full queue slows reading the agent's
/// stream (backpressure), it drops nothing.
const QUEUE: usize = 1024;

/// One piece of store work.
#[derive(Debug)]
pub(super) enum Work {
    Heartbeat(Persist),
    JobUpdate(JobUpdate),
}

/// Starts the worker of `live`; it runs until the sender is dropped and
/// the queue is empty.
pub(super) fn spawn(state: &Shared, live: Arc<LiveSession>) -> mpsc::Sender<Work> {
    let (tx, mut rx) = mpsc::channel(QUEUE);
    let worker_state = state.clone();
    state.tracker.spawn(
        async move {
            let mut batch = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                for work in coalesce(std::mem::take(&mut batch)) {
                    match work {
                        Work::Heartbeat(p) => heartbeat::persist(&worker_state, &live, p).await,
                        Work::JobUpdate(u) => {
                            crate::jobs::updates::handle(&worker_state, &live, u).await;
                        }
                    }
                }
            }
        }
        .in_current_span(),
    );
    tx
}

/// Work items taken from the queue at once.
const BATCH: usize = 64;

/// Drops a job's `started` when the same attempt's final update is queued
/// behind it: the final update moves the job from assigned or running to
/// its end either way, so a fast job costs one store write, not two.
fn coalesce(batch: Vec<Work>) -> Vec<Work> {
    let finished: std::collections::HashSet<(String, u64)> = batch
        .iter()
        .filter_map(|w| match w {
            Work::JobUpdate(u) if is_final(u) => Some((u.job_id.clone(), u.lease_token)),
            _ => None,
        })
        .collect();
    if finished.is_empty() {
        return batch;
    }
    batch
        .into_iter()
        .filter(|w| match w {
            Work::JobUpdate(u) if matches!(u.kind, Some(job_update::Kind::Started(_))) => {
                !finished.contains(&(u.job_id.clone(), u.lease_token))
            }
            _ => true,
        })
        .collect()
}

fn is_final(u: &JobUpdate) -> bool {
    matches!(
        u.kind,
        Some(
            job_update::Kind::Succeeded(_)
                | job_update::Kind::Failed(_)
                | job_update::Kind::Rejected(_)
        )
    )
}

#[cfg(test)]
mod tests {
    use tether::proto::{JobLog, JobStarted, JobSucceeded};

    use super::*;

    fn update(job: &str, token: u64, kind: job_update::Kind) -> Work {
        Work::JobUpdate(JobUpdate {
            job_id: job.into(),
            lease_token: token,
            kind: Some(kind),
        })
    }

    fn kinds(batch: &[Work]) -> Vec<String> {
        batch
            .iter()
            .map(|w| match w {
                Work::JobUpdate(u) => format!(
                    "{}/{}:{}",
                    u.job_id,
                    u.lease_token,
                    match u.kind {
                        Some(job_update::Kind::Started(_)) => "started",
                        Some(job_update::Kind::Log(_)) => "log",
                        Some(job_update::Kind::Succeeded(_)) => "succeeded",
                        _ => "other",
                    }
                ),
                Work::Heartbeat(_) => "heartbeat".into(),
            })
            .collect()
    }

    #[test]
    fn a_start_is_dropped_only_when_its_own_attempt_ended_in_the_batch() {
        let started = || job_update::Kind::Started(JobStarted {});
        let done = || job_update::Kind::Succeeded(JobSucceeded::default());
        let batch = vec![
            update("a", 1, started()),
            update("a", 1, job_update::Kind::Log(JobLog::default())),
            update("b", 1, started()),
            update("a", 1, done()),
            // Another attempt of c ended; this one only started.
            update("c", 2, started()),
            update("c", 1, done()),
        ];
        assert_eq!(
            kinds(&coalesce(batch)),
            [
                "a/1:log",
                "b/1:started",
                "a/1:succeeded",
                "c/2:started",
                "c/1:succeeded"
            ]
        );
    }
}
