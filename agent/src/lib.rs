//! The Tether agent.
//!
//! Runs inside a private network, dials out to the control plane (it never
//! listens: invariant 1), enrolls once with a join token, then keeps one
//! session attached, reconnecting with backoff when it breaks. Channels the
//! control plane opens go only to destinations the agent's own egress
//! policy allows.

pub mod backoff;
pub mod channels;
pub mod commands;
pub mod config;
pub mod egress;
pub mod health;
pub mod identity;
pub mod jobs;
pub mod probe;
pub mod recent_logs;
pub mod session;
pub mod shared;
pub mod watchdog;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use ring::digest;
use tether::client::ControlPlaneAddr;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use crate::config::Config;
use crate::{backoff::Backoff, egress::Policy, identity::IdentityError, session::Ended};

/// A session that lasted this long resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);
/// Wait after the control plane refused this agent (revoked, unknown):
/// retrying faster would not help, and an operator must act.
const REFUSED_WAIT: Duration = Duration::from_secs(60);

/// What sessions need from the configuration.
#[derive(Debug)]
pub struct Context {
    pub endpoint: ControlPlaneAddr,
    pub state_dir: std::path::PathBuf,
    pub trust: identity::TrustSettings,
    pub max_clock_skew: Duration,
    pub policy: Arc<Policy>,
    pub labels: BTreeMap<String, String>,
    pub hostname: String,
    /// The effective configuration as YAML, secrets redacted.
    pub effective_yaml: String,
    /// SHA-256 (hex) of `effective_yaml`.
    pub config_hash: String,
    /// Workspace limits below which the agent refuses work.
    pub thresholds: health::Thresholds,
    /// What commands change and every session reads.
    pub shared: Arc<shared::Shared>,
    /// Restarts the agent when a session loop stops making progress.
    pub watchdog: Option<watchdog::Watchdog>,
    /// Runs jobs; outlives sessions.
    pub jobs: Arc<jobs::Runner>,
}

/// How the agent stopped without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Asked to stop (a signal).
    Cancelled,
    /// Asked to restart: exit with [`shared::RESTART_EXIT_CODE`].
    Restart,
}

/// Why the agent stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Enrollment or the stored identity failed in a way retrying cannot fix.
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

impl AgentError {
    /// Whether the configuration must change before a retry can succeed.
    pub fn is_configuration(&self) -> bool {
        matches!(self, AgentError::Identity(IdentityError::NoToken))
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Runs the agent until `cancel` fires or a restart is asked for.
/// `shared` carries the recent-log buffer the process's logging fills.
pub async fn run(
    config: Config,
    shared: Arc<shared::Shared>,
    cancel: CancellationToken,
) -> Result<Stopped, AgentError> {
    let effective_yaml = config.effective_yaml();
    let restart = shared.restart.clone();
    let watchdog = watchdog::Watchdog::start(config.stuck_session_timeout, |silent| {
        // The runtime may be the stuck part: log from this thread and exit.
        error!(stuck_for = ?silent, "the session loop made no progress; exiting for a restart");
        eprintln!(
            "tether-agent: the session loop made no progress for {silent:?}; exiting with code {} for a restart",
            shared::RESTART_EXIT_CODE
        );
        std::process::exit(i32::from(shared::RESTART_EXIT_CODE));
    });
    let policy = Arc::new(config.egress.clone());
    let runner = Arc::new(jobs::Runner::new(
        config.jobs.clone(),
        policy.clone(),
        shared.clone(),
        &config.state_dir,
    ));
    let ctx = Arc::new(Context {
        endpoint: config.endpoint.clone(),
        state_dir: config.state_dir.clone(),
        trust: config.trust.clone(),
        max_clock_skew: config.max_clock_skew,
        policy,
        labels: config.labels.clone(),
        hostname: hostname(),
        config_hash: hex::encode(digest::digest(&digest::SHA256, effective_yaml.as_bytes())),
        effective_yaml,
        thresholds: config.thresholds,
        shared,
        watchdog,
        jobs: runner,
    });
    if ctx.policy.is_empty() {
        warn!(
            "egress_allow is empty: this agent will refuse every channel; add rules with --allow or egress_allow"
        );
    }
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut identity = loop {
        let attempt = match identity::load(&config.state_dir)? {
            Some(id) => Ok(id),
            None => match &config.join_token {
                None => return Err(IdentityError::NoToken.into()),
                Some(token) => {
                    identity::enroll(
                        &config.state_dir,
                        &ctx.endpoint,
                        token,
                        &ctx.trust,
                        &ctx.hostname,
                    )
                    .await
                }
            },
        };
        match attempt {
            Ok(id) => break id,
            Err(e) if e.is_retryable() => {
                let delay = backoff.next_delay();
                warn!(error = %e, retry_in = ?delay, "enrollment failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = cancel.cancelled() => return Ok(Stopped::Cancelled),
                }
            }
            Err(e) => return Err(e.into()),
        }
    };
    info!(agent_id = %identity.info.agent_id, pool = %identity.info.pool, endpoint = %ctx.endpoint, "agent starting");
    backoff.reset();
    let mut stopped = Stopped::Cancelled;
    while !cancel.is_cancelled() {
        let started = Instant::now();
        let delay = match session::run(&ctx, &mut identity, &cancel).await {
            Ok(Ended::Cancelled) => break,
            Ok(Ended::Restart) => {
                stopped = Stopped::Restart;
                break;
            }
            Ok(Ended::GoAway(after)) => {
                backoff.reset();
                after
            }
            Ok(Ended::Lost(why)) => {
                if started.elapsed() >= HEALTHY_AFTER {
                    backoff.reset();
                }
                let d = backoff.next_delay();
                warn!(reason = %why, reconnect_in = ?d, "session lost");
                d
            }
            Err(session::AttachError::Refused(why)) => {
                error!(reason = %why, retry_in = ?REFUSED_WAIT, "the control plane refused this agent");
                REFUSED_WAIT
            }
            Err(e @ session::AttachError::Unavailable(_)) => {
                let d = backoff.next_delay();
                warn!(error = %e, reconnect_in = ?d, "cannot attach");
                d
            }
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = cancel.cancelled() => break,
            () = restart.cancelled() => {
                stopped = Stopped::Restart;
                break;
            }
        }
    }
    info!(?stopped, "agent stopped");
    Ok(stopped)
}
