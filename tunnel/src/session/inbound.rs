//! Frames from the peer. Nothing here waits or allocates beyond what credit
//! allowed: data goes into a buffer the peer was entitled to fill, or the
//! channel is reset. A bad frame for one channel resets that channel only.

use std::time::Instant;

use bytes::Bytes;
use tether::proto::ResetCode;

use super::{Event, Lane, MAX_PENDING_UNKNOWN_RESETS, ResetInfo, Session};
use crate::{
    ChannelId, Credit, DATA_FRAME_OVERHEAD, Frame, ProtocolError, Target,
    channel::{Channel, ChannelState},
};

impl<C> Session<C> {
    /// Handles one frame from the peer. Channel-level violations reset that
    /// channel (and are counted in [`super::SessionStats::violations`]);
    /// only a violation that shows the peer is broken returns an error, and
    /// then the session must end.
    pub fn handle_frame(&mut self, now: Instant, frame: Frame) -> Result<(), ProtocolError> {
        self.stats.frames_in += 1;
        if self.closed {
            return Ok(());
        }
        match frame {
            Frame::Open {
                id,
                host,
                port,
                connection,
                connect_timeout_ms,
                window,
            } => self.on_open(id, host, port, connection, connect_timeout_ms, window),
            Frame::OpenResult { id, result } => self.on_open_result(id, result),
            Frame::Data { id, payload } => self.on_data(id, payload),
            Frame::Window { id, increment } => self.on_window(id, increment),
            Frame::Close { id } => self.on_close(id),
            Frame::Reset { id, code, message } => {
                self.on_reset(id, code, message);
                Ok(())
            }
            Frame::Ping { nonce } => {
                self.rtt.pong_due = Some(nonce);
                Ok(())
            }
            Frame::Pong { nonce } => {
                self.on_pong(now, nonce);
                Ok(())
            }
        }
    }

    fn on_open(
        &mut self,
        id: ChannelId,
        host: String,
        port: u32,
        connection: String,
        connect_timeout_ms: u32,
        window: u32,
    ) -> Result<(), ProtocolError> {
        let peer = self.side.peer();
        if !peer.allocates(id) {
            let message = format!(
                "channel open with id {id}: the {peer:?} side must use {} ids above zero",
                peer.parity()
            );
            return self.violation(id, ResetCode::ProtocolError, message);
        }
        if id.0 <= self.highest_peer_id {
            let message = format!(
                "duplicate open: channel id {id} was already used in this session (ids must increase)"
            );
            return self.violation(id, ResetCode::ProtocolError, message);
        }
        self.highest_peer_id = id.0;
        let refusal = if self.channels.len() >= self.config.max_channels {
            Some((
                ResetCode::ResourceExhausted,
                format!(
                    "session already has {} channels open (max_channels); retry later or raise the limit",
                    self.config.max_channels
                ),
            ))
        } else if host.is_empty() {
            Some((
                ResetCode::ProtocolError,
                "channel open without a target host".to_owned(),
            ))
        } else if !(1..=65535).contains(&port) {
            Some((
                ResetCode::ProtocolError,
                format!("target port {port} is outside 1-65535"),
            ))
        } else if window < DATA_FRAME_OVERHEAD + 1 || Credit::try_new(window).is_err() {
            Some((
                ResetCode::ProtocolError,
                format!("initial window {window} is outside 65-2147483647 bytes"),
            ))
        } else {
            None
        };
        if let Some((code, message)) = refusal {
            self.stats.violations += u64::from(code == ResetCode::ProtocolError);
            self.control.push_back(Lane::Frame(Frame::OpenResult {
                id,
                result: Err((code, message)),
            }));
            return Ok(());
        }
        let target = Target {
            host,
            port: u16::try_from(port).expect("checked to be 1-65535"),
            connection,
            connect_timeout: std::time::Duration::from_millis(u64::from(connect_timeout_ms)),
        };
        // The receive window is reserved when the upper layer accepts.
        let mut ch = Channel::new(id, target.clone(), ChannelState::RemoteOpening, 0);
        ch.send.credit = Credit::try_new(window).expect("checked above");
        self.channels.insert(id, ch);
        self.events.push_back(Event::Incoming { id, target });
        Ok(())
    }

