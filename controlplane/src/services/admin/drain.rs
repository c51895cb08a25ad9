//! Drain, undrain and pool recycling.
//!
//! A drain is stored (it survives the agent's reconnects and restarts) and
//! takes effect on the control plane at once (no new channels are routed
//! to the agent), then on the agent, which refuses new work and reports
//! when its running channels are done.

use std::{sync::Arc, time::Duration};

use tether::proto::{
    self, DrainAgentRequest, DrainAgentResponse, DrainCommand, DrainResult, RecyclePoolRequest,
    RecyclePoolResponse, RecycleStep, RestartCommand, UndrainCommand, command, command_result,
};
use tokio::time::Instant;
use tonic::Status;
use tracing::info;

use super::{agents, validate};
use crate::{
    auth::Principal,
    commands::CommandFailed,
    events::{self, Kind, Subject},
    registry::LiveSession,
    state::{Shared, now_ms, store_status},
    store::AgentRecord,
};

/// Default and largest drain wait.
const DRAIN_DEFAULT: Duration = Duration::from_secs(60);
const DRAIN_MAX: Duration = Duration::from_secs(3600);
/// Default and largest wait for a recycled agent to come back.
const REATTACH_DEFAULT: Duration = Duration::from_secs(120);
const REATTACH_MAX: Duration = Duration::from_secs(3600);
/// Wait for an acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a recycle checks whether the agent is back.
const REATTACH_POLL: Duration = Duration::from_millis(100);

fn wait_of(ms: u32, default: Duration, max: Duration) -> Duration {
    match ms {
        0 => default,
        ms => Duration::from_millis(u64::from(ms)).min(max),
    }
}

/// Stores (or clears) the drain mark; a change is an event, told here and
/// not left to the watcher, which could miss a drain shorter than its scan.
async fn mark(state: &Shared, rec: &AgentRecord, drained: bool) -> Result<AgentRecord, Status> {
    let at = if drained { now_ms().max(1) } else { 0 };
    let before = state
        .store
        .get_agent(&rec.agent_id)
        .await
        .map_err(|e| store_status("reading the agent", e))?
        .is_some_and(|a| a.drained_ms != 0);
    let after = state
        .store
        .set_agent_drained(&rec.org_id, &rec.agent_id, at)
        .await
        .map_err(|e| store_status("saving the drain mark", e))?
        .ok_or_else(|| Status::not_found(format!("no agent {:?}", rec.agent_id)))?;
    if before != drained {
        let subject = Subject {
            org_id: after.org_id.clone(),
            agent_id: after.agent_id.clone(),
            pool: after.pool.clone(),
        };
        let (kind, detail) = if drained {
            (Kind::Draining, "drained: takes no new channels or jobs")
        } else {
            (Kind::Undrained, "undrained: takes channels and jobs again")
        };
        events::emit(state, &subject, kind, detail.into()).await;
    }
    Ok(after)
}

/// Drains a live session and waits for its channels.
async fn drain_live(live: &LiveSession, wait: Duration) -> Result<DrainResult, CommandFailed> {
    live.set_draining(true);
    let cmd = command::Kind::Drain(DrainCommand {
        wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
    });
    // The agent answers when its channels are done or the wait is over.
    match live
        .commands
        .run(&live.connection, cmd, wait + ACK_TIMEOUT)
        .await?
    {
        command_result::Result::Drain(r) => Ok(r),
        _ => Err(CommandFailed::Agent {
            code: "unexpected".into(),
            message: "the agent answered a drain with another kind of result".into(),
        }),
    }
}

async fn undrain_live(live: &LiveSession) -> Result<(), CommandFailed> {
    live.set_draining(false);
    live.commands
        .run(
            &live.connection,
            command::Kind::Undrain(UndrainCommand {}),
            ACK_TIMEOUT,
        )
        .await
        .map(|_| ())
}

pub(super) async fn drain(
    state: &Shared,
    who: &Principal,
    r: DrainAgentRequest,
) -> Result<DrainAgentResponse, Status> {
    let rec = agents::get(state, who, &r.agent_id).await?;
    if rec.revoked_ms != 0 {
        return Err(Status::failed_precondition(format!(
            "agent {} is revoked; there is nothing to drain",
            rec.agent_id
        )));
    }
    let wait = wait_of(r.wait_ms, DRAIN_DEFAULT, DRAIN_MAX);
    let rec = mark(state, &rec, true).await?;
    let result = match state
        .registry
        .get(&rec.agent_id)
        .filter(|s| !s.connection.is_closed())
    {
        // Offline: marked, so it takes no work when it comes back.
        None => DrainResult {
            completed: true,
            remaining_channels: 0,
            remaining_jobs: 0,
        },
        Some(live) => drain_live(&live, wait)
            .await
            .map_err(|e| agents::command_status(&rec.agent_id, e))?,
    };
    info!(agent_id = %rec.agent_id, completed = result.completed, remaining_channels = result.remaining_channels, "agent drained");
    Ok(DrainAgentResponse {
        agent: Some(agents::view(state, rec, None)),
        result: Some(result),
    })
}

