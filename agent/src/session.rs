//! One session: the agent's single outbound gRPC stream (`Tunnel.Attach`).
//!
//! Sends `Hello`, waits for `Welcome`, then runs the tunnel: channels the
//! control plane opens are served (see [`crate::channels`]), heartbeats go
//! out every interval the control plane chose, and a session whose
//! heartbeats go unanswered for three intervals is ended so that the agent
//! reconnects.

use std::{
    collections::VecDeque,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures_util::{Stream, StreamExt, stream};
use tether::{
    client,
    proto::{
        AgentFrame, HealthSample, Heartbeat, HeldJob, Hello, JobUpdate, ProtocolVersion, ResetCode,
        ServerFrame, agent_frame, server_frame, tunnel_client::TunnelClient,
    },
};
use tether_tunnel::{
    AgentWire,
    driver::{self, Queues},
};
use tokio::{
    sync::oneshot,
    time::{Instant, MissedTickBehavior},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::Streaming;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::{
    Context as AgentContext, channels, commands,
    health::{Problem, Sampler},
    identity::{self, Enrolled, IdentityError},
};

/// How long the control plane may take to answer Hello.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest message accepted from the control plane.
const MAX_MESSAGE: usize = 1024 * 1024;

/// How a session ended.
#[derive(Debug)]
pub enum Ended {
    /// The control plane asked the agent to reconnect after a while.
    GoAway(Duration),
    /// The agent is shutting down.
    Cancelled,
    /// The stream ended or failed; reconnect with backoff.
    Lost(String),
    /// A restart was asked for (command or watchdog): exit for the
    /// supervisor.
    Restart,
}

/// Why a session could not start.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The control plane refused this agent (unknown, revoked, version).
    #[error("the control plane refused the session: {0}")]
    Refused(String),
    /// It could not be reached, or the session broke before Welcome.
    #[error("cannot attach: {0}")]
    Unavailable(String),
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The response stream of the call, which exists only after the call
/// started, while the driver must exist before (its outbound stream is the
/// request body).
struct LateInbound {
    rx: Option<oneshot::Receiver<Streaming<ServerFrame>>>,
    stream: Option<Streaming<ServerFrame>>,
}

impl Stream for LateInbound {
    type Item = Result<ServerFrame, tonic::Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(rx) = self.rx.as_mut() {
            match Pin::new(rx).poll(cx) {
                Poll::Ready(Ok(s)) => {
                    self.rx = None;
                    self.stream = Some(s);
                }
                Poll::Ready(Err(_)) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
        match self.stream.as_mut() {
            Some(s) => Pin::new(s).poll_next(cx),
            None => Poll::Ready(None),
        }
    }
}

/// Runs one session until it ends.
/// `identity` is renewed during the session when its time comes; the next
/// session then uses the new certificate.
pub async fn run(
    ctx: &Arc<AgentContext>,
    identity: &mut Enrolled,
    cancel: &CancellationToken,
) -> Result<Ended, AttachError> {
    let now_ms = unix_ms();
    if identity.info.not_after_unix_ms > 0 && identity.info.not_after_unix_ms < now_ms {
        return Err(AttachError::Refused(format!(
            "this agent's certificate expired {} s ago (it was not renewed in time: offline for longer than its \
             lifetime?); re-enroll with a new join token",
            (now_ms - identity.info.not_after_unix_ms) / 1000
        )));
    }
    let tls = identity
        .tls(&ctx.trust)
        .map_err(|e| AttachError::Refused(format!("the stored identity cannot be used: {e}")))?;
    let channel =
        client::channel(&ctx.endpoint, tls).map_err(|e| AttachError::Unavailable(e.to_string()))?;
    let (inbound_tx, inbound_rx) = oneshot::channel();
    let parts = driver::session::<AgentWire, _, _>(
        tether_tunnel::Config::default(),
        Queues::default(),
        LateInbound {
            rx: Some(inbound_rx),
            stream: None,
        },
    );
    let hello = AgentFrame {
        kind: Some(agent_frame::Kind::Hello(Hello {
            protocol_version: ProtocolVersion::ProtocolVersion1 as i32,
            agent_id: identity.info.agent_id.clone(),
            agent_version: tether::VERSION.into(),
            capabilities: ctx.jobs.capabilities(),
            credential_names: ctx.jobs.credential_names(),
            labels: ctx.labels.clone().into_iter().collect(),
            config_hash: ctx.config_hash.clone(),
            agent_time_unix_ms: unix_ms(),
            hostname: ctx.hostname.clone(),
            max_concurrent_jobs: ctx.jobs.max_concurrent(),
            egress_rules: ctx.policy.describe(),
            draining: ctx.shared.is_draining(),
            previous_session_id: String::new(),
        })),
    };
    let request = stream::once(async { hello }).chain(parts.outbound);
    let mut client = TunnelClient::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE);
    let response = tokio::select! {
        r = client.attach(request) => r,
        () = cancel.cancelled() => return Ok(Ended::Cancelled),
    };
    let inbound = response.map_err(|s| match s.code() {
        tonic::Code::Unauthenticated
        | tonic::Code::PermissionDenied
        | tonic::Code::FailedPrecondition => AttachError::Refused(s.message().to_owned()),
        _ => AttachError::Unavailable(client::describe_error(&s)),
    })?;
    let _ = inbound_tx.send(inbound.into_inner());

    let connection = parts.connection;
    let mut control = parts.control;
    let mut incoming = parts.incoming;
    let mut driver = parts.driver;

    // The first control frame must be Welcome.
    let welcome = tokio::select! {
        f = tokio::time::timeout(WELCOME_TIMEOUT, control.recv()) => f,
        end = &mut driver => {
            let why = match end { Ok(()) => "the control plane ended the stream".to_owned(), Err(e) => e.to_string() };
            return Err(AttachError::Unavailable(why));
        }
    };
    let welcome = match welcome {
        Ok(Some(server_frame::Kind::Welcome(w))) => w,
        Ok(Some(_)) => {
            return Err(AttachError::Unavailable(
                "the first frame was not Welcome".into(),
            ));
        }
        Ok(None) => {
            return Err(AttachError::Unavailable(
                "the stream ended before Welcome".into(),
            ));
        }
        Err(_) => return Err(AttachError::Unavailable("no Welcome within 15 s".into())),
    };
    let interval = Duration::from_millis(u64::from(welcome.heartbeat_interval_ms.max(100)));
    info!(session_id = %welcome.session_id, replica_id = %welcome.replica_id, heartbeat_interval = ?interval, "attached");
    check_clock(welcome.server_time_unix_ms, ctx.max_clock_skew);

    let tracker = TaskTracker::new();
    let mut sampler = Sampler::new(&ctx.state_dir, ctx.thresholds);
    let mut heartbeats = Heartbeats::new(interval);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut shutting_down = false;
    let mut renew_timer = Box::pin(tokio::time::sleep_until(until(identity.renew_at())));
    let mut renewal: Option<tokio::task::JoinHandle<Result<Enrolled, IdentityError>>> = None;
    let mut restarting = false;
    // Job updates wait here between sessions; this session sends them. An
    // update the control lane has no room for waits for the next tick.
    let mut outbox = ctx.jobs.outbox.lock().await;
    let mut unsent: Option<JobUpdate> = ctx.jobs.take_unsent();
    // Final updates the last session may have lost go again (the control
    // plane acknowledges duplicates quietly).
    resend_finals(&ctx.jobs, &connection, Duration::ZERO);
    if let Some(w) = &ctx.watchdog {
        w.arm(interval * 3 + Duration::from_secs(10));
    }
    // Everything the session does is in a span with its ids, so that log
    // lines (and the recent-log buffer) say which session they belong to.
    let span =
        info_span!("session", agent_id = %identity.info.agent_id, session_id = %welcome.session_id);
    let ended = async {
        loop {
            if let Some(w) = &ctx.watchdog {
                w.beat();
            }
            tokio::select! {
                end = &mut driver => {
                    break match end {
                        _ if restarting => Ended::Restart,
                        Ok(()) if shutting_down => Ended::Cancelled,
                        Ok(()) => Ended::Lost("the control plane ended the stream".into()),
                        Err(_) if shutting_down => Ended::Cancelled,
                        Err(e) => Ended::Lost(e.to_string()),
                    };
                }
                Some(offer) = incoming.recv() => {
                    if ctx.shared.is_draining() {
                        offer.refuse(ResetCode::Draining, "this agent is drained (`tetherctl agents undrain` to undo)");
                    } else if let Some(p) = ctx.shared.problem() {
                        offer.refuse(ResetCode::ResourceExhausted, format!("this agent takes no new work: {}", p.message));
                    } else {
                        tracker.spawn(channels::serve(ctx.policy.clone(), offer).in_current_span());
                    }
                }
                Some(u) = outbox.recv(), if unsent.is_none() => {
                    if let Err(agent_frame::Kind::JobUpdate(u)) = connection.send_control(agent_frame::Kind::JobUpdate(u)) {
                        unsent = Some(u);
                    }
                }
                Some(frame) = control.recv() => {
                    if let Some(end) = handle_control(ctx, &connection, &tracker, &mut heartbeats, frame) {
                        connection.close("the control plane sent GoAway");
                        break end;
                    }
                }
                () = ctx.shared.restart.cancelled(), if !restarting => {
                    restarting = true;
                    connection.close("the agent is restarting");
                }
                _ = tick.tick() => {
                    if heartbeats.unanswered(Instant::now()) {
                        warn!(interval = ?interval, "no heartbeat answer for three intervals; reconnecting");
                        connection.close("heartbeats went unanswered");
                        break Ended::Lost("heartbeats went unanswered for three intervals".into());
                    }
                    if let Some(u) = unsent.take()
                        && let Err(agent_frame::Kind::JobUpdate(u)) = connection.send_control(agent_frame::Kind::JobUpdate(u))
                    {
                        unsent = Some(u);
                    }
                    resend_finals(&ctx.jobs, &connection, interval * 3);
                    let (mut sample, problem) = sampler.sample();
                    note_problem(ctx.shared.set_problem(problem.clone()), problem);
                    sample.open_channels = u32::try_from(connection.channel_count()).unwrap_or(u32::MAX);
                    sample.config_hash.clone_from(&ctx.config_hash);
                    sample.draining = ctx.shared.is_draining();
                    sample.running_jobs = u32::try_from(ctx.jobs.running()).unwrap_or(u32::MAX);
                    sample.certificate_not_after_unix_ms = identity.info.not_after_unix_ms;
                    let hb = heartbeats.next(sample, ctx.jobs.held());
                    if connection.send_control(agent_frame::Kind::Heartbeat(hb)).is_err() {
                        debug!("heartbeat not queued: the control lane is full or the session ended");
                    }
                }
                () = &mut renew_timer, if renewal.is_none() => {
                    let (dir, channel, current) = (ctx.state_dir.clone(), channel.clone(), identity.clone());
                    // Ends with the RPC (bounded by tonic's connect timeout and the
                    // control plane's answer); awaited below.
                    renewal = Some(tokio::spawn(async move { identity::renew(&dir, channel, current).await }));
                }
                done = async { renewal.as_mut().expect("guarded by the branch condition").await }, if renewal.is_some() => {
                    renewal = None;
                    let retry = match done {
                        Ok(Ok(renewed)) => {
                            *identity = renewed;
                            until(identity.renew_at())
                        }
                        Ok(Err(e @ IdentityError::Refused { .. })) => {
                            error!(error = %e, "certificate renewal refused; the agent stops working when its certificate expires");
                            tokio::time::Instant::now() + RENEW_RETRY_REFUSED
                        }
                        Ok(Err(e)) => {
                            warn!(error = %e, retry_in = ?RENEW_RETRY, "certificate renewal failed");
                            tokio::time::Instant::now() + RENEW_RETRY
                        }
                        Err(e) => {
                            error!(error = %e, "the renewal task failed");
                            tokio::time::Instant::now() + RENEW_RETRY
                        }
                    };
                    renew_timer.as_mut().reset(retry);
                }
                () = cancel.cancelled(), if !shutting_down => {
                    shutting_down = true;
                    connection.close("the agent is shutting down");
                }
            }
        }
    }
    .instrument(span)
    .await;
    if let Some(w) = &ctx.watchdog {
        w.disarm();
    }
    // An update this session could not send goes out first in the next.
    ctx.jobs.keep_unsent(unsent);
    drop(outbox);
    if let Some(r) = renewal {
        r.abort();
    }
    // Channels end with the session (their resets are already queued).
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
    info!(reason = ?ended, "session ended");
    Ok(ended)
}

/// Retry delay after a failed renewal (the control plane unreachable).
const RENEW_RETRY: Duration = Duration::from_secs(30);
/// Retry delay after a refused renewal (revoked, say).
const RENEW_RETRY_REFUSED: Duration = Duration::from_secs(600);

/// A wall-clock time as a tokio instant (now if it passed).
fn until(at: SystemTime) -> tokio::time::Instant {
    let wait = at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    tokio::time::Instant::now() + wait
}

/// Warns when this host's clock is off the control plane's by more than
/// `limit`: certificates and leases depend on it, and the failure it causes
/// later (a TLS error) would not say why.
fn check_clock(server_time_unix_ms: i64, limit: Duration) {
    if server_time_unix_ms <= 0 {
        return;
    }
    let skew_ms = unix_ms() - server_time_unix_ms;
    let limit_ms = i64::try_from(limit.as_millis()).unwrap_or(i64::MAX);
    if skew_ms.abs() > limit_ms {
        let direction = if skew_ms > 0 { "ahead of" } else { "behind" };
        warn!(
            clock_skew_ms = skew_ms,
            "this host's clock is {:.1} s {direction} the control plane's (more than the allowed {limit:?}); \
             fix it (NTP, e.g. `timedatectl set-ntp true`): certificates stop working when clocks disagree",
            skew_ms.unsigned_abs() as f64 / 1000.0
        );
    }
}

/// Logs when a workspace problem starts, changes or ends.
fn note_problem(before: Option<Problem>, now: Option<Problem>) {
    match (before, now) {
        (None, Some(p)) => warn!(problem = p.code, "{}", p.message),
        (Some(b), Some(p)) if b.code != p.code => warn!(problem = p.code, "{}", p.message),
        (Some(b), None) => info!(
            problem = b.code,
            "the workspace problem is over; taking work again"
        ),
        _ => {}
    }
}

fn handle_control(
    ctx: &Arc<AgentContext>,
    connection: &driver::Connection<AgentWire>,
    tracker: &TaskTracker,
    heartbeats: &mut Heartbeats,
    frame: server_frame::Kind,
) -> Option<Ended> {
    match frame {
        server_frame::Kind::HeartbeatAck(ack) => heartbeats.acked(ack.sequence, Instant::now()),
        server_frame::Kind::GoAway(g) => {
            info!(reason = %g.reason, reconnect_after_ms = g.reconnect_after_ms, "the control plane asks this agent to go away");
            return Some(Ended::GoAway(Duration::from_millis(u64::from(
                g.reconnect_after_ms,
            ))));
        }
        server_frame::Kind::Command(cmd) => {
            // Bounded: the control plane keeps at most 64 commands in flight
            // per session, and each ends by its own deadline.
            tracker.spawn(commands::run(ctx.clone(), connection.clone(), cmd).in_current_span());
        }
        server_frame::Kind::JobAssign(job) => ctx.jobs.assign(job),
        server_frame::Kind::JobCancel(c) => ctx.jobs.cancel(&c.job_id, c.lease_token, &c.reason),
        server_frame::Kind::JobAck(a) => ctx.jobs.acked(&a.job_id, a.lease_token),
        server_frame::Kind::Welcome(_) => warn!("ignoring a second Welcome"),
        other => {
            debug!(kind = ?std::mem::discriminant(&other), "ignoring a frame this version does not handle")
        }
    }
    None
}

/// Sends the final job updates still unacknowledged after `after`; one the
/// control lane has no room for goes at a later tick.
fn resend_finals(
    jobs: &crate::jobs::Runner,
    connection: &driver::Connection<AgentWire>,
    after: Duration,
) {
    for u in jobs.finals_due(after) {
        debug!(job_id = %u.job_id, "sending a job's final update again: not acknowledged yet");
        if connection
            .send_control(agent_frame::Kind::JobUpdate(u))
            .is_err()
        {
            break;
        }
    }
}

/// Heartbeat bookkeeping: sequence numbers, send times, measured RTT.
struct Heartbeats {
    interval: Duration,
    sequence: u64,
    /// Sent and not yet answered, oldest first (bounded by `MAX_PENDING`).
    pending: VecDeque<(u64, Instant)>,
    last_ack: Instant,
    last_rtt: Duration,
}

/// Unanswered heartbeats remembered; older ones are forgotten.
const MAX_PENDING: usize = 16;

impl Heartbeats {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            sequence: 0,
            pending: VecDeque::new(),
            last_ack: Instant::now(),
            last_rtt: Duration::ZERO,
        }
    }

    fn next(&mut self, sample: HealthSample, held_jobs: Vec<HeldJob>) -> Heartbeat {
        self.sequence += 1;
        if self.pending.len() == MAX_PENDING {
            self.pending.pop_front();
        }
        self.pending.push_back((self.sequence, Instant::now()));
        Heartbeat {
            sequence: self.sequence,
            agent_time_unix_ms: unix_ms(),
            last_rtt_us: u64::try_from(self.last_rtt.as_micros()).unwrap_or(u64::MAX),
            sample: Some(sample),
            held_jobs,
        }
    }

    fn acked(&mut self, sequence: u64, now: Instant) {
        self.last_ack = now;
        while let Some(&(seq, sent)) = self.pending.front() {
            if seq > sequence {
                break;
            }
            self.pending.pop_front();
            if seq == sequence {
                self.last_rtt = now.saturating_duration_since(sent);
            }
        }
    }

    /// No answer for three intervals while heartbeats were outstanding.
    fn unanswered(&self, now: Instant) -> bool {
        self.pending
            .front()
            .is_some_and(|&(_, sent)| now.saturating_duration_since(sent) > self.interval * 3)
            && now.saturating_duration_since(self.last_ack) > self.interval * 3
    }
}
