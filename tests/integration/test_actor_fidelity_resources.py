"""Where actor calls and tasks run, as in Ray: concurrency groups, GPU ids
(CUDA_VISIBLE_DEVICES, get_gpu_ids) and 64-byte-aligned arrays."""
from __future__ import annotations

import asyncio
import os
import threading
import time

import numpy as np
import pytest

import miniray


# -- concurrency groups -------------------------------------------------------------------------

@miniray.remote(concurrency_groups={"io": 2, "compute": 1})
class Grouped:
    def __init__(self):
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.running = {}
        self.peak = {}

    def _enter(self, group):
        with self.lock:
            self.running[group] = self.running.get(group, 0) + 1
            self.peak[group] = max(self.peak.get(group, 0), self.running[group])

    def _leave(self, group):
        with self.lock:
            self.running[group] -= 1

    @miniray.method(concurrency_group="io")
    def wait_for_gate(self):
        self._enter("io")
        try:
            return self.gate.wait(timeout=20)
        finally:
            self._leave("io")

    @miniray.method(concurrency_group="io")
    def io_work(self, seconds):
        self._enter("io")
        time.sleep(seconds)
        self._leave("io")
        return threading.current_thread().name

    @miniray.method(concurrency_group="compute")
    def open_gate(self):
        self.gate.set()
        return threading.current_thread().name

    @miniray.method(concurrency_group="compute")
    def compute_work(self, seconds):
        self._enter("compute")
        time.sleep(seconds)
        self._leave("compute")
        return "done"

    def default_work(self, seconds):
        self._enter("default")
        time.sleep(seconds)
        self._leave("default")
        return threading.current_thread().name

    def peaks(self):
        return dict(self.peak)


def test_a_blocked_group_does_not_hold_the_others(ray_shared):
    a = Grouped.remote()
    blocked = a.wait_for_gate.remote()
    # The default group and the "compute" group still run while "io" waits.
    assert miniray.get(a.default_work.remote(0), timeout=20).startswith("miniray-actor")
    assert "compute" in miniray.get(a.open_gate.remote(), timeout=20)
    assert miniray.get(blocked, timeout=20) is True


def test_each_group_runs_at_most_its_max_concurrency(ray_shared):
    a = Grouped.remote()
    refs = ([a.io_work.remote(0.3) for _ in range(4)] +
            [a.compute_work.remote(0.1) for _ in range(3)] +
            [a.default_work.remote(0.1) for _ in range(3)])
    miniray.get(refs, timeout=30)
    # "io" allows 2, "compute" 1, the default group the actor's max_concurrency (1).
    assert miniray.get(a.peaks.remote()) == {"io": 2, "compute": 1, "default": 1}


def test_options_concurrency_group_picks_the_group_per_call(ray_shared):
    a = Grouped.remote()
    assert "io" not in miniray.get(a.default_work.remote(0))
    assert "io" in miniray.get(a.default_work.options(concurrency_group="io").remote(0))
    with pytest.raises(ValueError, match="no concurrency group 'disk'"):
        a.default_work.options(concurrency_group="disk")


@miniray.remote(concurrency_groups={"io": 1, "compute": 1})
class AsyncGrouped:
    def __init__(self):
        self.gate = threading.Event()

    @miniray.method(concurrency_group="io")
    async def block_loop(self):
        # Blocks this group's event loop, not the others'.
        return self.gate.wait(timeout=20), threading.current_thread().name

    @miniray.method(concurrency_group="compute")
    async def open_gate(self):
        await asyncio.sleep(0)
        self.gate.set()
        return threading.current_thread().name

    async def default_ping(self):
        return threading.current_thread().name


def test_async_actor_groups_have_their_own_event_loops(ray_shared):
    a = AsyncGrouped.remote()
    blocked = a.block_loop.remote()
    time.sleep(0.2)
    assert miniray.get(a.default_ping.remote(), timeout=20) == "miniray-actor"
    assert miniray.get(a.open_gate.remote(), timeout=20) == "miniray-actor-compute"
    assert miniray.get(blocked, timeout=20) == (True, "miniray-actor-io")


def test_concurrency_groups_are_validated():
    with pytest.raises(TypeError, match="dict of group name"):
        miniray.remote(concurrency_groups=["io"])(type("C", (), {}))
    with pytest.raises(ValueError, match="max_concurrency"):
        miniray.remote(concurrency_groups={"io": 0})(type("C", (), {}))
    with pytest.raises(ValueError, match="not supported in '.options\\(\\)'"):
        Grouped.options(concurrency_groups={"x": 1})


def test_a_group_the_actor_lacks_is_refused_per_call(ray_shared):
    a = AsyncShadowless.remote()
    with pytest.raises(ValueError, match="no concurrency group 'io'"):
        a.ping.options(concurrency_group="io")


@miniray.remote
class AsyncShadowless:
    async def ping(self):
        return 1


def test_a_method_of_an_undeclared_group_is_refused(ray_shared):
    @miniray.remote
    class Undeclared:
        @miniray.method(concurrency_group="io")
        def f(self):
            return 1
    with pytest.raises(ValueError, match="concurrency_group='io'"):
        Undeclared.remote()


