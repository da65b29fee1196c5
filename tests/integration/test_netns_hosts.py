"""Nodes as separate hosts: network namespaces joined by a veth pair, each
with its own IP address and its own MINIRAY_CLUSTER_DIR, started with the
CLI as an operator would.  Skipped (with the reason) where namespaces
cannot be made; CI runs as root, where they can."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import uuid

import psutil
import pytest

from tests.conftest import wait_gone


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _can_make_namespaces() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    name = f"mr-probe-{uuid.uuid4().hex[:6]}"
    try:
        out = _ip("netns", "add", name, check=False)
    except FileNotFoundError:
        return "the `ip` command (iproute2) is not installed"
    if out.returncode != 0:
        return f"cannot create network namespaces here: {out.stderr.strip()}"
    _ip("netns", "delete", name, check=False)
    return None


_why_not = _can_make_namespaces()
pytestmark = pytest.mark.skipif(_why_not is not None, reason=_why_not or "")


class Host:
    def __init__(self, ns, ip, cluster_dir):
        self.ns, self.ip, self.dir = ns, ip, cluster_dir

    def run(self, *cmd, env=None, timeout=60):
        full = dict(os.environ, MINIRAY_CLUSTER_DIR=str(self.dir))
        full.pop("MINIRAY_AUTH_TOKEN", None)
        full.pop("MINIRAY_AUTH_TOKEN_PATH", None)
        full.update(env or {})
        return subprocess.run(["ip", "netns", "exec", self.ns, *cmd], capture_output=True,
                              text=True, env=full, timeout=timeout)

    def cli(self, *args, env=None):
        out = self.run(sys.executable, "-m", "miniray.cli", *args, env=env)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    def python(self, code, env=None):
        return self.run(sys.executable, "-c", textwrap.dedent(code), env=env, timeout=120)

    def node_pids(self):
        try:
            info = json.loads((self.dir / "cluster.json").read_text())
        except OSError:
            return set()
        pid = info["pid"]
        try:
            return {pid} | {p.pid for p in psutil.Process(pid).children(recursive=True)}
        except psutil.Error:
            return {pid}


@pytest.fixture
def two_hosts(tmp_path):
    tag = uuid.uuid4().hex[:6]
    net = 10 + int(tag[:2], 16) % 200          # a private /24 that lives only in our namespaces
    names = [f"mr-{tag}-a", f"mr-{tag}-b"]
    hosts = []
    try:
        for i, ns in enumerate(names):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", f"mr{tag}a", "netns", names[0], "type", "veth", "peer", "name",
            f"mr{tag}b", "netns", names[1])
        for i, ns in enumerate(names):
            dev = f"mr{tag}{'ab'[i]}"
            ip = f"10.254.{net}.{i + 1}"
            _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            d = tmp_path / f"host{i}"
            d.mkdir()
            hosts.append(Host(ns, ip, d))
        yield hosts
    finally:
        pids = set()
        for h in hosts:
            pids |= h.node_pids()
            h.run(sys.executable, "-m", "miniray.cli", "stop")
        left = wait_gone(pids, timeout=20)
        for ns in names:
            _ip("netns", "delete", ns, check=False)
        assert not left, f"processes left behind: {left}"
        assert not [n for n in _ip("netns", "list").stdout.split() if n in names]


def test_two_hosts_started_with_the_cli(two_hosts):
    a, b = two_hosts
    out = a.cli("start", "--head", "--port", "6379", "--node-ip-address", a.ip, "--num-cpus", "1",
                "--object-store-memory", str(128 * 2**20))
    assert f"{a.ip}:6379" in out
    token_file = a.dir / "token"
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"
    # No token: the join is refused, with a message that says where to put it.
    refused = b.run(sys.executable, "-m", "miniray.cli", "start", "--address", f"{a.ip}:6379",
                    "--node-ip-address", b.ip)
    assert refused.returncode != 0 and "MINIRAY_AUTH_TOKEN" in refused.stderr
    b.cli("start", "--address", f"{a.ip}:6379", "--node-ip-address", b.ip, "--num-cpus", "1",
          "--resources", '{"B": 1}', "--object-store-memory", str(128 * 2**20),
          env={"MINIRAY_AUTH_TOKEN_PATH": str(token_file)})
    status = a.cli("status")
    assert "2 node(s) alive" in status and b.ip in status
    driver = a.python("""
        import numpy as np
        import miniray
        miniray.init(address="auto")
        nodes = miniray.nodes()
        print("nodes", len(nodes), sorted(n["NodeManagerAddress"] for n in nodes))

        @miniray.remote(resources={"B": 1})
        def on_b(arr):
            print("hello from b")
            return float(arr.sum()), miniray.get_runtime_context().get_node_id()

        arr = np.arange(4_000_000, dtype=np.float64)      # 32 MB, pulled across the link
        s, node = miniray.get(on_b.remote(miniray.put(arr)), timeout=60)
        print("sum-ok", s == float(arr.sum()))
        print("remote", node != miniray.get_runtime_context().get_node_id())

        @miniray.remote(resources={"B": 1})
        def make():
            return np.ones(3_000_000)
        print("back", float(miniray.get(make.remote(), timeout=60).sum()))
        miniray.shutdown()
    """)
    assert driver.returncode == 0, driver.stderr
    assert f"nodes 2 {sorted([a.ip, b.ip])}" in driver.stdout
    assert "sum-ok True" in driver.stdout and "remote True" in driver.stdout
    assert "back 3000000.0" in driver.stdout
    # What the task printed on host B came to the driver on host A, with B's address.
    assert re.search(rf"^\(on_b pid=\d+, ip={re.escape(b.ip)}\) hello from b$", driver.stdout,
                     re.M), driver.stdout


def test_a_wrong_token_cannot_join(two_hosts):
    a, b = two_hosts
    a.cli("start", "--head", "--port", "6379", "--node-ip-address", a.ip, "--num-cpus", "1",
          "--object-store-memory", str(64 * 2**20))
    out = b.run(sys.executable, "-m", "miniray.cli", "start", "--address", f"{a.ip}:6379",
                "--node-ip-address", b.ip, "--object-store-memory", str(64 * 2**20),
                env={"MINIRAY_AUTH_TOKEN": "not-the-token"}, timeout=60)
    assert out.returncode != 0
    log = (a.dir / "node.log").read_text()
    assert "does not hold this cluster's token" in log
    assert "1 node(s) alive" in a.cli("status")


def test_a_long_transfer_on_a_slow_link_does_not_make_the_sender_look_dead(two_hosts):
    """B's link to the head carries 64 MB at 100 Mbit/s (~5 s, more than
    the 3 s of silence after which the head declares a node dead): its
    heartbeats travel between the object's chunks, so B stays alive and
    the object arrives."""
    a, b = two_hosts
    dev = next(line.split(":")[1].strip().split("@")[0]
               for line in b.run("ip", "-o", "link").stdout.splitlines() if ": mr" in line)
    shaped = b.run("tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", "100mbit",
                   "burst", "64kb", "latency", "100ms")
    if shaped.returncode != 0:
        pytest.skip(f"cannot shape the link here: {shaped.stderr.strip()}")
    a.cli("start", "--head", "--port", "6379", "--node-ip-address", a.ip, "--num-cpus", "1",
          "--object-store-memory", str(256 * 2**20))
    b.cli("start", "--address", f"{a.ip}:6379", "--node-ip-address", b.ip, "--num-cpus", "1",
          "--resources", '{"B": 1}', "--object-store-memory", str(256 * 2**20),
          env={"MINIRAY_AUTH_TOKEN_PATH": str(a.dir / "token")})
    driver = a.python("""
        import time
        import numpy as np
        import miniray
        miniray.init(address="auto")

        @miniray.remote(resources={"B": 1})
        def make():
            return np.arange(8_000_000, dtype=np.float64)      # 64 MB, made on B

        t0 = time.monotonic()
        arr = miniray.get(make.remote(), timeout=90)            # pulled over the slow link
        print("took", round(time.monotonic() - t0, 1))
        print("sum-ok", float(arr.sum()) == float(np.arange(8_000_000, dtype=np.float64).sum()))
        print("alive", sum(n["Alive"] for n in miniray.nodes()))
    """)
    assert driver.returncode == 0, driver.stdout + driver.stderr
    assert "sum-ok True" in driver.stdout and "alive 2" in driver.stdout, driver.stdout
    took = float(re.search(r"took ([\d.]+)", driver.stdout).group(1))
    assert took > 3.0, f"the link was not slow enough to test anything ({took} s)"
    assert "2 node(s) alive" in a.cli("status")
