"""Unit tests for miniray._serialization: tiers, zero-copy layout, custom
serializers, errors.  In-process only (two short subprocesses)."""
from __future__ import annotations

import base64
import collections
import copyreg
import dataclasses
import enum
import functools
import gc
import pickle
import struct
import subprocess
import sys
import textwrap
import threading
import weakref

import cloudpickle
import numpy as np
import pyarrow as pa
import pytest

from miniray import _serialization as S
from miniray._ids import ObjectRef
from miniray.exceptions import SerializationError


# ---------------------------------------------------------------------------
# Module-level (importable) helpers
# ---------------------------------------------------------------------------
class Point:
    def __init__(self, x, y):
        self.x = x
        self.y = y

    def __eq__(self, other):
        return type(other) is Point and (self.x, self.y) == (other.x, other.y)


class Reduced:
    def __init__(self, value):
        self.value = value

    def __reduce__(self):
        return (Reduced, (self.value,))


class ReducedEx:
    def __init__(self, value):
        self.value = value

    def __reduce_ex__(self, protocol):
        return (ReducedEx, (self.value + protocol * 0,))


class WithState:
    def __init__(self):
        self.value = 1
        self.cache = object()  # dropped by __getstate__

    def __getstate__(self):
        return {"value": self.value}

    def __setstate__(self, state):
        self.value = state["value"]
        self.restored = True


class Slotted:
    __slots__ = ("a", "b")

    def __init__(self, a, b):
        self.a = a
        self.b = b


class SlottedWithDict:
    __slots__ = ("a", "__dict__")

    def __init__(self, a, c):
        self.a = a
        self.c = c


@dataclasses.dataclass
class DC:
    name: str
    values: list


@dataclasses.dataclass(frozen=True)
class FrozenDC:
    name: str
    n: int


NT = collections.namedtuple("NT", "a b")


class Color(enum.Enum):
    RED = 1
    BLUE = 2


class Session:
    def __init__(self):
        self._lock = threading.Lock()


class Model:
    def __init__(self):
        self.weights = [1.0, 2.0]
        self.session = Session()


class Holder:
    """A class with a custom serializer in some tests."""

    def __init__(self, value):
        self.value = value

    def __reduce__(self):  # custom serializers must win over this
        raise AssertionError("__reduce__ must not be used when a serializer is registered")


class SubHolder(Holder):
    pass


class Plain:
    pass


class BadSetState:
    def __init__(self):
        self.v = 1

    def __setstate__(self, state):
        raise ValueError("refusing to rebuild")


def importable_function(x):
    return x + 1


_GLOBAL_LOCK = threading.Lock()


def _oid(n: int) -> bytes:
    return n.to_bytes(16, "little")


def roundtrip(obj):
    return S.loads_from(S.dumps(obj))


def addr_range(buf):
    """(start, end) address of a buffer-protocol object."""
    arr = np.frombuffer(buf, np.uint8)
    start = arr.__array_interface__["data"][0]
    return start, start + arr.nbytes


def first_array(value):
    """The first pa.Array inside an Arrow table/batch/chunked array/array."""
    if isinstance(value, (pa.Table, pa.RecordBatch)):
        value = value.column(0)
    if isinstance(value, pa.ChunkedArray):
        value = value.chunk(0)
    return value


@pytest.fixture(autouse=True)
def clean_registry():
    before = dict(S._registry)
    yield
    with S._registry_lock:
        S._registry.clear()
        S._registry.update(before)
        S._from_snapshot.clear()


# ---------------------------------------------------------------------------
# Fast tier
# ---------------------------------------------------------------------------
PRIMITIVES = [None, True, False, 0, -7, 2 ** 100, 1.5, float("inf"), 3 + 4j, "", "héllo",
              b"", b"\x00bytes", bytearray(b"ba"), [1, "a", None], (1, (2, 3)),
              {"k": [1, 2], 3: (4,)}, {1, 2, 3}, frozenset({"x"}), [[], {}, ()]]


@pytest.mark.parametrize("value", PRIMITIVES, ids=lambda v: type(v).__name__)
def test_primitives_roundtrip_in_fast_tier(value):
    assert roundtrip(value) == value
    s = S.serialize(value)
    assert s.buffers == [] and s.contained_refs == []
    assert S.tier_of(value) == "fast"