# -- GPUs ----------------------------------------------------------------------------------------

@miniray.remote(num_cpus=0, max_concurrency=8)
class Barrier:
    """Lets tasks prove they ran at the same time."""

    def __init__(self, parties):
        self.barrier = threading.Barrier(parties, timeout=30)

    def wait(self):
        self.barrier.wait()


@miniray.remote(num_gpus=1)
def one_gpu(barrier):
    miniray.get(barrier.wait.remote())
    return os.environ.get("CUDA_VISIBLE_DEVICES"), os.getpid()


@miniray.remote(num_gpus=0.5)
def half_gpu(barrier):
    miniray.get(barrier.wait.remote())
    return os.environ.get("CUDA_VISIBLE_DEVICES")


@miniray.remote(num_gpus=1)
def gpu_ids_in_task():
    return miniray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")


@miniray.remote
def cpu_task():
    return os.environ.get("CUDA_VISIBLE_DEVICES"), miniray.get_gpu_ids(), os.getpid()


@miniray.remote(num_gpus=1)
class GpuActor:
    def __init__(self):
        self.seen_at_init = (os.environ.get("CUDA_VISIBLE_DEVICES"), miniray.get_gpu_ids())

    def seen(self):
        return self.seen_at_init, (os.environ.get("CUDA_VISIBLE_DEVICES"), miniray.get_gpu_ids())


@pytest.fixture
def gpu_node(ray_factory):
    return ray_factory(num_cpus=2, num_gpus=2)


def test_concurrent_one_gpu_tasks_see_different_devices(gpu_node):
    b = Barrier.remote(2)
    (dev_a, pid_a), (dev_b, pid_b) = miniray.get([one_gpu.remote(b), one_gpu.remote(b)],
                                                 timeout=60)
    assert {dev_a, dev_b} == {"0", "1"} and pid_a != pid_b


def test_half_gpu_tasks_share_one_device(gpu_node):
    b = Barrier.remote(2)
    dev_a, dev_b = miniray.get([half_gpu.remote(b), half_gpu.remote(b)], timeout=60)
    assert dev_a == dev_b and dev_a in ("0", "1")


def test_an_actor_sees_its_device_from_its_constructor_on(gpu_node):
    a, b = GpuActor.remote(), GpuActor.remote()
    (at_init_a, later_a), (at_init_b, later_b) = miniray.get([a.seen.remote(), b.seen.remote()],
                                                             timeout=60)
    assert at_init_a[0] == later_a[0] and at_init_b[0] == later_b[0]
    assert {at_init_a[0], at_init_b[0]} == {"0", "1"}


def test_get_gpu_ids_in_a_task_and_in_an_actor_constructor(gpu_node):
    ids, visible = miniray.get(gpu_ids_in_task.remote(), timeout=60)
    assert len(ids) == 1 and visible == str(ids[0])
    at_init, later = miniray.get(GpuActor.remote().seen.remote(), timeout=60)
    assert at_init == later
    visible, ids = at_init
    assert len(ids) == 1 and visible == str(ids[0])


def test_gpu_tasks_never_share_a_worker_with_cpu_tasks(gpu_node):
    cpu_before = {p for _, _, p in miniray.get([cpu_task.remote() for _ in range(4)])}
    b = Barrier.remote(2)
    gpu_pids = {p for _, p in miniray.get([one_gpu.remote(b), one_gpu.remote(b)], timeout=60)}
    cpu_after = [miniray.get(cpu_task.remote()) for _ in range(4)]
    assert not gpu_pids & (cpu_before | {p for _, _, p in cpu_after})
    # On a node with GPUs, a task that holds none sees none, as in Ray.
    assert all(visible == "" and ids == [] for visible, ids, _ in cpu_after)


# -- alignment -----------------------------------------------------------------------------------

SIZES = (7, 1000, 300_000)      # inline objects, and one in the arena


@miniray.remote
def alignments(arr, arrays):
    return [arr.ctypes.data % 64] + [a.ctypes.data % 64 for a in arrays]


@miniray.remote
def make_arrays(n):
    return [np.ones(n), np.arange(n + 1, dtype=np.int8)]


@pytest.mark.parametrize("n", SIZES)
def test_arrays_passed_to_tasks_are_64_byte_aligned(ray_shared, n):
    arr = np.arange(n, dtype=np.float64)
    assert miniray.get(alignments.remote(arr, [arr, np.ones(n + 3, np.int16)])) == [0, 0, 0]
    ref = miniray.put(np.arange(n + 5, dtype=np.int8))
    assert miniray.get(alignments.remote(ref, [])) == [0]


@pytest.mark.parametrize("n", SIZES)
def test_arrays_from_get_are_64_byte_aligned(ray_shared, n):
    got = miniray.get(miniray.put(np.arange(n, dtype=np.float64)))
    assert got.ctypes.data % 64 == 0
    listed = miniray.get(miniray.put([np.ones(n), np.arange(n + 3, dtype=np.int8)]))
    assert [a.ctypes.data % 64 for a in listed] == [0, 0]
    returned = miniray.get(make_arrays.remote(n))
    assert [a.ctypes.data % 64 for a in returned] == [0, 0]
    assert not got.flags.writeable          # read-only, copied or not
