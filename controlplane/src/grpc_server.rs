//! Serves the gRPC services over HTTP/2 on the connections the TLS accept
//! loop hands over: what tonic's `Server::serve_with_incoming_shutdown`
//! does, with hyper's tasks spawned on [`tether::executor::Executor`].
//!
//! tonic's server takes no executor, and hyper's body pipe wakes its own
//! task on every DATA frame, which tokio answers by waking an idle worker
//! thread (src/executor.rs in the root crate). The agent's side sets the
//! executor on its channel; this is the control plane's side.
//!
//! Kept from tonic's server: the HTTP/2 settings below, HTTP/2 only, the
//! peer's address and certificate chain in every request (tonic's
//! `Request::remote_addr` and `peer_certs` read them), and a graceful
//! shutdown that stops taking connections, sends GOAWAY and waits for the
//! open ones to end. Changed: hyper's limit of 1,024 streams this side
//! resets for an error over a connection's life (streams refused over
//! `max_concurrent_streams` count) applies, after which the client gets
//! GOAWAY and reconnects; tonic's server turned that protection
//! (RUSTSEC-2024-0003) off. Not kept: tonic cutting a call short when the
//! client's `grpc-timeout` passes before the response headers; clients
//! enforce their own deadline, and a cancelled call resets its stream.

use std::{io, pin::pin, time::Duration};

use hyper::{body::Incoming, server::conn::http2, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::mpsc,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{body::Body, service::Routes, transport::server::Connected};
use tower::ServiceExt;
use tracing::debug;

/// HTTP/2 settings of the gRPC port.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Interval of keepalive pings, and how long to wait for the answer.
    pub keepalive: Duration,
    /// Receive window of each stream, bytes.
    pub stream_window: u32,
    /// Receive window of each connection, bytes.
    pub connection_window: u32,
    /// Streams a client may have open at once on one connection.
    pub max_concurrent_streams: u32,
}

/// Serves `routes` on every connection from `incoming` until `stop` fires,
/// then lets the open connections finish (GOAWAY) and returns once they
/// have.
pub async fn serve<IO>(
    routes: Routes,
    mut incoming: mpsc::Receiver<Result<IO, io::Error>>,
    settings: Settings,
    stop: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
{
    let mut builder = http2::Builder::new(tether::executor::Executor);
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(settings.keepalive)
        .keep_alive_timeout(settings.keepalive)
        .initial_stream_window_size(settings.stream_window)
        .initial_connection_window_size(settings.connection_window)
        .max_concurrent_streams(settings.max_concurrent_streams);
    let connections = TaskTracker::new();
    loop {
        let io = tokio::select! {
            () = stop.cancelled() => break,
            io = incoming.recv() => match io {
                Some(Ok(io)) => io,
                // The accept loop logged and counted it.
                Some(Err(_)) => continue,
                None => break,
            },
        };
        let info = io.connect_info();
        let routes = routes.clone();
        let service = service_fn(move |request: http::Request<Incoming>| {
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(info.clone());
            routes.clone().oneshot(request)
        });
        let connection = builder.serve_connection(TokioIo::new(io), service);
        let stop = stop.clone();
        connections.spawn(async move {
            let mut connection = pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = ended {
                debug!(error = %e, "gRPC connection ended with an error");
            }
        });
    }
    // Stop taking connections first: the accept loop's queue closes.
    drop(incoming);
    connections.close();
    connections.wait().await;
}
