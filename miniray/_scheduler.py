"""Resource accounting and the ready queues: pure state, no I/O.

The node daemon asks two questions of this module on every scheduling pass:
which ready task can run now (its resources fit what is free), and can this
request ever run here (it fits the node's total).  Ready tasks are queued
per *resource shape*, so a task that waits for 2 CPUs does not block the
1-CPU tasks queued behind it, and one check decides a whole queue.
"""
from __future__ import annotations

from collections import deque

__all__ = ["ResourcePool", "ReadyQueues", "shape_of", "format_resources"]

_EPS = 1e-9


def shape_of(resources: dict) -> tuple:
    """Hashable, canonical form of a resource request."""
    return tuple(sorted((k, float(v)) for k, v in resources.items() if v))


_BYTES = ("memory", "object_store_memory")


def format_resources(resources) -> str:
    """``{CPU: 2, memory: 1.5 GiB}``: amounts as people read them."""
    items = resources.items() if isinstance(resources, dict) else resources
    return "{" + ", ".join(f"{k}: {_bytes(v) if k in _BYTES else f'{v:g}'}"
                           for k, v in items) + "}"


def _bytes(n) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:g} B"


def gpu_amount(shape: tuple) -> float:
    for k, v in shape:
        if k == "GPU":
            return v
    return 0.0


def cpu_amount(shape: tuple) -> float:
    for k, v in shape:
        if k == "CPU":
            return v
    return 0.0


class ResourcePool:
    def __init__(self, total: dict):
        self.total = {k: float(v) for k, v in total.items()}
        self.available = dict(self.total)
        # What is left of each GPU, by id: whole GPUs go to one task each,
        # fractions of one GPU are packed onto the same id (as Ray does).
        self.gpu_left = [1.0] * int(self.total.get("GPU", 0))
        self._fits_ever: dict = {}      # shape -> fits_ever (``total`` never changes)

    def take_gpus(self, amount: float):
        """GPU ids for a request of ``amount`` GPUs (None if no set of ids
        has room, even though the total does)."""
        left = self.gpu_left
        if amount >= 1.0 - _EPS:
            ids = [i for i, f in enumerate(left) if f >= 1.0 - _EPS][:int(round(amount))]
            if len(ids) < int(round(amount)):
                return None
            for i in ids:
                left[i] = 0.0
            return tuple(ids)
        for i, f in enumerate(left):
            if f + _EPS >= amount:
                left[i] = f - amount
                return (i,)
        return None

    def give_gpus(self, ids, amount: float) -> None:
        share = 1.0 if amount >= 1.0 - _EPS else amount
        for i in ids:
            self.gpu_left[i] = min(1.0, self.gpu_left[i] + share)

    def fits_ever(self, shape: tuple) -> bool:
        fits = self._fits_ever.get(shape)
        if fits is None:
            total = self.total
            fits = all(total.get(k, 0.0) + _EPS >= v for k, v in shape)
            if len(self._fits_ever) < 1024:     # (asked once per task: shapes are few)
                self._fits_ever[shape] = fits
        return fits

    def missing(self, shape: tuple) -> dict:
        """What the node lacks, forever, for this request."""
        return {k: v for k, v in shape if self.total.get(k, 0.0) + _EPS < v}

    def never_fits(self, shape: tuple):
        """Why ``shape`` can never run on this node, or None if it can."""
        if self.fits_ever(shape):
            return None
        return (f"asks for {format_resources(shape)} but this node has only "
                f"{format_resources(self.total)} (missing {format_resources(self.missing(shape))})")

    def fits_now(self, shape: tuple) -> bool:
        avail = self.available
        return all(avail.get(k, 0.0) + _EPS >= v for k, v in shape)

    def acquire(self, shape: tuple) -> None:
        avail = self.available
        for k, v in shape:
            avail[k] = avail.get(k, 0.0) - v

    def release(self, shape: tuple) -> None:
        avail = self.available
        for k, v in shape:
            avail[k] = avail.get(k, 0.0) + v

    def snapshot_available(self) -> dict:
        return {k: max(0.0, round(v, 9)) for k, v in self.available.items()}


class ReadyQueues:
    """FIFO queues of ready items, one per resource shape."""

    def __init__(self):
        self._queues: dict[tuple, deque] = {}
        self.count = 0

    def push(self, shape: tuple, item) -> None:
        q = self._queues.get(shape)
        if q is None:
            q = self._queues[shape] = deque()
        q.append(item)
        self.count += 1

    def push_front(self, shape: tuple, item) -> None:
        q = self._queues.get(shape)
        if q is None:
            q = self._queues[shape] = deque()
        q.appendleft(item)
        self.count += 1

    def remove(self, shape: tuple, item) -> bool:
        q = self._queues.get(shape)
        if q is None:
            return False
        try:
            q.remove(item)
        except ValueError:
            return False
        self.count -= 1
        return True

    def shapes(self):
        return [s for s, q in self._queues.items() if q]

    def pop(self, shape: tuple):
        q = self._queues[shape]
        self.count -= 1
        return q.popleft()

    def peek(self, shape: tuple):
        q = self._queues.get(shape)
        return q[0] if q else None

    def count_runnable(self, available: dict, limit: int) -> int:
        """How many queued items could start together with ``available``
        resources (in queue order, at most ``limit``)."""
        avail = dict(available)
        n = 0
        for shape, q in self._queues.items():
            for _ in range(len(q)):
                if n >= limit or not all(avail.get(k, 0.0) + _EPS >= v for k, v in shape):
                    break
                for k, v in shape:
                    avail[k] = avail.get(k, 0.0) - v
                n += 1
        return n

    def __len__(self):
        return self.count
