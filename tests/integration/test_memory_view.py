"""Seeing memory with real processes: ``object_store_memory`` and ``memory``
in the resources, ``miniray.util.state.list_objects`` /
``object_store_stats``, call sites (RAY_record_ref_creation_sites) and the
``miniray memory`` command."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import miniray
from miniray.util.state import RayStateApiException, get_objects, list_objects, \
    object_store_stats
from tests.conftest import run_driver, wait_for

MiB = 2**20
GiB = 2**30


def rows_of(ref, **match) -> list:
    """The list_objects rows of ``ref`` (those with the given values)."""
    return [r for r in list_objects(limit=None)
            if r["object_id"] == ref.hex() and all(r.get(k) == v for k, v in match.items())]


def has_row(ref, **match) -> bool:
    return bool(rows_of(ref, **match))


# -- resources: the store's bytes and the memory tasks ask for -----------------------------------

def test_cluster_resources_report_memory_and_the_store(ray_start):
    total = miniray.cluster_resources()
    assert total["object_store_memory"] == 512 * MiB
    assert total["memory"] > 0
    avail = miniray.available_resources()
    assert 0 < avail["object_store_memory"] <= 512 * MiB
    assert avail["memory"] == total["memory"]


def test_store_bytes_drop_with_a_put_and_come_back_after_del(ray_start):
    before = miniray.available_resources()["object_store_memory"]
    ref = miniray.put(np.zeros(50 * 10**6, dtype=np.uint8))
    during = miniray.available_resources()["object_store_memory"]
    assert 50 * 10**6 <= before - during <= 51 * 10**6
    del ref
    assert wait_for(lambda: miniray.available_resources()["object_store_memory"] == before)


def test_a_task_asking_for_memory_runs_when_the_node_has_it(ray_start):
    if miniray.cluster_resources()["memory"] < 2 * GiB:
        pytest.skip("this machine has less than 2 GiB of memory available for tasks")

    @miniray.remote(memory=2 * GiB)
    def f():
        return miniray.available_resources()["memory"]

    total = miniray.cluster_resources()["memory"]
    assert miniray.get(f.remote(), timeout=60) == pytest.approx(total - 2 * GiB)


def test_a_task_asking_for_more_memory_than_the_node_has_waits_with_a_warning(ray_start, capfd):
    too_much = miniray.cluster_resources()["memory"] + GiB

    @miniray.remote(memory=too_much)
    def f():
        return 1

    ref = f.remote()
    ready, _ = miniray.wait([ref], timeout=1.5)
    assert not ready
    err = capfd.readouterr().err
    assert ".f' asks for {CPU: 1, memory: " in err and "stays pending" in err, err
    miniray.cancel(ref)


# -- list_objects: each object, where it is and who holds it ------------------------------------

@miniray.remote
def make(n):
    return np.ones(n, dtype=np.uint8)


@miniray.remote
def hold(arg, path):
    while not os.path.exists(path):
        time.sleep(0.02)
    return len(arg)


def test_list_objects_shows_each_holder(ray_start, tmp_path):
    me = os.getpid()
    put_ref = miniray.put(np.zeros(10 * MiB, dtype=np.uint8))
    small = make.remote(10)
    miniray.get(small)
    inner = miniray.put(np.zeros(3 * MiB, dtype=np.uint8))
    outer = miniray.put([inner])
    inner_hex = inner.hex()
    del inner
    viewed = make.remote(5 * MiB)
    view = miniray.get(viewed)
    viewed_hex = viewed.hex()
    del viewed
    go = str(tmp_path / "go")
    running = hold.remote(put_ref, go)

    rows = rows_of(put_ref, reference_type="LOCAL_REFERENCE")
    assert len(rows) == 1 and (rows[0]["type"], rows[0]["pid"]) == ("DRIVER", me)
    assert rows[0]["where"] == "shared_memory" and 10 * MiB <= rows[0]["object_size"] < 11 * MiB
    assert rows[0]["call_site"] == "disabled"
    # The running task's argument: pinned for the task, viewed by its worker.
    assert wait_for(lambda: has_row(put_ref, reference_type="PINNED_IN_MEMORY", type="WORKER"))
    (arg_row,) = rows_of(put_ref, reference_type="USED_BY_PENDING_TASK")
    assert (arg_row["task_name"], arg_row["pid"], arg_row["type"]) == ("hold", me, "DRIVER")
    assert wait_for(lambda: rows_of(running)[0]["task_status"] == "RUNNING")

    (small_row,) = rows_of(small)
    assert (small_row["reference_type"], small_row["where"]) == ("LOCAL_REFERENCE", "inline")
    assert small_row["task_status"] == "FINISHED" and small_row["object_size"] < 1000

    def inner_rows():
        return [r for r in list_objects(limit=None) if r["object_id"] == inner_hex]
    assert wait_for(lambda: [r["reference_type"] for r in inner_rows()] == ["CAPTURED_IN_OBJECT"])
    assert inner_rows()[0]["contained_in"] == outer.hex()

    def viewed_rows():
        return [r for r in list_objects(limit=None) if r["object_id"] == viewed_hex]
    assert wait_for(lambda: [(r["reference_type"], r["pid"]) for r in viewed_rows()] == [
        ("PINNED_IN_MEMORY", me)])
    assert viewed_rows()[0]["object_size"] >= 5 * MiB
    del view
    assert wait_for(lambda: not viewed_rows())

    open(go, "w").close()
    assert miniray.get(running) == 10 * MiB
    assert wait_for(lambda: not rows_of(put_ref, reference_type="USED_BY_PENDING_TASK"))


def test_filters_limit_and_get_objects(ray_start):
    refs = [miniray.put(i) for i in range(5)]
    assert len(list_objects(filters=[("reference_type", "=", "local_reference")],
                            limit=None)) >= 5
    with pytest.warns(UserWarning, match="shows 2 rows"):
        assert len(list_objects(limit=2)) == 2
    (row,) = get_objects(refs[3].hex())
    assert row["object_id"] == refs[3].hex() and row["type"] == "DRIVER"
    assert list_objects(filters=[("object_id", "!=", refs[0].hex()),
                                 ("object_id", "=", refs[0].hex())]) == []
    with pytest.raises(ValueError):
        list_objects(filters=[("object_id", ">", "x")])


def test_object_store_stats_move_with_a_put_and_a_del(ray_start):
    (node_id, before), = object_store_stats().items()
    assert node_id == miniray.get_runtime_context().get_node_id()
    assert before["capacity"] == 512 * MiB and before["spilled"] == 0
    assert before["used"] + before["free"] == before["capacity"]
    ref = miniray.put(np.zeros(50 * 10**6, dtype=np.uint8))
    after = object_store_stats()[node_id]
    assert after["used"] - before["used"] >= 50 * 10**6
    assert after["num_objects"] == before["num_objects"] + 1
    del ref
    assert wait_for(lambda: object_store_stats()[node_id]["used"] == before["used"])


def test_list_objects_raises_when_asked_to_and_nodes_are_missing(monkeypatch):
    from miniray.util import state
    monkeypatch.setattr(state, "_ask", lambda *a: {"nodes": [], "missing": [("n1", "gone")]})
    with pytest.raises(RayStateApiException, match="n1"):
        list_objects()
    with pytest.warns(RuntimeWarning, match="n1"):
        assert list_objects(raise_on_missing_output=False) == []


# -- call sites ---------------------------------------------------------------------------------------

_SITES_DRIVER = """
    import json
    import miniray
    from miniray.util.state import list_objects
    miniray.init(num_cpus=1, object_store_memory=64 * 2**20)
    @miniray.remote
    def f():
        return 1
    a = miniray.put("x")
    b = f.remote()
    miniray.get(b)
    sites = {r["object_id"]: r["call_site"] for r in list_objects()}
    print(json.dumps([sites[a.hex()], sites[b.hex()]]))
    miniray.shutdown()
