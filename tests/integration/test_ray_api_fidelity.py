"""Ray's behaviours a Ray program relies on, on a real runtime (issue 8):
input validation, errors as Ray prints them, fractional resources and
ActorPool's semantics."""
from __future__ import annotations

import threading
import time

import pytest

import miniray
from miniray.exceptions import RayError, RayTaskError
from miniray.util import ActorPool


@miniray.remote
def fail():
    raise ValueError("bad input")


@miniray.remote
class Worker:
    def __repr__(self):
        return "Worker(ready)"

    def fail(self):
        raise KeyError("missing")

    def sleep(self, s):
        time.sleep(s)
        return s

    def double(self, x):
        return 2 * x

    @miniray.method(num_returns=2)
    def pair(self, x):
        return x, -x


# -- validation -----------------------------------------------------------------------------------

def test_get_of_a_tuple_or_a_list_with_a_value(ray_shared):
    r = miniray.put(1)
    with pytest.raises(TypeError, match="must either be an ObjectRef or a list"):
        miniray.get((r,))
    with pytest.raises(ValueError, match="must either be an ObjectRef or a list"):
        miniray.get((r,))                       # Ray raises ValueError here: both work
    with pytest.raises(TypeError, match="Attempting to call `get` on the value 7, which is not "
                                        "an ray.ObjectRef"):
        miniray.get([r, 7])
    assert miniray.get([r]) == [1]


def test_wait_on_an_empty_list(ray_shared):
    assert miniray.wait([]) == ([], [])
    assert miniray.wait([], num_returns=1, timeout=0) == ([], [])


def test_cancel_force_of_an_actor_call_is_refused(ray_shared):
    w = Worker.remote()
    ref = w.sleep.remote(0.2)
    with pytest.raises(ValueError, match="force=True is not supported for actor tasks"):
        miniray.cancel(ref, force=True)
    assert miniray.get(ref) == 0.2            # refused before anything was sent
    a, b = w.pair.remote(1)
    with pytest.raises(ValueError, match="actor tasks"):
        miniray.cancel(b, force=True)
    miniray.get(a)


def test_huge_captured_object_is_refused_at_first_call(ray_shared):
    big = b"z" * (100 * 2**20)

    @miniray.remote
    def uses_big():
        return len(big)
    with pytest.raises(ValueError, match=r"too large.*ray\.put"):
        uses_big.remote()

    @miniray.remote
    class HoldsBig:
        def size(self):
            return len(big)
    with pytest.raises(ValueError, match=r"actor class '.*HoldsBig' is too large"):
        HoldsBig.remote()


def test_fractional_custom_resources_above_one(ray_factory):
    ray_factory(num_cpus=2, resources={"accel": 3}, object_store_memory=128 * 2**20)

    @miniray.remote(resources={"accel": 1.5}, num_cpus=0)
    def held():
        return miniray.get_runtime_context().get_assigned_resources()
    assert miniray.get([held.remote(), held.remote()]) == [{"accel": 1.5}] * 2
    assert miniray.available_resources().get("accel") == 3


# -- task errors as Ray prints them ---------------------------------------------------------------

def test_task_error_text_has_rays_header(ray_shared):
    with pytest.raises(ValueError) as info:
        miniray.get(fail.remote())
    err = info.value
    assert isinstance(err, RayTaskError)
    lines = str(err).splitlines()
    assert lines[0].startswith("ray::fail() (pid=") and lines[0].endswith(", ip=127.0.0.1)")
    assert lines[-1] == "ValueError: bad input"
    assert "in fail" in str(err)
    assert "_worker_main" not in str(err)          # the runtime's own frames are left out
    assert str(err.pid) in lines[0]


def test_actor_error_text_names_the_method(ray_shared):
    w = Worker.remote()
    with pytest.raises(KeyError) as info:
        miniray.get(w.fail.remote())
    assert str(info.value).startswith("ray::Worker.fail() (pid=")


def test_exception_group_crosses_the_task_boundary(ray_shared):
    @miniray.remote
    def several():
        raise ExceptionGroup("several", [ValueError("v"), TypeError("t")])

    caught = []
    try:
        miniray.get(several.remote())
    except* ValueError as eg:
        caught.append([str(e) for e in eg.exceptions])
    except* TypeError as eg:
        caught.append([str(e) for e in eg.exceptions])
    assert caught == [["v"], ["t"]]
    with pytest.raises(ExceptionGroup) as info:
        miniray.get(several.remote())
    assert isinstance(info.value, RayTaskError) and len(info.value.exceptions) == 2


def test_unpicklable_exception_arrives_with_a_cause_that_says_so(ray_shared):
    @miniray.remote
    def raises_unpicklable():
        class Holder(Exception):
            pass
        err = Holder("holding a lock")
        err.lock = threading.Lock()
        raise err

    with pytest.raises(RayTaskError) as info:
        miniray.get(raises_unpicklable.remote())
    cause = info.value.cause
    assert isinstance(cause, RayError) and "isn't serializable" in str(cause)
    assert "holding a lock" in str(info.value)


# -- ActorPool ------------------------------------------------------------------------------------

def test_actor_pool_map_submits_eagerly(ray_shared):
    pool = ActorPool([Worker.remote(), Worker.remote()])
    started = []

    def call(actor, v):
        started.append(v)
        return actor.double.remote(v)
    results = pool.map(call, [1, 2, 3])
    assert started == [1, 2]              # one per actor, before anyone iterates
    assert list(results) == [2, 4, 6]
    assert started == [1, 2, 3]


def test_actor_pool_earlier_submits_do_not_leak_into_map(ray_shared):
    pool = ActorPool([Worker.remote(), Worker.remote()])
    pool.submit(lambda a, v: a.double.remote(v), 100)
    pool.submit(lambda a, v: a.double.remote(v), 200)
    pool.submit(lambda a, v: a.double.remote(v), 300)      # waits for an actor
    time.sleep(0.2)
    assert list(pool.map(lambda a, v: a.double.remote(v), [1, 2, 3])) == [2, 4, 6]
    assert not pool.has_next()
    assert sorted(pool.map_unordered(lambda a, v: a.double.remote(v), [4, 5])) == [8, 10]


def test_actor_pool_num_returns_two(ray_shared):
    pool = ActorPool([Worker.remote()])
    pool.submit(lambda a, v: a.pair.remote(v), 1)
    pool.submit(lambda a, v: a.pair.remote(v), 2)
    assert pool.get_next() == [1, -1]
    assert pool.get_next_unordered() == [2, -2]
    assert list(pool.map(lambda a, v: a.pair.remote(v), [3])) == [[3, -3]]
