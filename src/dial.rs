//! The client SDK of the connector runtime: a byte stream to a target inside
//! a private network, through an agent of a pool.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use tether::dial::{Credentials, Destination};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! let credentials = Credentials::from_files("ca.pem", "api.key")?;
//! let mut stream = tether::dial(
//!     "https://tether.example:8443",
//!     &credentials,
//!     Destination::pool("db-net", "postgres.internal", 5432),
//! )
//! .await?;
//! stream.write_all(b"...").await?;
//! # Ok(()) }
//! ```
//!
//! Each dialled stream is one `Dial.Open` call: HTTP/2 flow control of that
//! call carries the backpressure, so a slow reader here slows the target,
//! and nothing buffers without bound. [`Dialer`] keeps one HTTP/2
//! connection for many streams. Dropping a [`DialStream`] without shutting
//! it down resets the channel (the target sees a reset, not a clean end).

use std::{
    io,
    path::Path,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use futures_util::Stream;
use secrecy::SecretString;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::mpsc,
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::PollSender;
use tonic::{Streaming, codegen::InterceptedService, transport::Channel};

use crate::{
    client::{self, ApiKey, ControlPlaneAddr},
    proto::{
        DialClose, DialData, DialFrame, DialOpen, DialReset, ResetCode, dial_client::DialClient,
        dial_frame,
    },
    tls::{self, Trust},
};

/// Frames queued towards the control plane per stream before writes wait.
/// With 32 KiB frames this is 512 KiB in flight on top of HTTP/2's window.
const SEND_QUEUE: usize = 16;
/// Largest data frame this client sends.
const MAX_FRAME: usize = 32 * 1024;

/// What a dial needs to authenticate: how to trust the control plane and
/// which API key to present.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// How the control plane's certificate is verified.
    pub trust: Trust,
    /// The API key (role `dialer` or above).
    pub api_key: ApiKey,
}

impl Credentials {
    /// Reads the control plane's CA certificate (PEM) and an API key file.
    pub fn from_files(
        ca_file: impl AsRef<Path>,
        api_key_file: impl AsRef<Path>,
    ) -> Result<Self, DialError> {
        let ca_file = ca_file.as_ref();
        let pem = std::fs::read(ca_file).map_err(|e| {
            DialError::Setup(format!(
                "cannot read the CA file {}: {e}",
                ca_file.display()
            ))
        })?;
        let trust = Trust::ca_pem(&pem).map_err(|e| DialError::Setup(e.to_string()))?;
        let key_file = api_key_file.as_ref();
        let key = std::fs::read_to_string(key_file).map_err(|e| {
            DialError::Setup(format!(
                "cannot read the API key file {}: {e}",
                key_file.display()
            ))
        })?;
        Ok(Self {
            trust,
            api_key: ApiKey::new(SecretString::from(key)),
        })
    }
}

/// Where a dialled stream goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// A configured connection name; pool and target come from it.
    pub connection: String,
    /// The pool whose agents carry the stream (with `host` and `port`).
    pub pool: String,
    /// Target host, as the agent resolves it.
    pub host: String,
    /// Target port.
    pub port: u16,
    /// How long to wait for the channel to open.
    pub timeout: Duration,
}

impl Destination {
    /// `host:port` through an agent of `pool`.
    pub fn pool(pool: impl Into<String>, host: impl Into<String>, port: u16) -> Self {
        Self {
            connection: String::new(),
            pool: pool.into(),
            host: host.into(),
            port,
            timeout: Duration::from_secs(10),
        }
    }

