//! One channel's state: its two halves and their credit.
//!
//! The receive half keeps the flow-control invariant
//! `available + buffered_cost + unreturned == window`: credit the peer still
//! holds, plus bytes waiting for the reader, plus bytes read but not yet
//! returned, is always the window. So the buffer can never hold more than
//! the window (invariant 3), whatever the peer sends: a frame costing more
//! than `available` is refused before it is stored.

use std::{collections::VecDeque, time::Instant};

use bytes::Bytes;

use crate::{ChannelId, Credit, DATA_FRAME_OVERHEAD, Target};

/// Where a channel is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelState {
    /// This side sent an open and waits for the answer.
    LocalOpening,
    /// The peer asked to open; this side has not answered yet.
    RemoteOpening,
    /// Accepted; data may flow in both directions until each half-closes.
    Open,
}

/// Progress of this side's half-close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fin {
    /// Still sending.
    Open,
    /// Close queued behind the data still waiting to be sent.
    Queued,
    /// Close sent.
    Sent,
}

/// The sending half: data this side queued and the credit the peer granted.
#[derive(Debug)]
pub(crate) struct SendHalf {
    /// Credit left after paying for everything queued.
    pub(crate) credit: Credit,
    /// Frames ready to send, each at most `max_data_frame` bytes, already
    /// paid for.
    pub(crate) queue: VecDeque<Bytes>,
    /// Payload bytes in `queue`.
    pub(crate) queued: usize,
    pub(crate) fin: Fin,
    /// A write found no room; report `Writable` when room appears.
    pub(crate) blocked: bool,
}

/// The receiving half: what the peer sent and what this side owes back.
#[derive(Debug)]
pub(crate) struct RecvHalf {
    /// The window this side grants (auto-tuned).
    pub(crate) window: u32,
    /// Credit the peer still holds.
    pub(crate) available: u32,
    /// Data waiting for the reader.
    pub(crate) buf: VecDeque<Bytes>,
    /// Payload bytes in `buf`.
    pub(crate) buffered: usize,
    /// Cost read by the reader but not yet returned with a window update.
    pub(crate) unreturned: u32,
    /// The peer half-closed.
    pub(crate) fin: bool,
    /// The reader has seen the end of the stream.
    pub(crate) fin_read: bool,
    /// When the last window update was sent (auto-tuning compares the gap
    /// between updates with the round trip).
    pub(crate) last_update: Option<Instant>,
    /// A `Readable` event is queued and not yet answered by a read.
    pub(crate) readable_signalled: bool,
}

/// One channel.
#[derive(Debug)]
pub(crate) struct Channel {
    pub(crate) id: ChannelId,
    pub(crate) target: Target,
    pub(crate) state: ChannelState,
    pub(crate) send: SendHalf,
    pub(crate) recv: RecvHalf,
    /// A window update for this channel is queued on the control lane.
    pub(crate) window_update_queued: bool,
    /// When an open by this side times out.
    pub(crate) open_deadline: Option<Instant>,
    /// Deficit round-robin: bytes this channel may still send in its turn.
    pub(crate) deficit: u32,
    /// The channel is in the scheduler's active list.
    pub(crate) scheduled: bool,
}

impl Channel {
    pub(crate) fn new(
        id: ChannelId,
        target: Target,
        state: ChannelState,
        recv_window: u32,
    ) -> Self {
        Self {
            id,
            target,
            state,
            send: SendHalf {
                credit: Credit::ZERO,
                queue: VecDeque::new(),
                queued: 0,
                fin: Fin::Open,
                blocked: false,
            },
            recv: RecvHalf {
                window: recv_window,
                available: recv_window,
                buf: VecDeque::new(),
                buffered: 0,
                unreturned: 0,
                fin: false,
                fin_read: false,
                last_update: None,
                readable_signalled: false,
            },
            window_update_queued: false,
            open_deadline: None,
            deficit: 0,
            scheduled: false,
        }
    }

    /// Whether the scheduler has something to send for this channel.
    pub(crate) fn has_send_work(&self) -> bool {
        !self.send.queue.is_empty() || self.send.fin == Fin::Queued
    }

    /// Both directions finished and the reader saw the end: the channel can
    /// leave the session.
    pub(crate) fn is_finished(&self) -> bool {
        self.send.fin == Fin::Sent && self.recv.fin_read
    }
}

