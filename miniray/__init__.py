"""miniray: a small, fast task-execution runtime with Ray's core API.

    import miniray as ray
    ray.init()

    @ray.remote
    def f(x):
        return x * 2

    ray.get(f.remote(21))   # 42
"""
import importlib as _importlib

from . import exceptions
from ._ids import ObjectRef

__version__ = "0.1.0"

# Ray's older name for ObjectRef, still used by programs.
ObjectID = ObjectRef

# The rest of the API loads on first use (PEP 562): the node daemon and the
# workers import this package too, and need none of it (2.7 MiB of RSS
# less in the node, and a faster start).
_LAZY = {
    "ActorClass": ".actor", "ActorHandle": ".actor",
    "RuntimeContext": ".api", "available_resources": ".api", "cancel": ".api",
    "cluster_resources": ".api", "get": ".api", "get_actor": ".api", "get_gpu_ids": ".api",
    "get_runtime_context": ".api", "init": ".api", "is_initialized": ".api", "kill": ".api",
    "method": ".api", "nodes": ".api", "put": ".api", "remote": ".api", "shutdown": ".api",
    "wait": ".api",
    "register_custom_serializer": "._serialization",
    # submodules (``miniray.actor.ActorHandle`` in type hints, as with Ray)
    "actor": None, "api": None, "cluster_utils": None, "job_config": None,
    "remote_function": None, "util": None,
}


def __getattr__(name):
    where = _LAZY.get(name)
    if where is None:
        if name in _LAZY:
            value = _importlib.import_module(f".{name}", __name__)
        else:
            raise AttributeError(f"module 'miniray' has no attribute '{name}'")
    else:
        value = getattr(_importlib.import_module(where, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "ActorClass", "ActorHandle", "ObjectID", "ObjectRef", "RuntimeContext",
    "available_resources", "cancel", "cluster_resources", "exceptions", "get", "get_actor",
    "get_gpu_ids", "get_runtime_context", "init", "is_initialized", "job_config", "kill",
    "method", "nodes", "put", "register_custom_serializer", "remote", "shutdown", "util",
    "wait", "__version__",
]
