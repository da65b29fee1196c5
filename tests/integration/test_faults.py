"""Faults: crashed workers, retries, cancellation, dead drivers and nodes."""
from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

import miniray
from miniray.exceptions import (NodeDiedError, TaskCancelledError, WorkerCrashedError)
from tests.conftest import assert_clean, run_driver, wait_gone


@miniray.remote(max_retries=0)
def exit_hard():
    os._exit(3)


@miniray.remote(max_retries=0)
def kill_self():
    os.kill(os.getpid(), signal.SIGKILL)


@miniray.remote(max_retries=0)
def segfault():
    import ctypes
    ctypes.string_at(0)


@miniray.remote
def ok(x):
    return x


@pytest.mark.parametrize("fn, cause", [(exit_hard, "exited with code 3"),
                                       (kill_self, "SIGKILL"),
                                       (segfault, "SIGSEGV")])
def test_worker_crash_fails_task_and_worker_is_replaced(ray_shared, fn, cause):
    with pytest.raises(WorkerCrashedError) as info:
        miniray.get(fn.remote(), timeout=30)
    msg = str(info.value)
    assert cause in msg and fn._name in msg and "pid=" in msg
    assert miniray.get([ok.remote(i) for i in range(4)], timeout=30) == list(range(4))


def test_crashed_task_is_retried(ray_shared, tmp_path):
    marker = tmp_path / "attempts"

    @miniray.remote(max_retries=2)
    def crash_twice(path):
        n = len(open(path).read()) if os.path.exists(path) else 0
        open(path, "a").write("x")
        if n < 2:
            os._exit(1)
        return n
    assert miniray.get(crash_twice.remote(str(marker)), timeout=60) == 2

    marker2 = tmp_path / "attempts2"

    @miniray.remote(max_retries=1)
    def always_crash(path):
        open(path, "a").write("x")
        os._exit(1)
    with pytest.raises(WorkerCrashedError, match="retries"):
        miniray.get(always_crash.remote(str(marker2)), timeout=60)
    assert len(marker2.read_text()) == 2


def test_cancel_queued_task(ray_factory):
    ray = ray_factory(num_cpus=1)

    @ray.remote
    def block(seconds):
        time.sleep(seconds)
        return seconds
    running = block.remote(2)
    queued = block.remote(1)
    ray.cancel(queued)
    with pytest.raises(TaskCancelledError):
        ray.get(queued, timeout=30)
    assert ray.get(running, timeout=30) == 2


def test_cancel_running_task_interrupts(ray_shared):
    @miniray.remote
    def sleepy():
        time.sleep(60)
    ref = sleepy.remote()
    time.sleep(0.5)
    t0 = time.monotonic()
    miniray.cancel(ref)
    with pytest.raises(TaskCancelledError):
        miniray.get(ref, timeout=30)
    assert time.monotonic() - t0 < 10
    assert miniray.get(ok.remote(1), timeout=30) == 1


def test_force_cancel_kills_worker(ray_shared):
    @miniray.remote
    def busy():
        while True:
            pass
    ref = busy.remote()
    time.sleep(0.5)
    miniray.cancel(ref, force=True)
    with pytest.raises(TaskCancelledError):
        miniray.get(ref, timeout=30)
    assert miniray.get(ok.remote(2), timeout=30) == 2


def test_cancel_validation(ray_shared):
    with pytest.raises(TypeError):
        miniray.cancel("not a ref")


def test_node_torn_down_when_driver_killed():
    proc = run_driver("""
        import os, sys, time, miniray, psutil
        miniray.init(num_cpus=2, object_store_memory=64 * 2**20)
        @miniray.remote
        def f(): return os.getpid()
        miniray.get([f.remote() for _ in range(4)])
        me = psutil.Process()
        print(" ".join(str(p.pid) for p in me.children(recursive=True)), flush=True)
        os.kill(os.getpid(), 9)
    """)
    assert proc.returncode == -9, proc.stderr
    pids = [int(p) for p in proc.stdout.split()]
    assert len(pids) >= 3
    assert not wait_gone(pids, timeout=15), "node or workers outlived the killed driver"


def test_node_torn_down_when_driver_exits_without_shutdown():
    proc = run_driver("""
        import miniray, psutil
        miniray.init(num_cpus=1, object_store_memory=64 * 2**20)
        print(" ".join(str(p.pid) for p in psutil.Process().children(recursive=True)), flush=True)
    """)
    assert proc.returncode == 0, proc.stderr
    pids = [int(p) for p in proc.stdout.split()]
    assert pids and not wait_gone(pids, timeout=15)


def test_dead_node_gives_node_died_error(ray_start):
    rt = miniray._runtime.current()
    pids = {rt.node_proc.pid} | {p.pid for p in psutil.Process(rt.node_proc.pid).children()}
    rt.node_proc.kill()
    rt.node_proc.wait()

    @miniray.remote
    def f():
        return 1
    t0 = time.monotonic()
    with pytest.raises(NodeDiedError, match="node"):
        for _ in range(50):
            miniray.get(f.remote(), timeout=10)
            time.sleep(0.05)
    assert time.monotonic() - t0 < 10
    assert not wait_gone(pids, timeout=15), "workers outlived their node"


def test_print_in_task_reaches_driver():
    proc = run_driver("""
        import miniray
        miniray.init(num_cpus=1, object_store_memory=64 * 2**20)
        @miniray.remote
        def talk(x):
            print("hello from task", x)
            return x
        miniray.get(talk.remote(7))
        miniray.shutdown()
    """)
    assert proc.returncode == 0, proc.stderr
    lines = [l for l in proc.stdout.splitlines() if "hello from task 7" in l]
    assert lines and lines[0].startswith("(talk pid="), proc.stdout


def test_init_twice_and_shutdown(ray_factory):
    ray = ray_factory(num_cpus=1)
    with pytest.raises(RuntimeError, match="ignore_reinit_error"):
        ray.init()
    ctx = ray.init(ignore_reinit_error=True)
    assert ctx is not None and ray.is_initialized()


def test_shutdown_is_clean_and_repeatable():
    for _ in range(2):
        miniray.init(num_cpus=1, object_store_memory=64 * 2**20)
        rt = miniray._runtime.current()
        pids = {rt.node_proc.pid} | set(
            p.pid for p in psutil.Process(rt.node_proc.pid).children(recursive=True))
        assert miniray.get(ok.remote(1)) == 1
        miniray.shutdown()
        assert not miniray.is_initialized()
        assert_clean(pids)
    miniray.shutdown()  # a no-op when not running


def test_init_validation():
    with pytest.raises(ValueError):
        miniray.init(num_cpus=-1)
    with pytest.raises(TypeError, match="bogus"):
        miniray.init(bogus=1)
    with pytest.raises(ValueError):
        miniray.init(resources={"CPU": 2})
    assert not miniray.is_initialized()


def test_api_before_init_is_clear():
    with pytest.raises(miniray.exceptions.RuntimeNotInitializedError, match="init"):
        miniray.get(miniray.ObjectRef(b"x" * 16))
