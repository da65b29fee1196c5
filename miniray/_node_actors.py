"""Actors inside the node daemon: placement, call queues, death and restarts.

An actor is a dedicated worker that keeps its instance.  Its id doubles as an
object id whose entry (kind ACTOR_HANDLE) is held by every process holding a
handle and pinned by every stored object that contains one: when the last
handle goes, the entry's release ends the actor (unless it is detached).

Calls queue per actor in submission order and go to the actor's worker as
soon as their args are ready and every earlier call has gone, so the worker
receives them in order and can run them back to back.  States:

    placing -> starting (constructor sent) -> alive -> dead
                     ^                          |
                     +------ restarting <-------+  (worker died, restarts left)
"""
from __future__ import annotations

import io
import os
import pickle
import signal
from collections import deque

from . import _protocol as P
from . import _task_spec as S
from ._object_table import READY
from ._serialization import read_from
from .exceptions import ActorDiedError, ActorUnschedulableError, TaskCancelledError

M = P.M


class _Opaque:
    """Stands in for a user class while reading an error's text: the daemon
    never imports user modules nor runs user code."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        pass

    def __str__(self):
        return f"{type(self).__name__}{self.args!r}"


class _TextUnpickler(pickle.Unpickler):
    _allowed = {"miniray.exceptions", "builtins", "copyreg", "_codecs"}

    def find_class(self, module, name):
        if module in self._allowed:
            return super().find_class(module, name)
        return type(name.rpartition(".")[2], (_Opaque,), {"__module__": module})


def error_text(payload) -> str:
    """The message of a serialized error (a RayTaskError from a worker),
    read without importing the user's modules in the daemon."""
    try:
        meta, buffers = read_from(payload)
        err = _TextUnpickler(io.BytesIO(meta), buffers=buffers).load()
        return str(err)
    except Exception as exc:
        return f"(its error could not be read: {type(exc).__name__}: {exc})"


def _one_at_a_time(a) -> bool:
    """The actor runs its calls one by one, in the order they were sent."""
    extra = a.spec[S.EXTRA] or {}
    return not extra.get("is_async") and extra.get("max_concurrency", 1) <= 1


class Actor:
    __slots__ = ("aid", "name", "namespace", "class_name", "spec", "shape", "state", "worker",
                 "queue", "inflight", "restarts_left", "max_task_retries", "detached",
                 "death", "meta", "exiting", "pid", "num_restarts", "creator", "arg_pins")

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

    def describe(self) -> str:
        name = f" '{self.name}'" if self.name else ""
        pid = f", pid={self.pid}" if self.pid else ""
        return f"actor {self.class_name}{name} (id={self.aid.hex()}{pid})"