impl SendHalf {
    /// How many payload bytes `take` would accept now: frames of at most
    /// `max_frame` bytes, each paying [`DATA_FRAME_OVERHEAD`], within both
    /// the credit and the queue limit.
    ///
    /// Worked example: 100 000 bytes of credit with 32 KiB frames buys three
    /// full frames (3 × 32 832 = 98 496) and a fourth of 1 504 − 64 = 1 440
    /// bytes: 99 744 bytes of payload.
    pub(crate) fn capacity(&self, max_frame: u32, max_queue: u32) -> usize {
        let per_frame = u64::from(max_frame) + u64::from(DATA_FRAME_OVERHEAD);
        let credit = u64::from(self.credit.get());
        let full = credit / per_frame;
        let rest = (credit % per_frame).saturating_sub(u64::from(DATA_FRAME_OVERHEAD));
        let by_credit = full * u64::from(max_frame) + rest;
        let by_queue = u64::from(max_queue).saturating_sub(self.queued as u64);
        usize::try_from(by_credit.min(by_queue)).unwrap_or(usize::MAX)
    }

    /// Moves as much of `data` into the queue as credit and the queue limit
    /// allow, cut into frames; returns the bytes taken.
    pub(crate) fn take(&mut self, data: &mut Bytes, max_frame: u32, max_queue: u32) -> usize {
        let mut taken = 0;
        while !data.is_empty() {
            let by_credit = self.credit.get().saturating_sub(DATA_FRAME_OVERHEAD);
            let by_queue = (max_queue as usize).saturating_sub(self.queued);
            let n = data
                .len()
                .min(max_frame as usize)
                .min(by_credit as usize)
                .min(by_queue);
            if n == 0 {
                break;
            }
            let cost =
                u32::try_from(n).expect("n is at most max_frame, a u32") + DATA_FRAME_OVERHEAD;
            self.credit = self
                .credit
                .checked_sub(cost)
                .expect("n was bounded by the credit left after overhead");
            self.queue.push_back(data.split_to(n));
            self.queued += n;
            taken += n;
        }
        if !data.is_empty() {
            self.blocked = true;
        }
        taken
    }
}

impl RecvHalf {
    /// Cost of the data waiting for the reader.
    #[cfg(test)]
    pub(crate) fn buffered_cost(&self) -> u64 {
        self.buffered as u64 + u64::from(DATA_FRAME_OVERHEAD) * self.buf.len() as u64
    }

    /// Takes up to `max` bytes for the reader and counts them (and each
    /// frame's overhead, once the frame is used up) as owed back to the peer.
    pub(crate) fn read(&mut self, max: usize) -> Option<Bytes> {
        let chunk = self.buf.front_mut()?;
        let n = max.min(chunk.len());
        let data = chunk.split_to(n);
        let mut released = u32::try_from(n).expect("a chunk is at most max_data_frame bytes");
        if chunk.is_empty() {
            self.buf.pop_front();
            released += DATA_FRAME_OVERHEAD;
        }
        self.buffered -= n;
        self.unreturned += released;
        Some(data)
    }

    /// Checks `available + buffered_cost + unreturned == window`.
    #[cfg(test)]
    pub(crate) fn check_invariant(&self) {
        let sum = u64::from(self.available) + self.buffered_cost() + u64::from(self.unreturned);
        assert_eq!(
            sum,
            u64::from(self.window),
            "receive credit invariant broken: {self:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn half_with_credit(credit: u32) -> SendHalf {
        SendHalf {
            credit: Credit::try_new(credit).unwrap(),
            queue: VecDeque::new(),
            queued: 0,
            fin: Fin::Open,
            blocked: false,
        }
    }

    #[test]
    fn capacity_matches_what_take_accepts() {
        for credit in [0, 64, 65, 1000, 32_832, 32_833, 100_000, 262_144] {
            let mut half = half_with_credit(credit);
            let cap = half.capacity(32 * 1024, 16 << 20);
            let mut data = Bytes::from(vec![7u8; 300_000]);
            let taken = half.take(&mut data, 32 * 1024, 16 << 20);
            assert_eq!(cap, taken, "credit {credit}");
        }
    }

    #[test]
    fn take_cuts_frames_and_pays_overhead() {
        let mut half = half_with_credit(100_000);
        let mut data = Bytes::from(vec![1u8; 200_000]);
        let taken = half.take(&mut data, 32 * 1024, 16 << 20);
        assert_eq!(taken, 99_744);
        assert_eq!(half.queue.len(), 4);
        assert!(half.queue.iter().all(|f| f.len() <= 32 * 1024));
        assert_eq!(half.credit.get(), 0);
        assert!(half.blocked);
        assert_eq!(data.len(), 200_000 - 99_744);
    }

    #[test]
    fn take_respects_the_queue_limit() {
        let mut half = half_with_credit(1 << 30);
        let mut data = Bytes::from(vec![1u8; 100_000]);
        assert_eq!(half.take(&mut data, 32 * 1024, 50_000), 50_000);
        assert_eq!(half.capacity(32 * 1024, 50_000), 0);
    }
}
