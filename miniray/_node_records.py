"""What the node's state keeps about each connected process, worker and
waiting GET/WAIT: plain records, read and written by ``_node_state`` and
its managers (no behaviour here but a waiter's count-down)."""
from __future__ import annotations

from . import _protocol as P

ERROR = P.K.ERROR


class Client:
    """A connected process, as the state sees it: what it holds."""

    __slots__ = ("cid", "role", "pid", "held", "views", "unsealed", "worker", "waiters",
                 "closed", "peer", "places", "forgetting", "lease_ok", "leases")

    def __init__(self, cid):
        self.cid = cid
        self.role = None
        self.pid = None
        self.held = set()       # oids this process holds refs to
        self.views = {}         # oid -> zero-copy views handed to this process
        self.unsealed = set()   # oids it allocated and has not sealed yet
        self.places = set()     # oids it may read in the arena without asking (lease_place)
        self.forgetting = set()  # of those, the ones it was asked to FORGET (spilling)
        self.worker = None
        self.waiters = set()
        self.closed = False
        self.peer = None        # the node id, for a link to another node
        self.lease_ok = False   # a driver that takes worker leases (``_node_leases``)
        self.leases = None      # resource shape -> its Lease, once it holds one


class Worker:
    """A worker process, as the state sees it (the server owns the process)."""

    __slots__ = ("wid", "pid", "client", "state", "task", "fn_keys", "blocked", "actor",
                 "exit_desc", "idle_since", "kind", "calls", "queued", "revoking", "since",
                 "turn", "batch", "lease", "lease_addr")

    def __init__(self, wid, now):
        self.wid = wid
        self.pid = None
        self.client = None
        self.state = "starting"   # -> idle <-> busy | leased | actor | exiting -> dead
        self.task = None
        self.fn_keys = set()
        self.blocked = 0
        self.actor = None
        self.exit_desc = None
        self.idle_since = now
        # "cpu" or "gpu" once it ran a task: GPU work never shares a process
        # with CPU work (CUDA state, CUDA_VISIBLE_DEVICES), as in Ray.
        self.kind = None
        self.calls = {}         # function key -> runs, for max_calls
        # Pipelining (``TaskManager.pipeline``): tasks sent to run after
        # ``task`` (EXECUTE sent, not started as far as the node knows), or
        # None; a REVOKE is unanswered.  Durations (``TaskManager._measured``):
        # the function keys of the tasks that finished in the turn at
        # ``turn``, which ran since ``since``.
        self.queued = None
        self.revoking = False
        self.since = now
        self.turn = now
        self.batch = []
        # Leases (``_node_leases``): the one it serves, and where it takes
        # direct calls once it said so (LEASE_READY).
        self.lease = None
        self.lease_addr = None


class Waiter:
    """A GET or WAIT request waiting for objects."""

    __slots__ = ("client", "rid", "oids", "left", "num_returns", "is_wait", "done", "blocking")

    def __init__(self, client, rid, oids, num_returns, is_wait):
        self.client, self.rid, self.oids = client, rid, oids
        self.left = 0
        self.num_returns, self.is_wait = num_returns, is_wait
        self.done = False
        self.blocking = False

    def on_ready(self, st, entry):
        if self.done:
            return
        self.left -= 1
        if self.is_wait:
            if len(self.oids) - self.left >= self.num_returns:
                st.finish_wait(self)
        elif self.left <= 0 or entry.kind == ERROR:
            # A failed object answers the get at once (as Ray raises the
            # first error as soon as it is known); the others come as None.
            st.finish_get(self)
