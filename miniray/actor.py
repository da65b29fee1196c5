"""Actor classes, handles and methods.

``@remote`` on a class gives an ``ActorClass``; ``Cls.remote()`` asks the node
to start the actor and returns an ``ActorHandle``.  A handle holds an
ObjectRef to the actor's id, so handles are counted like refs across
processes (held by processes, pinned by stored objects that contain them);
when the last one is gone the node ends the actor.  Handles pickle, so they
travel in task args, returns and other actors.

An actor's meta (class name, function key, the method table with each
method's options, the names of its concurrency groups) is made here and
travels as bytes: the node stores it and hands it back with every handle it
gives out, without decoding it (it may hold user exception classes).
``_submit`` builds the create and call messages.

What the actor's worker needs besides the class travels with it, as the
blob registered under the class's key: the class alone, or an
``ActorBlueprint`` (class + concurrency groups) when it has groups; Ray
fixes them per class (``.options()`` may not change them), so the blob can
carry them.  ``_actor_runtime`` runs the actor from that blob.

As in Ray, every handle also has three built-in methods
(``__ray_ready__``, ``__ray_terminate__``, ``__ray_call__``), which the
actor's worker implements (``_actor_runtime``).
"""
from __future__ import annotations

import inspect

from . import _runtime
from ._ids import ObjectRef
from ._options import actor_shape, plain_str, validate_actor_options, validate_method_options
from ._scheduling_strategy import strategy_wire
from ._submit import (Signature, call_actor, create_actor, decode_meta, encode_meta,
                      encode_retry_exc, forever, function_blob, pack_args)
from .exceptions import ActorExit, AsyncioActorExit

__all__ = ["ActorClass", "ActorHandle", "ActorMethod", "ActorBlueprint",
           "ActorClassInheritanceException", "method", "exit_actor"]

_local_classes: dict = {}   # class key -> class, for argument checks in this process

# Ray's built-in methods of every actor handle: name -> the method's options.
BUILTIN_METHODS = {"__ray_ready__": {}, "__ray_terminate__": {}, "__ray_call__": {}}


class ActorClassInheritanceException(TypeError):
    """A class statement tried to subclass an actor class (Ray's name)."""


def exit_actor():
    """End the actor this is called from: the current call fails with
    ActorDiedError, so do its queued and later calls; it is not restarted,
    and atexit handlers run in its process.

    It raises (``ActorExit``, or ``AsyncioActorExit`` in an async actor, as
    Ray does) so that the method stops here; the actor ends even if the
    method catches that exception, and even when called from an asyncio
    task that is not a call."""
    rt = _runtime.current_or_none()
    state = rt.worker_state if rt is not None else None
    if state is None or state.actor_id is None:
        raise TypeError("exit_actor API is called on a non-actor worker: exit_actor() ends the "
                        "current actor, so it can only be called inside an actor method; to "
                        "end an actor from outside use miniray.kill(handle)")
    state.request_exit()
    if state.actor_is_async:
        raise AsyncioActorExit()
    raise ActorExit()


def method(*args, **options):
    """``@miniray.method(num_returns=2)`` on an actor method."""
    if args and callable(args[0]) and not options:
        return args[0]
    validate_method_options(options)
    group = options.get("concurrency_group")
    if group is not None:
        options["concurrency_group"] = plain_str(group, "concurrency_group")

    def decorate(fn):
        fn.__miniray_method_options__ = options
        return fn
    return decorate


def _method_table(cls) -> dict:
    """name -> options of each public method, as they travel in the actor's
    meta: ``retry_exceptions`` already in its wire form (see ``_submit``)."""
    methods = {}
    for name, fn in inspect.getmembers(cls, predicate=callable):
        if name.startswith("__") and name not in ("__call__",):
            continue
        opts = dict(getattr(fn, "__miniray_method_options__", None) or
                    getattr(fn, "__ray_method_options__", None) or {})
        if "retry_exceptions" in opts:
            opts["retry_exceptions"] = encode_retry_exc(
                opts["retry_exceptions"], f"'{cls.__qualname__}.{name}'")
        opts["is_async"] = inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)
        methods[name] = opts
    return methods


