"""End-to-end tests of the Python Dial client against a real control plane,
agent and PostgreSQL.

tests/e2e_python_client.rs starts them, then runs

    tether-python-client -m unittest discover -s clients/python/tests -v

with the environment below. Every variable marked required must be set:
without them the tests fail, they never skip.

  TETHER_ENDPOINT        required  https://127.0.0.1:PORT of the control plane
  TETHER_CA_FILE         required  the control plane's ca.pem
  TETHER_API_KEY         required  a dialer key granted TETHER_POOL
  TETHER_POOL            required  the pool of an agent that allows only the PostgreSQL port
  TETHER_PG_HOST         required  PostgreSQL as the agent reaches it (127.0.0.1)
  TETHER_PG_PORT         required  (5432)
  TETHER_DENIED_KEY      required  a valid key that may not dial TETHER_POOL
  TETHER_PG_USER         optional  (postgres; trust auth)
  TETHER_PG_DATABASE     optional  (test)
  TETHER_PG_TABLE        optional  the temporary table's name (default: unique per run)
  TETHER_REFUSED_TARGET  optional  a target the agent's allow-list refuses (127.0.0.1:1)
"""

from __future__ import annotations

import faulthandler
import os
import socket
import string
import struct
import sys
import unittest
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc  # noqa: E402
import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

import tether_dial  # noqa: E402
from tether_dial import DialError  # noqa: E402
from tether_dial.client import tunnel_pb  # noqa: E402

REQUIRED = (
    "TETHER_ENDPOINT",
    "TETHER_CA_FILE",
    "TETHER_API_KEY",
    "TETHER_POOL",
    "TETHER_PG_HOST",
    "TETHER_PG_PORT",
    "TETHER_DENIED_KEY",
)
#: A test that takes longer than this dumps every thread's stack and exits.
TEST_TIMEOUT_S = 120


class Env:
    def __init__(self) -> None:
        missing = [v for v in REQUIRED if not os.environ.get(v)]
        if missing:
            raise AssertionError(
                f"missing environment variables {', '.join(missing)}: these tests need a "
                "running control plane, agent and PostgreSQL, which tests/e2e_python_client.rs "
                "starts and then sets these variables for them (cargo test --test "
                "e2e_python_client); see the docstring of clients/python/tests/test_dial.py"
            )
        e = os.environ
        self.endpoint = e["TETHER_ENDPOINT"]
        self.ca_file = e["TETHER_CA_FILE"]
        self.api_key = e["TETHER_API_KEY"]
        self.pool = e["TETHER_POOL"]
        self.pg_host = e["TETHER_PG_HOST"]
        self.pg_port = int(e["TETHER_PG_PORT"])
        self.denied_key = e["TETHER_DENIED_KEY"]
        self.pg_user = e.get("TETHER_PG_USER") or "postgres"
        self.pg_database = e.get("TETHER_PG_DATABASE") or "test"
        self.table = e.get("TETHER_PG_TABLE") or f"tether_py_{uuid.uuid4().hex[:12]}"
        refused = e.get("TETHER_REFUSED_TARGET") or "127.0.0.1:1"
        host, _, port = refused.rpartition(":")
        self.refused = (host, int(port))

    def dial(self, **kw):
        kw.setdefault("pool", self.pool)
        kw.setdefault("host", self.pg_host)
        kw.setdefault("port", self.pg_port)
        key = kw.pop("api_key", self.api_key)
        return tether_dial.dial(self.endpoint, self.ca_file, key, **kw)

    def forward(self, **kw):
        kw.setdefault("pool", self.pool)
        kw.setdefault("host", self.pg_host)
        kw.setdefault("port", self.pg_port)
        return tether_dial.forward(self.endpoint, self.ca_file, self.api_key, **kw)


