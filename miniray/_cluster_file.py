"""Where a running node started by ``miniray start`` can be found.

``miniray start`` writes ``<tmp>/miniray-<uid>/cluster.json`` (mode 0600 in a
0700 directory: it holds the cluster token); ``init(address="auto")`` reads
it.  ``init(address="HOST:PORT")`` reads the token from the same file or
from the MINIRAY_TOKEN environment variable.
"""
from __future__ import annotations

import json
import os
import tempfile

__all__ = ["cluster_dir", "write_cluster_file", "read_cluster_file", "remove_cluster_file"]


def cluster_dir() -> str:
    path = os.environ.get("MINIRAY_CLUSTER_DIR") or os.path.join(
        tempfile.gettempdir(), f"miniray-{os.getuid()}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def _path() -> str:
    return os.path.join(cluster_dir(), "cluster.json")


def write_cluster_file(info: dict) -> str:
    path = _path()
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f)
    os.replace(path + ".tmp", path)
    return path


def read_cluster_info() -> dict | None:
    try:
        with open(_path()) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_cluster_file(address: str):
    """(address, token) to connect to for ``init(address=...)``."""
    info = read_cluster_info()
    token_env = os.environ.get("MINIRAY_TOKEN")
    if address == "auto":
        if info is None:
            raise ConnectionError("init(address='auto') found no running miniray node: start one "
                                  "with `miniray start --head`, or call init() without an address")
        return info["address"], bytes.fromhex(info["token"])
    if info is not None and address in (info["address"], info.get("tcp_address")):
        return address, bytes.fromhex(info["token"])
    if token_env:
        return address, bytes.fromhex(token_env)
    raise ConnectionError(f"no token known for the node at {address!r}: set MINIRAY_TOKEN to the "
                          f"cluster token printed by `miniray start --head`")


def remove_cluster_file() -> None:
    try:
        os.unlink(_path())
    except OSError:
        pass
