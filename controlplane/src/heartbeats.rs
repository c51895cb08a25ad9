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
//! Records reach the store in the order they were queued (within a batch
//! the newest per agent wins), so an agent's last heartbeat never moves
//! back. Nothing is dropped silently: a full queue makes the caller wait
//! in its session's worker, a failed batch is tried once more with the
//! next one (then dropped with a warning), and at shutdown the writer
//! stores what is left.

use std::time::Duration;

use tokio::sync::mpsc;
use tracing::warn;

use crate::{state::Shared, store::HeartbeatRecord};

/// Records queued at most (10,000 agents' worth of a few intervals).
const QUEUE: usize = 32_768;
/// Records per transaction at most (plus those of a failed batch).
const BATCH: usize = 2_048;
/// How long the writer collects records before one transaction, at most
/// (and at most a quarter of the heartbeat interval, so that the store's
/// view of a live agent stays well within the three intervals after which
/// other replicas and the metrics count it offline).
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

    /// Queues a record, waiting while the queue is full; once the writer
    /// has stopped (shutdown), writes it at once.
    pub async fn record(&self, state: &Shared, r: HeartbeatRecord) {
        if let Err(mpsc::error::SendError(r)) = self.tx.send(r).await {
            write(state, vec![r], &mut Vec::new()).await;
        }
    }
}

/// The writer: stores queued records in batches until shutdown, then what
/// is left.
pub async fn run(state: Shared, mut rx: mpsc::Receiver<HeartbeatRecord>) {
    let flush_every = FLUSH_EVERY.min(state.config.heartbeat_interval / 4);
    let mut batch = Vec::with_capacity(BATCH);
    // Records of a batch whose write failed, tried once more.
    let mut again = Vec::new();
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => n,
            () = state.cancel.cancelled() => 0,
        };
        if n == 0 {
            break;
        }
        // Let the batch fill: one transaction per flush, not one per
        // heartbeat. Shutdown cuts the wait short.
        tokio::select! {
            () = tokio::time::sleep(flush_every) => {}
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
            write(&state, std::mem::take(&mut batch), &mut again).await;
            if !full {
                break;
            }
        }
    }
    rx.close();
    // Bounded: the queue is closed, so this ends.
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        write(&state, std::mem::take(&mut batch), &mut again).await;
    }
    if !again.is_empty() {
        write(&state, Vec::new(), &mut again).await;
    }
}

/// Writes `again` (a failed batch's records, older) and `batch` in one
/// transaction. If it fails, `batch` is kept in `again` for one more try
/// and what was already tried twice is dropped.
async fn write(state: &Shared, batch: Vec<HeartbeatRecord>, again: &mut Vec<HeartbeatRecord>) {
    let tried = again.len();
    let mut records = std::mem::take(again);
    records.extend(batch);
    if let Err(e) = state
        .store
        .record_heartbeats(&records, state.config.health_history_samples)
        .await
    {
        warn!(
            error = %e,
            dropped = tried,
            kept = records.len() - tried,
            "could not record heartbeats in the store; the newest are tried again with the next batch"
        );
        *again = records.split_off(tried);
    }
}
