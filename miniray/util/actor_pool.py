"""ActorPool: spread work over a fixed set of actors (Ray's API).

``fn(actor, value)`` must return an ObjectRef (``lambda a, v: a.f.remote(v)``).
Each actor runs one submitted item at a time; extra items wait in a queue
here and go to whichever actor frees up first.
"""
from __future__ import annotations

from collections import deque

from .. import api

__all__ = ["ActorPool"]


class ActorPool:
    def __init__(self, actors):
        actors = list(actors)
        self._idle = deque(actors)
        self._ref_actor = {}          # ref -> actor running it
        self._ref_index = {}          # ref -> submission index
        self._index_ref = {}          # submission index -> ref
        self._queue = deque()         # (fn, value) waiting for an actor
        self._next_submit = 0
        self._next_return = 0

    def submit(self, fn, value) -> None:
        """Schedule ``fn(actor, value)`` on a free actor, or queue it."""
        if self._idle:
            actor = self._idle.popleft()
            ref = fn(actor, value)
            self._ref_actor[ref] = actor
            self._ref_index[ref] = self._next_submit
            self._index_ref[self._next_submit] = ref
            self._next_submit += 1
        else:
            self._queue.append((fn, value))

    def has_next(self) -> bool:
        return bool(self._ref_actor) or bool(self._queue)

    def has_free(self) -> bool:
        return bool(self._idle) and not self._queue

    def _release(self, ref) -> None:
        actor = self._ref_actor.pop(ref)
        index = self._ref_index.pop(ref)
        self._index_ref.pop(index, None)
        self._idle.append(actor)
        if self._queue:
            fn, value = self._queue.popleft()
            self.submit(fn, value)

    def get_next(self, timeout=None, ignore_if_timedout=False):
        """The next result in submission order."""
        if not self.has_next():
            raise StopIteration("no more results to get")
        # Items start in submission order and an actor frees only when its
        # result is taken, so the next index to return is always running.
        if self._next_return not in self._index_ref:
            raise ValueError("get_next() cannot follow get_next_unordered() while results "
                             "submitted before it are still pending: take them with "
                             "get_next_unordered() first")
        ref = self._index_ref[self._next_return]
        ready, _ = api.wait([ref], timeout=timeout)
        if not ready:
            if ignore_if_timedout:
                # Ray's behaviour: skip this result for good and give its
                # actor back to the pool (the call itself keeps running).
                self._next_return += 1
                self._release(ref)
                raise TimeoutError(f"no result within {timeout} s; the call was ignored "
                                   f"(ignore_if_timedout=True)")
            raise TimeoutError(f"no result within {timeout} s")
        self._next_return += 1
        self._release(ref)
        return api.get(ref)

    def get_next_unordered(self, timeout=None, ignore_if_timedout=False):
        """The next result to finish, whatever its order."""
        if not self.has_next():
            raise StopIteration("no more results to get")
        ready, _ = api.wait(list(self._ref_actor), num_returns=1, timeout=timeout)
        if not ready:
            raise TimeoutError(f"no result within {timeout} s")
        ref = ready[0]
        # Results before this one in submission order can no longer come
        # back from get_next() once a later one was taken (as in Ray).
        self._next_return = max(self._next_return, self._ref_index[ref] + 1)
        self._release(ref)
        return api.get(ref)

    def map(self, fn, values):
        """Results of ``fn(actor, v)`` for each v, in order (a generator)."""
        for v in values:
            self.submit(fn, v)
        while self.has_next():
            yield self.get_next()

    def map_unordered(self, fn, values):
        """Results of ``fn(actor, v)`` for each v, as they finish."""
        for v in values:
            self.submit(fn, v)
        while self.has_next():
            yield self.get_next_unordered()

    def push(self, actor) -> None:
        """Add an actor to the pool."""
        if actor in self._idle or actor in self._ref_actor.values():
            raise ValueError("the actor is already in the pool")
        self._idle.append(actor)
        if self._queue:
            fn, value = self._queue.popleft()
            self.submit(fn, value)

    def pop_idle(self):
        """Remove and return an idle actor, or None."""
        return self._idle.popleft() if self.has_free() else None

