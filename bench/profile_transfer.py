"""Where miniray's time goes when it moves 1 GiB between two nodes.

    .venv-bench/bin/python -m bench.profile_transfer [--reps 3] [--out DIR]
        [--no-pyspy] [--no-strace]

Two nodes on loopback (``miniray.cluster_utils.Cluster``, stores of 2.5 GiB),
the transfer of ``bench_transfer`` (a fresh 1 GiB array put on the head,
``get(total.remote(ref))`` with ``total`` on node B), measured three ways:

1. plain: seconds per transfer, and per node daemon the CPU time (user,
   system) and page faults it spent during each transfer (/proc/PID/stat);
2. under py-spy (``py-spy record --native`` on both daemons, raw collapsed
   stacks in OUT/py-spy-{A,B}.txt): the daemons' own samples, summarised by
   leaf function;
3. under ``strace -c`` (one transfer): how many send/recv calls the daemons
   make per GiB and how long they take (strace slows the calls: counts, not
   times, are the result).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .bench_transfer import STORE, TRANSFER_BYTES, _daemon_pids, transfer_samples
from .common import median

BIN = Path(sys.executable).parent


def stop_tracers(procs) -> None:
    """SIGINT each tracer (py-spy / strace write their report on it), then
    wait; one that hangs is killed."""
    for p in procs.values():
        p.send_signal(signal.SIGINT)
    for p in procs.values():
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def summarize_collapsed(path, top=15):
    """Leaf functions by share of samples, from py-spy's raw (collapsed) output."""
    leaf = collections.Counter()
    total = 0
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        stack, _, n = line.rpartition(" ")
        try:
            n = int(n)
        except ValueError:
            continue
        frames = stack.split(";")
        total += n
        leaf[frames[-1]] += n
    return [(f, round(100.0 * c / total, 1)) for f, c in leaf.most_common(top)] if total else []


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.profile_transfer")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-pyspy", action="store_true")
    ap.add_argument("--no-strace", action="store_true")
    a = ap.parse_args(argv)
    out_dir = Path(a.out or tempfile.mkdtemp(prefix="miniray-transfer-profile-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    import miniray as ray
    from miniray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=1,
                                                                object_store_memory=STORE))
    report = {"load_start": os.getloadavg()[0]}
    try:
        cluster.add_node(num_cpus=1, resources={"far": 1}, object_store_memory=STORE)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        pids = _daemon_pids(ray, cluster)
        report["pids"] = pids

        cpu = []
        ts = transfer_samples(ray, a.reps, watch=pids, cpu=cpu)
        report["plain"] = {"s": ts, "median_gbps": TRANSFER_BYTES / median(ts) / 1e9,
                           "daemon_cpu": cpu}
        print(json.dumps({"plain": report["plain"]}), flush=True)

        spy = BIN / "py-spy"
        if not a.no_pyspy and spy.exists():
            procs = {}
            for label, pid in pids.items():
                procs[label] = subprocess.Popen(
                    [str(spy), "record", "--pid", str(pid), "--rate", "250", "--native",
                     "--format", "raw", "--output", str(out_dir / f"py-spy-{label}.txt")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
            cpu = []
            ts = transfer_samples(ray, a.reps, watch=pids, cpu=cpu)
            stop_tracers(procs)
            report["py-spy"] = {"s": ts, "daemon_cpu": cpu, "leaf": {
                label: summarize_collapsed(out_dir / f"py-spy-{label}.txt") for label in pids}}
            print(json.dumps({"py-spy": report["py-spy"]}, indent=1), flush=True)

        if not a.no_strace and shutil.which("strace"):
            procs = {}
            for label, pid in pids.items():
                procs[label] = subprocess.Popen(
                    ["strace", "-c", "-f", "-p", str(pid), "-o", str(out_dir / f"strace-{label}.txt")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
            ts = transfer_samples(ray, 1)
            stop_tracers(procs)
            report["strace"] = {"s": ts, "tables": {
                label: (out_dir / f"strace-{label}.txt").read_text()
                for label in pids if (out_dir / f"strace-{label}.txt").exists()}}
            for label, table in report["strace"]["tables"].items():
                print(f"--- strace -c, node {label} (one 1 GiB transfer under strace)\n{table}")
    finally:
        ray.shutdown()
        cluster.shutdown()
    report["load_end"] = os.getloadavg()[0]
    (out_dir / "profile.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out_dir}/profile.json", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
