"""Building tasks on the client: arguments, specs, and the three messages
that start work (SUBMIT, ACTOR_CREATE, ACTOR_CALL).

    RemoteFunction.remote / ActorClass.remote / ActorMethod.remote
        -> pack_args          args -> inline bytes or an arena object, deps, pins
        -> task_spec(kind)    the one builder of the wire tuple (``_task_spec``)
        -> submit_task | create_actor | call_actor    one message to the node

Everything user-defined that the node must route travels as bytes made here
and decoded only by the process that needs it: the node decodes frames with
an unpickler that refuses every class.  So ``RETRY_EXC`` is False, True or
``encode_retry_exc``'s bytes (decoded by the worker), an actor's meta (class
name, methods table, per-method options) is ``encode_meta``'s bytes
(decoded by clients with ``decode_meta``), and every other field is built
from builtins (names are exact ``str``, counts ``int``, shapes
``(str, float)`` pairs; ``_options`` normalizes them).

This module sits below ``remote_function``, ``actor`` and ``api`` and
imports nothing from them (``_runtime``, below it, gives FIRST_JOB and
user_stacklevel).
"""
from __future__ import annotations

import functools
import inspect
import os
import warnings

from . import _serialization as ser
from ._call_site import note as note_call_site
from ._ids import ObjectRef, new_task_id, object_id_for
from ._protocol import M
from ._transport import _blake2b
from ._runtime import FIRST_JOB, user_stacklevel
from ._task_kind import ACTOR_INIT, TaskKind
from ._task_spec import TASK_ID
from .exceptions import SerializationError

__all__ = ["TaskKind", "function_blob", "Signature", "pack_args", "encode_retry_exc",
           "encode_meta", "decode_meta", "task_spec", "submit_task", "create_actor",
           "call_actor", "return_refs", "forever", "FOREVER", "ACTOR_ID_INDEX", "job_extra"]

_TASK, _CREATE, _CALL = TaskKind.TASK, TaskKind.ACTOR_CREATE, TaskKind.ACTOR_CALL
_SUBMIT, _ACTOR_CREATE, _ACTOR_CALL = M.SUBMIT, M.ACTOR_CREATE, M.ACTOR_CALL
# An actor id doubles as an object id (its handles are counted like refs);
# index 0xFFFF is one no task return uses.
ACTOR_ID_INDEX = 0xFFFF
FOREVER = 1 << 30         # what -1 ("retry forever") means in a count the node decrements
# Ray's limits on a serialized function or class (bytes): above the first a
# warning, from the second (env FUNCTION_SIZE_ERROR_THRESHOLD, as in Ray) an
# error.  Such a blob is nearly always a large array captured by accident; it
# would be kept by the node and sent to every worker that runs the function.
FUNCTION_SIZE_WARN_THRESHOLD = 10**7
FUNCTION_SIZE_ERROR_THRESHOLD = 10**8
_PUT_TIP = ("Check that its definition is not implicitly capturing a large array or other "
            "object in scope. Tip: use ray.put() to put large objects in the Ray object "
            "store, and pass the ref as an argument.")


def function_blob(fn, what):
    """Serialize a function or class once; returns (key, blob).  ``what``
    names it in messages ("remote function 'f'")."""
    blob = ser.dumps(fn, where=what)
    _check_blob_size(len(blob), what)
    return _blake2b(blob, digest_size=16).digest(), blob


def _check_blob_size(size, what):
    limit = int(os.environ.get("FUNCTION_SIZE_ERROR_THRESHOLD") or FUNCTION_SIZE_ERROR_THRESHOLD)
    mib = size // 2**20
    if size >= limit:
        raise ValueError(f"The {what} is too large ({mib} MiB > FUNCTION_SIZE_ERROR_THRESHOLD="
                         f"{limit // 2**20} MiB). {_PUT_TIP}")
    if size > FUNCTION_SIZE_WARN_THRESHOLD:
        warnings.warn(f"The {what} is very large ({mib} MiB). {_PUT_TIP}", UserWarning,
                      stacklevel=user_stacklevel())


class Signature:
    """Checks call arguments against the callable's signature, cheaply."""

    __slots__ = ("sig", "fits")

    def __init__(self, fn):
        try:
            self.sig = inspect.signature(fn)
        except (TypeError, ValueError):
            self.sig = None
        # Call shapes (number of positional args, keyword names) that bind:
        # binding looks at nothing else, and costs more than a submit.
        self.fits = set()

    def check(self, name, args, kwargs):
        if self.sig is None:
            return
        shape = (len(args), tuple(kwargs)) if kwargs else len(args)
        if shape in self.fits:
            return
        try:
            self.sig.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{name}.remote(): {exc} (signature: {name}{self.sig})") from None
        if len(self.fits) < 64:
            self.fits.add(shape)

    @property
    def bind(self):
        """``sig.bind`` (to name a bad argument), or None if unknown."""
        return self.sig.bind if self.sig is not None else None


