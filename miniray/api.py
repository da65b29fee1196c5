"""The public calls: init, shutdown, remote, get, put, wait, kill, cancel...

A facade: it checks the caller's arguments and explains misuse; the work is
done below it (``_runtime`` owns the process's runtime and the node it
started, ``_submit`` builds tasks, ``_core`` talks to the node).
"""
from __future__ import annotations

import inspect
import operator
import os

from . import _runtime
from . import _serialization as ser
from . import _task_spec as S
from ._ids import ObjectRef, is_actor_call, new_task_id, object_id_for
from ._options import REMOTE_ARGS_ERROR, plain_str
from ._protocol import M, Q as Query
from ._task_kind import TaskKind, kind_of
from ._call_site import note as note_call_site
from ._submit import encode_meta
from .actor import ActorClass, ActorHandle, _method_table, method
from .job_config import JobConfig
from .remote_function import RemoteFunction

__all__ = ["init", "shutdown", "is_initialized", "remote", "method", "get", "put", "wait",
           "kill", "cancel", "get_actor", "cluster_resources", "available_resources", "nodes",
           "get_runtime_context", "get_gpu_ids", "RuntimeContext"]

_ACCEPTED_INIT_KWARGS = {
    # Ray's init options that make no difference on a miniray node.
    "include_dashboard", "dashboard_host", "dashboard_port",
    "logging_level", "logging_format", "configure_logging", "runtime_env",
    "local_mode", "_system_config", "_temp_dir", "storage", "_metrics_export_port",
    "enable_resource_isolation", "labels", "_node_ip_address", "_enable_object_reconstruction",
    "_plasma_directory", "_memory", "logging_config", "system_reserved_cpu",
    "system_reserved_memory", "_tracing_startup_hook",
}


class _DecoratorMisuse(TypeError, AssertionError):
    """``@remote()`` or ``@remote(x)``: Ray fails with an AssertionError,
    Python's convention is a TypeError; this is both, so code written for
    either catches it."""


class _NotRefs(TypeError, ValueError):
    """``get()`` of something that is neither a ref nor a list: Ray raises a
    ValueError, Python's convention is a TypeError; this is both."""


