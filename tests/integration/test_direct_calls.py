"""Direct actor calls with the real runtime: calls of a one-at-a-time actor
skip the node (``_client_direct``, ``_direct_server``, ``_node_direct``),
and everything a call through the node does still holds: order per caller,
results usable by other processes, crashes, restarts, kill, cancel."""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

import miniray
from miniray import _runtime
from miniray._direct_server import address_for
from miniray._transport import connect_peer
from miniray.exceptions import RayActorError, TaskCancelledError

pytestmark = pytest.mark.timeout(90)


@miniray.remote
class Log:
    def __init__(self):
        self.seen = []

    def add(self, x, pad=None):
        self.seen.append(x)
        return x

    def log(self):
        return self.seen

    def pid(self):
        return os.getpid()

    def sleep(self, s):
        time.sleep(s)
        return s

    def array(self, n):
        return np.arange(n)

    def nested(self, x):
        return [miniray.put(x)]


def client():
    return _runtime.current().client


def served(actor) -> None:
    """Wait until calls of ``actor`` go direct (its server is up)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ref = actor.pid.remote()
        direct = ref.id in client().direct.pending
        miniray.get(ref)
        if direct:
            return
        time.sleep(0.05)
    raise AssertionError("calls never went straight to the actor")


def test_sync_calls_need_no_node(ray_start):
    """With the node daemon stopped (SIGSTOP), direct calls still return."""
    a = Log.remote()
    served(a)
    node_pid = client().welcome["node_pid"]
    os.kill(node_pid, signal.SIGSTOP)
    try:
        got = [miniray.get(a.add.remote(i), timeout=10) for i in range(50)]
    finally:
        os.kill(node_pid, signal.SIGCONT)
    assert got == list(range(50))
    # The node heard of every call meanwhile: its view of them is whole.
    refs = [a.add.remote(i) for i in range(50, 60)]
    assert miniray.get(refs) == list(range(50, 60))
    assert miniray.get(a.log.remote()) == list(range(60))


@pytest.mark.parametrize("direct", ["1", "0"])
def test_order_per_caller_holds_across_direct_and_node_calls(ray_factory, monkeypatch, direct):
    monkeypatch.setenv("MINIRAY_DIRECT_CALLS", direct)
    ray_factory(num_cpus=2)
    a = Log.remote()
    served(a) if direct == "1" else miniray.get(a.pid.remote())
    big = b"x" * (200 * 1024)           # beyond the inline threshold: through the node
    refs = []
    for i in range(300):
        if i % 7 == 3:
            refs.append(a.add.remote(miniray.put(i)))      # a ref arg: through the node
        elif i % 11 == 5:
            refs.append(a.add.remote(i, big))
        else:
            refs.append(a.add.remote(i))
    assert miniray.get(refs) == list(range(300))
    assert miniray.get(a.log.remote())[-300:] == list(range(300))
    if direct == "1":
        assert not client().direct.pending


def test_results_of_direct_calls_serve_other_tasks_and_gets(ray_start):
    @miniray.remote
    def double(x):
        return 2 * x

    @miniray.remote
    def total(xs):
        return int(sum(xs))

    a = Log.remote()
    served(a)
    r = a.add.remote(21)
    assert miniray.get(double.remote(r)) == 42          # passed on before its get
    assert miniray.get(r) == 21 and miniray.get(double.remote(r)) == 42
    arr = a.array.remote(1_000_000)                     # an arena result: read via the node
    assert miniray.get(total.remote(arr)) == sum(range(1_000_000))
    assert miniray.get(arr)[-1] == 999_999
    inner = miniray.get(a.nested.remote("held"))[0]     # a ref inside a direct result
    assert miniray.get(inner) == "held"
    ready, _ = miniray.wait([a.add.remote(1)], timeout=10)
    assert len(ready) == 1


def test_crash_in_a_direct_call_fails_it_with_actor_died(ray_start):
    @miniray.remote
    class Crashy:
        def ping(self):
            return "pong"

        def crash(self):
            os._exit(1)

    c = Crashy.remote()
    deadline = time.monotonic() + 10
    while not client().direct.channels and time.monotonic() < deadline:
        miniray.get(c.ping.remote())
        time.sleep(0.05)
    ref = c.crash.remote()
    assert ref.id in client().direct.pending
    with pytest.raises(RayActorError):
        miniray.get(ref, timeout=20)
    with pytest.raises(RayActorError):
        miniray.get(c.ping.remote(), timeout=20)


def test_direct_call_caught_by_a_crash_is_retried_after_the_restart(ray_start, tmp_path):
    marker = str(tmp_path / "crashed")

    @miniray.remote(max_restarts=1, max_task_retries=1)
    class Once:
        def ping(self):
            return os.getpid()

        def crash_once(self, path):
            if not os.path.exists(path):
                open(path, "w").close()
                os._exit(1)
            return "second run"

    o = Once.remote()
    served_pid = None
    deadline = time.monotonic() + 10
    while not client().direct.channels and time.monotonic() < deadline:
        served_pid = miniray.get(o.ping.remote())
        time.sleep(0.05)
    ref = o.crash_once.remote(marker)
    assert ref.id in client().direct.pending
    assert miniray.get(ref, timeout=30) == "second run"
    assert miniray.get(o.ping.remote(), timeout=20) != served_pid


def test_kill_fails_a_running_direct_call(ray_start):
    a = Log.remote()
    served(a)
    ref = a.sleep.remote(60)
    time.sleep(0.3)
    t0 = time.monotonic()
    miniray.kill(a)
    with pytest.raises(RayActorError):
        miniray.get(ref, timeout=20)
    assert time.monotonic() - t0 < 10


def test_cancel_reaches_running_and_queued_direct_calls(ray_start):
    a = Log.remote()
    served(a)
    running = a.sleep.remote(60)
    queued = a.sleep.remote(60)
    assert running.id in client().direct.pending and queued.id in client().direct.pending
    time.sleep(0.3)
    miniray.cancel(queued)
    with pytest.raises(TaskCancelledError):
        miniray.get(queued, timeout=20)
    miniray.cancel(running)
    with pytest.raises(TaskCancelledError):
        miniray.get(running, timeout=20)
    assert miniray.get(a.add.remote("after"), timeout=20) == "after"


def test_remote_never_waits_for_a_busy_actor(ray_start):
    """Calls with large inline args queue while the actor sleeps: the
    caller's ``.remote()`` returns at once (the worker reads them meanwhile)."""
    a = Log.remote()
    served(a)
    busy = a.sleep.remote(3)
    time.sleep(0.2)
    t0 = time.monotonic()
    refs = [a.add.remote(i, b"p" * 90_000) for i in range(40)]     # ~3.6 MB, inline
    assert time.monotonic() - t0 < 1.5
    assert miniray.get(refs, timeout=30) == list(range(40))
    assert miniray.get(busy) == 3


