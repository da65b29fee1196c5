"""The public error hierarchy, with Ray's class names.

Every error a caller can see derives from :class:`RayError`.  A task that
raised re-raises on ``get`` as an instance of *both* :class:`RayTaskError` and
the user's own exception class (see :meth:`RayTaskError.as_instanceof_cause`),
so ``except ValueError`` and ``except RayTaskError`` both catch it.

This module sits at the bottom of the import graph: it imports nothing from
miniray.
"""
from __future__ import annotations

__all__ = [
    "RayError", "RaySystemError", "RayTaskError", "TaskCancelledError",
    "WorkerCrashedError", "GetTimeoutError", "ObjectStoreFullError",
    "ObjectLostError", "OwnerDiedError", "ObjectFreedError",
    "RayActorError", "ActorDiedError", "ActorUnavailableError",
    "ActorUnschedulableError", "TaskUnschedulableError",
    "SerializationError", "RuntimeNotInitializedError", "NodeDiedError", "ActorExit",
]


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


class RayTaskError(RayError):
    """A task or actor method raised.  ``cause`` is the original exception;
    ``traceback_str`` the remote traceback."""

    def __init__(self, function_name="<unknown>", traceback_str="", cause=None,
                 proctitle=None, pid=None, ip=None, cause_cls=None):
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.pid = pid
        self.ip = ip
        self.proctitle = proctitle
        self._cause_cls = cause_cls if cause_cls is not None else (
            type(cause) if cause is not None else None)
        RayError.__init__(self, self._message())

    def _message(self):
        where = f" (pid={self.pid})" if self.pid is not None else ""
        return (f"{self._cause_name()} in task '{self.function_name}'{where}\n"
                f"{self.traceback_str.rstrip()}")

    def _cause_name(self):
        cls = self._cause_cls
        return cls.__name__ if cls is not None else "Error"

    def __str__(self):
        return self._message()

    def as_instanceof_cause(self):
        """Return an error that is an instance of both RayTaskError and the
        cause's class, carrying the cause's attributes."""
        cause_cls = self._cause_cls
        if cause_cls is None or not isinstance(cause_cls, type) or \
                issubclass(cause_cls, RayTaskError) or \
                not issubclass(cause_cls, BaseException):
            return self
        return _dual_instance(self, cause_cls)

    def __reduce__(self):
        return (_rebuild_task_error, (self.function_name, self.traceback_str,
                                      _pack_exception(self.cause), self.pid, self._cause_cls))


def _pack_exception(exc):
    """An exception as (class, args, attributes): rebuilt without calling
    its ``__init__``, whose signature often differs from ``args``."""
    if exc is None:
        return None
    state = getattr(exc, "__dict__", None)
    return (type(exc), exc.args, dict(state) if state else None)


def _unpack_exception(packed):
    if packed is None:
        return None
    cls, args, state = packed
    exc = cls.__new__(cls)
    exc.args = args
    if state:
        exc.__dict__.update(state)
    return exc


def _rebuild_task_error(function_name, traceback_str, cause, pid, cause_cls):
    return RayTaskError(function_name, traceback_str, _unpack_exception(cause), pid=pid,
                        cause_cls=cause_cls)


_dual_classes: dict = {}


def _dual_instance(task_error: RayTaskError, cause_cls: type):
    cls = _dual_classes.get(cause_cls)
    if cls is None:
        try:
            cls = type(f"RayTaskError({cause_cls.__name__})", (RayTaskError, cause_cls),
                       {"__module__": cause_cls.__module__,
                        "__init__": _dual_init,
                        "__str__": RayTaskError.__str__,
                        "__reduce__": RayTaskError.__reduce__})
        except TypeError:
            # Layout conflicts (e.g. some C exception types) cannot be mixed
            # in; the caller still gets a RayTaskError with the text.
            return task_error
        _dual_classes[cause_cls] = cls
    err = cls.__new__(cls)
    cause = task_error.cause
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
    err.function_name = task_error.function_name
    err.traceback_str = task_error.traceback_str
    err.cause = cause
    err.pid = task_error.pid
    err.ip = task_error.ip
    err.proctitle = task_error.proctitle
    err._cause_cls = cause_cls
    return err


def _dual_init(self, *args, **kwargs):  # pragma: no cover - never called directly
    RayTaskError.__init__(self, *args, **kwargs)