def test_loads_from_accepts_bytes_bytearray_memoryview():
    blob = S.dumps({"a": (1, 2)})
    for src in (blob, bytearray(blob), memoryview(blob), memoryview(bytearray(blob))):
        assert S.loads_from(src) == {"a": (1, 2)}


def test_numpy_data_goes_out_of_band_without_copy():
    arr = np.arange(1000, dtype=np.float64)
    s = S.serialize(arr)
    assert len(s.buffers) == 1 and len(s.meta) < 200
    buf = s.buffers[0]
    assert isinstance(buf, memoryview) and buf.format == "B" and buf.ndim == 1
    assert buf.nbytes == arr.nbytes
    assert np.shares_memory(np.frombuffer(buf, np.uint8), arr)  # not copied
    del arr
    gc.collect()
    assert np.frombuffer(buf, np.float64)[999] == 999.0  # buffer keeps memory alive


def test_numpy_zero_copy_read_only_from_bytes():
    arr = np.arange(10_000, dtype=np.int32)
    blob = S.dumps(arr)
    out = S.loads_from(blob)
    np.testing.assert_array_equal(out, arr)
    lo, hi = addr_range(blob)
    assert lo <= out.__array_interface__["data"][0] < hi
    assert not out.flags.writeable
    with pytest.raises(ValueError):
        out[0] = 1


def test_numpy_zero_copy_from_readonly_memoryview_and_writable_bytearray():
    arr = np.ones((64, 64), dtype=np.float32)
    s = S.serialize(arr)
    dest = bytearray(S.encoded_size(s))
    S.write_to(s, memoryview(dest))
    ro = S.loads_from(memoryview(dest).toreadonly())
    assert not ro.flags.writeable
    rw = S.loads_from(dest)
    assert rw.flags.writeable
    assert np.shares_memory(rw, np.frombuffer(dest, np.uint8))
    rw[0, 0] = 5  # writes land in the destination buffer
    assert S.loads_from(dest)[0, 0] == 5


@pytest.mark.parametrize("arr", [
    np.arange(12, dtype=np.int64).reshape(3, 4),
    np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    np.array(3.5),
    np.zeros(0, dtype=np.uint8),
    np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]),
    np.array([True, False]),
    np.arange(100)[::3],                       # non-contiguous
    np.array([{"a": 1}, None], dtype=object),  # object dtype: in-band
], ids=["2d", "fortran", "0d", "empty", "structured", "bool", "strided", "object"])
def test_numpy_variants_roundtrip(arr):
    out = roundtrip(arr)
    assert out.dtype == arr.dtype and out.shape == arr.shape
    if arr.dtype.hasobject:
        assert list(out) == list(arr)
    else:
        np.testing.assert_array_equal(out, arr)


def test_non_contiguous_numpy_goes_out_of_band():
    arr = np.arange(100_000)[::2]
    s = S.serialize(arr)
    assert len(s.buffers) == 1 and len(s.meta) < 300


def test_numpy_shared_array_stays_shared():
    arr = np.arange(10)
    out = roundtrip([arr, arr])
    assert out[0] is out[1]
    assert len(S.serialize([arr, arr]).buffers) == 1


@pytest.mark.parametrize("make", [
    lambda: pa.array(np.arange(100_000)),
    lambda: pa.array(["a", None, "ccc"] * 1000),
    lambda: pa.chunked_array([np.arange(10), np.arange(5)]),
    lambda: pa.table({"x": np.arange(1000), "s": ["v"] * 1000}),
    lambda: pa.record_batch({"x": np.arange(1000)}),
], ids=["array", "strings", "chunked", "table", "batch"])
def test_arrow_roundtrip_zero_copy(make):
    value = make()
    s = S.serialize(value)
    assert s.buffers, "Arrow data should go out-of-band"
    assert sum(b.nbytes for b in s.buffers) >= value.nbytes
    blob = S.to_bytes(s)
    out = S.loads_from(blob)
    assert type(out) is type(value) and out.equals(value)
    lo, hi = addr_range(blob)
    arrays = out.columns if hasattr(out, "columns") else [out]
    for arr in arrays:
        for chunk in getattr(arr, "chunks", [arr]):
            for buf in chunk.buffers():
                if buf is not None and buf.size:
                    assert lo <= buf.address < hi
                    assert not buf.is_mutable