pub(super) async fn undrain(
    state: &Shared,
    who: &Principal,
    agent_id: &str,
) -> Result<proto::Agent, Status> {
    let rec = agents::get(state, who, agent_id).await?;
    let rec = mark(state, &rec, false).await?;
    if let Some(live) = state.registry.get(agent_id) {
        undrain_live(&live)
            .await
            .map_err(|e| agents::command_status(agent_id, e))?;
    }
    Ok(agents::view(state, rec, None))
}

/// Drain → restart → wait for a healthy new session → undrain, one agent
/// at a time; stops at the first failure.
pub(super) async fn recycle(
    state: &Shared,
    who: &Principal,
    r: RecyclePoolRequest,
) -> Result<RecyclePoolResponse, Status> {
    validate::check_pool(&r.pool)?;
    let drain_wait = wait_of(r.drain_wait_ms, DRAIN_DEFAULT, DRAIN_MAX);
    let reattach_wait = wait_of(r.reattach_wait_ms, REATTACH_DEFAULT, REATTACH_MAX);
    let members: Vec<AgentRecord> = state
        .store
        .list_agents(&who.org_id)
        .await
        .map_err(|e| store_status("listing agents", e))?
        .into_iter()
        .filter(|a| a.pool == r.pool && a.revoked_ms == 0)
        .collect();
    if members.is_empty() {
        return Err(Status::not_found(format!(
            "pool {:?} has no agents; see `tetherctl pools list`",
            r.pool
        )));
    }
    let mut steps = Vec::new();
    let mut completed = true;
    for rec in members {
        let Some(live) = state
            .registry
            .get(&rec.agent_id)
            .filter(|s| !s.connection.is_closed())
        else {
            steps.push(RecycleStep {
                agent_id: rec.agent_id.clone(),
                ok: false,
                detail: "skipped: offline, nothing to restart".into(),
            });
            completed = false;
            continue;
        };
        let outcome = recycle_one(state, &rec, live, drain_wait, reattach_wait).await;
        let ok = outcome.is_ok();
        info!(agent_id = %rec.agent_id, ok, "recycle step");
        steps.push(RecycleStep {
            agent_id: rec.agent_id.clone(),
            ok,
            detail: outcome.unwrap_or_else(|e| e),
        });
        if !ok {
            completed = false;
            break;
        }
    }
    Ok(RecyclePoolResponse { steps, completed })
}

async fn recycle_one(
    state: &Shared,
    rec: &AgentRecord,
    live: Arc<LiveSession>,
    drain_wait: Duration,
    reattach_wait: Duration,
) -> Result<String, String> {
    let id = &rec.agent_id;
    let started = Instant::now();
    mark(state, rec, true)
        .await
        .map_err(|s| s.message().to_owned())?;
    match drain_live(&live, drain_wait).await {
        Ok(d) if d.completed => {}
        other => {
            // Busy or unreachable: give it its work back and stop here.
            let _ = mark(state, rec, false).await;
            let _ = undrain_live(&live).await;
            return Err(match other {
                Ok(d) => format!(
                    "still {} channels open after {drain_wait:?}; recycling stopped and the agent undrained \
                     (raise --drain-wait, or retry when traffic is lower)",
                    d.remaining_channels
                ),
                Err(e) => format!("drain failed: {e}; recycling stopped and the agent undrained"),
            });
        }
    }
    let old_session = live.session_id.clone();
    let restart = command::Kind::Restart(RestartCommand {
        reason: "pool recycle".into(),
    });
    match live
        .commands
        .run(&live.connection, restart, ACK_TIMEOUT)
        .await
    {
        // The agent may end its session before its answer leaves.
        Ok(_) | Err(CommandFailed::SessionEnded) => {}
        Err(e) => {
            let _ = mark(state, rec, false).await;
            let _ = undrain_live(&live).await;
            return Err(format!(
                "restart failed: {e}; recycling stopped and the agent undrained"
            ));
        }
    }
    drop(live);
    let deadline = Instant::now() + reattach_wait;
    let back = loop {
        if let Some(s) = state
            .registry
            .get(id)
            .filter(|s| s.session_id != old_session && !s.connection.is_closed() && healthy(s))
        {
            break s;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "did not come back healthy within {reattach_wait:?} after the restart; it stays drained. \
                 Check its supervisor (systemd Restart=, Kubernetes) and `tetherctl agents get {id}`; \
                 undrain it with `tetherctl agents undrain {id}` once it is back"
            ));
        }
        tokio::time::sleep(REATTACH_POLL).await;
    };
    mark(state, rec, false)
        .await
        .map_err(|s| s.message().to_owned())?;
    undrain_live(&back).await.map_err(|e| {
        format!(
            "came back (session {}) but undrain failed: {e}",
            back.session_id
        )
    })?;
    Ok(format!(
        "drained, restarted and back healthy in session {} after {:.1} s; undrained",
        back.session_id,
        started.elapsed().as_secs_f64()
    ))
}

/// A session that has sent a heartbeat and reports no workspace problem.
fn healthy(s: &LiveSession) -> bool {
    let hb = s.heartbeat();
    hb.sample.is_some_and(|h| h.problem_code.is_empty())
}
