"""Stress tests of the clients' leader/follower reads (``_client_reader``).

Many threads of one process share one connection: whichever thread waits
reads the socket for everyone; the ``miniray-io`` thread takes over as the
permanent reader once futures / ``await`` are used.  These tests drive the
real runtime from many threads at once and check that every call completes
in bounded time, gives the right value, and that nothing stays pinned.
"""
from __future__ import annotations

import asyncio
import gc
import random
import sys
import threading
import time
import traceback

import numpy as np
import pytest

import miniray
from tests.conftest import wait_for
from miniray._protocol import Query
from miniray.exceptions import GetTimeoutError, TaskCancelledError

pytestmark = pytest.mark.timeout(60)


# -- helpers -------------------------------------------------------------------------------

def client():
    return miniray._runtime.current().client


def stats():
    return client().query(Query.STATS)


def dump_threads() -> str:
    frames = sys._current_frames()
    out = []
    for t in threading.enumerate():
        f = frames.get(t.ident)
        if f is not None:
            out.append(f"--- {t.name}\n" + "".join(traceback.format_stack(f)))
    return "\n".join(out)


def run_threads(targets, timeout):
    """Run each callable in its own daemon thread; fail (with stacks) if one
    is still running after ``timeout`` or raised."""
    errors = []

    def wrap(fn):
        def run():
            try:
                fn()
            except BaseException as exc:   # noqa: BLE001 - reported below
                errors.append((fn, exc, traceback.format_exc()))
        return run

    threads = [threading.Thread(target=wrap(fn), daemon=True, name=f"stress-{i}")
               for i, fn in enumerate(targets)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"threads still running after {timeout} s: {stuck}\n{dump_threads()}"
    assert not errors, "\n".join(tb for _, _, tb in errors)




def assert_arena_released(timeout=10.0):
    """Every arena object is freed once the test dropped its refs: nothing
    stays pinned by a reply that no caller took."""
    gc.collect()
    ok = wait_for(lambda: stats()["arena_objects"] == 0, timeout)
    assert ok, f"arena objects still allocated after all refs were dropped: {stats()}"


@miniray.remote
def _collect():
    time.sleep(0.3)
    return gc.collect()


def collect_in_workers(n):
    miniray.get([_collect.remote() for _ in range(2 * n)], timeout=20)


@miniray.remote
def sleep_return(seconds, value):
    time.sleep(seconds)
    return value


@miniray.remote
def add(a, b):
    return a + b


@miniray.remote
def big(n, seed):
    return np.full(n, seed, dtype=np.int64)


# -- tests -------------------------------------------------------------------------------------

def test_many_threads_sync_get_put_wait(ray_factory):
    ray_factory(num_cpus=4, object_store_memory=256 * 2**20)
    stop_at = time.monotonic() + 3.0

    def worker(seed):
        def run():
            rng = random.Random(seed)
            i = 0
            while time.monotonic() < stop_at:
                i += 1
                op = rng.randrange(6)
                if op == 0:
                    v = (seed, i, "x" * rng.randrange(100))
                    assert miniray.get(miniray.put(v)) == v
                elif op == 1:
                    arr = np.full(40_000, i, dtype=np.int64)        # 320 KB: arena
                    r = miniray.put(arr)
                    got = miniray.get(r)
                    assert got[0] == i and got[-1] == i
                    del got, r
                elif op == 2:
                    refs = [add.remote(i, k) for k in range(5)]
                    assert miniray.get(refs) == [i + k for k in range(5)]
                elif op == 3:
                    refs = [sleep_return.remote(0.001 * k, k) for k in range(4)]
                    ready, rest = miniray.wait(refs, num_returns=2, timeout=5)
                    assert len(ready) >= 2 and len(ready) + len(rest) == 4
                    assert miniray.get(refs) == [0, 1, 2, 3]
                elif op == 4:
                    r = sleep_return.remote(0.05, i)
                    try:
                        assert miniray.get(r, timeout=0.001) == i
                    except GetTimeoutError:
                        pass
                    assert miniray.get(r, timeout=10) == i
                else:
                    r = big.remote(30_000, i)
                    a = miniray.get(r, timeout=10)
                    assert a[0] == i and len(a) == 30_000
                    del a, r
        return run

    run_threads([worker(s) for s in range(12)], timeout=30)
    c = client()
    assert not c._pending, f"requests still pending: {list(c._pending)[:5]}"
    assert_arena_released()


def test_futures_and_sync_gets_mixed_with_reader_switch(ray_factory):
    """Sync getters are reading the socket when the first future switches the
    client to reader mode; everything must still complete."""
    ray_factory(num_cpus=4, object_store_memory=256 * 2**20)
    c = client()
    assert not c._reader.permanent
    stop_at = time.monotonic() + 3.0
    switched = threading.Event()

    def sync_getter(seed):
        def run():
            i = 0
            while time.monotonic() < stop_at:
                i += 1
                assert miniray.get(sleep_return.remote(0.02, (seed, i)), timeout=20) == (seed, i)
        return run

    def future_user():
        time.sleep(0.3)          # the sync getters are leading the reads by now
        i = 0
        while time.monotonic() < stop_at:
            i += 1
            futs = [sleep_return.remote(0.01, k).future() for k in range(5)]
            switched.set()
            assert [f.result(timeout=20) for f in futs] == list(range(5))
            assert miniray.get(add.remote(i, 1), timeout=20) == i + 1

    def async_user():
        async def main():
            await asyncio.sleep(0.35)
            i = 0
            while time.monotonic() < stop_at:
                i += 1
                vals = await asyncio.gather(*[sleep_return.remote(0.005, k) for k in range(4)])
                assert vals == list(range(4))
                assert await add.remote(i, 2) == i + 2
        asyncio.run(main())

    run_threads([sync_getter(s) for s in range(6)] + [future_user, async_user], timeout=30)
    assert switched.is_set() and c._reader.permanent
    assert not c._pending


def test_get_timeouts_racing_replies_release_pins(ray_factory):
    """gets whose timeout expires about when the (arena-sized) reply arrives.
    Whatever the outcome of each get, no reply may stay pinned."""
    ray_factory(num_cpus=4, object_store_memory=256 * 2**20)
    stop_at = time.monotonic() + 4.0
    counts = {"timeout": 0, "value": 0}
    lock = threading.Lock()

    @miniray.remote
    def late_big(delay, seed):
        time.sleep(delay)
        return np.full(20_000, seed, dtype=np.int64)      # 160 KB: arena

    def worker(seed):
        def run():
            rng = random.Random(seed)
            i = 0
            while time.monotonic() < stop_at:
                i += 1
                delay = rng.uniform(0.0, 0.02)
                r = late_big.remote(delay, i)
                try:
                    a = miniray.get(r, timeout=delay + rng.uniform(0.0, 0.02))
                    kind = "value"
                except GetTimeoutError:
                    a = miniray.get(r, timeout=20)
                    kind = "timeout"
                assert a[0] == i
                del a, r
                with lock:
                    counts[kind] += 1
        return run

    run_threads([worker(s) for s in range(10)], timeout=30)
    assert counts["timeout"] > 0 and counts["value"] > 0, counts
    assert_arena_released()


def test_task_with_two_threads_calling_get(ray_factory):
    """Inside a task, the main thread and a helper thread both block in get
    (one leads the reads, the other follows)."""
    ray_factory(num_cpus=4, object_store_memory=256 * 2**20)

    @miniray.remote
    def two_getters(n, seed):
        import threading as th
        refs_a = [sleep_return.remote(0.01 * (k % 3), (seed, "a", k)) for k in range(n)]
        refs_b = [sleep_return.remote(0.01 * (k % 4), (seed, "b", k)) for k in range(n)]
        out = {}

        def helper():
            out["b"] = [miniray.get(r, timeout=30) for r in refs_b]
            out["b_wait"] = len(miniray.wait(refs_b, num_returns=n, timeout=30)[0])
        t = th.Thread(target=helper)
        t.start()
        out["a"] = [miniray.get(r, timeout=30) for r in refs_a]
        t.join(30)
        assert not t.is_alive(), "helper thread's get hung"
        return out

    for rnd in range(3):
        outs = miniray.get([two_getters.remote(8, (rnd, s)) for s in range(4)], timeout=40)
        for s, out in enumerate(outs):
            seed = (rnd, s)
            assert out["a"] == [(seed, "a", k) for k in range(8)]
            assert out["b"] == [(seed, "b", k) for k in range(8)]
            assert out["b_wait"] == 8


def test_cancel_tasks_blocked_in_get(ray_factory):
    """Cancel tasks while they block in get (the main thread reading the
    socket itself, or following a helper thread that reads)."""
    ray_factory(num_cpus=4, object_store_memory=256 * 2**20)

    @miniray.remote
    def blocked_in_get(inner, helper_reads):
        import threading as th
        if helper_reads:
            th.Thread(target=lambda: miniray.get(inner[0]), daemon=True).start()
            time.sleep(0.05)
        return miniray.get(inner[0])

    for rnd in range(3):
        slow = [sleep_return.remote(30, k) for k in range(4)]
        outers = [blocked_in_get.remote([s], k % 2 == 1) for k, s in enumerate(slow)]
        time.sleep(0.5)
        t0 = time.monotonic()
        for r in outers:
            miniray.cancel(r)
        for r in outers:
            with pytest.raises(TaskCancelledError):
                miniray.get(r, timeout=10)
        assert time.monotonic() - t0 < 10
        for s in slow:
            miniray.cancel(s)
        for s in slow:
            with pytest.raises(TaskCancelledError):
                miniray.get(s, timeout=10)
    # the pool still works
    assert miniray.get([add.remote(k, 1) for k in range(8)], timeout=20) == list(range(1, 9))


def test_cancel_races_get_reply_in_worker(ray_factory):
    """The cancel and the reply of the get the task is blocked in arrive at
    about the same time: the task ends either way and nothing stays pinned."""
    ray_factory(num_cpus=4, object_store_memory=256 * 2**20)

    @miniray.remote
    def waits_for(refs):
        a = miniray.get(refs[0])
        return int(a[0])

    # Import numpy in every worker first, so that the cancels race the
    # replies rather than a first import (see test_client_interrupts).
    collect_in_workers(4)            # (runs this module, which imports numpy, everywhere)

    for rnd in range(20):
        d = 0.05 + 0.002 * (rnd % 5)
        inner = sleep_return.remote(d, np.full(30_000, rnd, dtype=np.int64))
        outer = waits_for.remote([inner])
        time.sleep(d + 0.01 * ((rnd % 3) - 1))
        miniray.cancel(outer)
        try:
            assert miniray.get(outer, timeout=10) == rnd
        except TaskCancelledError:
            pass
        del inner, outer
    assert miniray.get(add.remote(1, 1), timeout=10) == 2
    # Collect in every worker, so that only pins are checked here (cycles
    # are test_client_interrupts' business).
    collect_in_workers(4)
    assert_arena_released()


def test_node_killed_while_eight_threads_wait(ray_start):
    rt = miniray._runtime.current()
    slow = [sleep_return.remote(60, k) for k in range(3)]
    started = threading.Barrier(9)
    results = {}

    def record(name, fn):
        def run():
            started.wait(10)
            t0 = time.monotonic()
            try:
                fn()
                results[name] = ("returned", time.monotonic() - t0)
            except BaseException as exc:   # noqa: BLE001
                results[name] = (type(exc).__name__, time.monotonic() - t0)
        return run

    async def awaiting():
        return await slow[2]

    targets = [
        record("get0", lambda: miniray.get(slow[0])),
        record("get1", lambda: miniray.get(slow[1])),
        record("get_list", lambda: miniray.get(slow)),
        record("get_timeout", lambda: miniray.get(slow[0], timeout=50)),
        record("wait", lambda: miniray.wait(slow, num_returns=3)),
        record("wait_timeout", lambda: miniray.wait(slow, num_returns=3, timeout=50)),
        record("future", lambda: slow[1].future().result(timeout=50)),
        record("await", lambda: asyncio.run(awaiting())),
    ]
    threads = [threading.Thread(target=t, daemon=True) for t in targets]
    for t in threads:
        t.start()
    started.wait(10)
    time.sleep(0.5)
    rt.node_proc.kill()
    rt.node_proc.wait()
    for t in threads:
        t.join(15)
    assert len(results) == 8, f"waiters that never returned: {results}\n{dump_threads()}"
    bad = {k: v for k, v in results.items() if v[0] != "NodeDiedError" or v[1] > 10}
    assert not bad, f"expected NodeDiedError within 10 s for every waiter: {results}"


def test_threads_making_the_first_call_of_a_function_at_once(ray_factory):
    """The first call registers the function and its signature: threads
    racing into it all submit (one saw the key set, the signature not yet)."""
    ray_factory(num_cpus=1)
    for round_ in range(10):
        def body(x, round_=round_):
            return x + round_
        f = miniray.remote(body)

        class Box:
            def __init__(self, v):
                self.v = v

            def get(self):
                return self.v
        A = miniray.remote(num_cpus=0)(Box)
        start = threading.Barrier(6)
        results, errors = [], []

        def go(i):
            try:
                start.wait()
                results.append(miniray.get(f.remote(i), timeout=30))
                results.append(miniray.get(A.remote(i).get.remote(), timeout=30) + round_)
            except BaseException as exc:
                errors.append(repr(exc))
        threads = [threading.Thread(target=go, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert sorted(results) == sorted([i + round_ for i in range(6)] * 2)
