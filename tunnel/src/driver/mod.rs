//! The tokio driver: runs a [`Session`] over a stream of inbound messages and
//! offers outbound messages as a stream. The only module that names tokio.
//!
//! [`session`] splits one session into five parts:
//! - [`Driver`], a future that reads the inbound stream and runs timers. It
//!   never waits for anything else (invariant 2): every frame goes into a
//!   buffer the peer was allowed to fill, control frames go to a bounded
//!   queue with `try_send`. It must be spawned or awaited.
//! - [`Outbound`], a stream of outbound messages that the transport polls
//!   when it has room (the request or response body of the gRPC call). It
//!   asks the session for the next frame at that moment, so control frames
//!   overtake data and there is no queue between scheduler and transport.
//! - [`Connection`], a cloneable handle: open channels, queue control
//!   frames, close the session.
//! - the receivers of incoming channels and of inbound control frames.
//!
//! State is shared behind one mutex, held only for bookkeeping, never across
//! an await; wakers are woken after it is released.

mod channel;
mod splice;

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, Waker},
};

use futures_core::Stream;
use tokio::{sync::mpsc, time::Sleep};

pub use self::{
    channel::{Channel, ChannelReset, IncomingChannel},
    splice::{SpliceError, Spliced, splice, splice_tcp},
};
use crate::{
    ChannelError, ChannelId, Config, Event, Frame, Inbound, ProtocolError, ResetCode, ResetInfo,
    Session, SessionStats, Target, Transmit, Wire,
};

/// Inbound frames handled per poll of the driver before it yields, so one
/// busy session cannot hog a runtime worker.
const FRAMES_PER_POLL: usize = 256;

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The inbound stream failed (connection lost, decode error, status).
    #[error("the session's transport failed: {0}")]
    Transport(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The peer broke the protocol badly enough to end the session.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// Control frames arrived faster than the upper layer handled them.
    #[error(
        "{0} control frames are waiting for the upper layer, which is not keeping up; ending the session"
    )]
    ControlBacklog(usize),
    /// This side closed the session.
    #[error("the session was closed: {0}")]
    Closed(String),
}

/// Capacities of the queues towards the upper layer.
#[derive(Clone, Copy, Debug)]
pub struct Queues {
    /// Inbound control frames waiting for the upper layer. A peer that makes
    /// more pile up ends the session ([`SessionError::ControlBacklog`]).
    pub control: usize,
}

impl Default for Queues {
    fn default() -> Self {
        Self { control: 1024 }
    }
}

/// The parts of a running session; see the module docs.
pub struct Parts<W: Wire, S> {
    /// Handle for opening channels and sending control frames.
    pub connection: Connection<W>,
    /// Outbound messages, for the transport to poll.
    pub outbound: Outbound<W>,
    /// Reads the inbound stream; spawn it.
    pub driver: Driver<W, S>,
    /// Channels the peer opened, to accept or refuse.
    pub incoming: mpsc::Receiver<IncomingChannel<W>>,
    /// Inbound upper-layer control frames, in order.
    pub control: mpsc::Receiver<W::ControlIn>,
}

/// Starts a session over `inbound`. `config` must have passed
/// [`Config::validate`].
pub fn session<W, S, E>(config: Config, queues: Queues, inbound: S) -> Parts<W, S>
where
    W: Wire,
    S: Stream<Item = Result<W::In, E>> + Unpin,
    E: std::error::Error + Send + Sync + 'static,
{
    let max_channels = config.max_channels;
    let (incoming_tx, incoming) = mpsc::channel(max_channels);
    let (control_tx, control) = mpsc::channel(queues.control);
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            session: Session::new(W::SIDE, config),
            slots: std::collections::HashMap::new(),
            outbound_waker: None,
            driver_waker: None,
            incoming_tx: Some(incoming_tx),
            control_tx: Some(control_tx),
            ended: None,
            unknown_frames: 0,
            wake: Vec::new(),
        }),
    });
    Parts {
        connection: Connection {
            shared: shared.clone(),
        },
        outbound: Outbound {
            shared: shared.clone(),
            done: false,
        },
        driver: Driver {
            shared,
            inbound,
            timer: Box::pin(tokio::time::sleep_until(tokio::time::Instant::now())),
            timer_at: None,
        },
        incoming,
        control,
    }
}

