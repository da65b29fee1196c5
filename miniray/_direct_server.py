"""A worker taking calls straight from their callers: an actor's, or one
leased to a driver for its tasks (``_node_leases``).

    caller ── DIRECT_CALL ──► connection ──► Worker.direct_q ──► main thread runs it
    caller ◄─ DIRECT_RESULT ─────────────────────────────────────┘  and tells the node
                                                                    (DIRECT_DONE)

Only an actor that runs one call at a time (sync, max_concurrency 1, no
concurrency groups) serves, from the moment its constructor is done, at
``address_for(actor id)``: a Unix socket in the abstract namespace, so
only processes of this host (and network namespace) reach it, and nothing
is left behind when the process dies.  Each connection authenticates both
ways with the cluster token (``_transport.serve_handshake``), on the
acceptor thread; a caller of another node is turned away (the node that
registers a direct call must be the actor's own).

Reading: the main thread, waiting for its next call, polls the node socket,
the acceptor's eventfd and every caller's connection at once
(``lead_poll``, called by the node socket's reader while this thread leads
it): the kernel wakes the thread that runs the call.

Order, per caller: a caller sends calls here only once every call it sent
through the node is finished (it asks the node: ``_client_direct``).  A call
it sends through the node after direct ones must run after them: before the
main thread takes a call that came through the node it reads every
connection (``drain``), and direct calls run first.  (A call sent here was
in this process's socket before the caller sent the later one to the node.)

Replies never block the actor: what a caller has not read yet waits in its
connection's outbox, sent as the socket takes it.
"""
from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections import deque

from . import _protocol as P
from ._transport import parse_address, serve_handshake

__all__ = ["address_for", "DirectServer"]

M = P.M
_IN = select.POLLIN
_OUT = select.POLLOUT
_DONTWAIT = socket.MSG_DONTWAIT
FLUSH_RESULTS = 64          # queued results beyond this many go out at once
SIDE_POLL_MS = 50           # longest wait in ``side_poll`` before looking again


def _timeout_ms(deadline) -> float:
    if deadline is None:
        return -1
    return max(0.0, (deadline - time.monotonic()) * 1000)


def address_for(name: bytes) -> str:
    """Where the worker of an actor (its id) or a leased worker (a random
    name) takes direct calls."""
    return "unix:@miniray-direct-" + name.hex()


class _Conn:
    __slots__ = ("sock", "fd", "frames", "results", "out", "cid", "polled_out")

    def __init__(self, sock, frames, cid):
        self.sock = sock
        self.fd = sock.fileno()
        self.frames = frames
        self.results = []       # (task id, results, retryable) not encoded yet
        self.out = None         # encoded, not sent yet
        self.polled_out = False     # registered for POLLOUT (the socket was full)
        self.cid = cid          # the caller's connection id at the node


