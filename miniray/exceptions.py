"""The public error hierarchy, with Ray's class names.

Every error a caller can see derives from :class:`RayError`.  A task that
raised re-raises on ``get`` as an instance of *both* :class:`RayTaskError` and
the user's own exception class (see :meth:`RayTaskError.as_instanceof_cause`),
so ``except ValueError`` and ``except RayTaskError`` both catch it.

``str(RayTaskError)`` starts with Ray's header, which users' log parsers and
tests read, followed by the remote traceback without the runtime's own
frames::

    ray::f() (pid=4242, ip=127.0.0.1)
    Traceback (most recent call last):
      File "job.py", line 7, in f
        raise ValueError("bad input")
    ValueError: bad input

(``ray::A.f() (pid=..., ip=..., actor_id=..., repr=...)`` for an actor
method.)  A cause that cannot be serialized is replaced, where the error is
made, by a ``RayError`` that says so, so the caller still learns what
happened; an ``ExceptionGroup`` cause makes an error that is also an
``ExceptionGroup``, so ``except*`` works across the task boundary.

This module sits at the bottom of the import graph: it imports nothing from
miniray.  (The runtime may install a better serializability check with
``set_cause_check``.)
"""
from __future__ import annotations

import os

__all__ = [
    "RayError", "RaySystemError", "RayTaskError", "TaskCancelledError",
    "WorkerCrashedError", "GetTimeoutError", "ObjectStoreFullError",
    "ObjectLostError", "OwnerDiedError", "ObjectFreedError",
    "RayActorError", "ActorDiedError", "ActorUnavailableError",
    "ActorUnschedulableError", "TaskUnschedulableError",
    "SerializationError", "RuntimeNotInitializedError", "NodeDiedError", "ActorExit",
    "AsyncioActorExit",
]

# The address every miniray node reports today (``nodes()``, the ``node:``
# resource, ``util.get_node_ip_address``): the header of a task error shows it
# when its maker passes no ``ip``.
DEFAULT_NODE_IP = "127.0.0.1"


class RayError(Exception):
    """Base of every miniray error."""


class RaySystemError(RayError):
    """The runtime itself failed (a daemon died, a protocol broke)."""


class NodeDiedError(RaySystemError):
    """The node daemon is gone; nothing submitted to it can finish."""


class RuntimeNotInitializedError(RayError, RuntimeError):
    """A call needs a running runtime and none is started."""


class SerializationError(RayError, TypeError):
    """An object cannot be serialized.  The message names the path to the
    offending part (``arg 'model' -> .session -> ._lock: _thread.lock``)."""


class GetTimeoutError(RayError, TimeoutError):
    """``get`` or an actor call did not finish within its timeout."""


class TaskCancelledError(RayError):
    """The task was cancelled with ``miniray.cancel``."""

    def __init__(self, task_id=None, message=None):
        self.task_id = task_id
        super().__init__(message or (f"Task {task_id} was cancelled" if task_id else
                                     "This task or its dependency was cancelled"))

    def __reduce__(self):
        return (type(self), (self.task_id, str(self)))


class WorkerCrashedError(RayError):
    """The worker running the task died (exit, signal, segfault) and the
    task's retries are used up."""


class ObjectStoreFullError(RayError, MemoryError):
    """The shared-memory store cannot hold the object, even after freeing
    everything that nothing references."""


class ObjectLostError(RayError):
    """The object's value is gone and cannot be rebuilt."""


class OwnerDiedError(ObjectLostError):
    """The process that owned the object died."""


class ObjectFreedError(ObjectLostError):
    """The object was freed explicitly."""


class TaskUnschedulableError(RayError):
    """No node can ever satisfy the task's resource request."""


class RayActorError(RayError):
    """An actor cannot run the call: it died or could not be created."""

    def __init__(self, message="The actor died unexpectedly.", *, actor_id=None):
        self.actor_id = actor_id
        super().__init__(message)


class ActorDiedError(RayActorError):
    """The actor is dead: killed, crashed without restarts left, or its
    constructor failed."""


class ActorUnavailableError(RayActorError):
    """The actor is restarting; the call may be retried."""


