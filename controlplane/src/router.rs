//! Routing a new channel to an agent of a pool.
//!
//! Candidates come least loaded first (see [`Registry::candidates`]). If an
//! agent cannot open the channel for a reason of its own (its session ended,
//! it is draining, it is out of channels), the next one is tried. If the
//! target refuses (refused, unreachable, timeout, egress policy), that is the
//! client's answer: another agent of the same pool would reach the same
//! target, so there is no fail-over.

use std::{sync::Arc, time::Duration};

use tether::proto::ResetCode;
use tether_tunnel::{
    ServerWire, Target,
    driver::{Channel, ChannelReset, OpenError},
};
use tracing::debug;

use crate::registry::{LiveSession, Registry};

/// Why no channel could be opened.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// No agent of the pool is attached (or every one is draining).
    #[error(
        "no agent of pool {pool:?} is online; start one with a join token from `tetherctl tokens create --pool {pool}`, or check `tetherctl agents list`"
    )]
    NoAgent {
        /// The pool.
        pool: String,
    },
    /// Every agent was tried and none could carry the channel.
    #[error(
        "none of the {tried} agents of pool {pool:?} could open the channel; last error: {last}"
    )]
    AllFailed {
        /// The pool.
        pool: String,
        /// How many were tried.
        tried: usize,
        /// The last agent's error.
        last: String,
    },
    /// The target (or the agent's egress policy) refused.
    #[error("{0}")]
    Target(ChannelReset),
    /// No answer within the deadline.
    #[error("no agent of pool {pool:?} opened the channel within {timeout:?}")]
    Timeout {
        /// The pool.
        pool: String,
        /// The deadline.
        timeout: Duration,
    },
}

impl RouteError {
    /// The reset code a client sees.
    pub fn code(&self) -> ResetCode {
        match self {
            RouteError::NoAgent { .. } | RouteError::AllFailed { .. } => ResetCode::SessionLost,
            RouteError::Target(r) => r.code,
            RouteError::Timeout { .. } => ResetCode::Timeout,
        }
    }

    /// A metric label for the reason.
    pub fn reason(&self) -> String {
        match self {
            RouteError::NoAgent { .. } => "no_agent".into(),
            RouteError::AllFailed { .. } => "all_agents_failed".into(),
            RouteError::Timeout { .. } => "timeout".into(),
            RouteError::Target(r) => r
                .code
                .as_str_name()
                .trim_start_matches("RESET_CODE_")
                .to_lowercase(),
        }
    }
}

/// Whether a refusal is the target's answer (no fail-over).
fn is_target_answer(code: ResetCode) -> bool {
    matches!(
        code,
        ResetCode::Refused
            | ResetCode::Unreachable
            | ResetCode::Timeout
            | ResetCode::PolicyDenied
            | ResetCode::TargetReset
    )
}

/// Opens a channel to `target` through an agent of `pool`, failing over
/// between agents, within `timeout`.
pub async fn open(
    registry: &Registry,
    org_id: &str,
    pool: &str,
    target: Target,
    heartbeat_interval: Duration,
    timeout: Duration,
) -> Result<(Channel<ServerWire>, Arc<LiveSession>), RouteError> {
    let attempt = async {
        let candidates = registry.candidates(org_id, pool, heartbeat_interval);
        if candidates.is_empty() {
            return Err(RouteError::NoAgent {
                pool: pool.to_owned(),
            });
        }
        let tried = candidates.len();
        let mut last = String::new();
        for session in candidates {
            match session.connection.open(target.clone()).await {
                Ok(channel) => return Ok((channel, session)),
                Err(OpenError::Refused(reset)) if is_target_answer(reset.code) => {
                    return Err(RouteError::Target(reset));
                }
                Err(e) => {
                    debug!(agent_id = %session.agent_id, error = %e, "agent could not open a channel; trying the next");
                    last = format!("agent {}: {e}", session.agent_id);
                }
            }
        }
        Err(RouteError::AllFailed {
            pool: pool.to_owned(),
            tried,
            last,
        })
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(RouteError::Timeout {
                pool: pool.to_owned(),
                timeout,
            })
        })
}
