"""Review: demonstrations of CoreClient bugs (miniray/_core.py, _worker_main.py).

Each test states the expected (correct) behaviour.  Most failed on the
commits reviewed (0e95989, bda3690) and pass since the fixes made during the
review (8a4b5aa, 34f430e).  At 34f430e these still fail:
test_driver_with_many_open_files_can_get (select() on a descriptor >= 1024),
test_cancel_is_not_lost_while_a_helper_thread_decodes (process-wide
``critical``; ~5 runs in 6) and
test_cancel_while_decoding_task_args_releases_pins_and_numpy (resolve_args is
not ``critical``).  See the review report.
"""
from __future__ import annotations

import gc
import threading
import time

import numpy as np
import pytest

import miniray
from miniray._protocol import Query
from miniray.exceptions import GetTimeoutError, TaskCancelledError
from tests.conftest import run_driver, wait_for

pytestmark = pytest.mark.timeout(60)


def client():
    return miniray._runtime.current().client


def object_info(oid):
    return client().query(Query.OBJECT_INFO, oid)




@miniray.remote
def sleep_return(seconds, value):
    time.sleep(seconds)
    return value


def test_reader_switch_while_a_get_leads_does_not_starve_queued_calls(ray_factory):
    """A thread leads the reads (blocked in a get); another thread then uses a
    future (switching to reader mode) and fires an actor call the first get
    depends on.  The io thread waits for ``_reading`` to clear before it
    flushes anything again, and the leader keeps re-taking the lead, so the
    queued call is never sent: the get can only time out."""
    ray_factory(num_cpus=2, object_store_memory=64 * 2**20)

    @miniray.remote
    class Flag:
        def __init__(self):
            self.value = False

        def set(self):
            self.value = True

        def get(self):
            return self.value

    @miniray.remote
    def wait_for_flag(flag):
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline:
            if miniray.get(flag.get.remote()):
                return "seen"
            time.sleep(0.01)
        return "gave up"

    flag = Flag.remote()
    assert miniray.get(flag.get.remote(), timeout=20) is False
    ref = wait_for_flag.remote(flag)
    out = {}

    def leader():
        try:
            out["value"] = miniray.get(ref, timeout=8)
        except Exception as exc:      # noqa: BLE001
            out["value"] = exc
        out["at"] = time.monotonic()

    t = threading.Thread(target=leader, daemon=True)
    t.start()
    time.sleep(0.5)                     # the leader sleeps in recv by now
    assert miniray.put(1).future().result(timeout=5) == 1    # -> reader mode
    t0 = time.monotonic()
    flag.set.remote()                   # fire and forget (send_later)
    t.join(15)
    assert out.get("value") == "seen" and out["at"] - t0 < 3, (
        f"the queued flag.set call was not sent while another thread led the reads: "
        f"{out.get('value')!r} after {out.get('at', t0) - t0:.1f} s")


def test_cancel_reaches_actor_call_behind_large_queued_calls(ray_factory):
    """The node pipelines an actor's calls to its worker.  With >256 KiB of
    queued EXECUTEs ahead of the CANCEL_TASK, the SIGUSR1 poke reads one
    256 KiB chunk (and the rest may still sit in the node's output buffer),
    so the running call is never interrupted."""
    ray_factory(num_cpus=2, object_store_memory=64 * 2**20)

    @miniray.remote
    class A:
        def sleep(self, seconds):
            time.sleep(seconds)
            return "finished"

        def size(self, payload):
            return len(payload)

    a = A.remote()
    assert miniray.get(a.size.remote(b"x"), timeout=20) == 1
    running = a.sleep.remote(15)
    time.sleep(0.5)
    queued = [a.size.remote(b"x" * 90_000) for _ in range(4)]    # inline args
    time.sleep(0.5)
    miniray.cancel(running)
    try:
        outcome = miniray.get(running, timeout=6)
    except TaskCancelledError:
        outcome = "cancelled"
    except GetTimeoutError:
        outcome = "still running 6 s after cancel"
    assert outcome == "cancelled"
    assert miniray.get(queued, timeout=20) == [90_000] * 4


