//! The session state machine: channels, credit, lanes, events and timers.
//!
//! # Calling order
//!
//! A [`Session`] does no I/O. Its driver:
//! 1. feeds every frame from the peer to [`Session::handle_frame`], and calls
//!    [`Session::handle_timeout`] when the instant from
//!    [`Session::poll_timeout`] has passed;
//! 2. whenever the transport has room, takes frames from
//!    [`Session::poll_transmit`] until it returns `None` (control lane first,
//!    then data by deficit round-robin);
//! 3. after either, drains [`Session::poll_event`] and wakes whoever waits
//!    on the channels named there.
//!
//! The upper layer opens channels ([`Session::open`]), answers the peer's
//! opens ([`Session::accept`], [`Session::refuse`]), moves bytes
//! ([`Session::send`], [`Session::recv`]), half-closes
//! ([`Session::close`]) and aborts ([`Session::reset`]). Every call takes
//! the current time where time matters; nothing here reads a clock.

mod inbound;
mod outbound;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    time::{Duration, Instant},
};

use bytes::Bytes;
use tether::proto::ResetCode;

pub use crate::channel::ChannelState;
use crate::{
    ChannelError, ChannelId, Config, Frame, MIN_WINDOW, Side, Target,
    channel::{Channel, Fin},
    sched::Scheduler,
};

/// Most resets for never-opened channels that may wait to be sent. A peer
/// that makes more pile up is flooding, and the session ends.
const MAX_PENDING_UNKNOWN_RESETS: usize = 1024;

/// Something the upper layer must react to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The peer asks to open a channel: answer with [`Session::accept`] or
    /// [`Session::refuse`].
    Incoming {
        /// The new channel.
        id: ChannelId,
        /// Where it should go (validated: host not empty, port 1-65535).
        target: Target,
    },
    /// A channel this side opened was accepted; it may send now.
    Opened(ChannelId),
    /// Data, or the end of the peer's data, is waiting: call
    /// [`Session::recv`] until it returns [`Read::Pending`].
    Readable(ChannelId),
    /// Credit arrived for a channel whose last [`Session::send`] could not
    /// take everything.
    Writable(ChannelId),
    /// The channel was refused or aborted and has left the session.
    Reset {
        /// The channel.
        id: ChannelId,
        /// Why.
        info: ResetInfo,
    },
    /// Both directions finished cleanly; the channel has left the session.
    Closed(ChannelId),
}

/// Why a channel was reset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResetInfo {
    /// The reason code (also sent to or received from the peer).
    pub code: ResetCode,
    /// What failed, the value involved and the fix.
    pub message: String,
    /// True if the peer reset the channel; false if this side did (a
    /// protocol violation by the peer, or a timeout).
    pub by_peer: bool,
}

/// Result of [`Session::recv`].
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// Bytes, in order.
    Data(Bytes),
    /// The peer half-closed and every byte has been read.
    Fin,
    /// Nothing yet; a [`Event::Readable`] will follow.
    Pending,
}

/// A snapshot of one channel, for diagnostics and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelInfo {
    /// Lifecycle state.
    pub state: ChannelState,
    /// The target it was opened for.
    pub target: Target,
    /// The receive window this side grants now.
    pub recv_window: u32,
    /// Bytes received and not yet read.
    pub buffered: usize,
    /// Credit the peer still holds on this channel.
    pub peer_credit: u32,
    /// Credit this side still holds for sending.
    pub send_credit: u32,
    /// Bytes queued for sending.
    pub queued: usize,
}

