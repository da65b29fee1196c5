"""Lineage: a task's result lost with a node is made again by re-running
the task.  Part of the node's pure state (``TaskManager.lineage``).

    submit here, in a cluster  ──► a Lineage record (spec, retries left) on each
                                   return entry (``Entry.lineage``)
    task finished for good,    ──► the record is *kept*: it counts on the records
    returns still alive            of its arguments (``parents``), and pins the
                                   arguments no re-run can make (puts, large args,
                                   objects owned elsewhere) once one of its
                                   returns lives only on another node
    returns all freed and no   ──► dropped, letting go of all that (the table's
    downstream record needs it     ``drop_lineage``)
    node died, copy gone       ──► ``lost``: each object whose only copy was there
                                   is re-run (same spec, same return ids, one retry
                                   spent, lost arguments first, recursively) or
                                   fails with ObjectLostError naming the object,
                                   the node and why it cannot be rebuilt

Only the node a task was submitted to keeps its lineage (the *owner* of its
returns, which placed it and got its RESULTS): objects owned by a node that
died cannot be rebuilt, nor can puts (no task made them) or actor methods'
results (the actor's state has moved on).  A re-run goes through the normal
placement path; whoever waits for its returns (gets, dependent tasks, pulls
from other nodes) just keeps waiting and sees the new value.

Cost: one record (11 slots, ~130 bytes) per task submitted here while any of
its returns is alive or a downstream record needs it, plus its spec (a few
hundred bytes and the inline args, < 100 KiB), and one slot per entry.  No
record at all when the node is not in a cluster (nothing can be lost there).
The records of finished tasks are bounded: past ``max_lineage_bytes`` (1 GiB
by default, as Ray's ``RAY_max_lineage_bytes``) the oldest are dropped, and
their results, if lost, fail saying so instead of being rebuilt.
"""
from __future__ import annotations

from . import _task_spec as S
from ._object_table import ACTOR_RESULT, READY, Lineage
from .exceptions import ObjectLostError

MAX_LINEAGE_BYTES = 2**30
RECORD_BYTES = 400          # a record and its spec, less the inline args


