"""Scale on one node: the items of the issue "A store that never runs out
silently", for miniray and (``--ray``) for Ray, side by side.

    python -m bench.bench_scale [--ray] [--only queue,puts,get10k,args10k,returns3k,actors100,big]
                                [--tasks 1000000] [--ray-tasks 200000] [--big-gib 10]
                                [--reps 1] [--timeout 900] [--ray-python PATH] [--json FILE]

Each (item, backend, repetition) runs in a fresh child process (``--child``),
in its own session; after it, every process left in that session is ended
by pid.  Memory is the summed RSS of the runtime's processes (the driver,
its descendants, the session's processes and, for Ray, every process whose
command line names its session), sampled every 0.2 s; "peak" is the
largest sum seen.  Times are wall-clock seconds.

Items:
  queue      N trivial tasks submitted in a loop, then one get of all:
             submit time, total time, peak RSS of all processes (and of the
             driver).  Ray runs --ray-tasks (default 200k) and the 1M figure
             is extrapolated linearly (time, and memory above idle): stated
             as such in the table.
  puts       100k small puts, then the refs dropped: put time, and how long
             until the runtime holds ~none of them (miniray: the node's
             object count; Ray: the owner's reference table).
  get10k     one get of 10k ready refs (small puts), median of 3.
  args10k    one task taking 10k refs as arguments (resolved to values).
  returns3k  one task with num_returns=3000, then a get of all.
  actors100  100 actors (num_cpus=0) created and each called once, then a
             second call on each; peak RSS of all processes.
  big        one 10 GiB object: put (of np.zeros: its pages are the zero
             page, so the driver's copy costs no memory), get, a sum of a
             few slices, with an object store of size + 1 GiB on both.  Skipped
             when MemAvailable is below 1.5x the size.

Ray gets ``num_cpus=2, include_dashboard=False`` (and ``address="local"``, so
that it starts its own cluster even when another one runs on the machine)
and RAY_USAGE_STATS_ENABLED=0, miniray ``num_cpus=2``, as in the rest of
bench/.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time

GiB = 1 << 30
MiB = 1 << 20
ITEMS = ("queue", "puts", "get10k", "args10k", "returns3k", "actors100", "big")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- in the child ------------------------------------------------------------------------------

def _session_tag(mod):
    if getattr(mod, "__name__", "") != "ray":
        return None
    try:
        path = mod._private.worker._global_node.get_session_dir_path()
        return os.path.basename(path.rstrip("/"))
    except Exception:
        return None


class RSSSampler:
    """Summed RSS of the runtime's processes, sampled in a thread."""

    def __init__(self, mod, interval=0.2):
        import psutil
        self.psutil = psutil
        self.mod = mod
        self.interval = interval
        self.peak = 0
        self.peak_driver = 0
        self.last = 0
        self._procs = {}
        self._scanned = 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _scan(self):
        psutil = self.psutil
        me = psutil.Process()
        procs = {me.pid: me}
        for c in me.children(recursive=True):
            procs[c.pid] = c
        tag = _session_tag(self.mod)
        lead = os.getsid(0) == me.pid
        for p in psutil.process_iter(["pid", "cmdline"]):
            if p.pid in procs:
                continue
            try:
                if (lead and os.getsid(p.pid) == me.pid) or (
                        tag and any(tag in a for a in (p.info.get("cmdline") or ()))):
                    procs[p.pid] = p
            except (OSError, psutil.Error):
                pass
        # keep the Process objects already known (their cached create time)
        self._procs = {pid: self._procs.get(pid, p) for pid, p in procs.items()}
        self._scanned = time.monotonic()

    def sample(self):
        if time.monotonic() - self._scanned > 1.0:
            self._scan()
        total = 0
        me = os.getpid()
        for pid, p in list(self._procs.items()):
            try:
                rss = p.memory_info().rss
            except (self.psutil.Error, OSError):
                continue
            total += rss
            if pid == me:
                self.peak_driver = max(self.peak_driver, rss)
        self.last = total
        self.peak = max(self.peak, total)
        return total

    def start(self):
        self._scan()
        self.sample()
        self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception:
                pass

    def stop(self):
        self._stop.set()
        self._t.join()
        self.sample()
        return self.peak


