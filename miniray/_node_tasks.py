"""Task lifecycle inside the node daemon.

    SUBMIT -> waiting for args -> ready (queued by resource shape)
           -> dispatched to an idle worker (EXECUTE) -> TASK_DONE -> results sealed
    worker died -> retried (max_retries) or failed with WorkerCrashedError
    CANCEL -> removed from its queue, or interrupted / killed while running
    short tasks, no idle worker -> sent to a busy worker to run after its
           current task (``pipeline``: given back if that task blocks)

A task pins its argument objects (top-level deps, the arena-stored args,
refs nested in args) from SUBMIT until it is finished for good, so none of
them can be freed under it, retries included.  Part of the node's pure
state (``_node_state``): it emits instructions through ``st.send``,
``st.kill`` and ``st.poke``, and never touches a socket or a process.
"""
from __future__ import annotations

from . import _protocol as P
from . import _task_spec as S
from ._node_lineage import LineageManager
from ._node_pipeline import Pipelining
from ._object_table import READY, side_field
from ._scheduler import cpu_amount, format_resources, gpu_amount
from ._task_kind import TaskKind, kind_of
from .exceptions import (ActorDiedError, NodeDiedError, ObjectLostError, TaskCancelledError,
                         WorkerCrashedError)

M = P.M
ACTOR_CREATE = TaskKind.ACTOR_CREATE
ERROR = P.K.ERROR
# Queued tasks from which specs are compacted (see TaskManager._compact).
COMPACT_FROM = 1000
_NO_DEPS: list = []     # shared by compacted specs: never changed in place


class TaskExtra:
    """The fields of a task that most tasks never set, kept apart
    (``Task.x``, read and written through ``Task``'s properties of the
    same names): with ``returns``, ``cpu`` and ``kind`` derived from the
    spec, a queued task costs 11 slots instead of 19."""

    __slots__ = ("parent", "children", "gpu_ids", "origin", "lineage", "lent", "cancelled",
                 "direct", "cancel_children")

    def __init__(self):
        self.parent = None      # the task whose worker submitted this one
        self.children = None    # tid -> Task submitted while this one ran
        self.gpu_ids = None     # GPU ids it holds while it runs
        self.origin = None      # the peer link of the node that forwarded it here
        self.lineage = None     # its Lineage record, if submitted here in a cluster
        self.lent = False       # its CPUs are lent (its worker waits in get)
        self.cancelled = False
        self.direct = None      # the worker a direct call went to, until its DIRECT_DONE
        self.cancel_children = False    # cancelled recursively: so are tasks it submits later


class Task:
    __slots__ = ("spec", "tid", "deferred", "shape", "deps_left", "worker", "retries_left",
                 "submitter", "state", "actor", "x")

    def __init__(self, spec, submitter, actor=None):
        self.spec = spec
        self.tid = spec[S.TASK_ID]
        n = spec[S.NUM_RETURNS]
        if type(n) is not int or not 0 <= n <= 0xFFFF:
            raise ValueError(f"bad number of returns {n!r}")
        self.deferred = None    # its return's entry is not made yet (``_object_table.Entries``)
        self.shape = spec[S.RESOURCES]
        self.deps_left = 0
        self.worker = None
        self.retries_left = spec[S.MAX_RETRIES]
        self.submitter = submitter
        self.state = "waiting"
        self.actor = actor
        for k, v in self.shape:     # a malformed shape fails the submit here, before any change
            pass
        kind_of(spec)
        self.x = None           # a TaskExtra, once one of its fields is set

    parent = side_field(TaskExtra, "parent", None)
    children = side_field(TaskExtra, "children", None)
    gpu_ids = side_field(TaskExtra, "gpu_ids", None)
    origin = side_field(TaskExtra, "origin", None)
    lineage = side_field(TaskExtra, "lineage", None)
    lent = side_field(TaskExtra, "lent", False)
    cancelled = side_field(TaskExtra, "cancelled", False)
    direct = side_field(TaskExtra, "direct", None)
    cancel_children = side_field(TaskExtra, "cancel_children", False)

    # Derived from the spec, not stored: a queued task costs 8 bytes per slot.
    @property
    def kind(self):
        return kind_of(self.spec)

    @property
    def cpu(self) -> float:
        return cpu_amount(self.shape)

    @property
    def returns(self) -> list:
        """Its return ids (``tid`` + 2-byte index), made when asked for."""
        tid = self.tid
        return [tid + i.to_bytes(2, "little") for i in range(self.spec[S.NUM_RETURNS])]

    def on_ready(self, st, entry):
        if self.state != "waiting":
            return
        self.deps_left -= 1
        if self.deps_left == 0:
            st.tasks.deps_ready(self)


