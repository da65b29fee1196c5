"""Shared pieces of the benchmark suite.

* the registry of benchmarks and metrics (units, direction, targets),
* how each runtime is initialised (the same kwargs for every benchmark),
* process accounting: which processes belong to a runtime, their RSS/PSS,
* small timing helpers.

Nothing here imports ray or miniray: the runtime module is always passed in.
"""
from __future__ import annotations

import json
import os
import statistics
import threading
import time

import psutil

GiB = 1 << 30
MiB = 1 << 20

# --------------------------------------------------------------------------
# Backends and benchmarks
# --------------------------------------------------------------------------

RUNTIMES = ("miniray", "ray")          # modules with Ray's core API
ALL_BACKENDS = ("miniray", "ray", "mp", "limits")

# benchmark name -> backends it applies to (in addition, "limits" is its own backend)
BENCHES = {
    "init": ("miniray", "ray", "mp"),
    "memory": ("miniray", "ray", "mp"),
    "small": ("miniray", "ray"),
    "wait": ("miniray", "ray"),
    "large": ("miniray", "ray"),
    "tasks": ("miniray", "ray", "mp"),
    "actors": ("miniray", "ray"),
    "arg200": ("miniray", "ray", "mp"),
    "nested": ("miniray", "ray"),
    "cluster": ("miniray", "ray"),
    # "limits" here: the raw TCP copy of the same bytes, measured in the same
    # repetition as the runtimes (bench_transfer.bench_raw_tcp)
    "transfer": ("miniray", "ray", "limits"),
    "limits": ("limits",),
}

# ray.init kwargs per runtime. Ray gets include_dashboard=False (leaner and
# faster to start than its default, so the comparison is not flattering to
# miniray); everything else is Ray's default. RAY_USAGE_STATS_ENABLED=0 is set
# in the environment by the runner (no usage-stats reporting thread).
INIT_KWARGS = {
    "ray": {"num_cpus": 2, "include_dashboard": False},
    "miniray": {"num_cpus": 2},
}


def init_kwargs(mod) -> dict:
    name = getattr(mod, "__name__", "ray").split(".")[0]
    return dict(INIT_KWARGS.get(name, {"num_cpus": 2}))


# --------------------------------------------------------------------------
# Metrics: better = "higher" | "lower"; target = minimum "times better than
# Ray" (ratio >= target passes); None = informational.
# --------------------------------------------------------------------------

def _m(bench, label, unit, better, target=None, target_text="", floor=0.0):
    return {"bench": bench, "label": label, "unit": unit, "better": better,
            "target": target, "target_text": target_text, "floor": floor}


