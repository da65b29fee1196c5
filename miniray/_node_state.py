"""The node's state: a pure state machine.  Events in, instructions out.

    NodeServer (``_node``)                         NodeState (this module)
    ─ reads sockets, reaps processes, timers ─►  handle([event, ...])
                                                   · object table + leases
                                                   · tasks (``_node_tasks``)
                                                   · actors (``_node_actors``)
                                                   · resources, ready queues
                                                   · worker-pool bookkeeping
    ◄─ carries out [instruction, ...] ──────────  returned list

No sockets, processes, threads or clocks in here or in the modules it owns:
time arrives inside events (``START``, ``TIMER``), a process is a worker id,
a connection is a client id.  That is what lets ``tests/unit`` drive retries,
cancels, restarts and CPU lending in milliseconds, and what a peer node will
plug into: one more client whose messages are events.

One ``handle`` call is one turn of the server's loop: the events it read in
that turn, then one scheduling pass, so a burst of submits is scheduled once.

Daemons never unpickle a user's object: frames are decoded by
``_protocol.decode_untrusted``, which refuses every class, and everything
user-defined travels as bytes that only drivers and workers decode.  A frame
that cannot be decoded or handled fails its request (a REPLY with the error,
or its task's returns sealed with it); the connection stays up.
"""
from __future__ import annotations

import traceback

from . import _protocol as P
from . import _task_spec as S
from ._node_actors import ActorManager
from ._node_cluster import ClusterState
from ._node_direct import DirectCallRegistry
from ._node_events import E, D
from ._node_leases import LeaseManager
from ._node_spill import SpillManager
from ._node_tasks import TaskManager
from ._object_table import ObjectTable, READY, CREATING
from ._scheduler import ResourcePool, ReadyQueues
from ._node_queries import NodeQueries
from ._node_records import Client, Waiter, Worker
from ._store_report import StoreReport
from ._serialization import dumps
from ._task_output import prefix_lines, source_prefix
from .exceptions import ObjectLostError, ObjectStoreFullError, RaySystemError

M = P.M
SEND = D.SEND
ERROR = P.K.ERROR
IDLE_CHECK_S = 2.0      # how often extra idle workers are looked at
IDLE_EXIT_S = 10.0      # how long an extra worker may stay idle
LARGE_WRITE = 8 * 2**20  # an ALLOC this large pauses the prefault


def node_resources(config: dict) -> dict:
    total = {"CPU": float(config["num_cpus"])}
    total.update({k: float(v) for k, v in (config.get("resources") or {}).items()})
    if config.get("num_gpus"):
        total["GPU"] = float(config["num_gpus"])
    if config.get("memory"):
        total["memory"] = float(config["memory"])
    if config.get("object_store_memory"):
        # Reported as Ray does (total; free bytes in available_now), never
        # requested: a task's store use is not reserved ahead.
        total["object_store_memory"] = float(config["object_store_memory"])
    total[f"node:{config.get('node_ip', '127.0.0.1')}"] = 1.0
    return total


