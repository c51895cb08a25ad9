//! What every part of the control plane shares.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::Status;

use crate::{
    config::Config, events::Events, gateway::Gateways, identity::Authority, metrics::Metrics,
    registry::Registry, store::Store,
};

/// Shared state; one per process.
pub struct State {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub authority: Authority,
    pub registry: Registry,
    pub metrics: Metrics,
    pub gateways: Gateways,
    /// Agent events: watchers and the alert webhook.
    pub events: Events,
    /// Wakes the job dispatcher.
    pub jobs: crate::jobs::Jobs,
    /// Batches agents' heartbeat records into the store.
    pub heartbeats: crate::heartbeats::Recorder,
    /// This replica's id (random per start).
    pub replica_id: String,
    /// The address agents and clients use.
    pub public_endpoint: String,
    /// Fires at shutdown; sessions and listeners take child tokens.
    pub cancel: CancellationToken,
    /// Owns every spawned task (accept loops, sessions, channels).
    pub tracker: TaskTracker,
    /// Set once the gRPC listener serves; cleared when draining.
    pub serving: AtomicBool,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("replica_id", &self.replica_id)
            .finish_non_exhaustive()
    }
}

impl State {
    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }
}

/// Shared state handle.
pub type Shared = Arc<State>;

/// Now, Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A store failure as a gRPC status: the detail goes to the log, the caller
/// gets an opaque message (no SQL or paths in a status).
pub fn store_status(what: &str, e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "{what} failed in the store");
    Status::internal(format!(
        "{what} failed inside the control plane; its log has the detail"
    ))
}
