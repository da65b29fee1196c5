"""Direct calls, as the node sees them: calls it registers but never
dispatches (an actor's here; a leased worker's tasks: ``_node_leases``).

A caller sends a call of a one-at-a-time actor straight to the actor's
worker (``_client_direct``, ``_direct_server``), and tells the node with
``DIRECT_CALL(spec, pid)`` in its next batch of messages; the worker, once
the call ran, sends ``DIRECT_DONE`` (what TASK_DONE says, plus the caller's
connection id).  The node keeps the call as a task in flight on the actor,
so everything else works as for calls it dispatched: refcounts, results
for other processes, cancel, retries and failure when the worker dies.

The two messages come on two connections, in either order:

    DIRECT_CALL first   the task is in flight on the worker named by pid
                        (``Task.direct``); DIRECT_DONE finishes it
    DIRECT_DONE first   kept in ``early`` until the DIRECT_CALL comes, which
                        then finishes it at once
    worker not the one named (the actor restarted, or died): the call was in
                        flight on a worker that is gone: retried or failed
                        as such a call is (``ActorManager.lost_in_flight``)

A task the node ends before its DIRECT_DONE (a cancel, the actor killed)
is noted in ``ended`` so that its late DIRECT_DONE is dropped rather than
taken for an early one.  An early DIRECT_DONE keeps the refs inside its
results pinned until it is claimed (the worker's DECREFs of them may come
first).  Early entries no call will claim are dropped: those of a caller
that disconnected, those that come when the caller is gone or the actor
is over, and a dead worker's whose results are in the arena (the ranges
went with the worker; the call is then handled as lost in flight).

Part of the node's pure state: no sockets, no clocks.
"""
from __future__ import annotations

from . import _protocol as P
from . import _task_spec as S
from .exceptions import ActorDiedError

M = P.M


class DirectCallRegistry:
    def __init__(self, st):
        self.st = st
        self.early: dict = {}     # tid -> (worker's client, DIRECT_DONE message)
        self.ended: dict = {}     # tid -> worker: ended here, its DIRECT_DONE still to come

    def on_call(self, client, msg) -> None:
        """DIRECT_CALL from the caller: register the call."""
        spec, pid = msg[1], msg[2]
        st = self.st
        tasks = st.tasks
        a = st.actors.actors.get(spec[S.ACTOR_ID])
        t = tasks.create(spec, client, actor=a)
        early = self.early.pop(t.tid, None)
        if early is not None and spec[S.ACTOR_ID] is None:
            wclient, done = early       # a task on a leased worker (``_node_leases``)
            st.leases.early_done(t, wclient, done)
            self._pins(done, st.table.unpin)
            return
        if early is not None:
            wclient, done = early
            t.state = "running"
            if a is not None and a.state != "dead":
                a.inflight[t.tid] = t
            self._finish(t, wclient, done)
            self._pins(done, st.table.unpin)        # sealed now: its entry holds them
            return
        if spec[S.ACTOR_ID] is None:
            st.leases.on_call(client, msg, t)
            return
        if a is None or a.state == "dead":
            tasks.fail(t, a.death if a is not None else ActorDiedError(
                "the actor is unknown to this node (it died and was forgotten)"))
            return
        w = a.worker
        if w is None or w.pid != pid:
            st.actors.lost_in_flight(a, t)
            return
        # (Its connection may be closed already: its exit, on its way, then
        # fails or retries the call with the others it had, saying how it died.)
        t.state = "running"
        t.worker = w
        t.direct = w
        a.inflight[t.tid] = t

    def on_done(self, client, msg) -> None:
        """DIRECT_DONE from the worker: finish the call, or keep it until
        the caller's DIRECT_CALL comes."""
        tid = msg[1]
        st = self.st
        t = st.tasks.tasks.get(tid)
        if t is not None and t.direct is not None:
            if t.actor is None:
                st.leases.on_done(client, msg, t)
                return
            t.direct = None
            self._finish(t, client, msg)
            return
        if self.ended.pop(tid, None) is not None or t is not None:
            return      # ended here already, or the node runs it again itself
        caller = st.clients.get(msg[4])
        w = client.worker
        if caller is None or caller.closed or w is None or (w.actor is None and w.lease is None):
            # Its caller left (no DIRECT_CALL will come), or its actor (lease) is over
            # (the registration, if it comes, fails the call as the others).
            self._drop(client, msg)
            return
        # Refs inside its results stay alive until it is sealed: the worker's
        # DECREFs of them may come first.
        self._pins(msg, st.table.pin)
        self.early[tid] = (client, msg)

    @staticmethod
    def _pins(done, act) -> None:
        for r in done[2]:
            for oid in r[3] or ():
                act(oid)

    def _drop(self, wclient, done) -> None:
        """Forget a DIRECT_DONE nobody will claim: its arena ranges go back."""
        if not wclient.closed:
            for r in done[2]:
                if r[2] is None:
                    self.st.on_abort_alloc(wclient, (M.ABORT_ALLOC, r[0]))

    def _finish(self, t, client, msg) -> None:
        st = self.st
        a = t.actor
        if a is None or a.state == "dead":
            # Its result stands (it ran); nothing is retried on a dead actor.
            if a is not None:
                a.inflight.pop(t.tid, None)
            st.tasks.seal_results(t, msg[2], client)
            st.tasks.forget(t)
            return
        st.tasks.on_task_done(client, (M.TASK_DONE, msg[1], msg[2], msg[3]))

    def task_ended(self, t) -> None:
        """(from ``TaskManager.forget``) ``t`` ended here while its worker
        may still send DIRECT_DONE."""
        w = t.direct
        t.direct = None
        if w.client is not None:
            self.ended[t.tid] = w

    def client_gone(self, client) -> None:
        if self.ended:
            w = client.worker
            for tid in [tid for tid, ew in self.ended.items() if ew is client or
                        (w is not None and ew is w)]:
                del self.ended[tid]
        early = self.early
        if not early:
            return
        unpin = self.st.table.unpin
        for tid, (wclient, done) in list(early.items()):
            in_arena = any(r[2] is None for r in done[2])
            if done[4] == client.cid or (wclient is client and in_arena):
                del early[tid]
                self._drop(wclient, done)
                self._pins(done, unpin)

    def calls_pending(self, client, aid) -> bool:
        """Has ``client`` calls to actor ``aid`` the node has not finished
        (queued or in flight)?  A caller asks before it sends calls of
        that actor straight to it: they must not pass earlier ones."""
        a = self.st.actors.actors.get(aid)
        if a is None:
            return False
        for t in a.queue:
            if t.submitter is client:
                return True
        for t in a.inflight.values():
            if t.submitter is client and t.direct is None:     # (its direct ones may run)
                return True
        return False