/// Counters of one session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Tunnel frames received.
    pub frames_in: u64,
    /// Tunnel frames sent (upper-layer control frames not included).
    pub frames_out: u64,
    /// Payload bytes received.
    pub bytes_in: u64,
    /// Payload bytes sent.
    pub bytes_out: u64,
    /// Channels that reached the open state.
    pub channels_opened: u64,
    /// Resets sent to the peer.
    pub resets_sent: u64,
    /// Resets received from the peer.
    pub resets_received: u64,
    /// Channel-level protocol violations by the peer (each reset a channel).
    pub violations: u64,
    /// Frames naming channels that never existed.
    pub unknown_channel_frames: u64,
    /// Frames for channels that already ended (normal in flight; dropped).
    pub late_frames: u64,
    /// Window updates sent.
    pub window_updates: u64,
    /// Times auto-tuning doubled a channel's window.
    pub window_growths: u64,
}

/// An item on the control lane.
#[derive(Debug)]
enum Lane<C> {
    /// An upper-layer control frame.
    Upper(C),
    /// A tunnel frame: open, open result, reset.
    Frame(Frame),
    /// A reset answering a frame for a never-opened channel (counted
    /// separately, see [`MAX_PENDING_UNKNOWN_RESETS`]).
    UnknownReset(Frame),
    /// A window update; the increment is computed when it is sent, so that
    /// everything read until then is included.
    Window(ChannelId),
}

/// Round-trip measurement with ping/pong.
#[derive(Debug, Default)]
struct Rtt {
    /// Smoothed round trip (7/8 old + 1/8 new), once measured.
    smoothed: Option<Duration>,
    /// The ping in flight and when it was sent.
    outstanding: Option<(u64, Instant)>,
    /// When to ping next; `None` means at the first chance.
    next_ping: Option<Instant>,
    next_nonce: u64,
    /// A pong owed to the peer (only the latest ping is answered).
    pong_due: Option<u64>,
}

/// One session's channels and flow control. See the module docs for the
/// calling order.
#[derive(Debug)]
pub struct Session<C> {
    side: Side,
    config: Config,
    channels: HashMap<ChannelId, Channel>,
    /// The next id this side allocates.
    next_local_id: u64,
    /// The highest id the peer has opened (0 = none).
    highest_peer_id: u64,
    control: VecDeque<Lane<C>>,
    /// Upper-layer frames on the control lane.
    upper_queued: usize,
    /// Resets for never-opened channels on the control lane.
    unknown_resets_queued: usize,
    sched: Scheduler,
    events: VecDeque<Event>,
    /// Open deadlines of channels this side opened.
    deadlines: BTreeSet<(Instant, ChannelId)>,
    /// Sum of all channels' receive windows.
    committed: u64,
    rtt: Rtt,
    stats: SessionStats,
    closed: bool,
}

impl<C> Session<C> {
    /// A session for one side. `config` must have passed
    /// [`Config::validate`].
    pub fn new(side: Side, config: Config) -> Self {
        debug_assert_eq!(
            config.validate(),
            Ok(()),
            "Session::new needs a validated config"
        );
        Self {
            side,
            config,
            channels: HashMap::new(),
            next_local_id: side.first_id(),
            highest_peer_id: 0,
            control: VecDeque::new(),
            upper_queued: 0,
            unknown_resets_queued: 0,
            sched: Scheduler::default(),
            events: VecDeque::new(),
            deadlines: BTreeSet::new(),
            committed: 0,
            rtt: Rtt::default(),
            stats: SessionStats::default(),
            closed: false,
        }
    }

    /// This session's side.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The limits in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Opens a channel to `target`. The open goes out on the control lane;
    /// [`Event::Opened`] or [`Event::Reset`] follows.
    pub fn open(&mut self, now: Instant, target: Target) -> Result<ChannelId, ChannelError> {
        if self.closed {
            return Err(ChannelError::SessionClosed);
        }
        if self.channels.len() >= self.config.max_channels {
            return Err(ChannelError::TooManyChannels(self.config.max_channels));
        }
        let id = ChannelId(self.next_local_id);
        self.next_local_id += 2;
        let window = self.reserve_window();
        let frame = Frame::Open {
            id,
            host: target.host.clone(),
            port: u32::from(target.port),
            connection: target.connection.clone(),
            connect_timeout_ms: u32::try_from(target.connect_timeout.as_millis())
                .unwrap_or(u32::MAX),
            window,
        };
        let mut ch = Channel::new(id, target, ChannelState::LocalOpening, window);
        let deadline = now + self.config.open_timeout;
        ch.open_deadline = Some(deadline);
        self.deadlines.insert((deadline, id));
        self.channels.insert(id, ch);
        self.control.push_back(Lane::Frame(frame));
        Ok(id)
    }