def forever(n: int) -> int:
    return FOREVER if n == -1 else n


# -- arguments ------------------------------------------------------------------------------

_EMPTY_ARGS = None


def pack_args(client, args, kwargs, describe, bind=None):
    """Serialize call arguments.  Top-level ObjectRefs become dependencies
    (their values replace them before the call); nested refs stay refs.

    Returns (inline_payload | None, args_oid | None, deps, pins).
    """
    global _EMPTY_ARGS
    client.check_serializers()      # (also for a call without args: its result uses them)
    if not args and not kwargs:
        if _EMPTY_ARGS is None:
            _EMPTY_ARGS = ser.dumps(([], {}, []))
        return _EMPTY_ARGS, None, [], None
    deps = []
    positions = []
    args_list = list(args)
    for i, a in enumerate(args_list):
        if type(a) is ObjectRef:
            deps.append(a._id)
            positions.append(i)
            args_list[i] = None
    if kwargs:
        kwargs = dict(kwargs)
        for k, v in kwargs.items():
            if type(v) is ObjectRef:
                deps.append(v._id)
                positions.append(k)
                kwargs[k] = None
    try:
        sobj = ser.serialize((args_list, kwargs, positions), where=f"the arguments of {describe}")
    except SerializationError as exc:
        raise _name_bad_argument(args, kwargs, describe, bind) or exc from None
    pins = sobj.contained_refs or None
    size = ser.encoded_size(sobj)
    if size <= client.inline_threshold:
        return ser.to_bytes(sobj), None, deps, pins
    oid = object_id_for(new_task_id(), 0)
    client.store(oid, sobj, hold=False)
    return None, oid, deps, pins


def _name_bad_argument(args, kwargs, describe, bind):
    """Re-serialize argument by argument to name the one that fails."""
    named = []
    if bind is not None:
        try:
            named = list(bind(*args, **kwargs).arguments.items())
        except TypeError:
            named = []
    if not named:
        named = [(f"#{i}", a) for i, a in enumerate(args)] + list(kwargs.items())
    for name, value in named:
        try:
            ser.serialize(value, where=f"arg '{name}' of {describe}")
        except SerializationError as exc:
            return exc
    return None


# -- user-defined values the node routes but never decodes ------------------------------------

def encode_retry_exc(value, describe):
    """The wire form of ``retry_exceptions``: False, True, or the bytes of
    the tuple of exception classes (``_serialization.dumps``; the worker
    turns them back with ``loads_from``).  Computed once per options set."""
    if isinstance(value, (list, tuple)):
        if not value:
            return False
        return ser.dumps(tuple(value), where=f"retry_exceptions of {describe}")
    return bool(value)


def encode_meta(meta: dict, describe) -> bytes:
    """An actor's meta as the bytes the node stores and hands back."""
    return ser.dumps(meta, where=f"the method table of {describe}")


@functools.lru_cache(maxsize=256)
def decode_meta(blob: bytes) -> dict:
    """The meta of an actor (every handle of one actor class shares one
    decoded dict, so handles that arrive in args decode it once).  Read only."""
    return ser.loads_from(blob)


# -- the spec builder ---------------------------------------------------------------------------

def task_spec(kind, key, name, packed, num_returns, shape, retries, retry_exc, *,
              actor_id=None, method=None, extra=None) -> tuple:
    """The wire tuple of a task of ``kind`` (fields in ``_task_spec`` order).

    ``packed`` is what ``pack_args`` returned.  The kind is encoded by
    ``ACTOR_ID`` and ``METHOD`` (see ``_task_kind``); ``extra`` holds
    builtins only.
    """
    if kind is _TASK:
        if actor_id is not None or method is not None:
            raise ValueError("a function task has no actor id or method")
    elif kind is _CREATE:
        if actor_id is None or method is not None:
            raise ValueError("an actor creation needs the actor id and no method")
        method = ACTOR_INIT
    elif kind is _CALL:
        if actor_id is None or method is None or method == ACTOR_INIT:
            raise ValueError(f"an actor call needs the actor id and a method, got {method!r}")
    else:
        raise ValueError(f"unknown task kind {kind!r}")
    payload, args_oid, deps, pins = packed
    # An actor call's id says so (``_ids.is_actor_call``), in every process.
    return (new_task_id(kind is _CALL),   # TASK_ID
            key,             # FN_KEY
            name,            # NAME
            payload,         # ARGS
            args_oid,        # ARGS_OID
            deps,            # DEPS
            num_returns,     # NUM_RETURNS
            shape,           # RESOURCES
            retries,         # MAX_RETRIES
            retry_exc,       # RETRY_EXC
            pins,            # PINS
            actor_id,        # ACTOR_ID
            method,          # METHOD
            extra)           # EXTRA


