"""Connections between processes and the node daemon, and their handshake.

Addresses are Unix sockets in the abstract namespace (``unix:@name``: no file
to leak when a process is killed) or TCP (``tcp:host:port``).  Every
connection authenticates *both ways* before either side unpickles a byte:
each side proves it holds the cluster token over a fresh nonce of the other.

    node   -> client   b"MRAY3" + node nonce Nn (32 bytes)
    client -> node     client nonce Nc (32) + MAC(token, "client" Nn Nc) (32)
                       + frame HELLO        (the node reads it only once the
                                             client's proof matched)
    node   -> client   MAC(token, "node" Nc Nn) (32) + frame WELCOME, with the
                       arena's fd by SCM_RIGHTS on Unix sockets (the client
                       reads the frame only once the node's proof matched)

So a fake node cannot feed a client pickles, nor a fake client a node, and
the proofs are bound to both nonces (no replay, no reflection: the two
proofs are labelled differently).  The node side of the handshake is
non-blocking and lives in ``_node``; this module holds the shared pieces,
the client side and address parsing.

TCP links may run inside TLS (``_tls``): a TLS node greets with
``TLS_GREETING`` in clear instead of ``MAGIC``, and everything above then
runs inside the TLS channel.
"""
from __future__ import annotations

import os
import socket
import struct

from . import _protocol as P
from . import _tls
from .exceptions import RaySystemError

try:
    # The built-in BLAKE2 (and compare): hashlib and hmac would map
    # OpenSSL's libcrypto into every process (3.3 MiB of RSS each).
    from _blake2 import blake2b as _blake2b
except ImportError:         # a Python built without it: hashlib's
    from hashlib import blake2b as _blake2b
from _operator import _compare_digest as compare_digest

__all__ = ["MAGIC", "NONCE_LEN", "DIGEST_LEN", "make_token", "digest",
           "parse_address", "listen", "connect_client"]

MAGIC = b"MRAY3"
NONCE_LEN = 32
DIGEST_LEN = 32
CHALLENGE_LEN = len(MAGIC) + NONCE_LEN
CLIENT_PROOF_LEN = NONCE_LEN + DIGEST_LEN


def make_token() -> bytes:
    return os.urandom(32)


def digest(token: bytes, nonce: bytes) -> bytes:
    """A MAC of ``nonce`` under the token: keyed BLAKE2b (a MAC by design;
    the key is the token's own 64-byte BLAKE2b, as a token may be any
    text)."""
    key = _blake2b(token, digest_size=64).digest()
    return _blake2b(nonce, key=key, digest_size=DIGEST_LEN).digest()


def client_proof(token: bytes, node_nonce: bytes, client_nonce: bytes) -> bytes:
    return digest(token, b"client" + node_nonce + client_nonce)


def node_proof(token: bytes, node_nonce: bytes, client_nonce: bytes) -> bytes:
    return digest(token, b"node" + client_nonce + node_nonce)


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


def _greeting(sock, address, tls: bool) -> bytes:
    """The node's first five bytes: MAGIC (plain) or TLS_GREETING.  A
    mismatch with ``tls`` tells the node why we leave, and raises."""
    first = _recv_exact(sock, len(MAGIC))
    if first == (_tls.TLS_GREETING if tls else MAGIC):
        return first
    if first == (MAGIC if tls else _tls.TLS_GREETING):
        try:
            sock.sendall(_tls.TLS_NOTICE if tls else _tls.PLAIN_NOTICE)
        except OSError:
            pass
        raise ConnectionError(_tls.peer_is_plain(address) if tls else _tls.peer_is_tls(address))
    raise RaySystemError(f"{address} is not a miniray node of this version "
                         f"(bad greeting {first!r})")


def _tls_greeting(sock, address, tls):
    """Over TCP: the greeting, then (if ``tls``, settings from ``_tls``) the
    TLS handshake, and the node's MAGIC inside it.  Returns the socket to use."""
    _greeting(sock, address, tls is not None)
    if tls is None:
        return sock
    import ssl
    ctx = _tls.client_context(tls)
    tls_sock = ctx.wrap_socket(sock, do_handshake_on_connect=False)
    try:
        tls_sock.do_handshake()
        if _recv_exact(tls_sock, len(MAGIC)) != MAGIC:
            raise RaySystemError(f"{address} is not a miniray node of this version")
    except ssl.SSLError as exc:
        tls_sock.close()
        raise ConnectionError(_tls.handshake_failed(address, exc)) from None
    except BaseException:
        tls_sock.close()
        raise
    return tls_sock


_FROM_ENV = object()


