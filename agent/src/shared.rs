//! What outlives one session: the drain switch, the latest health problem,
//! the restart request and the recent-log buffer. Commands change it;
//! sessions read it (a drained agent stays drained when it reconnects).

use std::sync::{
    Mutex,
    atomic::{AtomicBool, Ordering},
};

use tokio_util::sync::CancellationToken;

use crate::{health::Problem, recent_logs::RecentLogs};

/// The process exit code that asks a supervisor for a restart (EX_TEMPFAIL):
/// systemd's unit and Kubernetes restart on it.
pub const RESTART_EXIT_CODE: u8 = 75;

/// State shared by every session of this process.
#[derive(Debug, Default)]
pub struct Shared {
    /// Recent log lines, secrets redacted.
    pub logs: RecentLogs,
    draining: AtomicBool,
    problem: Mutex<Option<Problem>>,
    /// Fires when the agent must exit for a restart (command or watchdog).
    pub restart: CancellationToken,
}

impl Shared {
    pub fn new(logs: RecentLogs) -> Self {
        Self {
            logs,
            ..Self::default()
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Sets the drain switch; returns the previous value.
    pub fn set_draining(&self, on: bool) -> bool {
        self.draining.swap(on, Ordering::Relaxed)
    }

    /// The problem the latest health sample found.
    pub fn problem(&self) -> Option<Problem> {
        self.problem
            .lock()
            .expect("problem lock poisoned: a task panicked while holding it")
            .clone()
    }

    /// Records the latest sample's problem; returns the previous one.
    pub fn set_problem(&self, p: Option<Problem>) -> Option<Problem> {
        std::mem::replace(
            &mut *self
                .problem
                .lock()
                .expect("problem lock poisoned: a task panicked while holding it"),
            p,
        )
    }
}