    /// A configured connection by name.
    pub fn connection(name: impl Into<String>) -> Self {
        Self {
            connection: name.into(),
            pool: String::new(),
            host: String::new(),
            port: 0,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// Bad local input (address, CA file, key file).
    #[error("{0}")]
    Setup(String),
    /// The control plane refused the call (authentication, unknown
    /// connection, no agent online) or could not be reached.
    #[error("dial failed: {}", client::describe_error(.0))]
    Status(#[from] tonic::Status),
    /// The agent or the target refused the channel.
    #[error("{message} [{}]", code.as_str_name())]
    Refused {
        /// The reason code (refused, unreachable, policy denied…).
        code: ResetCode,
        /// What failed and the fix.
        message: String,
    },
    /// The control plane answered something other than the protocol says.
    #[error("the control plane broke the Dial protocol: {0}")]
    Protocol(&'static str),
}

impl From<DialError> for io::Error {
    fn from(e: DialError) -> Self {
        let kind = match &e {
            DialError::Refused { code, .. } => match code {
                ResetCode::Refused => io::ErrorKind::ConnectionRefused,
                ResetCode::Timeout => io::ErrorKind::TimedOut,
                ResetCode::PolicyDenied => io::ErrorKind::PermissionDenied,
                ResetCode::Unreachable => io::ErrorKind::HostUnreachable,
                _ => io::ErrorKind::ConnectionAborted,
            },
            DialError::Status(s) if s.code() == tonic::Code::Unauthenticated => {
                io::ErrorKind::PermissionDenied
            }
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

/// Dials one stream: connects to the control plane, opens the stream and
/// returns it once the target accepted. For many streams, keep a [`Dialer`].
pub async fn dial(
    endpoint: &str,
    credentials: &Credentials,
    destination: Destination,
) -> Result<DialStream, DialError> {
    Dialer::connect(endpoint, credentials)?
        .dial(destination)
        .await
}

/// A connection to the control plane that dials many streams.
#[derive(Clone, Debug)]
pub struct Dialer {
    client: DialClient<InterceptedService<Channel, ApiKey>>,
}

impl Dialer {
    /// Prepares the connection (made at the first dial, and again after a
    /// failure).
    pub fn connect(endpoint: &str, credentials: &Credentials) -> Result<Self, DialError> {
        let addr =
            ControlPlaneAddr::parse(endpoint).map_err(|e| DialError::Setup(e.to_string()))?;
        let config = tls::client_config(&credentials.trust, None)
            .map_err(|e| DialError::Setup(e.to_string()))?;
        let channel =
            client::channel(&addr, config).map_err(|e| DialError::Setup(e.to_string()))?;
        Ok(Self {
            client: DialClient::with_interceptor(channel, credentials.api_key.clone()),
        })
    }

    /// Opens a stream to `destination` and waits until the target accepted.
    pub async fn dial(&self, destination: Destination) -> Result<DialStream, DialError> {
        let (tx, rx) = mpsc::channel(SEND_QUEUE);
        let timeout_ms = u32::try_from(destination.timeout.as_millis()).unwrap_or(u32::MAX);
        let open = DialFrame {
            kind: Some(dial_frame::Kind::Open(DialOpen {
                connection: destination.connection,
                pool: destination.pool,
                target_host: destination.host,
                target_port: u32::from(destination.port),
                timeout_ms,
            })),
        };
        tx.send(open)
            .await
            .map_err(|_| DialError::Protocol("request stream closed before the open"))?;
        let mut client = self.client.clone();
        let mut inbound = client.open(ReceiverStream::new(rx)).await?.into_inner();
        let first = std::future::poll_fn(|cx| Pin::new(&mut inbound).poll_next(cx)).await;
        match first {
            Some(Ok(DialFrame {
                kind: Some(dial_frame::Kind::Opened(opened)),
            })) => Ok(DialStream {
                agent_id: opened.agent_id,
                channel_id: opened.channel_id,
                tx: PollSender::new(tx),
                rx: inbound,
                pending: Bytes::new(),
                read_eof: false,
                write_shut: false,
                eos_is_fin: false,
            }),
            Some(Ok(DialFrame {
                kind: Some(dial_frame::Kind::Reset(reset)),
            })) => Err(DialError::Refused {
                code: ResetCode::try_from(reset.code).unwrap_or(ResetCode::Internal),
                message: reset.message,
            }),
            Some(Ok(_)) => Err(DialError::Protocol("the first frame was not `opened`")),
            Some(Err(status)) => Err(DialError::Status(status)),
            None => Err(DialError::Protocol("the call ended without an answer")),
        }
    }
}

/// A dialled stream: read and write it like a TCP stream. `shutdown` is a
/// half-close; dropping it unfinished resets the channel.
pub struct DialStream {
    agent_id: String,
    channel_id: u64,
    tx: PollSender<DialFrame>,
    rx: Streaming<DialFrame>,
    pending: Bytes,
    read_eof: bool,
    write_shut: bool,
    /// Whether the end of the inbound stream without a `close` frame counts
    /// as end of data (the server's view of a client that ended its request
    /// stream) or as a cut (the client's view: the server always closes
    /// explicitly).
    eos_is_fin: bool,
}

impl std::fmt::Debug for DialStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DialStream")
            .field("agent_id", &self.agent_id)
            .field("channel_id", &self.channel_id)
            .finish_non_exhaustive()
    }
}

impl DialStream {
    /// The agent that carries the stream.
    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// The channel id on that agent's session (for matching logs).
    pub fn channel_id(&self) -> u64 {
        self.channel_id
    }

    /// The server's end of a `Dial.Open` call, after the `open` frame was
    /// read and `opened` queued on `tx`: the same framing seen from the
    /// other side.
    pub fn server_side(tx: mpsc::Sender<DialFrame>, rx: Streaming<DialFrame>) -> Self {
        Self {
            agent_id: String::new(),
            channel_id: 0,
            tx: PollSender::new(tx),
            rx,
            pending: Bytes::new(),
            read_eof: false,
            write_shut: false,
            eos_is_fin: true,
        }
    }

    /// Aborts the stream, telling the other side why (best effort: if the
    /// send queue is full, the call is cancelled without the reason).
    pub fn reset(&mut self, code: ResetCode, message: impl Into<String>) {
        if let Some(tx) = self.tx.get_ref() {
            let _ = tx.try_send(DialFrame {
                kind: Some(dial_frame::Kind::Reset(DialReset {
                    code: code as i32,
                    message: message.into(),
                })),
            });
        }
        self.read_eof = true;
        self.write_shut = true;
        self.tx.close();
    }
}

fn closed_by_peer() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the control plane ended the stream",
    )
}

impl AsyncRead for DialStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                let chunk = self.pending.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            if self.read_eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.rx).poll_next(cx)) {
                Some(Ok(frame)) => match frame.kind {
                    Some(dial_frame::Kind::Data(d)) => self.pending = d.payload,
                    Some(dial_frame::Kind::Close(_)) => self.read_eof = true,
                    Some(dial_frame::Kind::Reset(r)) => {
                        self.read_eof = true;
                        let code = ResetCode::try_from(r.code).unwrap_or(ResetCode::Internal);
                        return Poll::Ready(Err(DialError::Refused {
                            code,
                            message: r.message,
                        }
                        .into()));
                    }
                    // Unknown or out-of-place frames are ignored
                    // (compatibility rule).
                    _ => {}
                },
                Some(Err(status)) => {
                    self.read_eof = true;
                    return Poll::Ready(Err(DialError::Status(status).into()));
                }
                None if self.eos_is_fin => self.read_eof = true,
                // The call ended without a close: the stream was cut.
                None => {
                    self.read_eof = true;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the control plane ended the call before the stream finished",
                    )));
                }
            }
        }
    }
}

