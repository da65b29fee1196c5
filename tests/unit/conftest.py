"""Pure unit tests start no process, thread or socket.

The node state's tests (``test_node_state_*.py``, and any test marked
``@pytest.mark.pure``) run under a guard: the autouse
``no_processes_threads_or_sockets`` fixture replaces every way this code
base could start one (``subprocess.Popen`` and the fork/exec primitive under
it, ``os.fork``, ``os.posix_spawn``, ``os.system``, ``threading.Thread.start``
and the ``_thread`` primitives, ``socket.socket``) with a function that
records the attempt and raises.  The error derives from BaseException, so
code under test that catches ``Exception`` (the node state fails a request
rather than crash) cannot swallow it, and every recorded attempt fails the
test at teardown even if something did.

The guard is opt-in by module name because some older unit tests start
processes and threads on purpose (``test_serialization``'s copy pool and
subprocess round trips, the import-weight checks of ``test_api_surface``
and ``test_imports``).
"""
from __future__ import annotations

import _posixsubprocess
import _thread
import os
import socket
import subprocess
import threading

import pytest

GUARDED_MODULES = ("test_node_state_",)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "pure: the test starts no process, thread or socket (enforced)")


class ForbiddenInUnitTest(BaseException):
    """A pure unit test tried to start a process, a thread or a socket."""


class Guard:
    """What the fixture yields: the attempts it stopped, in order."""

    def __init__(self):
        self.attempts: list[str] = []

    def forbid(self, what: str):
        def refuse(*args, **kwargs):
            self.attempts.append(what)
            raise ForbiddenInUnitTest(
                f"a pure unit test started {what}: these tests drive the state with events; "
                f"a test that needs processes, threads or sockets goes in tests/integration")
        return refuse


# (object, attribute, description) for every way to start one.
_TARGETS = [
    (subprocess, "Popen", "a process (subprocess.Popen)"),
    (_posixsubprocess, "fork_exec", "a process (_posixsubprocess.fork_exec)"),
    (os, "fork", "a process (os.fork)"),
    (os, "forkpty", "a process (os.forkpty)"),
    (os, "posix_spawn", "a process (os.posix_spawn)"),
    (os, "posix_spawnp", "a process (os.posix_spawnp)"),
    (os, "system", "a process (os.system)"),
    (threading.Thread, "start", "a thread (threading.Thread.start)"),
    (_thread, "start_new_thread", "a thread (_thread.start_new_thread)"),
    (_thread, "start_joinable_thread", "a thread (_thread.start_joinable_thread)"),
    (socket.socket, "__init__", "a socket (socket.socket)"),
]


def _guarded(request) -> bool:
    module = request.node.module.__name__.rpartition(".")[2]
    return module.startswith(GUARDED_MODULES) or request.node.get_closest_marker("pure")


@pytest.fixture(autouse=True)
def no_processes_threads_or_sockets(request, monkeypatch):
    """Yields the Guard (its ``attempts``), or None for an unguarded test."""
    if not _guarded(request):
        yield None
        return
    guard = Guard()
    for obj, name, what in _TARGETS:
        if hasattr(obj, name):
            monkeypatch.setattr(obj, name, guard.forbid(what))
    yield guard
    monkeypatch.undo()
    if guard.attempts:
        pytest.fail(f"the test tried to start: {', '.join(guard.attempts)}", pytrace=False)
