"""Long queues on one node, with real processes: many short tasks (their
returns' entries made late, the tasks pipelined to busy workers), cancels
of queued tasks, and a pipelined task that waits for one queued behind it
(given back by its worker, so it cannot deadlock).  No timing assertions:
speed is measured by bench/bench_scale.py."""
from __future__ import annotations

import os
import time

import pytest

import miniray
from miniray.exceptions import TaskCancelledError
from tests.conftest import node_stats, wait_for


@miniray.remote
def square(i):
    return i * i


@miniray.remote
def nothing():
    return None


@miniray.remote
def nap(seconds):
    time.sleep(seconds)
    return seconds


@miniray.remote
def outer(box, pause=0.0):
    """A short task, or (with a pause) one that waits for a ref it was given."""
    if pause:
        time.sleep(pause)
    return miniray.get(box[0]) + 1


def warm_up(n=30):
    """Enough runs one by one for the node to measure these functions short."""
    ready = miniray.put(1)
    for i in range(n):
        assert miniray.get(square.remote(i)) == i * i
        assert miniray.get(outer.remote([ready])) == 2


def test_a_long_queue_of_short_tasks_gives_every_value_and_frees_everything(ray_start):
    warm_up()
    n = 20_000
    refs = [square.remote(i) for i in range(n)]
    nones = [nothing.remote() for _ in range(n)]
    out = miniray.get(refs)
    assert out == [i * i for i in range(n)]
    assert miniray.get(nones) == [None] * n
    assert node_stats()["tasks"] == 0
    del refs, nones, out
    miniray._runtime.current().client.flush_refs()
    assert wait_for(lambda: node_stats()["objects"] <= 5, timeout=10), node_stats()


@miniray.remote
def logged(i, path, size=0):
    """A short task that records, as its very last step, that it ran to the
    end: its index appended to ``path``.  (A cancel that interrupts a task
    while it runs is reported as a cancel, as in Ray: so the record is made
    after the work, where nothing is left to interrupt.)"""
    value = b"x" * size if size else i * i
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, b"%d\n" % i)
    os.close(fd)
    return value


@pytest.mark.parametrize("size", [0, 300_000])     # results inline, and in the arena
def test_cancel_of_queued_short_tasks_never_reports_a_task_that_ran(ray_start, tmp_path, size):
    """Cancelled while queued at a worker behind another task, a task may
    have started by the time the worker hears of it: it is then interrupted,
    or, done already, its value comes back (as in Ray); a task reported
    cancelled never ran to its end."""
    log = str(tmp_path / "ran.log")
    for i in range(30):
        miniray.get(logged.remote(-1, log))           # measured short
    n = 3000
    refs = [logged.remote(i, log, size) for i in range(n)]
    for r in refs[::2]:
        miniray.cancel(r)
    got, cancelled = set(), set()
    for i, r in enumerate(refs):
        try:
            v = miniray.get(r, timeout=60)
            assert v == (b"x" * size if size else i * i)
            got.add(i)
        except TaskCancelledError:
            cancelled.add(i)
    assert len(got) + len(cancelled) == n and cancelled
    assert wait_for(lambda: node_stats()["tasks"] == 0)
    with open(log) as f:
        ran = {int(x) for x in f.read().split()}
    assert not cancelled & ran, f"{len(cancelled & ran)} tasks reported cancelled ran"
    assert got <= ran
    # The workers go on: nothing was lost by skipping cancelled tasks.
    assert miniray.get([square.remote(i) for i in range(100)]) == [i * i for i in range(100)]
    del refs, r
    miniray._runtime.current().client.flush_refs()
    assert wait_for(lambda: node_stats()["arena_used"] == 0, timeout=10), node_stats()


@miniray.remote
def usually_short(seconds):
    time.sleep(seconds)
    return seconds


def test_tasks_queued_behind_a_long_call_of_a_short_function_move_to_a_free_worker(ray_start):
    """A function measured short may still have a long call: the tasks
    queued behind it at its worker come back when it runs long, and the
    other worker runs them."""
    for _ in range(40):
        miniray.get([usually_short.remote(0), usually_short.remote(0)])
    long_one = usually_short.remote(3.0)
    rest = [usually_short.remote(0) for _ in range(200)]
    t0 = time.monotonic()
    assert miniray.get(rest, timeout=30) == [0] * 200
    took = time.monotonic() - t0
    assert took < 2.5, f"the short tasks waited for the long call: {took:.1f} s"
    assert miniray.get(long_one) == 3.0


@miniray.remote
def fan(nested):
    """Short (warmed up with ``nested`` False); with ``nested``, submits a
    task, lets it reach the node, and waits for it."""
    if not nested:
        return 0
    r = square.remote(7)
    time.sleep(0.1)
    return miniray.get(r)


def test_a_pipelined_task_waiting_for_one_queued_behind_it_does_not_deadlock(ray_start):
    warm_up()
    for _ in range(30):
        assert miniray.get(fan.remote(False)) == 0
    busy = nap.remote(2.0)              # one worker away (nap is not measured short)
    # ``fan`` runs on the other; the task it submits is short and no worker
    # is idle, so it is sent to ``fan``'s own worker, to run after ``fan``;
    # ``fan`` then waits for it: its worker gives it back, to run elsewhere.
    assert miniray.get(fan.remote(True), timeout=30) == 49
    assert miniray.get(busy) == 2.0


def test_queued_returns_held_by_a_finished_driver_task_are_freed(ray_start):
    warm_up()

    @miniray.remote
    def fan_out(n):
        refs = [square.remote(i) for i in range(n)]
        return sum(miniray.get(refs))

    assert miniray.get(fan_out.remote(2000)) == sum(i * i for i in range(2000))
    miniray._runtime.current().client.flush_refs()
    assert wait_for(lambda: node_stats()["tasks"] == 0 and node_stats()["objects"] <= 5,
                    timeout=10), node_stats()


@pytest.mark.parametrize("n", [1, 3])
def test_returns_of_tasks_waited_for_before_they_run(ray_start, n):
    @miniray.remote(num_returns=n)
    def several(i):
        return tuple(range(i, i + n)) if n > 1 else i

    blocker = nap.remote(0.3)
    blocker2 = nap.remote(0.3)
    refs = [several.remote(i) for i in range(50)]
    flat = [r for rs in refs for r in (rs if n > 1 else [rs])]
    ready, pending = miniray.wait(flat, num_returns=len(flat), timeout=0)
    assert ready == []
    assert len(miniray.get(flat)) == len(flat)
    miniray.get([blocker, blocker2])
