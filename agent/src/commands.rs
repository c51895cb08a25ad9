//! Commands from the control plane: probe, logs, config, drain, undrain,
//! restart. Each runs in a task of its own and answers with exactly one
//! `CommandResult`, within the deadline the command carries.

use std::{sync::Arc, time::Duration};

use tether::proto::{
    Command, CommandAck, CommandError, CommandResult, ConfigResult, DrainResult, LogsResult,
    agent_frame, command, command_result,
};
use tether_tunnel::{AgentWire, driver::Connection};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::{Context, probe};

/// Lines returned when the command does not say.
const DEFAULT_LOG_LINES: usize = 200;
/// Most lines one answer carries (the buffer keeps at most 2000).
const MAX_LOG_LINES: usize = 2000;
/// Answer this long before the control plane stops waiting.
const MARGIN: Duration = Duration::from_millis(500);
/// How often a drain checks whether its channels are done.
const DRAIN_POLL: Duration = Duration::from_millis(100);

fn error(code: &str, message: impl Into<String>) -> command_result::Result {
    command_result::Result::Error(CommandError {
        code: code.into(),
        message: message.into(),
    })
}

/// Runs one command and sends its result.
pub async fn run(ctx: Arc<Context>, connection: Connection<AgentWire>, cmd: Command) {
    let budget = Duration::from_millis(u64::from(cmd.timeout_ms))
        .saturating_sub(MARGIN)
        .max(Duration::from_millis(100));
    let restart = matches!(cmd.kind, Some(command::Kind::Restart(_)));
    let result = match cmd.kind {
        None => error(
            "unsupported",
            "the command has no kind this agent knows; upgrade the agent",
        ),
        Some(command::Kind::Probe(p)) => {
            command_result::Result::Probe(probe::run(&ctx.policy, p, budget).await)
        }
        Some(command::Kind::Logs(l)) => {
            let max = match usize::try_from(l.max_lines).unwrap_or(MAX_LOG_LINES) {
                0 => DEFAULT_LOG_LINES,
                n => n.min(MAX_LOG_LINES),
            };
            let (lines, truncated) = ctx.shared.logs.tail(max, l.since_unix_ms);
            command_result::Result::Logs(LogsResult { lines, truncated })
        }
        Some(command::Kind::Config(_)) => command_result::Result::Config(ConfigResult {
            effective_yaml: ctx.effective_yaml.clone(),
            config_hash: ctx.config_hash.clone(),
            agent_version: tether::VERSION.into(),
        }),
        Some(command::Kind::Drain(d)) => {
            if !ctx.shared.set_draining(true) {
                info!("drained: taking no new channels or jobs");
            }
            let wait = Duration::from_millis(u64::from(d.wait_ms)).min(budget);
            command_result::Result::Drain(drain(&ctx, &connection, wait).await)
        }
        Some(command::Kind::Undrain(_)) => {
            if ctx.shared.set_draining(false) {
                info!("undrained: taking channels and jobs again");
            }
            command_result::Result::Ack(CommandAck {})
        }
        Some(command::Kind::Restart(r)) => {
            warn!(reason = %r.reason, "restart requested by the control plane; exiting for the supervisor to start the agent again");
            command_result::Result::Ack(CommandAck {})
        }
        Some(command::Kind::RotateCertificate(_)) => error(
            "unsupported",
            "this agent renews its certificate on its own at two thirds of its lifetime; \
             to replace it now, restart the agent",
        ),
    };
    let answer = CommandResult {
        command_id: cmd.command_id,
        result: Some(result),
    };
    if connection
        .send_control(agent_frame::Kind::CommandResult(answer))
        .is_err()
    {
        warn!(
            command_id = cmd.command_id,
            "could not send a command result: the session ended"
        );
    }
    // After the answer is queued: the session then ends (which may drop the
    // answer; the control plane takes the session's end as the reply).
    if restart {
        ctx.shared.restart.cancel();
    }
}

/// Waits up to `wait` for the session's channels and the running jobs to
/// finish.
async fn drain(ctx: &Context, connection: &Connection<AgentWire>, wait: Duration) -> DrainResult {
    let deadline = Instant::now() + wait;
    let remaining = || (connection.channel_count(), ctx.jobs.running());
    let mut left = remaining();
    while left != (0, 0) && Instant::now() < deadline {
        tokio::time::sleep(DRAIN_POLL.min(deadline.saturating_duration_since(Instant::now())))
            .await;
        left = remaining();
    }
    DrainResult {
        completed: left == (0, 0),
        remaining_channels: u32::try_from(left.0).unwrap_or(u32::MAX),
        remaining_jobs: u32::try_from(left.1).unwrap_or(u32::MAX),
    }
}
