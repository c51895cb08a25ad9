//! `Tunnel.Attach`: an agent's one long-lived session.
//!
//! The agent proves who it is with its client certificate (issued at
//! enrollment); its first frame must be `Hello`, answered by `Welcome`. The
//! stream then runs through a `tether-tunnel` session: channel frames go to
//! the multiplexer, the rest (heartbeats, command results) to the session
//! task below. The newest session of an agent replaces the older one.

use std::{pin::Pin, sync::Arc, time::Duration};

use futures_util::{Stream, StreamExt, stream};
use tether::proto::{
    AgentFrame, DrainCommand, Hello, ProtocolVersion, ResetCode, ServerFrame, UndrainCommand,
    Welcome, agent_frame, command, server_frame, tunnel_server::Tunnel,
};
use tether_tunnel::{
    ServerWire,
    driver::{self, Driver, IncomingChannel, Queues},
};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, info_span, warn};

mod heartbeat;
mod worker;

use super::agent_auth;
use crate::{
    identity::secrets,
    registry::{HelloInfo, LiveSession},
    state::{Shared, now_ms, store_status},
    store::HelloRecord,
};

/// How long an agent may take to send its Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest Tunnel message accepted (data frames are ≤ 32 KiB).
pub const MAX_MESSAGE: usize = 1024 * 1024;
/// How long the control plane waits for the answer to a bookkeeping command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Most jobs one agent may run at once, whatever it asks for.
pub(crate) const MAX_JOBS_PER_AGENT: u32 = 256;
/// Longest job type or credential name.
const MAX_NAME: usize = 64;
/// Most labels, capabilities or credential names one Hello may carry.
const MAX_HELLO_ITEMS: usize = 256;

/// The Tunnel service.
#[derive(Debug, Clone)]
pub struct TunnelService {
    state: Shared,
}