METRICS = {
    # init
    "init_first_s": _m("init", "init to first result", "s", "lower", 10, "<= 1/10 of Ray"),
    "shutdown_s": _m("init", "shutdown() call", "s", "lower"),
    "shutdown_gone_s": _m("init", "shutdown until all processes gone", "s", "lower"),
    "import_s": _m("init", "import of the module", "s", "lower"),
    # memory
    "idle_rss_mb": _m("memory", "idle memory, all processes, RSS", "MiB", "lower", 5, "<= 1/5 of Ray"),
    "idle_pss_mb": _m("memory", "idle memory, all processes, PSS", "MiB", "lower"),
    "idle_driver_rss_mb": _m("memory", "idle memory, driver only, RSS", "MiB", "lower"),
    "idle_nprocs": _m("memory", "processes (driver included)", "count", "lower"),
    # small objects
    "put_small_per_s": _m("small", "small put (int)", "ops/s", "higher", 10, ">= 10x Ray"),
    "get_small_per_s": _m("small", "small get (int)", "ops/s", "higher", 2, ">= 2x Ray"),
    # wait
    "wait_1k_per_s": _m("wait", "wait(1k ready refs, num_returns=1000)", "calls/s", "higher", 2, ">= 2x Ray"),
    # large objects
    "put_1gib_first_gbps": _m("large", "1 GiB numpy put, first", "GB/s", "higher", 1.2, ">= 1.2x Ray"),
    "put_1gib_first_settled_gbps": _m("large", "1 GiB numpy put, first, 1 s after init", "GB/s", "higher"),
    "put_1gib_repeat_gbps": _m("large", "1 GiB numpy put, repeated", "GB/s", "higher", 1.0, ">= Ray"),
    "get_1gib_ms": _m("large", "1 GiB numpy get", "ms", "lower", 1.0, "<= Ray", floor=0.01),
    # tasks
    "tasks_sync_per_s": _m("tasks", "tasks sync (submit+get one by one)", "tasks/s", "higher", 5, ">= 5x Ray"),
    "tasks_async_per_s": _m("tasks", "tasks async (10k submitted, then get)", "tasks/s", "higher", 5, ">= 5x Ray"),
    "tasks_map_async_per_s": _m("tasks", "tasks async, Pool.map_async (mp only)", "tasks/s", "higher"),
    # actors
    "actor_sync_1to1_per_s": _m("actors", "actor calls sync 1:1", "calls/s", "higher", 3, ">= 3x Ray"),
    "actor_async_1to1_per_s": _m("actors", "actor calls async 1:1", "calls/s", "higher", 3, ">= 3x Ray"),
    "actor_sync_nton_per_s": _m("actors", "actor calls sync n:n (n=2)", "calls/s", "higher", 3, ">= 3x Ray"),
    "actor_async_nton_per_s": _m("actors", "actor calls async n:n (n=2)", "calls/s", "higher", 3, ">= 3x Ray"),
    # 200 MB argument
    "arg200_ref_s": _m("arg200", "200 MB array put once, ref to 20 tasks: time", "s", "lower", 1.0, "<= Ray"),
    "arg200_ref_pss_growth_mb": _m("arg200", "200 MB ref to 20 tasks: PSS growth (end)", "MiB", "lower", 1.0, "<= Ray", floor=1.0),
    "arg200_ref_pss_peak_mb": _m("arg200", "200 MB ref to 20 tasks: PSS growth (peak)", "MiB", "lower", floor=1.0),
    "arg200_direct_s": _m("arg200", "200 MB array as direct arg of 20 tasks: time", "s", "lower"),
    "arg200_direct_pss_peak_mb": _m("arg200", "200 MB direct arg x20: PSS growth (peak)", "MiB", "lower", floor=1.0),
    # nested
    "nested_warm_s": _m("nested", "nested tasks 10 outer x 10 inner (warm)", "s", "lower", 3, ">= 3x Ray"),
    "nested_cold_s": _m("nested", "nested tasks 10x10, first run", "s", "lower"),
    # two nodes on one machine
    "cross_node_sync_per_s": _m("cluster", "tasks on another node, sync", "tasks/s", "higher", 3, ">= 3x Ray"),
    "cross_node_async_per_s": _m("cluster", "tasks on another node, async", "tasks/s", "higher", 3, ">= 3x Ray"),
    "cross_node_256mib_s": _m("cluster", "256 MiB put on head, read by a task on node 2", "s", "lower"),
    # moving objects between nodes (bench_transfer): two nodes on loopback, stores of 2.5 GiB
    "transfer_1gib_s": _m("transfer", "1 GiB put on node A, read by a task on node B (loopback)", "s",
                          "lower", 2, "<= 1/2 of Ray's time"),
    "transfer_1gib_gbps": _m("transfer", "1 GiB node A -> task on node B (loopback)", "GB/s", "higher"),
    "transfer_1gib_first_s": _m("transfer", "1 GiB A -> B, first (fresh store pages on B)", "s", "lower"),
    "bcast4_256mib_s": _m("transfer", "256 MiB put on head, read by a task on each of 4 other nodes",
                          "s", "lower"),
    # physical limits
    "memcpy_prefaulted_1t_gbps": _m("limits", "memcpy 1 GiB into pre-faulted /dev/shm, 1 thread", "GB/s", "higher"),
    "memcpy_prefaulted_2t_gbps": _m("limits", "memcpy 1 GiB into pre-faulted /dev/shm, 2 threads", "GB/s", "higher"),
    "memcpy_fresh_1t_gbps": _m("limits", "memcpy 1 GiB into fresh /dev/shm, 1 thread", "GB/s", "higher"),
    "memcpy_fresh_2t_gbps": _m("limits", "memcpy 1 GiB into fresh /dev/shm, 2 threads", "GB/s", "higher"),
    "memcpy_fallocated_1t_gbps": _m("limits", "memcpy 1 GiB into fallocate'd, unmapped /dev/shm, 1 thread", "GB/s", "higher"),
    "memcpy_fallocated_2t_gbps": _m("limits", "memcpy 1 GiB into fallocate'd, unmapped /dev/shm, 2 threads", "GB/s", "higher"),
    "shm_populate_gbps": _m("limits", "allocate + map fresh /dev/shm ahead (MADV_POPULATE_WRITE)", "GB/s", "higher"),
    "memcpy_anon_fresh_1t_gbps": _m("limits", "memcpy 1 GiB into fresh private memory (np.empty), 1 thread", "GB/s", "higher"),
    "huge_first_put_gbps": _m("limits", "miniray 1 GiB first put, arena on hugetlbfs (2 MiB pages)", "GB/s", "higher"),
    "huge_shm_first_put_gbps": _m("limits", "miniray 1 GiB first put, arena on /dev/shm (same run)", "GB/s", "higher"),
    "tcp_loopback_sendall_gbps": _m("limits", "raw TCP 1 GiB over loopback, sendall -> recv_into (2 processes), best sample", "GB/s", "higher"),
    "tcp_loopback_sendall_median_gbps": _m("limits", "raw TCP 1 GiB over loopback, sendall -> recv_into, median", "GB/s", "higher"),
    "tcp_loopback_sendfile_gbps": _m("limits", "raw TCP 1 GiB over loopback, sendfile from /dev/shm -> recv_into, best sample", "GB/s", "higher"),
    "tcp_loopback_sendfile_median_gbps": _m("limits", "raw TCP 1 GiB over loopback, sendfile -> recv_into, median", "GB/s", "higher"),
    "pipe_rtt_us": _m("limits", "pipe round trip between two Python processes", "us", "lower"),
    "spawn_python_s": _m("limits", "spawn `python -c pass`", "s", "lower"),
    "spawn_python_numpy_s": _m("limits", "spawn `python -c 'import numpy'`", "s", "lower"),
}


