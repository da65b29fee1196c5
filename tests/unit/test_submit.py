"""The client's task builder, without processes: one spec builder for the
three task kinds, and messages the node can decode without unpickling any
class (it decodes frames with an unpickler that refuses every class; user
values travel as bytes only the worker or the client decodes)."""
from __future__ import annotations

import enum
import io
import pickle
import types

import pytest

import miniray
from miniray import _runtime, _task_spec as S
from miniray._runtime import FIRST_JOB
from miniray._protocol import M
from miniray._serialization import loads_from
from miniray._submit import decode_meta, encode_retry_exc, task_spec
from miniray._task_kind import ACTOR_INIT, TaskKind, kind_of


class MyError(Exception):
    pass


class OtherError(Exception):
    pass


class Color(str, enum.Enum):   # a str subclass (StrEnum needs 3.11)
    RED = "red"


class Count(enum.IntEnum):
    TWO = 2


class _RefuseClasses(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"the node refuses {module}.{name}")


def node_decodes(msg):
    """``msg`` as the node will read it (builtins only)."""
    return _RefuseClasses(io.BytesIO(pickle.dumps(msg, 5))).load()


class FakeClient:
    """Records what would be sent; answers ACTOR_CREATE like the node."""

    inline_threshold = 100 * 1024
    record_sites = False        # RAY_record_ref_creation_sites off (``_call_site``)
    direct = types.SimpleNamespace(enabled=False, leases={})    # every call goes to the node

    def __init__(self):
        self.sent = []

    def check_serializers(self):
        pass

    def register_function(self, key, blob):
        pass

    def send_later(self, msg):
        self.sent.append(msg)

    send = send_later

    def request(self, build):
        msg = build(1)
        self.sent.append(msg)
        _, _, spec, opts = node_decodes(msg)
        return True, (spec[S.ACTOR_ID], opts["meta"], True)


@pytest.fixture
def fake_runtime():
    client = FakeClient()
    _runtime.set_current(types.SimpleNamespace(client=client, namespace="ns", mode="test",
                                               job_id=FIRST_JOB))
    try:
        yield client
    finally:
        _runtime.set_current(None)


PACKED = (b"args", None, [b"d" * 16], [b"p" * 16])


@pytest.mark.parametrize("kind, actor_id, method", [
    (TaskKind.TASK, None, None),
    (TaskKind.ACTOR_CREATE, b"a" * 16, None),
    (TaskKind.ACTOR_CALL, b"a" * 16, "work")])
def test_one_builder_puts_each_field_at_its_name(kind, actor_id, method):
    spec = task_spec(kind, b"k" * 16, "f", PACKED, 2, (("CPU", 1.0),), 3, b"exc",
                     actor_id=actor_id, method=method, extra={"namespace": "ns"})
    assert len(spec) == S.SPEC_LEN
    assert len(spec[S.TASK_ID]) == 14
    assert (spec[S.FN_KEY], spec[S.NAME], spec[S.ARGS], spec[S.ARGS_OID], spec[S.DEPS],
            spec[S.NUM_RETURNS], spec[S.RESOURCES], spec[S.MAX_RETRIES], spec[S.RETRY_EXC],
            spec[S.PINS], spec[S.ACTOR_ID], spec[S.EXTRA]) == (
        b"k" * 16, "f", b"args", None, [b"d" * 16], 2, (("CPU", 1.0),), 3, b"exc",
        [b"p" * 16], actor_id, {"namespace": "ns"})
    assert spec[S.METHOD] == (ACTOR_INIT if kind is TaskKind.ACTOR_CREATE else method)
    assert kind_of(spec) is kind


@pytest.mark.parametrize("kind, actor_id, method", [
    (TaskKind.TASK, b"a" * 16, None), (TaskKind.TASK, None, "m"),
    (TaskKind.ACTOR_CREATE, None, None), (TaskKind.ACTOR_CREATE, b"a" * 16, "m"),
    (TaskKind.ACTOR_CALL, None, "m"), (TaskKind.ACTOR_CALL, b"a" * 16, None),
    (TaskKind.ACTOR_CALL, b"a" * 16, ACTOR_INIT), (7, None, None)])
def test_builder_refuses_a_spec_that_contradicts_its_kind(kind, actor_id, method):
    with pytest.raises(ValueError):
        task_spec(kind, b"k", "f", PACKED, 1, (), 0, False, actor_id=actor_id, method=method)


def test_retry_exceptions_travel_as_bytes():
    assert encode_retry_exc(None, "f") is False
    assert encode_retry_exc(False, "f") is False
    assert encode_retry_exc(True, "f") is True
    assert encode_retry_exc([], "f") is False
    blob = encode_retry_exc([MyError, ValueError], "f")
    assert type(blob) is bytes
    assert loads_from(blob) == (MyError, ValueError)


