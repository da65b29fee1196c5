"""Identifiers and ObjectRef.

An object id is 16 bytes: the 14-byte id of the task (or put) that made it,
then a 2-byte return index.  Ids are made by the submitting process without a
round trip: a random per-process prefix and a counter.

ObjectRef counts its live instances per process through a *ref tracker* that
the runtime installs (``set_ref_tracker``); the tracker tells the node daemon
when this process starts and stops holding an id.  Before ``init`` the tracker
is a no-op, so refs can be built and compared in unit tests.
"""
from __future__ import annotations

import itertools
import os

__all__ = ["ObjectRef", "new_task_id", "object_id_for", "set_ref_tracker",
           "TASK_ID_LEN", "OBJECT_ID_LEN"]

TASK_ID_LEN = 14
OBJECT_ID_LEN = 16

_prefix = os.urandom(6)
_counter = itertools.count(1)


def reseed_ids() -> None:
    """Give this process a fresh id prefix (after a fork)."""
    global _prefix, _counter
    _prefix = os.urandom(6)
    _counter = itertools.count(1)


def new_task_id() -> bytes:
    return _prefix + next(_counter).to_bytes(8, "little")


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

    Hashable and comparable by id; ``await ref`` and ``ref.future()`` give
    its value asynchronously.
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

    def __await__(self):
        import asyncio
        return asyncio.wrap_future(self.future()).__await__()

    def __bool__(self):
        return True
