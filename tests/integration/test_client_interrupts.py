"""Interrupts in clients: a driver's Ctrl-C and a task's cancel.

Both arrive as SIGINT on a client's main thread and pass the one gate of
``miniray._client_gate``: they land in user code or in a wait of the runtime,
never in the middle of its work (sending or reading a frame, taking queued
messages, counting a ref, decoding with its pins and imports, writing into
the arena).  Inside a task a cancel is a KeyboardInterrupt, as in Ray; the
caller's ``get`` raises TaskCancelledError.

Several tests make a rare race certain by running the interrupt from a
patched runtime function, at the exact point the race needs; the drivers
that fire SIGINTs in a loop check the same from outside.
"""
from __future__ import annotations

import gc
import os
import time

import numpy as np
import pytest

import miniray
from miniray.exceptions import GetTimeoutError, TaskCancelledError
from tests.conftest import node_stats as stats, object_info, run_driver, wait_for

pytestmark = pytest.mark.timeout(60)


def client():
    return miniray._runtime.current().client


@miniray.remote
def sleep_return(seconds, value):
    time.sleep(seconds)
    return value


@miniray.remote
def touch(path):
    open(path, "w").close()
    return path


def _cancel_here():
    """In a worker's task: act as if CANCEL_TASK for this task had just been
    read, i.e. record it and interrupt the main thread, at this very point."""
    import signal
    import threading
    ws = miniray._runtime.current().worker_state
    ws.cancelled.add(ws.current_tid)
    ws.cancel_tid = ws.current_tid
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)


# -- cancels inside the task -------------------------------------------------------------------

def test_cancel_is_a_keyboard_interrupt_that_except_exception_cannot_swallow(ray_factory,
                                                                           tmp_path):
    ray_factory(num_cpus=1, object_store_memory=64 * 2**20)

    @miniray.remote
    def stubborn(path):
        while True:
            try:
                time.sleep(0.05)
            except Exception:             # noqa: BLE001 - what user code does
                pass
            except BaseException as exc:  # noqa: BLE001
                with open(path, "w") as f:
                    f.write(type(exc).__name__)
                raise

    seen = str(tmp_path / "seen")
    r = stubborn.remote(seen)
    time.sleep(0.5)
    miniray.cancel(r)
    with pytest.raises(TaskCancelledError):
        miniray.get(r, timeout=10)
    assert open(seen).read() == "KeyboardInterrupt"
    assert miniray.get(sleep_return.remote(0, 3), timeout=10) == 3    # the worker serves on


def test_cancel_taking_the_send_queue_loses_no_queued_submit(ray_factory, tmp_path):
    """A cancel that lands after a send has taken the queued submits and ref
    ops, before it writes them, must not lose them."""
    ray_factory(num_cpus=2, object_store_memory=64 * 2**20)

    @miniray.remote
    def submits_then_sends(d):
        c = miniray._runtime.current().client
        c.flush_later = lambda *a, **k: None        # only the next send writes the queue
        for i in range(5):
            touch.remote(os.path.join(d, f"queued{i}"))
        take = c._take_pending

        def take_then_cancel():
            data = take()
            c._take_pending = take
            _cancel_here()                          # the queue is taken, not yet written
            return data
        c._take_pending = take_then_cancel
        miniray.get(touch.remote(os.path.join(d, "sent")))
        time.sleep(30)

    r = submits_then_sends.remote(str(tmp_path))
    with pytest.raises(TaskCancelledError):
        miniray.get(r, timeout=20)
    names = {f"queued{i}" for i in range(5)} | {"sent"}
    assert wait_for(lambda: set(os.listdir(tmp_path)) == names, 10), sorted(os.listdir(tmp_path))