@pytest.mark.parametrize("make", [
    lambda big: big.slice(1000, 10),
    lambda big: pa.table({"x": big}).slice(5, 10),
    lambda big: pa.record_batch({"x": big}).slice(7, 3),
    lambda big: pa.chunked_array([big.slice(0, 4), big.slice(10, 2)]),
    lambda big: big.slice(500, 0),
], ids=["array", "table", "batch", "chunked", "empty"])
def test_sliced_arrow_ships_only_the_slice(make):
    value = make(pa.array(np.arange(1_000_000)))   # 8 MB of parent buffers
    s = S.serialize(value)
    assert S.encoded_size(s) < 10_000
    blob = S.to_bytes(s)
    out = S.loads_from(blob)
    assert type(out) is type(value) and out.equals(value)
    if len(out):
        lo, hi = addr_range(blob)
        assert lo <= first_array(out).buffers()[1].address < hi


def test_import_does_not_load_numpy_or_pyarrow():
    code = ("import miniray._serialization as s, sys; s.loads_from(s.dumps({'a': [1]})); "
            "assert 'numpy' not in sys.modules and 'pyarrow' not in sys.modules, "
            "sorted(m for m in sys.modules if m.startswith(('numpy', 'pyarrow')))")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=_repo_root(), timeout=60)


def _repo_root():
    import pathlib
    return str(pathlib.Path(S.__file__).resolve().parent.parent)


# ---------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------
def test_layout_header_and_alignment():
    a, b = np.arange(3, dtype=np.uint8), np.arange(1000, dtype=np.float64)
    s = S.serialize({"a": a, "b": b, "t": "text"})
    blob = S.to_bytes(s)
    assert len(blob) == S.encoded_size(s)
    magic, version, _flags, nbuf, meta_len = struct.unpack_from("<BBHIQ", blob, 0)
    assert (magic, version, nbuf, meta_len) == (S.MAGIC, S.VERSION, 2, len(s.meta))
    table = struct.unpack_from("<4Q", blob, 16)
    for off, n, buf in zip(table[::2], table[1::2], s.buffers):
        assert off % 64 == 0 and n == buf.nbytes
        assert blob[off:off + n] == bytes(buf)
    meta, bufs = S.read_from(blob)
    assert bytes(meta) == s.meta and [bytes(x) for x in bufs] == [bytes(x) for x in s.buffers]
    assert all(isinstance(x, memoryview) for x in bufs)


def test_write_to_at_aligned_offset_in_larger_region_matches_to_bytes():
    s = S.serialize([np.arange(7, dtype=np.int8), np.arange(5.0)])
    region = bytearray(4096)
    base = 128
    S.write_to(s, memoryview(region)[base:])
    n = S.encoded_size(s)
    assert bytes(region[base:base + n]) == S.to_bytes(s)
    _, bufs = S.read_from(memoryview(region)[base:base + n])
    start = addr_range(memoryview(region)[base:])[0]
    for buf in bufs:
        assert (addr_range(buf)[0] - start) % 64 == 0
    out = S.loads_from(memoryview(region)[base:base + n])
    np.testing.assert_array_equal(out[1], np.arange(5.0))


def test_write_to_rejects_small_or_readonly_destination():
    s = S.serialize(np.arange(100))
    with pytest.raises(ValueError, match="needs"):
        S.write_to(s, bytearray(S.encoded_size(s) - 1))
    with pytest.raises(ValueError, match="writable"):
        S.write_to(s, memoryview(bytes(S.encoded_size(s))))


