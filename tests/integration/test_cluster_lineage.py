"""Objects lost with a node, on a local Cluster of real node daemons (each
with its own store): a task's result is made again by re-running the task
(recursively for its lost arguments) while it has retries; otherwise, and
for puts and actor methods' results, ``get`` raises ObjectLostError naming
the object, the node and why.  Nothing hangs."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import miniray
from miniray.exceptions import ObjectLostError

pytestmark = pytest.mark.timeout(120)

N = 4 * 2**20 // 8          # 4 MiB of int64: stays in the store of the node that made it


@miniray.remote
def made_where(n):
    return miniray.get_runtime_context().get_node_id(), np.arange(n, dtype=np.int64)


@miniray.remote
def plus_one(pair):
    return miniray.get_runtime_context().get_node_id(), pair[1] + 1


@miniray.remote
def node_id():
    return miniray.get_runtime_context().get_node_id()


def settle_on(node):
    """Once a later task needing "B" ran there (one at a time), the tasks
    before it finished there and their results are announced to the head,
    without being fetched."""
    assert miniray.get(node_id.options(resources={"B": 1}).remote(), timeout=30) == node.node_id


def replace(c, victim):
    """Add a node that can run what ran on ``victim`` (it has "B"), then kill
    ``victim`` (SIGKILL of its daemon: a crash, as the cluster sees it)."""
    spare = c.add_node(num_cpus=1, resources={"B": 1})
    c.wait_for_nodes()
    c.remove_node(victim, allow_graceful=False)
    return spare


def lost_text(ref) -> str:
    """What ``get`` of a lost, unrebuildable object raises: ObjectLostError."""
    with pytest.raises(ObjectLostError) as info:
        miniray.get(ref, timeout=30)
    return str(info.value)


def test_a_lost_result_is_rebuilt_on_another_node_unless_it_has_no_retries(local_cluster):
    c = local_cluster(1, {"num_cpus": 1, "resources": {"B": 1}})
    b = c.worker_nodes[0]
    ref = made_where.options(resources={"B": 1}, max_retries=2).remote(N)
    once = made_where.options(resources={"B": 1}, max_retries=0).remote(N)
    settle_on(b)
    spare = replace(c, b)
    t0 = time.monotonic()
    where, arr = miniray.get(ref, timeout=60)
    assert where == spare.node_id
    assert arr.dtype == np.int64 and np.array_equal(arr, np.arange(N))
    assert time.monotonic() - t0 < 30
    text = lost_text(once)
    assert once.hex() in text and b.node_id in text and "max_retries=0" in text


def test_a_chain_whose_results_both_lived_there_is_rebuilt(local_cluster):
    c = local_cluster(1, {"num_cpus": 1, "resources": {"B": 1}})
    b = c.worker_nodes[0]
    on_b = {"resources": {"B": 1}, "max_retries": 1}
    ref = plus_one.options(**on_b).remote(made_where.options(**on_b).remote(N))
    settle_on(b)
    spare = replace(c, b)
    where, arr = miniray.get(ref, timeout=60)
    assert where == spare.node_id and np.array_equal(arr, np.arange(N) + 1)


@miniray.remote
class Keeper:
    def put_one(self, n):
        self.ref = miniray.put(np.arange(n, dtype=np.int64))
        return [self.ref]

    def big(self, n):
        return np.arange(n, dtype=np.int64)

    def ping(self):
        return miniray.get_runtime_context().get_node_id()


def test_puts_and_actor_results_only_there_are_lost_naming_why(local_cluster):
    c = local_cluster(1, {"num_cpus": 1, "resources": {"B": 1}})
    b = c.worker_nodes[0]
    keeper = Keeper.options(resources={"B": 1}).remote()
    [put_there] = miniray.get(keeper.put_one.remote(N), timeout=30)    # a ref, not its value
    big = keeper.big.remote(N)
    assert miniray.get(keeper.ping.remote(), timeout=30) == b.node_id  # calls run in order
    replace(c, b)
    text = lost_text(put_there)
    assert put_there.hex() in text and b.node_id in text and "put" in text
    text = lost_text(big)
    assert big.hex() in text and b.node_id in text and "actor method" in text


def test_a_get_under_way_when_the_node_dies_gets_the_value(local_cluster):
    c = local_cluster(1, {"num_cpus": 1, "resources": {"B": 1}})
    b = c.worker_nodes[0]
    n = 32 * 2**20 // 8
    ref = made_where.options(resources={"B": 1}, max_retries=1).remote(n)
    settle_on(b)
    spare = c.add_node(num_cpus=1, resources={"B": 1})
    c.wait_for_nodes()
    got = []
    getter = threading.Thread(target=lambda: got.append(miniray.get(ref, timeout=60)))
    getter.start()
    c.remove_node(b, allow_graceful=False)      # while the copy may be on its way
    getter.join(90)
    assert not getter.is_alive() and got
    where, arr = got[0]
    # Fetched before the node died, or made again on the spare one.
    assert where in (b.node_id, spare.node_id) and np.array_equal(arr, np.arange(n))
    del got, arr
