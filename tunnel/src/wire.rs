//! The mapping between tunnel frames and the gRPC messages of each side.
//!
//! The agent sends `AgentFrame` and receives `ServerFrame`; the control plane
//! the reverse. Channel frames and ping/pong go to the session; every other
//! kind (hello, heartbeat, command, job…) is the upper layer's and passes
//! through untouched. A frame with no kind set is one this build does not
//! know (a newer peer): it is reported as [`Inbound::Unknown`] and ignored.

use tether::proto::{
    AgentFrame, ChannelClose, ChannelData, ChannelOpen, ChannelOpenResult, ChannelReset,
    ChannelWindow, Ping, Pong, ResetCode, ServerFrame, agent_frame, server_frame,
};

use crate::{ChannelId, Frame, Side, Transmit};

/// What arrived from the peer.
#[derive(Debug, PartialEq)]
pub enum Inbound<C> {
    /// A tunnel frame, for the session.
    Frame(Frame),
    /// An upper-layer frame.
    Control(C),
    /// A frame kind this build does not know; ignore it (compatibility rule).
    Unknown,
}

/// One side's wire messages.
pub trait Wire: Send + Sync + 'static {
    /// The side this is.
    const SIDE: Side;
    /// What arrives from the peer.
    type In: Send + Unpin + 'static;
    /// What is sent to the peer.
    type Out: Send + Unpin + 'static;
    /// Upper-layer frames that arrive.
    type ControlIn: Send + 'static;
    /// Upper-layer frames that are sent.
    type ControlOut: Send + 'static;

    /// Splits an incoming message into a tunnel frame or a control frame.
    fn decode(message: Self::In) -> Inbound<Self::ControlIn>;
    /// Builds the outgoing message.
    fn encode(transmit: Transmit<Self::ControlOut>) -> Self::Out;
}

/// The agent's side: sends `AgentFrame`, receives `ServerFrame`.
#[derive(Debug)]
pub struct AgentWire;

/// The control plane's side: sends `ServerFrame`, receives `AgentFrame`.
#[derive(Debug)]
pub struct ServerWire;

/// Implements [`Wire`] for one side. Both sides use the same channel frames,
/// so the mapping is written once; only the message types differ.
macro_rules! impl_wire {
    ($wire:ty, $side:expr, $in:ident, $in_kind:ident, $out:ident, $out_kind:ident) => {
        impl Wire for $wire {
            const SIDE: Side = $side;
            type In = $in;
            type Out = $out;
            type ControlIn = $in_kind::Kind;
            type ControlOut = $out_kind::Kind;

            fn decode(message: $in) -> Inbound<$in_kind::Kind> {
                use $in_kind::Kind;
                let frame = match message.kind {
                    None => return Inbound::Unknown,
                    Some(Kind::ChannelOpen(m)) => Frame::Open {
                        id: ChannelId(m.channel_id),
                        host: m.target_host,
                        port: m.target_port,
                        connection: m.connection,
                        connect_timeout_ms: m.connect_timeout_ms,
                        window: m.initial_window,
                    },
                    Some(Kind::ChannelOpenResult(m)) => open_result_from_wire(m),
                    Some(Kind::ChannelData(m)) => Frame::Data {
                        id: ChannelId(m.channel_id),
                        payload: m.payload,
                    },
                    Some(Kind::ChannelWindow(m)) => Frame::Window {
                        id: ChannelId(m.channel_id),
                        increment: m.increment,
                    },
                    Some(Kind::ChannelClose(m)) => Frame::Close {
                        id: ChannelId(m.channel_id),
                    },
                    Some(Kind::ChannelReset(m)) => Frame::Reset {
                        id: ChannelId(m.channel_id),
                        code: code_from_wire(m.code),
                        message: m.message,
                    },
                    Some(Kind::Ping(m)) => Frame::Ping { nonce: m.nonce },
                    Some(Kind::Pong(m)) => Frame::Pong { nonce: m.nonce },
                    Some(other) => return Inbound::Control(other),
                };
                Inbound::Frame(frame)
            }

            fn encode(transmit: Transmit<$out_kind::Kind>) -> $out {
                use $out_kind::Kind;
                let kind = match transmit {
                    Transmit::Control(kind) => kind,
                    Transmit::Frame(Frame::Open {
                        id,
                        host,
                        port,
                        connection,
                        connect_timeout_ms,
                        window,
                    }) => Kind::ChannelOpen(ChannelOpen {
                        channel_id: id.0,
                        target_host: host,
                        target_port: port,
                        initial_window: window,
                        connection,
                        connect_timeout_ms,
                    }),
                    Transmit::Frame(Frame::OpenResult { id, result }) => {
                        Kind::ChannelOpenResult(open_result_to_wire(id, result))
                    }
                    Transmit::Frame(Frame::Data { id, payload }) => {
                        Kind::ChannelData(ChannelData {
                            channel_id: id.0,
                            payload,
                        })
                    }
                    Transmit::Frame(Frame::Window { id, increment }) => {
                        Kind::ChannelWindow(ChannelWindow {
                            channel_id: id.0,
                            increment,
                        })
                    }
                    Transmit::Frame(Frame::Close { id }) => {
                        Kind::ChannelClose(ChannelClose { channel_id: id.0 })
                    }
                    Transmit::Frame(Frame::Reset { id, code, message }) => {
                        Kind::ChannelReset(ChannelReset {
                            channel_id: id.0,
                            code: code as i32,
                            message,
                        })
                    }
                    Transmit::Frame(Frame::Ping { nonce }) => Kind::Ping(Ping { nonce }),
                    Transmit::Frame(Frame::Pong { nonce }) => Kind::Pong(Pong { nonce }),
                };
                $out { kind: Some(kind) }
            }
        }
    };
}

impl_wire!(
    AgentWire,
    Side::Agent,
    ServerFrame,
    server_frame,
    AgentFrame,
    agent_frame
);
impl_wire!(
    ServerWire,
    Side::ControlPlane,
    AgentFrame,
    agent_frame,
    ServerFrame,
    server_frame
);

/// A reset code from the wire. Codes this build does not know (a newer
/// peer) are reported as internal errors; the message still says why.
fn code_from_wire(code: i32) -> ResetCode {
    ResetCode::try_from(code).unwrap_or(ResetCode::Internal)
}

fn open_result_from_wire(m: ChannelOpenResult) -> Frame {
    let result = match code_from_wire(m.error_code) {
        ResetCode::Unspecified if m.error_code == 0 => Ok(m.initial_window),
        code => Err((code, m.error_message)),
    };
    Frame::OpenResult {
        id: ChannelId(m.channel_id),
        result,
    }
}

fn open_result_to_wire(
    id: ChannelId,
    result: Result<u32, (ResetCode, String)>,
) -> ChannelOpenResult {
    match result {
        Ok(window) => ChannelOpenResult {
            channel_id: id.0,
            initial_window: window,
            error_code: ResetCode::Unspecified as i32,
            error_message: String::new(),
        },
        Err((code, message)) => ChannelOpenResult {
            channel_id: id.0,
            initial_window: 0,
            // A refusal must never read as success on the wire.
            error_code: if code == ResetCode::Unspecified {
                ResetCode::Internal as i32
            } else {
                code as i32
            },
            error_message: message,
        },
    }
}
