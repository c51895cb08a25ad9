//! Remote diagnostics: commands that run on the agent, inside the private
//! network (probe a destination, recent logs, effective configuration).

use std::time::Duration;

use tether::proto::{
    AgentConfig, GetAgentLogsRequest, LogsCommand, LogsResult, ProbeAgentRequest, ProbeResult,
    command, command_result,
};
use tonic::Status;

use super::{agents, validate};
use crate::{auth::Principal, state::Shared};

/// Default and largest wait for a probe.
const PROBE_DEFAULT: Duration = Duration::from_secs(10);
const PROBE_MAX: Duration = Duration::from_secs(60);
/// Wait for logs and configuration.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Most log lines one call returns.
const MAX_LOG_LINES: u32 = 2000;

fn unexpected(agent_id: &str) -> Status {
    Status::internal(format!(
        "agent {agent_id} answered with a result of another kind; upgrade the agent or the control plane"
    ))
}

pub(super) async fn probe(
    state: &Shared,
    who: &Principal,
    r: ProbeAgentRequest,
) -> Result<ProbeResult, Status> {
    let p = r.probe.ok_or_else(|| {
        Status::invalid_argument("probe is required: give host and port, e.g. db.internal:5432")
    })?;
    validate::check_target(&p.host, p.port)?;
    if p.tls_server_name.len() > 253 {
        return Err(Status::invalid_argument(
            "tls_server_name may be at most 253 characters",
        ));
    }
    let timeout = match r.timeout_ms {
        0 => PROBE_DEFAULT,
        ms => Duration::from_millis(u64::from(ms)).min(PROBE_MAX),
    };
    let rec = agents::get(state, who, &r.agent_id).await?;
    let live = agents::live(state, &rec)?;
    match live
        .commands
        .run(&live.connection, command::Kind::Probe(p), timeout)
        .await
    {
        Ok(command_result::Result::Probe(result)) => Ok(result),
        Ok(_) => Err(unexpected(&rec.agent_id)),
        Err(e) => Err(agents::command_status(&rec.agent_id, e)),
    }
}

pub(super) async fn logs(
    state: &Shared,
    who: &Principal,
    r: GetAgentLogsRequest,
) -> Result<LogsResult, Status> {
    let l = r.logs.unwrap_or_default();
    if l.max_lines > MAX_LOG_LINES {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_LOG_LINES} lines can be fetched at once (asked for {}); page with --since",
            l.max_lines
        )));
    }
    let rec = agents::get(state, who, &r.agent_id).await?;
    let live = agents::live(state, &rec)?;
    let cmd = command::Kind::Logs(LogsCommand {
        max_lines: l.max_lines,
        since_unix_ms: l.since_unix_ms,
    });
    match live.commands.run(&live.connection, cmd, READ_TIMEOUT).await {
        Ok(command_result::Result::Logs(result)) => Ok(result),
        Ok(_) => Err(unexpected(&rec.agent_id)),
        Err(e) => Err(agents::command_status(&rec.agent_id, e)),
    }
}

pub(super) async fn config(
    state: &Shared,
    who: &Principal,
    agent_id: &str,
) -> Result<AgentConfig, Status> {
    let rec = agents::get(state, who, agent_id).await?;
    let live = agents::live(state, &rec)?;
    let cmd = command::Kind::Config(tether::proto::ConfigCommand {});
    let config = match live.commands.run(&live.connection, cmd, READ_TIMEOUT).await {
        Ok(command_result::Result::Config(c)) => c,
        Ok(_) => return Err(unexpected(&rec.agent_id)),
        Err(e) => return Err(agents::command_status(&rec.agent_id, e)),
    };
    let pins = agents::pins_for(state, &rec.org_id, &rec.pool).await?;
    let drift = agents::drift(&config.agent_version, &config.config_hash, pins.as_ref());
    Ok(AgentConfig {
        pinned_version: pins
            .as_ref()
            .map(|p| p.pinned_version.clone())
            .unwrap_or_default(),
        pinned_config_hash: pins.map(|p| p.pinned_config_hash).unwrap_or_default(),
        drift,
        config: Some(config),
    })
}
