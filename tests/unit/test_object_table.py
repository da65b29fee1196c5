from miniray._object_table import ObjectTable, READY


def oid(i):
    return i.to_bytes(16, "little")


def test_entry_freed_when_unreferenced():
    t = ObjectTable(1 << 20)
    held = set()
    e = t.allocate(oid(1), 1000)
    t.seal(e, 0, None, ())
    t.hold(held, oid(1))
    t.hold(held, oid(1))          # once per process
    assert e.holders == 1
    t.release(e)
    assert oid(1) in t.entries
    t.unhold(held, oid(1))
    assert oid(1) not in t.entries and t.alloc.used == 0


def test_views_and_pins_keep_an_entry():
    t = ObjectTable(1 << 20)
    held, views = set(), {}
    e = t.allocate(oid(1), 1000)
    t.seal(e, 0, None, ())
    t.hold(held, oid(1))
    t.pin_view(views, e)
    t.pin(oid(1))
    t.unhold(held, oid(1))
    t.unpin_view(views, oid(1))
    assert oid(1) in t.entries and views == {}
    t.unpin(oid(1))
    assert oid(1) not in t.entries and t.alloc.used == 0


def test_release_process_drops_everything_it_had():
    t = ObjectTable(1 << 20)
    held, views, unsealed = set(), {}, set()
    a = t.allocate(oid(1), 1000)
    t.seal(a, 0, None, ())
    t.hold(held, oid(1))
    t.pin_view(views, a)
    t.allocate(oid(2), 1000)
    unsealed.add(oid(2))
    t.release_process(None, held, views, unsealed)
    assert not t.entries and t.alloc.used == 0 and not (held or views or unsealed)


def test_contained_refs_pinned_until_container_freed():
    t = ObjectTable(1 << 20)
    inner = t.get_or_create(oid(1))
    t.seal(inner, 0, b"inner", ())
    outer = t.get_or_create(oid(2))
    t.seal(outer, 0, b"outer", [oid(1)])
    assert inner.pins == 1
    t.release(inner)
    assert oid(1) in t.entries
    t.release(outer)
    assert oid(1) not in t.entries and oid(2) not in t.entries


def test_waiters_returned_on_seal():
    t = ObjectTable(1 << 20)
    e = t.get_or_create(oid(1))
    e.waiters = ["w"]
    assert list(t.seal(e, 0, b"x", ())) == ["w"]
    assert e.state == READY and e.waiters is None


def test_full_store_message():
    import pytest
    from miniray.exceptions import ObjectStoreFullError
    t = ObjectTable(1 << 20)
    t.allocate(oid(1), 900_000)
    with pytest.raises(ObjectStoreFullError, match="in use by 1 objects"):
        t.allocate(oid(2), 900_000)


def test_unsealed_range_returned():
    t = ObjectTable(1 << 20)
    t.allocate(oid(1), 1000)
    t.drop_unsealed(oid(1))
    assert t.alloc.used == 0 and oid(1) not in t.entries


def test_cluster_and_spill_fields_live_in_a_side_object_made_on_first_use():
    t = ObjectTable(1 << 20)
    held = set()
    e = t.allocate(oid(1), 1000)
    t.seal(e, 0, None, ())
    assert e.x is None and e.viewers == 0 and e.location is None and e.pulling is False
    e.pulling = False
    e.viewers = 0
    e.lineage = None
    assert e.x is None                          # defaults written: still nothing made
    t.pin_view({}, e)
    assert e.x is not None and e.viewers == 1 and e.disk is None and e.io == 0
    e.disk = (3, 0)
    freed = []
    t.on_freed_disk = freed.append
    t.unpin_view({oid(1): 1}, oid(1))
    t.hold(held, oid(1))
    t.unhold(held, oid(1))
    assert freed == [e] and oid(1) not in t.entries and t.alloc.used == 0


def test_small_inline_values_are_shared_and_counted_per_entry():
    t = ObjectTable(1 << 20)
    held = set()
    a, b = t.get_or_create(oid(1)), t.get_or_create(oid(2))
    t.seal(a, 0, bytes(bytearray(b"\x80\x05N.")), ())
    t.seal(b, 0, bytes(bytearray(b"\x80\x05N.")), ())
    assert a.inline is b.inline and a.payload() is b.payload() == (0, b"\x80\x05N.")
    assert t.inline_bytes == 8
    err = t.get_or_create(oid(3))
    t.seal(err, 1, bytes(bytearray(b"\x80\x05N.")), ())     # another kind: its own payload
    assert err.payload() == (1, b"\x80\x05N.") and err.payload() is not a.payload()
    for i in (1, 2, 3):
        t.hold(held, oid(i))
        t.unhold(held, oid(i))
    assert not t.entries and t.inline_bytes == 0