def test_large_buffers_are_copied_by_the_pool():
    big1 = np.random.default_rng(0).integers(0, 255, (9 << 20) + 3, dtype=np.uint8)
    big2 = np.arange((8 << 20) // 8 + 1, dtype=np.int64)
    s = S.serialize({"a": big1, "small": np.arange(3), "b": big2})
    dest = bytearray(S.encoded_size(s))
    S.write_to(s, dest)
    out = S.loads_from(memoryview(dest).toreadonly())
    np.testing.assert_array_equal(out["a"], big1)
    np.testing.assert_array_equal(out["b"], big2)
    assert any(t.name.startswith("miniray-copy") for t in threading.enumerate())
    S.shutdown_copy_pool()
    assert not any(t.name.startswith("miniray-copy") for t in threading.enumerate())


@pytest.mark.parametrize("blob", [b"", b"\x00" * 16, S.dumps(1)[:-1],
                                  S.to_bytes(S.serialize(np.arange(10)))[:-8]],
                         ids=["empty", "bad-magic", "short-meta", "short-buffer"])
def test_read_from_rejects_corrupt_input(blob):
    with pytest.raises(SerializationError, match="Corrupt"):
        S.read_from(blob)


# ---------------------------------------------------------------------------
# __dict__ tier and cloudpickle tier
# ---------------------------------------------------------------------------
def test_importable_instance_uses_dict_tier_by_reference():
    p = Point(1, [2])
    s = S.serialize(p)
    assert b"Point" in s.meta and b"_make_skeleton_class" not in s.meta
    assert roundtrip(p) == p and type(roundtrip(p)) is Point
    assert S.tier_of(p) == "dict"


def test_importable_function_and_class_travel_by_reference():
    for obj in (importable_function, Point, pickle.dumps):
        meta = S.serialize(obj).meta
        assert b"_make_function" not in meta and b"_make_skeleton" not in meta
        assert roundtrip(obj) is obj
        assert S.tier_of(obj) == "fast"


def test_lambdas_closures_and_local_classes_travel_by_value():
    k = 10
    lam = lambda x: x + k  # noqa: E731

    def outer():
        y = [5]

        def inner():
            return y[0] + k
        return inner

    class Local:
        z = 3

        def total(self):
            return self.z + k

    assert roundtrip(lam)(1) == 11
    assert roundtrip(outer())() == 15
    inst = roundtrip(Local())
    assert inst.total() == 13
    assert b"_make_skeleton_class" in S.serialize(Local()).meta
    assert S.tier_of(lam) == "cloudpickle" and S.tier_of(Local()) == "cloudpickle"
    assert S.tier_of(Local) == "cloudpickle"


def test_main_module_definitions_travel_by_value_to_another_process():
    script = textwrap.dedent("""
        import base64, sys
        import miniray._serialization as s
        class Greeter:
            def __init__(self, who): self.who = who
            def hello(self): return "hi " + self.who
        def shout(g): return g.hello().upper()
        sys.stdout.write(base64.b64encode(s.dumps((Greeter("bob"), shout))).decode())
    """)
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                         cwd=_repo_root(), timeout=60).stdout
    greeter, shout = S.loads_from(base64.b64decode(out))
    assert shout(greeter) == "HI BOB"


# ---------------------------------------------------------------------------
# Python protocols
# ---------------------------------------------------------------------------
def test_reduce_and_reduce_ex():
    assert roundtrip(Reduced([1])).value == [1]
    assert roundtrip(ReducedEx(4)).value == 4
    assert S.tier_of(Reduced(1)) == "reduce"


def test_getstate_setstate():
    out = roundtrip(WithState())
    assert out.value == 1 and out.restored and not hasattr(out, "cache")


def test_slots_with_and_without_dict():
    out = roundtrip(Slotted(1, [2]))
    assert (out.a, out.b) == (1, [2])
    out = roundtrip(SlottedWithDict(1, "c"))
    assert (out.a, out.c) == (1, "c")


def test_dataclasses_namedtuples_enums_partial():
    assert roundtrip(DC("n", [1, 2])) == DC("n", [1, 2])
    assert roundtrip(FrozenDC("f", 3)) == FrozenDC("f", 3)
    nt = roundtrip(NT(1, b=[2]))
    assert type(nt) is NT and nt == NT(1, [2])
    assert roundtrip(Color.BLUE) is Color.BLUE
    assert b"_make_skeleton_enum" not in S.serialize(Color.RED).meta  # by reference
    part = roundtrip(functools.partial(lambda a, b: a * b, 3))
    assert part(4) == 12
    assert roundtrip(functools.partial(importable_function, 1))() == 2


# ---------------------------------------------------------------------------
# Shared and self references
# ---------------------------------------------------------------------------
def test_shared_references_stay_shared():
    l1 = [1]
    y = roundtrip([l1, l1])
    assert y == [[1], [1]] and y[0] is y[1]
    p = Point(1, 2)
    d = roundtrip({"a": p, "b": p})
    assert d["a"] is d["b"]


def test_self_referencing_list_dict_object():
    lst = [1]
    lst.append(lst)
    out = roundtrip(lst)
    assert out[1] is out
    d = {}
    d["me"] = d
    out = roundtrip(d)
    assert out["me"] is out
    p = Point(1, None)
    p.y = p
    out = roundtrip(p)
    assert out.y is out