class ActorUnschedulableError(RayActorError):
    """No node can ever satisfy the actor's resource request."""


class ActorExit(BaseException):
    """Raised by ``miniray.actor.exit_actor()`` to end the current actor.
    A BaseException, so ``except Exception`` in user code lets it pass."""


class AsyncioActorExit(RayError, ActorExit):
    """Raised by ``exit_actor()`` in an async actor (Ray's name).  A RayError,
    as in Ray, and an ActorExit, so the worker ends the actor the same way."""


class RayTaskError(RayError):
    """A task or actor method raised.

    ``cause`` is the original exception (or, when that could not be
    serialized, a ``RayError`` saying so), ``traceback_str`` the remote
    traceback; ``function_name``, ``pid``, ``ip``, ``actor_id`` (hex) and
    ``actor_repr`` name where it ran, for the header of ``str()``."""

    def __init__(self, function_name="<unknown>", traceback_str="", cause=None,
                 proctitle=None, pid=None, ip=None, actor_repr=None, actor_id=None, *,
                 cause_cls=None):
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.proctitle = proctitle or f"ray::{function_name}"
        self.pid = pid if pid is not None else os.getpid()
        self.ip = ip or DEFAULT_NODE_IP
        self.actor_repr = actor_repr
        self._actor_id = actor_id
        if cause is not None and cause_cls is None:
            cause = _serializable_cause(cause)
        self.cause = cause
        self._cause_cls = cause_cls if cause_cls is not None else (
            type(cause) if cause is not None else None)
        RayError.__init__(self, self._message())

    @property
    def actor_id(self):
        """Hex id of the actor whose method raised, or None for a task."""
        return self._actor_id

    def _message(self):
        return format_task_error(self.proctitle, self.pid, self.ip, self._actor_id,
                                 self.actor_repr, self.traceback_str)

    def __str__(self):
        return self._message()

    def as_instanceof_cause(self):
        """An error that is an instance of both RayTaskError and the cause's
        class (an ``ExceptionGroup`` too when the cause is one), carrying the
        cause's attributes; ``self`` when the cause's class cannot be mixed in
        or is already a base of RayTaskError."""
        cause_cls = self._cause_cls
        if cause_cls is None or not isinstance(cause_cls, type) or \
                not issubclass(cause_cls, BaseException) or \
                issubclass(cause_cls, RayTaskError) or issubclass(RayTaskError, cause_cls):
            return self
        return _dual_instance(self, cause_cls)

    def __reduce__(self):
        return (_rebuild_task_error, (self.function_name, self.traceback_str,
                                      _pack_exception(self.cause), self.pid, self._cause_cls,
                                      self.proctitle, self.ip, self.actor_repr,
                                      self._actor_id))


def format_task_error(proctitle, pid, ip, actor_id, actor_repr, traceback_str) -> str:
    """The text of a task error: Ray's header line, then the remote
    traceback without the frames of miniray's own files (the worker calling
    the task)."""
    header = f"{proctitle}() (pid={pid}, ip={ip}"
    if actor_id is not None:
        header += f", actor_id={actor_id}"
    if actor_repr is not None:
        header += f", repr={actor_repr}"
    out = [header + ")"]
    skipping = False
    for line in traceback_str.strip().split("\n"):
        if line.startswith("  File ") and _is_runtime_frame(line):
            skipping = True          # its code and caret lines follow, indented by 4
        elif skipping and line.startswith("    "):
            continue
        else:
            skipping = False
            out.append(line)
    return "\n".join(out)


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _is_runtime_frame(line: str) -> bool:
    """Is this ``  File "...", line N, in f`` line one of miniray's files?"""
    start = line.find('"')
    end = line.find('"', start + 1)
    return start >= 0 and line[start + 1:end].startswith(_PACKAGE_DIR)


# -- a cause that cannot travel ----------------------------------------------------------------

def _cloudpickle_round_trip(obj) -> None:
    import cloudpickle     # a third-party module, loaded only when a task fails
    cloudpickle.loads(cloudpickle.dumps(obj))


_cause_check = _cloudpickle_round_trip


