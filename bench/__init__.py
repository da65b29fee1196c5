"""miniray benchmark suite: miniray vs Ray vs multiprocessing.Pool vs physical limits.

Run from the repository root:

    python -m bench [--backends miniray,ray,mp] [--quick] [--only NAME,...] [--out bench/results]

Every (benchmark, backend, repetition) runs in a fresh subprocess; see
docs/performance.md for what each figure measures and what bounds it.
The benchmark code uses only Ray's public core API on the module it is given,
so the same function runs with ``import ray`` and ``import miniray as ray``.
"""
