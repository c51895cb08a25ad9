//! Splicing a channel with a byte stream (a TCP socket on either end of the
//! tunnel), both directions at once, with half-close: end of input on one
//! side becomes a half-close on the other, and the splice ends when both
//! directions have ended.
//!
//! The result says which side failed, because the two need different
//! answers: a failing socket resets the channel with a reason the peer can
//! read; a reset channel must abort the socket (so a database driver sees a
//! broken connection, not a clean end that could pass for a complete result).

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Channel;
use crate::Wire;

/// Copy buffer per direction.
const BUFFER: usize = 64 * 1024;

/// Which side of a splice failed.
#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    /// The stream (socket) failed.
    #[error("the socket failed: {0}")]
    Stream(#[source] io::Error),
    /// The channel was reset or its session ended.
    #[error("the channel failed: {0}")]
    Channel(#[source] io::Error),
}

/// Bytes moved by a finished splice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Spliced {
    /// From the stream into the channel.
    pub into_channel: u64,
    /// From the channel into the stream.
    pub out_of_channel: u64,
}

/// Copies both ways between `channel` and `stream` until both directions
/// end. `on_into` and `on_out` see every chunk's size as it moves (for
/// metrics that must not wait for the end of a long-lived channel).
pub async fn splice<W, S, A, B>(
    channel: &mut Channel<W>,
    stream: &mut S,
    on_into: A,
    on_out: B,
) -> Result<Spliced, SpliceError>
where
    W: Wire,
    S: AsyncRead + AsyncWrite + Unpin,
    A: Fn(u64) + Unpin,
    B: Fn(u64) + Unpin,
{
    let mut tagged = Tagged {
        inner: stream,
        failed: false,
        on_read: on_into,
        on_write: on_out,
    };
    match tokio::io::copy_bidirectional_with_sizes(channel, &mut tagged, BUFFER, BUFFER).await {
        Ok((out_of_channel, into_channel)) => Ok(Spliced {
            into_channel,
            out_of_channel,
        }),
        Err(e) if tagged.failed => Err(SpliceError::Stream(e)),
        Err(e) => Err(SpliceError::Channel(e)),
    }
}

/// Remembers whether the stream itself failed, and counts its bytes.
struct Tagged<'a, S, A, B> {
    inner: &'a mut S,
    failed: bool,
    on_read: A,
    on_write: B,
}

impl<S, A, B> Tagged<'_, S, A, B> {
    fn note<T>(&mut self, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if matches!(r, Poll::Ready(Err(_))) {
            self.failed = true;
        }
        r
    }
}

impl<S, A, B> AsyncRead for Tagged<'_, S, A, B>
where
    S: AsyncRead + Unpin,
    A: Fn(u64) + Unpin,
    B: Unpin,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut *self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            (self.on_read)(n as u64);
        }
        self.note(r)
    }
}

impl<S, A, B> AsyncWrite for Tagged<'_, S, A, B>
where
    S: AsyncWrite + Unpin,
    A: Unpin,
    B: Fn(u64) + Unpin,
{
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut *self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            (self.on_write)(n as u64);
        }
        self.note(r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut *self.inner).poll_flush(cx);
        self.note(r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut *self.inner).poll_shutdown(cx);
        self.note(r)
    }
}

/// Bytes read from a socket per read: the allocation each read makes, and
/// which the frames sent from it share (no copy into the session).
const SOCKET_READ: usize = 64 * 1024;
/// Largest chunk taken from the channel per socket write.
const CHANNEL_READ: usize = 256 * 1024;

