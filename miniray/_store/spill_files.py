"""Spill files: the node server's disk I/O for spilling (``_node_spill``
decides what, this does it).

One thread does the jobs in order, off the node's loop: SPILL writes a
batch of arena ranges back to back into a new file (large sequential
writes, straight from the arena mapping), RESTORE reads an object back into
the range the state allocated for it (reserving its pages first, so a full
/dev/shm is an error, not a SIGBUS), DELETE_SPILL unlinks a file.  Each
SPILL and RESTORE is answered by an event (SPILLED, RESTORED, with the
error's text if it failed), handed to the loop through an eventfd it
watches.  A failed SPILL leaves no file.

Files live in ``<object_spilling_directory or the temp dir>/miniray-spill-
<session>``, made at the first spill with an ``owner`` file (host, pid);
the directory goes when the node stops, and a later node removes those of
dead nodes of its host (a node that was killed).

A SPILLED is held back while a connection still streams bytes of one of its
ranges to a peer node (a SEND_ARENA queued as a view of the arena): the
state frees the ranges it spilled as soon as it hears SPILLED.
"""
from __future__ import annotations

import ctypes
import itertools
import os
import shutil
import socket
import tempfile
import threading
import time
from collections import deque

from .._node_events import D, E

__all__ = ["SpillFiles"]

CHUNK = 16 * 2**20          # a stop request is seen between chunks
SPILL, RESTORE, DELETE = D.SPILL, D.RESTORE, D.DELETE_SPILL
SPILLED, RESTORED = E.SPILLED, E.RESTORED


def default_root() -> str:
    return tempfile.gettempdir()


