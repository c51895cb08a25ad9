//! The floor relay: the least a TCP tunnel over tonic (gRPC, HTTP/2, TLS 1.3
//! with rustls and ring) can do, measured in the peers suite beside Tether
//! so that Tether's own cost (sessions, channels, credit, routing) shows
//! apart from the cost of the transport its design prescribes.
//!
//! Two processes, like every path of the suite:
//! - `far` serves `Relay.Pipe` over TLS and joins each stream to a new
//!   connection to the target;
//! - `near` listens for clients and carries each connection on one
//!   `Relay.Pipe` stream of one shared HTTP/2 connection to `far`.
//!
//! It has nothing Tether must have: no multiplexing layer of its own, no
//! flow control beyond HTTP/2's, no authentication of the client, no
//! routing, no limits. It is tonic as it comes (its server, its channel,
//! its executor) with Tether's transport settings: the same HTTP/2 windows
//! and keepalive, TLS 1.3 with the same crypto provider, no delay on the
//! sockets, the same 32 KiB largest chunk and glibc malloc setting.

#![allow(clippy::print_stdout)] // says where it listens, for the suite

use std::{net::SocketAddr, path::PathBuf, pin::Pin, sync::Arc};

use anyhow::Context;
use futures_util::Stream;
use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_stream::StreamExt;
use tokio_util::io::ReaderStream;
use tonic::{Request, Response, Status, Streaming, transport::Server};

#[allow(unreachable_pub, clippy::all, clippy::pedantic)]
mod pb {
    tonic::include_proto!("floor.v1");
}
use pb::{
    Chunk,
    relay_client::RelayClient,
    relay_server::{Relay, RelayServer},
};

/// The largest chunk read from a socket: Tether's largest data frame.
const CHUNK: usize = 32 * 1024;

#[derive(Debug, clap::Parser)]
enum Mode {
    /// The target's side: serves `Relay.Pipe` over TLS on `listen`.
    Far {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        target: SocketAddr,
        /// PEM certificate for the address of `listen`.
        #[arg(long)]
        cert: PathBuf,
        /// PEM private key of `cert`.
        #[arg(long)]
        key: PathBuf,
    },
    /// The clients' side: listens on `listen`, reaches `far` over TLS.
    Near {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        far: SocketAddr,
        /// PEM certificate that `far` presents.
        #[arg(long)]
        ca: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    tether::malloc::tune();
    let mode = <Mode as clap::Parser>::parse();
    tokio::runtime::Runtime::new()?.block_on(async {
        match mode {
            Mode::Far {
                listen,
                target,
                cert,
                key,
            } => far(listen, target, cert, key).await,
            Mode::Near { listen, far, ca } => near(listen, far, ca).await,
        }
    })
}

/// A socket's bytes as chunks of at most [`CHUNK`] bytes; ends at the
/// socket's end or first error.
fn chunks(
    read: impl tokio::io::AsyncRead + Send + 'static,
) -> impl Stream<Item = Chunk> + Send + 'static {
    ReaderStream::with_capacity(read, CHUNK).map_while(|r| r.ok().map(|data| Chunk { data }))
}

/// Writes every chunk of `inbound` to `out`, then half-closes it.
async fn drain(
    mut inbound: Streaming<Chunk>,
    mut out: impl AsyncWrite + Unpin,
) -> anyhow::Result<()> {
    while let Some(chunk) = inbound.message().await? {
        out.write_all(&chunk.data).await?;
    }
    out.shutdown().await?;
    Ok(())
}

struct Far {
    target: SocketAddr,
}

type Chunks = Pin<Box<dyn Stream<Item = Result<Chunk, Status>> + Send>>;

#[tonic::async_trait]
impl Relay for Far {
    type PipeStream = Chunks;

    async fn pipe(&self, request: Request<Streaming<Chunk>>) -> Result<Response<Chunks>, Status> {
        let tcp = TcpStream::connect(self.target)
            .await
            .map_err(|e| Status::unavailable(format!("target {}: {e}", self.target)))?;
        tcp.set_nodelay(true)
            .map_err(|e| Status::internal(e.to_string()))?;
        let (read, write) = tcp.into_split();
        tokio::spawn(drain(request.into_inner(), write));
        Ok(Response::new(Box::pin(chunks(read).map(Ok))))
    }
}

async fn far(
    listen: SocketAddr,
    target: SocketAddr,
    cert: PathBuf,
    key: PathBuf,
) -> anyhow::Result<()> {
    let identity = tonic::transport::Identity::from_pem(
        std::fs::read(&cert).with_context(|| format!("reading {}", cert.display()))?,
        std::fs::read(&key).with_context(|| format!("reading {}", key.display()))?,
    );
    let server = Server::builder()
        .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?
        .http2_keepalive_interval(Some(tether::client::KEEPALIVE))
        .http2_keepalive_timeout(Some(tether::client::KEEPALIVE))
        .initial_stream_window_size(tether::client::STREAM_WINDOW)
        .initial_connection_window_size(tether::client::CONNECTION_WINDOW)
        .add_service(RelayServer::new(Far { target }));
    let listener = TcpListener::bind(listen).await?;
    println!("floor far: serving on {listen}");
    let incoming = futures_util::stream::unfold(listener, |listener| async {
        let accepted = listener.accept().await.and_then(|(tcp, _)| {
            tcp.set_nodelay(true)?;
            Ok(tcp)
        });
        Some((accepted, listener))
    });
    server.serve_with_incoming(incoming).await?;
    Ok(())
}

async fn near(listen: SocketAddr, far: SocketAddr, ca: PathBuf) -> anyhow::Result<()> {
    let pem = std::fs::read(&ca).with_context(|| format!("reading {}", ca.display()))?;
    let tls = tether::tls::client_config(&tether::tls::Trust::ca_pem(&pem)?, None)?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls));
    // tonic's own channel, with Tether's windows and keepalive and a
    // plain TLS connector: tonic as it comes, executor included.
    let connector = tower::service_fn(move |_| {
        let tls = tls.clone();
        async move {
            let tcp = TcpStream::connect(far).await?;
            tcp.set_nodelay(true)?;
            let name = rustls::pki_types::ServerName::from(far.ip());
            let stream = tls.connect(name, tcp).await?;
            std::io::Result::Ok(hyper_util::rt::TokioIo::new(stream))
        }
    });
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{far}"))?
        .http2_keep_alive_interval(tether::client::KEEPALIVE)
        .keep_alive_timeout(tether::client::KEEPALIVE)
        .initial_stream_window_size(tether::client::STREAM_WINDOW)
        .initial_connection_window_size(tether::client::CONNECTION_WINDOW)
        .connect_with_connector(connector)
        .await?;
    let client = RelayClient::new(channel);
    let listener = TcpListener::bind(listen).await?;
    println!("floor near: listening on {listen}");
    loop {
        let (tcp, _) = listener.accept().await?;
        let mut client = client.clone();
        tokio::spawn(async move {
            tcp.set_nodelay(true)?;
            let (read, write) = tcp.into_split();
            let inbound = client.pipe(chunks(read)).await?.into_inner();
            drain(inbound, write).await
        });
    }
}