/// [`splice`] for a TCP socket, without copies and without buffers while
/// idle: a read buffer is allocated only once the socket is readable, and
/// its bytes go into the session as they are (frames are slices of it);
/// data from the peer is written to the socket straight from the frames
/// that carried it. An idle channel therefore holds no buffer at all.
pub async fn splice_tcp<W, A, B>(
    channel: &mut Channel<W>,
    tcp: &mut tokio::net::TcpStream,
    on_into: A,
    on_out: B,
) -> Result<Spliced, SpliceError>
where
    W: Wire,
    A: Fn(u64),
    B: Fn(u64),
{
    let mut into = Into::default();
    let mut out = Out::default();
    std::future::poll_fn(|cx| {
        let a = into.poll(cx, channel, tcp, &on_into)?;
        let b = out.poll(cx, channel, tcp, &on_out)?;
        if a.is_ready() && b.is_ready() {
            Poll::Ready(Ok(Spliced {
                into_channel: into.moved,
                out_of_channel: out.moved,
            }))
        } else {
            Poll::Pending
        }
    })
    .await
}

/// Socket → channel.
#[derive(Default)]
struct Into {
    /// Read buffer, kept while data flows so that its memory is reused
    /// (and stays in cache) once the frames cut from it were sent; let go
    /// when the socket has nothing to read.
    buf: bytes::BytesMut,
    pending: bytes::Bytes,
    eof: bool,
    done: bool,
    moved: u64,
}

impl Into {
    fn poll<W: Wire>(
        &mut self,
        cx: &mut Context<'_>,
        channel: &mut Channel<W>,
        tcp: &mut tokio::net::TcpStream,
        on_into: &impl Fn(u64),
    ) -> Poll<Result<(), SpliceError>> {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if !self.pending.is_empty() {
                match channel.poll_send(cx, &mut self.pending) {
                    Poll::Ready(Ok(())) => continue,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(SpliceError::Channel(e))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if self.eof {
                match Pin::new(&mut *channel).poll_shutdown(cx) {
                    Poll::Ready(Ok(())) => {
                        self.done = true;
                        continue;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(SpliceError::Channel(e))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            match tcp.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(SpliceError::Stream(e))),
                Poll::Pending => {
                    // Idle: hold no buffer.
                    self.buf = bytes::BytesMut::new();
                    return Poll::Pending;
                }
            }
            self.buf.reserve(SOCKET_READ);
            // Through `AsyncRead`, not `try_read_buf`: a read that returns
            // less than it was offered drained the socket, and tokio then
            // forgets the readiness itself, where `try_read_buf` needs a
            // second read that fails with `EAGAIN` (one system call more
            // per message; measured with strace on the round-trip bench).
            match tokio_util::io::poll_read_buf(Pin::new(&mut *tcp), cx, &mut self.buf) {
                Poll::Ready(Ok(0)) => self.eof = true,
                Poll::Ready(Ok(n)) => {
                    self.moved += n as u64;
                    on_into(n as u64);
                    self.pending = self.buf.split().freeze();
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(SpliceError::Stream(e))),
                // Readiness was stale; the read registered the waker.
                Poll::Pending => {
                    self.buf = bytes::BytesMut::new();
                    return Poll::Pending;
                }
            }
        }
    }
}

/// Channel → socket.
#[derive(Default)]
struct Out {
    pending: bytes::Bytes,
    eof: bool,
    done: bool,
    moved: u64,
}

impl Out {
    fn poll<W: Wire>(
        &mut self,
        cx: &mut Context<'_>,
        channel: &mut Channel<W>,
        tcp: &mut tokio::net::TcpStream,
        on_out: &impl Fn(u64),
    ) -> Poll<Result<(), SpliceError>> {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if !self.pending.is_empty() {
                match Pin::new(&mut *tcp).poll_write(cx, &self.pending) {
                    Poll::Ready(Ok(n)) => {
                        let _ = self.pending.split_to(n);
                        self.moved += n as u64;
                        on_out(n as u64);
                        continue;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(SpliceError::Stream(e))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if self.eof {
                match Pin::new(&mut *tcp).poll_shutdown(cx) {
                    Poll::Ready(Ok(())) => {
                        self.done = true;
                        continue;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(SpliceError::Stream(e))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            match channel.poll_recv(cx, CHANNEL_READ) {
                Poll::Ready(Ok(Some(data))) => self.pending = data,
                Poll::Ready(Ok(None)) => self.eof = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(SpliceError::Channel(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
