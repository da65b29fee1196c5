"""Objects: put/get/wait semantics, zero-copy reads, lifetimes, store limits."""
from __future__ import annotations

import asyncio
import gc
import time
import types

import numpy as np
import pyarrow as pa
import pytest

import miniray
from tests.conftest import wait_for
from miniray._protocol import Query
from miniray.exceptions import GetTimeoutError, ObjectStoreFullError


def stats():
    return miniray._runtime.current().client.query(Query.STATS)




@miniray.remote
def sleep_return(seconds, value):
    time.sleep(seconds)
    return value


@miniray.remote
def array_info(a):
    return a.__array_interface__["data"][0], a.flags.writeable, float(a.sum())


def test_put_get_roundtrip(ray_shared):
    for value in [1, "s", b"b" * 10, None, [1, {"a": (2, 3)}], {1, 2}, 3.5, 2**100]:
        assert miniray.get(miniray.put(value)) == value


def test_put_object_ref_is_type_error(ray_shared):
    with pytest.raises(TypeError, match="ObjectRef"):
        miniray.put(miniray.put(1))


def test_object_ref_api(ray_shared):
    r = miniray.put(1)
    assert isinstance(r.hex(), str) and len(r.hex()) == 32
    assert r == r and hash(r) == hash(r)
    assert len({r, r, miniray.put(1)}) == 2
    assert r.future().result(timeout=10) == 1

    async def main():
        return await r
    assert asyncio.run(main()) == 1


def test_get_input_validation(ray_shared):
    with pytest.raises(TypeError):
        miniray.get(1)
    with pytest.raises(TypeError):
        miniray.get([miniray.put(1), 2])
    with pytest.raises(ValueError):
        miniray.get(miniray.put(1), timeout=-1)
    assert miniray.get([]) == []


def test_wait_semantics(ray_shared):
    fast = [miniray.put(i) for i in range(3)]
    slow = sleep_return.remote(5, "slow")
    refs = [fast[0], slow, fast[1], fast[2]]
    ready, not_ready = miniray.wait(refs, num_returns=2)
    assert ready == [fast[0], fast[1]]
    assert not_ready == [slow, fast[2]]
    ready, not_ready = miniray.wait(refs, num_returns=4, timeout=0.2)
    assert ready == [fast[0], fast[1], fast[2]] and not_ready == [slow]
    ready, not_ready = miniray.wait([slow], timeout=0)
    assert ready == [] and not_ready == [slow]
    miniray.cancel(slow, force=True)


def test_wait_validation(ray_shared):
    r = miniray.put(1)
    with pytest.raises(ValueError, match="duplicate"):
        miniray.wait([r, r])
    with pytest.raises(ValueError):
        miniray.wait([r], num_returns=2)
    with pytest.raises(ValueError):
        miniray.wait([r], num_returns=0)
    with pytest.raises(TypeError):
        miniray.wait(r)
    with pytest.raises(TypeError):
        miniray.wait([1])
    with pytest.raises(TypeError, match="holds a SimpleNamespace"):   # looks like one
        miniray.wait([r, types.SimpleNamespace(_id=b"x" * 16)])
    with pytest.raises(TypeError, match="holds a list"):
        miniray.wait([r, [r]])


def test_get_timeout_is_timeout_error(ray_shared):
    ref = sleep_return.remote(10, 1)
    t0 = time.monotonic()
    with pytest.raises(GetTimeoutError):
        miniray.get(ref, timeout=0.2)
    assert time.monotonic() - t0 < 5
    with pytest.raises(TimeoutError):
        miniray.get([ref], timeout=0)
    miniray.cancel(ref, force=True)


def test_numpy_zero_copy_read_only(ray_shared):
    a = np.arange(10_000_000, dtype=np.float64)
    ref = miniray.put(a)
    b = miniray.get(ref)
    c = miniray.get(ref)
    np.testing.assert_array_equal(a, b)
    assert not b.flags.writeable
    with pytest.raises(ValueError):
        b[0] = 1
    # Two gets of one object share memory: both are views of the arena.
    assert b.__array_interface__["data"][0] == c.__array_interface__["data"][0]
    addr, writeable, total = miniray.get(array_info.remote(ref))
    assert not writeable and total == a.sum()
    writable_copy = b.copy()
    writable_copy[0] = 5
    assert writable_copy[0] == 5


def test_arrow_zero_copy(ray_shared):
    table = pa.table({"x": np.arange(1_000_000), "y": np.ones(1_000_000)})
    ref = miniray.put(table)
    out = miniray.get(ref)
    assert out.equals(table)
    buf = out.column("x").chunks[0].buffers()[1]
    again = miniray.get(ref).column("x").chunks[0].buffers()[1]
    assert buf.address == again.address


def test_small_objects_inline(ray_shared):
    before = stats()["arena_objects"]
    refs = [miniray.put(i) for i in range(100)]
    assert stats()["arena_objects"] == before
    del refs


