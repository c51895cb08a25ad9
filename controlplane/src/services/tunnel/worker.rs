//! A session's store worker: heartbeat records, lease renewals and job
//! updates, in the order the agent sent them, off the session task. A busy
//! store (SQLite's single writer under a burst of submissions) then delays
//! bookkeeping, never the heartbeat answers the agent judges the session
//! by. The worker ends when the session has ended and everything it queued
//! is recorded: an update that arrived is never dropped with its session.

use std::sync::Arc;

use tether::proto::JobUpdate;
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
            while let Some(work) = rx.recv().await {
                match work {
                    Work::Heartbeat(p) => heartbeat::persist(&worker_state, &live, p).await,
                    Work::JobUpdate(u) => {
                        crate::jobs::updates::handle(&worker_state, &live, u).await;
                    }
                }
            }
        }
        .in_current_span(),
    );
    tx
}
