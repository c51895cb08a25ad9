//! Commands to an agent over its session (probe, logs, config, drain…):
//! each gets an id, goes out ahead of channel data, and its caller waits
//! for the matching result, up to a deadline.

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tether::proto::{Command, CommandResult, command, command_result, server_frame};
use tether_tunnel::{ServerWire, driver::Connection};
use tokio::sync::oneshot;

/// Commands in flight per session; more are refused, not queued.
const MAX_PENDING: usize = 64;

/// Why a command got no result.
#[derive(Debug, thiserror::Error)]
pub enum CommandFailed {
    /// Too many commands are waiting for this agent.
    #[error(
        "{MAX_PENDING} commands are already waiting for this agent; retry when they are answered"
    )]
    Busy,
    /// The session could not take the command (ending, control lane full).
    #[error("the agent's session cannot take a command now (it is ending or not reading); retry")]
    NotSent,
    /// No answer in time.
    #[error(
        "the agent did not answer within {0:?}; it may be overloaded or its session stuck (see `tetherctl agents get`)"
    )]
    Timeout(Duration),
    /// The session ended first.
    #[error("the agent's session ended before it answered")]
    SessionEnded,
    /// The agent answered with an error.
    #[error("the agent refused: {message} ({code})")]
    Agent {
        /// Its code, e.g. "egress_denied".
        code: String,
        /// Its words.
        message: String,
    },
}

/// Commands waiting for an agent's answer.
#[derive(Debug, Default)]
pub struct Commands {
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<CommandResult>>>,
}

impl Commands {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<CommandResult>>> {
        self.pending
            .lock()
            .expect("command table lock poisoned: a task panicked while holding it")
    }

    /// Sends a command and waits for its result.
    pub async fn run(
        &self,
        connection: &Connection<ServerWire>,
        kind: command::Kind,
        timeout: Duration,
    ) -> Result<command_result::Result, CommandFailed> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.pending();
            if pending.len() >= MAX_PENDING {
                return Err(CommandFailed::Busy);
            }
            pending.insert(id, tx);
        }
        let frame = Command {
            command_id: id,
            timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
            kind: Some(kind),
        };
        if connection
            .send_control(server_frame::Kind::Command(frame))
            .is_err()
        {
            self.pending().remove(&id);
            return Err(CommandFailed::NotSent);
        }
        let result = tokio::time::timeout(timeout, rx).await;
        self.pending().remove(&id);
        match result {
            Err(_) => Err(CommandFailed::Timeout(timeout)),
            Ok(Err(_)) => Err(CommandFailed::SessionEnded),
            Ok(Ok(CommandResult { result: None, .. })) => Err(CommandFailed::Agent {
                code: "empty".into(),
                message: "the agent answered without a result".into(),
            }),
            Ok(Ok(CommandResult {
                result: Some(command_result::Result::Error(e)),
                ..
            })) => Err(CommandFailed::Agent {
                code: e.code,
                message: e.message,
            }),
            Ok(Ok(CommandResult {
                result: Some(r), ..
            })) => Ok(r),
        }
    }

    /// Hands a result to whoever waits for it; a result nobody waits for
    /// (timed out, or made up by the agent) is dropped.
    pub fn complete(&self, result: CommandResult) -> bool {
        match self.pending().remove(&result.command_id) {
            Some(tx) => tx.send(result).is_ok(),
            None => false,
        }
    }

    /// Ends every wait (the session is over).
    pub fn abandon(&self) {
        self.pending().clear();
    }
}