def crash_error(t: Task, how: str) -> WorkerCrashedError:
    """What a task gets whose worker died under it (``how``: its pid and
    exit, e.g. "(pid=12) killed by SIGKILL"), its retries spent."""
    retries = t.spec[S.MAX_RETRIES]
    return WorkerCrashedError(
        f"the worker running task '{t.spec[S.NAME]}' {how} while running it"
        f"{f', and all {retries} retries failed the same way' if retries else ''}. "
        f"A crash like this comes from the task itself (os._exit, a segfault in native "
        f"code, running out of memory): check the task, or raise max_retries.")


class TaskManager(Pipelining):
    def __init__(self, st):
        self.st = st
        self.tasks: dict[bytes, Task] = {}
        self.infeasible: list = []      # ready tasks no node can run (yet)
        self.warned: set = set()        # (client cid, shape) already told
        self.lineage = LineageManager(st, Task)     # rebuilding results lost with a node
        self.shared: dict = {}          # one copy of the spec fields queued tasks repeat
        self.last_args = None           # the inline args of the last compacted spec
        self.durations: dict = {}       # function key -> average seconds per task, measured
        self.cancels: dict = {}         # tid -> force: cancels waiting for a REVOKED
        self.stuck_timer = False        # the "pipeline" timer is armed
        self.killed_for: dict = {}      # wid -> tid of the task a forced cancel kills it for

    # -- submission -------------------------------------------------------------------
    def on_submit(self, client, msg) -> None:
        spec = msg[1]
        if len(self.tasks) >= COMPACT_FROM:
            spec = self._compact(spec)
        t = self.create(spec, client)
        self.start(t)
        if t.x is not None and t.parent is not None and t.parent.cancel_children:
            # Submitted by a task cancelled with its children while this
            # SUBMIT was on its way: cancelled as they were.
            self.cancel(t, False, True)

    def _compact(self, spec) -> tuple:
        """A long queue (a million tasks submitted in a loop) holds every
        decoded spec: the fields most of them repeat (function key, name,
        resource shape, no deps) are kept once, not once per task (~280
        bytes each).  Distinct values are few; the table is cleared if a
        program makes them many.  Inline args equal to the previous task's
        (a loop calling ``f.remote()`` or ``f.remote(x)``) share its bytes."""
        shared = self.shared
        if len(shared) > 4096:
            shared.clear()
        key, name, shape = spec[S.FN_KEY], spec[S.NAME], spec[S.RESOURCES]
        args = spec[S.ARGS]
        if type(args) is bytes and len(args) <= 1024:
            if args == self.last_args:
                args = self.last_args
            else:
                self.last_args = args
        return (spec[S.TASK_ID], shared.setdefault(key, key), shared.setdefault(name, name),
                args, spec[S.ARGS_OID], spec[S.DEPS] or _NO_DEPS, spec[S.NUM_RETURNS],
                shared.setdefault(shape, shape)) + spec[S.MAX_RETRIES:]

    def create(self, spec, client, actor=None) -> Task:
        # Everything that can raise on a malformed spec comes before the
        # first change of state: a bad submit fails alone, leaving nothing.
        t = Task(spec, client, actor)
        pinned = self._pinned(spec)
        if t.tid in self.tasks or type(t.tid) is not bytes or len(t.tid) != 14:
            raise ValueError(f"bad or duplicate task id {t.tid!r}")
        if pinned and not all(type(oid) is bytes for oid in pinned):
            raise ValueError("the task's argument ids are not object ids")
        self.tasks[t.tid] = t
        table = self.st.table
        if self.st.cluster.enabled:
            held = client.held
            for oid in t.returns:
                table.hold(held, oid).task = t
            if client.role != "node":
                self.lineage.attach(t, client)
        elif spec[S.NUM_RETURNS] == 1 and table.peek(t.tid + b"\0\0") is None:
            table.entries.defer(t)      # its entry is made when something needs it
        else:
            held = client.held
            for oid in t.returns:
                table.hold(held, oid).task = t
        for oid in pinned:
            table.pin(oid)
        w = client.worker
        if w is not None and w.task is not None:
            # Submitted from inside a running task: cancel(parent) reaches it.
            parent = t.parent = w.task
            if parent.children is None:
                parent.children = {}
            parent.children[t.tid] = t
        elif w is not None and w.lease is not None:
            self.st.leases.orphan(w, t)     # its parent's registration is on its way
        return t

    def fail_returns(self, client, tid, num_returns, exc) -> None:
        """A submit the node could not read: its caller holds its returns
        (ids derive from the task id), so they carry the error instead."""
        table = self.st.table
        payload = self.st.error_payload(exc)
        for i in range(num_returns):
            oid = tid + i.to_bytes(2, "little")
            e = table.hold(client.held, oid)
            if e.state != READY and e.task is None:
                self.st.notify(e, table.seal(e, ERROR, payload, ()))

    @staticmethod
    def _pinned(spec):
        pins = list(spec[S.DEPS])
        if spec[S.ARGS_OID] is not None:
            pins.append(spec[S.ARGS_OID])
        if spec[S.PINS]:
            pins.extend(spec[S.PINS])
        return pins

    def start(self, t: Task) -> None:
        """Wait for the task's top-level args, then make it ready."""
        entries = self.st.table.entries
        left = 0
        deps = list(t.spec[S.DEPS])
        if t.spec[S.ARGS_OID] is not None:
            deps.append(t.spec[S.ARGS_OID])
        ensure = self.st.cluster.transfer.ensure
        plain = t.actor is None
        for oid in deps:
            e = entries[oid]
            if e.state != READY:
                if plain and e.location is not None:
                    continue        # made on another node: placement decides where it goes
                left += 1
                if e.waiters is None:
                    e.waiters = [t]
                else:
                    e.waiters.append(t)
                ensure(e)
        t.deps_left = left
        if left == 0:
            self.deps_ready(t)

    def available_elsewhere(self, e) -> None:
        """``e`` was made on another node: the plain tasks waiting for it
        stop waiting (``place`` then runs them near their data, or fetches
        it first); other waiters stay."""
        ready, keep = [], []
        for w in e.waiters:
            if type(w) is Task and w.actor is None and w.state == "waiting":
                w.deps_left -= 1
                if w.deps_left == 0:
                    ready.append(w)
            else:
                keep.append(w)
        e.waiters = keep or None
        for t in ready:
            self.deps_ready(t)

    def _fetch_first(self, t: Task) -> bool:
        """Before a task runs here, its arguments made elsewhere are
        pulled: it waits for them again.  False when all are here."""
        entries = self.st.table.entries
        deps = list(t.spec[S.DEPS])
        if t.spec[S.ARGS_OID] is not None:
            deps.append(t.spec[S.ARGS_OID])
        missing = [e for e in map(entries.get, deps) if e.state != READY]
        if not missing:
            return False
        t.state = "waiting"
        t.deps_left = len(missing)
        ensure = self.st.cluster.transfer.ensure
        for e in missing:
            if e.waiters is None:
                e.waiters = [t]
            else:
                e.waiters.append(t)
            ensure(e)
        return True

    def deps_ready(self, t: Task) -> None:
        t.state = "ready"
        if t.actor is None and t.spec[S.DEPS]:
            err = self.dep_error(t)
            if err is not None:       # fails now, without waiting for a CPU
                self.seal_all(t, err)
                self.forget(t)
                return
        if t.actor is not None:
            self.st.actors.pump(t.actor)
            return
        self.place(t)

    def place(self, t: Task) -> None:
        """Here, on another node, or parked until some node can run it."""
        st = self.st
        cluster = st.cluster
        if cluster.enabled and t.origin is None:
            where = cluster.place(t)
            if where == "infeasible":
                self._park(t)
                return
            if where is not None and cluster.forward(t, where):
                return
            if self._fetch_first(t):
                return
            if not st.resources.fits_ever(t.shape):
                self._park(t)
                return
        elif not st.resources.fits_ever(t.shape):
            self._park(t)
            return
        st.ready.push(t.shape, t)
        st.schedule_needed = True

    def _park(self, t: Task) -> None:
        """No node can run it now: it waits (as in Ray) for a node that can
        to join; its caller is told once per resource shape."""
        st = self.st
        t.state = "infeasible"
        self.infeasible.append(t)
        client = t.submitter
        key = (client.cid, t.shape)
        if key not in self.warned and client.role == "driver":
            self.warned.add(key)
            if st.cluster.enabled:
                where = f"no node of the cluster has (it has {format_resources(st.cluster.total())})"
            else:
                where = f"this node does not have (it has {format_resources(st.resources.total)})"
            st.send(client, (M.WARNING, (
                f"task '{t.spec[S.NAME]}' asks for {format_resources(t.shape)}, which {where}: "
                f"it stays pending until a node that has them joins. Lower the request in "
                f"@remote(...)/.options(...), or add such a node.")))

    def retry_infeasible(self) -> None:
        """The cluster changed: parked tasks may fit somewhere now."""
        if not self.infeasible:
            return
        parked, self.infeasible = self.infeasible, []
        for t in parked:
            if t.state == "infeasible":
                t.state = "ready"
                self.place(t)

    def dep_error(self, t: Task):
        """The payload of the first failed top-level arg, if any."""
        entries = self.st.table.entries
        for oid in t.spec[S.DEPS]:
            e = entries.get(oid)
            if e is not None and e.kind == ERROR:
                return e.inline
        return None

    # -- dispatch -----------------------------------------------------------------------
    def schedule(self) -> None:
        st = self.st
        ready, res = st.ready, st.resources
        if ready.count:
            for shape in ready.shapes():
                gpus = gpu_amount(shape)
                kind = "gpu" if gpus else "cpu"
                while True:
                    t = ready.peek(shape)
                    if t is None or not res.fits_now(shape):
                        break
                    i = st.idle_index(kind)
                    if i < 0:
                        self._grow_pool()
                        break
                    gpu_ids = None
                    if gpus:
                        gpu_ids = res.take_gpus(gpus)
                        if gpu_ids is None:
                            break
                    ready.pop(shape)
                    err = self.dep_error(t)
                    if err is not None:
                        if gpu_ids:
                            res.give_gpus(gpu_ids, gpus)
                        self.seal_all(t, err)
                        self.forget(t)
                        continue
                    w = st.idle.pop(i)
                    res.acquire(shape)
                    if gpu_ids is not None:
                        t.gpu_ids = gpu_ids
                    w.kind = kind
                    self.dispatch(t, w)
                if not gpus and self.durations and ready.peek(shape) is not None:
                    self.pipeline(shape)
        st.actors.schedule()
        if st.leases.leases and (ready.count or st.actors.placing) and st.leases.revoke_all():
            self.schedule()     # work waits: leased workers come back (some at once)

    def _grow_pool(self) -> None:
        """Start workers for ready tasks that could run now but have no idle
        worker (workers blocked in get lend their CPUs), minus those already
        starting."""
        st = self.st
        runnable = st.ready.count_runnable(st.resources.available, limit=8)
        blocked = sum(1 for w in st.workers.values() if w.blocked)
        cap = max(4, 2 * st.pool_size) + blocked
        want = min(runnable, cap - st.pool_count()) - st.starting
        for _ in range(max(0, min(want, 4))):
            st.spawn_worker()

    def dispatch(self, t: Task, w, queued=False) -> None:
        """EXECUTE ``t`` on ``w``; ``queued``: to run after its current task
        (``pipeline``: ``t`` is in ``w.queued`` already)."""
        st = self.st
        if not queued and (st.spill.files or st.spill.deferred) and \
                st.spill.defer_dispatch(t, w):
            return          # an argument is on disk: EXECUTE once it is back (_node_spill)
        client = w.client
        spec = t.spec
        key = spec[S.FN_KEY]
        blob = None
        if key not in w.fn_keys:
            blob = st.functions.get(key)
            if blob is None:
                if queued:
                    w.queued.remove(t)
                elif t.actor is None:
                    self._release_worker(w, t)
                self.fail(t, ObjectLostError(
                    f"the code of '{spec[S.NAME]}' was never registered with the node"))
                return
            w.fn_keys.add(key)
        entries = st.table.entries
        payload_for = st.payload_for
        deps = [payload_for(client, entries[d]) for d in spec[S.DEPS]]
        aoid = spec[S.ARGS_OID]
        args = spec[S.ARGS] if aoid is None else payload_for(client, entries[aoid])
        t.state = "running"
        t.worker = w
        if queued:
            gpu_ids = None
        elif t.actor is None:
            w.task = t
            w.state = "busy"
            if w.batch:
                self._sample(w)
            w.since = w.turn = st.now
            gpu_ids = None if t.x is None else t.gpu_ids
        else:
            gpu_ids = t.actor.gpu_ids
        if gpu_ids is None:
            st.send(client, (M.EXECUTE, spec, blob, deps, args))
        else:
            st.send(client, (M.EXECUTE, spec, blob, deps, args, {"GPU": gpu_ids}))

    # -- completion -------------------------------------------------------------------
    def on_task_done(self, client, msg) -> None:
        tid, results, retryable = msg[1], msg[2], msg[3]
        note = msg[4] if len(msg) > 4 else None
        t = self.tasks.get(tid)
        w = client.worker
        if t is None:
            return
        st = self.st
        if t.actor is not None and t.kind == ACTOR_CREATE:
            # The constructor's outcome: results == [(None, kind, data, ())];
            # ``note`` is its error's text (the node never unpickles it).
            kind = results[0][1]
            self.forget(t)
            t.actor.inflight.pop(tid, None)
            st.actors.on_ready(t.actor, (note or "(no error text)") if kind == ERROR else None)
            return
        retry = retryable and t.retries_left > 0 and not t.cancelled
        if t.actor is None and w is not None:
            if w.task is not t:
                return      # stale: a task cancelled while queued at this worker (pipeline)
            self._measured(w, t)
            self._release_worker(w, t)
            if retry:
                t.retries_left -= 1
                t.state = "ready"
                st.ready.push_front(t.shape, t)
                return
        if t.actor is not None and retry:
            # An actor method that raised a retryable exception runs again,
            # after whatever calls the actor already received.
            a = t.actor
            a.inflight.pop(tid, None)
            t.retries_left -= 1
            t.state = "ready"
            t.worker = None
            a.queue.appendleft(t)
            st.actors.pump(a)
            return
        self.seal_results(t, results, client)
        if t.actor is not None:
            st.actors.call_done(t)
        if t.x is not None and t.origin is not None:
            st.cluster.task_finished_for_peer(t, results)
        self.forget(t)
        if w is not None and t.actor is None and t.submitter.lease_ok:
            st.leases.maybe_grant(w, t)     # its driver may call this worker directly next

    def _release_worker(self, w, t) -> None:
        st = self.st
        st.resources.release(t.shape)
        if t.x is not None:
            if t.gpu_ids is not None:
                st.resources.give_gpus(t.gpu_ids, gpu_amount(t.shape))
                t.gpu_ids = None
            if t.lent:
                st.resources.available["CPU"] -= t.cpu
                t.lent = False
        w.task = None
        t.worker = None
        q = w.queued
        if q and w.state != "dead":
            # The next task it was sent (``pipeline``) runs now, on the same
            # resources; a schedule pass tops its queue up.
            nxt = w.task = q.popleft()
            if not q:
                w.queued = None
            st.resources.acquire(nxt.shape)
            st.schedule_needed = True
            return
        if w.state != "dead":
            extra = t.spec[S.EXTRA]
            max_calls = extra.get("max_calls") if extra else None
            if max_calls and w.client is not None:
                # @remote(max_calls=N): the worker goes after N runs of this
                # function (leaks in native code die with it), as in Ray.
                key = t.spec[S.FN_KEY]
                w.calls[key] = w.calls.get(key, 0) + 1
                if w.calls[key] >= max_calls:
                    w.state = "exiting"
                    st.send(w.client, (M.EXIT, f"max_calls={max_calls} reached"))
                    st.schedule_needed = True
                    return
            st.worker_idle(w)
        st.schedule_needed = True

    def seal_results(self, t: Task, results, client) -> None:
        st = self.st
        table = st.table
        for oid, kind, data, contained in results:
            if t.deferred is not None and oid == t.tid + b"\0\0":
                e = table.entries.make(t)       # its return's entry, made only now
            else:
                e = table.get_or_create(oid)
            if e.state == READY:
                client.unsealed.discard(oid)
                continue        # a re-run made a return that is here already
            if data is None:
                client.unsealed.discard(oid)
                if e.offset < 0:
                    continue
            elif e.offset >= 0 and e.state != READY:
                table.drop_unsealed(oid)
                e = table.get_or_create(oid)
            e.task = None
            st.notify(e, table.seal(e, kind, data, contained))
            table.release(e)

    def seal_all(self, t: Task, error_payload: bytes) -> None:
        """``t`` failed without running (to the end): every return is that
        error; a peer's task reports it to its node."""
        st = self.st
        table = st.table
        for oid in t.returns:
            e = table.get_or_create(oid)
            if e.state == READY:
                continue
            if e.offset >= 0:
                table.drop_unsealed(oid)
                e = table.get_or_create(oid)
            e.task = None
            st.notify(e, table.seal(e, ERROR, error_payload, ()))
            table.release(e)
        if t.x is not None and t.origin is not None:
            st.cluster.task_finished_for_peer(t, ())

    def object_lost(self, e, exc) -> None:
        """An object that cannot be had any more: it becomes that error."""
        st = self.st
        e.location = None
        e.pulling = False
        if e.state != READY:
            st.notify(e, st.table.seal(e, ERROR, st.error_payload(exc), ()))
            st.table.release(e)

    def remote_node_died(self, t: Task, node_id, why) -> None:
        """The node a task was forwarded to died: place it again while
        retries remain (as for a crashed worker); an actor call goes to
        its actor again (restarted elsewhere, or failing clearly)."""
        if t.spec[S.ACTOR_ID] is not None:
            if t.retries_left > 0 and not t.cancelled:
                t.retries_left -= 1
                t.state = "ready"
                self.st.cluster.call_remote_actor(t)
                return
            self.fail(t, ActorDiedError(
                f"the actor of call '{t.spec[S.NAME]}' lived on node {node_id}, which died "
                f"({why}), while the call was sent there; it has no retries left "
                f"(max_task_retries)", actor_id=t.spec[S.ACTOR_ID]))
            return
        if t.retries_left > 0 and not t.cancelled:
            t.retries_left -= 1
            t.state = "ready"
            self.place(t)
            return
        self.fail(t, NodeDiedError(
            f"task '{t.spec[S.NAME]}' was running on node {node_id}, which died ({why}), and "
            f"it has no retries left (max_retries)."))

    def fail(self, t: Task, exc: BaseException) -> None:
        self.seal_all(t, self.st.error_payload(exc))
        if t.actor is not None:
            self.st.actors.call_done(t)
        self.forget(t)

    def forget(self, t: Task) -> None:
        """The task is finished for good: unpin its args."""
        if t.deferred is not None:
            self.st.table.entries.make(t)   # not sealed (a TASK_DONE without it): stays pending
        tasks = self.tasks
        if tasks.pop(t.tid, None) is None:
            return
        if not tasks:
            tasks.clear()       # a dict keeps the size of its longest queue until cleared
        t.state = "done"
        if self.cancels:
            self.cancels.pop(t.tid, None)
        if t.x is not None:         # (most tasks have none of these)
            if t.parent is not None:
                if t.parent.children:
                    t.parent.children.pop(t.tid, None)
                t.parent = None
            if t.children:
                for child in t.children.values():
                    child.parent = None
                t.children = None
            if t.lineage is not None:
                self.lineage.finished(t)
            if t.direct is not None:
                self.st.direct.task_ended(t)
        unpin = self.st.table.unpin
        for oid in self._pinned(t.spec):
            unpin(oid)

    # -- faults and cancellation ------------------------------------------------------------
    def worker_died(self, w) -> None:
        self._requeue(w)
        t = w.task
        self._release_worker(w, t)
        target = self.killed_for.pop(w.wid, None) if self.killed_for else None
        if t.cancelled:
            self.cancels.pop(t.tid, None)
            self.fail(t, TaskCancelledError(t.tid.hex()))
            return
        if target is not None and target != t.tid:
            # Killed to cancel another task, which had just finished: this
            # one did not crash the worker and spends no retry.
            t.state = "ready"
            self.st.ready.push_front(t.shape, t)
            return
        if t.retries_left > 0:
            self.again(t)
            return
        self.fail(t, crash_error(t, f"(pid={w.pid}) {w.exit_desc}"))

    def again(self, t: Task) -> None:
        """Queue ``t`` to run again, spending one of its retries."""
        t.retries_left -= 1
        t.state = "ready"
        self.st.ready.push_front(t.shape, t)
        self.st.schedule_needed = True

    def worker_blocked(self, w) -> None:
        """A worker running a task waits in get/wait: lend its CPUs back so
        the tasks it waits for can run (nested tasks never deadlock)."""
        if w.lease is not None:
            self.st.leases.blocked(w)
            return
        self.revoke(w, poke=False)  # tasks queued behind the blocked one come back (``pipeline``)
        t = w.task
        if t is not None and t.cpu and not t.lent:
            t.lent = True
            self.st.resources.available["CPU"] += t.cpu
            self.st.schedule_needed = True

    def worker_unblocked(self, w) -> None:
        """Take the lent CPUs back (possibly oversubscribing for a moment)."""
        if w.lease is not None:
            self.st.leases.unblocked(w)
            return
        t = w.task
        if t is not None and t.lent:
            t.lent = False
            self.st.resources.available["CPU"] -= t.cpu

    def interrupt(self, w, t, force) -> None:
        """Cancel ``t``, which ``w`` runs: CANCEL_TASK (+ poke), or a kill."""
        if force:
            self.killed_for[w.wid] = t.tid
            self.st.kill(w)
        elif w.client is not None:
            self.st.send(w.client, (M.CANCEL_TASK, t.tid))
            self.st.poke(w)

    def on_cancel(self, client, msg) -> None:
        oid, force = msg[1], msg[2]
        recursive = msg[3] if len(msg) > 3 else True
        t = self.tasks.get(oid[:14])
        if t is not None:
            self.cancel(t, force, recursive)

    def cancel(self, t: Task, force: bool, recursive: bool) -> None:
        """Dequeue, interrupt (CANCEL_TASK + poke) or, with ``force``, kill;
        with ``recursive`` (Ray's default) the tasks it submitted too."""
        if recursive:
            t.cancel_children = True
            if t.children:
                for child in list(t.children.values()):
                    self.cancel(child, force and child.actor is None, True)
        if t.cancelled:
            return
        st = self.st
        if t.actor is not None:
            st.actors.cancel(t, force)
            return
        t.cancelled = True
        if t.state == "remote":
            node_id = st.cluster.forwarded.get(t.tid)
            link = st.cluster.link(node_id) if node_id else None
            if link is not None:
                st.send(link, (M.CANCEL, t.returns[0] if t.returns else t.tid + b"\0\0",
                               force, recursive))
            return
        if t.state == "running" and t.worker is not None:
            # At a worker with a queue (``pipeline``), it may not have started
            # yet, or have finished: decided when the queue comes back.
            if not self.cancel_pipelined(t, force):
                self.interrupt(t.worker, t, force)
            return
        if t.state == "ready":
            st.ready.remove(t.shape, t)
        elif t.state == "infeasible":
            self.infeasible.remove(t)
        t.state = "cancelled"
        self.fail(t, TaskCancelledError(t.tid.hex()))
