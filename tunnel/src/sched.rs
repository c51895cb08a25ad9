//! Deficit round-robin over the channels that have data to send.
//!
//! The control lane always goes first (the session checks it before asking
//! this scheduler); what is left is shared between channels by bytes, not by
//! frames, so a channel writing 1 KiB frames gets the same bandwidth as one
//! writing 32 KiB frames, and one bulk copy cannot starve an interactive
//! psql session. Each turn adds one quantum (the largest frame) to a
//! channel's deficit; it sends frames while the next one fits in the
//! deficit. As no frame exceeds the quantum, every turn sends at least one
//! frame.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use crate::{ChannelId, channel::Channel, channel::Fin};

/// What the scheduler picked.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pick {
    /// A data frame of this channel.
    Data(ChannelId, Bytes),
    /// The channel's queued half-close, after its last data.
    Close(ChannelId),
}

/// The active list: channels with queued data or a queued close.
#[derive(Debug, Default)]
pub(crate) struct Scheduler {
    active: VecDeque<ChannelId>,
    /// The front channel's turn has begun (its quantum was added).
    turn_started: bool,
}

impl Scheduler {
    /// Adds a channel that just got something to send (no-op if listed).
    pub(crate) fn schedule(&mut self, ch: &mut Channel) {
        if !ch.scheduled {
            ch.scheduled = true;
            self.active.push_back(ch.id);
        }
    }

    /// Number of channels waiting to send.
    pub(crate) fn len(&self) -> usize {
        self.active.len()
    }

    /// The next frame to send, if any channel has one. Channels that left the
    /// session are dropped from the list as they come up.
    pub(crate) fn pick(
        &mut self,
        channels: &mut HashMap<ChannelId, Channel>,
        quantum: u32,
    ) -> Option<Pick> {
        loop {
            let id = *self.active.front()?;
            let Some(ch) = channels.get_mut(&id) else {
                self.end_turn(None);
                continue;
            };
            if !self.turn_started {
                ch.deficit = ch.deficit.saturating_add(quantum);
                self.turn_started = true;
            }
            let head = ch.send.queue.front().map(Bytes::len);
            match head {
                Some(len) if len <= ch.deficit as usize => {
                    let frame = ch.send.queue.pop_front().expect("head was just seen");
                    ch.send.queued -= len;
                    ch.deficit -= u32::try_from(len).expect("frames are at most the quantum");
                    if !ch.has_send_work() {
                        self.end_turn(Some(ch));
                    }
                    return Some(Pick::Data(id, frame));
                }
                Some(_) => {
                    // Turn over: keep the deficit, go to the back.
                    self.active.rotate_left(1);
                    self.turn_started = false;
                }
                None if ch.send.fin == Fin::Queued => {
                    ch.send.fin = Fin::Sent;
                    self.end_turn(Some(ch));
                    return Some(Pick::Close(id));
                }
                None => self.end_turn(Some(ch)),
            }
        }
    }

    /// Removes the front channel from the active list.
    fn end_turn(&mut self, ch: Option<&mut Channel>) {
        self.active.pop_front();
        self.turn_started = false;
        if let Some(ch) = ch {
            ch.scheduled = false;
            ch.deficit = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Credit, Target, channel::ChannelState};

    fn channel_with(id: u64, frames: &[usize]) -> Channel {
        let mut ch = Channel::new(
            ChannelId(id),
            Target::new("h", 1),
            ChannelState::Open,
            1 << 16,
        );
        ch.send.credit = Credit::try_new(1 << 30).unwrap();
        for &len in frames {
            ch.send.queue.push_back(Bytes::from(vec![0u8; len]));
            ch.send.queued += len;
        }
        ch
    }

    fn bytes_by_channel(picks: &[Pick]) -> HashMap<ChannelId, usize> {
        let mut out = HashMap::new();
        for p in picks {
            if let Pick::Data(id, b) = p {
                *out.entry(*id).or_default() += b.len();
            }
        }
        out
    }

    #[test]
    fn small_and_large_frames_get_equal_bytes() {
        let mut channels = HashMap::new();
        let mut sched = Scheduler::default();
        // Channel 2 writes 1 KiB frames, channel 4 writes 32 KiB frames.
        for ch in [
            channel_with(2, &[1024; 256]),
            channel_with(4, &[32 * 1024; 8]),
        ] {
            channels.insert(ch.id, ch);
        }
        for id in [2, 4] {
            sched.schedule(channels.get_mut(&ChannelId(id)).unwrap());
        }
        // Take 128 KiB worth of turns: 4 rounds of one quantum each.
        let mut picks = Vec::new();
        let mut total = 0;
        while total < 8 * 32 * 1024 {
            let p = sched.pick(&mut channels, 32 * 1024).unwrap();
            if let Pick::Data(_, b) = &p {
                total += b.len();
            }
            picks.push(p);
        }
        let by = bytes_by_channel(&picks);
        assert_eq!(by[&ChannelId(2)], by[&ChannelId(4)], "{by:?}");
    }

    #[test]
    fn close_follows_the_last_data_frame() {
        let mut channels = HashMap::new();
        let mut sched = Scheduler::default();
        let mut ch = channel_with(2, &[10, 20]);
        ch.send.fin = Fin::Queued;
        channels.insert(ch.id, ch);
        sched.schedule(channels.get_mut(&ChannelId(2)).unwrap());
        let picks: Vec<_> = std::iter::from_fn(|| sched.pick(&mut channels, 32 * 1024)).collect();
        assert_eq!(picks.len(), 3);
        assert_eq!(picks[2], Pick::Close(ChannelId(2)));
        assert_eq!(channels[&ChannelId(2)].send.fin, Fin::Sent);
        assert_eq!(sched.len(), 0);
    }

    #[test]
    fn removed_channels_are_skipped() {
        let mut channels = HashMap::new();
        let mut sched = Scheduler::default();
        for ch in [channel_with(2, &[10]), channel_with(4, &[10])] {
            channels.insert(ch.id, ch);
        }
        for id in [2, 4] {
            sched.schedule(channels.get_mut(&ChannelId(id)).unwrap());
        }
        channels.remove(&ChannelId(2));
        assert!(matches!(
            sched.pick(&mut channels, 32 * 1024),
            Some(Pick::Data(ChannelId(4), _))
        ));
        assert_eq!(sched.pick(&mut channels, 32 * 1024), None);
    }
}