    fn on_open_result(
        &mut self,
        id: ChannelId,
        result: Result<u32, (ResetCode, String)>,
    ) -> Result<(), ProtocolError> {
        let Some(ch) = self.channels.get_mut(&id) else {
            return self.unknown_channel(id, "open result");
        };
        if ch.state != ChannelState::LocalOpening {
            let message = format!("open result for channel {id}, which was not waiting for one");
            return self.violation(id, ResetCode::ProtocolError, message);
        }
        match result {
            Ok(window) => match Credit::try_new(window) {
                Ok(credit) if window > DATA_FRAME_OVERHEAD => {
                    ch.state = ChannelState::Open;
                    ch.send.credit = credit;
                    if let Some(at) = ch.open_deadline.take() {
                        self.deadlines.remove(&(at, id));
                    }
                    self.stats.channels_opened += 1;
                    self.events.push_back(Event::Opened(id));
                    Ok(())
                }
                _ => {
                    let message =
                        format!("open result window {window} is outside 65-2147483647 bytes");
                    self.violation(id, ResetCode::ProtocolError, message)
                }
            },
            Err((code, message)) => {
                self.remove(id);
                self.stats.resets_received += 1;
                self.events.push_back(Event::Reset {
                    id,
                    info: ResetInfo {
                        code,
                        message,
                        by_peer: true,
                    },
                });
                Ok(())
            }
        }
    }

    fn on_data(&mut self, id: ChannelId, payload: Bytes) -> Result<(), ProtocolError> {
        let max_frame = self.config.max_data_frame;
        let Some(ch) = self.channels.get_mut(&id) else {
            return self.unknown_channel(id, "data");
        };
        let len = payload.len();
        let problem = if ch.state != ChannelState::Open {
            Some((
                ResetCode::ProtocolError,
                format!("data on channel {id} before it was accepted"),
            ))
        } else if ch.recv.fin {
            Some((
                ResetCode::ProtocolError,
                format!("data on channel {id} after its close"),
            ))
        } else if len == 0 {
            Some((
                ResetCode::ProtocolError,
                format!("empty data frame on channel {id}"),
            ))
        } else if len > max_frame as usize {
            Some((
                ResetCode::ProtocolError,
                format!(
                    "data frame of {len} bytes on channel {id} exceeds the {max_frame}-byte limit"
                ),
            ))
        } else {
            let cost = u32::try_from(len).expect("len <= max_frame") + DATA_FRAME_OVERHEAD;
            if cost > ch.recv.available {
                Some((
                    ResetCode::FlowControl,
                    format!(
                        "flow control: data frame costing {cost} bytes on channel {id} exceeds the {} bytes of credit granted",
                        ch.recv.available
                    ),
                ))
            } else {
                ch.recv.available -= cost;
                ch.recv.buf.push_back(payload);
                ch.recv.buffered += len;
                self.stats.bytes_in += len as u64;
                if !ch.recv.readable_signalled {
                    ch.recv.readable_signalled = true;
                    self.events.push_back(Event::Readable(id));
                }
                None
            }
        };
        match problem {
            Some((code, message)) => self.violation(id, code, message),
            None => Ok(()),
        }
    }

    fn on_window(&mut self, id: ChannelId, increment: u32) -> Result<(), ProtocolError> {
        let Some(ch) = self.channels.get_mut(&id) else {
            return self.unknown_channel(id, "window update");
        };
        if ch.state != ChannelState::Open {
            let message = format!("window update on channel {id} before it was accepted");
            return self.violation(id, ResetCode::ProtocolError, message);
        }
        if increment == 0 {
            let message = format!("window update of zero bytes on channel {id}");
            return self.violation(id, ResetCode::ProtocolError, message);
        }
        match ch.send.credit.checked_add(increment) {
            Ok(credit) => {
                ch.send.credit = credit;
                if ch.send.blocked {
                    ch.send.blocked = false;
                    self.events.push_back(Event::Writable(id));
                }
                Ok(())
            }
            Err(e) => self.violation(id, ResetCode::FlowControl, format!("channel {id}: {e}")),
        }
    }