class SpillFiles:
    def __init__(self, arena_fd: int, arena, root, session: str):
        self.arena_fd = arena_fd
        self._arena = arena                 # the server's mmap of the arena (a callable)
        self.view = None
        self.root = os.path.abspath(root or default_root())
        self.dir = os.path.join(self.root, f"miniray-spill-{session}")
        self.made = False
        self.jobs = deque()
        self.cv = threading.Condition()
        self.done = deque()                 # events, from the thread
        self.held = []                      # (SPILLED event, ranges) held back
        self.batches = {}                   # file id -> its ranges, until SPILLED
        self.wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.thread = None
        self.stopping = False
        self.written = self.read = 0        # bytes, and seconds spent, for the log
        self.write_s = self.read_s = 0.0

    def path(self, fid) -> str:
        return os.path.join(self.dir, f"{fid}.bin")

    # -- the loop's side ----------------------------------------------------------------------
    def submit(self, ins) -> None:
        if self.view is None:
            self.view = memoryview(self._arena())
        if ins[0] == SPILL:
            self.batches[ins[1]] = [(off, size) for _, off, size in ins[2]]
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="miniray-spill", daemon=True)
            self.thread.start()
        with self.cv:
            self.jobs.append(ins)
            self.cv.notify()

    def results(self, conns) -> list:
        """Events of the jobs done since last time (SPILLED held back while
        its ranges are still being sent)."""
        try:
            os.eventfd_read(self.wake)
        except BlockingIOError:
            pass
        ready = [(ev, self.batches.pop(ev[1], ())) if ev[0] == SPILLED else (ev, ())
                 for ev in self._take()]
        ready = self.held + ready
        self.held = []
        out = []
        for ev, ranges in ready:
            if ranges and self._sending(conns, ranges):
                self.held.append((ev, ranges))
            else:
                out.append(ev)
        return out

    def _take(self) -> list:
        done = self.done
        out = []
        while done:
            out.append(done.popleft())
        return out

    def _sending(self, conns, ranges) -> bool:
        """A connection still has bytes of one of ``ranges`` to send."""
        mm = self._arena()
        base = None
        for conn in conns:
            for item in itertools.chain(conn.queue, (st[1] for st in conn.streams)):
                if not isinstance(item, memoryview) or item.obj is not mm or not item.nbytes:
                    continue
                try:
                    if base is None:
                        base = ctypes.addressof(ctypes.c_char.from_buffer(mm))
                    start = ctypes.addressof(ctypes.c_char.from_buffer(item)) - base
                except (TypeError, ValueError):
                    return True
                end = start + item.nbytes
                if any(start < off + size and off < end for off, size in ranges):
                    return True
        return False

    def stop(self) -> str | None:
        """Stop the thread (a write under way stops at its next chunk) and
        remove the directory; what was spilled, for the log."""
        with self.cv:
            self.stopping = True
            self.cv.notify()
        if self.thread is not None:
            self.thread.join(10)
        if self.made:
            shutil.rmtree(self.dir, ignore_errors=True)
        os.close(self.wake)
        if self.view is not None and not self.thread.is_alive():
            self.view.release()
            self.view = None
        if not self.written:
            return None
        return (f"spilled {self.written / 2**20:.0f} MiB to {self.root} (written at "
                f"{self.written / 2**20 / max(self.write_s, 1e-9):.0f} MiB/s), read back "
                f"{self.read / 2**20:.0f} MiB (at {self.read / 2**20 / max(self.read_s, 1e-9):.0f}"
                f" MiB/s)")

    # -- the thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self.cv:
                while not self.jobs and not self.stopping:
                    self.cv.wait()
                if self.stopping:
                    return
                ins = self.jobs.popleft()
            try:
                ev = self._job(ins)
            except BaseException as exc:        # never leave the state waiting
                ev = (SPILLED, ins[1], f"{type(exc).__name__}: {exc}") if ins[0] == SPILL else (
                    (RESTORED, ins[1], f"{type(exc).__name__}: {exc}") if ins[0] == RESTORE
                    else None)
            if ev is not None:
                self.done.append(ev)
                os.eventfd_write(self.wake, 1)

    def _job(self, ins):
        kind = ins[0]
        if kind == SPILL:
            t0 = time.monotonic()
            try:
                n = self._spill(ins[1], ins[2])
            except OSError as exc:
                return (SPILLED, ins[1], f"{type(exc).__name__}: {exc}")
            self.written += n
            self.write_s += time.monotonic() - t0
            return (SPILLED, ins[1], None)
        if kind == RESTORE:
            _, oid, fid, pos, size, off = ins
            t0 = time.monotonic()
            try:
                self._restore(fid, pos, size, off)
            except OSError as exc:
                return (RESTORED, oid, f"{type(exc).__name__}: {exc}")
            self.read += size
            self.read_s += time.monotonic() - t0
            return (RESTORED, oid, None)
        if kind == DELETE:
            try:
                os.unlink(self.path(ins[1]))
            except OSError:
                pass
        return None

    def _make_dir(self) -> None:
        os.makedirs(self.root, exist_ok=True)
        self._remove_dead()
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        with open(os.path.join(self.dir, "owner"), "w") as f:
            f.write(f"{socket.gethostname()} {os.getpid()}\n")
        self.made = True

    def _remove_dead(self) -> None:
        """Directories left by killed nodes of this host (their pid is gone)."""
        host = socket.gethostname()
        try:
            names = [n for n in os.listdir(self.root) if n.startswith("miniray-spill-")]
        except OSError:
            return
        for name in names:
            d = os.path.join(self.root, name)
            try:
                with open(os.path.join(d, "owner")) as f:
                    owner_host, pid = f.read().split()
                if owner_host != host or int(pid) == os.getpid():
                    continue
                os.kill(int(pid), 0)
            except ProcessLookupError:
                shutil.rmtree(d, ignore_errors=True)
            except (OSError, ValueError):
                continue

    def _spill(self, fid, items) -> int:
        if not self.made:
            self._make_dir()
        path = self.path(fid)
        view = self.view
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        total = 0
        try:
            for _, off, size in items:
                end = off + size
                while off < end:
                    if self.stopping:
                        raise OSError("the node is stopping")
                    n = os.write(fd, view[off:min(end, off + CHUNK)])
                    off += n
                    total += n
        except BaseException:
            os.close(fd)
            try:
                os.unlink(path)
            except OSError:
                pass
            raise
        os.close(fd)
        return total

    def _restore(self, fid, pos, size, off) -> None:
        # Reserve the range's pages: a full /dev/shm fails here, not as a SIGBUS.
        os.posix_fallocate(self.arena_fd, off, size)
        fd = os.open(self.path(fid), os.O_RDONLY | os.O_CLOEXEC)
        try:
            view = self.view
            end = off + size
            while off < end:
                if self.stopping:
                    raise OSError("the node is stopping")
                n = os.preadv(fd, [view[off:min(end, off + CHUNK)]], pos)
                if n <= 0:
                    raise OSError(f"spill file {self.path(fid)} is shorter than expected")
                off += n
                pos += n
        finally:
            os.close(fd)
