//! Two sessions connected in memory: the control-plane end and the agent
//! end of one tunnel, with no sockets. For tests and benchmarks.
//!
//! Without delay, each driver polls the other side's outbound stream
//! directly: no queue in between, exactly as a transport that is always
//! ready. With a delay, a forwarding task stamps each frame and the other
//! side receives it that much later (tokio time, so a paused test clock
//! controls it): a link with a round trip of twice the delay and unlimited
//! bandwidth.

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use futures_core::Stream;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use crate::{
    AgentWire, Config, ServerWire, Wire,
    driver::{self, Connection, IncomingChannel, Outbound, Queues, SessionError},
};

/// Frames a delayed link holds in flight per direction. Credit bounds the
/// data in flight; this only has to exceed it (16 MiB / 32 KiB = 512 frames
/// per channel at the largest window).
const DELAYED_LINK_FRAMES: usize = 64 * 1024;

/// One end of an in-memory tunnel.
pub struct Endpoint<W: Wire> {
    /// Opens channels, sends control frames.
    pub connection: Connection<W>,
    /// Channels the other end opened.
    pub incoming: mpsc::Receiver<IncomingChannel<W>>,
    /// Control frames from the other end.
    pub control: mpsc::Receiver<W::ControlIn>,
    /// The driver task; resolves when the session ends.
    pub driver: JoinHandle<Result<(), SessionError>>,
}

/// Connects a control-plane session and an agent session in memory, each
/// direction delayed by `one_way` (zero for a direct link). Must run inside
/// a tokio runtime.
pub fn pair(config: Config, one_way: Duration) -> (Endpoint<ServerWire>, Endpoint<AgentWire>) {
    let (to_cp_tx, to_cp_rx) = oneshot::channel();
    let (to_agent_tx, to_agent_rx) = oneshot::channel();
    let cp =
        driver::session::<ServerWire, _, _>(config.clone(), Queues::default(), Lazy::new(to_cp_rx));
    let agent =
        driver::session::<AgentWire, _, _>(config, Queues::default(), Lazy::new(to_agent_rx));
    link(agent.outbound, to_cp_tx, one_way);
    link(cp.outbound, to_agent_tx, one_way);
    let cp_end = Endpoint {
        connection: cp.connection,
        incoming: cp.incoming,
        control: cp.control,
        driver: tokio::spawn(cp.driver),
    };
    let agent_end = Endpoint {
        connection: agent.connection,
        incoming: agent.incoming,
        control: agent.control,
        driver: tokio::spawn(agent.driver),
    };
    (cp_end, agent_end)
}

type Boxed<T> = Pin<Box<dyn Stream<Item = T> + Send>>;

/// Delivers `outbound` as the other side's inbound stream.
fn link<W: Wire>(outbound: Outbound<W>, to: oneshot::Sender<Boxed<W::Out>>, one_way: Duration) {
    if one_way.is_zero() {
        let _ = to.send(Box::pin(outbound));
        return;
    }
    let (tx, rx) = mpsc::channel::<(tokio::time::Instant, W::Out)>(DELAYED_LINK_FRAMES);
    // Ends when the outbound stream ends (session over) or the receiving
    // side is gone.
    tokio::spawn(async move {
        let mut outbound = outbound;
        while let Some(frame) =
            std::future::poll_fn(|cx| Pin::new(&mut outbound).poll_next(cx)).await
        {
            if tx
                .send((tokio::time::Instant::now() + one_way, frame))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let delayed = Delayed {
        rx,
        head: None,
        sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
    };
    let _ = to.send(Box::pin(delayed));
}

/// A stream that becomes available later (breaks the chicken-and-egg of two
/// sessions that each need the other's outbound stream).
struct Lazy<T> {
    pending: Option<oneshot::Receiver<Boxed<T>>>,
    stream: Option<Boxed<T>>,
}

impl<T> Lazy<T> {
    fn new(rx: oneshot::Receiver<Boxed<T>>) -> Self {
        Self {
            pending: Some(rx),
            stream: None,
        }
    }
}

impl<T> Stream for Lazy<T> {
    type Item = Result<T, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(rx) = self.pending.as_mut() {
            match Pin::new(rx).poll(cx) {
                Poll::Ready(Ok(stream)) => {
                    self.pending = None;
                    self.stream = Some(stream);
                }
                Poll::Ready(Err(_)) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
        match self.stream.as_mut() {
            Some(s) => s.as_mut().poll_next(cx).map(|o| o.map(Ok)),
            None => Poll::Ready(None),
        }
    }
}

use std::future::Future;

/// Frames released at their delivery time.
struct Delayed<T> {
    rx: mpsc::Receiver<(tokio::time::Instant, T)>,
    head: Option<(tokio::time::Instant, T)>,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl<T: Unpin> Stream for Delayed<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if self.head.is_none() {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(item)) => {
                    let at = item.0;
                    self.head = Some(item);
                    self.sleep.as_mut().reset(at);
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(self.head.take().map(|(_, t)| t)),
            Poll::Pending => Poll::Pending,
        }
    }
}