def test_timed_out_gets_leave_no_dropped_entries(ray_factory):
    """Every timed-out GET leaves an entry in ``_dropped`` that is only removed
    when a late REPLY arrives; after DROP_REQ the node never replies, so a
    polling loop grows ``_dropped`` without bound."""
    ray_factory(num_cpus=1, object_store_memory=64 * 2**20)
    c = client()
    r = sleep_return.remote(10, 1)
    before = len(c._dropped)
    for _ in range(300):
        with pytest.raises(GetTimeoutError):
            miniray.get(r, timeout=0)
    miniray.cancel(r)
    time.sleep(0.5)
    miniray.available_resources()       # a round trip: reads whatever the node sent
    assert len(c._dropped) - before < 10, f"{len(c._dropped) - before} entries left in _dropped"


def test_get_timeout_racing_its_reply_leaves_no_pin(ray_factory, monkeypatch):
    """A follower's get times out in ``cond.wait`` while the leader is about
    to dispatch its reply.  If the reply is dispatched before ``_abandon``
    pops the request, ``_abandon`` does nothing (no DROP_REQ, no unpin) and
    ``request`` returns None: the zero-copy reply's pin is never released.
    The window is widened here by delaying ``_abandon``."""
    ray_factory(num_cpus=2, object_store_memory=64 * 2**20)
    c = client()

    @miniray.remote
    def late_big(delay):
        time.sleep(delay)
        return np.ones(50_000)                   # 400 KB: in the arena

    leader = threading.Thread(target=lambda: miniray.get(sleep_return.remote(3, 0)),
                              daemon=True)
    leader.start()
    time.sleep(0.3)                               # the leader reads the socket
    r = late_big.remote(0.3)
    oid = r.id
    orig = c._abandon

    def slow_abandon(rid, msg):
        time.sleep(0.8)                           # the reply is dispatched meanwhile
        orig(rid, msg)

    monkeypatch.setattr(c, "_abandon", slow_abandon)
    try:
        miniray.get(r, timeout=0.1)
    except GetTimeoutError:
        pass
    monkeypatch.undo()
    del r
    gc.collect()
    freed = wait_for(lambda: object_info(oid) is None, 5)
    leader.join(10)
    assert freed, f"object still in the store after its last ref was dropped: {object_info(oid)}"


def test_cancelled_task_does_not_keep_its_args_alive(ray_factory):
    """A cancel delivered while the task blocks in get is raised from
    ``wait_until`` (``raise interrupt``, with the exception in a local): the
    exception, its traceback and every frame of the task form a cycle, so the
    task's arguments (and refs in them) stay alive until the worker's cyclic
    GC happens to run, which an idle worker never does."""
    ray_factory(num_cpus=2, object_store_memory=64 * 2**20)

    @miniray.remote
    def blocked(refs, forever):
        return miniray.get(forever[0])

    big = miniray.put(np.ones(100_000))           # 800 KB in the arena
    oid = big.id
    forever = sleep_return.remote(30, 0)
    # the nested ref travels in the args: the worker holds it while the task runs
    outer = blocked.remote([big], [forever])
    time.sleep(0.5)
    miniray.cancel(outer)
    with pytest.raises(TaskCancelledError):
        miniray.get(outer, timeout=10)
    del big, outer
    miniray.cancel(forever)
    gc.collect()
    freed = wait_for(lambda: object_info(oid) is None, 5)
    assert freed, f"the cancelled task's argument is still held: {object_info(oid)}"


