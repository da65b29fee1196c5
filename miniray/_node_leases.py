"""Worker leases, as the node sees them: a driver's own worker for the
tasks of one resource shape, called without the node on the path.

    a driver's task finishes, nothing else waits ─► the worker stays, leased
        to that driver (its resources held): LEASE_GRANTED (after the
        worker's LEASE_READY, the first time it serves)
    the driver sends its next tasks of that shape straight to the worker
        (``_client_direct``), one at a time, and DIRECT_CALL(spec, lease
        id) here: registered as running on the worker, never dispatched
    the worker's DIRECT_DONE finishes each (``_node_direct`` routes it here)
    other work waits for resources ─► LEASE_REVOKE to every holder
    LEASE_RETURN (revoked, idle, or the driver leaves) ─► the worker is
        idle again once its registered calls are done

A lease is a worker the node does not schedule on: the driver is its only
caller, and sends it one call at a time (a call never queues behind
another there, so nothing it waits for can be stuck behind it).  The node
still hears of every call, so refcounts, cancel (CANCEL_TASK, or a kill),
retries and a crash work as for a dispatched task.  A worker waiting in
``get`` lends the lease's CPUs, as any task's.  Resources an idle lease
holds count as available to the outside (``available_now``): the node
takes them back on demand.

Only a driver's plain tasks (CPU shapes, no scheduling strategy, no
max_calls) lead to a lease, and only when no other work waits.

Part of the node's pure state: no sockets, no clocks.
"""
from __future__ import annotations

from . import _protocol as P
from . import _task_spec as S
from ._scheduler import cpu_amount, gpu_amount
from ._node_tasks import crash_error
from .exceptions import TaskCancelledError

M = P.M


class Lease:
    __slots__ = ("lid", "client", "worker", "shape", "running", "state", "revoked", "lent",
                 "desc", "orphans")

    def __init__(self, lid, client, worker, shape):
        self.lid = lid
        self.client = client
        self.worker = worker
        self.shape = shape
        self.running = []       # its calls registered here, not finished (in order)
        # "granting" (until the worker's LEASE_READY) -> "active" -> "returning"
        # (given back, calls still running); "dead": its worker died (kept
        # until the driver gives it back: later calls then fail or retry).
        self.state = "granting"
        self.revoked = False
        self.lent = False       # its CPUs are lent (its worker waits in get)
        self.desc = None        # how its worker died
        self.orphans = None     # tasks its worker submitted before its call's registration


