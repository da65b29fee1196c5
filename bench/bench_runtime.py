"""Benchmarks of a runtime with Ray's core API.

Each benchmark is `bench_X(ray, quick=False) -> {metric: value}`, where `ray`
is the module under test (``ray`` or ``miniray``). Only Ray's public API is
used on it: init/shutdown, remote (functions, classes, num_cpus=0),
.remote(), get, put, wait. Remote functions are defined inside the benchmark
functions (closures over the module), as a user's script would define them;
they travel by value (cloudpickle) in both runtimes.

Every benchmark runs in a fresh process (the runner sees to it); a key
starting with "_" in the returned dict carries notes, not metrics.
"""
from __future__ import annotations

import time

from .common import (GiB, PSSSampler, Runtime, init_kwargs, median, now,
                     pss_total_mb, runtime_procs, track, wait_gone, warmup,
                     memory_totals)


# numpy is imported by the benchmarks that use it, not by the harness: the
# idle-memory figure is the runtime's, and a driver of a runtime that does
# not import numpy itself (miniray) would otherwise carry ~5 MiB of ours.
def _np():
    import numpy
    return numpy


def _bench_transfer(ray, quick=False):
    from .bench_transfer import bench_transfer
    return bench_transfer(ray, quick)


# ---------------------------------------------------------------- init ----

def bench_init(ray, quick=False):
    """init() + one trivial task's result; then shutdown()."""

    @ray.remote
    def one():
        return 1

    t0 = now()
    ray.init(**init_kwargs(ray))
    r = ray.get(one.remote())
    t1 = now()
    assert r == 1
    procs = runtime_procs(ray)
    track(procs)
    t2 = now()
    ray.shutdown()
    t3 = now()
    gone, left = wait_gone(procs)
    out = {"init_first_s": t1 - t0, "shutdown_s": t3 - t2,
           "shutdown_gone_s": (t3 - t2) + gone, "_nprocs": len(procs)}
    if left:
        out["_leftover_after_shutdown"] = left
    return out


# -------------------------------------------------------------- memory ----

def bench_memory(ray, quick=False):
    """Memory of driver + all runtime processes after init and one task."""

    @ray.remote
    def one():
        return 1

    with Runtime(ray):
        assert ray.get(one.remote()) == 1
        time.sleep(3.0)  # let the runtime finish starting what it starts
        procs = runtime_procs(ray)
        track(procs)
        m = memory_totals(procs, detail=True)
        me = memory_totals(runtime_procs(None)[:1])
        return {"idle_rss_mb": m["rss_mb"], "idle_pss_mb": m["pss_mb"],
                "idle_nprocs": m["nprocs"], "idle_driver_rss_mb": me["rss_mb"],
                "_procs": m["procs"]}


# --------------------------------------------------------- small objects ----

def bench_small(ray, quick=False):
    """put/get of small ints, one call at a time (1000 per round)."""
    n = 1000
    rounds = 3
    with Runtime(ray):
        warmup(lambda: ray.get(ray.put(0)), seconds=1.0)
        puts, gets = [], []
        for _ in range(rounds):
            t0 = now()
            refs = [ray.put(i) for i in range(n)]
            t1 = now()
            for ref in refs:
                ray.get(ref)
            t2 = now()
            puts.append(n / (t1 - t0))
            gets.append(n / (t2 - t1))
            assert ray.get(refs[7]) == 7
            del refs
        return {"put_small_per_s": median(puts), "get_small_per_s": median(gets)}


# ---------------------------------------------------------------- wait ----

def bench_wait(ray, quick=False):
    """wait(refs, num_returns=1000) over 1000 ready task results."""

    @ray.remote
    def ident(i):
        return i

    k = 20 if quick else 50
    with Runtime(ray):
        refs = [ident.remote(i) for i in range(1000)]
        assert ray.get(refs)[999] == 999
        warmup(lambda: ray.wait(refs, num_returns=len(refs)), seconds=0.5)
        t0 = now()
        for _ in range(k):
            ready, not_ready = ray.wait(refs, num_returns=len(refs))
        t1 = now()
        assert len(ready) == 1000 and not not_ready
        return {"wait_1k_per_s": k / (t1 - t0)}


# -------------------------------------------------------- large objects ----

