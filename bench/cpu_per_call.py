"""CPU per call in each process (driver, node, workers), miniray only.

    python -m bench.cpu_per_call [--calls 3000] [--runs 3]

For sync tasks, sync actor calls and async tasks: the wall time per call
and the CPU time (user + system, from /proc via psutil) each process spent
per call, around a loop of calls after a warm-up.  With
``MINIRAY_DIRECT_CALLS=0`` actor calls go through the node (the "before"
of docs/performance.md's profile section).
"""
from __future__ import annotations

import argparse
import statistics
import time

import psutil


def _cpu(proc) -> float:
    try:
        t = proc.cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return t.user + t.system


def _measure(procs, body, n):
    before = {k: _cpu(p) for k, p in procs.items()}
    t0 = time.perf_counter()
    body()
    wall = time.perf_counter() - t0
    return {"wall": wall / n * 1e6,
            **{k: (_cpu(p) - before[k]) / n * 1e6 for k, p in procs.items()}}


def run_once(calls: int) -> dict:
    import miniray as ray
    ray.init(num_cpus=2)
    try:
        client = ray._runtime.current().client
        node = psutil.Process(client.welcome["node_pid"])

        @ray.remote
        def f():
            return 1

        @ray.remote
        class A:
            def f(self):
                return 1

        a = A.remote()
        ray.get([f.remote() for _ in range(200)])
        for _ in range(200):
            ray.get(a.f.remote())
        time.sleep(0.3)
        workers = node.children()
        procs = {"driver": psutil.Process(), "node": node}
        for i, w in enumerate(workers):
            procs[f"worker{i}"] = w

        def sync_tasks():
            for _ in range(calls):
                ray.get(f.remote())

        def sync_actor():
            for _ in range(calls):
                ray.get(a.f.remote())

        def async_tasks():
            ray.get([f.remote() for _ in range(calls * 3)])

        def async_actor():
            ray.get([a.f.remote() for _ in range(calls * 3)])

        out = {}
        for name, body, n in (("sync task", sync_tasks, calls),
                              ("sync actor call", sync_actor, calls),
                              ("async tasks", async_tasks, calls * 3),
                              ("async actor calls", async_actor, calls * 3)):
            m = _measure(procs, body, n)
            workers_cpu = sum(v for k, v in m.items() if k.startswith("worker"))
            out[name] = {"wall": m["wall"], "driver": m["driver"], "node": m["node"],
                         "workers": workers_cpu}
        return out
    finally:
        ray.shutdown()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    runs = [run_once(args.calls) for _ in range(args.runs)]
    print(f"load {psutil.getloadavg()[0]:.2f}; medians of {args.runs} runs, us per call")
    print("| per call | wall | driver CPU | node CPU | workers CPU |")
    print("|---|---:|---:|---:|---:|")
    for name in runs[0]:
        cols = [statistics.median(r[name][k] for r in runs)
                for k in ("wall", "driver", "node", "workers")]
        print(f"| {name} | " + " | ".join(f"{c:.0f} us" for c in cols) + " |")


if __name__ == "__main__":
    main()
