"""Actors (issue 3): stateful workers that hold what cannot be serialized.

Every test runs against the real runtime (node daemon, worker processes,
shared memory).  Nothing waits on a fixed sleep: where a test needs an event
to happen (a process to exit, resources to come back) it polls with a
bound, and concurrency is shown by barriers and events that could never be
passed by calls running one at a time, not by timings.
"""
from __future__ import annotations

import gc
import os
import signal
import socket
import threading
import time

import psutil
import pytest

import miniray
from miniray.exceptions import (ActorDiedError, ActorUnschedulableError, RayActorError,
                                RayTaskError, SerializationError)
from miniray.util import ActorPool

from tests.conftest import assert_clean, run_driver


# -- helpers -----------------------------------------------------------------------------

def wait_for(predicate, timeout=20.0, what="condition"):
    """Poll ``predicate`` until it is true; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def pid_gone(pid) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def cpus_free():
    return miniray.available_resources().get("CPU", 0.0)


def node_stats():
    from miniray._protocol import Query
    return miniray._runtime.current().client.query(Query.STATS)


def no_tasks_left():
    """The node forgot every task (no call or constructor leaked)."""
    return node_stats()["tasks"] == 0


# -- actor classes used by several tests ------------------------------------------------------

@miniray.remote
class Counter:
    def __init__(self, start=0):
        self.value = start

    def incr(self, by=1):
        self.value += by
        return self.value

    def get(self):
        return self.value

    def pid(self):
        return os.getpid()


@miniray.remote
class Recorder:
    def __init__(self):
        self.log = []

    def record(self, item):
        self.log.append(item)
        return item

    def items(self):
        return list(self.log)


@miniray.remote
class Sleeper:
    def pid(self):
        return os.getpid()

    def sleep(self, seconds):
        time.sleep(seconds)
        return seconds


class AppError(Exception):
    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


@miniray.remote
def slow_value(value, seconds):
    time.sleep(seconds)
    return value


@miniray.remote
def call_incr(counter, by):
    return miniray.get(counter.incr.remote(by))


@miniray.remote
def call_first_in_list(handles):
    return miniray.get(handles[0].incr.remote(100))


# -- basics ---------------------------------------------------------------------------------

def test_state_persists_between_calls(ray_start):
    c = Counter.remote(10)
    assert miniray.get(c.incr.remote()) == 11
    assert miniray.get(c.incr.remote(5)) == 16
    assert miniray.get(c.get.remote()) == 16
    # The instance lives in one process for its whole life.
    assert len({miniray.get(c.pid.remote()) for _ in range(5)}) == 1
    assert miniray.get(c.pid.remote()) != os.getpid()


def test_calls_from_one_caller_run_in_submission_order(ray_start):
    r = Recorder.remote()
    refs = [r.record.remote(i) for i in range(300)]
    assert miniray.get(refs) == list(range(300))
    assert miniray.get(r.items.remote()) == list(range(300))


def test_order_holds_when_an_earlier_call_waits_for_its_argument(ray_start):
    r = Recorder.remote()
    late = slow_value.remote("late", 0.5)
    first = r.record.remote(late)         # its argument is not ready yet
    second = r.record.remote("second")    # ready at once, but must run after `first`
    assert miniray.get([first, second]) == ["late", "second"]
    assert miniray.get(r.items.remote()) == ["late", "second"]


def test_method_exception_reraises_as_user_class_and_actor_stays_alive(ray_start):
    @miniray.remote
    class Faulty:
        def __init__(self):
            self.calls = 0

        def fail(self):
            self.calls += 1
            raise AppError("bad input", code=42)

        def calls_so_far(self):
            return self.calls

    a = Faulty.remote()
    with pytest.raises(AppError) as info:
        miniray.get(a.fail.remote())
    err = info.value
    assert isinstance(err, RayTaskError)
    assert err.code == 42
    assert "bad input" in str(err)
    assert "Faulty.fail" in str(err)
    with pytest.raises(RayTaskError):
        miniray.get(a.fail.remote())
    assert miniray.get(a.calls_so_far.remote()) == 2


def test_constructor_args_may_be_object_refs(ray_start):
    @miniray.remote
    class Holder:
        def __init__(self, a, b, *, c):
            self.values = (a, b, c)

        def values_(self):
            return self.values

    a = Holder.remote(miniray.put([1, 2, 3]), slow_value.remote("b", 0.2), c=miniray.put("c"))
    assert miniray.get(a.values_.remote()) == ([1, 2, 3], "b", "c")


def test_constructor_error_fails_calls_with_actor_died_error(ray_start):
    @miniray.remote
    class Broken:
        def __init__(self):
            raise AppError("no database", code=1)

        def f(self):
            return 1

    b = Broken.remote()
    with pytest.raises(ActorDiedError, match="constructor raised") as info:
        miniray.get(b.f.remote(), timeout=30)
    assert "no database" in str(info.value)


def test_misuse_gives_the_right_call(ray_start):
    with pytest.raises(TypeError, match=r"Counter.remote\(...\)"):
        Counter(1)
    c = Counter.remote()
    with pytest.raises(TypeError, match=r"handle.incr.remote\(...\)"):
        c.incr()
    with pytest.raises(AttributeError, match="has no method 'nope'"):
        c.nope.remote()


# -- handles travel -------------------------------------------------------------------------

def test_handle_passed_to_a_task(ray_start):
    c = Counter.remote()
    assert miniray.get(call_incr.remote(c, 5)) == 5
    assert miniray.get([call_incr.remote(c, 1) for _ in range(4)]) is not None
    assert miniray.get(c.get.remote()) == 9


def test_handle_passed_to_another_actor(ray_start):
    @miniray.remote
    class Proxy:
        def __init__(self, target):
            self.target = target

        def forward(self, by):
            return miniray.get(self.target.incr.remote(by))

        def forward_later(self, other, by):
            return miniray.get(other.incr.remote(by))

    c = Counter.remote()
    p = Proxy.remote(c)
    assert miniray.get(p.forward.remote(2)) == 2
    assert miniray.get(p.forward_later.remote(c, 3)) == 5
    assert miniray.get(c.get.remote()) == 5


def test_handle_stored_in_an_object(ray_start):
    c = Counter.remote()
    boxed = miniray.put([c])
    assert miniray.get(call_first_in_list.remote(boxed)) == 100   # resolved top-level arg
    assert miniray.get(call_first_in_list.remote([c])) == 200     # nested in an inline arg
    back = miniray.get(boxed)[0]
    assert back == c
    assert miniray.get(back.get.remote()) == 200


def test_named_actor_is_found_from_tasks_of_a_namespaced_job(ray_factory):
    # Ray: tasks and actors run in their job's namespace.
    ray_factory(namespace="app")

    @miniray.remote
    def lookup(name):
        return miniray.get(miniray.get_actor(name).incr.remote())

    c = Counter.options(name="shared").remote()
    assert miniray.get(lookup.remote("shared")) == 1
    assert miniray.get(c.get.remote()) == 1


def test_handle_returned_from_a_task(ray_start):
    @miniray.remote
    def make():
        return Counter.remote(7)

    c = miniray.get(make.remote())
    assert miniray.get(c.incr.remote()) == 8


# -- unserializable state ---------------------------------------------------------------------

@miniray.remote
class Resources:
    """Holds a lock, a connected socket pair, an open file and a generator."""

    def __init__(self, path):
        self.lock = threading.Lock()
        self.a, self.b = socket.socketpair()
        self.file = open(path, "w+")
        self.numbers = (i * i for i in range(1000))

    def use_all(self, text):
        with self.lock:
            self.a.sendall(text.encode())
            echoed = self.b.recv(100).decode()
            self.file.write(echoed)
            self.file.flush()
            self.file.seek(0)
            return self.file.read(), next(self.numbers)

    def the_lock(self):
        return self.lock

    def the_socket_in_a_dict(self):
        return {"conn": self.a}

    def the_generator(self):
        return self.numbers

    def take(self, thing):
        return "took it"

    def close(self):
        self.a.close()
        self.b.close()
        self.file.close()
        return True


def test_actor_holding_lock_socket_file_and_generator_works(ray_start, tmp_path):
    r = Resources.remote(str(tmp_path / "state.txt"))
    assert miniray.get(r.use_all.remote("ab")) == ("ab", 0)
    assert miniray.get(r.use_all.remote("cd")) == ("abcd", 1)
    assert miniray.get(r.use_all.remote("e")) == ("abcde", 4)
    assert (tmp_path / "state.txt").read_text() == "abcde"
    assert miniray.get(r.close.remote()) is True


def test_passing_unserializable_state_fails_with_a_clear_error(ray_start, tmp_path):
    r = Resources.remote(str(tmp_path / "state.txt"))

    with pytest.raises(SerializationError) as info:
        miniray.get(r.the_lock.remote())
    msg = str(info.value)
    assert "return value of 'Resources.the_lock'" in msg
    assert "_thread.lock" in msg
    assert "actor" in msg                       # it suggests keeping it in an actor

    with pytest.raises(SerializationError) as info:
        miniray.get(r.the_socket_in_a_dict.remote())
    msg = str(info.value)
    assert "['conn']" in msg and "socket" in msg, msg

    with pytest.raises(SerializationError, match="generator"):
        miniray.get(r.the_generator.remote())

    # Passing such state *in* fails at the call site, naming the argument.
    lock = threading.Lock()
    with pytest.raises(SerializationError) as info:
        r.take.remote(lock)
    msg = str(info.value)
    assert "arg 'thing'" in msg and "_thread.lock" in msg, msg
    with pytest.raises(SerializationError, match="arg 'thing'"):
        r.take.remote({"nested": [lock]})
    with pytest.raises(SerializationError, match="_thread.lock"):
        Resources.remote(lock)

    # None of that hurt the actor.
    assert miniray.get(r.use_all.remote("x")) == ("x", 0)
    assert miniray.get(r.close.remote()) is True


# -- resources ---------------------------------------------------------------------------------

def test_actor_holds_its_resources_while_it_lives(ray_factory):
    ray = ray_factory(num_cpus=2, resources={"db": 2})
    assert cpus_free() == 2.0
    plain = Counter.remote()             # Ray: needs 0 CPUs while it lives
    miniray.get(plain.get.remote())
    assert cpus_free() == 2.0
    heavy = Counter.options(num_cpus=1, resources={"db": 1}).remote()
    light = Counter.options(resources={"db": 0.5}).remote()
    miniray.get([heavy.get.remote(), light.get.remote()])
    avail = ray.available_resources()
    assert avail["CPU"] == 1.0 and avail["db"] == 0.5
    # A task that needs the held CPU... still runs on the one left.
    assert miniray.get(slow_value.remote(1, 0)) == 1
    miniray.kill(heavy)
    miniray.kill(light)
    wait_for(lambda: ray.available_resources().get("db") == 2.0 and cpus_free() == 2.0,
             what="the killed actor's resources to come back")


@pytest.mark.timeout(60)
def test_actor_waits_for_resources_another_actor_holds(ray_start):
    first = Counter.options(num_cpus=2).remote()
    miniray.get(first.get.remote())
    second = Counter.options(num_cpus=2).remote(5)
    ref = second.incr.remote()
    ready, _ = miniray.wait([ref], timeout=0.5)
    assert not ready                      # it cannot start while `first` holds both CPUs
    miniray.kill(first)
    assert miniray.get(ref, timeout=30) == 6


@pytest.mark.timeout(30)
def test_actor_the_node_can_never_place_fails_clearly(ray_start):
    big = Counter.options(num_cpus=64).remote()
    with pytest.raises(ActorUnschedulableError) as info:
        miniray.get(big.get.remote(), timeout=20)
    err = info.value
    assert isinstance(err, RayActorError)     # what `except RayActorError` catches
    msg = str(err)
    assert "Counter" in msg and "CPU: 64" in msg and "CPU: 2" in msg
    assert "can never start" in msg

    odd = Counter.options(resources={"tpu": 1}).remote()
    with pytest.raises(ActorUnschedulableError, match="missing {tpu: 1}"):
        miniray.get(odd.get.remote(), timeout=20)
    # Nothing was taken from the node by either.
    assert cpus_free() == 2.0


# -- names --------------------------------------------------------------------------------------

def test_named_actor_get_actor_and_get_if_exists(ray_start):
    c = Counter.options(name="counter").remote(1)
    same = miniray.get_actor("counter")
    assert same == c
    assert miniray.get(same.incr.remote()) == 2
    again = Counter.options(name="counter", get_if_exists=True).remote(1000)
    assert again == c                        # constructor not run again
    assert miniray.get(again.incr.remote()) == 3
    fresh = Counter.options(name="other", get_if_exists=True).remote(1000)
    assert miniray.get(fresh.get.remote()) == 1000
    # Names live in namespaces.
    elsewhere = Counter.options(name="counter", namespace="ns2").remote(50)
    assert miniray.get(miniray.get_actor("counter", namespace="ns2").get.remote()) == 50
    assert miniray.get(elsewhere.get.remote()) == 50


def test_name_conflict_and_unknown_name_errors(ray_start):
    c = Counter.options(name="only").remote()
    with pytest.raises(ValueError, match="already exists") as info:
        Counter.options(name="only").remote()
    assert "get_if_exists=True" in str(info.value)
    with pytest.raises(ValueError, match="no actor named 'missing'"):
        miniray.get_actor("missing")
    # Once the named actor is dead the name is free again.
    miniray.kill(c)
    wait_for(lambda: _name_free("only"), what="the name to be released")
    d = Counter.options(name="only").remote(3)
    assert miniray.get(miniray.get_actor("only").get.remote()) == 3
    del d


@pytest.mark.timeout(60)
def test_name_of_an_actor_whose_handles_are_gone_is_free(ray_start):
    s = Sleeper.options(name="draining").remote()
    pid = miniray.get(s.pid.remote())
    last = s.sleep.remote(0.5)
    del s
    gc.collect()
    # It finishes `last`, but it is on its way out: not found by name any more.
    wait_for(lambda: _name_free("draining"), what="the name to be released")
    fresh = Sleeper.options(name="draining", get_if_exists=True).remote()
    assert miniray.get(fresh.pid.remote()) != pid
    assert miniray.get(last, timeout=30) == 0.5
    wait_for(lambda: pid_gone(pid), what="the old actor to exit")


def _name_free(name):
    try:
        miniray.get_actor(name)
    except ValueError:
        return True
    return False


# -- concurrency ---------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_threaded_actor_runs_max_concurrency_calls_at_once(ray_start):
    n = 4

    @miniray.remote(max_concurrency=n)
    class Gate:
        def __init__(self):
            self.barrier = threading.Barrier(n)
            self.lock = threading.Lock()
            self.running = 0
            self.peak = 0

        def meet(self):
            with self.lock:
                self.running += 1
                self.peak = max(self.peak, self.running)
            # Passes only when n calls are waiting here at the same time.
            index = self.barrier.wait(timeout=30)
            with self.lock:
                self.running -= 1
            return index

        def peak_(self):
            return self.peak

    g = Gate.remote()
    assert sorted(miniray.get([g.meet.remote() for _ in range(n)])) == list(range(n))
    assert sorted(miniray.get([g.meet.remote() for _ in range(n)])) == list(range(n))
    assert miniray.get(g.peak_.remote()) == n


@pytest.mark.timeout(60)
def test_threaded_actor_never_runs_more_than_max_concurrency(ray_start):
    @miniray.remote(max_concurrency=2)
    class Tracker:
        def __init__(self):
            self.lock = threading.Lock()
            self.running = 0
            self.peak = 0

        def work(self):
            with self.lock:
                self.running += 1
                self.peak = max(self.peak, self.running)
            time.sleep(0.02)
            with self.lock:
                self.running -= 1

        def peak_(self):
            return self.peak

    t = Tracker.remote()
    miniray.get([t.work.remote() for _ in range(20)])
    assert miniray.get(t.peak_.remote()) <= 2


@pytest.mark.timeout(60)
def test_async_methods_run_concurrently_on_the_actor_loop(ray_start):
    import asyncio

    @miniray.remote
    class AsyncGate:
        def __init__(self):
            self.event = asyncio.Event()
            self.waiting = 0

        async def wait_for_open(self, i):
            self.waiting += 1
            # Returns True only if another call opens the gate while this waits.
            try:
                await asyncio.wait_for(self.event.wait(), timeout=30)
            except asyncio.TimeoutError:
                return False
            return i

        async def waiting_now(self):
            return self.waiting

        async def open(self):
            self.event.set()
            return "opened"

    g = AsyncGate.remote()
    waiters = [g.wait_for_open.remote(i) for i in range(10)]
    # All ten are parked on the event at once, then an 11th call sets it.
    wait_for(lambda: miniray.get(g.waiting_now.remote()) == 10, what="10 calls waiting")
    assert miniray.get(g.open.remote()) == "opened"
    assert miniray.get(waiters, timeout=30) == list(range(10))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("limit", [1, 3])
def test_async_actor_max_concurrency_limits_calls(ray_start, limit):
    import asyncio

    @miniray.remote(max_concurrency=limit)
    class Limited:
        def __init__(self):
            self.running = 0
            self.peak = 0

        async def work(self):
            self.running += 1
            self.peak = max(self.peak, self.running)
            await asyncio.sleep(0.01)
            self.running -= 1

        async def peak_(self):
            return self.peak

    a = Limited.remote()
    miniray.get([a.work.remote() for _ in range(30)])
    assert miniray.get(a.peak_.remote()) == limit


def test_async_method_errors_and_sync_methods_on_async_actor(ray_start):
    @miniray.remote
    class Mixed:
        async def fail(self):
            raise AppError("async failure", code=7)

        def sync_value(self):
            return "sync"

    m = Mixed.remote()
    with pytest.raises(AppError) as info:
        miniray.get(m.fail.remote())
    assert info.value.code == 7
    assert miniray.get(m.sync_value.remote()) == "sync"


# -- cancel -----------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_cancel_a_queued_and_a_running_sync_call(ray_start):
    from miniray.exceptions import TaskCancelledError
    s = Sleeper.remote()
    miniray.get(s.pid.remote())
    running = s.sleep.remote(60)
    queued = s.sleep.remote(60)
    miniray.cancel(queued)
    with pytest.raises(TaskCancelledError):
        miniray.get(queued, timeout=30)
    miniray.cancel(running)
    with pytest.raises(TaskCancelledError):
        miniray.get(running, timeout=30)
    assert miniray.get(s.sleep.remote(0)) == 0      # the actor lives on


@pytest.mark.timeout(60)
def test_cancel_a_running_and_a_waiting_async_call(ray_start, tmp_path):
    import asyncio
    from miniray.exceptions import TaskCancelledError

    @miniray.remote(max_concurrency=1)
    class AsyncSleeper:
        async def sleep(self, seconds, marker=None):
            if marker:
                open(marker, "w").close()
            await asyncio.sleep(seconds)
            return seconds

    a = AsyncSleeper.remote()
    marker = str(tmp_path / "started")
    running = a.sleep.remote(60, marker)
    waiting = a.sleep.remote(60)          # waits for the one slot
    wait_for(lambda: os.path.exists(marker), what="the first call to start")
    miniray.cancel(waiting)
    with pytest.raises(TaskCancelledError):
        miniray.get(waiting, timeout=15)
    miniray.cancel(running)
    with pytest.raises(TaskCancelledError):
        miniray.get(running, timeout=15)
    assert miniray.get(a.sleep.remote(0), timeout=15) == 0


# -- num_returns ---------------------------------------------------------------------------------

def test_num_returns_by_decorator_and_by_options(ray_start):
    @miniray.remote
    class Splitter:
        @miniray.method(num_returns=2)
        def split(self, pair):
            return pair[0], pair[1]

        def three(self):
            return [1, 2, 3]

        def nothing(self):
            return None

    s = Splitter.remote()
    a, b = s.split.remote(("x", "y"))
    assert miniray.get(a) == "x" and miniray.get(b) == "y"
    refs = s.three.options(num_returns=3).remote()
    assert miniray.get(refs) == [1, 2, 3]
    x, y = s.split.options(num_returns=2).remote([5, 6])
    assert miniray.get([x, y]) == [5, 6]
    assert s.nothing.options(num_returns=0).remote() is None
    bad1, bad2 = s.three.options(num_returns=2).remote()
    with pytest.raises(ValueError, match="num_returns=2"):
        miniray.get(bad1)


# -- kill and lifetime ---------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_kill_fails_pending_and_later_calls(ray_start):
    s = Sleeper.remote()
    pid = miniray.get(s.pid.remote())
    running = s.sleep.remote(60)
    queued = s.sleep.remote(0)
    miniray.kill(s, no_restart=True)
    for ref in (running, queued, s.pid.remote()):
        with pytest.raises(ActorDiedError, match="killed") as info:
            miniray.get(ref, timeout=30)
        assert "Sleeper" in str(info.value)
    wait_for(lambda: pid_gone(pid), what=f"the killed actor (pid={pid}) to exit")


@pytest.mark.timeout(60)
def test_kill_allowing_restart_of_an_actor_without_restarts_says_killed(ray_start):
    s = Sleeper.remote()
    miniray.get(s.pid.remote())
    miniray.kill(s, no_restart=False)
    with pytest.raises(ActorDiedError, match=r"killed by miniray.kill\(\)"):
        miniray.get(s.pid.remote(), timeout=30)


def test_actor_id_in_handle_errors_and_runtime_context(ray_start):
    @miniray.remote
    class Who:
        def my_id(self):
            return miniray.get_runtime_context().get_actor_id()

    a, b = Who.remote(), Who.remote()
    ida, idb = miniray.get([a.my_id.remote(), b.my_id.remote()])
    assert ida != idb
    assert ida in repr(a) and idb in repr(b)
    miniray.kill(a)
    with pytest.raises(ActorDiedError) as info:
        miniray.get(a.my_id.remote(), timeout=30)
    assert ida in str(info.value)


@pytest.mark.timeout(60)
def test_kill_with_restart_allowed_restarts_the_actor(ray_start):
    c = Counter.options(max_restarts=1).remote(0)
    pid = miniray.get(c.pid.remote())
    miniray.get(c.incr.remote())
    miniray.kill(c, no_restart=False)
    new_pid = _pid_after_restart(c, pid)
    assert miniray.get(c.get.remote()) == 0          # constructor ran again
    assert new_pid != pid


@pytest.mark.timeout(60)
def test_last_handle_gone_ends_the_actor_and_frees_its_resources(ray_start):
    c = Counter.options(num_cpus=1).remote()
    pid = miniray.get(c.pid.remote())
    assert cpus_free() == 1.0
    del c
    gc.collect()
    wait_for(lambda: pid_gone(pid), what=f"the actor process (pid={pid}) to exit")
    wait_for(lambda: cpus_free() == 2.0, what="the actor's CPU to be released")


@pytest.mark.timeout(60)
def test_handle_dropped_while_the_constructor_runs_ends_the_actor(ray_start):
    @miniray.remote(num_cpus=1)
    class SlowStart:
        def __init__(self):
            time.sleep(0.3)

    SlowStart.remote()       # the handle is dropped at once
    gc.collect()
    wait_for(lambda: node_stats()["actors"] == 0 and cpus_free() == 2.0,
             what="the unreferenced actor to exit once constructed")


@pytest.mark.timeout(60)
def test_calls_in_flight_finish_when_the_last_handle_goes(ray_start):
    s = Sleeper.remote()
    pid = miniray.get(s.pid.remote())
    refs = [s.sleep.remote(0.2), s.sleep.remote(0.1)]
    del s
    gc.collect()
    assert miniray.get(refs, timeout=30) == [0.2, 0.1]
    wait_for(lambda: pid_gone(pid), what=f"the actor process (pid={pid}) to exit")


@pytest.mark.timeout(60)
def test_handle_held_by_a_stored_object_keeps_the_actor(ray_start):
    c = Counter.remote(1)
    pid = miniray.get(c.pid.remote())
    boxed = miniray.put({"counter": c})
    del c
    gc.collect()
    c2 = miniray.get(boxed)["counter"]
    assert miniray.get(c2.incr.remote()) == 2
    assert not pid_gone(pid)
    del c2, boxed
    gc.collect()
    wait_for(lambda: pid_gone(pid), what=f"the actor process (pid={pid}) to exit")


# -- fault tolerance ------------------------------------------------------------------------------

def _pid_after_restart(handle, old_pid, timeout=30):
    """Call ``handle.pid`` until a restarted instance answers; calls that
    reach the dying instance may fail with ActorDiedError meanwhile."""
    def probe():
        try:
            pid = miniray.get(handle.pid.remote(), timeout=timeout)
        except ActorDiedError:
            return None
        return pid if pid != old_pid else None
    return wait_for(probe, timeout=timeout, what="the actor to restart")


@pytest.mark.timeout(90)
def test_max_restarts_restarts_a_sigkilled_actor(ray_start):
    c = Counter.options(max_restarts=2).remote(100)
    pid1 = miniray.get(c.pid.remote())
    assert miniray.get(c.incr.remote()) == 101

    os.kill(pid1, signal.SIGKILL)
    pid2 = _pid_after_restart(c, pid1)
    assert miniray.get(c.get.remote()) == 100          # state reset: constructor ran again
    assert miniray.get(c.incr.remote(5)) == 105

    os.kill(pid2, signal.SIGKILL)
    pid3 = _pid_after_restart(c, pid2)
    assert pid3 not in (pid1, pid2)
    assert miniray.get(c.get.remote()) == 100

    # The restarts are used up: the third crash is final.
    os.kill(pid3, signal.SIGKILL)
    wait_for(lambda: pid_gone(pid3), what="the actor to die")

    def dead():
        try:
            miniray.get(c.pid.remote(), timeout=30)
        except ActorDiedError as exc:
            return exc
        return None
    err = wait_for(dead, what="calls to fail after the last restart")
    assert f"pid={pid3}" in str(err) and "SIGKILL" in str(err)


@pytest.mark.timeout(90)
def test_restart_reruns_the_constructor_with_its_original_args(ray_start):
    import numpy as np

    @miniray.remote(max_restarts=1)
    class Keeps:
        def __init__(self, small, big, *, nested):
            self.summary = (small, int(big.sum()), nested[0] if isinstance(nested, list)
                            else nested)

        def summary_(self):
            return self.summary

        def pid(self):
            return os.getpid()

    small = miniray.put("small")
    big = np.ones(200_000, dtype=np.int64)          # args above the inline threshold
    a = Keeps.remote(small, big, nested=["inline"])
    expected = ("small", 200_000, "inline")
    assert miniray.get(a.summary_.remote()) == expected
    pid = miniray.get(a.pid.remote())
    del small, big                                  # only the actor needs them now
    gc.collect()
    os.kill(pid, signal.SIGKILL)
    _pid_after_restart(a, pid)
    assert miniray.get(a.summary_.remote()) == expected
    del a
    gc.collect()
    wait_for(lambda: node_stats()["objects"] == 0, what="the constructor args to be freed")
    wait_for(no_tasks_left, what="the node to forget every task")


@pytest.mark.timeout(90)
def test_crash_in_the_constructor_restarts_cleanly(ray_start, tmp_path):
    marker = str(tmp_path / "ctor-crashed")

    @miniray.remote(max_restarts=1)
    class CrashingInit:
        def __init__(self, marker):
            if not os.path.exists(marker):
                open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)

        def pid(self):
            return os.getpid()

    a = CrashingInit.remote(marker)
    assert miniray.get(a.pid.remote(), timeout=60) > 0
    assert os.path.exists(marker)
    wait_for(lambda: node_stats()["tasks"] == 0, what="the crashed constructor to be forgotten")


@pytest.mark.timeout(90)
def test_max_task_retries_retries_the_call_in_flight(ray_start, tmp_path):
    marker = str(tmp_path / "crashed-once")

    @miniray.remote(max_restarts=1, max_task_retries=1)
    class CrashOnce:
        def __init__(self):
            self.inits = 1

        def crash_first_time(self, marker):
            if not os.path.exists(marker):
                open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
            return ("survived", os.getpid(), self.inits)

        def pid(self):
            return os.getpid()

    a = CrashOnce.remote()
    pid1 = miniray.get(a.pid.remote())
    result, pid2, inits = miniray.get(a.crash_first_time.remote(marker), timeout=60)
    assert result == "survived"
    assert pid2 != pid1
    assert inits == 1
    assert os.path.exists(marker)


@pytest.mark.timeout(90)
def test_call_in_flight_fails_without_max_task_retries(ray_start, tmp_path):
    marker = str(tmp_path / "crashed")

    @miniray.remote(max_restarts=1)
    class CrashOnce:
        def crash_first_time(self, marker):
            if not os.path.exists(marker):
                open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
            return "survived"

        def pid(self):
            return os.getpid()

    a = CrashOnce.remote()
    pid1 = miniray.get(a.pid.remote())
    with pytest.raises(ActorDiedError, match="max_task_retries"):
        miniray.get(a.crash_first_time.remote(marker), timeout=60)
    # The actor itself restarted and serves later calls.
    assert _pid_after_restart(a, pid1) != pid1
    assert miniray.get(a.crash_first_time.remote(marker)) == "survived"


@pytest.mark.timeout(60)
def test_sigkill_without_restarts_fails_pending_and_later_calls(ray_start):
    s = Sleeper.remote()
    pid = miniray.get(s.pid.remote())
    running = s.sleep.remote(60)
    queued = s.sleep.remote(0)
    os.kill(pid, signal.SIGKILL)
    for ref in (running, queued):
        with pytest.raises(ActorDiedError) as info:
            miniray.get(ref, timeout=30)
        msg = str(info.value)
        assert "Sleeper" in msg and f"pid={pid}" in msg and "SIGKILL" in msg, msg
    with pytest.raises(ActorDiedError, match="SIGKILL"):
        miniray.get(s.pid.remote(), timeout=30)


@pytest.mark.timeout(60)
def test_actor_exiting_by_itself_fails_calls_with_exit_code(ray_start):
    @miniray.remote
    class Quitter:
        def quit(self):
            os._exit(3)

        def hello(self):
            return "hi"

    q = Quitter.remote()
    assert miniray.get(q.hello.remote()) == "hi"
    with pytest.raises(ActorDiedError, match="exited with code 3"):
        miniray.get(q.quit.remote(), timeout=30)
    with pytest.raises(RayActorError):
        miniray.get(q.hello.remote(), timeout=30)


# -- detached actors -------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_detached_actor_survives_its_handles_in_the_same_driver(ray_start):
    c = Counter.options(name="keeper", lifetime="detached").remote(1)
    pid = miniray.get(c.pid.remote())
    del c
    gc.collect()
    time.sleep(0.5)          # give a (wrong) exit the time to happen; no assert on timing
    again = miniray.get_actor("keeper")
    assert miniray.get(again.incr.remote()) == 2
    assert not pid_gone(pid)
    miniray.kill(again)
    wait_for(lambda: pid_gone(pid), what="the detached actor to exit after kill")


@pytest.fixture
def standalone_node(tmp_path):
    """A node no driver owns, started with ``miniray start --head``; yields
    the environment that lets drivers join it with ``init(address="auto")``.
    Stopped with ``miniray stop`` and checked at the end."""
    import json
    import subprocess
    import sys
    env = dict(os.environ, MINIRAY_CLUSTER_DIR=str(tmp_path))

    def cli(*args):
        out = subprocess.run([sys.executable, "-m", "miniray.cli", *args], capture_output=True,
                             text=True, env=env, timeout=60)
        assert out.returncode == 0, out.stderr
    cli("start", "--head", "--num-cpus", "2", "--object-store-memory", str(64 * 2**20))
    node_pid = json.loads((tmp_path / "cluster.json").read_text())["pid"]
    yield env
    pids = {node_pid}
    try:
        pids |= {p.pid for p in psutil.Process(node_pid).children(recursive=True)}
    except psutil.Error:
        pass
    cli("stop")
    assert_clean(pids)


@pytest.mark.timeout(90)
def test_detached_actor_outlives_its_driver(standalone_node):
    env = standalone_node
    first = run_driver("""
        import os, miniray
        miniray.init(address="auto", namespace="jobs")

        @miniray.remote
        class Store:
            def __init__(self):
                self.items = {}
            def put(self, k, v):
                self.items[k] = v
                return len(self.items)
            def get(self, k):
                return self.items.get(k)
            def pid(self):
                return os.getpid()

        s = Store.options(name="store", lifetime="detached").remote()
        assert miniray.get(s.put.remote("answer", 42)) == 1
        print("PID", miniray.get(s.pid.remote()))
        # Not detached: must die with this driver.
        t = Store.options(name="temp").remote()
        print("TEMP", miniray.get(t.pid.remote()))
    """, env=env)
    assert first.returncode == 0, first.stderr
    out = dict(line.split() for line in first.stdout.splitlines() if line[:4] in ("PID ", "TEMP"))
    pid, temp_pid = int(out["PID"]), int(out["TEMP"])
    wait_for(lambda: pid_gone(temp_pid), what="the driver's non-detached actor to exit")
    assert not pid_gone(pid)

    second = run_driver("""
        import miniray
        miniray.init(address="auto", namespace="jobs")
        s = miniray.get_actor("store")
        assert miniray.get(s.get.remote("answer")) == 42
        try:
            miniray.get_actor("temp")
        except ValueError:
            pass
        else:
            raise SystemExit("the non-detached actor outlived its driver")
        miniray.kill(s)
        print("KILLED")
    """, env=env)
    assert second.returncode == 0, second.stderr
    assert "KILLED" in second.stdout
    wait_for(lambda: pid_gone(pid), what="the detached actor to exit after kill")


# -- ActorPool ------------------------------------------------------------------------------------

@miniray.remote
class Doubler:
    def double(self, x):
        return 2 * x

    def slow_double(self, x):
        time.sleep(0.05 * (x % 3))
        return 2 * x

    def pid(self):
        return os.getpid()


def test_actor_pool_map_keeps_order(ray_start):
    pool = ActorPool([Doubler.remote(), Doubler.remote()])
    assert list(pool.map(lambda a, v: a.slow_double.remote(v), range(12))) == \
        [2 * v for v in range(12)]
    assert not pool.has_next()


def test_actor_pool_map_unordered_returns_everything(ray_start):
    pool = ActorPool([Doubler.remote(), Doubler.remote(), Doubler.remote()])
    out = list(pool.map_unordered(lambda a, v: a.slow_double.remote(v), range(15)))
    assert sorted(out) == [2 * v for v in range(15)]


def test_actor_pool_submit_get_next_has_next(ray_start):
    actors = [Doubler.remote(), Doubler.remote()]
    pids = set(miniray.get([a.pid.remote() for a in actors]))
    pool = ActorPool(actors)
    assert not pool.has_next()
    for v in range(5):                    # more items than actors: some wait in the pool
        pool.submit(lambda a, v: a.double.remote(v), v)
    assert pool.has_next()
    assert not pool.has_free()
    got = []
    while pool.has_next():
        got.append(pool.get_next())
    assert got == [0, 2, 4, 6, 8]
    assert pool.has_free()
    with pytest.raises(StopIteration):
        pool.get_next()

    for v in range(4):
        pool.submit(lambda a, v: a.double.remote(v), v)
    unordered = [pool.get_next_unordered() for _ in range(4)]
    assert sorted(unordered) == [0, 2, 4, 6]

    # Work spreads over both actors.
    pool.submit(lambda a, v: a.pid.remote(), None)
    pool.submit(lambda a, v: a.pid.remote(), None)
    assert {pool.get_next(), pool.get_next()} == pids


def test_actor_pool_push_pop_and_timeout(ray_start):
    s = Sleeper.remote()
    pool = ActorPool([])
    pool.push(s)
    with pytest.raises(ValueError):
        pool.push(s)
    pool.submit(lambda a, v: a.sleep.remote(v), 0.3)
    assert pool.pop_idle() is None
    with pytest.raises(TimeoutError):
        pool.get_next(timeout=0)
    assert pool.get_next() == 0.3
    assert pool.pop_idle() == s
    assert not pool.has_next()
    # ignore_if_timedout skips a slow result and frees its actor (Ray's API).
    pool.push(s)
    pool.submit(lambda a, v: a.sleep.remote(v), 0.5)
    pool.submit(lambda a, v: a.sleep.remote(v), 0)
    with pytest.raises(TimeoutError, match="ignored"):
        pool.get_next(timeout=0, ignore_if_timedout=True)
    assert pool.get_next(timeout=30) == 0
    assert not pool.has_next()


def test_actor_pool_error_is_raised_by_get_next(ray_start):
    @miniray.remote
    class Picky:
        def check(self, x):
            if x == 2:
                raise AppError("two", code=2)
            return x

    pool = ActorPool([Picky.remote()])
    for v in range(4):
        pool.submit(lambda a, v: a.check.remote(v), v)
    assert pool.get_next() == 0
    assert pool.get_next() == 1
    with pytest.raises(AppError):
        pool.get_next()
    assert pool.get_next() == 3


# -- the example ----------------------------------------------------------------------------------

@pytest.mark.timeout(90)
def test_example_actor_state_runs():
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, os.path.join(root, "examples", "actor_state.py")],
                          capture_output=True, text=True, timeout=80, cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert "report: {'apples': 5, 'pears': 7}" in proc.stdout
    assert "sqlite3.Connection" in proc.stdout and "arg 'items'" in proc.stdout


def test_actor_method_retry_exceptions(ray_start):
    @miniray.remote
    class Flaky:
        def __init__(self):
            self.calls = 0

        @miniray.method(retry_exceptions=True, max_task_retries=2)
        def work(self):
            self.calls += 1
            if self.calls < 3:
                raise ValueError(f"attempt {self.calls}")
            return self.calls

    f = Flaky.remote()
    assert miniray.get(f.work.remote(), timeout=30) == 3


def test_exit_actor_ends_the_actor(ray_start):
    from miniray.actor import exit_actor

    @miniray.remote
    class Quitter:
        def pid(self):
            return os.getpid()

        def quit(self):
            exit_actor()

    q = Quitter.remote()
    pid = miniray.get(q.pid.remote())
    with pytest.raises(miniray.exceptions.ActorDiedError, match="exit_actor"):
        miniray.get(q.quit.remote(), timeout=30)
    with pytest.raises(miniray.exceptions.ActorDiedError, match="exit_actor"):
        miniray.get(q.pid.remote(), timeout=30)
    assert not wait_gone_pid(pid)
    with pytest.raises(TypeError, match="inside an actor"):
        exit_actor()


def wait_gone_pid(pid):
    from tests.conftest import wait_gone
    return wait_gone([pid], timeout=15)