def _init(mod, **extra):
    kw = {"num_cpus": 2}
    if mod.__name__ == "ray":
        # "local": a new cluster of its own, even while another Ray cluster
        # runs on this machine (ray.init() would join that one).
        kw.update(address="local", include_dashboard=False)
    kw.update(extra)
    mod.init(**kw)


def item_queue(mod, n):
    @mod.remote
    def f():
        return None

    _init(mod)
    mod.get([f.remote() for _ in range(10)])
    s = RSSSampler(mod).start()
    time.sleep(0.5)
    idle = s.sample()
    t0 = time.perf_counter()
    refs = [f.remote() for _ in range(n)]
    t1 = time.perf_counter()
    out = mod.get(refs)
    t2 = time.perf_counter()
    assert len(out) == n
    peak = s.stop()
    return {"n": n, "submit_s": t1 - t0, "total_s": t2 - t0, "idle_mb": idle / MiB,
            "peak_mb": peak / MiB, "peak_driver_mb": s.peak_driver / MiB}


def _objects_held(mod):
    """How many objects the runtime holds (what the puts left behind)."""
    if mod.__name__ == "ray":
        cw = mod._private.worker.global_worker.core_worker
        return len(cw.get_all_reference_counts())
    from miniray.util.state import object_store_stats
    return sum(p["num_objects"] for p in object_store_stats().values())


def item_puts(mod, n=100_000):
    _init(mod)
    s = RSSSampler(mod).start()
    base = _objects_held(mod)
    t0 = time.perf_counter()
    refs = [mod.put(i) for i in range(n)]
    t1 = time.perf_counter()
    held = _objects_held(mod)
    del refs
    t2 = time.perf_counter()
    left = None
    while time.perf_counter() - t2 < 30:
        left = _objects_held(mod) - base
        if left <= n // 1000:
            break
        time.sleep(0.05)
    t3 = time.perf_counter()
    peak = s.stop()
    return {"n": n, "put_s": t1 - t0, "held_after_puts": held - base, "left": left,
            "freed_s": t3 - t2, "peak_mb": peak / MiB}


def item_get10k(mod, n=10_000):
    _init(mod)
    refs = [mod.put(i) for i in range(n)]
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        out = mod.get(refs)
        times.append(time.perf_counter() - t0)
        assert out[-1] == n - 1
    times.sort()
    # results of tasks too (ready, then one get)
    @mod.remote
    def f(i):
        return i

    trefs = [f.remote(i) for i in range(n)]
    mod.wait(trefs, num_returns=n)
    t0 = time.perf_counter()
    assert mod.get(trefs)[-1] == n - 1
    tt = time.perf_counter() - t0
    return {"n": n, "get_puts_s": times[1], "get_task_results_s": tt}


