//! The tunnel's frames: what one session says about its channels.
//!
//! These are the channel frames of `tether.v1` (open, open result, data,
//! window, close, reset) plus ping/pong, independent of which side sends
//! them. [`crate::Wire`] maps them to and from `AgentFrame`/`ServerFrame`.

use std::{fmt, time::Duration};

use bytes::Bytes;
use tether::proto::ResetCode;

/// A channel's id within one session. The opener allocates it: the control
/// plane even ids from 2, the agent odd ids from 1, strictly increasing and
/// never reused. Zero is never a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(pub u64);

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Which end of the session this is; decides channel id parity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The control plane: opens even channel ids.
    ControlPlane,
    /// The agent: opens odd channel ids.
    Agent,
}

impl Side {
    /// The other end.
    pub fn peer(self) -> Side {
        match self {
            Side::ControlPlane => Side::Agent,
            Side::Agent => Side::ControlPlane,
        }
    }

    /// The first id this side allocates.
    pub(crate) fn first_id(self) -> u64 {
        match self {
            Side::ControlPlane => 2,
            Side::Agent => 1,
        }
    }

    /// Whether this side allocates `id`.
    pub fn allocates(self, id: ChannelId) -> bool {
        id.0 != 0 && id.0.is_multiple_of(2) == (self == Side::ControlPlane)
    }

    /// "even" or "odd", for error messages.
    pub(crate) fn parity(self) -> &'static str {
        match self {
            Side::ControlPlane => "even",
            Side::Agent => "odd",
        }
    }
}

/// Where a channel goes, as the receiving side resolves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Host name or IP address.
    pub host: String,
    /// TCP port, 1-65535.
    pub port: u16,
    /// The connection name this channel serves, for logs ("" if none).
    pub connection: String,
    /// How long the receiver may take to connect.
    pub connect_timeout: Duration,
}

impl Target {
    /// A target with no connection name and a 10 s connect timeout.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            connection: String::new(),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A frame of the tunnel layer.
///
/// Values come from the network unchecked: the session validates every field
/// (ids, ports, sizes, credit) and turns a bad one into a reset of that
/// channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Open a channel to a target.
    Open {
        /// The new channel.
        id: ChannelId,
        /// Target host.
        host: String,
        /// Target port as sent (validated by the receiver).
        port: u32,
        /// The connection name, for logs.
        connection: String,
        /// Connect timeout, milliseconds (0 = the receiver's default).
        connect_timeout_ms: u32,
        /// The opener's receive window: credit for the receiver.
        window: u32,
    },
    /// Accept (`Ok(window)`) or refuse an open.
    OpenResult {
        /// The channel.
        id: ChannelId,
        /// The acceptor's receive window, or why it refused.
        result: Result<u32, (ResetCode, String)>,
    },
    /// Bytes on a channel.
    Data {
        /// The channel.
        id: ChannelId,
        /// 1 to `max_data_frame` bytes.
        payload: Bytes,
    },
    /// Credit returned for a channel.
    Window {
        /// The channel.
        id: ChannelId,
        /// Bytes of credit added.
        increment: u32,
    },
    /// Half-close: the sender sends no more data.
    Close {
        /// The channel.
        id: ChannelId,
    },
    /// Abort a channel both ways.
    Reset {
        /// The channel.
        id: ChannelId,
        /// Why.
        code: ResetCode,
        /// What failed and the fix.
        message: String,
    },
    /// Round-trip probe.
    Ping {
        /// Echoed in the pong.
        nonce: u64,
    },
    /// Answer to a ping.
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
}

impl Frame {
    /// The channel this frame is about, if any.
    pub fn channel(&self) -> Option<ChannelId> {
        match self {
            Frame::Open { id, .. }
            | Frame::OpenResult { id, .. }
            | Frame::Data { id, .. }
            | Frame::Window { id, .. }
            | Frame::Close { id }
            | Frame::Reset { id, .. } => Some(*id),
            Frame::Ping { .. } | Frame::Pong { .. } => None,
        }
    }
}

/// Something the session wants sent: one of its own frames, or a control
/// frame the upper layer queued (heartbeat, command, job update…), which the
/// session only orders.
#[derive(Debug, PartialEq, Eq)]
pub enum Transmit<C> {
    /// A tunnel frame.
    Frame(Frame),
    /// An upper-layer control frame.
    Control(C),
}
