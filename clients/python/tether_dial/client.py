"""The Dial client: one `Dial.Open` call per stream, read and written like a
socket.

Each stream is one bidirectional gRPC call. Frames towards the control
plane go through a bounded queue that gRPC drains one message at a time
(so a writer waits when the network or the target is slow), and frames
from it are read one at a time when the caller asks (so HTTP/2 flow
control stops the sender when the caller does not read). Nothing buffers
without bound.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
from typing import Iterator, Optional, Union

import grpc

from ._stubs import load

_stubs = load()
pb = _stubs.dial_pb2
pb_grpc = _stubs.dial_pb2_grpc
tunnel_pb = _stubs.tunnel_pb2

#: Largest `data` payload the protocol allows per frame (1 MiB).
MAX_FRAME = 1024 * 1024
#: Frames queued towards the control plane per stream before writes wait.
SEND_QUEUE = 16
#: The control plane's default wait for a channel to open.
DEFAULT_TIMEOUT_MS = 10_000
#: Largest message accepted from the control plane (a 1 MiB frame plus room).
_MAX_MESSAGE = MAX_FRAME + 64 * 1024
#: How long close() waits for the control plane to end the call.
_CLOSE_GRACE = 2.0

PathOrPem = Union[str, bytes, "os.PathLike[str]"]


class DialError(Exception):
    """A dial or a stream failed.

    `code` is a name: a gRPC status (`UNAUTHENTICATED`, `PERMISSION_DENIED`,
    `NOT_FOUND`, `UNAVAILABLE`, `DEADLINE_EXCEEDED`, ...) when the control
    plane refused or ended the call, a tunnel reset code
    (`RESET_CODE_POLICY_DENIED`, `RESET_CODE_REFUSED`, ...) when the agent
    or the target refused or aborted the channel, or `PROTOCOL` when the
    control plane answered something the protocol does not allow.
    `message` is the server's message, unchanged.
    """

    def __init__(self, code: str, message: str, *, status: Optional[grpc.StatusCode] = None,
                 reset_code: Optional[int] = None):
        super().__init__(code, message)
        self.code = code
        self.message = message
        #: The gRPC status, when the call ended with one.
        self.status = status
        #: The numeric ResetCode, when a `reset` frame carried the error.
        self.reset_code = reset_code

    def __str__(self) -> str:
        tag = f"[{self.code}]"
        return self.message if self.message.endswith(tag) else f"{self.message} {tag}"


def _status_error(e: grpc.RpcError) -> DialError:
    code = e.code() if hasattr(e, "code") else None
    details = e.details() if hasattr(e, "details") else None
    name = code.name if code is not None else "UNKNOWN"
    return DialError(name, details or str(code), status=code)


def _reset_error(reset) -> DialError:
    try:
        name = tunnel_pb.ResetCode.Name(reset.code)
    except ValueError:
        name = f"RESET_CODE_{reset.code}"
    return DialError(name, reset.message, reset_code=reset.code)


def _reset_value(code: Union[str, int]) -> int:
    if isinstance(code, int):
        return code
    return tunnel_pb.ResetCode.Value(code)


def _read_pem(ca_pem: PathOrPem) -> bytes:
    if isinstance(ca_pem, bytes):
        return ca_pem
    if isinstance(ca_pem, str) and ca_pem.lstrip().startswith("-----BEGIN"):
        return ca_pem.encode()
    with open(ca_pem, "rb") as f:
        return f.read()


def parse_endpoint(endpoint: str) -> str:
    """`https://host:port`, `host:port` or `[v6]:port` -> gRPC target `host:port`."""
    rest = endpoint
    if "://" in rest:
        scheme, rest = rest.split("://", 1)
        if scheme != "https":
            raise ValueError(
                f"control plane address {endpoint!r}: the Dial API is served over TLS only; "
                "write it as https://host:port"
            )
    rest = rest.rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"control plane address {endpoint!r} is not valid; write it as https://host:port"
        )
    return rest


class _Requests:
    """The request side of a call: a bounded queue that gRPC drains."""

    _END = object()

    def __init__(self) -> None:
        self._q: "queue.Queue[object]" = queue.Queue(SEND_QUEUE)
        self._stopped = threading.Event()

    def put(self, frame) -> bool:
        """Queues a frame, waiting while the queue is full; False once the call is over."""
        while not self._stopped.is_set():
            try:
                self._q.put(frame, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def try_put(self, frame) -> bool:
        try:
            self._q.put_nowait(frame)
            return True
        except queue.Full:
            return False

    def end(self) -> None:
        """Ends the request stream after the queued frames."""
        self.put(self._END)

    def try_end(self) -> None:
        self.try_put(self._END)

    def stop(self) -> None:
        """The call is over: wake and end everything."""
        self._stopped.set()

    def frames(self) -> Iterator[object]:
        while not self._stopped.is_set():
            try:
                item = self._q.get(timeout=0.2)
            except queue.Empty:
                continue
            if item is self._END:
                return
            yield item


class DialStream:
    """An open stream to a target: `recv`, `send`/`sendall`, `shutdown`, `close`.

    One thread may read while another writes. `shutdown(socket.SHUT_WR)`
    (or `shutdown_write()`) is a half-close: the target reads end of data,
    and the other direction stays open. `close()` before both directions
    ended resets the channel (the target sees an abort, not a clean end).
    """

    def __init__(self, call, requests: _Requests, opened, channel: Optional[grpc.Channel]):
        self._call = call
        self._requests = requests
        self._channel = channel  # closed with the stream when the stream owns it
        #: The agent that carries the stream.
        self.agent_id: str = opened.agent_id
        #: The channel id on that agent's session (to match logs).
        self.channel_id: int = opened.channel_id
        self._pending = memoryview(b"")
        self._read_eof = False
        self._write_shut = False
        self._closed = False
        self._error: Optional[DialError] = None
        self._local_reset: Optional[str] = None  # why this side reset, if it did
        self._reset_timer: Optional[threading.Timer] = None
        self._lock = threading.Lock()
        self._done = threading.Event()
        call.add_done_callback(self._on_done)

    def _on_done(self, call) -> None:
        self._requests.stop()
        self._done.set()
        timer = self._reset_timer
        if timer is not None:
            timer.cancel()

    def __repr__(self) -> str:
        return f"DialStream(agent_id={self.agent_id!r}, channel_id={self.channel_id})"

    def __enter__(self) -> "DialStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # Reading.

    def recv(self, bufsize: int = 65536) -> bytes:
        """Up to `bufsize` bytes; b"" at the end of the flow (the other side's
        `close`). Raises DialError when the flow was reset or the call failed."""
        if bufsize <= 0:
            return b""
        while True:
            if self._local_reset is not None and self._error is None:
                # This side aborted: what is left is discarded, like TCP.
                self._pending = memoryview(b"")
                self._read_eof = True
                self._error = DialError("CANCELLED",
                                        f"this client reset the stream: {self._local_reset}")
            if self._pending:
                chunk = bytes(self._pending[:bufsize])
                self._pending = self._pending[len(chunk):]
                return chunk
            if self._read_eof:
                if self._error is not None:
                    raise self._error
                return b""
            frame = self._next_frame()
            if frame is None:
                continue
            kind = frame.WhichOneof("kind")
            if kind == "data":
                self._pending = memoryview(frame.data.payload)
            elif kind == "close":
                self._read_eof = True
            elif kind == "reset":
                self._read_eof = True
                self._error = _reset_error(frame.reset)
            # Unknown or out-of-place frames are ignored (compatibility rule).

    def _next_frame(self):
        """The next frame, or None at the end of the call (which sets the state)."""
        try:
            return next(self._call)
        except StopIteration:
            self._read_eof = True
            if self._local_reset is None and self._error is None:
                self._error = DialError(
                    "PROTOCOL", "the control plane ended the call before the stream finished")
        except grpc.RpcError as e:
            self._read_eof = True
            if self._local_reset is None and self._error is None:
                self._error = _status_error(e)
        return None

    def recv_exactly(self, n: int) -> bytes:
        """Exactly `n` bytes; DialError if the flow ends first."""
        out = bytearray()
        while len(out) < n:
            chunk = self.recv(n - len(out))
            if not chunk:
                raise DialError("PROTOCOL", f"the stream ended after {len(out)} of {n} bytes")
            out += chunk
        return bytes(out)

    # Writing.

    def _check_writable(self) -> None:
        if self._local_reset is not None:
            raise BrokenPipeError(f"this client reset the stream: {self._local_reset}")
        if self._write_shut:
            raise BrokenPipeError("the stream was shut down for writing")
        if self._done.is_set() or self._closed:
            if self._error is not None:
                raise self._error
            if self._done.is_set() and self._call.code() != grpc.StatusCode.OK:
                raise _status_error(self._call)
            raise BrokenPipeError("the control plane ended the stream")

    def send(self, data) -> int:
        """Sends up to 1 MiB of `data` as one frame; returns how many bytes."""
        view = memoryview(data).cast("B")
        if not view:
            return 0
        self._check_writable()
        n = min(len(view), MAX_FRAME)
        frame = pb.DialFrame(data=pb.DialData(payload=bytes(view[:n])))
        if not self._requests.put(frame):
            self._check_writable()
            raise BrokenPipeError("the control plane ended the stream")
        return n

    def sendall(self, data) -> None:
        """Sends all of `data`, in frames of at most 1 MiB."""
        view = memoryview(data).cast("B")
        while view:
            view = view[self.send(view):]

    def shutdown_write(self) -> None:
        """Half-close: sends `close`; the other direction stays open."""
        with self._lock:
            if self._write_shut:
                return
            self._check_writable()
            self._write_shut = True
        self._requests.put(pb.DialFrame(close=pb.DialClose()))
        self._requests.end()

    def shutdown(self, how: int = socket.SHUT_WR) -> None:
        """Like socket.shutdown: SHUT_WR and SHUT_RDWR half-close the write side."""
        if how in (socket.SHUT_WR, socket.SHUT_RDWR):
            self.shutdown_write()

    # Ending.

    def reset(self, code: Union[str, int] = "RESET_CODE_CANCELLED",
              message: str = "the client aborted the stream") -> None:
        """Aborts both directions, telling the other side why (best effort)."""
        with self._lock:
            if self._done.is_set() or self._local_reset is not None:
                return
            self._local_reset = message
            sent = False
            if not self._write_shut:
                self._write_shut = True
                frame = pb.DialFrame(reset=pb.DialReset(code=_reset_value(code), message=message))
                sent = self._requests.try_put(frame)
                self._requests.try_end()
        if not sent:
            # No room for the reason (or the request stream already
            # ended): cancelling the call resets the channel all the same.
            self._call.cancel()
            return
        # The control plane ends the call when it reads the reset; if it
        # does not in time, cancel the call.
        timer = threading.Timer(_CLOSE_GRACE, self._call.cancel)
        timer.daemon = True
        self._reset_timer = timer
        timer.start()
        if self._done.is_set():
            timer.cancel()

    def close(self) -> None:
        """Ends the stream; resets it if either direction is unfinished."""
        with self._lock:
            if self._closed:
                return
        finished = self._write_shut and self._read_eof and self._error is None
        if not finished:
            self.reset("RESET_CODE_CANCELLED", "the client closed the stream before it finished")
        with self._lock:
            self._closed = True
        # gRPC reports the end of a call only once its frames were read:
        # read (and drop) what is left, for a bounded time.
        timer = threading.Timer(_CLOSE_GRACE, self._call.cancel)
        timer.daemon = True
        timer.start()
        try:
            while not self._done.is_set():
                try:
                    next(self._call)
                except (StopIteration, grpc.RpcError):
                    break
        finally:
            timer.cancel()
        self._call.cancel()
        self._requests.stop()
        if self._channel is not None:
            self._channel.close()


class Dialer:
    """A connection to the control plane that dials many streams.

    `endpoint` is `https://host:port`; `ca_pem` the control plane's CA
    certificate (PEM bytes or text, or a file path; the data directory's
    `ca.pem`); `api_key` a key of role dialer or above, sent as
    `authorization: Bearer <key>`. `server_name` overrides the name the
    server certificate is checked against (default: the endpoint's host,
    which must be in the control plane's `tls_names`).
    """

    def __init__(self, endpoint: str, ca_pem: PathOrPem, api_key: str,
                 *, server_name: Optional[str] = None):
        target = parse_endpoint(endpoint)
        key = api_key.strip()
        if not key:
            raise ValueError("the API key is empty")
        credentials = grpc.ssl_channel_credentials(root_certificates=_read_pem(ca_pem))
        options = [
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        self.endpoint = endpoint
        self._channel = grpc.secure_channel(target, credentials, options=options)
        self._stub = pb_grpc.DialStub(self._channel)
        self._metadata = (("authorization", f"Bearer {key}"),)

    def __repr__(self) -> str:  # never shows the key
        return f"Dialer(endpoint={self.endpoint!r})"

    def __enter__(self) -> "Dialer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection (streams still open on it are cancelled)."""
        self._channel.close()

    def dial(self, *, pool: Optional[str] = None, host: Optional[str] = None,
             port: Optional[int] = None, connection: Optional[str] = None,
             timeout_ms: int = DEFAULT_TIMEOUT_MS) -> DialStream:
        """Opens a stream to `host:port` through an agent of `pool`, or to the
        configured `connection`, and returns it once the target accepted.
        Raises DialError when the control plane, the agent or the target
        refuses."""
        return self._dial(pool, host, port, connection, timeout_ms, owns_channel=False)

    def _dial(self, pool, host, port, connection, timeout_ms, *, owns_channel) -> DialStream:
        if connection:
            if pool or host or port:
                raise ValueError("give either connection, or pool with host and port")
            open_ = pb.DialOpen(connection=connection, timeout_ms=timeout_ms)
        else:
            if not (pool and host and port):
                raise ValueError("give either connection, or pool with host and port")
            open_ = pb.DialOpen(pool=pool, target_host=host, target_port=int(port),
                                timeout_ms=timeout_ms)
        requests = _Requests()
        requests.put(pb.DialFrame(open=open_))
        call = self._stub.Open(requests.frames(), metadata=self._metadata)
        call.add_done_callback(lambda _c: requests.stop())
        # The control plane answers within its open timeout; this only
        # guards against a peer that never answers at all.
        timed_out = threading.Event()

        def expire() -> None:
            timed_out.set()
            call.cancel()

        timer = threading.Timer((timeout_ms or DEFAULT_TIMEOUT_MS) / 1000 + 15, expire)
        timer.daemon = True
        timer.start()
        try:
            first = next(call)
        except StopIteration:
            raise DialError("PROTOCOL", "the call ended without an answer") from None
        except grpc.RpcError as e:
            if timed_out.is_set():
                raise DialError("DEADLINE_EXCEEDED",
                                "the control plane did not answer the open in time") from None
            raise _status_error(e) from None
        finally:
            timer.cancel()
        kind = first.WhichOneof("kind")
        if kind == "opened":
            return DialStream(call, requests, first.opened,
                              self._channel if owns_channel else None)
        requests.stop()
        call.cancel()
        if kind == "reset":
            raise _reset_error(first.reset)
        raise DialError("PROTOCOL", f"the first frame was {kind or 'empty'}, not `opened`")


def dial(endpoint: str, ca_pem: PathOrPem, api_key: str, *, pool: Optional[str] = None,
         host: Optional[str] = None, port: Optional[int] = None,
         connection: Optional[str] = None, timeout_ms: int = DEFAULT_TIMEOUT_MS,
         server_name: Optional[str] = None) -> DialStream:
    """Dials one stream on a connection of its own (closed with the stream).
    For many streams, keep a Dialer."""
    dialer = Dialer(endpoint, ca_pem, api_key, server_name=server_name)
    try:
        return dialer._dial(pool, host, port, connection, timeout_ms, owns_channel=True)
    except BaseException:
        dialer.close()
        raise
