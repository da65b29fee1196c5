"""Moving objects between nodes, next to a raw TCP copy of the same bytes.

* ``bench_transfer(ray)`` (backends miniray and ray): two nodes on this
  machine, each runtime's own ``cluster_utils.Cluster`` on 127.0.0.1, stores
  of 2.5 GiB.  A 1 GiB float64 array is put on the head (by the driver) and
  ``get(total.remote(ref))`` is timed, where ``total`` is pinned to the
  second node by a custom resource and sums a strided slice of the array (one
  float64 every 32 KiB: the read costs nothing, the bytes must all be there).
  A new array is put for every sample, so every sample moves the whole GiB.
  The first sample lands in store pages node B never used; the figure is the
  median of the next three (ranges reused), the first is a row of its own.
  Then three more nodes join and one 256 MiB object is read by one task on
  each of the 4 non-head nodes: the time until all 4 results are back.
* ``bench_raw_tcp()`` (backend "limits"): the same 1 GiB over one TCP socket
  on 127.0.0.1 between two processes: ``socket.sendall(memoryview)`` of a
  pre-faulted buffer into ``recv_into`` a pre-allocated, pre-faulted buffer;
  and ``socket.sendfile`` from a /dev/shm file into the same receiver.  The
  time runs from the first send to the receiver's 1-byte acknowledgement.

The raw TCP parts are also a small command line, used by
``bench/bench_netns_transfer.py`` to run the two ends in two network
namespaces::

    python -m bench.bench_transfer tcp-recv --host IP --size BYTES --reps N
        (prints "port P" once listening, then one JSON line when done)
    python -m bench.bench_transfer tcp-send --host IP --port P --size BYTES --reps N
        [--mode sendall|sendfile]    (prints one JSON line: the samples)
"""
from __future__ import annotations

import argparse
import importlib
import json
import mmap
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .common import GiB, MiB, median, now, runtime_procs, track

ROOT = Path(__file__).resolve().parent.parent

TRANSFER_BYTES = GiB
BCAST_BYTES = 256 * MiB
BCAST_NODES = 4
STORE = int(2.5 * GiB)           # 1 GiB + slack for the 2-node transfer
BCAST_STORE = 768 * MiB          # 256 MiB + slack on the nodes that join for the broadcast
STRIDE = 4096                    # float64 elements: one read every 32 KiB
IO_TIMEOUT = 120.0               # raw TCP: seconds a copy may stall before it fails


# ------------------------------------------------------------- raw TCP ----

def _recv_exact(sock, view):
    n = len(view)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if not k:
            raise ConnectionError(f"peer closed after {got} of {n} bytes")
        got += k
    return got


def _recv_polled(sock, view, how, lowat=1 << 20):
    """The body received the way an event loop does it (a non-blocking
    socket, a selector wait before reading), to measure what that costs:
    "epoll": one recv_into per wake-up (miniray's node today);
    "epoll-drain": recv_into until the socket is empty, per wake-up;
    "epoll-lowat": one recv_into per wake-up, with SO_RCVLOWAT asking the
    kernel not to wake us before ``lowat`` bytes (or the rest) are there.
    Returns (bytes, wake-ups, recv calls)."""
    import selectors
    n = len(view)
    got = wakes = calls = 0
    sel = selectors.DefaultSelector()
    sock.setblocking(False)
    sel.register(sock, selectors.EVENT_READ)
    cur_lowat = None
    try:
        while got < n:
            if how == "epoll-lowat":
                want = max(1, min(lowat, n - got))
                if want != cur_lowat:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, want)
                    cur_lowat = want
            if not sel.select(IO_TIMEOUT):
                raise TimeoutError(f"no data for {IO_TIMEOUT} s after {got} of {n} bytes")
            wakes += 1
            while got < n:
                try:
                    k = sock.recv_into(view[got:], n - got)
                except BlockingIOError:
                    break
                calls += 1
                if not k:
                    raise ConnectionError(f"peer closed after {got} of {n} bytes")
                got += k
                if how != "epoll-drain":
                    break
    finally:
        sel.unregister(sock)
        sel.close()
        if cur_lowat is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
        sock.settimeout(IO_TIMEOUT)
    return got, wakes, calls


def _recv_lowat(sock, view, lowat=1 << 20):
    """Blocking recv_into with SO_RCVLOWAT: each call returns once ``lowat``
    bytes (or the rest) are there, not at the first segment."""
    n = len(view)
    got = calls = 0
    cur = None
    try:
        while got < n:
            want = max(1, min(lowat, n - got))
            if want != cur:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, want)
                cur = want
            k = sock.recv_into(view[got:], n - got)
            if not k:
                raise ConnectionError(f"peer closed after {got} of {n} bytes")
            got += k
            calls += 1
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
    return got, calls, calls


