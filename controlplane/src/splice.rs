//! A client's stream (gateway socket or Dial call) spliced with a channel,
//! counted in the metrics, with failures turned into the right answer for
//! the other side.

use std::io;

use tether::proto::ResetCode;
use tether_tunnel::{
    ServerWire,
    driver::{Channel, ChannelReset, SpliceError, Spliced, splice, splice_tcp},
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

use crate::metrics::OpenChannel;

/// Which side ended the splice badly.
#[derive(Debug)]
pub enum Failed {
    /// The client's stream failed; the channel was reset.
    Client(io::Error),
    /// The channel was reset (by the agent or the target) or its session
    /// ended; the client must be told or cut off.
    Channel(ChannelReset),
}

/// The reset behind a failed channel read or write.
pub fn reset_of(e: &io::Error) -> ChannelReset {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<ChannelReset>())
        .cloned()
        .unwrap_or_else(|| ChannelReset {
            code: ResetCode::SessionLost,
            message: e.to_string(),
            by_peer: true,
        })
}

/// Copies both ways until both directions end (any stream: Dial calls).
pub async fn run<S>(
    channel: &mut Channel<ServerWire>,
    client: &mut S,
    metrics: &OpenChannel,
) -> Result<(), Failed>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (to_agent, from_agent) = metrics.byte_counters();
    let result = splice(
        channel,
        client,
        move |n| {
            to_agent.inc_by(n);
        },
        move |n| {
            from_agent.inc_by(n);
        },
    )
    .await;
    finish(channel, result)
}

/// The same for a TCP client (gateway ports), without copies.
pub async fn run_tcp(
    channel: &mut Channel<ServerWire>,
    client: &mut TcpStream,
    metrics: &OpenChannel,
) -> Result<(), Failed> {
    let (to_agent, from_agent) = metrics.byte_counters();
    let result = splice_tcp(
        channel,
        client,
        move |n| {
            to_agent.inc_by(n);
        },
        move |n| {
            from_agent.inc_by(n);
        },
    )
    .await;
    finish(channel, result)
}

fn finish(
    channel: &mut Channel<ServerWire>,
    result: Result<Spliced, SpliceError>,
) -> Result<(), Failed> {
    match result {
        Ok(_) => Ok(()),
        Err(SpliceError::Stream(e)) => {
            channel.reset(
                ResetCode::Cancelled,
                format!("the client's side of the channel failed: {e}"),
            );
            Err(Failed::Client(e))
        }
        Err(SpliceError::Channel(e)) => Err(Failed::Channel(reset_of(&e))),
    }
}