class LeaseManager:
    def __init__(self, st):
        self.st = st
        self.leases: dict = {}      # lease id -> Lease
        self.next_lid = 1

    # -- granting -------------------------------------------------------------------------
    def maybe_grant(self, w, t) -> None:
        """``w`` finished the plain task ``t`` and went idle: lease it to
        ``t``'s driver if nothing else waits for it."""
        client = t.submitter
        st = self.st
        shape = t.shape
        if not client.lease_ok or client.closed or st.stopping or \
                (client.leases and shape in client.leases):
            return
        if st.ready.count or st.actors.placing or w.state != "idle" or w.client is None or \
                w.kind == "gpu" or gpu_amount(shape) or not st.resources.fits_now(shape):
            return
        if t.x is not None and (t.origin is not None or t.cancelled):
            return
        extra = t.spec[S.EXTRA]
        if extra and ("strategy" in extra or "max_calls" in extra):
            return
        st.idle.remove(w)
        st.resources.acquire(shape)
        lease = Lease(self.next_lid, client, w, shape)
        self.next_lid += 1
        self.leases[lease.lid] = lease
        if client.leases is None:
            client.leases = {}
        client.leases[shape] = lease
        w.state = "leased"
        w.lease = lease
        if w.lease_addr is not None:
            self._grant(lease)
        else:
            st.send(w.client, (M.LEASE_SERVE, lease.lid))

    def _grant(self, lease) -> None:
        lease.state = "active"
        w = lease.worker
        self.st.send(lease.client, (M.LEASE_GRANTED, lease.lid, lease.shape, w.pid,
                                    w.lease_addr, sorted(w.fn_keys)))

    def on_ready(self, client, msg) -> None:
        """LEASE_READY from the worker: it serves at that address (None: it
        cannot; the lease ends)."""
        w = client.worker
        if w is None:
            return
        lid, addr = msg[1], msg[2]
        lease = self.leases.get(lid)
        if addr is not None:
            w.lease_addr = addr
        if lease is None or lease.worker is not w or lease.state != "granting":
            return
        if addr is None or lease.revoked:
            self._end(lease)
            return
        self._grant(lease)

    def revoke_all(self) -> bool:
        """Work waits for resources: every lease goes back once its call is
        done (one still being granted ends at once: its driver does not
        know of it).  True if some ended at once."""
        ended = False
        for lease in list(self.leases.values()):
            if lease.revoked or lease.state in ("returning", "dead"):
                continue
            lease.revoked = True
            if lease.state == "granting":
                self._end(lease)
                ended = True
            else:
                self.st.send(lease.client, (M.LEASE_REVOKE, lease.lid))
        return ended

    def idle_resources(self):
        """The shapes idle leases hold (available to anyone who asks)."""
        return [lease.shape for lease in self.leases.values()
                if not lease.running and not lease.lent and lease.state in ("granting", "active")]

    # -- calls ----------------------------------------------------------------------------
    def on_call(self, client, msg, t) -> None:
        """DIRECT_CALL of a task (created as ``t``): in flight on the
        leased worker."""
        lease = self.leases.get(msg[2])
        if lease is None or lease.client is not client or lease.state == "dead":
            # Its worker died (this call was on its way to it, or in it).
            self._lost(t, lease)
            return
        w = lease.worker
        t.state = "running"
        t.worker = w
        t.direct = w
        lease.running.append(t)
        w.fn_keys.add(t.spec[S.FN_KEY])     # its code came with the call, if it was new there
        if w.task is None:
            w.task = t
            if lease.orphans:
                self._adopt(lease, t)

    def _adopt(self, lease, t) -> None:
        """Tasks the leased worker submitted before ``t``'s registration
        came are ``t``'s (a recursive cancel reaches them)."""
        tasks = self.st.tasks.tasks
        for child in lease.orphans:
            if child.parent is None and tasks.get(child.tid) is child:
                child.parent = t
                if t.children is None:
                    t.children = {}
                t.children[child.tid] = child
        lease.orphans = None

    def orphan(self, w, t) -> None:
        """(from ``TaskManager.create``) The leased worker ``w`` submitted
        ``t`` while running a call not registered yet."""
        lease = w.lease
        if lease.orphans is None:
            lease.orphans = []
        lease.orphans.append(t)

    def on_done(self, wclient, msg, t) -> None:
        """DIRECT_DONE of ``t`` (registered here): its results, or a retry."""
        w = t.direct
        t.direct = None
        t.worker = None
        lease = w.lease
        if lease is not None:
            running = lease.running
            if t in running:
                running.remove(t)
            w.task = running[0] if running else None
            lease.orphans = None
        self.complete(t, wclient, msg)
        if lease is not None and lease.state == "returning" and not lease.running:
            self._end(lease)

    def early_done(self, t, wclient, done) -> None:
        """A DIRECT_DONE came before the registration of ``t``: it ran."""
        w = wclient.worker
        if w is not None:
            w.fn_keys.add(t.spec[S.FN_KEY])
            if w.lease is not None:
                w.lease.orphans = None      # (the children of a finished call)
        self.complete(t, wclient, done)

    def complete(self, t, wclient, done) -> None:
        """``t`` ran (DIRECT_DONE ``done``, which may have come before its
        registration): seal its results, or queue it again if it raised an
        exception it retries on (through the node, like any task)."""
        tasks = self.st.tasks
        if done[3] and t.retries_left > 0 and not t.cancelled:
            tasks.again(t)
            return
        tasks.seal_results(t, done[2], wclient)
        tasks.forget(t)

    def _lost(self, t, lease) -> None:
        """A call sent to a leased worker that died: retried while retries
        remain, else WorkerCrashedError (as for a dispatched task)."""
        tasks = self.st.tasks
        if t.cancelled:
            tasks.fail(t, TaskCancelledError(t.tid.hex()))
        elif t.retries_left > 0:
            tasks.again(t)
        else:
            tasks.fail(t, crash_error(t, lease.desc if lease is not None and lease.desc
                                      else "died"))

    # -- CPU lending (its worker waits in get) ---------------------------------------------
    def blocked(self, w) -> None:
        lease = w.lease
        cpu = cpu_amount(lease.shape)
        if cpu and not lease.lent:
            lease.lent = True
            self.st.resources.available["CPU"] += cpu
            self.st.schedule_needed = True

    def unblocked(self, w) -> None:
        lease = w.lease
        if lease.lent:
            lease.lent = False
            self.st.resources.available["CPU"] -= cpu_amount(lease.shape)

    # -- the end of a lease ---------------------------------------------------------------
    def on_return(self, client, msg) -> None:
        """LEASE_RETURN: the driver sends no more calls on it."""
        lease = self.leases.get(msg[1])
        if lease is None or lease.client is not client:
            return
        if lease.state == "dead":
            del self.leases[lease.lid]
            return
        if lease.running:
            lease.state = "returning"
            return
        self._end(lease)

    def _end(self, lease) -> None:
        """The worker is the node's again (idle), its resources free."""
        st = self.st
        self.leases.pop(lease.lid, None)
        self._unlink(lease)
        if lease.state == "dead":
            return
        lease.state = "dead"
        w = lease.worker
        self._free(lease)
        if w.lease is lease:
            w.lease = None
        if w.state == "leased":
            if w.client is not None:
                st.worker_idle(w)
            else:
                w.state = "exiting"     # its connection closed: its exit comes
        st.schedule_needed = True

    def _free(self, lease) -> None:
        res = self.st.resources
        if lease.lent:
            lease.lent = False
            res.available["CPU"] -= cpu_amount(lease.shape)
        res.release(lease.shape)

    def _unlink(self, lease) -> None:
        held = lease.client.leases
        if held and held.get(lease.shape) is lease:
            del held[lease.shape]

    def worker_died(self, w) -> None:
        """The leased worker died: its calls are retried or fail; the lease
        stays (dead) until its driver gives it back."""
        lease = w.lease
        w.lease = None
        w.task = None
        was = lease.state
        if was != "dead":
            self._free(lease)
        lease.state = "dead"
        lease.desc = f"(pid={w.pid}) {w.exit_desc}"
        self._unlink(lease)
        running, lease.running = lease.running, []
        if lease.client.closed or was in ("returning", "granting"):
            # Given back already, or never known to its driver: no
            # LEASE_RETURN will come for it.
            self.leases.pop(lease.lid, None)
        else:
            self.st.send(lease.client, (M.LEASE_REVOKE, lease.lid))
        tasks = self.st.tasks
        if tasks.killed_for:
            tasks.killed_for.pop(w.wid, None)
        # Each was started (the driver sends the next call only once it has
        # the previous result, whose DIRECT_DONE the worker sent first):
        # even one killed to cancel another spends a retry.
        for t in running:
            t.direct = None
            t.worker = None
            self._lost(t, lease)
        self.st.schedule_needed = True

    def client_gone(self, client) -> None:
        """A driver left: its leases end (once their calls are done)."""
        for lease in list(client.leases.values()):
            if lease.running:
                lease.state = "returning"
            else:
                self._end(lease)
        for lid in [lid for lid, lease in self.leases.items() if lease.client is client and
                    lease.state == "dead"]:
            del self.leases[lid]
