"""Drive the node's pure state (``miniray._node_state``) the way its server does.

    test ── events ──► NodeState.handle([...]) ──► [instruction, ...] ──► test asserts

No process, thread or socket: a worker is a worker id the state asked to
SPAWN, "connected" by feeding the events the server would (SPAWNED, then
MESSAGES with its HELLO); a driver is a client id that sent a HELLO.  Ids,
specs and messages are built as the real client builds them
(``_submit.task_spec``, ``_worker_main``): a task id is 14 bytes, return i
is ``tid + i.to_bytes(2, "little")``, an actor id is 16 bytes.

Each ``Node`` method that feeds events returns the instructions of that
turn, so a test reads as ``assert node.submit(d, spec) == [...]``.
"""
from __future__ import annotations

import itertools
import os

from miniray import _protocol as P
from miniray import _task_spec as S
from miniray._node_state import D, E, NodeState
from miniray._object_table import READY
from miniray._serialization import dumps, loads_from

M, R, K, Q = P.M, P.R, P.K, P.Q
SEND = D.SEND
VALUE, ERROR = K.VALUE, K.ERROR

FN_KEY = b"fn-key-000000000"
FN_BLOB = b"the pickled function"
CLASS_KEY = b"class-key-000000"
CLASS_BLOB = b"the pickled actor class"
ARGS = b"inline args"
CPU1 = (("CPU", 1.0),)
MiB = 2**20

_prefix = os.urandom(6)
_counter = itertools.count(1)


# -- ids and specs -----------------------------------------------------------------------------

def new_tid() -> bytes:
    """A 14-byte task id, as ``_ids.new_task_id`` makes them."""
    return _prefix + next(_counter).to_bytes(8, "little")


def oid_of(tid: bytes, i: int = 0) -> bytes:
    return tid + i.to_bytes(2, "little")


def new_oid() -> bytes:
    """A fresh 16-byte object id (what a put uses)."""
    return oid_of(new_tid())


def new_aid() -> bytes:
    """A 16-byte actor id (``_submit.ACTOR_ID_INDEX``)."""
    return oid_of(new_tid(), 0xFFFF)


def spec(name="f", *, num_returns=1, shape=CPU1, deps=(), args=ARGS, args_oid=None,
         pins=None, max_retries=0, retry_exc=False, key=FN_KEY, actor_id=None, method=None,
         extra=None, tid=None) -> tuple:
    """A task spec tuple (fields in ``_task_spec`` order)."""
    s = (tid or new_tid(), key, name, None if args_oid else args, args_oid, list(deps),
         num_returns, shape, max_retries, retry_exc, pins, actor_id, method, extra)
    assert len(s) == S.SPEC_LEN
    return s


def returns(s) -> list:
    return [oid_of(s[S.TASK_ID], i) for i in range(s[S.NUM_RETURNS])]


def ret(s, i=0) -> bytes:
    return oid_of(s[S.TASK_ID], i)


def init_spec(name="A", *, shape=(), deps=(), aid=None, extra=None, key=CLASS_KEY,
              **kw) -> tuple:
    """The constructor task of an actor (ACTOR_CREATE's spec)."""
    return spec(name, num_returns=0, shape=shape, deps=deps, actor_id=aid or new_aid(), key=key,
                method="__init__", extra=extra or {"is_async": False, "max_concurrency": 1,
                                                   "namespace": None}, **kw)


def call_spec(aid, method="m", *, num_returns=1, deps=(), max_retries=0, key=CLASS_KEY,
              **kw) -> tuple:
    """An actor method call (ACTOR_CALL's spec; ``max_retries`` is the
    call's max_task_retries)."""
    return spec(f"A.{method}", num_returns=num_returns, shape=(), deps=deps, actor_id=aid,
                method=method, max_retries=max_retries, key=key, **kw)


def actor_opts(name=None, namespace=None, get_if_exists=False, lifetime=None, max_restarts=0,
               max_task_retries=0, meta=b"actor meta") -> dict:
    return {"name": name, "namespace": namespace, "get_if_exists": get_if_exists,
            "lifetime": lifetime, "max_restarts": max_restarts,
            "max_task_retries": max_task_retries, "meta": meta}


# -- messages and instructions -----------------------------------------------------------------

def execute(s, *, blob=FN_BLOB, deps=(), args=None) -> tuple:
    """The EXECUTE message the node sends for ``s``."""
    return (M.EXECUTE, s, blob, list(deps), s[S.ARGS] if args is None else args)


def values(s, data=b"value") -> list:
    """TASK_DONE results: every return an inline value."""
    return [(oid, VALUE, data, ()) for oid in returns(s)]


def error_results(s, exc) -> list:
    payload = dumps(exc)
    return [(oid, ERROR, payload, ()) for oid in returns(s) or [ret(s)]]


def sends(out, cid=None) -> list:
    """The messages of SEND instructions (to ``cid`` only, if given)."""
    return [ins[2] for ins in out if ins[0] == SEND and (cid is None or ins[1] == cid)]


def decode(payload):
    """An ERROR payload (``_serialization.dumps`` of an exception) back to the exception."""
    return loads_from(payload)


