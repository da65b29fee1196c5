"""``@remote`` functions: the handle users call ``.remote()`` on."""
from __future__ import annotations

import hashlib
import inspect

from . import _runtime
from . import _serialization as ser
from ._ids import ObjectRef, new_task_id
from ._options import task_shape, validate_task_options
from ._protocol import M

__all__ = ["RemoteFunction"]

DEFAULT_MAX_RETRIES = 3
SUBMIT = M.SUBMIT


def function_blob(fn, what):
    """Serialize a function or class once; returns (key, blob)."""
    blob = ser.dumps(fn, where=what)
    return hashlib.blake2b(blob, digest_size=16).digest(), blob


class _Signature:
    """Checks call arguments against the function's signature, cheaply."""

    __slots__ = ("sig",)

    def __init__(self, fn):
        try:
            self.sig = inspect.signature(fn)
        except (TypeError, ValueError):
            self.sig = None

    def check(self, name, args, kwargs):
        if self.sig is None:
            return
        try:
            self.sig.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{name}.remote(): {exc} (signature: {name}{self.sig})") from None

    def bind(self, *args, **kwargs):
        return self.sig.bind(*args, **kwargs)


class RemoteFunction:
    def __init__(self, fn, options=None):
        if not callable(fn):
            raise TypeError(f"@remote needs a function or class, got {type(fn).__name__}")
        self._function = fn
        self._name = getattr(fn, "__qualname__", getattr(fn, "__name__", "function"))
        self._options = validate_task_options(dict(options or {}))
        self._fixed = _fixed_fields(self._options)
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
        fixed = _fixed_fields(merged)
        parent = self

        class _Options:
            def remote(self, *args, **kwargs):
                return parent._submit(args, kwargs, fixed)

            def __call__(self, *args, **kwargs):
                return parent(*args, **kwargs)

        return _Options()

    def remote(self, *args, **kwargs):
        return self._submit(args, kwargs, self._fixed)

    def bind(self, *args, **kwargs):
        raise NotImplementedError("DAG building (.bind) is not supported by miniray; use .remote()")

    def _submit(self, args, kwargs, fixed):
        rt = _runtime.current_or_init()
        client = rt.client
        if self._key is None:
            self._key, self._blob = function_blob(self._function, f"remote function '{self._name}'")
            self._sig = _Signature(self._function)
        self._sig.check(self._name, args, kwargs)
        client.register_function(self._key, self._blob)
        payload, args_oid, deps, pins = _runtime.pack_args(
            rt, args, kwargs, f"'{self._name}'", self._sig.bind if self._sig.sig else None)
        n, shape, retries, retry_exc = fixed
        tid = new_task_id()
        extra = None if rt.namespace is None else {"namespace": rt.namespace}
        spec = (tid, self._key, self._name, payload, args_oid, deps, n, shape,
                retries, retry_exc, pins, None, None, extra)
        client.send_later((SUBMIT, spec))
        if n == 1:
            return ObjectRef(tid + b"\x00\x00", _owned=True)
        if n == 0:
            return None
        return [ObjectRef(tid + i.to_bytes(2, "little"), _owned=True) for i in range(n)]

    def __reduce__(self):
        return (_rebuild, (self._function, self._options))


def _fixed_fields(opts):
    """The spec fields that depend only on the options, computed once per
    options set instead of on every submit: (num_returns, resource shape,
    retries, retry_exceptions)."""
    retries = opts.get("max_retries", DEFAULT_MAX_RETRIES)
    if retries == -1:
        retries = 1 << 30
    retry_exc = opts.get("retry_exceptions") or False
    if isinstance(retry_exc, list):
        retry_exc = tuple(retry_exc)
    return opts.get("num_returns", 1), task_shape(opts), retries, retry_exc


def _rebuild(fn, options):
    return RemoteFunction(fn, options)

