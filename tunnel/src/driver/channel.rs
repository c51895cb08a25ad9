//! Channel handles: a channel as `AsyncRead + AsyncWrite`, and a channel
//! the peer asks to open.
//!
//! Shutdown is a half-close (the peer reads end-of-stream; its direction
//! stays open). Dropping a handle before both directions finished resets the
//! channel with `CANCELLED`; dropping it after reading end-of-stream closes
//! it gracefully, like a TCP socket with nothing left to read.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{OpenError, Shared, now};
use crate::{ChannelError, ChannelId, Read, ResetCode, ResetInfo, Target, Wire};

/// A channel was refused or reset. Carried inside the `io::Error` of a
/// failed read or write, so callers can downcast and match on the code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} [{}]", code.as_str_name())]
pub struct ChannelReset {
    /// Why.
    pub code: ResetCode,
    /// What failed, the value involved and the fix.
    pub message: String,
    /// True if the peer reset it; false if this side did.
    pub by_peer: bool,
}

impl From<ResetInfo> for ChannelReset {
    fn from(info: ResetInfo) -> Self {
        Self {
            code: info.code,
            message: info.message,
            by_peer: info.by_peer,
        }
    }
}

impl ChannelReset {
    /// The `io::ErrorKind` a socket would report for this reason.
    pub fn io_kind(&self) -> io::ErrorKind {
        match self.code {
            ResetCode::Refused => io::ErrorKind::ConnectionRefused,
            ResetCode::Timeout => io::ErrorKind::TimedOut,
            ResetCode::PolicyDenied => io::ErrorKind::PermissionDenied,
            ResetCode::Unreachable => io::ErrorKind::HostUnreachable,
            ResetCode::Cancelled | ResetCode::TargetReset | ResetCode::SessionLost => {
                io::ErrorKind::ConnectionReset
            }
            _ => io::ErrorKind::ConnectionAborted,
        }
    }
}

impl From<ChannelReset> for io::Error {
    fn from(reset: ChannelReset) -> Self {
        io::Error::new(reset.io_kind(), reset)
    }
}

/// One channel, readable and writable like a TCP stream.
pub struct Channel<W: Wire> {
    shared: Arc<Shared<W>>,
    id: ChannelId,
    target: Target,
    read_eof: bool,
    write_shut: bool,
}

impl<W: Wire> std::fmt::Debug for Channel<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("id", &self.id)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl<W: Wire> Channel<W> {
    pub(crate) fn new(shared: Arc<Shared<W>>, id: ChannelId, target: Target) -> Self {
        Self {
            shared,
            id,
            target,
            read_eof: false,
            write_shut: false,
        }
    }

    /// The channel's id in its session.
    pub fn id(&self) -> ChannelId {
        self.id
    }

    /// The target it was opened for.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Aborts the channel in both directions; the peer reads `code` and
    /// `message`. Use it when the other end of a splice failed (a target
    /// that reset its connection), so the peer learns why.
    pub fn reset(&mut self, code: ResetCode, message: impl Into<String>) {
        let shared = self.shared.clone();
        let mut state = shared.lock();
        if state.session.reset(self.id, code, message).is_ok() {
            if let Some(slot) = state.slots.get_mut(&self.id) {
                slot.reset = Some(ResetInfo {
                    code,
                    message: "reset by this side".into(),
                    by_peer: false,
                });
            }
            state.dispatch(&shared);
        }
    }

    /// Ready once the peer accepted the channel.
    pub(crate) fn poll_opened(&self, cx: &mut Context<'_>) -> Poll<Result<(), OpenError>> {
        let mut state = self.shared.lock();
        let ended = state.is_ended();
        let slot = state
            .slots
            .get_mut(&self.id)
            .expect("a live handle keeps its slot");
        if slot.opened {
            return Poll::Ready(Ok(()));
        }
        if let Some(info) = slot.reset.clone() {
            return Poll::Ready(Err(OpenError::Refused(info.into())));
        }
        if ended {
            return Poll::Ready(Err(OpenError::Local(ChannelError::SessionClosed)));
        }
        slot.open = Some(cx.waker().clone());
        Poll::Pending
    }