class Node:
    """A NodeState with a config dict, fake clients and fake workers."""

    def __init__(self, *, num_cpus=1, arena_size=64 * MiB, start=True, **config):
        cfg = {"node_id": "node-under-test", "num_cpus": num_cpus, "session": "unit",
               "address": "/nonexistent/miniray.sock", "inline_threshold": 100 * 1024,
               "hostname": "test"}
        cfg.update(config)
        self.logs = []
        self.st = NodeState(cfg, {"arena_size": arena_size, "arena_dir": "/nonexistent",
                                  "store_warning": None, "node_pid": 1})
        self.cids = itertools.count(1)
        self.worker_cid: dict[int, int] = {}      # wid -> cid of its connection
        if start:
            self.start_out = self.handle((E.START, 0.0))

    # -- feeding events ------------------------------------------------------------------------
    def handle(self, *events) -> list:
        """The instructions, less D.LOG lines (kept in ``self.logs``)."""
        out = self.st.handle(list(events))
        self.logs.extend(ins[1] for ins in out if ins[0] == D.LOG)
        return [ins for ins in out if ins[0] != D.LOG]

    def msgs(self, cid, *messages) -> list:
        return self.handle((E.MESSAGES, cid, list(messages)))

    def driver(self, *, pid=None, register=True, info=None) -> int:
        """A connected driver's client id (HELLO, then REGISTER_FN of FN_KEY
        and CLASS_KEY)."""
        cid = next(self.cids)
        out = self.msgs(cid, (M.HELLO, "driver", pid or 10_000 + cid, None, info))
        assert [i[0] for i in out] == [D.WELCOME], out
        if register:
            self.msgs(cid, (M.REGISTER_FN, FN_KEY, FN_BLOB),
                      (M.REGISTER_FN, CLASS_KEY, CLASS_BLOB))
        return cid

    def spawned(self, wid, pid=None) -> list:
        return self.handle((E.SPAWNED, wid, pid or 20_000 + wid))

    def hello_worker(self, wid, pid=None) -> list:
        """The worker's connection says HELLO; its cid is ``worker_cid[wid]``."""
        cid = self.worker_cid[wid] = 1000 + wid
        return self.msgs(cid, (M.HELLO, "worker", pid or 20_000 + wid, wid, None))

    def connect(self, wid) -> list:
        """SPAWNED + HELLO in two turns, as the server sees a worker start;
        the instructions of the HELLO turn."""
        assert self.st.workers.get(wid) is not None, f"the state never spawned worker {wid}"
        self.spawned(wid)
        return self.hello_worker(wid)

    def starting(self) -> list:
        return sorted(w.wid for w in self.st.workers.values() if w.state == "starting")

    def connect_all(self) -> list:
        """Connect every starting worker; the instructions of all turns."""
        out = []
        for wid in self.starting():
            out += self.connect(wid)
        return out

    def wc(self, wid) -> int:
        return self.worker_cid[wid]

    # -- client messages -----------------------------------------------------------------------
    def submit(self, cid, s) -> list:
        return self.msgs(cid, (M.SUBMIT, s))

    def done(self, wid, s, results=None, retryable=False, note=None) -> list:
        """The worker ``wid`` reports ``s`` finished (default: inline values)."""
        if results is None:
            results = values(s)
        return self.msgs(self.wc(wid), (M.TASK_DONE, s[S.TASK_ID], results, retryable, note))

    def get(self, cid, rid, oids) -> list:
        return self.msgs(cid, (M.GET, rid, list(oids)))

    def put(self, cid, oid, data=b"put value", contained=()) -> list:
        return self.msgs(cid, (M.PUT_INLINE, oid, VALUE, data, list(contained)))

    def decref(self, cid, *oids) -> list:
        return self.msgs(cid, (M.REFS, [(R.DECREF, o) for o in oids]))

    def create_actor(self, cid, rid, s, **opts) -> list:
        return self.msgs(cid, (M.ACTOR_CREATE, rid, s, actor_opts(**opts)))

    def call(self, cid, s) -> list:
        return self.msgs(cid, (M.ACTOR_CALL, s))

    def init_done(self, wid, init, error=None, note=None) -> list:
        """The actor's worker reports its constructor finished (or raised ``error``)."""
        if error is None:
            results = [(None, VALUE, None, ())]
        else:
            results = [(None, ERROR, dumps(error), ())]
            note = note or f"{type(error).__name__}: {error}"
        return self.done(wid, init, results, False, note)

    def actor(self, aid):
        return self.st.actors.actors[aid]

    def actor_wid(self, aid) -> int:
        return self.st.actors.actors[aid].worker.wid

    def exited(self, wid, desc="killed by SIGKILL") -> list:
        return self.handle((E.WORKER_EXITED, wid, desc))

    # -- looking at the state ------------------------------------------------------------------
    def entry(self, oid):
        return self.st.table.entries.get(oid)

    def value(self, oid):
        """(kind, inline bytes) of a READY entry."""
        e = self.st.table.entries[oid]
        assert e.state == READY, f"{oid.hex()} is not ready"
        return (e.kind, e.inline)

    def error(self, oid):
        """The exception sealed in ``oid``."""
        kind, data = self.value(oid)
        assert kind == ERROR, f"{oid.hex()} holds a value, not an error"
        return decode(data)

    def cpu(self) -> float:
        return self.st.resources.available["CPU"]

    def worker(self, wid):
        return self.st.workers[wid]

    def idle(self) -> list:
        return [w.wid for w in self.st.idle]

    def pool(self) -> "Node":
        """Connect the START pool and return self (for ``Node().pool()``)."""
        self.connect_all()
        return self
