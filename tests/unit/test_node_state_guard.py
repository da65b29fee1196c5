"""The guard of tests/unit/conftest.py is on for test_node_state_* modules:
starting a process, a thread or a socket raises (past ``except Exception``)
and is recorded, which fails the test at teardown."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import pytest

from .conftest import ForbiddenInUnitTest


@pytest.mark.parametrize("start", [
    lambda: subprocess.Popen([sys.executable, "-c", "pass"]),
    lambda: subprocess.run([sys.executable, "-c", "pass"]),
    lambda: os.fork(),
    lambda: os.posix_spawn(sys.executable, [sys.executable, "-c", "pass"], {}),
    lambda: threading.Thread(target=print).start(),
    lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM),
], ids=["Popen", "run", "fork", "posix_spawn", "Thread", "socket"])
def test_guard_refuses_and_records(no_processes_threads_or_sockets, start):
    guard = no_processes_threads_or_sockets
    with pytest.raises(ForbiddenInUnitTest):
        try:
            start()
        except Exception:           # what the node state does with a failing handler
            pass
    assert len(guard.attempts) >= 1
    guard.attempts.clear()          # this test wanted it: do not fail at teardown