RECV_HOWS = ("blocking", "blocking-lowat", "epoll", "epoll-drain", "epoll-lowat")


def tcp_recv(host, size, reps, port=0, out=sys.stdout, how="blocking"):
    """Receiver: listen, print the port, receive ``reps`` x ``size`` bytes on
    one connection into one pre-faulted buffer, ack each with one byte.
    ``how``: a blocking ``recv_into`` loop, or one of the event-loop ways of
    ``_recv_polled``."""
    buf = np.ones(size, dtype=np.uint8)           # allocated and faulted in before timing
    view = memoryview(buf).cast("B")
    lst = socket.create_server((host, port))
    print(f"port {lst.getsockname()[1]}", file=out, flush=True)
    conn, _ = lst.accept()
    lst.close()
    conn.settimeout(IO_TIMEOUT)                   # a stalled copy fails, it does not hang
    times = []
    stats = []
    cpu = []
    try:
        for _ in range(reps):
            _recv_exact(conn, view[:1])           # the sender's "go" byte
            conn.sendall(b"r")                    # ready
            c0 = os.times()
            t0 = now()
            if how == "blocking":
                _recv_exact(conn, view)
            elif how == "blocking-lowat":
                stats.append(_recv_lowat(conn, view)[1:])
            else:
                stats.append(_recv_polled(conn, view, how)[1:])
            times.append(now() - t0)
            c1 = os.times()
            cpu.append((round(c1.user - c0.user, 3), round(c1.system - c0.system, 3)))
            conn.sendall(b"k")
    finally:
        conn.close()
    print(json.dumps({"recv_s": times, "how": how, "wakes_calls": stats, "cpu_user_sys": cpu}),
          file=out, flush=True)
    return times


def _shm_source(size):
    """A /dev/shm file of ``size`` bytes, written (pages present), unlinked at
    once: an open descriptor, nothing left behind."""
    path = f"/dev/shm/miniray-bench-tcp-{os.getpid()}"
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.unlink(path)
    os.ftruncate(fd, size)
    with mmap.mmap(fd, size) as mm:
        np.frombuffer(mm, dtype=np.uint8).fill(1)
    return fd