    fn on_close(&mut self, id: ChannelId) -> Result<(), ProtocolError> {
        let Some(ch) = self.channels.get_mut(&id) else {
            return self.unknown_channel(id, "close");
        };
        if ch.state != ChannelState::Open {
            let message = format!("close on channel {id} before it was accepted");
            return self.violation(id, ResetCode::ProtocolError, message);
        }
        if ch.recv.fin {
            let message = format!("second close on channel {id}");
            return self.violation(id, ResetCode::ProtocolError, message);
        }
        ch.recv.fin = true;
        if !ch.recv.readable_signalled {
            ch.recv.readable_signalled = true;
            self.events.push_back(Event::Readable(id));
        }
        Ok(())
    }

    fn on_reset(&mut self, id: ChannelId, code: ResetCode, message: String) {
        // Never answer a reset with a reset: two confused peers would loop.
        if self.remove(id).is_none() {
            self.stats.late_frames += 1;
            return;
        }
        self.stats.resets_received += 1;
        self.events.push_back(Event::Reset {
            id,
            info: ResetInfo {
                code,
                message,
                by_peer: true,
            },
        });
    }

    fn on_pong(&mut self, now: Instant, nonce: u64) {
        let Some((sent_nonce, sent_at)) = self.rtt.outstanding else {
            return;
        };
        if sent_nonce != nonce {
            return;
        }
        let sample = now.saturating_duration_since(sent_at);
        self.rtt.smoothed = Some(match self.rtt.smoothed {
            Some(old) => (old * 7 + sample) / 8,
            None => sample,
        });
        self.rtt.outstanding = None;
        self.rtt.next_ping = Some(now + self.config.ping_interval);
    }

    /// A frame for a channel that is not in the session. Ids at or below the
    /// highest ever used belonged to channels that ended (frames in flight
    /// when it ended are normal) and are dropped; any other id never
    /// existed, and the peer is told so.
    fn unknown_channel(&mut self, id: ChannelId, what: &str) -> Result<(), ProtocolError> {
        let existed = if self.side.allocates(id) {
            id.0 < self.next_local_id
        } else {
            self.side.peer().allocates(id) && id.0 <= self.highest_peer_id
        };
        if existed {
            self.stats.late_frames += 1;
            return Ok(());
        }
        self.stats.unknown_channel_frames += 1;
        if self.unknown_resets_queued >= MAX_PENDING_UNKNOWN_RESETS {
            return Err(ProtocolError::UnknownChannelFlood(
                MAX_PENDING_UNKNOWN_RESETS,
            ));
        }
        tracing::debug!(
            channel_id = id.0,
            "{what} for a channel that was never opened"
        );
        self.unknown_resets_queued += 1;
        self.control.push_back(Lane::UnknownReset(Frame::Reset {
            id,
            code: ResetCode::UnknownChannel,
            message: format!("{what} for channel {id}, which was never opened in this session"),
        }));
        Ok(())
    }

    /// The peer broke a rule for one channel: reset it (or, if no such
    /// channel exists, tell the peer) and count it.
    fn violation(
        &mut self,
        id: ChannelId,
        code: ResetCode,
        message: String,
    ) -> Result<(), ProtocolError> {
        self.stats.violations += 1;
        tracing::debug!(channel_id = id.0, %message, "peer protocol violation");
        if self.channels.contains_key(&id) {
            self.reset_locally(id, code, message);
            Ok(())
        } else {
            if self.unknown_resets_queued >= MAX_PENDING_UNKNOWN_RESETS {
                return Err(ProtocolError::UnknownChannelFlood(
                    MAX_PENDING_UNKNOWN_RESETS,
                ));
            }
            self.unknown_resets_queued += 1;
            self.stats.resets_sent += 1;
            self.control
                .push_back(Lane::UnknownReset(Frame::Reset { id, code, message }));
            Ok(())
        }
    }
}