/// The current instant, from tokio's clock (which tests can pause).
pub(crate) fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

pub(crate) struct Shared<W: Wire> {
    state: Mutex<State<W>>,
}

/// What a channel handle is waiting for, and how its channel ended.
#[derive(Default)]
pub(crate) struct Slot {
    pub(crate) read: Option<Waker>,
    pub(crate) write: Option<Waker>,
    pub(crate) open: Option<Waker>,
    pub(crate) opened: bool,
    pub(crate) reset: Option<ResetInfo>,
    pub(crate) closed: bool,
}

pub(crate) struct State<W: Wire> {
    pub(crate) session: Session<W::ControlOut>,
    pub(crate) slots: std::collections::HashMap<ChannelId, Slot>,
    outbound_waker: Option<Waker>,
    driver_waker: Option<Waker>,
    /// Dropped when the session ends, so that the upper layer's receive
    /// loops end too (handles keep the state alive, so this cannot wait for
    /// the state to drop).
    incoming_tx: Option<mpsc::Sender<IncomingChannel<W>>>,
    control_tx: Option<mpsc::Sender<W::ControlIn>>,
    ended: Option<String>,
    unknown_frames: u64,
    /// Wakers to wake once the lock is released.
    wake: Vec<Waker>,
}

/// The lock held for one operation; on drop it releases the lock and then
/// wakes whoever the operation made runnable.
pub(crate) struct Locked<'a, W: Wire> {
    guard: Option<MutexGuard<'a, State<W>>>,
}

impl<W: Wire> Shared<W> {
    pub(crate) fn lock(&self) -> Locked<'_, W> {
        let guard = self
            .state
            .lock()
            .expect("tunnel state lock poisoned: a task panicked while holding it");
        Locked { guard: Some(guard) }
    }
}

impl<W: Wire> std::ops::Deref for Locked<'_, W> {
    type Target = State<W>;
    fn deref(&self) -> &State<W> {
        self.guard.as_ref().expect("present until drop")
    }
}

impl<W: Wire> std::ops::DerefMut for Locked<'_, W> {
    fn deref_mut(&mut self) -> &mut State<W> {
        self.guard.as_mut().expect("present until drop")
    }
}

impl<W: Wire> Drop for Locked<'_, W> {
    fn drop(&mut self) {
        let wake = match self.guard.as_mut() {
            Some(state) if !state.wake.is_empty() => std::mem::take(&mut state.wake),
            _ => Vec::new(),
        };
        self.guard = None;
        for w in wake {
            w.wake();
        }
    }
}

impl<W: Wire> State<W> {
    /// Routes the session's events to the handles waiting on them, and wakes
    /// the outbound stream if there is something to send.
    pub(crate) fn dispatch(&mut self, shared: &Arc<Shared<W>>) {
        while let Some(event) = self.session.poll_event() {
            match event {
                Event::Incoming { id, target } => self.offer_incoming(shared, id, target),
                Event::Opened(id) => {
                    if let Some(slot) = self.slots.get_mut(&id) {
                        slot.opened = true;
                        self.wake.extend(slot.open.take());
                    }
                }
                Event::Readable(id) => {
                    if let Some(slot) = self.slots.get_mut(&id) {
                        self.wake.extend(slot.read.take());
                    }
                }
                Event::Writable(id) => {
                    if let Some(slot) = self.slots.get_mut(&id) {
                        self.wake.extend(slot.write.take());
                    }
                }
                Event::Reset { id, info } => {
                    if let Some(slot) = self.slots.get_mut(&id) {
                        slot.reset = Some(info);
                        self.wake.extend(
                            [slot.read.take(), slot.write.take(), slot.open.take()]
                                .into_iter()
                                .flatten(),
                        );
                    }
                }
                Event::Closed(id) => {
                    if let Some(slot) = self.slots.get_mut(&id) {
                        slot.closed = true;
                        self.wake
                            .extend([slot.read.take(), slot.write.take()].into_iter().flatten());
                    }
                }
            }
        }
        if self.session.wants_transmit(now()) {
            self.wake.extend(self.outbound_waker.take());
        }
    }

