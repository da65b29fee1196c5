"""The one reader of a client's socket (drivers and workers).

    node ──► socket ──► SocketReader.read(): recv + parse + dispatch ──► handle(msg)
                           called by one thread at a time, "the leader":
                           · a thread that waits (wait_until), when no other thread leads
                           · the SIGUSR1 handler (poll_now): never blocks
                           · the miniray-io thread, once it leads for good (``permanent``)

Leader/follower: the thread that waits for something (a reply, a worker's
next task) reads the socket itself when nobody else does, so the kernel
wakes the very thread that waits: no hand-off on a round trip.  Any other
waiter follows: it sleeps on its own lock until the leader has dispatched
what it read and steps back, then looks again (and may lead in turn).
Once replies must arrive while nobody waits (futures, ``await ref``, async
and threaded actors), the io thread takes the lead for good.

State, under ``_lock``: ``reading`` (someone leads), ``_waiters``
(followers' wake-up locks) and ``permanent``.  ``_missed`` records a poke
that found the lead taken: whoever steps back next reads for it, so a
cancel that arrived behind a reply is not left in the socket.

Interrupts: on the main thread every step here runs inside the interrupt
gate (``_client_gate``); only the two blocking waits, the leader's poll and
a follower's sleep, are interruptible.  So KeyboardInterrupt or a cancel
can never land between receiving bytes and dispatching them, nor while the
lead or a follower's registration is half changed.  Off the main thread no
interrupt can strike, and a leader without a deadline blocks in ``recv``
directly (no poll).
"""
from __future__ import annotations

import select
import socket
import threading
import time

from ._client_gate import gate as _gate

__all__ = ["SocketReader"]

_allocate_lock = threading.Lock
_get_ident = threading.get_ident
_DONTWAIT = socket.MSG_DONTWAIT


