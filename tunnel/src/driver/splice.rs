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