"""


def test_call_sites_are_recorded_only_when_asked():
    off = run_driver(_SITES_DRIVER, env={"RAY_record_ref_creation_sites": "0"})
    assert off.returncode == 0, off.stderr
    assert json.loads(off.stdout) == ["disabled", "disabled"]
    on = run_driver(_SITES_DRIVER, env={"RAY_record_ref_creation_sites": "1"})
    assert on.returncode == 0, on.stderr
    put_site, call_site = json.loads(on.stdout)
    # -c scripts are "<string>"; the lines of the put and the .remote() call.
    assert put_site == "<string>:9" and call_site == "<string>:10"
    also = run_driver(_SITES_DRIVER, env={"MINIRAY_record_ref_creation_sites": "1"})
    assert json.loads(also.stdout)[0] == "<string>:9", also.stderr


# -- miniray memory -----------------------------------------------------------------------------------

def test_miniray_memory_prints_the_table_and_a_summary(cluster, tmp_path):
    cli, env, info = cluster
    stop = tmp_path / "stop"
    code = textwrap.dedent(f"""
        import os, time
        import numpy as np
        import miniray
        miniray.init(address="auto")
        big = miniray.put(np.zeros(20 * 2**20, dtype=np.uint8))
        box = miniray.put([big])
        print(big.hex(), box.hex(), os.getpid(), flush=True)
        while not os.path.exists({str(stop)!r}):
            time.sleep(0.05)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        big, box, pid = proc.stdout.readline().split()
        out = cli("memory").stdout
        assert "--- Summary for node" in out and "spilled 0 B" in out, out
        assert "used 20.0 MiB (2 objects" in out and "of 128.0 MiB" in out, out
        for column in ("OBJECT ID", "SIZE", "WHERE", "REFERENCE TYPE", "PID", "CALL SITE"):
            assert column in out
        lines = [line.split() for line in out.splitlines()]
        big_rows = [line for line in lines if line and line[0] == big]
        assert sorted(r[4] for r in big_rows) == ["CAPTURED_IN_OBJECT", "LOCAL_REFERENCE"], out
        local = next(r for r in big_rows if r[4] == "LOCAL_REFERENCE")
        assert local[1:4] == ["20.0", "MiB", "shared_memory"] and local[5] == pid
        assert local[-1] == "disabled"
        assert any(line and line[0] == box and "inline" in line for line in lines), out
        stats = cli("memory", "--stats-only").stdout
        assert "used 20.0 MiB" in stats and "OBJECT ID" not in stats
    finally:
        stop.touch()
        proc.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr.read()