class SocketReader:
    """Owns the receiving side of one connection: the ``FrameReader``, the
    poller and the leader/follower state.  ``handle(msg)`` is called for
    every message, oldest first; ``lost(exc | None)`` once the connection
    is gone (end of stream or a socket error)."""

    __slots__ = ("_sock", "_frames", "_handle", "_lost", "_poll", "_lock", "_waiters",
                 "reading", "permanent", "closed", "_missed")

    def __init__(self, sock, frames, handle, lost):
        self._sock = sock
        self._frames = frames
        self._handle = handle
        self._lost = lost
        poller = select.poll()          # poll, not select: select fails for fds >= 1024
        poller.register(sock, select.POLLIN)
        self._poll = poller.poll
        self._lock = threading.Lock()
        self._waiters: list = []
        self.reading = False            # a thread leads (holds the right to read)
        self.permanent = False          # the io thread leads for good
        self.closed = False             # the connection is gone: nothing more to read
        self._missed = False            # a poke found the lead taken

    # -- the one read ---------------------------------------------------------------------
    def read(self, flags=0) -> bool:
        """Receive once, parse, and hand every complete message to
        ``handle``: the only place that reads the socket.  The caller leads.
        False if nothing came (``MSG_DONTWAIT``) or the connection is gone."""
        frames = self._frames
        with _gate:
            if frames.ready:
                # Left by a handler that raised: hand them out first.
                frames.dispatch(self._handle)
                return True
            try:
                n = frames.recv_from(self._sock, flags)
            except BlockingIOError:
                return False
            except OSError as exc:
                self._lost(exc)
                return False
            if not n:
                self._lost(None)
                return False
            frames.push_scratch(n)
            frames.dispatch(self._handle)
        return True

    # -- waiting ----------------------------------------------------------------------------
    def wait_until(self, ready, deadline=None, interruptible=True, extra=None) -> bool:
        """Wait until ``ready()`` is true (False at ``deadline``, a
        ``time.monotonic()`` value, or once the connection is gone),
        reading the socket in this thread whenever no other thread does.

        ``interruptible=False`` (a worker waiting for its next task, where
        no interrupt has anything to act on): a leader on the main thread
        blocks in ``recv`` itself, saving the poll.  ``extra``: more to
        wait on (an actor's callers: ``_direct_server``): while leading,
        ``extra.lead_poll(self, deadline)``; while another thread leads,
        ``extra.side_poll(deadline)`` instead of following."""
        lock = self._lock
        with _gate:
            while True:
                with lock:
                    if ready():
                        return True
                    if self.closed:
                        return False
                    lead = not self.reading and not self.permanent
                    if lead:
                        self.reading = True
                    elif extra is None:
                        waiter = _allocate_lock()
                        waiter.acquire()
                        self._waiters.append(waiter)
                if lead:
                    try:
                        if extra is not None:
                            got = extra.lead_poll(self, deadline)
                        else:
                            got = self._lead_read(deadline, interruptible)
                    finally:
                        self.step_back()
                elif extra is not None:
                    # Another thread reads the socket: wait on ``extra``'s
                    # sources, looking again at ``ready`` every few ms.
                    got = extra.side_poll(deadline)
                else:
                    got = self._follow(waiter, deadline)
                if not got:
                    return ready()

    def _lead_read(self, deadline, interruptible) -> bool:
        # On the main thread the poll is where an interrupt may land; the
        # recv that follows finds data and never blocks inside the gate.
        if deadline is not None or (interruptible and _get_ident() == _gate.main):
            if deadline is None:
                timeout = -1
            else:
                timeout = (deadline - time.monotonic()) * 1000
                if timeout <= 0:
                    return False
            if not _gate.interruptible(self._poll, timeout):
                return False
        return self.read()

    def _follow(self, waiter, deadline) -> bool:
        """Sleep until a leader steps back; False on timeout."""
        timeout = -1 if deadline is None else deadline - time.monotonic()
        woke = False
        try:
            if deadline is None or timeout > 0:
                woke = _gate.interruptible(waiter.acquire, True, timeout)
        finally:
            if not woke:    # timed out or interrupted: forget the waiter
                with self._lock:
                    try:
                        self._waiters.remove(waiter)
                    except ValueError:
                        pass
        return woke

    def step_back(self) -> None:
        """Give up the lead and wake every follower (each looks again)."""
        with self._lock:
            self.reading = False
            waiters, self._waiters = self._waiters, []
        for w in waiters:
            w.release()
        if self._missed:
            self._missed = False
            self.poll_now()

    def wake_followers(self) -> None:
        """After a read by the permanent leader: let the followers look.
        (Under the lock even when nobody seems to wait: a follower checks
        its condition and registers in one step under it.)"""
        with self._lock:
            waiters, self._waiters = self._waiters, []
        for w in waiters:
            w.release()

    def take_lead(self, timeout) -> bool:
        """Lead for good (the io thread), or wait up to ``timeout`` seconds
        for the current leader to step back and return False."""
        with self._lock:
            if not self.reading:
                self.reading = True
                return True
            waiter = _allocate_lock()
            waiter.acquire()
            self._waiters.append(waiter)
        self._follow(waiter, time.monotonic() + timeout)
        return False

    def close(self) -> None:
        """No more reads (the connection is gone): wake every waiter."""
        self.closed = True
        with self._lock:
            waiters, self._waiters = self._waiters, []
        for w in waiters:
            w.release()

    # -- the signal handler's read ----------------------------------------------------------
    def poll_now(self) -> None:
        """Read whatever has arrived if nobody leads.  Never blocks, so a
        signal handler may call it: the node pokes a worker busy in a task
        (SIGUSR1) to make it see a CANCEL_TASK."""
        lock = self._lock
        # Set first: whoever holds the lock or the lead now checks it after
        # stepping back, so the poke is never lost between the two.
        self._missed = True
        if not lock.acquire(False):
            return
        try:
            if self.reading:
                if self.permanent:        # the io thread reads everything anyway
                    self._missed = False
                return
            if self.closed:
                return
            self.reading = True
            self._missed = False
        finally:
            lock.release()
        try:
            while self.read(_DONTWAIT):   # drain: a cancel may sit behind queued calls
                pass
        finally:
            self.step_back()
