"""Objects between the stores of a local Cluster of real node daemons:
refs handed on inside other objects, refs kept by an actor on another node
after its caller dropped them, and one object read on many nodes."""
from __future__ import annotations

import gc
import time

import numpy as np
import pytest

import miniray
from tests.conftest import object_info, wait_for

pytestmark = pytest.mark.timeout(120)


def test_a_ref_passed_inside_a_list_is_served_once_its_task_is_done(local_cluster):
    # The task on C gets the ref while the task on B still runs: C asks the
    # owner (the head), which serves it once the result exists (it relays
    # it from B).
    local_cluster(1, {"num_cpus": 1, "resources": {"B": 1}},
                  {"num_cpus": 1, "resources": {"C": 1}})

    @miniray.remote(resources={"B": 1})
    def slow_array(n):
        import time
        time.sleep(0.5)
        return np.arange(n)

    @miniray.remote(resources={"C": 1})
    def total_of_first(refs):
        return int(miniray.get(refs[0]).sum())

    big, small = slow_array.remote(1_000_000), slow_array.remote(10)
    assert miniray.get(total_of_first.remote([big]), timeout=30) == sum(range(1_000_000))
    assert miniray.get(total_of_first.remote([small]), timeout=30) == 45


def test_refs_kept_on_another_node_keep_their_objects_alive(local_cluster):
    # The driver drops its refs; an actor on B kept one, and a task on B
    # returned one inside a list: both objects must stay readable.
    local_cluster(1, {"num_cpus": 1, "resources": {"B": 1}})

    @miniray.remote(resources={"B": 0.5})
    class Keeper:
        def keep(self, refs):
            self.refs = refs
            return len(refs)

        def total(self):
            return float(miniray.get(self.refs[0]).sum())

    @miniray.remote(resources={"B": 0.5})
    def wrap(refs):
        return refs

    k = Keeper.remote()
    x = miniray.put(np.ones(1_000_000))
    y = miniray.put(np.full(500_000, 2.0))
    assert miniray.get(k.keep.remote([x]), timeout=30) == 1
    xid = bytes.fromhex(x.hex())
    w = wrap.remote([y])
    miniray.wait([w], timeout=30)
    del x, y
    gc.collect()
    time.sleep(1.0)         # the driver's DECREFs are in; the node freed what it could
    assert miniray.get(k.total.remote(), timeout=30) == 1_000_000.0
    inner = miniray.get(w, timeout=30)
    assert float(miniray.get(inner[0], timeout=30).sum()) == 1_000_000.0
    # Once the actor is gone, its node gives the lease back: the object goes.
    assert object_info(xid) is not None
    miniray.kill(k)
    assert wait_for(lambda: object_info(xid) is None, timeout=20)


def test_a_broadcast_moves_the_object_once_per_node_and_not_all_from_the_writer(local_cluster):
    from miniray._protocol import Query
    local_cluster(1, *({"num_cpus": 1, "resources": {n: 1}} for n in "BCD"))
    arr = np.random.default_rng(1).random(2 * 2**20)       # 16 MiB, put on the head
    ref = miniray.put(arr)
    want = float(arr.sum())

    @miniray.remote(num_cpus=0)
    class Holder:
        """Keeps its node's copy alive (a consumer that holds the data)."""
        def keep(self, refs):
            self.arr = miniray.get(refs[0])
            return float(self.arr.sum())

        def stats(self):
            return miniray._runtime.current().client.query(Query.STATS)

    @miniray.remote
    def read(a):
        return float(a.sum())

    holders = {n: Holder.options(resources={n: 0.5}).remote() for n in "BCD"}
    for n in "BCD":               # one after another: later nodes find earlier copies
        assert miniray.get(holders[n].keep.remote([ref]), timeout=60) == want
        assert miniray.get([read.options(resources={n: 0.5}).remote(ref) for _ in range(2)],
                           timeout=60) == [want] * 2
    stats = {n: miniray.get(holders[n].stats.remote(), timeout=30) for n in "BCD"}
    head = miniray._runtime.current().client.query(Query.STATS)
    # Each node received the object once, whatever number of tasks read it.
    assert [stats[n]["streams_in"] for n in "BCD"] == [1, 1, 1]
    served = [head["streams_out"]] + [stats[n]["streams_out"] for n in "BCD"]
    assert sum(served) == 3
    assert head["streams_out"] < 3, served      # later nodes pulled from earlier ones


def test_an_object_made_on_one_node_goes_straight_to_a_third(local_cluster):
    """The head owns the result of a task run on B; a task on C that takes
    it pulls it from B, not through the head's store."""
    from miniray._protocol import Query
    local_cluster(1, *({"num_cpus": 1, "resources": {n: 1}} for n in "BC"))

    @miniray.remote(resources={"B": 1})
    def make():
        return np.arange(4 * 2**20, dtype=np.float64)        # 32 MiB, stays on B

    @miniray.remote(resources={"C": 1})
    def total(a):
        return float(a.sum()), miniray._runtime.current().client.query(Query.STATS)

    ref = make.remote()
    s, c_stats = miniray.get(total.remote(ref), timeout=60)
    assert s == float(np.arange(4 * 2**20, dtype=np.float64).sum())
    head = miniray._runtime.current().client.query(Query.STATS)
    assert c_stats["streams_in"] == 1
    assert head["streams_in"] == 0 and head["streams_out"] == 0, head


def test_a_broadcast_to_nodes_at_once_arrives_whole_everywhere(local_cluster):
    # Pullers sent to a node whose copy is still arriving are served once
    # it is complete; every node gets the object once and intact.
    local_cluster(1, *({"num_cpus": 1, "resources": {n: 1}} for n in "BCD"))
    arr = np.random.default_rng(2).random(8 * 2**20)       # 64 MiB
    want = float(arr.sum())
    for _ in range(2):
        ref = miniray.put(arr)

        @miniray.remote
        def read(a):
            return float(a.sum())

        refs = [read.options(resources={n: 0.25}).remote(ref) for n in "BCD" for _ in range(2)]
        got = miniray.get(refs, timeout=60)
        assert got == [want] * 6
        del ref, refs


def test_a_ref_taken_out_of_a_pulled_object_outlives_the_object(local_cluster):
    local_cluster(1, {"num_cpus": 1, "resources": {"B": 1}})

    @miniray.remote(resources={"B": 1})
    class Unpacker:
        def take(self, boxed):
            self.x = miniray.get(boxed[0])[0]       # the ref inside the pulled list
            return 1

        def total(self):
            return float(miniray.get(self.x).sum())

    u = Unpacker.remote()
    x = miniray.put(np.ones(1_000_000))
    box = miniray.put([x])
    assert miniray.get(u.take.remote([box]), timeout=30) == 1
    del x, box
    gc.collect()
    time.sleep(1.0)         # the box is gone everywhere; the ref taken out of it is not
    assert miniray.get(u.total.remote(), timeout=30) == 1_000_000.0
