"""TLS on a node's TCP links, driven by the node's selector (a mixin of
``_node.NodeServer``; settings, contexts and the wire greeting: ``_tls``).

    accept (TCP, TLS on) ── TLS_GREETING out ── "greet": peek the client's
        first bytes: a TLS record -> wrap, "handshake"; PLAIN_NOTICE -> log why
    dial (TCP, TLS on) ──── "dial": read the peer's five greeting bytes:
        TLS_GREETING -> wrap, "handshake"; MAGIC (a plain node) -> TLS_NOTICE, log why
    "handshake" ── do_handshake() until done (SSLWantRead/WantWrite from the
        selector), then the miniray handshake inside TLS, as on any link

Once the handshake is done, reads and writes are the node's usual ones
(``recv_into``/``send`` with memoryviews; never ``sendfile``); two things
differ and are handled here and in ``_node``: would-block is
SSLWantRead/WantWrite, and bytes OpenSSL already decrypted (``pending()``)
wake no selector, so every read is followed by draining them.  Plain nodes
never import ``ssl``.
"""
from __future__ import annotations

import os
import socket
import sys
from selectors import EVENT_READ, EVENT_WRITE

from . import _tls
from ._transport import MAGIC

_WOULD_BLOCK = (BlockingIOError, InterruptedError)


def log(msg: str) -> None:
    sys.stderr.write(f"(miniray node pid={os.getpid()}) {msg}\n")
    sys.stderr.flush()


def would_block() -> tuple:
    """What non-blocking socket calls raise instead of blocking, TLS included."""
    global _WOULD_BLOCK
    from ssl import SSLWantReadError, SSLWantWriteError
    _WOULD_BLOCK = (BlockingIOError, InterruptedError, SSLWantReadError, SSLWantWriteError)
    return _WOULD_BLOCK


class TLSLinks:
    """The TLS half of ``NodeServer``'s connections (see the module doc)."""

    def _on_tls(self, conn, mask) -> None:
        if conn.tls is not None:
            self._tls_step(conn)
            return
        self._on_conn(conn, mask)
        # Bytes OpenSSL already decrypted are no longer in the socket: the
        # selector would not wake for them.  Handle them now.
        while not conn.closed and conn.sock.pending():
            self._on_conn(conn, EVENT_READ)

    def _tls_step(self, conn) -> None:
        """The TLS handshake, driven by the selector: the accepting side
        ("greet": our TLS_GREETING is out, the client's first bytes decide),
        the dialling side ("dial": the peer's greeting decides), then
        "handshake" until ``do_handshake`` completes.  Then the miniray
        handshake runs inside TLS as on any connection."""
        from ssl import SSLError, SSLWantReadError, SSLWantWriteError
        sock = conn.sock
        if conn.tls == "greet":
            try:
                head = sock.recv(len(MAGIC), socket.MSG_PEEK)
            except _WOULD_BLOCK:
                return
            except OSError:
                head = b""
            if head[:1] != b"\x16":           # not a TLS handshake record
                peer = self._peer(conn)
                if head[:len(MAGIC)] == _tls.PLAIN_NOTICE[:len(MAGIC)]:
                    log(f"refused a connection from {peer}: it does not use TLS and this node "
                        f"requires it. Give it {_tls.HOW}")
                elif head:
                    log(f"refused a connection from {peer}: it did not start TLS (this node "
                        f"requires it)")
                self._close(conn)
                return
            self._wrap(conn, True)
        elif conn.tls == "dial":
            address = conn.dialing[0]
            try:
                data = sock.recv(len(MAGIC) - len(conn.dialing[1]))
            except _WOULD_BLOCK:
                return
            except OSError:
                data = b""
            if not data:
                self._close(conn)
                return
            got = conn.dialing[1] = conn.dialing[1] + data
            if len(got) < len(MAGIC):
                return
            conn.dialing[1] = b""
            if got != _tls.TLS_GREETING:
                if got == MAGIC:
                    log(_tls.peer_is_plain(address))
                    self._notice(conn, _tls.TLS_NOTICE)
                else:
                    log(f"{address} is not a miniray node of this version")
                self._close(conn)
                return
            self._wrap(conn, False)
        sock = conn.sock
        try:
            sock.do_handshake()
        except SSLWantReadError:
            if conn.want_write:
                conn.want_write = False
                self.sel.modify(sock, EVENT_READ, conn.handler)
            return
        except SSLWantWriteError:
            if not conn.want_write:
                conn.want_write = True
                self.sel.modify(sock, EVENT_READ | EVENT_WRITE, conn.handler)
            return
        except SSLError as exc:
            log(_tls.handshake_failed(self._peer(conn), exc))
            self._close(conn)
            return
        except OSError:
            self._close(conn)
            return
        conn.tls = None
        if conn.want_write:
            conn.want_write = False
            self.sel.modify(sock, EVENT_READ, conn.handler)
        if conn.dialing is None:
            conn.out[:0] = MAGIC + conn.nonce       # our challenge, now inside TLS
        self.dirty.append(conn)
        if sock.pending():
            self._on_tls(conn, EVENT_READ)

    def _wrap(self, conn, server_side: bool) -> None:
        self.sel.unregister(conn.sock)
        ctx = self.tls[0] if server_side else self.tls[1]
        conn.sock = ctx.wrap_socket(conn.sock, server_side=server_side,
                                    do_handshake_on_connect=False)
        conn.tls = "handshake"
        self.sel.register(conn.sock, EVENT_READ, conn.handler)

    def _tls_error(self, conn, exc) -> None:
        """A TLS alert after the handshake (TLS 1.3: the peer refused our
        certificate only after our side had finished): say so."""
        if getattr(exc, "reason", None):
            log(_tls.handshake_failed(self._peer(conn), exc))

    @staticmethod
    def _notice(conn, notice) -> None:
        """Tell a peer of the other kind (TLS or not) why we leave: it logs it."""
        try:
            conn.sock.send(notice)
        except OSError:
            pass

    @staticmethod
    def _peer(conn) -> str:
        return conn.peer or "a peer"