def connect_client(address: str, token: bytes, hello: tuple, *, timeout: float = 10.0,
                   tls=_FROM_ENV):
    """Connect, authenticate, send HELLO and read WELCOME.  Over TCP, with
    TLS when ``tls`` (``_tls.settings()``; None: plain; default: from the
    environment) says so.

    Returns (socket, welcome_info, fds, messages after the welcome, frame
    reader).  The socket is left blocking with no timeout.
    """
    family, sockaddr = parse_address(address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(sockaddr)
        if family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = _tls_greeting(sock, address, _tls.settings() if tls is _FROM_ENV else tls)
        else:
            _greeting(sock, address, False)
        node_nonce = _recv_exact(sock, NONCE_LEN)
        client_nonce = os.urandom(NONCE_LEN)
        sock.sendall(client_nonce + client_proof(token, node_nonce, client_nonce)
                     + P.encode(hello))
        fds = []
        buf = b""
        proof = None
        while True:
            if family == socket.AF_UNIX:
                data, got_fds, _flags, _addr = socket.recv_fds(sock, 1 << 16, 4)
                fds.extend(got_fds)
            else:
                data = sock.recv(1 << 16)
            if not data:
                raise ConnectionError(
                    f"the node at {address} closed the connection during the handshake: it "
                    f"rejected this process's cluster token (a different cluster, or a stale "
                    f"MINIRAY_AUTH_TOKEN / token file), or it is shutting down")
            buf += data
            if proof is None:
                if len(buf) < DIGEST_LEN:
                    continue
                proof, buf = buf[:DIGEST_LEN], buf[DIGEST_LEN:]
                if not compare_digest(proof, node_proof(token, node_nonce, client_nonce)):
                    raise ConnectionError(
                        f"the process at {address} could not prove it holds this cluster's "
                        f"token: it is not this cluster's node (nothing it sent was read)")
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


# -- process to process (direct channels) --------------------------------------------------------
# The same handshake as with the node, between two processes of one node:
# a caller and an actor's worker (``_direct_server``).  The worker plays the
# node's part, blocking, on its acceptor thread.

def serve_handshake(sock: socket.socket, token: bytes, timeout: float = 5.0):
    """The accepting side: prove the token both ways, then read HELLO.
    Returns (hello message, frame reader); raises ConnectionError."""
    sock.settimeout(timeout)
    node_nonce = os.urandom(NONCE_LEN)
    sock.sendall(MAGIC + node_nonce)
    got = _recv_exact(sock, CLIENT_PROOF_LEN)
    client_nonce, proof = got[:NONCE_LEN], got[NONCE_LEN:]
    if not compare_digest(proof, client_proof(token, node_nonce, client_nonce)):
        raise ConnectionError("a peer could not prove it holds the cluster token")
    sock.sendall(node_proof(token, node_nonce, client_nonce))
    reader = P.FrameReader()
    while True:
        data = sock.recv(1 << 16)
        if not data:
            raise ConnectionError("the peer closed the connection during the handshake")
        msgs = reader.feed(data)
        if msgs:
            break
    sock.settimeout(None)
    if len(msgs) != 1 or msgs[0][0] != P.M.HELLO:
        raise ConnectionError("the peer's first message is not HELLO")
    return msgs[0], reader


def connect_peer(address: str, token: bytes, hello: tuple, timeout: float = 2.0):
    """The connecting side of ``serve_handshake``: (socket, WELCOME info,
    frame reader).  The socket is left blocking with no timeout."""
    family, sockaddr = parse_address(address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(sockaddr)
        _greeting(sock, address, False)
        node_nonce = _recv_exact(sock, NONCE_LEN)
        client_nonce = os.urandom(NONCE_LEN)
        sock.sendall(client_nonce + client_proof(token, node_nonce, client_nonce)
                     + P.encode(hello))
        proof = _recv_exact(sock, DIGEST_LEN)
        if not compare_digest(proof, node_proof(token, node_nonce, client_nonce)):
            raise ConnectionError(f"the process at {address} could not prove it holds this "
                                  f"cluster's token (nothing it sent was read)")
        reader = P.FrameReader()
        msgs = []
        while not msgs:
            data = sock.recv(1 << 16)
            if not data:
                raise ConnectionError(f"{address} closed the connection after the handshake")
            msgs = reader.feed(data)
        if msgs[0][0] != P.M.WELCOME or len(msgs) != 1:
            raise ConnectionError(f"unexpected first message from {address}")
        sock.settimeout(None)
        return sock, msgs[0][1], reader
    except BaseException:
        sock.close()
        raise
