"""miniray: a small, fast task-execution runtime with Ray's core API.

    import miniray as ray
    ray.init()

    @ray.remote
    def f(x):
        return x * 2

    ray.get(f.remote(21))   # 42
"""
from . import exceptions
from . import job_config
from ._ids import ObjectRef
from .actor import ActorClass, ActorHandle
from .api import (RuntimeContext, available_resources, cancel, cluster_resources, get,
                  get_actor, get_gpu_ids, get_runtime_context, init, is_initialized, kill,
                  method, nodes, put, remote, shutdown, wait)
from ._serialization import register_custom_serializer
from . import util

__version__ = "0.1.0"

# Ray's older name for ObjectRef, still used by programs.
ObjectID = ObjectRef

__all__ = [
    "ActorClass", "ActorHandle", "ObjectID", "ObjectRef", "RuntimeContext",
    "available_resources", "cancel", "cluster_resources", "exceptions", "get", "get_actor",
    "get_gpu_ids", "get_runtime_context", "init", "is_initialized", "job_config", "kill",
    "method", "nodes", "put", "register_custom_serializer", "remote", "shutdown", "util",
    "wait", "__version__",
]