# ---------------------------------------------------------------------------
# Custom serializers
# ---------------------------------------------------------------------------
def test_custom_serializer_takes_precedence_and_travels_in_payload():
    S.register_serializer(Holder, serializer=lambda h: ("packed", h.value),
                          deserializer=lambda v: Holder(v[1] * 2))
    s = S.serialize([Holder(21)])
    assert S.tier_of(Holder(1)) == "custom"
    S.deregister_serializer(Holder)  # the reader needs no registration
    out = S.deserialize(s.meta, s.buffers)
    assert type(out[0]) is Holder and out[0].value == 42


def test_custom_serializer_matches_exact_type_only():
    S.register_serializer(Holder, serializer=lambda h: h.value, deserializer=Holder)
    with pytest.raises(SerializationError):  # SubHolder falls back to Holder.__reduce__
        S.dumps(SubHolder(1))


def test_custom_serializer_value_can_hold_arrays_and_refs():
    arr = np.arange(50)
    S.register_serializer(Holder, serializer=lambda h: (h.value, arr, ObjectRef(_oid(7))),
                          deserializer=lambda v: Holder(v))
    s = S.serialize(Holder("x"))
    assert s.contained_refs == [_oid(7)] and len(s.buffers) == 1
    out = S.loads_from(S.to_bytes(s))
    np.testing.assert_array_equal(out.value[1], arr)


def test_custom_serializer_may_call_serialize_reentrantly():
    def ser(h):
        inner = S.serialize([h.value, ObjectRef(_oid(99))])
        assert inner.contained_refs == [_oid(99)]
        return S.to_bytes(inner)

    S.register_serializer(Holder, serializer=ser,
                          deserializer=lambda b: Holder(S.loads_from(b)[0]))
    s = S.serialize([ObjectRef(_oid(1)), Holder(5), ObjectRef(_oid(2))])
    assert s.contained_refs == [_oid(1), _oid(2)]
    out = S.loads_from(S.to_bytes(s))
    assert out[1].value == 5


def test_custom_serializer_failures_are_reported():
    def broken(h):
        raise RuntimeError("serializer exploded")
    S.register_serializer(Holder, serializer=broken, deserializer=Holder)
    with pytest.raises(SerializationError, match="custom serializer failed.*exploded"):
        S.dumps({"h": Holder(1)})

    def bad_load(v):
        raise KeyError("nope")
    S.register_serializer(Holder, serializer=lambda h: 1, deserializer=bad_load)
    blob = S.dumps(Holder(1))
    with pytest.raises(SerializationError, match="bad_load.*Holder") as info:
        S.loads_from(blob)
    assert info.value.__cause__ is not None


def test_register_custom_serializer_validates_arguments():
    for kwargs in ({}, {"serializer": str}, {"deserializer": str},
                   {"serializer": str, "deserializer": str, "use_pickle": True},
                   {"use_pickle": True, "use_dict": True}):
        with pytest.raises(ValueError, match="exactly one of"):
            S.register_custom_serializer(Holder, **kwargs)
    with pytest.raises(ValueError, match="natively"):
        S.register_serializer(list, serializer=str, deserializer=str)
    with pytest.raises(TypeError):
        S.register_serializer(Holder(1), serializer=str, deserializer=str)


def test_register_custom_serializer_classic_pair_and_ignored_ids():
    S.register_custom_serializer(Holder, serializer=lambda h: h.value,
                                 deserializer=lambda v: Holder(v + 1), class_id="x", local=True)
    assert roundtrip(Holder(1)).value == 2


def test_use_dict_skips_init_and_setstate_and_keeps_self_refs():
    class Tracked:
        inits = 0

        def __init__(self):
            Tracked.inits += 1
            self.a = 1

        def __setstate__(self, state):
            raise AssertionError("use_dict must not call __setstate__")

    S.register_custom_serializer(Tracked, use_dict=True)
    t = Tracked()
    t.me = t
    out = roundtrip(t)
    assert Tracked.inits == 1 and out.a == 1 and out.me is out
    assert S.tier_of(t) == "custom"


def test_use_pickle_uses_the_objects_own_protocol():
    S.register_custom_serializer(Reduced, use_pickle=True)
    assert roundtrip(Reduced([3])).value == [3]
    S.register_custom_serializer(Holder, use_pickle=True)
    with pytest.raises(SerializationError):  # Holder.__reduce__ is what use_pickle runs
        S.dumps(Holder(1))