def test_cancel_in_the_alloc_round_trip_of_a_put_gives_the_range_back(ray_factory):
    """A cancel landing between ALLOC and SEAL of a ``put`` in a task (here:
    while it waits for the ALLOC reply): the range goes back to the node
    (ABORT_ALLOC), not when the pooled worker exits."""
    ray_factory(num_cpus=1, object_store_memory=64 * 2**20)

    @miniray.remote
    def puts():
        from miniray._protocol import M
        c = miniray._runtime.current().client
        send = c.send

        def send_then_cancel(msg):
            send(msg)
            if msg[0] == M.ALLOC:
                c.send = send
                _cancel_here()
        c.send = send_then_cancel
        miniray.put(np.ones(200_000))            # 1.6 MB: ALLOC, write, SEAL
        time.sleep(30)

    assert stats()["arena_objects"] == 0
    r = puts.remote()
    with pytest.raises(TaskCancelledError):
        miniray.get(r, timeout=20)
    assert wait_for(lambda: stats()["arena_objects"] == 0, 5), stats()


def test_cancel_while_writing_a_return_value_frees_its_range(ray_factory):
    """The same for a return value: the cancelled task's results are errors
    and their ranges are freed."""
    ray_factory(num_cpus=1, object_store_memory=64 * 2**20)

    @miniray.remote
    def big_result():
        from miniray._protocol import M
        c = miniray._runtime.current().client
        send = c.send

        def send_then_cancel(msg):
            send(msg)
            if msg[0] == M.ALLOC:
                c.send = send
                _cancel_here()
        c.send = send_then_cancel
        return np.ones(200_000)

    r = big_result.remote()
    with pytest.raises(TaskCancelledError):
        miniray.get(r, timeout=20)
    assert wait_for(lambda: stats()["arena_objects"] == 0, 5), stats()


def test_cancel_reaches_actor_call_behind_large_queued_calls(ray_factory):
    """With >256 KiB of queued EXECUTEs ahead of the CANCEL_TASK, one read
    of the SIGUSR1 poke is not enough: the poke drains the socket."""
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


def test_cancelled_task_does_not_keep_its_args_alive(ray_factory):
    """A cancel delivered while the task blocks in get: no frame <->
    traceback cycle may keep the task's arguments (and the refs in them)
    alive until the worker's cyclic GC happens to run."""
    ray_factory(num_cpus=2, object_store_memory=64 * 2**20)

    @miniray.remote
    def blocked(refs, forever):
        return miniray.get(forever[0])

    big = miniray.put(np.ones(100_000))           # 800 KB in the arena
    oid = big.id
    forever = sleep_return.remote(30, 0)
    outer = blocked.remote([big], [forever])      # the nested ref is held while it runs
    time.sleep(0.5)
    miniray.cancel(outer)
    with pytest.raises(TaskCancelledError):
        miniray.get(outer, timeout=10)
    del big, outer
    miniray.cancel(forever)
    gc.collect()
    freed = wait_for(lambda: object_info(oid) is None, 5)
    assert freed, f"the cancelled task's argument is still held: {object_info(oid)}"


def test_cancel_of_a_sleeping_task_does_not_keep_its_args_alive(ray_factory):
    """The same for a task busy outside any read (the cancel is raised by
    the SIGINT handler)."""
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


def slow_first_import():
    """A task that makes its worker's first import of ``module`` take 2 s
    (False if that or numpy is imported already).  Made here, not at module
    level, so that it travels by value: importing this test module in the
    worker would import numpy."""

    @miniray.remote
    def prepare(module):
        import sys
        import time as t

        class SlowImport:
            def find_spec(self, name, path=None, target=None):
                if name == module:
                    sys.meta_path.remove(self)
                    t.sleep(2)
                return None

        if "numpy" in sys.modules or module in sys.modules:
            return False
        sys.meta_path.insert(0, SlowImport())
        return True
    return prepare


