"""1 GiB from a node on host A to a task on host B, where A and B are two
network namespaces joined by a veth pair (each with its own address, its
own cluster directory, nodes started with each runtime's CLI as an operator
would), next to a raw TCP copy of the same bytes over the same veth; then
the same with the veth shaped to a fixed rate (``tc qdisc ... tbf`` on A's
end: A sends).  Needs root (namespaces, tc); not part of ``python -m bench``.

    sudo .venv-bench/bin/python -m bench.bench_netns_transfer \\
        [--runtimes miniray,ray] [--links unshaped,tbf] [--rate 1gbit] \\
        [--rounds 2] [--reps 4] [--out bench/results/netns_transfer.json]

Per link: ``--rounds`` rounds; in each, raw TCP (sendall, sendfile) and each
runtime (the order rotates every round); a runtime's round starts its two
nodes, runs one driver in namespace A that does ``--reps`` transfers
(``bench_transfer.transfer_samples``: a fresh 1 GiB array put on A, then
``get(total.remote(ref))`` with ``total`` pinned to B), and stops its nodes.
The driver also records the CPU time and page faults of the process that
moves the bytes on each side (miniray: the node daemon; Ray: the raylet).

Addresses: 10.254.N.1 (A) and 10.254.N.2 (B), which exist only inside the
two namespaces.  Cleanup, whatever fails: ``miniray stop`` in each
namespace; every process still in either namespace (Ray's daemons, the
receivers) ended by pid (SIGTERM, then SIGKILL); the namespaces deleted (the
veth pair goes with them); the temporary directories removed.  ``ray stop``
is not used: it ends every Ray process on the machine by name, not only the
ones started here.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from .bench_transfer import TRANSFER_BYTES, raw_tcp
from .common import GiB, median

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
STORE = int(2.5 * GiB)


def sh(*cmd, check=True, timeout=120, env=None, capture=True):
    p = subprocess.run([str(c) for c in cmd], capture_output=capture, text=True,
                       timeout=timeout, env=env)
    if check and p.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({p.returncode}): "
                           f"{(p.stderr or '').strip()[-3000:]}")
    return p


def log(msg):
    print(f"[netns] {time.strftime('%H:%M:%S')} {msg}", flush=True)


def loadavg():
    return os.getloadavg()[0]


class Hosts:
    """Two namespaces joined by a veth pair."""

    def __init__(self):
        tag = uuid.uuid4().hex[:6]
        self.tag = tag
        self.ns = [f"mrbt-{tag}-a", f"mrbt-{tag}-b"]
        self.dev = [f"mrbt{tag}a", f"mrbt{tag}b"]
        net = 200 + int(tag[:2], 16) % 50
        self.ip = [f"10.254.{net}.1", f"10.254.{net}.2"]
        self.tmp = Path(tempfile.mkdtemp(prefix=f"mrbt-{tag}-"))
        self.ray_token = secrets.token_hex(32)
        self.made = []

    def __enter__(self):
        try:
            for ns in self.ns:
                sh("ip", "netns", "add", ns)
                self.made.append(ns)
                sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "link", "add", self.dev[0], "netns", self.ns[0], "type", "veth",
               "peer", "name", self.dev[1], "netns", self.ns[1])
            for ns, dev, ip in zip(self.ns, self.dev, self.ip):
                sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
                sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "netns", "exec", self.ns[0], "ping", "-c", "1", "-W", "2", self.ip[1],
               check=False)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def prefix(self, i):
        return ["ip", "netns", "exec", self.ns[i]]

    def pids(self, i):
        p = sh("ip", "netns", "pids", self.ns[i], check=False)
        return [int(x) for x in p.stdout.split()] if p.returncode == 0 else []

    def end_processes(self, grace=10.0):
        """Every process in our namespaces, by pid: SIGTERM, then SIGKILL."""
        ended = []
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            pids = [p for i in range(2) if self.ns[i] in self.made for p in self.pids(i)]
            if not pids:
                return ended
            for pid in pids:
                try:
                    os.kill(pid, sig)
                    ended.append((pid, sig.name))
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if not [p for i in range(2) if self.ns[i] in self.made for p in self.pids(i)]:
                    return ended
                time.sleep(0.2)
        return ended

    def shape(self, rate, burst="256kb", latency="50ms"):
        sh(*self.prefix(0), "tc", "qdisc", "add", "dev", self.dev[0], "root", "tbf", "rate", rate,
           "burst", burst, "latency", latency)
        return self.qdisc()

    def unshape(self):
        sh(*self.prefix(0), "tc", "qdisc", "del", "dev", self.dev[0], "root", check=False)

    def qdisc(self):
        return sh(*self.prefix(0), "tc", "-s", "qdisc", "show", "dev", self.dev[0]).stdout.strip()

    def __exit__(self, *exc):
        try:
            left = self.end_processes()
            if left:
                log(f"ended by pid: {left}")
        finally:
            for ns in self.made:
                sh("ip", "netns", "delete", ns, check=False)
            still = [n for n in sh("ip", "netns", "list", check=False).stdout.split()
                     if n in self.ns]
            if still:
                log(f"WARNING: namespaces not deleted: {still}")
            shutil.rmtree(self.tmp, ignore_errors=True)
        return False


# ----------------------------------------------------------------- miniray ----

def _mini_env(h, i, extra=None):
    env = dict(os.environ, MINIRAY_CLUSTER_DIR=str(h.tmp / f"mini-{i}"),
               PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0")
    env.pop("MINIRAY_AUTH_TOKEN", None)
    env.pop("MINIRAY_AUTH_TOKEN_PATH", None)
    env.update(extra or {})
    return env


def _driver_cmd(h, runtime, reps, watch):
    return [*h.prefix(0), sys.executable, "-m", "bench.bench_netns_transfer", "_driver",
            "--runtime", runtime, "--address", f"{h.ip[0]}:6379", "--reps", str(reps),
            "--watch", json.dumps(watch)]


def run_miniray(h, reps, store=STORE):
    for i in range(2):
        (h.tmp / f"mini-{i}").mkdir(exist_ok=True)
    cli = BIN / "miniray"
    envs = [_mini_env(h, 0), _mini_env(h, 1, {
        "MINIRAY_AUTH_TOKEN_PATH": str(h.tmp / "mini-0" / "token")})]
    try:
        sh(*h.prefix(0), cli, "start", "--head", "--port", "6379", "--node-ip-address", h.ip[0],
           "--num-cpus", "1", "--object-store-memory", store, env=envs[0])
        sh(*h.prefix(1), cli, "start", "--address", f"{h.ip[0]}:6379", "--node-ip-address",
           h.ip[1], "--num-cpus", "1", "--resources", '{"far": 1}', "--object-store-memory",
           store, env=envs[1])
        watch = {}
        for label, i in (("A", 0), ("B", 1)):
            info = json.loads((h.tmp / f"mini-{i}" / "cluster.json").read_text())
            watch[label] = info["pid"]
        out = sh(*_driver_cmd(h, "miniray", reps, watch), env=envs[0], timeout=900)
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        for i in (1, 0):
            sh(*h.prefix(i), cli, "stop", env=envs[i], check=False, timeout=60)
        left = h.end_processes()
        if left:
            log(f"miniray: ended by pid after `miniray stop`: {left}")


# --------------------------------------------------------------------- Ray ----

def _ray_env(h):
    """Token authentication on (Ray 2.60's default for a new cluster), with a
    token made for this run, given to the head, the node and the driver."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0",
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=h.ray_token)
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    return env


