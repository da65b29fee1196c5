"""One gate for asynchronous interrupts, in drivers and in workers.

A driver's Ctrl-C (KeyboardInterrupt) and a worker's task cancel (SIGINT
that the worker's reader sends to its own main thread) both arrive through
a Python-level SIGINT handler, which CPython runs on the main thread
between two bytecodes, wherever that thread is.  Raised in the runtime's
own code, the exception corrupts state that other threads or the node rely
on: half a frame on the stream, queued submits taken but never written,
bytes received but not parsed, a view pinned but not recorded, a ref count
changed but not its INCREF, a module half imported.  So:

    with deferred_interrupts():      # SIGINT is recorded, not acted on
        ...                          # send, recv + dispatch, decode, import
    # leaving the outermost gate delivers a recorded SIGINT

    gate.interruptible(fn, *args)    # inside a gate: run fn (a blocking
                                     # wait, or a task's own code) with
                                     # SIGINT delivered at once

The rule: on the main thread the runtime works inside the gate and lets an
interrupt in only where it waits (or where it runs the user's code), so an
interrupt never lands in the middle of its work.

Why not ``pthread_sigmask``: a process-directed SIGINT (a terminal's
Ctrl-C) goes to any thread that does not block it, and CPython's C handler
only sets a flag that the main thread acts on at its next check, mask or
no mask.  Only the Python-level handler can hold it back.

Who acts on a SIGINT let through: ``install(deliver)`` makes the gate's
handler the process's SIGINT handler, and ``deliver(signum, frame)`` acts:
in a driver the handler that was there before (Python's
``default_int_handler``: KeyboardInterrupt), in a worker the cancel of the
running task.  A program that installs its own SIGINT handler later simply
bypasses the gate.

Finalizers: an exception raised in a ``__del__`` (``ObjectRef.__del__``
and the pins of zero-copy views run wherever the main thread happens to
drop them) is printed and swallowed by Python: a Ctrl-C or a cancel that
strikes there would be lost, and the finalizer left half done.  So a SIGINT
that finds a ``__del__`` on the stack is recorded and signalled again by
another thread (``rearm``: the client's io thread) once the finalizer has
had time to return.

Python runs signal handlers on the main thread only, so the gate counts for
the main thread only; on any other thread it costs one thread-id check.
"""
from __future__ import annotations

import signal
import sys
import threading

__all__ = ["deferred_interrupts", "gate", "install", "uninstall", "resend_sigint"]

_get_ident = threading.get_ident


class InterruptGate:
    """A re-entrant gate: ``with gate:`` defers SIGINT on the main thread.

    ``depth``, ``pending`` and ``handling`` change only on the main thread,
    where the handler also runs, so they need no lock: the handler sees
    them between two bytecodes, never half updated.  (``resent`` is set by
    the thread that ``rearm`` woke, just before it signals.)
    """

    __slots__ = ("main", "depth", "pending", "handling", "resent", "deliver", "rearm",
                 "_previous")

    def __init__(self):
        self.main = threading.main_thread().ident
        self.depth = 0           # nesting of gates entered by the main thread
        self.pending = False     # a SIGINT arrived inside the gate (or a finalizer)
        self.handling = False    # inside _on_sigint's own bookkeeping
        self.resent = False      # the next SIGINT is the one ``rearm`` asked for
        self.deliver = None      # acts on a SIGINT that is let through
        self.rearm = None        # asks another thread to send SIGINT again soon
        self._previous = None    # the handler found by install()

    def __enter__(self):
        # The count changes last: an interrupt raised before it leaves no
        # gate entered; one after it is deferred.
        if _get_ident() == self.main:
            self.depth += 1

    def __exit__(self, *exc_info):
        # Decremented before the check: an interrupt arriving in between is
        # delivered by the handler itself (depth is 0), not lost.
        if _get_ident() == self.main:
            self.depth -= 1
            if self.pending and not self.depth:
                self._fire()

    def interruptible(self, fn, *args):
        """``fn(*args)`` with interrupts open (a deferred one is delivered
        first); the gate's depth is back when it returns or raises."""
        if _get_ident() != self.main:
            return fn(*args)
        depth = self.depth
        self.depth = 0
        try:
            if self.pending:
                self._fire()
            return fn(*args)
        finally:
            # Straight-line code, no call: no handler can run before the
            # depth is back.
            self.depth = depth

    def _fire(self) -> None:
        """Deliver the SIGINT recorded inside the gate."""
        if _in_finalizer(sys._getframe(1)) and self._later():
            return
        self.pending = False
        deliver = self.deliver
        if deliver is not None:
            deliver(signal.SIGINT, None)

    def _on_sigint(self, signum, frame):
        if self.resent:
            self.resent = False
            if not self.pending:      # what it was sent again for is delivered
                return
        if self.handling:
            return                    # on top of one being handled: one is enough
        if self.depth:
            self.pending = True
            return
        self.handling = True
        try:
            if _in_finalizer(frame) and self._later():
                return
            self.pending = False
        finally:
            self.handling = False
        deliver = self.deliver
        if deliver is not None:
            deliver(signum, frame)

    def _later(self) -> bool:
        """Inside a finalizer: keep the SIGINT and have it sent again from
        another thread (not from here: the handler would run again at once,
        still inside the finalizer).  False if nobody can."""
        rearm = self.rearm
        if rearm is None:
            return False
        self.pending = True
        rearm()
        return True


def _in_finalizer(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


gate = InterruptGate()


def deferred_interrupts() -> InterruptGate:
    """``with deferred_interrupts():`` holds back SIGINT (KeyboardInterrupt,
    a task cancel) on the main thread until the outermost gate is left."""
    return gate


def install(deliver=None) -> bool:
    """Route SIGINT through the gate; ``deliver`` acts on a SIGINT let
    through (default: the Python handler installed now).  False, and
    nothing changed, off the main thread or when SIGINT is ignored or left
    to the system (no Python exception can then strike)."""
    if _get_ident() != gate.main:
        return False
    current = signal.getsignal(signal.SIGINT)
    if current == gate._on_sigint:
        if deliver is not None:
            gate.deliver = deliver
        return True
    if deliver is None:
        if not callable(current):
            return False
        deliver = current
    gate._previous = current
    gate.deliver = deliver
    signal.signal(signal.SIGINT, gate._on_sigint)
    return True


def uninstall() -> None:
    """Give SIGINT back to the handler found by ``install`` (if the gate's
    handler is still the one installed)."""
    if _get_ident() != gate.main or gate._previous is None:
        return
    if signal.getsignal(signal.SIGINT) == gate._on_sigint:
        signal.signal(signal.SIGINT, gate._previous)
    gate._previous = None
    gate.deliver = None
    gate.pending = False


def resend_sigint() -> None:
    """Send the main thread the SIGINT that ``rearm`` asked for (called by
    the thread ``rearm`` woke), unless a gate has delivered it meanwhile."""
    if gate.pending:
        gate.resent = True
        signal.pthread_kill(gate.main, signal.SIGINT)