def test_direct_channel_refuses_a_wrong_token(ray_start):
    a = Log.remote()
    served(a)
    hello = ("HELLO-ignored",)
    with pytest.raises(ConnectionError):
        connect_peer(address_for(a._actor_id), b"not the token" * 3, hello)
    assert miniray.get(a.add.remote("still serving")) == "still serving"


def test_refs_inside_direct_results_stay_alive(ray_start):
    """The worker's DECREF of a ref it returned may reach the node before
    the caller registers the call: the ref must survive (every round)."""
    a = Log.remote()
    served(a)
    for i in range(40):
        inner = miniray.get(a.nested.remote(i))[0]
        assert miniray.get(inner, timeout=10) == i


def test_a_call_through_the_node_is_not_starved_by_a_busy_caller(ray_factory):
    ray_factory(num_cpus=3)

    @miniray.remote
    class Worky:
        def pid(self):
            return os.getpid()

        def work(self, x):
            time.sleep(0.002)
            return x

    @miniray.remote
    def flood(a, seconds):
        end = time.monotonic() + seconds
        refs, n = [], 0
        while time.monotonic() < end:
            refs.append(a.work.remote(n))
            n += 1
            if len(refs) >= 50:
                miniray.get(refs[:25])
                refs = refs[25:]
        miniray.get(refs)
        return n

    w = Worky.remote()
    miniray.get(w.pid.remote())
    f = flood.remote(w, 8.0)
    time.sleep(1.0)
    t0 = time.monotonic()
    assert miniray.get(w.work.remote(miniray.put(7)), timeout=30) == 7   # through the node
    assert time.monotonic() - t0 < 4.0          # not after the whole flood
    assert miniray.get(f) > 100


