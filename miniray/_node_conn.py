"""One connection of the node's server (``_node.NodeServer``): its socket,
framing and output, including objects sent to a peer node in chunks."""
from __future__ import annotations

import os
from collections import deque

from . import _protocol as P
from ._transport import NONCE_LEN

M = P.M


class Sent:
    """Queued after an object's last chunk: written past it, the object's
    range is no longer read (the server tells the state: E.SENT)."""

    __slots__ = ("oid",)

    def __init__(self, oid):
        self.oid = oid
CHUNK = 4 * 2**20        # an object goes to a peer in chunks of this size: frames in between


class Conn:
    """One client connection: socket, framing and the output buffer."""

    __slots__ = ("sock", "cid", "server", "reader", "out", "authed", "nonce", "closed",
                 "want_write", "dialing", "queue", "raw", "expect", "tls", "handler", "peer",
                 "auth_by", "streams")

    def __init__(self, sock, server, cid):
        self.sock = sock
        self.cid = cid        # never reused, unlike the fd: events may trail a close
        self.server = server
        self.reader = P.FrameReader(P.decode_untrusted, raw_tag=M.DATA)
        self.out = bytearray()
        # Object bytes stream from the arena without a copy: frames before
        # them wait in ``queue`` with them, in order (see next_chunk, _write).
        self.queue = deque()
        # Objects being sent (``send_stream``): [oid, arena view, bytes queued so far].
        self.streams = deque()
        self.raw = None         # [destination view | None, received, size, oid, last chunk]
        self.expect = {}        # oid -> arena view its DATA goes into
        self.authed = False
        self.nonce = os.urandom(NONCE_LEN)
        self.closed = False
        self.want_write = False
        self.dialing = None     # our handshake as the client of a peer node (see _dial_step)
        self.auth_by = None     # an accepted TCP peer must have proved the token by then
        self.tls = None         # TLS handshake state (see _tls_step); None: none or done
        self.handler = None     # the selector's callback for this socket
        self.peer = None        # "ip:port" of a TCP client, for messages

    def send(self, msg) -> None:
        if self.closed:
            return
        body = P._dumps(msg, 5)
        out = self.out
        if not out and not self.queue:
            self.server.dirty.append(self)
        out += P._pack_len(len(body))
        out += body

    def send_stream(self, oid, data) -> None:
        """Send an object's bytes (an arena view, not copied) in chunks, each
        a DATA header and the chunk's bytes as they are; frames sent
        meanwhile go between chunks, so a large object holds up a
        heartbeat or a task by one chunk at most (``next_chunk``)."""
        if self.closed:
            return
        if not self.out and not self.queue and not self.streams:
            self.server.dirty.append(self)
        self.streams.append([oid, data, 0])

    def next_chunk(self) -> None:
        """Queue the next chunk of the first object being sent (objects
        take turns)."""
        s = self.streams.popleft()
        oid, data, pos = s
        n = min(CHUNK, len(data) - pos)
        last = pos + n >= len(data)
        body = P._dumps((M.DATA, oid, n, pos, last), 5)
        self.queue.append(P._pack_len(len(body)) + body)
        if n:
            self.queue.append(data[pos:pos + n])
        if last:
            self.queue.append(Sent(oid))
        else:
            s[2] = pos + n
            self.streams.append(s)

    def unsent(self) -> list:
        """The objects whose bytes it was still to send (it closed)."""
        oids = [s[0] for s in self.streams]
        oids += [item.oid for item in self.queue if type(item) is Sent]
        self.streams.clear()
        return oids

    def pending(self) -> bool:
        return bool(self.queue or self.out or self.streams)