class LineageManager:
    def __init__(self, st, task_class):
        self.st = st
        self.Task = task_class          # ``_node_tasks.Task`` (which imports this module)
        self.max_bytes = int(st.config.get("max_lineage_bytes") or MAX_LINEAGE_BYTES)
        self.kept_bytes = 0             # of the records kept for finished tasks
        self.kept: dict = {}            # those records (keys), oldest first
        st.table.on_lineage_gone = self._gone

    # -- keeping it ---------------------------------------------------------------------------
    def attach(self, t, client) -> None:
        """A task was submitted here: its returns know how to be made again."""
        if not t.returns:
            return
        if t.spec[S.ACTOR_ID] is not None:
            rec = ACTOR_RESULT
        else:
            rec = t.lineage = Lineage(t.spec, client, t.retries_left, 0)
            rec.task = t
        entries = self.st.table.entries
        for oid in t.returns:
            e = entries[oid]
            if e.lineage is None:
                e.lineage = rec
                if rec is not ACTOR_RESULT:
                    rec.live += 1

    def finished(self, t) -> None:
        """``t`` is finished for good (before its arguments are unpinned):
        its record keeps what a re-run would need, while it is alive."""
        rec = t.lineage
        t.lineage = None
        if rec.task is t:
            rec.task = None
        rec.retries_left = t.retries_left
        if rec.live <= 0 or rec.retries_left <= 0:
            return
        table = self.st.table
        entries = table.entries
        if not rec.kept:
            rec.kept = True
            args = rec.spec[S.ARGS]
            rec.size = RECORD_BYTES + (len(args) if type(args) is bytes else 0)
            self.kept_bytes += rec.size
            self.kept[rec] = None
            parents, puts = [], []
            for oid in self.st.tasks._pinned(rec.spec):
                e = entries.get(oid)
                p = e.lineage if e is not None else None
                if p is not None and p is not ACTOR_RESULT and p.retries_left > 0:
                    p.live += 1
                    parents.append(p)
                else:
                    puts.append(oid)
            rec.parents, rec.puts = parents, puts
        if rec.pins is None and any(
                e is not None and e.location is not None and e.state != READY
                for e in map(entries.get, t.returns)):
            self._pin_args(rec)
        if self.kept_bytes > self.max_bytes:
            self._drop_oldest()

    def _gone(self, rec) -> None:
        """The table let go of a kept record (nothing needs it any more)."""
        self.kept_bytes -= rec.size
        rec.size = 0
        self.kept.pop(rec, None)

    def _drop_oldest(self) -> None:
        """Past ``max_bytes``: the oldest records (not being re-run) are
        dropped; what they would rebuild fails instead (``_check``)."""
        table = self.st.table
        over = self.kept_bytes - self.max_bytes
        victims = []
        for rec in self.kept:               # oldest first; one pass
            if over <= 0:
                break
            if rec.task is None:            # (being re-run: kept)
                victims.append(rec)
                over -= rec.size
        for rec in victims:
            if not rec.size:
                continue                    # let go of meanwhile (a victim's parent)
            spec = rec.spec
            rec.dropped = spec[S.NAME]
            rec.spec = spec[:S.ARGS] + (None,) + spec[S.ARGS + 1:]     # its args go
            rec.retries_left = 0
            stack = list(table.let_go(rec))
            for parent in stack:
                table.drop_lineage(parent)

    def _pin_args(self, rec) -> None:
        """One of ``rec``'s returns lives only on another node: the arguments
        no re-run can make stay alive, for it and for the records it needs."""
        table = self.st.table
        entries = table.entries
        stack = [rec]
        while stack:
            r = stack.pop()
            if r.pins is not None or r.live <= 0 or not r.kept:
                continue
            r.pins = [oid for oid in r.puts if oid in entries]
            r.puts = ()
            for oid in r.pins:
                table.pin(oid)
            stack.extend(r.parents)

    # -- using it -----------------------------------------------------------------------------
    def lost(self, entries, how) -> None:
        """``entries`` lost their only copy (``how`` says where and why):
        each is made again or fails.  Every verdict is reached before any
        is acted on, so the order of the entries changes nothing."""
        memo: dict = {}
        verdicts = [(e, self._why_not_entry(e, memo)) for e in entries]
        for e, reason in verdicts:
            self._settle(e, how, reason)

    def recover(self, e, how) -> None:
        """One entry whose copy cannot be had (a failed pull)."""
        self._settle(e, how, self._why_not_entry(e, {}))

    def _settle(self, e, how, reason) -> None:
        if e.state == READY or e.task is not None:
            return              # made again already, by another's re-run
        e.location = None
        e.pulling = False
        if reason is None:
            self.rebuild(e.lineage)
            return
        self.st.tasks.object_lost(e, ObjectLostError(
            f"object {e.oid.hex()} was lost: {how}, and it cannot be rebuilt: {reason}"))

    def rebuild(self, rec) -> None:
        """Run ``rec``'s task again (the same spec and return ids, one retry
        spent), after making again those of its arguments that are gone."""
        if rec.task is not None:
            return
        st = self.st
        tasks, table = st.tasks, st.table
        entries = table.entries
        rec.retries_left -= 1
        t = self.Task(rec.spec, rec.submitter)
        t.retries_left = rec.retries_left
        t.lineage = rec
        rec.task = t
        tasks.tasks[t.tid] = t
        for oid in t.returns:
            e = entries.get(oid)
            if e is not None and e.state != READY:
                e.task = t
                e.location = None
                e.pulling = False
        for oid in tasks._pinned(rec.spec):
            e = entries.get(oid)
            if e is None:
                e = table.get_or_create(oid)
                p = self._parent(rec, oid)
                if p is not None:
                    e.lineage = p
                    p.live += 1
            table.pin(oid)
            if e.state == READY or e.task is not None or self._reachable(e):
                continue
            e.location = None
            e.pulling = False
            p = e.lineage
            if p is not None and p is not ACTOR_RESULT and p.retries_left > 0:
                self.rebuild(p)
            else:           # (the verdict said it could be had: never a hang anyway)
                tasks.object_lost(e, ObjectLostError(
                    f"object {oid.hex()}, an argument of task '{rec.spec[S.NAME]}' being re-run, "
                    f"was lost: {self._why_not_entry(e, {}) or 'nothing can make it again'}"))
        tasks.start(t)

    # -- why an object cannot be made again (None: it can) ----------------------------------------
    def _why_not_entry(self, e, memo):
        rec = e.lineage
        if rec is not None:
            return self._why_not(rec, memo)
        owner = e.owner
        if owner is not None and owner != self.st.node_id:
            return (f"it belongs to node {owner} (it was put there, or made by a task submitted "
                    f"there): put objects are never rebuilt, and a task's result only by the "
                    f"node that submitted the task")
        return "it is a put object (only a task's result can be rebuilt, by re-running the task)"

    def _why_not(self, rec, memo):
        if rec is ACTOR_RESULT:
            return ("it was returned by an actor method, and actor methods are not re-run to "
                    "rebuild their results (the actor's state has moved on)")
        if rec in memo:
            return memo[rec]
        memo[rec] = None            # a lineage is a DAG: this only saves work
        memo[rec] = reason = self._check(rec, memo)
        return reason

    def _check(self, rec, memo):
        if rec.dropped is not None:
            return (f"the lineage of task '{rec.dropped}' that made it was dropped to bound "
                    f"the memory lineage takes (max_lineage_bytes={self.max_bytes}; "
                    f"RAY_max_lineage_bytes sets it)")
        spec = rec.spec
        name = spec[S.NAME]
        if rec.task is not None:
            return None             # being made right now
        if rec.retries_left <= 0:
            n = spec[S.MAX_RETRIES]
            return (f"task '{name}' that made it has no retries left (max_retries={n}"
                    f"{', all spent' if n else ''}; a rebuild re-runs the task and spends one)")
        strategy = (spec[S.EXTRA] or {}).get("strategy")
        if strategy is not None and strategy[0] == "NODE" and not strategy[2]:
            n = self.st.cluster.nodes.get(strategy[1])
            if n is None or not n.alive:
                return (f"task '{name}' that made it must run on node {strategy[1]}, which is "
                        f"gone (NodeAffinitySchedulingStrategy with soft=False)")
        for oid in self.st.tasks._pinned(spec):
            why = self._why_not_arg(rec, oid, memo)
            if why is not None:
                return (f"task '{name}' that made it needs its argument {oid.hex()}, which "
                        f"cannot be rebuilt: {why}")
        return None

    def _why_not_arg(self, rec, oid, memo):
        e = self.st.table.entries.get(oid)
        if e is None:
            p = self._parent(rec, oid)
            if p is not None:
                return self._why_not(p, memo)
            return ("it was freed (a put object or a large argument is kept for a rebuild only "
                    "while a result of the task lives on another node)")
        if e.state == READY or e.task is not None or self._reachable(e):
            return None
        return self._why_not_entry(e, memo)

    # -- helpers ----------------------------------------------------------------------------------
    def _reachable(self, e) -> bool:
        """A pending entry with no task here: can it still be fetched?"""
        nodes = self.st.cluster.nodes
        where = e.location
        if where is None and e.owner is not None and e.owner != self.st.node_id:
            where = e.owner
        n = nodes.get(where) if where is not None else None
        return n is not None and n.alive

    @staticmethod
    def _parent(rec, oid):
        tid = oid[:14]
        for p in rec.parents:
            if p.spec[S.TASK_ID] == tid:
                return p
        return None