def _check_concurrency_groups(groups, class_name) -> dict:
    """``concurrency_groups`` as ``{name: max_concurrency}`` of plain builtins."""
    if groups is None:
        return {}
    example = "for example concurrency_groups={'io': 2, 'compute': 4}"
    if not isinstance(groups, dict):
        raise TypeError(f"concurrency_groups of actor class '{class_name}' must be a dict of "
                        f"group name -> max_concurrency, {example}; got "
                        f"{type(groups).__name__}: {groups!r}")
    out = {}
    for name, limit in groups.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"concurrency group names must be non-empty strings, got {name!r} "
                            f"in the concurrency_groups of '{class_name}' ({example})")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"concurrency group '{name}' of '{class_name}' needs a "
                             f"max_concurrency that is an int >= 1, got {limit!r} ({example})")
        out[plain_str(name, "a concurrency group name")] = int(limit)
    return out


class ActorBlueprint:
    """The blob an actor's worker gets when the class has concurrency
    groups: the class and ``{group name: max_concurrency}``."""

    __slots__ = ("cls", "concurrency_groups")

    def __init__(self, cls, concurrency_groups):
        self.cls = cls
        self.concurrency_groups = concurrency_groups

    def __reduce__(self):
        return (ActorBlueprint, (self.cls, self.concurrency_groups))


class ActorClass:
    """What ``@remote`` makes of a class: ``Cls.remote(...)`` starts an actor.

    The class's own attributes, static methods and class methods stay
    reachable (``Cls.CONST``, ``Cls.factory()``), as on Ray's actor classes;
    subclassing an actor class is refused (``ActorClassInheritanceException``).
    """

    def __init__(self, cls, options=None, *class_body, **class_kwargs):
        if class_body or isinstance(cls, str):
            # ``class B(Foo):`` with Foo an actor class: Python calls
            # type(Foo)(name, bases, namespace), i.e. this.
            _refuse_subclass(cls, options)
        self._cls = cls
        self._name = str(cls.__qualname__)
        self._options = validate_actor_options(dict(options or {}))
        self._groups = _check_concurrency_groups(self._options.get("concurrency_groups"),
                                                 self._name)
        self._table = None        # the method table, read on first use (see _methods)
        self._key = None
        self._blob = None
        self._sig = None
        self.__doc__ = cls.__doc__
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__module__ = cls.__module__

    @property
    def _methods(self) -> dict:
        # Not in __init__: an actor class that refers to itself (an actor
        # creating actors of its own class) is rebuilt by cloudpickle as an
        # empty class first and filled in afterwards.
        if self._table is None:
            table = _method_table(self._cls)
            for name, opts in table.items():
                group = opts.get("concurrency_group")
                if group is not None and group not in self._groups:
                    raise ValueError(
                        f"method '{self._name}.{name}' is declared with concurrency_group="
                        f"'{group}', which actor class '{self._name}' does not define "
                        f"(its groups: {sorted(self._groups) or 'none'}). Add it to "
                        f"@remote(concurrency_groups={{'{group}': N, ...}}).")
            self._table = table
        return self._table

    @property
    def _is_async(self) -> bool:
        return any(m["is_async"] for m in self._methods.values())

    def __getattr__(self, name):
        # Only called for names this object lacks: the class's attributes,
        # static and class methods (Ray's actor class derives from the
        # user's class, so they are reachable there too).  Dunder names are
        # not forwarded: protocols (pickle, copy, class statements) must
        # see this object, not the class.
        cls = self.__dict__.get("_cls")
        if cls is None or (name.startswith("__") and name.endswith("__")):
            raise AttributeError(name)
        try:
            return getattr(cls, name)
        except AttributeError:
            raise AttributeError(f"actor class '{self._name}' has no attribute '{name}'") from None

    def __dir__(self):
        return sorted(set(object.__dir__(self)) | set(dir(self._cls)))

    def __call__(self, *args, **kwargs):
        raise TypeError(
            f"Actors cannot be instantiated directly: use {self._name}.remote(...) instead of "
            f"{self._name}(...). It returns a handle; call methods with "
            f"handle.method.remote(...).")

    def __repr__(self):
        return f"<miniray actor class {self._name}>"

    def options(self, **options):
        if "concurrency_groups" in options:
            raise ValueError("Setting 'concurrency_groups' is not supported in '.options()': "
                             "give them to the class's decorator, "
                             "@remote(concurrency_groups={...}), as in Ray.")
        merged = dict(self._options)
        merged.update(validate_actor_options(options))
        parent = self

        class _Options:
            def remote(self, *args, **kwargs):
                return parent._create(args, kwargs, merged)

            def bind(self, *args, **kwargs):
                return parent.bind(*args, **kwargs)
        return _Options()

    def remote(self, *args, **kwargs):
        return self._create(args, kwargs, self._options)

    def bind(self, *args, **kwargs):
        raise NotImplementedError("DAG building (.bind) is not supported by miniray; "
                                  f"use {self._name}.remote(...)")

    def _create(self, args, kwargs, opts):
        rt = _runtime.current_or_init()
        client = rt.client
        methods = self._methods
        sig = self._sig
        if sig is None:
            # Threads may create the first actor at once: the signature is
            # set last, and is what the others test.
            shipped = ActorBlueprint(self._cls, self._groups) if self._groups else self._cls
            self._key, self._blob = function_blob(shipped, f"actor class '{self._name}'")
            _local_classes[self._key] = self._cls
            sig = self._sig = Signature(self._cls)
        sig.check(self._name, args, kwargs)
        client.register_function(self._key, self._blob)
        packed = pack_args(client, args, kwargs, f"{self._name}.__init__", sig.bind)
        max_task_retries = opts.get("max_task_retries") or 0
        is_async = self._is_async
        max_concurrency = opts.get("max_concurrency") or (1000 if is_async else 1)
        # serial: one call at a time, in order (calls may skip the node: _client_direct)
        meta = encode_meta({"class_name": self._name, "key": self._key,
                            "methods": methods, "max_task_retries": max_task_retries,
                            "is_async": is_async, "concurrency_groups": sorted(self._groups),
                            "serial": not is_async and not self._groups and max_concurrency <= 1},
                           f"actor class '{self._name}'")
        aid, meta, created = create_actor(
            client, self._key, self._name, packed, actor_shape(opts),
            is_async=is_async,
            max_concurrency=max_concurrency,
            namespace=opts.get("namespace", rt.namespace), name=opts.get("name"),
            get_if_exists=opts.get("get_if_exists", False), lifetime=opts.get("lifetime"),
            max_restarts=opts.get("max_restarts") or 0, max_task_retries=max_task_retries,
            meta=meta, job_id=rt.job_id, concurrency_groups=self._groups,
            strategy=strategy_wire(opts.get("scheduling_strategy")))
        return ActorHandle(ObjectRef(aid, _owned=created), meta)

    def __reduce__(self):
        return (ActorClass, (self._cls, self._options))