def test_function_task_message_holds_builtins_only(fake_runtime):
    @miniray.remote(num_returns=Count.TWO, max_retries=Count.TWO, retry_exceptions=[MyError],
                    resources={Color.RED: 1})
    def f(x):
        return x, x

    refs = f.remote(1)
    assert len(refs) == 2
    [msg] = fake_runtime.sent
    tag, spec = node_decodes(msg)
    assert tag == M.SUBMIT and kind_of(spec) is TaskKind.TASK
    assert spec[S.NUM_RETURNS] == 2 and spec[S.MAX_RETRIES] == 2
    assert spec[S.RESOURCES] == (("CPU", 1.0), ("red", 1.0))
    assert spec[S.EXTRA] == {"namespace": "ns"}
    assert type(spec[S.RETRY_EXC]) is bytes and loads_from(spec[S.RETRY_EXC]) == (MyError,)
    fake_runtime.sent.clear()
    f.options(retry_exceptions=True).remote(2)
    assert node_decodes(fake_runtime.sent[0])[1][S.RETRY_EXC] is True


def test_actor_messages_hold_builtins_only(fake_runtime):
    @miniray.remote
    class Worker:
        @miniray.method(retry_exceptions=[MyError], max_task_retries=Count.TWO)
        def work(self):
            pass

        def plain(self):
            pass

    handle = Worker.options(name=Color.RED, namespace=Color.RED, max_restarts=Count.TWO,
                            get_if_exists=1, lifetime="detached").remote()
    create = fake_runtime.sent[0]
    tag, _, spec, opts = node_decodes(create)
    assert tag == M.ACTOR_CREATE and kind_of(spec) is TaskKind.ACTOR_CREATE
    assert opts["name"] == "red" and type(opts["name"]) is str
    assert opts["namespace"] == "red" and opts["get_if_exists"] is True
    assert opts["max_restarts"] == 2
    assert spec[S.EXTRA] == {"is_async": False, "max_concurrency": 1, "namespace": "red"}
    assert type(opts["meta"]) is bytes
    meta = decode_meta(opts["meta"])
    assert meta["class_name"] == Worker._name and set(meta["methods"]) == {"work", "plain"}

    fake_runtime.sent.clear()
    handle.work.remote()
    handle.plain.remote()
    handle.work.options(retry_exceptions=[OtherError]).remote()
    (t1, work), (t2, plain), (t3, other) = map(node_decodes, fake_runtime.sent)
    assert t1 == t2 == t3 == M.ACTOR_CALL
    assert kind_of(work) is TaskKind.ACTOR_CALL and work[S.METHOD] == "work"
    assert loads_from(work[S.RETRY_EXC]) == (MyError,) and work[S.MAX_RETRIES] == 2
    assert plain[S.RETRY_EXC] is False and plain[S.MAX_RETRIES] == 0
    assert loads_from(other[S.RETRY_EXC]) == (OtherError,)

    # A handle pickles with the meta bytes; equal bytes decode once.
    again = pickle.loads(pickle.dumps(handle))
    assert again._meta_blob == handle._meta_blob and again._meta is handle._meta


def test_names_must_be_str():
    @miniray.remote
    class A:
        pass
    with pytest.raises(TypeError, match="actor name"):
        A.options(name=3)
    with pytest.raises(TypeError, match="namespace"):
        A.options(namespace=b"ns")
    with pytest.raises(ValueError, match="non-empty"):
        A.options(name="")
    with pytest.raises(TypeError, match="actor name"):
        miniray.get_actor(3)
    with pytest.raises(TypeError, match="namespace"):
        miniray.get_actor("a", namespace=3)
    with pytest.raises(TypeError, match="namespace"):
        miniray.init(namespace=3)
    assert not miniray.is_initialized()
    with pytest.raises(TypeError, match="retry_exceptions"):
        miniray.method(retry_exceptions=["ValueError"])


def test_signature_check_remembers_call_shapes_that_bind_only():
    from miniray._submit import Signature

    def f(a, b=1, *, c=2):
        return a

    sig = Signature(f)
    sig.check("f", (1,), {})
    sig.check("f", (1, 2), {"c": 3})
    assert 1 in sig.fits and (2, ("c",)) in sig.fits
    sig.check("f", (5,), {})                        # same shape: not bound again
    for args, kwargs in [((), {}), ((1, 2, 3), {}), ((1,), {"d": 4}), ((1,), {"a": 1})]:
        with pytest.raises(TypeError, match=r"f\.remote\(\)"):
            sig.check("f", args, kwargs)
    assert sig.fits == {1, (2, ("c",))}
