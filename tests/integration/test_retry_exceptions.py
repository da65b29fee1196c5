"""``retry_exceptions=[UserError]``: the classes travel as bytes that only the
worker decodes (the node refuses to unpickle any class), for tasks and for
actor methods, whether the class lives in an importable module or in the
driver's ``__main__``."""
from __future__ import annotations

import pytest

import miniray
from tests.conftest import run_driver


class MyError(Exception):
    pass


def _bump(path) -> int:
    n = int(open(path).read()) + 1
    open(path, "w").write(str(n))
    return n


def test_task_retries_a_listed_user_exception_then_raises_it(ray_shared, tmp_path):
    marker = tmp_path / "count"
    marker.write_text("0")

    @miniray.remote(max_retries=0)
    def always_fails(path):
        raise MyError(f"attempt {_bump(path)}")

    with pytest.raises(MyError, match="attempt 3"):
        miniray.get(always_fails.options(max_retries=2, retry_exceptions=[MyError])
                    .remote(str(marker)), timeout=60)
    assert marker.read_text() == "3"


def test_task_does_not_retry_an_unlisted_exception(ray_shared, tmp_path):
    marker = tmp_path / "count"
    marker.write_text("0")

    @miniray.remote(max_retries=3, retry_exceptions=[MyError])
    def fails_otherwise(path):
        raise ValueError(f"attempt {_bump(path)}")

    with pytest.raises(ValueError, match="attempt 1"):
        miniray.get(fails_otherwise.remote(str(marker)), timeout=60)
    assert marker.read_text() == "1"


def test_actor_method_retries_a_listed_user_exception(ray_shared):
    @miniray.remote
    class Flaky:
        def __init__(self):
            self.calls = 0

        @miniray.method(retry_exceptions=[MyError], max_task_retries=2)
        def work(self):
            self.calls += 1
            raise MyError(f"call {self.calls}")

        def count(self):
            return self.calls

    f = Flaky.remote()
    with pytest.raises(MyError, match="call 3"):
        miniray.get(f.work.remote(), timeout=60)
    assert miniray.get(f.count.remote(), timeout=60) == 3
    # A handle found by name decodes the same method table.
    named = Flaky.options(name="flaky-retry").remote()
    again = miniray.get_actor("flaky-retry")
    with pytest.raises(MyError, match="call 3"):
        miniray.get(again.work.remote(), timeout=60)
    miniray.kill(named)


def test_exception_class_from_driver_main_travels_by_value():
    proc = run_driver("""
        import miniray

        class MainError(Exception):
            pass

        @miniray.remote
        class Counter:
            def __init__(self):
                self.calls = 0

            @miniray.method(retry_exceptions=[MainError], max_task_retries=1)
            def work(self):
                self.calls += 1
                raise MainError(f"call {self.calls}")

        @miniray.remote(max_retries=2, retry_exceptions=[MainError])
        def fails(path):
            n = int(open(path).read()) + 1
            open(path, "w").write(str(n))
            raise MainError(f"attempt {n}")

        if __name__ == "__main__":
            import os, tempfile
            miniray.init(num_cpus=1)
            path = os.path.join(tempfile.mkdtemp(), "count")
            open(path, "w").write("0")
            try:
                miniray.get(fails.remote(path), timeout=60)
            except MainError as exc:
                print("task", exc.args[0], open(path).read())
            try:
                miniray.get(Counter.remote().work.remote(), timeout=60)
            except MainError as exc:
                print("actor", exc.args[0])
            miniray.shutdown()
    """, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "task attempt 3 3" in lines, proc.stdout + proc.stderr
    assert "actor call 2" in lines, proc.stdout + proc.stderr
