import subprocess
import sys

import miniray


def test_public_names_pinned():
    assert sorted(miniray.__all__) == sorted([
        "ActorClass", "ActorHandle", "ObjectRef", "RuntimeContext", "available_resources",
        "cancel", "cluster_resources", "exceptions", "get", "get_actor", "get_gpu_ids",
        "get_runtime_context", "init", "is_initialized", "kill", "method", "nodes", "put",
        "register_custom_serializer", "remote", "shutdown", "util", "wait", "__version__"])
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
                 "ActorPool"]:
        assert hasattr(util, name)