    /// Accepts a channel the peer opened ([`Event::Incoming`]).
    pub fn accept(&mut self, id: ChannelId) -> Result<(), ChannelError> {
        let window = match self.channels.get(&id) {
            Some(ch) if ch.state == ChannelState::RemoteOpening => self.reserve_window(),
            Some(_) => return Err(ChannelError::NotIncoming(id)),
            None => return Err(ChannelError::Closed(id)),
        };
        let ch = self.channels.get_mut(&id).expect("checked above");
        ch.state = ChannelState::Open;
        ch.recv.window = window;
        ch.recv.available = window;
        self.stats.channels_opened += 1;
        self.control.push_back(Lane::Frame(Frame::OpenResult {
            id,
            result: Ok(window),
        }));
        Ok(())
    }

    /// Refuses a channel the peer opened, telling it why.
    pub fn refuse(
        &mut self,
        id: ChannelId,
        code: ResetCode,
        message: impl Into<String>,
    ) -> Result<(), ChannelError> {
        match self.channels.get(&id) {
            Some(ch) if ch.state == ChannelState::RemoteOpening => {}
            Some(_) => return Err(ChannelError::NotIncoming(id)),
            None => return Err(ChannelError::Closed(id)),
        }
        self.remove(id);
        self.control.push_back(Lane::Frame(Frame::OpenResult {
            id,
            result: Err((code, message.into())),
        }));
        Ok(())
    }

    /// Queues as much of `data` as the peer's credit and the queue limit
    /// allow, taking it from the front of `data`; returns the bytes taken.
    /// When not everything fits, [`Event::Writable`] follows once credit
    /// returns.
    pub fn send(&mut self, id: ChannelId, data: &mut Bytes) -> Result<usize, ChannelError> {
        let (max_frame, max_queue) = (self.config.max_data_frame, self.config.max_send_queue);
        let ch = open_for_writing(&mut self.channels, id)?;
        let taken = ch.send.take(data, max_frame, max_queue);
        if taken > 0 {
            self.sched.schedule(ch);
        }
        Ok(taken)
    }

    /// How many bytes [`Session::send`] would take now (0 marks the channel
    /// as waiting for [`Event::Writable`]).
    pub fn send_capacity(&mut self, id: ChannelId) -> Result<usize, ChannelError> {
        let (max_frame, max_queue) = (self.config.max_data_frame, self.config.max_send_queue);
        let ch = open_for_writing(&mut self.channels, id)?;
        let cap = ch.send.capacity(max_frame, max_queue);
        if cap == 0 {
            ch.send.blocked = true;
        }
        Ok(cap)
    }

    /// Reads up to `max` bytes of a channel. Reading returns credit to the
    /// peer: a window update is queued once half the window has been read.
    pub fn recv(&mut self, now: Instant, id: ChannelId, max: usize) -> Result<Read, ChannelError> {
        let ch = self.channels.get_mut(&id).ok_or(ChannelError::Closed(id))?;
        if ch.state != ChannelState::Open {
            return Err(ChannelError::NotOpen(id));
        }
        if max == 0 {
            return Ok(Read::Pending);
        }
        match ch.recv.read(max) {
            Some(data) => {
                self.after_read(now, id);
                Ok(Read::Data(data))
            }
            None if ch.recv.fin => {
                ch.recv.fin_read = true;
                self.finish_if_done(id);
                Ok(Read::Fin)
            }
            None => {
                ch.recv.readable_signalled = false;
                Ok(Read::Pending)
            }
        }
    }

