"""The public calls: init, shutdown, remote, get, put, wait, kill, cancel..."""
from __future__ import annotations

import inspect
import operator
import os
import threading

from . import _runtime
from . import _serialization as ser
from ._ids import ObjectRef, new_task_id, object_id_for
from ._protocol import M, Q as Query
from .actor import ActorClass, ActorHandle, method
from .remote_function import RemoteFunction

__all__ = ["init", "shutdown", "is_initialized", "remote", "method", "get", "put", "wait",
           "kill", "cancel", "get_actor", "cluster_resources", "available_resources", "nodes",
           "get_runtime_context", "get_gpu_ids", "RuntimeContext"]

_ACCEPTED_INIT_KWARGS = {
    # Ray's init options that make no difference on a miniray node.
    "include_dashboard", "dashboard_host", "dashboard_port", "log_to_driver",
    "logging_level", "logging_format", "configure_logging", "runtime_env", "job_config",
    "local_mode", "_system_config", "_temp_dir", "storage", "_metrics_export_port",
    "enable_resource_isolation", "labels", "_node_ip_address", "_enable_object_reconstruction",
    "_plasma_directory", "_memory", "logging_config", "system_reserved_cpu",
    "system_reserved_memory", "object_spilling_directory", "_tracing_startup_hook",
}

_init_lock = threading.Lock()