def test_a_serial_actor_using_futures_still_answers_direct_calls(ray_start):
    @miniray.remote
    def seven():
        return 7

    @miniray.remote
    class UsesFutures:
        def pid(self):
            return os.getpid()

        def via_future(self):
            return seven.remote().future().result(timeout=10)

        def echo(self, x):
            return x

    u = UsesFutures.remote()
    served(u)
    assert miniray.get(u.via_future.remote(), timeout=20) == 7
    for i in range(5):
        assert miniray.get(u.echo.remote(i), timeout=10) == i


def test_a_call_made_after_a_crash_runs_on_the_restarted_actor(ray_start):
    @miniray.remote(max_restarts=3)
    class Restarts:
        def pid(self):
            return os.getpid()

    r = Restarts.remote()
    for _ in range(2):
        served(r)
        pid = miniray.get(r.pid.remote())
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
        assert miniray.get(r.pid.remote(), timeout=30) != pid


def test_calls_queued_when_a_driver_exits_still_run(ray_start):
    from tests.conftest import run_driver
    a = Log.options(name="log", namespace="direct").remote()
    served(a)
    address = _runtime.current().client.address
    out = run_driver(f"""
        import time, miniray
        from miniray import _runtime
        miniray.init(address={address!r}, namespace="direct")
        a = miniray.get_actor("log")
        for _ in range(200):
            r = a.pid.remote()
            direct = r.id in _runtime.current().client.direct.pending
            miniray.get(r)
            if direct:
                break
            time.sleep(0.02)
        a.sleep.remote(1.0)
        time.sleep(0.1)
        for i in range(100):
            a.add.remote(i, b"p" * 50_000)      # 5 MB queued behind the sleep
        print("queued", sum(len(c.buf) for c in _runtime.current().client.direct.channels.values()))
    """)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) > 0          # some were still queued at exit
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if len(miniray.get(a.log.remote())) == 100:
            break
        time.sleep(0.2)
    assert miniray.get(a.log.remote()) == list(range(100))


def test_calls_queued_behind_a_busy_actor_reach_it_without_a_get(ray_start):
    """Calls the actor's socket could not take yet leave on the io thread's
    ticks: another process waiting on one of them, or a wait here, is
    answered without this process calling get."""
    @miniray.remote
    def first(refs):
        return miniray.get(refs[0])

    a = Log.remote()
    served(a)
    a.sleep.remote(1.5)
    refs = [a.add.remote(i, b"x" * 50_000) for i in range(100)]
    assert sum(len(ch.buf) for ch in client().direct.channels.values()) > 0
    time.sleep(2.0)
    assert miniray.get(first.remote([refs[-1]]), timeout=15) == 99
    ready, _ = miniray.wait([refs[-2]], timeout=10)
    assert len(ready) == 1


def test_threads_of_one_driver_share_channels(ray_start):
    """Several threads call the same actors at once, sync and in bursts:
    every result is its own call's, nothing hangs."""
    import threading
    actors = [Log.remote(), Log.remote()]
    for a in actors:
        served(a)
    errors = []

    def caller(k):
        try:
            for i in range(300):
                a = actors[(k + i) % 2]
                if i % 10 == 0:
                    vals = [(k, i, j) for j in range(20)]
                    assert miniray.get([a.add.remote(v) for v in vals], timeout=30) == vals
                else:
                    assert miniray.get(a.add.remote((k, i)), timeout=30) == (k, i)
        except BaseException as exc:        # reported below, with the thread's index
            errors.append((k, repr(exc)))

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    seen = miniray.get(actors[0].log.remote()) + miniray.get(actors[1].log.remote())
    assert len(seen) == 4 * (270 + 30 * 20)
    assert not client().direct.pending


def test_a_caller_of_another_node_is_turned_away_once(local_cluster):
    """An actor on another node of this host: its worker refuses the
    driver's channel (the driver's node must register its calls), and the
    driver stops trying; calls go through the nodes and keep their order."""
    c = local_cluster(1, {"num_cpus": 1, "resources": {"B": 1}})
    a = Log.options(resources={"B": 1}).remote()
    miniray.get(a.pid.remote(), timeout=30)
    deadline = time.monotonic() + 10
    direct = client().direct
    while time.monotonic() < deadline:
        assert miniray.get(a.add.remote("x"), timeout=30) == "x"
        if direct.retry_at.get(a._actor_id, (0,))[0] == float("inf"):
            break
        time.sleep(0.05)
    assert direct.retry_at[a._actor_id][0] == float("inf")
    assert a._actor_id not in direct.channels
    refs = [a.add.remote(i) for i in range(50)]
    assert miniray.get(refs, timeout=30) == list(range(50))
    assert c.worker_nodes
