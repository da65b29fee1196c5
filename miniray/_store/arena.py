"""The shared-memory arena: one file per node, mapped once per process.

Ownership: only the node daemon creates the file, and it unlinks it right
after creating it; every other process gets the open descriptor (inherited
by workers, by SCM_RIGHTS for drivers) and maps it.  So no name is ever left
in /dev/shm, whatever gets killed: the memory is released when the last
process holding the descriptor or a mapping exits.

Readers get read-only, zero-copy views.  A view *pins* its range: the view's
buffer chain ends in a ``_Pin`` whose finalizer tells the runtime the range
may be reused (see ``pinned_view``).
"""
from __future__ import annotations

import ctypes
import mmap
import os
import shutil
import tempfile
import threading
import time

__all__ = ["Arena", "Prefault", "create_arena_file"]

SHM_DIR = "/dev/shm"


def create_arena_file(size: int, tag: str, directory: str | None = None):
    """Create, size and unlink the arena file.

    Returns (fd, where, warning).  Falls back to a file-backed arena in the
    temp dir when /dev/shm cannot hold ``size``.
    """
    warning = None
    if directory is None:
        directory = SHM_DIR
        try:
            free = shutil.disk_usage(SHM_DIR).free
        except OSError:
            free = 0
        if free < size:
            fallback = tempfile.gettempdir()
            warning = (f"/dev/shm has {free / 2**30:.2f} GiB free, less than the object store's "
                       f"{size / 2**30:.2f} GiB: the store is backed by a file in {fallback}, "
                       f"which is slower. Give /dev/shm more room (e.g. docker --shm-size, or "
                       f"mount -o remount,size=...) or pass a smaller object_store_memory.")
            directory = fallback
    path = os.path.join(directory, f"miniray-arena-{tag}-{os.getpid()}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.unlink(path)
    return fd, directory, warning


class _Pin:
    """End of a view's buffer chain; runs ``release`` when collected."""

    __slots__ = ("__array_interface__", "_release", "_key")

    def __init__(self, address, size, readonly, release, key):
        self.__array_interface__ = {"shape": (size,), "typestr": "|u1",
                                    "data": (address, readonly), "version": 3}
        self._release = release
        self._key = key

    def __del__(self):
        release = self._release
        if release is not None:
            self._release = None
            try:
                release(self._key)
            except Exception:
                pass


class Arena:
    """A process's mapping of the node's arena."""

    def __init__(self, fd: int, size: int):
        self.fd = fd
        self.size = size
        self._mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED,
                             prot=mmap.PROT_READ | mmap.PROT_WRITE) if size else None
        self._view = memoryview(self._mm) if size else memoryview(b"")
        self.address = ctypes.addressof(ctypes.c_char.from_buffer(self._mm)) if size else 0

    def writable(self, offset: int, size: int) -> memoryview:
        """The range to fill before sealing.  Each part must be passed to
        ``reserver(offset)`` before it is written (see ``write_to``)."""
        return self._view[offset:offset + size]

    def reserver(self, base: int, fresh_from: int = 0):
        """``prepare(offset, length)`` for ``write_to``: reserves the pages
        of a part of the range at ``base``, so a full /dev/shm is an
        ObjectStoreFullError here, not a SIGBUS while copying.  Parts below
        ``fresh_from`` were reserved before (by the node's prefault or an
        earlier object) and are skipped."""
        fd = self.fd

        def prepare(offset, length):
            if offset + length <= fresh_from:
                return
            try:
                os.posix_fallocate(fd, base + offset, length)
            except OSError as exc:
                from ..exceptions import ObjectStoreFullError
                raise ObjectStoreFullError(
                    f"the shared-memory file system has no room for {length} more bytes "
                    f"({exc.strerror}); free space in /dev/shm or lower "
                    f"object_store_memory") from None
        return prepare

    def pinned_view(self, offset: int, size: int, release, key) -> memoryview:
        """A read-only view of the range; ``release(key)`` runs once no view
        derived from it (numpy array, Arrow buffer, memoryview) is alive."""
        import numpy as np
        pin = _Pin(self.address + offset, size, True, release, key)
        return memoryview(np.asarray(pin))

    def close(self) -> None:
        # The mapping stays: views handed to user code may outlive the
        # runtime, and unmapping under them would crash the process.  The
        # kernel drops it at exit.  Only the descriptor goes.
        try:
            os.close(self.fd)
        except OSError:
            pass


class Prefault:
    """Reserves the first ``nbytes`` of the arena in the background.

    Allocating tmpfs pages (zeroing them) is most of the cost of a first
    large put; doing it here, at the lowest CPU priority, after the node is
    up, makes a first put cost only the page mapping.  The pages are not
    mapped by anyone, so they count in no process's RSS.
    """

    CHUNK = 16 * 2**20
    PAUSE_S = 0.5       # how long a large write keeps the prefault off its back

    def __init__(self, fd: int, nbytes: int):
        self.fd = fd
        self.nbytes = nbytes
        self.done_upto = 0          # bytes [0, done_upto) are reserved
        self.paused_until = 0.0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="miniray-prefault", daemon=True)

    def start(self) -> None:
        if self.nbytes > 0:
            self.thread.start()

    def pause(self) -> None:
        """A large write is starting: reserving pages here at the same time
        would contend with the writer for the file's lock (and at nice 19,
        hold it up)."""
        self.paused_until = time.monotonic() + self.PAUSE_S

    def _run(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (OSError, AttributeError):
            pass
        for off in range(0, self.nbytes, self.CHUNK):
            while True:
                wait = self.paused_until - time.monotonic()
                if wait <= 0:
                    break
                if self.stopping.wait(wait):
                    return
            if self.stopping.is_set():
                return
            try:
                os.posix_fallocate(self.fd, off, min(self.CHUNK, self.nbytes - off))
            except OSError:
                return       # no room: the store reports it when it is used
            self.done_upto = min(self.nbytes, off + self.CHUNK)

    def stop(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join()
