//! A read buffer under TLS that holds memory only while data flows.
//!
//! rustls reads at most 4 KiB per call, so without a buffer every 4 KiB of
//! a bulk transfer costs a system call. A `BufReader` keeps its buffer for
//! the life of the connection: 64 KiB per agent, most of what an idle
//! agent cost the control plane. [`ReadBuffer`] takes the buffer when a
//! read needs it and gives it back once everything read was handed on and
//! the socket has nothing more (the read returned `Pending`), so an idle
//! connection holds none, and a busy one reads 64 KiB per system call.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from the socket per system call while data flows.
pub const READ_BUFFER: usize = 64 * 1024;

/// See the module docs.
#[derive(Debug)]
pub struct ReadBuffer<S> {
    inner: S,
    /// Read and not yet handed on; no allocation while idle.
    buf: BytesMut,
}

impl<S> ReadBuffer<S> {
    /// Wraps `inner`; allocates nothing until the first read.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            buf: BytesMut::new(),
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Bytes allocated for the buffer now (0 while idle).
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Bytes read from the stream and not yet handed on.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadBuffer<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buf.is_empty() {
            if out.remaining() >= READ_BUFFER {
                // A read as large as the buffer needs none.
                this.buf = BytesMut::new();
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            // Reuses the allocation while data flows (the buffer is empty).
            this.buf.reserve(READ_BUFFER);
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.buf) {
                Poll::Pending => {
                    // Idle: give the memory back until the next read.
                    this.buf = BytesMut::new();
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                // Zero bytes is the end of the stream: handed on as such.
                Poll::Ready(Ok(_)) => {}
            }
        }
        let n = this.buf.len().min(out.remaining());
        out.put_slice(&this.buf[..n]);
        this.buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadBuffer<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn small_reads_go_through_the_buffer_and_an_idle_one_holds_nothing() {
        let (mut peer, inner) = tokio::io::duplex(256 * 1024);
        let mut r = ReadBuffer::new(inner);
        assert_eq!(r.buffer_capacity(), 0, "nothing before the first read");

        let sent: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        peer.write_all(&sent).await.unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while got.len() < sent.len() {
            let n = r.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&chunk[..n]);
            if got.len() == chunk.len() {
                // The first 4 KiB read took more from the socket.
                assert!(r.buffered() > 0);
            }
        }
        assert_eq!(got, sent, "every byte, in order");

        // Drained and the socket empty: a read that must wait frees the
        // buffer.
        let waiting = futures_util::FutureExt::now_or_never(r.read(&mut chunk));
        assert!(waiting.is_none(), "nothing to read yet");
        assert_eq!(r.buffer_capacity(), 0, "an idle connection holds no buffer");

        // The end of the stream is passed on.
        drop(peer);
        assert_eq!(r.read(&mut chunk).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn large_reads_bypass_the_buffer() {
        let (mut peer, inner) = tokio::io::duplex(256 * 1024);
        let mut r = ReadBuffer::new(inner);
        peer.write_all(&[9u8; 100]).await.unwrap();
        let mut big = vec![0u8; READ_BUFFER];
        assert_eq!(r.read(&mut big).await.unwrap(), 100);
        assert_eq!(r.buffer_capacity(), 0);
    }
}
