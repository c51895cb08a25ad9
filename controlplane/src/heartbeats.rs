//! Heartbeat records, written to the store in batches.
//!
//! Every agent's latest heartbeat (time, round trip, clock skew) goes to
//! the store so that lists and other replicas see it. With 10,000 agents
//! at the default 10 s interval that is 1,000 writes a second; one
//! transaction each made heartbeats the control plane's largest cost. The
//! sessions' workers queue their records here instead, and one writer
//! stores whatever has queued in a single transaction, so the batch grows
//! with the load and an idle control plane still writes each heartbeat at
//! once. Only the latest record per agent in a batch is written.
//!
//! Nothing is dropped: when the queue is full the caller writes its record
//! itself, and at shutdown the writer stores what is left.

use std::collections::HashMap;

use tokio::sync::mpsc;
use tracing::warn;

use crate::{state::Shared, store::HeartbeatRecord};

/// Records queued at most (10,000 agents' worth of a few intervals).
const QUEUE: usize = 32_768;
/// Records per transaction at most.
const BATCH: usize = 2_048;

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

    /// Queues a record; if the queue is full or the writer has stopped,
    /// writes it at once.
    pub async fn record(&self, state: &Shared, r: HeartbeatRecord) {
        let r = match self.tx.try_send(r) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r)) => r,
        };
        if let Err(e) = state.store.record_heartbeats(&[r]).await {
            warn!(error = %e, "could not record a heartbeat in the store");
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
            () = state.cancel.cancelled() => {
                rx.close();
                // Bounded: the queue is closed, so this ends.
                while rx.recv_many(&mut batch, BATCH).await > 0 {
                    write(&state, &mut batch).await;
                }
                return;
            }
        };
        if n == 0 {
            return;
        }
        write(&state, &mut batch).await;
    }
}

/// Writes the latest record per agent of `batch` and empties it.
async fn write(state: &Shared, batch: &mut Vec<HeartbeatRecord>) {
    let mut latest: HashMap<&str, &HeartbeatRecord> = HashMap::with_capacity(batch.len());
    for r in batch.iter() {
        let keep = latest
            .get(r.agent_id.as_str())
            .is_none_or(|old| old.at_ms <= r.at_ms);
        if keep {
            latest.insert(&r.agent_id, r);
        }
    }
    let records: Vec<HeartbeatRecord> = latest.into_values().cloned().collect();
    if let Err(e) = state.store.record_heartbeats(&records).await {
        warn!(error = %e, count = records.len(), "could not record heartbeats in the store");
    }
    batch.clear();
}
