"""Actor classes, handles and methods.

``@remote`` on a class gives an ``ActorClass``; ``Cls.remote()`` asks the node
to start the actor and returns an ``ActorHandle``.  A handle holds an
ObjectRef to the actor's id, so handles are counted like refs across
processes (held by processes, pinned by stored objects that contain them);
when the last one is gone the node ends the actor.  Handles pickle, so they
travel in task args, returns and other actors.
"""
from __future__ import annotations

import inspect

from . import _runtime
from ._ids import ObjectRef, new_task_id, object_id_for
from ._options import (actor_shape, validate_actor_options, validate_method_options)
from ._protocol import M
from .remote_function import function_blob, _Signature

__all__ = ["ActorClass", "ActorHandle", "ActorMethod", "method", "exit_actor"]

ACTOR_CALL = M.ACTOR_CALL
_local_classes: dict = {}   # class key -> class, for argument checks in this process


def exit_actor():
    """End the actor this is called from, after the current method: its
    queued and later calls fail with ActorDiedError, it is not restarted,
    and atexit handlers run in its process."""
    from .exceptions import ActorExit
    rt = _runtime._current
    state = rt.worker_state if rt is not None else None
    if state is None or state.actor_id is None:
        raise TypeError("exit_actor() ends the current actor, so it can only be called inside "
                        "an actor method; to end an actor from outside use miniray.kill(handle)")
    raise ActorExit()


def method(*args, **options):
    """``@miniray.method(num_returns=2)`` on an actor method."""
    if args and callable(args[0]) and not options:
        return args[0]
    validate_method_options(options)

    def decorate(fn):
        fn.__miniray_method_options__ = options
        return fn
    return decorate


def _method_table(cls) -> dict:
    methods = {}
    for name, fn in inspect.getmembers(cls, predicate=callable):
        if name.startswith("__") and name not in ("__call__",):
            continue
        opts = dict(getattr(fn, "__miniray_method_options__", None) or
                    getattr(fn, "__ray_method_options__", None) or {})
        opts["is_async"] = inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)
        methods[name] = opts
    return methods


class ActorClass:
    def __init__(self, cls, options=None):
        self._cls = cls
        self._name = cls.__qualname__
        self._options = validate_actor_options(dict(options or {}))
        self._methods = _method_table(cls)
        self._is_async = any(m["is_async"] for m in self._methods.values())
        self._key = None
        self._blob = None
        self._sig = None
        self.__doc__ = cls.__doc__
        self.__name__ = cls.__name__

    def __call__(self, *args, **kwargs):
        raise TypeError(
            f"Actors cannot be instantiated directly: use {self._name}.remote(...) instead of "
            f"{self._name}(...). It returns a handle; call methods with "
            f"handle.method.remote(...).")

    def __repr__(self):
        return f"<miniray actor class {self._name}>"

    def options(self, **options):
        merged = dict(self._options)
        merged.update(validate_actor_options(options))
        parent = self

        class _Options:
            def remote(self, *args, **kwargs):
                return parent._create(args, kwargs, merged)
        return _Options()

    def remote(self, *args, **kwargs):
        return self._create(args, kwargs, self._options)

    def _create(self, args, kwargs, opts):
        rt = _runtime.current_or_init()
        client = rt.client
        if self._key is None:
            self._key, self._blob = function_blob(self._cls, f"actor class '{self._name}'")
            self._sig = _Signature(self._cls)
            _local_classes[self._key] = self._cls
        self._sig.check(self._name, args, kwargs)
        client.register_function(self._key, self._blob)
        payload, args_oid, deps, pins = _runtime.pack_args(
            rt, args, kwargs, f"{self._name}.__init__", self._sig.bind if self._sig.sig else None)
        aid = object_id_for(new_task_id(), 0xFFFF)
        max_concurrency = opts.get("max_concurrency") or (1000 if self._is_async else 1)
        max_task_retries = opts.get("max_task_retries") or 0
        meta = {"class_name": self._name, "key": self._key, "methods": self._methods,
                "max_task_retries": max_task_retries, "is_async": self._is_async}
        namespace = opts.get("namespace", rt.namespace)
        # The actor's process runs in its namespace (get_actor and named
        # actors created from its methods use it), as Ray's do.
        spec = (new_task_id(), self._key, self._name, payload, args_oid, deps, 0,
                actor_shape(opts), 0, False, pins, aid, "__init__",
                {"is_async": self._is_async, "max_concurrency": max_concurrency,
                 "namespace": namespace})
        node_opts = {"name": opts.get("name"), "namespace": namespace,
                     "get_if_exists": opts.get("get_if_exists", False),
                     "lifetime": opts.get("lifetime"),
                     "max_restarts": _forever(opts.get("max_restarts") or 0),
                     "max_task_retries": _forever(max_task_retries), "meta": meta}
        client.check_serializers()
        ok, payload = client.request(lambda rid: (M.ACTOR_CREATE, rid, spec, node_opts))
        if not ok:
            raise payload
        got_aid, got_meta, created = payload
        return ActorHandle(ObjectRef(got_aid, _owned=created), got_meta)

    def __reduce__(self):
        return (ActorClass, (self._cls, self._options))