def tcp_send(host, port, size, reps, mode="sendall"):
    """Sender: one connection, ``reps`` x ``size`` bytes; returns seconds per
    copy, from the first send to the receiver's acknowledgement."""
    if mode == "sendall":
        buf = np.ones(size, dtype=np.uint8)
        data = memoryview(buf).cast("B")
        fd = None
    elif mode == "sendfile":
        fd = _shm_source(size)
        data = None
    else:
        raise ValueError(mode)
    sock = socket.create_connection((host, port), timeout=IO_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ack = bytearray(1)
    times = []
    try:
        for _ in range(reps):
            sock.sendall(b"g")
            _recv_exact(sock, memoryview(ack))
            t0 = now()
            if fd is None:
                sock.sendall(data)
            else:
                with open(fd, "rb", closefd=False) as f:    # os.sendfile, waiting on EAGAIN
                    sent = sock.sendfile(f, 0, size)
                assert sent == size, (sent, size)
            _recv_exact(sock, memoryview(ack))
            times.append(now() - t0)
    finally:
        sock.close()
        if fd is not None:
            os.close(fd)
    return times


def _python_cmd(*args):
    return [sys.executable, "-m", "bench.bench_transfer", *args]


def start_receiver(host, size, reps, prefix=(), how="blocking"):
    """A receiver process (optionally under ``prefix``, e.g. ``ip netns exec
    NS``); returns (Popen, port)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    p = subprocess.Popen([*prefix, *_python_cmd("tcp-recv", "--host", host, "--size", str(size),
                                               "--reps", str(reps), "--how", how)],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if not line.startswith("port "):
        p.kill()
        p.wait()
        raise RuntimeError(f"the TCP receiver did not start: {line!r}")
    return p, int(line.split()[1])


def raw_tcp(host="127.0.0.1", size=TRANSFER_BYTES, reps=3, mode="sendall",
            send_prefix=None, recv_prefix=(), how="blocking", info=None):
    """One raw TCP measurement: receiver in a process (under recv_prefix),
    sender here (or in a process under send_prefix). Seconds per copy;
    the receiver's own report goes into the dict ``info`` if given."""
    p, port = start_receiver(host, size, reps, recv_prefix, how)
    try:
        track(runtime_procs(None))
        if send_prefix is None:
            times = tcp_send(host, port, size, reps, mode)
        else:
            env = dict(os.environ)
            env["PYTHONPATH"] = str(ROOT)
            out = subprocess.run([*send_prefix, *_python_cmd(
                "tcp-send", "--host", host, "--port", str(port), "--size", str(size),
                "--reps", str(reps), "--mode", mode)], cwd=ROOT, env=env, capture_output=True,
                text=True, timeout=600)
            if out.returncode:
                raise RuntimeError(f"the TCP sender failed: {out.stderr.strip()[-2000:]}")
            times = json.loads(out.stdout.strip().splitlines()[-1])["send_s"]
        rest = p.stdout.read()
        p.wait(timeout=60)
        if info is not None and rest.strip():
            info.update(json.loads(rest.strip().splitlines()[-1]))
        return times
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def bench_raw_tcp(quick=False):
    """Backend "limits" of the transfer benchmark: raw TCP over loopback.
    Best of the samples (a limit: noise only slows it down), and the median."""
    reps = 3 if quick else 5
    out = {}
    for mode in ("sendall", "sendfile"):
        ts = raw_tcp(mode=mode, reps=reps)
        out[f"tcp_loopback_{mode}_gbps"] = TRANSFER_BYTES / min(ts) / 1e9
        out[f"tcp_loopback_{mode}_median_gbps"] = TRANSFER_BYTES / median(ts) / 1e9
        out[f"_tcp_loopback_{mode}_samples_s"] = ts
    return out


# ----------------------------------------------------- runtime clusters ----

def _loopback_only(ray, ip="127.0.0.1"):
    """Keyword arguments that keep every node of ``ray``'s Cluster on
    loopback.  Ray would otherwise bind its nodes to the host's first
    interface, and rewrites a 127.0.0.1 address given to ``init`` into that
    interface's address; its own switch for single-host clusters
    (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read at import: set here for the
    processes it starts, and on the already imported module) makes it use
    127.0.0.1 throughout."""
    if ray.__name__ == "ray":
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        ray._private.ray_constants.ENABLE_RAY_CLUSTER = False
    return {"node_ip_address": ip}


def _remote_total(ray, resource):
    @ray.remote(resources={resource: 0.001})
    def total(a):
        return float(a[::STRIDE].sum())
    return total


def _proc_counters(pid):
    """(user s, system s, minor faults, major faults) of one process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    tck = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) / tck, int(fields[12]) / tck, int(fields[7]), int(fields[9]))


def _counters(watch):
    out = {}
    for label, pid in (watch or {}).items():
        try:
            out[label] = _proc_counters(pid)
        except OSError:
            pass
    return out


def _delta(before, after):
    return {k: {"user_s": round(after[k][0] - v[0], 3), "sys_s": round(after[k][1] - v[1], 3),
                "minflt": after[k][2] - v[2], "majflt": after[k][3] - v[3]}
            for k, v in before.items() if k in after}


def transfer_samples(ray, reps, resource="far", size=TRANSFER_BYTES, settle=1.0, watch=None,
                     cpu=None):
    """Put a fresh ``size``-byte array on this (the driver's) node, time
    ``get(total.remote(ref))`` with ``total`` pinned to the node holding
    ``resource``.  The first sample lands in fresh store pages on the far
    node; later ones reuse freed ranges (where the runtime frees them).
    ``watch``: {label: pid} of processes (the node daemons) whose CPU time
    and page faults per sample are appended to the list ``cpu``."""
    total = _remote_total(ray, resource)
    small = np.ones(MiB)                               # 8 MiB: warms worker and link
    assert ray.get(total.remote(ray.put(small))) == float(small[::STRIDE].sum())
    arr = np.ones(size // 8, dtype=np.float64)         # pre-faulted in the driver
    expect = float(arr[::STRIDE].sum())
    times = []
    for _ in range(reps):
        ref = ray.put(arr)
        time.sleep(0.2)
        c0 = _counters(watch)
        t0 = now()
        got = ray.get(total.remote(ref))
        times.append(now() - t0)
        if cpu is not None:
            cpu.append(_delta(c0, _counters(watch)))
        assert got == expect, (got, expect)
        del ref
        time.sleep(settle)                             # let both stores free their copies
    return times


def _daemon_pids(ray, cluster) -> dict:
    """{"A": pid, "B": pid} of the process that moves object bytes on the
    head and on the second node: miniray's node daemon, Ray's raylet (its
    object manager)."""
    nodes = [cluster.head_node] + list(cluster.worker_nodes)[:1]
    out = {}
    for label, node in zip("AB", nodes):
        try:
            if ray.__name__ == "ray":
                out[label] = node.all_processes["raylet"][0].process.pid
            else:
                out[label] = node.process.pid
        except Exception:
            pass
    return out


def broadcast_samples(ray, reps, resources, size=BCAST_BYTES, settle=1.0):
    """One ``size``-byte object read by one task on each node named by
    ``resources``: time until every result is back."""
    fns = [_remote_total(ray, r) for r in resources]
    small = np.ones(MiB)
    ray.get([f.remote(ray.put(small)) for f in fns])  # warm every worker and link
    arr = np.ones(size // 8, dtype=np.float64)
    expect = float(arr[::STRIDE].sum())
    times = []
    for _ in range(reps):
        ref = ray.put(arr)
        time.sleep(0.2)
        t0 = now()
        got = ray.get([f.remote(ref) for f in fns])
        times.append(now() - t0)
        assert got == [expect] * len(fns), got
        del ref
        time.sleep(settle)
    return times


def bench_transfer(ray, quick=False):
    """1 GiB head -> task on node 2; then 256 MiB to a task on each of 4
    nodes (3 more join the same cluster)."""
    cluster_utils = importlib.import_module(ray.__name__ + ".cluster_utils")
    ip = _loopback_only(ray)
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=1, object_store_memory=STORE, include_dashboard=False, **ip))
    out = {}
    try:
        cluster.add_node(num_cpus=1, resources={"far": 1, "bc0": 1},
                         object_store_memory=STORE, **ip)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        track(runtime_procs(ray))
        reps = 2 if quick else 4
        cpu = []
        ts = transfer_samples(ray, reps, watch=_daemon_pids(ray, cluster), cpu=cpu)
        out["_transfer_daemon_cpu"] = cpu
        # The first sample writes into store pages node B never used (page
        # faults, and page allocation where not reserved ahead); the next
        # ones into ranges freed by the previous sample.
        out["transfer_1gib_first_s"] = ts[0]
        out["transfer_1gib_s"] = median(ts[1:])
        out["transfer_1gib_gbps"] = TRANSFER_BYTES / median(ts[1:]) / 1e9
        out["_transfer_1gib_samples_s"] = ts
        reps = 2 if quick else 3
        for i in range(1, BCAST_NODES):
            cluster.add_node(num_cpus=1, resources={f"bc{i}": 1},
                             object_store_memory=BCAST_STORE, **ip)
        cluster.wait_for_nodes()
        track(runtime_procs(ray))
        bs = broadcast_samples(ray, reps, [f"bc{i}" for i in range(BCAST_NODES)])
        out["bcast4_256mib_s"] = median(bs)
        out["_bcast4_256mib_samples_s"] = bs
        return out
    finally:
        try:
            track(runtime_procs(ray))
            ray.shutdown()
        finally:
            cluster.shutdown()


# ------------------------------------------------------------ command line ----

def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.bench_transfer")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("tcp-recv")
    r.add_argument("--host", required=True)
    r.add_argument("--port", type=int, default=0)
    r.add_argument("--size", type=int, default=TRANSFER_BYTES)
    r.add_argument("--reps", type=int, default=3)
    r.add_argument("--how", choices=RECV_HOWS, default="blocking")
    s = sub.add_parser("tcp-send")
    s.add_argument("--host", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--size", type=int, default=TRANSFER_BYTES)
    s.add_argument("--reps", type=int, default=3)
    s.add_argument("--mode", choices=("sendall", "sendfile"), default="sendall")
    l = sub.add_parser("loopback", help="raw TCP over loopback, both modes (no runtime)")
    l.add_argument("--reps", type=int, default=5)
    l.add_argument("--hows", default="blocking",
                   help="receiver loops to compare (comma list of " + ",".join(RECV_HOWS) + ")")
    l.add_argument("--modes", default="sendall,sendfile")
    a = ap.parse_args(argv)
    if a.cmd == "tcp-recv":
        tcp_recv(a.host, a.size, a.reps, a.port, how=a.how)
    elif a.cmd == "tcp-send":
        ts = tcp_send(a.host, a.port, a.size, a.reps, a.mode)
        print(json.dumps({"send_s": ts, "mode": a.mode}), flush=True)
    else:
        for how in a.hows.split(","):
            for mode in a.modes.split(","):
                info = {}
                ts = raw_tcp(mode=mode, reps=a.reps, how=how, info=info)
                print(json.dumps({"mode": mode, "recv": how, "os_load": round(os.getloadavg()[0], 2),
                                  "median_gbps": round(TRANSFER_BYTES / median(ts) / 1e9, 3),
                                  "gbps": [round(TRANSFER_BYTES / t / 1e9, 3) for t in ts],
                                  "wakes_calls": info.get("wakes_calls"),
                                  "recv_cpu_user_sys": info.get("cpu_user_sys")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
