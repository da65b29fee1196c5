import asyncio
import pickle
import subprocess
import sys
import threading
import traceback

import pytest

import miniray
from miniray.exceptions import RayError, RayTaskError


def test_public_names_pinned():
    assert sorted(miniray.__all__) == sorted([
        "ActorClass", "ActorHandle", "ObjectID", "ObjectRef", "RuntimeContext",
        "available_resources", "cancel", "cluster_resources", "exceptions", "get", "get_actor",
        "get_gpu_ids", "get_runtime_context", "init", "is_initialized", "job_config", "kill",
        "method", "nodes", "put", "register_custom_serializer", "remote", "shutdown", "util",
        "wait", "__version__"])
    for name in miniray.__all__:
        assert hasattr(miniray, name), name


def test_exception_names_match_ray():
    from miniray import exceptions as e
    for name in ["RayError", "RayTaskError", "GetTimeoutError", "WorkerCrashedError",
                 "TaskCancelledError", "ObjectStoreFullError", "RayActorError", "ActorDiedError",
                 "ObjectLostError"]:
        assert issubclass(getattr(e, name), e.RayError)
    assert issubclass(e.GetTimeoutError, TimeoutError)


def test_import_is_light():
    code = ("import sys, miniray; heavy = [m for m in ('numpy', 'pyarrow') if m in sys.modules];"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_util_names():
    from miniray import util
    for name in ["register_serializer", "deregister_serializer", "inspect_serializability",
                 "ActorPool", "get_node_ip_address", "list_named_actors"]:
        assert hasattr(util, name)
    assert sorted(util.__all__) == sorted([
        "ActorPool", "deregister_serializer", "get_node_ip_address", "inspect_serializability",
        "list_named_actors", "register_serializer"])


# -- Ray's names and aliases ---------------------------------------------------------------------

def test_object_id_is_object_ref_and_as_future_is_asyncio():
    assert miniray.ObjectID is miniray.ObjectRef
    assert callable(miniray.ObjectRef.future) and callable(miniray.ObjectRef.as_future)

    class Tracker:             # resolves every future at once, with the ref's id
        def as_future(self, ref):
            from concurrent.futures import Future
            f = Future()
            f.set_result(ref.hex())
            return f

        add = add_owned = remove = lambda self, oid: None
    from miniray import _ids
    _ids.set_ref_tracker(Tracker())
    try:
        ref = miniray.ObjectRef(b"x" * 16)

        async def main():
            fut = ref.as_future()
            assert isinstance(fut, asyncio.Future)
            return await fut, await ref
        assert asyncio.run(main()) == (ref.hex(), ref.hex())
    finally:
        _ids.set_ref_tracker(None)


def test_actor_call_ids_say_so():
    from miniray._ids import is_actor_call, new_task_id, object_id_for
    assert not is_actor_call(object_id_for(new_task_id(), 0))
    assert is_actor_call(object_id_for(new_task_id(actor_call=True), 1))
    assert len(new_task_id(actor_call=True)) == 14


def test_job_config_is_a_plain_class_with_rays_fields():
    from miniray.job_config import JobConfig
    jc = JobConfig(ray_namespace="ns", metadata={"a": "b"}, runtime_env={"env_vars": {}})
    assert (jc.ray_namespace, jc.metadata, jc.default_actor_lifetime) == (
        "ns", {"a": "b"}, "non_detached")
    jc.set_metadata("c", "d")
    jc.set_ray_namespace("other")
    assert JobConfig.from_json(jc.to_json()) == jc
    with pytest.raises(TypeError):
        JobConfig(ray_namespace=3)
    with pytest.raises(ValueError):
        JobConfig(default_actor_lifetime="forever")
    with pytest.raises(ValueError, match="lifetime='detached'"):
        JobConfig(default_actor_lifetime="detached").check_supported()
    with pytest.raises(ValueError, match="code_search_path"):
        JobConfig(code_search_path=["/x"]).check_supported()
    JobConfig().check_supported()


def test_asyncio_actor_exit_is_a_ray_error_that_ends_the_actor():
    from miniray.exceptions import ActorExit, AsyncioActorExit
    assert issubclass(AsyncioActorExit, RayError) and issubclass(AsyncioActorExit, ActorExit)
    assert "AsyncioActorExit" in miniray.exceptions.__all__


def test_node_ip_address_before_init():
    assert miniray.util.get_node_ip_address() == "127.0.0.1"


# -- input validation (no runtime started) --------------------------------------------------------

def test_remote_with_empty_parentheses_is_rays_error():
    for bad in (lambda: miniray.remote(), lambda: miniray.remote()(lambda: 1),
                lambda: miniray.remote(1, 2)):
        with pytest.raises(AssertionError, match="must be applied either with no arguments"):
            bad()
        with pytest.raises(TypeError):
            bad()
    assert not miniray.is_initialized()


def test_unknown_options_are_errors():
    with pytest.raises(ValueError, match="Invalid option keyword 'num_cpu' for remote functions"):
        miniray.remote(num_cpu=1)(lambda: 1)

    class A:
        pass
    with pytest.raises(ValueError, match="Invalid option keyword 'max_retries' for actors"):
        miniray.remote(max_retries=1)(A)


def test_remote_on_async_def_is_a_value_error():
    async def f():
        return 1
    with pytest.raises(ValueError, match="'async def' should not be used for remote tasks"):
        miniray.remote(f)
    with pytest.raises(ValueError, match="async def"):
        miniray.remote(num_cpus=1)(f)


def test_init_rejects_a_non_str_namespace_and_bad_job_config():
    with pytest.raises(TypeError, match="namespace"):
        miniray.init(namespace=123)
    with pytest.raises(TypeError, match="job_config"):
        miniray.init(job_config={"ray_namespace": "x"})
    assert not miniray.is_initialized()


def test_object_store_memory_may_be_a_float():
    from miniray._runtime import _check_init_args
    assert _check_init_args(None, None, 2e9, False, None) == 2_000_000_000
    assert type(_check_init_args(None, None, 2e9, False, None)) is int
    with pytest.raises(ValueError):
        _check_init_args(None, None, 1e3, False, None)
    with pytest.raises(ValueError):
        _check_init_args(None, None, True, False, None)


def test_function_capturing_a_huge_object_is_refused_with_put_advice():
    big = b"x" * (100 * 2**20)      # >= Ray's FUNCTION_SIZE_ERROR_THRESHOLD (10**8 bytes)

    def f():
        return len(big)

    class Holder:
        data = big
    from miniray._submit import function_blob
    with pytest.raises(ValueError, match=r"remote function 'f' is too large \(100 MiB > "
                                         r"FUNCTION_SIZE_ERROR_THRESHOLD=95 MiB\).*ray\.put"):
        function_blob(f, "remote function 'f'")
    with pytest.raises(ValueError, match="actor class 'Holder' is too large"):
        function_blob(Holder, "actor class 'Holder'")
    medium = big[: 20 * 2**20]         # above the warning threshold (10**7 bytes) only
    with pytest.warns(UserWarning, match="very large"):
        function_blob(lambda: len(medium), "remote function 'g'")


# -- RayTaskError: Ray's text, ExceptionGroup, unserializable causes ------------------------------

def _raise_in(fn):
    try:
        fn()
    except BaseException as exc:
        return exc, "".join(traceback.format_exception(exc))


def _task_error(fn, **kw):
    """A RayTaskError made as a worker makes it, then sent to the driver."""
    exc, tb = _raise_in(fn)
    err = RayTaskError(kw.pop("name", "f"), tb, exc, **kw)
    return pickle.loads(pickle.dumps(err))


def boom():
    raise ValueError("bad input")


def test_task_error_text_starts_with_rays_header():
    err = _task_error(boom, pid=4242, ip="10.0.0.7")
    text = str(err)
    lines = text.splitlines()
    assert lines[0] == "ray::f() (pid=4242, ip=10.0.0.7)"
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: bad input"
    assert 'in boom' in text
    # The caller's view: also a ValueError, with the same text.
    raised = err.as_instanceof_cause()
    assert isinstance(raised, ValueError) and isinstance(raised, RayTaskError)
    assert str(raised) == text and raised.args == ("bad input",)


def test_actor_task_error_header_names_the_actor():
    err = _task_error(boom, name="Counter.incr", pid=7, actor_id="ab" * 16,
                      actor_repr="<Counter object>")
    assert str(err).splitlines()[0] == (
        f"ray::Counter.incr() (pid=7, ip=127.0.0.1, actor_id={'ab' * 16}, "
        f"repr=<Counter object>)")
    assert err.actor_id == "ab" * 16


def test_task_error_drops_the_runtimes_own_frames():
    import miniray.exceptions as E
    tb = ("Traceback (most recent call last):\n"
          f'  File "{E._PACKAGE_DIR}_worker_main.py", line 10, in execute\n'
          "    value = call(fn)\n"
          "            ^^^^^^^^\n"
          '  File "/home/u/job.py", line 3, in f\n'
          "    raise ValueError(1)\n"
          "ValueError: 1")
    assert str(RayTaskError("f", tb, None, pid=1)).splitlines() == [
        "ray::f() (pid=1, ip=127.0.0.1)", "Traceback (most recent call last):",
        '  File "/home/u/job.py", line 3, in f',
        "    raise ValueError(1)", "ValueError: 1"]


def test_exception_group_cause_makes_an_exception_group():
    def group():
        raise ExceptionGroup("several", [ValueError("v"), TypeError("t")])
    err = _task_error(group).as_instanceof_cause()
    assert isinstance(err, RayTaskError) and isinstance(err, ExceptionGroup)
    assert [type(e) for e in err.exceptions] == [ValueError, TypeError]
    assert str(err).startswith("ray::f() (pid=")
    caught = []
    try:
        raise err
    except* ValueError as eg:
        caught.append(eg.exceptions)
    except* TypeError as eg:
        caught.append(eg.exceptions)
    assert [type(e[0]) for e in caught] == [ValueError, TypeError]
    try:
        raise err
    except* RayTaskError as eg:             # the whole group matches, as in Ray
        assert len(eg.exceptions) == 2


def test_unpicklable_cause_arrives_as_a_ray_error_that_says_so():
    class Unpicklable(Exception):
        def __init__(self):
            super().__init__("holding a lock")
            self.lock = threading.Lock()

    def fail():
        raise Unpicklable()
    err = _task_error(fail)
    assert err.cause is not None and type(err.cause) is RayError
    assert "isn't serializable" in str(err.cause) and "Unpicklable" in str(err.cause)
    assert "holding a lock" in str(err)              # the remote traceback keeps the text
    raised = err.as_instanceof_cause()
    assert isinstance(raised, RayTaskError) and raised.cause is err.cause


def test_submodules_are_attributes_of_the_package():
    """``miniray.actor.ActorHandle`` (a type hint in Ray programs) works
    right after ``import miniray``, though the API loads lazily."""
    code = ("import miniray; print(miniray.actor.ActorHandle.__name__, "
            "miniray.api.get.__name__, miniray.remote_function.RemoteFunction.__name__, "
            "miniray.util.ActorPool.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["ActorHandle", "get", "RemoteFunction", "ActorPool"]