def _refuse_subclass(name, bases):
    for base in bases if isinstance(bases, tuple) else ():
        if isinstance(base, ActorClass):
            raise ActorClassInheritanceException(
                f"Attempted to define subclass '{name}' of actor class '{base._name}'. "
                f"Inheriting from actor classes is not currently supported. You can instead "
                f"inherit from a non-actor base class and make the derived class an actor "
                f"class (with @ray.remote).")
    raise TypeError("ActorClass is made by @miniray.remote on a class, not called directly")


class ActorHandle:
    """A handle to an actor; call ``handle.method.remote(...)``.

    It keeps the actor's meta as the bytes the node returned (that is what
    pickles with the handle) and reads the decoded dict, shared by every
    handle with the same bytes."""

    def __init__(self, ref, meta: bytes, *, _aid: bytes = None):
        """``ref`` keeps the actor alive (an ObjectRef to its id); a handle
        from ``get_actor`` has none (``ref=None``, ``_aid``): as in Ray, it
        does not keep a non-detached actor alive once its creator's handles
        are gone."""
        self._ref = ref
        self._aid = ref.id if ref is not None else _aid
        self._meta_blob = meta
        self._meta = decode_meta(meta)

    @property
    def _actor_id(self) -> bytes:
        return self._aid

    def __getattr__(self, name):
        # A fresh ActorMethod each time, holding the handle: the handle
        # never holds its methods, so no handle <-> method cycle keeps an
        # actor (and its resources) alive until the cyclic GC runs, and a
        # temporary handle (``A.remote().f.remote()``) lives through the call.
        if name.startswith("_"):
            info = BUILTIN_METHODS.get(name)
            if info is None:
                raise AttributeError(name)
            return ActorMethod(self, name, info)
        info = self._meta["methods"].get(name)
        if info is None:
            raise AttributeError(
                f"actor {self._meta['class_name']} has no method '{name}'. Its methods: "
                f"{', '.join(sorted(self._meta['methods'])) or 'none'}")
        return ActorMethod(self, name, info)

    def __repr__(self):
        return f"Actor({self._meta['class_name']}, {self._aid.hex()})"

    def __eq__(self, other):
        return isinstance(other, ActorHandle) and other._aid == self._aid

    def __hash__(self):
        return hash(self._aid)

    def __reduce__(self):
        if self._ref is None:
            return (_named_handle, (self._aid, self._meta_blob))
        return (ActorHandle, (self._ref, self._meta_blob))