impl TunnelService {
    pub fn new(state: Shared) -> Self {
        Self { state }
    }
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<ServerFrame, Status>> + Send>>;

fn check_hello(hello: &Hello, agent_id: &str) -> Result<(), Status> {
    if hello.protocol_version != ProtocolVersion::ProtocolVersion1 as i32 {
        return Err(Status::failed_precondition(format!(
            "this control plane speaks protocol version 1, the agent sent {}; upgrade the older of the two",
            hello.protocol_version
        )));
    }
    if hello.agent_id != agent_id {
        return Err(Status::unauthenticated(format!(
            "Hello names agent {:?} but the certificate belongs to {agent_id:?}",
            hello.agent_id
        )));
    }
    if hello.labels.len() > MAX_HELLO_ITEMS
        || hello.capabilities.len() > MAX_HELLO_ITEMS
        || hello.credential_names.len() > MAX_HELLO_ITEMS
    {
        return Err(Status::invalid_argument(format!(
            "Hello carries more than {MAX_HELLO_ITEMS} labels, capabilities or credential names"
        )));
    }
    if let Some(bad) = hello
        .capabilities
        .iter()
        .chain(&hello.credential_names)
        .find(|n| n.is_empty() || n.len() > MAX_NAME)
    {
        return Err(Status::invalid_argument(format!(
            "Hello declares the job type or credential {bad:?}: names are 1-{MAX_NAME} bytes"
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl Tunnel for TunnelService {
    type AttachStream = FrameStream;

    async fn attach(
        &self,
        req: Request<Streaming<AgentFrame>>,
    ) -> Result<Response<FrameStream>, Status> {
        let state = &self.state;
        if !state.is_serving() {
            return Err(Status::unavailable(
                "this control plane is shutting down; reconnect to another replica",
            ));
        }
        let peer = req.remote_addr();
        let (record, _) = agent_auth::caller(state, &req, "Tunnel.Attach").await?;
        let agent_id = record.agent_id.clone();
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within 10 s of attaching"))??;
        let Some(AgentFrame {
            kind: Some(agent_frame::Kind::Hello(hello)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first frame of a session must be Hello",
            ));
        };
        check_hello(&hello, &agent_id)?;

        let session_id = format!("s-{}", secrets::random_hex(8));
        let tunnel = state.config.tunnel.clone();
        let parts = driver::session::<ServerWire, _, _>(tunnel.clone(), Queues::default(), inbound);
        let interval = state.config.heartbeat_interval;
        let welcome = Welcome {
            session_id: session_id.clone(),
            replica_id: state.replica_id.clone(),
            protocol_version: ProtocolVersion::ProtocolVersion1 as i32,
            heartbeat_interval_ms: u32::try_from(interval.as_millis()).unwrap_or(u32::MAX),
            lease_interval_ms: u32::try_from(crate::jobs::lease(state).as_millis())
                .unwrap_or(u32::MAX),
            initial_channel_window: tunnel.initial_window,
            max_channel_window: tunnel.max_window,
            session_receive_budget: tunnel.receive_budget,
            max_data_frame_bytes: tunnel.max_data_frame,
            server_time_unix_ms: now_ms(),
            pinned_version: String::new(),
            pinned_config_hash: String::new(),
            org_id: record.org_id.clone(),
            pool: record.pool.clone(),
            max_channels: u32::try_from(tunnel.max_channels).unwrap_or(u32::MAX),
            certificate_not_after_unix_ms: record.cert_not_after_ms,
        };
        let hello_record = HelloRecord {
            hostname: hello.hostname.clone(),
            version: hello.agent_version.clone(),
            labels: hello.labels.clone().into_iter().collect(),
            capabilities: hello.capabilities.clone(),
            credential_names: hello.credential_names.clone(),
            config_hash: hello.config_hash.clone(),
        };
        state
            .store
            .record_hello(&agent_id, &hello_record, now_ms())
            .await
            .map_err(|e| store_status("recording the agent's Hello", e))?;

        let cancel = state.cancel.child_token();
        let live = Arc::new(LiveSession::new(
            agent_id.clone(),
            session_id.clone(),
            record.org_id.clone(),
            record.pool.clone(),
            parts.connection.clone(),
            peer,
            now_ms(),
            HelloInfo {
                version: hello.agent_version,
                hostname: hello.hostname,
                config_hash: hello.config_hash,
                capabilities: hello.capabilities,
                credential_names: hello.credential_names,
                max_jobs: hello.max_concurrent_jobs.min(MAX_JOBS_PER_AGENT),
            },
            hello.draining || record.drained_ms != 0,
            cancel,
        ));
        // The stored mark wins: a drained agent that restarted (and forgot)
        // is told again; one undrained while it was away is told so.
        let told = match (record.drained_ms != 0, hello.draining) {
            (true, false) => Some(command::Kind::Drain(DrainCommand { wait_ms: 0 })),
            (false, true) => Some(command::Kind::Undrain(UndrainCommand {})),
            _ => None,
        };
        if let Some(kind) = told {
            let live = live.clone();
            state.tracker.spawn(async move {
                if let Err(e) = live.commands.run(&live.connection, kind, COMMAND_TIMEOUT).await {
                    warn!(agent_id = %live.agent_id, error = %e, "could not align the agent's drain state with the stored one");
                }
            });
        }
        if let Some(old) = state.registry.insert(live.clone()) {
            info!(%agent_id, old_session = %old.session_id, new_session = %session_id, "a newer session replaces the old one");
            old.connection
                .close("replaced by a newer session of the same agent");
            old.cancel.cancel();
        }
        state.metrics.session_attached();
        let span = info_span!("session", %agent_id, %session_id, replica_id = %state.replica_id, pool = %record.pool);
        state.tracker.spawn(
            run_session(
                state.clone(),
                live,
                parts.driver,
                parts.control,
                parts.incoming,
            )
            .instrument(span),
        );

        let connection = parts.connection;
        let ending = stream::once(async move {
            let why = connection
                .close_reason()
                .unwrap_or_else(|| "the session ended".into());
            Err(Status::unavailable(format!(
                "session ended: {why}; reconnect"
            )))
        });
        // Welcome goes first, ahead of anything the session itself sends
        // (its first ping), as the contract promises.
        let welcome = ServerFrame {
            kind: Some(server_frame::Kind::Welcome(welcome)),
        };
        let frames: FrameStream = Box::pin(
            stream::once(async { Ok(welcome) })
                .chain(parts.outbound.map(Ok))
                .chain(ending),
        );
        Ok(Response::new(frames))
    }
}

/// Runs one session until it ends: answers heartbeats, refuses
/// agent-opened channels, and cleans up.
async fn run_session(
    state: Shared,
    live: Arc<LiveSession>,
    driver: Driver<ServerWire, Streaming<AgentFrame>>,
    mut control: mpsc::Receiver<agent_frame::Kind>,
    mut incoming: mpsc::Receiver<IncomingChannel<ServerWire>>,
) {
    info!(peer = ?live.peer, version = %live.hello.version, "agent attached");
    // New capacity: give it work now, not at the next poll.
    state.jobs.wake();
    let mut driver = driver;
    // Store work (heartbeat records, lease renewals, job updates) runs in
    // the session's worker, in order, so a slow store never delays the
    // answers to heartbeats; it finishes what was queued after the session
    // ends.
    let work = worker::spawn(&state, live.clone());
    let end = loop {
        tokio::select! {
            result = &mut driver => break result,
            Some(frame) = control.recv() => handle_control(&state, &live, &work, frame).await,
            Some(offer) = incoming.recv() => offer.refuse(
                ResetCode::ProtocolError,
                "this control plane does not accept channels opened by agents",
            ),
            () = live.cancel.cancelled() => {
                live.connection.close("the control plane ended the session");
            }
        }
    };
    match end {
        Ok(()) => info!("agent detached: it ended the stream"),
        Err(e) => info!(reason = %e, "agent detached"),
    }
    live.commands.abandon();
    state.registry.remove(&live.agent_id, &live.session_id);
    state.metrics.session_detached();
}

async fn handle_control(
    state: &Shared,
    live: &LiveSession,
    work: &mpsc::Sender<worker::Work>,
    frame: agent_frame::Kind,
) {
    let queued = match frame {
        agent_frame::Kind::Heartbeat(hb) => {
            let persist = heartbeat::answer(state, live, hb);
            match heartbeat::record_without_worker(state, live, persist) {
                Ok(()) => Ok(()),
                Err(persist) => work.send(worker::Work::Heartbeat(persist)).await,
            }
        }
        agent_frame::Kind::JobUpdate(u) => work.send(worker::Work::JobUpdate(u)).await,
        other => {
            handle_other(live, other);
            Ok(())
        }
    };
    if queued.is_err() {
        warn!("the session's store worker has stopped; an update was not recorded");
    }
}

fn handle_other(live: &LiveSession, frame: agent_frame::Kind) {
    match frame {
        agent_frame::Kind::Hello(_) => {
            warn!("ignoring a second Hello on a running session");
        }
        agent_frame::Kind::CommandResult(r) => {
            let id = r.command_id;
            if !live.commands.complete(r) {
                debug!(
                    command_id = id,
                    "command result with no command waiting (timed out?)"
                );
            }
        }
        other => {
            debug!(kind = ?std::mem::discriminant(&other), "ignoring a frame this version does not handle yet")
        }
    }
}