def item_args10k(mod, n=10_000):
    @mod.remote
    def count(*args):
        return len(args), sum(args)

    _init(mod)
    refs = [mod.put(i) for i in range(n)]
    mod.get(count.remote(*refs[:10]))
    t0 = time.perf_counter()
    got = mod.get(count.remote(*refs))
    dt = time.perf_counter() - t0
    assert got == (n, n * (n - 1) // 2), got
    return {"n": n, "s": dt}


def item_returns3k(mod, n=3000):
    @mod.remote(num_returns=n)
    def many():
        return tuple(range(n))

    _init(mod)
    t0 = time.perf_counter()
    refs = many.remote()
    out = mod.get(refs)
    dt = time.perf_counter() - t0
    assert len(out) == n and out[-1] == n - 1
    return {"n": n, "s": dt}


def item_actors100(mod, n=100):
    @mod.remote(num_cpus=0)
    class A:
        def __init__(self, i):
            self.i = i

        def ping(self):
            return self.i

    _init(mod)
    s = RSSSampler(mod).start()
    t0 = time.perf_counter()
    actors = [A.remote(i) for i in range(n)]
    assert mod.get([a.ping.remote() for a in actors]) == list(range(n))
    t1 = time.perf_counter()
    assert mod.get([a.ping.remote() for a in actors]) == list(range(n))
    t2 = time.perf_counter()
    time.sleep(1.0)
    peak = s.stop()
    return {"n": n, "create_and_call_s": t1 - t0, "second_call_s": t2 - t1,
            "peak_mb": peak / MiB, "rss_mb": s.last / MiB}


def item_big(mod, gib=10):
    import numpy as np
    size = int(gib * GiB)
    _init(mod, object_store_memory=size + GiB)
    s = RSSSampler(mod).start()
    arr = np.zeros(size, dtype=np.uint8)       # zero pages: reading them costs no memory
    t0 = time.perf_counter()
    ref = mod.put(arr)
    t1 = time.perf_counter()
    del arr
    got = mod.get(ref)
    t2 = time.perf_counter()
    check = int(got[:4096].sum()) + int(got[-4096:].sum()) + int(got[size // 2:size // 2 + 4096].sum())
    assert check == 0 and got.nbytes == size
    del got
    peak = s.stop()
    return {"gib": gib, "put_s": t1 - t0, "get_s": t2 - t1, "put_gbps": size / (t1 - t0) / 1e9,
            "peak_mb": peak / MiB}


def child(args):
    if args.backend == "ray":
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        import ray as mod
    else:
        import miniray as mod
    fn = {"queue": lambda: item_queue(mod, args.n), "puts": lambda: item_puts(mod),
          "get10k": lambda: item_get10k(mod), "args10k": lambda: item_args10k(mod),
          "returns3k": lambda: item_returns3k(mod), "actors100": lambda: item_actors100(mod),
          "big": lambda: item_big(mod, args.big_gib)}[args.child]
    try:
        res = {"ok": True, "result": fn(), "version": getattr(mod, "__version__", None)}
    except BaseException as exc:        # reported, not raised: the parent prints the table
        import traceback
        res = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
               "trace": traceback.format_exc()[-2000:]}
    try:
        mod.shutdown()
    except Exception:
        pass
    sys.stdout.write("\nBENCH_SCALE_RESULT " + json.dumps(res) + "\n")
    sys.stdout.flush()


# -- in the parent -----------------------------------------------------------------------------

def _end_session(sid):
    """End every process left in session ``sid`` (the child's), by pid."""
    import psutil
    left = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) == sid:
                left.append(p)
        except (OSError, psutil.Error):
            pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in left:
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass
        gone, left = psutil.wait_procs(left, timeout=5)
        if not left:
            break
    return len(left)


def run_child(python, item, backend, n, big_gib, timeout):
    cmd = [python, "-m", "bench.bench_scale", "--child", item, "--backend", backend,
           "--n", str(n), "--big-gib", str(big_gib)]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
        res = None
        for line in out.splitlines():
            if line.startswith("BENCH_SCALE_RESULT "):
                res = json.loads(line[len("BENCH_SCALE_RESULT "):])
        if res is None:
            res = {"ok": False, "error": f"no result (exit {p.returncode}): {err[-800:]}"}
    except subprocess.TimeoutExpired:
        res = {"ok": False, "error": f"did not finish in {timeout:.0f} s", "timeout": True}
    finally:
        _end_session(p.pid)
        try:
            p.kill()
        except OSError:
            pass
        p.wait()
    res["wall_s"] = time.monotonic() - t0
    return res


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else None


def _fmt(v, unit=""):
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and not unit):
        return f"{int(v):,} {unit}".strip()
    if abs(v) >= 100:
        s = f"{v:,.0f}"
    elif abs(v) >= 10:
        s = f"{v:.1f}"
    elif abs(v) >= 1:
        s = f"{v:.2f}"
    else:
        s = f"{v:.3f}"
    return f"{s} {unit}".strip()


