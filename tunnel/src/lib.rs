//! Frames to channels: Tether's multiplexer.
//!
//! One session multiplexes many proxied TCP *channels* over one ordered
//! stream of *frames* (in production, the agent's gRPC `Tunnel.Attach`
//! stream). Each channel has credit flow control in both directions, so the
//! demultiplexer never waits: every frame it reads goes into a buffer the
//! peer was allowed to fill, and one stalled channel cannot delay another
//! channel, a heartbeat or a command (DESIGN.md, invariant 2).
//!
//! The crate has two layers:
//! - a sans-IO core ([`Session`]): a state machine fed with frames and the
//!   current time, polled for frames to transmit, events and timeouts. It
//!   does no I/O, never awaits and never reads the clock, so it is tested in
//!   memory on a fake clock;
//! - a thin tokio [`driver`] that runs a session over any stream of inbound
//!   frames, offers outbound frames as a stream that the transport polls
//!   when it has room, and hands out each channel as a type implementing
//!   `AsyncRead + AsyncWrite`.
//!
//! It knows nothing of TLS, sockets, stores or agents. [`Wire`] maps its
//! frames to the gRPC messages of `tether::proto` for either side.

mod channel;
mod config;
mod credit;
pub mod driver;
mod error;
mod frame;
pub mod memory;
mod sched;
mod session;
mod wire;

pub use config::{Config, ConfigError, DATA_FRAME_OVERHEAD, MIN_WINDOW};
pub use credit::{Credit, CreditError, MAX_CREDIT};
pub use error::{ChannelError, ProtocolError};
pub use frame::{ChannelId, Frame, Side, Target, Transmit};
pub use session::{ChannelInfo, ChannelState, Event, Read, ResetInfo, Session, SessionStats};
pub use tether::proto::ResetCode;
pub use wire::{AgentWire, Inbound, ServerWire, Wire};
