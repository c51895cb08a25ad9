//! `Dial.Open`: the connector runtime's byte stream to a target, through an
//! agent of a pool. One call per stream; HTTP/2 flow control of the call is
//! the backpressure between client and channel.

use std::{pin::Pin, time::Duration};

use futures_util::{Stream, StreamExt};
use tether::{
    dial::DialStream,
    proto::{DialFrame, DialOpened, DialReset, dial_frame, dial_server::Dial},
};
use tether_tunnel::Target;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info_span, warn};

use crate::{
    auth::{Need, authorize},
    router::{self, RouteError},
    services::admin::validate::{check_pool, check_target},
    splice,
    state::{Shared, store_status},
};

/// How long a client may take to send its `open` frame.
const OPEN_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Default wait for the channel to open.
const DEFAULT_OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait a client may ask for.
const MAX_OPEN_TIMEOUT: Duration = Duration::from_secs(120);
/// Frames queued towards the client per stream; HTTP/2 flow control does
/// the rest.
const TO_CLIENT_QUEUE: usize = 16;
/// Largest Dial message accepted.
pub const MAX_MESSAGE: usize = 1024 * 1024 + 1024;

/// The Dial service.
#[derive(Debug, Clone)]
pub struct DialService {
    state: Shared,
}

impl DialService {
    pub fn new(state: Shared) -> Self {
        Self { state }
    }
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<DialFrame, Status>> + Send>>;

fn single(frame: DialFrame) -> FrameStream {
    Box::pin(futures_util::stream::iter([Ok(frame)]))
}

#[tonic::async_trait]
impl Dial for DialService {
    type OpenStream = FrameStream;

    async fn open(
        &self,
        req: Request<Streaming<DialFrame>>,
    ) -> Result<Response<FrameStream>, Status> {
        let who = authorize(&self.state, &req, Need::Dial, "Dial").await?;
        let state = &self.state;
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(OPEN_FRAME_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no open frame within 10 s"))??;
        let Some(DialFrame {
            kind: Some(dial_frame::Kind::Open(open)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first frame of Dial.Open must be `open`",
            ));
        };
        who.may_dial(&open.connection, &open.pool)?;
        let (pool, host, port, connection) = if open.connection.is_empty() {
            check_pool(&open.pool)?;
            let port = check_target(&open.target_host, open.target_port)?;
            (open.pool, open.target_host, port, String::new())
        } else {
            let c = state
                .store
                .get_connection(&who.org_id, &open.connection)
                .await
                .map_err(|e| store_status("reading the connection", e))?
                .ok_or_else(|| {
                    state.metrics.dial_error("unknown_connection");
                    Status::not_found(format!(
                        "no connection named {:?}; list them with `tetherctl connections list`",
                        open.connection
                    ))
                })?;
            (c.pool, c.target_host, c.target_port, c.name)
        };
        let timeout = match open.timeout_ms {
            0 => DEFAULT_OPEN_TIMEOUT,
            ms => Duration::from_millis(u64::from(ms)).min(MAX_OPEN_TIMEOUT),
        };
        let mut target = Target::new(host.clone(), port);
        target.connection = connection;
        target.connect_timeout = timeout;
        let routed = router::open(
            &state.registry,
            &who.org_id,
            &pool,
            target,
            state.config.heartbeat_interval,
            timeout,
        )
        .await;
        let (channel, session) = match routed {
            Ok(pair) => pair,
            Err(e) => {
                state.metrics.dial_error(&e.reason());
                debug!(%pool, %host, port, error = %e, "dial refused");
                return match e {
                    RouteError::NoAgent { .. } | RouteError::AllFailed { .. } => {
                        Err(Status::unavailable(e.to_string()))
                    }
                    RouteError::Target(_) | RouteError::Timeout { .. } => {
                        Ok(Response::new(single(DialFrame {
                            kind: Some(dial_frame::Kind::Reset(DialReset {
                                code: e.code() as i32,
                                message: e.to_string(),
                            })),
                        })))
                    }
                };
            }
        };
        let (tx, rx) = mpsc::channel(TO_CLIENT_QUEUE);
        let opened = DialFrame {
            kind: Some(dial_frame::Kind::Opened(DialOpened {
                agent_id: session.agent_id.clone(),
                channel_id: channel.id().0,
            })),
        };
        if tx.send(opened).await.is_err() {
            return Err(Status::internal(
                "the response stream closed before it started",
            ));
        }
        let metrics = state.metrics.channel_opened(&pool, "dial");
        let span = info_span!("channel", channel_id = %channel.id(), target_host = %host, agent_id = %session.agent_id, via = "dial");
        let stream = DialStream::server_side(tx, inbound);
        state.tracker.spawn(
            async move {
                let mut stream = stream;
                let mut channel = channel;
                match splice::run(&mut channel, &mut stream, &metrics).await {
                    Ok(()) => {}
                    Err(splice::Failed::Client(e)) => debug!(error = %e, "dial client went away"),
                    Err(splice::Failed::Channel(reset)) => {
                        warn!(code = ?reset.code, reason = %reset.message, "channel reset");
                        stream.reset(reset.code, reset.message);
                    }
                }
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(Ok))))
    }
}