    /// Half-closes this side of a channel: a close goes out after the data
    /// already queued. The peer's direction stays open.
    pub fn close(&mut self, id: ChannelId) -> Result<(), ChannelError> {
        let ch = open_for_writing(&mut self.channels, id)?;
        ch.send.fin = Fin::Queued;
        self.sched.schedule(ch);
        Ok(())
    }

    /// Aborts a channel in both directions; queued and buffered data is
    /// dropped and the peer is told why. No event follows (the caller knows).
    pub fn reset(
        &mut self,
        id: ChannelId,
        code: ResetCode,
        message: impl Into<String>,
    ) -> Result<(), ChannelError> {
        if self.remove(id).is_none() {
            return Err(ChannelError::Closed(id));
        }
        self.stats.resets_sent += 1;
        self.control.push_back(Lane::Frame(Frame::Reset {
            id,
            code,
            message: message.into(),
        }));
        Ok(())
    }

    /// Queues an upper-layer control frame ahead of all data. Gives it back
    /// when `max_control_queue` frames already wait: the peer is not reading.
    pub fn queue_control(&mut self, frame: C) -> Result<(), C> {
        if self.closed || self.upper_queued >= self.config.max_control_queue {
            return Err(frame);
        }
        self.upper_queued += 1;
        self.control.push_back(Lane::Upper(frame));
        Ok(())
    }

    /// Ends the session: every channel is reset with `code` and reported
    /// with [`Event::Reset`]; later opens fail. Frames still queued are
    /// dropped.
    pub fn shutdown(&mut self, code: ResetCode, message: &str) {
        self.closed = true;
        let ids: Vec<_> = self.channels.keys().copied().collect();
        for id in ids {
            self.remove(id);
            self.events.push_back(Event::Reset {
                id,
                info: ResetInfo {
                    code,
                    message: message.to_owned(),
                    by_peer: false,
                },
            });
        }
        self.control.clear();
        self.upper_queued = 0;
        self.unknown_resets_queued = 0;
    }