class DirectServer:
    def __init__(self, worker, name: bytes, token: bytes, node_id):
        self.worker = worker
        self.queue = worker.direct_q
        self.token = token
        self.node_id = node_id
        self.address = address_for(name)
        family, sockaddr = parse_address(self.address)
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.bind(sockaddr)
        listener.listen(64)
        self.listener = listener
        self.conns: dict = {}       # fd -> _Conn
        self.new: deque = deque()   # authenticated by the acceptor, not polled yet
        self.waiting: list = []     # connections with replies queued
        self.wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.client = worker.client
        self.node_fd = worker.client.sock.fileno()
        poller = select.poll()
        poller.register(self.node_fd, _IN)
        poller.register(self.wake, _IN)
        self.poller = poller
        self.closed = False
        # Reads of the connections happen under ``lock``: by the main thread
        # when it waits for work (``main_waits`` while it sleeps in poll:
        # the io thread must not take what would wake it), else by the io
        # thread (``while_busy``).
        self.lock = threading.Lock()
        self.main_ident = worker.main_ident
        self.main_waits = False
        self.stopped = False        # EXIT came: calls read from now on are dropped
        threading.Thread(target=self._accept_loop, name="miniray-direct", daemon=True).start()

    # -- the acceptor thread ---------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self.closed:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            try:
                hello, frames = serve_handshake(sock, self.token)
                _, role, _pid, node_id, cid = hello
                if role != "caller" or node_id != self.node_id:
                    # A caller of another node on this host (its node must
                    # register its calls): told, so that it stops trying.
                    sock.sendall(P.encode((M.WELCOME, {"refused": "another node"})))
                    raise ConnectionError("not a caller of this node")
            except Exception:
                sock.close()
                continue
            # Polled (``drain`` sees it) before the caller may send a call.
            conn = _Conn(sock, frames, cid)
            self.new.append(conn)
            os.eventfd_write(self.wake, 1)
            try:
                sock.sendall(P.encode((M.WELCOME, {"pid": os.getpid()})))
                sock.setblocking(False)
            except OSError:
                pass            # the caller left (its socket reads as closed, or was closed)

    # -- the main thread -------------------------------------------------------------------
    def lead_poll(self, reader, deadline) -> bool:
        """Wait for a call from a caller or a message from the node (the
        caller leads ``reader``, the node socket's); read what came."""
        if self._wait(self.poller, _timeout_ms(deadline)):
            reader.read(_DONTWAIT)
        return deadline is None or time.monotonic() < deadline

    def side_poll(self, deadline) -> bool:
        """Wait for a call from a caller while another thread reads the
        node socket (the io thread leads it for good once the actor used
        futures); that thread's messages wake it (``wake_main``)."""
        poller = select.poll()
        poller.register(self.wake, _IN)
        for conn in list(self.conns.values()):
            poller.register(conn.fd, _IN | _OUT if conn.polled_out else _IN)
        # Bounded: the caller looks at its condition again (and may lead
        # the node socket by then) even if a wake-up went astray.
        timeout = _timeout_ms(deadline)
        self._wait(poller, SIDE_POLL_MS if timeout < 0 else min(timeout, SIDE_POLL_MS))
        return deadline is None or time.monotonic() < deadline

    def wake_main(self) -> None:
        """A message from the node was queued by another thread: a main
        thread waiting in ``side_poll`` looks again.  (It waits there while
        another thread leads the node socket: the io thread for good once
        the actor used futures, or for one ``poll_now`` of its ticks.)"""
        if threading.get_ident() != self.main_ident:
            os.eventfd_write(self.wake, 1)

    def _wait(self, poller, timeout) -> bool:
        """Poll, then serve what is ready (under ``lock``); True if the
        node socket has something."""
        lock = self.lock
        with lock:
            if self.queue or self.worker.queue:     # read meanwhile by another thread
                return False
            self.main_waits = True
        try:
            events = poller.poll(timeout)
        finally:
            lock.acquire()
            self.main_waits = False
        node = False
        try:
            for fd, ev in events:
                if fd == self.node_fd:
                    node = True
                elif fd == self.wake:
                    self._adopt()
                else:
                    self._serve(fd, ev)
        finally:
            lock.release()
        return node

    def drain(self) -> None:
        """Read every connection now (before a call from the node runs)."""
        with self.lock:
            self._read_all()

    def while_busy(self) -> None:
        """(the io thread, on its ticks) While the main thread runs calls:
        read what callers sent, so that a caller's socket never fills (its
        ``.remote()`` never waits for this actor), send the results queued
        meanwhile (a long call does not hold back the ones before), and
        read the node's messages."""
        actor = self.worker.actor is not None
        if not (actor or self.conns or self.new or self.waiting):
            return      # (a pool worker between leases)
        lock = self.lock
        if not lock.acquire(False):
            return
        try:
            if self.main_waits or self.closed:
                return
            self._read_all()
            self._flush()
        finally:
            lock.release()
        # And an actor's node messages (a call through the node waits its
        # turn among direct ones: ``Worker.run``); read after the callers',
        # so a caller's earlier direct calls are queued first.
        if actor:
            self.client.poll_now()

    def _read_all(self) -> None:
        if self.new:
            self._adopt()
        for conn in list(self.conns.values()):
            self._serve(conn.fd, _IN | _OUT if conn.polled_out else _IN)

    def _adopt(self) -> None:
        try:
            os.eventfd_read(self.wake)
        except BlockingIOError:
            pass
        new = self.new
        while new:
            conn = new.popleft()
            self.conns[conn.fd] = conn
            self.poller.register(conn.fd, _IN)
            if conn.frames.ready:
                self._take(conn)

    def _serve(self, fd, ev) -> None:
        conn = self.conns.get(fd)
        if conn is None:
            return
        if ev & _OUT and (conn.out or conn.results):
            self._send(conn)
        if not ev & ~_OUT:
            return
        frames = conn.frames
        while True:
            try:
                n = frames.recv_from(conn.sock, _DONTWAIT)
            except BlockingIOError:
                break
            except OSError:
                n = 0
            if not n:
                self._close(conn)
                break
            frames.push_scratch(n)
            if n < P.RECV_SIZE:
                break
        self._take(conn)

    def _take(self, conn) -> None:
        ready = conn.frames.ready
        queue = self.queue
        while ready:
            msg = ready.popleft()
            if msg[0] == M.DIRECT_CALL:
                if len(msg) > 3:        # a leased worker's first call of a function
                    self.worker.learn_function(msg[1], msg[3])
                queue.append((msg[1], conn))
            elif msg[0] == M.SERIALIZERS:
                self.client._handle(msg)        # applied before the calls that follow it
        if self.stopped:        # (checked after: EXIT may be read meanwhile)
            queue.clear()

    def reply(self, conn, result) -> None:
        """Queue ``result`` (task id, results, retryable) for the caller of
        ``conn``: the results queued together leave as one DIRECT_RESULT
        (``flush``, or the io thread within its tick)."""
        with self.lock:
            if self.conns.get(conn.fd) is not conn:
                return          # that caller is gone
            pending = conn.results
            if not pending and conn.out is None:
                self.waiting.append(conn)
                self.client.arm_io()        # its tick sends them if a long call starts
            pending.append(result)
            if len(pending) >= FLUSH_RESULTS and not conn.polled_out:
                self._send(conn)

    def flush(self) -> None:
        """Send the queued results, as far as the sockets take them now
        (the rest goes when POLLOUT says so)."""
        if self.waiting:
            with self.lock:
                self._flush()

    def _flush(self) -> None:
        waiting = self.waiting
        while waiting:
            conn = waiting.pop()
            if (conn.results or conn.out) and not conn.polled_out and \
                    self.conns.get(conn.fd) is conn:
                self._send(conn)

    def _send(self, conn) -> None:
        if conn.results:
            frame = P.encode((M.DIRECT_RESULT, conn.results))
            conn.results = []
            if conn.out is None:
                conn.out = bytearray(frame)
            else:
                conn.out += frame
        out = conn.out
        if out is None:
            return
        try:
            n = conn.sock.send(out, _DONTWAIT)
        except BlockingIOError:
            n = 0
        except OSError:
            # The caller is gone; its calls still in the socket run all the
            # same (the node has them): the reads close the connection.
            n = len(out)
        if n:
            del out[:n]
        if out:
            if not conn.polled_out:
                conn.polled_out = True
                self.poller.modify(conn.fd, _IN | _OUT)
        else:
            conn.out = None
            if conn.polled_out:
                conn.polled_out = False
                self.poller.modify(conn.fd, _IN)

    def _close(self, conn) -> None:
        if self.conns.pop(conn.fd, None) is None:
            return
        try:
            self.poller.unregister(conn.fd)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def close(self) -> None:
        self.closed = True
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        for conn in list(self.conns.values()):
            self._close(conn)
