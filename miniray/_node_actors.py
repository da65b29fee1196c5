"""Actors inside the node daemon: placement, call queues, death and restarts.

An actor is a dedicated worker that keeps its instance.  Its id doubles as an
object id whose entry (kind ACTOR_HANDLE) is held by every process holding a
handle and pinned by every stored object that contains one: when the last
handle goes, the entry's release ends the actor (unless it is detached).

Calls queue per actor in submission order and go to the actor's worker as
soon as their args are ready and every earlier call has gone, so the worker
receives them in order and can run them back to back.  States:

    placing ──(resources fit)──► awaiting_worker ──(worker bound)──► starting
                                       ▲                                │ constructor done
                                       │ worker died, restarts left     ▼
                                       └──────────────────────────── alive
    any state ──(killed, out of scope, constructor failed, no restarts left)──► dead

Part of the node's pure state (``_node_state``): no sockets, no processes;
it kills and messages workers through the state's instructions.  The
actor's ``meta`` (class name, method table) is bytes made by the creating
client: stored and handed back, never decoded here.
"""
from __future__ import annotations

from collections import deque

from . import _protocol as P
from . import _task_spec as S
from ._object_table import READY
from ._scheduler import gpu_amount
from ._task_kind import TaskKind
from .exceptions import (ActorDiedError, ActorUnschedulableError, RaySystemError,
                         TaskCancelledError)

M = P.M
ACTOR_CREATE = TaskKind.ACTOR_CREATE
MAX_START_FAILURES = 5    # workers dying before HELLO, in a row, before actors give up


def _one_at_a_time(a) -> bool:
    """The actor runs its calls one by one, in the order they were sent."""
    extra = a.spec[S.EXTRA] or {}
    return (not extra.get("is_async") and extra.get("max_concurrency", 1) <= 1
            and not extra.get("concurrency_groups"))


class Actor:
    __slots__ = ("aid", "name", "namespace", "class_name", "spec", "shape", "state", "worker",
                 "queue", "inflight", "restarts_left", "max_task_retries", "detached",
                 "death", "meta", "exiting", "pid", "num_restarts", "creator", "arg_pins",
                 "gpu_ids")

    def __init__(self, aid, spec, opts, creator):
        self.aid = aid
        self.spec = spec
        self.name = opts.get("name")
        self.namespace = opts.get("namespace")
        self.class_name = spec[S.NAME]
        self.shape = spec[S.RESOURCES]
        self.state = "placing"
        self.worker = None
        self.queue = deque()
        self.inflight = {}
        self.restarts_left = opts.get("max_restarts", 0)
        self.max_task_retries = opts.get("max_task_retries", 0)
        self.detached = opts.get("lifetime") == "detached"
        self.death = None
        self.meta = opts.get("meta")
        self.exiting = False
        self.pid = None
        self.num_restarts = 0
        self.creator = creator
        self.arg_pins = ()      # constructor args kept for restarts
        self.gpu_ids = None     # GPU ids held from placement to death

    def describe(self) -> str:
        name = f" '{self.name}'" if self.name else ""
        pid = f", pid={self.pid}" if self.pid else ""
        return f"actor {self.class_name}{name} (id={self.aid.hex()}{pid})"