def bench_large(ray, quick=False):
    """1 GiB float64 array: first put, repeated put (after freeing the
    first), get (zero-copy in Ray)."""
    np = _np()
    arr = np.ones(GiB // 8, dtype=np.float64)  # pre-faulted in the driver
    with Runtime(ray):
        ray.get(ray.put(np.ones(1024)))  # warm the put path with a tiny array
        t0 = now()
        ref = ray.put(arr)
        t1 = now()
        first = arr.nbytes / (t1 - t0) / 1e9
        gets = []
        for _ in range(5):
            t0 = now()
            x = ray.get(ref)
            t1 = now()
            assert x.nbytes == arr.nbytes and x[12345] == 1.0
            gets.append((t1 - t0) * 1e3)
            del x
        del ref
        time.sleep(1.0)  # let the store free the first copy
        reps = []
        for _ in range(3):
            t0 = now()
            ref = ray.put(arr)
            t1 = now()
            reps.append(arr.nbytes / (t1 - t0) / 1e9)
            del ref
            time.sleep(0.5)
    # A first put once the runtime has settled (1 s after init): what a
    # program that starts, loads its data, then puts, sees.
    with Runtime(ray):
        ray.get(ray.put(np.ones(1024)))
        time.sleep(1.0)
        t0 = now()
        ref = ray.put(arr)
        t1 = now()
        settled = arr.nbytes / (t1 - t0) / 1e9
        del ref
        return {"put_1gib_first_gbps": first, "put_1gib_first_settled_gbps": settled,
                "put_1gib_repeat_gbps": median(reps),
                "get_1gib_ms": median(gets), "_get_first_ms": gets[0],
                "_repeat_samples": reps}


# --------------------------------------------------------------- tasks ----

def bench_tasks(ray, quick=False):
    """Trivial tasks: sync (submit, get, one by one) and async (10k
    submitted, then one get of the list)."""

    @ray.remote
    def one():
        return 1

    n_sync = 1000
    n_async = 10_000
    with Runtime(ray):
        warmup(lambda: ray.get(one.remote()), seconds=1.0)
        ray.get([one.remote() for _ in range(1000)])
        t0 = now()
        for _ in range(n_sync):
            ray.get(one.remote())
        t1 = now()
        refs = [one.remote() for _ in range(n_async)]
        s = sum(ray.get(refs))
        t2 = now()
        assert s == n_async
        return {"tasks_sync_per_s": n_sync / (t1 - t0),
                "tasks_async_per_s": n_async / (t2 - t1)}


# -------------------------------------------------------------- actors ----

class _Server:
    def m(self):
        return 1


def bench_actors(ray, quick=False):
    """Actor method calls: 1:1 (driver -> one actor) sync and async; n:n
    (n=2 caller tasks, each calling its own actor) sync and async.
    Server actors are declared num_cpus=0, as in Ray's microbenchmark."""
    Server = ray.remote(num_cpus=0)(_Server)

    @ray.remote
    def caller_sync(a, n):
        for _ in range(n):
            ray.get(a.m.remote())
        return n

    @ray.remote
    def caller_async(a, n):
        return len(ray.get([a.m.remote() for _ in range(n)]))

    n_sync = 1000
    n_async = 10_000
    n_pairs = 2
    with Runtime(ray):
        a = Server.remote()
        assert ray.get(a.m.remote()) == 1
        warmup(lambda: ray.get(a.m.remote()), seconds=1.0)
        ray.get([a.m.remote() for _ in range(1000)])
        t0 = now()
        for _ in range(n_sync):
            ray.get(a.m.remote())
        t1 = now()
        s = sum(ray.get([a.m.remote() for _ in range(n_async)]))
        t2 = now()
        assert s == n_async
        out = {"actor_sync_1to1_per_s": n_sync / (t1 - t0),
               "actor_async_1to1_per_s": n_async / (t2 - t1)}

        servers = [Server.remote() for _ in range(n_pairs)]
        ray.get([s.m.remote() for s in servers])
        ray.get([caller_sync.remote(s, 100) for s in servers])  # warm callers
        ray.get([caller_async.remote(s, 1000) for s in servers])
        per = n_sync
        t0 = now()
        done = ray.get([caller_sync.remote(s, per) for s in servers])
        t1 = now()
        assert sum(done) == per * n_pairs
        per_a = n_async // n_pairs
        done = ray.get([caller_async.remote(s, per_a) for s in servers])
        t2 = now()
        assert sum(done) == per_a * n_pairs
        out["actor_sync_nton_per_s"] = per * n_pairs / (t1 - t0)
        out["actor_async_nton_per_s"] = per_a * n_pairs / (t2 - t1)
        return out


# ------------------------------------------------------- 200 MB argument ----

ARG200_N = 25_000_000  # float64 -> 200 MB
ARG200_TASKS = 20


def _touch_expected():
    return float(len(range(0, ARG200_N, 512)))


def bench_arg200(ray, quick=False):
    """A 200 MB array to 20 tasks that read every page of it.
    ref: ray.put once, the ref passed to the 20 tasks (the Ray idiom).
    direct: the array itself passed to each .remote() call.
    Time is from the driver holding the array to all 20 results; PSS growth
    is the summed PSS of all runtime processes (driver included) over a
    baseline taken with the array already in the driver."""
    np = _np()

    @ray.remote
    def touch(a):
        return float(a[::512].sum())  # one float64 every 4 KiB: every page

    arr = np.ones(ARG200_N, dtype=np.float64)
    expect = _touch_expected()
    with Runtime(ray):
        ray.get([touch.remote(np.ones(512 * 8)) for _ in range(4)])  # start workers
        time.sleep(0.5)
        base = pss_total_mb(ray)
        sampler = PSSSampler(ray).start()
        t0 = now()
        ref = ray.put(arr)
        res = ray.get([touch.remote(ref) for _ in range(ARG200_TASKS)])
        t1 = now()
        peak = sampler.stop()
        end = pss_total_mb(ray)
        assert res == [expect] * ARG200_TASKS, res[:3]
        out = {"arg200_ref_s": t1 - t0, "arg200_ref_pss_growth_mb": end - base,
               "arg200_ref_pss_peak_mb": peak - base}
        del ref, res
        time.sleep(1.0)
        base = pss_total_mb(ray)
        sampler = PSSSampler(ray).start()
        t0 = now()
        res = ray.get([touch.remote(arr) for _ in range(ARG200_TASKS)])
        t1 = now()
        peak = sampler.stop()
        assert res == [expect] * ARG200_TASKS, res[:3]
        out["arg200_direct_s"] = t1 - t0
        out["arg200_direct_pss_peak_mb"] = peak - base
        return out


# -------------------------------------------------------------- nested ----

def bench_nested(ray, quick=False):
    """10 outer tasks, each submitting 10 inner tasks and getting them.
    cold: the first run in a fresh runtime; warm: median of the next runs."""

    @ray.remote
    def inner():
        return 1

    @ray.remote
    def outer():
        return sum(ray.get([inner.remote() for _ in range(10)]))

    runs = 3
    with Runtime(ray):
        assert ray.get(inner.remote()) == 1
        times = []
        for _ in range(1 + runs):
            t0 = now()
            r = ray.get([outer.remote() for _ in range(10)])
            t1 = now()
            assert r == [10] * 10
            times.append(t1 - t0)
        return {"nested_cold_s": times[0], "nested_warm_s": median(times[1:])}


# ------------------------------------------------------------ two nodes ----

def bench_cluster(ray, quick=False):
    """Two nodes on this machine (each runtime's own Cluster utility): tasks
    pinned to the second node by a custom resource, sync and async, and a
    256 MiB array put on the head and summed by a task on the second node."""
    np = _np()
    import importlib
    cluster_utils = importlib.import_module(ray.__name__ + ".cluster_utils")
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": 768 * 2**20})
    cluster.add_node(num_cpus=1, resources={"far": 1}, object_store_memory=768 * 2**20)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    try:
        @ray.remote(resources={"far": 0.001})
        def one():
            return 1

        @ray.remote(resources={"far": 0.001})
        def total(a):
            return float(a[::4096].sum())

        warmup(lambda: ray.get(one.remote()), seconds=1.0)
        n_sync, n_async = (300, 2000) if quick else (1000, 5000)
        t0 = now()
        for _ in range(n_sync):
            ray.get(one.remote())
        t1 = now()
        assert sum(ray.get([one.remote() for _ in range(n_async)])) == n_async
        t2 = now()
        arr = np.ones(256 * 2**20 // 8)
        times = []
        for _ in range(2 if quick else 3):
            ref = ray.put(arr)
            t3 = now()
            assert ray.get(total.remote(ref)) == float(arr[::4096].sum())
            times.append(now() - t3)
            del ref
        return {"cross_node_sync_per_s": n_sync / (t1 - t0),
                "cross_node_async_per_s": n_async / (t2 - t1),
                "cross_node_256mib_s": median(times)}
    finally:
        ray.shutdown()
        cluster.shutdown()


BENCHES = {
    "init": bench_init,
    "memory": bench_memory,
    "small": bench_small,
    "wait": bench_wait,
    "large": bench_large,
    "tasks": bench_tasks,
    "actors": bench_actors,
    "arg200": bench_arg200,
    "nested": bench_nested,
    "cluster": bench_cluster,
    "transfer": _bench_transfer,
}
