"""Where this host's node, started by ``miniray start``, can be found, and
the cluster token.

Per-host state lives in ``$MINIRAY_CLUSTER_DIR`` (default
``<tmp>/miniray-<uid>``, mode 0700): ``cluster.json`` (mode 0600: this host's
node, its local and peer addresses, the token, the paths of its TLS
certificate and key if its links use TLS) and, on the head's host,
``token`` (mode 0600, the token text alone, to copy to the other hosts).
``init(address="auto")`` attaches to this host's node; so does
``init(address="HEAD:PORT")`` when this host's node belongs to that cluster:
drivers always attach to the node of their own host (its store is theirs).

The token is printable text.  Joiners and drivers read it from
``MINIRAY_AUTH_TOKEN`` (the text), ``MINIRAY_AUTH_TOKEN_PATH`` (a file
holding it), or this host's cluster files, in that order.
"""
from __future__ import annotations

import json
import os
import tempfile

__all__ = ["cluster_dir", "write_cluster_file", "read_cluster_file", "remove_cluster_file",
           "new_token_text", "write_token_file", "token_from_environment", "token_path"]


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


# Nodes this process started (cluster_utils.Cluster): peer "ip:port" ->
# (local address, token).  A driver in this process attaches to them.
started_here: dict = {}


def read_cluster_file(address: str):
    """(local address, token) to connect to for ``init(address=...)``."""
    if address in started_here:
        return started_here[address]
    info = read_cluster_info()
    if address == "auto":
        if info is None:
            raise ConnectionError("init(address='auto') found no running miniray node on this "
                                  f"host (looked in {cluster_dir()}): start one with `miniray "
                                  f"start --head` (or --address HEAD:PORT to join a cluster), "
                                  f"or call init() without an address")
        return info["address"], bytes.fromhex(info["token"])
    if info is not None and address in (info["address"], info.get("peer_address"),
                                        info.get("head_address")):
        return info["address"], bytes.fromhex(info["token"])
    token = token_from_environment()
    if address.startswith("unix:"):
        if token is None:
            raise ConnectionError(
                f"no token known for the node at {address!r}: set MINIRAY_AUTH_TOKEN (or "
                f"MINIRAY_AUTH_TOKEN_PATH) to the cluster's token")
        return address, token
    raise ConnectionError(
        f"no node of the cluster at {address} runs on this host (looked in {cluster_dir()}): "
        f"drivers attach to their own host's node. Start one with `miniray start --address "
        f"{address}` and connect with init(address='auto') or init(address='{address}').")


def token_path() -> str:
    return os.path.join(cluster_dir(), "token")


def new_token_text() -> str:
    return os.urandom(32).hex()


def write_token_file(text: str) -> str:
    path = token_path()
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.replace(path + ".tmp", path)
    return path


def token_from_environment():
    """The cluster token (as the bytes HMAC uses) from MINIRAY_AUTH_TOKEN,
    MINIRAY_AUTH_TOKEN_PATH or this host's token file; None if none."""
    text = os.environ.get("MINIRAY_AUTH_TOKEN")
    source = "MINIRAY_AUTH_TOKEN"
    if not text:
        path = os.environ.get("MINIRAY_AUTH_TOKEN_PATH") or (
            token_path() if os.path.exists(token_path()) else None)
        if path:
            with open(path) as f:
                text = f.read()
            source = path
    if not text:
        legacy = os.environ.get("MINIRAY_TOKEN")
        return bytes.fromhex(legacy) if legacy else None
    text = text.strip()
    if not text:
        raise ValueError(f"the cluster token from {source} is empty")
    return text.encode()


def remove_cluster_file() -> None:
    try:
        os.unlink(_path())
    except OSError:
        pass