def init(address=None, *, num_cpus=None, num_gpus=None, resources=None,
         object_store_memory=None, ignore_reinit_error=False, namespace=None,
         huge_pages=False, plasma_directory=None, _prefault_bytes=None, **kwargs):
    """Start a local node (or connect to ``address``) and return its context."""
    unknown = set(kwargs) - _ACCEPTED_INIT_KWARGS
    if unknown:
        raise TypeError(f"init() got unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    with _init_lock:
        if _runtime.is_initialized():
            if ignore_reinit_error:
                return _runtime.current()
            raise RuntimeError("miniray.init() was already called in this process. Call "
                               "miniray.shutdown() first, or pass ignore_reinit_error=True.")
        if num_cpus is not None and (isinstance(num_cpus, bool) or not isinstance(num_cpus, int)
                                     or num_cpus < 0):
            raise ValueError(f"num_cpus must be a non-negative int, got {num_cpus!r}")
        if resources is not None:
            if not isinstance(resources, dict) or not all(
                    isinstance(k, str) and isinstance(v, (int, float)) and v >= 0
                    for k, v in resources.items()):
                raise TypeError("resources must be a dict of name -> non-negative amount")
            for k in ("CPU", "GPU"):
                if k in resources:
                    raise ValueError(f"use num_cpus/num_gpus instead of resources={{'{k}': ...}}")
        if object_store_memory is not None and (not isinstance(object_store_memory, int)
                                                or object_store_memory < 1 << 20):
            raise ValueError(f"object_store_memory must be an int of at least 1 MiB, got "
                             f"{object_store_memory!r}")
        if huge_pages and plasma_directory is None:
            raise ValueError("huge_pages=True needs plasma_directory= set to a hugetlbfs mount")
        if address is None:
            address = os.environ.get("RAY_ADDRESS") or os.environ.get("MINIRAY_CLUSTER")
        if address in (None, "local"):
            cpus = num_cpus if num_cpus is not None else (os.cpu_count() or 1)
            store = object_store_memory or _runtime._default_store_size()
            addr, token, proc, session = _runtime.start_node(
                cpus, resources, store, num_gpus=num_gpus, plasma_directory=plasma_directory,
                huge_pages=huge_pages, prefault_bytes=_prefault_bytes)
            try:
                rt = _runtime.connect_driver(addr, token, node_proc=proc, namespace=namespace,
                                             session=session)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            return rt
        from ._cluster_file import read_cluster_file
        addr, token = read_cluster_file(address)
        return _runtime.connect_driver(addr, token, namespace=namespace)


def shutdown() -> None:
    """Stop this process's runtime; stops the node if ``init`` started it."""
    with _init_lock:
        rt = _runtime._current
        if rt is None:
            return
        _runtime.set_current(None)
        _runtime.stop(rt)


def is_initialized() -> bool:
    return _runtime.is_initialized()


def remote(*args, **options):
    """``@remote`` / ``@remote(num_cpus=..., ...)`` on a function or class."""
    if len(args) == 1 and not options and callable(args[0]):
        return _make_remote(args[0], {})
    if args:
        raise TypeError("@remote takes either a function/class or keyword options only, "
                        "e.g. @remote(num_cpus=2)")

    def decorate(obj):
        return _make_remote(obj, options)
    return decorate


def _make_remote(obj, options):
    if inspect.isclass(obj):
        return ActorClass(obj, options)
    if callable(obj):
        return RemoteFunction(obj, options)
    raise TypeError(f"@remote works on functions and classes, not {type(obj).__name__}")


def _check_timeout(timeout):
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
        if timeout < 0:
            raise ValueError(f"timeout must be >= 0, got {timeout}")


def get(object_refs, *, timeout=None):
    """Values of one ObjectRef or a list of them; blocks until they exist."""
    _check_timeout(timeout)
    rt = _runtime.current()
    if type(object_refs) is ObjectRef:
        return rt.client.get_values([object_refs._id], timeout)[0]
    if isinstance(object_refs, (list, tuple)):
        oids = []
        for r in object_refs:
            if type(r) is not ObjectRef:
                raise TypeError(f"get() takes ObjectRefs, but the list holds a "
                                f"{type(r).__name__}: {r!r}")
            oids.append(r._id)
        if not oids:
            return []
        return rt.client.get_values(oids, timeout)
    if isinstance(object_refs, ActorHandle):
        raise TypeError("get() takes ObjectRefs, not an actor handle: call a method with "
                        "handle.method.remote(...) and get its result")
    raise TypeError(f"get() takes an ObjectRef or a list of ObjectRefs, not "
                    f"{type(object_refs).__name__}"
                    + (" (did you call f() instead of f.remote()?)" if not
                       isinstance(object_refs, (dict, set)) else ""))


def put(value, *, _owner=None):
    """Store ``value`` in the object store; returns its ObjectRef."""
    if type(value) is ObjectRef:
        raise TypeError("put() cannot store an ObjectRef: pass the ref itself around, or "
                        "put([ref]) to store a list that holds it")
    rt = _runtime.current_or_init()
    client = rt.client
    client.check_serializers()
    sobj = ser.serialize(value, where="the value passed to put()")
    oid = object_id_for(new_task_id(), 0)
    client.store(oid, sobj)
    return ObjectRef(oid, _owned=True)


def wait(object_refs, *, num_returns=1, timeout=None, fetch_local=True):
    """Split refs into (ready, not_ready) once ``num_returns`` are ready or
    ``timeout`` passes; both lists keep the input order."""
    if not isinstance(object_refs, (list, tuple)):
        raise TypeError(f"wait() expects a list of ObjectRefs, got {type(object_refs).__name__}")
    if set(map(type, object_refs)) - {ObjectRef}:
        bad = next(r for r in object_refs if type(r) is not ObjectRef)
        raise TypeError(f"wait() expects a list of ObjectRefs, but it holds a "
                        f"{type(bad).__name__}: {bad!r}")
    oids = list(map(_ref_id, object_refs))
    if len(set(oids)) != len(oids):
        raise ValueError("wait() got duplicate ObjectRefs in its list")
    if isinstance(num_returns, bool) or not isinstance(num_returns, int) or num_returns < 1:
        raise ValueError(f"num_returns must be a positive int, got {num_returns!r}")
    if num_returns > len(oids):
        raise ValueError(f"num_returns ({num_returns}) cannot exceed the number of refs "
                         f"({len(oids)})")
    _check_timeout(timeout)
    if not isinstance(fetch_local, bool):
        raise TypeError("fetch_local must be a bool")
    rt = _runtime.current()
    positions = rt.client.wait(oids, num_returns, timeout)
    chosen = positions[:num_returns]
    if len(chosen) == chosen[-1] + 1 if chosen else False:
        # The first refs are the ready ones (always so when all are ready).
        return list(object_refs[:len(chosen)]), list(object_refs[len(chosen):])
    chosen = set(chosen)
    ready = [r for i, r in enumerate(object_refs) if i in chosen]
    not_ready = [r for i, r in enumerate(object_refs) if i not in chosen]
    return ready, not_ready


_ref_id = operator.attrgetter("_id")


def kill(actor, *, no_restart=True):
    """Kill an actor now; its pending and later calls fail with ActorDiedError."""
    if not isinstance(actor, ActorHandle):
        raise TypeError(f"kill() takes an actor handle, got {type(actor).__name__}; "
                        f"to stop a task use miniray.cancel(ref)")
    rt = _runtime.current()
    rt.client.send((M.ACTOR_KILL, actor._actor_id, bool(no_restart)))


def cancel(object_ref, *, force=False, recursive=True):
    """Cancel the task that makes ``object_ref``: dequeued if it has not
    started; interrupted (TaskCancelledError in the task) or, with
    ``force=True``, its worker killed if it runs."""
    if type(object_ref) is not ObjectRef:
        raise TypeError(f"cancel() takes an ObjectRef, got {type(object_ref).__name__}")
    rt = _runtime.current()
    rt.client.send((M.CANCEL, object_ref._id, bool(force)))


def get_actor(name, namespace=None):
    """The handle of the live actor created with ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"get_actor() needs a non-empty actor name, got {name!r}")
    rt = _runtime.current()
    ns = namespace if namespace is not None else rt.namespace
    aid, meta = rt.client.query(Query.GET_ACTOR, (name, ns))
    return ActorHandle(ObjectRef(aid), meta)


def cluster_resources() -> dict:
    return _runtime.current().client.query(Query.CLUSTER_RESOURCES)


def available_resources() -> dict:
    return _runtime.current().client.query(Query.AVAILABLE_RESOURCES)


def nodes() -> list:
    return _runtime.current().client.query(Query.NODES)


def get_gpu_ids() -> list:
    return []


class RuntimeContext:
    """What ``get_runtime_context()`` returns: ids of this job, task, node."""

    def __init__(self, rt):
        self._rt = rt

    def get_job_id(self) -> str:
        return f"{self._rt.client.job_id:08x}"

    @property
    def job_id(self):
        return self.get_job_id()

    def get_node_id(self) -> str:
        return self._rt.client.node_id

    @property
    def node_id(self):
        return self.get_node_id()

    def _spec(self):
        st = self._rt.worker_state
        return st.current_spec() if st is not None else None

    def get_task_id(self):
        spec = self._spec()
        return spec[0].hex() if spec is not None else None

    @property
    def task_id(self):
        return self.get_task_id()

    def get_actor_id(self):
        st = self._rt.worker_state
        return st.actor_id.hex() if st is not None and st.actor_id is not None else None

    @property
    def actor_id(self):
        return self.get_actor_id()

    def get_worker_id(self) -> str:
        return f"{os.getpid():x}"

    def get_assigned_resources(self) -> dict:
        spec = self._spec()
        return dict(spec[7]) if spec is not None else {}

    def get_task_name(self):
        spec = self._spec()
        return spec[2] if spec is not None else None

    @property
    def namespace(self):
        return self._rt.namespace

    def get(self) -> dict:
        return {"job_id": self.get_job_id(), "node_id": self.get_node_id(),
                "task_id": self.get_task_id(), "actor_id": self.get_actor_id()}

    @property
    def was_current_actor_reconstructed(self) -> bool:
        return False


def get_runtime_context() -> RuntimeContext:
    return RuntimeContext(_runtime.current())