def init(address=None, *, num_cpus=None, num_gpus=None, resources=None,
         object_store_memory=None, ignore_reinit_error=False, namespace=None,
         huge_pages=False, plasma_directory=None, job_config=None, _prefault_bytes=None,
         log_to_driver=True, object_spilling_directory=None, object_spilling_threshold=None,
         **kwargs):
    """Start a local node (or connect to ``address``) and return its context:
    a dict-like ``RayContext`` (``ctx.address_info["address"]`` is what a
    second driver passes as ``address``) that also works as ``with init():``.
    What this driver's tasks print, on any node, is written to its
    sys.stdout / sys.stderr, prefixed ``(name pid=N)`` (``, ip=X`` for
    another node); ``log_to_driver=False`` leaves it in the nodes' logs.
    When the store passes ``object_spilling_threshold`` (default 0.8) of
    its size, or an object does not fit, objects nobody is reading are
    spilled to ``object_spilling_directory`` (default: the temp dir) and
    read back when needed (docs/object_store.md)."""
    unknown = set(kwargs) - _ACCEPTED_INIT_KWARGS
    if unknown:
        raise TypeError(f"init() got unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    if job_config is not None:
        if not isinstance(job_config, JobConfig):
            raise TypeError(f"job_config must be a miniray.job_config.JobConfig, got "
                            f"{type(job_config).__name__}")
        job_config.check_supported()
    rt = _runtime.init_driver(
        address, num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
        object_store_memory=object_store_memory, ignore_reinit_error=ignore_reinit_error,
        namespace=namespace, huge_pages=huge_pages, plasma_directory=plasma_directory,
        prefault_bytes=_prefault_bytes, job_config=job_config,
        log_to_driver=bool(log_to_driver), object_spilling_directory=object_spilling_directory,
        object_spilling_threshold=object_spilling_threshold)
    return _runtime.RayContext(rt)


def shutdown() -> None:
    """Stop this process's runtime; stops the node if ``init`` started it."""
    _runtime.shutdown_driver()


def is_initialized() -> bool:
    return _runtime.is_initialized()


def remote(*args, **options):
    """``@remote`` / ``@remote(num_cpus=..., ...)`` on a function or class."""
    if len(args) == 1 and not options and callable(args[0]):
        return _make_remote(args[0], {})
    if args or not options:
        raise _DecoratorMisuse(REMOTE_ARGS_ERROR)

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
    if isinstance(object_refs, list):
        oids = []
        for r in object_refs:
            if type(r) is not ObjectRef:
                raise TypeError(f"Attempting to call `get` on the value {_short(r)}, which is "
                                f"not an ray.ObjectRef. (get() takes a list of ObjectRefs; "
                                f"this list holds a {type(r).__name__}.)")
            oids.append(r._id)
        if not oids:
            return []
        return rt.client.get_values(oids, timeout)
    if isinstance(object_refs, ActorHandle):
        raise _NotRefs("get() takes ObjectRefs, not an actor handle: call a method with "
                       "handle.method.remote(...) and get its result")
    hint = ""
    if isinstance(object_refs, tuple):
        hint = " Pass a list: get(list(refs))."
    elif not isinstance(object_refs, (dict, set)):
        hint = " (Did you call f() instead of f.remote()?)"
    raise _NotRefs(f"Invalid type of object refs, {type(object_refs)}, is given. "
                   f"'object_refs' must either be an ObjectRef or a list of ObjectRefs.{hint}")


def _short(value, limit=80) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


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
    if client.record_sites:          # RAY_record_ref_creation_sites=1 (off: nothing)
        note_call_site(client, oid)
    client.store(oid, sobj)
    return ObjectRef(oid, _owned=True)


def wait(object_refs, *, num_returns=1, timeout=None, fetch_local=True):
    """Split refs into (ready, not_ready) once ``num_returns`` are ready or
    ``timeout`` passes; both lists keep the input order."""
    if not isinstance(object_refs, (list, tuple)):
        raise TypeError(f"wait() expects a list of ObjectRefs, got {type(object_refs).__name__}")
    if not object_refs:
        return [], []
    try:
        oids = list(map(_ref_id, object_refs))
        unique = set(oids)
    except (AttributeError, TypeError):
        _check_refs(object_refs)
        raise
    # (The type of every element is checked unless all are ids this process
    # knows are ready: a loop of waits on ready refs is a hot path.)
    if len(unique) != len(oids):
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
    positions = rt.client.wait(oids, num_returns, timeout, unique,
                               lambda: _check_refs(object_refs))
    chosen = positions[:num_returns]
    if len(chosen) == chosen[-1] + 1 if chosen else False:
        # The first refs are the ready ones (always so when all are ready).
        return list(object_refs[:len(chosen)]), list(object_refs[len(chosen):])
    chosen = set(chosen)
    ready = [r for i, r in enumerate(object_refs) if i in chosen]
    not_ready = [r for i, r in enumerate(object_refs) if i not in chosen]
    return ready, not_ready


_ref_id = operator.attrgetter("_id")


def _check_refs(object_refs) -> None:
    """wait()'s input must be ObjectRefs only."""
    if set(map(type, object_refs)) - {ObjectRef}:
        bad = next(r for r in object_refs if type(r) is not ObjectRef)
        raise TypeError(f"wait() expects a list of ObjectRefs, but it holds a "
                        f"{type(bad).__name__}: {bad!r}")


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
    ``force=True``, its worker killed if it runs.  With ``recursive`` (the
    default) the tasks it submitted are cancelled too."""
    if type(object_ref) is not ObjectRef:
        raise TypeError(f"cancel() takes an ObjectRef, got {type(object_ref).__name__}; "
                        f"to stop an actor use miniray.kill(handle)")
    if force and is_actor_call(object_ref._id):
        raise ValueError("force=True is not supported for actor tasks: killing the actor's "
                         "process would end the actor. Cancel the call without force, or "
                         "end the actor with miniray.kill(handle).")
    rt = _runtime.current()
    rt.client.send((M.CANCEL, object_ref._id, bool(force), bool(recursive)))
    # A call sent straight to its actor: its outcome is the node's now (a
    # queued call is failed there at once; its worker never answers it).
    rt.client.direct.forget_call(object_ref._id)


def get_actor(name, namespace=None):
    """The handle of the live actor created with ``name``."""
    name = plain_str(name, "get_actor()'s actor name")
    if not name:
        raise ValueError("get_actor() needs a non-empty actor name, got ''")
    namespace = plain_str(namespace, "get_actor()'s namespace", none_ok=True)
    rt = _runtime.current()
    ns = namespace if namespace is not None else rt.namespace
    aid, meta = rt.client.query(Query.GET_ACTOR, (name, ns))
    return ActorHandle(None, meta, _aid=aid)


def cluster_resources() -> dict:
    return _runtime.current().client.query(Query.CLUSTER_RESOURCES)


def available_resources() -> dict:
    return _runtime.current().client.query(Query.AVAILABLE_RESOURCES)


def nodes() -> list:
    return _runtime.current().client.query(Query.NODES)


def get_gpu_ids() -> list:
    """The GPU ids held by the running task or actor (``[]`` in a driver)."""
    rt = _runtime.current_or_none()
    st = rt.worker_state if rt is not None else None
    return list(st.gpu_ids) if st is not None else []


class RuntimeContext:
    """What ``get_runtime_context()`` returns: this job, node, task, actor.

    In a driver it describes the driver (no task, no actor).  In a worker it
    reads the worker's state: the task running on the calling thread (its
    spec) and, in an actor, the actor (``WorkerState.actor_id``,
    ``.instance`` and ``.actor_spec``, its creation spec)."""

    def __init__(self, rt):
        self._rt = rt

    # -- the worker's state ---------------------------------------------------------------------
    def _state(self):
        return self._rt.worker_state

    def _spec(self):
        st = self._rt.worker_state
        return st.current_spec() if st is not None else None

    def _actor_spec(self):
        """The creation spec of this process's actor, or None."""
        st = self._rt.worker_state
        if st is None or st.actor_id is None:
            return None
        spec = self._spec()
        if spec is not None and kind_of(spec) is TaskKind.ACTOR_CREATE:
            return spec
        return getattr(st, "actor_spec", None)

    # -- job, node, worker ----------------------------------------------------------------------
    def get_job_id(self) -> str:
        """The job's id in hex; in a task or actor, the id of the driver's job
        that submitted it."""
        return _runtime.job_hex(self._rt.job_id)

    @property
    def job_id(self):
        return self.get_job_id()

    def get_node_id(self) -> str:
        return self._rt.client.node_id

    @property
    def node_id(self):
        return self.get_node_id()

    def get_worker_id(self) -> str:
        return f"{os.getpid():x}"

    @property
    def namespace(self):
        return self._rt.namespace

    @property
    def gcs_address(self) -> str:
        return self._rt.address

    def get(self) -> dict:
        """Ray's dict: job_id, node_id and namespace; in a worker also
        task_id and actor_id when there are."""
        context = {"job_id": self.get_job_id(), "node_id": self.get_node_id(),
                   "namespace": self.namespace}
        if self._rt.worker_state is not None:
            task_id, actor_id = self.get_task_id(), self.get_actor_id()
            if task_id is not None:
                context["task_id"] = task_id
            if actor_id is not None:
                context["actor_id"] = actor_id
        return context

    # -- the running task -----------------------------------------------------------------------
    def get_task_id(self):
        spec = self._spec()
        return spec[S.TASK_ID].hex() if spec is not None else None

    @property
    def task_id(self):
        return self.get_task_id()

    def get_task_name(self):
        """The task's name: ``.options(name=...)`` if given, else the
        function's name (``Class.method`` for an actor call,
        ``Class.__init__`` for its creation); None in a driver."""
        spec = self._spec()
        if spec is None:
            return None
        if kind_of(spec) is TaskKind.ACTOR_CREATE:
            return f"{spec[S.NAME]}.__init__"
        return spec[S.NAME]

    def get_task_function_name(self):
        """The function the task runs, with its module
        (``module.f``, ``module.Class.method``); None in a driver."""
        spec = self._spec()
        if spec is None:
            return None
        fn = self._rt.worker_state.functions.get(spec[S.FN_KEY])
        kind = kind_of(spec)
        method = None if kind is TaskKind.TASK else (
            "__init__" if kind is TaskKind.ACTOR_CREATE else spec[S.METHOD])
        module = getattr(fn, "__module__", None)
        qualname = getattr(fn, "__qualname__", None)
        if module is None or qualname is None:     # not loaded here: the name it was sent with
            return self.get_task_name()
        return f"{module}.{qualname}" + (f".{method}" if method else "")

    def get_assigned_resources(self) -> dict:
        """The resources held for this task, e.g. ``{"CPU": 1.0}``; in an
        actor, those its creation holds; ``{}`` in a driver."""
        spec = self._spec()
        if spec is not None and kind_of(spec) is TaskKind.ACTOR_CALL:
            spec = self._actor_spec()
        return dict(spec[S.RESOURCES]) if spec is not None else {}

    # -- the current actor -----------------------------------------------------------------------
    def get_actor_id(self):
        st = self._rt.worker_state
        return st.actor_id.hex() if st is not None and st.actor_id is not None else None

    @property
    def actor_id(self):
        return self.get_actor_id()

    @property
    def current_actor(self):
        """A handle to the actor this is called in (it does not keep the
        actor alive by itself)."""
        st = self._rt.worker_state
        if st is None or st.actor_id is None:
            raise RuntimeError("This method is only available in an actor: "
                               "get_runtime_context().current_actor was called in a "
                               + ("task" if st is not None else "driver"))
        handle = _self_handles.get(st.actor_id)
        if handle is None:
            handle = _self_handles[st.actor_id] = _own_handle(st, self._actor_spec())
        return handle

    @property
    def was_current_actor_reconstructed(self) -> bool:
        """Has this actor been restarted (``max_restarts``) since it was
        first created?  The node says so in the creation spec it sends to
        the restarted worker (EXTRA "num_restarts")."""
        if self._rt.worker_state is None or self._rt.worker_state.actor_id is None:
            raise RuntimeError("was_current_actor_reconstructed is only available in an "
                               "actor, not in a driver or a task")
        spec = self._actor_spec()
        extra = spec[S.EXTRA] if spec is not None else None
        return bool(extra and extra.get("num_restarts"))


_self_handles: dict = {}     # actor id -> the handle current_actor gives (one per process)


def _own_handle(st, creation_spec):
    """A handle to this process's actor, built from its class (the node
    keeps the meta its creator made, but the worker never receives it).  It
    holds no ref: an actor must not keep itself alive."""
    cls = type(st.instance) if st.instance is not None else None
    key = creation_spec[S.FN_KEY] if creation_spec is not None else None
    if key is None or cls is None:
        spec = st.current_spec()
        if spec is not None:
            key = spec[S.FN_KEY]
            cls = cls or st.functions.get(key)
    if cls is None or key is None:
        raise RuntimeError("current_actor is not available before the actor's class is "
                           "loaded in this worker")
    methods = _method_table(cls)
    meta = {"class_name": str(st.actor_name or cls.__qualname__), "key": key,
            "methods": methods, "max_task_retries": 0,
            "is_async": any(m["is_async"] for m in methods.values())}
    return ActorHandle(None, encode_meta(meta, f"actor class '{cls.__qualname__}'"),
                       _aid=st.actor_id)


def get_runtime_context() -> RuntimeContext:
    """The context of this driver or worker; starts a local node first if
    none is running, as Ray does."""
    return RuntimeContext(_runtime.current_or_init())
