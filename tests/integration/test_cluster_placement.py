"""Cluster-wide decisions on a local Cluster of real node daemons: actor
names are unique across all nodes, and a task goes to the node that holds
most of its argument bytes."""
from __future__ import annotations

import time

import numpy as np
import pytest

import miniray
from tests.integration.test_cluster import local_cluster  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(120)


@miniray.remote(num_cpus=0)
class Named:
    def node(self):
        return miniray.get_runtime_context().get_node_id()


def test_an_actor_name_is_unique_in_the_whole_cluster(local_cluster):
    c = local_cluster(1, {"num_cpus": 1, "resources": {"B": 1}},
                      {"num_cpus": 1, "resources": {"C": 1}})
    b = c.worker_nodes[0].node_id
    solo = Named.options(name="solo", resources={"B": 0.1}).remote()
    assert miniray.get(solo.node.remote(), timeout=30) == b

    @miniray.remote(resources={"C": 1})
    def create_from_c(get_if_exists):
        # This task's worker talks to node C, which must ask the head.
        try:
            h = Named.options(name="solo", get_if_exists=get_if_exists).remote()
            return "created", miniray.get(h.node.remote())
        except ValueError as exc:
            return "refused", str(exc)

    kind, what = miniray.get(create_from_c.remote(False), timeout=30)
    assert kind == "refused" and "already exists" in what and "solo" in what
    # get_if_exists from another node hands back the one actor.
    assert miniray.get(create_from_c.remote(True), timeout=30) == ("created", b)

    # A name first taken from node C is refused to a driver on the head.
    @miniray.remote(resources={"C": 1})
    def make_on_c():
        h = Named.options(name="from-c", lifetime="detached").remote()
        return miniray.get(h.node.remote())
    c_id = c.worker_nodes[1].node_id
    assert miniray.get(make_on_c.remote(), timeout=30) == c_id
    with pytest.raises(ValueError, match="already exists"):
        Named.options(name="from-c").remote()
    found = miniray.get_actor("from-c")
    assert miniray.get(found.node.remote(), timeout=30) == c_id
    miniray.kill(found)


def test_a_task_goes_to_the_node_holding_its_argument_bytes(local_cluster):
    c = local_cluster(1, {"num_cpus": 1, "resources": {"B": 1}})
    b = c.worker_nodes[0].node_id

    @miniray.remote(resources={"B": 1})
    def make():
        return np.ones(4 * 2**20 // 8)          # 4 MiB: stays on B

    @miniray.remote
    def where(arr):
        return miniray.get_runtime_context().get_node_id(), float(arr.sum())

    ref = make.remote()
    # The head is idle and could run it; B holds the 4 MiB it reads (no
    # wait() first: Ray's wait fetches, and so does miniray's).
    for _ in range(3):
        assert miniray.get(where.remote(ref), timeout=30) == (b, 4 * 2**20 / 8)
    # Small arguments do not pull a task away from a node with room.
    small = miniray.put(1)

    @miniray.remote
    def where_small(x):
        return miniray.get_runtime_context().get_node_id()
    assert miniray.get(where_small.remote(small), timeout=30) == c.head_node.node_id


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


@miniray.remote(num_cpus=0)
class Counter:
    def __init__(self):
        self.n = 0

    def add(self):
        self.n += 1
        return self.n, miniray.get_runtime_context().get_node_id()


def test_an_actor_whose_node_dies_restarts_on_another_node(local_cluster):
    c = local_cluster(1, {"num_cpus": 1, "resources": {"X": 2}},
                      {"num_cpus": 1, "resources": {"X": 2}})
    again = Counter.options(resources={"X": 1}, max_restarts=1).remote()
    once = Counter.options(resources={"X": 1}, max_restarts=0).remote()
    n1, where = miniray.get(again.add.remote(), timeout=30)
    _, where_once = miniray.get(once.add.remote(), timeout=30)
    assert n1 == 1 and {where, where_once} == {n.node_id for n in c.worker_nodes}
    victim = next(n for n in c.worker_nodes if n.node_id == where)
    c.remove_node(victim, allow_graceful=False)
    # Started again (its state anew, as after a crash) on the node that is left.
    survivor = next(n.node_id for n in c.worker_nodes if n.node_id != where)
    deadline = time.monotonic() + 30
    while True:
        try:
            assert miniray.get(again.add.remote(), timeout=30) == (1, survivor)
            break
        except miniray.exceptions.ActorDiedError:
            # A call sent before the node was declared dead fails (no
            # max_task_retries), as in Ray; later calls reach the new one.
            assert time.monotonic() < deadline
            time.sleep(0.2)
    if where_once == where:
        with pytest.raises(miniray.exceptions.ActorDiedError, match=where):
            miniray.get(once.add.remote(), timeout=30)
