"""A local relay, for libraries that connect by themselves (psycopg, any
driver that takes a host and a port): a listener on 127.0.0.1 that dials a
new stream for every connection it accepts and copies bytes both ways.

Half-closes cross the relay (a local EOF becomes `close`, a `close` from
the target becomes a local EOF) and so do aborts (a local reset becomes a
`reset`, a `reset` or a failed call becomes a local TCP reset), so the
local client sees the flow exactly as the target ends it.

Anyone on this host can connect to the listener while it is open, as with
a gateway port: keep it open only while it is used.
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Dict, List, Optional

from .client import DEFAULT_TIMEOUT_MS, DialError, Dialer, DialStream, PathOrPem

#: Bytes read from the local socket at a time (one `data` frame each).
CHUNK = 64 * 1024


def _abort(sock: socket.socket) -> None:
    """Closes `sock` with a TCP reset, so the peer sees an abort, not an EOF."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def splice(sock: socket.socket, stream: DialStream) -> Optional[DialError]:
    """Copies `sock` <-> `stream` until both directions ended, then closes
    both. Returns the DialError that aborted the flow, if one did."""
    failure: List[DialError] = []
    local_reset = threading.Event()

    def upstream() -> None:  # local -> control plane
        try:
            while True:
                data = sock.recv(CHUNK)
                if not data:
                    stream.shutdown_write()
                    return
                stream.sendall(data)
        except (ConnectionResetError, ConnectionAbortedError):
            if not failure:
                local_reset.set()
                stream.reset("RESET_CODE_CANCELLED", "the local client reset its connection")
        except (DialError, OSError):
            pass  # the stream ended; downstream reports why

    up = threading.Thread(target=upstream, name="tether-dial-up", daemon=True)
    up.start()
    try:
        while True:  # control plane -> local
            data = stream.recv(CHUNK)
            if not data:
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                break
            sock.sendall(data)
    except DialError as e:
        if not local_reset.is_set():
            failure.append(e)
    except OSError:
        stream.reset("RESET_CODE_CANCELLED", "the local client went away")
    if failure:
        # Wake the upstream reader without sending anything, then reset.
        try:
            sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass
    up.join()
    stream.close()
    if failure:
        _abort(sock)
        return failure[0]
    sock.close()
    return None


class Forward:
    """A listener on 127.0.0.1 that dials the destination for every
    connection it accepts. `host`/`port` are where to point the client;
    `errors` holds the DialErrors of failed dials and aborted flows."""

    def __init__(self, dialer: Dialer, *, pool: Optional[str] = None, host: Optional[str] = None,
                 port: Optional[int] = None, connection: Optional[str] = None,
                 timeout_ms: int = DEFAULT_TIMEOUT_MS, listen: tuple = ("127.0.0.1", 0),
                 owns_dialer: bool = False):
        self._dialer = dialer
        self._owns_dialer = owns_dialer
        self._destination = dict(pool=pool, host=host, port=port, connection=connection,
                                 timeout_ms=timeout_ms)
        self._listener = socket.create_server(listen)
        self._listener.settimeout(0.2)
        self.host, self.port = self._listener.getsockname()[:2]
        #: DialErrors of failed dials and aborted flows, oldest first.
        self.errors: List[DialError] = []
        #: Connections accepted so far.
        self.accepted = 0
        self._stop = threading.Event()
        # Guards errors, accepted, _active and _workers; notified when a
        # flow ends (wait_idle).
        self._lock = threading.Condition()
        self._active: Dict[socket.socket, Optional[DialStream]] = {}
        self._workers: List[threading.Thread] = []
        self._thread = threading.Thread(target=self._accept_loop, name="tether-dial-forward",
                                        daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"Forward({self.host}:{self.port})"

    def __enter__(self) -> "Forward":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def raise_for_errors(self) -> None:
        """Raises the first recorded DialError, if any."""
        if self.errors:
            raise self.errors[0]

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(None)
            with self._lock:
                self.accepted += 1
                self._active[conn] = None
                worker = threading.Thread(target=self._serve, args=(conn,),
                                          name="tether-dial-conn", daemon=True)
                self._workers = [w for w in self._workers if w.is_alive()]
                self._workers.append(worker)
            worker.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            try:
                stream = self._dialer.dial(**self._destination)
            except DialError as e:
                self._record(e)
                _abort(conn)
                return
            with self._lock:
                stopping = self._stop.is_set()
                self._active[conn] = stream
            if stopping:
                stream.reset("RESET_CODE_CANCELLED", "the local relay was closed")
            error = splice(conn, stream)
            if error is not None:
                self._record(error)
        finally:
            with self._lock:
                self._active.pop(conn, None)
                self._lock.notify_all()

    def _record(self, error: DialError) -> None:
        with self._lock:
            if not self._stop.is_set():  # not the errors close() itself causes
                self.errors.append(error)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Waits until no accepted connection is still being relayed (the
        flows ended and their errors, if any, are in `errors`)."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._active, timeout)

    def close(self) -> None:
        """Stops listening and aborts the flows still open."""
        self._stop.set()
        self._thread.join()
        self._listener.close()
        with self._lock:
            streams = [s for s in self._active.values() if s is not None]
            workers = list(self._workers)
        for stream in streams:  # each relay then ends and resets its local socket
            stream.reset("RESET_CODE_CANCELLED", "the local relay was closed")
        for w in workers:
            w.join(timeout=5)
        if self._owns_dialer:
            self._dialer.close()


def forward(endpoint: str, ca_pem: PathOrPem, api_key: str, *, pool: Optional[str] = None,
            host: Optional[str] = None, port: Optional[int] = None,
            connection: Optional[str] = None, timeout_ms: int = DEFAULT_TIMEOUT_MS,
            server_name: Optional[str] = None, listen: tuple = ("127.0.0.1", 0)) -> Forward:
    """A Forward on a connection of its own (closed with it)."""
    dialer = Dialer(endpoint, ca_pem, api_key, server_name=server_name)
    try:
        return Forward(dialer, pool=pool, host=host, port=port, connection=connection,
                       timeout_ms=timeout_ms, listen=listen, owns_dialer=True)
    except BaseException:
        dialer.close()
        raise