def test_cancel_during_decode_releases_the_pin(ray_factory):
    """A cancel landing while ``get`` decodes (here inside the lazy
    ``import numpy`` of the first arena read, made slow) waits for the
    decode: the node's pin on the object is released, not leaked."""
    ray_factory(num_cpus=1, object_store_memory=64 * 2**20)

    @miniray.remote
    def reads(refs):
        return miniray.get(refs[0]).sum()

    @miniray.remote
    def collect():
        import gc as g
        return g.collect()

    if not miniray.get(slow_first_import().remote("numpy"), timeout=20):
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
    """A cancel landing inside the first ``import numpy`` of a worker (made
    slow in numpy's C core init) must not leave numpy half imported: the
    next task in that pooled worker imports it fine."""
    ray_factory(num_cpus=1, object_store_memory=64 * 2**20)

    @miniray.remote
    def reads(refs):
        return float(miniray.get(refs[0]).sum())

    @miniray.remote
    def uses_numpy():
        import numpy
        return float(numpy.ones(3).sum())

    if not miniray.get(slow_first_import().remote("datetime"), timeout=20):
        pytest.skip("the worker has numpy imported already")
    big = miniray.put(np.ones(100_000))           # 800 KB in the arena
    outer = reads.remote([big])
    time.sleep(1.0)                                # inside the slow import
    miniray.cancel(outer)
    with pytest.raises(Exception):
        miniray.get(outer, timeout=10)
    assert miniray.get(uses_numpy.remote(), timeout=10) == 3.0


def test_cancel_while_decoding_task_args_releases_pins_and_numpy(ray_factory):
    """The same while the worker decodes the task's own arguments (before
    the task's code runs)."""
    ray_factory(num_cpus=1, object_store_memory=64 * 2**20)

    @miniray.remote
    def total(a):
        return float(a.sum())

    @miniray.remote
    def uses_numpy():
        import numpy
        return float(numpy.ones(3).sum())

    if not miniray.get(slow_first_import().remote("datetime"), timeout=20):
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


def test_cancel_is_not_lost_while_a_helper_thread_decodes(ray_factory):
    """Only the main thread's own work defers its cancel: a helper thread of
    the task that keeps decoding does not hold it back."""
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


# -- Ctrl-C in drivers ---------------------------------------------------------------------------