    /// The error for an operation on a channel that left the session.
    fn gone(&self, state: &super::State<W>) -> io::Error {
        match state.slots.get(&self.id).and_then(|s| s.reset.clone()) {
            Some(info) => ChannelReset::from(info).into(),
            None if state.is_ended() => {
                io::Error::new(io::ErrorKind::ConnectionAborted, "the session ended")
            }
            None => io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("channel {} is closed", self.id),
            ),
        }
    }
}

impl<W: Wire> Channel<W> {
    /// Reads the next chunk of data, up to `max` bytes, without copying it:
    /// the bytes are the payload the peer sent. `None` is the end of the
    /// peer's data (it half-closed).
    pub fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<io::Result<Option<Bytes>>> {
        if self.read_eof {
            return Poll::Ready(Ok(None));
        }
        let shared = self.shared.clone();
        let mut state = shared.lock();
        match state.session.recv(now(), self.id, max) {
            Ok(Read::Data(data)) => {
                state.dispatch(&shared);
                Poll::Ready(Ok(Some(data)))
            }
            Ok(Read::Fin) => {
                state.dispatch(&shared);
                drop(state);
                self.read_eof = true;
                Poll::Ready(Ok(None))
            }
            Ok(Read::Pending) => {
                if let Some(slot) = state.slots.get_mut(&self.id) {
                    slot.read = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Err(ChannelError::Closed(_)) if state.slots.get(&self.id).is_some_and(|s| s.closed) => {
                drop(state);
                self.read_eof = true;
                Poll::Ready(Ok(None))
            }
            Err(_) => Poll::Ready(Err(self.gone(&state))),
        }
    }

    /// Hands `data` to the session without copying it, as far as the peer's
    /// credit allows; ready once all of it was taken (what was taken is
    /// removed from the front of `data`).
    pub fn poll_send(&mut self, cx: &mut Context<'_>, data: &mut Bytes) -> Poll<io::Result<()>> {
        let shared = self.shared.clone();
        let mut state = shared.lock();
        while !data.is_empty() {
            match state.session.send_capacity(self.id) {
                Ok(0) => {
                    if let Some(slot) = state.slots.get_mut(&self.id) {
                        slot.write = Some(cx.waker().clone());
                    }
                    state.dispatch(&shared);
                    return Poll::Pending;
                }
                Ok(_) => {
                    state
                        .session
                        .send(self.id, data)
                        .expect("capacity was just checked");
                }
                Err(ChannelError::WriteClosed(_)) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        format!("channel {} was shut down for writing", self.id),
                    )));
                }
                Err(_) => return Poll::Ready(Err(self.gone(&state))),
            }
        }
        state.dispatch(&shared);
        Poll::Ready(Ok(()))
    }
}

impl<W: Wire> AsyncRead for Channel<W> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.read_eof || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let shared = self.shared.clone();
        let mut state = shared.lock();
        let result = state.session.recv(now(), self.id, buf.remaining());
        match result {
            Ok(Read::Data(data)) => {
                buf.put_slice(&data);
                state.dispatch(&shared);
                Poll::Ready(Ok(()))
            }
            Ok(Read::Fin) => {
                state.dispatch(&shared);
                drop(state);
                self.read_eof = true;
                Poll::Ready(Ok(()))
            }
            Ok(Read::Pending) => {
                if let Some(slot) = state.slots.get_mut(&self.id) {
                    slot.read = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Err(ChannelError::Closed(_)) if state.slots.get(&self.id).is_some_and(|s| s.closed) => {
                drop(state);
                self.read_eof = true;
                Poll::Ready(Ok(()))
            }
            Err(_) => Poll::Ready(Err(self.gone(&state))),
        }
    }
}

