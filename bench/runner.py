"""The runner: `python -m bench ...`.

For each repetition, for each benchmark, for each backend (the order of the
backends rotates every repetition, so machine noise hits them all), one
fresh subprocess (`python -m bench.child`) in its own session, with a
timeout. After each subprocess the runner waits for every process it
started (the child's session and the pids the child recorded) to exit, and
ends the stragglers by pid (SIGTERM, then SIGKILL). It never kills by name.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from . import report
from .common import ALL_BACKENDS, BENCHES, INIT_KWARGS, METRICS, median

ROOT = Path(__file__).resolve().parent.parent


def _env(timeout):
    env = os.environ.copy()
    pp = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + pp if pp else "")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env["BENCH_TIMEOUT"] = str(timeout)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


# ------------------------------------------------------------- probing ----

_PROBE = r"""
import importlib, json, sys
name = sys.argv[1]
m = importlib.import_module(name)
missing = [a for a in ("init", "shutdown", "remote", "get", "put", "wait")
           if not callable(getattr(m, a, None))]
print(json.dumps({"version": getattr(m, "__version__", None), "missing": missing,
                  "file": getattr(m, "__file__", None)}))
"""


def probe_runtime(name, env):
    """(version, None) if `import name` gives a usable runtime, else (None, why)."""
    try:
        p = subprocess.run([sys.executable, "-c", _PROBE, name], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return None, f"`import {name}` took over 120 s"
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["?"])[-1]
        return None, f"`import {name}` failed: {last}"
    info = json.loads(p.stdout.strip().splitlines()[-1])
    if info["missing"]:
        return None, f"`import {name}` has no {', '.join(info['missing'])} yet"
    return info["version"] or "unknown", None


def machine_info():
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu_model": cpu,
        "cpus_logical": psutil.cpu_count(),
        "cpus_physical": psutil.cpu_count(logical=False),
        "ram_gib": round(psutil.virtual_memory().total / (1 << 30), 1),
        "dev_shm_gib": round(psutil.disk_usage("/dev/shm").total / (1 << 30), 1)
        if os.path.exists("/dev/shm") else None,
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    for key, path in (("thp_enabled", "/sys/kernel/mm/transparent_hugepage/enabled"),
                      ("thp_shmem_enabled", "/sys/kernel/mm/transparent_hugepage/shmem_enabled"),
                      ("nr_hugepages", "/proc/sys/vm/nr_hugepages")):
        try:
            with open(path) as f:
                info[key] = f.read().strip()
        except OSError:
            info[key] = None
    for mod in ("numpy", "psutil"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:
            info[mod] = None
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
            text=True, timeout=10).stdout.strip() or None
    except Exception:
        info["git_commit"] = None
    return info


# ------------------------------------------------------------- cleanup ----

def _procs_to_check(child_pid, started, pids_file):
    found = {}
    try:
        with open(pids_file) as f:
            for line in f:
                try:
                    pid, ctime, _name = json.loads(line)
                except ValueError:
                    continue
                try:
                    p = psutil.Process(pid)
                    if abs(p.create_time() - ctime) < 0.05:
                        found[pid] = p
                except psutil.Error:
                    pass
    except OSError:
        pass
    for p in psutil.process_iter(["pid", "create_time"]):
        if p.pid in found:
            continue
        try:
            if os.getsid(p.pid) == child_pid and p.info["create_time"] >= started - 1:
                found[p.pid] = p
        except (OSError, psutil.Error):
            pass
    return list(found.values())


def cleanup(child_pid, started, pids_file, grace=20.0):
    """Wait for the processes the child started; end stragglers by pid.
    Returns {"waited_s", "killed": [...]}."""
    t0 = time.monotonic()
    procs = _procs_to_check(child_pid, started, pids_file)
    _gone, alive = psutil.wait_procs(procs, timeout=grace)
    killed = []
    if alive:
        for p in alive:
            try:
                killed.append(f"{p.pid}:{p.name()}")
                p.terminate()
            except psutil.Error:
                pass
        _gone, alive = psutil.wait_procs(alive, timeout=5)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=5)
    return {"waited_s": round(time.monotonic() - t0, 2), "killed": killed}


def _shm_listing():
    try:
        return set(os.listdir("/dev/shm"))
    except OSError:
        return set()


# ----------------------------------------------------------------- run ----

def run_one(bench, backend, rep, quick, timeout, tmpdir, env):
    tag = f"{bench}-{backend}-{rep}"
    out = os.path.join(tmpdir, tag + ".json")
    pids = os.path.join(tmpdir, tag + ".pids")
    log = os.path.join(tmpdir, tag + ".log")
    cmd = [sys.executable, "-m", "bench.child", "--bench", bench, "--backend", backend,
           "--out", out]
    if quick:
        cmd.append("--quick")
    env = dict(env, BENCH_PIDS_FILE=pids)
    shm_before = _shm_listing()
    load_before = round(os.getloadavg()[0], 2)
    started = time.time()
    t0 = time.monotonic()
    timed_out = False
    with open(log, "wb") as lf:
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                             stdout=lf, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(p.pid, signal.SIGKILL)  # the child's own process group
            except ProcessLookupError:
                pass
            rc = p.wait()
    wall = time.monotonic() - t0
    clean = cleanup(p.pid, started, pids)
    rec = {"bench": bench, "backend": backend, "rep": rep, "rc": rc,
           "wall_s": round(wall, 2), "timed_out": timed_out, "cleanup": clean,
           "load": [load_before, round(os.getloadavg()[0], 2)]}    # 1-min load average
    try:
        with open(out) as f:
            res = json.load(f)
    except (OSError, ValueError):
        res = {"ok": False, "metrics": {}, "notes": {},
               "error": "timed out" if timed_out else f"no result (exit code {rc})"}
    rec.update(ok=bool(res.get("ok")) and not timed_out, metrics=res.get("metrics", {}),
               notes=res.get("notes", {}), error=res.get("error"))
    if timed_out:
        rec["error"] = f"timed out after {timeout:.0f} s (process group killed)"
    if not rec["ok"]:
        try:
            with open(log, "rb") as f:
                rec["log_tail"] = f.read()[-4000:].decode("utf-8", "replace")
        except OSError:
            pass
    left_shm = sorted(_shm_listing() - shm_before)
    if left_shm:
        rec["shm_left"] = left_shm[:20]
    return rec


def aggregate(runs, backends):
    metrics = {}
    for name, meta in METRICS.items():
        samples = {}
        for r in runs:
            if r["ok"] and name in r["metrics"]:
                samples.setdefault(r["backend"], []).append(r["metrics"][name])
        if not samples:
            continue
        med = {b: median(v) for b, v in samples.items()}
        pick = max if meta["better"] == "higher" else min
        entry = dict(meta, samples=samples, median=med,
                     best={b: pick(v) for b, v in samples.items()})
        entry["ratio"] = {b: report.ratio(name, med.get(b), med.get("ray"))
                          for b in ("miniray", "mp") if b in med}
        r = entry["ratio"].get("miniray")
        entry["pass"] = None if (r is None or meta["target"] is None) else bool(r >= meta["target"])
        metrics[name] = entry
    return metrics


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="miniray,ray,mp",
                    help="comma list of miniray,ray,mp (the limits always run with 'limits')")
    ap.add_argument("--quick", action="store_true", help="2 repetitions instead of 5")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 5, --quick 2)")
    ap.add_argument("--only", default=None,
                    help="comma list of benchmarks: " + ",".join(BENCHES))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"),
                    help="results directory (default bench/results)")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds per subprocess")
    ap.add_argument("--render", action="store_true",
                    help="only re-render latest.md/ratios.png from OUT/latest.json")
    ap.add_argument("--update-docs", action="store_true",
                    help="also replace the results table in docs/performance.md")
    a = ap.parse_args(argv)

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.render:
        data = json.loads((out / "latest.json").read_text())
        report.write_all(data, out, update_docs=a.update_docs, root=ROOT)
        return 0

    backends = [b.strip() for b in a.backends.split(",") if b.strip()]
    for b in backends:
        if b not in ALL_BACKENDS:
            ap.error(f"unknown backend {b!r}")
    benches = list(BENCHES) if not a.only else [b.strip() for b in a.only.split(",") if b.strip()]
    for b in benches:
        if b not in BENCHES:
            ap.error(f"unknown benchmark {b!r}; known: {', '.join(BENCHES)}")
    reps = a.reps or (2 if a.quick else 5)
    env = _env(a.timeout)

    meta = machine_info()
    meta.update(argv=sys.argv[1:] if argv is None else argv, reps=reps, quick=a.quick,
                timeout_s=a.timeout, init_kwargs=INIT_KWARGS,
                ray_env={"RAY_USAGE_STATS_ENABLED": env.get("RAY_USAGE_STATS_ENABLED")})
    skipped = {}
    versions = {}
    for b in [b for b in backends if b in ("ray", "miniray")]:
        v, why = probe_runtime(b, env)
        if why:
            skipped[b] = why
            print(f"[bench] skipping {b}: {why}", flush=True)
        else:
            versions[b] = v
    active = [b for b in backends if b not in skipped]
    meta.update(backends=backends, active_backends=active, skipped_backends=skipped,
                versions=versions)
    print(f"[bench] {reps} reps, backends {active}, benchmarks {benches}", flush=True)

    runs = []
    data = {"meta": meta, "runs": runs, "metrics": {}}
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="miniray-bench-") as tmpdir:
        for rep in range(reps):
            k = rep % max(1, len(active))
            order = active[k:] + active[:k]
            for bench in benches:
                todo = [b for b in order if b in BENCHES[bench]]
                if bench == "limits":
                    todo = ["limits"]
                elif "limits" in BENCHES[bench]:
                    # the bound measured beside the runtimes (e.g. raw TCP for
                    # `transfer`), its place in the order rotating too
                    todo.insert(rep % (len(todo) + 1), "limits")
                for backend in todo:
                    rec = run_one(bench, backend, rep, a.quick, a.timeout, tmpdir, env)
                    runs.append(rec)
                    status = "ok" if rec["ok"] else f"FAILED: {rec['error']}"
                    shown = ", ".join(f"{m}={v:.4g}" for m, v in rec["metrics"].items())
                    extra = f" killed={rec['cleanup']['killed']}" if rec["cleanup"]["killed"] else ""
                    print(f"[bench] rep {rep + 1}/{reps} {bench:7s} {backend:8s} "
                          f"{rec['wall_s']:6.1f}s load {rec['load'][0]:.1f}->{rec['load'][1]:.1f} "
                          f"{status} {shown}{extra}", flush=True)
            data["metrics"] = aggregate(runs, active)
            meta["elapsed_s"] = round(time.monotonic() - t_start, 1)
            report.write_all(data, out, update_docs=False, root=ROOT)
    data["metrics"] = aggregate(runs, active)
    meta["elapsed_s"] = round(time.monotonic() - t_start, 1)
    report.write_all(data, out, update_docs=a.update_docs, root=ROOT)
    print(report.markdown(data))
    print(f"[bench] wrote {out / 'latest.json'}, {out / 'latest.md'}, {out / 'ratios.png'}"
          f" in {meta['elapsed_s']:.0f} s", flush=True)
    failed = [r for r in runs if not r["ok"]]
    return 1 if failed else 0
