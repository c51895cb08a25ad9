"""tether_dial: a Python client of Tether's Dial API (`tether.v1.Dial/Open`).

    import tether_dial

    # a byte stream, like a socket
    with tether_dial.dial("https://127.0.0.1:8443", "ca.pem", api_key,
                          pool="db-net", host="10.0.0.5", port=5432) as s:
        s.sendall(b"...")
        s.recv(65536)

    # a local port for a library that connects by itself
    with tether_dial.forward("https://127.0.0.1:8443", "ca.pem", api_key,
                             pool="db-net", host="10.0.0.5", port=5432) as f:
        psycopg.connect(host=f.host, port=f.port, user="app", dbname="orders")

The stubs are generated from the repository's protos at first import
(tether_dial._stubs). The framing is described in clients/python/README.md.
"""

from ._stubs import generate
from .client import MAX_FRAME, DialError, Dialer, DialStream, dial, parse_endpoint
from .relay import Forward, forward, splice

__all__ = [
    "MAX_FRAME",
    "DialError",
    "DialStream",
    "Dialer",
    "Forward",
    "dial",
    "forward",
    "generate",
    "parse_endpoint",
    "splice",
]
