//! Channels the control plane opens: checked against the egress policy,
//! connected to the target, then spliced both ways with half-close.
//!
//! A refusal carries the reason the client needs: the rule to add for a
//! policy denial, "refused" when nothing listens, "unreachable" when the
//! name does not resolve or the network has no route, "timeout".

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use tether::proto::ResetCode;
use tether_tunnel::{
    AgentWire,
    driver::{IncomingChannel, SpliceError, splice_tcp},
};
use tokio::net::TcpStream;
use tracing::{Instrument, debug, info_span, warn};

use crate::egress::{EgressError, Policy};

/// Tries each address in turn; the last error if none answers.
async fn connect_any(addrs: &[SocketAddr]) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::AddrNotAvailable, "no address to connect to");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn refusal(e: &io::Error, host: &str, port: u16) -> (ResetCode, String) {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => (
            ResetCode::Refused,
            format!(
                "{host}:{port} refused the connection (is the service running and listening on that port?)"
            ),
        ),
        _ => (
            ResetCode::Unreachable,
            format!("cannot reach {host}:{port} from the agent: {e}"),
        ),
    }
}

/// Serves one channel the control plane asked for. Owned by the session's
/// task tracker; ends when the splice ends.
pub async fn serve(policy: Arc<Policy>, offer: IncomingChannel<AgentWire>) {
    let target = offer.target().clone();
    let span = info_span!("channel", channel_id = %offer.id(), target_host = %target.host, port = target.port, connection = %target.connection);
    async move {
        let (host, port) = (target.host.as_str(), target.port);
        let addrs = match policy.resolve(host, port).await {
            Ok(a) => a,
            Err(EgressError::Denied(d)) => {
                warn!(reason = %d, "channel refused by the egress policy");
                offer.refuse(ResetCode::PolicyDenied, d.to_string());
                return;
            }
            Err(e @ EgressError::Resolve { .. }) => {
                debug!(error = %e, "channel refused: name does not resolve");
                offer.refuse(ResetCode::Unreachable, e.to_string());
                return;
            }
        };
        let timeout = if target.connect_timeout.is_zero() {
            Duration::from_secs(10)
        } else {
            target.connect_timeout
        };
        let mut tcp = match tokio::time::timeout(timeout, connect_any(&addrs)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => {
                let (code, message) = refusal(&e, host, port);
                debug!(%message, "channel refused");
                offer.refuse(code, message);
                return;
            }
            Err(_) => {
                offer.refuse(
                    ResetCode::Timeout,
                    format!("connecting to {host}:{port} took longer than {timeout:?} (a firewall dropping packets?)"),
                );
                return;
            }
        };
        let _ = tcp.set_nodelay(true);
        let Ok(mut channel) = offer.accept() else {
            debug!("the control plane gave up on the channel before it opened");
            return;
        };
        debug!("channel open");
        match splice_tcp(&mut channel, &mut tcp, |_| {}, |_| {}).await {
            Ok(n) => debug!(sent = n.into_channel, received = n.out_of_channel, "channel closed"),
            Err(SpliceError::Stream(e)) => {
                debug!(error = %e, "the target's connection failed");
                channel.reset(
                    ResetCode::TargetReset,
                    format!("the connection to {host}:{port} failed: {e}"),
                );
            }
            Err(SpliceError::Channel(e)) => {
                debug!(error = %e, "channel reset; aborting the target connection");
                let _ = tcp.set_zero_linger();
            }
        }
    }
    .instrument(span)
    .await;
}