def test_future_callback_on_broken_send_does_not_deadlock():
    """``send`` calls ``_mark_broken`` while holding ``_send_lock``;
    ``_mark_broken`` runs the pending futures' callbacks, and a callback that
    calls miniray (put, remote) takes ``_send_lock`` again: the thread
    deadlocks instead of raising NodeDiedError, and every later send in the
    process blocks forever.  ``shutdown(SHUT_WR)`` makes the next send fail
    as it does when the node has just died."""
    try:
        proc = run_driver("""
            import socket, threading, time, miniray
            miniray.init(num_cpus=1, object_store_memory=64 * 2**20)

            @miniray.remote
            def slow():
                time.sleep(30)

            fut = slow.remote().future()
            fut.add_done_callback(lambda f: miniray.put(b"retry"))
            c = miniray._runtime.current().client
            time.sleep(0.5)
            c.sock.shutdown(socket.SHUT_WR)
            try:
                miniray.available_resources()
            except Exception as exc:
                print("raised", type(exc).__name__, flush=True)
        """, timeout=15)
    except Exception as exc:   # subprocess.TimeoutExpired
        pytest.fail(f"the driver deadlocked: {type(exc).__name__}")
    assert "raised NodeDiedError" in proc.stdout, proc.stdout + proc.stderr


def _fail_on_load():
    raise RuntimeError("this object cannot be loaded here")


class Unloadable:
    def __reduce__(self):
        return (_fail_on_load, ())


def test_failed_decode_in_get_list_releases_the_other_pins(ray_factory):
    """``get_values`` decodes the fetched payloads one by one; when one fails
    to deserialize, the zero-copy payloads after it are never decoded, so the
    pins the node took for them in the GET reply are never released."""
    ray_factory(num_cpus=2, object_store_memory=64 * 2**20)

    @miniray.remote
    def make_bad():
        return Unloadable()

    @miniray.remote
    def make_big():
        return np.ones(100_000)                  # 800 KB: in the arena

    bad, big = make_bad.remote(), make_big.remote()
    miniray.wait([bad, big], num_returns=2, timeout=20)
    oid = big.id
    with pytest.raises(Exception, match="cannot be loaded"):
        miniray.get([bad, big], timeout=20)
    del bad, big
    gc.collect()
    freed = wait_for(lambda: object_info(oid) is None, 5)
    assert freed, f"object still in the store after its last ref was dropped: {object_info(oid)}"


_KBINT_OTHER_THREADS = """
    import faulthandler, os, random, signal, sys, threading, time
    import miniray
    miniray.init(num_cpus=4, object_store_memory=64 * 2**20)

    @miniray.remote
    def f(x):
        return x

    miniray.get([f.remote(i) for i in range(20)])
    main = threading.get_ident()
    stop = time.monotonic() + 3.0
    done = {}

    def other(k):
        i = 0
        while time.monotonic() < stop:
            assert miniray.get(f.remote((k, i))) == (k, i)
            i += 1
        done[k] = i

    threads = [threading.Thread(target=other, args=(k,), daemon=True) for k in range(4)]
    for t in threads:
        t.start()

    def interrupter():                 # Ctrl-C, many times
        rng = random.Random(0)
        while time.monotonic() < stop - 1.0:
            time.sleep(rng.uniform(0.0005, 0.003))
            signal.pthread_kill(main, signal.SIGINT)
    go = threading.Event()
    threading.Thread(target=lambda: (go.wait(), interrupter()), daemon=True).start()
    interrupts = 0
    go.set()
    while True:
        try:
            if time.monotonic() >= stop:
                break
            miniray.get(f.remote(1))
        except KeyboardInterrupt:
            interrupts += 1
    for t in threads:
        t.join(5)
    stuck = [k for k in range(4) if k not in done]
    print("interrupts", interrupts, "stuck", stuck, flush=True)
    os._exit(0)
"""


def test_keyboard_interrupt_in_driver_loses_no_reply_of_other_threads():
    """KeyboardInterrupt in the driver's main thread while it leads the reads
    (e.g. right after ``recv_into`` returned, before ``push_scratch``) drops
    the bytes it received: replies meant for other threads, which then wait
    forever."""
    proc = run_driver(_KBINT_OTHER_THREADS, timeout=30)
    assert "stuck []" in proc.stdout, proc.stdout + proc.stderr[-3000:]