class DialTest(unittest.TestCase):
    env: Env

    @classmethod
    def setUpClass(cls) -> None:
        cls.env = Env()

    def setUp(self) -> None:
        faulthandler.dump_traceback_later(TEST_TIMEOUT_S, exit=True)

    def tearDown(self) -> None:
        faulthandler.cancel_dump_traceback_later()

    def assertNoSecret(self, error: DialError, key: str) -> None:
        for text in (str(error), repr(error), error.message):
            self.assertNotIn(key.strip(), text)
            self.assertNotIn(key.strip().rsplit(".", 1)[-1], text)


class PsycopgThroughDial(DialTest):
    """psycopg (libpq) connects to a local relay that dials per connection."""

    def test_queries_through_a_dial_channel(self) -> None:
        e = self.env
        table = sql.Identifier(e.table)
        big = (string.ascii_letters * (3 * 1024 * 1024 // len(string.ascii_letters) + 1))[
            : 3 * 1024 * 1024 + 17
        ]  # several 1 MiB frames in each direction
        rows = [(i, f"row {i}") for i in range(1, 51)] + [(1000, big)]
        # sslmode=disable: with TLS, PostgreSQL's backend exits without
        # reading the client's close_notify, so its kernel answers with a TCP
        # reset, which the relay rightly reports as a target reset (in
        # `errors`); in clear text the flows end cleanly and errors stay empty.
        with e.forward() as fwd:
            self.assertEqual(fwd.host, "127.0.0.1")
            with psycopg.connect(host=fwd.host, port=fwd.port, user=e.pg_user,
                                 dbname=e.pg_database, connect_timeout=30, sslmode="disable",
                                 application_name="tether-python-client") as conn:
                with conn.cursor() as cur:
                    cur.execute(sql.SQL(
                        "CREATE TEMP TABLE {} (id int PRIMARY KEY, note text NOT NULL)"
                    ).format(table))
                    cur.executemany(
                        sql.SQL("INSERT INTO {} (id, note) VALUES (%s, %s)").format(table), rows)
                    cur.execute(sql.SQL("SELECT id, note FROM {} ORDER BY id").format(table))
                    got = cur.fetchall()
                    self.assertEqual(len(got), len(rows))
                    self.assertEqual(got[:50], rows[:50])
                    self.assertEqual(got[50][0], 1000)
                    self.assertTrue(got[50][1] == big, "the 3 MiB value came back changed")
                    cur.execute("SELECT 1")
                    self.assertEqual(cur.fetchone(), (1,))
                    cur.execute("SELECT inet_server_port(), current_database()")
                    self.assertEqual(cur.fetchone(), (e.pg_port, e.pg_database))
                    cur.execute("SELECT pg_backend_pid()")
                    pid = cur.fetchone()[0]
                # A second connection at the same time: a second channel.
                with psycopg.connect(host=fwd.host, port=fwd.port, user=e.pg_user,
                                     dbname=e.pg_database, connect_timeout=30,
                                     sslmode="disable") as other:
                    other_pid = other.execute("SELECT pg_backend_pid()").fetchone()[0]
                    self.assertNotEqual(other_pid, pid)
                    # The temporary table is the first session's only.
                    visible = other.execute(
                        "SELECT count(*) FROM pg_class WHERE relname = %s AND relpersistence = 't'"
                        " AND pg_table_is_visible(oid)", (e.table,)).fetchone()[0]
                    self.assertEqual(visible, 0)
            self.assertTrue(fwd.wait_idle(), "the relayed flows did not end")
            self.assertGreaterEqual(fwd.accepted, 2)
            self.assertEqual(fwd.errors, [])


def _pg_message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def _read_pg_message(stream) -> tuple[bytes, bytes]:
    header = stream.recv_exactly(5)
    (length,) = struct.unpack("!i", header[1:])
    return header[:1], stream.recv_exactly(length - 4)


class RawFraming(DialTest):
    """Bytes written by hand: the Dial framing with no driver in between."""

    def test_ssl_request_gets_one_byte_answer_and_half_close_ends_cleanly(self) -> None:
        with self.env.dial() as s:
            self.assertTrue(s.agent_id)
            self.assertGreater(s.channel_id, 0)
            s.sendall(struct.pack("!ii", 8, 80877103))  # SSLRequest
            answer = s.recv_exactly(1)
            self.assertIn(answer, (b"S", b"N"))
            # Our half-close (`close`) reaches PostgreSQL as end of data; it
            # hangs up, which comes back as the server's `close`.
            s.shutdown(socket.SHUT_WR)
            self.assertEqual(s.recv(), b"")
            self.assertEqual(s.recv(), b"")
            with self.assertRaises(BrokenPipeError):
                s.sendall(b"x")

    def test_startup_and_a_query_larger_than_one_frame(self) -> None:
        e = self.env
        params = (f"user\0{e.pg_user}\0database\0{e.pg_database}\0"
                  "application_name\0tether-python-raw\0\0").encode()
        startup = struct.pack("!ii", len(params) + 8, 196608) + params  # protocol 3.0
        literal = "y" * (2 * 1024 * 1024 + 5)  # one sendall, three `data` frames
        query = _pg_message(b"Q", f"SELECT length('{literal}')".encode() + b"\0")
        with e.dial() as s:
            s.sendall(startup)
            while True:  # trust auth: AuthenticationOk ... ReadyForQuery
                kind, body = _read_pg_message(s)
                self.assertNotEqual(kind, b"E", body.decode(errors="replace"))
                if kind == b"Z":
                    break
            s.sendall(query)
            values = []
            while True:
                kind, body = _read_pg_message(s)
                self.assertNotEqual(kind, b"E", body.decode(errors="replace"))
                if kind == b"D":  # DataRow: int16 count, int32 length, value
                    (n,) = struct.unpack("!i", body[2:6])
                    values.append(body[6:6 + n].decode())
                if kind == b"Z":
                    break
            self.assertEqual(values, [str(len(literal))])
            s.sendall(_pg_message(b"X", b""))  # Terminate
            s.shutdown_write()
            self.assertEqual(s.recv(), b"")


class Refusals(DialTest):
    """Errors keep the server's code and message, and never the key."""

    def test_a_key_that_may_not_dial_gets_permission_denied(self) -> None:
        with self.assertRaises(DialError) as ctx:
            self.env.dial(api_key=self.env.denied_key)
        err = ctx.exception
        self.assertEqual(err.code, "PERMISSION_DENIED", str(err))
        self.assertEqual(err.status, grpc.StatusCode.PERMISSION_DENIED)
        self.assertTrue(err.message)
        self.assertIn(err.message, str(err))
        self.assertNoSecret(err, self.env.denied_key)

    def test_an_unknown_key_gets_unauthenticated(self) -> None:
        bogus = "tether-key.v1.0000000000000000.not-a-real-secret"
        with self.assertRaises(DialError) as ctx:
            self.env.dial(api_key=bogus)
        err = ctx.exception
        self.assertEqual(err.code, "UNAUTHENTICATED", str(err))
        self.assertNoSecret(err, bogus)

    def test_a_target_outside_the_allow_list_is_reset_with_policy_denied(self) -> None:
        host, port = self.env.refused
        with self.assertRaises(DialError) as ctx:
            self.env.dial(host=host, port=port)
        err = ctx.exception
        self.assertEqual(err.code, "RESET_CODE_POLICY_DENIED", str(err))
        self.assertEqual(err.reset_code, tunnel_pb.ResetCode.Value("RESET_CODE_POLICY_DENIED"))
        self.assertIn(f"{host}:{port}", err.message)

    def test_the_relay_resets_the_local_connection_and_keeps_the_error(self) -> None:
        host, port = self.env.refused
        with self.env.forward(host=host, port=port) as fwd:
            with socket.create_connection((fwd.host, fwd.port), timeout=60) as c:
                try:
                    data = c.recv(1)
                except ConnectionResetError:
                    data = b""
                self.assertEqual(data, b"")
            self.assertEqual([x.code for x in fwd.errors], ["RESET_CODE_POLICY_DENIED"])
            with self.assertRaises(DialError):
                fwd.raise_for_errors()


if __name__ == "__main__":
    unittest.main()
