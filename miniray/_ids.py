"""Identifiers and ObjectRef.

An object id is 16 bytes: the 14-byte id of the task (or put) that made it,
then a 2-byte return index.  Ids are made by the submitting process without a
round trip: a random per-process prefix and a counter.  The counter's top
bit marks an actor call (``new_task_id(actor_call=True)``), so any process
holding a ref can tell an actor call's result from a task's without asking
(``cancel(ref, force=True)`` is refused for actor calls, as in Ray).

ObjectRef counts its live instances per process through a *ref tracker* that
the runtime installs (``set_ref_tracker``); the tracker tells the node daemon
when this process starts and stops holding an id.  Before ``init`` the tracker
is a no-op, so refs can be built and compared in unit tests.
"""
from __future__ import annotations

import itertools
import os

__all__ = ["ObjectRef", "new_task_id", "object_id_for", "set_ref_tracker", "is_actor_call",
           "TASK_ID_LEN", "OBJECT_ID_LEN"]

TASK_ID_LEN = 14
OBJECT_ID_LEN = 16

_prefix = os.urandom(6)
_counter = itertools.count(1)


_ACTOR_CALL_BIT = 1 << 63     # in the 8-byte counter; a counter never gets near it


def new_task_id(actor_call: bool = False) -> bytes:
    n = next(_counter)
    if actor_call:
        n |= _ACTOR_CALL_BIT
    return _prefix + n.to_bytes(8, "little")


def is_actor_call(oid: bytes) -> bool:
    """Was the task (or put) that makes ``oid`` an actor method call?"""
    return bool(oid[TASK_ID_LEN - 1] & 0x80)


def object_id_for(task_id: bytes, index: int) -> bytes:
    return task_id + index.to_bytes(2, "little")


class _NullTracker:
    """Tracker used before the runtime starts: counts nothing."""

    def add(self, oid):
        pass

    def add_owned(self, oid):
        pass

    def remove(self, oid):
        pass

    def as_future(self, ref):
        from .exceptions import RuntimeNotInitializedError
        raise RuntimeNotInitializedError(
            "miniray is not initialized: call miniray.init() before waiting on an ObjectRef")


_tracker = _NullTracker()


def set_ref_tracker(tracker) -> None:
    global _tracker
    _tracker = tracker if tracker is not None else _NullTracker()


class ObjectRef:
    """A reference to an immutable object in the cluster.

    Hashable and comparable by id; ``await ref``, ``ref.future()`` (a
    ``concurrent.futures.Future``) and ``ref.as_future()`` (an
    ``asyncio.Future``, as in Ray) give its value asynchronously.
    """

    __slots__ = ("_id", "__weakref__")

    def __init__(self, oid: bytes, *, _owned: bool = False):
        if type(oid) is not bytes or len(oid) != OBJECT_ID_LEN:
            raise TypeError(f"ObjectRef needs a {OBJECT_ID_LEN}-byte id, got {oid!r}")
        self._id = oid
        if _owned:
            _tracker.add_owned(oid)
        else:
            _tracker.add(oid)

    def __del__(self):
        try:
            _tracker.remove(self._id)
        except Exception:  # interpreter shutdown: globals may be gone
            pass

    @property
    def id(self) -> bytes:
        return self._id

    def binary(self) -> bytes:
        return self._id

    def hex(self) -> str:
        return self._id.hex()

    def task_id(self) -> bytes:
        return self._id[:TASK_ID_LEN]

    def __hash__(self):
        return hash(self._id)

    def __eq__(self, other):
        return type(other) is ObjectRef and other._id == self._id

    def __ne__(self, other):
        return not self.__eq__(other)

    def __repr__(self):
        return f"ObjectRef({self._id.hex()})"

    def __reduce__(self):
        return (ObjectRef, (self._id,))

    def __copy__(self):
        return ObjectRef(self._id)

    def __deepcopy__(self, memo):
        return ObjectRef(self._id)

    def future(self):
        """A ``concurrent.futures.Future`` that resolves to the value."""
        return _tracker.as_future(self)

    def as_future(self):
        """An ``asyncio.Future`` that resolves to the value, for the running
        event loop (Ray's ``ref.as_future()``; the same as
        ``asyncio.wrap_future(ref.future())``)."""
        import asyncio
        return asyncio.wrap_future(self.future())

    def __await__(self):
        return self.as_future().__await__()

    def __bool__(self):
        return True