class ActorManager:
    def __init__(self, node):
        self.node = node
        self.actors: dict[bytes, Actor] = {}
        self.named: dict[tuple, bytes] = {}
        self.placing: deque = deque()

    def count_alive(self) -> int:
        return sum(1 for a in self.actors.values() if a.state != "dead")

    # -- creation ---------------------------------------------------------------------
    def on_create(self, conn, msg) -> None:
        _, rid, spec, opts = msg
        node = self.node
        name = opts.get("name")
        key = (opts.get("namespace"), name)
        if name:
            existing = self.actors.get(self.named.get(key))
            if existing is not None and existing.state != "dead":
                if opts.get("get_if_exists"):
                    conn.send((M.REPLY, rid, True, (existing.aid, existing.meta, False)))
                    return
                conn.send((M.REPLY, rid, False, ValueError(
                    f"an actor named '{name}' already exists in namespace "
                    f"'{opts.get('namespace')}'. Use miniray.get_actor('{name}') to get it, or "
                    f".options(name='{name}', get_if_exists=True) to create it only if missing.")))
                return
        aid = spec[S.ACTOR_ID]
        a = Actor(aid, spec, opts, conn)
        self.actors[aid] = a
        if name:
            self.named[key] = aid
        e = node.table.get_or_create(aid)
        e.kind = P.K.ACTOR_HANDLE
        e.state = READY
        if aid not in conn.held:
            conn.held.add(aid)
            e.holders += 1
        if a.detached:
            e.pins += 1
        t = node.tasks.create(spec, conn, actor=a)
        if a.restarts_left != 0:
            # A restart runs the constructor again with the same args: keep
            # them alive as long as the actor, not just until the first run.
            a.arg_pins = node.tasks._pinned(spec)
            for oid in a.arg_pins:
                node.table.get_or_create(oid).pins += 1
        a.queue.append(t)
        node.tasks.start(t)
        conn.send((M.REPLY, rid, True, (aid, a.meta, True)))
        why = node.resources.never_fits(a.shape)
        if why:
            self._die(a, ActorUnschedulableError(
                f"{a.describe()} {why}: it can never start. Lower num_cpus/resources in "
                f".options(...) or start the node with more resources.", actor_id=aid))
            return
        self.placing.append(a)
        node.schedule_needed = True

    def schedule(self) -> None:
        node = self.node
        while self.placing:
            a = self.placing[0]
            if a.state == "dead":
                self.placing.popleft()
                continue
            if not node.resources.fits_now(a.shape):
                return
            self.placing.popleft()
            node.resources.acquire(a.shape)
            a.state = "awaiting_worker"
            if node.idle:
                self._bind(a, node.idle.pop())
            else:
                node.spawn_worker()

    def claim_new_worker(self, w) -> bool:
        for a in self.actors.values():
            if a.state == "awaiting_worker" and a.worker is None:
                self._bind(a, w)
                return True
        return False

    def _bind(self, a: Actor, w) -> None:
        node = self.node
        a.worker = w
        a.pid = w.pid
        w.actor = a
        w.state = "actor"
        a.state = "starting"
        if node.pool_count() < node.pool_size:
            node.spawn_worker()
        self.pump(a)

    # -- calls --------------------------------------------------------------------------
    def on_call(self, conn, msg) -> None:
        spec = msg[1]
        node = self.node
        a = self.actors.get(spec[S.ACTOR_ID])
        t = node.tasks.create(spec, conn, actor=a)
        if a is None or a.state == "dead":
            node.tasks.fail(t, a.death if a is not None else ActorDiedError(
                "the actor is unknown to this node (it died and was forgotten)"))
            return
        a.queue.append(t)
        node.tasks.start(t)

    def pump(self, a: Actor) -> None:
        """Send every call at the head of the queue whose args are ready."""
        if a.worker is None or a.worker.conn is None or a.state in ("dead", "placing"):
            return
        tasks = self.node.tasks
        q = a.queue
        while q:
            t = q[0]
            if t.state == "cancelled" or t.state == "done":
                q.popleft()
                continue
            if t.state != "ready":
                return
            if a.state == "starting" and t.spec[S.METHOD] != "__init__":
                return
            q.popleft()
            err = tasks.dep_error(t)
            if err is not None:
                tasks.seal_all(t, err)
                tasks.forget(t)
                continue
            a.inflight[t.tid] = t
            tasks.dispatch(t, a.worker)

    def on_ready(self, a: Actor, error_payload) -> None:
        """The constructor finished (TASK_DONE of the ``__init__`` task)."""
        if a.state == "dead":
            return
        if error_payload is not None:
            text = error_text(error_payload)
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
        if t.spec[S.METHOD] == "__init__":
            return
        if a.exiting and not a.queue and not a.inflight:
            self._exit_gracefully(a)

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

    def _exit_gracefully(self, a: Actor) -> None:
        w = a.worker
        self._die(a, ActorDiedError(
            f"{a.describe()} exited because every handle to it went out of scope.",
            actor_id=a.aid))
        if w is not None and w.conn is not None:
            w.conn.send((M.EXIT, "actor out of scope"))

    def on_kill(self, conn, msg) -> None:
        aid, no_restart = msg[1], msg[2]
        reason = msg[3] if len(msg) > 3 else None
        a = self.actors.get(aid)
        if a is None or a.state == "dead":
            return
        if no_restart or a.restarts_left == 0:
            a.restarts_left = 0
            w = a.worker
            self._die(a, ActorDiedError(
                reason or f"{a.describe()} was killed by miniray.kill(); calls to it cannot run.",
                actor_id=aid))
            # An actor ending itself (exit_actor) exits on its own, after
            # its atexit handlers.
            if w is not None and w.conn is not conn:
                self._kill_worker(w)
        elif a.worker is not None:
            self._kill_worker(a.worker)

    def _kill_worker(self, w) -> None:
        try:
            os.kill(w.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def worker_died(self, w) -> None:
        a = w.actor
        w.actor = None
        if a.worker is not w or a.state == "dead":
            return
        a.worker = None
        reason = f"its worker process (pid={w.pid}) {w.exit_desc}"
        if a.restarts_left != 0:
            if a.restarts_left > 0:
                a.restarts_left -= 1
            a.num_restarts += 1
            retry, fail = [], []
            tasks = self.node.tasks
            for t in [t for t in a.queue if t.spec[S.METHOD] == "__init__"]:
                a.queue.remove(t)       # never sent: the new constructor replaces it
                tasks.forget(t)
            for t in a.inflight.values():
                if t.spec[S.METHOD] == "__init__":
                    tasks.forget(t)     # died in its constructor
                    continue
                budget = t.retries_left if t.retries_left is not None else a.max_task_retries
                (retry if budget != 0 else fail).append(t)
            a.inflight.clear()
            for t in fail:
                self.node.tasks.fail(t, ActorDiedError(
                    f"{a.describe()} died while running '{t.spec[S.NAME]}': {reason}. The "
                    f"actor is restarting; set max_task_retries to retry calls like this.",
                    actor_id=a.aid))
            for t in reversed(retry):
                if t.retries_left and t.retries_left > 0:
                    t.retries_left -= 1
                t.state = "ready"
                a.queue.appendleft(t)
            # The constructor task has no return objects, so the (maybe gone)
            # creator's connection is only named, never written to.
            init = self.node.tasks.create(a.spec, a.creator, actor=a)
            a.queue.appendleft(init)
            self.node.tasks.start(init)
            a.state = "awaiting_worker"
            self.node.spawn_worker()
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
        node = self.node
        prev = a.state
        a.state = "dead"
        a.death = exc
        if prev not in ("placing",):
            node.resources.release(a.shape)
        if a in self.placing:
            self.placing.remove(a)
        pending = list(a.inflight.values()) + list(a.queue)
        a.inflight.clear()
        a.queue.clear()
        for t in pending:
            if t.state != "done":
                node.tasks.fail(t, exc)
        if a.name and self.named.get((a.namespace, a.name)) == a.aid:
            del self.named[(a.namespace, a.name)]
        w = a.worker
        a.worker = None
        if w is not None:
            w.actor = None
        node.schedule_needed = True
        e = node.table.entries.get(a.aid)
        if e is not None and a.detached:
            a.detached = False
            e.pins -= 1
            node.table.release_if_unused(e)
        pins, a.arg_pins = a.arg_pins, ()
        entries = node.table.entries
        for oid in pins:
            e = entries.get(oid)
            if e is not None:
                e.pins -= 1
                node.release_entry(e)

    def cancel(self, t, force) -> None:
        if t.state in ("waiting", "ready") and t.worker is None:
            a = t.actor
            try:
                a.queue.remove(t)
            except ValueError:
                pass
            t.state = "cancelled"
            self.node.tasks.fail(t, TaskCancelledError(t.tid.hex()))
            self.pump(a)
        elif t.worker is not None and t.worker.conn is not None:
            t.cancelled = True
            t.worker.conn.send((M.CANCEL_TASK, t.tid))
            self.node.poke(t.worker)
            a = t.actor
            if a is not None and _one_at_a_time(a) and next(iter(a.inflight), None) != t.tid:
                # Sent, but an earlier call is still running: fail it now
                # rather than after that call; the worker skips it.
                self.node.tasks.fail(t, TaskCancelledError(t.tid.hex()))

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