def test_objects_freed_when_refs_dropped(ray_shared):
    gc.collect()
    base = stats()["arena_used"]
    ref = miniray.put(np.zeros(20_000_000, dtype=np.uint8))
    assert wait_for(lambda: stats()["arena_used"] >= base + 20_000_000)
    del ref
    gc.collect()
    miniray._runtime.current().client.flush_refs()
    assert wait_for(lambda: stats()["arena_used"] <= base)


def test_view_pins_object(ray_shared):
    gc.collect()
    base = stats()["arena_used"]
    ref = miniray.put(np.full(5_000_000, 7, dtype=np.uint8))
    view = miniray.get(ref)
    del ref
    gc.collect()
    # The view keeps the range; writing other objects must not touch it.
    others = [miniray.put(np.zeros(5_000_000, dtype=np.uint8)) for _ in range(3)]
    assert view.min() == 7 and view.max() == 7
    assert stats()["arena_used"] >= base + 5_000_000
    del others, view
    gc.collect()
    miniray._runtime.current().client.flush_refs()
    assert wait_for(lambda: stats()["arena_used"] <= base)


def test_get_of_a_repeated_ref_gives_a_value_per_position(ray_shared):
    gc.collect()
    base = stats()["arena_used"]
    big = miniray.put(np.full(1_000_000, 3, dtype=np.uint8))
    small = miniray.put("s")
    task = sleep_return.remote(0.2, "t")
    out = miniray.get([big, small, big, task, task, small, big])
    assert len(out) == 7 and out[1] == out[5] == "s" and out[3] == out[4] == "t"
    assert all(a.sum() == 3_000_000 for a in (out[0], out[2], out[6]))
    del big, out
    gc.collect()
    miniray._runtime.current().client.flush_refs()
    assert wait_for(lambda: stats()["arena_used"] <= base)    # every view's pin went back


def test_nested_ref_keeps_object_alive(ray_shared):
    inner = miniray.put(np.arange(1_000_000))
    outer = miniray.put([inner])
    inner_id = inner.id
    del inner
    gc.collect()
    miniray._runtime.current().client.flush_refs()
    time.sleep(0.1)
    got = miniray.get(outer)[0]
    assert got.id == inner_id
    assert miniray.get(got)[-1] == 999_999


def test_put_loop_reuses_store(ray_factory):
    ray = ray_factory(object_store_memory=1 << 30)
    for _ in range(30):
        ref = ray.put(np.ones(100 * 2**20 // 8))
        assert ray.get(ref)[0] == 1
        del ref
    assert stats()["arena_used"] < 300 * 2**20


def test_store_full_error(ray_factory):
    # Full of an object being read (a view is alive): it cannot be spilled.
    ray = ray_factory(object_store_memory=64 * 2**20)
    keep = ray.get(ray.put(np.zeros(40 * 2**20, dtype=np.uint8)))
    with pytest.raises(ObjectStoreFullError) as info:
        ray.put(np.zeros(40 * 2**20, dtype=np.uint8))
    msg = str(info.value)
    assert "MiB" in msg and "object_store_memory" in msg and "pinned by readers" in msg
    assert isinstance(info.value, MemoryError)
    del keep


def test_one_array_many_tasks_shares_memory(ray_factory):
    ray = ray_factory(num_cpus=2, object_store_memory=1 << 30)
    a = np.ones(200 * 2**20 // 8)
    ref = ray.put(a)
    del a
    used = stats()["arena_used"]
    infos = ray.get([array_info.remote(ref) for _ in range(8)])
    # Every task read the same bytes: no copy was made in the store.
    assert stats()["arena_used"] == used
    assert all(total == 200 * 2**20 // 8 for _, _, total in infos)
    assert len({addr % (1 << 40) for addr, _, _ in infos}) >= 1


def test_future_and_await_of_task(ray_shared):
    ref = sleep_return.remote(0.1, "done")
    fut = ref.future()
    assert fut.result(timeout=20) == "done"

    async def main():
        return await asyncio.gather(*[sleep_return.remote(0.05, i) for i in range(5)])
    assert asyncio.run(main()) == list(range(5))


def test_arena_file_is_private_and_unlinked(ray_shared):
    import os
    node = miniray._runtime.current().node_proc.pid
    found = []
    for fd in os.listdir(f"/proc/{node}/fd"):
        path = f"/proc/{node}/fd/{fd}"
        try:
            target = os.readlink(path)
        except OSError:
            continue
        if "miniray-" in target:
            found.append((target, os.stat(path).st_mode & 0o777))
    assert found, "the node holds no arena file"
    for target, mode in found:
        assert target.endswith("(deleted)") and target.startswith("/dev/shm/")
        assert mode == 0o600


def test_small_dev_shm_falls_back_with_warning(ray_factory):
    import shutil
    import tempfile
    free = shutil.disk_usage("/dev/shm").free
    if shutil.disk_usage(tempfile.gettempdir()).free < 2**30:
        pytest.skip("not enough temp space for a file-backed arena")
    with pytest.warns(RuntimeWarning, match="/dev/shm"):
        ray = ray_factory(object_store_memory=free + 2**30)
    ref = ray.put(np.arange(1_000_000))
    assert ray.get(ref)[-1] == 999_999