def _forever(n):
    return (1 << 30) if n == -1 else n


class ActorHandle:
    """A handle to an actor; call ``handle.method.remote(...)``."""

    def __init__(self, ref: ObjectRef, meta: dict):
        self._ref = ref
        self._meta = meta
        self._methods = {}

    @property
    def _actor_id(self) -> bytes:
        return self._ref.id

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        m = self._methods.get(name)
        if m is not None:
            return m
        info = self._meta["methods"].get(name)
        if info is None:
            raise AttributeError(
                f"actor {self._meta['class_name']} has no method '{name}'. Its methods: "
                f"{', '.join(sorted(self._meta['methods'])) or 'none'}")
        m = self._methods[name] = ActorMethod(self, name, info)
        return m

    def __repr__(self):
        return f"Actor({self._meta['class_name']}, {self._ref.hex()})"

    def __eq__(self, other):
        return isinstance(other, ActorHandle) and other._ref == self._ref

    def __hash__(self):
        return hash(self._ref)

    def __reduce__(self):
        return (ActorHandle, (self._ref, self._meta))


class ActorMethod:
    def __init__(self, handle, name, info, options=None):
        self._handle = handle
        self._name = name
        self._info = info
        self._options = options
        self._qualname = f"{handle._meta['class_name']}.{name}"

    def __call__(self, *args, **kwargs):
        raise TypeError(f"Actor methods cannot be called directly: use "
                        f"handle.{self._name}.remote(...) instead of handle.{self._name}(...).")

    def options(self, **options):
        validate_method_options(options)
        merged = dict(self._options or {})
        merged.update(options)
        return ActorMethod(self._handle, self._name, self._info, merged)

    def remote(self, *args, **kwargs):
        rt = _runtime.current_or_init()
        client = rt.client
        opts = self._options
        info = self._info
        meta = self._handle._meta
        n = (opts or {}).get("num_returns", info.get("num_returns", 1))
        retries = _forever((opts or {}).get("max_task_retries",
                                            info.get("max_task_retries", meta["max_task_retries"])))
        cls = _local_classes.get(meta["key"])
        bind = None
        if cls is not None:
            fn = getattr(cls, self._name, None)
            if fn is not None:
                sig = _method_signature(cls, self._name, fn)
                if sig is not None:
                    try:
                        sig.bind(*args, **kwargs)
                    except TypeError as exc:
                        raise TypeError(f"{self._qualname}.remote(): {exc} "
                                        f"(signature: {self._name}{sig})") from None
                    bind = sig.bind
        payload, args_oid, deps, pins = _runtime.pack_args(rt, args, kwargs,
                                                           f"'{self._qualname}'", bind)
        tid = new_task_id()
        retry_exc = (opts or {}).get("retry_exceptions", info.get("retry_exceptions", False))
        spec = (tid, meta["key"], self._qualname, payload, args_oid, deps, n, (), retries,
                tuple(retry_exc) if isinstance(retry_exc, list) else retry_exc, pins,
                self._handle._ref.id, self._name, None)
        client.send_later((ACTOR_CALL, spec))
        if n == 1:
            return ObjectRef(tid + b"\x00\x00", _owned=True)
        if n == 0:
            return None
        return [ObjectRef(tid + i.to_bytes(2, "little"), _owned=True) for i in range(n)]


_sig_cache: dict = {}


def _method_signature(cls, name, fn):
    key = (cls, name)
    sig = _sig_cache.get(key, False)
    if sig is False:
        try:
            sig = inspect.signature(fn)
            params = list(sig.parameters.values())
            if params and params[0].name == "self" and not isinstance(
                    inspect.getattr_static(cls, name), (staticmethod, classmethod)):
                sig = sig.replace(parameters=params[1:])
        except (TypeError, ValueError):
            sig = None
        _sig_cache[key] = sig
    return sig