impl<W: Wire> AsyncWrite for Channel<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let shared = self.shared.clone();
        let mut state = shared.lock();
        match state.session.send_capacity(self.id) {
            Ok(0) => {
                if let Some(slot) = state.slots.get_mut(&self.id) {
                    slot.write = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Ok(cap) => {
                let mut data = Bytes::copy_from_slice(&buf[..cap.min(buf.len())]);
                let taken = state
                    .session
                    .send(self.id, &mut data)
                    .expect("capacity was just checked");
                state.dispatch(&shared);
                Poll::Ready(Ok(taken))
            }
            Err(ChannelError::WriteClosed(_)) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("channel {} was shut down for writing", self.id),
            ))),
            Err(_) => Poll::Ready(Err(self.gone(&state))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written bytes are already with the session, which sends them as
        // soon as the transport has room; there is nothing to push.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write_shut {
            return Poll::Ready(Ok(()));
        }
        let shared = self.shared.clone();
        let mut state = shared.lock();
        match state.session.close(self.id) {
            Ok(()) | Err(ChannelError::WriteClosed(_)) => {
                state.dispatch(&shared);
                drop(state);
                self.write_shut = true;
                Poll::Ready(Ok(()))
            }
            Err(_) => Poll::Ready(Err(self.gone(&state))),
        }
    }
}

impl<W: Wire> Drop for Channel<W> {
    fn drop(&mut self) {
        let shared = self.shared.clone();
        let mut state = shared.lock();
        state.slots.remove(&self.id);
        if state.session.channel_info(self.id).is_none() {
            return;
        }
        if self.read_eof {
            // Nothing more will arrive: finish the write side gracefully.
            let _ = state.session.close(self.id);
        } else {
            let _ = state.session.reset(
                self.id,
                ResetCode::Cancelled,
                "the local end dropped the channel before reading to its end",
            );
        }
        state.dispatch(&shared);
    }
}

/// A channel the peer asks to open. Accept it, refuse it with a reason, or
/// drop it (which refuses with `CANCELLED`).
pub struct IncomingChannel<W: Wire> {
    shared: Option<Arc<Shared<W>>>,
    id: ChannelId,
    target: Target,
}

impl<W: Wire> std::fmt::Debug for IncomingChannel<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingChannel")
            .field("id", &self.id)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl<W: Wire> IncomingChannel<W> {
    pub(crate) fn new(shared: Arc<Shared<W>>, id: ChannelId, target: Target) -> Self {
        Self {
            shared: Some(shared),
            id,
            target,
        }
    }

    /// The channel's id.
    pub fn id(&self) -> ChannelId {
        self.id
    }

    /// Where the peer wants it to go.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Accepts the channel. Fails if the peer gave up on it meanwhile.
    pub fn accept(mut self) -> Result<Channel<W>, ChannelError> {
        let shared = self.shared.take().expect("present until answered");
        let target = std::mem::replace(&mut self.target, Target::new("", 0));
        {
            let mut state = shared.lock();
            if let Err(e) = state.session.accept(self.id) {
                state.slots.remove(&self.id);
                return Err(e);
            }
            state.dispatch(&shared);
        }
        Ok(Channel::new(shared, self.id, target))
    }

    /// Refuses the channel; the peer's open fails with `code` and `message`.
    pub fn refuse(mut self, code: ResetCode, message: impl Into<String>) {
        if let Some(shared) = self.shared.take() {
            let mut state = shared.lock();
            state.slots.remove(&self.id);
            let _ = state.session.refuse(self.id, code, message);
            state.dispatch(&shared);
        }
    }

    /// Forgets the offer without locking (used while the lock is held).
    pub(crate) fn disarm(mut self) {
        self.shared = None;
    }
}

impl<W: Wire> Drop for IncomingChannel<W> {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            let mut state = shared.lock();
            state.slots.remove(&self.id);
            let _ = state.session.refuse(
                self.id,
                ResetCode::Cancelled,
                "the receiving side dropped the open request without answering",
            );
            state.dispatch(&shared);
        }
    }
}
