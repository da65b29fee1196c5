"""Connections between processes and the node daemon, and their handshake.

Addresses are Unix sockets in the abstract namespace (``unix:@name``: no file
to leak when a process is killed) or TCP (``tcp:host:port``).  Every
connection authenticates before any byte is unpickled:

    node   -> client   b"MRAY1" + 32-byte random nonce
    client -> node     HMAC-SHA256(token, nonce)           (32 bytes)
    client -> node     frame HELLO (now pickle is allowed: the peer is known)
    node   -> client   frame WELCOME, with the arena's fd by SCM_RIGHTS
                       on Unix sockets

The node side of the handshake is non-blocking and lives in ``_node``; this
module holds the shared constants, the client side and address parsing.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct

from . import _protocol as P
from .exceptions import RaySystemError

__all__ = ["MAGIC", "NONCE_LEN", "DIGEST_LEN", "make_token", "digest",
           "parse_address", "listen", "connect_client"]

MAGIC = b"MRAY1"
NONCE_LEN = 32
DIGEST_LEN = 32
CHALLENGE_LEN = len(MAGIC) + NONCE_LEN


def make_token() -> bytes:
    return os.urandom(32)


def digest(token: bytes, nonce: bytes) -> bytes:
    return hmac.new(token, nonce, hashlib.sha256).digest()


def parse_address(address: str):
    """``unix:@name`` | ``unix:/path`` | ``tcp:host:port`` | ``host:port``
    -> (family, sockaddr)."""
    if address.startswith("unix:"):
        path = address[5:]
        if path.startswith("@"):
            return socket.AF_UNIX, "\0" + path[1:]
        return socket.AF_UNIX, path
    if address.startswith("tcp:"):
        address = address[4:]
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"bad address {address!r}: expected 'unix:@name' or 'host:port'")
    return socket.AF_INET, (host or "127.0.0.1", int(port))


def listen(address: str) -> socket.socket:
    family, sockaddr = parse_address(address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(sockaddr)
    sock.listen(512)
    sock.setblocking(False)
    return sock


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        data = sock.recv(n)
        if not data:
            raise ConnectionError("the node closed the connection during the handshake "
                                  "(wrong token, or the node is shutting down)")
        chunks.append(data)
        n -= len(data)
    return b"".join(chunks)


def connect_client(address: str, token: bytes, hello: tuple, *, timeout: float = 10.0):
    """Connect, authenticate, send HELLO and read WELCOME.

    Returns (socket, welcome_info, fds, leftover_bytes).  The socket is left
    blocking with no timeout.
    """
    family, sockaddr = parse_address(address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(sockaddr)
        if family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        challenge = _recv_exact(sock, CHALLENGE_LEN)
        if challenge[:len(MAGIC)] != MAGIC:
            raise RaySystemError(f"{address} is not a miniray node (bad greeting)")
        sock.sendall(digest(token, challenge[len(MAGIC):]) + P.encode(hello))
        fds = []
        buf = b""
        while True:
            if family == socket.AF_UNIX:
                data, got_fds, _flags, _addr = socket.recv_fds(sock, 1 << 16, 4)
                fds.extend(got_fds)
            else:
                data = sock.recv(1 << 16)
            if not data:
                raise ConnectionError("the node closed the connection during the handshake "
                                      "(wrong cluster token?)")
            buf += data
            if len(buf) >= 4:
                (length,) = struct.unpack_from("<I", buf)
                if len(buf) >= 4 + length:
                    break
        reader = P.FrameReader()
        msgs = reader.feed(buf)
        welcome = msgs[0]
        if welcome[0] != P.M.WELCOME:
            raise RaySystemError(f"unexpected first message from node: {welcome[0]}")
        sock.settimeout(None)
        return sock, welcome[1], fds, msgs[1:], reader
    except BaseException:
        sock.close()
        raise