def set_cause_check(check) -> None:
    """Install the round trip a cause must survive (``check(obj)`` raises if
    it cannot): the runtime's own serializer, which knows the custom
    serializers the user registered."""
    global _cause_check
    _cause_check = check if check is not None else _cloudpickle_round_trip


def _serializable_cause(cause):
    """``cause``, or, if it cannot make the trip to the caller (a lock or a
    socket in its attributes, a class that cannot be pickled), a RayError
    that says so, with the original's text: the caller learns what happened
    and why the original is not there, as in Ray."""
    try:
        _cause_check(_pack_exception(cause))
        return cause
    except Exception as exc:
        return RayError(
            f"The original cause of the RayTaskError ({type(cause)}) isn't serializable: "
            f"{type(exc).__name__}: {exc}. Overwriting the cause to a RayError. (Its "
            f"text: {_safe_str(cause)}) To keep it, make the exception picklable, e.g. "
            f"drop unpicklable attributes or define __reduce__.")


def _safe_str(exc) -> str:
    try:
        return f"{type(exc).__name__}: {exc}"
    except Exception:
        return type(exc).__name__


# -- packing a cause without calling its __init__ --------------------------------------------

def _pack_exception(exc):
    """An exception as (class, args, attributes): rebuilt without calling
    its ``__init__``, whose signature often differs from ``args``.  An
    exception group's members are packed the same way."""
    if exc is None:
        return None
    state = getattr(exc, "__dict__", None)
    args = exc.args
    if isinstance(exc, BaseExceptionGroup):
        args = (exc.message, [_pack_exception(e) for e in exc.exceptions])
        return (type(exc), args, dict(state) if state else None, True)
    return (type(exc), args, dict(state) if state else None)


def _unpack_exception(packed):
    if packed is None:
        return None
    cls, args, state = packed[:3]
    if len(packed) > 3:              # an exception group: __new__ needs its members
        message, members = args
        exc = cls.__new__(cls, message, [_unpack_exception(m) for m in members])
        exc.args = (message, list(exc.exceptions))
    else:
        exc = cls.__new__(cls)
        exc.args = args
    if state:
        exc.__dict__.update(state)
    return exc


def _rebuild_task_error(function_name, traceback_str, cause, pid, cause_cls, proctitle=None,
                        ip=None, actor_repr=None, actor_id=None):
    return RayTaskError(function_name, traceback_str, _unpack_exception(cause), proctitle,
                        pid, ip, actor_repr, actor_id, cause_cls=cause_cls)


# -- an error that is also an instance of the cause's class --------------------------------------

_dual_classes: dict = {}


def _dual_class(cause_cls: type):
    cls = _dual_classes.get(cause_cls)
    if cls is None:
        cls = type(f"RayTaskError({cause_cls.__name__})", (RayTaskError, cause_cls),
                   {"__module__": cause_cls.__module__,
                    "__init__": _dual_init,
                    "__str__": RayTaskError.__str__,
                    "__reduce__": RayTaskError.__reduce__})
        _dual_classes[cause_cls] = cls
    return cls


def _dual_instance(task_error: RayTaskError, cause_cls: type):
    cause = task_error.cause
    try:
        cls = _dual_class(cause_cls)
        if issubclass(cause_cls, BaseExceptionGroup):
            if cause is None:
                return task_error
            # A group's message and members live in its C struct, set by __new__.
            err = cls.__new__(cls, cause.message, cause.exceptions)
        else:
            err = cls.__new__(cls)
    except TypeError:
        # Layout conflicts (some C exception types), or a group the mix
        # cannot hold: the caller still gets a RayTaskError with the text.
        return task_error
    if cause is not None:
        # Keep the user's attributes (``err.code``, ``err.errno``...).
        try:
            err.__dict__.update(getattr(cause, "__dict__", {}))
        except Exception:
            pass
        try:
            err.args = cause.args
        except Exception:
            pass
    for name in ("function_name", "traceback_str", "cause", "pid", "ip", "proctitle",
                 "actor_repr", "_actor_id", "_cause_cls"):
        setattr(err, name, getattr(task_error, name))
    return err


def _dual_init(self, *args, **kwargs):  # pragma: no cover - never called directly
    RayTaskError.__init__(self, *args, **kwargs)
