"""miniray on several nodes: three real nodes on this machine, each with its
own shared-memory store and workers, joined over authenticated TCP exactly
as nodes on separate hosts are (see docs/cluster.md for two real hosts).

Run:  python examples/cluster.py
"""
import time

import numpy as np

import miniray as ray
from miniray.cluster_utils import Cluster


@ray.remote
def where():
    return ray.get_runtime_context().get_node_id()[:8]


@ray.remote(resources={"gpu_box": 1})
def column_sums(matrix):
    # Runs on the node that has "gpu_box": the matrix was pulled into that
    # node's store once, and is read there zero-copy.
    return matrix.sum(axis=0), ray.get_runtime_context().get_node_id()[:8]


@ray.remote(resources={"db_box": 1})
class Tally:
    """An actor that lives on the node with "db_box"; its handle works anywhere."""

    def __init__(self):
        self.total = 0.0

    def add(self, x):
        self.total += float(x)
        return self.total, ray.get_runtime_context().get_node_id()[:8]


def main():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=2, resources={"gpu_box": 1})
    cluster.add_node(num_cpus=1, resources={"db_box": 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    try:
        print(f"{len(ray.nodes())} nodes, resources: {ray.cluster_resources()}")
        print("tasks spread over nodes:", sorted(set(ray.get(
            [where.options(scheduling_strategy="SPREAD").remote() for _ in range(6)]))))

        matrix = np.random.default_rng(0).random((2_000, 1_000))       # 16 MB
        t0 = time.perf_counter()
        sums, node = ray.get(column_sums.remote(ray.put(matrix)))
        print(f"column sums computed on node {node} in {time.perf_counter() - t0:.3f} s, "
              f"correct: {np.allclose(sums, matrix.sum(axis=0))}")

        tally = Tally.remote()
        for x in sums[:3]:
            total, node = ray.get(tally.add.remote(x))
        print(f"the actor on node {node} holds {total:.1f}")
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