def _merge(runs):
    """Median of each numeric field over the successful repetitions."""
    ok = [r["result"] for r in runs if r.get("ok")]
    if not ok:
        return None, (runs[0].get("error") if runs else "not run")
    keys = ok[0].keys()
    return {k: _median([r[k] for r in ok if isinstance(r.get(k), (int, float))]) for k in keys}, None


def rows_for(item, mini, ray, ray_n, tasks):
    """(label, miniray cell, ray cell, note) rows of the table."""
    m, merr = mini if mini else (None, "not run")
    r, rerr = ray if ray else (None, "not run")

    def cell(d, err, key, unit="", scale=1.0):
        if d is None:
            return f"failed: {err}" if err != "not run" else "–"
        v = d.get(key)
        return _fmt(None if v is None else v * scale, unit)

    rows = []
    if item == "queue":
        rows.append((f"{tasks:,} queued trivial tasks: total time", cell(m, merr, "total_s", "s"),
                     _ray_queue_cell(r, rerr, ray_n, tasks, "total_s"),
                     f"submit loop, then one get; Ray ran {ray_n:,} (x{tasks / ray_n:g} linear)"
                     if r else ""))
        rows.append(("  of which the submit loop", cell(m, merr, "submit_s", "s"),
                     _ray_queue_cell(r, rerr, ray_n, tasks, "submit_s"), ""))
        rows.append(("  peak RSS, all processes", cell(m, merr, "peak_mb", "MiB"),
                     _ray_queue_cell(r, rerr, ray_n, tasks, "peak_mb"),
                     "Ray: idle + (peak - idle) x scale" if r else ""))
        rows.append(("  peak RSS, driver", cell(m, merr, "peak_driver_mb", "MiB"),
                     _ray_queue_cell(r, rerr, ray_n, tasks, "peak_driver_mb"), ""))
    elif item == "puts":
        rows.append(("100k small puts", cell(m, merr, "put_s", "s"), cell(r, rerr, "put_s", "s"),
                     ""))
        rows.append(("  refs dropped: until ~none held", cell(m, merr, "freed_s", "s"),
                     cell(r, rerr, "freed_s", "s"),
                     "miniray: node's object count; Ray: owner's reference table"))
        rows.append(("  objects left after that", cell(m, merr, "left"), cell(r, rerr, "left"),
                     ""))
    elif item == "get10k":
        rows.append(("get of 10k ready refs (puts)", cell(m, merr, "get_puts_s", "s"),
                     cell(r, rerr, "get_puts_s", "s"), "median of 3"))
        rows.append(("get of 10k ready task results", cell(m, merr, "get_task_results_s", "s"),
                     cell(r, rerr, "get_task_results_s", "s"), ""))
    elif item == "args10k":
        rows.append(("one task with 10k ref args", cell(m, merr, "s", "s"), cell(r, rerr, "s", "s"),
                     "submit to result"))
    elif item == "returns3k":
        rows.append(("one task with 3k returns", cell(m, merr, "s", "s"), cell(r, rerr, "s", "s"),
                     "submit to all values"))
    elif item == "actors100":
        rows.append(("100 actors: create + one call each", cell(m, merr, "create_and_call_s", "s"),
                     cell(r, rerr, "create_and_call_s", "s"), "num_cpus=0, 2 cores"))
        rows.append(("  a second call on each", cell(m, merr, "second_call_s", "s"),
                     cell(r, rerr, "second_call_s", "s"), ""))
        rows.append(("  RSS, all processes", cell(m, merr, "rss_mb", "MiB"),
                     cell(r, rerr, "rss_mb", "MiB"), "100 live actors"))
    elif item == "big":
        rows.append(("one 10 GiB object: put", cell(m, merr, "put_s", "s"), cell(r, rerr, "put_s", "s"),
                     "store = size + 1 GiB"))
        rows.append(("  get", cell(m, merr, "get_s", "s"), cell(r, rerr, "get_s", "s"), ""))
        rows.append(("  peak RSS, all processes", cell(m, merr, "peak_mb", "MiB"),
                     cell(r, rerr, "peak_mb", "MiB"), "the store's pages count where mapped"))
    return rows


