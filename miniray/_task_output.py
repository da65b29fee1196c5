"""Task output: what tasks print reaches the driver of their job, on any node.

    task code ─ print ─► TaskOutput (a worker's sys.stdout / sys.stderr)
        │  whole lines (or a partial one at a flush or at the task's end)
        ▼
    OUTPUT(job, stream, text, cont, (name, pid, node_id, ip), task_id) ─► its node
        node: the job's driver is here ─► that driver ─► show() ─► its sys.stdout/err
              the driver is on another node ─► peer link ─► that node ─► its driver
              no driver takes it (gone, ``log_to_driver=False``) ─► the node's log

Lines are prefixed by the driver as Ray does: ``(f pid=123)`` for a task on
the driver's own node, ``(f pid=123, ip=10.0.0.2)`` for one elsewhere
("elsewhere" is decided by node id: two nodes of one host share an IP).
Output written outside any task (job 0: a worker starting, a thread left
behind by a finished task) goes to the worker's inherited stdout/stderr, the
node's log, prefixed as before.

The worker sends with ``CoreClient.send_nowait``: never blocking on the
send lock, so a print from a finalizer or a signal handler that runs while
this very thread sends cannot deadlock; and before the task's TASK_DONE on
the same socket, so a driver's ``get`` returns after the task's prints are
written.  This module imports only the protocol: daemons may use its
formatting.
"""
from __future__ import annotations

import sys
import threading

from ._protocol import M

__all__ = ["STDOUT", "STDERR", "TaskOutput", "prefix_lines", "source_prefix", "show"]

STDOUT, STDERR = 1, 2
MAX_PENDING = 64 * 1024     # a partial line longer than this is sent as it is


def prefix_lines(text: str, prefix: str, cont: bool = False) -> str:
    """``text`` with ``prefix`` before each line (not before the first when
    ``cont``: it continues a line already shown)."""
    lines = text.splitlines(keepends=True)
    if not cont:
        return "".join(prefix + line for line in lines)
    return lines[0] + "".join(prefix + line for line in lines[1:]) if lines else ""


def source_prefix(source, here=None) -> str:
    """Ray's prefix for output from ``source`` = (name, pid, node_id, ip):
    the IP only when it ran on another node than ``here``."""
    name, pid, node_id, ip = source
    if node_id == here:
        return f"({name} pid={pid}) "
    return f"({name} pid={pid}, ip={ip}) "


def show(msg, node_id) -> None:
    """A driver's reader got OUTPUT: write it to this process's current
    sys.stdout / sys.stderr (never raises: the reader must go on)."""
    try:
        _, job, stream, text, cont, source, tid = msg
        out = sys.stderr if stream == STDERR else sys.stdout
        if out is None:
            return
        out.write(prefix_lines(text, source_prefix(source, node_id), cont))
        out.flush()
    except Exception:
        pass


class TaskOutput:
    """A worker's sys.stdout or sys.stderr.

    ``context()`` says who writes: ``(job, task name, task id | None)``,
    job 0 outside any task.  ``send(msg)`` sends an OUTPUT message (it must
    not block on this thread: ``CoreClient.send_nowait``).  ``source`` is
    ``(pid, node_id, ip)`` of this worker."""

    def __init__(self, stream, number, context, send, source):
        self._stream = stream           # the inherited stream: the node's log
        self._number = number           # STDOUT | STDERR
        self._context = context
        self._send = send
        self._pid, self._node_id, self._ip = source
        self._lock = threading.RLock()  # a finalizer may print inside a write
        self._pending: list = []        # text of a line not ended yet
        self._pending_size = 0
        self._pending_from = None       # (job, name, tid) that wrote it
        self._open_job = None           # the job whose line was sent without its end
        self._local_line_start = True   # for output outside any task
        self.emitted = False            # text sent since the owner last cleared it

    # -- the file interface -----------------------------------------------------------------
    def write(self, s) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        if not s:
            return 0
        job, name, tid = self._context()
        with self._lock:
            if not job:
                self._write_local(s, f"({name} pid={self._pid}) ")
                return len(s)
            if self._pending and self._pending_from[0] != job:
                self._send_pending()
            self._pending.append(s)
            self._pending_size += len(s)
            self._pending_from = (job, name, tid)
            if "\n" in s:
                text = "".join(self._pending)
                cut = text.rfind("\n") + 1
                rest = text[cut:]
                self._pending = [rest] if rest else []
                self._pending_size = len(rest)
                self._emit(job, name, tid, text[:cut])
            elif self._pending_size > MAX_PENDING:
                self._send_pending()
        return len(s)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Send the line not ended yet (a task's end does too)."""
        with self._lock:
            if self._pending:
                self._send_pending()
        try:
            self._stream.flush()
        except Exception:
            pass

    def task_ended(self) -> None:
        """A task finished: send what it left unended; whatever is printed
        next starts a line of its own (with its prefix)."""
        with self._lock:
            if self._pending:
                self._send_pending()
            self._open_job = None

    def take_emitted(self) -> bool:
        """Was text sent since the last call?  (Clears it.)"""
        with self._lock:
            emitted, self.emitted = self.emitted, False
        return emitted

    def __getattr__(self, name):
        return getattr(self._stream, name)

    # -- sending ------------------------------------------------------------------------------
    def _send_pending(self) -> None:
        text = "".join(self._pending)
        self._pending = []
        self._pending_size = 0
        job, name, tid = self._pending_from
        self._emit(job, name, tid, text)

    def _emit(self, job, name, tid, text) -> None:
        # The line the text starts continues one sent before only if that
        # one was this job's (another job's driver shows our line anew).
        cont = self._open_job == job
        self._open_job = None if text.endswith("\n") else job
        source = (name, self._pid, self._node_id, self._ip)
        self.emitted = True
        try:
            self._send((M.OUTPUT, job, self._number, text, cont, source, tid))
        except Exception:
            # The node is gone: the inherited stream is all that is left.
            self._local_line_start = not cont
            self._write_local(text, source_prefix(source))

    def _write_local(self, s, prefix) -> None:
        out = []
        for line in s.splitlines(keepends=True):
            if self._local_line_start:
                out.append(prefix)
            out.append(line)
            self._local_line_start = line.endswith("\n")
        try:
            self._stream.write("".join(out))
            if "\n" in s:
                self._stream.flush()
        except Exception:
            pass
