"""miniray quickstart: tasks, a large array shared zero-copy, and an actor.

Run:  python examples/quickstart.py
"""
import time

import numpy as np

import miniray as ray


@ray.remote
def square(x):
    return x * x


@ray.remote
def column_mean(matrix, col):
    # `matrix` is a read-only view of shared memory: no copy was made for this task.
    return float(matrix[:, col].mean())


@ray.remote
class Counter:
    def __init__(self, start):
        self.value = start

    def add(self, n):
        self.value += n
        return self.value


def main():
    t0 = time.perf_counter()
    ray.init()
    print(f"started a node with {ray.cluster_resources()['CPU']:.0f} CPUs "
          f"in {time.perf_counter() - t0:.2f} s")

    # 1. Tasks: submit many, get all results.
    squares = ray.get([square.remote(i) for i in range(10)])
    print("squares:", squares)

    # 2. One large array, put once, read by 8 tasks without copies.
    matrix = np.random.default_rng(0).random((4_000_000, 8))  # 256 MB
    t = time.perf_counter()
    ref = ray.put(matrix)
    print(f"put 256 MB in {time.perf_counter() - t:.3f} s")
    means = ray.get([column_mean.remote(ref, c) for c in range(8)])
    assert np.allclose(means, matrix.mean(axis=0))
    view = ray.get(ref)
    print(f"column means: {np.round(means, 4).tolist()}; get returns a read-only "
          f"view (writeable={view.flags.writeable})")
    del view

    # 3. An actor keeps state between calls.
    counter = Counter.remote(100)
    print("counter:", ray.get([counter.add.remote(i) for i in range(1, 4)]))

    ray.shutdown()
    print(f"done in {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
