import random

import pytest

from miniray._store.allocator import ALIGN, Allocator


def test_allocate_and_free_coalesce():
    a = Allocator(1 << 20)
    offs = [a.allocate(1000) for _ in range(10)]
    assert all(o % ALIGN == 0 for o in offs)
    assert len(set(offs)) == 10
    a.check()
    for o in offs[::2]:
        a.free(o)
    a.check()
    for o in offs[1::2]:
        a.free(o)
    a.check()
    assert a.used == 0 and a.largest_hole() == a.capacity


def test_full_returns_none():
    a = Allocator(4096)
    assert a.allocate(4096) == 0
    assert a.allocate(1) is None
    a.free(0)
    assert a.allocate(4000) == 0


def test_best_fit_reuses_same_size_hole():
    a = Allocator(1 << 20)
    x = a.allocate(100_000)
    a.allocate(10)
    a.free(x)
    assert a.allocate(100_000) == x


def test_random_workload_keeps_invariants():
    rng = random.Random(1)
    a = Allocator(8 << 20)
    live = []
    for _ in range(3000):
        if live and rng.random() < 0.45:
            a.free(live.pop(rng.randrange(len(live))))
        else:
            off = a.allocate(rng.randint(1, 200_000))
            if off is not None:
                live.append(off)
    a.check()
    for off in live:
        a.free(off)
    a.check()
    assert a.used == 0


def test_double_free_is_an_error():
    a = Allocator(4096)
    off = a.allocate(64)
    a.free(off)
    with pytest.raises(KeyError):
        a.free(off)
