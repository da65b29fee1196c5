"""The same benchmarks on multiprocessing.Pool, where they apply.

The Pool uses the platform's default start method (fork on Linux with
Python <= 3.13), which is what a user typing `Pool(2)` gets; the method used
is recorded in the notes. Task functions are module-level (Pool pickles them
by reference).
"""
from __future__ import annotations

import multiprocessing as mp
import time

import numpy as np

from .bench_runtime import ARG200_N, ARG200_TASKS, _touch_expected
from .common import (PSSSampler, memory_totals, now, pss_total_mb,
                     runtime_procs, track, wait_gone, warmup)


def _one():
    return 1


def _ident(i):
    return i


def _touch(a):
    return float(a[::512].sum())


def _notes():
    return {"_start_method": mp.get_start_method()}


def bench_init(quick=False):
    t0 = now()
    pool = mp.Pool(2)
    r = pool.apply(_one)
    t1 = now()
    assert r == 1
    procs = runtime_procs()
    track(procs)
    t2 = now()
    pool.close()
    pool.join()
    t3 = now()
    gone, _left = wait_gone(procs)
    return {"init_first_s": t1 - t0, "shutdown_s": t3 - t2,
            "shutdown_gone_s": (t3 - t2) + gone, **_notes()}


def bench_memory(quick=False):
    with mp.Pool(2) as pool:
        assert pool.apply(_one) == 1
        time.sleep(3.0)
        procs = runtime_procs()
        track(procs)
        m = memory_totals(procs, detail=True)
        me = memory_totals(procs[:1])
        out = {"idle_rss_mb": m["rss_mb"], "idle_pss_mb": m["pss_mb"],
               "idle_nprocs": m["nprocs"], "idle_driver_rss_mb": me["rss_mb"],
               "_procs": m["procs"], **_notes()}
        pool.close()
        pool.join()
    return out


def bench_tasks(quick=False):
    n_sync = 1000
    n_async = 10_000
    with mp.Pool(2) as pool:
        warmup(lambda: pool.apply(_one), seconds=1.0)
        t0 = now()
        for _ in range(n_sync):
            pool.apply(_one)
        t1 = now()
        rs = [pool.apply_async(_one) for _ in range(n_async)]
        s = sum(r.get() for r in rs)
        t2 = now()
        assert s == n_async
        res = pool.map_async(_ident, range(n_async)).get()
        t3 = now()
        assert res[-1] == n_async - 1
        pool.close()
        pool.join()
    return {"tasks_sync_per_s": n_sync / (t1 - t0),
            "tasks_async_per_s": n_async / (t2 - t1),
            "tasks_map_async_per_s": n_async / (t3 - t2), **_notes()}


def bench_arg200(quick=False):
    """The array itself is pickled to each of the 20 tasks (pool.map,
    chunksize=1): Pool has no shared object store."""
    arr = np.ones(ARG200_N, dtype=np.float64)
    expect = _touch_expected()
    with mp.Pool(2) as pool:
        pool.map(_touch, [np.ones(512 * 8)] * 4, chunksize=1)
        time.sleep(0.5)
        base = pss_total_mb()
        sampler = PSSSampler().start()
        t0 = now()
        res = pool.map(_touch, [arr] * ARG200_TASKS, chunksize=1)
        t1 = now()
        peak = sampler.stop()
        assert res == [expect] * ARG200_TASKS
        pool.close()
        pool.join()
    return {"arg200_direct_s": t1 - t0, "arg200_direct_pss_peak_mb": peak - base,
            **_notes()}


BENCHES = {
    "init": bench_init,
    "memory": bench_memory,
    "tasks": bench_tasks,
    "arg200": bench_arg200,
}