def _named_handle(aid, meta):
    return ActorHandle(None, meta, _aid=aid)


class ActorMethod:
    def __init__(self, handle, name, info, options=None):
        self._handle = handle
        self._name = name
        self._info = info
        self._options = options
        meta = handle._meta
        # The spec fields fixed by the method's options: (num_returns,
        # retries, retry_exc in its wire form), computed once per method of
        # a decoded meta (shared by its handles) and once per .options().
        cache = None if options else meta.setdefault("_per_method", {})
        hit = cache.get(name) if cache is not None else None
        if hit is None:
            qualname = f"{meta['class_name']}.{name}"
            opts = options or {}
            retry_exc = info.get("retry_exceptions", False)
            if "retry_exceptions" in opts:
                retry_exc = encode_retry_exc(opts["retry_exceptions"], f"'{qualname}'")
            hit = (qualname, (
                opts.get("num_returns", info.get("num_returns", 1)),
                forever(opts.get("max_task_retries",
                                 info.get("max_task_retries", meta["max_task_retries"]))),
                retry_exc))
            if cache is not None:
                cache[name] = hit
        self._qualname, self._fixed = hit

    def __call__(self, *args, **kwargs):
        raise TypeError(f"Actor methods cannot be called directly: use "
                        f"handle.{self._name}.remote(...) instead of handle.{self._name}(...).")

    def options(self, **options):
        validate_method_options(options)
        group = options.get("concurrency_group")
        if group is not None:
            options["concurrency_group"] = self._check_group(group)
        merged = dict(self._options or {})
        merged.update(options)
        return ActorMethod(self._handle, self._name, self._info, merged)

    def _check_group(self, group) -> str:
        group = plain_str(group, "concurrency_group")
        meta = self._handle._meta
        known = meta.get("concurrency_groups")
        if known is not None and group not in known:      # None: a meta made without them
            raise ValueError(
                f"{self._qualname}.options(concurrency_group='{group}'): actor class "
                f"'{meta['class_name']}' has no concurrency group '{group}' (its groups: "
                f"{', '.join(known) or 'none'}; declare them with "
                f"@remote(concurrency_groups={{...}})).")
        return group

    def remote(self, *args, **kwargs):
        rt = _runtime.current_or_init()
        client = rt.client
        meta = self._handle._meta
        cls = _local_classes.get(meta["key"])
        bind = None
        if cls is not None:
            fn = getattr(cls, self._name, None)
            if fn is not None:
                sig = _method_signature(cls, self._name, fn)
                if sig is not None:
                    # Call shapes that bound once bind again (binding looks
                    # at nothing else, and costs as much as the rest of a call).
                    shape = (len(args), tuple(kwargs)) if kwargs else len(args)
                    fits = _sig_fits.setdefault((cls, self._name), set())
                    if shape not in fits:
                        try:
                            sig.bind(*args, **kwargs)
                        except TypeError as exc:
                            raise TypeError(f"{self._qualname}.remote(): {exc} "
                                            f"(signature: {self._name}{sig})") from None
                        if len(fits) < 64:
                            fits.add(shape)
                    bind = sig.bind
        packed = pack_args(client, args, kwargs, f"'{self._qualname}'", bind)
        opts = self._options
        group = opts.get("concurrency_group") if opts else None
        name = (opts.get("name") if opts else None) or self._qualname
        return call_actor(client, self._handle._aid, meta["key"], name, self._name, packed,
                          self._fixed, {"concurrency_group": group} if group else None,
                          meta.get("serial", False))


_sig_cache: dict = {}
_sig_fits: dict = {}     # (class, method) -> call shapes known to bind


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