def test_registry_version_snapshot_and_apply():
    v0 = S.registry_version()
    S.register_serializer(Holder, serializer=lambda h: h.value, deserializer=Holder)
    S.register_custom_serializer(Plain, use_dict=True)
    assert S.registry_version() > v0
    blob = S.registry_snapshot()
    S.deregister_serializer(Holder)
    S.deregister_serializer(Plain)
    assert Holder not in S._registry
    v1 = S.registry_version()
    S.apply_registry_snapshot(blob)
    S.apply_registry_snapshot(blob)  # idempotent
    assert S.registry_version() > v1
    assert S._registry[Holder].kind == "custom" and S._registry[Plain].kind == "dict"
    assert roundtrip(Holder(3)).value == 3
    # A later snapshot without Plain removes it; local registrations survive.
    S.register_serializer(Point, serializer=lambda p: (p.x, p.y),
                          deserializer=lambda v: Point(*v))
    S.deregister_serializer(Plain)
    S.deregister_serializer(Point)
    blob2 = S.registry_snapshot()
    S.register_serializer(Point, serializer=lambda p: (p.x, p.y),
                          deserializer=lambda v: Point(*v))
    S.register_custom_serializer(Plain, use_dict=True)
    S.apply_registry_snapshot(blob)   # Plain now comes from a snapshot
    S.apply_registry_snapshot(blob2)  # ...and goes away with the next one
    assert Plain not in S._registry and Holder in S._registry and Point in S._registry


def test_global_tables_are_never_mutated():
    copyreg_before = dict(copyreg.dispatch_table)
    cp_before = dict(cloudpickle.Pickler._dispatch_table)
    S.register_serializer(Holder, serializer=lambda h: h.value, deserializer=Holder)
    S.register_custom_serializer(Plain, use_pickle=True)
    roundtrip([Holder(1), Plain(), np.arange(3), pa.array(np.arange(100_000)).slice(1, 2)])
    assert dict(copyreg.dispatch_table) == copyreg_before
    assert dict(cloudpickle.Pickler._dispatch_table) == cp_before
    assert Holder not in copyreg.dispatch_table


# ---------------------------------------------------------------------------
# ObjectRefs, memo hygiene, threads
# ---------------------------------------------------------------------------
def test_contained_refs_in_order_with_repeats():
    r1, r2 = ObjectRef(_oid(1)), ObjectRef(_oid(2))
    r1_again = ObjectRef(_oid(1))
    s = S.serialize({"x": [r1, Point(r2, 0)], "y": (r1_again, r1)})
    assert s.contained_refs == [_oid(1), _oid(2), _oid(1)]
    out = S.loads_from(S.to_bytes(s))
    assert out["x"][0] == r1 and isinstance(out["x"][1].x, ObjectRef)
    assert out["y"][1] is out["x"][0]
    assert S.serialize([1, 2]).contained_refs == []  # nothing leaks into the next call
    assert S.tier_of(r1) == "fast"


def test_failed_call_leaks_nothing_into_the_next():
    with pytest.raises(SerializationError):
        S.serialize([ObjectRef(_oid(5)), np.arange(3), threading.Lock()])
    s = S.serialize([1, Point(2, 3)])
    assert s.contained_refs == [] and s.buffers == []


def test_serialized_objects_are_not_retained_by_the_pickler():
    p = Point(1, 2)
    ref = weakref.ref(p)
    S.serialize([p, Point(3, 4)])
    del p
    gc.collect()
    assert ref() is None


def test_large_inband_meta_then_small():
    big = b"x" * (3 << 20)
    assert roundtrip([big]) == [big]
    assert roundtrip((1, "a")) == (1, "a")


def test_concurrent_serialization_from_threads():
    errors = []

    def work(tid):
        try:
            for i in range(200):
                oid = _oid(tid * 1000 + i)
                value = {"t": tid, "i": i, "r": ObjectRef(oid), "a": np.full(4, tid),
                         "p": Point(tid, i)}
                s = S.serialize(value)
                assert s.contained_refs == [oid]
                out = S.loads_from(S.to_bytes(s))
                assert out["t"] == tid and out["i"] == i and out["p"] == Point(tid, i)
                assert out["a"][0] == tid
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------
def test_error_names_path_type_and_fix():
    with pytest.raises(SerializationError) as info:
        S.serialize(Model(), where="arg 'model'")
    msg = str(info.value)
    assert msg.startswith("Could not serialize arg 'model': arg 'model' -> .session -> "
                          "._lock is a _thread.lock, which cannot be serialized")
    assert "@miniray.remote class" in msg
    assert "miniray.util.register_serializer(_thread.lock, serializer=..., " in msg
    assert isinstance(info.value.__cause__, Exception)  # original pickling error chained
    assert isinstance(info.value, TypeError)