class ActorManager:
    def __init__(self, st):
        self.st = st
        self.actors: dict[bytes, Actor] = {}
        self.named: dict[tuple, bytes] = {}
        self.placing: deque = deque()

    def _name_taken(self, client, rid, opts, aid, meta) -> None:
        name = opts.get("name")
        if opts.get("get_if_exists"):
            self.st.send(client, (M.REPLY, rid, True, (aid, meta, False)))
            return
        self.st.send(client, (M.REPLY, rid, False, ValueError(
            f"an actor named '{name}' already exists in namespace "
            f"'{opts.get('namespace')}'. Use miniray.get_actor('{name}') to get it, or "
            f".options(name='{name}', get_if_exists=True) to create it only if missing.")))

    def _claimed(self, client, msg, ok, taken) -> None:
        """The head answered a name claim: create the actor, or say whose
        the name is."""
        _, rid, spec, opts = msg
        if not ok:
            self.st._request_failed(client, msg, RaySystemError(
                f"the head could not reserve the actor name '{opts.get('name')}': {taken}"))
        elif taken is not None:
            self._name_taken(client, rid, opts, *taken)
        elif client.closed:
            self.st.cluster.actor_gone(spec[S.ACTOR_ID])     # give the name back
        else:
            try:
                self.on_create(client, msg, claimed=True)
            except Exception as exc:        # that request fails, not the head's reply
                if spec[S.ACTOR_ID] not in self.actors:
                    self.st.cluster.actor_gone(spec[S.ACTOR_ID])     # give the name back
                self.st._request_failed(client, msg, exc)

    def count_alive(self) -> int:
        return sum(1 for a in self.actors.values() if a.state != "dead")

    # -- creation ---------------------------------------------------------------------
    def on_create(self, client, msg, claimed=False) -> None:
        _, rid, spec, opts = msg
        st = self.st
        name = opts.get("name")
        key = (opts.get("namespace"), name)
        aid = spec[S.ACTOR_ID]
        cluster = st.cluster
        if name:
            existing = self.actors.get(self.named.get(key))
            if existing is not None and existing.state != "dead":
                self._name_taken(client, rid, opts, existing.aid, existing.meta)
                return
            if cluster.enabled and client.role != "node" and not claimed:
                # Names are unique in the whole cluster: the head keeps them.
                if not cluster.is_head:
                    cluster.ask_head_then(P.Q.CLAIM_ACTOR_NAME, (
                        name, opts.get("namespace"), aid, opts.get("meta"), cluster.node_id),
                        lambda ok, taken: self._claimed(client, msg, ok, taken))
                    return
                taken = cluster.claim_name(aid, name, opts.get("namespace"), opts.get("meta"),
                                           cluster.node_id)
                if taken is not None:
                    self._name_taken(client, rid, opts, *taken)
                    return
                try:
                    self.on_create(client, msg, claimed=True)
                except Exception:
                    if aid not in self.actors:
                        cluster.actor_gone(aid)     # the name is free again
                    raise
                return
        if aid in self.actors:
            raise ValueError(f"actor id {aid.hex()} is already in use")
        if cluster.enabled and client.role != "node":
            where = cluster.place_shape(spec[S.RESOURCES], spec[S.EXTRA])
            if where not in (None, "infeasible"):
                cluster.forward_actor(client, rid, spec, opts, where)
                return
        a = Actor(aid, spec, opts, client)
        table = st.table
        t = st.tasks.create(spec, client, actor=a)
        self.actors[aid] = a
        if name:
            self.named[key] = aid
        e = table.hold(client.held, aid)
        e.kind = P.K.ACTOR_HANDLE
        e.state = READY
        if a.detached:
            table.pin(aid)
        if a.restarts_left != 0:
            # A restart runs the constructor again with the same args: keep
            # them alive as long as the actor, not just until the first run.
            a.arg_pins = st.tasks._pinned(spec)
            for oid in a.arg_pins:
                table.pin(oid)
        a.queue.append(t)
        st.tasks.start(t)
        if rid is not None:
            st.send(client, (M.REPLY, rid, True, (aid, a.meta, True)))
        cluster.actor_created(aid, name, opts.get("namespace"), a.meta)
        why = st.resources.never_fits(a.shape)
        if why:
            self._die(a, ActorUnschedulableError(
                f"{a.describe()} {why}: it can never start. Lower num_cpus/resources in "
                f".options(...) or start the node with more resources.", actor_id=aid))
            return
        self.placing.append(a)
        st.schedule_needed = True

    def schedule(self) -> None:
        st = self.st
        while self.placing:
            a = self.placing[0]
            if a.state == "dead":
                self.placing.popleft()
                continue
            res = st.resources
            if not res.fits_now(a.shape):
                return
            gpus = gpu_amount(a.shape)
            if gpus:
                a.gpu_ids = res.take_gpus(gpus)
                if a.gpu_ids is None:
                    return
            self.placing.popleft()
            res.acquire(a.shape)
            a.state = "awaiting_worker"
            i = st.idle_index("gpu" if gpus else "cpu")
            if i >= 0:
                self._bind(a, st.idle.pop(i))
            else:
                st.spawn_worker()

    def claim_new_worker(self, w) -> bool:
        """A fresh worker connected: the first actor waiting for one takes it."""
        for a in self.actors.values():
            if a.state == "awaiting_worker" and a.worker is None:
                self._bind(a, w)
                return True
        return False

    def worker_start_failed(self, w, failures: int) -> None:
        """A worker died before it connected.  Actors waiting for a worker
        get another one; after several such deaths in a row, they fail
        instead (workers cannot start: a broken environment)."""
        waiting = [a for a in self.actors.values()
                   if a.state == "awaiting_worker" and a.worker is None]
        if not waiting:
            return
        if failures >= MAX_START_FAILURES:
            for a in waiting:
                self._die(a, ActorDiedError(
                    f"{a.describe()} could not start: {failures} worker processes in a row "
                    f"died before connecting (the last one {w.exit_desc}). Check that "
                    f"'python -m miniray._worker_main' runs in this environment "
                    f"(see the node's log).", actor_id=a.aid))
            return
        if self.st.starting < len(waiting):
            self.st.spawn_worker()

    def _bind(self, a: Actor, w) -> None:
        st = self.st
        a.worker = w
        a.pid = w.pid
        w.actor = a
        w.kind = "gpu" if a.gpu_ids else "cpu"
        w.state = "actor"
        a.state = "starting"
        if st.pool_count() < st.pool_size:
            st.spawn_worker()
        self.pump(a)

    # -- calls --------------------------------------------------------------------------
    def on_call(self, client, msg, origin=None) -> None:
        spec = msg[1]
        tasks = self.st.tasks
        a = self.actors.get(spec[S.ACTOR_ID])
        if a is None and self.st.cluster.enabled and origin is None:
            # Lives on another node (or is unknown here): the call goes there.
            t = tasks.create(spec, client)
            self.st.cluster.call_remote_actor(t)
            return
        t = tasks.create(spec, client, actor=a)
        t.origin = origin
        if a is None or a.state == "dead":
            tasks.fail(t, a.death if a is not None else ActorDiedError(
                "the actor is unknown to this node (it died and was forgotten)"))
            return
        a.queue.append(t)
        tasks.start(t)

    def pump(self, a: Actor) -> None:
        """Send the calls that may run now, as Ray orders them: per caller,
        in submission order (a call whose args are not ready holds back the
        later calls of its caller only); a threaded or async actor gets every
        ready call at once.  Until the constructor is done only it goes."""
        if a.worker is None or a.worker.client is None or a.state in ("dead", "placing"):
            return
        q = a.queue
        if not q:
            return
        tasks = self.st.tasks
        in_order = _one_at_a_time(a)
        held_back = None        # callers with an earlier call still waiting
        keep = None
        while q:
            t = q.popleft()
            if t.state == "cancelled" or t.state == "done":
                continue
            if a.state == "starting" and t.kind != ACTOR_CREATE:
                q.appendleft(t)
                break
            if t.state != "ready" or (held_back is not None and t.submitter in held_back):
                if in_order:
                    if held_back is None:
                        held_back = set()
                    held_back.add(t.submitter)
                if keep is None:
                    keep = deque()
                keep.append(t)
                continue
            err = tasks.dep_error(t)
            if err is not None:
                tasks.seal_all(t, err)
                tasks.forget(t)
                continue
            a.inflight[t.tid] = t
            tasks.dispatch(t, a.worker)
        if keep:
            keep.extend(q)
            a.queue = keep

    def on_ready(self, a: Actor, error_text) -> None:
        """The constructor finished (TASK_DONE of the ``__init__`` task);
        ``error_text`` says why it failed, or is None."""
        if a.state == "dead":
            return
        if error_text is not None:
            text = error_text
            w = a.worker
            if w is not None and w.client is not None:
                # Its process holds no instance: it goes, the pool refills.
                self.st.send(w.client, (M.EXIT, "actor constructor failed"))
            self._die(a, ActorDiedError(
                f"{a.describe()} died because its constructor raised:\n{text}", actor_id=a.aid))
            return
        a.state = "alive"
        self.pump(a)
        if a.exiting and not a.queue and not a.inflight:
            # Every handle went while the constructor ran.
            self._exit_gracefully(a)

    def call_done(self, t) -> None:
        a = t.actor
        a.inflight.pop(t.tid, None)
        if t.kind == ACTOR_CREATE or a.state == "dead":
            return
        if a.exiting and not a.queue and not a.inflight:
            self._exit_gracefully(a)

    def lost_in_flight(self, a: Actor, t) -> None:
        """A direct call sent to a worker of ``a`` that is gone (it died, or
        the actor restarted since): retried as a call running when its
        worker died, within max_task_retries, else failed."""
        budget = t.retries_left if t.retries_left is not None else a.max_task_retries
        if budget == 0:
            self.st.tasks.fail(t, ActorDiedError(
                f"{a.describe()} died while running '{t.spec[S.NAME]}' (its worker process "
                f"exited); set max_task_retries to retry calls like this.", actor_id=a.aid))
            return
        if t.retries_left and t.retries_left > 0:
            t.retries_left -= 1
        t.state = "ready"
        t.direct = None
        a.queue.append(t)
        self.pump(a)

    # -- lifetime -------------------------------------------------------------------------
    def handles_gone(self, entry) -> None:
        a = self.actors.get(entry.oid)
        if a is None or a.state == "dead" or a.detached:
            return
        a.exiting = True
        key = (a.namespace, a.name)
        if a.name and self.named.get(key) == a.aid:
            # It only drains its last calls now: get_actor must not hand it
            # out, and get_if_exists=True must make a new one.
            del self.named[key]
        if not a.queue and not a.inflight:
            self._exit_gracefully(a)

    def owner_gone(self, client) -> None:
        """The process that created these actors is gone: as in Ray, a
        non-detached actor shares its owner's fate, whoever else holds a
        handle to it."""
        for a in list(self.actors.values()):
            if a.creator is client and not a.detached and a.state != "dead":
                w = a.worker
                self._die(a, ActorDiedError(
                    f"{a.describe()} died because its owner, the process that created it "
                    f"(pid={client.pid}), exited. An actor lives as long as its owner unless "
                    f"it is created with .options(lifetime='detached').", actor_id=a.aid))
                if w is not None and w.client is not None:
                    self.st.send(w.client, (M.EXIT, "actor's owner exited"))

    def _exit_gracefully(self, a: Actor) -> None:
        w = a.worker
        self._die(a, ActorDiedError(
            f"{a.describe()} exited because every handle to it went out of scope.",
            actor_id=a.aid))
        if w is not None and w.client is not None:
            self.st.send(w.client, (M.EXIT, "actor out of scope"))

    def on_kill(self, client, msg) -> None:
        aid, no_restart = msg[1], msg[2]
        reason = msg[3] if len(msg) > 3 else None
        a = self.actors.get(aid)
        if a is None:
            node_id = self.st.cluster.actor_nodes.get(aid)
            link = self.st.cluster.link(node_id) if node_id else None
            if link is not None:
                self.st.send(link, msg)       # it lives there
            return
        if a.state == "dead":
            return
        if no_restart or a.restarts_left == 0:
            a.restarts_left = 0
            w = a.worker
            self._die(a, ActorDiedError(
                reason or f"{a.describe()} was killed by miniray.kill(); calls to it cannot run.",
                actor_id=aid))
            # An actor ending itself (exit_actor) exits on its own, after
            # its atexit handlers.
            if w is not None and w.client is not client:
                self.st.kill(w)
        elif a.worker is not None:
            self.st.kill(a.worker)

    def worker_died(self, w) -> None:
        a = w.actor
        w.actor = None
        if a.worker is not w or a.state == "dead":
            return
        a.worker = None
        reason = f"its worker process (pid={w.pid}) {w.exit_desc}"
        if a.restarts_left != 0 and not a.exiting:
            if a.restarts_left > 0:
                a.restarts_left -= 1
            a.num_restarts += 1
            retry, fail = [], []
            st = self.st
            tasks = st.tasks
            for t in [t for t in a.queue if t.kind == ACTOR_CREATE]:
                a.queue.remove(t)       # never sent: the new constructor replaces it
                tasks.forget(t)
            for t in a.inflight.values():
                if t.kind == ACTOR_CREATE:
                    tasks.forget(t)     # died in its constructor
                    continue
                budget = t.retries_left if t.retries_left is not None else a.max_task_retries
                (retry if budget != 0 else fail).append(t)
            a.inflight.clear()
            for t in fail:
                tasks.fail(t, ActorDiedError(
                    f"{a.describe()} died while running '{t.spec[S.NAME]}': {reason}. The "
                    f"actor is restarting; set max_task_retries to retry calls like this.",
                    actor_id=a.aid))
            for t in reversed(retry):
                if t.retries_left and t.retries_left > 0:
                    t.retries_left -= 1
                t.state = "ready"
                t.worker = None
                t.direct = None     # runs again through the node (and counts as pending there)
                a.queue.appendleft(t)
            # The constructor task has no return objects, so the (maybe gone)
            # creator's connection is only named, never written to.  Its
            # EXTRA says how often it restarted (was_current_actor_reconstructed).
            spec = list(a.spec)
            spec[S.EXTRA] = dict(spec[S.EXTRA] or {}, num_restarts=a.num_restarts)
            spec[S.TASK_ID] = a.spec[S.TASK_ID]
            init = tasks.create(tuple(spec), a.creator, actor=a)
            a.queue.appendleft(init)
            tasks.start(init)
            a.state = "awaiting_worker"
            st.spawn_worker()
            return
        if a.num_restarts:
            hint = (f"It was restarted {a.num_restarts} time(s) and has no restarts left "
                    f"(max_restarts); calls to it cannot run.")
        else:
            cause = ("A signal like this comes from outside (kill -9, the OOM killer) or "
                     "from native code crashing" if "signal" in (w.exit_desc or "") or
                     "SIG" in (w.exit_desc or "") else
                     "The actor's code exited (sys.exit, os._exit) or the interpreter crashed")
            hint = (f"Calls to it cannot run. {cause}; pass max_restarts=N (and "
                    f"max_task_retries=M) in @remote(...)/.options(...) to restart it "
                    f"after a crash.")
        self._die(a, ActorDiedError(f"{a.describe()} died: {reason}. {hint}", actor_id=a.aid))

    def _die(self, a: Actor, exc: ActorDiedError) -> None:
        st = self.st
        prev = a.state
        a.state = "dead"
        a.death = exc
        if prev not in ("placing",):
            st.resources.release(a.shape)
            if a.gpu_ids:
                st.resources.give_gpus(a.gpu_ids, gpu_amount(a.shape))
                a.gpu_ids = None
        if a in self.placing:
            self.placing.remove(a)
        pending = list(a.inflight.values()) + list(a.queue)
        a.inflight.clear()
        a.queue.clear()
        for t in pending:
            if t.state != "done":
                st.tasks.fail(t, exc)
        if a.name and self.named.get((a.namespace, a.name)) == a.aid:
            del self.named[(a.namespace, a.name)]
        st.cluster.actor_gone(a.aid, a.creator)
        w = a.worker
        a.worker = None
        if w is not None:
            w.actor = None
        st.schedule_needed = True
        table = st.table
        if a.detached:
            a.detached = False
            table.unpin(a.aid)
        pins, a.arg_pins = a.arg_pins, ()
        for oid in pins:
            table.unpin(oid)

    def cancel(self, t, force) -> None:
        if t.state in ("waiting", "ready") and t.worker is None:
            a = t.actor
            try:
                a.queue.remove(t)
            except ValueError:
                pass
            t.state = "cancelled"
            self.st.tasks.fail(t, TaskCancelledError(t.tid.hex()))
            self.pump(a)
        elif t.worker is not None and t.worker.client is not None:
            t.cancelled = True
            self.st.send(t.worker.client, (M.CANCEL_TASK, t.tid))
            self.st.poke(t.worker)
            a = t.actor
            if a is not None and _one_at_a_time(a) and next(iter(a.inflight), None) != t.tid:
                # Sent, but an earlier call is still running: fail it now
                # rather than after that call; the worker skips it.
                self.st.tasks.fail(t, TaskCancelledError(t.tid.hex()))

    # -- queries -----------------------------------------------------------------------------
    def query(self, what, arg):
        Q = P.Q
        if what == Q.GET_ACTOR:
            name, namespace = arg
            a = self.actors.get(self.named.get((namespace, name)))
            if a is None or a.state == "dead":
                raise ValueError(f"no actor named '{name}' in namespace '{namespace}' "
                                 f"(it was never created, or it died). Named actors: "
                                 f"{sorted(n for (_, n) in self.named) or 'none'}")
            return (a.aid, a.meta)
        if what == Q.LIST_NAMED_ACTORS:
            return [{"name": n, "namespace": ns} for (ns, n) in self.named]
        raise ValueError(f"unknown query {what}")