# --------------------------------------------------------------------------
# Timing helpers
# --------------------------------------------------------------------------

now = time.perf_counter


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def warmup(fn, seconds=1.0, max_iter=10**6):
    """Call fn repeatedly for about `seconds` (as Ray's microbenchmark warms up)."""
    t0 = now()
    i = 0
    while now() - t0 < seconds and i < max_iter:
        fn()
        i += 1
    return i


# --------------------------------------------------------------------------
# Process accounting
# --------------------------------------------------------------------------

def session_tag(mod) -> str | None:
    """A string that appears in the command line of every process of this
    runtime session, where the runtime exposes one (Ray: its session dir)."""
    name = getattr(mod, "__name__", "")
    if name == "ray":
        try:
            path = mod._private.worker._global_node.get_session_dir_path()
            return os.path.basename(path.rstrip("/"))
        except Exception:
            return None
    return None


def runtime_procs(mod=None) -> list[psutil.Process]:
    """The driver (this process), all its descendants, every process in this
    process's session when it leads one (the runner starts each benchmark with
    start_new_session=True, so re-parented daemons are still found), and, for
    Ray, every process whose command line names this Ray session."""
    me = psutil.Process()
    procs = {me.pid: me}
    try:
        for c in me.children(recursive=True):
            procs[c.pid] = c
    except psutil.Error:
        pass
    lead = os.getsid(0) == me.pid
    tag = session_tag(mod) if mod is not None else None
    if lead or tag:
        for p in psutil.process_iter(["pid", "cmdline"]):
            if p.pid in procs:
                continue
            try:
                if lead and os.getsid(p.pid) == me.pid:
                    procs[p.pid] = p
                elif tag and any(tag in a for a in (p.info.get("cmdline") or ())):
                    procs[p.pid] = p
            except (OSError, psutil.Error):
                pass
    return list(procs.values())


