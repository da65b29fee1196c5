"""The node server's spill I/O (``_store/spill_files``) on its own: a real
thread writing and reading real files, against an arena made of a memfd."""
from __future__ import annotations

import mmap
import os
import select
import types
from collections import deque

import pytest

from miniray._node_events import D, E
from miniray._store.spill_files import SpillFiles

MiB = 2**20


@pytest.fixture
def io(tmp_path):
    fd = os.memfd_create("arena")
    os.ftruncate(fd, 8 * MiB)
    mm = mmap.mmap(fd, 8 * MiB)
    files = SpillFiles(fd, lambda: mm, str(tmp_path), "unit")
    yield files, mm, tmp_path
    files.stop()
    mm.close()
    os.close(fd)


def wait_events(files, conns=()):
    p = select.poll()
    p.register(files.wake, select.POLLIN)
    assert p.poll(10_000), "the spill thread did not answer"
    return files.results(conns)


def test_spill_then_restore_round_trip(io):
    files, mm, root = io
    mm[0:3 * MiB] = os.urandom(3 * MiB)
    want = bytes(mm[MiB:3 * MiB])
    files.submit((D.SPILL, 1, [(b"x", MiB, MiB), (b"y", 2 * MiB, MiB)]))
    assert wait_events(files) == [(E.SPILLED, 1, None)]
    (path,) = root.glob("miniray-spill-unit/*.bin")
    assert path.read_bytes() == want
    assert (root / "miniray-spill-unit" / "owner").read_text().split()[1] == str(os.getpid())
    files.submit((D.RESTORE, b"y", 1, MiB, MiB, 5 * MiB))
    assert wait_events(files) == [(E.RESTORED, b"y", None)]
    assert bytes(mm[5 * MiB:6 * MiB]) == want[MiB:]
    files.submit((D.DELETE_SPILL, 1))
    files.submit((D.RESTORE, b"x", 1, 0, MiB, 6 * MiB))     # the file is gone now
    (ev,) = wait_events(files)
    assert ev[:2] == (E.RESTORED, b"x") and "No such file" in ev[2]
    assert "spilled 2 MiB" in files.stop() and not (root / "miniray-spill-unit").exists()
    files.stop = lambda: None                                 # (the fixture's second stop)


def test_a_failed_spill_says_why_and_leaves_no_file(tmp_path):
    fd = os.memfd_create("arena")
    os.ftruncate(fd, MiB)
    mm = mmap.mmap(fd, MiB)
    files = SpillFiles(fd, lambda: mm, "/dev/null/spill", "unit")
    try:
        files.submit((D.SPILL, 1, [(b"x", 0, 1000)]))
        (ev,) = wait_events(files)
        assert ev[:2] == (E.SPILLED, 1) and "Not a directory" in ev[2]
    finally:
        files.stop()
        mm.close()
        os.close(fd)


def test_spilled_is_held_while_a_peer_link_still_sends_those_bytes(io):
    files, mm, root = io
    files.submit((D.SPILL, 1, [(b"x", MiB, MiB)]))
    sending = types.SimpleNamespace(queue=deque([bytearray(b"header"),
                                                 memoryview(mm)[MiB + 100:2 * MiB]]),
                                    streams=deque())
    other = types.SimpleNamespace(queue=deque([memoryview(mm)[4 * MiB:5 * MiB]]),
                                  streams=deque())
    # (and one whose next chunks, not queued yet, are in that range)
    later = types.SimpleNamespace(queue=deque(), streams=deque([[b"x", memoryview(mm)[MiB:2 * MiB],
                                                                 4096]]))
    conns = [sending, other, later]
    assert wait_events(files, conns) == []                    # held back
    assert files.results(conns) == []
    sending.queue.clear()
    assert files.results(conns) == []
    later.streams.clear()
    assert files.results(conns) == [(E.SPILLED, 1, None)]
