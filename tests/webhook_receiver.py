#!/usr/bin/env python3
"""A real HTTP receiver for the alert webhook tests (Python's http.server).

Usage: webhook_receiver.py PORT_FILE OUT_FILE FAIL_FIRST

Listens on 127.0.0.1 (a free port, written to PORT_FILE once listening),
appends one JSON line per request to OUT_FILE (status, path, headers,
body), and answers the first FAIL_FIRST requests with 500 so that retries
can be observed. Exits when its parent (the test) closes its stdin.
"""

import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port_file, out_file, fail_first = sys.argv[1], sys.argv[2], int(sys.argv[3])
lock = threading.Lock()
seen = 0


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        global seen
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length).decode("utf-8", "replace")
        with lock:
            seen += 1
            status = 500 if seen <= fail_first else 200
            with open(out_file, "a", encoding="utf-8") as out:
                out.write(json.dumps({
                    "status": status,
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": body,
                }) + "\n")
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(port_file + ".tmp", "w", encoding="utf-8") as f:
    f.write(str(server.server_address[1]))
# Renamed into place so that the test never reads a half-written file.
os.replace(port_file + ".tmp", port_file)
threading.Thread(target=server.serve_forever, daemon=True).start()
sys.stdin.read()
server.shutdown()
