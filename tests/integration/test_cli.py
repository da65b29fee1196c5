"""`miniray start/status/stop`, joining a running node, detached actors."""
from __future__ import annotations

from tests.conftest import run_driver


def test_start_status_stop(cluster):
    cli, env, info = cluster
    out = cli("status")
    assert "CPU: 2 free of 2" in out.stdout
    again = cli("start", "--head", check=False)
    assert again.returncode != 0 and "already running" in again.stderr


def test_detached_actor_outlives_driver(cluster):
    cli, env, info = cluster
    first = run_driver("""
        import miniray
        miniray.init(address="auto")
        @miniray.remote
        class Store:
            def __init__(self):
                self.items = []
            def add(self, x):
                self.items.append(x)
                return len(self.items)
        s = Store.options(name="store", lifetime="detached").remote()
        assert miniray.get(s.add.remote("a")) == 1
        t = Store.options(name="temp").remote()
        assert miniray.get(t.add.remote("b")) == 1
    """, env=env)
    assert first.returncode == 0, first.stderr
    second = run_driver("""
        import miniray
        miniray.init(address="auto")
        s = miniray.get_actor("store")
        print(miniray.get(s.add.remote("c")))
        try:
            miniray.get_actor("temp")
            print("temp alive")
        except ValueError:
            print("temp gone")
        miniray.kill(s)
    """, env=env)
    assert second.returncode == 0, second.stderr
    assert second.stdout.split() == ["2", "temp", "gone"]


def test_driver_disconnect_keeps_node(cluster):
    cli, env, info = cluster
    proc = run_driver("""
        import miniray
        miniray.init(address="auto")
        @miniray.remote
        def f(x):
            return x + 1
        print(miniray.get(f.remote(1)))
        miniray.shutdown()
    """, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "2", proc.stderr
    assert "CPU: 2 free of 2" in cli("status").stdout


def test_auto_without_node_is_clear(tmp_path):
    proc = run_driver("""
        import miniray
        try:
            miniray.init(address="auto")
        except ConnectionError as e:
            print("error:", e)
    """, env={"MINIRAY_CLUSTER_DIR": str(tmp_path)})
    assert "miniray start --head" in proc.stdout


def test_a_tcp_peer_that_never_authenticates_is_dropped_in_seconds(cluster):
    import socket
    import time as _time
    cli, env, info = cluster
    host, port = info["peer_address"].rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=20)
    t0 = _time.monotonic()
    greeting = s.recv(64)
    assert greeting.startswith(b"MRAY")
    # Silent: the node closes it (it would otherwise hold it forever).
    assert s.recv(64) == b""
    assert _time.monotonic() - t0 < 15
    s.close()
    assert cli("status").returncode == 0      # and it keeps serving