    /// Hands a channel the peer opened to the upper layer, or refuses it if
    /// the upper layer takes none.
    fn offer_incoming(&mut self, shared: &Arc<Shared<W>>, id: ChannelId, target: Target) {
        self.slots.insert(id, Slot::default());
        let offer = IncomingChannel::new(shared.clone(), id, target);
        let rejected = match &self.incoming_tx {
            Some(tx) => match tx.try_send(offer) {
                Ok(()) => None,
                Err(mpsc::error::TrySendError::Full(o) | mpsc::error::TrySendError::Closed(o)) => {
                    Some(o)
                }
            },
            None => Some(offer),
        };
        if let Some(offer) = rejected {
            // Dropping the offer would lock again; answer here instead.
            offer.disarm();
            self.slots.remove(&id);
            let _ = self.session.refuse(
                id,
                ResetCode::ResourceExhausted,
                "this side does not accept channels now",
            );
        }
    }

    /// Ends the session: resets every channel and wakes everything.
    fn end(&mut self, shared: &Arc<Shared<W>>, why: String) {
        if self.ended.is_some() {
            return;
        }
        self.session
            .shutdown(ResetCode::SessionLost, &format!("the session ended: {why}"));
        self.ended = Some(why);
        self.incoming_tx = None;
        self.control_tx = None;
        self.dispatch(shared);
        self.wake.extend(self.outbound_waker.take());
        self.wake.extend(self.driver_waker.take());
    }

    /// Wakes the driver so it re-arms its timer (after an open).
    pub(crate) fn wake_driver(&mut self) {
        self.wake.extend(self.driver_waker.take());
    }

    pub(crate) fn is_ended(&self) -> bool {
        self.ended.is_some()
    }
}

/// A cloneable handle on a running session.
pub struct Connection<W: Wire> {
    shared: Arc<Shared<W>>,
}

impl<W: Wire> Clone for Connection<W> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<W: Wire> std::fmt::Debug for Connection<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

impl<W: Wire> Connection<W> {
    /// Opens a channel to `target` and waits until the peer accepts it.
    /// Cancel-safe: dropping the future resets the channel.
    pub async fn open(&self, target: Target) -> Result<Channel<W>, OpenError> {
        let channel = {
            let mut state = self.shared.lock();
            let id = state.session.open(now(), target.clone())?;
            state.slots.insert(id, Slot::default());
            state.wake_driver();
            state.dispatch(&self.shared);
            Channel::new(self.shared.clone(), id, target)
        };
        std::future::poll_fn(|cx| channel.poll_opened(cx)).await?;
        Ok(channel)
    }

    /// Queues an upper-layer control frame ahead of all data. Gives it back
    /// if the control lane is full (the peer is not reading) or the session
    /// ended.
    pub fn send_control(&self, frame: W::ControlOut) -> Result<(), W::ControlOut> {
        let mut state = self.shared.lock();
        state.session.queue_control(frame)?;
        state.dispatch(&self.shared);
        Ok(())
    }

    /// Ends the session: every channel is reset, the outbound stream ends and
    /// the driver returns [`SessionError::Closed`].
    pub fn close(&self, why: impl Into<String>) {
        let mut state = self.shared.lock();
        state.end(&self.shared, why.into());
    }

    /// Why the session ended, once it has.
    pub fn close_reason(&self) -> Option<String> {
        self.shared.lock().ended.clone()
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().is_ended()
    }

    /// Counters of the session.
    pub fn stats(&self) -> SessionStats {
        self.shared.lock().session.stats().clone()
    }

    /// Channels open now.
    pub fn channel_count(&self) -> usize {
        self.shared.lock().session.channel_count()
    }

    /// The measured round trip, once known.
    pub fn rtt(&self) -> Option<std::time::Duration> {
        self.shared.lock().session.rtt()
    }

    /// Frames of kinds this build does not know, received so far.
    pub fn unknown_frames(&self) -> u64 {
        self.shared.lock().unknown_frames
    }

    /// The receive window committed over all channels, bytes.
    pub fn committed_window(&self) -> u64 {
        self.shared.lock().session.committed_window()
    }
}