    /// Handles timers: opens that got no answer in time are reset.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            let timed_out = self.channels.get(&id).is_some_and(|ch| {
                ch.state == ChannelState::LocalOpening && ch.open_deadline == Some(at)
            });
            if timed_out {
                let message = format!(
                    "no answer to the open of channel {id} within {} ms; the peer is slow or stuck",
                    self.config.open_timeout.as_millis()
                );
                self.reset_locally(id, ResetCode::Timeout, message);
            }
        }
        if let Some((_, sent)) = self.rtt.outstanding
            && now >= sent + 2 * self.config.ping_interval
        {
            // The pong was lost or is stuck behind a huge queue; ping again.
            self.rtt.outstanding = None;
            self.rtt.next_ping = None;
        }
        if self.rtt.next_ping.is_some_and(|at| at <= now) {
            // Due: `None` means "at the first chance", which is not a timer,
            // so a driver whose transport is busy does not spin on it.
            self.rtt.next_ping = None;
        }
    }

    /// The next instant [`Session::handle_timeout`] must run, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let open = self.deadlines.first().map(|&(at, _)| at);
        let ping = match self.rtt.outstanding {
            _ if !self.pings_wanted() || self.closed => None,
            // When to give up on the pong and ping again.
            Some((_, sent)) => Some(sent + 2 * self.config.ping_interval),
            // When the next ping is due (poll_transmit sends it).
            None => self.rtt.next_ping,
        };
        [open, ping].into_iter().flatten().min()
    }

    /// Whether the session measures its round trip now: once when it
    /// starts, then only while channels are open. The round trip serves
    /// window auto-tuning, which idle sessions do not need; heartbeats and
    /// HTTP/2 keepalive watch an idle session's health, so thousands of
    /// idle agents cost no ping traffic (or wake-ups) at all.
    fn pings_wanted(&self) -> bool {
        !self.config.ping_interval.is_zero()
            && (self.rtt.next_nonce == 0 || !self.channels.is_empty())
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether [`Session::poll_transmit`] would return a frame at `now`.
    pub fn wants_transmit(&self, now: Instant) -> bool {
        !self.closed
            && (!self.control.is_empty()
                || self.sched.len() > 0
                || self.rtt.pong_due.is_some()
                || self.ping_due(now))
    }

    /// The smoothed round trip, once measured.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt.smoothed
    }

    /// Counters.
    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// Number of channels in the session.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Sum of all channels' receive windows: the most the peer can make this
    /// side hold.
    pub fn committed_window(&self) -> u64 {
        self.committed
    }

    /// A snapshot of one channel.
    pub fn channel_info(&self, id: ChannelId) -> Option<ChannelInfo> {
        self.channels.get(&id).map(|ch| ChannelInfo {
            state: ch.state,
            target: ch.target.clone(),
            recv_window: ch.recv.window,
            buffered: ch.recv.buffered,
            peer_credit: ch.recv.available,
            send_credit: ch.send.credit.get(),
            queued: ch.send.queued,
        })
    }

    /// Ids of all channels in the session.
    pub fn channel_ids(&self) -> Vec<ChannelId> {
        self.channels.keys().copied().collect()
    }

    /// Whether the session was shut down.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// A receive window for a new channel: the initial window while the
    /// budget lasts, then what is left, but never below [`MIN_WINDOW`].
    fn reserve_window(&mut self) -> u32 {
        let left = self.config.receive_budget.saturating_sub(self.committed);
        let window = u64::from(self.config.initial_window)
            .min(left)
            .max(u64::from(MIN_WINDOW));
        self.committed += window;
        u32::try_from(window).expect("bounded by initial_window")
    }

    /// Takes a channel out of the session and gives its window back to the
    /// budget. The scheduler and timers skip it from now on.
    fn remove(&mut self, id: ChannelId) -> Option<Channel> {
        let ch = self.channels.remove(&id)?;
        self.committed -= u64::from(ch.recv.window);
        if let Some(at) = ch.open_deadline {
            self.deadlines.remove(&(at, id));
        }
        Some(ch)
    }

    /// Resets a channel because of something this side detected, and tells
    /// the upper layer.
    fn reset_locally(&mut self, id: ChannelId, code: ResetCode, message: String) {
        if self.reset(id, code, message.clone()).is_ok() {
            self.events.push_back(Event::Reset {
                id,
                info: ResetInfo {
                    code,
                    message,
                    by_peer: false,
                },
            });
        }
    }

    /// Removes a channel whose both directions are done.
    fn finish_if_done(&mut self, id: ChannelId) {
        if self.channels.get(&id).is_some_and(Channel::is_finished) {
            self.remove(id);
            self.events.push_back(Event::Closed(id));
        }
    }

    /// Bookkeeping after the reader took data: maybe queue a window update.
    fn after_read(&mut self, _now: Instant, id: ChannelId) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        // No credit is owed once the peer has closed: it sends no more.
        let due = !ch.recv.fin && ch.recv.unreturned >= ch.recv.window / 2;
        if due && !ch.window_update_queued {
            ch.window_update_queued = true;
            self.control.push_back(Lane::Window(id));
        }
    }
}

/// The channel, if this side may still write to it.
fn open_for_writing(
    channels: &mut HashMap<ChannelId, Channel>,
    id: ChannelId,
) -> Result<&mut Channel, ChannelError> {
    let ch = channels.get_mut(&id).ok_or(ChannelError::Closed(id))?;
    if ch.state != ChannelState::Open {
        return Err(ChannelError::NotOpen(id));
    }
    if ch.send.fin != Fin::Open {
        return Err(ChannelError::WriteClosed(id));
    }
    Ok(ch)
}
