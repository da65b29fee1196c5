"""Ray's ordering of actor calls (per caller) and recursive cancel."""
from __future__ import annotations

import time

import pytest

import miniray
from miniray.exceptions import TaskCancelledError
from tests.conftest import node_stats as stats, wait_for


@miniray.remote
def sleeper(seconds, value=None):
    time.sleep(seconds)
    return value


@miniray.remote
class Log:
    def __init__(self):
        self.log = []

    def add(self, x, tag):
        self.log.append(tag)
        return tag

    def entries(self):
        return list(self.log)


@miniray.remote
def call_from_elsewhere(actor, tag):
    return miniray.get(actor.add.remote(1, tag))


def test_unready_call_holds_back_only_its_own_caller(ray_start):
    a = Log.remote()
    miniray.get(a.entries.remote())
    slow = sleeper.remote(3, 0)
    waiting = a.add.remote(slow, "waits for its arg")
    mine_later = a.add.remote(1, "driver's next call")
    # Another caller's ready call runs now, not after the driver's waiting one.
    assert miniray.get(call_from_elsewhere.remote(a, "other caller"), timeout=2.5) == "other caller"
    assert miniray.get([waiting, mine_later], timeout=10) == ["waits for its arg",
                                                              "driver's next call"]
    log = miniray.get(a.entries.remote())
    # The driver's own calls keep their order.
    assert log.index("waits for its arg") < log.index("driver's next call")
    assert log[0] == "other caller"


def test_threaded_actor_runs_ready_calls_behind_an_unready_one(ray_start):
    a = Log.options(max_concurrency=4).remote()
    miniray.get(a.entries.remote())
    slow = sleeper.remote(3, 0)
    waiting = a.add.remote(slow, "waits")
    assert miniray.get(a.add.remote(1, "ready"), timeout=2.5) == "ready"
    assert miniray.get(waiting, timeout=10) == "waits"


@miniray.remote
def parent(n):
    refs = [sleeper.remote(60) for _ in range(n)]
    miniray.get(refs)


def test_cancel_reaches_the_tasks_a_task_submitted(ray_start):
    ref = parent.remote(3)
    # The parent blocks in get (lending its CPU), two children run, one waits.
    assert wait_for(lambda: miniray.available_resources().get("CPU", 0) <= 0, timeout=10)
    miniray.cancel(ref)
    with pytest.raises(TaskCancelledError):
        miniray.get(ref, timeout=10)
    # Every child was cancelled too: all CPUs come back, nothing keeps running.
    assert wait_for(lambda: miniray.available_resources().get("CPU") == 2.0, timeout=10), \
        miniray.available_resources()
    assert wait_for(lambda: stats()["tasks"] == 0, timeout=10)


def test_cancel_not_recursive_leaves_children_running(ray_start):
    ref = parent.remote(1)
    # parent: 1 CPU, lent back while it waits; the child: 1 CPU.
    assert wait_for(lambda: stats()["tasks"] == 2 and
                    miniray.available_resources().get("CPU") == 1.0, timeout=10)
    miniray.cancel(ref, recursive=False)
    with pytest.raises(TaskCancelledError):
        miniray.get(ref, timeout=10)
    time.sleep(0.5)
    assert stats()["tasks"] == 1