def run_ray(h, reps, store=STORE):
    ray = BIN / "ray"
    env = _ray_env(h)
    try:
        sh(*h.prefix(0), ray, "start", "--head", "--node-ip-address", h.ip[0], "--port", "6379",
           "--num-cpus", "1", "--object-store-memory", store, "--include-dashboard=false",
           "--disable-usage-stats", "--temp-dir", h.tmp / "ray-a", env=env, timeout=180)
        sh(*h.prefix(1), ray, "start", "--address", f"{h.ip[0]}:6379", "--node-ip-address",
           h.ip[1], "--num-cpus", "1", "--resources", '{"far": 1}', "--object-store-memory",
           store, "--temp-dir", h.tmp / "ray-b", env=env, timeout=180)
        watch = {}
        for label, i in (("A", 0), ("B", 1)):
            for pid in h.pids(i):
                try:
                    with open(f"/proc/{pid}/comm") as f:
                        if f.read().strip() == "raylet":
                            watch[label] = pid
                except OSError:
                    pass
        out = sh(*_driver_cmd(h, "ray", reps, watch), env=env, timeout=900)
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        left = h.end_processes()
        log(f"ray: {len(left)} signals sent to the processes in the namespaces")


# ------------------------------------------------------------------ driver ----

def driver(runtime, address, reps, watch):
    """Runs inside namespace A, attached to A's node."""
    from .bench_transfer import transfer_samples
    if runtime == "ray":
        import ray
        ray.init(address=address)
    else:
        import miniray as ray
        ray.init(address="auto")
    try:
        nodes = sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"])
        cpu = []
        ts = transfer_samples(ray, reps, watch=watch, cpu=cpu)
    finally:
        ray.shutdown()
    print(json.dumps({"s": ts, "nodes": nodes, "daemon_cpu": cpu}), flush=True)


# -------------------------------------------------------------------- main ----