def memory_totals(procs, detail=False) -> dict:
    rss = pss = uss = 0
    n = 0
    rows = []
    for p in procs:
        try:
            mi = p.memory_full_info()
            name = p.name()
        except (psutil.Error, OSError):
            continue
        n += 1
        rss += mi.rss
        pss += getattr(mi, "pss", 0)
        uss += getattr(mi, "uss", 0)
        if detail:
            try:
                cmd = " ".join(p.cmdline())[:120]
            except psutil.Error:
                cmd = ""
            rows.append({"pid": p.pid, "name": name, "rss_mb": mi.rss / MiB,
                         "pss_mb": getattr(mi, "pss", 0) / MiB, "cmd": cmd})
    out = {"rss_mb": rss / MiB, "pss_mb": pss / MiB, "uss_mb": uss / MiB, "nprocs": n}
    if detail:
        out["procs"] = sorted(rows, key=lambda r: -r["rss_mb"])
    return out


def pss_total_mb(mod=None) -> float:
    return memory_totals(runtime_procs(mod))["pss_mb"]


class PSSSampler:
    """Samples the summed PSS of the runtime's processes in a thread; .stop()
    returns the peak (MiB)."""

    def __init__(self, mod=None, interval=0.2):
        self.mod = mod
        self.interval = interval
        self.peak = 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.peak = pss_total_mb(self.mod)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            try:
                self.peak = max(self.peak, pss_total_mb(self.mod))
            except Exception:
                pass

    def stop(self) -> float:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, pss_total_mb(self.mod))
        return self.peak


# --------------------------------------------------------------------------
# Tracking the processes a benchmark started, so the runner can make sure
# they are gone (and end them, by pid, if not).
# --------------------------------------------------------------------------

def track(procs) -> None:
    path = os.environ.get("BENCH_PIDS_FILE")
    if not path:
        return
    me = os.getpid()
    rows = []
    for p in procs:
        if p.pid == me:
            continue
        try:
            rows.append([p.pid, p.create_time(), p.name()])
        except psutil.Error:
            pass
    with open(path, "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def wait_gone(procs, timeout=30.0) -> tuple[float, list]:
    """Wait until every process in procs (but this one) has exited.
    Returns (seconds waited, [names still alive])."""
    me = os.getpid()
    others = [p for p in procs if p.pid != me]
    t0 = now()
    _gone, alive = psutil.wait_procs(others, timeout=timeout)
    names = []
    for p in alive:
        try:
            names.append(f"{p.pid}:{p.name()}")
        except psutil.Error:
            pass
    return now() - t0, names


class Runtime:
    """`with Runtime(ray) as rt:` — init with the suite's kwargs, shut down on
    exit and wait until the runtime's processes are gone."""

    def __init__(self, mod):
        self.mod = mod
        self.init_s = None
        self.shutdown_s = None
        self.gone_s = None
        self.leftover = []

    def __enter__(self):
        t0 = now()
        self.mod.init(**init_kwargs(self.mod))
        self.init_s = now() - t0
        track(runtime_procs(self.mod))
        return self

    def __exit__(self, *exc):
        procs = runtime_procs(self.mod)
        track(procs)
        t0 = now()
        self.mod.shutdown()
        self.shutdown_s = now() - t0
        self.gone_s, self.leftover = wait_gone(procs)
        return False
