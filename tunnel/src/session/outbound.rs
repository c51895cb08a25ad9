//! Frames to the peer: pong and ping first, then the control lane, then data
//! by deficit round-robin. Window updates are computed when they are sent
//! and grow the windows of channels whose reader keeps up.

use std::time::Instant;

use super::{Event, Lane, Session};
use crate::{ChannelId, Frame, MIN_WINDOW, Transmit, sched::Pick};

impl<C> Session<C> {
    /// The next frame to send, if any. Call until it returns `None` whenever
    /// the transport has room.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit<C>> {
        if self.closed {
            return None;
        }
        if let Some(nonce) = self.rtt.pong_due.take() {
            return Some(self.out(Frame::Pong { nonce }));
        }
        if let Some(ping) = self.due_ping(now) {
            return Some(self.out(ping));
        }
        while let Some(item) = self.control.pop_front() {
            match item {
                Lane::Upper(c) => {
                    self.upper_queued -= 1;
                    return Some(Transmit::Control(c));
                }
                Lane::Frame(f) => return Some(self.out(f)),
                Lane::UnknownReset(f) => {
                    self.unknown_resets_queued -= 1;
                    return Some(self.out(f));
                }
                Lane::Window(id) => {
                    if let Some(f) = self.window_update(now, id) {
                        return Some(self.out(f));
                    }
                }
            }
        }
        let pick = self
            .sched
            .pick(&mut self.channels, self.config.max_data_frame)?;
        match pick {
            Pick::Data(id, payload) => {
                self.stats.bytes_out += payload.len() as u64;
                if let Some(ch) = self.channels.get_mut(&id)
                    && ch.send.blocked
                    && ch
                        .send
                        .capacity(self.config.max_data_frame, self.config.max_send_queue)
                        > 0
                {
                    // Queue room freed up for a writer that hit the limit.
                    ch.send.blocked = false;
                    self.events.push_back(Event::Writable(id));
                }
                Some(self.out(Frame::Data { id, payload }))
            }
            Pick::Close(id) => {
                self.finish_if_done(id);
                Some(self.out(Frame::Close { id }))
            }
        }
    }

    fn out(&mut self, f: Frame) -> Transmit<C> {
        self.stats.frames_out += 1;
        Transmit::Frame(f)
    }

    /// Whether a ping should go out now: none in flight and its time came
    /// (the first one goes at the first chance).
    pub(super) fn ping_due(&self, now: Instant) -> bool {
        self.pings_wanted()
            && self.rtt.outstanding.is_none()
            && self.rtt.next_ping.is_none_or(|at| at <= now)
    }

    /// A ping, when one is due.
    fn due_ping(&mut self, now: Instant) -> Option<Frame> {
        if !self.ping_due(now) {
            return None;
        }
        let nonce = self.rtt.next_nonce;
        self.rtt.next_nonce += 1;
        self.rtt.outstanding = Some((nonce, now));
        Some(Frame::Ping { nonce })
    }

    /// Builds the window update for a channel: everything read since the
    /// last update, plus window growth or minus shrinkage.
    ///
    /// Auto-tuning: if this update follows the previous one by less than two
    /// round trips, the reader drained a whole half-window within about one
    /// round trip, so the window, not the reader, limits the channel; the
    /// window doubles (up to `max_window`, within the session budget). At
    /// 50 ms RTT a 256 KiB window carries about 5 MB/s; six doublings reach
    /// 16 MiB, about 335 MB/s. If the session is over its budget (channels
    /// opened after it was spent got `MIN_WINDOW` each), the window shrinks
    /// instead by keeping back some of what was read.
    fn window_update(&mut self, now: Instant, id: ChannelId) -> Option<Frame> {
        let srtt = self.rtt.smoothed;
        let (max_window, budget) = (self.config.max_window, self.config.receive_budget);
        let over_budget = self.committed.saturating_sub(budget);
        let headroom = budget.saturating_sub(self.committed);
        let ch = self.channels.get_mut(&id)?;
        ch.window_update_queued = false;
        if ch.recv.fin {
            return None;
        }
        let recv = &mut ch.recv;
        let mut growth = 0u32;
        let mut shrink = 0u32;
        if over_budget > 0 {
            let room = recv.window.saturating_sub(MIN_WINDOW);
            shrink = u32::try_from(over_budget.min(u64::from(room)))
                .expect("bounded by a u32")
                .min(recv.unreturned);
        } else if let (Some(last), Some(rtt)) = (recv.last_update, srtt)
            && now.saturating_duration_since(last) < 2 * rtt
            && recv.window < max_window
        {
            let want = recv.window.min(max_window - recv.window);
            growth = u32::try_from(u64::from(want).min(headroom)).expect("bounded by a u32");
        }
        let returned = recv.unreturned - shrink;
        let increment = returned + growth;
        recv.unreturned = 0;
        recv.window = recv.window - shrink + growth;
        recv.available += increment;
        recv.last_update = Some(now);
        self.committed = self.committed - u64::from(shrink) + u64::from(growth);
        if growth > 0 {
            self.stats.window_growths += 1;
        }
        if increment == 0 {
            return None;
        }
        self.stats.window_updates += 1;
        Some(Frame::Window { id, increment })
    }
}
