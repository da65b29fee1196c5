"""One benchmark on one backend, in this (fresh) process.

    python -m bench.child --bench NAME --backend {miniray,ray,mp,limits} --out FILE [--quick]

Writes {"ok": bool, "metrics": {...}, "notes": {...}, "error": str} to FILE.
The runner starts it in a new session, with BENCH_PIDS_FILE set so the
runtime's processes can be checked (and ended by pid) afterwards.
"""
from __future__ import annotations

import argparse
import faulthandler
import importlib
import json
import os
import sys
import time
import traceback


def _load_runtime(name):
    t0 = time.perf_counter()
    mod = importlib.import_module(name)
    dt = time.perf_counter() - t0
    for attr in ("init", "shutdown", "remote", "get", "put", "wait"):
        if not callable(getattr(mod, attr, None)):
            raise ImportError(f"{name} has no callable {attr}() yet")
    return mod, dt


def run(bench, backend, quick):
    notes = {}
    if backend in ("ray", "miniray"):
        from . import bench_runtime
        mod, import_s = _load_runtime(backend)
        notes["version"] = getattr(mod, "__version__", None)
        res = bench_runtime.BENCHES[bench](mod, quick=quick)
        if bench == "init":
            res["import_s"] = import_s
    elif backend == "mp":
        from . import bench_mp
        res = bench_mp.BENCHES[bench](quick=quick)
    elif backend == "limits":
        from . import bench_limits
        res = bench_limits.BENCHES[bench](quick=quick)
    else:
        raise ValueError(f"unknown backend {backend}")
    metrics = {}
    for k, v in res.items():
        if k.startswith("_"):
            notes[k[1:]] = v
        else:
            metrics[k] = float(v)
    return metrics, notes


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", required=True)
    ap.add_argument("--backend", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    timeout = float(os.environ.get("BENCH_TIMEOUT", "180"))
    # a traceback of every thread shortly before the runner would kill us
    faulthandler.dump_traceback_later(max(5.0, timeout - 10), exit=False)
    result = {"ok": False, "metrics": {}, "notes": {}, "error": None}
    try:
        result["metrics"], result["notes"] = run(a.bench, a.backend, a.quick)
        result["ok"] = True
    except BaseException as e:  # noqa: BLE001 - reported to the runner
        result["error"] = f"{type(e).__name__}: {e}"
        result["traceback"] = traceback.format_exc()
        traceback.print_exc()
    finally:
        faulthandler.cancel_dump_traceback_later()
        tmp = a.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, default=str)
        os.replace(tmp, a.out)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
