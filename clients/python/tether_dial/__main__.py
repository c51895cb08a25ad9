"""Command line: `python -m tether_dial [options] {dial,forward} HOST:PORT`,
or `python -m tether_dial generate`.

  dial      copies stdin to the target and the target to stdout, like nc
  forward   listens on 127.0.0.1 (--listen) and dials the target for each
            connection, until interrupted; prints `listening on HOST:PORT`
  generate  generates the stubs from proto/ and prints their directory

The API key comes from TETHER_API_KEY, --api-key-file, or the data
directory's admin.key (--data-dir); it is never printed.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time


def _target(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: write the target as host:port")
    return host.strip("[]"), int(port)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tether_dial", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoint", default=os.environ.get("TETHER_ENDPOINT", "https://127.0.0.1:8443"))
    p.add_argument("--ca-file", default=os.environ.get("TETHER_CA_FILE"))
    p.add_argument("--api-key-file", default=os.environ.get("TETHER_API_KEY_FILE"))
    p.add_argument("--data-dir", default=os.environ.get("TETHER_DATA_DIR"),
                   help="the control plane's data directory, for ca.pem and admin.key")
    p.add_argument("--server-name", help="check the server certificate for this name")
    p.add_argument("--pool")
    p.add_argument("--connection", help="a configured connection instead of --pool and a target")
    p.add_argument("--timeout-ms", type=int, default=10_000)
    p.add_argument("--listen", default="127.0.0.1:0", help="forward: where to listen")
    p.add_argument("command", choices=["dial", "forward", "generate"])
    p.add_argument("target", nargs="?", type=_target, help="host:port (with --pool)")
    return p


def _credentials(args) -> tuple[str, str]:
    ca = args.ca_file or (args.data_dir and os.path.join(args.data_dir, "ca.pem"))
    if not ca:
        sys.exit("tether_dial: give --ca-file (or --data-dir with its ca.pem)")
    key = os.environ.get("TETHER_API_KEY")
    if not key:
        path = args.api_key_file or (args.data_dir and os.path.join(args.data_dir, "admin.key"))
        if not path:
            sys.exit("tether_dial: set TETHER_API_KEY or give --api-key-file (or --data-dir)")
        with open(path, encoding="utf-8") as f:
            key = f.read()
    return ca, key.strip()


def _copy_stdin(stream) -> None:
    try:
        while True:
            data = os.read(0, 64 * 1024)
            if not data:
                stream.shutdown_write()
                return
            stream.sendall(data)
    except Exception:  # noqa: BLE001 - the reading side reports why the stream ended
        return


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    import tether_dial

    if args.command == "generate":
        print(tether_dial.generate())
        return 0
    destination = dict(connection=args.connection, timeout_ms=args.timeout_ms)
    if not args.connection:
        if not (args.pool and args.target):
            sys.exit("tether_dial: give --pool and host:port, or --connection")
        destination.update(pool=args.pool, host=args.target[0], port=args.target[1])
    ca, key = _credentials(args)
    try:
        if args.command == "dial":
            with tether_dial.dial(args.endpoint, ca, key, server_name=args.server_name,
                                  **destination) as stream:
                threading.Thread(target=_copy_stdin, args=(stream,), daemon=True).start()
                while True:
                    data = stream.recv(64 * 1024)
                    if not data:
                        return 0
                    os.write(1, data)
        host, _, port = args.listen.rpartition(":")
        fwd = tether_dial.forward(args.endpoint, ca, key, server_name=args.server_name,
                                  listen=(host.strip("[]"), int(port)), **destination)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        print(f"listening on {fwd.host}:{fwd.port}", flush=True)
        shown = 0
        try:
            while True:
                time.sleep(0.5)
                for e in fwd.errors[shown:]:
                    print(f"tether_dial: {e}", file=sys.stderr, flush=True)
                shown = len(fwd.errors)
        except KeyboardInterrupt:
            return 0
        finally:
            fwd.close()
    except tether_dial.DialError as e:
        print(f"tether_dial: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
