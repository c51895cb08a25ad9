"""Python stubs for the Dial API, generated from the repository's protos.

Nothing generated is committed. At first import, every `.proto` under the
proto root is compiled with grpcio-tools' bundled protoc into
`clients/python/.generated/<digest>/`, where the digest covers the protos'
paths and contents and the grpcio-tools version: a changed proto or a new
grpcio-tools generates afresh, an unchanged one reuses the cache. The
output is built in a temporary directory and renamed into place, so
concurrent first imports (parallel test runs) never see a half-written
tree.

Environment:
  TETHER_PROTO_DIR            the proto root (default: the repository's `proto/`)
  TETHER_DIAL_GENERATED_DIR   where generated trees go (default: `clients/python/.generated`,
                              or a directory in the temp dir if that is read-only)
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

_HERE = Path(__file__).resolve().parent  # clients/python/tether_dial
_DEFAULT_PROTO_DIR = _HERE.parent.parent.parent / "proto"
_DEFAULT_OUT_DIR = _HERE.parent / ".generated"


class Stubs(NamedTuple):
    """The generated modules the client uses."""

    dial_pb2: ModuleType
    dial_pb2_grpc: ModuleType
    tunnel_pb2: ModuleType
    directory: Path


def proto_dir() -> Path:
    """The proto root: TETHER_PROTO_DIR or the repository's `proto/`."""
    return Path(os.environ.get("TETHER_PROTO_DIR") or _DEFAULT_PROTO_DIR)


def _sources(root: Path) -> list[str]:
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.proto"))
    if "tether/v1/dial.proto" not in files:
        raise ImportError(
            f"tether_dial: no tether/v1/dial.proto under {root}; run from a checkout of "
            "the repository or set TETHER_PROTO_DIR to its proto/ directory"
        )
    return files


def _digest(root: Path, files: list[str]) -> str:
    try:
        from importlib.metadata import version

        tools = version("grpcio-tools")
    except Exception:  # noqa: BLE001 - any failure: the digest just changes
        tools = "unknown"
    h = hashlib.sha256(f"grpcio-tools {tools}\n".encode())
    for f in files:
        h.update(f.encode() + b"\0")
        h.update((root / f).read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _writable(base: Path) -> bool:
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(base, os.W_OK)


def generate(out_dir: Path | None = None) -> Path:
    """Generates the stubs (if not already there) and returns their directory."""
    root = proto_dir()
    files = _sources(root)
    chosen = out_dir or os.environ.get("TETHER_DIAL_GENERATED_DIR")
    base = Path(chosen or _DEFAULT_OUT_DIR)
    if not chosen and not _writable(base):
        # A read-only checkout: a cache of this user's own instead.
        base = Path(tempfile.gettempdir()) / f"tether_dial-generated-{os.getuid()}"
    final = base / _digest(root, files)
    if (final / "tether" / "v1" / "dial_pb2_grpc.py").is_file():
        return final
    try:
        import grpc_tools  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "tether_dial needs grpcio-tools to generate its stubs: "
            "pip install -r clients/python/requirements.txt"
        ) from e
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=base))
    try:
        cmd = [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{root}",
            f"--python_out={tmp}", f"--grpc_python_out={tmp}", *files,
        ]
        run = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if run.returncode != 0:
            raise ImportError(
                f"tether_dial: protoc failed on {root} (exit {run.returncode}): "
                f"{run.stderr.strip() or run.stdout.strip()}"
            )
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process generated the same tree first: use theirs.
            if not (final / "tether" / "v1" / "dial_pb2_grpc.py").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def load() -> Stubs:
    """Generates if needed, then imports the Dial and Tunnel modules."""
    directory = generate()
    path = str(directory)
    if path not in sys.path:
        sys.path.insert(0, path)
    return Stubs(
        dial_pb2=importlib.import_module("tether.v1.dial_pb2"),
        dial_pb2_grpc=importlib.import_module("tether.v1.dial_pb2_grpc"),
        tunnel_pb2=importlib.import_module("tether.v1.tunnel_pb2"),
        directory=directory,
    )
