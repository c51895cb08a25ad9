//! The TLS listener in front of the gRPC server.
//!
//! TLS is terminated here with tokio-rustls (not tonic's `ServerTlsConfig`),
//! so that the client certificate verifier and the session settings are
//! ours: TLS 1.3 only, ALPN `h2`, client certificates optional at the TLS
//! layer (Admin and Dial authenticate with API keys on the same port) and
//! required by `Tunnel.Attach`, and no session tickets or resumption, so a
//! revoked certificate cannot ride an old session.
//!
//! Each handshake runs in its own task with a deadline, so a slow or
//! hostile client cannot hold up the accept loop. A client that speaks
//! plain HTTP to this port gets an HTTP 400 that says to use TLS.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use rustls::{
    RootCertStore, ServerConfig,
    server::{NoServerSessionStorage, WebPkiClientVerifier},
};
use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tether::read_buffer::ReadBuffer;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, info};

use crate::{identity::Authority, metrics::Metrics};

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Established connections waiting for the gRPC server to take them.
const ACCEPTED_QUEUE: usize = 128;
/// A TCP stream with a read buffer that holds memory only while data
/// flows ([`ReadBuffer`]), under TLS. Reports the TCP addresses, so that
/// tonic still exposes the peer address and the client certificate to
/// handlers.
pub struct BufTcp(ReadBuffer<TcpStream>);

impl BufTcp {
    fn new(tcp: TcpStream) -> Self {
        Self(ReadBuffer::new(tcp))
    }
}

impl Connected for BufTcp {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.0.get_ref().connect_info()
    }
}

impl AsyncRead for BufTcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for BufTcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The rustls configuration of the gRPC port.
pub fn server_config(authority: &Authority) -> Result<ServerConfig, rustls::Error> {
    let provider = tether::tls::provider();
    let mut roots = RootCertStore::empty();
    roots.add(authority.ca_der.clone())?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            authority.server_chain.clone(),
            authority.server_key.clone_key(),
        )?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    Ok(config)
}

/// Accepts TCP connections, runs handshakes and hands established TLS
/// streams to the gRPC server through the returned receiver. Stops when
/// `cancel` fires.
pub fn accept_loop(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    metrics: Metrics,
    cancel: CancellationToken,
    tracker: TaskTracker,
) -> mpsc::Receiver<Result<TlsStream<BufTcp>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
    let acceptor = TlsAcceptor::from(config);
    tracker.spawn(crate::accept::accept_each(
        listener,
        cancel.clone(),
        tracker.clone(),
        "a connection on the gRPC port",
        move |tcp, peer| {
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let metrics = metrics.clone();
            let cancel = cancel.clone();
            async move {
                tokio::select! {
                    () = cancel.cancelled() => {}
                    () = handshake(acceptor, tcp, peer, tx, metrics) => {}
                }
            }
        },
    ));
    rx
}

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    tx: mpsc::Sender<Result<TlsStream<BufTcp>, std::io::Error>>,
    metrics: Metrics,
) {
    let _ = tcp.set_nodelay(true);
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        _ => return,
    }
    // 0x16 starts a TLS handshake record; ASCII letters start HTTP/1 or an
    // HTTP/2 cleartext preface.
    if first[0] != 0x16 {
        metrics.tls_failure(if first[0].is_ascii_alphabetic() {
            "plaintext_http"
        } else {
            "not_tls"
        });
        if first[0].is_ascii_alphabetic() {
            answer_plain_http(tcp, peer).await;
        } else {
            debug!(%peer, "closing a connection that does not speak TLS");
        }
        return;
    }
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(BufTcp::new(tcp))).await {
        Ok(Ok(tls)) => {
            let _ = tx.send(Ok(tls)).await;
        }
        Ok(Err(e)) => {
            let reason = failure_reason(&e);
            metrics.tls_failure(reason);
            // Client-certificate problems are worth an operator's look (an
            // agent with a wrong clock, a certificate from elsewhere); other
            // failures are mostly scanners.
            if reason.starts_with("client_certificate") {
                info!(%peer, %reason, error = %e, "TLS handshake refused a client certificate");
            } else {
                debug!(%peer, error = %e, "TLS handshake failed");
            }
        }
        Err(_) => {
            metrics.tls_failure("timeout");
            debug!(%peer, "TLS handshake timed out");
        }
    }
}

/// A metric label for why a handshake failed.
fn failure_reason(e: &io::Error) -> &'static str {
    use rustls::CertificateError as C;
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(c)) => match c {
            C::Expired | C::ExpiredContext { .. } => "client_certificate_expired",
            C::NotValidYet | C::NotValidYetContext { .. } => "client_certificate_not_yet_valid",
            C::UnknownIssuer | C::BadSignature => "client_certificate_unknown_ca",
            C::Revoked => "client_certificate_revoked",
            _ => "client_certificate_invalid",
        },
        _ => "handshake",
    }
}

async fn answer_plain_http(mut tcp: TcpStream, peer: SocketAddr) {
    debug!(%peer, "plain HTTP on the gRPC port; answering 400");
    let body = "This is the Tether control plane's gRPC port. It speaks gRPC over TLS 1.3 only: \
                use https:// (grpcurl, tetherctl, tether-agent), not plain HTTP.\n";
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.write_all(response.as_bytes())).await;
    let _ = tcp.shutdown().await;
}