class NodeState:
    def __init__(self, config: dict, facts: dict):
        """``config``: the node's settings (resources, store size, ids);
        ``facts``: what the server found out while setting up the I/O
        (``arena_size``, ``arena_dir``, ``store_warning``, ``node_pid``)."""
        self.config = config
        self.node_id = config["node_id"]
        self.arena_size = facts["arena_size"]
        self.facts = facts
        self.table = ObjectTable(self.arena_size)
        self.resources = ResourcePool(node_resources(config))
        self.ready = ReadyQueues()
        self.functions: dict = {}
        self.serializers = None
        self.clients: dict = {}              # cid -> Client
        self.workers: dict = {}              # wid -> Worker
        self.idle: list = []
        self.next_wid = 1
        self.starting = 0
        self.pool_size = max(1, int(config["num_cpus"]))
        self.owner_pid = config.get("owner_pid")
        self.sys_path = config.get("sys_path") or []
        self.job_counter = 0
        self.job_drivers: dict = {}          # job -> its driver's Client (task output goes there)
        self.prefault_done = 0
        self.now = 0.0
        self.stopping = False
        self.schedule_needed = False
        self.out: list = []
        self._closed_now: set = set()    # cids closed in this turn (late events ignored)
        self.start_failures = 0          # workers that died before HELLO, in a row
        self.tasks = TaskManager(self)
        self.actors = ActorManager(self)
        self.direct = DirectCallRegistry(self)
        self.leases = LeaseManager(self)
        self.cluster = ClusterState(self, config)
        self.report = StoreReport(self)      # LIST_OBJECTS / STORE_STATS, call sites
        self.queries = NodeQueries(self)
        self.table.on_unreachable = self.actors.handles_gone
        self.table.entries.tasks = self.tasks.tasks     # a queued task stands for its return
        self.table.on_freed_remote = self.cluster.transfer.freed
        self._events = {E.START: self._on_start, E.MESSAGES: self._on_messages,
                        E.CLOSED: self._on_closed, E.SPAWNED: self._on_spawned,
                        E.WORKER_EXITED: self._on_worker_exited, E.TIMER: self._on_timer,
                        E.PREFAULT: self._on_prefault, E.STOP: self._on_stop,
                        E.SENT: self.cluster.transfer.on_sent}
        self.spill = SpillManager(self, config)     # a store that fills up (+ its events)
        self._handlers = self._message_handlers()

    # -- the entry point ----------------------------------------------------------------
    def handle(self, events, now=None) -> list:
        """Apply one loop turn's events; the instructions to carry out.
        ``now``: the turn's time (monotonic seconds), if the caller keeps one."""
        if now is not None:
            self.now = now
        out = self.out = []
        self._closed_now.clear()
        handlers = self._events
        for ev in events:
            handlers[ev[0]](ev)
        if self.schedule_needed and not self.stopping:
            self.schedule_needed = False
            self.tasks.schedule()
        self.spill.settle()     # spill, read back (and schedule what that made runnable)
        return out

    # -- instructions (the only way anything leaves the state) ------------------------------
    def send(self, client, msg) -> None:
        if not client.closed:
            self.out.append((SEND, client.cid, msg))

    def available_now(self) -> dict:
        """Free resources, with the store's free bytes as Ray reports them."""
        avail = self.resources.snapshot_available()
        for shape in self.leases.idle_resources():     # taken back on demand
            for k, v in shape:
                avail[k] = round(avail.get(k, 0.0) + v, 9)
        if "object_store_memory" in avail:
            a = self.table.alloc
            avail["object_store_memory"] = float(a.capacity - a.used)
        return avail

    def spawn_worker(self) -> Worker:
        w = Worker(self.next_wid, self.now)
        self.next_wid += 1
        self.workers[w.wid] = w
        self.starting += 1
        self.out.append((D.SPAWN, w.wid))
        return w

    def kill(self, w) -> None:
        if w.state != "dead":
            self.out.append((D.KILL, w.wid))

    def poke(self, w) -> None:
        """Make a worker busy in a task read its socket (a CANCEL_TASK was
        just queued to it)."""
        if w.client is not None:
            self.out.append((D.POKE, w.wid, w.client.cid))

    def error_payload(self, exc) -> bytes:
        return dumps(exc)

    # -- events -------------------------------------------------------------------------------
    def _on_start(self, ev) -> None:
        self.now = ev[1]
        for _ in range(self.pool_size):
            self.spawn_worker()
        self.out.append((D.TIMER, IDLE_CHECK_S, "reap"))
        self.cluster.start(self.facts)

    def new_client(self, cid):
        client = self.clients[cid] = Client(cid)
        return client

    def _on_messages(self, ev) -> None:
        cid = ev[1]
        client = self.clients.get(cid)
        if client is None:
            if cid in self._closed_now:
                return          # read before the state closed it in this same turn
            client = self.new_client(cid)
        handlers = self._handlers
        for msg in ev[2]:
            if client.closed:
                return
            try:
                handlers.get(msg[0], self._on_unknown)(client, msg)
            except Exception as exc:
                self._request_failed(client, msg, exc)

    def _on_closed(self, ev) -> None:
        client = self.clients.get(ev[1])
        if client is not None:
            self._client_gone(client)

    def _client_gone(self, client) -> None:
        if client.closed:
            return
        client.closed = True
        del self.clients[client.cid]
        self._closed_now.add(client.cid)
        for w in list(client.waiters):
            self.drop_waiter(w)
        self.table.release_process(client, client.held, client.views, client.unsealed,
                                   client.places)
        self.direct.client_gone(client)
        if client.leases:
            self.leases.client_gone(client)
        self.actors.owner_gone(client)
        if client.role == "node":
            self.cluster.link_closed(client)
        if client.role == "driver" and self.owner_pid and client.pid == self.owner_pid:
            self._stop()
        w = client.worker
        if w is not None:
            w.client = None
            if w in self.idle:          # its process is reaped later: no work for it
                self.idle.remove(w)
                w.state = "exiting"

    def _on_spawned(self, ev) -> None:
        w = self.workers.get(ev[1])
        if w is not None:
            w.pid = ev[2]

    def _on_worker_exited(self, ev) -> None:
        w = self.workers.pop(ev[1], None)
        if w is None:
            return
        w.exit_desc = ev[2]
        if w.client is not None:
            self.out.append((D.CLOSE, w.client.cid))
            self._client_gone(w.client)
        prev = w.state
        w.state = "dead"
        if w in self.idle:
            self.idle.remove(w)
        if self.stopping:
            return
        if prev == "starting":
            self.starting -= 1
            self.start_failures += 1
            self.actors.worker_start_failed(w, self.start_failures)
        if w.lease is not None:
            self.leases.worker_died(w)
        if w.task is not None:
            self.tasks.worker_died(w)
        if w.actor is not None:
            self.actors.worker_died(w)
        self.schedule_needed = True

    def _on_timer(self, ev) -> None:
        self.now = ev[2]
        if ev[1] == "reap":
            self.out.append((D.TIMER, IDLE_CHECK_S, "reap"))
            self._reap_idle_workers()
        elif ev[1] == "heartbeat":
            self.cluster.heartbeat()
        elif ev[1] == "pipeline":
            self.tasks.check_stuck()
        elif ev[1] == "forget":
            self.spill.forget_timeout()
        elif ev[1] in self.report.gathers:
            self.report.expire(ev[1])

    def _on_prefault(self, ev) -> None:
        self.prefault_done = ev[1]

    def _on_stop(self, ev) -> None:
        self._stop()

    def stop(self, why) -> None:
        self.out.append((D.LOG, f"stopping: {why}"))
        self._stop()

    def _stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        for c in self.clients.values():
            if c.role == "worker":
                self.send(c, (M.EXIT, "node shutting down"))
        self.out.append((D.STOP,))

    # -- workers ------------------------------------------------------------------------------
    def _reap_idle_workers(self) -> None:
        """Workers started for a burst (or while others were blocked in
        get) exit after IDLE_EXIT_S idle; the pool keeps num_cpus."""
        extra = self.pool_count() - self.pool_size
        if extra <= 0 or not self.idle:
            return
        now = self.now
        for w in sorted(self.idle, key=lambda w: w.idle_since)[:extra]:
            if now - w.idle_since >= IDLE_EXIT_S and w.client is not None:
                self.idle.remove(w)
                w.state = "exiting"
                self.send(w.client, (M.EXIT, "idle"))

    def pool_count(self) -> int:
        return sum(1 for w in self.workers.values() if w.actor is None)

    def idle_index(self, kind) -> int:
        """Where in ``idle`` a worker that may run ``kind`` ("cpu"/"gpu")
        work is (the most recently idle first), or -1."""
        idle = self.idle
        for i in range(len(idle) - 1, -1, -1):
            k = idle[i].kind
            if k is None or k == kind:
                return i
        return -1

    def worker_idle(self, w) -> None:
        w.state = "idle"
        w.idle_since = self.now
        self.idle.append(w)
        self.schedule_needed = True

    def _worker_hello(self, client, wid) -> None:
        w = self.workers.get(wid)
        if w is None or w.client is not None:
            self.out.append((D.CLOSE, client.cid))
            self._client_gone(client)
            return
        w.client = client
        client.worker = w
        self.starting -= 1
        self.start_failures = 0
        w.state = "idle"
        if not self.actors.claim_new_worker(w):
            self.worker_idle(w)
        self.schedule_needed = True

    # -- messages: connection and registry -------------------------------------------------------
    def on_hello(self, client, msg) -> None:
        _, role, pid, wid, info = msg
        client.role, client.pid = role, pid
        if role == "node":
            self.cluster.on_node_hello(client, info or {})
            return
        if role == "driver":
            job = self._new_job(client, info)
            client.lease_ok = bool(info and info.get("leases"))
            if info and info.get("sys_path"):
                self.sys_path = info["sys_path"]
                for c in self.clients.values():
                    if c.role == "worker":
                        self.send(c, (M.JOB, self.sys_path))
        else:
            job = 0
        facts = self.facts
        welcome = {"node_id": self.node_id, "session": self.config["session"],
                   "arena_size": self.arena_size, "resources": dict(self.resources.total),
                   "serializers": self.serializers, "sys_path": self.sys_path, "job_id": job,
                   "address": self.config["address"], "node_pid": facts["node_pid"],
                   "arena_dir": facts["arena_dir"],
                   "inline_threshold": self.config["inline_threshold"],
                   "store_warning": facts["store_warning"],
                   "node_ip": self.config.get("node_ip", "127.0.0.1"), "cid": client.cid}
        self.out.append((D.WELCOME, client.cid, welcome))
        if role == "worker":
            self._worker_hello(client, wid)

    # -- task output (a worker's prints, routed to the driver of their job) ---------------------
    def _new_job(self, client, info) -> int:
        """A driver's job id, unique in the cluster without asking anyone:
        ``(node index << 16) | counter`` (the head is node 0, so its jobs are
        1, 2, ...; the counter wraps after 65535 drivers on one node).  Its
        task output comes to it unless it said ``log_to_driver=False``."""
        self.job_counter += 1
        job = (self.cluster.index << 16) | ((self.job_counter - 1) % 0xFFFF + 1)
        for j in [j for j, c in self.job_drivers.items() if c.closed]:
            del self.job_drivers[j]
        if not info or info.get("log_to_driver", True):
            self.job_drivers[job] = client
        return job

    def on_output(self, client, msg) -> None:
        """OUTPUT (see ``_protocol``): to the job's driver if it is on this
        node, toward its node if it is elsewhere (``ClusterState.output_route``),
        else (driver gone, ``log_to_driver=False``, node dead) to this node's log."""
        _, job, stream, text, cont, source, tid = msg
        if type(job) is not int or type(text) is not str or (
                tid is not None and type(tid) is not bytes):
            raise ValueError("malformed OUTPUT message")
        routed = self.cluster.output_route(msg)
        if routed:
            return
        driver = self.job_drivers.get(job)
        if routed is None and driver is not None and not driver.closed:
            self.send(driver, msg)
            return
        try:
            prefix = source_prefix(source)
        except (TypeError, ValueError):
            prefix = ""
        body = prefix_lines(text, prefix, cont)
        where = "stderr" if stream == 2 else "stdout"
        self.out.append((D.LOG, f"task {where} of job {job} (no driver takes it):\n"
                                + body.rstrip("\n")))

    def on_register_fn(self, client, msg) -> None:
        self.functions[msg[1]] = msg[2]

    def on_serializers(self, client, msg) -> None:
        self.serializers = msg[1]
        for c in self.clients.values():
            if c is not client and c.role == "worker":
                self.send(c, msg)

    def on_shutdown(self, client, msg) -> None:
        self._stop()

    # -- messages: objects --------------------------------------------------------------------------
    def on_put_inline(self, client, msg) -> None:
        _, oid, kind, data, contained = msg
        table = self.table
        e = table.hold(client.held, oid)
        if e.state != READY:          # a repeated put of an immutable object changes nothing
            self.notify(e, table.seal(e, kind, data, contained))

    def on_alloc(self, client, msg) -> None:
        _, rid, oid, size = msg
        table = self.table
        # Pages below this were reserved before: by the prefault, or by the
        # writer of an earlier object (ranges are reused, never punched out).
        reserved = max(table.high_water, self.prefault_done)
        old = table.entries.get(oid)
        if old is not None and old.state == READY:
            raise ValueError(f"object {oid.hex()} exists already; objects are immutable")
        try:
            e = table.allocate(oid, size, client)
        except ObjectStoreFullError:
            self.spill.alloc_full(client, msg)     # waits for room, or fails (_node_spill)
            return
        if size >= LARGE_WRITE:
            self.out.append((D.PAUSE_PREFAULT,))
        client.unsealed.add(oid)
        self.send(client, (M.REPLY, rid, True, (e.offset, max(0, reserved - e.offset))))

    def on_abort_alloc(self, client, msg) -> None:
        oid = msg[1]
        if oid in client.unsealed:
            client.unsealed.discard(oid)
            self.table.drop_unsealed(oid, client)
        self.spill.abort_alloc(client, oid)

    def on_seal(self, client, msg) -> None:
        _, oid, kind, hold, contained = msg
        client.unsealed.discard(oid)
        table = self.table
        e = table.entries.get(oid)
        if e is None or e.state != CREATING:
            return
        if hold:
            table.hold(client.held, oid)
            table.lease_place(client.places, e)     # the writer knows where it is
        self.notify(e, table.seal(e, kind, None, contained))

    def notify(self, entry, waiters) -> None:
        for w in waiters:
            w.on_ready(self, entry)
        if entry.peer_waiters:
            self.cluster.transfer.sealed(entry)

    def payload_for(self, client, e) -> tuple:
        """What to send for a READY entry; arena views are leased to ``client``."""
        if e.inline is None:
            if e.spilled:
                return None         # on disk (a GET answered early: another one failed)
            self.table.pin_view(client.views, e)
        return e.payload()

    def get_payload_for(self, client, e) -> tuple:
        """``payload_for`` for a GET reply: a process that holds a ref to an
        arena object may keep its place and read it again without asking
        (the client keeps it only if it still holds the ref then: see
        ``_core``; a lease it does not keep ends at its DECREF or a FORGET)."""
        p = self.payload_for(client, e)
        if p is not None and e.inline is None and e.oid in client.held and client.peer is None:
            self.table.lease_place(client.places, e)
        return p

    def on_get(self, client, msg) -> None:
        _, rid, oids = msg
        oids = P.ids_of(oids)
        entries = self.table.entries
        missing = [oid for oid in oids if oid not in entries]
        if missing:
            self.send(client, (M.REPLY, rid, False, ObjectLostError(
                f"object {missing[0].hex()} is not in the object store: it was freed because no "
                f"reference to it was left, or the process that made it died before sealing it")))
            return
        w = None
        failed = False
        peek = self.table.peek
        for oid in oids:
            e = peek(oid)
            if e is None:
                # A queued task's return with no entry yet: the task keeps
                # the waiter, and no entry is made (``Entries``).
                if w is None:
                    w = Waiter(client, rid, oids, 0, False)
                w.left += 1
                self.table.wait_deferred(oid, w)
            elif e.state == READY:
                failed = failed or e.kind == ERROR
            else:
                if w is None:
                    w = Waiter(client, rid, oids, 0, False)
                w.left += 1
                if e.waiters is None:
                    e.waiters = [w]
                else:
                    e.waiters.append(w)
                self.cluster.transfer.ensure(e)
        if w is None:
            if not self.spill.files or not any(entries[o].spilled for o in oids):
                pf = self.get_payload_for
                self.send(client, (M.REPLY, rid, True, [pf(client, entries[o]) for o in oids]))
                return
            w = Waiter(client, rid, oids, 0, False)     # some are on disk: read back first
        self._start_waiting(client, w)
        if failed or not w.left:
            self.finish_get(w)

    def _start_waiting(self, client, w) -> None:
        client.waiters.add(w)
        worker = client.worker
        if worker is not None and (worker.task is not None or worker.actor is not None or
                                   worker.lease is not None):
            w.blocking = True
            worker.blocked += 1
            if worker.blocked == 1:
                self.tasks.worker_blocked(worker)

    def _end_waiting(self, w) -> None:
        w.done = True
        client = w.client
        client.waiters.discard(w)
        if w.blocking:
            worker = client.worker
            if worker is not None:
                worker.blocked -= 1
                if worker.blocked == 0:
                    self.tasks.worker_unblocked(worker)

    def finish_get(self, w) -> None:
        """Answer a GET: a payload per object, None for those not ready
        (only when one of them failed)."""
        if w.left <= 0 and self.spill.files and self.spill.get_first(w):
            return          # some are on disk: read back first (then this runs again)
        self._end_waiting(w)
        if w.left > 0:
            self._drop_from_entries(w)
        entries = self.table.entries
        peek = self.table.peek
        client = w.client
        for oid in w.oids:
            if peek(oid) is None and oid not in entries:
                # Freed while the GET waited (its last ref dropped meanwhile).
                self.send(client, (M.REPLY, w.rid, False, ObjectLostError(
                    f"object {oid.hex()} was freed while a get waited for it: the last "
                    f"reference to it was dropped meanwhile")))
                return
        payload_for = self.get_payload_for
        self.send(client, (M.REPLY, w.rid, True, [
            payload_for(client, e) if e is not None and e.state == READY else None
            for e in map(self.table.peek, w.oids)]))

    def on_wait(self, client, msg) -> None:
        _, rid, oids, num_returns = msg
        oids = P.ids_of(oids)
        table = self.table
        peek = table.peek
        w = Waiter(client, rid, oids, num_returns, True)
        for oid in oids:
            e = peek(oid)
            if e is None or e.state != READY:
                w.left += 1
                if e is None:
                    table.wait_deferred(oid, w)     # a queued task's return: waits on it
                else:
                    if e.waiters is None:
                        e.waiters = [w]
                    else:
                        e.waiters.append(w)
                    self.cluster.transfer.ensure(e)
        if len(oids) - w.left >= num_returns:
            self._drop_from_entries(w)
            w.done = True
            self.send(client, (M.REPLY, rid, True, self._ready_positions(oids)))
            return
        self._start_waiting(client, w)

    def _ready_positions(self, oids) -> list:
        peek = self.table.peek
        out = []
        for i, oid in enumerate(oids):
            e = peek(oid)
            if e is not None and e.state == READY:
                out.append(i)
        return out

    def finish_wait(self, w) -> None:
        self._end_waiting(w)
        if w.left > 0:
            self._drop_from_entries(w)      # not left waiting on the refs that were not ready
        self.send(w.client, (M.REPLY, w.rid, True, self._ready_positions(w.oids)))

    def on_wait_now(self, client, msg) -> None:
        wait_rid = msg[1]
        for w in list(client.waiters):
            if w.rid == wait_rid and w.is_wait and not w.done:
                self.finish_wait(w)

    def on_drop_req(self, client, msg) -> None:
        rid = msg[1]
        for w in list(client.waiters):
            if w.rid == rid and not w.done:
                self.drop_waiter(w)
                # The one reply this request gets: lets the client forget it.
                self.send(client, (M.REPLY, rid, False, None))

    def drop_waiter(self, w) -> None:
        if w.done:
            return
        self._end_waiting(w)
        self._drop_from_entries(w)

    def _drop_from_entries(self, w) -> None:
        unwait = self.table.unwait
        for oid in w.oids:
            unwait(oid, w)

    def on_refs(self, client, msg) -> None:
        table = self.table
        held = client.held
        for op, oid in msg[1]:
            if op == P.R.DECREF:
                table.unhold(held, oid)
                if oid in client.places:
                    table.unlease_place(client.places, oid)
                    client.forgetting.discard(oid)
            elif op == P.R.INCREF:
                table.hold(held, oid)
            elif op == P.R.UNPIN:
                table.unpin_view(client.views, oid)
            elif op == P.R.PIN:
                # A view made from a known place: counted as a GET's would be
                # (the place is leased, so the range is still this object's).
                e = table.entries.get(oid) if oid in client.places else None
                if e is not None:
                    table.pin_view(client.views, e)
            elif op == P.R.FORGOT:
                table.unlease_place(client.places, oid)
                client.forgetting.discard(oid)

    # -- frames that cannot be decoded or handled ---------------------------------------------------
    def _on_unknown(self, client, msg) -> None:
        raise RaySystemError(f"unknown message tag {msg[0]!r}: the sender speaks another version "
                         f"of the miniray protocol")

    def on_bad_frame(self, client, msg) -> None:
        """A frame ``decode_untrusted`` could not decode: (BAD_FRAME, why,
        salvaged message or None)."""
        _, why, salvaged = msg
        if salvaged is not None:
            self._request_failed(client, salvaged, RaySystemError(why))
        else:
            self.send(client, (M.BAD_FRAME, f"the node could not decode a message from this "
                                            f"process and ignored it: {why}"))

    def _request_failed(self, client, msg, exc) -> None:
        """Fail the request ``msg`` stood for, as precisely as it allows: a
        REPLY to its request id, or its task's returns sealed with the error;
        otherwise a BAD_FRAME notice.  The connection stays up."""
        if not isinstance(exc, RaySystemError):
            self.out.append((D.LOG, f"message {_tag_name(msg)} from pid={client.pid} failed:\n"
                             + "".join(traceback.format_exception(exc))))
            exc = RaySystemError(f"the node could not handle a {_tag_name(msg)} message: "
                                 f"{type(exc).__name__}: {exc}")
        tag = msg[0] if isinstance(msg, tuple) and msg else None
        if tag in _REQUESTS and len(msg) > 1 and type(msg[1]) is int:
            self.send(client, (M.REPLY, msg[1], False, exc))
            return
        if tag in (M.SUBMIT, M.ACTOR_CALL) and len(msg) > 1:
            spec = msg[1]
            try:
                tid = spec[S.TASK_ID]
                n = int(spec[S.NUM_RETURNS])
            except Exception:
                tid = None
            if type(tid) is bytes and 0 <= n < 65536:
                self.tasks.fail_returns(client, tid, n, exc)
                return
        self.send(client, (M.BAD_FRAME, str(exc)))

    def _message_handlers(self) -> dict:
        t, a, c, x = self.tasks, self.actors, self.cluster, self.cluster.transfer
        return {M.HELLO: self.on_hello, M.SUBMIT: t.on_submit,
                M.PUT_INLINE: self.on_put_inline, M.ALLOC: self.on_alloc,
                M.ABORT_ALLOC: self.on_abort_alloc, M.SEAL: self.on_seal,
                M.GET: self.on_get, M.WAIT: self.on_wait, M.WAIT_NOW: self.on_wait_now,
                M.DROP_REQ: self.on_drop_req, M.REFS: self.on_refs,
                M.REGISTER_FN: self.on_register_fn, M.SERIALIZERS: self.on_serializers,
                M.TASK_DONE: t.on_task_done, M.CANCEL: t.on_cancel, M.QUERY: self.queries.on_query,
                M.REVOKED: t.on_revoked,
                M.ACTOR_CREATE: a.on_create, M.ACTOR_CALL: a.on_call, M.ACTOR_KILL: a.on_kill,
                M.DIRECT_CALL: self.direct.on_call, M.DIRECT_DONE: self.direct.on_done,
                M.LEASE_RETURN: self.leases.on_return, M.LEASE_READY: self.leases.on_ready,
                M.SHUTDOWN: self.on_shutdown, M.BAD_FRAME: self.on_bad_frame,
                # links between nodes
                M.PEER_WELCOME: c.on_peer_welcome, M.NODE_STATUS: c.on_status,
                M.CLUSTER_VIEW: c.on_view, M.FORWARD: c.on_forward, M.RESULTS: c.on_results,
                M.PULL: x.on_pull, M.OBJECT: x.on_object, M.OBJECT_LOST: x.on_object_lost,
                M.FORWARD_ACTOR: c.on_forward_actor, M.ACTOR_AT: c.on_actor_at,
                M.WHERE_ACTOR: c.on_where_actor, M.REPLY: c.on_reply,
                M.OBJECT_META: x.on_object_meta, M.SEND_DATA: x.on_send_data,
                M.DATA_DONE: x.on_data_done, M.PULL_FROM: x.on_pull_from,
                # a worker's prints, toward their driver (here or over a link)
                M.OUTPUT: self.on_output, M.CALL_SITE: self.report.on_call_site}


# Requests whose second field is the request id their REPLY answers.
_REQUESTS = frozenset((M.ALLOC, M.GET, M.WAIT, M.QUERY, M.ACTOR_CREATE))


def _tag_name(msg) -> str:
    try:
        return P.Msg(msg[0]).name
    except Exception:
        return "malformed"
