"""Remote functions: submission, arguments, returns, options, nesting, errors."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

import miniray
from miniray.exceptions import GetTimeoutError, RayTaskError
from tests.conftest import wait_for


@miniray.remote
def double(x):
    return x * 2


@miniray.remote
def add(a, b=10, *, c=0):
    return a + b + c


@miniray.remote(num_returns=3)
def three():
    return 1, "two", [3]


@miniray.remote
def pid():
    return os.getpid()


class CustomError(Exception):
    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


@miniray.remote
def raise_custom():
    raise CustomError("bad thing", code=42)


def test_simple_task(ray_shared):
    assert miniray.get(double.remote(21)) == 42
    assert miniray.get([double.remote(i) for i in range(20)]) == [2 * i for i in range(20)]


def test_kwargs_and_defaults(ray_shared):
    assert miniray.get(add.remote(1)) == 11
    assert miniray.get(add.remote(1, 2, c=3)) == 6
    assert miniray.get(add.remote(a=1, b=1)) == 2


def test_wrong_arguments_fail_at_submit(ray_shared):
    with pytest.raises(TypeError, match=r"add\.remote\(\)"):
        add.remote()
    with pytest.raises(TypeError, match="unexpected keyword"):
        add.remote(1, d=4)
    with pytest.raises(TypeError):
        double.remote(1, 2)


def test_direct_call_shows_remote(ray_shared):
    with pytest.raises(TypeError, match=r"double\.remote\("):
        double(1)


def test_num_returns(ray_shared):
    refs = three.remote()
    assert len(refs) == 3
    assert miniray.get(refs) == [1, "two", [3]]
    refs = double.options(num_returns=2).remote((1,))
    assert miniray.get(refs) == [1, 1]


def test_num_returns_mismatch_is_an_error(ray_shared):
    @miniray.remote(num_returns=2)
    def one():
        return 1
    a, b = one.remote()
    with pytest.raises(RayTaskError, match="num_returns=2"):
        miniray.get(a)


def test_unknown_option_names_it(ray_shared):
    with pytest.raises(ValueError, match="num_cpu'"):
        miniray.remote(num_cpu=1)(lambda: 1)
    with pytest.raises(ValueError, match="bogus"):
        double.options(bogus=3)


def test_bad_option_values(ray_shared):
    with pytest.raises(ValueError):
        double.options(num_cpus=-1)
    with pytest.raises(ValueError):
        double.options(num_returns=-2)
    with pytest.raises(TypeError):
        double.options(resources=["GPU"])


def test_object_ref_args_resolved_nested_stay_refs(ray_shared):
    @miniray.remote
    def inspect_args(top, nested):
        return type(top).__name__, type(nested[0]).__name__, miniray.get(nested[0])

    r = miniray.put(5)
    assert miniray.get(inspect_args.remote(r, [r])) == ("int", "ObjectRef", 5)


def test_chained_tasks(ray_shared):
    ref = double.remote(1)
    for _ in range(10):
        ref = double.remote(ref)
    assert miniray.get(ref) == 2 ** 11


def test_task_returns_ref(ray_shared):
    @miniray.remote
    def make_ref():
        return miniray.put("inner")
    inner = miniray.get(make_ref.remote())
    assert isinstance(inner, miniray.ObjectRef)
    assert miniray.get(inner) == "inner"


def test_nested_tasks_do_not_deadlock_one_cpu(ray_factory):
    ray = ray_factory(num_cpus=1)

    @ray.remote
    def inner(x):
        return x + 1

    @ray.remote
    def outer(n):
        return sum(ray.get([inner.remote(i) for i in range(n)]))

    @ray.remote
    def outermost():
        return ray.get(outer.remote(5))

    assert ray.get(outermost.remote()) == sum(range(1, 6))
    assert ray.get([outer.remote(3) for _ in range(4)]) == [6] * 4


def test_num_cpus_limits_concurrency(ray_factory):
    ray = ray_factory(num_cpus=2)

    @ray.remote(num_cpus=1)
    def span():
        start = time.monotonic()
        time.sleep(0.3)
        return start, time.monotonic()

    spans = ray.get([span.remote() for _ in range(4)])
    # At any moment at most two tasks overlap.
    points = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    live = peak = 0
    for _, d in points:
        live += d
        peak = max(peak, live)
    assert peak <= 2

    @ray.remote(num_cpus=2)
    def whole_node():
        return ray.get_runtime_context().get_assigned_resources()
    assert ray.get(whole_node.remote())["CPU"] == 2


def test_custom_resources(ray_factory):
    ray = ray_factory(num_cpus=2, resources={"accel": 1})
    assert ray.cluster_resources()["accel"] == 1

    @ray.remote(resources={"accel": 1})
    def use_accel():
        return ray.get_runtime_context().get_assigned_resources()

    assert ray.get(use_accel.remote())["accel"] == 1


def test_task_no_node_can_run_stays_pending_with_a_warning(ray_start, capfd):
    """As in Ray: it waits for a node that has the resources (none comes
    here), the driver is told once, and a get with a timeout times out."""
    @miniray.remote(num_cpus=64)
    def huge():
        return 1
    ref = huge.remote()
    with pytest.raises(GetTimeoutError):
        miniray.get(ref, timeout=0.5)

    @miniray.remote(resources={"unicorn": 1})
    def magic():
        return 1
    other = magic.remote()
    ready, pending = miniray.wait([other], timeout=0.3)
    assert ready == [] and pending == [other]
    miniray.cancel(ref)
    with pytest.raises(miniray.exceptions.TaskCancelledError):
        miniray.get(ref, timeout=10)
    assert wait_for(lambda: "unicorn" in capfd.readouterr().err, timeout=5)


def test_user_exception_reraises_as_its_class(ray_shared):
    ref = raise_custom.remote()
    with pytest.raises(CustomError) as info:
        miniray.get(ref)
    err = info.value
    assert isinstance(err, RayTaskError)
    assert err.code == 42
    assert isinstance(err.cause, CustomError)
    assert "raise_custom" in str(err)
    assert "bad thing" in str(err)
    assert "Traceback" in str(err)


def test_builtin_exception_class(ray_shared):
    @miniray.remote
    def div(a, b):
        return a / b
    with pytest.raises(ZeroDivisionError):
        miniray.get(div.remote(1, 0))
    with pytest.raises(RayTaskError):
        miniray.get(div.remote(1, 0))


def test_unpicklable_exception_still_arrives(ray_shared):
    @miniray.remote
    def bad():
        import threading

        class LockError(Exception):
            def __init__(self):
                super().__init__("holding a lock")
                self.lock = threading.Lock()

            def __reduce__(self):
                raise TypeError("cannot pickle")
        raise LockError()

    with pytest.raises(RayTaskError, match="holding a lock"):
        miniray.get(bad.remote())


def test_error_propagates_through_dependents(ray_shared):
    bad = raise_custom.remote()
    dependent = double.remote(bad)
    with pytest.raises(CustomError):
        miniray.get(dependent)


def test_error_in_list_get(ray_shared):
    refs = [double.remote(1), raise_custom.remote(), double.remote(2)]
    with pytest.raises(CustomError):
        miniray.get(refs)


def test_get_timeout(ray_shared):
    @miniray.remote
    def slow():
        time.sleep(3)
        return 1
    ref = slow.remote()
    with pytest.raises(GetTimeoutError) as info:
        miniray.get(ref, timeout=0.1)
    assert isinstance(info.value, TimeoutError)
    assert miniray.get(ref, timeout=30) == 1


def test_function_shipped_once(ray_shared):
    from miniray import _runtime
    client = _runtime.current().client
    before = len(client.registered_fns)

    @miniray.remote
    def local_fn(x):
        return x
    miniray.get([local_fn.remote(i) for i in range(50)])
    assert len(client.registered_fns) == before + 1


def test_closures_and_lambdas(ray_shared):
    factor = 7
    times = miniray.remote(lambda x: x * factor)
    assert miniray.get(times.remote(6)) == 42


def test_large_args_and_returns(ray_shared):
    big = np.arange(1_000_000, dtype=np.int64)
    ref = double.remote(big)
    out = miniray.get(ref)
    assert out[-1] == 2 * 999_999
    assert not out.flags.writeable


def test_shared_refs_across_arguments(ray_shared):
    @miniray.remote
    def same(a, b):
        return a is b, a[0] is a[1]
    inner = [1, 2]
    outer = [inner, inner]
    assert miniray.get(same.remote(outer, outer)) == (True, True)


def test_runtime_context_in_task(ray_shared):
    @miniray.remote
    def ctx():
        c = miniray.get_runtime_context()
        return c.get_task_id(), c.get_node_id(), c.get_job_id()
    task_id, node_id, job_id = miniray.get(ctx.remote())
    assert task_id and node_id == miniray.get_runtime_context().get_node_id()
    assert miniray.get_runtime_context().get_task_id() is None


def test_workers_are_reused(ray_shared):
    pids = set(miniray.get([pid.remote() for _ in range(30)]))
    assert len(pids) <= 4


def test_retry_exceptions(ray_shared, tmp_path):
    marker = tmp_path / "count"
    marker.write_text("0")

    @miniray.remote(max_retries=2, retry_exceptions=True)
    def flaky(path):
        n = int(open(path).read()) + 1
        open(path, "w").write(str(n))
        if n < 3:
            raise ValueError(f"attempt {n}")
        return n
    assert miniray.get(flaky.remote(str(marker))) == 3


def test_max_calls_replaces_the_worker_after_n_runs(ray_factory):
    ray = ray_factory(num_cpus=1)

    @ray.remote(max_calls=2)
    def pid():
        return os.getpid()

    pids = [ray.get(pid.remote(), timeout=30) for _ in range(6)]
    assert all(pids.count(p) <= 2 for p in pids), pids
    assert len(set(pids)) >= 3


def test_get_raises_the_first_error_without_waiting_for_the_rest(ray_start):
    @miniray.remote
    def fail():
        raise ValueError("early")

    @miniray.remote
    def slow():
        time.sleep(30)

    pending = slow.remote()
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="early"):
        miniray.get([pending, fail.remote()], timeout=20)
    assert time.monotonic() - t0 < 10
    miniray.cancel(pending, force=True)


def test_a_tasks_prints_show_while_its_driver_is_busy_elsewhere():
    """The driver's io thread reads its connection when nobody else does:
    a task's print appears while the driver computes, not at its next call."""
    from tests.conftest import run_driver
    out = run_driver("""
        import sys, time
        import miniray
        miniray.init(num_cpus=1)

        @miniray.remote
        def hello():
            print("hello from the task", flush=True)
            return 1

        seen = []

        class Spy:
            def write(self, s):
                if "hello from the task" in s:
                    seen.append(time.monotonic())
                return sys.__stdout__.write(s)

            def flush(self):
                sys.__stdout__.flush()

        sys.stdout = Spy()
        ref = hello.remote()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3.0:      # busy, never calling miniray
            pass
        sys.stdout = sys.__stdout__
        print("shown after", round(seen[0] - t0, 2) if seen else "never")
        assert miniray.get(ref) == 1
        miniray.shutdown()
    """)
    assert out.returncode == 0, out.stderr
    assert "hello from the task" in out.stdout
    shown = out.stdout.split("shown after ")[1].split()[0]
    assert shown != "never" and float(shown) < 2.5, out.stdout