def return_refs(tid: bytes, n: int):
    """What ``.remote()`` returns for a task that makes ``n`` objects."""
    if n == 1:
        return ObjectRef(tid + b"\x00\x00", _owned=True)
    if n == 0:
        return None
    return [ObjectRef(tid + i.to_bytes(2, "little"), _owned=True) for i in range(n)]


# -- the three messages -------------------------------------------------------------------------

def job_extra(namespace, job_id, extra=None):
    """EXTRA of a task of job ``job_id`` in ``namespace``: None when there is
    nothing to say (no namespace, the first job), the common case that
    costs no bytes; a worker reads a missing job as the first one
    (``_runtime.job_of``)."""
    if namespace is not None:
        extra = dict(extra or (), namespace=namespace)
    if job_id != FIRST_JOB:
        extra = dict(extra or (), job_id=job_id)
    return extra


def submit_task(client, key, name, packed, fixed, namespace, job_id=FIRST_JOB, blob=None):
    """SUBMIT a function task; ``fixed`` = (num_returns, shape, retries,
    retry_exc, extra) from the options (extra: strategy, max_calls, or
    None).  ``blob``: the function's code (a leased worker may need it).
    Returns its refs."""
    n, shape, retries, retry_exc, node_opts = fixed
    extra = node_opts
    if namespace is not None or job_id != FIRST_JOB:
        extra = job_extra(namespace, job_id, extra)
    spec = task_spec(_TASK, key, name, packed, n, shape, retries, retry_exc, extra=extra)
    tid = spec[TASK_ID]
    if client.record_sites:          # RAY_record_ref_creation_sites=1 (off: nothing)
        note_call_site(client, tid)
    refs = return_refs(tid, n)     # first: a direct answer is kept only for refs held
    # Straight to a worker leased for its shape (``_client_direct``): inline
    # args, no top-level refs, no options the node acts on.
    direct = client.direct
    if direct.leases and type(n) is int and n and node_opts is None and \
            packed[0] is not None and not packed[2] and direct.call_task(spec, n, blob):
        return refs
    client.send_later((_SUBMIT, spec))
    return refs


def create_actor(client, key, class_name, packed, shape, *, is_async, max_concurrency,
                 namespace, name, get_if_exists, lifetime, max_restarts, max_task_retries,
                 meta: bytes, job_id=FIRST_JOB, concurrency_groups=None, strategy=None):
    """ACTOR_CREATE and wait for the node's answer: (actor id, meta bytes,
    created) where created is False when ``get_if_exists`` found a live one."""
    if type(meta) is not bytes:
        raise TypeError("actor meta must travel as bytes (see encode_meta)")
    aid = object_id_for(new_task_id(), ACTOR_ID_INDEX)
    # The actor's process runs in its namespace (get_actor and named actors
    # created from its methods use it), as Ray's do.
    extra = {"is_async": is_async, "max_concurrency": max_concurrency, "namespace": namespace}
    if job_id != FIRST_JOB:
        extra["job_id"] = job_id        # its calls run in this job (``_runtime.job_of``)
    if concurrency_groups:
        # The node then knows calls may run side by side (cancel, ordering).
        extra["concurrency_groups"] = dict(concurrency_groups)
    if strategy is not None:
        extra["strategy"] = strategy
    spec = task_spec(_CREATE, key, class_name, packed, 0, shape, 0, False, actor_id=aid,
                     extra=extra)
    node_opts = {"name": name, "namespace": namespace, "get_if_exists": get_if_exists,
                 "lifetime": lifetime, "max_restarts": forever(max_restarts),
                 "max_task_retries": forever(max_task_retries), "meta": meta}
    client.check_serializers()
    if client.record_sites:
        note_call_site(client, aid)
    ok, payload = client.request(lambda rid: (_ACTOR_CREATE, rid, spec, node_opts))
    if not ok:
        raise payload
    return payload


def call_actor(client, actor_id, key, qualname, method, packed, fixed, extra=None,
               serial=False):
    """ACTOR_CALL; ``fixed`` = (num_returns, retries, retry_exc) of the
    method; ``extra``: e.g. the call's concurrency group; ``serial``: the
    actor runs one call at a time (such calls may go straight to it:
    ``_client_direct``).  Returns its refs."""
    n, retries, retry_exc = fixed
    spec = task_spec(_CALL, key, qualname, packed, n, (), retries, retry_exc,
                     actor_id=actor_id, method=method, extra=extra)
    tid = spec[TASK_ID]
    if client.record_sites:
        note_call_site(client, tid)
    refs = return_refs(tid, n)     # first: a direct answer is kept only for refs held
    if serial:
        direct = client.direct
        if direct.enabled:
            # Inline args, no top-level refs, no options the node acts on.
            if n and packed[0] is not None and not packed[2] and extra is None and \
                    direct.call(spec, n):
                return refs
            direct.went_through_node(actor_id)
    client.send_later((_ACTOR_CALL, spec))
    return refs