_KBINT_SEND = """
    import os, random, signal, threading, time
    import miniray
    miniray.init(num_cpus=2, object_store_memory=64 * 2**20)

    @miniray.remote
    def make(i):
        return i

    main = threading.get_ident()
    stop = time.monotonic() + 3.0

    def interrupter():
        rng = random.Random(1)
        while time.monotonic() < stop - 1.0:
            time.sleep(rng.uniform(0.001, 0.01))
            signal.pthread_kill(main, signal.SIGINT)
    go = threading.Event()
    threading.Thread(target=lambda: (go.wait(), interrupter()), daemon=True).start()
    errors = []
    go.set()
    while True:
        try:
            if time.monotonic() >= stop:
                break
            refs = [make.remote(i) for i in range(500)]   # ~100 KB of queued SUBMITs
            assert miniray.get(refs, timeout=10) == list(range(500))
        except KeyboardInterrupt:
            pass
        except Exception as exc:
            errors.append(type(exc).__name__)
            break
    try:
        after = miniray.get(make.remote(7), timeout=10)
    except Exception as exc:
        after = type(exc).__name__
    print("errors", errors, "after", after, flush=True)
    os._exit(0)
"""


def test_keyboard_interrupt_during_send_keeps_the_stream_intact():
    """``sendall`` raises KeyboardInterrupt after a partial write (CPython runs
    signal handlers between partial sends): the node gets half a frame, drops
    the connection as sending a bad frame, and, this driver owning the node,
    shuts the whole node down."""
    proc = run_driver(_KBINT_SEND, timeout=30)
    assert "errors [] after 7" in proc.stdout, proc.stdout + proc.stderr[-3000:]


def test_cancel_of_a_sleeping_task_does_not_keep_its_args_alive(ray_factory):
    """The cancel of a task busy outside any read is raised by the worker's
    SIGINT handler (``raise exc``, the exception in a local of the handler's
    frame): again a frame <-> traceback cycle that keeps the task's arguments
    (the nested ref here) alive until the worker's cyclic GC runs."""
    ray_factory(num_cpus=1, object_store_memory=64 * 2**20)

    @miniray.remote
    def sleeper(refs):
        time.sleep(30)

    big = miniray.put(np.ones(100_000))           # 800 KB in the arena
    oid = big.id
    outer = sleeper.remote([big])
    time.sleep(0.5)
    miniray.cancel(outer)
    with pytest.raises(TaskCancelledError):
        miniray.get(outer, timeout=10)
    del big, outer
    gc.collect()
    freed = wait_for(lambda: object_info(oid) is None, 5)
    assert freed, f"the cancelled task's argument is still held: {object_info(oid)}"


def test_cancel_during_decode_releases_the_pin(ray_factory):
    """``get_values`` pops a fetched payload and then decodes it; a cancel
    (SIGUSR1 poke -> TaskCancelledError) that lands inside ``decode`` before
    the pin object exists (``pinned_view`` imports numpy lazily: the first
    get of an arena object in a worker spends tens of ms importing it) leaks
    the node's pin on that object.  The import is made slow here."""
    ray_factory(num_cpus=1, object_store_memory=64 * 2**20)

    @miniray.remote
    def prepare():
        import sys
        import time as t

        class SlowNumpyImport:          # the first ``import numpy`` takes 2 s
            def find_spec(self, name, path=None, target=None):
                if name == "numpy":
                    sys.meta_path.remove(self)
                    t.sleep(2)
                return None

        if "numpy" in sys.modules:
            return False
        sys.meta_path.insert(0, SlowNumpyImport())
        return True

    @miniray.remote
    def reads(refs):
        return miniray.get(refs[0]).sum()

    @miniray.remote
    def collect():
        import gc as g
        return g.collect()

    if not miniray.get(prepare.remote(), timeout=20):
        pytest.skip("the worker has numpy imported already")
    big = miniray.put(np.ones(100_000))           # 800 KB in the arena
    oid = big.id
    outer = reads.remote([big])
    time.sleep(1.0)                                # inside the slow import
    miniray.cancel(outer)
    with pytest.raises(TaskCancelledError):
        miniray.get(outer, timeout=10)
    del big, outer
    miniray.get(collect.remote(), timeout=10)      # rule out reference cycles
    gc.collect()
    freed = wait_for(lambda: object_info(oid) is None, 5)
    assert freed, f"the object is still pinned: {object_info(oid)}"


