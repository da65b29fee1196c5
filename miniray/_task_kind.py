"""The kind of a task spec: a function task, an actor's creation, an actor call.

The wire form (``_task_spec``) has no kind field: the kind is carried by two
fields, ``ACTOR_ID`` (None for a function task) and ``METHOD`` (``ACTOR_INIT``
for the creation).  This module is the one place that knows that encoding;
the client's spec builder (``_submit.task_spec``) writes it, and the node and
the worker read it back with ``kind_of`` instead of comparing ``METHOD`` with
a string literal.  It imports nothing but ``_task_spec``, so a daemon can
import it without pulling in the client runtime.
"""
from __future__ import annotations

import enum

from ._task_spec import ACTOR_ID, METHOD

__all__ = ["TaskKind", "ACTOR_INIT", "kind_of"]

ACTOR_INIT = "__init__"
"""``METHOD`` of an actor-creation spec (the constructor runs as that task)."""


class TaskKind(enum.IntEnum):
    TASK = 0            # a @remote function: pooled worker, retried on crash
    ACTOR_CREATE = 1    # an actor's constructor: takes a worker for the actor's life
    ACTOR_CALL = 2      # a method call: queued in order on the actor's worker


_TASK, _CREATE, _CALL = TaskKind.TASK, TaskKind.ACTOR_CREATE, TaskKind.ACTOR_CALL


def kind_of(spec) -> TaskKind:
    """The kind of a spec built by ``_submit.task_spec``."""
    if spec[ACTOR_ID] is None:
        return _TASK
    return _CREATE if spec[METHOD] == ACTOR_INIT else _CALL