def measure_link(h, args, link):
    res = {"raw_sendall_s": [], "raw_sendfile_s": [], "miniray_s": [], "ray_s": [],
           "miniray_cpu": [], "ray_cpu": [], "load": [], "errors": []}
    runtimes = [r for r in args.runtimes.split(",") if r]
    size = TRANSFER_BYTES
    for rnd in range(args.rounds):
        items = ["raw"] + runtimes
        k = rnd % len(items)
        order = items[k:] + items[:k]
        for item in order:
            res["load"].append((item, round(loadavg(), 2)))
            log(f"{link} round {rnd + 1}/{args.rounds}: {item} (load {loadavg():.2f})")
            try:
                if item == "raw":
                    for mode in ("sendall", "sendfile"):
                        ts = raw_tcp(host=h.ip[1], size=size, reps=args.reps, mode=mode,
                                     send_prefix=h.prefix(0), recv_prefix=h.prefix(1))
                        res[f"raw_{mode}_s"] += ts
                        log(f"  raw {mode}: {[round(t, 3) for t in ts]} s")
                    for spec in [x for x in args.raw_hows.split(",") if x]:
                        how, _, mode = spec.partition(":")
                        info = {}
                        ts = raw_tcp(host=h.ip[1], size=size, reps=args.reps,
                                     mode=mode or "sendall", send_prefix=h.prefix(0),
                                     recv_prefix=h.prefix(1), how=how, info=info)
                        how = spec
                        res.setdefault(f"raw_recv_{how}", []).append(
                            {"s": ts, "wakes_calls": info.get("wakes_calls"),
                             "cpu_user_sys": info.get("cpu_user_sys")})
                        log(f"  raw, receiver:sender {how}: {[round(t, 3) for t in ts]} s, "
                            f"receiver CPU {info.get('cpu_user_sys')}, wake-ups/recv calls "
                            f"{info.get('wakes_calls')}")
                else:
                    r = (run_miniray if item == "miniray" else run_ray)(h, args.reps)
                    # the first sample lands in fresh store pages on B: its own row
                    res.setdefault(f"{item}_first_s", []).append(r["s"][0])
                    res[f"{item}_s"] += r["s"][1:]
                    res[f"{item}_cpu"] += r["daemon_cpu"]
                    res.setdefault(f"{item}_nodes", r["nodes"])
                    log(f"  {item}: {[round(t, 3) for t in r['s']]} s; nodes {r['nodes']}")
            except Exception as exc:      # noqa: BLE001 - reported, the other items go on
                res["errors"].append(f"{item}: {exc}")
                log(f"  {item} FAILED: {exc}")
    summary = {}
    for key in ("raw_sendall", "raw_sendfile", "miniray", "ray"):
        ts = res[f"{key}_s"]
        if ts:
            summary[key] = {"median_s": median(ts), "gbps": size / median(ts) / 1e9,
                            "best_gbps": size / min(ts) / 1e9}
    for key in ("miniray", "ray"):
        if res.get(f"{key}_first_s") and key in summary:
            summary[key]["first_median_s"] = median(res[f"{key}_first_s"])
    raw = summary.get("raw_sendall")
    for key in ("miniray", "ray"):
        if key in summary and raw:
            summary[key]["pct_of_raw"] = 100 * summary[key]["gbps"] / raw["gbps"]
    if "miniray" in summary and "ray" in summary:
        summary["miniray_vs_ray"] = summary["ray"]["median_s"] / summary["miniray"]["median_s"]
    res["summary"] = summary
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.bench_netns_transfer",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    d = sub.add_parser("_driver")
    d.add_argument("--runtime", required=True)
    d.add_argument("--address", required=True)
    d.add_argument("--reps", type=int, default=3)
    d.add_argument("--watch", default="{}")
    ap.add_argument("--runtimes", default="miniray,ray")
    ap.add_argument("--links", default="unshaped,tbf")
    ap.add_argument("--rate", default="1gbit")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reps", type=int, default=4,
                    help="transfers per runtime per round (the first, into fresh pages, is "
                         "reported apart) and raw TCP copies per mode per round")
    ap.add_argument("--raw-hows", default="",
                    help="also time raw TCP with these receiver loops (comma list of "
                         "blocking-lowat,epoll,epoll-drain,epoll-lowat, each optionally "
                         "followed by :sendfile or :sendall for the sender; see "
                         "bench_transfer)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "netns_transfer.json"))
    a = ap.parse_args(argv)
    if a.cmd == "_driver":
        driver(a.runtime, a.address, a.reps, json.loads(a.watch))
        return 0
    if os.geteuid() != 0:
        print("needs root (network namespaces, tc)", file=sys.stderr)
        return 2
    data = {"argv": sys.argv[1:] if argv is None else argv, "date": time.strftime("%FT%T%z"),
            "links": {}}
    with Hosts() as h:
        data["addresses"] = h.ip
        log(f"namespaces {h.ns}, veth {h.dev}, {h.ip}")
        for link in a.links.split(","):
            if link == "tbf":
                q = h.shape(a.rate)
                log(f"shaped {h.dev[0]} (A's end): {q.splitlines()[0]}")
            res = measure_link(h, a, link)
            if link == "tbf":
                res["qdisc"] = h.qdisc()       # its counters show the bytes it paced
                h.unshape()
                res["rate"] = a.rate
            data["links"][link] = res
            log(f"{link}: {json.dumps(res['summary'])}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(data, indent=1))
    log(f"wrote {a.out}")
    return 1 if any(r["errors"] for r in data["links"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
