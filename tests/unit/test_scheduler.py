from miniray._scheduler import ReadyQueues, ResourcePool, format_resources, shape_of


def test_shape_is_canonical():
    assert shape_of({"CPU": 1, "GPU": 0, "a": 2}) == (("CPU", 1.0), ("a", 2.0))
    assert shape_of({"a": 2, "CPU": 1}) == shape_of({"CPU": 1.0, "a": 2.0})


def test_pool_accounting():
    pool = ResourcePool({"CPU": 2, "x": 1})
    one = shape_of({"CPU": 1})
    big = shape_of({"CPU": 3})
    assert pool.fits_ever(one) and not pool.fits_ever(big)
    assert pool.missing(big) == {"CPU": 3.0}
    pool.acquire(one)
    pool.acquire(one)
    assert not pool.fits_now(one)
    pool.release(one)
    assert pool.fits_now(one)
    assert pool.snapshot_available()["CPU"] == 1.0
    assert not pool.fits_ever(shape_of({"y": 1}))


def test_fractional_resources():
    pool = ResourcePool({"CPU": 1})
    third = shape_of({"CPU": 1 / 3})
    for _ in range(3):
        assert pool.fits_now(third)
        pool.acquire(third)
    assert not pool.fits_now(third)


def test_ready_queues_fifo_per_shape():
    q = ReadyQueues()
    a, b = shape_of({"CPU": 1}), shape_of({"CPU": 2})
    q.push(a, "t1")
    q.push(b, "t2")
    q.push(a, "t3")
    assert len(q) == 3
    assert set(q.shapes()) == {a, b}
    assert q.pop(a) == "t1" and q.peek(a) == "t3"
    assert q.remove(b, "t2") and not q.remove(b, "t2")
    q.push_front(a, "t0")
    assert q.pop(a) == "t0" and len(q) == 1


def test_format_resources():
    assert format_resources({"CPU": 2.0}) == "{CPU: 2}"


def test_count_runnable_respects_resources():
    q = ReadyQueues()
    one, free = shape_of({"CPU": 1}), shape_of({})
    for i in range(5):
        q.push(one, i)
    assert q.count_runnable({"CPU": 2.0}, limit=8) == 2
    assert q.count_runnable({"CPU": 0.0}, limit=8) == 0
    for i in range(20):
        q.push(free, i)
    assert q.count_runnable({"CPU": 0.0}, limit=8) == 8