@pytest.mark.parametrize("make, path", [
    (lambda lock: [1, {"k": lock}], "value -> [1] -> ['k']"),
    (lambda lock: (lambda: lock), "value -> <closure 'lock'>"),
    (lambda lock: {Plain(): 1, "x": [Slotted(lock, 1)]}, "value -> ['x'] -> [0] -> .a"),
    (lambda lock: {1, frozenset([Reduced(lock)])}, "value -> <set item> -> <set item> -> "
                                                   "<reduce arg 0>"),
    (lambda lock: functools.partial(print, lock), "value -> .args[0]"),
    (lambda lock: WithStateLock(lock), "value -> .value"),
], ids=["dict-in-list", "closure", "slots", "set-reduce", "partial", "getstate"])
def test_error_paths(make, path):
    with pytest.raises(SerializationError) as info:
        S.dumps(make(threading.Lock()))
    assert f": {path} is a _thread.lock" in str(info.value)


class WithStateLock:
    def __init__(self, lock):
        self.lock = lock

    def __getstate__(self):
        return {"value": self.lock}


def test_error_path_through_function_global():
    def uses_global():
        return _GLOBAL_LOCK

    with pytest.raises(SerializationError, match=r"value -> <global '_GLOBAL_LOCK'> is a "
                                                 r"_thread.lock"):
        S.dumps(uses_global)


def test_error_on_dict_key_and_deep_nesting():
    with pytest.raises(SerializationError, match=r"value -> <key .*> -> .*_thread.lock"):
        S.dumps({Reduced(threading.Lock()): 1})
    deep = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(SerializationError, match="(?i)recursion"):
        S.dumps(deep)


def test_deserialize_errors_name_the_class():
    with pytest.raises(SerializationError, match="module 'no_such_module_xyz'") as info:
        S.deserialize(b"cno_such_module_xyz\nThing\n.", [])
    assert isinstance(info.value.__cause__, ModuleNotFoundError)
    with pytest.raises(SerializationError, match="'NoSuchThing' was not found in module "
                                                 "'builtins'"):
        S.deserialize(b"cbuiltins\nNoSuchThing\n.", [])
    with pytest.raises(SerializationError,
                       match=r"BadSetState \(in __setstate__\): refusing to rebuild"):
        roundtrip(BadSetState())


# ---------------------------------------------------------------------------
# inspect_serializability / tier_of
# ---------------------------------------------------------------------------
def test_inspect_serializability_ok(capsys):
    ok, failures = S.inspect_serializability({"p": Point(1, 2), "a": np.arange(3)}, "cfg")
    assert ok and failures == []
    out = capsys.readouterr().out
    assert "cfg" in out and "OK" in out and "[dict]" in out and "[fast]" in out


def test_inspect_serializability_reports_every_failing_part(capsys):
    obj = Model()
    obj.other = {"sock_like": threading.Lock()}
    ok, failures = S.inspect_serializability(obj, "model")
    assert not ok
    assert [f.path for f in failures] == ["model -> .session -> ._lock",
                                          "model -> .other -> ['sock_like']"]
    assert all(f.type_name == "_thread.lock" and "cannot pickle" in f.reason
               for f in failures)
    out = capsys.readouterr().out
    assert "FAILS" in out and "model -> .session -> ._lock" in out
    assert S.inspect_serializability(obj, print_report=False)[1][0].path.startswith("obj ->")
    assert capsys.readouterr().out == ""


def test_tier_of():
    S.register_serializer(Holder, serializer=lambda h: 1, deserializer=Holder)
    assert S.tier_of(1) == "fast"
    assert S.tier_of(np.arange(2)) == "fast"
    assert S.tier_of(pa.table({"a": [1]})) == "fast"
    assert S.tier_of(Point(1, 2)) == "dict"
    assert S.tier_of(Reduced(1)) == "reduce"
    assert S.tier_of(Holder(1)) == "custom"
    assert S.tier_of(lambda: 1) == "cloudpickle"
    assert S.tier_of([1, {"a": Point(1, 2)}]) == "dict"   # a container takes its slowest part
    assert S.tier_of([1, (lambda: 0,)]) == "cloudpickle"