def test_cancel_inside_runtime_import_does_not_poison_the_worker(ray_factory):
    """``Arena.pinned_view`` imports numpy lazily, so the first get of an
    arena object in a fresh worker spends tens of ms inside ``import numpy``;
    a cancel (poke -> TaskCancelledError) landing there leaves numpy half
    imported (its C core loaded), and every later task in that pooled worker
    fails with "ImportError: cannot load module more than once per process".
    Seen in ~3% of cancels timed at a first get; made deterministic here by
    slowing down the ``import datetime`` that numpy's C core init does."""
    ray_factory(num_cpus=1, object_store_memory=64 * 2**20)

    @miniray.remote
    def prepare():
        import sys
        import time as t

        class SlowDatetime:            # imported by numpy's C core init
            def find_spec(self, name, path=None, target=None):
                if name == "datetime":
                    sys.meta_path.remove(self)
                    t.sleep(2)
                return None

        if "numpy" in sys.modules or "datetime" in sys.modules:
            return False
        sys.meta_path.insert(0, SlowDatetime())
        return True

    @miniray.remote
    def reads(refs):
        return float(miniray.get(refs[0]).sum())

    @miniray.remote
    def uses_numpy():
        import numpy
        return float(numpy.ones(3).sum())

    if not miniray.get(prepare.remote(), timeout=20):
        pytest.skip("the worker has numpy imported already")
    big = miniray.put(np.ones(100_000))           # 800 KB in the arena
    outer = reads.remote([big])
    time.sleep(1.0)                                # inside the slow import
    miniray.cancel(outer)
    with pytest.raises(Exception):
        miniray.get(outer, timeout=10)
    assert miniray.get(uses_numpy.remote(), timeout=10) == 3.0


@pytest.fixture
def started_node(tmp_path):
    """A node started with ``miniray start --head`` (stopped and checked after)."""
    import json
    import os
    import subprocess
    import sys

    import psutil

    from tests.conftest import assert_clean, wait_gone
    env = dict(os.environ, MINIRAY_CLUSTER_DIR=str(tmp_path))

    def cli(*args):
        out = subprocess.run([sys.executable, "-m", "miniray.cli", *args], capture_output=True,
                             text=True, env=env, timeout=60)
        assert out.returncode == 0, out.stderr
        return out

    cli("start", "--head", "--num-cpus", "1", "--object-store-memory", str(64 * 2**20))
    info = json.loads((tmp_path / "cluster.json").read_text())
    pids = {info["pid"]} | {p.pid for p in psutil.Process(info["pid"]).children(recursive=True)}
    yield env
    try:
        pids |= {p.pid for p in psutil.Process(info["pid"]).children(recursive=True)}
    except psutil.Error:
        pass
    cli("stop")
    assert not wait_gone(pids, timeout=20)
    assert_clean(set())


