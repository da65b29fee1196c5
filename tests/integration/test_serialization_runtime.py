"""Serialization through the real runtime: errors at the call site, custom
serializers reaching workers, Python protocols across processes."""
from __future__ import annotations

import dataclasses
import enum
import threading
from collections import namedtuple

import pytest

import miniray
from miniray.exceptions import RayTaskError, SerializationError


class Session:
    def __init__(self):
        self._lock = threading.Lock()


class Model:
    def __init__(self):
        self.session = Session()


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


Pair = namedtuple("Pair", "a b")


class Color(enum.Enum):
    RED = 1


class Slotted:
    __slots__ = ("a", "b")

    def __init__(self, a, b):
        self.a, self.b = a, b


class Money:
    def __init__(self, cents):
        self.cents = cents


@miniray.remote
def identity(x):
    return x


@miniray.remote
def use_model(model):
    return 1


def test_unserializable_arg_names_path(ray_shared):
    with pytest.raises(SerializationError) as info:
        use_model.remote(Model())
    msg = str(info.value)
    assert "arg 'model'" in msg
    assert ".session" in msg and "._lock" in msg and "lock" in msg
    assert "actor" in msg and "register_serializer" in msg
    assert isinstance(info.value, TypeError)


def test_unserializable_put(ray_shared):
    with pytest.raises(SerializationError, match="_lock"):
        miniray.put(Model())


def test_unserializable_return_raises_on_get(ray_shared):
    @miniray.remote
    def make_lock():
        return threading.Lock()
    with pytest.raises(RayTaskError, match="lock"):
        miniray.get(make_lock.remote())


def test_python_protocols_across_processes(ray_shared):
    values = [Point(1, 2), Pair(1, [2]), Color.RED, {"k": (1, 2.5, None)}]
    out = miniray.get([identity.remote(v) for v in values])
    assert out == values
    s = miniray.get(identity.remote(Slotted(1, "b")))
    assert (s.a, s.b) == (1, "b")


def test_main_style_class_travels_by_value(ray_shared):
    class Local:
        def __init__(self, v):
            self.v = v

        def twice(self):
            return self.v * 2

    @miniray.remote
    def call(obj):
        return obj.twice()
    assert miniray.get(call.remote(Local(21))) == 42


def test_shared_and_recursive_structures(ray_shared):
    inner = [1]
    data = [inner, inner]
    out = miniray.get(identity.remote(data))
    assert out[0] is out[1]
    loop = []
    loop.append(loop)
    got = miniray.get(miniray.put(loop))
    assert got[0] is got


def test_custom_serializer_reaches_workers(ray_shared):
    miniray.util.register_serializer(
        Money, serializer=lambda m: ("USD", m.cents), deserializer=lambda t: Money(t[1] + 1))
    try:
        @miniray.remote
        def cents(m):
            return m.cents

        @miniray.remote
        def make_money():
            return Money(100)
        # Driver -> worker: deserialized with the custom rule (+1).
        assert miniray.get(cents.remote(Money(5))) == 6
        # Worker -> driver: the worker serializes with the registered rule too.
        assert miniray.get(make_money.remote()).cents == 101
    finally:
        miniray.util.deregister_serializer(Money)


def test_classic_register_custom_serializer_rules(ray_shared):
    with pytest.raises(ValueError):
        miniray.register_custom_serializer(Money)
    with pytest.raises(ValueError):
        miniray.register_custom_serializer(Money, use_pickle=True, use_dict=True)
    with pytest.raises(ValueError):
        miniray.register_custom_serializer(Money, serializer=lambda m: m.cents)
    miniray.register_custom_serializer(Money, use_dict=True)
    try:
        assert miniray.get(identity.remote(Money(7))).cents == 7
    finally:
        miniray.util.deregister_serializer(Money)


def test_inspect_serializability_reports(ray_shared, capsys):
    ok, failures = miniray.util.inspect_serializability(Model(), name="model",
                                                        print_report=False)
    assert not ok
    assert any("_lock" in f.path for f in failures)
