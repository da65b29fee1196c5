"""Shared fixtures.

Every fixture that starts a runtime checks, after shutdown, that the node
daemon and every worker it started are gone and that no miniray file is left
in /dev/shm.  Tests use the real runtime: real processes, shared memory and
sockets.
"""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

import miniray
from miniray._protocol import Query

SHM_GLOB = "/dev/shm/miniray-arena-*"


def runtime_pids() -> set:
    """Pids of the node daemon and all its workers (alive now)."""
    rt = miniray._runtime.current()
    pids = set(rt.client.query(Query.STATS)["worker_pids"])
    if rt.node_proc is not None:
        pids.add(rt.node_proc.pid)
    try:
        pids.update(p.pid for p in psutil.Process(rt.node_proc.pid).children(recursive=True))
    except (psutil.Error, AttributeError):
        pass
    return pids


def wait_gone(pids, timeout=10.0) -> set:
    """Pids among ``pids`` still alive (not zombies) after ``timeout``."""
    deadline = time.monotonic() + timeout
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        for pid in list(alive):
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    alive.discard(pid)
            except psutil.NoSuchProcess:
                alive.discard(pid)
        if alive:
            time.sleep(0.05)
    return alive


def assert_clean(pids) -> None:
    left = wait_gone(pids)
    assert not left, f"processes left behind after shutdown: {sorted(left)}"
    import tempfile
    files = glob.glob(SHM_GLOB) + glob.glob(os.path.join(tempfile.gettempdir(), "miniray-arena-*"))
    assert not files, f"shared-memory files left behind: {files}"
    kids = [p for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]
    assert not kids, f"child processes left behind: {[(p.pid, p.cmdline()) for p in kids]}"


class Runtime:
    """Starts a runtime; ``stop`` shuts it down and asserts nothing leaked."""

    def __init__(self, **kwargs):
        kwargs.setdefault("num_cpus", 2)
        kwargs.setdefault("object_store_memory", 512 * 2**20)
        self.context = miniray.init(**kwargs)
        self.pids = set()

    def track(self):
        if miniray.is_initialized():
            try:
                self.pids |= runtime_pids()
            except miniray.exceptions.NodeDiedError:
                pass

    def stop(self):
        self.track()
        miniray.shutdown()
        assert_clean(self.pids)


_shared = None


def _stop_shared():
    global _shared
    if _shared is not None:
        rt, _shared = _shared, None
        rt.stop()


@pytest.fixture
def ray_start():
    """A fresh 2-CPU runtime for one test."""
    _stop_shared()
    rt = Runtime()
    yield miniray
    rt.stop()


@pytest.fixture
def ray_factory():
    """Start a runtime with custom init arguments: ``ray_factory(num_cpus=1)``."""
    _stop_shared()
    started = []

    def start(**kwargs):
        rt = Runtime(**kwargs)
        started.append(rt)
        return miniray
    yield start
    for rt in started:
        rt.stop()


@pytest.fixture
def ray_shared():
    """A 2-CPU runtime reused by consecutive tests of a module (for tests
    that leave no state behind); stopped and checked at module end."""
    global _shared
    if _shared is None or not miniray.is_initialized():
        _shared = Runtime()
    yield miniray
    _shared.track()


@pytest.fixture(scope="module", autouse=True)
def _stop_shared_at_module_end():
    yield
    _stop_shared()


@pytest.fixture(autouse=True)
def _no_runtime_leaks_between_tests(request):
    yield
    if "ray_shared" in request.fixturenames or _shared is not None:
        return
    if miniray.is_initialized():
        pids = runtime_pids()
        miniray.shutdown()
        assert_clean(pids)
        pytest.fail("the test left a runtime running (it was shut down and checked)")


def node_stats() -> dict:
    """The node's counters (objects, workers, tasks...) for the running runtime."""
    return miniray._runtime.current().client.query(Query.STATS)


def object_info(oid):
    """What the node's table holds for ``oid`` (None when it is gone)."""
    return miniray._runtime.current().client.query(Query.OBJECT_INFO, oid)


def wait_for(cond, timeout=10.0, interval=0.02) -> bool:
    """Poll ``cond`` until it is true or ``timeout`` passes; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return cond()


def run_driver(code: str, timeout=60, env=None):
    """Run ``code`` as a separate driver script; returns CompletedProcess."""
    import textwrap
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=full_env, preexec_fn=_default_sigint)


def _default_sigint():
    # A driver started from a terminal has SIGINT at its default, so Python
    # turns it into KeyboardInterrupt.  A test run launched in the
    # background (``cmd &`` in a script) inherits it ignored, and Python
    # then leaves it ignored: the Ctrl-C tests would send signals nobody sees.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def cluster(tmp_path):
    """A node started with `miniray start --head` (cluster dir: tmp_path);
    yields (cli, env, info); stopped and checked for leftovers at the end."""
    env = dict(os.environ, MINIRAY_CLUSTER_DIR=str(tmp_path))

    def cli(*args, check=True):
        out = subprocess.run([sys.executable, "-m", "miniray.cli", *args], capture_output=True,
                             text=True, env=env, timeout=60)
        if check:
            assert out.returncode == 0, out.stderr
        return out

    cli("start", "--head", "--port", "0", "--num-cpus", "2",
        "--object-store-memory", str(128 * 2**20))
    info = json.loads((tmp_path / "cluster.json").read_text())
    pids = {info["pid"]} | {p.pid for p in psutil.Process(info["pid"]).children(recursive=True)}
    yield cli, env, info
    more = set()
    try:
        more = {p.pid for p in psutil.Process(info["pid"]).children(recursive=True)}
    except psutil.Error:
        pass
    cli("stop")
    assert not (tmp_path / "cluster.json").exists()
    assert not wait_gone(pids | more, timeout=20)
    assert_clean(set())


@pytest.fixture
def local_cluster():
    """``local_cluster(head_cpus, *node_args)``: real node daemons on this
    machine (``cluster_utils.Cluster``), the driver connected; every
    process gone and nothing left behind at the end."""
    from miniray.cluster_utils import Cluster
    made = []

    def make(head_cpus=1, *nodes):
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus},
                    shutdown_at_exit=False)
        for args in nodes:
            c.add_node(**args)
        c.wait_for_nodes()
        miniray.init(address=c.address)
        made.append(c)
        return c
    yield make
    pids = set()
    for c in made:
        for n in c.list_all_nodes():
            try:
                pids |= {n.process.pid} | {p.pid for p in
                                           psutil.Process(n.process.pid).children(recursive=True)}
            except psutil.Error:
                pass
    miniray.shutdown()
    for c in made:
        c.shutdown()
    assert not wait_gone(pids, timeout=20)
    assert_clean(set())