impl AsyncWrite for DialStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.write_shut {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the stream was shut down for writing",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(self.tx.poll_reserve(cx)).map_err(|_| closed_by_peer())?;
        let n = buf.len().min(MAX_FRAME);
        let frame = DialFrame {
            kind: Some(dial_frame::Kind::Data(DialData {
                payload: Bytes::copy_from_slice(&buf[..n]),
            })),
        };
        self.tx.send_item(frame).map_err(|_| closed_by_peer())?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Frames are with tonic as soon as they are queued.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write_shut {
            return Poll::Ready(Ok(()));
        }
        ready!(self.tx.poll_reserve(cx)).map_err(|_| closed_by_peer())?;
        let frame = DialFrame {
            kind: Some(dial_frame::Kind::Close(DialClose {})),
        };
        self.tx.send_item(frame).map_err(|_| closed_by_peer())?;
        self.write_shut = true;
        Poll::Ready(Ok(()))
    }
}

impl Drop for DialStream {
    fn drop(&mut self) {
        if self.write_shut && self.read_eof {
            return;
        }
        // Best effort: tell the control plane why; dropping `rx` cancels the
        // call in any case, which resets the channel.
        if let Some(tx) = self.tx.get_ref() {
            let _ = tx.try_send(DialFrame {
                kind: Some(dial_frame::Kind::Reset(DialReset {
                    code: ResetCode::Cancelled as i32,
                    message: "the client dropped the stream before it finished".into(),
                })),
            });
        }
    }
}
