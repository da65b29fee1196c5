"""Cluster-wide decisions on a local Cluster of real node daemons: actor
names are unique across all nodes, and a task goes to the node that holds
most of its argument bytes."""
from __future__ import annotations

import numpy as np
import pytest

import miniray

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