_KBINT_OTHER_THREADS = """
    import os, random, signal, threading, time
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
    """Ctrl-C while the main thread leads the reads (e.g. right after
    ``recv`` returned) must not drop bytes meant for other threads."""
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
    """Ctrl-C during the sends of a submit burst (inside ``sendall``, between
    taking the queue and writing it, inside ``ObjectRef.__del__``'s DECREF)
    must leave the stream and the queue whole."""
    proc = run_driver(_KBINT_SEND, timeout=30)
    assert "errors [] after 7" in proc.stdout, proc.stdout + proc.stderr[-3000:]


_KBINT_ANYWHERE = """
    import os, random, signal, sys, threading, time
    import miniray
    miniray.init(num_cpus=2, object_store_memory=64 * 2**20)

    @miniray.remote
    def f(x, delay=0.0):
        time.sleep(delay)
        return x

    miniray.get([f.remote(i) for i in range(20)])
    main = threading.get_ident()
    stop = time.monotonic() + 3.0
    leads = {"n": 0, "errors": []}

    def leader():                      # keeps the lead most of the time
        while time.monotonic() < stop:
            try:
                assert miniray.get(f.remote(1, 0.02)) == 1
                leads["n"] += 1
            except BaseException as exc:
                leads["errors"].append(repr(exc))
                return
    lt = threading.Thread(target=leader, daemon=True)
    lt.start()
    time.sleep(0.2)
    rng = random.Random(int(os.environ["SEED"]))
    kill = signal.pthread_kill

    def ctrl_c_somewhere(frame, event, arg):   # at 1 % of calls and returns
        if rng.random() < 0.01:
            kill(main, signal.SIGINT)
    errors, interrupts, ok = [], 0, 0
    while time.monotonic() < stop:
        try:
            sys.setprofile(ctrl_c_somewhere)
            try:
                miniray.get(f.remote(2))       # mostly follows the leader thread
            finally:
                sys.setprofile(None)
            ok += 1
        except KeyboardInterrupt:
            interrupts += 1
        except BaseException as exc:
            errors.append(repr(exc))
            break
    # A Ctrl-C that struck inside a finalizer is sent again by the io thread
    # (see _client_gate): one from the last iterations may land just after
    # the loop.  It is a Ctrl-C that was pressed, not an error: absorb it.
    settle = time.monotonic() + 0.5
    while time.monotonic() < settle:
        try:
            time.sleep(0.05)
        except KeyboardInterrupt:
            interrupts += 1
    lt.join(20)                        # generous: a loaded CI machine is slow, a hang is not
    try:
        after = miniray.get(f.remote(7), timeout=20)
    except BaseException as exc:
        after = repr(exc)
    print("errors", errors + leads["errors"], "after", after, "leader alive", lt.is_alive(),
          "interrupts", interrupts, "ok", ok, flush=True)
    os._exit(0)
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", [1, 2])
def test_keyboard_interrupt_anywhere_keeps_the_client_whole(seed):
    """Ctrl-C at random calls and returns of the main thread (thousands of
    them) while it mostly follows another thread's reads: waking up,
    re-taking the reader's lock, registering as a follower, counting refs,
    finalizers.  No error but KeyboardInterrupt, no thread left hanging, no
    exception swallowed in a ``__del__``, and the client works after."""
    proc = run_driver(_KBINT_ANYWHERE, timeout=90, env={"SEED": str(seed)})
    assert "errors [] after 7 leader alive False" in proc.stdout, (
        proc.stdout + proc.stderr[-3000:])
    assert "Exception ignored" not in proc.stderr, proc.stderr[-3000:]


_KBINT_TAKEN_QUEUE = """
    import os, signal, threading
    import miniray
    miniray.init(num_cpus=1, object_store_memory=64 * 2**20)

    @miniray.remote
    def f(x):
        return x

    c = miniray._runtime.current().client
    c.flush_later = lambda *a, **k: None           # only the next send writes the queue
    refs = [f.remote(i) for i in range(5)]
    take = c._take_pending

    def take_then_interrupt():
        data = take()
        c._take_pending = take
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)   # Ctrl-C here
        return data
    c._take_pending = take_then_interrupt
    try:
        miniray.available_resources()               # a request: sends the queue first
        print("not interrupted")
    except KeyboardInterrupt:
        pass
    try:
        print("got", miniray.get(refs, timeout=10), flush=True)
    except Exception as exc:
        print("get failed", type(exc).__name__, flush=True)
    os._exit(0)
"""


def test_keyboard_interrupt_after_taking_the_send_queue_loses_no_submit():
    """The driver's flake: a Ctrl-C between taking the queued submits and
    writing them lost them, and the next get timed out."""
    proc = run_driver(_KBINT_TAKEN_QUEUE, timeout=30)
    assert "got [0, 1, 2, 3, 4]" in proc.stdout, proc.stdout + proc.stderr[-3000:]


_KBINT_ALLOC = """
    import os, signal, threading
    import numpy as np
    import miniray
    from miniray._protocol import M, Query
    miniray.init(num_cpus=1, object_store_memory=64 * 2**20)
    c = miniray._runtime.current().client
    send = c.send

    def send_then_interrupt(msg):
        send(msg)
        if msg[0] == M.ALLOC:
            c.send = send
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
    c.send = send_then_interrupt
    try:
        miniray.put(np.ones(200_000))               # 1.6 MB: ALLOC, write, SEAL
        print("put returned")
    except KeyboardInterrupt:
        print("interrupted")
    print("arena_objects", c.query(Query.STATS)["arena_objects"], flush=True)
    os._exit(0)
"""


def test_keyboard_interrupt_in_the_alloc_round_trip_gives_the_range_back():
    """Ctrl-C between ALLOC and SEAL of a put: the range goes back to the
    node (ABORT_ALLOC) at once, not when the driver disconnects."""
    proc = run_driver(_KBINT_ALLOC, timeout=30)
    assert "interrupted\narena_objects 0" in proc.stdout, proc.stdout + proc.stderr[-3000:]
