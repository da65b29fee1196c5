"""Best-fit range allocator with coalescing, owned by the node daemon.

Pure bookkeeping: no memory is touched here.  Ranges are 64-byte aligned
(cache line; also what numpy and Arrow want for SIMD).  Best fit keeps large
holes for large objects and makes a freed range the first candidate for the
next object of the same size, so a steady stream of puts of one size keeps
reusing the same, already faulted-in pages.
"""
from __future__ import annotations

from bisect import bisect_left, insort

__all__ = ["Allocator", "ALIGN"]

ALIGN = 64


def align_up(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


class Allocator:
    def __init__(self, capacity: int):
        capacity -= capacity % ALIGN
        self.capacity = capacity
        self.used = 0
        self._by_size: list[tuple[int, int]] = []   # sorted (size, start) of holes
        self._by_start: dict[int, int] = {}          # hole start -> size
        self._by_end: dict[int, int] = {}            # hole end -> start
        self._allocated: dict[int, int] = {}         # block start -> size
        if capacity:
            self._add_hole(0, capacity)

    def _add_hole(self, start: int, size: int) -> None:
        insort(self._by_size, (size, start))
        self._by_start[start] = size
        self._by_end[start + size] = start

    def _remove_hole(self, start: int, size: int) -> None:
        i = bisect_left(self._by_size, (size, start))
        del self._by_size[i]
        del self._by_start[start]
        del self._by_end[start + size]

    def allocate(self, nbytes: int) -> int | None:
        """Offset of a new range of at least ``nbytes``, or None if no hole fits."""
        size = align_up(max(nbytes, 1))
        i = bisect_left(self._by_size, (size, -1))
        if i == len(self._by_size):
            return None
        hole_size, start = self._by_size[i]
        self._remove_hole(start, hole_size)
        if hole_size > size:
            self._add_hole(start + size, hole_size - size)
        self._allocated[start] = size
        self.used += size
        return start

    def free(self, start: int) -> None:
        size = self._allocated.pop(start)
        self.used -= size
        end = start + size
        after = self._by_start.get(end)
        if after is not None:
            self._remove_hole(end, after)
            size += after
        before = self._by_end.get(start)
        if before is not None:
            self._remove_hole(before, start - before)
            size += start - before
            start = before
        self._add_hole(start, size)

    def largest_hole(self) -> int:
        return self._by_size[-1][0] if self._by_size else 0

    def num_allocated(self) -> int:
        return len(self._allocated)

    def check(self) -> None:
        """Verify the invariants (tests only)."""
        spans = sorted([(s, z, "hole") for s, z in self._by_start.items()] +
                       [(s, z, "used") for s, z in self._allocated.items()])
        pos = 0
        prev = None
        for start, size, what in spans:
            assert start == pos, f"gap or overlap at {pos}: next span starts at {start}"
            assert start % ALIGN == 0
            assert not (what == "hole" and prev == "hole"), "adjacent holes not coalesced"
            pos, prev = start + size, what
        assert pos == self.capacity
        assert self.used == sum(self._allocated.values())