# -- a cluster: every node answers ---------------------------------------------------------------

@pytest.fixture
def two_nodes(local_cluster):
    return local_cluster(1, {"num_cpus": 1, "resources": {"B": 1}})


@miniray.remote(resources={"B": 1})
def made_on_b(n):
    return np.ones(n, dtype=np.uint8)


def test_list_objects_covers_every_node_of_a_cluster(two_nodes):
    here = miniray.get_runtime_context().get_node_id()
    (b,) = [n["NodeID"] for n in miniray.nodes() if n["NodeID"] != here]
    ref = made_on_b.remote(4 * MiB)
    # (Not wait/get: they would pull a copy here.)
    assert wait_for(lambda: {r["where"] for r in rows_of(ref)} == {
        f"remote:{b}", "shared_memory"}, timeout=60), rows_of(ref)
    rows = rows_of(ref)
    by_node = {r["node_id"]: r for r in rows}
    assert set(by_node) == {here, b}, rows
    # The owner's entry (the driver's ref) points to B, which has the bytes,
    # leased to the owner's node.
    assert by_node[here]["where"] == f"remote:{b}"
    assert (by_node[here]["reference_type"], by_node[here]["type"]) == ("LOCAL_REFERENCE",
                                                                        "DRIVER")
    assert by_node[b]["where"] == "shared_memory" and by_node[b]["type"] == "NODE"
    assert by_node[b]["object_size"] >= 4 * MiB
    stats = object_store_stats()
    assert set(stats) == {here, b} and stats[b]["used"] >= 4 * MiB
    del ref
    assert wait_for(lambda: object_store_stats()[b]["used"] == 0, timeout=15)
