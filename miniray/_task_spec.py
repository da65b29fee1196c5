"""The wire form of a task: a flat tuple, indexed by the constants below.

A tuple pickles and unpickles faster than any class, and the node only reads
a few fields; the constants keep the indexing readable.  The submitter builds
it, the node schedules by it, the worker runs it.

    TASK_ID      14-byte task id
    FN_KEY       key of the registered function / class (REGISTER_FN)
    NAME         function or method name, for messages and print prefixes
    ARGS         inline args payload (bytes) or None when ARGS_OID is set
    ARGS_OID     object id of args stored in the arena (large args) or None
    DEPS         object ids of top-level ObjectRef args (resolved before run)
    NUM_RETURNS  number of return objects
    RESOURCES    resource shape (tuple of (name, amount))
    MAX_RETRIES  retries left after a worker crash
    RETRY_EXC    retry on application exceptions too: False, True, or bytes (the
                 serialized tuple of exception types; only the worker decodes it:
                 daemons never unpickle a user's object)
    PINS         ids the task keeps alive while pending (refs nested in args)
    ACTOR_ID     for actor calls / creation: the actor's 16-byte id, else None
    METHOD       actor method name (``_task_kind.ACTOR_INIT`` for creation), else None
    EXTRA        dict of rarely used options, or None
"""
from __future__ import annotations

(TASK_ID, FN_KEY, NAME, ARGS, ARGS_OID, DEPS, NUM_RETURNS, RESOURCES,
 MAX_RETRIES, RETRY_EXC, PINS, ACTOR_ID, METHOD, EXTRA) = range(14)

SPEC_LEN = 14