def _ray_queue_cell(r, err, ray_n, tasks, key):
    if r is None:
        return f"failed: {err}" if err and err != "not run" else "–"
    scale = tasks / ray_n
    v = r.get(key)
    if v is None:
        return "–"
    if key.endswith("_mb"):
        idle = r.get("idle_mb") or 0.0
        est = idle + (v - idle) * scale if key == "peak_mb" else v * scale
        return f"{_fmt(v, 'MiB')} ({ray_n // 1000}k) -> ~{_fmt(est, 'MiB')}"
    return f"{_fmt(v, 's')} ({ray_n // 1000}k) -> ~{_fmt(v * scale, 's')}"


def _ray_python(given):
    if given:
        return given
    try:
        import ray  # noqa: F401
        return sys.executable
    except ImportError:
        return os.path.join(ROOT, ".venv-bench", "bin", "python")


def _load():
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ray", action="store_true", help="also run Ray (from --ray-python)")
    ap.add_argument("--only", default=",".join(ITEMS))
    ap.add_argument("--tasks", type=int, default=1_000_000)
    ap.add_argument("--ray-tasks", type=int, default=200_000)
    ap.add_argument("--big-gib", type=float, default=10)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--ray-python", default=None)
    ap.add_argument("--json", default=None, help="write the raw results here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--backend", default="miniray", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return 0
    items = [i for i in args.only.split(",") if i]
    bad = [i for i in items if i not in ITEMS]
    if bad:
        ap.error(f"unknown items {bad}; choose from {ITEMS}")
    backends = ["miniray"] + (["ray"] if args.ray else [])
    pythons = {"miniray": sys.executable, "ray": _ray_python(args.ray_python)}
    raw = {}
    for item in items:
        if item == "big":
            try:
                avail = int(next(l.split()[1] for l in open("/proc/meminfo")
                                 if l.startswith("MemAvailable:"))) * 1024
            except (OSError, StopIteration, ValueError):
                avail = 0
            if avail < 1.5 * args.big_gib * GiB:
                print(f"big: skipped, MemAvailable {avail / GiB:.1f} GiB < 1.5 x {args.big_gib} GiB",
                      flush=True)
                continue
        for backend in backends:
            n = args.tasks if backend == "miniray" else args.ray_tasks
            runs = []
            for rep in range(args.reps):
                load = _load()
                res = run_child(pythons[backend], item, backend, n, args.big_gib, args.timeout)
                res["load"] = load
                runs.append(res)
                brief = res.get("result") if res.get("ok") else res.get("error")
                print(f"{item:10s} {backend:8s} rep {rep + 1}: load {load:.1f}: {brief}",
                      flush=True)
            raw[(item, backend)] = runs
    loads = [r["load"] for runs in raw.values() for r in runs if r.get("load") is not None]
    print()
    print(f"machine: {os.cpu_count()} CPUs; load average (1 min) during the runs: "
          f"{min(loads):.1f}-{max(loads):.1f}" if loads else "")
    print()
    print("| item | miniray | Ray | note |")
    print("|---|---:|---:|---|")
    for item in items:
        mini = raw.get((item, "miniray"))
        ray = raw.get((item, "ray"))
        if mini is None and ray is None:
            continue
        for label, mc, rc, note in rows_for(item, _merge(mini) if mini else None,
                                             _merge(ray) if ray else None, args.ray_tasks,
                                             args.tasks):
            print(f"| {label} | {mc} | {rc} | {note} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{k[0]}/{k[1]}": v for k, v in raw.items()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
