"""ActorPool: spread work over a fixed set of actors (Ray's API and semantics).

``fn(actor, value)`` must return what an actor call returns: an ObjectRef,
or a list of them for a method with ``num_returns`` > 1 (its result is then
the list of values).  Each actor runs one submitted item at a time; items
submitted while every actor is busy wait here and go to the next actor that
frees up, which is when its result is taken (``get_next*``).

State, as in Ray: every started item has a submission index; ``get_next``
returns them in that order, ``get_next_unordered`` as they finish (after
which ``get_next`` cannot go back to the earlier ones).  ``map`` and
``map_unordered`` first drop what earlier ``submit`` calls left (finished
results are discarded, unfinished ones ignored and their actors freed, items
not started are dropped), then submit every value at once, and return a
generator of the results.
"""
from __future__ import annotations

from collections import deque

from .. import api
from ..exceptions import ActorDiedError

__all__ = ["ActorPool"]

_TIMEOUT_MSG = "Timed out waiting for result"


def _key(future):
    """A dict key for what ``fn`` returned (a list of refs is not hashable)."""
    return tuple(future) if isinstance(future, list) else future


def _first_ref(future):
    """The ref that tells when the call is done: all the returns of one call
    are stored together, so its first one will do."""
    return future[0] if isinstance(future, list) else future


class ActorPool:
    def __init__(self, actors):
        self._idle = list(actors)
        self._future_to_actor = {}     # key of a started item -> (index, actor)
        self._index_to_future = {}     # index -> what fn returned
        self._next_task_index = 0
        self._next_return_index = 0
        self._pending_submits = deque()   # (fn, value) waiting for an actor

    # -- submitting ---------------------------------------------------------------------------
    def submit(self, fn, value) -> None:
        """Start ``fn(actor, value)`` on an idle actor, or queue it until one
        frees up."""
        if self._idle:
            actor = self._idle.pop()
            future = fn(actor, value)
            self._future_to_actor[_key(future)] = (self._next_task_index, actor)
            self._index_to_future[self._next_task_index] = future
            self._next_task_index += 1
        else:
            self._pending_submits.append((fn, value))

    def map(self, fn, values):
        """Results of ``fn(actor, v)`` for each v, in order.  Everything is
        submitted before this returns; iterate the generator to get them."""
        self._drop_earlier_work()
        for v in values:
            self.submit(fn, v)

        def results():
            while self.has_next():
                yield self.get_next()
        return results()

    def map_unordered(self, fn, values):
        """Results of ``fn(actor, v)`` for each v, as they finish."""
        self._drop_earlier_work()
        for v in values:
            self.submit(fn, v)

        def results():
            while self.has_next():
                yield self.get_next_unordered()
        return results()

    def _drop_earlier_work(self) -> None:
        """Before a map: earlier results must not come out of it.  Finished
        ones are taken and discarded (a failure among them is raised, as
        ``get_next`` would), unfinished ones ignored (their actors go back to
        the pool; the calls queue ahead of the map's on them), items never
        started are dropped."""
        self._pending_submits.clear()
        for index in sorted(self._index_to_future):
            future = self._index_to_future.pop(index)
            _, actor = self._future_to_actor.pop(_key(future))
            if self._is_ready(future, 0):
                self._get_result(future, actor)
            else:
                self._return_actor(actor)
        self._next_return_index = self._next_task_index

    # -- results ------------------------------------------------------------------------------
    def has_next(self) -> bool:
        """Are there started items whose result was not taken yet?"""
        return bool(self._future_to_actor)

    def get_next(self, timeout=None, ignore_if_timedout=False):
        """The next result in submission order, waiting up to ``timeout``
        seconds.  On timeout, TimeoutError; with ``ignore_if_timedout`` the
        item is also skipped for good and its actor given back to the pool."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        index = self._next_return_index
        if index >= self._next_task_index or index not in self._index_to_future:
            raise ValueError("It is not allowed to call get_next() after "
                             "get_next_unordered(): take the remaining results with "
                             "get_next_unordered()")
        future = self._index_to_future[index]
        timed_out = timeout is not None and not self._is_ready(future, timeout)
        if timed_out and not ignore_if_timedout:
            raise TimeoutError(_TIMEOUT_MSG)
        del self._index_to_future[index]
        self._next_return_index += 1
        _, actor = self._future_to_actor.pop(_key(future))
        if timed_out:
            self._return_actor(actor)
            raise TimeoutError(f"{_TIMEOUT_MSG}. The task {future} has been ignored.")
        return self._get_result(future, actor)

    def get_next_unordered(self, timeout=None, ignore_if_timedout=False):
        """The next result to finish, whatever its order."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        by_ref = {_first_ref(self._index_to_future[i]): key
                  for key, (i, _) in self._future_to_actor.items()}
        ready, _ = api.wait(list(by_ref), num_returns=1, timeout=timeout)
        if ready:
            key = by_ref[ready[0]]
        elif not ignore_if_timedout:
            raise TimeoutError(_TIMEOUT_MSG)
        else:
            key = next(iter(self._future_to_actor))
        index, actor = self._future_to_actor.pop(key)
        future = self._index_to_future.pop(index)
        # Earlier results can no longer come out of get_next() (as in Ray).
        self._next_return_index = max(self._next_return_index, index + 1)
        if not ready:
            self._return_actor(actor)
            raise TimeoutError(f"{_TIMEOUT_MSG}. The task {future} has been ignored.")
        return self._get_result(future, actor)

    def _is_ready(self, future, timeout) -> bool:
        ready, _ = api.wait([_first_ref(future)], timeout=timeout)
        return bool(ready)

    def _get_result(self, future, actor):
        alive = True
        try:
            return api.get(future)
        except ActorDiedError:
            alive = False         # a dead actor must not be handed more work
            raise
        finally:
            self._return_actor(actor, alive)

    def _return_actor(self, actor, alive=True) -> None:
        if alive:
            self._idle.append(actor)
        if self._pending_submits and self._idle:
            self.submit(*self._pending_submits.popleft())

    # -- the actors -----------------------------------------------------------------------------
    def has_free(self) -> bool:
        """Is an actor idle, with nothing waiting for one?"""
        return bool(self._idle) and not self._pending_submits

    def pop_idle(self):
        """Remove and return an idle actor, or None if none is free."""
        return self._idle.pop() if self.has_free() else None

    def push(self, actor) -> None:
        """Add an actor to the pool (it takes a waiting item at once)."""
        busy = [a for _, a in self._future_to_actor.values()]
        if actor in self._idle or actor in busy:
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)
