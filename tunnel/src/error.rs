//! Errors of the tunnel layer: per channel, and per session.

use tether::proto::ResetCode;

use crate::ChannelId;

/// Why an operation on one channel failed. The session and its other channels
/// are unaffected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChannelError {
    /// The channel is not in the session: it never existed, was reset, or
    /// finished.
    #[error("channel {0} is closed")]
    Closed(ChannelId),
    /// The channel has not been accepted by the peer yet.
    #[error("channel {0} is not open yet: wait for the peer to accept it")]
    NotOpen(ChannelId),
    /// Data after this side's half-close.
    #[error("channel {0} was already closed for writing")]
    WriteClosed(ChannelId),
    /// accept/refuse on a channel that is not waiting for an answer.
    #[error("channel {0} is not waiting to be accepted")]
    NotIncoming(ChannelId),
    /// Too many channels are open.
    #[error("session already has {0} channels open (max_channels); close some or raise the limit")]
    TooManyChannels(usize),
    /// The session ended.
    #[error("the session has ended")]
    SessionClosed,
}

/// A session-fatal protocol violation: the peer is clearly broken, so the
/// whole session ends (a channel-level violation only resets that channel).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// The peer keeps sending frames for channels that never existed faster
    /// than the resets answering them can be sent.
    #[error(
        "peer sent frames for more than {0} unknown channels without reading the resets; ending the session"
    )]
    UnknownChannelFlood(usize),
}

impl ProtocolError {
    /// The reset code that channels of the ended session get.
    pub fn reset_code(&self) -> ResetCode {
        ResetCode::ProtocolError
    }
}
