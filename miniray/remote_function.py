"""``@remote`` functions: the handle users call ``.remote()`` on.

A ``RemoteFunction`` serializes its function once (on the first call), keeps
the spec fields that depend only on its options (computed once per options
set), and hands each call to ``_submit``, which packs the arguments and
sends one SUBMIT.  The task's name is ``name=`` if given, else the
function's qualified name: it is what ``get_task_name()``, worker output
prefixes and error headers show.
"""
from __future__ import annotations

import inspect

from . import _runtime
from ._options import plain_str, task_shape, validate_task_options
from ._submit import Signature, forever, function_blob, pack_args, encode_retry_exc, submit_task
from ._scheduling_strategy import strategy_wire

__all__ = ["RemoteFunction"]

DEFAULT_MAX_RETRIES = 3


class RemoteFunction:
    def __init__(self, fn, options=None):
        if not callable(fn):
            raise TypeError(f"@remote needs a function or class, got {type(fn).__name__}")
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
            raise ValueError(
                "'async def' should not be used for remote tasks. You can wrap the async "
                "function with `asyncio.run(f())`, or make it a method of an async actor "
                "(a class with async def methods). See "
                "https://docs.ray.io/en/latest/ray-core/actors/async_api.html")
        self._function = fn
        # A plain str: the name travels in the spec, which the node decodes.
        self._name = str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
                         or "function")
        self._options = validate_task_options(dict(options or {}))
        self._fixed = _fixed_fields(self._options, self._name)
        self._task_name = _task_name(self._options, self._name)
        self._key = None
        self._blob = None
        self._sig = None
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", self._name)
        self.__wrapped__ = fn

    def __call__(self, *args, **kwargs):
        raise TypeError(
            f"Remote functions cannot be called directly: use {self._name}.remote(...) "
            f"instead of {self._name}(...), and miniray.get() on the ref it returns. "
            f"(The plain function is {self._name}.__wrapped__.)")

    def __repr__(self):
        return f"<miniray remote function {self._name}>"

    def options(self, **options):
        merged = dict(self._options)
        merged.update(validate_task_options(options))
        fixed = _fixed_fields(merged, self._name)
        task_name = _task_name(merged, self._name)
        parent = self

        class _Options:
            def remote(self, *args, **kwargs):
                return parent._submit(args, kwargs, fixed, task_name)

            def __call__(self, *args, **kwargs):
                return parent(*args, **kwargs)

        return _Options()

    def remote(self, *args, **kwargs):
        return self._submit(args, kwargs, self._fixed, self._task_name)

    def bind(self, *args, **kwargs):
        raise NotImplementedError("DAG building (.bind) is not supported by miniray; use .remote()")

    def _submit(self, args, kwargs, fixed, task_name):
        rt = _runtime.current_or_init()
        client = rt.client
        sig = self._sig
        if sig is None:
            # Threads may submit the first call at once: the signature is
            # set last, and is what the others test.
            self._key, self._blob = function_blob(self._function, f"remote function '{self._name}'")
            sig = self._sig = Signature(self._function)
        sig.check(self._name, args, kwargs)
        client.register_function(self._key, self._blob)
        packed = pack_args(client, args, kwargs, f"'{self._name}'", sig.bind)
        # (A runtime stand-in in unit tests has no job: it counts as the first.)
        job = getattr(rt, "job_id", _runtime.FIRST_JOB)
        return submit_task(client, self._key, task_name, packed, fixed, rt.namespace, job,
                           self._blob)

    def __reduce__(self):
        return (RemoteFunction, (self._function, self._options))


def _task_name(opts, name) -> str:
    """The task's name: ``name=`` if given (Ray's option), else the
    function's qualified name."""
    given = plain_str(opts.get("name"), "the task name (name=)", none_ok=True)
    return given or name


def _fixed_fields(opts, name):
    """The spec fields that depend only on the options, computed once per
    options set instead of on every submit: (num_returns, resource shape,
    retries, retry_exceptions in its wire form, scheduling strategy in its
    wire form)."""
    retries = forever(opts.get("max_retries", DEFAULT_MAX_RETRIES))
    retry_exc = encode_retry_exc(opts.get("retry_exceptions"), f"'{name}'")
    strategy = strategy_wire(opts.get("scheduling_strategy"))
    extra = {}
    if strategy is not None:
        extra["strategy"] = strategy
    if opts.get("max_calls"):
        extra["max_calls"] = int(opts["max_calls"])
    return opts.get("num_returns", 1), task_shape(opts), retries, retry_exc, extra or None