/// Why [`Connection::open`] failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The session could not start the open (ended, too many channels).
    #[error(transparent)]
    Local(#[from] ChannelError),
    /// The peer refused the channel, or it was reset while opening.
    #[error(transparent)]
    Refused(#[from] ChannelReset),
}

/// Reads the inbound stream and runs the session's timers. Resolves when the
/// session ends: `Ok` when the peer ended the stream, otherwise why.
#[must_use = "the driver reads the session's inbound frames; spawn it or await it"]
pub struct Driver<W: Wire, S> {
    shared: Arc<Shared<W>>,
    inbound: S,
    timer: Pin<Box<Sleep>>,
    timer_at: Option<std::time::Instant>,
}

impl<W, S, E> Future for Driver<W, S>
where
    W: Wire,
    S: Stream<Item = Result<W::In, E>> + Unpin,
    E: std::error::Error + Send + Sync + 'static,
{
    type Output = Result<(), SessionError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        for _ in 0..FRAMES_PER_POLL {
            if let Some(why) = this.shared.lock().ended.clone() {
                return Poll::Ready(Err(SessionError::Closed(why)));
            }
            match Pin::new(&mut this.inbound).poll_next(cx) {
                Poll::Ready(Some(Ok(message))) => {
                    if let Err(e) = this.handle_message(message) {
                        let mut state = this.shared.lock();
                        state.end(&this.shared, e.to_string());
                        return Poll::Ready(Err(e));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    let mut state = this.shared.lock();
                    state.end(&this.shared, format!("transport failed: {e}"));
                    return Poll::Ready(Err(SessionError::Transport(Box::new(e))));
                }
                Poll::Ready(None) => {
                    let mut state = this.shared.lock();
                    state.end(&this.shared, "the peer ended the stream".into());
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending => return this.poll_timers(cx),
            }
        }
        // Handled a full batch: let other tasks run, then continue.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<W, S> Driver<W, S>
where
    W: Wire,
{
    fn handle_message(&mut self, message: W::In) -> Result<(), SessionError> {
        let mut state = self.shared.lock();
        match W::decode(message) {
            Inbound::Frame(frame) => {
                let result = state.session.handle_frame(now(), frame);
                state.dispatch(&self.shared);
                result?;
            }
            Inbound::Control(c) => {
                if let Some(tx) = &state.control_tx {
                    match tx.try_send(c) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            return Err(SessionError::ControlBacklog(tx.max_capacity()));
                        }
                        // The upper layer does not want control frames.
                        Err(mpsc::error::TrySendError::Closed(_)) => {}
                    }
                }
            }
            Inbound::Unknown => {
                state.unknown_frames += 1;
                if state.unknown_frames == 1 {
                    tracing::warn!(
                        "ignoring a frame kind this version does not know; the peer is newer (counted, logged once)"
                    );
                }
            }
        }
        Ok(())
    }

    /// Runs due timers and arms the sleep for the next one.
    fn poll_timers(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SessionError>> {
        loop {
            let mut state = self.shared.lock();
            state.driver_waker = Some(cx.waker().clone());
            let Some(at) = state.session.poll_timeout() else {
                self.timer_at = None;
                return Poll::Pending;
            };
            let current = now();
            if at <= current {
                state.session.handle_timeout(current);
                state.dispatch(&self.shared);
                // Timers may queue frames (resets, pings): let them go out.
                let outbound = state.outbound_waker.take();
                state.wake.extend(outbound);
                continue;
            }
            drop(state);
            if self.timer_at != Some(at) {
                self.timer_at = Some(at);
                self.timer
                    .as_mut()
                    .reset(tokio::time::Instant::from_std(at));
            }
            match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => continue,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Outbound messages of the session, produced when the transport asks for
/// them. Ends when the session ends.
pub struct Outbound<W: Wire> {
    shared: Arc<Shared<W>>,
    done: bool,
}

impl<W: Wire> Stream for Outbound<W> {
    type Item = W::Out;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<W::Out>> {
        if self.done {
            return Poll::Ready(None);
        }
        let shared = self.shared.clone();
        let mut state = shared.lock();
        if state.is_ended() {
            drop(state);
            self.done = true;
            return Poll::Ready(None);
        }
        match state.session.poll_transmit(now()) {
            Some(t) => {
                if matches!(t, Transmit::Frame(Frame::Ping { .. })) {
                    // A ping in flight has a timeout: the driver arms it.
                    state.wake_driver();
                }
                state.dispatch(&shared);
                Poll::Ready(Some(W::encode(t)))
            }
            None => {
                state.outbound_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
