//! The TCP listeners of the control plane: the accept loop of each (the
//! gRPC port, the gateway ports, the SOCKS5 front) and how the client
//! listeners are bound.

use std::{future::Future, net::SocketAddr, time::Duration};

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::warn;

/// Listen backlog of a client listener (gateway ports, the SOCKS5 front).
/// A connection pool opening all its connections at once must not overflow
/// the accept queue (the kernel then answers with SYN cookies or drops, and
/// a client may see a reset); the kernel caps it at `net.core.somaxconn`.
const BACKLOG: u32 = 4096;

/// Binds a listener with [`BACKLOG`] and address reuse, so that a restarted
/// control plane gets its port back while old sockets linger.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Pause after a failed accept.
const BACKOFF: Duration = Duration::from_millis(100);

/// Accepts connections until `stop` fires and runs `serve` for each on
/// `tracker`. A failed accept (out of file descriptors and the like) is
/// logged as "accepting {what} failed" and retried after a short pause:
/// the listener keeps serving.
pub async fn accept_each<F, Fut>(
    listener: TcpListener,
    stop: CancellationToken,
    tracker: TaskTracker,
    what: &'static str,
    mut serve: F,
) where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let (tcp, peer) = tokio::select! {
            () = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    warn!(error = %e, "accepting {what} failed");
                    tokio::time::sleep(BACKOFF).await;
                    continue;
                }
            },
        };
        tracker.spawn(serve(tcp, peer));
    }
}