def test_driver_with_many_open_files_can_get(started_node):
    """``_read_some`` now ``select.select``s before every read on a driver's
    main thread (before: only for gets with a timeout, which failed the same
    way).  select() cannot take a descriptor >= FD_SETSIZE (1024): a driver
    that has 1100 files open when it connects gets ValueError from every get.
    (``_runtime.start_node`` has the same select, so ``init()`` without an
    address fails there already.)"""
    import resource
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 1200:
        pytest.skip("the hard limit on open files is below 1200")
    proc = run_driver("""
        import os, resource, miniray
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
        files = [os.open("/dev/null", os.O_RDONLY) for _ in range(1100)]
        miniray.init(address="auto")

        @miniray.remote
        def f():
            return 1
        for kw in ({}, {"timeout": 10}):
            try:
                print("get", miniray.get(f.remote(), **kw), flush=True)
            except Exception as exc:
                print("get failed", type(exc).__name__, exc, flush=True)
        miniray.shutdown()
    """, timeout=30, env=started_node)
    assert proc.stdout.count("get 1") == 2, proc.stdout + proc.stderr[-2000:]


def test_cancel_is_not_lost_while_a_helper_thread_decodes(ray_factory):
    """``CoreClient.critical`` counts decodes of every thread, but the SIGINT
    handler runs for the main thread: while a helper thread of the task is
    inside ``get_values``, the main thread's cancel is deferred, and the
    deferred exception is then raised by whichever thread next leaves
    ``get_values``/``wait_until`` with ``critical == 0``: here the helper.
    The main thread never notices and the task finishes normally."""
    ray_factory(num_cpus=2, object_store_memory=256 * 2**20)
    big = miniray.put(list(range(2_000_000)))      # each decode takes ~100 ms

    @miniray.remote
    def busy(refs, seconds):
        import threading as th
        import time as t
        stop = t.monotonic() + seconds

        def helper():                               # keeps decoding
            while t.monotonic() < stop:
                try:
                    miniray.get(refs[0])
                except Exception:                   # noqa: BLE001
                    pass
        th.Thread(target=helper, daemon=True).start()
        x = 0
        while t.monotonic() < stop:                 # pure-Python work
            x += 1
        return "finished"

    r = busy.remote([big], 6)
    time.sleep(1.5)
    miniray.cancel(r)
    try:
        outcome = miniray.get(r, timeout=10)
    except TaskCancelledError:
        outcome = "cancelled"
    assert outcome == "cancelled"


def test_cancel_while_decoding_task_args_releases_pins_and_numpy(ray_factory):
    """The task's own arguments are decoded in ``Worker.resolve_args`` with
    ``current_tid`` already set but outside ``CoreClient.critical``: a cancel
    landing in the lazy ``import numpy`` of ``pinned_view`` there leaks the
    pins of the EXECUTE's dependencies and leaves numpy half imported."""
    ray_factory(num_cpus=1, object_store_memory=64 * 2**20)

    @miniray.remote
    def prepare():
        import sys
        import time as t

        class SlowDatetime:            # imported by numpy's C core init
            def find_spec(self, name, path=None, target=None):
                if name == "datetime":
                    sys.meta_path.remove(self)
                    t.sleep(2)
                return None

        if "numpy" in sys.modules or "datetime" in sys.modules:
            return False
        sys.meta_path.insert(0, SlowDatetime())
        return True

    @miniray.remote
    def total(a):
        return float(a.sum())

    @miniray.remote
    def uses_numpy():
        import numpy
        return float(numpy.ones(3).sum())

    if not miniray.get(prepare.remote(), timeout=20):
        pytest.skip("the worker has numpy imported already")
    big = miniray.put(np.ones(100_000))           # 800 KB in the arena: a dependency
    oid = big.id
    outer = total.remote(big)
    time.sleep(1.0)                                # inside the slow import
    miniray.cancel(outer)
    with pytest.raises(Exception):
        miniray.get(outer, timeout=10)
    del big, outer
    gc.collect()
    problems = []
    if not wait_for(lambda: object_info(oid) is None, 5):
        problems.append(f"argument still pinned: {object_info(oid)}")
    try:
        miniray.get(uses_numpy.remote(), timeout=10)
    except Exception as exc:                       # noqa: BLE001
        problems.append(f"worker poisoned: {str(exc).splitlines()[-1][:100]}")
    assert not problems, problems
