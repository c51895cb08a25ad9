//! Heartbeat records, written to the store in batches.
//!
//! Every agent's latest heartbeat (time, round trip, clock skew) goes to
//! the store so that lists and other replicas see it, and every minute or
//! so a health sample joins the agent's history. With 10,000 agents at the
//! default 10 s interval that is 1,000 heartbeats and about 170 samples a
//! second; a transaction each made them the control plane's largest cost,
//! and waking the store's thread for each was most of that. Sessions queue
//! their records here instead, and one writer stores what queued during
//! [`FLUSH_EVERY`] in a single transaction: the store sees one write a
//! fraction of a second after a heartbeat, whatever the number of agents.
//!
//! Nothing is dropped: a full queue is reported to the caller, which
//! writes through its session's worker instead, and at shutdown the writer
//! stores what is left. The store never moves an agent's heartbeat back,
//! so records may arrive in any order.

use std::time::Duration;

use tokio::sync::mpsc;
use tracing::warn;

use crate::{state::Shared, store::HeartbeatRecord};

/// Records queued at most (10,000 agents' worth of a few intervals).
const QUEUE: usize = 32_768;
/// Records per transaction at most.
const BATCH: usize = 2_048;
/// How long the writer collects records before one transaction. Bounds
/// how stale the store's view of a live agent is, on top of the interval.
const FLUSH_EVERY: Duration = Duration::from_millis(500);

/// Where sessions hand their heartbeat records.
#[derive(Debug)]
pub struct Recorder {
    tx: mpsc::Sender<HeartbeatRecord>,
}

impl Recorder {
    /// The recorder and the queue its writer ([`run`]) drains.
    pub fn new() -> (Self, mpsc::Receiver<HeartbeatRecord>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Self { tx }, rx)
    }

    /// Queues a record without waiting; gives it back when the queue is
    /// full or the writer has stopped.
    pub fn try_record(&self, r: HeartbeatRecord) -> Result<(), HeartbeatRecord> {
        match self.tx.try_send(r) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r)) => {
                Err(r)
            }
        }
    }

    /// Queues a record; if the queue is full or the writer has stopped,
    /// writes it at once.
    pub async fn record(&self, state: &Shared, r: HeartbeatRecord) {
        if let Err(r) = self.try_record(r) {
            write(state, &mut vec![r]).await;
        }
    }
}

/// The writer: stores queued records in batches until shutdown, then what
/// is left.
pub async fn run(state: Shared, mut rx: mpsc::Receiver<HeartbeatRecord>) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => n,
            () = state.cancel.cancelled() => 0,
        };
        if n == 0 {
            break;
        }
        // Let the batch fill: one transaction per FLUSH_EVERY, not one per
        // heartbeat. Shutdown cuts the wait short.
        tokio::select! {
            () = tokio::time::sleep(FLUSH_EVERY) => {}
            () = state.cancel.cancelled() => {}
        }
        // Bounded: at most QUEUE records are waiting, BATCH per pass.
        loop {
            while batch.len() < BATCH
                && let Ok(r) = rx.try_recv()
            {
                batch.push(r);
            }
            let full = batch.len() == BATCH;
            write(&state, &mut batch).await;
            if !full {
                break;
            }
        }
    }
    rx.close();
    // Bounded: the queue is closed, so this ends.
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        write(&state, &mut batch).await;
    }
}

/// Writes `batch` in one transaction and empties it.
async fn write(state: &Shared, batch: &mut Vec<HeartbeatRecord>) {
    if let Err(e) = state
        .store
        .record_heartbeats(batch, state.config.health_history_samples)
        .await
    {
        warn!(error = %e, count = batch.len(), "could not record heartbeats in the store");
    }
    batch.clear();
}
